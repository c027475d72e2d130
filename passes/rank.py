"""``layout::fold_rank``: keep tensors of rank > 5 out of the MIL program by merging axes that move
together.

Core ML rejects tensors of rank 6 and more (coremltools ``Program._check_invalid_tensor_rank``:
"Core ML only supports tensors with rank <= 5"; the ANE limit, apple/coremltools#2536). torch code
reaches rank 6 through views: Swin's window partition ``[B, H/w, w, W/w, w, C]`` and its reverse,
pixel shuffle ``[N, C, r, r, H, W]``, space-to-depth, patch embeddings. Most such tensors are
redundant: the permutation moves whole runs of axes at once, so each run can be one axis.

**Method.** The *region* is every value of rank > 5 and the nodes that read or write one. Each
such value's non-unit axes are split into groups at *cuts*; a reshape constrains nothing (any
grouping of its input and output is again a valid row-major reshape), while

* ``transpose``: two axes can share a group only if the permutation keeps them adjacent and in
  order; a cut on one side is a cut on the other;
* elementwise ops (broadcasting): adjacent output axes share a group only if every operand is
  either full-size on both or broadcast (size 1 / missing) on both; operand and output cuts
  mirror each other;
* ``reduce_*``: reduced and kept axes never share a group; ``softmax``: its axis is a group alone.

Cuts are added until nothing changes (each round adds one, so at most the number of axis
boundaries rounds). Every region value then takes its merged shape (unit axes dropped), and each
region node is rebuilt on merged operands: transposes permute groups, reshapes reshape to the
merged shape, broadcast operands from outside the region are reshaped to match (constants
folded). A region is rewritten only if every merged rank is <= 5, it reads and writes rank > 5
values only through these ops, and no rank > 5 value is a graph input or output; otherwise it is
left unchanged and its ops run in tlc's fallback runtime (the partitioner's reason names the rank).
"""
from __future__ import annotations

import itertools

import numpy as np

from tlc.errors import IRError
from tlc.ir import Graph, GraphBuilder, Node, Value
from tlc.ops import elementwise_ops
from tlc.ops.table import ANE_MAX_DIM
from tlc.ops.norm import REDUCE_OPS, norm_axes

from .cleanup import merge_layout
from .registry import register_pass

MAX_RANK = 5
_ELEMENTWISE = set(elementwise_ops())  # the rows' elementwise trait
_SUPPORTED = _ELEMENTWISE | set(REDUCE_OPS) | {"reshape", "transpose", "softmax", "expand_dims", "squeeze"}


def _high(v: Value, limit: int = MAX_RANK) -> bool:
    return v.type.is_static and v.type.rank > limit


class _Cuts:
    """Per high value: its non-unit axes and the set of cut positions (a cut at j separates
    non-unit axes j-1 and j)."""

    def __init__(self, values):
        self.nu = {v: [i for i, d in enumerate(v.type.shape) if d != 1] for v in values}
        self.cuts: dict[Value, set[int]] = {v: set() for v in values}
        self.changed = False

    def cut_between(self, v: Value, a: int, b: int) -> None:
        """Cut v between its axes a < b if they are consecutive non-unit axes."""
        nu = self.nu[v]
        if a in nu and b in nu and nu.index(b) == nu.index(a) + 1 and nu.index(b) not in self.cuts[v]:
            self.cuts[v].add(nu.index(b))
            self.changed = True

    def split(self, v: Value, a: int, b: int) -> bool:
        """Whether v's consecutive non-unit axes a, b are in different groups."""
        nu = self.nu[v]
        return nu.index(b) in self.cuts[v]

    def pairs(self, v: Value):
        nu = self.nu[v]
        return [(nu[j - 1], nu[j]) for j in range(1, len(nu))]

    def groups(self, v: Value) -> list[list[int]]:
        nu = self.nu[v]
        out: list[list[int]] = []
        for j, a in enumerate(nu):
            if j == 0 or j in self.cuts[v]:
                out.append([a])
            else:
                out[-1].append(a)
        return out

    def merged(self, v: Value) -> tuple[int, ...]:
        return tuple(int(np.prod([v.type.shape[a] for a in g])) for g in self.groups(v))


def _aligned(operand: Value, out: Value, axis: int) -> int | None:
    """The operand axis aligned (NumPy broadcasting, trailing) with output ``axis``, or None."""
    k = axis - (out.type.rank - operand.type.rank)
    return k if k >= 0 else None


