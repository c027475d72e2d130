"""``canon::attention``: the attention forms users ship brought to the one form the fusions and
``layout::ane_transformer`` read: softmax(q·kᵀ·scale + bias) · v on rank-4 (B, h, S, d) heads.

Written on the one pattern language (:mod:`tlc.passes.rewrite`); each rule is exact (it computes
the same values, constants combined in float64 and stored in the graph's dtype) and declines
(returns ``None``) whenever a condition it states does not hold, so a form it does not know is
left as traced:

* :func:`unpack_qkv` -- timm's and torchvision's packed projection
  ``linear -> reshape(B, N, 3, h, d) -> permute(2, 0, 3, 1, 4) -> unbind(0)`` (or ``qkv[i]``):
  each of q, k, v becomes a slice of the projection's channels, reshaped to (B, N, h, d) and
  transposed as before; no rank-5 tensor is left (a correctness risk on device as well as a
  layout rule: pytorch/executorch#15833);
* :func:`interleave_stack` -- pairs stacked on a new last axis and flattened (interleaved RoPE)
  become one interleaving ``concat``;
* :func:`split_key_transpose` -- keys transposed from (B, S, h, d) to (B, h, d, S) in one step
  (LeViT) become the (B, h, S, d) heads and the swap of their last two axes;
* :func:`scale_queries` -- scores scaled per head (SwinV2's logit scale) scale the queries instead;
* :func:`drop_broadcast_tile` -- a ``tile`` that only materializes a broadcast for an elementwise op
  (``F.normalize``'s ``expand_as``) is dropped;
* :func:`fold_batch_axes` -- attention over extra batch axes (NesT's blocks, Hiera's mask units,
  MaxViT's windows: rank-5 q, k, v) as rank-4 attention over merged batch axes (again, as
  ``canon::attention_batch``, after ``fuse::norm_attention`` has fused explicit products);
* :func:`batched_products` -- ``einsum`` products over several batch axes that torch lowered to
  rank-3 ``bmm`` through rank-6 views (torchvision's MaxViT) as the ``matmul`` over those axes;
* :func:`merge_bias_adds` -- scores + relative-position bias + window mask (two constant adds,
  Swin, BEiT) become one add of their sum, so the attention fusion sees one additive bias;
* :func:`fold_window_view_add` -- torchvision Swin's shifted-window mask, added through a rank-5
  view of the scores (``(B·nW, h, N, N) -> (B, nW, h, N, N) + mask -> (B·nW, h, N, N)``), becomes
  one add of the mask broadcast to the scores' own shape.

Decomposed matmul -> softmax -> matmul attention (scale on the scores or on q, an additive bias or
mask) is fused into ``scaled_dot_product_attention`` by ``fuse::norm_attention``
(:data:`tlc.passes.fuse.ATTENTION`), which runs after this pass.
"""
from __future__ import annotations

import numpy as np

from tlc.ir import DTYPES, Graph
from tlc.ops import elementwise_ops, get_op

from .registry import register_pass
from .rewrite import Match, Pat, const, either, rewrite


BINARY = tuple(sorted(elementwise_ops("binary")))

# ----------------------------------------------------------------------------------- packed qkv


def _picked_axis(s) -> tuple[int, int] | None:
    """(axis, index) when ``slice_by_index`` ``s`` keeps exactly one position of one axis (stride 1,
    no flip) and every other axis whole, else None."""
    a = s.attrs
    shape = s.inputs[0].type.shape
    if a.get("flip") and any(a["flip"]):
        return None
    cut = [k for k in range(len(shape)) if (a["begin"][k], a["end"][k], a["stride"][k]) != (0, shape[k], 1)]
    if len(cut) != 1:
        return None
    k = cut[0]
    if a["stride"][k] != 1 or a["end"][k] - a["begin"][k] != 1:
        return None
    return k, a["begin"][k]


def _nonunit(shape) -> list[int]:
    return [k for k, d in enumerate(shape) if d != 1]


