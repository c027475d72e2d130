"""Lowering an ``ExportedProgram`` (core ATen + :data:`~tlc.frontend.export.KEEP` ops) to tlc IR.

* Parameters, buffers and lifted constants become :class:`Const` values; they turn into IR
  ``const`` nodes only where a lowered op reads them.
* Constant folding: an ATen op whose tensor arguments are all constants (``arange``, ``full``,
  slices of buffers, mask arithmetic on constants, ``t()`` of a weight, ...) is evaluated with
  torch itself, so folding is exact and needs no second implementation.
* Every other op goes through its lowering in :mod:`tlc.frontend.aten`; the lowered value's type
  is checked against torch's own shape/dtype (``node.meta["val"]``), so a lowering bug is caught
  where it happens, with the source line.
* An op is never a reason to stop the build: an ATen or custom op without a lowering (or whose
  lowering declines its arguments), and any op reading or producing a complex value or a
  data-dependent shape (unbacked SymInts ``u0`` from ``nonzero`` / boolean-mask indexing) becomes a
  *fallback node* that keeps the torch op's name and arguments (:mod:`tlc.ops.fallback`; made
  in :mod:`tlc.frontend.fallback_nodes`). A symbolic size used as a number
  (``x[mask].shape[0]``) is a 0-d int32 value; Python arithmetic on it (``operator.add`` ...)
  lowers to the IR's elementwise ops.
"""
from __future__ import annotations

import contextlib
import contextvars
import operator
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..version import __version__
from ..errors import FrontendError, InputError, TlcError, UnsupportedOpError
from ..ir import Graph, GraphBuilder, SourceLoc, TensorType, Value
from .common import LOWERINGS, SKIP, Const, ir_dtype
from .fx_values import (KNOWN_SIZES, data_dependent, empty_result, fallback_reason, ir_shape, is_complex_value,  # noqa: F401
                        output_names, source_loc)
from .aten_complex import Complex, lower_complex
from .fallback_nodes import EFFECT_TOKEN, fallback_node, lower_with_effects

#: when set (:func:`shared_weights`), large contiguous constants are read-only views of the
#: model's tensors instead of copies
SHARE_WEIGHTS: contextvars.ContextVar[bool] = contextvars.ContextVar("tlc_share_weights", default=False)


@contextlib.contextmanager
def shared_weights():
    """Within this block, lowering takes constants of 64K elements or more as read-only views of the
    model's own tensor memory, not copies (issue 15, point 4: a 1.1B model's build must not hold a
    second copy of its weights; ``tlc.build_lm`` uses it). The built model then reads the module's
    memory: changing the module's weights in place afterwards changes what tlc's executors compute
    (a saved package is a snapshot either way)."""
    token = SHARE_WEIGHTS.set(True)
    try:
        yield
    finally:
        SHARE_WEIGHTS.reset(token)


