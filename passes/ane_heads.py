"""Attention written as matmul -> softmax -> matmul, laid out per head without fusing it
(``layout::ane_transformer``'s rules for explicit attention; the forms are in ane_forms.py).

``fuse::norm_attention`` turns the plain form into ``scaled_dot_product_attention``; what it cannot
fuse -- talking heads (CaiT: the scores mixed across heads by a linear before and after the
softmax), attention over channels (XCiT: q·kᵀ over tokens, a d x d map per head) -- is still a
product of per-head matrices, and each product is one MIL ``einsum`` per head (Apple's per-head
rule, neural_engine_rules.md L366-370). A head tensor (B, h, M, N) is held as h parts
[B, N, 1, M] (:class:`~tlc.passes.ane_forms.Heads` with S = M, d = N), so:

* ``transpose(x, (0, 1, 3, 2))`` of heads (B, h, S, d) is each part transposed (0, 3, 2, 1):
  heads with S and d exchanged;
* ``matmul(a, b)`` of heads (B, h, M, K) and (B, h, K, N) is, per head,
  ``einsum('nchw,nwhu->nchu', b_i [B, N, 1, K], a_i [B, K, 1, M])`` = [B, N, 1, M];
* ``softmax`` over the last axis is ``softmax(axis=1)`` per part;
* a linear over the head axis (``x.permute(0, 2, 3, 1)`` -> ``linear`` -> ``permute(0, 3, 1, 2)``,
  CaiT's talking heads) is one 1x1 conv over the heads: the parts joined on axis 2
  ([B, N, h, M]), transposed to [B, h, N, M], the conv, and back.

Padded sequences are not combined with these rules (a padded key axis would sit on the channel
axis of the scores, unmasked): :class:`~tlc.passes.ane_pad.PadPolicy` does not pad a sequence that
an explicit attention product reads, and a padded operand makes the rule decline.
"""
from __future__ import annotations

import numpy as np

from .ane_forms import Ctx, Heads

EINSUM = {"equation": "nchw,nwhu->nchu"}  # MIL's einsum form: contracts x's last axis with y's axis 1


def heads_swap(c: Ctx, n, L: Heads):
    """``transpose(x, (0, 1, 3, 2))`` of (B, h, S, d) heads: the same parts seen as (B, h, d, S)
    (and back): no data moves until a product needs the other orientation."""
    if L.order not in ("bhsd", "bhds") or L.view is not None:
        return None
    return {n.out: Heads(L.parts, L.B, L.S, L.d, "bhds" if L.order == "bhsd" else "bhsd", L.whole, L.pad)}


def _oriented(c: Ctx, L: Heads, want: str) -> list:
    """``L``'s parts as [B, d, 1, S] of the orientation ``want`` ("bhsd": as held; "bhds": each part
    transposed (0, 3, 2, 1), once per part)."""
    if L.order == want:
        return list(L.parts)
    return [c.memo(("swap", p), lambda p=p: c.add("transpose", [p], {"perm": (0, 3, 2, 1)}, f"_T{i}"))
            for i, p in enumerate(L.parts)]


def as_bhsd(c: Ctx, L: Heads) -> Heads:
    """``L`` held as (B, h, S, d) heads (a (B, h, d, S) view's parts transposed, once each)."""
    if L.order == "bhsd":
        return L
    B, h, S, d = L.shape
    return Heads(tuple(_oriented(c, L, "bhsd")), B, S, d, "bhsd")


def heads_matmul(c: Ctx, n):
    """``matmul(a, b)`` of (B, h, M, K) and (B, h, K, N) heads: one einsum per head,
    ``einsum(b_i [B, N, 1, K], a_i [B, K, 1, M])`` = [B, N, 1, M]."""
    if n.attrs.get("transpose_x") or n.attrs.get("transpose_y") or any(x.type.rank != 4 for x in n.inputs):
        return None
    ops = []
    for x in n.inputs:
        L = c.lay.get(x)
        if L is None and x not in c.consts and x.type.shape[1] > 1:
            L = c.heads_of(x)  # a head tensor made outside the layout (one conversion)
        if not isinstance(L, Heads) or L.order not in ("bhsd", "bhds") or L.pad or L.view is not None:
            return None
        ops.append(L)
    a, b = ops
    (B, h, M, K), (B2, h2, K2, N) = a.shape, b.shape
    if (B, h) != (B2, h2) or K != K2:
        return None
    ya = _oriented(c, a, "bhsd")  # [B, K, 1, M]
    xb = _oriented(c, b, "bhsd")  # [B, N, 1, K]
    parts = [c.add("einsum", [pb, pa], EINSUM, f"_h{i}") for i, (pa, pb) in enumerate(zip(ya, xb))]
    return {n.out: Heads(tuple(parts), B, M, N, "bhsd")}


def heads_from_channels(c: Ctx, n):
    """``reshape`` of a channels-first map (B, C, H, W) (a conv's output) into heads
    (B, h, C/h, H*W): its channels split into h parts [B, C/h, 1, H*W], seen as (B, h, d, S)
    (EfficientFormer-v2's attention)."""
    x = n.inputs[0]
    want = tuple(n.out.type.shape)
    if x.type.rank != 4 or len(want) != 4 or x in c.lay or x in c.consts:
        return None
    B, C, H, W = x.type.shape
    if want[0] != B or want[1] * want[2] != C or want[3] != H * W or want[1] < 2:
        return None
    h, d = want[1], want[2]
    flat = c.add("reshape", [c.logical(x)], {"shape": (B, C, 1, H * W)}, "_cf")
    parts = tuple(c.add("split", [flat], {"split_sizes": (d,) * h, "axis": 1}, "_heads", outs=h))
    return {n.out: Heads(parts, B, H * W, d, "bhds", whole=flat)}