def _unit_only(n) -> bool:
    """A reshape / expand_dims / squeeze that only inserts or drops unit axes."""
    a, b = n.inputs[0].type.shape, n.out.type.shape
    return n.op in ("reshape", "expand_dims", "squeeze") and [a[k] for k in _nonunit(a)] == [b[k] for k in _nonunit(b)]


def _trace_pick(m: Match, root):
    """Follow ``root``'s value back through views to the reshape that packs q, k, v: returns
    ``(x, y, ay, index, axes)`` -- the packed projection ``x``, the reshape ``y`` splitting its
    last axis, the packing axis ``ay`` of ``y`` picked at ``index``, and for every non-unit axis
    of the root the axis of ``y`` it comes from -- or None when the chain is anything else."""
    v = root.out
    axes = _nonunit(v.type.shape)  # per root non-unit axis: its axis in the current value
    pick = None
    while True:
        n = m.producer(v)
        if n is None:
            return None
        if n.op == "transpose":
            perm = n.attrs["perm"]
            axes = [perm[a] for a in axes]
            pick = None if pick is None else (perm[pick[0]], pick[1])
        elif n.op == "slice_by_index" and pick is None and _picked_axis(n) is not None:
            a, i = _picked_axis(n)
            sq = n.attrs.get("squeeze_mask")
            if sq and any(sq):
                if [k for k, f in enumerate(sq) if f] != [a]:
                    return None
                axes = [x if x < a else x + 1 for x in axes]
            pick = (a, i)
        elif n.op in ("reshape", "expand_dims", "squeeze") and _unit_only(n):
            src, dst = _nonunit(n.inputs[0].type.shape), _nonunit(n.out.type.shape)
            if pick is not None and pick[0] not in dst or any(a not in dst for a in axes):
                return None
            axes = [src[dst.index(a)] for a in axes]
            pick = None if pick is None else (src[dst.index(pick[0])], pick[1])
        elif n.op == "reshape" and pick is not None:
            x = n.inputs[0]
            xs, ys = x.type.shape, n.out.type.shape
            ay = pick[0]
            if int(np.prod(ys[:ay])) != int(np.prod(xs[:-1])) or int(np.prod(ys[ay:])) != xs[-1] or ys[ay] == 1:
                return None  # not the first axis of a split of x's last axis
            return x, n, ay, pick[1], axes
        else:
            return None
        v = n.inputs[0]


def unpack_qkv(m: Match):
    """One of q, k, v picked from a packed projection, as a slice of the projection's channels.

    Given:  %y: [B, N, 3, h, d] = reshape(%x: [B, N, 3*h*d]); %t: [3, B, h, N, d] = transpose(%y, (2, 0, 3, 1, 4))
            %s: [1, B, h, N, d] = slice_by_index(%t, begin=(i, 0, ..)); %q: [B, h, N, d] = squeeze(%s, axes=(0,))
    Result: %xi: [B, N, h*d] = slice_by_index(%x, last axis [i*h*d, (i+1)*h*d))
            %q = transpose(reshape(%xi, (B, N, h, d)), (0, 2, 1, 3))
    Any chain of views between the packing reshape and the pick is followed: a pick as
    ``slice_by_index(.., squeeze_mask)`` (``qkv[i]``), unit axes inserted and dropped on the way
    (torchvision's ``nn.MultiheadAttention``: ``unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2)
    .squeeze(-2)[i]``), leading axes regrouped (MaxViT's (B*nW, 7, 7, 3C) -> (B*nW, 49, 3, h, d)).
    Fires at the end of the chain (a result of lower rank than the packed view), only when the
    picked axis is the first of the axes the reshape splits the projection's last axis into; the
    packed tensors are left to DCE once q, k and v are all unpacked.
    """
    root = m.root
    got = _trace_pick(m, root)
    if got is None:
        return None
    x, y, ay, i, axes = got
    xs, ys = tuple(x.type.shape), tuple(y.out.type.shape)
    if root.out.type.rank >= len(ys):
        return None  # not the end of the chain yet
    width = xs[-1] // ys[ay]
    name = root.name
    rest = [k for k in _nonunit(ys) if k != ay]
    if sorted(axes) != rest:
        return None  # some axis of the packed view is not carried to the root
    xi = m.add("slice_by_index", [x], {"begin": (0,) * (len(xs) - 1) + (i * width,), "end": xs[:-1] + ((i + 1) * width,),
                                       "stride": (1,) * len(xs)}, name=name + "_unpack")
    full = ys[:ay] + ys[ay + 1:]  # the picked tensor in the packed view's order, unit axes kept
    mapped = [a if a < ay else a - 1 for a in axes]
    units = [k for k, d in enumerate(full) if d == 1]
    rs = root.out.type.shape
    if len(rs) == len(full) and sum(d == 1 for d in rs) == len(units):  # one transpose gives the root
        it, nu = iter(units), iter(mapped)
        perm = tuple(next(it) if d == 1 else next(nu) for d in rs)
    else:  # drop the unit axes, transpose, reshape to the root's shape
        full = tuple(ys[k] for k in rest)
        perm = tuple(rest.index(a) for a in axes)
    yi = m.add("reshape", [xi], {"shape": full}, name=name + "_heads")
    if perm != tuple(range(len(perm))):
        yi = m.add("transpose", [yi], {"perm": perm}, name=name + "_t")
    return yi if yi.type.shape == rs else m.add("reshape", [yi], {"shape": rs}, name=name)


