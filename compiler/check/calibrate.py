"""The closed loop behind ``precision="mixed"``: the finished program, run on every calibration
input, decides which ops stay in fp32; the local rules only propose.

Range analysis (:mod:`tlc.passes.precision`) judges the IR's fp32 semantics, rescales what exact
power-of-two scales can keep in fp16 (:mod:`tlc.passes.rescale`), and splits its fp32 islands into
*required* (fp16 cannot compute them at all: a value beyond 65504, an integer result fp16 changes)
and *proposed* (a value near overflow, an fp16 error many times the graph's median). What ships
is the fp16 program coremltools serializes, so :func:`verified_mixed` runs the program itself — a
``.mlpackage`` in tlc's MIL interpreter, a bundle in the hybrid runtime — on each calibration
feed and compares every output with the fp32 reference outputs range analysis computed (no extra
fp32 run). An output passes with no NaN/inf where the reference is finite and a relative L2 error
at most ``tol`` (verify's fp16 tolerance, 1e-2; outputs that depend on a random op are checked
for NaN/inf only).

1. **Start** from the most ANE-friendly program: fp16 everywhere but the required islands.
2. **Add** where it fails: the proposals, and by bisection the first IR node whose value departs
   from the reference (:func:`tlc.check.metrics.node_errors`); if that node is fp32 already, the
   fp16 ops feeding it (its error needs fp32 inputs). At most :data:`MAX_ROUNDS` more programs.
3. **Prune** the passing program: its non-required islands, as connected fp32 stretches
   (:func:`tlc.passes.precision.island_groups`), are removed while the program still passes —
   all at once first, then halves, the costliest (most FLOPs) half first — within
   :data:`PRUNE_ROUNDS` programs. A program that leaves out a proposed island must pass with a
   margin when fewer than :data:`PRUNE_SAMPLES` samples decide it: rel-L2 at most ``tol`` /
   :data:`PRUNE_MARGIN` (the start program counts as one), so one lucky sample does not remove
   an island another input needs.
4. **Never abort by default**: when no program passes within the rounds, the smallest passing
   one is shipped — fp32 from the first diverging op to the outputs, else every op in fp32 — and
   :class:`PrecisionCheck` (``fallback``), the build output, the report and ``tlc verify`` (the
   package's ``tlc.precision_fallback`` metadata) say so. ``strict_precision=True``
   (``--strict-precision``; :func:`verified_mixed`'s ``strict``) raises :class:`PrecisionError` instead.

Cost when the start program passes: one emission (which ``save`` reuses) and one program run per
calibration feed, as before this loop decided by pruning.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tlc.errors import TlcError
from tlc.ir import Graph, replace
from tlc.ops import get_op
from tlc.passes import precision  # precision.plan_mixed / .apply_plan, looked up when called
from tlc.passes.fp16_program import plan_fp16_constants
from tlc.passes.partition import node_flops

from .metrics import DEFAULT_TOL, OutputCheck, compare, node_errors, worst

#: Programs emitted to add islands after the start program: each adds at least one island.
MAX_ROUNDS = 6
#: Programs emitted to remove islands from the first passing program.
PRUNE_ROUNDS = 4
#: Below this many calibration samples, leaving out a proposed island needs a margin.
PRUNE_SAMPLES = 8
#: The margin: such a program must pass at tol / PRUNE_MARGIN (2.5e-3 for fp16's 1e-2).
PRUNE_MARGIN = 4.0
#: Relative L2 error an fp16 program may have against the fp32 reference (verify's fp16 default).
TOL = DEFAULT_TOL["fp16"]


class PrecisionError(TlcError):
    """``precision="mixed"`` with ``strict_precision=True`` found no fp32 island assignment whose
    program passes the closed loop (or no program passes at all, not even every op in fp32)."""


class PrecisionWarning(UserWarning):
    """The closed loop shipped a fallback program (no island assignment passed within its rounds)."""


@dataclass
class LoopRound:
    """One emitted program: its worst outputs against the tolerance it had to meet (``tol``), its
    ``phase`` (``start``, ``add``, ``prune`` or ``fallback``), its fp32 island count, the islands
    added because it failed, and for a ``prune`` round the islands it was tried without."""

    index: int
    outputs: list[OutputCheck]
    added: dict[str, str] = field(default_factory=dict)
    phase: str = "add"
    removed: tuple[str, ...] = ()
    islands: int = 0
    tol: float = TOL

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass
class PrecisionCheck:
    """Result of the closed loop: calibration ``samples`` used (they decided), the ``runtime`` that
    ran the program, every round (``shipped``: the index of the one shipped), fp32 islands and fp16
    constant fixes of the shipped program, the local rules' ``required`` and ``proposed`` islands,
    the islands ``pruned`` (removed while the program still passed), the rescaled regions
    (:mod:`tlc.passes.rescale` records), ``prune_tol`` (what a program leaving out a proposal had
    to meet), ``fallback`` (why a fallback program shipped; empty when the loop found one), and
    seconds spent running the program (``run_s``), emitting (``emit_s``) and planning (``plan_s``)."""

    samples: int
    runtime: str
    rounds: list[LoopRound]
    islands: dict[str, str]
    constants: dict[str, str]
    run_s: float = 0.0
    emit_s: float = 0.0
    plan_s: float = 0.0
    shipped: int = -1
    required: dict[str, str] = field(default_factory=dict)
    proposed: dict[str, str] = field(default_factory=dict)
    pruned: dict[str, str] = field(default_factory=dict)
    rescaled: list[dict] = field(default_factory=list)
    prune_tol: float = TOL
    fallback: str = ""
    tol: float = TOL
    #: share of the program's FLOPs in the proposed islands and in the shipped program's islands
    flops_share: dict = field(default_factory=dict)

    @property
    def outputs(self) -> list[OutputCheck]:
        return self.rounds[self.shipped].outputs

    @property
    def passed(self) -> bool:
        return self.rounds[self.shipped].passed

    def text(self, indent: str = "  ") -> str:
        """Per-output table of the shipped program, then one line per round, the pruned islands
        and, loudly, a fallback."""
        margin = (f"; leaving out a proposed island needed rel-L2 <= {self.prune_tol:g} (fewer than {PRUNE_SAMPLES} "
                  f"samples)" if self.prune_tol < self.tol else "")
        lines = [f"{indent}checked {len(self.rounds)} program(s); {self.samples} calibration sample(s) decided, in the "
                 f"{self.runtime}: {'PASS' if self.passed else 'FAIL'}{margin}",
                 f"{indent}  {'output':<24} {'max_abs':>9} {'rel_l2':>9} {'nan/inf':>7} {'tol':>7}"]
        for o in self.outputs:
            lines.append(f"{indent}  {o.name:<24} {o.max_abs:9.2e} {o.rel_l2:9.2e} {o.nonfinite:7d} {o.tol:7.0e}  "
                         f"{'PASS' if o.passed else 'FAIL'}")
        for r in self.rounds:
            w = max(r.outputs, key=lambda o: (o.nonfinite, o.rel_l2))
            what = {"prune": f"without {len(r.removed)} island op(s) ({_names(r.removed)})", "start": "fp16 but the "
                    "required islands", "fallback": "fallback"}.get(r.phase, "")
            lines.append(f"{indent}  round {r.index} ({r.phase}{', ' + what if what else ''}; {r.islands} island op(s)): "
                         f"{w.name} rel-L2 {w.rel_l2:.3g}, {w.nonfinite} nan/inf -> {'PASS' if r.passed else 'FAIL'}"
                         + (" (shipped)" if r.index == self.shipped % len(self.rounds) else "")
                         + (f"; -> fp32: {_names(r.added)}" if r.added else ""))
        if self.proposed or self.islands:
            fs = self.flops_share
            lines.append(f"{indent}  local rules proposed {len(self.proposed)} island op(s) ({100 * fs.get('proposed', 0):.1f}% "
                         f"of FLOPs); shipped {len(self.islands)} ({100 * fs.get('islands', 0):.1f}%)")
        if self.pruned:
            lines.append(f"{indent}  pruned {len(self.pruned)} island op(s) the program does not need: {_names(self.pruned)}")
        if self.fallback:
            lines.append(f"{indent}  FALLBACK: {self.fallback}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        def out(o: OutputCheck) -> dict:
            return {"name": o.name, "max_abs": _num(o.max_abs), "rel_l2": _num(o.rel_l2), "nonfinite": o.nonfinite,
                    "tol": o.tol, "passed": o.passed}

        return {"samples": self.samples, "runtime": self.runtime, "passed": self.passed,
                "outputs": [out(o) for o in self.outputs], "shipped_round": self.shipped % max(len(self.rounds), 1),
                "rounds": [{"index": r.index, "phase": r.phase, "passed": r.passed, "tol": r.tol, "islands": r.islands,
                            "outputs": [out(o) for o in r.outputs], "added_islands": dict(r.added),
                            "removed_islands": list(r.removed)} for r in self.rounds],
                "islands": dict(self.islands), "fp16_constants": dict(self.constants),
                "required": dict(self.required), "proposed": dict(self.proposed), "pruned": dict(self.pruned),
                "rescaled": list(self.rescaled), "tol": self.tol, "prune_tol": self.prune_tol, "fallback": self.fallback,
                "flops_share": dict(self.flops_share),
                "run_s": self.run_s, "emit_s": self.emit_s, "plan_s": self.plan_s}


def _num(x: float):
    return x if np.isfinite(x) else str(x)


def _names(names, limit: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit})" if len(names) > limit else "")


def _downstream_of_random(g: Graph) -> set:
    """Values that depend on a ``nondeterministic`` op (``random_*``): the package draws other
    numbers than the reference, so only their finiteness can be compared."""
    bad: set = set()
    for n in g.nodes:
        if get_op(n.op).nondeterministic or any(v in bad for v in n.inputs):
            bad.update(n.outputs)
    return bad


@dataclass
class _Program:
    """An emitted program and what running it gave."""

    graph: Graph
    runner: object
    payload: object
    round: LoopRound
    failing: list[int]
    flops: int
    requested: dict  # the islands asked for, beyond the required ones


class _Loop:
    """The state of one closed loop (:func:`verified_mixed`): the plan, the programs tried (by
    island set), the best passing one, and the time spent."""

    def __init__(self, graph, feeds_list, io_dtype, emit, tol, log):
        t0 = time.perf_counter()
        self.plan = precision.plan_mixed(graph, feeds_list, io_dtype)
        self.plan_s = time.perf_counter() - t0
        self.graph, self.feeds, self.io, self.emit, self.tol, self.log = graph, feeds_list, io_dtype, emit, tol, log
        self.prune_tol = tol / PRUNE_MARGIN if len(feeds_list) < PRUNE_SAMPLES else tol
        self.ref = self.plan.graph  # sentinels clamped, regions rescaled: the program's own reference
        self._flops_of = {n.name: node_flops(n) for n in self.ref.nodes}
        # ops whose constants fp16 cannot hold: fp32 whatever is asked (apply_plan adds them), never pruned
        self.blockers = set(plan_fp16_constants(self.ref, set())[2])
        self.order = {n.name: i for i, n in enumerate(self.ref.nodes)}
        self.producer = self.ref.producers()
        self.random = _downstream_of_random(self.ref)
        scalars = {v.name for v in graph.inputs if v.type.rank == 0}  # a package holds 0-d inputs as [1]
        self.pkg_feeds = [{k: (np.reshape(v, (1,)) if k in scalars else v) for k, v in f.items()} for f in feeds_list]
        self.rounds: list[LoopRound] = []
        self.tried: dict[frozenset, LoopRound] = {}
        self.best: _Program | None = None
        self.run_s = self.emit_s = 0.0
        self.runtime = ""
        self.culprit = None  # the first diverging op seen: (node, err, ref max, sample)
        self.earliest: int | None = None  # its topological index, for the fallback's fp32 tail

    def flops(self, names) -> int:
        """FLOPs of the ops ``names`` of :attr:`ref` (each op's estimate computed once per loop)."""
        return sum(self._flops_of.get(x, 0) for x in set(names))

    def attempt(self, islands: dict[str, str], phase: str, removed=(), tol: float | None = None,
                note: str = "") -> _Program | LoopRound:
        """Emit and run the program with the required islands plus ``islands``; a program tried
        before is not emitted again (its :class:`LoopRound` is returned)."""
        t0 = time.perf_counter()
        eg = precision.apply_plan(self.plan, self.io, islands)
        have = eg.meta.get("tlc.islands", {})
        key = frozenset(have)
        if key in self.tried:
            return self.tried[key]
        if tol is None:
            tol = self.prune_tol if any(p not in have for p in self.plan.proposed) else self.tol
        if note:
            eg = replace(eg, meta={**dict(eg.meta), "tlc.precision_fallback": note})
        t1 = time.perf_counter()
        self.plan_s += t1 - t0
        runner, payload = self.emit(eg)
        t2 = time.perf_counter()
        self.emit_s += t2 - t1
        self.runtime = "hybrid runtime" if hasattr(runner, "manifest") else "MIL interpreter"
        worst_: dict[str, OutputCheck] = {}
        failing = []
        for k, ref in enumerate(self.plan.reference):
            got = runner.run(self.feeds[k] if self.runtime == "hybrid runtime" else self.pkg_feeds[k])
            ok = True
            for name, v in zip(self.graph.output_names, self.ref.outputs):
                res = compare(name, got[name], ref[name], float("inf") if v in self.random else tol)
                worst_[name] = worst(worst_.get(name), res)
                ok &= res.passed
            if not ok:
                failing.append(k)
        self.run_s += time.perf_counter() - t2
        rnd = LoopRound(len(self.rounds), [worst_[n] for n in self.graph.output_names], phase=phase,
                        removed=tuple(removed), islands=len(have), tol=tol)
        self.rounds.append(rnd)
        self.tried[key] = rnd
        prog = _Program(eg, runner, payload, rnd, failing, self.flops(have), dict(islands))
        if rnd.passed and (self.best is None or (prog.flops, rnd.islands) <= (self.best.flops, self.best.round.islands)):
            self.best = prog
        if self.log:
            w = max(rnd.outputs, key=lambda o: (o.nonfinite, o.rel_l2))
            self.log(f"closed loop: round {rnd.index} ({phase}, {rnd.islands} island op(s)): output {w.name} rel-L2 "
                     f"{w.rel_l2:.3g}, {w.nonfinite} nan/inf -> {'PASS' if rnd.passed else 'FAIL'}")
        return prog

    def culprits(self, prog: _Program) -> dict[str, str]:
        """Islands to add for a failing program: per failing sample, the first IR node whose value
        departs by more than the program's tolerance, or the fp16 ops feeding it when it is fp32
        already (module docstring)."""
        islands = prog.graph.meta.get("tlc.islands", {})
        tol, r = prog.round.tol, prog.round.index
        added: dict[str, str] = {}
        for k in prog.failing:
            t0 = time.perf_counter()
            feeds = self.feeds[k]
            errs = list(node_errors(self.ref, prog.runner, feeds,
                                    feeds if self.runtime == "hybrid runtime" else self.pkg_feeds[k]))
            self.run_s += time.perf_counter() - t0
            errs = [e for e in errs if e[0].outputs[0] not in self.random]
            over = [e for e in errs if e[1] > tol]
            pick = over[0] if over else max(errs, key=lambda e: e[1], default=None)
            if pick is None:
                continue
            node, err = pick[0], pick[1]
            self.culprit = self.culprit or (node, err, pick[3], k)
            i = self.order.get(node.name)
            if i is not None:
                self.earliest = i if self.earliest is None else min(self.earliest, i)
            if node.name not in islands:
                added.setdefault(node.name, f"closed loop round {r}: its value in the fp16 program is off by rel-L2 "
                                            f"{err:.3g} on calibration sample {k} (first op past {tol:g})")
                continue
            for v in node.inputs:  # already fp32: the fp16 ops feeding it are what its error needs
                p = self.producer.get(v)
                if (p is not None and p.op != "const" and p.name in self.order and p.name not in islands
                        and v.type.dtype in ("fp32", "fp16")):
                    added.setdefault(p.name, f"closed loop round {r}: feeds fp32 island {node.name}, whose value is "
                                             f"still off by rel-L2 {err:.3g} with fp16 inputs")
        return added

    def prune(self, islands: dict[str, str], budget: int) -> tuple[dict[str, str], dict[str, str]]:
        """``(islands kept, islands pruned)``: remove groups of the requested ``islands`` (neither
        required nor forced by a constant) while the program passes (module docstring), emitting
        at most ``budget`` programs."""
        groups = [list(grp) for grp, _, _ in precision.island_groups(
            self.ref, [k for k in islands if k not in self.plan.required and k not in self.blockers])]
        queue = [groups] if groups else []
        pruned: dict[str, str] = {}
        spent = 0
        while queue and spent < budget:
            chunk = queue.pop(0)
            names = [k for grp in chunk for k in grp]
            trial = {k: v for k, v in islands.items() if k not in names}
            before = len(self.rounds)
            res = self.attempt(trial, "prune", removed=sorted(names, key=self.order.get))
            spent += len(self.rounds) > before
            rnd = res.round if isinstance(res, _Program) else res
            if rnd.passed:
                pruned.update({k: islands[k] for k in names})
                islands = trial
            elif len(chunk) > 1:
                half = (len(chunk) + 1) // 2
                queue[:0] = [chunk[:half], chunk[half:]]
        return islands, pruned

    def error(self) -> PrecisionError:
        bad = max(self.rounds[-1].outputs, key=lambda o: (o.nonfinite, o.rel_l2))
        msg = (f"precision='mixed': no fp32 island assignment passed the closed loop after {len(self.rounds)} round(s) "
               f"on {len(self.feeds)} calibration sample(s): output {bad.name} has rel-L2 {bad.rel_l2:.3g} (tolerance "
               f"{self.tol:g}) and {bad.nonfinite} NaN/inf")
        if self.culprit is not None:
            node, err, ref_max, k = self.culprit
            where = f"{node.loc.file}:{node.loc.line}" if node.loc is not None and node.loc.file else "unknown source"
            msg += (f"; first diverging op {node.name} ({node.op}) at {where}: rel-L2 {err:.3g} on sample {k}, "
                    f"reference max |x| = {ref_max:.3g}")
        return PrecisionError(msg + "; precision='fp32' builds it in fp32 (strict_precision=False ships the "
                                    "smallest passing program instead)")


def verified_mixed(graph: Graph, feeds_list: list[dict], io_dtype: str, emit: Callable, *, tol: float = TOL,
                   max_rounds: int = MAX_ROUNDS, prune_rounds: int = PRUNE_ROUNDS, strict: bool = False,
                   log: Callable[[str], None] | None = None):
    """``precision="mixed"`` with the closed loop (module docstring). ``graph``: the fp32 IR;
    ``feeds_list``: calibration feeds by input name (the example inputs first); ``io_dtype``:
    ``"fp32"``/``"fp16"``; ``emit(fp16 graph) -> (runner, payload)`` emits the program, where
    ``runner`` is a :class:`tlc.runtime.MILInterpreter` or :class:`tlc.runtime.BundleModel` and
    ``payload`` anything the caller wants back; ``log(line)`` reports each round.

    Returns ``(fp16 graph, payload, PrecisionCheck)`` of the program shipped. Raises
    :class:`PrecisionError` when ``strict`` and no program passes within ``max_rounds`` added
    rounds, or when not even the all-fp32 program passes (no correct program exists: a tlc bug
    or a model whose outputs cannot be reproduced). A fallback also issues a :class:`PrecisionWarning`.
    """
    loop = _Loop(graph, feeds_list, io_dtype, emit, tol, log)
    plan = loop.plan
    islands: dict[str, str] = {}
    prog = loop.attempt(islands, "start")
    if not prog.round.passed:
        add = dict(plan.proposed)
        if any(o.rel_l2 > tol or o.nonfinite for o in prog.round.outputs):  # not only short of the margin
            add.update({k: v for k, v in loop.culprits(prog).items() if k not in add})
        for r in range(max_rounds):
            new = {k: v for k, v in add.items() if k not in islands}
            if not new:
                break
            prog.round.added = new
            islands.update(new)
            res = loop.attempt(islands, "add")
            if not isinstance(res, _Program):  # the same program again: nothing new to learn
                break
            prog = res
            if prog.round.passed:
                break
            add = loop.culprits(prog)
    pruned: dict[str, str] = {}
    fallback = ""
    if loop.best is not None:
        _, pruned = loop.prune(loop.best.requested, prune_rounds)
    elif strict:
        raise loop.error()
    else:
        fallback = _fallback(loop, islands)
    best = loop.best
    check = PrecisionCheck(len(feeds_list), loop.runtime, loop.rounds, dict(best.graph.meta.get("tlc.islands", {})),
                           dict(best.graph.meta.get("tlc.fp16_constants", {})), loop.run_s, loop.emit_s, loop.plan_s,
                           best.round.index, dict(plan.required), dict(plan.proposed), pruned, list(plan.rescaled),
                           loop.prune_tol, fallback, tol)
    total = loop.flops([n.name for n in loop.ref.nodes if n.op != "const"]) or 1
    check.flops_share = {"proposed": loop.flops(plan.proposed) / total, "islands": best.flops / total}
    if log and len(loop.rounds) > 1:
        log(f"closed loop: shipping round {best.round.index} ({best.round.islands} island op(s)"
            + (f", {len(pruned)} pruned" if pruned else "") + ")")
    return best.graph, best.payload, check


def _fallback(loop: _Loop, islands: dict[str, str]) -> str:
    """Ship the smallest passing program when no round passed (module docstring, step 4): fp32 from
    the earliest diverging op on, else everything in fp32. Returns the note the check, the build
    output and the package metadata carry; raises :class:`PrecisionError` when nothing passes."""
    nodes = [n for n in loop.ref.nodes if n.op != "const"]
    tries = []
    if loop.earliest is not None:
        tail = {n.name: "fallback: fp32 from the first diverging op to the outputs" for n in nodes
                if loop.order[n.name] >= loop.earliest}
        if len(tail) < len(nodes):
            tries.append(("fp32 from the first diverging op to the outputs", {**islands, **tail}))
    tries.append(("every op in fp32", {n.name: "fallback: every op in fp32" for n in nodes}))
    total = loop.flops([n.name for n in nodes]) or 1
    for what, isl in tries:
        note = (f"no fp32 island assignment passed the closed loop in {len(loop.rounds)} program(s) on "
                f"{len(loop.feeds)} calibration sample(s); shipped the smallest passing program found: {what}")
        prog = loop.attempt(isl, "fallback", tol=loop.tol, note=note)
        if isinstance(prog, _Program) and prog.round.passed:
            share = prog.flops / total
            note += f" ({prog.round.islands} fp32 op(s), {100 * share:.0f}% of FLOPs)"
            warnings.warn(f"precision='mixed': {note} (strict_precision=True raises instead)", PrecisionWarning,
                          stacklevel=4)
            if loop.log:
                loop.log(f"closed loop: FALLBACK: {note}")
            return note
    raise PrecisionError(f"precision='mixed': not even the all-fp32 program passes the closed loop on "
                         f"{len(loop.feeds)} calibration sample(s); {loop.error().args[0]}")
