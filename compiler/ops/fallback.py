"""Fallback-only ops: torch operators MIL cannot express, kept under their torch name.

The front-end (:mod:`tlc.frontend.lower`) makes an ATen node a fallback node when tlc has no
lowering for it (or the lowering declines these arguments), when it reads or produces a complex
value (FFT, complex arithmetic), or when a shape it reads or produces is data-dependent (torch's
unbacked SymInts ``u0``: ``nonzero``, boolean-mask indexing and what follows until a reduction
makes the shape static again). Ops registered with ``torch.library`` are of the first kind. Such
nodes never abort the build; they can only be placed on a fallback target (../shared/design.md).

**Op names.** The node's op is the torch overload's qualified name as ``str(OpOverload)`` prints
it — ``namespace.op.overload``: ``aten._fft_r2c.default``, ``aten.nonzero.default``,
``mylib.myop.default``. IR op names never contain a dot, so the two cannot collide. Rows with a
NumPy kernel are registered below; every other such name gets a generic row on first use
(:func:`generic_row`, also in a fresh process) whose kernel runs the original torch op on CPU. All
rows have ``emit_mil=None`` and an ``ane`` rule that always returns a reason.

**Attributes** (one format for every fallback node, so any of them can also run as the torch op,
see :func:`torch_call`; all values JSON-encodable: None/bool/int/float/str and nested tuples):

* ``args``: the op's positional arguments, encoded (below);
* ``kwargs``: its keyword arguments, ``((name, encoded value), ...)``;
* ``out_types``: one entry per result of the torch op: ``(ir_dtype, shape)`` (shape dims are ints
  or symbolic size names), or ``None`` for a result torch returns as ``None``. The node's outputs
  are the non-``None`` entries in order; the ``infer`` rule reads its types from here, so
  :func:`tlc.ir.verify` works on a graph rebuilt from JSON;
* ``why``: why the node fell back (the ``ane`` rule's reason when no more specific one applies).

**Encoded argument values:** None/bool/int/float/str as themselves; lists and tuples as tuples;
everything else as a tagged tuple whose first element is a string starting with ``$``:
``("$in", i, "int64")`` — tensor input ``i`` of the node, with the torch dtype the op saw (the IR
holds int64 as int32; the torch kernel converts back); ``("$int", i)``, ``("$float", i)``,
``("$bool", i)`` — a symbolic scalar (e.g. ``x.shape[0]`` of a masked tensor), carried as the 0-d
input ``i``; ``("$dtype", "float32")``, ``("$device", "cpu")``, ``("$layout", "strided")``,
``("$memory_format", "contiguous_format")``, ``("$complex", re, im)``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import numpy as np

from ..errors import IRError, TlcError, UnsupportedOpError
from ..dtypes import FROM_TORCH
from ..dtypes import TensorType
from .table import OPS, OpDef, make_row, register

_SCALAR_TAGS = {"$int": "int32", "$float": "fp32", "$bool": "bool"}

#: Every fallback row is host-only for the torch-device executor (its ``torch`` kernel contract:
#: no host reads, capturable as a CUDA graph), which data-dependent shapes and symbolic scalars
#: break; :func:`torch_call` runs any of them as the original torch op on a device when wanted.
HOST_ONLY = ("fallback op: runs on the host (NumPy kernel, or the original torch op on CPU); data-dependent "
             "shapes and symbolic sizes read host data")
_OBJECT_TAGS = ("$dtype", "$device", "$layout", "$memory_format")
_NAME = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*\.[A-Za-z_]\w*$")


def is_torch_op_name(name: str) -> bool:
    """Whether ``name`` has the form of a fallback op name (``namespace.op.overload``)."""
    return bool(_NAME.match(name))


def is_fallback(name: str) -> bool:
    """Whether ``name`` is a fallback op (its row, registered or generic, has ``emit_mil=None``)."""
    return is_torch_op_name(name)


# ------------------------------------------------------------------------------ attr encoding


def encode(x: Any, as_input: Callable[[Any], tuple | None]) -> Any:
    """Encode one argument value (format in the module docstring).

    ``as_input(x)`` returns the ``("$in", ...)`` / ``("$int", ...)`` tag for a tensor-like value
    of the caller's (the front-end's IR values) or ``None``. Raises :class:`UnsupportedOpError` for
    a value that cannot be stored in the IR."""
    tag = as_input(x)
    if tag is not None:
        return tag
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, complex):
        return ("$complex", x.real, x.imag)
    if isinstance(x, (list, tuple)):
        return tuple(encode(y, as_input) for y in x)
    import torch

    kinds = [(torch.dtype, "$dtype"), (torch.device, "$device"), (torch.layout, "$layout"),
             (torch.memory_format, "$memory_format")]
    for kind, tag in kinds:
        if isinstance(x, kind):
            return (tag, str(x).removeprefix("torch."))
    raise UnsupportedOpError(f"argument {x!r} of type {type(x).__name__} cannot be stored in tlc's IR")


def _tagged(x) -> bool:
    return isinstance(x, tuple) and len(x) > 0 and isinstance(x[0], str) and x[0].startswith("$")


def input_refs(attrs) -> dict[int, tuple]:
    """Input index -> its tag (``("$in", i, dtype)`` or ``("$int", i)`` ...) in ``args``/``kwargs``."""
    refs: dict[int, tuple] = {}

    def walk(x):
        if _tagged(x):
            if x[0] == "$in" or x[0] in _SCALAR_TAGS:
                refs[x[1]] = x
        elif isinstance(x, tuple):
            for y in x:
                walk(y)

    walk(attrs.get("args", ()))
    walk(tuple(v for _, v in attrs.get("kwargs", ())))
    return refs


def decode(attrs, arrays, to_tensor: Callable | None = None, device: str | None = None) -> tuple[list, dict]:
    """``(args, kwargs)`` for the op. Tensor inputs are NumPy arrays, or ``to_tensor(array,
    torch_dtype_name)`` when given (the torch kernel); dtype-like tags become torch objects only
    then (NumPy kernels get their names), devices become ``device`` when given."""

    def dec(x):
        if _tagged(x):
            tag = x[0]
            if tag == "$in":
                a = arrays[x[1]]
                return to_tensor(a, x[2]) if to_tensor else a
            if tag in _SCALAR_TAGS:
                return {"$int": int, "$float": float, "$bool": bool}[tag](np.asarray(arrays[x[1]]).item())
            if tag == "$complex":
                return complex(x[1], x[2])
            if tag in _OBJECT_TAGS:
                if to_tensor is None:
                    return x[1]
                import torch

                if tag == "$device":
                    return torch.device(device or x[1])
                return getattr(torch, x[1])
            raise IRError(f"unknown argument tag {tag!r}")
        if isinstance(x, tuple):
            return tuple(dec(y) for y in x)
        return x

    return [dec(a) for a in attrs.get("args", ())], {k: dec(v) for k, v in attrs.get("kwargs", ())}


def _select(res, out_types) -> tuple:
    """The results that are node outputs (``out_types`` entries that are not ``None``)."""
    res = tuple(res) if isinstance(res, (tuple, list)) else (res,)
    if len(res) != len(out_types):
        raise TlcError(f"the op returned {len(res)} results; the graph recorded {len(out_types)}")
    return tuple(r for r, t in zip(res, out_types) if t is not None)


# -------------------------------------------------------------------------------- row rules


def _infer(in_types, attrs) -> list:
    """Output types from ``out_types``; checks the inputs against the recorded argument tags."""
    if "out_types" not in attrs:
        raise IRError("fallback node has no 'out_types' attribute")
    refs = input_refs(attrs)
    if sorted(refs) != list(range(len(in_types))):
        raise IRError(f"has {len(in_types)} inputs but its arguments refer to inputs {sorted(refs)}")
    for i, t in enumerate(in_types):
        tag = refs[i]
        want = FROM_TORCH.get(tag[2]) if tag[0] == "$in" else _SCALAR_TAGS[tag[0]]
        if t.dtype != want or (tag[0] != "$in" and t.rank != 0):
            raise IRError(f"input {i} is {t}; its argument {tag} needs {want}" + ("" if tag[0] == "$in" else "[]"))
    return [TensorType(dt, tuple(shape)) for dt, shape in (e for e in attrs["out_types"] if e is not None)]


def _flops(in_types, out_types, attrs) -> int:
    """Rough: one operation per output element (a lower bound for data-dependent shapes)."""
    return sum(t.size for t in out_types)


def _reason(text: str | None):
    """The ``ane`` rule of a fallback row (after :func:`tlc.ops.ane_common`): the row's own reason
    ``text``, else the node's ``why``; never None."""

    def ane(in_types, out_types, attrs):
        return text or attrs.get("why") or "no MIL lowering in tlc; runs in the fallback runtime"

    return ane