UNPACK = Pat(("squeeze", "reshape", "slice_by_index", "expand_dims", "transpose"), where=lambda n: len(n.outputs) == 1)


# ---------------------------------------------------------------------------- per-head scales


def scale_queries(m: Match):
    """Scores scaled per head (SwinV2's clamped, exponentiated logit scale; a (h, 1, 1) constant),
    the scale moved onto the queries so that the attention fusion sees scores with no scale.

    Given:  %s = matmul(%q: [B, h, S, d], %kT); %t = mul(%s, %c: const [h, 1, 1])
    Result: %t = matmul(mul(%q, %c), %kT)
    Fires only for a plain matmul read by nothing else and a constant that is 1 on both matrix
    axes (one factor per batch / head, applied to whole score matrices).
    """
    mm = m["mm"]
    c = m.const_val("c")
    q = mm.inputs[0]
    if (not m.single_use("mm") or mm.attrs.get("transpose_x") or c.ndim > q.type.rank or c.ndim < 2
            or c.shape[-2:] != (1, 1) or q.type.rank < 3):
        return None
    lead = (1,) * (q.type.rank - c.ndim) + c.shape
    if any(a not in (1, b) for a, b in zip(lead[:-2], q.type.shape[:-2])):
        return None
    qs = m.add("mul", [q, m["c"].out], {}, name=mm.name + "_qscale")
    return m.add("matmul", [qs, mm.inputs[1]], dict(mm.attrs), name=m.root.name)


def drop_broadcast_tile(m: Match):
    """A ``tile`` that only materializes a broadcast for an elementwise op, dropped (the op
    broadcasts; F.normalize's ``x / norm.expand_as(x)``).

    Given:  %e = tile(%n: [.., 1], reps=(1, .., d)); %y = real_div(%x: [.., d], %e)
    Result: %y = real_div(%x, %n)
    Fires only when %e has no other reader and the op's result keeps its shape without it.
    """
    op, t = m.root, m["t"]
    src = t.inputs[0]
    if not m.single_use("t") or src.type.rank != t.out.type.rank:
        return None
    if any(r != 1 and d != 1 for r, d in zip(t.attrs["reps"], src.type.shape)):
        return None  # tiles real data, not a broadcast of unit axes
    other = op.inputs[1] if op.inputs[0] is t.out else op.inputs[0]
    if other.type.shape != op.out.type.shape:
        return None
    ins = [src if v is t.out else v for v in op.inputs]
    return m.add(op.op, ins, dict(op.attrs), name=op.name)