def _permuted(c: _Cuts, high: set, src: Value, dst: Value, to_dst: dict) -> None:
    """Transpose constraint seen from ``src``: two consecutive non-unit axes of src share a group
    only if ``to_dst`` keeps them adjacent (unit axes aside) and in order in ``dst``; a cut of
    src between them is then a cut of dst too."""
    if src not in high:
        return
    for a, b in c.pairs(src):
        da, db = to_dst[a], to_dst[b]
        apart = db < da or any(dst.type.shape[i] != 1 for i in range(da + 1, db))
        if apart:
            c.cut_between(src, a, b)
        elif dst in high and c.split(src, a, b):
            c.cut_between(dst, da, db)


def _constrain(n: Node, c: _Cuts, high: set) -> None:
    """Add the cuts node ``n`` requires (see the module docstring)."""
    if n.op == "transpose":
        x, y = n.inputs[0], n.out
        perm = n.attrs["perm"]
        to_y = {a: i for i, a in enumerate(perm)}  # x axis -> y axis
        _permuted(c, high, x, y, to_y)
        _permuted(c, high, y, x, dict(enumerate(perm)))
    elif n.op in _ELEMENTWISE:
        y = n.out
        ops = [v for v in n.inputs]
        for p, q in (c.pairs(y) if y in high else []):
            for v in ops:
                kp, kq = _aligned(v, y, p), _aligned(v, y, q)
                full = [k is not None and v.type.shape[k] == y.type.shape[ax] for k, ax in ((kp, p), (kq, q))]
                if full[0] != full[1]:
                    c.cut_between(y, p, q)
                elif full[0] and v in high and c.split(v, kp, kq):
                    c.cut_between(y, p, q)
            if c.split(y, p, q):
                for v in ops:
                    kp, kq = _aligned(v, y, p), _aligned(v, y, q)
                    if v in high and kp is not None and kq is not None:
                        c.cut_between(v, kp, kq)
    elif n.op in REDUCE_OPS or n.op == "softmax":
        x, y = n.inputs[0], n.out
        axes = (norm_axes(n.attrs["axes"], x.type.rank) if n.attrs.get("axes") is not None
                else tuple(range(x.type.rank))) if n.op != "softmax" else norm_axes([n.attrs.get("axis", -1)], x.type.rank)
        if n.op == "softmax":
            for a, b in c.pairs(x):
                if a in axes or b in axes:
                    c.cut_between(x, a, b)
            if y in high:
                for a, b in c.pairs(x):
                    if c.split(x, a, b):
                        c.cut_between(y, a, b)
                for a, b in c.pairs(y):
                    if c.split(y, a, b):
                        c.cut_between(x, a, b)
            return
        if x in high:
            for a, b in c.pairs(x):
                if (a in axes) != (b in axes):
                    c.cut_between(x, a, b)
        keep = n.attrs.get("keep_dims", False)
        ymap = {a: (a if keep else a - sum(1 for r in axes if r < a)) for a in range(x.type.rank) if a not in axes}
        if x in high and y in high:
            for a, b in c.pairs(x):
                if a in ymap and b in ymap:
                    if c.split(x, a, b):
                        c.cut_between(y, ymap[a], ymap[b])
            inv = {v: k for k, v in ymap.items()}
            for a, b in c.pairs(y):
                if c.split(y, a, b):
                    c.cut_between(x, inv[a], inv[b])


def _regions(g: Graph, high: set) -> list[tuple[set, list]]:
    """Connected components of high values (linked through any node touching two of them)."""
    parent = {v: v for v in high}

    def find(v):
        while parent[v] is not v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for n in g.nodes:
        hv = [v for v in list(n.inputs) + list(n.outputs) if v in high]
        for v in hv[1:]:
            parent[find(v)] = find(hv[0])
    comps: dict[Value, tuple[set, list]] = {}
    for v in high:
        comps.setdefault(find(v), (set(), []))[0].add(v)
    for n in g.nodes:
        hv = [v for v in list(n.inputs) + list(n.outputs) if v in high]
        if hv:
            comps[find(hv[0])][1].append(n)
    return list(comps.values())


