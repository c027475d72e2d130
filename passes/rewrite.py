"""A bounded rewrite engine for declarative patterns over tlc's IR.

A :class:`Pat` describes a node by op name(s), its input patterns, an optional predicate, and a
binding name. A rule is ``(pattern, replace)``: ``replace(m: Match) -> Value | None`` builds the
replacement with :meth:`Match.add` / :meth:`Match.const` (new nodes are placed just before the
matched root, so topological order holds) or returns ``None`` to decline. :func:`rewrite` applies
the rules until nothing changes, at most ``max_iters`` sweeps; running out of sweeps raises
:class:`~tlc.errors.IRError` naming the rules that were still firing (a rewrite that never settles
is a bug, not something to hide).

Use-def discipline: :meth:`Match.single_use` tells whether a bound intermediate has exactly one
reader and is not a graph output — fusions must check it before absorbing a value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tlc.errors import IRError
from tlc.ir import Graph, GraphBuilder, Node, SourceLoc, Value, replace


@dataclass(frozen=True)
class Pat:
    """Pattern for the node producing a value.

    ``op``: op name, tuple of names, or ``None`` for any value (graph inputs included);
    ``inputs``: patterns for the node's inputs (positional; ``None`` = don't care; a shorter
    tuple matches a prefix); ``where(node) -> bool``: extra condition; ``name``: bind the node
    (and ``name + "_v"`` the value) in the match.
    """

    op: str | tuple[str, ...] | None = None
    inputs: tuple["Pat | None", ...] | None = None
    name: str | None = None
    where: Callable[[Node], bool] | None = None


def const(name: str | None = None, where: Callable[[np.ndarray], bool] | None = None) -> Pat:
    """Pattern for a ``const`` node; ``where`` tests its value."""
    return Pat("const", name=name, where=(lambda n: where(n.attrs["val"])) if where else None)


class Match:
    """Bindings of one match plus what a replacement may use."""

    def __init__(self, root: Node, nodes: dict[str, Node], values: dict[str, Value], ctx: "_Ctx"):
        self.root = root
        self.nodes = nodes
        self.values = values
        self._ctx = ctx

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def val(self, name: str) -> Value:
        """The value a pattern named ``name`` matched."""
        return self.values[name]

    def const_val(self, name: str) -> np.ndarray | None:
        """The constant array behind a bound value, or None if it is not a ``const``."""
        n = self.nodes.get(name)
        return n.attrs["val"] if n is not None and n.op == "const" else None

    def producer(self, v: Value) -> Node | None:
        """The node computing ``v`` (None for a graph input)."""
        return self._ctx.producer.get(v)

    def single_use(self, name: str) -> bool:
        """True if the value bound to ``name`` has exactly one reader and is not a graph output."""
        v = self.values[name]
        return self._ctx.uses.get(v, 0) == 1 and v not in self._ctx.outputs

    def add(self, op: str, inputs: Sequence[Value], attrs: dict | None = None, name: str | None = None,
            loc: SourceLoc | None = None) -> Value:
        """Add a node (typed by its infer rule) placed before the root; returns its first output."""
        return self._ctx.add(op, inputs, attrs or {}, name or self.root.name, loc or self.root.loc).outputs[0]

    def const(self, val: np.ndarray, name: str) -> Value:
        """Add a ``const`` node holding ``val`` (an IR dtype array) before the root."""
        return self._ctx.add("const", [], {"val": np.asarray(val)}, name, self.root.loc).outputs[0]


Rule = tuple[Pat, Callable[[Match], "Value | None"]]


class _Ctx:
    def __init__(self, g: Graph):
        self.g = g
        self.producer = g.producers()
        self.uses = g.use_counts()
        self.outputs = set(g.outputs)
        self.names = {v.name for v in g.inputs} | {v.name for n in g.nodes for v in n.outputs}
        self.pending: list[Node] = []
        self._builder = GraphBuilder()
        self._builder._names = self.names

    def add(self, op, inputs, attrs, name, loc) -> Node:
        b = self._builder
        b.nodes = []
        node = b.add(op, list(inputs), attrs, name=name, loc=loc)
        self.pending.append(node)
        return node


def _match(p: Pat | None, v: Value, ctx: _Ctx, nodes: dict, values: dict) -> bool:
    if p is None:
        return True
    n = ctx.producer.get(v)
    if p.op is not None:
        if n is None:
            return False
        ops = (p.op,) if isinstance(p.op, str) else p.op
        if n.op not in ops:
            return False
    if p.where is not None and (n is None or not p.where(n)):
        return False
    if p.inputs is not None:
        if n is None or len(p.inputs) > len(n.inputs):
            return False
        for sub, iv in zip(p.inputs, n.inputs):
            if not _match(sub, iv, ctx, nodes, values):
                return False
    if p.name is not None:
        if p.name in values and values[p.name] is not v:
            return False
        values[p.name] = v
        if n is not None:
            nodes[p.name] = n
    return True


def rewrite_once(g: Graph, rules: Sequence[Rule]) -> tuple[Graph, list[str]]:
    """One sweep: each node is tried as the root of each rule in order; a node consumed by an
    earlier match in the sweep is not reused. Returns the new graph and the names of the rules that
    fired."""
    ctx = _Ctx(g)
    subst: dict[Value, Value] = {}
    inserted: dict[int, list[Node]] = {}
    consumed: set[int] = set()
    fired: list[str] = []
    for idx, node in enumerate(g.nodes):
        if id(node) in consumed or len(node.outputs) != 1:
            continue
        for pat, fn in rules:
            nodes: dict[str, Node] = {}
            values: dict[str, Value] = {}
            if not _match(pat, node.outputs[0], ctx, nodes, values):
                continue
            if any(id(n) in consumed for n in nodes.values()):
                continue
            ctx.pending = []
            new = fn(Match(node, nodes, values, ctx))
            if new is None:
                continue
            if new.type != node.outputs[0].type:
                raise IRError(f"rewrite {getattr(fn, '__name__', fn)} changed the type of %{node.outputs[0].name} "
                              f"from {node.outputs[0].type} to {new.type}", loc=node.loc)
            subst[node.outputs[0]] = new
            inserted[idx] = list(ctx.pending)
            consumed.update(id(n) for n in nodes.values() if n is not node and n.op != "const")
            fired.append(getattr(fn, "__name__", "rule"))
            break
    if not fired:
        return g, []

    def s(v: Value) -> Value:
        while v in subst:
            v = subst[v]
        return v

    out_nodes: list[Node] = []
    for idx, node in enumerate(g.nodes):
        for nn in inserted.get(idx, ()):
            out_nodes.append(_with_inputs(nn, [s(v) for v in nn.inputs]))
        if node.outputs[0] in subst if node.outputs else False:
            continue  # replaced; its now-dead inputs go with DCE
        out_nodes.append(_with_inputs(node, [s(v) for v in node.inputs]))
    from tlc.passes import dce

    return dce(replace(g, nodes=tuple(out_nodes), outputs=tuple(s(v) for v in g.outputs))), fired


def _with_inputs(n: Node, inputs: list[Value]) -> Node:
    if all(a is b for a, b in zip(inputs, n.inputs)):
        return n
    return Node(n.op, tuple(inputs), n.outputs, n.attrs, n.name, n.loc)


def rewrite(g: Graph, rules: Sequence[Rule], max_iters: int = 16) -> Graph:
    """Apply ``rules`` to a fixed point (at most ``max_iters`` sweeps; raises :class:`IRError`
    if they are still firing after that)."""
    for _ in range(max_iters):
        g, fired = rewrite_once(g, rules)
        if not fired:
            return g
    raise IRError(f"rewrite did not settle after {max_iters} sweeps; still firing: {sorted(set(fired))}")


__all__ = ["Pat", "const", "Match", "Rule", "rewrite", "rewrite_once"]