def _kernel(fn: Callable) -> Callable:
    """A row kernel: decode the attributes, call ``fn``, keep the results that are node outputs."""

    def kernel(attrs, *arrays):
        args, kwargs = decode(attrs, arrays)
        return _select(fn(*args, **kwargs), attrs["out_types"])

    kernel.__doc__ = fn.__doc__
    return kernel


def fallback_op(name: str, reason: str | None):
    """Decorator: register ``fn(*args, **kwargs)`` — the torch op's own signature, tensors as
    NumPy arrays — as the NumPy kernel of fallback op ``name``; ``reason``: why it cannot run on
    the ANE (None: the node's ``why``)."""

    def deco(fn):
        register(name, infer=_infer, numpy=_kernel(fn), emit_mil=None, ane=_reason(reason), flops=_flops,
                 doc=fn.__doc__ or "", host_only=HOST_ONLY)
        return fn

    return deco


# ------------------------------------------------------------------------------ torch kernel

_GENERIC: dict[str, OpDef] = {}


def resolve(name: str):
    """The ``torch.ops`` overload named ``name``. Raises :class:`TlcError` naming the op when this
    process does not have it (a custom op whose module is not imported, or another torch)."""
    import torch

    ns, op, overload = name.split(".")
    try:
        return getattr(getattr(getattr(torch.ops, ns), op), overload)
    except (AttributeError, RuntimeError):
        if ns == "aten":
            raise TlcError(f"torch {torch.__version__} has no operator aten::{op}.{overload} "
                           f"(the graph was built with another torch version)") from None
        raise TlcError(f"custom op {ns}::{op}.{overload} is not registered in this process: import the Python "
                       f"module that registers it (torch.library.custom_op('{ns}::{op}', ...)) before running "
                       f"the graph") from None


