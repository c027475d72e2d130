"""tlc IR on disk: a graph as JSON plus its arrays in a safetensors file.

Used for the fallback segments of a bundle (``segments/NN.json`` + ``segments/NN.safetensors``,
../shared/design.md "Artifacts"). The JSON holds the graph's structure; every NumPy array (the
``val`` of each ``const`` and any array attribute) is stored in the safetensors file under a key
named in the JSON. Loading re-verifies the graph with :func:`tlc.ir.verify`, so a file that does
not type-check is rejected before anything runs.

Format (``"format": "tlc-ir"``, ``"version": 1``)::

    {"format": "tlc-ir", "version": 1,
     "inputs":  [{"name": "x", "dtype": "fp32", "shape": [1, 8]}],
     "nodes":   [{"op": "relu", "name": "r", "inputs": ["x"],
                  "outputs": [{"name": "r", "dtype": "fp32", "shape": [1, 8]}],
                  "attrs": {...}, "loc": {"file": ..., "line": ..., "code": ..., "module": ...}}],
     "outputs": [{"name": "out", "value": "r"}]}

Attribute values: ``null``/bool/int/float/str as JSON; tuples as JSON lists (read back as
tuples); arrays as ``{"tensor": KEY}``; non-finite floats as ``{"float": "inf"|"-inf"|"nan"}``.
Shapes may hold strings (symbolic, data-dependent sizes).
"""
from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IRError
from .ir import Graph, Node, SourceLoc, TensorType, Value, verify

FORMAT = "tlc-ir"
VERSION = 1