def _settle(c: _Cuts, values: set, nodes: list) -> None:
    """Apply every node's constraint until no cut is added (cuts only grow, so this ends)."""
    for _ in range(sum(len(ax) for ax in c.nu.values()) + 1):
        c.changed = False
        for n in nodes:
            _constrain(n, c, values)
        if not c.changed:
            break


def _cut_oversized(c: _Cuts, values: set) -> bool:
    """Cut merged groups whose size would pass the ANE's dimension limit (``ANE_MAX_DIM``) in a
    value whose traced axes all keep within it (a scalar ``mul`` on a rank-5 view of 200704
    elements must not become one axis of 200704). Returns whether a cut was added."""
    added = False
    for v in values:
        if max(v.type.shape, default=1) > ANE_MAX_DIM:
            continue
        for grp in c.groups(v):
            size = 1
            for j, a in enumerate(grp):
                size *= v.type.shape[a]
                if j and size > ANE_MAX_DIM:
                    c.cut_between(v, grp[j - 1], a)
                    added, size = True, v.type.shape[a]
    return added


def _solve(g: Graph, values: set, nodes: list, limit: int = MAX_RANK) -> _Cuts | None:
    """The cuts of one region, or None if it cannot be folded to rank <= ``limit``. Merged axes
    are kept within the ANE's dimension limit where that still folds (:func:`_cut_oversized`);
    a fold to rank <= 4 that cannot keep them so is not made (rank 5 is eligible on the ANE, an
    oversized axis is not), a fold of rank > 5 is made anyway (Core ML cannot run rank 6)."""
    if any(v in values for v in list(g.inputs) + list(g.outputs)):
        return None
    if any(n.op not in _SUPPORTED for n in nodes):
        return None
    c = _Cuts(values)
    _settle(c, values, nodes)
    if any(len(c.groups(v)) > limit for v in values):
        return None
    sized = _Cuts(values)
    sized.cuts = {v: set(cs) for v, cs in c.cuts.items()}
    while _cut_oversized(sized, values):
        _settle(sized, values, nodes)
    if all(len(sized.groups(v)) <= limit for v in values):
        return sized
    return c if limit >= MAX_RANK else None


def _operand_shape(v: Value, y: Value, c: _Cuts) -> tuple[int, ...]:
    """Shape of a (non-region) broadcast operand ``v`` of region output ``y`` in y's groups."""
    out = []
    for grp in c.groups(y):
        dims = [v.type.shape[k] for k in (_aligned(v, y, a) for a in grp) if k is not None]
        out.append(int(np.prod(dims)) if dims else 1)
    return tuple(out)


@register_pass("layout::fold_rank")
def fold_rank(g: Graph) -> Graph:
    """Rewrite rank > 5 reshape/transpose/elementwise/reduce regions at rank <= 5 (module docstring).

    Given:  %v: fp32[1,2,4,2,4,8] = reshape(%x: fp32[1,8,8,8]) ; %p = transpose(%v, perm=(0,1,3,2,4,5))
            %w: fp32[4,16,8] = reshape(%p)
    Result: %v: fp32[2,4,2,32] = reshape(%x) ; %p: fp32[2,2,4,32] = transpose(%v, perm=(0,2,1,3))
            %w: fp32[4,16,8] = reshape(%p)
    A transpose of rank >= 5 left after that (one that moves every axis: MaxViT's grid partition
    (gh, wh, gw, ww, C) -> (wh, ww, gh, gw, C), Hiera's unroll) becomes transposes of rank <= 4
    (:func:`_split_rank5_transposes`), and what it left at rank > 5 is folded again. Last, rank-5
    regions (rank 5 runs on the ANE but breaks the ``rank5`` efficiency rule) are folded to rank
    <= 4 the same way where they can be (Hiera's q-pooling max over a rank-5 view of its heads).
    A region that cannot be rebuilt (an op's type rule rejects the merged shapes) is left as
    traced; the pass never raises for a graph it cannot fold.
    """
    g2 = _split_rank5_transposes(_fold_high(g))
    g3 = _fold_high(g2) if g2 is not g else g
    return _fold_high(g3, limit=MAX_RANK - 1)  # rank 5 runs on the ANE, slower (rule rank5): rank 4 where it folds