def torch_call(name: str, attrs, arrays, device=None) -> tuple:
    """Run fallback op ``name`` as the original torch op; returns its outputs (torch tensors, or
    Python scalars for symbolic sizes), one per node output. ``arrays``: the node's inputs as
    NumPy arrays or torch tensors; ``device``: where to run (default CPU; device arguments of the
    op follow it). Used by :func:`generic_row` and by torch-device executors."""
    import torch

    op = resolve(name)

    def to_tensor(a, dtype_name):
        if not isinstance(a, torch.Tensor):
            a = np.asarray(a)
            if not (a.flags.c_contiguous and a.flags.writeable):
                a = a.copy()  # torch.from_numpy needs a writeable buffer
            a = torch.from_numpy(a)
        return a.to(device=device or a.device, dtype=getattr(torch, dtype_name))

    args, kwargs = decode(attrs, arrays, to_tensor, None if device is None else str(device))
    with torch.no_grad():
        res = op(*args, **kwargs)
    return _select(res, attrs["out_types"])


def _to_numpy(r):
    import torch

    if isinstance(r, torch.Tensor):
        r = r.detach().resolve_conj().resolve_neg().cpu()
        return (r.float() if r.dtype == torch.bfloat16 else r).numpy()
    return np.asarray(r)


def generic_row(name: str) -> OpDef:
    """The row of a torch op without a NumPy kernel: its kernel runs the original torch op on CPU
    (:func:`torch_call`). Made on first use and cached (not added to :data:`OPS`); the torch op is
    looked up only when the kernel runs, so graphs with custom ops verify and partition anywhere."""
    if name in OPS:
        return OPS[name]
    row = _GENERIC.get(name)
    if row is None:
        if not is_torch_op_name(name):
            raise IRError(f"{name!r} is not a torch op name (namespace.op.overload)")

        def kernel(attrs, *arrays, _name=name):
            return tuple(_to_numpy(r) for r in torch_call(_name, attrs, arrays))

        kernel.__doc__ = f"Runs torch.ops.{name} on CPU (no NumPy kernel)."
        custom = not name.startswith("aten.")
        why = (f"custom op {name} (torch.library): Core ML cannot run it; runs as the torch op on CPU" if custom
               else None)
        row = _GENERIC[name] = make_row(name, infer=_infer, numpy=kernel, emit_mil=None, ane=_reason(why),
                                        flops=_flops, host_only=HOST_ONLY)
    return row


