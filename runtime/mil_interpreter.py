"""Execute Core ML mlprogram packages with NumPy, anywhere (no macOS, no Core ML).

Loading goes through coremltools' own code: ``MLModel(path, skip_model_load=True)`` for the spec,
its milproto loader (``coremltools.converters.mil.frontend.milproto.load``) for the MIL program,
and with it coremltools' blob reader for the weight file. The ``main`` function then runs op by op
with the kernels of tlc's op table (:mod:`tlc.ops`): each MIL op maps to its row through the
row's ``mil_inputs`` / ``from_mil`` (the same kernels that execute tlc's IR).

**fp16 fidelity.** Every value holds what the dtype the program declares for it can hold. An
op whose inputs are fp16 computes in fp32 and rounds its result to fp16: elementwise ops are then exactly
what a correctly rounded fp16 unit gives, and matmul/conv/reductions accumulate in fp32 before
one final rounding. Apple does not publish the Neural Engine's accumulator width
(hollance/neural-engine docs/16-bit.md: the ANE computes in fp16); fp32 accumulation is what
GPU half-precision matrix units do and what Core ML's CPU fp16 path does, so it is the
documented assumption here. Rounding to fp16 overflows to +/-inf above 65504 exactly as on
device, so fp16 overflow shows up as inf/NaN in the interpreter's outputs. fp16 values are kept
in float32 arrays between ops (rounded with :func:`tlc.ops.round_fp16`, bit-identical to a
float16 round trip) and become float16 only at the program's outputs: NumPy's float16
conversions were most of the fp16 programs' run time (docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from tlc._coreml import package_size, quiet_coremltools
from tlc.errors import TlcError
from tlc.ops import OPS, args_from_mil, round_fp16, run_kernel, to_float32
from tlc.ops.compression import CONSTEXPR_OPS

from .numpy_executor import validate_feeds


class PackageError(TlcError):
    """A path that is not a loadable mlprogram package (missing, not a package, neuralnetwork
    model, truncated or corrupted weights)."""

    exit_code = 2


class UnsupportedMILOpError(TlcError):
    """The program uses a MIL op tlc's interpreter has no kernel for."""


def load_program(path: str | Path):
    """Load ``path`` (an ``.mlpackage`` directory) and return ``(mlmodel, spec, program)``.

    Raises :class:`PackageError` naming what is wrong: path missing; not a package (no
    ``Manifest.json``); a neuralnetwork (not mlprogram) model; an unreadable spec; weights that
    are truncated or corrupted.
    """
    ct = quiet_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

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
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
    except Exception as e:
        raise PackageError(f"{str(path)!r}: the model spec cannot be read ({type(e).__name__}: {e})") from None
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise PackageError(
            f"{str(path)!r} holds a {kind} model; tlc's interpreter runs mlprogram models only "
            f"(convert with convert_to='mlprogram')")
    _check_weight_offsets(spec, mlmodel.weights_dir)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            prog = milproto_load(spec, spec.specificationVersion, mlmodel.weights_dir)
    except Exception as e:
        raise PackageError(
            f"{str(path)!r}: the MIL program or its weights cannot be loaded ({type(e).__name__}: {e}); "
            f"the weight file may be truncated or corrupted") from None
    if "main" not in prog.functions:
        raise PackageError(f"{str(path)!r} has no 'main' function (functions: {', '.join(prog.functions)})")
    return mlmodel, spec, prog


def _check_weight_offsets(spec, weights_dir) -> None:
    """Every blob a const refers to must lie inside its weight file (coremltools' reader would
    otherwise read past the end). Blob layout: a 64-byte metadata record per blob at ``offset``,
    then the data (coremltools ``mil/mil/passes/../blob`` storage format, MILBlob v2)."""
    if weights_dir is None:
        return
    sizes: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                for attr in op.attributes.values():
                    if attr.WhichOneof("value") == "blobFileValue":
                        bf = attr.blobFileValue
                        name = bf.fileName.replace("@model_path/weights/", "")
                        f = Path(weights_dir) / name
                        if name not in sizes:
                            if not f.is_file():
                                raise PackageError(f"weight file {name} referenced by op {op.outputs[0].name} is missing")
                            sizes[name] = f.stat().st_size
                        if bf.offset + 64 > sizes[name]:
                            raise PackageError(
                                f"weight file {name} is truncated: op {op.outputs[0].name} needs offset {bf.offset} "
                                f"but the file has {sizes[name]} bytes")