# ------------------------------------------------------------------------------- batch axes


def fold_batch_axes(m: Match):
    """Attention over more than one batch axis besides the heads (NesT's blocks, Hiera's mask units:
    q (B, h, T, N, d); MaxViT's windows: q (B, G, h, N, d)) as rank-4 attention over (B*T, h, N, d).

    Given:  %a: [B, h, T, N, d] = scaled_dot_product_attention(%q, %k, %v)
    Result: %x4 = reshape(transpose(%x, (0, 2, 1, 3, 4)), (B*T, h, N, d)) for x in q, k, v
            %a = transpose(reshape(scaled_dot_product_attention(%q4, %k4, %v4), (B, T, h, N, d)), (0, 2, 1, 3, 4))
    The heads are axis 1, or the one batch axis along which the mask varies (MaxViT's
    relative-position bias (1, h, N, N) on (B, G, h, N, d): axis 2, no transpose needed).
    Fires only for rank >= 5 inputs of one batch shape and no mask, a mask of rank <= 2, or one
    that varies along at most one batch axis.
    """
    n = m.root
    q, k, v = n.inputs[:3]
    r = q.type.rank
    if r < 5 or k.type.rank != r or v.type.rank != r or not q.type.is_static:
        return None
    if q.type.shape[:-2] != k.type.shape[:-2] or k.type.shape[:-2] != v.type.shape[:-2]:
        return None
    mask, heads = list(n.inputs[3:]), 1
    if mask and mask[0].type.rank > 2:
        ms = (1,) * (r - mask[0].type.rank) + tuple(mask[0].type.shape)
        varies = [a for a in range(r - 2) if ms[a] != 1]
        if not mask[0].type.is_static or len(ms) != r or len(varies) > 1:
            return None  # a mask that differs along more than one batch axis
        heads = varies[0] if varies else 1
        mask = [m.add("reshape", mask, {"shape": (1, ms[heads]) + ms[-2:]}, name=f"{n.name}_mask_4")]
    perm = tuple(a for a in range(r - 2) if a != heads) + (heads, r - 2, r - 1)  # heads next to the matrices
    h = q.type.shape[heads]
    lead = int(np.prod([q.type.shape[a] for a in perm[:r - 3]]))
    moves = perm != tuple(range(r))

    def four(x, tag):
        t = m.add("transpose", [x], {"perm": perm}, name=f"{n.name}_{tag}_b") if moves else x
        return m.add("reshape", [t], {"shape": (lead, h) + tuple(x.type.shape[-2:])}, name=f"{n.name}_{tag}_4")

    ins = [four(q, "q"), four(k, "k"), four(v, "v")] + mask
    a = m.add("scaled_dot_product_attention", ins, dict(n.attrs), name=n.name + "_4")
    moved = tuple(n.out.type.shape[p] for p in perm)
    if not moves:
        return m.add("reshape", [a], {"shape": moved}, name=n.name)
    a = m.add("reshape", [a], {"shape": moved}, name=n.name + "_b")
    return m.add("transpose", [a], {"perm": tuple(int(i) for i in np.argsort(perm))}, name=n.name)


# ------------------------------------------------------------------- products over merged batch axes

_VIEWS = ("reshape", "transpose", "expand_dims", "squeeze")
_MAX_INDEX = 1 << 22  # elements: index arrays of views above this are not built (a rule must stay cheap)


def _view_chain(m: Match, v):
    """The views (outermost first) between ``v`` and the first value that a view does not
    produce, with every value along the way: ``(nodes, values)``, ``values[0]`` is ``v``."""
    nodes, values = [], [v]
    while (n := m.producer(values[-1])) is not None and n.op in _VIEWS:
        nodes.append(n)
        values.append(n.inputs[0])
    return nodes, values


def _through(nodes, idx: np.ndarray) -> np.ndarray:
    """``idx`` carried through the views ``nodes`` (innermost last in the list, applied first)."""
    for n in reversed(nodes):
        idx = get_op(n.op).numpy(n.attrs, idx)
    return idx


