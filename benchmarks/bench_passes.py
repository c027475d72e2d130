"""Optimization benchmark: tlc vs coremltools on full-size ResNet-50, MobileNetV2, ConvNeXt-tiny.

Both sides start from the same ``torch.export`` trace (its time is not counted on either side)
and are measured in the same run:

* coremltools: ``ct.convert(exported_program.run_decompositions({}), convert_to="mlprogram",
  minimum_deployment_target=iOS17)`` (its default fp16 and 95-pass pipeline), then ``save``;
* tlc: lowering + tlc's passes + precision (``mixed``: range analysis) + its closed loop (running
  the emitted package in the MIL interpreter on the calibration inputs, ``t_closed_loop``) +
  partition + MIL emission + coremltools'
  graph passes (tlc's short pipeline) + milproto serialization + save (``cm.timings``), with fp32
  I/O; ``fp16_s``: the same with ``precision="fp16"`` (no range analysis: the work coremltools
  does), re-using the trace and passes (their times counted again).

Printed per model: non-const MIL op count of coremltools' package (fp32 inputs, fp16 outputs)
and of tlc's with fp32 I/O (``tlc_ops``) and fp16 I/O (``tlc16_ops``, ``io_dtype="float16"``),
their ``pad`` and ``transpose`` counts, conversion times and the ratio tlc/coremltools, and where
tlc's time goes (seconds per stage: ``t_lower`` ... ``t_save``).

Run::

    python benchmarks/bench_passes.py [--models resnet50,mobilenetv2,convnext] [--json out.json]
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tlc  # noqa: E402
from bench_spine import MODELS, log  # noqa: E402


def mil_ops(path: Path) -> collections.Counter:
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    m = ct.models.MLModel(str(path), skip_model_load=True)
    spec = m.get_spec()
    prog = milproto_load(spec, spec.specificationVersion, m.weights_dir)
    return collections.Counter(op.op_type for op in prog.functions["main"].operations if op.op_type != "const")


def measure(name: str, tmp: Path) -> dict:
    import coremltools as ct

    torch.manual_seed(0)
    model, (args, kwargs) = MODELS[name]()
    model.eval()
    row = {"model": name}
    log(f"{name}: coremltools")
    with torch.no_grad():
        ep = torch.export.export(model, args, kwargs, strict=False).run_decompositions({})
    t0 = time.perf_counter()
    ml = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    ml.save(str(tmp / f"ct_{name}.mlpackage"))
    row["ct_s"] = time.perf_counter() - t0
    c = mil_ops(tmp / f"ct_{name}.mlpackage")
    row["ct_ops"], row["ct_pad"], row["ct_transpose"] = sum(c.values()), c["pad"], c["transpose"]
    del ep, ml
    gc.collect()

    log(f"{name}: tlc")
    cm = tlc.build(model, (args, kwargs))
    cm.save(tmp / f"tlc_{name}.mlpackage")
    t = cm.timings
    parts = ["lower", "passes", "precision", "closed_loop", "partition", "emit_mil", "mil_passes", "serialize", "save"]
    row.update({f"t_{p}": t.get(p, 0.0) for p in parts})
    row["tlc_s"] = sum(t.get(p, 0.0) for p in parts)
    c = mil_ops(tmp / f"tlc_{name}.mlpackage")
    row["tlc_ops"], row["tlc_pad"], row["tlc_transpose"] = sum(c.values()), c["pad"], c["transpose"]
    row["ratio"] = row["tlc_s"] / row["ct_s"]
    row["islands"] = len(cm.islands)
    row["tlc_hist"] = dict(c)
    cm16 = cm.with_options(io_dtype="float16")
    cm16.save(tmp / f"tlc16_{name}.mlpackage")
    row["tlc16_ops"] = sum(mil_ops(tmp / f"tlc16_{name}.mlpackage").values())
    # the same work coremltools does (no range analysis): precision="fp16", same trace and passes
    f16 = cm.with_options(precision="fp16")
    f16.save(tmp / f"tlcfp16_{name}.mlpackage")
    row["fp16_s"] = sum(f16.timings.get(p, 0.0) for p in parts)
    row["fp16_ratio"] = row["fp16_s"] / row["ct_s"]
    return row


COLS = ["model", "ct_ops", "tlc_ops", "tlc16_ops", "ct_pad", "tlc_pad", "ct_transpose", "tlc_transpose", "ct_s",
        "tlc_s", "ratio", "fp16_s", "fp16_ratio", "t_lower", "t_passes", "t_precision", "t_closed_loop", "t_partition",
        "t_emit_mil",
        "t_mil_passes", "t_serialize", "t_save", "islands"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,mobilenetv2,convnext")
    p.add_argument("--repeat", type=int, default=1, help="measure each model this many times (side by side)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.repeat):
            for name in a.models.split(","):
                sub = Path(d) / str(i)
                sub.mkdir(exist_ok=True)
                rows.append(measure(name, sub))
                gc.collect()
    print(f"tlc {tlc.__version__}, torch {torch.__version__}; seconds; ops = non-const MIL ops of the saved package")
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in COLS]
    print("  ".join(c.ljust(w) for c, w in zip(COLS, widths)))
    for r in rows:
        print("  ".join(fmt(r[c]).ljust(w) for c, w in zip(COLS, widths)))
    if a.repeat > 1:  # the machine is shared: the minimum of each column is the least disturbed run
        print(f"minimum over {a.repeat} runs (ratio = min tlc_s / min ct_s, fp16_ratio = min fp16_s / min ct_s)")
        best = []
        for name in a.models.split(","):
            rs = [r for r in rows if r["model"] == name]
            b = {c: (min(r[c] for r in rs) if isinstance(rs[0][c], float) else rs[0][c]) for c in COLS}
            b["ratio"] = b["tlc_s"] / b["ct_s"]
            b["fp16_ratio"] = b["fp16_s"] / b["ct_s"]
            best.append(b)
        for r in best:
            print("  ".join(fmt(r[c]).ljust(w) for c, w in zip(COLS, widths)))
    for r in rows[: len(a.models.split(","))]:
        print(f"{r['model']} tlc ops: {r['tlc_hist']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
