"""Lowering an ``ExportedProgram`` (core ATen + :data:`~tlc.frontend.export.KEEP` ops) to tlc IR.

* Parameters, buffers and lifted constants become :class:`Const` values; they turn into IR
  ``const`` nodes only where a lowered op reads them.
* Constant folding: an ATen op whose tensor arguments are all constants (``arange``, ``full``,
  slices of buffers, mask arithmetic on constants, ``t()`` of a weight, ...) is evaluated with
  torch itself, so folding is exact and needs no second implementation.
* Every other op goes through its lowering in :mod:`tlc.frontend.aten`; the lowered value's type
  is checked against torch's own shape/dtype (``node.meta["val"]``), so a lowering bug is caught
  where it happens, with the source line.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from .. import __version__
from ..errors import FrontendError, InputError, TlcError, UnsupportedOpError
from ..ir import Graph, GraphBuilder, SourceLoc, TensorType, Value

TORCH_DIR = torch.__file__.rsplit("/", 1)[0]
TLC_DIR = __file__.rsplit("/", 2)[0] + "/"  # compiler/: never blame tlc's own frames

_TORCH_TO_IR = {
    torch.float32: "fp32",
    torch.float64: "fp32",
    torch.float16: "fp16",
    torch.int64: "int32",
    torch.int32: "int32",
    torch.int16: "int32",
    torch.int8: "int32",
    torch.uint8: "int32",
    torch.bool: "bool",
}
_IR_TO_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "int32": torch.int32, "bool": torch.bool}


def ir_dtype(dt: torch.dtype, what: str = "tensor", loc=None) -> str:
    """IR dtype for a torch dtype; raises :class:`FrontendError` for complex/bfloat16/others."""
    if dt in _TORCH_TO_IR:
        return _TORCH_TO_IR[dt]
    if dt.is_complex:
        raise FrontendError(
            f"{what} has complex dtype {dt}: Core ML mlprogram has no complex tensors. Partitioning "
            f"will send complex ops to the fallback runtime; until then the build stops.", loc=loc)
    raise FrontendError(f"{what} has dtype {dt}, which tlc does not support (use float32/float16/int/bool)", loc=loc)


@dataclass(eq=False)
class Const:
    """A compile-time constant (a torch tensor in its original dtype)."""

    tensor: torch.Tensor
    name: str
    value: "Value | None" = None  # the IR const node's output, once materialized


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


class Lowerer:
    """State of one lowering: the graph builder, the fx-node -> IR value map, the node being
    lowered (for source locations). Lowering functions call its helpers."""

    def __init__(self, ep: torch.export.ExportedProgram, meta: dict):
        self.ep = ep
        self.b = GraphBuilder(meta)
        self.env: dict[torch.fx.Node, Any] = {}
        self.node: torch.fx.Node | None = None
        self.loc: SourceLoc | None = None

    # --- helpers for lowering functions -------------------------------------------------------

    def v(self, x) -> Value:
        """IR value for an argument: materializes a :class:`Const` into a ``const`` node."""
        if isinstance(x, Value):
            return x
        if isinstance(x, Const):
            if x.value is None:
                t = x.tensor.detach()
                if t.dtype == torch.bfloat16:
                    t = t.float()
                arr = t.cpu().numpy() if t.dtype != torch.bool else t.cpu().numpy().astype(np.bool_)
                ir_dtype(t.dtype, f"constant {x.name}", self.loc)
                x.value = self.b.const(np.ascontiguousarray(arr), name=x.name, loc=self.loc)
            return x.value
        raise FrontendError(f"expected a tensor argument, got {type(x).__name__} {x!r}", loc=self.loc)

    def scalar(self, value, dtype: str) -> Value:
        """A rank-0 ``const`` of IR ``dtype``."""
        from ..ir import DTYPES

        return self.b.const(np.asarray(value, dtype=DTYPES[dtype]), name="scalar", loc=self.loc)

    def add(self, op: str, inputs, attrs=None, name: str | None = None):
        """Add an IR node; returns its single output (or the tuple of outputs)."""
        n = self.b.add(op, [self.v(i) for i in inputs], attrs or {}, name=name or self.node.name, loc=self.loc)
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs

    def cast(self, x: Value, dtype: str) -> Value:
        """``x`` as IR ``dtype``: itself if it already is, else a new ``cast`` node."""
        x = self.v(x)
        return x if x.type.dtype == dtype else self.add("cast", [x], {"dtype": dtype}, name=self.node.name + "_cast")

    def out_type(self, i: int | None = None) -> TensorType:
        """Torch's own type of the current node's output (``i``-th for tuples)."""
        val = self.node.meta.get("val")
        if i is not None:
            val = val[i]
        return TensorType(ir_dtype(val.dtype, f"result of {self.node.target}", self.loc), tuple(int(d) for d in val.shape))

    # --- driver -------------------------------------------------------------------------------

    def run(self, input_names: list[str] | None = None) -> Graph:
        """Lower every fx node in order; returns the verified graph. Raises
        :class:`FrontendError` / :class:`UnsupportedOpError` with the node's source location."""
        ep = self.ep
        sig = ep.graph_signature
        state = ep.state_dict
        consts = ep.constants
        param_of = {}
        for spec in sig.input_specs:
            if spec.target is not None:
                param_of[spec.arg.name] = spec.target
        names = iter(input_names or [])
        for node in ep.graph.nodes:
            self.node, self.loc = node, source_loc(node)
            if node.op == "placeholder":
                if node.name in param_of:
                    tgt = param_of[node.name]
                    t = state[tgt] if tgt in state else consts[tgt]
                    self.env[node] = Const(t, tgt)
                else:
                    val = node.meta.get("val")
                    if not isinstance(val, torch.Tensor):
                        self.env[node] = val  # a non-tensor user input, specialized by export
                        continue
                    nm = next(names, node.name)
                    t = TensorType(ir_dtype(val.dtype, f"input {nm!r}", self.loc), tuple(int(d) for d in val.shape))
                    self.env[node] = self.b.add_input(nm, t)
            elif node.op == "call_function":
                self.env[node] = self.lower_call(node)
            elif node.op == "output":
                outs = pytree.tree_leaves(node.args[0])
                vals = []
                for o in outs:
                    r = self.env[o] if isinstance(o, torch.fx.Node) else o
                    if isinstance(r, Value) and (r in self.b.inputs or any(r is w for w in vals)):
                        r = self.add("identity", [r], name=f"{o.name}_out")
                    vals.append(self.v(r) if not isinstance(r, Value) else r)
                return self.b.build(vals, output_names(ep, len(vals)))
            else:
                raise FrontendError(f"unexpected fx node kind {node.op!r} ({node.name})", loc=self.loc)
        raise FrontendError("exported graph has no output node")

    def lower_call(self, node: torch.fx.Node):
        from .aten import LOWERINGS, SKIP

        target = node.target
        if target is operator.getitem:
            src, idx = node.args
            return self.env[src][idx]
        key = str(target)
        if key in SKIP:
            return None
        args = pytree.tree_map_only(torch.fx.Node, lambda n: self.env[n], node.args)
        kwargs = pytree.tree_map_only(torch.fx.Node, lambda n: self.env[n], node.kwargs)
        leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, (Value, Const))]
        if all(isinstance(x, Const) for x in leaves) and key not in NO_FOLD:
            return self.fold(target, args, kwargs)
        fn = LOWERINGS.get(key)
        if fn is None:
            raise UnsupportedOpError(
                f"ATen op {key} has no lowering in tlc's front-end (node {node.name}). Partitioning will "
                f"send such ops to the fallback runtime; until then the build stops.",
                loc=self.loc,
            )
        try:
            res = fn(self, *args, **kwargs)
        except TlcError as e:
            if e.loc is None:
                e.loc = self.loc
            raise
        except Exception as e:
            raise FrontendError(f"lowering {key} (node {node.name}) failed: {type(e).__name__}: {e}", loc=self.loc) from e
        self._check(res)
        return res

    def _check(self, res):
        val = self.node.meta.get("val")
        outs = res if isinstance(res, tuple) else (res,)
        vals = val if isinstance(val, (tuple, list)) else (val,)
        for r, tv in zip(outs, vals):
            if isinstance(r, Value) and isinstance(tv, torch.Tensor):
                want = TensorType(ir_dtype(tv.dtype, loc=self.loc), tuple(int(d) for d in tv.shape))
                if r.type != want:
                    raise FrontendError(
                        f"lowering of {self.node.target} (node {self.node.name}) produced {r.type} "
                        f"but torch computes {want}", loc=self.loc)

    def fold(self, target, args, kwargs):
        def to_t(x):
            return x.tensor if isinstance(x, Const) else x

        targs = pytree.tree_map_only(Const, to_t, args)
        tkwargs = pytree.tree_map_only(Const, to_t, kwargs)
        with torch.no_grad():
            r = target(*targs, **tkwargs)
        name = self.node.name
        if isinstance(r, torch.Tensor):
            return Const(r, name)
        if isinstance(r, (tuple, list)):
            return tuple(Const(x, f"{name}_{i}") if isinstance(x, torch.Tensor) else x for i, x in enumerate(r))
        return r


#: Ops never constant-folded (side effects or assertions).
NO_FOLD: set[str] = set()


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


def lower(ep, meta: dict | None = None, input_names: list[str] | None = None) -> Graph:
    """Lower an ExportedProgram to a verified tlc :class:`Graph`."""
    meta = dict(meta or {})
    meta.setdefault("tlc_version", __version__)
    return Lowerer(ep, meta).run(input_names)


__all__ = ["lower", "Lowerer", "Const", "source_loc", "ir_dtype", "InputError"]
