"""Build artifacts: the bundle directory ``NAME.tlc/`` for graphs that are not entirely Core ML.

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

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import EmitError, OutputExistsError, TlcError
from .ir import Graph

FORMAT = "tlc-bundle"
VERSION = 1
SUFFIX = ".tlc"


def check_package_io(path, g: Graph, function_name: str = "main", loaded=None, states=()) -> list[str]:
    """Reread a saved package's spec (the ``Model`` protobuf with its MIL program, not the weights:
    :func:`tlc.runtime.mlspec.read_spec`; ``loaded``: that spec, when the caller checks several
    functions of one package) and list every mismatch between function ``function_name``'s I/O
    and the IR graph's: input names, shapes and dtypes (bool inputs are int32 in a package, 0-d
    values ``[1]``); output names, shapes and dtypes; and the :mod:`tlc.boundary` record of the 0-d
    and complex ones. ``states`` (:class:`tlc.state.StateBinding`): IR inputs the package holds as
    fp16 states of the same shape, and IR outputs it writes into them instead of returning.
    Reading no weights keeps the check cheap for billion-parameter packages."""
    from tlc.runtime.mlspec import PackageError, read_spec, spec_summary

    spec = loaded if loaded is not None else read_spec(path)
    try:
        summary = spec_summary(spec, function_name if len(spec.mlProgram.functions) > 1 else None)
    except PackageError as e:
        return [str(e)]
    names = {"fp32": "float32", "fp16": "float16", "bool": "int32"}
    io_dtype = lambda t: names.get(t.dtype, t.dtype)  # noqa: E731
    io_shape = lambda t: list(t.shape or (1,))  # noqa: E731  (0-d is [1] at the boundary: tlc.emit.SCALAR_IO_KEY)
    problems = []
    want_in = {v.name: v.type for v in g.inputs}
    as_state = {b.state for b in states}
    for d in summary["states"]:
        t = want_in.pop(d["name"], None)
        if d["name"] not in as_state or t is None or d["shape"] != list(t.shape) or d["dtype"] != "float16":
            problems.append(f"state {d['name']}: package {d['dtype']}{d['shape']} vs IR {t}")
    for d in summary["inputs"]:
        t = want_in.pop(d["name"], None)
        if t is None or d["shape"] != io_shape(t) or d["dtype"] != io_dtype(t):
            problems.append(f"input {d['name']}: package {d['dtype']}{d['shape']} vs IR {t}")
    problems += [f"input {n} missing from package" for n in want_in]
    written = {b.output for b in states}
    kept = [(n, v) for n, v in zip(g.output_names, g.outputs) if n not in written]
    got_out = [d["name"] for d in summary["outputs"]]
    if got_out != [n for n, _ in kept]:
        problems.append(f"outputs {got_out} vs IR {[n for n, _ in kept]}")
    for d, (_, v) in zip(summary["outputs"], kept):
        if d["shape"] != io_shape(v.type) or d["dtype"] != io_dtype(v.type):
            problems.append(f"output {d['name']}: package {d['dtype']}{d['shape']} vs IR {v.type}")
    from .boundary import Boundary, of_graph

    want, got = of_graph(g), Boundary.from_metadata(dict(spec.description.metadata.userDefined))
    if got != want:
        problems.append(f"boundary record {got} vs IR {want}")
    return problems


OWNER_FILE = ".tlc-owner"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temp(path: Path, max_age_s: float = 24 * 3600) -> list[Path]:
    """Remove the staging directories (``.NAME.*.tmp`` beside ``path``) that earlier builds left
    when they were killed mid-write: those whose owning process (recorded in
    :data:`OWNER_FILE` as ``host pid``) no longer runs on this host, or, without a record, older
    than ``max_age_s``. A live build's directory is never touched. Returns what was removed."""
    removed = []
    for d in Path(path).parent.glob(f".{Path(path).stem}.*.tmp"):
        if not d.is_dir():
            continue
        try:
            host, pid = (d / OWNER_FILE).read_text().split()
            stale = host == socket.gethostname() and not _alive(int(pid))
        except (OSError, ValueError):
            try:
                stale = time.time() - d.stat().st_mtime > max_age_s
            except OSError:
                continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def atomic_dir(path: Path, force: bool, write: Callable[[Path], None]) -> Path:
    """Create directory artifact ``path`` by calling ``write(staged)`` on a temp path in the same
    directory, then renaming it into place (an existing ``path`` is replaced only if ``force``, and
    put back if the rename fails). ``write`` raises to abort; nothing is left behind. Staging
    directories of earlier builds that were killed mid-write are removed first
    (:func:`clean_stale_temp`).

    Raises :class:`OutputExistsError` if ``path`` exists and not ``force``; re-raises
    :class:`TlcError` from ``write``; wraps anything else in :class:`EmitError`.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{str(path)!r} already exists; pass force=True (CLI: --force) to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for d in clean_stale_temp(path):
            print(f"tlc: removed {d.name}, left beside {path.name} by an earlier build that was killed mid-write",
                  file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent))
        (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    except OSError as e:
        raise EmitError(f"cannot create the output directory for {str(path)!r}: {e}") from e
    old = tmp / "old"
    try:
        staged = tmp / path.name
        write(staged)
        if path.exists():
            os.replace(path, old)
        os.replace(staged, path)
    except TlcError:
        raise
    except Exception as e:
        if old.exists() and not path.exists():  # put the user's previous artifact back
            os.replace(old, path)
        raise EmitError(f"could not write {str(path)!r}: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _tree_digest(p: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:
        h.update(str(f.relative_to(p) if p.is_dir() else "").encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"


def make_reproducible(pkg: Path) -> None:
    """Make the ``.mlpackage`` ``pkg`` a function of its content only (issue 18): the model spec
    re-serialized deterministically (protobuf map fields such as the metadata are otherwise
    written in hash order), coremltools' ``conversion_date`` replaced by the date of
    ``$SOURCE_DATE_EPOCH`` or removed, and ``Manifest.json``'s random item identifiers replaced
    by UUIDs derived from each item's path and content (written with sorted keys). Raises
    :class:`EmitError` for a package without a readable manifest or spec."""
    from coremltools.proto import Model_pb2

    try:
        man = json.loads((pkg / "Manifest.json").read_text())
        items = man["itemInfoEntries"]
        root_item = items[man["rootModelIdentifier"]]
        spec_path = pkg / "Data" / root_item["path"]
        m = Model_pb2.Model()
        m.ParseFromString(spec_path.read_bytes())
    except (OSError, ValueError, KeyError) as e:
        raise EmitError(f"package {pkg.name}: cannot read its manifest or model spec ({type(e).__name__}: {e})") from None
    ud = m.description.metadata.userDefined
    if CONVERSION_DATE_KEY in ud:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch:
            ud[CONVERSION_DATE_KEY] = time.strftime("%Y-%m-%d", time.gmtime(int(epoch)))
        else:
            del ud[CONVERSION_DATE_KEY]
    spec_path.write_bytes(m.SerializeToString(deterministic=True))
    renamed = {}
    for old, entry in items.items():
        digest = hashlib.sha256(f"{entry.get('path')}\0{_tree_digest(pkg / 'Data' / entry['path'])}".encode()).digest()
        renamed[old] = str(uuid.UUID(bytes=digest[:16], version=4)).upper()
    man["itemInfoEntries"] = {renamed[k]: v for k, v in items.items()}
    man["rootModelIdentifier"] = renamed[man["rootModelIdentifier"]]
    (pkg / "Manifest.json").write_text(json.dumps(man, indent=4, sort_keys=True) + "\n")


def write_package(mlmodel, dest: Path, check: Callable[[Path], list[str]] | None = None) -> None:
    """Save ``mlmodel`` (coremltools ``MLModel``) as the package ``dest``, byte-reproducibly
    (:func:`make_reproducible`), and run ``check(dest) -> [problem, ...]`` on it; raises
    :class:`EmitError` listing the problems (the caller discards ``dest``, which is always inside
    a staging directory)."""
    with contextlib.redirect_stdout(io.StringIO()):
        mlmodel.save(str(dest))
    make_reproducible(dest)
    problems = check(dest) if check is not None else []
    if problems:
        raise EmitError(f"package {dest.name} does not match the IR: " + "; ".join(problems))


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """Validate an output path before any work: it must end in ``.mlpackage`` (else
    :class:`EmitError`) and not exist unless ``force`` (else :class:`OutputExistsError`)."""
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise EmitError(f"output path {str(path)!r} must end in .mlpackage")
    if path.exists() and not force:
        raise OutputExistsError(f"output {str(path)!r} already exists; pass --force (force=True) to replace it")
    return path


def save_atomic(mlmodel, path: str | os.PathLike, force: bool = False, check=None) -> Path:
    """Write ``mlmodel`` to ``path`` (a ``.mlpackage`` directory) via a temp path in the same
    directory and a rename, so a failed save never leaves a half-written package.

    ``check(staged_path) -> [problem, ...]`` runs on the staged copy before the rename; any
    problem raises :class:`EmitError` and leaves ``path`` (and an existing package there) as it was.

    Raises :class:`OutputExistsError` if ``path`` exists and ``force`` is False,
    :class:`EmitError` if ``path`` does not end in ``.mlpackage`` or the write fails.
    """
    path = check_output_path(path, force)
    return atomic_dir(path, force, lambda staged: write_package(mlmodel, staged, check))


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
    :func:`tlc.emit.convert` (weights compressed as ``compress`` says, a weight-only mode of
    :mod:`tlc.compress`, ops ``skip`` left dense) and checked; with ``program="coreai"`` they are
    Core AI assets instead (``NN.aimodel``, :func:`tlc.coreai_emit.write_aimodel`; no compression).
    Fallback segments are saved with :func:`tlc.serialize.save_graph` (uncompressed: they run in
    tlc's runtime). The manifest names each segment's ``format`` and the bundle's ``program``.
    Returns the path.

    Raises :class:`EmitError` (bad suffix, conversion or check failure; nothing written),
    :class:`OutputExistsError` (``path`` exists and not ``force``).
    """
    from .emit import convert
    from .serialize import save_graph

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
                from .coreai_emit import write_aimodel

                write_aimodel(seg.graph, staged / f"{stem}.aimodel", md)
                e["path"], e["format"] = f"{stem}.aimodel", "aimodel"
            elif seg.target == "ane":
                mlm, _ = convert(seg.graph, precision, minimum_deployment_target, md)
                if compress:
                    from .compress import compress_mlmodel

                    mlm = compress_mlmodel(mlm, compress, skip=skip).mlmodel
                write_package(mlm, staged / f"{stem}.mlpackage", lambda pkg: check_package_io(pkg, seg.graph))
                e["path"], e["format"] = f"{stem}.mlpackage", "mlpackage"
            else:
                save_graph(seg.graph, staged / f"{stem}.json", staged / f"{stem}.safetensors")
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
