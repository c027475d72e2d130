"""LM decode benchmark (issue 15): a decode step does constant work whatever the prefix.

Builds a Llama-shaped model (random weights; default hidden 512, 8 layers, 8 heads, 2 KV heads,
intermediate 1408, vocab 8000: ~40M parameters) with ``tlc.build_lm(max_context=C)`` and measures,
side by side in one process:

* per-token ``decode`` latency (median of ``--runs`` steps) with the cache holding 64, 256 and
  1024 tokens (``C`` = 1088 by default) on tlc's torch-device executor, tlc's NumPy executor and the
  package in tlc's MIL interpreter: flat (the function attends over all C slots every step);
* HF ``generate`` (torch eager, its own dynamic cache, same device) decode tokens/s at the same
  prefixes, and tlc's ``generate`` prefill and decode tokens/s.

With ``--device cuda`` (issue 33; no package is saved: coremltools need not be installed) it
measures instead, at each prefix: tlc's ``generate`` decode tokens/s on its torch executor (the KV
cache stays on the GPU; the executor's default capture: Inductor + CUDA graphs), HF ``generate``
eager (dynamic cache) and HF ``generate`` with ``cache_implementation="static"`` and its forward
under ``torch.compile(mode="reduce-overhead")``, each after one warm-up call.

Run::

    python benchmarks/bench_lm.py [--hidden 512 --layers 8] [--contexts 64,256,1024] [--runs 5] [--device cpu]
    python benchmarks/bench_lm.py --device cuda [--contexts 64,256,1024] [--new 64]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers as T

import tlc
from tlc.runtime import load
from tlc.runtime.generate import GenerationStats, KVCache


def model_of(a) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=a.hidden, intermediate_size=int(a.hidden * 2.75), num_hidden_layers=a.layers,
                        num_attention_heads=8, num_key_value_heads=2, vocab_size=a.vocab,
                        max_position_embeddings=a.max_context)
    return T.LlamaForCausalLM(cfg).eval()


def decode_ms(run, info, prefix: int, runs: int) -> float:
    """Median ms of a decode step with ``prefix`` tokens in the cache (random cache contents: the
    step's work does not depend on them)."""
    rng = np.random.default_rng(0)
    c = KVCache.empty(info)
    c.k[:] = rng.standard_normal(c.k.shape).astype(np.float32) * 0.1
    c.v[:] = rng.standard_normal(c.v.shape).astype(np.float32) * 0.1
    feeds = {"input_ids": np.array([[3]], np.int32), "position": np.array([prefix], np.int32), "k_cache": c.k,
             "v_cache": c.v}
    run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def hf_generate_tokens_per_s(model, prefix: int, new: int, device: str, static: bool = False) -> float:
    """HF ``generate`` decode tokens/s after ``prefix`` tokens on ``device``: the second of two calls
    (the first warms up or compiles), minus a one-token call's time (the prefill)."""
    ids = torch.randint(0, model.config.vocab_size, (1, prefix), generator=torch.Generator().manual_seed(1)).to(device)
    model = model.to(device)
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    if static:
        kw["cache_implementation"] = "static"
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)  # warm-up (compiles, for static)
        sync()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        sync()
        t1 = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        sync()
        t2 = time.perf_counter()
    return (new - 1) / max((t2 - t1) - (t1 - t0), 1e-9)