def _np_dtype(mil_dtype):
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(mil_dtype))


class MILInterpreter:
    """Runs the ``main`` function of an mlprogram package with NumPy.

    ``MILInterpreter(path)`` loads the package; ``MILInterpreter(path, mlmodel=m)`` runs the MIL
    program ``m`` was serialized from (``m._mil_program``, e.g. from :func:`tlc.emit.convert`)
    instead of parsing ``path`` again.

    ``inputs``: list of ``(name, shape, numpy dtype)``; ``outputs``: output names;
    ``opset``: the function's opset (e.g. ``"CoreML7"``). Call with named NumPy arrays.
    """

    def __init__(self, path: str | Path, *, mlmodel=None):
        self.path = Path(path)
        if mlmodel is not None and getattr(mlmodel, "_mil_program", None) is not None:
            # the program an MLModel was serialized from (tlc.emit.convert keeps it): the same ops and
            # weights the package holds, without parsing them back (ResNet-50: 0.17 s)
            self.mlmodel, self.spec, self.program = mlmodel, mlmodel.get_spec(), mlmodel._mil_program
        else:
            self.mlmodel, self.spec, self.program = load_program(self.path)
        self.function = self.program.functions["main"]
        ov = self.function.opset_version
        self.opset = getattr(ov, "name", str(ov))  # e.g. "iOS17"
        self.inputs = [(n, tuple(int(d) for d in v.shape), _np_dtype(v.dtype)) for n, v in self.function.inputs.items()]
        self.outputs = [v.name for v in self.function.outputs]
        self._ops = [op for op in self.function.operations if op.op_type != "const"]
        self._out_dtypes = {v.name: _np_dtype(v.dtype) for v in self.function.outputs}
        self._wide: dict[int, np.ndarray] = {}  # fp16 constants widened once (id of the MIL var)
        for op in self._ops:
            if op.op_type not in OPS:
                raise UnsupportedMILOpError(
                    f"MIL op '{op.op_type}' (op {op.name}, opset {self.opset}) is not supported by tlc's "
                    f"interpreter; supported: {', '.join(sorted(OPS))}")
        # compressed weights (constexpr_*: every input a constant) are decompressed once, here
        self._consts: dict[str, np.ndarray] = {}
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for op in self._ops:
                if op.op_type in CONSTEXPR_OPS:
                    self._run_op(op, self._consts)
        self._all_ops = self._ops
        self._ops = [op for op in self._ops if op.op_type not in CONSTEXPR_OPS]

    def op_histogram(self) -> dict[str, int]:
        """Count of non-const ops per MIL op type (``constexpr_*`` included), most frequent first."""
        h: dict[str, int] = {}
        for op in self._all_ops:
            h[op.op_type] = h.get(op.op_type, 0) + 1
        return dict(sorted(h.items(), key=lambda kv: (-kv[1], kv[0])))

    def __call__(self, feeds: Mapping[str, np.ndarray] | None = None, **named) -> dict[str, np.ndarray]:
        return self.run({**(feeds or {}), **named})

    def run(self, feeds: Mapping[str, np.ndarray], observer: Callable | None = None) -> dict[str, np.ndarray]:
        """Execute ``main``; returns ``{output_name: array}`` in the program's output dtypes.

        ``observer(op, outputs)`` is called after each op. Raises :class:`InputError` for
        missing/misnamed inputs or wrong shapes/dtypes, :class:`TlcError` naming the op when a
        kernel fails or produces a shape other than the program declares.
        """
        env = dict(self._consts)
        env.update((k, v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in
                   validate_feeds(self.inputs, {k: np.asarray(v) for k, v in feeds.items()}, f"{self.path.name}").items())
        last = {}
        for i, op in enumerate(self._ops):
            for var in _input_vars(op):
                last[var.name] = i
        keep = set(self.outputs)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for i, op in enumerate(self._ops):
                outs = self._run_op(op, env)
                if observer is not None:
                    observer(op, outs)
                for var in _input_vars(op):
                    if last.get(var.name) == i and var.name not in keep:
                        env.pop(var.name, None)
        out = {n: env[n] if n in env else self._constant_output(n) for n in self.outputs}
        return {n: a.astype(self._out_dtypes[n]) if a.dtype != self._out_dtypes[n] and a.dtype.kind == "f" else a
                for n, a in out.items()}

    def _constant_output(self, name: str) -> np.ndarray:
        """An output no op computes: a constant of the program (coremltools' const_elimination
        turns an output that does not depend on the inputs into a ``const`` op)."""
        var = next(v for v in self.function.outputs if v.name == name)
        if var.val is None:
            raise TlcError(f"output {name} is neither computed by an op nor a constant of the program")
        return np.array(var.val, dtype=_np_dtype(var.dtype))

    def _run_op(self, op, env) -> tuple:
        def value(var):
            if var.val is not None:
                v = var.val
                if isinstance(v, np.ndarray) and v.dtype == np.float16:
                    w = self._wide.get(id(var))
                    if w is None:
                        w = self._wide[id(var)] = to_float32(v)
                    return w
                return v
            try:
                return env[var.name]
            except KeyError:
                raise TlcError(f"MIL op {op.name} ({op.op_type}) reads %{var.name} before it is computed") from None

        vals = {}
        for k, var in op.inputs.items():
            vals[k] = [value(v) for v in var] if isinstance(var, (list, tuple)) else value(var)
        row = OPS[op.op_type]
        try:
            arrays, attrs = args_from_mil(row, vals)
            dts = [_np_dtype(v.dtype) for v in op.outputs]
            res = run_kernel(row, attrs, [np.asarray(a) for a in arrays], [np.float32 if d == np.float16 else d for d in dts])
            res = tuple(round_fp16(a) if d == np.float16 else a for a, d in zip(res, dts))
        except TlcError as e:
            raise TlcError(f"MIL op {op.name} ({op.op_type}): {e.args[0]}") from None
        except Exception as e:
            raise TlcError(f"MIL op {op.name} ({op.op_type}) failed in tlc's kernel: {type(e).__name__}: {e}") from e
        outs = []
        for var, a in zip(op.outputs, res):
            want = tuple(var.shape)
            if all(isinstance(d, (int, np.integer)) for d in want) and a.shape != tuple(int(d) for d in want):
                raise TlcError(f"MIL op {op.name} ({op.op_type}) produced shape {list(a.shape)}; "
                               f"the program declares {list(want)}")
            env[var.name] = a
            outs.append(a)
        return tuple(outs)


def _input_vars(op):
    for var in op.inputs.values():
        for v in (var if isinstance(var, (list, tuple)) else (var,)):
            if v.val is None:
                yield v


def package_info(path: str | Path) -> dict:
    """What ``tlc inspect`` shows: inputs, outputs, op histogram (non-const), precision (``fp16``
    if every float op computes in fp16, ``fp32`` if none does, else ``mixed``), size in bytes,
    spec version, opset and metadata."""
    interp = MILInterpreter(path)
    f = interp.function
    float_ops = [op for op in interp._ops if op.outputs and _np_dtype(op.outputs[0].dtype).kind == "f"]
    n16 = sum(1 for op in float_ops if _np_dtype(op.outputs[0].dtype) == np.float16)
    precision = "fp16" if float_ops and n16 == len(float_ops) else ("fp32" if n16 == 0 else "mixed")
    # casts at the fp32 I/O boundary of an fp16 program do not make it "mixed"
    if precision == "mixed":
        core = [op for op in float_ops if op.op_type != "cast"]
        if all(_np_dtype(op.outputs[0].dtype) == np.float16 for op in core):
            precision = "fp16"
    desc = interp.spec.description
    md = dict(desc.metadata.userDefined)
    size = package_size(path)
    return {
        "path": str(path),
        "inputs": [{"name": n, "shape": list(s), "dtype": d.name} for n, s, d in interp.inputs],
        "outputs": [{"name": v.name, "shape": [int(d) if isinstance(d, (int, np.integer)) else str(d) for d in v.shape],
                     "dtype": _np_dtype(v.dtype).name} for v in f.outputs],
        "ops": interp.op_histogram(),
        "num_ops": len(interp._all_ops),
        "precision": precision,
        "size_bytes": size,
        "specification_version": interp.spec.specificationVersion,
        "opset": interp.opset,
        "metadata": md,
        "short_description": desc.metadata.shortDescription,
    }
