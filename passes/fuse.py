"""Fusion passes: fold inference batch_norm and explicit zero padding into conv, absorb bias
adds into conv/linear, and turn matmul by a constant into linear (the forms MIL and the ANE run
best). Every fusion checks use-def structure first: an absorbed intermediate must have no other
reader and must not be a graph output (:meth:`~tlc.passes.rewrite.Match.single_use`)."""
from __future__ import annotations

import numpy as np

from tlc.ir import DTYPES, Graph

from .registry import register_pass
from .rewrite import Match, Pat, any_of, const, either, rewrite, scalar


def _as(a, like: str) -> np.ndarray:
    """``a`` computed in float64, stored in the IR dtype ``like`` (the fused op's dtype)."""
    a = np.asarray(a, dtype=np.float64)
    return np.ascontiguousarray(a.astype(DTYPES[like])).reshape(a.shape)  # (keeps 0-d)


# --------------------------------------------------------------------------- conv + batch_norm


def _bn_folded(m: Match, bn, w, b, dtype):
    """``(W * s, (b - mean) * s + beta)`` with ``s = gamma / sqrt(var + eps)`` of the inference
    ``batch_norm`` ``bn`` (``gamma``/``beta`` optional), scaling ``W`` along its first axis (the
    output channels of a conv or linear weight); None unless every parameter is a constant."""
    params = [m.const_val(k) for k in ("mean", "var", "gamma", "beta")[: len(bn.inputs) - 1]]
    if w is None or b is None or any(p is None for p in params):
        return None
    mean, var = params[0].astype(np.float64), params[1].astype(np.float64)
    gamma = params[2].astype(np.float64) if len(params) > 2 else 1.0
    beta = params[3].astype(np.float64) if len(params) > 3 else 0.0
    s = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    # the weight product in its own dtype: one rounding of w * fp32(s) (<= 1 ulp from the float64
    # product) at a quarter of the memory traffic (ResNet-50: 137 -> ~40 ms)
    w2 = np.ascontiguousarray(w * s.astype(w.dtype).reshape((-1,) + (1,) * (w.ndim - 1)))
    return w2, _as((b.astype(np.float64) - mean) * s + beta, dtype)


def _conv_bn(m: Match):
    conv, bn = m["conv"], m["bn"]
    if not m.single_use("conv") or len(conv.inputs) < 2:
        return None
    w = m.const_val("w")
    b = m.const_val("b") if len(conv.inputs) == 3 else np.zeros(conv.out.type.shape[1])
    folded = _bn_folded(m, bn, w, b, conv.out.type.dtype)
    if folded is None:
        return None
    w2, b2 = folded
    return m.add("conv", [conv.inputs[0], m.const(w2, conv.name + "_w_bn"), m.const(b2, conv.name + "_b_bn")],
                 dict(conv.attrs), name=conv.name)


@register_pass("fuse::conv_batchnorm")
def fuse_conv_batchnorm(g: Graph) -> Graph:
    """Fold an inference batch_norm into the conv that feeds it.

    Given:  %y = conv(%x, W, b)        ; %z = batch_norm(%y, mean, var, gamma, beta, eps)
    Result: %z = conv(%x, W * s, (b - mean) * s + beta)   where s = gamma / sqrt(var + eps)
    Given:  %y = linear(%x: [B, S, C], W, b); %f = reshape(%y, (B*S, C')); %z = batch_norm(%f, ...)
    Result: %z = reshape(linear(%x, W * s, (b - mean) * s + beta), (B*S, C'))   (timm LeViT)
    Fires only when %y has no other user and is not a graph output, and all parameters are const.
    """
    conv = any_of(Pat("conv", (None, const("w"), const("b")), name="conv"), Pat("conv", (None, const("w")), name="conv"))
    pat = Pat("batch_norm", (conv, const("mean"), const("var"), const("gamma"), const("beta")), name="bn")
    lin = any_of(Pat("linear", (None, const("w"), const("b")), name="conv"), Pat("linear", (None, const("w")), name="conv"))
    flat = Pat("batch_norm", (Pat("reshape", (lin,), name="flat", where=_keeps_last_axis), const("mean"), const("var"),
                              const("gamma"), const("beta")), name="bn")
    return rewrite(g, [(pat, _conv_bn), (flat, _linear_bn)])


def _keeps_last_axis(n) -> bool:
    """A reshape to (N, C) that only merges the leading axes (BatchNorm1d over flattened tokens)."""
    return n.out.type.rank == 2 and n.out.type.shape[-1] == n.inputs[0].type.shape[-1]


