"""``precision::rescale``: keep overflowing (or underflowing) regions in fp16 by moving an exact
power-of-two scale into the constants that feed them, and undoing it where that is exact.

Many ops are *positively homogeneous*: relu(s x) = s relu(x) for s > 0, and so are pooling,
concat, add, reshape, gather of a table, ...; a weighted op (conv, linear, matmul, mul by a
constant) gives s t y when its input is scaled by s and its weight by t; a normalization (layer,
group, RMS norm) gives the same output for s x when its epsilon is scaled by s**2. Each op row
states which of these it is (``scale``, :class:`tlc.ops.PositiveScale`). So a value v can be held
as v 2^-e: **regions** are the sets of values tied together by ``commutes`` ops (they must share
one exponent e), and they are separated by ``product`` ops with a constant operand (whose constant
absorbs any change of e) and ``invariant`` ops (which drop the input's e and give their output the
exponent of their gamma/beta). Powers of two are exact in fp16 and fp32 (outside subnormals), so
the fp32 graph computes the same numbers, scaled.

A region is **rescaled** when its largest magnitude on the calibration inputs (range analysis,
:func:`tlc.passes.precision.analyze`) lies outside what fp16 holds safely: above
:data:`SAFE_MAX` (it would overflow, or nearly) or, with a non-zero max, below fp16's smallest
normal 2^-14 (it would lose precision or vanish). Its exponent brings the max to at most
:data:`HIGH_TARGET` (8x headroom under SAFE_MAX) or to at least :data:`LOW_TARGET`; it must keep
every value of the region that fp16 held normally above 2^-14, and below SAFE_MAX.

A region keeps e = 0 (it **cannot** be rescaled) when it touches an op without a ``scale`` row
fact (softmax, exp, sigmoid, a clip, a product of two activations such as attention scores: those
need the true values), a graph input, a graph output of an fp16-I/O program, an op that only the
fallback runtime runs, or when a constant that would absorb the scale cannot hold it in fp16 (its
fp16 rounding error would more than double, or it would overflow): then the weighted op's input
and output regions are tied instead, and the assignment is recomputed (bounded by the number of
constant uses). A region that reaches a graph output (fp32 I/O) is undone there by one multiply
``mul(y, 2^e)``, named ``<output>_unscale``; its result is outside fp16's range by construction,
so ``precision::mixed`` keeps that one elementwise op in fp32.

Given:  %c1 = conv(%x, W1, b1); %r = relu(%c1); %p = max_pool(%r); %c2 = conv(%p, W2, b2);
        %n = layer_norm(%c2, g, b, eps)            with |%c1| .. |%c2| reaching 1e7
Result: %c1 = conv(%x, W1 * 2^-12, b1 * 2^-12); %r = relu(%c1); %p = max_pool(%r);
        %c2 = conv(%p, W2, b2 * 2^-12); %n = layer_norm(%c2, g, b, eps * 2^-24)
Leaves the graph as it is when no region is out of range or none can be rescaled.
``meta["tlc.rescaled"]`` lists each rescaled region (exponent, max |x|, the ops whose results it
holds, where the scale enters and where it is undone) and each out-of-range region that could not
be, with the reason.
"""
from __future__ import annotations

import math

import numpy as np

from tlc.ir import DTYPES, Graph, GraphBuilder, Node, Value, replace
from tlc.ops import get_op, round_fp16

from .fp16_program import FLOAT, fallback_only
from .registry import register_pass

#: Above this a value may overflow fp16 (half of 65504: one more doubling); tlc.passes.precision's rule too.
SAFE_MAX = 32768.0
#: fp16's smallest normal number: below it values lose precision (subnormals) and vanish below 2^-24.
FP16_NORMAL_MIN = 2.0 ** -14
#: An overflowing region's max |x| is brought to at most 2^12: 8x headroom under SAFE_MAX for inputs
#: larger than the calibration samples, and 26 octaves of normal range below it.
HIGH_TARGET = 2.0 ** 12
#: An underflowing region's max |x| is brought to at least 2^-6: 8 octaves above fp16's smallest
#: normal, so values 256x below the max are still normal.
LOW_TARGET = 2.0 ** -6
#: Shared constants above this many bytes are never copied to hold a second scale (a tied embedding
#: would be stored twice); smaller ones are.
COPY_LIMIT = 1 << 16


