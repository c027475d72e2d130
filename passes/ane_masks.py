"""Attention masks as float arithmetic, so that no bool/int32 op sits between the embedding and the
output of an ANE program (issue 29; used by ``layout::ane_transformer``).

Hugging Face encoders build their padding masks in bool and int32 (``attention_mask`` cast to
bool, index gathers, ``logical_and`` with a causal or all-True constant, ``logical_not``); every one
of those ops breaks the ANE's dtype rule (float16 only: Apple neural_engine_rules.md L7-9; int32
forces CPU casts: apple/coremltools#2365), so each is a hand-over between the ANE and the CPU in
the middle of the network. The math is a multiply by 0/1, which float16 does exactly. This
module rewrites the region of bool/int32 ops that computes a ``scaled_dot_product_attention``
mask, or that a ``cast`` to float reads (mean pooling), into float twins over {0, 1} (an integer
input is converted once, where it enters):

=====================================  ====================================================
bool/int op                            float twin (exact on integers)
=====================================  ====================================================
``logical_and(a, b)``                  ``mul(a, b)``
``logical_or(a, b)``                   ``maximum(a, b)``
``logical_not(a)``                     ``sub(1, a)``
``logical_xor(a, b)``                  ``abs(sub(a, b))``
``cast(x, bool)``, x integer           ``minimum(abs(x), 1)`` (a nonzero integer is >= 1 in magnitude, also in fp16)
``cast(x, bool/int32)``, x bool        ``x``
views, ``concat``, ``slice_by_index``  the same op on float data
``gather(x, const indices)``           ``slice_by_index`` + ``reshape`` when the indices are a contiguous range, else ``gather`` on float data
bool/int32 constant                    float constant
=====================================  ====================================================

and the mask itself becomes additive: ``(keep - 1) * 30000`` (0 where kept, ``MASK_FILL`` =
-30000 elsewhere, finite in fp16; docs/passes.md). A region holding any other op (comparisons of
integers fp16 cannot hold exactly, arithmetic on integers, ``select``) is left as traced.
"""
from __future__ import annotations

import numpy as np

from tlc.ir import Graph, GraphBuilder, Value
from tlc.ops.linalg import MASK_FILL

from .rewrite import dce

VIEWS = {"reshape", "transpose", "expand_dims", "squeeze", "tile", "slice_by_index", "concat"}
LOGICAL = {"logical_and": "mul", "logical_or": "maximum"}
INTS = ("bool", "int32")
FLOATS = ("fp16", "fp32")


def _mask_region(g: Graph, root: Value, prod: dict) -> bool:
    """Whether every bool/int32 value ``root`` is computed from can be twinned (module table)."""
    seen, stack = set(), [root]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        n = prod.get(v)
        if n is None or n.op == "const":
            continue  # a graph input (converted once) or a constant
        if n.op in LOGICAL or n.op in ("logical_not", "logical_xor") or n.op in VIEWS:
            stack += [x for x in n.inputs if n.op != "slice_by_index" or x is n.inputs[0]]
        elif n.op == "cast" and n.attrs["dtype"] in INTS and n.inputs[0].type.dtype in INTS:
            stack.append(n.inputs[0])
        elif n.op == "gather" and prod.get(n.inputs[1]) is not None and prod[n.inputs[1]].op == "const":
            stack.append(n.inputs[0])
        else:
            return False
        if any(x.type.dtype not in INTS for x in n.inputs[:1]):
            return False
    return True


