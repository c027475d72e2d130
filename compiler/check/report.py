"""Placement report: where every op runs and why (text, JSON, HTML).

``CompiledModel.report()`` and ``tlc build --report/--report-json/--report-html`` produce a
:class:`PlacementReport`. Headline figure: **static ANE residency**, the share of the model's
estimated FLOPs (op table ``flops`` rules) in ops that lie in Core ML segments *and* pass every
ANE eligibility rule of the op table (``ane``; a Core ML segment can hold ops Core ML runs on the
GPU/CPU: fp32 islands, gathers, int32 casts). Beside it: the share in Core ML segments
(``coreml_share``), and the efficiency rules (``ane_efficiency``: misaligned last axis, Linear on
(B, S, C), fused SDPA, rank-5 tensors) the resident ops still break, per rule with their FLOP
share: those ops run on the ANE, slower than they could. Every op not predicted on the ANE is
listed with its reason (the op table's ``ane`` rule, sources in ../shared/ane-rules.md, or the
placement decision) and the user's source line. All of it is predicted statically; what Core ML
actually places needs a Mac (``MLComputePlan``; docs/partitioning.md).
"""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import asdict, dataclass, field

from tlc.ir import Graph
from tlc.ops import ANE_RULES, EVIDENCE, get_op, rule_of
from tlc.passes.partition import ane_reason, node_flops

from .report_html import render


@dataclass(frozen=True)
class SegmentRow:
    """One segment: ``target`` (ane/gpu/cpu), op count, FLOPs and their share of the model,
    boundary tensors (``"name: type"`` strings) and their bytes."""

    index: int
    target: str
    num_ops: int
    flops: int
    flops_share: float
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    boundary_bytes: int


@dataclass(frozen=True)
class OpRow:
    """One op: node ``name``, ``op``, ``segment``, ``target`` of that segment, ``on_ane``
    (predicted), ``reason`` (why not on the ANE; empty if on it), ``source`` (file:line), FLOPs,
    and the node names it reads from (``inputs``) for drawing."""

    name: str
    op: str
    segment: int
    target: str
    on_ane: bool
    reason: str
    source: str
    flops: int
    inputs: tuple[str, ...] = ()
    efficiency: tuple[str, ...] = ()  # efficiency-rule reasons (tlc.ops.Reason) of an op on the ANE
    rules: tuple[str, ...] = ()  # every eligibility rule (tlc.ops.ANE_RULES id) an op in a Core ML segment breaks


