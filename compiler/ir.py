"""tlc's intermediate representation: typed values, immutable nodes, topologically ordered graphs.

The contract (../shared/design.md, "The IR contract"):

* One node type (:class:`Node`), immutable once built. A :class:`Graph` is its inputs, its nodes in
  topological order and its outputs (with user-facing output names).
* Every :class:`Value` carries a :class:`TensorType`: a dtype (``"fp32"``, ``"fp16"``, ``"int32"``,
  ``"bool"``, ``"complex64"``) and a shape (a tuple of non-negative ints; ``()`` is a scalar). A
  dimension may be *symbolic* — a string naming a data-dependent size such as ``"u0"`` (torch's
  unbacked SymInts, from ``nonzero`` or boolean-mask indexing) — but only on values of fallback ops
  (:mod:`tlc.ops.fallback`); every op that can go to Core ML has static shapes.
* Op semantics live in one table row per op (:mod:`tlc.ops`); the graph only names the op.
* Nodes carry the user's :class:`SourceLoc` so every error and report can point at the line of
  Python that produced the node.

Graphs are built with :class:`GraphBuilder`, which runs each op's ``infer`` rule as nodes are
added, so a graph is well typed by construction; :func:`verify` re-checks that contract.
"""
from __future__ import annotations

import itertools
import types
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .dtypes import DTYPES, TensorType, dtype_of  # noqa: F401  (the IR's value type, re-exported)
from .errors import IRError

@dataclass(frozen=True)
class SourceLoc:
    """Where a node came from: user file, line, the code on that line, and the nn.Module path."""

    file: str | None = None
    line: int | None = None
    code: str | None = None
    module: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.module:
            parts.append(f"in module '{self.module}'")
        s = " ".join(parts) or "<unknown location>"
        if self.code:
            s += f"\n    {self.code.strip()}"
        return s


@dataclass(frozen=True, eq=False)
class Value:
    """An SSA value: a unique ``name`` and its :class:`TensorType`. Compared by identity."""

    name: str
    type: TensorType

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


def _freeze(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        v = v.view()
        v.flags.writeable = False
        return v
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, tuple):
        return tuple(_freeze(x) for x in v)
    return v


@dataclass(frozen=True, eq=False)
class Node:
    """One operation: ``op`` (a key of :data:`tlc.ops.OPS`), input values, attributes, output values.

    ``attrs`` is a read-only mapping of Python scalars, strings, tuples, or read-only NumPy arrays
    (the ``val`` of a ``const``). ``name`` is unique in its graph and carries into emitted MIL op
    names; ``loc`` is the user's source location.
    """

    op: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: Mapping[str, Any]
    name: str
    loc: SourceLoc | None = None

    @property
    def out(self) -> Value:
        """The single output (raises :class:`IRError` for multi-output nodes)."""
        if len(self.outputs) != 1:
            raise IRError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def __repr__(self) -> str:
        return format_node(self)