class _Twins:
    """Float twins of bool/int32 values, built into ``b`` (module docstring)."""

    def __init__(self, b: GraphBuilder, env: dict, prod: dict, dtype: str):
        self.b, self.env, self.prod, self.dtype = b, env, prod, dtype
        self.np = np.float16 if dtype == "fp16" else np.float32
        self.memo: dict[Value, Value] = {}

    def add(self, op, ins, attrs, n, suffix):
        return self.b.add(op, ins, attrs, name=n.name + suffix, loc=n.loc).out

    def scalar(self, x: float, n) -> Value:
        return self.b.const(np.asarray(x, self.np), name=n.name + "_f", loc=n.loc)

    def of(self, v: Value, at) -> Value:
        if v not in self.memo:
            self.memo[v] = self._make(v, at)
        return self.memo[v]

    def _make(self, v: Value, at) -> Value:
        n = self.prod.get(v)
        if n is None:  # an integer/bool graph input: converted once, where it enters
            return self.b.add("cast", [self.env[v]], {"dtype": self.dtype}, name=v.name + "_float", loc=at.loc).out
        if n.op == "const":
            return self.b.const(np.asarray(n.attrs["val"]).astype(self.np), name=n.name + "_float", loc=n.loc)
        x = [self.of(i, at) if i.type.dtype in INTS and (n.op != "gather" or k == 0) and
             (n.op != "slice_by_index" or k == 0) else self.env[i] for k, i in enumerate(n.inputs)]
        if n.op in LOGICAL:
            return self.add(LOGICAL[n.op], x, {}, n, "_float")
        if n.op == "logical_not":
            return self.add("sub", [self.scalar(1.0, n), x[0]], {}, n, "_float")
        if n.op == "logical_xor":
            return self.add("abs", [self.add("sub", x, {}, n, "_d")], {}, n, "_float")
        if n.op == "cast":
            src = n.inputs[0].type.dtype
            if n.attrs["dtype"] == "bool" and src != "bool":
                return self.add("minimum", [self.add("abs", x, {}, n, "_abs"), self.scalar(1.0, n)], {}, n, "_float")
            return x[0]
        if n.op == "gather":
            return self._gather(n, x[0])
        return self.add(n.op, x, dict(n.attrs), n, "_float")

    def _gather(self, n, x: Value) -> Value:
        idx = np.asarray(self.prod[n.inputs[1]].attrs["val"])
        axis = n.attrs.get("axis", 0) % n.inputs[0].type.rank
        flat = idx.ravel()
        if flat.size and x.type.rank == 1 and axis == 0 and (np.diff(flat) == 1).all() and flat[0] >= 0:
            s = self.add("slice_by_index", [x], {"begin": (int(flat[0]),), "end": (int(flat[-1]) + 1,),
                                                 "stride": (1,)}, n, "_range")
            return self.add("reshape", [s], {"shape": tuple(n.out.type.shape)}, n, "_float")
        return self.add("gather", [x, self.env[n.inputs[1]]], dict(n.attrs), n, "_float")


def float_masks(g: Graph) -> Graph:
    """Every bool ``scaled_dot_product_attention`` mask computed by bool/int32 ops given as an
    additive float mask computed in float (module docstring).

    Given:  %b = cast(%attention_mask: int32[B, S], bool); %m = logical_and(%causal: const, reshape(%b))
            %a = scaled_dot_product_attention(%q, %k, %v, %m)
    Result: %f = cast(%attention_mask, fp32); %k = mul(%causal_f, reshape(minimum(abs(%f), 1)))
            %a = scaled_dot_product_attention(%q, %k, %v, mul(sub(%k, 1), 30000))
    A ``cast`` to float of a value such a region computes (mean pooling's
    ``mask[..., None].expand(...).float()``) becomes its float twin too, so the integer mask
    enters the network through one cast.
    Returns ``g`` itself when no mask qualifies.
    """
    prod = g.producers()
    todo = {n for n in g.nodes if n.op == "scaled_dot_product_attention" and len(n.inputs) == 4
            and n.inputs[3].type.dtype == "bool" and _mask_region(g, n.inputs[3], prod)}
    to_float = {n for n in g.nodes if n.op == "cast" and n.attrs["dtype"] in FLOATS and
                n.inputs[0].type.dtype in INTS and prod.get(n.inputs[0]) is not None
                and _mask_region(g, n.inputs[0], prod)}  # mean pooling's float(mask[..., None])
    if not todo and not to_float:
        return g
    b = GraphBuilder(dict(g.meta))
    env: dict[Value, Value] = {v: b.add_input(v.name, v.type) for v in g.inputs}
    twins: dict[str, _Twins] = {}
    for n in g.nodes:
        ins = [env[v] for v in n.inputs]
        if n in todo:
            dt = n.inputs[0].type.dtype
            t = twins.setdefault(dt, _Twins(b, env, prod, dt))
            keep = t.of(n.inputs[3], n)
            off = b.add("sub", [keep, t.scalar(1.0, n)], {}, name=n.name + "_maskoff", loc=n.loc).out
            ins[3] = b.add("mul", [off, t.scalar(-MASK_FILL, n)], {}, name=n.name + "_maskadd", loc=n.loc).out
        if n in to_float:  # the float twin of the mask region is the cast's value
            dt = n.attrs["dtype"]
            env[n.out] = twins.setdefault(dt, _Twins(b, env, prod, dt)).of(n.inputs[0], n)
            continue
        new = b.add(n.op, ins, dict(n.attrs), name=n.name, loc=n.loc)
        env.update(zip(n.outputs, new.outputs))
    return dce(b.build([env[v] for v in g.outputs], g.output_names))
