"""Cleanup passes: common-subexpression elimination, constant folding, no-op removal, merging of
consecutive transposes / reshapes, dead-code elimination."""
from __future__ import annotations

import types

import numpy as np

from tlc.ir import DTYPES, Graph, Node, Value, replace
from tlc.ops import get_op, run_kernel

from .registry import register_pass
from .rewrite import Match, Pat, dce, rewrite


register_pass("cleanup::dce")(dce)  # defined with the rewrite engine, which drops what rewrites orphan


#: Constant folding never creates a constant larger than this unless every constant it reads
#: is used only there (then the inputs disappear and nothing is duplicated).
FOLD_MAX_BYTES = 1 << 20


def _attr_key(v):
    """Hashable stand-in for an attribute. Arrays are keyed by dtype, shape and 64 sampled
    elements (hashing every byte of ResNet-50's weights took 70 ms); equal keys are confirmed by
    :func:`_same_attr`."""
    if isinstance(v, np.ndarray):
        flat = np.ravel(v)
        return ("nd", v.dtype.str, v.shape, flat[:: max(1, flat.size // 64)].tobytes())
    if isinstance(v, (tuple, list)):
        return tuple(_attr_key(x) for x in v)
    return v


def _same_attr(x, y) -> bool:
    """Exact equality of two attribute values (arrays: same dtype, shape and elements)."""
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype
                and x.shape == y.shape and bool(np.array_equal(x, y)))
    if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
        return len(x) == len(y) and all(_same_attr(p, q) for p, q in zip(x, y))
    return x == y


def _substitute(g: Graph, subst: dict[Value, Value], drop: set[int]) -> Graph:
    def s(v):
        while v in subst:
            v = subst[v]
        return v

    nodes = []
    for n in g.nodes:
        if id(n) in drop:
            continue
        ins = tuple(s(v) for v in n.inputs)
        nodes.append(n if all(a is b for a, b in zip(ins, n.inputs)) else Node(n.op, ins, n.outputs, n.attrs, n.name, n.loc))
    return replace(g, nodes=tuple(nodes), outputs=tuple(s(v) for v in g.outputs))


@register_pass("cleanup::cse")
def cse(g: Graph) -> Graph:
    """Common-subexpression elimination: a node with the same op, the same inputs and equal
    attributes as an earlier one (equal constants included) is replaced by it.

    Given:  %a = relu(%x); %b = relu(%x); %c = add(%a, %b)
    Result: %a = relu(%x); %c = add(%a, %a)
    Never merges nondeterministic ops (two random draws are two draws).
    """
    seen: dict = {}
    subst: dict[Value, Value] = {}
    drop: set[int] = set()
    for n in g.nodes:
        ins = tuple(subst.get(v, v) for v in n.inputs)
        if get_op(n.op).nondeterministic:  # (its inputs are still substituted, by _substitute)
            continue
        key = (n.op, tuple(id(v) for v in ins), tuple(sorted((k, _attr_key(v)) for k, v in n.attrs.items())))
        same = seen.setdefault(key, [])
        prev = next((p for p in same if all(_same_attr(p.attrs[k], n.attrs[k]) for k in n.attrs)), None)
        if prev is not None:
            for a, b in zip(n.outputs, prev.outputs):
                subst[a] = b
            drop.add(id(n))
        else:
            same.append(n)
    return g if not drop else _substitute(g, subst, drop)


@register_pass("cleanup::const_fold")
def const_fold(g: Graph) -> Graph:
    """Evaluate nodes whose inputs are all constants with their NumPy kernel.

    Given:  %w = const; %wt = transpose(%w, perm=(1, 0)); %y = matmul(%x, %wt)
    Result: %wt = const (transposed); %y = matmul(%x, %wt)
    Size cap: a result over ``FOLD_MAX_BYTES`` is folded only if every constant input has no
    other reader (so no weight is duplicated).
    """
    uses = g.use_counts()
    consts: dict[Value, np.ndarray] = {n.out: n.attrs["val"] for n in g.nodes if n.op == "const"}
    new_nodes = []
    changed = False
    for n in g.nodes:
        if (n.op != "const" and n.inputs and all(v in consts for v in n.inputs) and len(n.outputs) == 1
                and n.out.type.is_static):  # a data-dependent shape stays a run-time value
            big = n.out.type.nbytes > FOLD_MAX_BYTES
            if not big or all(uses.get(v, 0) == 1 and v not in g.outputs for v in n.inputs):
                try:
                    (val,) = run_kernel(get_op(n.op), n.attrs, [consts[v] for v in n.inputs], [DTYPES[n.out.type.dtype]])
                except Exception:  # a kernel that cannot evaluate this constant: leave it to run time
                    new_nodes.append(n)
                    continue
                val = np.ascontiguousarray(val).reshape(val.shape)  # (ascontiguousarray makes 0-d 1-d)
                val.flags.writeable = False
                folded = Node("const", (), n.outputs, types.MappingProxyType({"val": val}), n.name, n.loc)
                consts[n.out] = val
                new_nodes.append(folded)
                changed = True
                continue
        new_nodes.append(n)
    return dce(replace(g, nodes=tuple(new_nodes))) if changed else g


def _is_noop(n: Node) -> bool:
    """Whether ``n`` returns its input unchanged: its op row's ``is_noop(attrs, input types)``
    (reshape to the same shape, identity transpose, same-dtype cast, full slice, tile by ones,
    zero pad, empty squeeze/expand_dims, one-input concat, identity)."""
    rule = get_op(n.op).is_noop
    return rule is not None and bool(rule(n.attrs, [v.type for v in n.inputs]))


@register_pass("cleanup::noop")
def remove_noops(g: Graph) -> Graph:
    """Remove ops that return their input unchanged: reshape to the same shape, identity
    transpose, cast to the same dtype, full slice, tile by ones, zero pad, single-input concat,
    identity. A no-op whose input is a graph input and whose output is a graph output stays
    (an output cannot alias an input in the package).

    Given:  %y = reshape(%x, shape=[2, 3])   where %x: fp32[2,3]
    Result: uses of %y read %x
    """
    subst: dict[Value, Value] = {}
    drop: set[int] = set()
    ins = set(g.inputs)
    outs = set(g.outputs)
    for n in g.nodes:
        if len(n.outputs) == 1 and n.inputs and _is_noop(n):
            src = n.inputs[0]
            while src in subst:
                src = subst[src]
            if n.out in outs and (src in ins or src in outs):
                continue
            subst[n.out] = src
            drop.add(id(n))
    return g if not drop else _substitute(g, subst, drop)


def merge_transposes(m: Match):
    outer, inner = m["t2"], m["t1"]
    if not m.single_use("t1"):
        return None
    p1, p2 = inner.attrs["perm"], outer.attrs["perm"]
    perm = tuple(p1[i] for i in p2)
    src = inner.inputs[0]
    if perm == tuple(range(len(perm))):
        return m.add("identity", [src], name=outer.name) if outer.out.type == src.type else None
    return m.add("transpose", [src], {"perm": perm}, name=outer.name)


def _merge_reshapes(m: Match):
    if not m.single_use("r1"):
        return None
    return m.add("reshape", [m["r1"].inputs[0]], {"shape": m["r2"].attrs["shape"]}, name=m["r2"].name)


RULES = [
    (Pat("transpose", (Pat("transpose", name="t1"),), name="t2"), merge_transposes),
    (Pat("reshape", (Pat(("reshape", "expand_dims", "squeeze"), name="r1"),), name="r2"), _merge_reshapes),
]


@register_pass("cleanup::merge_layout")
def merge_layout(g: Graph) -> Graph:
    """Merge consecutive transposes (composing the permutations; an identity composition
    disappears) and consecutive reshapes / expand_dims / squeeze into one reshape.

    Given:  %a = transpose(%x, perm=(0, 2, 1)); %b = transpose(%a, perm=(0, 2, 1))
    Result: uses of %b read %x
    Fires only when the inner op has no other reader.
    """
    return remove_noops(rewrite(g, RULES))


def _keeps_everything(mask: np.ndarray) -> bool:
    """A constant attention mask that masks nothing: all True (bool) or all 0 (additive float)."""
    return bool(mask.all()) if mask.dtype == np.bool_ else not np.any(mask)


@register_pass("cleanup::attention_mask")
def drop_trivial_attention_mask(g: Graph) -> Graph:
    """Drop a constant attention mask that masks nothing (all True, or all 0.0 when additive).

    Given:  %m = const(bool[1,1,L,S], all True); %o = scaled_dot_product_attention(%q, %k, %v, %m)
    Result: %o = scaled_dot_product_attention(%q, %k, %v)
    torch.export of HF ViT/encoders without padding yields such masks; without one, attention
    reads no mask (torch picks its fastest fused kernel; MIL's op has no mask input). The output
    type never depends on the mask. Must not fire on a mask that is computed or masks anything.
    """
    consts = {n.out: n.attrs["val"] for n in g.nodes if n.op == "const"}
    nodes, changed = [], False
    for n in g.nodes:
        if (n.op == "scaled_dot_product_attention" and len(n.inputs) == 4 and n.inputs[3] in consts
                and _keeps_everything(consts[n.inputs[3]])):
            n = Node(n.op, n.inputs[:3], n.outputs, n.attrs, n.name, n.loc)
            changed = True
        nodes.append(n)
    return dce(replace(g, nodes=tuple(nodes))) if changed else g
