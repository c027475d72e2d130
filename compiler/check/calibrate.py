"""The closed loop behind ``precision="mixed"``: the finished program is run on every calibration
input, and what fails becomes an fp32 island.

Range analysis (:mod:`tlc.passes.precision`) judges the IR's fp32 semantics; what ships is the
fp16 program coremltools serializes, with its own constants and op forms. So after emission,
:func:`verified_mixed` runs the program itself — a ``.mlpackage`` in tlc's MIL interpreter, a
bundle in the hybrid runtime (its Core ML segments in the interpreter) — on each calibration
feed and compares every output with the fp32 reference outputs the range analysis computed
(no extra fp32 run). An output with NaN/inf where the reference is finite, or a relative L2
error above ``tol`` (verify's fp16 tolerance, 1e-2; outputs that depend on a random op are
checked for NaN/inf only, their values differ by design), is bisected to the first IR node whose
value in the program departs from the reference (:func:`tlc.check.metrics.node_errors`). That node
becomes an fp32 island; if it already is one, the fp16 ops feeding it do (its error needs fp32
inputs). The program is emitted again, at most :data:`MAX_ROUNDS` times; every round is
recorded in the :class:`PrecisionCheck`. When no round passes, :class:`PrecisionError` names the
op, its source line and the values.

Cost when nothing fails: one emission (which ``save`` reuses) and one program run per
calibration feed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tlc.errors import TlcError
from tlc.ir import Graph
from tlc.ops import get_op
from tlc.passes import precision  # precision.plan_mixed / .apply_plan, looked up when called

from .metrics import DEFAULT_TOL, OutputCheck, compare, node_errors, worst

#: Re-emissions after the first: each adds at least one island, so a model needing more than
#: this many separate islands fails with :class:`PrecisionError` instead of looping.
MAX_ROUNDS = 6
#: Relative L2 error an fp16 program may have against the fp32 reference (verify's fp16 default).
TOL = DEFAULT_TOL["fp16"]


class PrecisionError(TlcError):
    """``precision="mixed"`` found no fp32 island assignment whose program passes the closed loop."""


@dataclass
class LoopRound:
    """One emission: its worst outputs and the islands added because of it (empty when it passed)."""

    index: int
    outputs: list[OutputCheck]
    added: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass
class PrecisionCheck:
    """Result of the closed loop: calibration ``samples`` used, the ``runtime`` that ran the
    program, every round (the last is the shipped program), fp32 islands and fp16 constant fixes
    of the final program, seconds spent running the program (``run_s``) and emitting (``emit_s``)."""

    samples: int
    runtime: str
    rounds: list[LoopRound]
    islands: dict[str, str]
    constants: dict[str, str]
    run_s: float = 0.0
    emit_s: float = 0.0
    plan_s: float = 0.0

    @property
    def outputs(self) -> list[OutputCheck]:
        return self.rounds[-1].outputs

    @property
    def passed(self) -> bool:
        return self.rounds[-1].passed

    def text(self, indent: str = "  ") -> str:
        """Per-output table of the shipped program, then one line per round that added islands."""
        lines = [f"{indent}checked {len(self.rounds)} round(s) on {self.samples} calibration sample(s) in the "
                 f"{self.runtime}: {'PASS' if self.passed else 'FAIL'}",
                 f"{indent}  {'output':<24} {'max_abs':>9} {'rel_l2':>9} {'nan/inf':>7} {'tol':>7}"]
        for o in self.outputs:
            lines.append(f"{indent}  {o.name:<24} {o.max_abs:9.2e} {o.rel_l2:9.2e} {o.nonfinite:7d} {o.tol:7.0e}  "
                         f"{'PASS' if o.passed else 'FAIL'}")
        for r in self.rounds:
            if r.added:
                w = max(r.outputs, key=lambda o: (o.nonfinite, o.rel_l2))
                lines.append(f"{indent}  round {r.index}: {w.name} rel-L2 {w.rel_l2:.3g}, {w.nonfinite} "
                             f"nan/inf -> fp32: " + ", ".join(r.added))
        return "\n".join(lines)

    def to_json(self) -> dict:
        def out(o: OutputCheck) -> dict:
            return {"name": o.name, "max_abs": _num(o.max_abs), "rel_l2": _num(o.rel_l2), "nonfinite": o.nonfinite,
                    "tol": o.tol, "passed": o.passed}

        return {"samples": self.samples, "runtime": self.runtime, "passed": self.passed,
                "outputs": [out(o) for o in self.outputs],
                "rounds": [{"index": r.index, "passed": r.passed, "outputs": [out(o) for o in r.outputs],
                            "added_islands": dict(r.added)} for r in self.rounds],
                "islands": dict(self.islands), "fp16_constants": dict(self.constants),
                "run_s": self.run_s, "emit_s": self.emit_s, "plan_s": self.plan_s}


def _num(x: float):
    return x if np.isfinite(x) else str(x)


def _downstream_of_random(g: Graph) -> set:
    """Values that depend on a ``nondeterministic`` op (``random_*``): the package draws other
    numbers than the reference, so only their finiteness can be compared."""
    bad: set = set()
    for n in g.nodes:
        if get_op(n.op).nondeterministic or any(v in bad for v in n.inputs):
            bad.update(n.outputs)
    return bad


def verified_mixed(graph: Graph, feeds_list: list[dict], io_dtype: str, emit: Callable, *, tol: float = TOL,
                   max_rounds: int = MAX_ROUNDS, log: Callable[[str], None] | None = None):
    """``precision="mixed"`` with the closed loop (module docstring). ``graph``: the fp32 IR;
    ``feeds_list``: calibration feeds by input name (the example inputs first); ``io_dtype``:
    ``"fp32"``/``"fp16"``; ``emit(fp16 graph) -> (runner, payload)`` emits the program, where
    ``runner`` is a :class:`tlc.runtime.MILInterpreter` or :class:`tlc.runtime.BundleModel` and
    ``payload`` anything the caller wants back; ``log(line)`` reports each round.

    Returns ``(fp16 graph, payload, PrecisionCheck)`` of the first program that passes. Raises
    :class:`PrecisionError` when round ``max_rounds`` still fails or bisection finds nothing
    left to move to fp32.
    """
    t_plan = time.perf_counter()
    plan = precision.plan_mixed(graph, feeds_list)
    plan_s = time.perf_counter() - t_plan
    ref_graph = plan.graph  # mask sentinels clamped: what the reference outputs were computed on
    extra: dict[str, str] = {}
    rounds: list[LoopRound] = []
    run_s = emit_s = 0.0
    runtime = ""
    nodes = {n.name: n for n in ref_graph.nodes}
    producer = ref_graph.producers()
    random = _downstream_of_random(ref_graph)  # values no two runs agree on: checked for NaN/inf only
    scalars = {v.name for v in graph.inputs if v.type.rank == 0}  # a package holds 0-d inputs as [1]
    pkg_feeds = [{k: (np.reshape(v, (1,)) if k in scalars else v) for k, v in f.items()} for f in feeds_list]
    for r in range(max_rounds + 1):
        t_plan = time.perf_counter()
        eg = precision.apply_plan(plan, io_dtype, extra)
        t0 = time.perf_counter()
        plan_s += t0 - t_plan
        runner, payload = emit(eg)
        t1 = time.perf_counter()
        emit_s += t1 - t0
        runtime = "hybrid runtime" if hasattr(runner, "manifest") else "MIL interpreter"
        worst_: dict[str, OutputCheck] = {}
        failing: list[int] = []
        for k, ref in enumerate(plan.reference):
            got = runner.run(feeds_list[k] if runtime == "hybrid runtime" else pkg_feeds[k])
            ok = True
            for name, v in zip(graph.output_names, ref_graph.outputs):
                res = compare(name, got[name], ref[name], float("inf") if v in random else tol)
                worst_[name] = worst(worst_.get(name), res)
                ok &= res.passed
            if not ok:
                failing.append(k)
        run_s += time.perf_counter() - t1
        rnd = LoopRound(r, [worst_[n] for n in graph.output_names])
        rounds.append(rnd)
        islands = dict(eg.meta.get("tlc.islands", {}))
        if not failing:
            if log and r:
                log(f"closed loop: round {r} passes on {len(feeds_list)} sample(s)")
            check = PrecisionCheck(len(feeds_list), runtime, rounds, islands, dict(eg.meta.get("tlc.fp16_constants", {})),
                                   run_s, emit_s, plan_s)
            return eg, payload, check
        bad = max(rnd.outputs, key=lambda o: (o.nonfinite, o.rel_l2))
        culprit = None
        for k in failing:
            t_bisect = time.perf_counter()
            errs = list(node_errors(ref_graph, runner, feeds_list[k],
                                    feeds_list[k] if runtime == "hybrid runtime" else pkg_feeds[k]))
            run_s += time.perf_counter() - t_bisect
            errs = [e for e in errs if e[0].outputs[0] not in random]
            over = [e for e in errs if e[1] > tol]
            pick = over[0] if over else max(errs, key=lambda e: e[1], default=None)
            if pick is None:
                continue
            node, err = pick[0], pick[1]
            culprit = culprit or (node, err, pick[3], k)
            if node.name not in islands:
                rnd.added.setdefault(node.name, f"closed loop round {r}: its value in the fp16 program is off by rel-L2 "
                                                f"{err:.3g} on calibration sample {k} (first op past {tol:g})")
                continue
            for v in node.inputs:  # already fp32: the fp16 ops feeding it are what its error needs
                p = producer.get(v)
                if (p is not None and p.op != "const" and p.name in nodes and p.name not in islands
                        and v.type.dtype in ("fp32", "fp16")):
                    rnd.added.setdefault(p.name, f"closed loop round {r}: feeds fp32 island {node.name}, whose value is "
                                                 f"still off by rel-L2 {err:.3g} with fp16 inputs")
        if log:
            log(f"closed loop: round {r}: output {bad.name} rel-L2 {bad.rel_l2:.3g}, {bad.nonfinite} nan/inf"
                + (f" -> fp32: {', '.join(rnd.added)}" if rnd.added else ""))
        if not rnd.added or r == max_rounds:
            break
        extra.update(rnd.added)
    msg = (f"precision='mixed': no fp32 island assignment passed the closed loop after {len(rounds)} round(s) on "
           f"{len(feeds_list)} calibration sample(s): output {bad.name} has rel-L2 {bad.rel_l2:.3g} (tolerance {tol:g}) "
           f"and {bad.nonfinite} NaN/inf")
    if culprit is not None:
        node, err, ref_max, k = culprit
        where = f"{node.loc.file}:{node.loc.line}" if node.loc is not None and node.loc.file else "unknown source"
        msg += (f"; first diverging op {node.name} ({node.op}) at {where}: rel-L2 {err:.3g} on sample {k}, reference "
                f"max |x| = {ref_max:.3g}")
    raise PrecisionError(msg + "; precision='fp32' builds it in fp32")
