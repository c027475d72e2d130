"""Weight compression benchmark (issue 14): size and accuracy of every ``compress=`` mode on
full-size models, beside coremltools' own compression of its own conversion.

For each model (ResNet-50 and MobileNetV2 with random weights from their transformers configs,
the real all-MiniLM-L6-v2 sentence embedder of examples/minilm.py) it builds tlc's default package
(``precision="mixed"``, iOS18) and one per mode, runs each in tlc's MIL interpreter on the example
inputs and prints, side by side:

* ``ratio``: the weight file against the same build uncompressed;
* ``psnr``: PSNR (dB, coremltools' definition, ``tlc.check.metrics.psnr``) of the first output against
  torch eager fp32; ``cos``: cosine similarity to it (the MiniLM embedding's figure of merit);
* ``s``: seconds to emit and compress;
* ``ct_ratio`` / ``ct_psnr`` / ``ct_cos``: the same for coremltools 9's torch.export conversion
  (fp16, iOS18) compressed with ``coremltools.optimize.coreml`` and the same settings
  (``tlc.backends.coreml.compress._op_config``: per-channel quantization, per-tensor / per-16-channel tables) (``w8a8`` is not run for coremltools: its activation calibration needs
  Core ML predict, i.e. macOS). A failed coremltools conversion is printed as such.

Floors from the issue, checked with ``--check``: int8 PSNR >= 40 dB and palettize4 >= 25 dB on
the MiniLM embedding, cosine >= 0.99. The table and the command are in docs/passes.md.

Run::

    python benchmarks/bench_compress.py [--models resnet50,mobilenetv2,minilm] [--modes int8,...] [--check] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spine import MODELS  # noqa: E402  (the same full-size factories)

import tlc  # noqa: E402
from tlc._coreml import weight_file_size  # noqa: E402
from tlc.backends.coreml.compress import MODES  # noqa: E402
from tlc.runtime import MILInterpreter  # noqa: E402
from tlc.check.metrics import compare, psnr  # noqa: E402

FLOORS = {("minilm", "int8"): 40.0, ("minilm", "palettize4"): 25.0}
MIN_COS = 0.99


def first_output(out) -> np.ndarray:
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def cosine(a, b) -> float:
    return compare("out", a, b, 0.0).cosine


def run_package(path: Path, feeds: dict) -> np.ndarray:
    m = MILInterpreter(path)
    names = [n for n, *_ in m.inputs]
    if len(feeds) == 1 and len(names) == 1:
        feeds = {names[0]: next(iter(feeds.values()))}
    out = m.run({k: v for k, v in feeds.items() if k in names})
    return np.asarray(out[m.outputs[0]])


def ct_convert(model, args, kwargs, path: Path):
    import coremltools as ct

    ep = torch.export.export(model, args, kwargs, strict=False).run_decompositions({})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        ml = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    ml.save(str(path))
    return ml


def ct_compress(ml, mode: str, path: Path):
    import coremltools.optimize.coreml as cto

    from tlc.backends.coreml.compress import _op_config  # the very settings tlc uses for target="ane", iOS18

    op = _op_config(mode, ios18=True)
    fn = cto.linear_quantize_weights if MODES[mode].kind == "quantize" else cto.palettize_weights
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        out = fn(ml, cto.OptimizationConfig(global_config=op))
    out.save(str(path))


def measure(name: str, modes: list[str], tmp: Path) -> list[dict]:
    torch.manual_seed(0)
    model, (args, kwargs) = MODELS[name]()
    model.eval()
    with torch.no_grad():
        ref = first_output(model(*args, **kwargs))
    feeds = {k: v.numpy().astype(np.int32) if v.dtype == torch.int64 else v.numpy() for k, v in kwargs.items()}
    feeds.update({f"arg{i}": a.numpy() for i, a in enumerate(args)})
    ex = args if not kwargs else kwargs
    t0 = time.perf_counter()
    cm = tlc.build(model, ex, minimum_deployment_target="iOS18")
    plain = cm.save(tmp / f"{name}.mlpackage")
    print(f"[{name}] tlc build {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    base = weight_file_size(plain)
    got = run_package(plain, feeds)
    rows = [{"model": name, "mode": "none", "ratio": 1.0, "psnr": psnr(got, ref), "cos": cosine(got, ref),
             "s": 0.0, "mib": base / 2**20}]
    ct_ml = ct_base = None
    try:
        ct_ml = ct_convert(model, args, kwargs, tmp / f"ct_{name}.mlpackage")
        ct_base = weight_file_size(tmp / f"ct_{name}.mlpackage")
        g = run_package(tmp / f"ct_{name}.mlpackage", feeds)
        rows[0].update(ct_ratio=1.0, ct_psnr=psnr(g, ref), ct_cos=cosine(g, ref))
    except Exception as e:  # coremltools' own converter fails on some models: say so
        rows[0]["ct"] = f"conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    for mode in modes:
        t0 = time.perf_counter()
        c = cm.with_options(compress=mode)
        p = c.save(tmp / f"{name}_{mode}.mlpackage")
        row = {"model": name, "mode": mode, "s": time.perf_counter() - t0}
        got = run_package(p, feeds)
        row.update(ratio=weight_file_size(p) / base, psnr=psnr(got, ref), cos=cosine(got, ref),
                   mib=weight_file_size(p) / 2**20)
        if ct_ml is not None and not MODES[mode].activations:
            try:
                cp = tmp / f"ct_{name}_{mode}.mlpackage"
                ct_compress(ct_ml, mode, cp)
                g = run_package(cp, feeds)
                row.update(ct_ratio=weight_file_size(cp) / ct_base, ct_psnr=psnr(g, ref), ct_cos=cosine(g, ref))
            except Exception as e:
                row["ct"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        print(f"[{name}] {mode}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


COLS = ["model", "mode", "mib", "ratio", "psnr", "cos", "s", "ct_ratio", "ct_psnr", "ct_cos"]


def fmt(col: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if col in ("ratio", "cos", "ct_ratio", "ct_cos") else f"{v:.1f}"
    return str(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,mobilenetv2,minilm")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--check", action="store_true", help="exit 1 if a floor of the issue is missed")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlc-bench-compress-") as d:
        for name in a.models.split(","):
            rows += measure(name, a.modes.split(","), Path(d))
    print("| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    for r in rows:
        print("| " + " | ".join(fmt(c, r.get(c)) for c in COLS) + " |" + (f" {r['ct']}" if "ct" in r else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    bad = [f"{r['model']} {r['mode']}: PSNR {r['psnr']:.1f} < {FLOORS[(r['model'], r['mode'])]}"
           for r in rows if (r["model"], r["mode"]) in FLOORS and r["psnr"] < FLOORS[(r["model"], r["mode"])]]
    bad += [f"minilm {r['mode']}: cosine {r['cos']:.4f} < {MIN_COS}" for r in rows
            if r["model"] == "minilm" and r["mode"] in ("int8", "palettize4") and r["cos"] < MIN_COS]
    for b in bad:
        print("FLOOR MISSED: " + b)
    return 1 if a.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