class Lowerer:
    """State of one lowering: the graph builder, the fx-node -> IR value map, the node being
    lowered (for source locations). Lowering functions call its helpers."""

    def __init__(self, ep: torch.export.ExportedProgram, meta: dict):
        self.ep = ep
        self.b = GraphBuilder(meta)
        self.env: dict[torch.fx.Node, Any] = {}
        self.node: torch.fx.Node | None = None
        self.loc: SourceLoc | None = None
        self.complex_inputs: list[str] = []  # model inputs taken as real [..., 2] pairs

    # --- helpers for lowering functions -------------------------------------------------------

    def v(self, x) -> Value:
        """IR value for an argument: materializes a :class:`Const` into a ``const`` node and a
        complex pair into a complex64 value (:meth:`materialize`)."""
        if isinstance(x, Value):
            return x
        if isinstance(x, Complex):
            return self.materialize(x)
        if isinstance(x, Const):
            if x.value is None:
                t = x.tensor.detach()
                if t.dtype == torch.bfloat16:
                    t = t.float()
                t = t.resolve_conj().resolve_neg()
                arr = t.cpu().numpy() if t.dtype != torch.bool else t.cpu().numpy().astype(np.bool_)
                ir_dtype(t.dtype, f"constant {x.name}", self.loc)
                if SHARE_WEIGHTS.get() and arr.flags.c_contiguous and arr.size >= 1 << 16:
                    arr = arr.view()  # a read-only view of the tensor's memory (shared_weights)
                    arr.flags.writeable = False
                else:
                    arr = np.array(arr, order="C")  # (ascontiguousarray makes 0-d 1-d)
                x.value = self.b.const(arr, name=x.name, loc=self.loc)
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

    def complex_input(self, name: str, shape: tuple) -> "Complex":
        """A complex model input: the graph input ``name`` is real [*shape, 2] (real, imaginary),
        split into a pair (tlc.boundary)."""
        x = self.b.add_input(name, TensorType("fp32", tuple(shape) + (2,)))
        self.complex_inputs.append(name)
        r = len(shape) + 1
        parts = []
        for i, part in enumerate(("re", "im")):
            begin, end = [0] * r, list(shape) + [i + 1]
            begin[-1] = i
            parts.append(self.b.add("slice_by_index", [x], {"begin": tuple(begin), "end": tuple(end),
                                                           "stride": (1,) * r, "squeeze_mask": (False,) * (r - 1) + (True,)},
                                    name=f"{name}_{part}", loc=self.loc).outputs[0])
        return Complex(*parts)

    def as_pair_tensor(self, c: "Complex", name: str) -> Value:
        """A complex model output as the real [..., 2] tensor of its parts (torch's view_as_real)."""
        im = c.im if c.im is not None else self.add("mul", [c.re, self.scalar(0.0, c.re.type.dtype)], name=f"{name}_im0")
        parts = [self.b.add("expand_dims", [self.cast(p, "fp32")], {"axes": (-1,)}, name=f"{name}_{tag}", loc=self.loc).outputs[0]
                 for p, tag in ((c.re, "re"), (im, "im"))]
        return self.b.add("concat", parts, {"axis": c.re.type.rank}, name=f"{name}_pair", loc=self.loc).outputs[0]

    def materialize(self, c: "Complex") -> Value:
        """The complex64 IR value of a pair, for a fallback op or a model output: an
        ``aten.complex.default`` fallback node (made once per pair)."""
        if c.value is None:
            im = c.im if c.im is not None else self.add("mul", [c.re, self.scalar(0.0, c.re.type.dtype)],
                                                        name=self.node.name + "_zero_im")
            re, im = self.cast(c.re, "fp32"), self.cast(im, "fp32")
            attrs = {"args": (("$in", 0, "float32"), ("$in", 1, "float32")), "kwargs": (),
                     "out_types": (("complex64", re.type.shape),),
                     "why": "a complex value read by an op tlc lowers only in the fallback runtime (or a complex "
                            "model output): Core ML has no complex dtype"}
            c.value = self.b.add("aten.complex.default", [re, im], attrs, name=self.node.name + "_complex",
                                 loc=self.loc).outputs[0]
        return c.value

    @contextlib.contextmanager
    def real_types(self):
        """Within: :meth:`out_type` reports complex results as fp32 (the type of each part, for
        real lowerings applied to the parts of a pair: tlc.frontend.aten_complex)."""
        self._real_parts = True
        try:
            yield
        finally:
            self._real_parts = False

    def result_used(self, i: int) -> bool:
        """Whether result ``i`` of the current (multi-result) node is read by any later node."""
        for u in self.node.users:
            if u.target is operator.getitem and u.args[1] == i and u.users:
                return True
            if u.target is not operator.getitem:
                return True  # the tuple itself is used (an output of the model): assume every result is
        return False

    def out_type(self, i: int | None = None) -> TensorType:
        """Torch's own type of the current node's output (``i``-th for tuples)."""
        val = self.node.meta.get("val")
        if i is not None:
            val = val[i]
        dt = ir_dtype(val.dtype, f"result of {self.node.target}", self.loc)
        if dt == "complex64" and getattr(self, "_real_parts", False):
            dt = "fp32"
        return TensorType(dt, ir_shape(val.shape))

    # --- driver -------------------------------------------------------------------------------

    def run(self, input_names: list[str] | None = None) -> Graph:
        """Lower every fx node in order; returns the verified graph. Raises
        :class:`FrontendError` / :class:`UnsupportedOpError` with the node's source location."""
        ep = self.ep
        sig = ep.graph_signature
        state = ep.state_dict
        consts = ep.constants
        from torch.export.graph_signature import InputKind, OutputKind

        param_of = {}
        tokens = set()
        for spec in sig.input_specs:
            if spec.kind == InputKind.TOKEN:
                tokens.add(spec.arg.name)
            elif spec.target is not None:
                param_of[spec.arg.name] = spec.target
        user_out = [spec.kind == OutputKind.USER_OUTPUT for spec in sig.output_specs]
        names = iter(input_names or [])
        for node in ep.graph.nodes:
            self.node, self.loc = node, source_loc(node)
            if node.op == "placeholder":
                if node.name in tokens:
                    self.env[node] = EFFECT_TOKEN
                elif node.name in param_of:
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
                    if t.dtype == "complex64":  # a real [..., 2] pair at the boundary (tlc.boundary)
                        self.env[node] = self.complex_input(nm, t.shape)
                    else:
                        self.env[node] = self.b.add_input(nm, t)
            elif node.op == "call_function":
                self.env[node] = self.lower_call(node)
            elif node.op == "output":
                outs = pytree.tree_leaves(node.args[0])
                if len(user_out) == len(outs):  # effect tokens (and mutations) are not model outputs
                    outs = [o for o, keep in zip(outs, user_out) if keep]
                vals, complex_out = [], []
                for o in outs:
                    r = self.env[o] if isinstance(o, torch.fx.Node) else o
                    if isinstance(r, Complex):  # a real [..., 2] pair at the boundary (tlc.boundary)
                        complex_out.append(len(vals))
                        r = self.as_pair_tensor(r, o.name)
                    if r is None and isinstance(o, torch.fx.Node) and isinstance(o.meta.get("val"), torch.Tensor):
                        t = o.meta["val"]  # a result tlc leaves out (a training buffer): torch's empty tensor
                        r = Const(torch.zeros(tuple(int(d) for d in t.shape), dtype=t.dtype), o.name)
                    if isinstance(r, Const):  # a model output that is a constant: give it a node of its own
                        r = self.add("identity", [r], name=f"{o.name}_out")
                    if isinstance(r, Value) and (r in self.b.inputs or any(r is w for w in vals)
                                                 or self._is_const(r)):
                        r = self.add("identity", [r], name=f"{o.name}_out")
                    vals.append(self.v(r) if not isinstance(r, Value) else r)
                onames = output_names(ep, len(vals))
                if self.complex_inputs or complex_out:
                    self.b.meta["tlc.complex_io"] = {"inputs": list(self.complex_inputs),
                                                     "outputs": [onames[i] for i in complex_out]}
                return self.b.build(vals, onames)
            else:
                raise FrontendError(f"unexpected fx node kind {node.op!r} ({node.name})", loc=self.loc)
        raise FrontendError("exported graph has no output node")

    def lower_call(self, node: torch.fx.Node):
        target = node.target
        if target is operator.getitem:
            src, idx = node.args
            return self.env[src][idx]
        if target is torch.ops.higher_order.with_effects:
            return lower_with_effects(self, node)
        key = str(target)
        if key in SKIP:
            return None
        args = pytree.tree_map_only(torch.fx.Node, lambda n: self.env[n], node.args)
        kwargs = pytree.tree_map_only(torch.fx.Node, lambda n: self.env[n], node.kwargs)
        leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, (Value, Const, Complex))]
        if all(isinstance(x, Const) for x in leaves) and not _random(target):
            return self.fold(target, args, kwargs)
        if target in SYM_OPS:
            if all(isinstance(a, (int, float, bool)) for a in args):  # sizes the lowering resolved
                return target(*args)
            return self.sym_op(target, args)
        empty = empty_result(node.meta.get("val"))
        if empty is not None:  # no elements: the result is known (Core ML tensors cannot be empty anyway)
            return empty
        fn = LOWERINGS.get(key)
        ins = [a.meta.get("val") for a in node.all_input_nodes]
        tensors = [v for v in ins if isinstance(v, torch.Tensor)] + [node.meta.get("val")]
        if fn is not None and data_dependent(node.meta.get("val")) and not data_dependent(ins):
            res = self.resolve(fn, args, kwargs)  # static after all (a constant mask)?
            if res is not None:
                return res
        why = fallback_reason(tensors)
        if why and not data_dependent(tensors) and is_complex_value(tensors):
            try:  # complex values as (re, im) pairs of real MIL ops (tlc.frontend.aten_complex)
                res = lower_complex(self, key, args, kwargs)
            except UnsupportedOpError as e:
                res, why = None, f"{why}; its pair lowering declines: {e.args[0]}"
            if res is not None:
                return res
        if why:
            return fallback_node(self, why)
        if fn is None:
            return fallback_node(self, f"tlc has no lowering for {key}")
        # a symbolic size argument (x[mask].shape[0]) arrives as a 0-d int32 value; a lowering
        # written for a Python int may not take it, and then the torch op is kept instead
        sym_arg = fallback_reason([v for v in ins if not isinstance(v, torch.Tensor)])
        try:
            res = fn(self, *args, **kwargs)
        except UnsupportedOpError as e:  # the lowering declines these arguments: keep the torch op
            return fallback_node(self, f"tlc's lowering of {key} declines it: {e.args[0]}")
        except TlcError as e:
            if sym_arg:
                return fallback_node(self, sym_arg)
            if e.loc is None:
                e.loc = self.loc
            raise
        except Exception as e:
            if sym_arg:
                return fallback_node(self, sym_arg)
            raise FrontendError(f"lowering {key} (node {node.name}) failed: {type(e).__name__}: {e}", loc=self.loc) from e
        self._check(res)
        return res

    def resolve(self, fn, args, kwargs):
        """Try the lowering of a node whose result torch could only size symbolically (``u0``)
        from static inputs: when it produces static shapes (the mask is a constant), each
        symbol's value is recorded for the rest of the graph (``KNOWN_SIZES``) and the result is
        returned; else None (the node falls back as data-dependent)."""
        try:
            res = fn(self, *args, **kwargs)
        except TlcError:
            return None
        val = self.node.meta.get("val")
        outs = res if isinstance(res, tuple) else (res,)
        vals = val if isinstance(val, (tuple, list)) else (val,)
        found = {}
        for r, tv in zip(outs, vals):
            r = self.v(r) if isinstance(r, Const) else r
            if not (isinstance(r, Value) and isinstance(tv, torch.Tensor) and r.type.is_static
                    and r.type.rank == tv.dim()):
                return None
            for d, got in zip(tv.shape, r.type.shape):
                if isinstance(d, torch.SymInt) and d.node.maybe_as_int() is None:
                    found[str(d)] = got
        if not found:
            return None
        KNOWN_SIZES.get().update(found)
        return res

    def _is_const(self, v: Value) -> bool:
        return any(n.op == "const" and n.outputs[0] is v for n in reversed(self.b.nodes))

    def _check(self, res):
        val = self.node.meta.get("val")
        outs = res if isinstance(res, tuple) else (res,)
        vals = val if isinstance(val, (tuple, list)) else (val,)
        for r, tv in zip(outs, vals):
            if isinstance(r, Value) and isinstance(tv, torch.Tensor):
                want = TensorType(ir_dtype(tv.dtype, loc=self.loc), ir_shape(tv.shape))
                if r.type != want:
                    raise FrontendError(
                        f"lowering of {self.node.target} (node {self.node.name}) produced {r.type} "
                        f"but torch computes {want}", loc=self.loc)

    def sym_op(self, target, args):
        """Python arithmetic/comparison on symbolic sizes (0-d int32 values) as an IR op."""
        a, b = args
        is_float = target is operator.truediv or any(
            isinstance(x, float) or (isinstance(x, Value) and x.type.dtype == "fp32") for x in (a, b))
        dt = "fp32" if is_float else "int32"
        x, y = ((self.cast(t, dt) if isinstance(t, (Value, Const)) else self.scalar(t, dt)) for t in (a, b))
        return self.add(SYM_OPS[target], [x, y])

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


def _random(target) -> bool:
    """Whether a torch op draws random numbers (torch's ``nondeterministic_seeded`` tag): never
    folded into a constant (``torch.randn(3)`` would otherwise be one fixed draw)."""
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in target.tags


#: Python operators torch.export records on symbolic sizes -> IR op on 0-d values.
SYM_OPS = {
    operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.floordiv: "floor_div",
    operator.mod: "mod", operator.truediv: "real_div", operator.eq: "equal", operator.ne: "not_equal",
    operator.lt: "less", operator.le: "less_equal", operator.gt: "greater", operator.ge: "greater_equal",
}


def lower(ep, meta: dict | None = None, input_names: list[str] | None = None) -> Graph:
    """Lower an ExportedProgram to a verified tlc :class:`Graph`."""
    meta = dict(meta or {})
    meta.setdefault("tlc_version", __version__)
    token = KNOWN_SIZES.set({})
    try:
        return Lowerer(ep, meta).run(input_names)
    finally:
        KNOWN_SIZES.reset(token)


__all__ = ["lower", "Lowerer", "Const", "source_loc", "ir_dtype", "InputError"]