def _linear_bn(m: Match):
    """batch_norm over the channels of flattened linear outputs (timm LeViT's ``LinearNorm``: the
    linear's per-channel scale and shift, then the reshape)."""
    lin, bn = m["conv"], m["bn"]
    if not (m.single_use("conv") and m.single_use("flat")):
        return None
    w = m.const_val("w")
    b = m.const_val("b") if len(lin.inputs) == 3 else (None if w is None else np.zeros(w.shape[0], w.dtype))
    folded = _bn_folded(m, bn, w, b, lin.out.type.dtype)
    if folded is None:
        return None
    w2, b2 = folded
    y = m.add("linear", [lin.inputs[0], m.const(w2, lin.name + "_w_bn"), m.const(b2, lin.name + "_b_bn")], {},
              name=lin.name)
    return m.add("reshape", [y], {"shape": tuple(bn.out.type.shape)}, name=bn.name)


# ------------------------------------------------------------------------------------ pad + conv


def _pad_conv(m: Match):
    pad, conv = m["pad"], m["conv"]
    if not m.single_use("pad") or pad.attrs.get("mode", "constant") != "constant" or pad.attrs.get("constant_val", 0.0) != 0.0:
        return None
    rank = conv.inputs[0].type.rank
    nsp = rank - 2
    p = list(pad.attrs["pad"])
    p = [0] * (2 * rank - len(p)) + p  # (before, after) for every axis
    if any(p[:4]):
        return None  # batch or channel padding cannot move into conv
    cp = list(conv.attrs.get("pad") or (0,) * (2 * nsp))
    attrs = dict(conv.attrs)
    attrs["pad"] = tuple(a + b for a, b in zip(cp, p[4:]))
    return m.add("conv", [pad.inputs[0]] + list(conv.inputs[1:]), attrs, name=conv.name)


@register_pass("fuse::pad_conv")
def fuse_pad_conv(g: Graph) -> Graph:
    """Fold an explicit zero ``pad`` of the spatial axes into the following conv's padding.

    Given:  %p = pad(%x, pad=[0,0,0,0,1,1,1,1], mode=constant, constant_val=0); %y = conv(%p, W, pad=[0,0,0,0])
    Result: %y = conv(%x, W, pad=[1,1,1,1])
    Fires only for constant-0 padding of spatial axes, when %p has no other user.
    """
    return rewrite(g, [(Pat("conv", (Pat("pad", name="pad"),), name="conv"), _pad_conv)])


# ------------------------------------------------------------------------------------------ bias


def _bias_vector(c: np.ndarray, channels: int, axis: int, rank: int) -> np.ndarray | None:
    """``c`` as a [channels] vector if it broadcasts along ``axis`` of a rank-``rank`` tensor only."""
    if c.size != channels or c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if channels != 1 and shape[axis] != channels:
        return None
    return c.reshape(channels)


def _add_bias(m: Match):
    op = m["op"]
    if not m.single_use("op") or len(op.inputs) != 2 or m.const_val("w") is None:
        return None
    c = m.const_val("c")
    t = op.out.type
    axis = 1 if op.op == "conv" else t.rank - 1
    vec = _bias_vector(c, t.shape[axis], axis, t.rank) if c is not None else None
    if vec is None or np.broadcast_shapes(c.shape, t.shape) != t.shape:
        return None
    return m.add(op.op, [op.inputs[0], op.inputs[1], m.const(_as(vec, t.dtype), op.name + "_bias")], dict(op.attrs),
                 name=op.name)


def _matmul_to_linear(m: Match):
    mm = m["mm"]
    w = m.const_val("w")
    if w is None or w.ndim != 2 or mm.attrs.get("transpose_x") or mm.inputs[0].type.rank < 2:
        return None
    wt = w if mm.attrs.get("transpose_y") else np.ascontiguousarray(w.T)
    return m.add("linear", [mm.inputs[0], m.const(wt, mm.name + "_wt")], name=mm.name)


@register_pass("fuse::linear_bias")
def fuse_bias(g: Graph) -> Graph:
    """Absorb a constant per-channel ``add`` into the preceding bias-less conv / linear, and turn
    matmul by a constant 2-D matrix into ``linear`` (MIL's linear takes a const weight).

    Given:  %y = linear(%x, W); %z = add(%y, b[N])           Result: %z = linear(%x, W, b)
    Given:  %y = conv(%x, W);   %z = add(%y, b[1,C,1,1])     Result: %z = conv(%x, W, b)
    Given:  %y = matmul(%x, W[K,N])                           Result: %y = linear(%x, W.T)
    Fires only when %y has no other user and is not a graph output.
    """
    rules = [
        (Pat("matmul", (None, const("w")), name="mm"), _matmul_to_linear),
        (either("add", Pat(("conv", "linear"), (None, const("w")), name="op"), const("c")), _add_bias),
    ]
    return rewrite(g, rules)


