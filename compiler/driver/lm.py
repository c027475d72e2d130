"""Decoder language models on the device: ``tlc.build_lm`` builds prefill and decode functions with
the KV cache as functional I/O, in one multifunction ``.mlpackage``.

Layout (``kv_cache="io"``, the form Apple's Neural Engine rules ask for: the cache is read-only
functional I/O, no in-graph writes — apple/coreai-models ``neural_engine_rules.md``; the same
design as ExecuTorch's static LLM export for Core ML):

* inputs ``input_ids`` int32 ``[1, T]``, ``position`` int32 ``[1]`` (how many tokens the cache
  holds = the absolute position of ``input_ids[0, 0]``), ``k_cache`` / ``v_cache``
  ``[layers, 1, kv_heads, max_context, head_dim]`` (the host's buffers);
* outputs ``logits`` ``[1, T, vocab]`` (every position: a padded prefill reads the last real one)
  and ``k_new`` / ``v_new`` ``[layers, 1, kv_heads, T, head_dim]``: the entries of these T tokens,
  which the host writes into its buffers at ``position``;
* one function per prefill length ``prefill_L`` (T = L) and ``decode`` (T = 1). Every function
  attends over all ``max_context`` cache slots plus its own T tokens, so a decode step costs the
  same at any context length.

The model's own modules compute everything (rotary embeddings from ``position_ids``, grouped-query
attention, tied embeddings, norms): tlc passes them a cache object whose ``update`` returns the
cache concatenated with the new keys/values and keeps the new ones as outputs, and a 4-D additive
mask built in the graph from ``position``: cache slot j is visible to query i when
``j < position`` (and, for sliding-window layers, ``position + i - j < window``, as Hugging Face's
``sliding_window_overlay``), new token i' when ``i' <= i``; hidden slots get :data:`MASK_VALUE`,
finite and fp16-safe (Apple's rule: -40000 rather than -inf). Models with per-layer attention
types (``config.layer_types``) get one mask per type.
"""
from __future__ import annotations

import inspect

import torch

from tlc.backends.coreml.state import StateBinding
from tlc.errors import InputError
from tlc.frontend.lower import shared_weights
from tlc.runtime.generate import METADATA_KEY, LMInfo, prefill_name

from .multifunction import MultiFunctionModel, build_multifunction
from .options import KV_CACHE, BuildOptions, decide_interface

#: additive mask value for hidden positions: finite and representable in fp16 (Apple's Neural
#: Engine rules, apple/coreai-models neural_engine_rules.md: "-40000 instead of -inf")
MASK_VALUE = -40000.0


def state_bindings() -> tuple:
    """The :class:`tlc.backends.coreml.state.StateBinding` of ``kv_cache="state"``: ``k_cache``/``v_cache`` become
    states; ``k_new``/``v_new`` are written into them along the slot axis (3) at ``position``."""
    return tuple(StateBinding(f"{c}_cache", f"{c}_new", 3, "position") for c in "kv")