def _operand(m: Match, v, batch: tuple):
    """``(x, swapped)`` when matmul operand ``v`` (rank 3, batch axes merged) is a view of a value
    ``x`` of batch shape ``batch`` -- ``x`` itself (``swapped=False``) or ``x`` with its last two
    axes swapped -- merged by a plain reshape; else None. The nearest such ``x`` wins."""
    nodes, values = _view_chain(m, v)
    for k in range(1, len(values)):
        x = values[k]
        if tuple(x.type.shape[:-2]) != batch or x.type.size > _MAX_INDEX:
            continue
        idx = np.arange(x.type.size).reshape(x.type.shape)
        got = _through(nodes[:k], idx)
        for swapped, want in ((False, idx), (True, np.swapaxes(idx, -1, -2))):
            if got.shape == v.type.shape and np.array_equal(got.ravel(), want.ravel()):
                return x, swapped
    return None


def batched_products(m: Match):
    """A product over several batch axes that was lowered to a rank-3 ``matmul`` on merged batch
    axes (``torch.einsum("bghid,bghjd->bghij")`` as torch lowers it: each operand
    ``expand_dims -> transpose -> reshape``, the result ``reshape -> transpose -> reshape`` back;
    torchvision's MaxViT) as the ``matmul`` over those batch axes, with no rank-3 or rank-6 view.

    Given:  %a3 = reshape(transpose(expand_dims(%q: [B, G, h, N, d]))): [B*G*h, N, d]  (a plain merge)
            %b3 = reshape(transpose(expand_dims(%k: [B, G, h, M, d]))): [B*G*h, d, M]  (merge of k^T)
            %y = reshape(transpose(reshape(matmul(%a3, %b3)))): [B, G, h, N, M]  (a plain split)
    Result: %y = matmul(%q, transpose(%k, swap last two))
    Fires only when every view is proven a plain merge/split (index arrays carried through the
    views, at most 2^22 elements), the operands' batch shapes equal the result's, and the values
    between the matmul and the root have no other reader.
    """
    y = m.root.out
    nodes, values = _view_chain(m, y)
    mm = m.producer(values[-1])
    if mm is None or mm.op != "matmul" or mm.attrs.get("transpose_x") or mm.attrs.get("transpose_y"):
        return None
    r3 = mm.out
    if r3.type.rank != 3 or y.type.rank <= 3 or not y.type.is_static or y.type.size > _MAX_INDEX:
        return None
    if any(m.uses(v) != 1 for v in values[1:]):
        return None
    idx = np.arange(r3.type.size).reshape(r3.type.shape)
    if tuple(y.type.shape[-2:]) != tuple(r3.type.shape[-2:]):
        return None
    if not np.array_equal(_through(nodes, idx).ravel(), idx.ravel()):
        return None  # the views move data: not a plain split of the batch axes
    batch = tuple(y.type.shape[:-2])
    ops = [_operand(m, v, batch) for v in mm.inputs]
    if None in ops:
        return None
    ins = []
    for tag, (x, swapped) in zip("ab", ops):
        if swapped:
            r = x.type.rank
            x = m.add("transpose", [x], {"perm": tuple(range(r - 2)) + (r - 1, r - 2)}, name=f"{mm.name}_{tag}T")
        ins.append(x)
    return m.add("matmul", ins, {}, name=m.root.name)


# ------------------------------------------------------------------------------ additive biases


def _broadcastable(shape, out) -> bool:
    if len(shape) > len(out):
        return False
    return all(a in (1, b) for a, b in zip(shape[::-1], out[::-1]))