@dataclass(frozen=True)
class PlacementReport:
    """The placement of a compiled model (see module docstring). ``str(report)`` is the text
    table; :meth:`to_json` a dict; :meth:`to_html` a standalone page; Jupyter shows the HTML."""

    model: str
    precision: str
    segments: tuple[SegmentRow, ...]
    ops: tuple[OpRow, ...]
    total_flops: int
    artifact: str = field(default="")
    precision_check: dict | None = None  # the closed loop of precision="mixed" (tlc.check.calibrate.PrecisionCheck.to_json)
    compression: dict | None = None  # compression by target/budget/recipe (tlc.driver.compression.CompressionReport.to_json)

    @property
    def residency(self) -> float:
        """Static ANE residency: share of FLOPs in ops in Core ML segments that pass every ANE
        eligibility rule (1.0 / 0.0 for a graph without FLOPs: all ops eligible or not)."""
        if not self.total_flops:
            return 1.0 if all(o.on_ane for o in self.ops) else 0.0
        return sum(o.flops for o in self.ops if o.on_ane) / self.total_flops

    #: the former name of :attr:`residency`
    predicted_ane_share = residency

    def residency_under(self, evidence: str = "unverified") -> float:
        """Static ANE residency counting only the eligibility rules whose evidence is ``evidence``
        or stronger (:data:`tlc.ops.EVIDENCE`: ``"documented"`` applies Apple's own rules and the
        format's facts; ``"unverified"``, the default, every rule = :attr:`residency`)."""
        keep = EVIDENCE[:EVIDENCE.index(evidence) + 1]
        on = [o for o in self.ops if o.target == "ane" and not any(ANE_RULES[r].evidence in keep for r in o.rules)]
        if not self.total_flops:
            return 1.0 if len(on) == len(self.ops) else 0.0
        return sum(o.flops for o in on) / self.total_flops

    def residency_gap(self, evidence: str = "documented") -> list[dict]:
        """The rules behind the gap between :meth:`residency_under` ``evidence`` and under every rule:
        ``{rule, evidence, ops, flops_share, source}`` per rule of weaker evidence that keeps ops
        off the ANE which the stronger rules alone would leave on it (an op breaking two such rules
        counts for both), largest share first."""
        keep = EVIDENCE[:EVIDENCE.index(evidence) + 1]
        return self._per_rule(((r, o) for o in self.ops if o.target == "ane"
                               and not any(ANE_RULES[r].evidence in keep for r in o.rules) for r in o.rules), "flops")

    def _per_rule(self, pairs, most: str) -> list[dict]:
        """``{rule, evidence, ops, flops_share, source}`` per rule id of ``pairs`` ((rule id, op row)),
        largest ``most`` (``"ops"`` or ``"flops"``) first."""
        rows: dict[str, dict] = {}
        for rid, o in pairs:
            rule = ANE_RULES[rid]
            row = rows.setdefault(rid, {"rule": rid, "evidence": rule.evidence, "ops": 0, "flops": 0,
                                        "source": rule.source})
            row["ops"] += 1
            row["flops"] += o.flops
        out = sorted(rows.values(), key=lambda r: (-r[most], r["rule"]))
        for r in out:
            r["flops_share"] = r.pop("flops") / self.total_flops if self.total_flops else 0.0
        return out

    def precision_costs(self) -> tuple[list[dict], list[dict]]:
        """``(islands, rescaled regions)`` of ``precision="mixed"`` with the share of FLOPs each
        holds: per fp32 island op its reason and share (ops Core ML runs off the ANE because they
        are fp32), per rescaled region its exponent, why, and the share of FLOPs it keeps in fp16
        (its ops), from :attr:`precision_check`. Empty without the closed loop."""
        pc = self.precision_check or {}
        flops = {o.name: o.flops for o in self.ops}
        share = (lambda names: sum(flops.get(n, 0) for n in names) / self.total_flops) if self.total_flops else \
            (lambda names: 0.0)
        isl = sorted(({"name": k, "reason": v, "flops_share": share([k])} for k, v in pc.get("islands", {}).items()),
                     key=lambda r: -r["flops_share"])
        regions = [{**r, "flops_share": share(r.get("ops", ()))} for r in pc.get("rescaled", ())]
        return isl, regions

    @property
    def coreml_share(self) -> float:
        """Share of FLOPs in Core ML (``ane``) segments, eligible for the ANE or not."""
        if not self.total_flops:
            return 1.0 if all(s.target == "ane" for s in self.segments) else 0.0
        return sum(s.flops for s in self.segments if s.target == "ane") / self.total_flops

    def efficiency(self) -> list[dict]:
        """Efficiency rules broken by ops on the ANE: ``{rule, evidence, ops, flops_share, source}`` per rule
        (most ops first)."""
        return self._per_rule(((rule_of(r).id, o) for o in self.ops for r in o.efficiency), "ops")

    @property
    def transitions(self) -> int:
        """Edges (a value one op writes and another reads) between an op predicted on the ANE and
        one that is not: each is a potential ANE <-> CPU/GPU hand-over (issue 29)."""
        on = {o.name: o.on_ane for o in self.ops}
        return sum(on[i] != o.on_ane for o in self.ops for i in o.inputs if i in on)

    def not_on_ane(self) -> list[OpRow]:
        """Ops not predicted to run on the ANE, in graph order."""
        return [o for o in self.ops if not o.on_ane]

    def __str__(self) -> str:
        lines = [f"placement of {self.model} ({self.precision}): {len(self.segments)} segment(s), static ANE residency "
                 f"{100 * self.residency:.1f}% of {_flops(self.total_flops)} (ops passing every eligibility rule; "
                 f"in Core ML segments: {100 * self.coreml_share:.1f}%); {self.transitions} transition(s) between ops "
                 f"on and off the ANE"]
        eff = self.efficiency()
        doc, gap = self.residency_under("documented"), self.residency_gap()
        lines.append(f"  under documented rules only (Apple's own and the format's): {100 * doc:.1f}%"
                     + (" (the same)" if not gap else "; the gap: " + "; ".join(
                         f"{r['rule']} ({r['evidence']}: {r['source']}) {r['ops']} op(s), "
                         f"{100 * r['flops_share']:.1f}% of FLOPs" for r in gap)))
        lines.append("  efficiency on the ANE: " + ("; ".join(
            f"{r['rule']} {r['ops']} op(s), {100 * r['flops_share']:.1f}% of FLOPs" for r in eff)
            if eff else "no layout rule broken") + " (predicted; MLComputePlan on a Mac confirms)")
        lines.append(f"  {'seg':>3}  {'target':<6} {'ops':>5} {'FLOPs':>10} {'share':>7}  boundary in -> out")
        for s in self.segments:
            io = f"{_names(s.inputs)} -> {_names(s.outputs)} ({_bytes(s.boundary_bytes)})"
            lines.append(f"  {s.index:>3}  {s.target:<6} {s.num_ops:>5} {_flops(s.flops):>10} "
                         f"{100 * s.flops_share:>6.1f}%  {io}")
        off = self.not_on_ane()
        lines.append(f"ops not on the ANE: {len(off)}" + ("" if off else " (every op is predicted on the ANE)"))
        for o in off:
            lines.append(f"  {o.name} ({o.op}) -> segment {o.segment} [{o.target}]: {o.reason}"
                         + (f"\n      at {o.source}" if o.source else ""))
        pc = self.precision_check
        if pc:
            lines.append(f"precision check ({pc['samples']} calibration sample(s), {pc['runtime']}, {len(pc['rounds'])} "
                         f"round(s)): {'PASS' if pc['passed'] else 'FAIL'}")
            for o in pc["outputs"]:
                lines.append(f"  {o['name']}: max_abs {o['max_abs']:.3g}, rel-L2 {o['rel_l2']:.3g}, nan/inf {o['nonfinite']}"
                             if isinstance(o["rel_l2"], float) else f"  {o['name']}: rel-L2 {o['rel_l2']}, nan/inf {o['nonfinite']}")
            isl, regions = self.precision_costs()
            for r in regions:
                lines.append(f"  rescaled region of {len(r['ops'])} op(s) ({', '.join(r['ops'][:3])}"
                             f"{', ...' if len(r['ops']) > 3 else ''}), {100 * r['flops_share']:.1f}% of FLOPs: "
                             + (f"{r['why']}; scale enters at {', '.join(r['scaled_at'][:4])}, undone at "
                                f"{', '.join(r['undone_at']) or 'the next weighted ops'}" if r["exponent"]
                                else f"not rescaled: {r['why_not']}"))
            for r in isl:
                lines.append(f"  fp32 island {r['name']} ({100 * r['flops_share']:.2f}% of FLOPs off the ANE): {r['reason']}")
            for name, why in pc.get("pruned", {}).items():
                lines.append(f"  pruned island {name} (the program passes without it): {why}")
            if pc.get("fallback"):
                lines.append(f"  FALLBACK: {pc['fallback']}")
            for name, why in pc["fp16_constants"].items():
                lines.append(f"  fp16 constant of {name}: {why}")
        lines += compression_lines(self.compression)
        return "\n".join(lines)

    text = __str__

    def to_json(self) -> dict:
        """JSON-ready dict: model, precision, residency (= predicted_ane_share, its former name),
        coreml_share, transitions (:attr:`transitions`), efficiency (:meth:`efficiency`), total_flops, segments, ops, precision_check (``mixed``: per-output results, rounds, islands and fp16
        constant fixes of the closed loop; else null), compression (by target, budget or recipe: the
        summary, per-output PSNR/rel-L2 and the per-layer table, :func:`compression_lines`; else null)."""
        return {"model": self.model, "precision": self.precision, "artifact": self.artifact,
                "residency": self.residency, "predicted_ane_share": self.residency, "coreml_share": self.coreml_share,
                "residency_by_evidence": {e: self.residency_under(e) for e in EVIDENCE},
                "residency_gap": self.residency_gap(), "transitions": self.transitions,
                "efficiency": self.efficiency(),
                "total_flops": self.total_flops, "segments": [asdict(s) for s in self.segments],
                "ops": [asdict(o) for o in self.ops], "precision_check": self.precision_check,
                "compression": self.compression}

    def to_html(self) -> str:
        """A standalone HTML page: summary, the op graph drawn (SVG) with segments coloured, the
        segment table and every op not on the ANE. Needs no network."""
        return render(self.to_json())

    def _repr_html_(self) -> str:  # Jupyter
        return self.to_html()

    def write_json(self, path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    def write_html(self, path) -> None:
        """Write :meth:`to_html` to ``path``."""
        Path(path).write_text(self.to_html())


def _flops(n: float) -> str:
    for unit, k in (("GFLOP", 1e9), ("MFLOP", 1e6), ("KFLOP", 1e3)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{int(n)} FLOP"


def _bytes(n: float) -> str:
    for unit, k in (("MB", 1e6), ("KB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def _names(items, limit: int = 3) -> str:
    items = [i.split(":")[0] for i in items]
    return ", ".join(items[:limit]) + (f", +{len(items) - limit}" if len(items) > limit else "") or "-"


def build_report(graph: Graph, segments, placement, *, model: str, precision: str, artifact: str = "",
                 precision_check: dict | None = None, compression: dict | None = None) -> PlacementReport:
    """Assemble a :class:`PlacementReport` from a graph, its segments
    (:func:`tlc.passes.partition.split`) and :class:`~tlc.passes.partition.Placement`."""
    total = sum(s.flops for s in segments)
    prod = {v: n.name for n in graph.nodes if n.op != "const" for v in n.outputs}
    seg_rows = []
    for s in segments:
        ins = tuple(f"{v.name}: {v.type}" for v in s.graph.inputs)
        outs = tuple(f"{v.name}: {v.type}" for v in s.graph.outputs)
        nbytes = sum(v.type.nbytes for v in s.graph.inputs) + sum(v.type.nbytes for v in s.graph.outputs)
        seg_rows.append(SegmentRow(s.index, s.target, s.num_ops, int(s.flops), (s.flops / total) if total else 0.0,
                                   ins, outs, int(nbytes)))
    ops = []
    for n in graph.nodes:
        if n.op == "const":
            continue
        seg = placement.segment[n.name]
        target = placement.target[n.name]
        why = ane_reason(n)
        on_ane = target == "ane" and why is None
        reason = "" if on_ane else (placement.reasons.get(n.name) or why or "")
        src = f"{n.loc.file}:{n.loc.line}" if n.loc and n.loc.file else ""
        eff = tuple(get_op(n.op).ane_efficiency([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs)
                    if on_ane else ())
        ins, outs = [v.type for v in n.inputs], [v.type for v in n.outputs]
        rules = tuple(dict.fromkeys(rule_of(r).id for r in get_op(n.op).ane_reasons(ins, outs, n.attrs))
                      if target == "ane" else ())
        ops.append(OpRow(n.name, n.op, seg, target, on_ane, reason, src, node_flops(n),
                         tuple(dict.fromkeys(prod[v] for v in n.inputs if v in prod)), eff, rules))
    return PlacementReport(model, precision, tuple(seg_rows), tuple(ops), int(total), artifact, precision_check,
                           compression)


def compression_lines(c: dict | None, layers: int = 12) -> list[str]:
    """Text of a compression entry (``PlacementReport.compression``): the request, average bits
    per weight, PSNR (coremltools' definition, dB) and rel-L2 per output of the compressed program
    on the calibration samples, the notes, and the ``layers`` least-PSNR units of the per-layer
    table (config, bits, single-unit PSNR)."""
    if not c:
        return []
    met = "" if c.get("met") is None else (" (target met)" if c["met"] else " (TARGET NOT MET)")
    out = [f"compression {c['request']}: {c['avg_bits']:.2f} bits/weight, PSNR {c['psnr']} dB{met}"]
    out += [f"  {k}: PSNR {v['psnr']} dB, rel-L2 {v['rel_l2']:.3g}" for k, v in c.get("outputs", {}).items()]
    out += [f"  note: {n}" for n in c.get("notes", [])]
    rows = sorted(c.get("layers", []), key=lambda r: (r.get("single_psnr") is None, r.get("single_psnr") or 0))[:layers]
    if rows:
        out.append(f"  {'unit':<48} {'config':<20} {'bits':>6} {'alone dB':>9}")
        out += [f"  {r['unit'][:48]:<48} {r['config']:<20} {r['bits']:>6.2f} {r.get('single_psnr') or '':>9}" for r in rows]
    return out