class _Regions:
    """Union-find over float values, with a fixed flag (and its reason) per root."""

    def __init__(self):
        self.parent: dict[Value, Value] = {}
        self.fixed: dict[Value, str] = {}
        self.ties: dict[Value, list[str]] = {}  # why weighted ops were tied into the region

    def find(self, v: Value) -> Value:
        self.parent.setdefault(v, v)
        root = v
        while self.parent[root] is not root:
            root = self.parent[root]
        while self.parent[v] is not root:
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: Value, b: Value) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra
            if rb in self.fixed:
                self.fixed.setdefault(ra, self.fixed.pop(rb))
            if rb in self.ties:
                self.ties.setdefault(ra, []).extend(self.ties.pop(rb))

    def tie(self, a: Value, b: Value, why: str) -> None:
        self.union(a, b)
        self.ties.setdefault(self.find(a), []).append(why)

    def fix(self, v: Value, why: str) -> None:
        self.fixed.setdefault(self.find(v), why)


def _fp16_error(c: np.ndarray) -> float:
    """Relative RMS error of holding ``c`` in fp16 (inf when a finite value overflows)."""
    c = np.asarray(c, np.float32)
    r = round_fp16(c)
    if not np.isfinite(r[np.isfinite(c)]).all() or (np.abs(r) > SAFE_MAX).any():
        return float("inf")
    ref = float(np.sqrt(np.mean(np.square(c, dtype=np.float64)))) if c.size else 0.0
    return float(np.sqrt(np.mean(np.square(r - c, dtype=np.float64)))) / ref if ref > 0 else 0.0


def _holds(c: np.ndarray, k: int, additive: bool = False) -> bool:
    """Whether constant ``c`` scaled by 2^k keeps its fp16 quality: no overflow, and for a
    multiplying constant (a weight, a gamma) a rounding error at most twice that of ``c`` itself or
    fp16's unit roundoff 2^-11 (values pushed into subnormals are what makes it grow). An
    ``additive`` constant (a bias, a beta, a value added into the region) is only checked for
    overflow: what it loses to subnormals is below 2^-24 in a region whose values reach 2^12 or
    more after the scale, far below their own rounding."""
    if k == 0 or c.dtype.kind != "f":
        return True
    with np.errstate(over="ignore"):
        scaled = np.asarray(c, np.float32) * np.float32(2.0 ** k)
    if additive:
        return bool(np.isfinite(scaled[np.isfinite(c)]).all()) and float(np.abs(scaled).max(initial=0.0)) <= SAFE_MAX
    return _fp16_error(scaled) <= max(2.0 * _fp16_error(c), 2.0 ** -11)