def merge_bias_adds(m: Match):
    """Two constant biases added to the scores in turn become one.

    Given:  %a = add(%scores, %bias: const); %b = add(%a, %mask: const)
    Result: %b = add(%scores, %bias + %mask)       ; summed in float64, stored in %b's dtype
    Fires only when %a has no other reader and the sum broadcasts to no more than %b's shape.
    """
    c1, c2 = m.const_val("c1"), m.const_val("c2")
    out = m.root.out.type
    if not m.single_use("a") or out.dtype not in ("fp32", "fp16"):
        return None
    summed = np.asarray(c1, np.float64) + np.asarray(c2, np.float64)
    if not _broadcastable(summed.shape, out.shape) or m.val("x").type.shape != out.shape:
        return None
    return m.add("add", [m.val("x"), m.const(summed.astype(DTYPES[out.dtype]), m["c2"].name + "_bias")],
                 name=m.root.name)


def fold_window_view_add(m: Match):
    """A constant added through a view that only splits the leading (batch) axis, folded into an add
    on the original shape (torchvision Swin's shifted-window mask over (B, nW, h, N, N)).

    Given:  %v: [B, nW, h, N, N] = reshape(%s: [B*nW, h, N, N]); %a = add(%v, %mask: const)
            %r: [B*nW, h, N, N] = reshape(%a)
    Result: %r = add(%s, %mask broadcast to [B, nW, h, N, N], reshaped to [B*nW, h, N, N])
    Fires only when the views are exactly inverse splits of the leading axis and %v, %a have no
    other reader.
    """
    s = m.val("s")
    v, c = m.val("v"), m.const_val("c")
    ss, vs = tuple(s.type.shape), tuple(v.type.shape)
    if m.root.out.type.shape != s.type.shape or not (m.single_use("v") and m.single_use("a")):
        return None
    extra = len(vs) - len(ss)
    if extra < 1 or vs[extra + 1:] != ss[1:] or int(np.prod(vs[:extra + 1])) != ss[0]:
        return None
    if not _broadcastable(c.shape, vs) or m.val("a").type.shape != vs:
        return None
    c5 = np.asarray(c).reshape((1,) * (len(vs) - c.ndim) + c.shape)
    lead = vs[:extra + 1]  # the split batch axes, merged again; the mask's other axes keep their broadcast
    small = np.ascontiguousarray(np.broadcast_to(c5, lead + c5.shape[extra + 1:]).reshape((ss[0],) + c5.shape[extra + 1:]))
    return m.add("add", [s, m.const(small.astype(DTYPES[m.root.out.type.dtype]), m["c"].name + "_win")],
                 name=m.root.name)


# ------------------------------------------------------------------------------ transposed keys


def split_key_transpose(m: Match):
    """Keys transposed in one step from another layout, split into a transpose to (.., S, d) and the
    swap of the last two axes that the attention fusion looks for.

    Given:  %kT: [B, h, d, S] = transpose(%k: [B, S, h, d], (0, 2, 3, 1)); %s = matmul(%q, %kT)
    Result: %kh: [B, h, S, d] = transpose(%k, (0, 2, 1, 3)); %s = matmul(%q, transpose(%kh, (0, 1, 3, 2)))
    (timm LeViT, EfficientFormer). Fires only for a rank >= 3 plain matmul whose second operand is a
    transpose that moves its last axis (a swap of the last two alone is already the fused form).
    """
    mm, t = m.root, m["t"]
    perm = tuple(t.attrs["perm"])
    r = len(perm)
    if r < 3 or mm.attrs.get("transpose_x") or mm.attrs.get("transpose_y"):
        return None
    swap = tuple(range(r - 2)) + (r - 1, r - 2)
    if perm == swap or perm[-1] == r - 1:
        return None
    first = perm[:-2] + (perm[-1], perm[-2])
    kh = m.add("transpose", [t.inputs[0]], {"perm": first}, name=t.name + "_heads")
    kt = m.add("transpose", [kh], {"perm": swap}, name=t.name)
    return m.add("matmul", [m.val("q"), kt], dict(mm.attrs), name=mm.name)


# ------------------------------------------------------------------------------ interleaved pairs


