"""``layout::ane_transformer``: transformer blocks in the Neural Engine's (B, C, 1, S) layout.

Apple's rules for the ANE (neural_engine_rules.md L353, L366-370, ../shared/ane-rules.md;
apple/ml-ane-transformers, "Deploying Transformers on the Apple Neural Engine") ask for
channels-first (B, C, 1, S) activations, 1x1 convs instead of Linear, attention computed per
head, and a finite causal/padding mask value (-40000) instead of -inf. A traced Hugging Face
transformer is the opposite: Linear on (B, S, C), ``reshape`` + ``transpose`` into (B, h, S, d)
heads and one fused ``scaled_dot_product_attention``.

The pass is a forward layout propagation over the IR, recognising blocks from what the ops do
(never from module names). Each value gets at most one *physical form*:

* a token tensor, logically (B, S, C) or its flattened (B*S, C) view, is held as one tensor
  ``P[B, C, 1, S]`` (:class:`~tlc.passes.ane_forms.Seq`);
* a head tensor, logically (B, h, S, d) or (B, S, h, d), is held as h tensors ``[B, d, 1, S]``,
  one per head (:class:`~tlc.passes.ane_forms.Heads`): the head split and merge become ``split`` / ``concat`` on the
  channel axis, the (0, 2, 1, 3) transposes vanish, and GQA's expand + tile + reshape of the
  keys becomes sharing one key tensor between heads.

Ops are rewritten on physical forms: ``linear`` -> 1x1 ``conv``; ``layer_norm`` / ``rms_norm`` /
``softmax`` / slices / concats / splits over the channel axis -> the same op over axis 1;
elementwise ops per physical tensor, constants rearranged at build time;
``scaled_dot_product_attention`` -> per head ``einsum`` (MIL's 'nchw,nwhu->nchu') for the
scores (B, Sk, 1, Sq), the additive mask (bool masks become 0 / ``MASK_FILL``, float masks are
clamped to it), ``softmax`` over axis 1 and an ``einsum`` with the values. MIL's einsum contracts
the last axis of its first input with axis 1 of its second, so the keys are transposed to
(B, Sk, 1, d) once per key head, as in Apple's reference implementation (``k.transpose(1, 3)``);
no other transpose or reshape remains inside an attention or MLP block. Anything else reads the
logical value, converted back where it is needed (a transpose and a reshape at the block's edge,
shared by all readers), so the change of layout sinks to the graph's edges.

Fires only on graphs with rank-4 attention (a plain MLP or a non-attention matmul is left alone:
the edge conversions would cost more than they save). Exact: every rewrite computes the same
values, up to float summation order (tests: tests/test_ane_layout.py).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from tlc.errors import IRError
from tlc.ir import Graph, Value
from tlc.ops.linalg import MASK_FILL
from tlc.ops.norm import REDUCE_OPS, norm_axes

from .cleanup import dce
from .registry import register_pass
from .ane_forms import BINARY, PAD_SAFE, UNARY, Ctx, Heads, Seq, seed, seq_view
from .ane_heads import (as_bhsd, heads_conv, heads_first, heads_from_channels, heads_last, heads_matmul, heads_softmax,
                        heads_swap, heads_to_channels, talking_heads)
from .ane_masks import float_masks
from .ane_pad import MISALIGNED_COST
from .cleanup import merge_layout

# ------------------------------------------------------------------------------- rewrites
# Each returns {old value: layout} for the node's outputs, or None to keep the node as it is.


def _unary(c: Ctx, n):
    L = c.lay.get(n.inputs[0]) or seed(c, n)
    if L is None or len(n.inputs) != 1 or (L.pad and n.op not in PAD_SAFE):
        return None
    return {n.out: L.like([c.add(n.op, [p], n.attrs, f"_h{i}" if len(L.parts) > 1 else "")
                           for i, p in enumerate(L.parts)])}


def _binary(c: Ctx, n):
    L = next((c.lay[v] for v in n.inputs if v in c.lay and c.lay[v].shape == n.out.type.shape), None) or seed(c, n)
    if L is None or len(n.inputs) != 2 or (L.pad and n.op not in PAD_SAFE):
        return None
    ops = [c.operand(v, L) for v in n.inputs]
    if any(o is None for o in ops):
        return None
    many = len(L.parts) > 1
    return {n.out: L.like([c.add(n.op, [a, b], n.attrs, f"_h{i}" if many else "")
                           for i, (a, b) in enumerate(zip(ops[0], ops[1]))])}


def _linear(c: Ctx, n):
    x = n.inputs[0]
    w = c.consts.get(n.inputs[1])
    bias = n.inputs[2:]
    if w is None or any(b not in c.consts for b in bias):
        return None
    L = c.lay.get(x)
    if isinstance(L, Heads):
        return talking_heads(c, n, L)
    if L is None and x.type.rank >= 3 and x.type.is_static:  # tokens (B, S, C) or a channels-last map
        L = c.seed_seq(x)
    if not isinstance(L, Seq):
        return None
    wv = n.inputs[1]
    if any(u.op != "linear" for u in c.users.get(wv, [])) or wv in c.env:
        return None  # a weight read elsewhere too (a tied embedding): a 4-D copy would store it twice
    wn = c.prod[wv]
    w4 = c.memo(("w4", wv), lambda: c.b.const(np.ascontiguousarray(w.reshape(w.shape + (1, 1))), name=wn.name, loc=wn.loc))
    y = c.add("conv", [L.phys, w4] + [c.logical(b) for b in bias], {"pad": (0, 0, 0, 0)})
    return {n.out: L.like([y], C=w.shape[0])}


def _channels_last(L) -> bool:
    """Whether ``L`` is a form whose last logical axis is its physical channel axis (axis 1)."""
    return isinstance(L, Seq) or isinstance(L, Heads) and L.order in ("bhsd", "bshd")


def _channel_axis(L, axis: int, rank: int) -> bool:
    return norm_axes([axis], rank)[0] == rank - 1


def _norm(c: Ctx, n):
    L = c.lay.get(n.inputs[0]) or seed(c, n)
    if not _channels_last(L) or tuple(norm_axes(n.attrs["axes"], len(L.shape))) != (len(L.shape) - 1,):
        return None
    if L.pad and not n.attrs.get("epsilon", 1e-5) > 0:
        return None  # a zero-filled padding position would divide 0 by 0
    rest = [c.logical(v) for v in n.inputs[1:]]
    parts = [c.add(n.op, [p] + rest, {**n.attrs, "axes": (1,)}, f"_h{i}" if len(L.parts) > 1 else "")
             for i, p in enumerate(L.parts)]
    return {n.out: L.like(parts)}


def _reduce(c: Ctx, n):
    """A reduction over the channel axis (C of tokens, d of heads; F.normalize's norm) per part."""
    L = c.lay.get(n.inputs[0])
    axes = n.attrs.get("axes")
    if not _channels_last(L) or axes is None or not n.attrs.get("keep_dims") or len(n.inputs) != 1:
        return None
    if tuple(norm_axes(axes, len(L.shape))) != (len(L.shape) - 1,):
        return None
    parts = [c.add(n.op, [p], {**n.attrs, "axes": (1,)}, f"_h{i}" if len(L.parts) > 1 else "")
             for i, p in enumerate(L.parts)]
    return {n.out: L.like(parts, 1)}


def _softmax(c: Ctx, n):
    L = c.lay.get(n.inputs[0])
    if isinstance(L, Heads):
        return heads_softmax(c, n, L)
    if not isinstance(L, Seq) or not _channel_axis(L, n.attrs.get("axis", -1), len(L.shape)):
        return None
    return {n.out: L.like([c.add("softmax", [L.phys], {**n.attrs, "axis": 1})])}


def _split(c: Ctx, n):
    L = c.lay.get(n.inputs[0])
    if not _channels_last(L) or not _channel_axis(L, n.attrs["axis"], len(L.shape)):
        return None
    if isinstance(L, Heads):  # per head (LeViT's q, k, v packed in each head's channels)
        per = [c.add("split", [p], {**n.attrs, "axis": 1}, f"_h{i}", outs=len(n.outputs)) for i, p in enumerate(L.parts)]
        return {o: L.like([ps[k] for ps in per], o.type.shape[-1]) for k, o in enumerate(n.outputs)}
    outs = c.add("split", [L.phys], {**n.attrs, "axis": 1}, outs=len(n.outputs))
    return {o: L.like([p], C=o.type.shape[-1]) for o, p in zip(n.outputs, outs)}


def _slice(c: Ctx, n):
    L = c.lay.get(n.inputs[0])
    a = n.attrs
    if not _channels_last(L) or a.get("squeeze_mask") and any(a["squeeze_mask"]) or a.get("flip"):
        return None
    full = L.shape
    cut = [k for k in range(len(full)) if (a["begin"][k], a["end"][k], a["stride"][k]) != (0, full[k], 1)]
    if cut != [len(full) - 1]:
        return None  # only slices of the channel (C or d) axis
    k = cut[0]
    attrs = {"begin": (0, a["begin"][k], 0, 0), "end": (L.B, a["end"][k], 1, L.S + L.pad),
             "stride": (1, a["stride"][k], 1, 1)}
    parts = [c.add("slice_by_index", [p], attrs, f"_h{i}" if len(L.parts) > 1 else "") for i, p in enumerate(L.parts)]
    width = n.out.type.shape[-1]
    return {n.out: L.like(parts, width)}


def _concat(c: Ctx, n):
    lays = [c.lay[v] for v in n.inputs if v in c.lay]
    if not lays or not all(_channels_last(M) for M in lays):
        return None
    L = lays[0]
    rank = len(L.shape)
    ax = norm_axes([n.attrs["axis"]], rank)[0]
    if n.attrs.get("interleave") or n.out.type.rank != rank:
        return None
    if isinstance(L, Seq):
        if L.flat or ax == 0:
            return None
        phys_ax = 1 if ax == 2 else 3
        pad = L.pad if ax == 2 else 0  # along channels all share L's padding; along S none may be padded
        ins = []
        for v in n.inputs:
            M = c.lay.get(v)
            if isinstance(M, Seq) and M.B == L.B and ax == 1 and M.C == L.C:  # along S: unpadded pieces, padded after
                ins.append(c.unpadded(M.phys, M.pad))
            elif isinstance(M, Seq) and M.B == L.B and M.pad == pad and M.S == L.S and ax == 2:
                ins.append(M.phys)
            elif v not in c.lay and v.type.rank == 3:
                ins.append(c.to_seq(v, *v.type.shape, pad=pad))
            else:
                return None
        B, S, C = n.out.type.shape
        y = c.add("concat", ins, {"axis": phys_ax})
        return {n.out: Seq(y, B, S, C, pad=pad) if ax == 2 else c.fresh_seq(y, B, S, C)}
    seq_ax = 2 if L.order == "bhsd" else 1
    if ax not in (rank - 1, seq_ax):
        return None
    if ax == seq_ax and L.order == "bhsd":  # along the sequence (a KV cache and the new keys): per head, axis 3
        heads = [c.lay[v] if v in c.lay else c.heads_of(v) for v in n.inputs]
    else:
        heads = [c.lay.get(v) for v in n.inputs]
    if any(not isinstance(M, Heads) or M.h != L.h or M.order != L.order or M.pad != L.pad or M.view for M in heads):
        return None
    if ax == rank - 1:
        if any(M.S != L.S for M in heads):
            return None
        parts = [c.add("concat", [M.parts[i] for M in heads], {"axis": 1}, f"_h{i}") for i in range(L.h)]
        return {n.out: L.like(parts, n.out.type.shape[-1])}
    if L.order != "bhsd" or L.pad or any(M.d != L.d for M in heads):
        return None
    parts = [c.add("concat", [M.parts[i] for M in heads], {"axis": 3}, f"_h{i}") for i in range(L.h)]
    return {n.out: Heads(tuple(parts), L.B, n.out.type.shape[2], L.d, "bhsd")}


def _transpose(c: Ctx, n):
    x = n.inputs[0]
    L = c.lay.get(x)
    perm = tuple(n.attrs["perm"])
    if isinstance(L, Seq) and _only_unit_axes_move(x.type.shape, perm):
        return _reshape(c, n)  # (1, S, C) -> (S, 1, C): the same data
    if isinstance(L, Heads) and L.view is None and perm in HEAD_PERMS:  # explicit attention (ane_heads.py)
        return HEAD_PERMS[perm](c, n, L)
    if isinstance(L, Heads) and L.view is None and perm == (0, 2, 1, 3) and L.order != "bsdh":
        return {n.out: Heads(L.parts, L.B, L.S, L.d, "bshd" if L.order == "bhsd" else "bhsd", L.whole, L.pad)}
    if isinstance(L, Heads) and L.roles() is not None:  # B = 1: a transpose of the (h, S, d) roles
        nu = [k for k, d in enumerate(x.type.shape) if d != 1]
        role = dict(zip(nu, L.roles()))
        M = L.viewed(n.out.type.shape, [role[a] for a in perm if a in role])
        return {n.out: M} if M is not None else None
    if L is None and perm == (0, 2, 1) and x.type.rank == 3 and x.type.is_static and x not in c.consts:
        B, C, S = x.type.shape  # channels-first data (a conv's output) read as tokens: a reshape suffices
        return {n.out: c.fresh_seq(c.add("reshape", [c.logical(x)], {"shape": (B, C, 1, S)}, "_ane"), B, S, C)}
    return None


HEAD_PERMS = {(0, 1, 3, 2): heads_swap, (0, 2, 3, 1): heads_last, (0, 3, 1, 2): heads_first}


def _only_unit_axes_move(shape, perm) -> bool:
    """Whether transposing ``shape`` by ``perm`` keeps the non-unit axes in order (a reshape)."""
    moved = [a for a in perm if shape[a] != 1]
    return moved == sorted(moved)


def _reshape(c: Ctx, n):
    x, want = n.inputs[0], tuple(n.out.type.shape)
    L = c.lay.get(x)
    if isinstance(L, Seq):
        B, S, C = L.B, L.S, L.C
        nu = [d for d in want if d != 1]
        if B == 1 and len(nu) == 3 and nu[0] == S and nu[1] * nu[2] == C and len(want) != 4 and S > 1 and nu[1] > 1:
            want = (1, S, nu[1], nu[2])  # sequence-first heads (S, h, d) of nn.MultiheadAttention
            parts = c.add("split", [L.phys], {"split_sizes": (nu[2],) * nu[1], "axis": 1}, "_heads", outs=nu[1])
            H = Heads(tuple(parts), 1, S, nu[2], "bshd", L.phys, L.pad).viewed(n.out.type.shape)
            return {n.out: H} if H is not None else None
        if len(want) == 4 and want[:2] == (B, S) and want[2] * want[3] == C and not (want[2] == 1 and L.flat):
            h, d = want[2], want[3]
            parts = (L.phys,) if h == 1 else c.add("split", [L.phys], {"split_sizes": (d,) * h, "axis": 1},
                                                    "_heads", outs=h)
            return {n.out: Heads(tuple(parts), B, S, d, "bshd", L.phys, L.pad)}
        view = seq_view(want, B, S, C)
        if view is not False:  # the same tokens seen flat, as a (B, H, W, C) map, or sequence-first
            return {n.out: Seq(L.phys, B, S, C, view, L.pad)}
        return None
    if isinstance(L, Heads) and L.order == "bhds":
        return heads_to_channels(c, n, L)
    if isinstance(L, Heads):
        B, S = L.B, L.S
        if L.order == "bshd" and (view := seq_view(want, B, S, L.h * L.d)) is not False:
            phys = L.parts[0] if L.h == 1 else c.add("concat", L.parts, {"axis": 1}, "_merge")
            return {n.out: Seq(phys, B, S, L.h * L.d, view, L.pad)}
        M = L.viewed(want)  # B = 1: unit axes inserted or dropped
        return {n.out: M} if M is not None else None
    if L is None and (heads := heads_from_channels(c, n)) is not None:  # once: each call adds its ops to the builder
        return heads
    if (x.type.rank == 3 and want == (x.type.shape[0] * x.type.shape[1], x.type.shape[2]) and x not in c.consts
            and any(u.op == "linear" for u in c.users.get(n.out, []))):  # tokens flattened for a linear (GPT-2's Conv1D)
        return {n.out: c.seed_seq(x, flat=True)}
    # GQA: reshape(tile(expand_dims(k, axes=(2,)), reps=(1, 1, n, 1, 1)), (B, kvh * n, S, d))
    t = c.prod.get(x)
    e = c.prod.get(t.inputs[0]) if t is not None and t.op == "tile" else None
    K = c.lay.get(e.inputs[0]) if e is not None and e.op == "expand_dims" else None
    if (isinstance(K, Heads) and K.order == "bhsd" and tuple(e.attrs["axes"]) == (2,)
            and len(t.attrs["reps"]) == 5 and tuple(t.attrs["reps"][:2] + t.attrs["reps"][3:]) == (1, 1, 1, 1)
            and want == (K.B, K.h * t.attrs["reps"][2], K.S, K.d)):
        r = t.attrs["reps"][2]
        return {n.out: K.like([p for p in K.parts for _ in range(r)])}
    return None


def _mask_parts(c: Ctx, m: Value | None, h: int, dtype: str, Sk: int, qpad: int, kpad: int) -> list[Value] | None:
    """An attention mask broadcastable to (B, h, Sq, Sk) as additive per-head masks
    [b, Sk, 1, Sq] (the scores' layout): bool -> 0 / MASK_FILL, float clamped to >= MASK_FILL;
    with ``kpad`` padded keys (a padded sequence) MASK_FILL at those keys, so that they get
    probability exactly 0. None when there is neither a mask nor padding."""
    npdt = np.float16 if dtype == "fp16" else np.float32
    keypad = None
    if kpad:
        keypad = np.zeros((1, Sk + kpad, 1, 1), npdt)
        keypad[:, Sk:] = MASK_FILL
    if m is None:
        return None if keypad is None else [c.memo(("keypad", Sk, kpad), lambda: c.const(keypad, "_keypad"))] * h
    s4 = (1,) * (4 - m.type.rank) + tuple(m.type.shape)
    widths = [(0, 0), (0, kpad if s4[3] > 1 else 0), (0, 0), (0, qpad if s4[2] > 1 else 0)]
    if m in c.consts:
        arr = c.consts[m].reshape(s4)
        add = np.where(arr, 0, MASK_FILL) if arr.dtype == np.bool_ else np.maximum(arr, MASK_FILL)
        add = np.pad(add.astype(npdt).transpose(0, 3, 1, 2), widths)  # (b, Sk, hm, Sq)
        if keypad is not None:
            add = add + keypad
        return [c.memo(("mask", m, j, qpad, kpad), lambda j=j: c.const(add[:, :, j:j + 1, :], f"_mask{j}"))
                for j in ([0] * h if s4[1] == 1 else range(h))]

    def make():
        x = c.logical(m)
        if x.type.rank != 4:
            x = c.add("reshape", [x], {"shape": s4}, "_mask4")
        x = c.add("transpose", [x], {"perm": (0, 3, 1, 2)}, "_maskt")  # where the mask is made: the edge
        if m.type.dtype == "bool":  # (not mask) * MASK_FILL; see EmitContext.additive_mask
            f = c.add("cast", [c.add("logical_not", [x], {}, "_maskn")], {"dtype": dtype}, "_maskf")
            t = c.add("mul", [f, c.const(np.asarray(MASK_FILL, npdt), "_fill")], {}, "_maskadd")
        else:
            t = c.add("maximum", [x, c.const(np.asarray(MASK_FILL, npdt), "_fill")], {}, "_maskclamp")
        if any(w for _, w in widths):
            t = c.add("pad", [t], {"pad": tuple(x for w in widths[1:] for x in w), "mode": "constant",
                                   "constant_val": 0.0}, "_maskpad")
        if keypad is not None:
            t = c.add("add", [t, c.const(keypad, "_keypad")], {}, "_maskkeys")
        return [t] if s4[1] == 1 else list(c.add("split", [t], {"split_sizes": (1,) * s4[1], "axis": 2}, "_maskh",
                                                 outs=s4[1]))

    parts = c.memo(("mask", m, qpad, kpad), make)
    return parts * h if len(parts) == 1 else parts


def _keys_transposed(c: Ctx, k: Heads) -> list[Value]:
    """The key heads as [B, Sk, 1, d] (MIL einsum's first operand): one transpose of the whole
    [B, h*d, 1, Sk] key tensor and a split of its last axis when the heads come from one tensor
    (Apple's reference: ``k.transpose(1, 3).split(..., dim=3)``), else one transpose per head."""
    def make():
        if k.whole is not None and k.h > 1:
            t = c.add("transpose", [k.whole], {"perm": (0, 3, 2, 1)}, "_kT")
            return list(c.add("split", [t], {"split_sizes": (k.d,) * k.h, "axis": 3}, "_kTh", outs=k.h))
        return [c.add("transpose", [p], {"perm": (0, 3, 2, 1)}, f"_kT{j}") for j, p in enumerate(k.parts)]

    return c.memo(("kT", k.parts), make)


def _sdpa(c: Ctx, n):
    if any(x.type.rank != 4 or (x in c.lay and not (isinstance(c.lay[x], Heads) and c.lay[x].order in ("bhsd", "bhds")
                                                    and c.lay[x].view is None and not (c.lay[x].order == "bhds"
                                                                                       and c.lay[x].pad)))
           for x in n.inputs[:3]):
        return None
    q, k, v = (as_bhsd(c, c.lay[x]) if x in c.lay else c.heads_of(x) for x in n.inputs[:3])
    if k.pad != v.pad and k.S == v.S and (n.inputs[1] not in c.lay or n.inputs[2] not in c.lay):
        pad = max(k.pad, v.pad)  # keys or values from outside the layout (EVA's RoPE): padded like the others
        k, v = (L if L.pad == pad else Heads(tuple(c.padded(p, pad) for p in L.parts), L.B, L.S, L.d, L.order, pad=pad)
                for L in (k, v))
    if k.h != v.h or q.h % k.h or k.S != v.S or k.pad != v.pad:
        return None
    dt = n.out.type.dtype
    npdt = np.float16 if dt == "fp16" else np.float32
    scale = n.attrs.get("scale") or 1.0 / np.sqrt(q.d)
    group = q.h // k.h
    masks = _mask_parts(c, n.inputs[3] if len(n.inputs) == 4 else None, q.h, dt, k.S, q.pad, k.pad)
    kts = _keys_transposed(c, k)
    s_c = c.const(np.asarray(scale, npdt), "_scale") if scale != 1 else None
    qs = list(q.parts)
    if s_c is not None:  # scaled before the product, so that the scores stay in fp16 range
        if q.whole is not None and q.h > 1:  # one mul on [B, C, 1, S], split again
            qs = list(c.add("split", [c.add("mul", [q.whole, s_c], {}, "_q")], {"split_sizes": (q.d,) * q.h, "axis": 1},
                            "_qh", outs=q.h))
        else:
            qs = [c.add("mul", [qi, s_c], {}, f"_q{i}") for i, qi in enumerate(qs)]
    outs = []
    for i, qi in enumerate(qs):
        j = i // group
        s = c.add("einsum", [kts[j], qi], {"equation": "nchw,nwhu->nchu"}, f"_scores{i}")  # [B, Sk, 1, Sq]
        if masks is not None:
            s = c.add("add", [s, masks[i]], {}, f"_masked{i}")
        p = c.add("softmax", [s], {"axis": 1}, f"_probs{i}")
        outs.append(c.add("einsum", [v.parts[j], p], {"equation": "nchw,nwhu->nchu"}, f"_h{i}"))  # [B, dv, 1, Sq]
    return {n.out: Heads(tuple(outs), q.B, q.S, v.d, "bhsd", pad=q.pad)}


RULES = {"linear": _linear, "layer_norm": _norm, "rms_norm": _norm, "softmax": _softmax, "split": _split,
         "slice_by_index": _slice, "concat": _concat, "transpose": _transpose, "reshape": _reshape,
         "scaled_dot_product_attention": _sdpa, "matmul": heads_matmul,
         "conv": lambda c, n: heads_conv(c, n, c.lay[n.inputs[0]]) if isinstance(c.lay.get(n.inputs[0]), Heads) else None, **{o: _unary for o in UNARY}, **{o: _binary for o in BINARY},
         **{o: _reduce for o in REDUCE_OPS}}


def has_attention(g: Graph) -> bool:
    """Whether ``g`` holds rank-4 attention (what makes :func:`ane_transformer` fire): fused
    ``scaled_dot_product_attention``, or a rank-4 softmax beside a rank-4 matmul over heads
    (explicit attention, passes/ane_heads.py)."""
    if any(n.op == "scaled_dot_product_attention" and n.inputs[0].type.rank == 4 for n in g.nodes):
        return True
    heads_mm = any(n.op == "matmul" and n.out.type.rank == 4 and n.out.type.shape[1] > 1 for n in g.nodes)
    return heads_mm and any(n.op == "softmax" and n.out.type.rank == 4 for n in g.nodes)


@register_pass("layout::ane_transformer")
def ane_transformer(g: Graph, *, misaligned_cost: float = MISALIGNED_COST) -> Graph:
    """Rewrite transformer blocks into the ANE's (B, C, 1, S) layout (see module docstring).

    Given:  %q = linear(%x, Wq); %qh = transpose(reshape(%q, (B, S, h, d)), (0, 2, 1, 3))   (same for k, v)
            %a = scaled_dot_product_attention(%qh, %kh, %vh, %mask)
            %o = linear(reshape(transpose(%a, (0, 2, 1, 3)), (B, S, C)), Wo)
    Result: %xp = transpose(reshape(%x, (B, S, 1, C)), (0, 3, 2, 1))           ; [B, C, 1, S], once at the edge
            %q = conv(%xp, Wq[:, :, None, None]); %q0, .., %q{h-1} = split(%q, axis=1)  (same for k, v)
            %kT_j = transpose(%k_j, (0, 3, 2, 1))                                ; [B, Sk, 1, d]
            %s_i = einsum(%kT_j, %q_i * scale) + mask_i; %p_i = softmax(%s_i, axis=1)
            %a_i = einsum(%v_j, %p_i)                                             ; [B, d, 1, Sq]
            %o = conv(concat(%a_0, .., %a_{h-1}, axis=1), Wo[:, :, None, None])
    Fires only when the graph has rank-4 ``scaled_dot_product_attention``; ``tlc.build`` runs it
    for ``target="ane"`` only. A form the pass cannot rebuild leaves the graph as traced (a
    warning; under ``TLC_VERIFY``/``TLC_DEBUG`` the error is raised). ``misaligned_cost``: a sequence whose length is not a multiple of
    32 (64 bytes of fp16, Apple neural_engine_rules.md L23) is padded up to one when the padded
    program costs less, an op on a misaligned axis counted this many times its FLOPs
    (:mod:`tlc.passes.ane_pad`: ViT-B/16's 197 -> 224, ViT-B/32's 50 -> 64, a 7x7 window's
    49 -> 64; 1.0 turns padding off); padded keys are masked and the padding is sliced off at the
    edges, so results do not change.
    """
    if not has_attention(g):
        return g
    try:
        return _layout(g, misaligned_cost)
    except (IRError, ValueError) as e:  # a form this pass mis-reads: the graph as traced is still right
        if os.environ.get("TLC_VERIFY") or os.environ.get("TLC_DEBUG"):
            raise
        warnings.warn(f"layout::ane_transformer left the graph as traced: {e}", stacklevel=2)
        return g


def _layout(g: Graph, misaligned_cost: float) -> Graph:
    g = float_masks(g)  # bool/int32 mask logic as float arithmetic (passes/ane_masks.py)
    c = Ctx(g, misaligned_cost)
    for v in g.inputs:
        c.env[v] = c.b.add_input(v.name, v.type)
    for n in g.nodes:
        c.node = n
        if n.op == "const":
            continue  # emitted where first read (Ctx.logical)
        rule = RULES.get(n.op)
        got = None
        if rule is not None and all(x.type.is_static for x in n.inputs):
            got = rule(c, n)
        if got:
            for v, form in got.items():  # a layout, or (ane_heads.heads_to_channels) the logical value itself
                (c.env if isinstance(form, Value) else c.lay)[v] = form
            continue
        new = c.b.add(n.op, [c.logical(v) for v in n.inputs], dict(n.attrs), name=n.name, loc=n.loc)
        c.env.update(zip(n.outputs, new.outputs))
    outs = []
    for v in g.outputs:
        c.node = c.prod.get(v)
        outs.append(c.logical(v))
    return merge_layout(dce(c.b.build(outs, g.output_names)))
