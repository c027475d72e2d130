"""The fp16 program the precision passes (:mod:`tlc.passes.precision`) build: :func:`to_half`
rewrites a graph's float values to fp16 outside the fp32 islands, with casts where the two meet,
and :func:`plan_fp16_constants` judges the attributes and constants that program holds.

**The program that ships.** An fp16 op holds its float attributes in fp16 (MIL's iOS15/16
``layer_norm``/``batch_norm`` take ``epsilon`` in the input's dtype; ../shared/ane-rules.md), and
its constants are converted to fp16. :func:`plan_fp16_constants` judges those values:
an epsilon that is 0 in fp16 (a 1e-12 ``layer_norm_eps``; a zero-variance row then divides by
zero) is raised to 2^-24, fp16's smallest positive value (:func:`fp16_attr_fix`, error bound
there), a clamp bound beyond 65504 saturates to 65504, and any other attribute or constant
that over- or underflows keeps its op in fp32. Each change is listed in
``meta["tlc.fp16_constants"]`` (``{node name: note}``).
"""
from __future__ import annotations

import numpy as np

from tlc.errors import IRError
from tlc.ir import DTYPES, Graph, GraphBuilder, Node, TensorType, Value, dtype_of
from tlc.ops import get_op, to_float16

FLOAT = ("fp32", "fp16")
FP16_MAX = 65504.0
#: fp16's smallest positive (subnormal) number, 2^-24 = 5.96e-8: what an epsilon that is 0 in fp16
#: is raised to. Subnormal epsilons are what fp16 Core ML models ship with anyway: PyTorch's
#: default 1e-5 and the common 1e-6 are subnormal in fp16 (below 2^-14 = 6.1e-5), and fp16
#: layer norms with them run correctly on device (every coremltools fp16 conversion of a
#: transformer holds one); 0 is what breaks. The smallest normal 2^-14 was measured first: it
#: changes the DeiT class-token rows after attention (variance ~1e-4) by 0.83 absolute, rel-L2
#: 0.11 of the output, where 2^-24 gives 6.7e-4 (tests/test_precision_loop.py).
FP16_TINY = 2.0 ** -24


def fallback_only(n: Node) -> bool:
    """Ops MIL cannot express (``emit_mil is None``: FFT, complex, data-dependent shapes, custom
    ops; tlc.ops.fallback) run in a fallback runtime in the precision the model wrote: they are
    never cast to fp16 nor analyzed (an fp16-rounded input may even change their output shape)."""
    return get_op(n.op).emit_mil is None


def to_half(g: Graph, keep_fp32: set[str], io_dtype: str = "fp32", half_consts: dict | None = None,
            attr_fixes: dict[str, dict] | None = None) -> Graph:
    """Rewrite float values to fp16 except in nodes named in ``keep_fp32``; casts are inserted
    where the two meet, constants are converted (one copy per dtype, made where first read;
    ``half_consts`` maps const values to fp16 arrays already made, see
    :func:`tlc.passes.precision.analyze`).
    ``attr_fixes``: ``{node name: attrs}`` replacing the attributes of fp16 nodes
    (:func:`plan_fp16_constants`).

    ``io_dtype`` (``"fp32"`` or ``"fp16"``) is the dtype of the float graph inputs and outputs
    (the package's I/O, coremltools' ``ct.TensorType(dtype=np.float16)`` semantics): with
    ``"fp16"`` an fp16 first/last op needs no cast at the boundary. Raises :class:`IRError` for
    another ``io_dtype``."""
    if io_dtype not in FLOAT:
        raise IRError(f"io_dtype must be 'fp32' or 'fp16', got {io_dtype!r}")
    b = GraphBuilder(dict(g.meta))
    env: dict[Value, Value] = {}
    versions: dict[tuple[Value, str], Value] = {}
    consts: dict[Value, Node] = {}
    halves = half_consts or {}
    for v in g.inputs:
        b.add_input(v.name, TensorType(io_dtype, v.type.shape) if v.type.dtype in FLOAT else v.type)
        env[v] = b.inputs[-1]

    def get(v: Value, want: str | None) -> Value:
        if v in consts:
            c = consts[v]
            arr = c.attrs["val"]
            own = dtype_of(arr)
            dt = want if (want and own in FLOAT) else own
            if (v, dt) not in versions:
                name = c.name if dt == own else f"{c.name}_{dt}"
                with np.errstate(over="ignore"):
                    conv = (halves[v] if v in halves else to_float16(arr)) if dt == "fp16" else arr.astype(DTYPES[dt], copy=False)
                versions[(v, dt)] = b.add("const", [], {"val": conv}, name=name, loc=c.loc).outputs[0]
            return versions[(v, dt)]
        nv = env[v]
        if not want or nv.type.dtype not in FLOAT or nv.type.dtype == want:
            return nv
        if (v, want) not in versions:
            versions[(v, want)] = b.add("cast", [nv], {"dtype": want}, name=f"{v.name}_to_{want}").outputs[0]
        return versions[(v, want)]

    for n in g.nodes:
        if n.op == "const":
            consts[n.out] = n
            continue
        floats = any(v.type.dtype in FLOAT for v in list(n.inputs) + list(n.outputs))
        cd = ("fp32" if n.name in keep_fp32 else "fp16") if floats else None
        attrs = dict((attr_fixes or {}).get(n.name, n.attrs) if cd == "fp16" else n.attrs)
        if n.op == "cast" and attrs["dtype"] in FLOAT and cd:
            attrs["dtype"] = cd
        if fallback_only(n):  # its inputs keep the dtypes the front-end gave them
            ins = [get(v, v.type.dtype if v.type.dtype in FLOAT else None) for v in n.inputs]
        else:
            ins = [get(v, cd) for v in n.inputs]
        new = b.add(n.op, ins, attrs, name=n.name, loc=n.loc)
        for old, nv in zip(n.outputs, new.outputs):
            env[old] = nv
    outs = [get(v, io_dtype if v.type.dtype in FLOAT else None) for v in g.outputs]
    return b.build(outs, g.output_names)