def interleave_stack(m: Match):
    """Tensors stacked on a new axis and merged into the axis before it, as one interleaving concat
    (the rotate-half of interleaved RoPE: EVA-02's ``torch.stack([-x[..., 1::2], x[..., ::2]], -1)
    .reshape(x.shape)``): no rank-5 tensor for head tensors (B, h, S, d).

    Given:  %e_i = expand_dims(%a_i, axes=(j,)); %c = concat(%e_0, .., %e_{n-1}, axis=j)
            %y = reshape(%c, %a_0.shape[:j-1] + (n * %a_0.shape[j-1],) + %a_0.shape[j:])
    Result: %y = concat(%a_0, .., %a_{n-1}, axis=j-1, interleave=True)
    Fires only when every concat input is such an expand_dims read by nothing else.
    """
    cat = m["cat"]
    j = cat.attrs["axis"] % cat.out.type.rank
    srcs = []
    for e in cat.inputs:
        p = m.producer(e)
        if p is None or p.op != "expand_dims" or tuple(a % e.type.rank for a in p.attrs["axes"]) != (j,) or m.uses(e) != 1:
            return None
        srcs.append(p.inputs[0])
    a = srcs[0].type.shape
    if j < 1 or cat.attrs.get("interleave") or not m.single_use("cat") or any(s.type.shape != a for s in srcs):
        return None
    if tuple(m.root.out.type.shape) != a[:j - 1] + (len(srcs) * a[j - 1],) + a[j:]:
        return None
    return m.add("concat", srcs, {"axis": j - 1, "interleave": True}, name=m.root.name)


RULES = [(UNPACK, unpack_qkv),
    (Pat(_VIEWS, where=lambda n: n.out.type.rank > 3), batched_products),
    (Pat("scaled_dot_product_attention"), fold_batch_axes),
    (Pat("mul", (Pat("matmul", name="mm"), const("c")), commutative=True), scale_queries),
    (Pat(BINARY, (Pat("tile", name="t"), None), commutative=True), drop_broadcast_tile),
    (Pat("reshape", (Pat("concat", name="cat"),)), interleave_stack),
    (Pat("matmul", (Pat(name="q"), Pat("transpose", name="t", where=lambda n: n.out.type.rank >= 3))),
     split_key_transpose),
    (either("add", Pat("add", (Pat(name="x"), const("c1")), name="a", commutative=True), const("c2")),
     merge_bias_adds),
    (Pat("reshape", (either("add", Pat("reshape", (Pat(name="s"),), name="v"), const("c"), name="a"),)),
     fold_window_view_add),
]


@register_pass("canon::attention")
def canon_attention(g: Graph) -> Graph:
    """Bring packed-qkv projections, stacked additive biases and window masks added through rank-5
    views to the plain form (module docstring; one Given/Result per rule there).

    Given:  %t = transpose(reshape(linear(%x, Wqkv), (B, N, 3, h, d)), (2, 0, 3, 1, 4))
            %q, %k, %v = squeeze(slice_by_index(%t, i)) for i = 0, 1, 2
    Result: %q = transpose(reshape(slice_by_index(linear(%x, Wqkv), channels [0, C)), (B, N, h, d)), (0, 2, 1, 3))
            (and k, v from channels [C, 2C), [2C, 3C))
    Graphs without these forms are returned unchanged.
    """
    return rewrite(g, RULES)


@register_pass("canon::attention_batch")
def canon_attention_batch(g: Graph) -> Graph:
    """:func:`fold_batch_axes` again, for the ``scaled_dot_product_attention`` that
    ``fuse::norm_attention`` made of explicit products over extra batch axes (MaxViT's
    ``einsum`` attention, after :func:`batched_products`).

    Given:  %a: [B, h, T, N, d] = scaled_dot_product_attention(%q, %k, %v, %bias: [1, h, N, N])
    Result: rank-4 attention over (B*T, h, N, d) (:func:`fold_batch_axes`)
    Graphs without rank >= 5 attention are returned unchanged.
    """
    return rewrite(g, [(Pat("scaled_dot_product_attention"), fold_batch_axes)])
