"""Token generation over an LM package built by ``tlc.build_lm``: ``prefill_L`` runs on the prompt
(the smallest bucket that holds it, padded; longer prompts in chunks of the largest; a bucket is
used only when it fits in the cache slots left, else the tail goes through ``decode`` one token at a
time) and ``decode`` once per new token. With ``kv_cache="io"`` the host owns the cache buffers and
writes each function's ``k_new``/``v_new`` into them at ``position``; with ``kv_cache="state"`` the
cache is the package's ``MLState`` (``make_state()``), which the functions update themselves.

Sampling follows Hugging Face ``generate``: greedy for ``do_sample=False``; else the logits are
divided by ``temperature``, then ``top_k`` and ``top_p`` filter them (``TemperatureLogitsWarper``,
``TopKLogitsWarper``, ``TopPLogitsWarper``, in that order) and a token is drawn from the softmax.
Defaults are HF's ``GenerationConfig`` ones: ``temperature=1.0``, ``top_k=50`` (0 or None: no
top-k), ``top_p=1.0``.
Runs on anything that maps named arrays to outputs and picks the function by input shape:
:class:`tlc.runtime.LoadedModel` (Core ML on macOS, the MIL interpreter anywhere) and
:class:`tlc.driver.multifunction.MultiFunctionModel` (tlc's NumPy and torch-device executors).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from tlc.errors import InputError

#: package metadata key holding :class:`LMInfo` as JSON
METADATA_KEY = "tlc.lm"


@dataclass(frozen=True)
class LMInfo:
    """What generation needs to drive an LM package: the cache geometry (``cache_shape`` =
    ``[num_layers, 1, num_kv_heads, max_context, head_dim]``), the prefill lengths, the vocabulary
    size and the model's end-of-sequence ids."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_context: int
    vocab_size: int
    prefill_lengths: tuple[int, ...]
    eos_token_id: tuple[int, ...] = ()
    kv_cache: str = "io"

    @property
    def cache_shape(self) -> tuple[int, ...]:
        """``(num_layers, 1, num_kv_heads, max_context, head_dim)``: ``k_cache``/``v_cache``."""
        return (self.num_layers, 1, self.num_kv_heads, self.max_context, self.head_dim)

    def to_json(self) -> str:
        """The JSON text stored under :data:`METADATA_KEY`."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LMInfo":
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        d["prefill_lengths"] = tuple(d["prefill_lengths"])
        d["eos_token_id"] = tuple(d.get("eos_token_id") or ())
        return cls(**d)

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over :meth:`to_json`: which package a :class:`KVCache` belongs to."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def prefill_name(length: int) -> str:
    """The function name of the prefill bucket of ``length`` tokens."""
    return f"prefill_{length}"


@dataclass
class KVCache:
    """The cache buffers (``k``, ``v``: float32 ``LMInfo.cache_shape``, NumPy arrays on the host or
    torch tensors on the device the model runs on, which then never copies them; None for a stateful
    package, whose cache is ``state``: what its ``make_state()`` returned) and how many slots
    hold tokens (``length``: ``tokens`` are theirs); ``owner`` is the fingerprint of the package's
    :class:`LMInfo`. ``pending``: the last token a :func:`generate` call produced, not yet run
    through the model (no step was needed to return it); the next call on this cache feeds it
    before its own tokens, so continuing a conversation loses nothing."""

    k: np.ndarray | None
    v: np.ndarray | None
    owner: str
    length: int = 0
    tokens: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    state: object = None

    @classmethod
    def empty(cls, info: LMInfo) -> "KVCache":
        """Zeroed float32 buffers of ``info.cache_shape``, no tokens."""
        return cls(np.zeros(info.cache_shape, np.float32), np.zeros(info.cache_shape, np.float32), info.fingerprint)

    @classmethod
    def of_state(cls, info: LMInfo, state) -> "KVCache":
        """A cache held in a stateful package's ``state`` (fresh from its ``make_state()``)."""
        return cls(None, None, info.fingerprint, state=state)


def _step(run, info: LMInfo, cache: KVCache, tokens: list[int], bucket: int) -> np.ndarray:
    """Run ``tokens`` (padded to ``bucket``, which fits in the slots left) at ``cache.length``;
    the cache takes their entries. Returns the logits ``[bucket, vocab]``."""
    feed = np.zeros((1, bucket), np.int32)
    feed[0, :len(tokens)] = tokens
    feeds = {"input_ids": feed, "position": np.array([cache.length], np.int32)}
    if cache.state is not None:  # the package writes its MLState itself
        out = run(feeds, state=cache.state)
    else:
        out = run({**feeds, "k_cache": cache.k, "v_cache": cache.v})
        n, at = len(tokens), cache.length
        cache.k[:, :, :, at:at + n] = out["k_new"][:, :, :, :n]
        cache.v[:, :, :, at:at + n] = out["v_new"][:, :, :, :n]
    cache.length += len(tokens)
    cache.tokens += list(tokens)
    logits = out["logits"]
    return (logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits))[0]


def _check_cache(info: LMInfo, cache: KVCache) -> None:
    if cache.owner != info.fingerprint or (cache.state is None and cache.k.shape != info.cache_shape):
        shape = list(cache.k.shape) if cache.k is not None else "a state"
        raise InputError(f"generate: the cache comes from another package (cache {shape}, this package "
                         f"{list(info.cache_shape)}, kv_cache={info.kv_cache!r}); make one with new_cache()")