def _uses(g: Graph, regions: _Regions, const_of: dict[Value, Node], io_dtype: str):
    """Build the regions of ``g`` (union of values tied by ``commutes`` ops, fixed by barriers) and
    return the constant uses: ``(node, input position, kind, in-region value or None)`` where kind
    is ``"same"`` (scaled by the region of the op's output), ``"weight"`` (by the output's
    exponent minus the in-region's) or ``"affine"`` (by the output's)."""
    uses = []

    def barrier(n: Node, why: str):
        for v in list(n.inputs) + list(n.outputs):
            if v.type.dtype in FLOAT and v not in const_of:
                regions.fix(v, why)

    for v in g.inputs:
        regions.fix(v, f"graph input {v.name}")
    for n in g.nodes:
        if n.op == "const":
            continue
        rule = get_op(n.op).scale
        floats = [k for k, v in enumerate(n.inputs) if v.type.dtype in FLOAT]
        outs_float = all(o.type.dtype in FLOAT for o in n.outputs)
        if rule is None or fallback_only(n) or not outs_float:
            barrier(n, f"{n.name} ({n.op}) does not commute with a scale")
            continue
        if rule.kind == "commutes":
            acts = [n.inputs[k] for k in floats if n.inputs[k] not in const_of]
            for v in acts + list(n.outputs):
                regions.union(n.outputs[0], v)
            uses += [(n, k, "same", None) for k in floats if n.inputs[k] in const_of]
        elif rule.kind == "product":
            ops = [k for k in rule.operands if k < len(n.inputs)]
            consts = [k for k in ops if n.inputs[k] in const_of]
            extra = [k for k in floats if k not in rule.operands and k != rule.bias]
            bias_ok = rule.bias is None or rule.bias >= len(n.inputs) or n.inputs[rule.bias] in const_of
            if len(ops) != 2 or len(consts) != 1 or extra or not bias_ok:
                barrier(n, f"{n.name} ({n.op}) multiplies two activations" if len(consts) == 0
                        else f"{n.name} ({n.op}) has no constant to absorb a scale")
                continue
            x = n.inputs[ops[0] if consts[0] == ops[1] else ops[1]]
            uses.append((n, consts[0], "weight", x))
            if rule.bias is not None and rule.bias < len(n.inputs):
                uses.append((n, rule.bias, "affine", None))
        else:  # invariant
            aff = [k for k in rule.affine if k < len(n.inputs)]
            if any(k not in (0, *aff) for k in floats) or n.inputs[0] in const_of:
                barrier(n, f"{n.name} ({n.op}) has inputs the scale rule does not cover")
                continue
            if not aff or any(n.inputs[k] not in const_of for k in aff):
                regions.fix(n.outputs[0], f"{n.name} ({n.op}) has no constant gamma to carry a scale")
            uses += [(n, k, "affine", None) for k in aff if n.inputs[k] in const_of]
    if io_dtype != "fp32":
        for v in g.outputs:
            if v.type.dtype in FLOAT:
                regions.fix(v, f"graph output {v.name} is fp16 (io_dtype)")
    return uses


def _exponent(vals: list[Value], maxabs: dict) -> tuple[int, float, str]:
    """``(e, max |x|, why)`` for a free region holding ``vals``: 0 when its values lie in fp16's
    safe range; else the exponent that brings them inside (:data:`HIGH_TARGET` /
    :data:`LOW_TARGET`) without pushing a normal value out of the normal range (``why`` says so
    when no such exponent exists; then 0)."""
    ms = [maxabs.get(v, 0.0) for v in vals]
    top = max(ms, default=0.0)
    if not math.isfinite(top) or top <= 0.0 or FP16_NORMAL_MIN <= top <= SAFE_MAX:
        return 0, top, ""
    lo = max((math.ceil(math.log2(m / SAFE_MAX)) for m in ms if m > 0), default=-10 ** 9)
    hi = min((math.floor(math.log2(m / FP16_NORMAL_MIN)) for m in ms if m >= FP16_NORMAL_MIN), default=10 ** 9)
    want = math.ceil(math.log2(top / HIGH_TARGET)) if top > SAFE_MAX else math.floor(math.log2(top / LOW_TARGET))
    e = min(max(want, lo), hi)
    if lo > hi or e == 0:
        small = min(m for m in ms if m > 0)
        return 0, top, (f"its values span {small:.3g} .. {top:.3g}, more than fp16's normal range holds "
                        f"under one scale")
    return e, top, ""