@dataclass(frozen=True, eq=False)
class Graph:
    """A typed dataflow graph.

    ``inputs``: graph input values (their names are the user-facing input names);
    ``nodes``: topologically ordered; ``outputs``: values returned, named by ``output_names``.
    ``meta`` holds free-form facts about the build (source file, tlc version, ...).
    """

    inputs: tuple[Value, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Value, ...]
    output_names: tuple[str, ...]
    meta: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))

    def producers(self) -> dict[Value, Node]:
        """Map each node-produced value to its node."""
        return {v: n for n in self.nodes for v in n.outputs}

    def users(self) -> dict[Value, list[Node]]:
        """Map each value to the nodes that read it (in graph order)."""
        u: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                u.setdefault(v, []).append(n)
        return u

    def use_counts(self) -> dict[Value, int]:
        """Number of node inputs reading each value (graph outputs not counted)."""
        n_uses: dict[Value, int] = {}
        for n in self.nodes:
            for v in n.inputs:
                n_uses[v] = n_uses.get(v, 0) + 1
        return n_uses

    def op_histogram(self, include_const: bool = False) -> dict[str, int]:
        """Count of nodes per op name, most frequent first."""
        h: dict[str, int] = {}
        for n in self.nodes:
            if include_const or n.op != "const":
                h[n.op] = h.get(n.op, 0) + 1
        return dict(sorted(h.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def num_ops(self) -> int:
        """Number of non-``const`` nodes."""
        return sum(1 for n in self.nodes if n.op != "const")

    def weight_bytes(self) -> int:
        """Total bytes held in ``const`` nodes."""
        return sum(n.out.type.nbytes for n in self.nodes if n.op == "const")

    def __str__(self) -> str:
        return format_graph(self)


# ----------------------------------------------------------------------------------------- build


class GraphBuilder:
    """Builds a :class:`Graph` node by node, running each op's ``infer`` rule as it goes.

    Raises :class:`IRError` (naming the op and source location) when an op is unknown or its
    inputs do not type-check.
    """

    def __init__(self, meta: Mapping[str, Any] | None = None):
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._counter = itertools.count()
        self.meta = dict(meta or {})

    def unique(self, base: str) -> str:
        """A name not yet used in this graph, derived from ``base`` (MIL-safe characters only)."""
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in base) or "v"
        if base[0].isdigit():
            base = "v_" + base
        name = base
        while name in self._names:
            name = f"{base}_{next(self._counter)}"
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        """Declare a graph input named ``name`` (must be a unique identifier; else :class:`IRError`)."""
        v = Value(self.unique(name), type)
        if v.name != name:
            raise IRError(f"graph input name {name!r} is not unique or not a valid identifier")
        self.inputs.append(v)
        return v

    def const(self, val: np.ndarray, name: str = "const", loc: SourceLoc | None = None) -> Value:
        """Add a ``const`` node holding ``val`` (converted to an IR dtype: float64 -> fp32,
        int64 -> int32, complex128 -> complex64)."""
        val = np.asarray(val)
        if val.dtype == np.float64:
            val = val.astype(np.float32)
        elif val.dtype == np.complex128:
            val = val.astype(np.complex64)
        elif val.dtype in (np.int64, np.int16, np.int8, np.uint8):
            val = val.astype(np.int32)
        return self.add("const", (), {"val": val}, name=name, loc=loc).outputs[0]

    def add(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: Mapping[str, Any] | None = None,
        name: str | None = None,
        loc: SourceLoc | None = None,
    ) -> Node:
        """Append a node; its output types come from the op's ``infer`` rule."""
        from .ops import get_op  # ops import ir; resolve lazily

        opdef = get_op(op, loc=loc)
        attrs = {k: _freeze(v) for k, v in (attrs or {}).items()}
        in_types = [v.type for v in inputs]
        try:
            out_types = opdef.infer(in_types, attrs)
        except IRError as e:
            raise IRError(f"{op}: {e.args[0]}", loc=loc) from None
        nname = self.unique(name or op)
        outs = tuple(
            Value(nname if i == 0 else self.unique(f"{nname}_{i}"), t) for i, t in enumerate(out_types)
        )
        node = Node(op, tuple(inputs), outs, types.MappingProxyType(attrs), nname, loc)
        self.nodes.append(node)
        return node

    def build(self, outputs: Sequence[Value], output_names: Sequence[str]) -> Graph:
        """Finish: the graph returning ``outputs`` under ``output_names``, verified
        (:func:`verify` raises :class:`IRError` if the contract is broken)."""
        g = Graph(
            tuple(self.inputs),
            tuple(self.nodes),
            tuple(outputs),
            tuple(output_names),
            types.MappingProxyType(dict(self.meta)),
        )
        verify(g)
        return g


def replace(g: Graph, **changes) -> Graph:
    """A copy of ``g`` with some fields replaced (``nodes``, ``outputs``, ``meta``, ...)."""
    fields = dict(
        inputs=g.inputs, nodes=g.nodes, outputs=g.outputs, output_names=g.output_names, meta=g.meta
    )
    fields.update(changes)
    if not isinstance(fields["meta"], types.MappingProxyType):
        fields["meta"] = types.MappingProxyType(dict(fields["meta"]))
    return Graph(**fields)


# ---------------------------------------------------------------------------------------- verify


def verify(g: Graph) -> None:
    """Check the IR contract; raises :class:`IRError` naming the offending node.

    Checks: unique value names; every input is defined before use (topological order, no
    dangling values); each node's output types equal its op's ``infer`` rule; outputs are defined
    and their names unique.
    """
    from .ops import get_op

    defined: set[Value] = set()
    names: set[str] = set()
    for v in g.inputs:
        if v.name in names:
            raise IRError(f"duplicate graph input name {v.name!r}")
        names.add(v.name)
        defined.add(v)
    for n in g.nodes:
        for i, v in enumerate(n.inputs):
            if v not in defined:
                raise IRError(
                    f"node {n.name} ({n.op}) input {i} %{v.name} is used before it is defined "
                    f"(not topologically ordered, or dangling)",
                    loc=n.loc,
                    context=node_context(g, n),
                )
        try:
            expect = get_op(n.op).infer([v.type for v in n.inputs], n.attrs)
        except IRError as e:
            raise IRError(f"node {n.name} ({n.op}): {e.args[0]}", loc=n.loc, context=node_context(g, n)) from None
        got = [v.type for v in n.outputs]
        if list(expect) != got:
            raise IRError(
                f"node {n.name} ({n.op}) output types {', '.join(map(str, got))} differ from its "
                f"infer rule {', '.join(map(str, expect))}",
                loc=n.loc,
                context=node_context(g, n),
            )
        for v in n.outputs:
            if v.name in names:
                raise IRError(f"value name %{v.name} is defined twice", loc=n.loc)
            names.add(v.name)
            defined.add(v)
    if len(g.outputs) != len(g.output_names) or len(set(g.output_names)) != len(g.output_names):
        raise IRError(f"output names {g.output_names} must be unique, one per output")
    for v in g.outputs:
        if v not in defined:
            raise IRError(f"graph output %{v.name} is not defined by any node or input")


def node_context(g: Graph, node: Node, radius: int = 2, arrays: Sequence | None = None) -> str:
    """The IR text around ``node`` for an error message: ``radius`` nodes either side, the node
    itself marked ``>>``, and — when ``arrays`` (the run-time inputs it got) are given — one line
    with their dtypes and shapes. Used by the verifier, the executors' kernel-failure messages and
    MIL emission errors (one format for every error that points into a graph); a node not in
    ``g`` gives its own line only."""
    idx = next((i for i, n in enumerate(g.nodes) if n is node), None)
    if idx is None:
        lines = [f">> {format_node(node)}"]
    else:
        lines = [f"{'>>' if i == idx else '  '} {format_node(g.nodes[i])}"
                 for i in range(max(0, idx - radius), min(len(g.nodes), idx + radius + 1))]
    if arrays is not None:
        got = ", ".join(f"%{v.name}: {getattr(a, 'dtype', type(a).__name__)}{list(getattr(a, 'shape', ()))}"
                        for v, a in zip(node.inputs, arrays))
        lines.append(f"   inputs at run time: {got}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- print


def _fmt_attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        if v.size <= 4:
            return f"{dtype_of(v) if v.dtype in DTYPES.values() else v.dtype}{list(v.shape)}={v.tolist()}"
        return f"<{v.dtype}{list(v.shape)}>"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v)


def format_node(n: Node) -> str:
    """One line of IR text: ``%out: fp32[1,8] = op(%a, %b, attr=...)``."""
    outs = ", ".join(f"%{v.name}: {v.type}" for v in n.outputs)
    args = [f"%{v.name}" for v in n.inputs]
    args += [f"{k}={_fmt_attr(v)}" for k, v in n.attrs.items()]
    return f"{outs} = {n.op}({', '.join(args)})"


def format_graph(g: Graph, show_loc: bool = False) -> str:
    """Readable text form of a graph (one node per line)."""
    ins = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    lines = [f"graph({ins}) {{"]
    for n in g.nodes:
        line = "  " + format_node(n)
        if show_loc and n.loc and n.loc.file:
            line += f"    # {n.loc.file.rsplit('/', 1)[-1]}:{n.loc.line}"
        lines.append(line)
    outs = ", ".join(f"{name}=%{v.name}" for name, v in zip(g.output_names, g.outputs))
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines)
