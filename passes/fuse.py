"""Fusion passes: fold inference batch_norm and explicit zero padding into conv, absorb bias
adds into conv/linear, and turn matmul by a constant into linear (the forms MIL and the ANE run
best). Every fusion checks use-def structure first: an absorbed intermediate must have no other
reader and must not be a graph output (:meth:`~tlc.passes.rewrite.Match.single_use`)."""
from __future__ import annotations

import numpy as np

from tlc.ir import DTYPES, Graph

from . import register_pass
from .rewrite import Match, Pat, const, rewrite


def _as(a, like: str) -> np.ndarray:
    """``a`` computed in float64, stored in the IR dtype ``like`` (the fused op's dtype)."""
    a = np.asarray(a, dtype=np.float64)
    return np.ascontiguousarray(a.astype(DTYPES[like])).reshape(a.shape)  # (keeps 0-d)


# --------------------------------------------------------------------------- conv + batch_norm


def _conv_bn(m: Match):
    conv, bn = m["conv"], m["bn"]
    if not m.single_use("conv") or len(conv.inputs) < 2:
        return None
    w = m.const_val("w")
    b = m.const_val("b") if len(conv.inputs) == 3 else np.zeros(conv.out.type.shape[1])
    params = [m.const_val(k) for k in ("mean", "var", "gamma", "beta")[: len(bn.inputs) - 1]]
    if w is None or b is None or any(p is None for p in params):
        return None
    mean, var = params[0].astype(np.float64), params[1].astype(np.float64)
    gamma = params[2].astype(np.float64) if len(params) > 2 else 1.0
    beta = params[3].astype(np.float64) if len(params) > 3 else 0.0
    s = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    dt = conv.out.type.dtype
    # the weight product in its own dtype: one rounding of w * fp32(s) (<= 1 ulp from the float64
    # product) at a quarter of the memory traffic (ResNet-50: 137 -> ~40 ms)
    w2 = np.ascontiguousarray(w * s.astype(w.dtype).reshape((-1,) + (1,) * (w.ndim - 1)))
    b2 = _as((b.astype(np.float64) - mean) * s + beta, dt)
    return m.add("conv", [conv.inputs[0], m.const(w2, conv.name + "_w_bn"), m.const(b2, conv.name + "_b_bn")],
                 dict(conv.attrs), name=conv.name)


@register_pass("fuse::conv_batchnorm")
def fuse_conv_batchnorm(g: Graph) -> Graph:
    """Fold an inference batch_norm into the conv that feeds it.

    Given:  %y = conv(%x, W, b)        ; %z = batch_norm(%y, mean, var, gamma, beta, eps)
    Result: %z = conv(%x, W * s, (b - mean) * s + beta)   where s = gamma / sqrt(var + eps)
    Fires only when %y has no other user and is not a graph output, and all parameters are const.
    """
    pat = Pat("batch_norm", (Pat("conv", (None, const("w"), const("b")), name="conv"),
                             const("mean"), const("var"), const("gamma"), const("beta")), name="bn")
    pat_nobias = Pat("batch_norm", (Pat("conv", (None, const("w")), name="conv"),
                                    const("mean"), const("var"), const("gamma"), const("beta")), name="bn")
    return rewrite(g, [(pat, _conv_bn), (pat_nobias, _conv_bn)])


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
        (Pat("add", (Pat(("conv", "linear"), (None, const("w")), name="op"), const("c"))), _add_bias),
        (Pat("add", (const("c"), Pat(("conv", "linear"), (None, const("w")), name="op"))), _add_bias),
    ]
    return rewrite(g, rules)


# ------------------------------------------------------------------- decomposed activations


class _Scalar:
    """Matches a const whose every element is ``value`` (within ``rtol``)."""

    def __init__(self, value: float, rtol: float = 1e-4):
        self.value, self.rtol = value, rtol


def _is(prod, v, pat, bind: dict) -> bool:
    """Match value ``v`` against a nested tuple pattern ``(op, p1, p2, ...)``; binary
    commutative ops (add, mul) try both operand orders. ``"x"`` binds (and must re-match) the
    activation input; a :class:`_Scalar` matches a constant."""
    if pat == "x":
        if "x" in bind:
            return bind["x"] is v
        bind["x"] = v
        return True
    n = prod.get(v)
    if isinstance(pat, _Scalar):
        if n is None or n.op != "const":
            return False
        c = np.asarray(n.attrs["val"], np.float64)
        return c.size > 0 and bool(np.allclose(c, pat.value, rtol=pat.rtol, atol=0))
    if n is None or n.op != pat[0] or len(n.inputs) != len(pat) - 1:
        return False
    orders = [n.inputs]
    if n.op in ("add", "mul") and len(n.inputs) == 2:
        orders.append(n.inputs[::-1])
    for ins in orders:
        trial = dict(bind)
        if all(_is(prod, iv, sub, trial) for iv, sub in zip(ins, pat[1:])):
            bind.update(trial)
            return True
    return False