def fp16_attr_fix(n: Node) -> tuple[dict | None, str | None, str | None]:
    """Judge ``n``'s float scalar attributes as an fp16 program holds them (rounded to fp16).
    Returns ``(new attrs or None, note or None, blocker or None)``:

    * an ``"epsilon"`` attribute (the row's ``half_attrs``) that is 0 in fp16 (0 < eps < 2^-25,
      e.g. HF's ``layer_norm_eps=1e-12``) becomes :data:`FP16_TINY` = 2^-24, the smallest value
      that keeps ``rsqrt(var + eps)`` finite (rsqrt(2^-24) = 4096; rsqrt(0) is inf). Error bound:
      for a row of variance v, ``rsqrt(v + eps)`` changes by the factor
      sqrt((v + eps) / (v + 2^-24)), a relative change <= 2^-25 / (v + eps): below fp16's unit
      roundoff 2^-11 whenever v >= 2^-14, and a zero-variance row (x - mean = 0) gives the same
      output either way.
    * a ``"bound"`` attribute (a clamp limit) beyond +/-65504 saturates to +/-65504: every finite
      fp16 value lies inside it, so the clamp is unchanged.
    * any other float attribute that overflows (finite -> inf) or underflows (non-zero -> 0) in
      fp16 is a *blocker*: the op must stay fp32 (its reason).
    """
    kinds = get_op(n.op).half_attrs
    new, notes, blockers = {}, [], []
    for k, v in n.attrs.items():
        if isinstance(v, (bool, int, np.integer)) or not isinstance(v, (float, np.floating, np.ndarray)):
            continue
        if isinstance(v, np.ndarray) and (v.ndim != 0 or v.dtype.kind != "f"):
            continue
        x = float(v)
        with np.errstate(over="ignore"):
            h = float(np.float16(x))
        kind = kinds.get(k)
        if kind == "epsilon" and x > 0 and h == 0:
            new[k] = FP16_TINY
            notes.append(f"{k} {x:.3g} -> {FP16_TINY:.3g} ({x:.3g} is 0 in fp16 and rsqrt(var + 0) is inf on a "
                         f"zero-variance row; 2^-24 is fp16's smallest positive value)")
        elif kind == "bound" and np.isfinite(x) and abs(x) > FP16_MAX:
            new[k] = float(np.sign(x)) * FP16_MAX
            notes.append(f"{k} {x:.3g} -> {new[k]:.6g} (fp16's largest finite value: the clamp is unchanged)")
        elif np.isfinite(x) and not np.isfinite(h):
            blockers.append(f"attribute {k} = {x:.3g} overflows fp16 (max 65504)")
        elif x != 0 and h == 0:
            blockers.append(f"attribute {k} = {x:.3g} is 0 in fp16")
    attrs = {**dict(n.attrs), **new} if new else None
    return attrs, ("; ".join(notes) or None), ("; ".join(blockers) or None)


def plan_fp16_constants(g: Graph, keep_fp32: set[str]) -> tuple[dict[str, dict], dict[str, str], dict[str, str]]:
    """What the fp16 program would hold for every op not in ``keep_fp32``: ``(attr fixes
    {node: attrs}, notes {node: what changed}, blockers {node: why it must stay fp32})``.
    Attributes are judged by :func:`fp16_attr_fix`; a float constant read by an fp16 op is a
    blocker when it overflows fp16 (finite -> inf). A constant that underflows is judged by its
    effect instead: range analysis re-runs the op on the fp16-rounded constant, and the closed
    loop runs the program (a MobileNetV2 conv whose folded weights are all below 3e-8 is 0 in
    fp16 and harmless next to the residual it feeds; a rule on the constant alone moved it to
    fp32)."""
    producer = g.producers()
    fixes, notes, blockers = {}, {}, {}
    for n in g.nodes:
        if n.op == "const" or n.name in keep_fp32 or fallback_only(n):
            continue
        if not any(v.type.dtype in FLOAT for v in list(n.inputs) + list(n.outputs)):
            continue
        attrs, note, block = fp16_attr_fix(n)
        why = [block] if block else []
        for v in n.inputs:
            p = producer.get(v)
            if p is None or p.op != "const" or v.type.dtype not in FLOAT:
                continue
            c = np.asarray(p.attrs["val"])
            if not c.size:
                continue
            if c.dtype.kind != "f" or c.dtype == np.float16:  # an fp16 constant cannot overflow fp16
                continue
            hi, lo = float(c.max()), float(c.min())  # a finite value from 65520 up rounds to inf in fp16
            over = hi >= 65520 or lo <= -65520
            if over and not (np.isfinite(hi) and np.isfinite(lo)):  # inf/NaN there already: only finite ones count
                fin = c[np.isfinite(c)]
                over = bool(fin.size) and float(np.abs(fin).max()) >= 65520
            if over:
                why.append(f"constant {p.name} (max |c| = {np.abs(c).max():.3g}) overflows fp16 (max 65504)")
        if why:
            blockers[n.name] = "; ".join(why)
        elif attrs is not None:
            fixes[n.name] = attrs
            notes[n.name] = note
    return fixes, notes, blockers