def _enc(v: Any, key: str, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(v, np.ndarray):
        tensors[key] = v if v.flags.c_contiguous else v.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        return {"tensor": key}
    if isinstance(v, (tuple, list)):
        return [_enc(x, f"{key}.{i}", tensors) for i, x in enumerate(v)]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": repr(v)}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise IRError(f"attribute {key!r} holds a {type(v).__name__}, which the IR file format cannot store")


def _dec(v: Any, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(v, list):
        return tuple(_dec(x, tensors) for x in v)
    if isinstance(v, dict):
        if "tensor" in v:
            return tensors[v["tensor"]]
        if "float" in v:
            return float(v["float"])
        raise IRError(f"unknown attribute encoding {v}")
    return v


def _type(t: TensorType) -> dict:
    return {"dtype": t.dtype, "shape": list(t.shape)}


def graph_to_json(g: Graph, portable: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """``(document, arrays)``: the JSON-ready description of ``g`` and the arrays it refers to;
    ``portable``: source files stored relative to their package or project root
    (:func:`relative_source`), as in a bundle a user ships. Raises :class:`IRError` for an
    attribute the format cannot hold (a tlc bug: attributes are scalars, strings, tuples or
    arrays by the IR contract)."""
    tensors: dict[str, np.ndarray] = {}
    nodes = []
    roots = source_roots(g) if portable else None
    for n in g.nodes:
        d = {"op": n.op, "name": n.name, "inputs": [v.name for v in n.inputs],
             "outputs": [{"name": v.name, **_type(v.type)} for v in n.outputs],
             "attrs": {k: _enc(a, f"{n.name}.{k}", tensors) for k, a in n.attrs.items()}}
        if n.loc is not None:
            d["loc"] = {k: getattr(n.loc, k) for k in ("file", "line", "code", "module") if getattr(n.loc, k)}
            if roots is not None and "file" in d["loc"]:
                d["loc"]["file"] = relative_source(d["loc"]["file"], roots)
        nodes.append(d)
    doc = {"format": FORMAT, "version": VERSION,
           "inputs": [{"name": v.name, **_type(v.type)} for v in g.inputs],
           "nodes": nodes,
           "outputs": [{"name": name, "value": v.name} for name, v in zip(g.output_names, g.outputs)]}
    return doc, tensors


def graph_from_json(doc: dict, tensors: dict[str, np.ndarray], what: str = "graph") -> Graph:
    """Rebuild a :class:`Graph` from :func:`graph_to_json`'s output and verify it. Raises
    :class:`IRError` naming ``what`` for a wrong format/version, an unknown value or op, or a graph
    that does not type-check."""
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise IRError(f"{what}: not a {FORMAT} v{VERSION} document "
                      f"(format {doc.get('format')!r}, version {doc.get('version')!r})")
    try:
        vals: dict[str, Value] = {}
        inputs = []
        for d in doc["inputs"]:
            v = Value(d["name"], TensorType(d["dtype"], tuple(d["shape"])))
            vals[v.name] = v
            inputs.append(v)
        nodes = []
        for d in doc["nodes"]:
            ins = tuple(vals[name] for name in d["inputs"])
            outs = tuple(Value(o["name"], TensorType(o["dtype"], tuple(o["shape"]))) for o in d["outputs"])
            vals.update((v.name, v) for v in outs)
            attrs = {k: _dec(a, tensors) for k, a in d["attrs"].items()}
            for k, a in attrs.items():
                if isinstance(a, np.ndarray):
                    a.flags.writeable = False
            loc = SourceLoc(**d["loc"]) if d.get("loc") else None
            nodes.append(Node(d["op"], ins, outs, types.MappingProxyType(attrs), d["name"], loc))
        outs = [(o["name"], vals[o["value"]]) for o in doc["outputs"]]
    except KeyError as e:
        raise IRError(f"{what}: refers to {e.args[0]!r}, which is not defined (damaged or hand-edited file)") from None
    g = Graph(tuple(inputs), tuple(nodes), tuple(v for _, v in outs), tuple(n for n, _ in outs))
    try:
        verify(g)
    except IRError as e:
        raise IRError(f"{what}: {e.args[0]}", loc=e.loc) from None
    return g


#: Metadata key of the node -> user source line table (:func:`source_lines`), read by ``tlc lint``.
SOURCE_LINES_KEY = "tlc.source_lines"


#: the graph meta key naming the file that defines the model (set by the driver when it traces)
SOURCE_KEY = "tlc.source"


def source_roots(g: Graph | None = None, source: str | None = None) -> list[str]:
    """The directories source files are stored relative to (:func:`relative_source`), in the
    order they are tried: the import roots on ``sys.path`` (site-packages, the standard library, a
    project put on the path), innermost first, then the directory of the file defining the model
    (``source``, or ``g.meta["tlc.source"]``: its neighbours, imported while it loaded). The
    file-system root is never one."""
    source = source or (g.meta.get(SOURCE_KEY) if g is not None else None)
    roots = sorted({os.path.abspath(p or os.curdir) for p in sys.path if not p or os.path.isdir(p)}, key=len,
                   reverse=True)
    if source:
        roots.append(os.path.dirname(os.path.abspath(source)))
    return [r for r in roots if os.path.dirname(r) != r]


def relative_source(path: str | None, roots: list[str] | None = None) -> str | None:
    """``path`` relative to the innermost of ``roots`` (:func:`source_roots`) that holds it
    (``.../site-packages/transformers/models/bert/modeling_bert.py`` ->
    ``transformers/models/bert/modeling_bert.py``; the model file -> ``model.py``), else its file
    name: a package never holds the builder's absolute paths (user name, directory layout), and
    builds in two checkouts or virtual environments write the same bytes (issue 32). Paths that are
    not absolute (``<string>``, already relative) are kept."""
    if not path or not os.path.isabs(path):
        return path
    full = os.path.abspath(path)
    for r in source_roots() if roots is None else roots:
        if full.startswith(r.rstrip(os.sep) + os.sep):
            return os.path.relpath(full, r).replace(os.sep, "/")
    return os.path.basename(full)


def source_lines(g: Graph) -> str:
    """JSON ``{"files": [file, ...], "ops": {node name: [file index, line]}}`` for the nodes of
    ``g`` that carry a source location: MIL op names start with their node's name, so a tool
    reading the package (``tlc lint``, a Core ML profile) maps each op back to the user's line
    (:func:`read_source_lines`). Files are relative to their package or project root
    (:func:`relative_source`)."""
    files: dict[str, int] = {}
    ops = {}
    roots = source_roots(g)
    for n in g.nodes:
        if n.op != "const" and n.loc is not None and n.loc.file:
            ops[n.name] = [files.setdefault(relative_source(n.loc.file, roots), len(files)), int(n.loc.line or 0)]
    return json.dumps({"files": list(files), "ops": ops}, separators=(",", ":"), sort_keys=True)


def read_source_lines(metadata) -> dict[str, str]:
    """``{node name: "file:line"}`` from package metadata holding :data:`SOURCE_LINES_KEY` (empty when
    absent or not the JSON :func:`source_lines` writes)."""
    raw = metadata.get(SOURCE_LINES_KEY) if metadata else None
    if not raw:
        return {}
    try:
        t = json.loads(raw)
        return {k: f"{t['files'][fi]}:{line}" for k, (fi, line) in t["ops"].items()}
    except (ValueError, KeyError, IndexError, TypeError):
        return {}


def save_graph(g: Graph, json_path: str | Path, weights_path: str | Path, portable: bool = False) -> None:
    """Write ``g`` as ``json_path`` + ``weights_path`` (safetensors). The JSON names the weights
    file relative to itself; ``portable``: source files relative (:func:`graph_to_json`)."""
    from safetensors.numpy import save_file

    doc, tensors = graph_to_json(g, portable)
    doc["weights"] = Path(weights_path).name
    save_file(tensors, str(weights_path), metadata={"format": FORMAT})
    Path(json_path).write_text(json.dumps(doc, indent=1) + "\n")


def load_graph(json_path: str | Path) -> Graph:
    """Read a graph written by :func:`save_graph`. Raises :class:`IRError` for a missing or
    unreadable file or a graph that does not verify."""
    from safetensors.numpy import load_file

    json_path = Path(json_path)
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise IRError(f"cannot read {json_path}: {e}") from None
    try:
        tensors = load_file(str(json_path.parent / doc["weights"])) if doc.get("weights") else {}
    except Exception as e:  # safetensors raises its own SafetensorError for damaged files
        raise IRError(f"cannot read the weights of {json_path} ({doc.get('weights')}): {type(e).__name__}: {e}") from None
    return graph_from_json(doc, tensors, what=str(json_path))
