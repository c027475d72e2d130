"""Front-end: PyTorch model or tensor function + example inputs -> verified tlc IR graph.

``trace`` = :func:`tlc.frontend.export.export` (torch.export + decomposition table) followed by
:func:`tlc.frontend.lower.lower` (ATen -> IR, constant folding, type checks against torch).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..ir import Graph
from .export import as_module, decompose_exported, decomposition_table, export
from . import aten  # noqa: F401  (registers every lowering into common.LOWERINGS)
from .lower import ir_dtype, lower


@dataclass
class TraceInfo:
    """Timings (seconds) and the exported output structure of one trace."""

    export_s: float = 0.0
    decompose_s: float = 0.0
    lower_s: float = 0.0
    out_spec: Any = None
    in_spec: Any = None
    extra: dict = field(default_factory=dict)


def normalize_inputs(example_inputs) -> tuple[tuple, dict]:
    """Accept a tensor, a tuple/list of positional inputs, a dict of keyword inputs, or a
    ``(args_tuple, kwargs_dict)`` pair; NumPy arrays become torch tensors.

    Complex tensors are taken as complex64 (a package holds them as real ``[..., 2]`` pairs,
    :mod:`tlc.boundary`). Raises :class:`InputError` for other types and for complex32.
    """
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif (
        isinstance(example_inputs, tuple) and len(example_inputs) == 2
        and isinstance(example_inputs[0], tuple) and isinstance(example_inputs[1], dict)
    ):
        args, kwargs = example_inputs
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise InputError(
            f"example_inputs must be a tensor, a tuple/list of tensors, or a dict of named tensors; "
            f"got {type(example_inputs).__name__}"
        )

    def conv(x, where):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if isinstance(x, torch.Tensor):
            if x.dtype == torch.complex128:
                x = x.to(torch.complex64)  # the IR holds complex64 (no 64-bit types)
            elif x.is_complex() and x.dtype != torch.complex64:
                raise InputError(f"example input {where} has complex dtype {x.dtype}; tlc takes complex64 "
                                 f"(Core ML I/O then holds it as a real [..., 2] pair)")
            if x.is_complex():
                return x.resolve_conj()
            try:
                ir_dtype(x.dtype, f"example input {where}")
            except Exception as e:
                raise InputError(str(e).split("\n")[0]) from None
            return x
        if isinstance(x, (int, float, bool)) or x is None:
            return x
        if isinstance(x, (tuple, list)):
            return type(x)(conv(y, f"{where}[{i}]") for i, y in enumerate(x))
        if isinstance(x, dict):
            return {k: conv(v, f"{where}[{k!r}]") for k, v in x.items()}
        raise InputError(f"example input {where} has unsupported type {type(x).__name__}")

    return tuple(conv(a, f"#{i}") for i, a in enumerate(args)), {k: conv(v, repr(k)) for k, v in kwargs.items()}


def trace(model_or_fn, example_inputs, strict: bool = False, meta: dict | None = None) -> tuple[Graph, TraceInfo]:
    """Trace and lower; returns the IR graph and :class:`TraceInfo`.

    Raises :class:`InputError` (bad example inputs), :class:`FrontendError` (tracing failed),
    :class:`UnsupportedOpError` (only for what cannot be a fallback op either; names the op and
    source line). Ops without a lowering, complex values and data-dependent shapes become
    fallback nodes (:mod:`tlc.ops.fallback`). ``model_or_fn`` may be an ``ExportedProgram``
    (``torch.export.export``'s result): it is lowered as it is (``strict`` does not apply) and
    ``example_inputs`` only have to match its input signature.
    """
    args, kwargs = normalize_inputs(example_inputs)
    if isinstance(model_or_fn, torch.export.ExportedProgram):
        ep, t_exp, t_dec = decompose_exported(model_or_fn)
    else:
        ep, t_exp, t_dec = export(as_module(model_or_fn), args, kwargs, strict=strict)
    t0 = time.perf_counter()
    g = lower(ep, meta=meta)
    info = TraceInfo(t_exp, t_dec, time.perf_counter() - t0, ep.call_spec.out_spec, ep.call_spec.in_spec)
    out_node = next(n for n in reversed(ep.graph.nodes) if n.op == "output")
    info.extra["out_dtypes"] = [
        o.meta["val"].dtype if isinstance(o, torch.fx.Node) else torch.float32
        for o in torch.utils._pytree.tree_leaves(out_node.args[0])
    ]
    return g, info


__all__ = ["trace", "normalize_inputs", "TraceInfo", "decomposition_table", "export", "lower"]
