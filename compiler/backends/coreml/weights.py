"""One weight's compression: :class:`WeightConfig` (what coremltools' ``OpPalettizerConfig`` /
``OpLinearQuantizerConfig`` says for one const op), its cost in bits per weight
(:meth:`WeightConfig.bits`), the dense weight it decompresses to (:func:`simulate`, for measuring
sensitivity), and k-means on every core (:func:`palettize_params`).

**The numbers are coremltools'.** :func:`simulate` runs the very steps of coremltools'
``compression::palettize_weights`` / ``linear_quantize_weights`` passes for one const op (block
sizes from ``coremltools.optimize._utils.infer_block_sizes``, per-channel scales as
``transform_op`` computes them, ``blockwise_compress`` then ``decompress``), and keeps the
look-up tables and indices it computed (:func:`kmeans_memo`), so the pass that writes the
package later takes them instead of clustering the weight again: what was measured is what ships.

**k-means on every core.** coremltools clusters a 16-channel group of an fp16 weight with its
vendored ``kmeans1d`` (an exact 1-D k-means in C) one group after another, building its ctypes
arguments element by element in Python. :func:`palettize_params` calls the same C function on NumPy
buffers (the same doubles in, so the same clusters out: tests/test_compress_recipe.py compares
every byte with ``blockwise_compress``) from :data:`tlc.ops.parallel.NUM_THREADS` threads (a
ctypes call releases the GIL). Measured on this 2-core machine (benchmarks/bench_lm_build.py,
docs/lm.md): the arguments alone were ~25% of a group's time.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from tlc.errors import InputError

#: palette sizes coremltools' ``palettize_weights`` takes (``_SUPPORTED_NBITS``)
PALETTE_NBITS = (1, 2, 3, 4, 6, 8)
#: integer widths of ``linear_quantize_weights`` tlc uses (per output channel, symmetric)
QUANTIZE_NBITS = (4, 8)
#: ``granularity`` values (coremltools' names); per-block quantization is GPU-only (wrong on the ANE:
#: apple/coreai-models#279), so tlc does not emit it
GRANULARITIES = ("per_tensor", "per_grouped_channel", "per_channel")
KINDS = ("palettize", "quantize")


@dataclass(frozen=True)
class WeightConfig:
    """How one weight is stored: ``kind`` ``"palettize"`` (a k-means look-up table of
    ``2**nbits`` entries, coremltools ``OpPalettizerConfig(mode="kmeans")``) or ``"quantize"``
    (``nbits``-bit symmetric integers times an fp16 scale per output channel,
    ``OpLinearQuantizerConfig(mode="linear_symmetric")``); ``granularity`` (``per_tensor``: one
    table; ``per_grouped_channel``: one table per ``group_size`` output channels, iOS18;
    ``per_channel``: quantization's one scale per output channel), ``enable_per_channel_scale``
    (palettize output channels normalized by their max |w|, iOS18) and ``cluster_dim`` (vector
    palettization: ``cluster_dim`` weights share one index, iOS18), all with coremltools' meaning
    (``coremltools.optimize.coreml.OpPalettizerConfig``). Raises :class:`InputError` for values
    coremltools does not take."""

    kind: str
    nbits: int
    granularity: str = "per_tensor"
    group_size: int = 0
    enable_per_channel_scale: bool = False
    cluster_dim: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"compression kind must be one of {KINDS}, got {self.kind!r}")
        allowed = PALETTE_NBITS if self.kind == "palettize" else QUANTIZE_NBITS
        if self.nbits not in allowed:
            raise InputError(f"{self.kind} nbits must be one of {allowed}, got {self.nbits!r}")
        if self.granularity not in GRANULARITIES:
            raise InputError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.kind == "quantize" and (self.granularity != "per_channel" or self.enable_per_channel_scale
                                        or self.cluster_dim != 1):
            raise InputError("quantize takes granularity 'per_channel' only (one scale per output channel: per-block "
                             "int4 is wrong on the ANE, apple/coreai-models#279)")
        if self.kind == "palettize" and self.granularity == "per_channel":
            raise InputError("palettize granularity is 'per_tensor' or 'per_grouped_channel' (group_size=1 for one "
                             "table per output channel), as coremltools' OpPalettizerConfig")
        if (self.granularity == "per_grouped_channel") != (self.group_size > 0):
            raise InputError(f"group_size > 0 goes with granularity 'per_grouped_channel' (got granularity "
                             f"{self.granularity!r}, group_size {self.group_size!r})")
        if not isinstance(self.cluster_dim, int) or self.cluster_dim < 1:
            raise InputError(f"cluster_dim must be a positive integer, got {self.cluster_dim!r}")

    @property
    def label(self) -> str:
        """Short text: ``palettize4/g16``, ``palettize6``, ``int8``, ``palettize4/g16+scale``, ``palettize2/v2``."""
        if self.kind == "quantize":
            return f"int{self.nbits}"
        s = f"palettize{self.nbits}" + (f"/g{self.group_size}" if self.group_size else "")
        return s + ("+scale" if self.enable_per_channel_scale else "") + (f"/v{self.cluster_dim}" if self.cluster_dim > 1 else "")

    @property
    def needs_ios18(self) -> bool:
        """Whether the config's ``constexpr_*`` form exists only from iOS18 (grouped tables, per-channel
        scales, vector tables, int4, 3-bit tables: iOS16's ``constexpr_lut_to_dense`` takes 2, 4, 16, 64
        or 256 entries)."""
        return bool(self.group_size or self.enable_per_channel_scale or self.cluster_dim > 1
                    or (self.nbits == 4 and self.kind == "quantize") or (self.nbits == 3 and self.kind == "palettize"))

    def bits(self, shape, axis: int = 0) -> float:
        """Bits per weight element stored for a weight of ``shape`` whose output channels are along
        ``axis``, tables and scales included (fp16): palettization ``nbits / cluster_dim`` per
        element plus ``2**nbits * cluster_dim`` table entries per table (one per tensor or per
        ``group_size`` channels) plus one scale per output channel with ``enable_per_channel_scale``;
        quantization ``nbits`` plus one scale per output channel."""
        n = int(np.prod(shape))
        channels = int(shape[axis]) if len(shape) else 1
        if self.kind == "quantize":
            return self.nbits + 16 * channels / n
        tables = channels // self.group_size if self.group_size else 1
        extra = tables * (1 << self.nbits) * self.cluster_dim * 16 + (16 * channels if self.enable_per_channel_scale else 0)
        return self.nbits / self.cluster_dim + extra / n

    def op_config(self, num_kmeans_workers: int = 1):
        """The coremltools op config (``OpPalettizerConfig`` / ``OpLinearQuantizerConfig``)."""
        import coremltools.optimize.coreml as cto

        if self.kind == "quantize":
            return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=f"int{self.nbits}", granularity="per_channel")
        kw = {"group_size": self.group_size} if self.group_size else {}
        return cto.OpPalettizerConfig(mode="kmeans", nbits=self.nbits, granularity=self.granularity,
                                      enable_per_channel_scale=self.enable_per_channel_scale,
                                      cluster_dim=self.cluster_dim, num_kmeans_workers=num_kmeans_workers, **kw)

    def to_json(self) -> dict:
        """The recipe-file form (every field, coremltools' names)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d, where: str = "") -> "WeightConfig":
        """A config from its :meth:`to_json` dict; raises :class:`InputError` naming ``where`` for
        another type, an unknown key or a bad value."""
        if not isinstance(d, dict):
            raise InputError(f"{where}: a weight config is an object like {{\"kind\": \"palettize\", \"nbits\": 4}} "
                             f"(or null for dense), got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"{where}: unknown key(s) {sorted(unknown)}; a weight config has "
                             f"{', '.join(cls.__dataclass_fields__)}")
        try:
            return cls(**d)
        except InputError as e:
            raise InputError(f"{where}: {e.args[0]}") from None
        except TypeError as e:
            raise InputError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------ simulate one weight

#: while :func:`kmeans_memo` is active: ``{key: LutParams}`` of weights clustered already
_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tlc_kmeans_memo", default=None)


@contextlib.contextmanager
def kmeans_memo():
    """Within this block, :func:`palettize_params` remembers every look-up table and index array
    it computes (by the weight's bytes, shape and the palettization arguments), and the pass that
    compresses the package (:func:`tlc.backends.coreml.compress.compress_mlmodel`) takes them from
    here: one k-means per weight and config, whether it was measured first or not."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _key(data: np.ndarray, nbits, block_sizes, cluster_dim, channel_axis) -> tuple:
    digest = hashlib.blake2b(np.ascontiguousarray(data).view(np.uint8).reshape(-1), digest_size=16).hexdigest()
    return (digest, data.shape, data.dtype.str, nbits, tuple(int(b) for b in block_sizes), cluster_dim, channel_axis)


def _kmeans1d():
    """coremltools' vendored kmeans1d C library, or None (not built for this platform)."""
    try:
        from coremltools._deps.kmeans1d import core
    except Exception:
        return None
    fn = getattr(getattr(core, "_DLL", None), "cluster_with_weights", None)
    return fn


def _unique_fp16(values: np.ndarray):
    """``np.unique(values, return_inverse=True, return_counts=True)`` of a flat fp16 array, by a
    histogram of the 16-bit patterns instead of a sort (0.6 instead of 4 ms for a 16 x 2048 group):
    the patterns are mapped to keys in the floats' order (-0.0 counted as +0.0, as ``np.unique``
    compares them equal). ``None`` if the array holds a NaN (``np.unique`` orders those)."""
    bits = values.view(np.uint16)
    if ((bits & 0x7FFF) > 0x7C00).any():  # exponent all ones, mantissa not zero: NaN
        return None
    bits = np.where(bits == 0x8000, np.uint16(0), bits)
    key = np.where(bits & 0x8000, 0x7FFF - (bits & 0x7FFF), bits | 0x8000).astype(np.intp)
    counts = np.bincount(key, minlength=1 << 16)
    present = np.flatnonzero(counts)
    rank = np.cumsum(counts > 0) - 1
    pattern = np.where(present >= 0x8000, present - 0x8000, 0x8000 | (0x7FFF - present)).astype(np.uint16)
    return pattern.view(np.float16), rank[key], counts[present]


def _group_lut(group: np.ndarray, nbits: int, fn):
    """coremltools' ``_get_kmeans_lookup_table_and_weight`` for an fp16 group of >= 10000 values
    (its kmeans1d branch): k-means of the unique values weighted by their counts; the same C call
    on NumPy buffers."""
    lut_len = 1 << nbits
    flat = group.reshape(-1)
    got = _unique_fp16(flat) if flat.dtype == np.float16 else None
    values, inverse, counts = got if got is not None else np.unique(flat, return_inverse=True, return_counts=True)
    n = len(values)
    k = min(n, lut_len)
    a = np.ascontiguousarray(values, np.float64)
    w = np.ascontiguousarray(counts, np.float64)
    clusters = np.empty(n, np.uint64)
    centroids = np.empty(k, np.float64)
    dbl = ctypes.POINTER(ctypes.c_double)
    fn(a.ctypes.data_as(dbl), w.ctypes.data_as(dbl), ctypes.c_ulong(n), ctypes.c_ulong(k),
       clusters.ctypes.data_as(ctypes.POINTER(ctypes.c_ulong)), centroids.ctypes.data_as(dbl))
    lut = np.zeros(lut_len)
    lut[:k] = centroids
    return lut.astype(group.dtype), clusters.astype(np.uint8)[inverse.reshape(-1)]


def palettize_params(data: np.ndarray, nbits: int, block_sizes, cluster_dim: int = 1, channel_axis=None,
                     take: bool = False):
    """``coremltools.optimize.coreml.palettize_weights.blockwise_compress(data, "KMEANS", nbits,
    block_sizes, cluster_dim=..., channel_axis=...)``: a LutParams (indices, lut, vector_axis), or
    None where coremltools cannot palettize (channels not divisible by the group). Remembered under
    :func:`kmeans_memo`; ``take`` (the pass writing the package) takes a remembered result out of
    the memo and remembers nothing new (the program holds it from then on). fp16 scalar palettization of groups of >= 10000 values (where coremltools
    uses kmeans1d) runs its groups on :data:`tlc.ops.parallel.NUM_THREADS` threads; anything else
    is coremltools' own function."""
    from coremltools.optimize.coreml._quantization_passes import palettize_weights as P

    memo = _MEMO.get()
    key = None if memo is None else _key(data, nbits, block_sizes, cluster_dim, channel_axis)  # hashed once
    got = None if memo is None else memo.pop(key, None) if take else memo.get(key)
    if got is not None:
        return got
    fn = _kmeans1d()
    axis, group = channel_axis, 0
    for i, b in enumerate(block_sizes):
        if b != 0 and b != data.shape[i]:
            axis, group = i, b
    axis = 0 if axis is None else axis
    n_ch = data.shape[axis]
    group = group or n_ch
    fast = (fn is not None and cluster_dim == 1 and data.dtype == np.float16 and n_ch % group == 0
            and data.size // (n_ch // group) >= 10_000)
    if not fast:
        params = P.blockwise_compress(data, "KMEANS", nbits, list(block_sizes), cluster_dim=cluster_dim,
                                      channel_axis=channel_axis)
    else:
        from coremltools.converters.mil.mil import types
        from coremltools.optimize import _utils as optimize_utils

        from tlc.ops.parallel import parallel_for

        moved = np.swapaxes(data, 0, axis) if axis else data
        groups = np.split(moved, n_ch // group, axis=0)
        luts, idx = [None] * len(groups), [None] * len(groups)

        def run(lo, hi):
            for i in range(lo, hi):
                luts[i], idx[i] = _group_lut(groups[i], nbits, fn)

        parallel_for(run, len(groups))
        lut_shape = [1] * (data.ndim + 2)
        lut_shape[0], lut_shape[-2], lut_shape[-1] = len(groups), 1 << nbits, 1
        lut = np.stack(luts).reshape(lut_shape)
        indices = np.stack(idx).reshape(moved.shape)
        if axis:
            lut, indices = np.swapaxes(lut, 0, axis), np.swapaxes(indices, 0, axis)
        np_dtype = types.nptype_from_builtin(types.string_to_builtin(f"uint{nbits}"))
        params = optimize_utils.LutParams(indices.astype(np_dtype), lut, None)
    if memo is not None and params is not None and not take:
        memo[key] = params
    return params


def output_axis(op) -> int:
    """The output-channel axis of const op ``op``'s weight as coremltools' passes pick it
    (``coremltools.optimize._utils.select_input_output_channel_axis``; 0 when they cannot tell)."""
    from coremltools.optimize import _utils as optimize_utils

    _, out = optimize_utils.select_input_output_channel_axis(op)
    return 0 if out is None else int(out)


def simulate(op, cfg: WeightConfig) -> np.ndarray | None:
    """The dense weight the package holds when const op ``op`` (a MIL ``const``) is compressed
    with ``cfg``: coremltools' pass steps for that op (``transform_op`` of
    ``compression::palettize_weights`` / ``linear_quantize_weights``) and ``decompress``, in the
    weight's dtype. None where coremltools would skip the op (block sizes it cannot infer, channels
    not divisible by ``group_size``, an invalid ``cluster_dim``)."""
    from coremltools.optimize import _utils as optimize_utils
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights as LQ
    from coremltools.optimize.coreml._quantization_passes import palettize_weights as P

    w = op.outputs[0].val
    oc = cfg.op_config()
    block_sizes, axis = optimize_utils.infer_block_sizes(op, oc, w, return_channel_axis=True)
    if block_sizes is None:
        return None
    if cfg.kind == "quantize":
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero channel: scale 0, as the pass does it
            params = LQ.blockwise_compress(w, cfg.nbits, "LINEAR_SYMMETRIC", True, block_sizes)
        return None if params is None else LQ.decompress(params).astype(w.dtype)
    if cfg.cluster_dim > 1 and not optimize_utils.is_cluster_dim_valid(op, cfg.cluster_dim, axis):
        return None
    scale = None
    data = w
    if cfg.enable_per_channel_scale:
        scale = np.max(np.abs(w), axis=axis, keepdims=True)
        scale[scale == 0] = 1
        data = w / scale
    params = palettize_params(data, cfg.nbits, block_sizes, cfg.cluster_dim, axis)
    if params is None:
        return None
    dense = P.decompress(params)
    return (dense * scale if scale is not None else dense).astype(w.dtype)


__all__ = ["WeightConfig", "PALETTE_NBITS", "QUANTIZE_NBITS", "GRANULARITIES", "KINDS", "kmeans_memo",
           "palettize_params", "simulate", "output_axis"]