class IOCache:
    """The cache object handed to the model: ``update(k, v, layer_idx)`` keeps ``k``/``v`` (the new
    tokens' entries, ``[1, kv_heads, T, head_dim]``) and returns the cache's slots followed by
    them. Duck-types the part of ``transformers.Cache`` a decoder layer calls."""

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor):
        self.k_cache, self.v_cache = k_cache, v_cache
        n = k_cache.shape[0]
        self.new_k: list = [None] * n
        self.new_v: list = [None] * n

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Keep ``key_states``/``value_states`` (``[1, kv_heads, T, head_dim]``) as layer
        ``layer_idx``'s new entries; return ``(keys, values)`` ``[1, kv_heads, max_context + T,
        head_dim]``: the cache slots, then them."""
        self.new_k[layer_idx], self.new_v[layer_idx] = key_states, value_states
        return (torch.cat([self.k_cache[layer_idx], key_states], dim=2),
                torch.cat([self.v_cache[layer_idx], value_states], dim=2))

    def get_seq_length(self, layer_idx: int = 0) -> int:  # only used when position_ids are not given
        return 0

    def __len__(self):
        return self.k_cache.shape[0]


def _config(model):
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise InputError("build_lm needs a Hugging Face-style causal LM (a module with .config: num_hidden_layers, "
                         "num_attention_heads, hidden_size, vocab_size)")
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def lm_geometry(model) -> dict:
    """Layers, KV heads, head size, vocabulary, sliding window, layer types and position limit of a
    HF-style config (GPT-2's ``n_layer``/``n_head``/``n_embd``/``n_positions`` names included).
    Raises :class:`InputError`."""
    cfg = _config(model)
    get = lambda *names, default=None: next((getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None),  # noqa: E731
                                            default)
    layers, heads, hidden = get("num_hidden_layers", "n_layer"), get("num_attention_heads", "n_head"), get(
        "hidden_size", "n_embd")
    vocab = get("vocab_size")
    if None in (layers, heads, hidden, vocab):
        raise InputError("build_lm: the model's config lacks num_hidden_layers / num_attention_heads / hidden_size / "
                         "vocab_size")
    kv = get("num_key_value_heads", default=heads)
    head_dim = get("head_dim", default=hidden // heads)
    eos = get("eos_token_id", default=())
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((int(eos),) if eos is not None else ())
    return {"num_layers": int(layers), "num_kv_heads": int(kv), "head_dim": int(head_dim), "vocab_size": int(vocab),
            "sliding_window": getattr(cfg, "sliding_window", None), "layer_types": getattr(cfg, "layer_types", None),
            "eos_token_id": eos, "max_positions": get("max_position_embeddings", "n_positions")}


def _visible(position, q_len: int, context: int, window: int | None):
    """Bool ``[q_len, context + q_len]``: which cache slots and new tokens each new token sees."""
    i = torch.arange(q_len).reshape(q_len, 1)
    q = position.reshape(1, 1) + i  # absolute positions of the queries
    j = torch.arange(context).reshape(1, context)
    cache = j < position.reshape(1, 1)
    n = torch.arange(q_len).reshape(1, q_len)
    new = n <= i
    if window:
        cache = cache & (q - j < window)
        new = new & (q - (position.reshape(1, 1) + n) < window)
    return torch.cat([cache.expand(q_len, context), new], dim=1)


class LMStep(torch.nn.Module):
    """One step of a causal LM with the KV cache as I/O (module docstring): ``forward(input_ids
    [1, T] int, position [1] int, k_cache, v_cache) -> {"logits": [1, T, V], "k_new", "v_new"}``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        g = lm_geometry(model)
        self.window = g["sliding_window"]
        self.layer_types = g["layer_types"]
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids, position, k_cache, v_cache):
        q_len, context = input_ids.shape[1], k_cache.shape[3]
        dtype = k_cache.dtype

        def mask(window):
            vis = _visible(position, q_len, context, window)
            return torch.where(vis, torch.zeros((), dtype=dtype), torch.full((), MASK_VALUE, dtype=dtype))[None, None]

        if self.layer_types:  # per-layer attention types: only "sliding_attention" layers are windowed
            attention_mask = ({"full_attention": mask(None), "sliding_attention": mask(self.window)}
                              if "sliding_attention" in self.layer_types else mask(None))
        else:
            attention_mask = mask(self.window)
        cache = IOCache(k_cache, v_cache)
        # padded prefill slots may run past the cache: clamp them into the model's position range
        # (their outputs are never read; real tokens are always < max_context)
        position_ids = torch.clamp(position.reshape(1, 1) + torch.arange(q_len).reshape(1, q_len), max=context - 1).long()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{self.cache_kw: cache})
        logits = out.logits if hasattr(out, "logits") else out[0]
        if any(k is None for k in cache.new_k):
            raise InputError("build_lm: the model did not call cache.update for every layer (is it a decoder LM that "
                             "takes a transformers Cache?)")
        return {"logits": logits, "k_new": torch.stack(cache.new_k), "v_new": torch.stack(cache.new_v)}


def example_steps(step: LMStep, info: LMInfo, dtype=torch.float32, seed: int = 0) -> list[dict]:
    """Example inputs per function, as real steps see them (they are also the mixed-precision
    calibration): each prefill on random tokens at position 0 with an empty cache, and decode at
    the position after the longest prefill with the cache that prefill wrote (run in torch eager)."""
    g = torch.Generator().manual_seed(seed)
    empty = torch.zeros(info.cache_shape, dtype=dtype)
    sigs = []
    for n in info.prefill_lengths:
        ids = torch.randint(0, info.vocab_size, (1, n), generator=g)
        sigs.append({"input_ids": ids, "position": torch.zeros(1, dtype=torch.int32), "k_cache": empty,
                     "v_cache": empty})
    with torch.no_grad():
        out = step(**sigs[-1])
    k_new, v_new = out["k_new"], out["v_new"]
    n = info.prefill_lengths[-1]
    k, v = empty.clone(), empty.clone()
    k[:, :, :, :n], v[:, :, :, :n] = k_new, v_new
    sigs.append({"input_ids": torch.randint(0, info.vocab_size, (1, 1), generator=g),
                 "position": torch.tensor([min(n, info.max_context - 1)], dtype=torch.int32), "k_cache": k, "v_cache": v})
    return sigs


