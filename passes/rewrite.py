"""A bounded rewrite engine and the one pattern language for tlc's IR passes.

A :class:`Pat` describes the node producing a value: op name(s), input patterns (positional, or
in either order for a two-input op with ``commutative=True``), a predicate on the node, and a
binding name; :func:`any_of` tries alternatives, :func:`const` and :func:`scalar` match constants
by value. Matching backtracks: every way a pattern can match is tried in order until the rule's
replacement accepts one.

A rule is ``(pattern, replace)``: ``replace(m: Match) -> Value | None`` builds the replacement
with :meth:`Match.add` / :meth:`Match.const` (new nodes are placed just before the matched root,
so topological order holds) or returns ``None`` to decline. :func:`rewrite` applies the rules
until nothing changes, at most ``max_iters`` sweeps; running out of sweeps raises
:class:`~tlc.errors.IRError` naming the rules that were still firing (a rewrite that never settles
is a bug, not something to hide).

Use-def discipline: everything a rule may ask about the graph — :meth:`Match.producer`,
:meth:`Match.uses`, :meth:`Match.single_use`, :meth:`Match.private` — is computed from the graph
of the current sweep, never captured by the rule, so a rule that fires only after another rule
changed the graph (a later sweep) sees the graph as it is then. Fusions must check
``single_use`` / ``private`` before absorbing a value. Within one sweep a node absorbed by one
match (bound, or inside a region ``private`` approved) is not absorbed again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from tlc.errors import IRError
from tlc.ir import Graph, GraphBuilder, Node, SourceLoc, Value, replace

#: How many alternative bindings of one root a rule is offered before the engine moves on
#: (either-order operands and alternatives multiply; real patterns need a handful).
MAX_BINDINGS = 64


@dataclass(frozen=True)
class Pat:
    """Pattern for the node producing a value.

    ``op``: op name, tuple of names, or ``None`` for any value (graph inputs included);
    ``inputs``: patterns for the node's inputs (positional; ``None`` = don't care; a shorter
    tuple matches a prefix); ``name``: bind the value (and its producer node) in the match — a
    name used twice must bind the same value; ``where(node) -> bool``: extra condition on the
    producer; ``commutative``: a two-input node's inputs may match in either order;
    ``alts``: alternatives (see :func:`any_of`; ``op``/``inputs``/``where`` are then unused).
    """

    op: str | tuple[str, ...] | None = None
    inputs: tuple["Pat | None", ...] | None = None
    name: str | None = None
    where: Callable[[Node], bool] | None = None
    commutative: bool = False
    alts: tuple["Pat", ...] | None = None


def any_of(*alts: Pat, name: str | None = None) -> Pat:
    """A pattern matching any of ``alts`` (tried in order); ``name`` binds whichever matched."""
    return Pat(name=name, alts=tuple(alts))


def either(op: str | tuple[str, ...], a: Pat | None, b: Pat | None, name: str | None = None,
           where: Callable[[Node], bool] | None = None) -> Pat:
    """``op(a, b)`` or ``op(b, a)``: a binary op whose operands may come in either order."""
    return Pat(op, (a, b), name=name, where=where, commutative=True)


def const(name: str | None = None, where: Callable[[np.ndarray], bool] | None = None) -> Pat:
    """Pattern for a ``const`` node; ``where`` tests its value (a NumPy array)."""
    return Pat("const", name=name, where=(lambda n: bool(where(n.attrs["val"]))) if where else None)


def scalar(value: float | None = None, name: str | None = None, rtol: float = 1e-4) -> Pat:
    """A ``const`` whose every element equals ``value`` within ``rtol`` (relative); with
    ``value=None``, any one-element constant (read it with :meth:`Match.scalar`)."""
    if value is None:
        return const(name, lambda c: c.size == 1)

    def close(c: np.ndarray) -> bool:
        return c.size > 0 and bool(np.allclose(np.asarray(c, np.float64), value, rtol=rtol, atol=0))

    return const(name, close)


class Match:
    """Bindings of one match plus what a replacement may ask of the current sweep's graph."""

    def __init__(self, root: Node, values: dict[str, Value], ctx: "_Ctx"):
        self.root = root
        self.values = values
        self.nodes = {k: ctx.producer[v] for k, v in values.items() if v in ctx.producer}
        self._ctx = ctx
        self.region: set[Node] = set(self.nodes.values())

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def val(self, name: str) -> Value:
        """The value a pattern named ``name`` matched."""
        return self.values[name]

    def const_val(self, name: str) -> np.ndarray | None:
        """The constant array behind a bound value, or None if it is not a ``const``."""
        n = self.nodes.get(name)
        return n.attrs["val"] if n is not None and n.op == "const" else None

    def scalar(self, name: str) -> float | None:
        """The bound value as a Python float if it is a one-element ``const``, else None."""
        c = self.const_val(name)
        return float(np.asarray(c).reshape(())) if c is not None and c.size == 1 else None

    def producer(self, v: Value) -> Node | None:
        """The node computing ``v`` in this sweep's graph (None for a graph input)."""
        return self._ctx.producer.get(v)

    def uses(self, v: Value) -> int:
        """How many node inputs read ``v`` in this sweep's graph (graph outputs not counted)."""
        return self._ctx.uses.get(v, 0)

    def single_use(self, name: str) -> bool:
        """True if the value bound to ``name`` has exactly one reader and is not a graph output."""
        v = self.values[name]
        return self._ctx.uses.get(v, 0) == 1 and v not in self._ctx.outputs

    def private(self, *stop: Value) -> bool:
        """True if every value computed between the ``stop`` values and the root is read only
        inside that region and is not a graph output, and no node of the region was absorbed by
        an earlier match of this sweep — so replacing the root leaves nothing dangling. On True
        the region counts as absorbed by this match."""
        prod, stops = self._ctx.producer, set(stop)
        seen: set[Value] = set()
        inside: list[Value] = []
        stack = [self.root.outputs[0]]
        while stack:
            v = stack.pop()
            if v in stops or v in seen:
                continue
            seen.add(v)
            n = prod.get(v)
            if n is None or n.op == "const":
                continue
            inside.append(v)
            stack.extend(n.inputs)
        reads = dict.fromkeys(inside, 0)
        for v in inside:
            for i in prod[v].inputs:
                if i in reads:
                    reads[i] += 1
        root = self.root.outputs[0]
        region = {prod[v] for v in inside}
        if any(id(n) in self._ctx.consumed for n in region if n is not self.root):
            return False
        if not all(v is root or (reads[v] == self._ctx.uses.get(v, 0) and v not in self._ctx.outputs)
                   for v in inside):
            return False
        self.region |= region
        return True

    def add(self, op: str, inputs: Sequence[Value], attrs: dict | None = None, name: str | None = None,
            loc: SourceLoc | None = None) -> Value:
        """Add a node (typed by its infer rule) placed before the root; returns its first output."""
        return self._ctx.add(op, inputs, attrs or {}, name or self.root.name, loc or self.root.loc).outputs[0]

    def const(self, val: np.ndarray, name: str) -> Value:
        """Add a ``const`` node holding ``val`` (an IR dtype array) before the root."""
        return self._ctx.add("const", [], {"val": np.asarray(val)}, name, self.root.loc).outputs[0]


