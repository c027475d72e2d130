"""Partitioning: which ops go into Core ML (mlprogram) segments and which to tlc's fallback runtime.

Every non-``const`` node gets one of two labels: **coreml** (emitted into an ``.mlpackage``; Core
ML runs it on the ANE when the op's ``ane`` rule allows, else on the GPU/CPU itself) or
**fallback** (tlc's own runtime: the torch-device executor on a GPU, or the NumPy executor on the
CPU). Ops MIL cannot express (``emit_mil is None``) can only be fallback; every op can be
fallback (every op has a NumPy kernel).

Labels minimise an estimated latency (:class:`CostModel`): each node's compute time on its side
plus, for every tensor that crosses between the two sides, a transition charge and its bytes.
That is a two-label energy with pairwise terms, solved exactly as an s-t minimum cut
(networkx). Scalars (rank-0 values) are tied to their readers: Core ML inputs and outputs need
rank >= 1, so a scalar never crosses between segments. Segments are then the label-alternation phases of the DAG, placed as late as possible
(ALAP), so they are convex (no path leaves a segment and comes back) and the segment graph is
acyclic by construction; :func:`check_segments` re-checks both with networkx.

What the cost model decides: a cheap non-ANE island between ANE ops stays inside the mlprogram
(Core ML places it on GPU/CPU itself) instead of splitting the model into three; a small
ANE-capable island between fallback ops runs in the fallback segment instead of costing two
transitions; a fallback segment goes to the GPU when its work outweighs the host<->device copies
of its boundary tensors ("small work on CPU, large on GPU").

:func:`assign` is the one placement entry (the build plan calls it, :mod:`tlc.driver.plan`);
:func:`split` turns its :class:`Placement` into standalone segment graphs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import networkx as nx

from tlc.errors import InputError, IRError
from tlc.ir import Graph, Node, Value, verify
from tlc.ops import coreai_reason, get_op


TARGETS = ("ane", "gpu", "cpu")


@dataclass(frozen=True)
class CostModel:
    """Latency estimates in seconds, for placement decisions (not predictions of wall time).

    Rates are Apple M1 figures (Apple newsroom, "Apple unleashes M1", 2020-11-10: 11 TOPS Neural
    Engine, 2.6 TFLOPS GPU; LPDDR4X-4266 on a 128-bit bus = 68 GB/s) derated by ``utilization``
    (sustained throughput of real layers is a fraction of peak). ``cpu_flops`` is a NumPy/BLAS
    fp32 rate (order of what this project's NumPy executor sustains on a laptop core pair). The
    transition and per-op overheads are assumptions, stated as such: a Core ML ``predict`` call plus
    the host copy of its inputs/outputs (``segment_transition_s``), a GPU kernel launch, and tlc's
    per-op dispatch on CPU. ``measured``: ``{"cpu"|"gpu": {op: (overhead_s, s_per_flop)}}`` from a
    ``tlc profile`` file (:func:`tlc.driver.profile.cost_model`) replaces the fallback estimates for the op
    kinds it covers. A non-ANE op inside a Core ML program is charged its GPU compute time
    only: Core ML's internal hand-offs are taken as cheaper than tlc's dispatch, so a graph Core ML
    can run whole is never split (a single plain ``.mlpackage``). A profile measured by ``tlc profile`` is meant to replace them.
    """

    ane_flops: float = 11e12
    gpu_flops: float = 2.6e12
    cpu_flops: float = 1e11
    bandwidth: float = 68e9  # bytes/s
    utilization: float = 0.3
    segment_transition_s: float = 200e-6
    gpu_launch_s: float = 10e-6
    cpu_op_s: float = 5e-6
    host_device_bandwidth: float = 20e9  # bytes/s, host <-> discrete GPU copies (unified memory: higher)
    measured: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)

    def _time(self, flops: int, nbytes: int, rate: float) -> float:
        return flops / (rate * self.utilization) + nbytes / self.bandwidth

    def ane(self, flops: int, nbytes: int) -> float:
        """Seconds for an ANE-eligible op inside Core ML."""
        return self._time(flops, nbytes, self.ane_flops)

    def coreml_other(self, flops: int, nbytes: int) -> float:
        """Seconds for a non-ANE op that Core ML places on its GPU/CPU inside the program."""
        return self._time(flops, nbytes, self.gpu_flops)

    def _measured(self, backend: str, op: str | None, flops: int) -> float | None:
        line = self.measured.get(backend, {}).get(op) if op else None
        return None if line is None else line[0] + flops * line[1]

    def gpu(self, flops: int, nbytes: int, op: str | None = None) -> float:
        """Seconds for an op (kind ``op``) in tlc's GPU fallback runtime."""
        m = self._measured("gpu", op, flops)
        return m if m is not None else self._time(flops, nbytes, self.gpu_flops) + self.gpu_launch_s

    def cpu(self, flops: int, nbytes: int, op: str | None = None) -> float:
        """Seconds for an op (kind ``op``) in tlc's NumPy fallback runtime."""
        m = self._measured("cpu", op, flops)
        return m if m is not None else self._time(flops, nbytes, self.cpu_flops) + self.cpu_op_s

    def boundary(self, nbytes: int) -> float:
        """Seconds for one tensor crossing between Core ML and tlc's runtime."""
        return self.segment_transition_s + 2 * nbytes / self.bandwidth


DEFAULT_COST = CostModel()


@dataclass(frozen=True)
class Segment:
    """One piece of a partitioned graph, runnable on its own.

    ``index``: position in execution order; ``target``: ``"ane"`` (a Core ML mlprogram; its
    non-ANE ops run where Core ML puts them), ``"gpu"`` or ``"cpu"`` (tlc's fallback runtime);
    ``graph``: a standalone graph whose inputs are the values it reads from earlier segments or
    the model inputs and whose outputs (named by value name) are what later segments or the model
    outputs read; ``flops``: estimated FLOPs of its ops.
    """

    index: int
    target: str
    graph: Graph
    flops: int

    @property
    def num_ops(self) -> int:
        """Non-``const`` ops in the segment."""
        return self.graph.num_ops


@dataclass(frozen=True)
class Placement:
    """Where each op runs: ``segment`` and ``target`` per node name, and ``reasons``: for every op
    not predicted to run on the ANE, why (the op's ``ane`` rule, or the placement decision)."""

    segment: Mapping[str, int]
    target: Mapping[str, str]
    reasons: Mapping[str, str] = field(default_factory=dict)


def node_flops(n: Node) -> int:
    """FLOPs of one node: its op row's estimate (``OpDef.flops``, tlc.ops.table)."""
    return int(get_op(n.op).flops([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs))


def node_cost_inputs(n: Node) -> tuple[int, int]:
    """(FLOPs, bytes read + written) of one node, from its op row."""
    return node_flops(n), sum(v.type.nbytes for v in list(n.inputs) + list(n.outputs))


#: what an "ane" segment becomes: "coreml" (an mlprogram in an ``.mlpackage``) or "coreai" (a Core AI
#: ``.aimodel``, :mod:`tlc.backends.coreai.emit`)
PROGRAMS = ("coreml", "coreai")


def coreml_reason(n: Node, program: str = "coreml") -> str | None:
    """``None`` if ``n`` can be emitted into a Core ML program (``program="coreml"``) or a Core AI
    program (``"coreai"``), else why not: its op has no MIL form (``emit_mil is None``) or, for
    Core AI, no Core AI form (``emit_coreai is None``), or a tensor it reads or writes has rank > 5
    (Core ML rejects those: coremltools ``Program._check_invalid_tensor_rank``; what
    ``layout::fold_rank`` could not fold) or no elements (Core ML tensors have no zero-size
    dimensions). Core AI programs follow the same rank and size rules, so one graph partitions the
    same way for both formats except where an op lacks its Core AI form."""
    row = get_op(n.op)
    if program == "coreai" and row.emit_mil is not None and coreai_reason(n):
        return f"{coreai_reason(n)}; it runs in tlc's fallback runtime"
    if row.emit_mil is None:
        return row.ane([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs) or \
            f"MIL has no form of {n.op}; it runs in tlc's fallback runtime"
    for v in list(n.inputs) + list(n.outputs):
        if v.type.rank > 5:
            return (f"%{v.name} has rank {v.type.rank}: Core ML takes rank <= 5 and layout::fold_rank could not merge "
                    f"its axes; runs in tlc's fallback runtime")
        if v.type.is_static and v.type.size == 0:
            return f"%{v.name} has no elements ({v.type}): Core ML tensors cannot be empty; runs in tlc's fallback runtime"
    return None


def ane_reason(n: Node, program: str = "coreml") -> str | None:
    """``None`` if ``n`` is predicted to run on the ANE, else why not (``program``: see
    :func:`coreml_reason`)."""
    why = coreml_reason(n, program)
    if why:
        return why
    return get_op(n.op).ane([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs)


def _ns(seconds: float) -> int:
    return max(1, int(round(seconds * 1e9)))


def label_nodes(g: Graph, cost: CostModel = DEFAULT_COST, target: str = "ane",
                program: str = "coreml") -> dict[Node, bool]:
    """``{node: True if coreml}`` for every non-const node, minimising the cost model's total
    (an exact s-t minimum cut; see the module docstring). ``target="gpu"``/``"cpu"`` labels every
    node fallback. Raises :class:`InputError` for an unknown target."""
    if target not in TARGETS:
        raise InputError(f"target must be one of {TARGETS}, got {target!r}")
    nodes = [n for n in g.nodes if n.op != "const"]
    if target != "ane":
        return {n: False for n in nodes}
    prod = {v: n for n in nodes for v in n.outputs}
    G = nx.DiGraph()
    G.add_nodes_from(("S", "T"))
    for i, n in enumerate(nodes):
        flops, nbytes = node_cost_inputs(n)
        fb = min(cost.cpu(flops, nbytes, n.op), cost.gpu(flops, nbytes, n.op))
        if coreml_reason(n, program):
            G.add_edge(i, "T")  # no capacity = infinite: n can never be on the coreml side
            continue
        on_coreml = cost.ane(flops, nbytes) if ane_reason(n, program) is None else cost.coreml_other(flops, nbytes)
        G.add_edge("S", i, capacity=_ns(fb))  # paid when n is cut to the fallback side
        G.add_edge(i, "T", capacity=_ns(on_coreml))  # paid when n stays on the coreml side
    index = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        for v in set(n.inputs):
            p = prod.get(v)
            if p is None:
                continue
            if v.type.rank == 0:  # Core ML I/O needs rank >= 1: a scalar never crosses segments
                G.add_edge(index[p], index[n])
                G.add_edge(index[n], index[p])
                continue
            w = _ns(cost.boundary(v.type.nbytes))
            a, b = index[p], index[n]
            for u, t in ((a, b), (b, a)):
                cap = G.edges[u, t]["capacity"] + w if G.has_edge(u, t) else w
                G.add_edge(u, t, capacity=cap)
    _, (s_side, _) = nx.minimum_cut(G, "S", "T")
    return {n: index[n] in s_side for n in nodes}


def _phases(g: Graph, label: Mapping[Node, bool]) -> dict[Node, int]:
    """Alternation phase of each labelled node: coreml nodes get even phases, fallback nodes odd;
    a node's phase is at least each producer's (+1 when the labels differ). ASAP fixes the number
    of phases, then ALAP (from the outputs back) packs nodes late so independent branches share
    segments instead of opening new ones."""
    nodes = [n for n in g.nodes if n in label]
    prod = {v: n for n in nodes for v in n.outputs}
    fix = lambda ph, coreml: ph + ((ph % 2) != (0 if coreml else 1))  # noqa: E731  next phase of the right parity
    asap: dict[Node, int] = {}
    for n in nodes:
        ph = 0
        for v in n.inputs:
            p = prod.get(v)
            if p is not None:
                ph = max(ph, asap[p] + (label[p] != label[n]))
        asap[n] = fix(ph, label[n])
    if not asap:
        return {}
    top = max(asap.values())
    users: dict[Node, list[Node]] = {}
    for n in nodes:
        for v in n.inputs:
            if v in prod:
                users.setdefault(prod[v], []).append(n)
    alap: dict[Node, int] = {}
    for n in reversed(nodes):
        ph = top + 1
        for u in users.get(n, ()):
            ph = min(ph, alap[u] - (label[u] != label[n]))
        ph = min(ph, top)
        ph -= (ph % 2) != (0 if label[n] else 1)  # previous phase of the right parity
        alap[n] = max(ph, asap[n])
    return alap


def blockers(g: Graph, program: str = "coreml") -> list[Node]:
    """The nodes of ``g`` that cannot be in a Core ML (or Core AI) program (:func:`coreml_reason`), in order."""
    return [n for n in g.nodes if n.op != "const" and coreml_reason(n, program)]


def assign(g: Graph, cost: CostModel = DEFAULT_COST, target: str = "ane", fallback: bool = True,
           program: str = "coreml") -> Placement:
    """Label, group into segments and pick each fallback segment's device. See the module docstring.
    ``fallback=False`` puts every op Core ML can hold into Core ML regardless of cost (the caller
    rejects the graph if :func:`blockers` is not empty). ``program="coreai"`` partitions for Core
    AI segments (:func:`coreml_reason`). Raises :class:`InputError` for an unknown program."""
    if program not in PROGRAMS:
        raise InputError(f"program must be one of {PROGRAMS}, got {program!r}")
    if fallback:
        label = label_nodes(g, cost, target, program)
    else:
        label = {n: coreml_reason(n, program) is None for n in g.nodes if n.op != "const"}
    phase = _phases(g, label)
    order = sorted(set(phase.values()))
    seg_of = {n: order.index(ph) for n, ph in phase.items()}
    seg_target: dict[int, str] = {}
    for s, ph in enumerate(order):
        members = [n for n in phase if phase[n] == ph]
        if ph % 2 == 0:
            seg_target[s] = "ane"
        elif target in ("gpu", "cpu"):
            seg_target[s] = target
        else:
            seg_target[s] = _fallback_device(members, cost)
    reasons: dict[str, str] = {}
    for n, coreml in label.items():
        why = ane_reason(n, program)
        if target != "ane":
            why = f"target={target}: every op runs in tlc's fallback runtime" + (f" (and: {why})" if why else "")
        elif not coreml and why is None:
            why = ("placed in tlc's fallback runtime: cheaper than two Core ML transitions for this small op "
                   "between fallback ops")
        if why:
            reasons[n.name] = why
    return Placement({n.name: s for n, s in seg_of.items()}, {n.name: seg_target[s] for n, s in seg_of.items()},
                     reasons)


def _fallback_device(members: list[Node], cost: CostModel) -> str:
    if any(get_op(n.op).host_only for n in members):
        return "cpu"  # an op with no torch kernel (data-dependent shapes, ...) runs on the host
    inside = {v for n in members for v in n.outputs}
    boundary = {v for n in members for v in n.inputs if v not in inside}
    boundary |= inside  # outputs may leave; an upper bound on what is copied back
    copy_s = 2 * sum(v.type.nbytes for v in boundary) / cost.host_device_bandwidth
    cpu = gpu = 0.0
    for n in members:
        flops, nbytes = node_cost_inputs(n)
        cpu += cost.cpu(flops, nbytes, n.op)
        gpu += cost.gpu(flops, nbytes, n.op)
    return "gpu" if gpu + copy_s < cpu else "cpu"


def split(g: Graph, placement: Placement) -> list[Segment]:
    """Standalone segment graphs in execution order (see :class:`Segment`). ``const`` nodes go
    with every segment that reads them. Raises :class:`IRError` if a segment graph breaks the IR
    contract or the segments are not a valid (convex, acyclic) split (a tlc bug)."""
    nseg = max(placement.segment.values(), default=-1) + 1
    members: list[list[Node]] = [[] for _ in range(nseg)]
    consts = {n.out: n for n in g.nodes if n.op == "const"}
    seg_of_value: dict[Value, int] = {}
    for n in g.nodes:
        if n.op == "const":
            continue
        s = placement.segment[n.name]
        members[s].append(n)
        for v in n.outputs:
            seg_of_value[v] = s
    needed_later: set[Value] = set(g.outputs)
    for n in g.nodes:
        if n.op != "const":
            for v in n.inputs:
                if v in seg_of_value and seg_of_value[v] != placement.segment[n.name]:
                    needed_later.add(v)
    segments = []
    for s, nodes in enumerate(members):
        if not nodes:
            raise IRError(f"segment {s} of the placement is empty")
        inside = {v for n in nodes for v in n.outputs}
        ins: list[Value] = []
        used_consts: list[Node] = []
        seen: set[Value] = set()
        for n in nodes:
            for v in n.inputs:
                if v in inside or v in seen:
                    continue
                seen.add(v)
                if v in consts:
                    used_consts.append(consts[v])
                else:
                    ins.append(v)
        outs = [v for n in nodes for v in n.outputs if v in needed_later]
        sg = Graph(tuple(ins), tuple(used_consts + nodes), tuple(outs), tuple(v.name for v in outs),
                   {"tlc.segment": s})
        verify(sg)
        flops = sum(node_flops(n) for n in nodes)
        segments.append(Segment(s, placement.target[nodes[0].name], sg, flops))
    check_segments(g, segments)
    return segments


def check_segments(g: Graph, segments: list[Segment]) -> None:
    """Raise :class:`IRError` unless every segment reads only model inputs and outputs of earlier
    segments (so execution order is valid and the segment graph is acyclic, checked with networkx)
    and every model output is produced by some segment."""
    avail = {v for v in g.inputs}
    dag = nx.DiGraph()
    made_by: dict[Value, int] = {}
    for seg in segments:
        dag.add_node(seg.index)
        for v in seg.graph.inputs:
            if v not in avail:
                raise IRError(f"segment {seg.index} reads %{v.name} before any earlier segment produces it")
            if v in made_by:
                dag.add_edge(made_by[v], seg.index)
        for v in seg.graph.outputs:
            made_by[v] = seg.index
            avail.add(v)
    if not nx.is_directed_acyclic_graph(dag):
        raise IRError("segment graph has a cycle")
    missing = [n for n, v in zip(g.output_names, g.outputs) if v not in avail]
    if missing:
        raise IRError(f"model outputs {missing} are not produced by any segment")
