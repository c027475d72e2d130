"""Core AI benchmark (issue 17): tlc's ``.aimodel`` emission side by side with Apple's
``coreai-torch`` converter on the same models, both executed by Apple's Core AI runtime
(coreai-core, on this machine's CPU).

Per model: whether each converts, conversion time (tlc: trace + passes + Core AI emission + save
with ``precision="fp32"``; coreai-torch: ``torch.export`` + ``run_decompositions(get_decomp_table())``
+ ``TorchConverter().add_exported_program(ep).to_coreai()`` + save), rel-L2 of the first output
vs torch eager (fp32), MIL-op-free program size, and the median latency of one call in the Core AI
runtime (``--runs`` calls after one warm-up). Models: the spine builders of ``bench_spine.py``
(full-size default configs, random weights except MiniLM's), or ``--small`` for the test configs
(tests/archs.py).

Run::

    python benchmarks/bench_coreai.py [--small] [--models bert,resnet50] [--runs 10] [--json FILE]

Needs the coreai extra and coreai-torch (``pip install coreai-torch==0.4.3``; not a tlc dependency).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils._pytree as pytree  # noqa: E402

import tlc  # noqa: E402
from tlc.driver.bench import _first, time_interleaved  # noqa: E402
from tlc.runtime import load  # noqa: E402


class _Positional(torch.nn.Module):
    """The model with positional tensor inputs and its first output (what coreai-torch takes)."""

    def __init__(self, m, n_args, kw):
        super().__init__()
        self.m, self.n, self.kw = m, n_args, list(kw)

    def forward(self, *xs):
        out = self.m(*xs[:self.n], **dict(zip(self.kw, xs[self.n:])))
        return next(x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor))


def _latency(model, feeds, runs: int) -> float:
    """Median seconds of one call (after one warm-up), timed by :func:`tlc.driver.bench.time_interleaved`."""
    return float(np.median(time_interleaved({"m": lambda: model(feeds)}, {"m": "cpu"}, runs, 1)["m"])) / 1e3


def _rel(got, ref) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def measure(name, model, example, tmp: Path, runs: int) -> list[dict]:
    args, kwargs = example
    xs = tuple(list(args) + list(kwargs.values()))
    with torch.no_grad():
        ref = _first(model(*args, **kwargs)).astype(np.float64)
    rows = []
    # tlc
    row = {"model": name, "converter": "tlc"}
    try:
        t0 = time.perf_counter()
        cm = tlc.build(model, example, precision="fp32")
        p = cm.save(tmp / f"{name}_tlc.aimodel", force=True)
        row["convert_s"] = round(time.perf_counter() - t0, 2)
        m = load(p)
        feeds = {n: (x.numpy().astype(np.int32) if not x.is_floating_point() else x.numpy()) for n, x in zip(cm.input_names, xs)}
        row["rel_l2"] = _rel(m(feeds)[cm.output_names[0]], ref)
        row["latency_ms"] = round(1e3 * _latency(m, feeds, runs), 2)
        row["MB"] = round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6, 1)
        m.close()
    except Exception as e:  # noqa: BLE001 - a failure is a result here
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:90]}"
    rows.append(row)
    # coreai-torch
    row = {"model": name, "converter": "coreai-torch"}
    try:
        from coreai_torch import TorchConverter, get_decomp_table

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(_Positional(model, len(args), kwargs).eval(), xs)
            ep = ep.run_decompositions(get_decomp_table())
            prog = TorchConverter().add_exported_program(ep).to_coreai()
        p = tmp / f"{name}_ct.aimodel"
        shutil.rmtree(p, ignore_errors=True)
        prog.save_asset(p)
        row["convert_s"] = round(time.perf_counter() - t0, 2)
        m = load(p)
        feeds = {n: (x.numpy().astype(np.int32) if not x.is_floating_point() else x.numpy()) for n, x in zip(m.inputs, xs)}
        row["rel_l2"] = _rel(next(iter(m(feeds).values())), ref)
        row["latency_ms"] = round(1e3 * _latency(m, feeds, runs), 2)
        row["MB"] = round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6, 1)
        m.close()
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:90]}"
    rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the test configs (tests/archs.py) instead of full sizes")
    ap.add_argument("--models", default=None)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.small:
        import archs

        names = a.models.split(",") if a.models else archs.ARCHS
        make = {n: (lambda n=n: (lambda m, x, k: (m, (x, k)))(*archs.make(n))) for n in names}
    else:
        from bench_spine import MODELS

        names = a.models.split(",") if a.models else list(MODELS)
        make = {n: MODELS[n] for n in names}
    tmp = Path(tempfile.mkdtemp(prefix="tlc_bench_coreai_"))
    rows = []
    for n in names:
        torch.manual_seed(0)
        model, example = make[n]()
        rows += measure(n, model.eval(), example, tmp, a.runs)
        for r in rows[-2:]:
            print(r, file=sys.stderr, flush=True)
    cols = ["model", "converter", "convert_s", "rel_l2", "latency_ms", "MB", "error"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2e}" if c == "rel_l2" and c in r else str(r.get(c, "")) for c in cols) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