# ------------------------------------------------------------------------------ NumPy kernels

_NO_FFT = "MIL has no FFT op and Core ML mlprogram no complex dtype (coremltools MIL op set, iOS15-iOS18)"
_COMPLEX = "complex arithmetic: Core ML mlprogram has no complex dtype"
_DATA_DEP = "output size depends on the values (data-dependent shape); MIL needs static shapes for the ANE"
_SORT = "sorting-based op: placed on the fallback target (no ANE sort kernel is documented; ane-rules.md)"


def _fft_scale(n: int, normalization: int) -> float:
    """torch's ``fft_norm_mode``: 0 none, 1 by 1/sqrt(n), 2 by 1/n."""
    return (1.0, 1.0 / math.sqrt(n), 1.0 / n)[normalization]


@fallback_op("aten._fft_r2c.default", _NO_FFT)
def _fft_r2c(x, dim, normalization, onesided):
    """torch ``_fft_r2c``: real-to-complex FFT over ``dim`` (one-sided halves the last of them);
    NumPy ``rfftn`` / ``fftn``, unscaled, then torch's normalization."""
    axes = tuple(dim)
    y = np.fft.rfftn(x, axes=axes) if onesided else np.fft.fftn(x, axes=axes)
    return y * _fft_scale(math.prod(x.shape[a] for a in axes), normalization)


@fallback_op("aten._fft_c2r.default", _NO_FFT)
def _fft_c2r(x, dim, normalization, last_dim_size):
    """torch ``_fft_c2r``: one-sided complex-to-real inverse FFT over ``dim`` with the last signal
    size ``last_dim_size``; NumPy ``irfftn`` unscaled, then torch's normalization."""
    axes = tuple(dim)
    s = [x.shape[a] for a in axes[:-1]] + [last_dim_size]
    return np.fft.irfftn(x, s=s, axes=axes, norm="forward") * _fft_scale(math.prod(s), normalization)


@fallback_op("aten._fft_c2c.default", _NO_FFT)
def _fft_c2c(x, dim, normalization, forward):
    """torch ``_fft_c2c``: complex FFT (``forward``) or inverse over ``dim``, unscaled, then torch's
    normalization."""
    axes = tuple(dim)
    y = np.fft.fftn(x, axes=axes) if forward else np.fft.ifftn(x, axes=axes, norm="forward")
    return y * _fft_scale(math.prod(x.shape[a] for a in axes), normalization)


@fallback_op("aten.view_as_complex.default", _COMPLEX)
def _view_as_complex(x):
    """torch ``view_as_complex``: ``x[..., 0] + i x[..., 1]`` (x: float, last dim 2) -> complex64."""
    return x[..., 0].astype(np.complex64) + 1j * x[..., 1].astype(np.complex64)


@fallback_op("aten.view_as_real.default", _COMPLEX)
def _view_as_real(x):
    """torch ``view_as_real``: complex -> float with a trailing (real, imag) axis of 2."""
    return np.stack([x.real, x.imag], axis=-1)


def _unary(name: str, fn, what: str, reason: str | None = None):
    def kernel(x):
        return fn(x)

    kernel.__doc__ = f"torch ``{name}`` on complex or data-dependent inputs: {what} (NumPy ``{fn.__name__}``)."
    fallback_op(f"aten.{name}.default", reason)(kernel)


