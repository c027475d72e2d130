"""What the fx walker (:mod:`tlc.frontend.lower`) asks about fx values: their IR shapes (with
data-dependent sizes), whether they can only live in the fallback runtime, the user's source line
of a node, and the user-facing output names."""
from __future__ import annotations

import contextvars
import re

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..ir import SourceLoc
from .common import Const


TORCH_DIR = torch.__file__.rsplit("/", 1)[0]
TLC_DIR = __file__.rsplit("/", 2)[0] + "/"  # compiler/: never blame tlc's own frames

#: Data-dependent sizes whose value the lowering found static (a mask that is a constant):
#: symbol name -> int, for the lowering under way (:meth:`Lowerer.resolve`).
KNOWN_SIZES: contextvars.ContextVar[dict] = contextvars.ContextVar("tlc_known_sizes", default={})


def ir_shape(shape) -> tuple:
    """IR shape of a torch (fake) tensor's size: ints, and the printed name (``"u0"``) for each
    data-dependent size (an unbacked SymInt) not resolved to a value by the lowering."""
    known_sizes = KNOWN_SIZES.get()
    out = []
    for d in shape:
        if isinstance(d, torch.SymInt):
            known = d.node.maybe_as_int()
            d = known_sizes.get(str(d), str(d)) if known is None else known
        out.append(d if isinstance(d, str) else int(d))
    return tuple(out)


def empty_result(val):
    """Constants for an op whose tensor results all have zero elements (static shapes), else None."""
    vals = val if isinstance(val, (tuple, list)) else (val,)
    if not vals or not all(isinstance(t, torch.Tensor) for t in vals) or data_dependent(list(vals)):
        return None
    shapes = [ir_shape(t.shape) for t in vals]  # (resolved data-dependent sizes included)
    if any(int(np.prod(s)) for s in shapes) or any(t.dtype.is_complex or t.dtype == torch.bfloat16 for t in vals):
        return None
    res = tuple(Const(torch.zeros(s, dtype=t.dtype), "empty") for s, t in zip(shapes, vals))
    return res if isinstance(val, (tuple, list)) else res[0]


def data_dependent(v) -> bool:
    """Whether an fx value (or a list of them) has a data-dependent shape or is a symbolic scalar."""
    if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return str(v) not in KNOWN_SIZES.get()
    if isinstance(v, torch.Tensor):
        return any(isinstance(d, str) for d in ir_shape(v.shape))
    if isinstance(v, (tuple, list)):
        return any(map(data_dependent, v))
    return False


def is_complex_value(v) -> bool:
    if isinstance(v, torch.Tensor):
        return v.dtype.is_complex
    if isinstance(v, (tuple, list)):
        return any(map(is_complex_value, v))
    return False


def fallback_reason(v) -> str | None:
    """Why an fx value (``meta["val"]``, or a list of them) can only live in the fallback
    runtime: a complex dtype, a data-dependent shape, or a symbolic scalar; else None."""
    if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        if str(v) in KNOWN_SIZES.get():
            return None
        return f"it computes with the data-dependent size {v}"
    if isinstance(v, torch.Tensor):
        if v.dtype.is_complex:
            return f"it reads or produces a {str(v.dtype).removeprefix('torch.')} tensor (Core ML has no complex dtype)"
        shape = ir_shape(v.shape)
        if any(isinstance(d, str) for d in shape):
            return f"it reads or produces the data-dependent shape [{', '.join(map(str, shape))}]"
    if isinstance(v, (tuple, list)):
        return next((r for r in map(fallback_reason, v) if r), None)
    return None


def source_loc(node: torch.fx.Node) -> SourceLoc:
    """The user's source line for an fx node: the innermost stack frame outside torch, plus the
    nn.Module path (``encoder.layer.0.attention``)."""
    module = None
    stack = node.meta.get("nn_module_stack")
    if stack:
        module = list(stack.values())[-1][0] or None
    st = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n([^\n]*)', st)
    frames = [f for f in frames if not f[0].startswith(TORCH_DIR) and not f[0].startswith(TLC_DIR)]
    if frames:
        f, line, code = frames[-1]
        return SourceLoc(f, int(line), code.strip(), module)
    return SourceLoc(None, None, None, module)


def output_names(ep, n: int) -> list[str]:
    """User-facing output names from the exported output structure: dict keys / ModelOutput
    fields (``last_hidden_state``), ``output_0..`` for tuples, ``output`` for a single tensor."""
    spec = ep.call_spec.out_spec
    names: list[str] = []
    try:
        paths = [p for p, _ in pytree.tree_flatten_with_path(pytree.tree_unflatten(list(range(n)), spec))[0]]
        for path in paths:
            parts = []
            for k in path:
                for attr in ("key", "name", "idx"):
                    if hasattr(k, attr):
                        parts.append(str(getattr(k, attr)))
                        break
            names.append("_".join(parts))
    except Exception:
        names = [""] * n
    if n == 1 and names[0] in ("", "0"):
        return ["output"]
    out = []
    for i, nm in enumerate(names):
        nm = re.sub(r"\W", "_", nm) or f"output_{i}"
        if nm[0].isdigit():
            nm = f"output_{nm}"
        while nm in out:
            nm += "_"
        out.append(nm)
    return out
