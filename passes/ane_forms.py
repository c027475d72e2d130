"""Physical forms of ``layout::ane_transformer`` (passes/ane_layout.py) and the context that
converts values between their logical (traced) shape and their ANE form.

* :class:`Seq`: a token tensor, logically (B, S, C) or (B*S, C), held as ``[B, C, 1, S]``;
* :class:`Heads`: a head tensor, logically (B, h, S, d) or (B, S, h, d), held as h ``[B, d, 1, S]``;
* either may carry ``pad`` positions at the end of S (the last axis aligned to 64 bytes, Apple
  neural_engine_rules.md L23); those are never read back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlc.ir import Graph, GraphBuilder, Value
from tlc.ops import elementwise_ops
from tlc.ops.norm import norm_axes

from .ane_pad import MISALIGNED_COST, PadPolicy

UNARY = elementwise_ops("unary")
BINARY = elementwise_ops("binary")
#: Elementwise ops allowed on padded sequences: they keep the (garbage but finite) padding
#: positions finite, so that masked keys contribute exactly 0 to attention (p = 0 times a finite
#: value). Division, log, rsqrt, exp, pow may not (0 -> inf / NaN, overflow): they read the
#: unpadded logical value instead.
PAD_SAFE = {"add", "sub", "mul", "maximum", "minimum", "gelu", "silu", "relu", "tanh", "sigmoid", "erf", "clip",
            "abs", "square", "sin", "cos", "leaky_relu", "elu", "identity", "relu6", "softsign"}


@dataclass(frozen=True)
class Seq:
    """Token tensor: logical (B, S, C), or a ``view`` of it, held as ``phys[B, C, 1, S]``.

    ``view``: the logical shape when it is not (B, S, C): the flattened (B*S, C) (GPT-2's
    Conv1D), a channels-last map (B, H, W, C) with S = H*W (torchvision's Swin and MaxViT run
    their MLPs so), or, for B = 1, the sequence-first (S, 1, C) of ``nn.MultiheadAttention``;
    always C last and the product of the rest B*S."""

    phys: Value
    B: int
    S: int
    C: int
    view: tuple[int, ...] | None = None
    pad: int = 0  # phys holds S + pad positions; the last ``pad`` are padding (never read back)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.view if self.view is not None else (self.B, self.S, self.C)

    @property
    def flat(self) -> bool:
        """Whether the logical shape is not (B, S, C) (a flattened, spatial or sequence-first view)."""
        return self.view is not None

    @property
    def parts(self) -> tuple[Value, ...]:
        return (self.phys,)

    def like(self, parts, C: int | None = None) -> "Seq":
        C = self.C if C is None else C
        return Seq(parts[0], self.B, self.S, C, None if self.view is None else self.view[:-1] + (C,), self.pad)


def seq_view(shape, B: int, S: int, C: int) -> tuple[int, ...] | None | bool:
    """``shape`` as a view of tokens (B, S, C) for :class:`Seq` (None: (B, S, C) itself), or False
    when it is none (see :class:`Seq`)."""
    shape = tuple(shape)
    if shape == (B, S, C):
        return None
    if not shape or shape[-1] != C or int(np.prod(shape[:-1])) != B * S:
        return False
    if len(shape) == 2 or shape[0] == B or B == 1:
        return shape
    return False


@dataclass(frozen=True)
class Heads:
    """Head tensor: logical (B, h, S, d) (``order="bhsd"``), (B, S, h, d) (``"bshd"``), its last
    two axes swapped (B, h, d, S) (``"bhds"``: keys transposed, or heads split from the channels of
    a conv's (B, C, H, W) output) or, only between a talking-heads transpose and its linear,
    (B, S, d, h) (``"bsdh"``), held as ``parts``: h tensors [B, d, 1, S]. For B = 1, ``view`` is the logical shape when unit axes
    sit elsewhere (``nn.MultiheadAttention``'s (S, h, d), (h, S, d), (S, 1, h, d))."""

    parts: tuple[Value, ...]
    B: int
    S: int
    d: int
    order: str = "bhsd"
    whole: Value | None = None  # the [B, h*d, 1, S] tensor the parts were split from, if any
    pad: int = 0  # padding positions at the end of each part's last (S) axis
    view: tuple[int, ...] | None = None

    @property
    def h(self) -> int:
        return len(self.parts)

    @property
    def canonical(self) -> tuple[int, ...]:
        """The logical shape of the heads in :attr:`order` (``bhsd``: ``(B, h, S, d)``, ...),
        whatever physical ``view`` they are held in."""
        B, h, S, d = self.B, self.h, self.S, self.d
        return {"bhsd": (B, h, S, d), "bshd": (B, S, h, d), "bsdh": (B, S, d, h), "bhds": (B, h, d, S)}[self.order]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.view if self.view is not None else self.canonical

    @property
    def head_axis(self) -> int:
        return {"bhsd": 1, "bshd": 2, "bsdh": 3, "bhds": 1}[self.order]

    def like(self, parts, d: int | None = None) -> "Heads":
        d = self.d if d is None else d
        view = None if self.view is None else self.view[:-1] + (d,)
        return Heads(tuple(parts), self.B, self.S, d, self.order, pad=self.pad, view=view)

    def roles(self) -> list[str] | None:
        """For B = 1 with h, S, d > 1: the role ('h', 's', 'd') of each non-unit logical axis in
        order; else None (no unit-axis view can be followed)."""
        if self.B != 1 or 1 in (self.h, self.S, self.d) or self.order not in ("bhsd", "bshd"):
            return None
        return ["h", "s", "d"] if self.order == "bhsd" else ["s", "h", "d"]

    def viewed(self, shape, roles: list[str] | None = None) -> "Heads | None":
        """The same parts seen as logical ``shape`` (B = 1: unit axes moved, the non-unit axes in
        the order of ``roles``, default unchanged), or None when ``shape`` is no such view."""
        mine = self.roles()
        roles = mine if roles is None else roles
        if mine is None or [d for d in shape if d != 1] != [{"h": self.h, "s": self.S, "d": self.d}[r] for r in roles]:
            return None
        order = {"hsd": "bhsd", "shd": "bshd"}.get("".join(roles))
        if order is None:
            return None
        canon = (1, self.h, self.S, self.d) if order == "bhsd" else (1, self.S, self.h, self.d)
        return Heads(self.parts, 1, self.S, self.d, order, self.whole if order == self.order else None, self.pad,
                     None if tuple(shape) == canon else tuple(shape))


class Ctx:
    def __init__(self, g: Graph, misaligned_cost: float = MISALIGNED_COST):
        self.pads = PadPolicy(g, misaligned_cost)
        self.b = GraphBuilder(dict(g.meta))
        self.env: dict[Value, Value] = {}
        self.lay: dict[Value, Seq | Heads] = {}
        self.consts = {n.out: np.asarray(n.attrs["val"]) for n in g.nodes if n.op == "const"}
        self.prod = g.producers()
        self.users = g.users()
        self.want = wanted(g)
        self._memo: dict = {}
        self.node = None

    def add(self, op, ins, attrs=None, suffix="", outs=1):
        n = self.node
        node = self.b.add(op, list(ins), dict(attrs or {}), name=n.name + suffix, loc=n.loc)
        return node.outputs if outs != 1 else node.out

    def const(self, arr, suffix):
        return self.b.const(np.ascontiguousarray(arr), name=self.node.name + suffix, loc=self.node.loc)

    def pad_of(self, S: int) -> int:
        """Positions to append to a sequence of length ``S`` so that its last axis spans a
        multiple of 64 bytes (Apple neural_engine_rules.md L23), when the padded program costs
        less (:class:`~tlc.passes.ane_pad.PadPolicy`); else 0."""
        return self.pads.pad(S)

    def padded(self, x: Value, pad: int, axes=(3,)) -> Value:
        """``x`` with ``pad`` zeros appended along each of ``axes`` (axes of a rank-4 tensor)."""
        if not pad:
            return x
        spec = []
        for a in range(1, 4):
            spec += [0, pad if a in axes else 0]
        return self.add("pad", [x], {"pad": tuple(spec), "mode": "constant", "constant_val": 0.0}, "_pad")

    def fresh_seq(self, phys: Value, B: int, S: int, C: int, view=None) -> "Seq":
        """A :class:`Seq` made here from logical data: padded per :meth:`pad_of`."""
        p = self.pad_of(S)
        return Seq(self.padded(phys, p), B, S, C, view, p)

    def seed_seq(self, x: Value, flat: bool = False) -> "Seq":
        """The :class:`Seq` of a logical (B, S, C) value ``x``, or of a channels-last map
        (B, H, W, C) as tokens S = H*W (padded per :meth:`pad_of`); ``flat``: ``x`` is read as
        (B*S, C) by the node that asks."""
        sh = tuple(x.type.shape)
        B, S, C = sh[0], int(np.prod(sh[1:-1])), sh[-1]
        p = self.pad_of(S)
        view = (B * S, C) if flat else (None if len(sh) == 3 else sh)
        return Seq(self.to_seq(x, B, S, C, p), B, S, C, view, p)

    def memo(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # ------------------------------------------------------------------ logical <-> physical
    def logical(self, v: Value) -> Value:
        """``v`` in its own (logical) shape, converted back from its physical form if needed;
        constants are emitted on first use (a weight only a 1x1 conv reads is never emitted 2-D)."""
        if v in self.env:
            return self.env[v]
        if v in self.consts:
            n = self.prod[v]
            self.env[v] = self.b.add("const", [], dict(n.attrs), name=n.name, loc=n.loc).out
            return self.env[v]
        L = self.lay[v]
        keep, self.node = self.node, self.prod[v]
        if isinstance(L, Seq):  # P[B, C, 1, S] -> [B, S, 1, C] -> logical
            t = self.add("transpose", [self.unpadded(L.phys, L.pad)], {"perm": (0, 3, 2, 1)}, "_from_ane")
        else:  # h x [B, d, 1, S] -> [B, d, h, S] -> logical
            c = L.parts[0] if L.h == 1 else self.add("concat", L.parts, {"axis": 2}, "_heads")
            t = self.add("transpose", [self.unpadded(c, L.pad)],
                         {"perm": {"bhsd": (0, 2, 3, 1), "bshd": (0, 3, 2, 1), "bsdh": (0, 3, 1, 2),
                                   "bhds": (0, 2, 1, 3)}[L.order]},
                         "_from_ane")
        out = t if t.type.shape == v.type.shape else self.add("reshape", [t], {"shape": v.type.shape}, "_logical")
        self.node = keep
        self.env[v] = out
        return out

    def unpadded(self, x: Value, pad: int) -> Value:
        if not pad:
            return x
        sh = x.type.shape
        return self.add("slice_by_index", [x], {"begin": (0, 0, 0, 0), "end": sh[:3] + (sh[3] - pad,),
                                                 "stride": (1, 1, 1, 1)}, "_unpad")

    def to_seq(self, v: Value, B: int, S: int, C: int, pad: int = 0) -> Value | None:
        """A (B, S, C)-broadcastable value (rank <= 3, or (B*S, C)) in the physical form
        [b, c, 1, s] of a :class:`Seq` (``pad`` zeros appended to a full S axis), or None if it
        does not broadcast so."""
        shape = v.type.shape
        if len(shape) == 2 and shape[0] == B * S and B * S > 1:  # the flattened (B*S, C) view
            shape = (B, S, shape[1])
        if len(shape) > 3 and seq_view(shape, B, S, C):  # a spatial (B, H, W, C) or other full view
            shape = (B, S, C)
        if len(shape) > 3:
            return None
        s3 = (1,) * (3 - len(shape)) + tuple(shape)
        if not (s3[0] in (1, B) and s3[1] in (1, S) and s3[2] in (1, C)):
            return None
        want = (s3[0], s3[2], 1, s3[1])

        pad = pad if s3[1] == S else 0  # a broadcast S axis needs no padding

        def make():
            if v in self.consts:
                a = self.consts[v].reshape(s3).transpose(0, 2, 1).reshape(want)
                return self.const(np.pad(a, [(0, 0)] * 3 + [(0, pad)]), "_ane_c")
            x = self.logical(v)
            if 1 in (s3[1], s3[2]):  # one of S, C is 1: a reshape keeps the order
                return self.padded(self.add("reshape", [x], {"shape": want}, "_to_ane"), pad)
            r = x if x.type.shape == s3[:2] + (1,) + s3[2:] else self.add(
                "reshape", [x], {"shape": (s3[0], s3[1], 1, s3[2])}, "_tok")
            return self.padded(self.add("transpose", [r], {"perm": (0, 3, 2, 1)}, "_to_ane"), pad)

        return self.memo(("seq", v, B, S, C, pad), make)

    def to_heads(self, v: Value, L: Heads) -> list[Value] | None:
        """A value broadcastable to ``L``'s logical shape, per head in physical form, or None."""
        shape = v.type.shape
        if len(shape) > 4:
            return None
        s4 = (1,) * (4 - len(shape)) + tuple(shape)
        if L.view is not None or L.order not in ("bhsd", "bshd"):
            return None
        ha = L.head_axis
        full = L.shape
        if any(a not in (1, b) for a, b in zip(s4, full)):
            return None
        rest = [k for k in range(4) if k != ha]  # (b, s, d) axes of the logical order
        b_, s_, d_ = (s4[k] for k in rest)
        want = (b_, d_, 1, s_)
        pad = L.pad if s_ == L.S else 0
        if v in self.consts:
            arr = self.consts[v].reshape(s4)

            def head(i):
                sub = np.take(arr, i if s4[ha] > 1 else 0, axis=ha).transpose(0, 2, 1).reshape(want)  # (b, d, 1, s)
                return self.const(np.pad(sub, [(0, 0)] * 3 + [(0, pad)]), f"_ane_h{i}")

            return [self.memo(("hc", v, i if s4[ha] > 1 else 0, ha, pad), lambda i=i: head(i)) for i in range(L.h)]
        if s4[ha] != 1:
            return None

        def make():
            x = self.logical(v)
            if 1 in (s_, d_):
                return self.padded(self.add("reshape", [x], {"shape": want}, "_to_ane"), pad)
            r = self.add("reshape", [x], {"shape": (b_, s_, 1, d_)}, "_tok")
            return self.padded(self.add("transpose", [r], {"perm": (0, 3, 2, 1)}, "_to_ane"), pad)

        one = self.memo(("h1", v, ha, pad), make)
        return [one] * L.h

    def heads_of(self, v: Value) -> Heads:
        """A (B, h, S, d) value that is not in layout as a :class:`Heads` (at the edge: a KV-cache
        input, rotary tables): one transpose to [B, d, h, S] and a split of the head axis."""
        B, h, S, d = v.type.shape

        def make():
            if v in self.consts:
                a = self.consts[v].transpose(0, 3, 1, 2)
                return tuple(self.const(a[:, :, i:i + 1, :], f"_ane_h{i}") for i in range(h))
            t = self.add("transpose", [self.logical(v)], {"perm": (0, 3, 1, 2)}, "_to_ane")
            return (t,) if h == 1 else tuple(self.add("split", [t], {"split_sizes": (1,) * h, "axis": 2}, "_heads",
                                                      outs=h))

        keep, self.node = self.node, self.prod.get(v, self.node)
        parts = self.memo(("heads", v), make)
        self.node = keep
        return Heads(parts, B, S, d, "bhsd")

    def operand(self, v: Value, L) -> list[Value] | None:
        """``v`` as physical parts matching layout ``L`` (broadcasting), or None."""
        if v in self.lay:
            M = self.lay[v]
            if type(M) is not type(L) or M.pad != L.pad or len(M.parts) != len(L.parts):
                return None
            if M.shape == L.shape or M.shape == L.shape[:-1] + (1,):  # equal, or broadcast over channels
                return list(M.parts)
            return None
        if v.type.rank == 0:
            return [self.logical(v)] * len(L.parts)
        if isinstance(L, Seq):
            p = self.to_seq(v, L.B, L.S, L.C, L.pad)
            return None if p is None else [p]
        if v.type.shape == L.shape and L.order == "bhsd" and v not in self.consts:
            return [self.padded(p, L.pad) for p in self.heads_of(v).parts]  # a full (B, h, S, d) tensor from outside
        return self.to_heads(v, L)


def per_token(n) -> bool:
    """An op that treats each token of a (B, S, C) tensor alike (so it can run in (B, C, 1, S))."""
    if n.op in UNARY or n.op in BINARY:
        return True
    return n.op in ("layer_norm", "rms_norm") and tuple(norm_axes(n.attrs["axes"], n.out.type.rank)) == (
        n.out.type.rank - 1,)


def wanted(g: Graph) -> set[Value]:
    """Token tensors (B, S, C) worth holding in (B, C, 1, S) from where they are made: what a
    linear reads (directly, flattened, or as a channels-last (B, H, W, C) map), and, backwards through per-token ops (norms,
    elementwise), what those are computed from, so that the layout change sits at the block's
    edge (after the embedding gather, a conv, a transpose) and not between a norm and its linear."""
    users = g.users()
    want = set()
    for n in g.nodes:
        if n.op == "linear" and n.inputs[0].type.rank in (3, 4):
            want.add(n.inputs[0])
        if (n.op == "reshape" and n.inputs[0].type.rank == 3 and n.out.type.rank == 2
                and any(u.op == "linear" for u in users.get(n.out, []))):
            want.add(n.inputs[0])
    for n in reversed(g.nodes):
        if len(n.outputs) == 1 and n.out in want and per_token(n):
            want.update(v for v in n.inputs if v.type.shape == n.out.type.shape and v.type.dtype == n.out.type.dtype)
    return want


def seed(c: "Ctx", n) -> "Seq | None":
    """A wanted per-token op with no input in layout yet: its full-shape input converted."""
    if n.out not in c.want or n.out.type.rank not in (3, 4) or not per_token(n):
        return None
    x = next((v for v in n.inputs if v.type.shape == n.out.type.shape and v not in c.consts), None)
    if x is None:
        return None
    return c.seed_seq(x)
