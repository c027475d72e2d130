"""MIL interpreter benchmark: latency and accuracy of executing .mlpackage files on Linux.

For each full-size model (the same factories as ``bench_spine.py``) it builds tlc's fp16 and
fp32 packages, runs them in tlc's MIL interpreter and runs torch eager (fp32, CPU) in the same
process, and prints, side by side:

* ``torch_ms``: torch eager latency (median of ``--runs`` after one warm-up);
* ``interp_fp32_ms`` / ``interp_fp16_ms``: interpreter latency (median, same protocol) and the
  ratio to torch (``x_fp32``, ``x_fp16``);
* ``err_fp32`` / ``err_fp16``: relative L2 error of the first output against torch eager in
  float64, and ``nonfinite``: NaN/inf count in the fp16 output;
* ``mixed``: the default package (``precision="mixed"``, closed loop included): its latency
  (``interp_mixed_ms``, ``x_mixed``), the worst rel-L2 over *all* outputs against torch float64
  (``err_mixed``), NaN/inf over all outputs (``nonfinite_mixed``), fp32 islands, fp16 constant
  fixes and closed-loop rounds (``islands``, ``consts``, ``rounds``), and the build's
  closed-loop seconds (``loop_s``). docs/passes.md holds this table for the visible zoo.

With ``--coremltools`` it also converts ResNet-50, MobileNetV2 and ConvNeXt with coremltools'
own torch.export path (fp16) and runs those packages (``ct_*`` rows).

Run::

    python benchmarks/bench_interpreter.py [--models bert,resnet50,...] [--runs 3] [--coremltools] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils._pytree as pytree  # noqa: E402

import tlc  # noqa: E402
from bench_spine import MODELS, log  # noqa: E402
from tlc.runtime import MILInterpreter  # noqa: E402
from tlc.check.metrics import rel_l2  # noqa: E402


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def first_leaf(out):
    return [t for t in pytree.tree_leaves(out) if isinstance(t, (torch.Tensor, np.ndarray))][0]


def measure(name: str, runs: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    model, (args, kwargs) = MODELS[name]()
    model.eval()
    row: dict = {"model": name}
    with torch.no_grad():
        row["torch_ms"] = median_ms(lambda: model(*args, **kwargs), runs)
        m64 = copy.deepcopy(model).double()
        dbl = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
        refs = [t.numpy() for t in pytree.tree_leaves(m64(*[dbl(a) for a in args], **{k: dbl(v) for k, v in kwargs.items()}))
                if isinstance(t, torch.Tensor)]
        ref = refs[0]
        del m64
    gc.collect()
    cm = tlc.build(model, (args, kwargs))
    feeds = {n: t.numpy() for n, t in zip(cm.input_names, list(args) + list(kwargs.values()))}
    for prec in ("fp32", "fp16"):
        log(f"{name}: {prec} package")
        path = cm.with_options(precision=prec).save(tmp / f"{name}_{prec}.mlpackage", force=True)
        interp = MILInterpreter(path)
        out = {}
        row[f"interp_{prec}_ms"] = median_ms(lambda: out.update(interp.run(feeds)), runs)
        got = out[cm.output_names[0]]
        row[f"x_{prec}"] = row[f"interp_{prec}_ms"] / row["torch_ms"]
        row[f"err_{prec}"] = rel_l2(got, ref)
        if prec == "fp16":
            row["nonfinite"] = int((~np.isfinite(got)).sum())
        del interp
        gc.collect()
    log(f"{name}: mixed package (default)")
    path = cm.save(tmp / f"{name}_mixed.mlpackage", force=True)
    interp = MILInterpreter(path)
    out = {}
    row["interp_mixed_ms"] = median_ms(lambda: out.update(interp.run(feeds)), runs)
    row["x_mixed"] = row["interp_mixed_ms"] / row["torch_ms"]
    row["err_mixed"] = max(rel_l2(out[n], r) for n, r in zip(cm.output_names, refs))
    row["nonfinite_mixed"] = sum(int((~np.isfinite(out[n])).sum()) for n in cm.output_names)
    chk = cm.precision_check
    row.update(islands=len(cm.islands), consts=len(chk.constants), rounds=len(chk.rounds), loop_s=cm.timings["closed_loop"])
    return row


def measure_coremltools(name: str, runs: int, tmp: Path) -> dict:
    import coremltools as ct

    torch.manual_seed(0)
    model, (args, kwargs) = MODELS[name]()
    model.eval()
    row: dict = {"model": f"ct_{name}"}
    with torch.no_grad():
        row["torch_ms"] = median_ms(lambda: model(*args), runs)
        ref = first_leaf(copy.deepcopy(model).double()(args[0].double())).numpy()
    ep = torch.export.export(model, args, strict=False).run_decompositions({})
    ml = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    path = tmp / f"ct_{name}.mlpackage"
    ml.save(str(path))
    interp = MILInterpreter(path)
    (iname, *_), = interp.inputs
    out = {}
    row["interp_fp16_ms"] = median_ms(lambda: out.update(interp.run({iname: args[0].numpy()})), runs)
    got = out[interp.outputs[0]]
    row["x_fp16"] = row["interp_fp16_ms"] / row["torch_ms"]
    row["err_fp16"] = rel_l2(got, ref)
    row["nonfinite"] = int((~np.isfinite(got)).sum())
    return row


COLS = ["model", "torch_ms", "interp_fp32_ms", "x_fp32", "err_fp32", "interp_fp16_ms", "x_fp16", "err_fp16", "nonfinite",
        "interp_mixed_ms", "x_mixed", "err_mixed", "nonfinite_mixed", "islands", "consts", "rounds", "loop_s"]


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2e}" if abs(v) < 1e-2 and v != 0 else (f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}")
    return "-" if v is None else str(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--coremltools", action="store_true", help="also run coremltools' own ResNet-50/MobileNetV2/ConvNeXt packages")
    p.add_argument("--json")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in a.models.split(","):
            try:
                rows.append(measure(name, a.runs, Path(d)))
            except Exception as e:  # keep going; show the error in the row
                rows.append({"model": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"})
            gc.collect()
        if a.coremltools:
            for name in ("resnet50", "mobilenetv2", "convnext"):
                rows.append(measure_coremltools(name, a.runs, Path(d)))
    print(f"tlc {tlc.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {a.runs} runs after a warm-up; ms; x = interpreter / torch eager CPU")
    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in COLS]
    print("  ".join(c.ljust(w) for c, w in zip(COLS, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(COLS, widths)) + (f"  {r['error']}" if "error" in r else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