def _fold_high(g: Graph, limit: int = MAX_RANK) -> Graph:
    """The regions of rank > ``limit`` values of ``g`` rebuilt at rank <= ``limit`` where they can
    be (:func:`fold_rank`)."""
    high = {v for n in g.nodes for v in list(n.inputs) + list(n.outputs) if _high(v, limit)}
    if not high:
        return g
    solved = []
    for values, nodes in _regions(g, high):
        c = _solve(g, values, nodes, limit)
        if c is not None:
            solved.append((values, nodes, c))
    if not solved:
        return g
    try:
        return _rebuild(g, solved)
    except (IRError, ValueError):  # a region the rebuild cannot type: keep those regions as traced, one by one
        kept, out = [], g
        for region in solved:
            try:
                out = _rebuild(g, kept + [region])  # the graph with every region kept so far
            except (IRError, ValueError):
                continue
            kept.append(region)
        return out


def _runs(target: list[int], cur: list[int]) -> list[list[int]]:
    """``target`` (axis ids in the wanted order) cut into runs of ids that are adjacent and in
    order in ``cur`` (the current memory order): each run moves as one axis."""
    pos = {a: i for i, a in enumerate(cur)}
    out: list[list[int]] = []
    for a in target:
        if out and pos[a] == pos[out[-1][-1]] + 1:
            out[-1].append(a)
        else:
            out.append([a])
    return out


def _transpose_steps(perm: tuple[int, ...]) -> list[list[int]]:
    """Orders (lists of axis ids) that take the identity to ``perm`` in steps each moving at most
    4 runs of axes (one transpose of rank <= 4 per step). One step when ``perm`` has at most 4
    runs; else two where an intermediate order allows (searched for up to 6 axes: MaxViT's
    grid); else one step per run moved into place (the placed prefix, the run, what was before
    and after it: at most 4 runs), consecutive steps merged while they still move at most 4."""
    ident = list(range(len(perm)))
    target = list(perm)
    if len(_runs(target, ident)) <= 4:
        return [target]
    if len(perm) <= 6:
        for mid in itertools.permutations(ident):
            mid = list(mid)
            if len(_runs(mid, ident)) <= 4 and len(_runs(target, mid)) <= 4:
                return [mid, target]
    steps, cur = [], ident
    while cur != target:
        i = next(k for k in range(len(cur)) if cur[k] != target[k])
        j = i + 1
        while j < len(target) and cur.index(target[j]) == cur.index(target[j - 1]) + 1:
            j += 1
        moved = target[i:j]
        cur = target[:i] + moved + [a for a in cur if a not in target[:j]]
        steps.append(cur)
    merged = [steps[0]]
    for order in steps[1:]:
        before = merged[-2] if len(merged) > 1 else ident
        if len(_runs(order, before)) <= 4:
            merged[-1] = order
        else:
            merged.append(order)
    return merged


def _split_rank5_transposes(g: Graph) -> Graph:
    """Every transpose of rank >= 5 (up to 8 non-unit axes) as transposes of rank <= 4 of merged
    axes (:func:`_transpose_steps`; module docstring of :func:`fold_rank`); the reshapes around
    them are merged with their neighbours afterwards. A transpose of a graph input or into a
    graph output is left alone (its rank is the model's I/O contract), and so is one of rank > 5
    read by anything but reshapes (its result would stay at rank > 5)."""
    users = g.users()
    todo = [n for n in g.nodes if n.op == "transpose" and n.inputs[0].type.rank >= MAX_RANK and n.inputs[0].type.is_static
            and n.inputs[0] not in g.inputs and n.out not in g.outputs
            and (n.out.type.rank <= MAX_RANK or all(u.op == "reshape" for u in users.get(n.out, [])))]
    if not todo:
        return g
    b = GraphBuilder(dict(g.meta))
    env: dict[Value, Value] = {v: b.add_input(v.name, v.type) for v in g.inputs}
    changed = False
    for n in g.nodes:
        x = n.inputs[0] if n.inputs else None
        steps = None
        if n in todo:
            ids = [a for a in range(x.type.rank) if x.type.shape[a] != 1]
            perm = [a for a in n.attrs["perm"] if x.type.shape[a] != 1]
            steps = _transpose_steps(tuple(ids.index(a) for a in perm)) if len(ids) <= 8 else None
        if steps is None:
            new = b.add(n.op, [env[v] for v in n.inputs], dict(n.attrs), name=n.name, loc=n.loc)
            env.update(zip(n.outputs, new.outputs))
            continue
        sizes = [x.type.shape[a] for a in ids]
        cur, v = list(range(len(ids))), env[x]
        for k, order in enumerate(steps):
            runs = _runs(order, cur)
            by_mem = sorted(runs, key=lambda r: cur.index(r[0]))
            v = b.add("reshape", [v], {"shape": tuple(int(np.prod([sizes[a] for a in r])) for r in by_mem)},
                      name=f"{n.name}_r{k}", loc=n.loc).out
            v = b.add("transpose", [v], {"perm": tuple(by_mem.index(r) for r in runs)}, name=f"{n.name}_t{k}",
                      loc=n.loc).out
            cur = order
        env[n.out] = b.add("reshape", [v], {"shape": n.out.type.shape}, name=n.name, loc=n.loc).out
        changed = True
    if not changed:
        return g
    return merge_layout(b.build([env[v] for v in g.outputs], g.output_names))


