"""LM build at scale (issue 15, point 4): peak RSS and time of ``tlc.build_lm`` on a TinyLlama-shaped
model (hidden 2048, 22 layers, intermediate 5632, 32 heads, 4 KV heads, vocab 32000: 1.1B
parameters) held in float16, saved as one multifunction package.

Each build runs in a fresh child process (so its peak RSS is its own), which reports:

* ``model``: bytes of the model's parameters in memory (the yardstick: goal peak <= 1.5x);
* ``base``: RSS after imports and before the model exists (Python, torch, coremltools);
* ``peak``: the process's peak RSS (``ru_maxrss``) and ``peak - base`` over ``model``;
* seconds per stage (build_lm's timings: export, decompose, lower, passes, precision, emit, compress,
  save).

Run::

    python benchmarks/bench_lm_build.py [--layers 22] [--compress palettize4] [--precision fp16]
        [--max-context 256] [--prefill-lengths 32]

``--layers 2`` gives a quick ~0.2B run of the same shapes.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc/self/statm)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(a) -> dict:
    import torch
    import transformers as T

    import tlc

    base = rss_mb()
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=a.layers, num_attention_heads=32,
                        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, torch_dtype="float16")
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = T.LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.float16).eval()
    with torch.no_grad():  # random weights, filled in place (no float32 copy of the model)
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    params = sum(p.numel() for p in model.parameters())
    init_s = time.perf_counter() - t0
    after_model = rss_mb()
    t0 = time.perf_counter()
    mf = tlc.build_lm(model, max_context=a.max_context, prefill_lengths=a.prefill_lengths, precision=a.precision,
                      compress=a.compress, progress=True)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        out = mf.save(Path(d) / "tinyllama.mlpackage")
        save_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"layers": a.layers, "params": params, "model_mb": model_bytes / 2**20, "base_mb": base,
            "after_model_mb": after_model, "peak_mb": peak, "init_s": init_s, "build_s": build_s, "save_s": save_s,
            "package_mb": size / 2**20, "timings": {k: round(v, 2) for k, v in mf.timings.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--compress", default="palettize4", help="build_lm compress= ('none' for dense)")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--max-context", type=int, default=256)
    p.add_argument("--prefill-lengths", default="32")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.compress = None if a.compress == "none" else a.compress
    a.prefill_lengths = [int(x) for x in a.prefill_lengths.split(",")]
    if a.child:
        print(json.dumps(child(a)))
        return 0
    args = [sys.executable, __file__, "--child", "--layers", str(a.layers), "--compress", a.compress or "none",
            "--precision", a.precision, "--max-context", str(a.max_context), "--prefill-lengths",
            ",".join(map(str, a.prefill_lengths))]
    t0 = time.perf_counter()
    r = subprocess.run(args, stdout=subprocess.PIPE, text=True)
    if r.returncode:
        print(f"build failed (exit {r.returncode})", file=sys.stderr)
        return r.returncode
    res = json.loads(r.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - t0
    m = res["model_mb"]
    print(f"TinyLlama-shaped, {res['layers']} layers, {res['params'] / 1e9:.2f}B parameters in float16: "
          f"model {m:.0f} MiB; compress={a.compress}, precision={a.precision}, max_context={a.max_context}, "
          f"prefill {a.prefill_lengths}")
    print("| peak RSS | peak - base | (peak - base) / model | base (imports) | package | build | save | wall |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {res['peak_mb']:.0f} MiB | {res['peak_mb'] - res['base_mb']:.0f} MiB | "
          f"{(res['peak_mb'] - res['base_mb']) / m:.2f}x | {res['base_mb']:.0f} MiB | {res['package_mb']:.0f} MiB | "
          f"{res['build_s']:.0f} s | {res['save_s']:.0f} s | {wall:.0f} s |")
    print("stages (s, summed over functions):", ", ".join(f"{k} {v}" for k, v in res["timings"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