Rule = tuple[Pat, Callable[[Match], "Value | None"]]


class _Ctx:
    """One sweep's view of the graph: producers, use counts, outputs, absorbed nodes."""

    def __init__(self, g: Graph):
        self.g = g
        self.producer = g.producers()
        self.uses = g.use_counts()
        self.outputs = set(g.outputs)
        self.consumed: set[int] = set()
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


def _matches(p: Pat | None, v: Value, prod: dict, b: dict) -> Iterator[dict]:
    """Every binding (extending ``b``) under which ``p`` matches ``v``, in pattern order."""
    if p is None:
        yield b
        return
    if p.name is not None and p.name in b and b[p.name] is not v:
        return
    if p.alts is not None:
        for alt in p.alts:
            for b2 in _matches(alt, v, prod, b):
                yield b2 if p.name is None else {**b2, p.name: v}
        return
    n = prod.get(v)
    if p.op is not None and (n is None or n.op not in ((p.op,) if isinstance(p.op, str) else p.op)):
        return
    if p.where is not None and (n is None or not p.where(n)):
        return
    if p.name is not None and p.name not in b:
        b = {**b, p.name: v}
    if p.inputs is None:
        yield b
        return
    if n is None or len(p.inputs) > len(n.inputs):
        return
    yield from _seq(p.inputs, n.inputs, prod, b)
    if p.commutative and len(n.inputs) == 2 and n.inputs[0] is not n.inputs[1]:
        yield from _seq(p.inputs, n.inputs[::-1], prod, b)


