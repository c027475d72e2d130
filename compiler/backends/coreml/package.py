"""Core ML packages on disk: written byte-reproducibly (:func:`make_reproducible`), staged and renamed
into place (:func:`save_atomic`), and checked against the IR they were emitted from
(:func:`check_package_io`: names, shapes and dtypes of every input, output and state, reread from
the saved spec)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable

from tlc.boundary import Boundary, of_graph
from tlc.errors import EmitError
from tlc.ir import Graph
from tlc.runtime.mlspec import PackageError, read_spec, spec_summary
from tlc.util.files import atomic_dir, refuse_existing, tree_digest


def check_package_io(path, g: Graph, function_name: str = "main", loaded=None, states=(), io=None) -> list[str]:
    """Reread a saved package's spec (the ``Model`` protobuf with its MIL program, not the weights:
    :func:`tlc.runtime.mlspec.read_spec`; ``loaded``: that spec, when the caller checks several
    functions of one package) and list every mismatch between function ``function_name``'s I/O
    and the IR graph's: input names, shapes and dtypes (bool inputs are int32 in a package, 0-d
    values ``[1]``); output names, shapes and dtypes; and the :mod:`tlc.boundary` record of the 0-d
    and complex ones. ``states`` (:class:`tlc.backends.coreml.state.StateBinding`): IR inputs the package holds as
    fp16 states of the same shape, and IR outputs it writes into them instead of returning. ``io``
    (:class:`tlc.iospec.PackageIO`): a classifier's label and dictionary outputs come first in place
    of its probabilities output, and the package declares them as Core ML's classifier does; image
    features hold the IR's float tensors. Reading no weights keeps the check cheap for
    billion-parameter packages."""
    spec = loaded if loaded is not None else read_spec(path)
    try:
        summary = spec_summary(spec, function_name if len(spec.mlProgram.functions) > 1 else None)
    except PackageError as e:
        return [str(e)]
    names = {"fp32": "float32", "fp16": "float16", "bool": "int32"}
    io_dtype = lambda t: names.get(t.dtype, t.dtype)  # noqa: E731
    io_shape = lambda t: list(t.shape or (1,))  # noqa: E731  (0-d is [1] at the boundary: tlc.backends.coreml.emit.SCALAR_IO_KEY)
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
    want_out = io.output_features([n for n, _ in kept]) if io is not None else [n for n, _ in kept]
    if got_out != want_out:
        problems.append(f"outputs {got_out} vs IR {want_out}")
    values = dict(kept)
    if io is not None and io.classifier is not None:  # the label and dictionary are checked below
        for n in (io.classifier.label_name, io.classifier.dict_name):
            values.pop(n, None)
    for d in summary["outputs"]:
        v = values.get(d["name"])
        if v is not None and (d["shape"] != io_shape(v.type) or d["dtype"] != io_dtype(v.type)):
            problems.append(f"output {d['name']}: package {d['dtype']}{d['shape']} vs IR {v.type}")
    c = io.classifier if io is not None else None
    if c is not None:
        desc = spec.description
        kinds = {o.name: o.type.WhichOneof("Type") for o in desc.output}
        label = "stringType" if isinstance(c.labels[0], str) else "int64Type"
        if (desc.predictedFeatureName, desc.predictedProbabilitiesName) != (c.label_name, c.dict_name) or \
                kinds.get(c.label_name) != label or kinds.get(c.dict_name) != "dictionaryType":
            problems.append(f"classifier outputs {desc.predictedFeatureName} ({kinds.get(c.label_name)}), "
                            f"{desc.predictedProbabilitiesName} ({kinds.get(c.dict_name)}) vs {c.label_name} ({label}), "
                            f"{c.dict_name} (dictionaryType)")
    if io is not None:
        kinds = {f.name: f.type.WhichOneof("Type") for f in list(spec.description.input) + list(spec.description.output)}
        for im in io.images + io.image_outputs:
            if kinds.get(im.name) != "imageType":
                problems.append(f"{im.name} is a {kinds.get(im.name)} feature, declared an image")
    want, got = of_graph(g), Boundary.from_metadata(dict(spec.description.metadata.userDefined))
    if got != want:
        problems.append(f"boundary record {got} vs IR {want}")
    return problems


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
        digest = hashlib.sha256(f"{entry.get('path')}\0{tree_digest(pkg / 'Data' / entry['path'])}".encode()).digest()
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
    return refuse_existing(path, force)


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


__all__ = ["check_package_io", "make_reproducible", "write_package", "check_output_path", "save_atomic",
           "CONVERSION_DATE_KEY"]
