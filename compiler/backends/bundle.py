"""The bundle directory ``NAME.tlc/`` for graphs that are not entirely Core ML (or Core AI).

Layout (../shared/design.md "Artifacts")::

    NAME.tlc/
      manifest.json            format, version, model I/O, segments in execution order
      segments/00.mlpackage    a Core ML segment (target "ane")
      segments/01.json         a fallback segment (target "gpu"/"cpu"): tlc IR, see tlc.serialize
      segments/01.safetensors  its weights

``manifest.json`` (``"format": "tlc-bundle"``, ``"version": 1``)::

    {"inputs":  [{"name": "x", "dtype": "fp32", "shape": [1, 3, 64, 64]}],
     "outputs": [{"name": "logits", "value": "linear_3", "dtype": "fp32", "shape": [1, 10]}],
     "segments": [{"index": 0, "target": "ane", "path": "segments/00.mlpackage",
                   "inputs": ["x"], "outputs": ["conv_2"], "num_ops": 12, "flops": 123456}, ...],
     "precision": "mixed", "minimum_deployment_target": "iOS17", "tlc_version": "0.1.0", "metadata": {}}

Values pass between segments by IR value name; ``outputs[i].value`` names the value a model output
reads. Everything is written under a temp directory next to the destination, checked (each Core
ML segment reloaded with coremltools' milproto loader and its I/O compared with its IR), then
renamed into place: a failed build leaves nothing half-written and keeps an existing bundle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tlc.errors import EmitError
from tlc.ir import Graph
from tlc.serialize import save_graph
from tlc.util.files import atomic_dir
from tlc.version import __version__

from .coreai.emit import write_aimodel
from .coreml.compress import compress_mlmodel
from .coreml.emit import convert
from .coreml.package import check_package_io, write_package

FORMAT = "tlc-bundle"
VERSION = 1
SUFFIX = ".tlc"


def bundle_path(path: str | os.PathLike) -> Path:
    """``path`` with the bundle suffix ``.tlc`` (an ``.mlpackage`` suffix is replaced)."""
    path = Path(path)
    return path.with_suffix(SUFFIX) if path.suffix in (".mlpackage", "") else path


def _io(v, name=None) -> dict:
    d = {"name": name or v.name}
    if name is not None:
        d["value"] = v.name
    return {**d, "dtype": v.type.dtype, "shape": list(v.type.shape)}


def write_bundle(path: str | os.PathLike, graph: Graph, segments, *, precision: str, minimum_deployment_target: str,
                 metadata: dict | None = None, force: bool = False, compress: str | None = None,
                 skip: tuple = (), program: str = "coreml") -> Path:
    """Write the bundle for ``graph`` split into ``segments`` (:class:`tlc.passes.partition.Segment`
    list, execution order) at ``path`` (must end in ``.tlc``). Core ML segments are converted with
    :func:`tlc.backends.coreml.emit.convert` (weights compressed as ``compress`` says, a weight-only mode
    of :mod:`tlc.backends.coreml.compress`, ops ``skip`` left dense) and checked; with ``program="coreai"``
    they are Core AI assets instead (``NN.aimodel``, :func:`tlc.backends.coreai.emit.write_aimodel`; no
    compression).
    Fallback segments are saved with :func:`tlc.serialize.save_graph` (uncompressed: they run in
    tlc's runtime). The manifest names each segment's ``format`` and the bundle's ``program``.
    Returns the path.

    Raises :class:`EmitError` (bad suffix, conversion or check failure; nothing written),
    :class:`OutputExistsError` (``path`` exists and not ``force``).
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise EmitError(f"bundle path {str(path)!r} must end in {SUFFIX}")

    def write(staged: Path):
        (staged / "segments").mkdir(parents=True)
        entries = []
        for seg in segments:
            stem = f"segments/{seg.index:02d}"
            e = {"index": seg.index, "target": seg.target, "inputs": [v.name for v in seg.graph.inputs],
                 "outputs": list(seg.graph.output_names), "num_ops": seg.num_ops, "flops": int(seg.flops)}
            md = dict(metadata or {}, **{"tlc.segment": f"{seg.index} of {len(segments)} in {path.name}"})
            if seg.target == "ane" and program == "coreai":
                write_aimodel(seg.graph, staged / f"{stem}.aimodel", md)
                e["path"], e["format"] = f"{stem}.aimodel", "aimodel"
            elif seg.target == "ane":
                mlm, _ = convert(seg.graph, precision, minimum_deployment_target, md)
                if compress:
                    mlm = compress_mlmodel(mlm, compress, skip=skip).mlmodel
                write_package(mlm, staged / f"{stem}.mlpackage", lambda pkg: check_package_io(pkg, seg.graph))
                e["path"], e["format"] = f"{stem}.mlpackage", "mlpackage"
            else:
                save_graph(seg.graph, staged / f"{stem}.json", staged / f"{stem}.safetensors", portable=True)
                e["path"], e["format"] = f"{stem}.json", "tlc-graph"
            entries.append(e)
        manifest = {
            "format": FORMAT, "version": VERSION, "tlc_version": __version__, "program": program,
            **({"minimum_os": "v27 (Core AI: iOS/macOS 27)"} if program == "coreai" else {}),
            "precision": precision,
            "minimum_deployment_target": str(minimum_deployment_target),
            "inputs": [_io(v) for v in graph.inputs],
            "outputs": [_io(v, n) for n, v in zip(graph.output_names, graph.outputs)],
            "segments": entries, "metadata": {k: str(v) for k, v in (metadata or {}).items()},
        }
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    return atomic_dir(path, force, write)