def heads_to_channels(c: Ctx, n, L: Heads):
    """``reshape`` of (B, h, d, S) heads into a channels-first map (B, h*d, H, W), H*W = S: the
    parts joined on channels (the logical value itself: no transpose)."""
    want = tuple(n.out.type.shape)
    if L.order != "bhds" or L.pad or L.view is not None or len(want) != 4:
        return None
    if want[:2] != (L.B, L.h * L.d) or want[2] * want[3] != L.S:
        return None
    joined = L.parts[0] if L.h == 1 else c.add("concat", L.parts, {"axis": 1}, "_merge")
    return {n.out: c.add("reshape", [joined], {"shape": want}, "_map")}


def heads_softmax(c: Ctx, n, L: Heads):
    """``softmax`` over the last axis of heads: over axis 1 of every part; over the sequence axis
    of (B, h, S, d) heads (CoaT's keys, softmax over tokens): over axis 3 of every part."""
    rank = len(L.shape)
    ax = n.attrs.get("axis", -1) % rank
    if L.view is not None or L.pad or rank != 4:
        return None
    if L.order in ("bhsd", "bshd") and ax == 3:
        phys = 1
    elif L.order == "bhsd" and ax == 2 or L.order == "bhds" and ax == 3:
        phys = 3
    else:
        return None
    parts = [c.add("softmax", [p], {**n.attrs, "axis": phys}, f"_h{i}") for i, p in enumerate(L.parts)]
    return {n.out: L.like(parts)}


def heads_last(c: Ctx, n, L: Heads):
    """``transpose(x, (0, 2, 3, 1))`` of (B, h, S, d) heads read only by linears (talking heads):
    the same parts, seen as (B, S, d, h)."""
    if L.order != "bhsd" or L.view is not None or not all(u.op == "linear" for u in c.users.get(n.out, [])):
        return None
    return {n.out: Heads(L.parts, L.B, L.S, L.d, "bsdh", pad=L.pad)}


def heads_first(c: Ctx, n, L: Heads):
    """``transpose(x, (0, 3, 1, 2))`` of (B, S, d, h) heads: (B, h, S, d) again."""
    if L.order != "bsdh":
        return None
    return {n.out: Heads(L.parts, L.B, L.S, L.d, "bhsd", pad=L.pad)}


def talking_heads(c: Ctx, n, L: Heads):
    """``linear`` over the head axis of (B, S, d, h) heads: a 1x1 conv over [B, h, d, S]."""
    w = c.consts.get(n.inputs[1])
    if L.order != "bsdh" or w is None or any(b not in c.consts for b in n.inputs[2:]):
        return None
    if not all(u.op == "transpose" and tuple(u.attrs["perm"]) == (0, 3, 1, 2) for u in c.users.get(n.out, [])):
        return None
    return {n.out: _mix_heads(c, L, w, n.inputs[2:], "bsdh")}


def heads_conv(c: Ctx, n, L: Heads):
    """A 1x1 ``conv`` over the head axis of (B, h, S, d) scores (EfficientFormer-v2's talking
    heads, written as Conv2d on (B, h, N, N)): one 1x1 conv over [B, h, d, S]."""
    w = c.consts.get(n.inputs[1])
    a = n.attrs
    if (L.order != "bhsd" or L.view is not None or w is None or w.shape[2:] != (1, 1) or a.get("groups", 1) != 1
            or any(a.get("pad") or ()) or any(s != 1 for s in a.get("strides") or ()) or any(b not in c.consts
                                                                                           for b in n.inputs[2:])):
        return None
    return {n.out: _mix_heads(c, L, w, n.inputs[2:], "bhsd")}


def _mix_heads(c: Ctx, L: Heads, w, bias, order: str) -> dict | Heads:
    joined = L.parts[0] if L.h == 1 else c.add("concat", L.parts, {"axis": 2}, "_heads")  # [B, d, h, S]
    x = c.add("transpose", [joined], {"perm": (0, 2, 1, 3)}, "_hfirst")  # [B, h, d, S]
    w4 = c.const(np.ascontiguousarray(w.reshape(w.shape[:2] + (1, 1))), "_w1x1")
    y = c.add("conv", [x, w4] + [c.logical(b) for b in bias], {"pad": (0, 0, 0, 0)})
    y = c.add("transpose", [y], {"perm": (0, 2, 1, 3)}, "_hback")  # [B, d, h', S]
    h2 = w.shape[0]
    parts = (y,) if h2 == 1 else tuple(c.add("split", [y], {"split_sizes": (1,) * h2, "axis": 2}, "_hsplit", outs=h2))
    return Heads(parts, L.B, L.S, L.d, order, pad=L.pad)


__all__ = ["as_bhsd", "heads_conv", "heads_from_channels", "heads_to_channels", "heads_swap", "heads_matmul", "heads_softmax", "heads_last", "heads_first", "talking_heads"]