def plan_rescale(g: Graph, maxabs: dict, io_dtype: str = "fp32"):
    """``(exponent per region root, regions, constant uses with their factors, epsilon exponent per
    invariant (normalization) op name, records)`` for
    ``g`` with ``maxabs`` (max |x| per :class:`Value`, :func:`tlc.passes.precision.analyze`).
    ``records`` describe every out-of-range region (``meta["tlc.rescaled"]``). Bounded: each
    round ties or fixes at least one region, and there are finitely many constant uses."""
    const_of = {n.out: n for n in g.nodes if n.op == "const"}
    regions = _Regions()
    uses = _uses(g, regions, const_of, io_dtype)
    members: dict[Value, list[Value]] = {}
    memo: dict = {}
    reads: dict[Value, int] = {}
    for n in g.nodes:
        for v in n.inputs:
            if v in const_of:
                reads[v] = reads.get(v, 0) + 1
    for _ in range(len(uses) + 2):
        members = {}
        for n in g.nodes:
            for v in n.outputs:
                if n.op != "const" and v.type.dtype in FLOAT:
                    members.setdefault(regions.find(v), []).append(v)
        exps, notes = {}, {}
        for root, vals in members.items():
            e, top, why = _exponent(vals, maxabs)
            if e and root in regions.fixed:
                e, why = 0, regions.fixed[root]
            if why and regions.ties.get(root):
                why += " (tied: " + "; ".join(regions.ties[root][:3]) + ")"
            exps[root], notes[root] = e, (top, why)
        ex = lambda v: exps.get(regions.find(v), 0)  # noqa: E731
        factors = []  # (node, position, k): the constant at that input is multiplied by 2^k
        for n, k, kind, x in uses:
            if kind == "weight":
                factors.append((n, k, ex(x) - ex(n.outputs[0]), x))
            else:
                factors.append((n, k, -ex(n.outputs[0]), None))
        bad = _failing(factors, const_of, memo, reads)
        if not bad:
            break
        for n, k, s, x in bad:
            why = f"constant {n.inputs[k].name} of {n.name} cannot hold 2^{s} in fp16"
            if x is not None and regions.find(x) is not regions.find(n.outputs[0]):
                regions.tie(x, n.outputs[0], why)
            else:
                regions.fix(n.outputs[0], why)
    eps = {}
    for n in g.nodes:
        rule = get_op(n.op).scale if n.op != "const" else None
        if rule is not None and rule.kind == "invariant" and ex(n.inputs[0]):
            eps[n.name] = -2 * ex(n.inputs[0])
    records = _records(g, members, exps, notes, regions, factors, eps)
    return exps, regions, [f for f in factors if f[2]], eps, records


def _failing(factors, const_of, memo: dict, reads: dict) -> list:
    """The constant uses whose scale the constant cannot hold in fp16 (:func:`_holds`), and uses
    of one large shared constant that would need two scales (it is not copied; a reader the
    uses do not cover, ``reads`` counting every reading position, keeps scale 0)."""
    by_const: dict[Value, set[int]] = {}
    covered: dict[Value, int] = {}
    for n, k, s, _ in factors:
        by_const.setdefault(n.inputs[k], set()).add(s)
        covered[n.inputs[k]] = covered.get(n.inputs[k], 0) + 1
    for c, m in covered.items():
        if reads.get(c, 0) > m:
            by_const[c].add(0)
    bad = []
    for f in factors:
        n, k, s, x = f
        c = n.inputs[k]
        arr = np.asarray(const_of[c].attrs["val"])
        additive = x is None and not (n.op != "const" and get_op(n.op).scale.kind == "invariant"
                                      and k == get_op(n.op).scale.affine[0])
        if s and (c, s, additive) not in memo:
            memo[(c, s, additive)] = _holds(arr, s, additive)
        if s and (not memo[(c, s, additive)] or (len(by_const[c]) > 1 and arr.nbytes > COPY_LIMIT)):
            bad.append(f)
    return bad


def _records(g, members, exps, notes, regions, factors, eps) -> list[dict]:
    prod = g.producers()
    out = []
    for root, vals in members.items():
        top, why = notes[root]
        e = exps[root]
        if not e and not why:
            continue
        ops = sorted({prod[v].name for v in vals if v in prod})
        rec = {"exponent": int(e), "max_abs": float(top), "ops": ops}
        if e:
            in_region = set(vals)
            rec["scaled_at"] = sorted({n.name for n, k, s, x in factors
                                       if s and (n.outputs[0] in in_region or (x is not None and x in in_region))})
            rec["undone_at"] = sorted({n.name for n in g.nodes if n.name in eps and n.inputs[0] in in_region}
                                      | {f"{v.name}_unscale" for v in g.outputs if v in in_region})
            rec["why"] = (f"max |x| = {top:.3g} on the calibration inputs is "
                          + ("above 32768 (fp16 overflows at 65504)" if top > SAFE_MAX else
                             "below fp16's smallest normal 6.1e-05") + f": held as x * 2^{-e}")
        else:
            rec["why_not"] = why
        out.append(rec)
    return sorted(out, key=lambda r: (-abs(r["exponent"]), -r["max_abs"]))