def _seq(pats, vals, prod, b) -> Iterator[dict]:
    if not pats:
        yield b
        return
    for b2 in _matches(pats[0], vals[0], prod, b):
        yield from _seq(pats[1:], vals[1:], prod, b2)


def matches(p: Pat, v: Value, g: Graph) -> list[dict[str, Value]]:
    """Every binding under which ``p`` matches ``v`` in ``g`` (for tests and tools)."""
    return list(_matches(p, v, g.producers(), {}))


def rewrite_once(g: Graph, rules: Sequence[Rule]) -> tuple[Graph, list[str]]:
    """One sweep: each node is tried as the root of each rule in order (each binding in turn,
    up to :data:`MAX_BINDINGS`); a node absorbed by an earlier match in the sweep is not
    reused. Returns the new graph and the names of the rules that fired."""
    ctx = _Ctx(g)
    subst: dict[Value, Value] = {}
    inserted: dict[int, list[Node]] = {}
    fired: list[str] = []
    for idx, node in enumerate(g.nodes):
        if id(node) in ctx.consumed or len(node.outputs) != 1:
            continue
        new = None
        for pat, fn in rules:
            for k, values in enumerate(_matches(pat, node.outputs[0], ctx.producer, {})):
                if k >= MAX_BINDINGS:
                    break
                m = Match(node, values, ctx)
                if any(id(n) in ctx.consumed for n in m.region):
                    continue
                ctx.pending = []
                new = fn(m)
                if new is not None:
                    break
            if new is not None:
                break
        if new is None:
            continue
        if new.type != node.outputs[0].type:
            raise IRError(f"rewrite {getattr(fn, '__name__', fn)} changed the type of %{node.outputs[0].name} "
                          f"from {node.outputs[0].type} to {new.type}", loc=node.loc)
        subst[node.outputs[0]] = new
        inserted[idx] = list(ctx.pending)
        ctx.consumed.update(id(n) for n in m.region if n is not node and n.op != "const")
        fired.append(getattr(fn, "__name__", "rule"))
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
    return dce(replace(g, nodes=tuple(out_nodes), outputs=tuple(s(v) for v in g.outputs))), fired


def dce(g: Graph) -> Graph:
    """Dead-code elimination: drop nodes none of whose outputs reach a graph output.

    Given:  %a = relu(%x); %b = exp(%x); return %a
    Result: %a = relu(%x); return %a
    """
    live = set(g.outputs)
    keep = []
    for n in reversed(g.nodes):
        if any(v in live for v in n.outputs):
            keep.append(n)
            live.update(n.inputs)
    if len(keep) == len(g.nodes):
        return g
    return replace(g, nodes=tuple(reversed(keep)))


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


__all__ = ["Pat", "any_of", "either", "const", "scalar", "Match", "Rule", "matches", "rewrite", "rewrite_once",
           "MAX_BINDINGS"]
