"""Comparing what a build made with a reference: output metrics (:func:`rel_l2`, :func:`psnr`), one
record per output (:class:`OutputCheck`, made by :func:`compare`, used by ``tlc verify``, the
closed loop of ``precision="mixed"`` and the compression report), and per-op divergence between an
artifact and tlc's reference executor (:func:`node_errors`, :func:`first_divergence`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlc.ir import Graph, Node
from tlc.runtime import BundleModel, load, run_graph

#: Default tolerances on relative L2 error, by the precision a program computes in: ``tlc verify``'s
#: defaults, and the closed loop's (``fp16``) for ``precision="mixed"``.
DEFAULT_TOL = {"fp32": 1e-5, "fp16": 1e-2}


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref|| / ||ref|| in float64 (complex values as their real/imaginary pairs); inf if
    ``got`` has NaN/inf where ``ref`` is finite."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.dtype.kind == "c" or ref.dtype.kind == "c":
        got, ref = (np.stack([a.real, a.imag], -1) if a.dtype.kind == "c" else np.stack([a, np.zeros_like(a)], -1)
                    for a in (got, ref))
    g = np.asarray(got, np.float64)
    r = np.asarray(ref, np.float64)
    if g.shape != r.shape:
        return float("inf")
    bad = ~np.isfinite(g) & np.isfinite(r)
    if bad.any():
        return float("inf")
    denom = np.linalg.norm(r)
    d = np.linalg.norm(np.nan_to_num(g - r))
    return float(d / denom) if denom > 0 else float(d)


def psnr(got: np.ndarray, ref: np.ndarray) -> float:
    """Peak signal-to-noise ratio of ``got`` against ``ref`` in dB, as coremltools computes it
    (``coremltools.converters.mil.testing_utils.compute_snr_and_psnr``, the figure Apple's
    compression docs report): 10 log10((max ref^2 + 1e-5) / (mean (got - ref)^2 + 1e-10)), in
    float64; -inf if ``got`` has NaN/inf where ``ref`` is finite or the shapes differ."""
    g, r = np.asarray(got, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    if g.shape != r.shape or (~np.isfinite(g) & np.isfinite(r)).any():
        return float("-inf")
    noise = float(np.mean((g - r) ** 2)) if r.size else 0.0
    return float(10 * np.log10((float(np.max(r ** 2, initial=0.0)) + 1e-5) / (noise + 1e-10)))


@dataclass
class OutputCheck:
    """One output of an artifact against its reference (torch eager, or tlc's fp32 reference
    executor): ``shape`` (of the artifact's value), the worst ``max_abs`` and ``rel_l2`` (over the
    samples it summarizes: :func:`worst`), ``cosine`` similarity, ``nonfinite`` (NaN/inf values where
    the reference is finite) and the ``tol`` on ``rel_l2`` it passes or fails."""

    name: str
    shape: tuple
    max_abs: float
    rel_l2: float
    cosine: float
    nonfinite: int
    tol: float

    @property
    def passed(self) -> bool:
        return self.nonfinite == 0 and self.rel_l2 <= self.tol


def compare(name: str, got: np.ndarray, ref: np.ndarray, tol: float) -> OutputCheck:
    """Metrics of ``got`` against ``ref`` in float64. A 0-d reference and a ``[1]`` value (a package
    holds 0-d outputs as ``[1]``) are compared as equal shapes; integer and bool outputs must be
    equal (``rel_l2`` and ``max_abs`` 0 or inf); a shape mismatch is inf."""
    g, r = np.asarray(got), np.asarray(ref)
    if g.shape != r.shape and g.size == r.size == 1:
        g = g.reshape(r.shape)
    if g.shape != r.shape:
        return OutputCheck(name, g.shape, float("inf"), float("inf"), float("nan"), 0, tol)
    if g.dtype.kind not in "fc" or r.dtype.kind not in "fc":
        same = np.array_equal(g, r.astype(g.dtype, copy=False))
        err = 0.0 if same else float("inf")
        return OutputCheck(name, g.shape, err, err, 1.0 if same else float("nan"), 0, tol)
    if g.dtype.kind == "c" or r.dtype.kind == "c":
        g, r = (np.stack([a.real, a.imag], -1) for a in (g.astype(np.complex128), r.astype(np.complex128)))
    g64, r64 = g.astype(np.float64), r.astype(np.float64)
    nonfinite = int((~np.isfinite(g64) & np.isfinite(r64)).sum())
    with np.errstate(invalid="ignore"):
        d = np.abs(np.nan_to_num(g64 - r64, nan=np.inf, posinf=np.inf, neginf=np.inf))
    gn, rn = np.linalg.norm(np.nan_to_num(g64)), np.linalg.norm(np.nan_to_num(r64))
    cos = float(np.nan_to_num(g64).ravel() @ np.nan_to_num(r64).ravel() / (gn * rn)) if gn > 0 and rn > 0 \
        else float(gn == rn)
    return OutputCheck(name, g.shape, float(d.max()) if d.size else 0.0, rel_l2(g64, r64), cos, nonfinite, tol)


def worst(a: OutputCheck | None, b: OutputCheck) -> OutputCheck:
    """The worse of two checks of one output (different samples): the larger errors, the smaller
    cosine, the NaN/inf counts added."""
    if a is None:
        return b
    return OutputCheck(a.name, a.shape, max(a.max_abs, b.max_abs), max(a.rel_l2, b.rel_l2), min(a.cosine, b.cosine),
                       a.nonfinite + b.nonfinite, a.tol)


@dataclass
class Divergence:
    """The first IR node whose value in the package departs from tlc's reference runtime."""

    node: Node
    rel_l2: float
    mil_op: str
    ref_max_abs: float = float("nan")

    def hint(self) -> str:
        """fp16 range diagnosis: values above 65504 overflow, below 2**-14 lose precision."""
        if self.ref_max_abs > 65504:
            return f"the reference reaches |x| = {self.ref_max_abs:.3g} > 65504: fp16 overflow"
        if self.ref_max_abs < 2.0**-14:
            return (f"the reference never exceeds |x| = {self.ref_max_abs:.3g}, below fp16's normal range "
                    f"(6.1e-05): fp16 underflow")
        return ""

    def __str__(self) -> str:
        h = self.hint()
        return (f"first diverging op: {self.node.name} ({self.node.op}; MIL op {self.mil_op}), rel-L2 "
                f"{self.rel_l2:.3g} against tlc's reference runtime" + (f"; {h}" if h else "") +
                f"\n  at {self.node.loc}")