# ------------------------------------------------------------------- decomposed activations

X = Pat(name="x")


def _mul(a: Pat, b: Pat) -> Pat:
    return either("mul", a, b)


def _add(a: Pat, b: Pat) -> Pat:
    return either("add", a, b)


_C = float(np.sqrt(2 / np.pi))
_TANH = _add(Pat("tanh", (_mul(_add(X, _mul(Pat("pow", (X, scalar(3.0))), scalar(0.044715))), scalar(_C)),)), scalar(1.0))
_ERF_ARG = any_of(_mul(X, scalar(1 / np.sqrt(2))), Pat("real_div", (X, scalar(np.sqrt(2)))))
#: (pattern over the activation input ``x``, replacement op, attrs). Every add/mul matches in
#: either operand order; constants match to 1e-4 relative; x * 0.5 * (...) is written both ways
#: it appears in practice (GPT-2's ``NewGELU``; ``F.gelu`` decomposed).
ACTIVATIONS = [
    (any_of(_mul(_mul(X, scalar(0.5)), _TANH), _mul(X, _mul(scalar(0.5), _TANH))), "gelu",
     {"mode": "TANH_APPROXIMATION"}),
    (_mul(_mul(X, scalar(0.5)), _add(Pat("erf", (_ERF_ARG,)), scalar(1.0))), "gelu", {"mode": "EXACT"}),
    (_mul(X, Pat("sigmoid", (X,))), "silu", {}),
    (Pat("log", (_add(Pat("exp", (X,)), scalar(1.0)),)), "softplus", {}),
]


def _activation(op: str, attrs: dict):
    def fuse(m: Match):
        x = m.val("x")
        return m.add(op, [x], dict(attrs), name=m.root.name) if m.private(x) else None

    fuse.__name__ = f"fuse_{op}"
    return fuse


@register_pass("fuse::activations")
def fuse_activations(g: Graph) -> Graph:
    """Recognize decomposed activations and replace them with the MIL op: gelu (tanh form, as
    GPT-2's ``NewGELU`` writes it, and the erf form), silu (x * sigmoid(x)), softplus
    (log(1 + exp(x))). Constants must match to 1e-4 relative.

    Given:  %a = mul(%x, 0.5); %p = pow(%x, 3); ... %t = tanh(...); %b = add(%t, 1); %y = mul(%a, %b)
    Result: %y = gelu(%x, mode=TANH_APPROXIMATION)
    Fires only when the interior values have no reader outside the pattern.
    """
    return rewrite(g, [(pat, _activation(op, attrs)) for pat, op, attrs in ACTIVATIONS])


# ------------------------------------------------------------------ decomposed layer_norm / attention


def _keep_dims(n) -> bool:
    return bool(n.attrs.get("keep_dims"))


def _normalized(d: Pat) -> Pat:
    """d / sqrt(mean(d^2) + eps), also as ``mul(d, rsqrt(..))`` and with ``mul(d, d)`` for the
    square; ``d`` is the pattern for the normalized value (bound as ``"d"``)."""
    dd = Pat(name="d")
    sq = any_of(Pat("pow", (dd, scalar(2.0))), Pat("mul", (dd, dd)))
    ve = _add(Pat("reduce_mean", (sq,), name="var", where=_keep_dims), scalar(name="eps"))
    return any_of(Pat("real_div", (d, Pat("sqrt", (ve,)))),
                  _mul(d, Pat("rsqrt", (ve,), where=lambda n: not n.attrs.get("epsilon"))))


def _axes(n) -> tuple[int, ...]:
    rank = n.inputs[0].type.rank
    return tuple(sorted(a % rank for a in n.attrs["axes"]))


#: layer_norm: d = x - mean(x) over the normalized axes; rms_norm: any d.
LAYER_NORM = _normalized(Pat("sub", (X, Pat("reduce_mean", (X,), name="mean", where=_keep_dims)), name="d"))
RMS_NORM = _normalized(Pat(name="d"))


def _norm(op: str):
    def fuse(m: Match):
        var, rank = m["var"], m.val("d").type.rank
        axes = _axes(var)
        if not axes or axes != tuple(range(rank - len(axes), rank)):
            return None  # trailing axes only
        x = m.val("x") if op == "layer_norm" else m.val("d")
        if op == "layer_norm" and _axes(m["mean"]) != axes:
            return None
        if not m.private(x):
            return None
        return m.add(op, [x], {"axes": axes, "epsilon": m.scalar("eps")}, name=m.root.name)

    fuse.__name__ = f"fuse_{op}"
    return fuse