def main_cuda(a) -> int:
    """``--device cuda``: tlc generate (cache on the GPU) vs HF eager and HF static + torch.compile."""
    contexts = [int(x) for x in a.contexts.split(",")]
    model = model_of(a)
    n = sum(q.numel() for q in model.parameters())
    t0 = time.perf_counter()
    mf = tlc.build_lm(model, max_context=a.max_context, prefill_lengths=[64], precision="fp32")
    print(f"llama-shaped {n / 1e6:.1f}M params, max_context {a.max_context}; build_lm {time.perf_counter() - t0:.1f} s; "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    hf = model.to("cuda")
    compiled = None
    if not a.skip_hf_static:
        compiled = model_of(a).to("cuda")
        compiled.forward = torch.compile(compiled.forward, mode="reduce-overhead", fullgraph=True)
    rows = []
    for prefix in contexts:
        prompt = (np.arange(prefix) % (a.vocab - 2)) + 2
        st = GenerationStats()
        mf.generate(prompt, a.new, backend="torch", eos_token_id=[])  # warm-up: compiles/records each function
        t0 = time.perf_counter()
        mf.generate(prompt, a.new, backend="torch", eos_token_id=[], stats=st)
        row = {"prefix": prefix, "tlc_tok_s": st.decode_tokens_per_s, "tlc_prefill_tok_s": st.prefill_tokens_per_s,
               "hf_eager_tok_s": hf_generate_tokens_per_s(hf, prefix, a.new, "cuda"),
               "hf_static_compile_tok_s": ("skipped" if compiled is None else
                                           hf_generate_tokens_per_s(compiled, prefix, a.new, "cuda", static=True))}
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    cols = ["prefix", "tlc_tok_s", "hf_eager_tok_s", "hf_static_compile_tok_s", "tlc_prefill_tok_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"tlc decode tokens/s at prefix {rows[-1]['prefix']} / prefix {rows[0]['prefix']}: "
          f"{rows[-1]['tlc_tok_s'] / rows[0]['tlc_tok_s']:.2f}x; vs HF eager (worst prefix): "
          f"{min(r['tlc_tok_s'] / r['hf_eager_tok_s'] for r in rows):.2f}x")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--contexts", default="64,256,1024")
    p.add_argument("--max-context", type=int, default=1088)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new", type=int, default=16, help="tokens per generate call for tokens/s")
    p.add_argument("--device", default="cpu", help="torch device for HF generate and tlc's torch executor")
    p.add_argument("--skip-hf-static", action="store_true",
                   help="--device cuda: leave out HF generate with a static cache under torch.compile (it crashed "
                        "with a segfault in Inductor's Triton launcher under CUDA graph trees on transformers 5.17 + "
                        "torch 2.11, H100)")
    a = p.parse_args(argv)
    if a.device.startswith("cuda"):
        return main_cuda(a)
    contexts = [int(x) for x in a.contexts.split(",")]
    model = model_of(a)
    n = sum(q.numel() for q in model.parameters())
    t0 = time.perf_counter()
    mf = tlc.build_lm(model, max_context=a.max_context, prefill_lengths=[64], precision="fp32")
    print(f"llama-shaped {n / 1e6:.1f}M params, max_context {a.max_context}; build_lm {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as d:
        pkg = load(mf.save(Path(d) / "lm.mlpackage"), backend="interpreter")
        runners = {"tlc-torch": lambda f: mf.run(f, backend="torch"), "tlc-numpy": lambda f: mf.run(f, backend="numpy"),
                   "interpreter": pkg}
        rows = []
        for prefix in contexts:
            row = {"prefix": prefix}
            for name, run in runners.items():
                row[name + "_ms"] = decode_ms(run, mf.lm, prefix, a.runs)
            row["hf_eager_tok_s"] = hf_generate_tokens_per_s(model, prefix, a.new, a.device)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        prompt = np.arange(2, 66) % a.vocab
        gen = {}
        for name in ("torch", "numpy"):
            st = GenerationStats()
            mf.generate(prompt, a.new, backend=name, eos_token_id=[], stats=st)
            gen[name] = st
    cols = ["prefix", "tlc-torch_ms", "tlc-numpy_ms", "interpreter_ms", "hf_eager_tok_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    for name, st in gen.items():
        print(f"tlc generate ({name}): prefill {st.prompt_tokens} tokens {st.prefill_tokens_per_s:.1f} tokens/s, "
              f"decode {st.decode_tokens_per_s:.1f} tokens/s")
    first, last = rows[0], rows[-1]
    for name in runners:
        print(f"{name}: decode at prefix {last['prefix']} / prefix {first['prefix']} = "
              f"{last[name + '_ms'] / first[name + '_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