for _name, _fn, _what in [
    ("abs", np.abs, "magnitude |x|"), ("angle", np.angle, "argument atan2(imag, real)"),
    ("real", np.real, "real part"), ("imag", np.imag, "imaginary part"),
    ("conj_physical", np.conj, "complex conjugate"), ("_conj", np.conj, "complex conjugate"),
    ("exp", np.exp, "e^x"),
]:
    _unary(_name, _fn, _what, _COMPLEX if _name in ("angle", "real", "imag", "conj_physical", "_conj") else None)


@fallback_op("aten.mul.Tensor", None)
def _mul(a, b):
    """torch ``mul.Tensor`` on complex or data-dependent inputs: broadcasting a * b."""
    return np.multiply(a, b)


@fallback_op("aten.add.Tensor", None)
def _add(a, b, *, alpha=1):
    """torch ``add.Tensor`` on complex or data-dependent inputs: a + alpha * b."""
    return np.add(a, b if alpha == 1 else np.multiply(b, alpha))


@fallback_op("aten.sub.Tensor", None)
def _sub(a, b, *, alpha=1):
    """torch ``sub.Tensor`` on complex or data-dependent inputs: a - alpha * b."""
    return np.subtract(a, b if alpha == 1 else np.multiply(b, alpha))


@fallback_op("aten.div.Tensor", None)
def _div(a, b):
    """torch ``div.Tensor`` on complex or data-dependent inputs: true division a / b."""
    return np.true_divide(a, b)


@fallback_op("aten.nonzero.default", _DATA_DEP)
def _nonzero(x):
    """torch ``nonzero``: indices of the non-zero elements, [count, rank] (NumPy ``argwhere``)."""
    return np.argwhere(x)


@fallback_op("aten.index.Tensor", _DATA_DEP)
def _index(x, indices):
    """torch ``index.Tensor`` (advanced indexing, ``None`` for a full axis): integer and boolean
    index arrays follow NumPy's rules, which torch mirrors."""
    return x[tuple(slice(None) if i is None else i for i in indices)]


@fallback_op("aten.masked_select.default", _DATA_DEP)
def _masked_select(x, mask):
    """torch ``masked_select``: the elements of ``x`` where ``mask`` (broadcast) is true, 1-D."""
    x, mask = np.broadcast_arrays(x, mask)
    return x[mask.astype(bool)]


@fallback_op("aten.sym_size.int", "reads a data-dependent size (x.shape[dim] of a masked/nonzero result)")
def _sym_size(x, dim):
    """torch ``sym_size.int``: ``x.shape[dim]`` as a 0-d int32 (a symbolic size at trace time)."""
    return np.asarray(x.shape[dim], dtype=np.int32)


def _order(x, dim: int, descending: bool) -> np.ndarray:
    """Stable argsort along ``dim`` (descending keeps equal elements in their original order)."""
    key = x.astype(np.int8) if x.dtype == np.bool_ else x
    return np.argsort(-key if descending else key, axis=dim, kind="stable")


@fallback_op("aten.sort.default", _SORT)
def _sort(x, dim=-1, descending=False):
    """torch ``sort``: (values, indices) along ``dim``; stable (torch's tie order is unspecified
    unless stable=True; NaN placement for descending sorts may differ)."""
    idx = _order(x, dim, descending)
    return np.take_along_axis(x, idx, dim), idx


@fallback_op("aten.sort.stable", _SORT)
def _sort_stable(x, *, stable=None, dim=-1, descending=False):
    """torch ``sort.stable``: (values, indices) along ``dim``, stable."""
    return _sort(x, dim, descending)


@fallback_op("aten.topk.default", _SORT)
def _topk(x, k, dim=-1, largest=True, sorted=True):
    """torch ``topk``: the ``k`` largest (or smallest) along ``dim`` and their indices, in order
    (ties resolved by position; torch leaves their order unspecified)."""
    idx = np.take(_order(x, dim, largest), np.arange(k), axis=dim)
    return np.take_along_axis(x, idx, dim), idx