def rescale(g: Graph, maxabs: dict, io_dtype: str = "fp32") -> Graph:
    """``g`` with its out-of-range regions rescaled (module docstring); ``maxabs``: max |x| per
    float :class:`Value` on the calibration inputs. Returns ``g`` itself (``meta`` untouched) when
    nothing is rescaled, except that regions that could not be are recorded when there are any."""
    exps, regions, factors, eps, records = plan_rescale(g, maxabs, io_dtype)
    if not any(exps.values()):
        return g if not records else _with_meta(g, records)
    scale_of = {(n.name, k): s for n, k, s, _ in factors}
    b = GraphBuilder(dict(g.meta))
    env: dict[Value, Value] = {}
    copies: dict[tuple[Value, int], Value] = {}
    const_of = {n.out: n for n in g.nodes if n.op == "const"}
    for v in g.inputs:
        env[v] = b.add_input(v.name, v.type)

    def scaled(c: Value, s: int) -> Value:
        if (c, s) not in copies:
            node = const_of[c]
            val = np.asarray(node.attrs["val"])
            new = (val * np.asarray(2.0 ** s, val.dtype)).astype(val.dtype)
            copies[(c, s)] = b.add("const", [], {"val": new}, name=f"{node.name}_x2e{s}".replace("-", "m"),
                                   loc=node.loc).outputs[0]
        return copies[(c, s)]

    for n in g.nodes:
        if n.op == "const":
            env[n.out] = b.add("const", [], n.attrs, name=n.name, loc=n.loc).outputs[0]
            continue
        ins = [scaled(v, scale_of[(n.name, k)]) if (n.name, k) in scale_of else env[v] for k, v in enumerate(n.inputs)]
        attrs = dict(n.attrs)
        if n.name in eps:
            attrs["epsilon"] = float(attrs.get("epsilon", 1e-5)) * 2.0 ** eps[n.name]
        rule = get_op(n.op).scale
        e = exps.get(regions.find(n.outputs[0]), 0) if n.outputs[0].type.dtype in FLOAT else 0
        if rule is not None and rule.kind == "commutes" and e:
            for a in rule.attrs:
                if isinstance(attrs.get(a), (int, float)) and attrs[a]:
                    attrs[a] = float(attrs[a]) * 2.0 ** -e
        new = b.add(n.op, ins, attrs, name=n.name, loc=n.loc)
        env.update(zip(n.outputs, new.outputs))
    outs = []
    for v in g.outputs:
        e = exps.get(regions.find(v), 0) if v.type.dtype in FLOAT and v in regions.parent else 0
        if e:
            k = b.add("const", [], {"val": np.asarray(2.0 ** e, DTYPES[v.type.dtype])}, name=f"{v.name}_unscale_k")
            outs.append(b.add("mul", [env[v], k.outputs[0]], name=f"{v.name}_unscale").outputs[0])
        else:
            outs.append(env[v])
    return _with_meta(b.build(outs, g.output_names), records)


def _with_meta(g: Graph, records: list[dict]) -> Graph:
    return replace(g, meta={**dict(g.meta), "tlc.rescaled": records})


@register_pass("precision::rescale")
def rescale_pass(g: Graph, *, calibration: list, io_dtype: str = "fp32") -> Graph:
    """Rescale the regions whose values on the ``calibration`` feeds (a list of ``{input name:
    array}``) lie outside fp16's safe range (module docstring); ``precision::mixed`` in
    ``tlc.build`` runs the same step on its own range analysis, before choosing fp32 islands.

    Given:  %c = conv(%x, W, b); %r = relu(%c); %y = layer_norm(%r, g, b2, 1e-5)   |%c| up to 1e7
    Result: %c = conv(%x, W * 2^-12, b * 2^-12); %r = relu(%c); %y = layer_norm(%r, g, b2, 1e-5 * 2^-24)
    """
    from tlc.runtime import run_graph

    maxabs: dict[Value, float] = {}

    def see(n, outs):
        for v, a in zip(n.outputs, outs):
            if v.type.dtype in FLOAT and np.size(a):
                m = float(np.nanmax(np.abs(a)))
                maxabs[v] = max(maxabs.get(v, 0.0), m if math.isfinite(m) else float("inf"))

    for feeds in calibration:
        run_graph(g, feeds, observer=see)
    return rescale(g, maxabs, io_dtype)


__all__ = ["SAFE_MAX", "FP16_NORMAL_MIN", "HIGH_TARGET", "LOW_TARGET", "plan_rescale", "rescale", "rescale_pass"]