_C = float(np.sqrt(2 / np.pi))
#: (pattern, replacement op, attrs); x * 0.5 * (...) is written both ways it appears in practice.
ACTIVATIONS = [
    (("mul", ("mul", "x", _Scalar(0.5)),
      ("add", ("tanh", ("mul", ("add", "x", ("mul", ("pow", "x", _Scalar(3.0)), _Scalar(0.044715))), _Scalar(_C))),
       _Scalar(1.0))), "gelu", {"mode": "TANH_APPROXIMATION"}),
    (("mul", "x", ("mul", _Scalar(0.5),
                   ("add", ("tanh", ("mul", ("add", "x", ("mul", ("pow", "x", _Scalar(3.0)), _Scalar(0.044715))),
                                     _Scalar(_C))), _Scalar(1.0)))), "gelu", {"mode": "TANH_APPROXIMATION"}),
    (("mul", ("mul", "x", _Scalar(0.5)), ("add", ("erf", ("mul", "x", _Scalar(1 / np.sqrt(2)))), _Scalar(1.0))),
     "gelu", {"mode": "EXACT"}),
    (("mul", ("mul", "x", _Scalar(0.5)), ("add", ("erf", ("real_div", "x", _Scalar(np.sqrt(2)))), _Scalar(1.0))),
     "gelu", {"mode": "EXACT"}),
    (("mul", "x", ("sigmoid", "x")), "silu", {}),
    (("log", ("add", ("exp", "x"), _Scalar(1.0))), "softplus", {}),
]


@register_pass("fuse::activations")
def fuse_activations(g: Graph) -> Graph:
    """Recognize decomposed activations and replace them with the MIL op: gelu (tanh form, as
    GPT-2's ``NewGELU`` writes it, and the erf form), silu (x * sigmoid(x)), softplus
    (log(1 + exp(x))). Constants must match to 1e-4 relative.

    Given:  %a = mul(%x, 0.5); %p = pow(%x, 3); ... %t = tanh(...); %b = add(%t, 1); %y = mul(%a, %b)
    Result: %y = gelu(%x, mode=TANH_APPROXIMATION)
    Fires only when the interior values have no reader outside the pattern.
    """
    prod, uses, outs = g.producers(), g.use_counts(), set(g.outputs)

    def rule(m: Match):
        for pat, op, attrs in ACTIVATIONS:
            bind: dict = {}
            if _is(prod, m.root.out, pat, bind) and _private(prod, uses, outs, m.root, {bind["x"]}):
                return m.add(op, [bind["x"]], dict(attrs), name=m.root.name)
        return None

    return rewrite(g, [(Pat(("mul", "log")), rule)])


# ------------------------------------------------------------------ decomposed layer_norm / attention


def _private(g_prod, uses, outs, root, stop: set) -> bool:
    """Every value computed between the ``stop`` values and ``root`` is read only inside that
    region and is not a graph output (so replacing ``root`` leaves nothing dangling)."""
    seen, stack, inside = set(), [root.out], set()
    while stack:
        v = stack.pop()
        if v in stop or v in seen:
            continue
        seen.add(v)
        n = g_prod.get(v)
        if n is None or n.op == "const":
            continue
        inside.add(v)
        stack.extend(n.inputs)
    reads = {v: 0 for v in inside}
    for v in inside:
        for i in g_prod[v].inputs:
            if i in reads:
                reads[i] += 1
    return all(v is root.out or (reads[v] == uses.get(v, 0) and v not in outs) for v in inside)


def _scalar_of(prod, v) -> float | None:
    n = prod.get(v)
    if n is None or n.op != "const" or n.attrs["val"].size != 1:
        return None
    return float(np.asarray(n.attrs["val"]).reshape(()))


def _normalized_parts(prod, root):
    """(d, reduce node, eps) if ``root`` computes d / sqrt(mean(d^2) + eps) (also as
    ``mul(d, rsqrt(..))``, and with ``mul(d, d)`` for the square) over trailing axes."""
    n = root
    if n.op == "real_div":
        d, s = n.inputs
        sn = prod.get(s)
        if sn is None or sn.op != "sqrt":
            return None
        ve = sn.inputs[0]
    elif n.op == "mul":
        for d, r in (n.inputs, n.inputs[::-1]):
            rn = prod.get(r)
            if rn is not None and rn.op == "rsqrt" and not rn.attrs.get("epsilon"):
                ve = rn.inputs[0]
                break
        else:
            return None
    else:
        return None
    ven = prod.get(ve)
    if ven is None or ven.op != "add":
        return None
    var, eps = None, None
    for a, b in (ven.inputs, ven.inputs[::-1]):
        if _scalar_of(prod, b) is not None:
            var, eps = a, _scalar_of(prod, b)
    vn = prod.get(var) if var is not None else None
    if vn is None or vn.op != "reduce_mean" or not vn.attrs.get("keep_dims"):
        return None
    sq = prod.get(vn.inputs[0])
    if sq is None or not ((sq.op == "pow" and sq.inputs[0] is d and _scalar_of(prod, sq.inputs[1]) == 2.0)
                          or (sq.op == "mul" and sq.inputs[0] is d and sq.inputs[1] is d)):
        return None
    rank = d.type.rank
    axes = tuple(sorted(a % rank for a in vn.attrs["axes"]))
    if not axes or axes != tuple(range(rank - len(axes), rank)):
        return None
    return d, axes, eps


