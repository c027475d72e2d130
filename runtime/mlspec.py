"""Reading an ``.mlpackage``'s model spec without coremltools' Python package.

``tlc inspect`` needs only the spec (Core ML's ``Model.proto``): inputs, outputs, states,
functions, op histogram, metadata. Importing ``coremltools`` takes ~4-5 s because it imports torch
and its converters; the protobuf modules it ships (``coremltools/proto/*_pb2.py``) take 0.06 s.
:func:`proto` loads those modules as the package ``_tlc_ctproto`` without running
``coremltools/__init__.py`` (the message classes are the same objects coremltools later uses:
protobuf keeps one class per message type), so reading a package costs no torch import.
The package checks (:func:`check_package`) are shared with :func:`tlc.runtime.load_program`.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

from tlc._coreml import package_size
from tlc.errors import TlcError

#: MIL_pb2.DataType names -> NumPy dtype names (coremltools ``MIL.proto``).
_DTYPE_NAMES = {"FLOAT16": "float16", "FLOAT32": "float32", "FLOAT64": "float64", "BFLOAT16": "bfloat16",
                "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "UINT8": "uint8",
                "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "BOOL": "bool", "STRING": "object",
                "INT4": "int4", "UINT4": "uint4"}
_FLOAT = {"float16", "float32", "float64", "bfloat16"}
#: MIL opset names in the spec -> coremltools target names (``coremltools.target``).
_OPSETS = {"CoreML5": "iOS15", "CoreML6": "iOS16", "CoreML7": "iOS17", "CoreML8": "iOS18"}


class PackageError(TlcError):
    """A path that is not a loadable mlprogram package (missing, not a package, neuralnetwork
    model, truncated or corrupted weights)."""

    exit_code = 2


def proto(name: str = "Model_pb2"):
    """coremltools' generated protobuf module ``name`` (``Model_pb2``, ``MIL_pb2``, ...), loaded
    without importing coremltools itself. Raises :class:`PackageError` if coremltools is absent."""
    full = f"_tlc_ctproto.{name}"
    if full not in sys.modules:
        if "_tlc_ctproto" not in sys.modules:
            spec = importlib.util.find_spec("coremltools")
            if spec is None or not spec.submodule_search_locations:
                raise PackageError("reading a .mlpackage needs coremltools: pip install coremltools")
            pkg = types.ModuleType("_tlc_ctproto")
            pkg.__path__ = [str(Path(spec.submodule_search_locations[0]) / "proto")]
            sys.modules["_tlc_ctproto"] = pkg
        importlib.import_module(full)
    return sys.modules[full]


def check_package(path: str | Path) -> tuple[Path, dict]:
    """``(path, manifest)`` of an ``.mlpackage`` directory whose Manifest.json lists only files
    that exist; raises :class:`PackageError` naming what is wrong (missing path, not a package,
    unreadable manifest, a listed file missing)."""
    path = Path(path)
    if not path.exists():
        raise PackageError(f"{str(path)!r} does not exist")
    if not path.is_dir() or not (path / "Manifest.json").is_file():
        raise PackageError(f"{str(path)!r} is not an .mlpackage (expected a directory with Manifest.json)")
    try:
        manifest = json.loads((path / "Manifest.json").read_text())
        entries = manifest["itemInfoEntries"]
    except (ValueError, KeyError) as e:
        raise PackageError(f"{str(path)!r}: Manifest.json is unreadable ({e})") from None
    for info in entries.values():
        item = path / "Data" / info["path"]
        if not item.exists():
            raise PackageError(f"{str(path)!r} is incomplete: {info['path']} listed in Manifest.json is missing")
    return path, manifest


def read_spec(path: str | Path):
    """The ``Model`` protobuf message of a package (its root model, per Manifest.json's
    ``rootModelIdentifier``); raises :class:`PackageError` for a bad package, an unreadable spec
    or a model that is not an mlprogram."""
    path, manifest = check_package(path)
    entries = manifest["itemInfoEntries"]
    root = entries.get(manifest.get("rootModelIdentifier", ""), None)
    root = root or next((e for e in entries.values() if e["path"].endswith(".mlmodel")), None)
    if root is None:
        raise PackageError(f"{str(path)!r}: Manifest.json names no model spec")
    spec = proto("Model_pb2").Model()
    try:
        spec.ParseFromString((path / "Data" / root["path"]).read_bytes())
    except Exception as e:
        raise PackageError(f"{str(path)!r}: the model spec cannot be read ({type(e).__name__}: {e})") from None
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise PackageError(f"{str(path)!r} holds a {kind} model; tlc's interpreter runs mlprogram models only "
                           f"(convert with convert_to='mlprogram')")
    return spec


def _dtype(value_type) -> str:
    t = value_type.tensorType if value_type.HasField("tensorType") else None
    if t is None:
        return "object"
    return _DTYPE_NAMES.get(proto("MIL_pb2").DataType.Name(t.dataType), "object")


def _shape(value_type, unknown="*") -> list:
    t = value_type.tensorType
    return [d.constant.size if d.WhichOneof("dimension") == "constant" else unknown for d in t.dimensions]


def _walk(ops):
    for op in ops:
        yield op
        for blk in op.blocks:
            yield from _walk(blk.operations)


def spec_summary(spec, function_name: str | None = None) -> dict:
    """Functions, inputs, states, outputs, ops and precision of one function of a spec, read from
    the protobuf (the same facts :class:`tlc.runtime.MILInterpreter` has after loading the
    program): ``inputs``/``states``/``outputs`` as ``{name, shape, dtype}`` (``"*"`` for a
    flexible dimension; ``image``: the color space of an image feature; ``feature``: ``String``,
    ``Int64`` or ``Dictionary`` for a classifier's outputs; ``description``: the feature's
    description when it has one), ``ops`` the non-const op histogram (nested blocks and ``constexpr_*``
    included, most frequent first), ``num_ops`` the top-level non-const ops, ``precision``
    (``fp16`` if every top-level float op other than boundary casts computes in fp16, ``fp32`` if
    none does, else ``mixed``). Raises :class:`PackageError` for an unknown function."""
    from .mil_io import function_description, image_format, shape_rule

    prog = spec.mlProgram
    functions = list(prog.functions)
    default = spec.description.defaultFunctionName or "main"
    name = function_name or (default if default in prog.functions else functions[0])
    if name not in prog.functions:
        raise PackageError(f"package has no function {name!r} (functions: {', '.join(functions)}; default {default!r})")
    f = prog.functions[name]
    opset = f.opset
    block = f.block_specializations[opset]
    in_desc, out_desc, state_desc = function_description(spec, name)
    state_names = {d.name for d in state_desc}
    text = {d.name: d.shortDescription for d in in_desc + out_desc if d.shortDescription}
    kinds = {d.name: d.type.WhichOneof("Type") for d in out_desc}
    rules = {d.name: shape_rule(d) for d in in_desc}
    images = {d.name: fmt for d in in_desc if (fmt := image_format(d)) is not None}
    image_outputs = {d.name: fmt for d in out_desc if (fmt := image_format(d)) is not None}
    inputs, states = [], []
    for v in f.inputs:
        if v.name in state_names:
            wrapped = v.type.stateType.wrappedType
            states.append({"name": v.name, "shape": _shape(wrapped), "dtype": _dtype(wrapped)})
            continue
        rule = rules.get(v.name)
        d = {"name": v.name, "shape": list(rule.default) if rule is not None and rule.default else _shape(v.type),
             "dtype": _dtype(v.type)}
        if rule is not None and rule.kind != "fixed":
            d["allowed"] = rule.describe()
            d["shapes"] = rule.as_dict()
        if v.name in images:
            d["image"] = images[v.name].color_space
        if v.name in text:
            d["description"] = text[v.name]
        inputs.append(d)
    top = [op for op in block.operations if op.type != "const"]
    types_of = {o.name: o.type for op in _walk(block.operations) for o in op.outputs}
    outputs = []
    for out in block.outputs:
        t = types_of.get(out)
        d = {"name": out, "shape": _shape(t) if t is not None else [], "dtype": _dtype(t) if t is not None else "object"}
        if out in image_outputs:
            d["image"] = image_outputs[out].color_space
        if kinds.get(out) in ("stringType", "int64Type", "dictionaryType"):  # a classifier's label / probabilities
            d["feature"] = {"stringType": "String", "int64Type": "Int64", "dictionaryType": "Dictionary"}[kinds[out]]
        if out in text:
            d["description"] = text[out]
        outputs.append(d)
    hist: dict[str, int] = {}
    for op in _walk(block.operations):
        if op.type != "const":
            hist[op.type] = hist.get(op.type, 0) + 1
    float_ops = [op for op in top if not op.type.startswith("constexpr_") and op.outputs and _dtype(op.outputs[0].type) in _FLOAT]
    n16 = sum(_dtype(op.outputs[0].type) == "float16" for op in float_ops)
    precision = "fp16" if float_ops and n16 == len(float_ops) else ("fp32" if n16 == 0 else "mixed")
    if precision == "mixed" and all(_dtype(op.outputs[0].type) == "float16" for op in float_ops if op.type != "cast"):
        precision = "fp16"  # casts at the fp32 I/O boundary of an fp16 program do not make it "mixed"
    return {"function": name, "functions": functions, "inputs": inputs, "states": states, "outputs": outputs,
            "ops": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))), "num_ops": len(top),
            "precision": precision, "opset": _OPSETS.get(opset, opset)}




def package_info(path: str | Path, function_name: str | None = None) -> dict:
    """What ``tlc inspect`` shows for one function (default: the package's default function),
    read from the spec alone (:mod:`tlc.runtime.mlspec`: no coremltools or torch import, no
    weights read): inputs (with ``allowed`` shapes for a flexible input: ``RangeDim`` ranges or
    the enumerated shapes, and ``image`` for an image input), outputs, states, the package's
    functions, op histogram (non-const), precision (``fp16`` if every float op computes in fp16,
    ``fp32`` if none does, else ``mixed``), size in bytes, spec version, opset and metadata;
    ``function_inputs`` (``{function: {input: shape}}``, every function, default first) and
    ``compression`` (``{constexpr op type: count}`` of the function: its compressed weights,
    :data:`COMPRESSION_OPS` says which kind each is); the model page's ``author``, ``license``,
    ``version`` and ``short_description``; ``classifier`` (``{"label": name, "probabilities": name}``
    of a Core ML classifier, else None).
    Raises :class:`PackageError` for a path that is not an mlprogram package."""
    spec = read_spec(path)
    desc = spec.description
    info = spec_summary(spec, function_name)
    default = desc.defaultFunctionName or info["functions"][0]
    order = sorted(info["functions"], key=lambda f: f != default)
    shapes = {f: {d["name"]: d["shape"] for d in (info if f == info["function"] else spec_summary(spec, f))["inputs"]}
              for f in order}
    compression = {k: v for k, v in info["ops"].items() if k in COMPRESSION_OPS}
    return {"path": str(path), **info, "default_function": default, "function_inputs": shapes,
            "compression": compression, "size_bytes": package_size(path),
            "specification_version": spec.specificationVersion, "metadata": dict(desc.metadata.userDefined),
            "short_description": desc.metadata.shortDescription, "author": desc.metadata.author,
            "license": desc.metadata.license, "version": desc.metadata.versionString,
            "classifier": ({"label": desc.predictedFeatureName, "probabilities": desc.predictedProbabilitiesName}
                           if desc.predictedFeatureName else None)}


#: constexpr op types coremltools' compression emits, and what each holds
COMPRESSION_OPS = {
    "constexpr_affine_dequantize": "linear-quantized (iOS16)",
    "constexpr_blockwise_shift_scale": "linear-quantized (iOS18)",
    "constexpr_lut_to_dense": "palettized",
    "constexpr_sparse_to_dense": "sparse",
    "constexpr_cast": "fp16 stored, cast",
}

__all__ = ["PackageError", "proto", "check_package", "read_spec", "spec_summary", "package_info", "COMPRESSION_OPS"]
