"""``tlc generate`` and ``tlc build --task text-generation``: LM packages from a model file.

A model file for text generation defines module-level ``model`` (a Hugging Face-style causal LM,
or any module with the same call signature: ``input_ids``, ``attention_mask``, ``position_ids``,
a ``cache``/``past_key_values`` object with ``update``) and optionally ``tokenizer`` (anything with
``encode(text) -> ids`` and ``decode(ids) -> text``, e.g. a ``transformers`` tokenizer) for
``--prompt``; ``example_inputs`` are not needed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tlc.errors import InputError
from tlc.runtime import load
from tlc.runtime.generate import GenerationStats
from tlc.util.coreml import package_size

from tlc.driver.options import KV_CACHE, PRECISIONS, RUN_BACKENDS

from .modelfile import io_options, load_model_file, merged_options
from .output import human


def add_lm_options(p: argparse.ArgumentParser) -> None:
    """``--max-context``, ``--prefill-lengths`` and ``--kv-cache`` (build_lm's options)."""
    p.add_argument("--max-context", type=int, default=256, help="KV-cache slots: prompt + new tokens (default 256)")
    p.add_argument("--prefill-lengths", default="32", metavar="L,L,...",
                   help="one prefill function per length (default 32); longer prompts run in chunks of the largest")
    p.add_argument("--kv-cache", choices=list(KV_CACHE), default="io",
                   help="io (default): the cache is functional I/O, the Neural Engine form; state: iOS18 MLState "
                        "buffers updated in the graph, the form for Core ML's GPU")


def prefill_lengths(a) -> list[int]:
    """``--prefill-lengths L,L,...`` as integers (:class:`InputError` naming the value otherwise)."""
    try:
        return [int(x) for x in a.prefill_lengths.split(",") if x]
    except ValueError:
        raise InputError(f"--prefill-lengths {a.prefill_lengths!r}: expected comma-separated integers") from None


def _lm_build(a, spec):
    from tlc.driver.lm import build_lm  # torch: imported when an LM is built, not when the parser is

    opts = merged_options(a, spec, keys=("precision", "minimum_deployment_target", "compress"))
    meta = {k: v for k, v in io_options(a, spec).items() if k in ("author", "license", "version", "short_description",
                                                                   "metadata")}
    return build_lm(spec.model, max_context=a.max_context, prefill_lengths=prefill_lengths(a), kv_cache=a.kv_cache,
                    progress=True, cache=True, **opts, **meta)


def build_text_generation(a) -> int:
    """``tlc build model.py --task text-generation``: write the LM package and say what it holds."""
    t0 = time.perf_counter()
    spec = load_model_file(a.model, need_inputs=False)
    out = Path(a.output) if a.output else Path(Path(a.model).stem + ".mlpackage")
    return report_text_generation(a, _lm_build(a, spec), out, spec.path, t0)


def report_text_generation(a, mf, out: Path, source, t0: float) -> int:
    """Save the LM package ``mf`` at ``out`` and say what it holds (built from ``source``)."""
    path = mf.save(out, force=a.force)
    info = mf.lm
    print(f"built {path}  (text generation, {mf.precision}, {mf.minimum_deployment_target}"
          + (f", weights {mf.compress}" if mf.compress else "") + f") from {source}")
    print(f"  functions {', '.join(mf.functions)} (default decode)")
    if info.kv_cache == "state":
        print(f"  cache   k_cache/v_cache MLState float16{list(info.cache_shape)}: updated in the graph at `position` "
              f"(max_context {info.max_context}; for Core ML's GPU: the Neural Engine wants --kv-cache io)")
    else:
        print(f"  cache   k_cache/v_cache float32{list(info.cache_shape)}: functional I/O, the host writes k_new/v_new "
              f"at `position` (max_context {info.max_context})")
    print(f"  size    {human(package_size(path))}  (weights stored once: {human(mf.sizes['weights'])}; one "
          f"function alone {human(mf.sizes['single_function'])})")
    print(f"  time    {time.perf_counter() - t0:.2f} s")
    return 0


def _prompt_ids(a, tokenizer) -> list[int]:
    if a.prompt_ids:
        try:
            return [int(t) for t in a.prompt_ids.replace(",", " ").split()]
        except ValueError:
            raise InputError(f"--prompt-ids {a.prompt_ids!r}: expected integers separated by commas or spaces") from None
    if tokenizer is None:
        raise InputError("--prompt needs a tokenizer: an .mlpackage has none (give --prompt-ids); a model file can "
                         "define `tokenizer`" if a.target.endswith(".mlpackage") else
                         "--prompt needs a tokenizer: define `tokenizer` in the model file (or give --prompt-ids)")
    return list(tokenizer.encode(a.prompt))


def cmd_generate(a) -> int:
    """Stream generated tokens (text with a tokenizer) and a tokens/s line."""
    if not a.prompt_ids and a.prompt is None:
        raise InputError("give --prompt-ids 1,2,3 or --prompt TEXT")
    if Path(a.target).suffix == ".mlpackage":
        ids = _prompt_ids(a, None)
        m = load(a.target)
        run_generate, where, tokenizer = m.generate, f"{a.target} on {m.backend}", None
    else:
        spec = load_model_file(a.target, need_inputs=False)
        tokenizer = spec.tokenizer
        ids = _prompt_ids(a, tokenizer)  # before the build: a bad prompt fails fast
        mf = _lm_build(a, spec)
        run_generate = lambda *args, **kw: mf.generate(*args, backend=a.backend, **kw)  # noqa: E731
        where = f"{spec.path} (tlc's {a.backend} executor)"
    stats = GenerationStats()

    new: list[int] = []
    shown = [""]

    def stream(tok: int) -> None:
        new.append(tok)
        if tokenizer is None:
            sys.stdout.write(f"{tok} ")
        else:  # decode the running text: one token at a time would lose SentencePiece's leading spaces
            text = tokenizer.decode(new)
            sys.stdout.write(text[len(shown[0]):])
            shown[0] = text
        sys.stdout.flush()

    out = run_generate(ids, a.max_new_tokens, do_sample=a.do_sample, temperature=a.temperature, top_k=a.top_k,
                       top_p=a.top_p, seed=a.seed, stream=stream, stats=stats)
    print()
    print(f"generated {out.shape[1] - len(ids)} token(s) from {where}: prefill {stats.prompt_tokens} tokens "
          f"{stats.prefill_tokens_per_s:.1f} tokens/s, decode {stats.decode_tokens_per_s:.1f} tokens/s", file=sys.stderr)
    return 0


def add_generate_parser(sub) -> None:
    """The ``tlc generate`` subcommand on ``sub`` (argparse subparsers)."""
    g = sub.add_parser("generate", help="generate tokens with an LM: a model.py (built in memory) or an LM .mlpackage",
                       description="Generate tokens. TARGET: a model.py defining `model` (a causal LM; optional "
                                   "`tokenizer`) or an .mlpackage built by `tlc build --task text-generation`.")
    g.add_argument("target", help="model.py or LM .mlpackage")
    g.add_argument("--prompt-ids", metavar="1,2,3", help="prompt token ids")
    g.add_argument("--prompt", help="prompt text (needs `tokenizer` in the model file)")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=50, help="with --do-sample: keep the k most likely tokens (default 50, "
                                                         "as Hugging Face; 0: all)")
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--backend", default="numpy", choices=[b for b in RUN_BACKENDS if b != "coreml"],
                   help="for a model.py: tlc's executor (default numpy)")
    g.add_argument("--precision", choices=list(PRECISIONS))
    add_lm_options(g)
    g.set_defaults(func=cmd_generate)


__all__ = ["add_lm_options", "add_generate_parser", "build_text_generation", "report_text_generation", "prefill_lengths",
           "cmd_generate"]