#: Suffixes appended to an IR node's name in a MIL op name: emission names the op of a graph
#: output ``<name>_`` (the output variable takes the user-facing name); ``_cast_fp16`` is what
#: coremltools' ``add_fp16_cast`` appends, for packages converted with coremltools' own fp16 pass.
_MIL_SUFFIXES = ("_cast_fp16", "_")


def ir_node_name(mil_op_name: str) -> str:
    """The tlc IR node name a MIL op was emitted from (see :data:`_MIL_SUFFIXES`)."""
    name = mil_op_name
    for suffix in _MIL_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def node_errors(graph: Graph, runner, feeds: dict, runner_feeds: dict | None = None):
    """Run ``graph`` (NumPy reference) and the artifact on ``feeds``; yield, for every IR node whose
    value both record (same shape), in topological order: ``(node, error, MIL op name, reference max
    |x|)`` (a generator: :func:`first_divergence` stops computing errors at the first one past its
    tolerance), the error being rel-L2 (inf for NaN/inf where the reference is finite) or, for
    int/bool values, 0 / inf for equal / different.

    ``runner``: a :class:`tlc.runtime.MILInterpreter` (package) or :class:`tlc.runtime.BundleModel`;
    ``runner_feeds``: its inputs when they differ from the graph's (0-d inputs as ``[1]``)."""
    ref: dict[str, np.ndarray] = {}
    got: dict[str, tuple] = {}
    run_graph(graph, feeds, observer=lambda n, outs: ref.__setitem__(n.name, outs[0]) if n.op != "const" else None)
    record = lambda name, outs: got.__setitem__(ir_node_name(name), (name, outs[0]))  # noqa: E731
    rf = feeds if runner_feeds is None else runner_feeds
    if isinstance(runner, BundleModel):
        runner.run(rf, observer=record)
    else:
        runner.run(rf, observer=lambda op, outs: record(op.name, outs))
    for n in graph.nodes:
        if n.op == "const" or n.name not in ref or n.name not in got:
            continue
        a, (mil, b) = ref[n.name], got[n.name]
        if a.shape != b.shape:
            continue
        if a.dtype.kind in "iub":
            err = 0.0 if np.array_equal(a, np.asarray(b).astype(a.dtype)) else float("inf")
        else:
            err = rel_l2(b, a)
        finite = np.abs(a[np.isfinite(a)]) if a.dtype.kind == "f" else np.abs(a)
        yield n, err, mil, float(finite.max()) if finite.size else float("nan")


def first_divergence(graph: Graph, runner, feeds: dict, tol: float) -> Divergence | None:
    """The first IR node (:func:`node_errors`) whose artifact value has rel-L2 > ``tol`` (or a
    mismatch, for int/bool values), or None."""
    for n, err, mil, ref_max in node_errors(graph, runner, feeds):
        if err > tol:
            return Divergence(n, err, mil, ref_max)
    return None


def accuracy(package, graph, calibration: list[dict], function_name: str | None = None) -> list[tuple]:
    """``(output, worst rel-L2, worst PSNR dB)`` per output of ``package`` run in tlc's MIL
    interpreter on every calibration sample, against ``graph`` (the traced model, its own dtypes:
    fp32) run by the NumPy reference executor, which matches torch eager to ~1e-6
    (tests/test_architectures.py). PSNR as :func:`psnr` (coremltools' definition)."""
    m = load(package, backend="interpreter", function_name=function_name)
    worst: dict[str, list[float]] = {}
    for feed in calibration:
        ref = run_graph(graph, feed)
        got = m(feed)
        for k, r in ref.items():
            if np.asarray(r).dtype.kind != "f":
                continue
            e, p = rel_l2(got[k], r), psnr(got[k], r)
            w = worst.setdefault(k, [0.0, float("inf")])
            w[0], w[1] = max(w[0], e), min(w[1], p)
    return [(k, e, p) for k, (e, p) in worst.items()]


__all__ = ["DEFAULT_TOL", "rel_l2", "psnr", "OutputCheck", "compare", "worst", "Divergence", "ir_node_name",
           "node_errors", "first_divergence", "accuracy"]
