"""NumPy IR executor vs torch eager on CPU: latency at batch 1, interleaved in one process.

For each full-size model (the factories of ``bench_spine.py``: random-weight ``transformers``
configs, the real all-MiniLM-L6-v2 at sequence length 32, text models at sequence length 128)
it builds ``tlc.build(model, example_inputs, precision="fp32")`` and times, alternately in the
same loop (so that machine load hits both alike):

* ``torch_ms``: ``model(*args, **kwargs)`` under ``torch.no_grad()`` (torch's own thread pool);
* ``tlc_ms``: ``tlc.runtime.run_graph(cm.graph, feeds)`` (NumPy; BLAS threads as configured);

and prints the median and 90th percentile (ms) of ``--runs`` timed repeats after ``--warmup``
untimed ones, ``x`` = median tlc / median torch (the acceptance ratio of issue 6: <= 1.5), and
``rel_l2`` = ||tlc - torch|| / ||torch|| of the first output (both fp32) as a numerics check.

``--threads N`` runs both sides on N threads (torch.set_num_threads; NumPy's BLAS through
threadpoolctl; tlc's tiled kernels through ``TLC_NUM_THREADS``' module setting); the default is
each library's own default, which is the machine's usable cores for all three.

``--profile`` adds, per model, the time per op kind of one executor run (wall time between the
executor's observer callbacks, so Python dispatch is included in each op's share).

Run::

    python benchmarks/bench_runtime.py [--models minilm,resnet50,mobilenetv2,vit,gpt2] [--runs 10]
        [--warmup 2] [--threads N] [--profile] [--json out.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils._pytree as pytree  # noqa: E402

import tlc  # noqa: E402
from bench_interpreter import fmt  # noqa: E402
from bench_spine import MODELS, log, rel_l2  # noqa: E402
from tlc.runtime import run_graph  # noqa: E402

DEFAULT_MODELS = "minilm,resnet50,mobilenetv2,vit,gpt2"


def p90(xs: list[float]) -> float:
    """90th percentile (linear interpolation between order statistics)."""
    return float(np.percentile(xs, 90))


def blas_threads() -> str:
    """Loaded BLAS libraries (file name) and their thread counts (threadpoolctl; else "unknown")."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{Path(i['filepath']).name.split('-')[0]} {i['num_threads']} threads" for i in info) or "none found"


def set_threads(n: int | None) -> None:
    """Run torch, every loaded BLAS and tlc's tiled kernels on ``n`` threads (None: leave as is).
    Called again after each model is built: libraries loaded since (scipy's OpenBLAS, pulled in by
    transformers) start with their own default."""
    if not n:
        return
    from threadpoolctl import threadpool_limits

    from tlc.ops import parallel

    torch.set_num_threads(n)
    threadpool_limits(n)
    parallel.NUM_THREADS = n


def op_profile(graph, feeds) -> dict[str, tuple[float, int]]:
    """``{op: (ms, count)}`` for one run: wall time between observer calls, attributed to the node
    just finished (so each node's share includes the executor's per-node overhead)."""
    prof: dict[str, list] = {}
    last = [time.perf_counter()]

    def obs(node, outs):
        now = time.perf_counter()
        e = prof.setdefault(node.op, [0.0, 0])
        e[0] += (now - last[0]) * 1e3
        e[1] += 1
        last[0] = now

    run_graph(graph, feeds, observer=obs)
    return {k: (v[0], v[1]) for k, v in sorted(prof.items(), key=lambda kv: -kv[1][0])}


def measure(name: str, runs: int, warmup: int, profile: bool, threads: int | None = None) -> dict:
    torch.manual_seed(0)
    model, (args, kwargs) = MODELS[name]()
    model.eval()
    log(f"{name}: build fp32")
    cm = tlc.build(model, (args, kwargs), precision="fp32")
    feeds = {n: t.numpy() for n, t in zip(cm.input_names, list(args) + list(kwargs.values()))}
    g = cm.graph
    set_threads(threads)
    t_torch, t_tlc = [], []
    with torch.no_grad():
        ref = [t for t in pytree.tree_leaves(model(*args, **kwargs)) if isinstance(t, torch.Tensor)][0]
        out = run_graph(g, feeds)[cm.output_names[0]]
        log(f"{name}: timing")
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            model(*args, **kwargs)
            t1 = time.perf_counter()
            run_graph(g, feeds)
            t2 = time.perf_counter()
            if i >= warmup:
                t_torch.append((t1 - t0) * 1e3)
                t_tlc.append((t2 - t1) * 1e3)
    row = {
        "model": name,
        "ops": g.num_ops,
        "torch_ms": statistics.median(t_torch),
        "torch_p90": p90(t_torch),
        "tlc_ms": statistics.median(t_tlc),
        "tlc_p90": p90(t_tlc),
        "rel_l2": rel_l2(out, ref.numpy()),
    }
    row["x"] = row["tlc_ms"] / row["torch_ms"]
    if profile:
        row["profile"] = op_profile(g, feeds)
    return row


COLS = ["model", "ops", "torch_ms", "torch_p90", "tlc_ms", "tlc_p90", "x", "rel_l2"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="threads for torch, NumPy's BLAS and tlc (default: each library's own)")
    p.add_argument("--profile", action="store_true", help="print time per op kind for each model")
    p.add_argument("--json")
    a = p.parse_args(argv)
    set_threads(a.threads)
    rows = []
    for name in a.models.split(","):
        try:
            rows.append(measure(name, a.runs, a.warmup, a.profile, a.threads))
        except Exception as e:  # keep going; show the error in the row
            rows.append({"model": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"})
        gc.collect()
    from tlc.ops.parallel import NUM_THREADS

    print(f"tlc {tlc.__version__} ({NUM_THREADS} threads), torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__} ({blas_threads()}); batch 1, fp32; interleaved, "
          f"{a.runs} runs after {a.warmup} warm-up; ms; x = median tlc / median torch")
    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in COLS]
    print("  ".join(c.ljust(w) for c, w in zip(COLS, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(COLS, widths)) + (f"  {r['error']}" if "error" in r else ""))
    for r in rows:
        if "profile" in r:
            tot = sum(ms for ms, _ in r["profile"].values())
            print(f"\n{r['model']}: {tot:.1f} ms in one profiled run")
            for op, (ms, cnt) in list(r["profile"].items())[:12]:
                print(f"  {op:32s} {cnt:5d}  {ms:8.1f} ms  {100 * ms / tot:5.1f}%")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
