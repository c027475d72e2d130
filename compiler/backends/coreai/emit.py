"""Core AI emission: tlc IR -> ``coreai.authoring`` program -> ``.aimodel`` (issue 17).

Apple's ``coreai-core`` (an optional extra: ``pip install -e ".[coreai]"``) has an authoring API
(``Module.create()``, the ``graph`` decorator, ops such as ``broadcasting_add``,
``batch_matmul``, ``conv2d``, ``softmax``) and a runtime that executes ``.aimodel`` assets on
Linux and macOS. Each op row's ``emit_coreai`` field (:mod:`tlc.ops`) maps one IR node to Core AI
ops, exactly as ``emit_mil`` does for MIL: one table, two emitters. An op without the field
raises :class:`~tlc.errors.EmitError` naming it and its source line.

The graph is built through the ``graph`` decorator on a function whose signature is made from
the IR graph's inputs and outputs (names, shapes, dtypes), so the asset's I/O names are the
user's. Constants are baked with ``coreai.authoring.constant.constant``.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from tlc.errors import EmitError, InputError
from tlc.ir import DTYPES, Graph, Node, Value
from tlc.ops import coreai_reason, get_op
from tlc.serialize import relative_source, source_roots
from tlc.util.coreml import coreai
from tlc.util.files import atomic_dir, refuse_existing
from tlc.version import __version__

class CoreAIContext:
    """What an ``emit_coreai`` rule gets: ``ca`` (``coreai.authoring``), ``node`` (the IR node
    being emitted), :meth:`const` (an array as a Core AI constant), :meth:`array` (the NumPy
    value of an input that is an IR constant, else None)."""

    def __init__(self, ca, consts: dict[Value, np.ndarray]):
        from coreai.authoring.constant import constant

        self.ca = ca
        self._constant = constant
        self._consts = consts
        self.node: Node | None = None

    def const(self, arr) -> Any:
        a = np.asarray(arr)
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        elif a.dtype == np.int64:
            a = a.astype(np.int32)
        return self._constant(a if a.ndim == 0 else np.ascontiguousarray(a))  # ascontiguousarray makes 0-d 1-d

    @staticmethod
    def u32(values) -> np.ndarray:
        """Index-like operands (permutations, split sizes, repeats, paddings) as Core AI wants them:
        1-D uint32."""
        return np.asarray(list(values), np.uint32)

    def array(self, i: int) -> np.ndarray | None:
        return self._consts.get(self.node.inputs[i])

    def out_shape(self, k: int = 0) -> tuple[int, ...]:
        return tuple(self.node.outputs[k].type.shape)

    def reshaped(self, v, k: int = 0):
        """``v`` reshaped to the node's k-th output shape (for ops whose Core AI form keeps axes)."""
        return self.ca.reshape(v, list(self.out_shape(k)))


def _np_dtype(t) -> np.dtype:
    return DTYPES[t.dtype]


def _signature_fn(g: Graph, body, name: str = "main"):
    from coreai.authoring import TensorType, Value as CAValue

    params = [inspect.Parameter(v.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=Annotated[CAValue, TensorType(tuple(v.type.shape), _np_dtype(v.type),
                                                                         name=v.name)])
              for v in g.inputs]
    outs = [Annotated[CAValue, TensorType(tuple(v.type.shape), _np_dtype(v.type), name=n)]
            for v, n in zip(g.outputs, g.output_names)]
    ret = outs[0] if len(outs) == 1 else tuple[tuple(outs)]

    def main(*args):
        return body(*args)

    main.__name__ = main.__qualname__ = name  # the asset's function name
    main.__signature__ = inspect.Signature(params, return_annotation=ret)
    main.__annotations__ = {**{p.name: p.annotation for p in params}, "return": ret}
    return main


def missing_ops(g: Graph) -> list[Node]:
    """Nodes of ``g`` with no Core AI form (:func:`tlc.ops.coreai_reason`: no ``emit_coreai``,
    or its ``coreai_limit`` refuses the node's types or attributes)."""
    return [n for n in g.nodes if n.op != "const" and coreai_reason(n)]


def _debuginfo(ca, n: Node, roots: list[str]):
    """A Core AI location for node ``n``: its source file and line when known (Core AI's verifier
    errors and the asset's debug info then point at the user's code, as ``tlc.source_lines`` does
    for MIL), else the IR node name as metadata (a file location takes metadata only inside a
    DWARF subprogram scope, which tlc does not build)."""
    if n.loc is not None and n.loc.file:  # relative to its package or project root, as tlc.source_lines
        return ca.DebugInfo.file(relative_source(n.loc.file, roots), int(n.loc.line or 0))
    return ca.DebugInfo.metadata_only([n.name])