def build_lm(model: torch.nn.Module, *, max_context: int = 256, prefill_lengths=(32,), kv_cache: str = "io",
             precision: str | None = None, minimum_deployment_target: str = "iOS18", target: str = "ane",
             compress: str | None = None, progress: bool = False, cache: bool = False, author: str | None = None,
             license: str | None = None, version: str | None = None, short_description: str | None = None,
             metadata: dict | None = None) -> MultiFunctionModel:
    """Build prefill and decode functions of a causal LM into one multifunction package
    (module docstring). Returns a :class:`tlc.driver.multifunction.MultiFunctionModel` with ``lm`` (the
    :class:`LMInfo`, stored in the package as ``tlc.lm``) and ``generate``.

    ``max_context``: cache slots (prompt + generated tokens, at most); ``prefill_lengths``: one
    ``prefill_L`` function per length (a prompt runs in the smallest that holds it, padded; longer
    prompts are fed in chunks of the largest); ``kv_cache``: ``"io"`` (default; the cache is
    functional I/O, as Apple's Neural Engine rules ask) or ``"state"`` (iOS18 ``MLState`` fp16
    buffers the functions update in the graph with ``slice_update`` + ``coreml_update_state``:
    :mod:`tlc.backends.coreml.state`; the form for Core ML's GPU; the IR and tlc's executors are the same in both
    forms, only the saved package differs, and ``save(path, kv_cache=...)`` writes either form of
    one build); ``precision``/``compress``/``target`` as :func:`tlc.build`
    (``compress`` leaves embeddings, and an LM head tied to them, dense: :mod:`tlc.backends.coreml.compress`
    compresses only weights every reader of which is a matmul/linear/conv). ``cache``: each
    function's trace and plan from the persistent compile cache (:mod:`tlc.driver.cache`; ``tlc build
    --task text-generation`` uses it unless ``--no-cache``). ``author``, ``license``, ``version``,
    ``short_description``, ``metadata``: the package's metadata, as :func:`tlc.build`'s.
    Raises :class:`InputError` for a bad length, ``kv_cache``, model or metadata.
    """
    if kv_cache not in KV_CACHE:
        raise InputError(f"kv_cache must be one of {KV_CACHE}, got {kv_cache!r}")
    lengths = sorted({int(x) for x in prefill_lengths})
    if not lengths or lengths[0] < 2 or lengths[-1] > max_context:
        raise InputError(f"prefill_lengths must be integers in 2..max_context ({max_context}); got {list(prefill_lengths)}")
    g = lm_geometry(model)
    limit = g["max_positions"]
    if limit is not None and max_context > limit:
        raise InputError(f"max_context={max_context} is beyond the model's max_position_embeddings ({limit}): positions "
                         f"past it were never trained (and learned position tables have no row for them)")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) and precision == "fp32" else dtype
    info = LMInfo(g["num_layers"], g["num_kv_heads"], g["head_dim"], int(max_context), g["vocab_size"],
                  tuple(lengths), g["eos_token_id"], kv_cache)
    step = LMStep(model).eval()
    sigs = example_steps(step, info, dtype)
    names = [prefill_name(n) for n in lengths] + ["decode"]
    interface = decide_interface(author=author, license=license, version=version, short_description=short_description,
                                 metadata=metadata)
    options = BuildOptions.decide(precision=precision, minimum_deployment_target=minimum_deployment_target,
                                  target=target, compress=compress, functions=len(names), interface=interface)
    with shared_weights():  # the functions read the model's weights in place: no copy per function
        mf = build_multifunction(step, sigs, options, function_names=names, default_function_name="decode",
                                 progress=progress, cache=cache)
    mf.lm = info
    mf.metadata[METADATA_KEY] = info.to_json()
    mf.state_forms = {"io": (), "state": state_bindings()}
    mf.states = mf.state_forms[kv_cache]
    return mf



__all__ = ["MASK_VALUE", "KV_CACHE", "IOCache", "LMStep", "lm_geometry", "example_steps", "build_lm", "state_bindings"]