@dataclass
class GenerationStats:
    """Seconds and tokens of the last :func:`generate` call (prefill and decode separately)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second (the first new token comes from the prefill, not counted)."""
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 and self.new_tokens > 1 else float("nan")

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens per second of prefill."""
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")


def _filtered(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None) -> np.ndarray:
    x = logits.astype(np.float64) / float(temperature)
    if top_k is not None and 0 < top_k < x.size:
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x < kth, -np.inf, x)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(x)  # ascending, as TopPLogitsWarper
        p = np.exp(x[order] - x[order][-1])
        cum = np.cumsum(p / p.sum())
        remove = cum <= 1 - top_p
        remove[-1] = False  # min_tokens_to_keep=1
        x[order[remove]] = -np.inf
    return x


def select(logits: np.ndarray, do_sample: bool, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, rng: np.random.Generator | None = None) -> int:
    """The next token from one position's logits ``[vocab]`` (greedy, or sampled as HF does)."""
    if not do_sample:
        return int(np.argmax(logits))
    if temperature <= 0:
        raise InputError(f"temperature must be > 0 with do_sample=True, got {temperature}")
    x = _filtered(logits, temperature, top_k, top_p)
    p = np.exp(x - x.max())
    p /= p.sum()
    return int((rng or np.random.default_rng()).choice(p.size, p=p))


def _check_prompt(info: LMInfo, ids: Sequence[int], start: int, max_new_tokens: int) -> None:
    if not len(ids):
        raise InputError("generate: input_ids is empty")
    bad = [(i, t) for i, t in enumerate(ids) if not 0 <= t < info.vocab_size]
    if bad:
        i, t = bad[0]
        raise InputError(f"generate: token id {t} at position {i} is outside the vocabulary (0..{info.vocab_size - 1})")
    need = start + len(ids) + max(max_new_tokens - 1, 0)
    if need > info.max_context:
        raise InputError(f"generate: {start} cached + {len(ids)} prompt + {max_new_tokens} new tokens need {need} cache "
                         f"slots; the package holds max_context={info.max_context} (build_lm(max_context=...))")


def score(run: Callable[..., Mapping[str, np.ndarray]], info: LMInfo, tokens, cache: KVCache | None = None
          ) -> np.ndarray:
    """Teacher-forced logits ``[n, vocab]`` of a token sequence, every token through ``decode``
    (the steps :func:`generate` takes after the prompt, fed given tokens instead of chosen ones).
    Row i predicts token i + 1. ``cache``: an empty one from the package's ``new_cache()``
    (needed for a stateful package). Raises :class:`InputError` as :func:`generate` does."""
    ids = [int(t) for t in np.asarray(tokens).reshape(-1)]
    _check_prompt(info, ids, 0, 0)
    cache = KVCache.empty(info) if cache is None else cache
    _check_cache(info, cache)
    return np.stack([_step(run, info, cache, [t], 1)[0] for t in ids])


def generate(run: Callable[..., Mapping[str, np.ndarray]], info: LMInfo, input_ids, max_new_tokens: int = 32, *,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = 50, top_p: float | None = None,
             eos_token_id=None, stream: Callable[[int], None] | None = None, seed: int | None = None,
             cache: KVCache | None = None, stats: GenerationStats | None = None) -> np.ndarray:
    """Generate up to ``max_new_tokens`` after ``input_ids`` (``[n]`` or ``[1, n]`` ints); returns
    ``[1, n + generated]`` int64 like HF ``generate``. ``run(feeds)`` runs the package (the
    function is picked by the shape of ``input_ids``; ``run(feeds, state=...)`` for a cache held
    in a package's state). ``eos_token_id`` (default the model's; an
    int or a list) stops generation after it is produced; ``stream(token)`` is called for every
    new token; ``seed`` seeds sampling; ``cache`` continues from an earlier call's
    :class:`KVCache` (it must come from this package; its pending last token is fed first, and the
    result holds this call's ``input_ids`` and new tokens); ``stats`` receives the timings.
    Raises :class:`InputError` for an empty prompt, a token id outside the vocabulary, more tokens
    than ``max_context`` slots, or a cache of another package."""
    ids = [int(t) for t in np.asarray(input_ids).reshape(-1)]
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    cache = KVCache.empty(info) if cache is None else cache
    _check_cache(info, cache)
    fed = list(cache.pending) + ids  # the previous call's last token first (KVCache.pending)
    _check_prompt(info, fed, cache.length, max_new_tokens)
    cache.pending = []
    eos = info.eos_token_id if eos_token_id is None else (
        tuple(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else (int(eos_token_id),))
    rng = np.random.default_rng(seed)
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens, stats.new_tokens = len(ids), 0

    t0 = time.perf_counter()
    pos = 0
    while pos < len(fed):
        rest = len(fed) - pos
        # a padded bucket must fit in the slots left (a stateful package writes all of it)
        usable = [n for n in info.prefill_lengths if n <= info.max_context - cache.length]
        take = 1 if rest == 1 or not usable else min(rest, max(usable))
        bucket = 1 if take == 1 else min(n for n in usable if n >= take)
        logits = _step(run, info, cache, fed[pos:pos + take], bucket)[take - 1]
        pos += take
    stats.prefill_s = time.perf_counter() - t0
    out = list(ids)
    t0 = time.perf_counter()
    for k in range(max_new_tokens):
        tok = select(logits, do_sample, temperature, top_k, top_p, rng)
        out.append(tok)
        stats.new_tokens += 1
        if stream is not None:
            stream(tok)
        if tok in eos or k == max_new_tokens - 1:
            cache.pending = [tok]
            break
        if k == 0:
            t0 = time.perf_counter()  # decode tokens/s counts the steps after the first token
        logits = _step(run, info, cache, [tok], 1)[0]
    stats.decode_s = time.perf_counter() - t0 if stats.new_tokens > 1 else 0.0
    return np.asarray(out, np.int64)[None]


__all__ = ["METADATA_KEY", "LMInfo", "KVCache", "GenerationStats", "prefill_name", "select", "score", "generate"]
