"""ANE layout benchmark (issue 16): ``tlc lint`` on full-size transformers before and after
``layout::ane_transformer``, and on coremltools' own conversion of the same model.

For each visible-zoo transformer (BERT-base, DistilBERT, GPT-2, ViT-base, all-MiniLM-L6-v2,
Whisper-base encoder; the builders of ``bench_spine.py``: default configs, random weights except
MiniLM's real ones, nothing downloaded) it builds with ``precision="fp16"`` twice in one run, with
the pass skipped and with it (the layout rules do not depend on the closed loop of ``mixed``),
saves both packages and runs :func:`tlc.check.lint.lint` on them, then converts the model with
coremltools (``torch.jit.trace`` + ``ct.convert(convert_to="mlprogram")``, fp16) and lints that
too where it converts. Printed per model and package: MIL op count, ops breaking an eligibility
rule, ops breaking an efficiency rule, and per efficiency rule the op count and FLOP share.
Goal: no ``linear_bsc`` / ``fused_sdpa`` / ``head_batched_matmul`` / ``rank5`` violation after the pass (alignment
violations remain where the sequence length is not a multiple of 32: ViT's 197, Whisper's 1500).

Run::

    python benchmarks/bench_ane_layout.py [--models bert,gpt2] [--no-coremltools] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tlc  # noqa: E402
from tlc.check.lint import lint  # noqa: E402

from bench_spine import MODELS  # noqa: E402

ZOO = ["bert", "distilbert", "gpt2", "vit", "minilm", "whisper_enc"]
RULES = ["linear_bsc", "fused_sdpa", "head_batched_matmul", "rank5", "last_axis_alignment"]


def _row(model: str, package: str, rep, seconds: float) -> dict:
    s = {r["rule"]: r for r in rep.summary()}
    row = {"model": model, "package": package, "ops": rep.num_ops, "eligibility": rep.count("eligibility"),
           "efficiency": rep.count("efficiency"), "s": round(seconds, 1)}
    for r in RULES:
        row[r] = f"{s[r]['ops']} ({100 * s[r]['flops_share']:.0f}%)" if r in s else "0"
    return row


def _coremltools(model, example, path: Path):
    import coremltools as ct

    args, kwargs = example
    tensors = list(args) + list(kwargs.values())

    class Positional(torch.nn.Module):  # trace takes positional inputs
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            out = self.m(*xs[:len(args)], **dict(zip(kwargs, xs[len(args):])))
            return out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Positional(model).eval(), tuple(tensors), strict=False)
        inputs = [ct.TensorType(name=f"x{i}", shape=t.shape) for i, t in enumerate(tensors)]
        mlm = ct.convert(traced, inputs=inputs, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17)
    mlm.save(str(path))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--no-coremltools", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="tlc_bench_layout_"))
    for name in a.models.split(","):
        torch.manual_seed(0)
        model, example = MODELS[name]()
        model.eval()
        for label, skip in (("tlc, pass off", ["layout::ane_transformer"]), ("tlc, pass on", [])):
            t0 = time.perf_counter()
            cm = tlc.build(model, example, precision="fp16", skip_passes=skip)
            p = cm.save(tmp / f"{name}_{len(skip)}.mlpackage", force=True)
            rows.append(_row(name, label, lint(p), time.perf_counter() - t0))
            print(rows[-1], file=sys.stderr, flush=True)
        if not a.no_coremltools:
            t0 = time.perf_counter()
            try:
                p = _coremltools(model, example, tmp / f"{name}_ct.mlpackage")
                rows.append(_row(name, "coremltools", lint(p), time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - a converter failure is a result here
                msg = " ".join(str(e).split())[:70].replace("|", "/")
                rows.append({"model": name, "package": "coremltools", "ops": f"failed: {type(e).__name__}: {msg}"})
            print(rows[-1], file=sys.stderr, flush=True)
    cols = ["model", "package", "ops", "eligibility", "efficiency"] + RULES + ["s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