def _rebuild(g: Graph, regions: list) -> Graph:
    """``g`` with every node of the solved ``regions`` ((values, nodes, cuts) triples) rebuilt on
    merged shapes; raises :class:`IRError` when an op's type rule rejects a rebuilt node."""
    plan: dict[Value, _Cuts] = {}
    rewrite: set[Node] = set()
    for values, nodes, c in regions:
        for v in values:
            plan[v] = c
        rewrite.update(nodes)
    b = GraphBuilder(dict(g.meta))
    env: dict[Value, Value] = {}
    for v in g.inputs:
        env[v] = b.add_input(v.name, v.type)
    consts = {n.out: n for n in g.nodes if n.op == "const"}

    for n in g.nodes:
        if n not in rewrite:
            new = b.add(n.op, [env[v] for v in n.inputs], dict(n.attrs), name=n.name, loc=n.loc)
            env.update(zip(n.outputs, new.outputs))
            continue
        y = n.out
        cy = plan.get(y)
        shape_y = cy.merged(y) if cy else y.type.shape
        if n.op in ("reshape", "expand_dims", "squeeze"):
            out = b.add("reshape", [env[n.inputs[0]]], {"shape": shape_y}, name=n.name, loc=n.loc).out
        elif n.op == "transpose":
            x = n.inputs[0]
            cx = plan[x]
            perm = n.attrs["perm"]
            xg = cx.groups(x)
            new_perm = tuple(next(i for i, grp in enumerate(xg) if perm[grp_y[0]] in grp) for grp_y in cy.groups(y))
            out = b.add("transpose", [env[x]], {"perm": new_perm}, name=n.name, loc=n.loc).out
        elif n.op in _ELEMENTWISE:
            ins = []
            for k, v in enumerate(n.inputs):
                if v in plan:
                    ins.append(env[v])
                    continue
                want = _operand_shape(v, y, cy)
                if v in consts:
                    arr = np.asarray(consts[v].attrs["val"]).reshape(want)
                    ins.append(b.const(arr, name=f"{n.name}_in{k}", loc=n.loc))
                elif v.type.shape == want:
                    ins.append(env[v])
                else:
                    ins.append(b.add("reshape", [env[v]], {"shape": want}, name=f"{n.name}_in{k}", loc=n.loc).out)
            out = b.add(n.op, ins, dict(n.attrs), name=n.name, loc=n.loc).out
        else:  # reductions and softmax over groups
            x = n.inputs[0]
            cx = plan[x]
            xg = cx.groups(x)
            if n.op == "softmax":
                ax = norm_axes([n.attrs.get("axis", -1)], x.type.rank)[0]
                gi = next(i for i, grp in enumerate(xg) if ax in grp)
                out = b.add("softmax", [env[x]], {**dict(n.attrs), "axis": gi}, name=n.name, loc=n.loc).out
            else:
                axes = norm_axes(n.attrs["axes"], x.type.rank) if n.attrs.get("axes") is not None else tuple(range(x.type.rank))
                red = tuple(i for i, grp in enumerate(xg) if grp[0] in axes)
                out = b.add(n.op, [env[x]], {"axes": red, "keep_dims": False}, name=n.name, loc=n.loc).out
        if out.type.shape != shape_y:  # a region output read outside (its rank is <= 5): original shape
            out = b.add("reshape", [out], {"shape": shape_y}, name=n.name + "_shape", loc=n.loc).out
        env[y] = out
    outs = [env[v] for v in g.outputs]
    return b.build(outs, g.output_names)