def _norm_parts(prod, root):
    """``("layer_norm", x, axes, eps)`` if ``root`` normalizes d = x - mean(x) over the same
    axes, else ``("rms_norm", d, axes, eps)`` for d / sqrt(mean(d^2) + eps); ``None`` if neither."""
    parts = _normalized_parts(prod, root)
    if parts is None:
        return None
    d, axes, eps = parts
    dn = prod.get(d)
    if dn is not None and dn.op == "sub":
        x, m = dn.inputs
        mn = prod.get(m)
        if (mn is not None and mn.op == "reduce_mean" and mn.inputs[0] is x and mn.attrs.get("keep_dims")
                and tuple(sorted(a % x.type.rank for a in mn.attrs["axes"])) == axes):
            return "layer_norm", x, axes, eps
    return "rms_norm", d, axes, eps


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


def _attention_parts(prod, root):
    """(q, k, v, mask, scale) if ``root`` = matmul(softmax(scores [+ mask], axis=-1), v) with
    scores = matmul(q, transpose(k)) * scale (or / divisor, or transpose_y)."""
    if root.op != "matmul" or root.attrs.get("transpose_x") or root.attrs.get("transpose_y"):
        return None
    p, v = root.inputs
    sm = prod.get(p)
    if sm is None or sm.op != "softmax" or sm.attrs.get("axis", -1) % p.type.rank != p.type.rank - 1:
        return None
    s = sm.inputs[0]
    mask = None
    sn = prod.get(s)
    if sn is not None and sn.op == "add":
        for a, b in (sn.inputs, sn.inputs[::-1]):
            an = prod.get(a)
            if an is not None and an.op in ("mul", "real_div", "matmul"):
                s, mask = a, b
                break
        else:
            return None
        sn = prod.get(s)
    scale = 1.0
    if sn is not None and sn.op in ("mul", "real_div"):
        c = _scalar_of(prod, sn.inputs[1])
        if c is None and sn.op == "mul":
            c, s_in = _scalar_of(prod, sn.inputs[0]), sn.inputs[1]
        else:
            s_in = sn.inputs[0]
        if c is None or c == 0:
            return None
        scale = c if sn.op == "mul" else 1.0 / c
        s = s_in
        sn = prod.get(s)
    if sn is None or sn.op != "matmul" or sn.attrs.get("transpose_x"):
        return None
    q, kt = sn.inputs
    if sn.attrs.get("transpose_y"):
        k = kt
    else:
        tn = prod.get(kt)
        r = kt.type.rank
        if tn is None or tn.op != "transpose" or tuple(tn.attrs["perm"]) != tuple(range(r - 2)) + (r - 1, r - 2):
            return None
        k = tn.inputs[0]
    if q.type.rank < 3 or k.type.shape[-1] != q.type.shape[-1]:
        return None
    return q, k, v, mask, scale


@register_pass("fuse::norm_attention")
def fuse_norm_attention(g: Graph) -> Graph:
    """Recognize a decomposed layer_norm (mean / subtract / square / mean / add eps / sqrt or
    rsqrt / divide or multiply over the last axes), a decomposed RMS norm (the same without the
    centring, as torch.export writes ``torch.nn.RMSNorm``, ``F.rms_norm`` and transformers'
    ``LlamaRMSNorm``; a following multiply by a constant weight becomes its gamma) and decomposed
    attention (matmul(q, k^T) * scale [+ mask] -> softmax over the last axis -> matmul(v)).

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
    prod, uses, outs = g.producers(), g.use_counts(), set(g.outputs)

    def norm(m: Match):
        parts = _norm_parts(prod, m.root)
        if parts is None or not _private(prod, uses, outs, m.root, {parts[1]}):
            return None
        op, x, axes, eps = parts
        return m.add(op, [x], {"axes": axes, "epsilon": float(eps)}, name=m.root.name)

    def attn(m: Match):
        parts = _attention_parts(prod, m.root)
        if parts is None:
            return None
        q, k, v, mask, scale = parts
        stop = {q, k, v} | ({mask} if mask is not None else set())
        if not _private(prod, uses, outs, m.root, stop):
            return None
        ins = [q, k, v] + ([mask] if mask is not None else [])
        return m.add("scaled_dot_product_attention", ins, {"scale": float(scale)}, name=m.root.name)

    rn = Pat("rms_norm", name="rn")
    return rewrite(g, [(Pat("mul", (rn, const("g"))), _rms_gamma), (Pat("mul", (const("g"), rn)), _rms_gamma),
                       (Pat(("real_div", "mul")), norm), (Pat("matmul"), attn)])