def _rms_gamma(m: Match):
    """Absorb a constant scale over the normalized axes into a gamma-less rms_norm."""
    rn = m["rn"]
    g = m.const_val("g")
    x = rn.inputs[0]
    axes = rn.attrs["axes"]
    want = tuple(x.type.shape[a] for a in axes)
    if len(rn.inputs) != 1 or not m.single_use("rn") or g is None or g.dtype != DTYPES[x.type.dtype]:
        return None
    if g.shape[len(g.shape) - len(want):] != want or g.size != int(np.prod(want)) or g.ndim > x.type.rank:
        return None
    return m.add("rms_norm", [x, m.const(np.ascontiguousarray(g.reshape(want)), m["g"].name)], dict(rn.attrs),
                 name=m.root.name)


def _plain(n) -> bool:
    return not n.attrs.get("transpose_x") and not n.attrs.get("transpose_y")


def _swaps_last_two(n) -> bool:
    r = n.outputs[0].type.rank
    return tuple(n.attrs["perm"]) == tuple(range(r - 2)) + (r - 1, r - 2)


def _last_axis(n) -> bool:
    r = n.outputs[0].type.rank
    return n.attrs.get("axis", -1) % r == r - 1


_QK = any_of(Pat("matmul", (Pat(name="q"), Pat("transpose", (Pat(name="k"),), where=_swaps_last_two)), where=_plain),
             Pat("matmul", (Pat(name="q"), Pat(name="k")),
                 where=lambda n: bool(n.attrs.get("transpose_y")) and not n.attrs.get("transpose_x")))
_SCALED = any_of(_mul(_QK, scalar(name="scale")), Pat("real_div", (_QK, scalar(name="div"))), _QK)
#: matmul(softmax(matmul(q, k^T) * scale [+ mask], axis=-1), v); scale as mul or real_div or none.
ATTENTION = Pat("matmul", (Pat("softmax", (any_of(_add(_SCALED, Pat(name="mask")), _SCALED),), where=_last_axis),
                           Pat(name="v")), where=_plain)


def _attention(m: Match):
    q, k, v = m.val("q"), m.val("k"), m.val("v")
    mask = m.values.get("mask")
    if "scale" in m.values:
        scale = m.scalar("scale")
    elif "div" in m.values:
        scale = 1.0 / m.scalar("div") if m.scalar("div") else 0.0
    else:
        scale = 1.0
    if not scale or q.type.rank < 3 or k.type.shape[-1] != q.type.shape[-1]:
        return None
    if not m.private(q, k, v, *([mask] if mask is not None else [])):
        return None
    ins = [q, k, v] + ([mask] if mask is not None else [])
    return m.add("scaled_dot_product_attention", ins, {"scale": float(scale)}, name=m.root.name)


@register_pass("fuse::norm_attention")
def fuse_norm_attention(g: Graph) -> Graph:
    """Recognize a decomposed layer_norm (mean / subtract / square / mean / add eps / sqrt or
    rsqrt / divide or multiply over the last axes), a decomposed RMS norm (the same without the
    centring, as torch.export writes ``torch.nn.RMSNorm``, ``F.rms_norm`` and transformers'
    ``LlamaRMSNorm``; a following multiply by a constant weight becomes its gamma, in the next
    sweep) and decomposed attention (matmul(q, k^T) * scale [+ mask] -> softmax over the last
    axis -> matmul(v)).

    Given:  %m = reduce_mean(%x, axes=(-1,), keep_dims=True); %d = sub(%x, %m); %p = pow(%d, 2)
            %v = reduce_mean(%p, ...); %e = add(%v, 1e-5); %s = sqrt(%e); %y = real_div(%d, %s)
    Result: %y = layer_norm(%x, axes=(-1,), epsilon=1e-5)
    Given:  %p = pow(%x, 2); %v = reduce_mean(%p, axes=(-1,), keep_dims=True); %e = add(%v, 1e-6)
            %r = rsqrt(%e); %n = mul(%x, %r); %y = mul(W, %n)
    Result: %y = rms_norm(%x, W, axes=(-1,), epsilon=1e-6)
    Given:  %s = matmul(%q, transpose(%k)); %t = mul(%s, 0.125); %p = softmax(%t, -1); %o = matmul(%p, %v)
    Result: %o = scaled_dot_product_attention(%q, %k, %v, scale=0.125)
    Fires only when the interior values have no reader outside the pattern (and the weight only
    when the rms_norm result has no other reader).
    """
    return rewrite(g, [(_mul(Pat("rms_norm", name="rn"), const("g")), _rms_gamma),
                       (LAYER_NORM, _norm("layer_norm")), (RMS_NORM, _norm("rms_norm")),
                       (ATTENTION, _attention)])