def _body(ca, g: Graph):
    """The function that emits ``g``'s nodes, called by the ``graph`` decorator on its inputs."""
    consts = {n.out: np.asarray(n.attrs["val"]) for n in g.nodes if n.op == "const"}
    ctx = CoreAIContext(ca, consts)
    roots = source_roots(g)

    def body(*args):
        env: dict[Value, Any] = dict(zip(g.inputs, args))
        for n in g.nodes:
            if n.op == "const":
                continue
            ctx.node = n
            ins = [env[v] if v in env else env.setdefault(v, ctx.const(consts[v])) for v in n.inputs]
            try:
                with _debuginfo(ca, n, roots).activate():  # the asset's ops carry the user's source line and node name
                    out = get_op(n.op).emit_coreai(ctx, n.attrs, ins, n)
            except EmitError:
                raise
            except Exception as e:  # noqa: BLE001 - name the node whatever coreai raised
                raise EmitError(f"Core AI emission of {n.op} (node {n.name}) failed: {type(e).__name__}: {e}",
                                loc=n.loc) from e
            outs = out if isinstance(out, (list, tuple)) else [out]
            env.update(zip(n.outputs, outs))
        res = [env[v] if v in env else ctx.const(consts[v]) for v in g.outputs]
        return res[0] if len(res) == 1 else tuple(res)

    return body


def to_aiprogram(g: Graph | dict[str, Graph]):
    """``g`` (typed IR, fp32 or fp16) as a ``coreai.authoring.AIProgram`` with one function
    ``main``, or, for ``{function name: graph}``, one function per graph in one asset (Core AI
    stores equal constants once: a weight every function reads is one storage entry). Raises
    :class:`EmitError` for an op without a Core AI form (all of them listed, with their source
    lines) or an emission that fails."""
    ca = coreai()
    graphs = {"main": g} if isinstance(g, Graph) else dict(g)
    missing = [n for gg in graphs.values() for n in missing_ops(gg)]
    if missing:
        lines = "; ".join(f"{n.op} ({n.name}{', ' + str(n.loc) if n.loc and n.loc.file else ''})" for n in missing[:8])
        raise EmitError(f"no Core AI form yet for {len({n.op for n in missing})} op kind(s): {lines}"
                        + (f"; +{len(missing) - 8} more" if len(missing) > 8 else ""), loc=missing[0].loc)
    try:
        with ca.Module.create() as m:  # leaving the block runs Core AI's verifier and rewrites
            for name, gg in graphs.items():
                ca.graph(_signature_fn(gg, _body(ca, gg), name))
    except EmitError:
        raise
    except Exception as e:  # noqa: BLE001 - an op tlc built that Core AI's verifier refuses: a tlc bug
        msg = str(e).splitlines()[0] if str(e) else ""
        raise EmitError(f"Core AI refused the program tlc built ({type(e).__name__}: {msg}); this is a tlc bug: "
                        f"please report it with the output of `tlc build --print-ir`") from e
    return ca.AIProgram(m)


#: what the asset's ``minimum_os`` is (coreai-core 1.0.0b3 knows only ``OSVersion.v27``: iOS/macOS 27)
MINIMUM_OS = "v27"


def write_aimodel(g: Graph | dict[str, Graph], dest: Path, metadata: dict | None = None, prog=None) -> None:
    """Emit ``g`` (one graph, or ``{function name: graph}``: :func:`to_aiprogram`) and save it at
    ``dest`` (a fresh ``.aimodel`` path; a staging path when called through :func:`save_aimodel`).
    ``metadata`` (str -> str) becomes the asset's creator-defined metadata, with ``tlc.version``
    and ``tlc.minimum_os``; the asset's ``minimum_os`` is :data:`MINIMUM_OS`. The creation date
    coreai-core stamps is replaced by ``$SOURCE_DATE_EPOCH`` (seconds; the reproducible-builds
    convention) or 0: no wall-clock time in the asset (issue 18). The asset is still not
    byte-reproducible: coreai-core 1.0.0b3 names weight resources randomly per process
    (docs/coreai.md). ``prog``: the program :func:`to_aiprogram` already made
    of ``g``. Raises :class:`EmitError` (see :func:`to_aiprogram`)."""
    from coreai.authoring import OSVersion
    from coreai.authoring.asset import AIModelAssetMetadata

    prog = to_aiprogram(g) if prog is None else prog
    md = AIModelAssetMetadata()
    custom = {"tlc.version": __version__, "tlc.minimum_os": f"iOS/macOS {MINIMUM_OS[1:]}",
              **{k: str(v) for k, v in (metadata or {}).items()}}
    for k in sorted(custom):
        md.set_custom(k, custom[k])
    md.author = f"tlc {__version__}"
    asset = prog.save_asset(Path(dest), metadata=md, minimum_os=OSVersion(MINIMUM_OS))
    stamp = float(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    asset.update_metadata(updates=lambda m: setattr(m, "creation_date", stamp))


def save_aimodel(g: Graph | dict[str, Graph], path: str | os.PathLike, force: bool = False,
                 metadata: dict | None = None) -> Path:
    """Write ``g`` as a Core AI asset directory ``path`` (``.aimodel``, :func:`write_aimodel`),
    staged and renamed into place (:func:`tlc.util.files.atomic_dir`). Raises :class:`InputError`
    for another suffix or without coreai-core, :class:`~tlc.errors.OutputExistsError` if ``path``
    exists and not ``force``, :class:`EmitError` (see :func:`to_aiprogram`)."""
    path = Path(path)
    if path.suffix != ".aimodel":
        raise InputError(f"a Core AI asset path ends in .aimodel, got {str(path)!r}")
    refuse_existing(path, force)
    prog = to_aiprogram(g)  # fail before staging anything
    return atomic_dir(path, force, lambda staged: write_aimodel(g, staged, metadata, prog))
