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
import warnings
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import numpy as np

from tlc._coreml import quiet_coremltools
from tlc.errors import TlcError
from tlc.ops import OPS, args_from_mil, round_fp16, run_kernel, to_float32
from tlc.ops.compression import CONSTEXPR_OPS

from tlc.errors import InputError

from .mil_control import CONTROL_BUILTINS
from .mil_io import ShapeRule, function_description, image_format, image_to_tensor, shape_rule, tensor_to_image
from .mlspec import PackageError, check_package
from .numpy_executor import validate_feeds


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

    path, _ = check_package(path)
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
    if not prog.functions:
        raise PackageError(f"{str(path)!r} has no function")
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
    """The NumPy dtype of a MIL type; ``object`` for non-tensor values (``classify``'s
    ``{class: probability}`` dict, its string label)."""
    from coremltools.converters.mil.mil import types

    if types.is_dict(mil_dtype) or mil_dtype is types.str:
        return np.dtype(object)
    return np.dtype(types.nptype_from_builtin(mil_dtype))


class MILInterpreter:
    """Runs one function of an mlprogram package with NumPy.

    ``MILInterpreter(path)`` loads the package and runs its default function (``main``, or the
    ``defaultFunctionName`` of a multifunction package); ``function_name=`` picks another
    (``functions`` lists them). ``MILInterpreter(path, mlmodel=m)`` runs the MIL program ``m`` was
    serialized from (``m._mil_program``, e.g. from :func:`tlc.backends.coreml.emit.convert`) instead of parsing
    ``path`` again; ``loaded=`` takes :func:`load_program`'s ``(mlmodel, spec, program)`` (to run
    several functions of one package without loading it once per function).

    Attributes: ``inputs``, a list of ``(name, shape, numpy dtype)`` with None on axes a flexible
    input may vary along; ``shape_rules`` (name -> :class:`~tlc.runtime.mil_io.ShapeRule`: the
    shapes each input allows, from ``RangeDim`` / ``EnumeratedShapes`` / image size ranges);
    ``images`` / ``image_outputs`` (name -> :class:`~tlc.runtime.mil_io.ImageFormat`); ``states``
    (name -> ``(shape, numpy dtype)``: MLState buffers, iOS18); ``outputs``: output names
    (``output_rows``: ``(name, shape, numpy dtype)``);
    ``opset`` (e.g. ``"iOS17"``). Call with named NumPy arrays (images: PIL images or uint8
    ``[H, W, C]`` arrays); a stateful function also takes ``state=`` from :meth:`make_state`.
    """

    def __init__(self, path: str | Path, *, mlmodel=None, function_name: str | None = None, loaded=None):
        self.path = Path(path)
        if loaded is not None:  # (mlmodel, spec, program) of load_program: another function of one package
            self.mlmodel, self.spec, self.program = loaded
        elif mlmodel is not None and getattr(mlmodel, "_mil_program", None) is not None:
            # the program an MLModel was serialized from (tlc.backends.coreml.emit.convert keeps it): the same ops and
            # weights the package holds, without parsing them back (ResNet-50: 0.17 s)
            self.mlmodel, self.spec, self.program = mlmodel, mlmodel.get_spec(), mlmodel._mil_program
        else:
            self.mlmodel, self.spec, self.program = load_program(self.path)
        self.functions = list(self.program.functions)
        default = self.spec.description.defaultFunctionName or "main"
        self.function_name = function_name or (default if default in self.program.functions else self.functions[0])
        if self.function_name not in self.program.functions:
            raise PackageError(f"{self.path.name} has no function {self.function_name!r} "
                               f"(functions: {', '.join(self.functions)}; default {default!r})")
        self.function = self.program.functions[self.function_name]
        ov = self.function.opset_version
        self.opset = getattr(ov, "name", str(ov))  # e.g. "iOS17"
        in_desc, out_desc, state_desc = function_description(self.spec, self.function_name)
        self.shape_rules: dict[str, ShapeRule] = {f.name: shape_rule(f) for f in in_desc}
        self.images = {f.name: fmt for f in in_desc if (fmt := image_format(f)) is not None}
        self.image_outputs = {f.name: fmt for f in out_desc if (fmt := image_format(f)) is not None}
        state_names = {f.name for f in state_desc}
        self.states = {n: (tuple(int(d) for d in v.shape), _np_dtype(v.dtype))
                       for n, v in self.function.inputs.items() if n in state_names}
        self.inputs = [(n, self.shape_rules[n].wildcard() if n in self.shape_rules else _dims(v.shape), _np_dtype(v.dtype))
                       for n, v in self.function.inputs.items() if n not in state_names]
        self.outputs = [v.name for v in self.function.outputs]
        self._out_dtypes = {v.name: _np_dtype(v.dtype) for v in self.function.outputs}
        #: ``(name, shape, numpy dtype)`` of each output, as the package declares it
        self.output_rows = [(v.name, _dims(v.shape), self._out_dtypes[v.name]) for v in self.function.outputs]
        self._wide: dict[int, np.ndarray] = {}  # fp16 constants widened once (id of the MIL var)
        self._plans: dict[int, tuple] = {}  # per op (id): its row, output dtypes and declared shapes (_plan)
        self._subst: dict[str, np.ndarray] | None = None  # constants replaced during replay()
        ops = [op for op in self.function.operations if op.op_type != "const"]
        for op in _walk(ops):
            if op.op_type not in OPS and op.op_type not in BUILTINS and op.op_type != "const":
                raise UnsupportedMILOpError(
                    f"MIL op '{op.op_type}' (op {op.name}, opset {self.opset}) is not supported by tlc's "
                    f"interpreter; supported: {', '.join(sorted(set(OPS) | set(BUILTINS)))}")
        # compressed weights (constexpr_*: every input a constant) are decompressed once, here
        self._consts: dict[str, np.ndarray] = {}
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for op in ops:
                if op.op_type in CONSTEXPR_OPS:
                    self._run_op(op, self._consts)
        self._all_ops = ops
        self._first_reader: dict[str, int] | None = None  # const name -> index of the first top-level op reading it
        self._ops = [op for op in ops if op.op_type not in CONSTEXPR_OPS]
        # values to free after each top-level op (their last reader, nested blocks included)
        last: dict[str, int] = {}
        for i, op in enumerate(self._ops):
            for name in _reads(op):
                last[name] = i
        keep = set(self.outputs)
        self._free: list[list[str]] = [[] for _ in self._ops]
        for name, i in last.items():
            if name not in keep:
                self._free[i].append(name)

    def op_histogram(self) -> dict[str, int]:
        """Count of non-const ops per MIL op type (``constexpr_*`` and ops inside control-flow
        blocks included), most frequent first."""
        h: dict[str, int] = {}
        for op in _walk(self._all_ops):
            if op.op_type != "const":
                h[op.op_type] = h.get(op.op_type, 0) + 1
        return dict(sorted(h.items(), key=lambda kv: (-kv[1], kv[0])))

    def make_state(self) -> dict[str, np.ndarray]:
        """Fresh state buffers for a stateful function (as Core ML's ``MLModel.make_state()``):
        ``{state name: zeros of its shape and dtype}``. Pass it as ``run(..., state=...)``; each
        call reads and updates it in place, so consecutive calls see each other's writes.
        Raises :class:`TlcError` for a function without states."""
        if not self.states:
            raise TlcError(f"{self.path.name} ({self.function_name}) has no state")
        return {n: np.zeros(shape, dt) for n, (shape, dt) in self.states.items()}

    def __call__(self, feeds: Mapping[str, np.ndarray] | None = None, *, state=None, **named) -> dict[str, np.ndarray]:
        return self.run({**(feeds or {}), **named}, state=state)

    def check_feeds(self, feeds: Mapping) -> dict[str, np.ndarray]:
        """Feeds as the program takes them: images converted (:func:`~tlc.runtime.mil_io.image_to_tensor`),
        dtypes checked and safely converted (:func:`validate_feeds`), shapes checked against what
        the package allows. Raises :class:`InputError` naming the input and the allowed shapes."""
        feeds = {k: (image_to_tensor(v, self.images[k], k) if k in self.images else np.asarray(v)) for k, v in feeds.items()}
        for name, a in feeds.items():
            rule = self.shape_rules.get(name)
            if rule is not None and rule.kind != "fixed" and not rule.allows(a.shape):
                raise InputError(f"input {name!r} has shape {list(a.shape)}; {self.path.name} "
                                 f"({self.function_name}) allows {rule.describe()}")
        return validate_feeds(self.inputs, feeds, f"{self.path.name}")

    def run(self, feeds: Mapping[str, np.ndarray], observer: Callable | None = None,
            state: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Execute the function; returns ``{output_name: array}`` in the program's output dtypes
        (an image output as a uint8 ``[H, W, C]`` array, RGB order).

        ``observer(op, outputs)`` is called after each top-level op. ``state`` (from
        :meth:`make_state`) is required by a stateful function and updated in place. Raises
        :class:`InputError` for missing/misnamed inputs, wrong dtypes or shapes the package does
        not allow, a missing state; :class:`TlcError` naming the op when a kernel fails or
        produces a shape other than the program declares.
        """
        env = self._fed(self.check_feeds(feeds))
        if self.states:
            if state is None:
                raise InputError(f"{self.path.name} ({self.function_name}) is stateful (states: "
                                 f"{', '.join(self.states)}): pass state=interpreter.make_state() and keep it between calls")
            missing = [n for n in self.states if n not in state]
            if missing:
                raise InputError(f"state is missing {missing}; make it with make_state()")
            for n, (shape, _) in self.states.items():
                if tuple(state[n].shape) != shape:
                    raise InputError(f"state {n!r} has shape {list(state[n].shape)}, expected {list(shape)}")
                env[n] = _State(state, n)
        self._execute(env, 0, observer)
        out = self._typed({n: env[n] if n in env else self._constant_output(n) for n in self.outputs})
        for n, fmt in self.image_outputs.items():
            out[n] = tensor_to_image(out[n], fmt)
        for n, a in out.items():  # a classifier's label and {class: probability}, as Core ML returns them
            if isinstance(a, np.ndarray) and a.dtype == object and a.ndim == 0:
                out[n] = a.item()
        return out

    def record(self, feeds: Mapping[str, np.ndarray]) -> "Recording":
        """Run on ``feeds`` keeping every top-level value (for :meth:`replay`); a stateless
        function only. Memory: every intermediate value of one run."""
        values: dict[str, tuple[int, np.ndarray]] = {}
        index = {id(op): i for i, op in enumerate(self._ops)}
        self.run(feeds, observer=lambda op, outs: values.update(
            (v.name, (index[id(op)], a)) for v, a in zip(op.outputs, outs)))
        return Recording(self.check_feeds(feeds), values)

    def replay(self, rec: "Recording", weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs :meth:`run` gives on ``rec``'s feeds with the constants ``weights``
        (``{const name: array}``, e.g. a weight as it decompresses after compression) in place of
        the program's, computed from the first op that reads one of them on (the values before it
        are ``rec``'s). Raises :class:`TlcError` for a name that is no constant any op reads."""
        if self._first_reader is None:
            self._first_reader = {}
            for i, op in enumerate(self._ops):
                for sub in _walk([op]):
                    for var in sub.inputs.values():
                        for v in (var if isinstance(var, (list, tuple)) else (var,)):
                            if v.val is not None:
                                self._first_reader.setdefault(v.name, i)
        missing = [k for k in weights if k not in self._first_reader]
        if missing:
            raise TlcError(f"replay: {missing} are no constants the program's ops read")
        start = min((self._first_reader[k] for k in weights), default=len(self._ops))
        env = self._fed(rec.feeds)
        env.update((k, a) for k, (i, a) in rec.values.items() if i < start)
        self._subst = {k: to_float32(v) if v.dtype == np.float16 else v for k, v in weights.items()}
        try:
            self._execute(env, start)
        finally:
            self._subst = None
        return self._typed({n: env[n] if n in env else rec.values[n][1] if n in rec.values else self._constant_output(n)
                            for n in self.outputs})

    def _fed(self, feeds: Mapping[str, np.ndarray]) -> dict:
        """The environment a run starts from: the program's constants and the (checked) feeds,
        fp16 feeds widened to fp32 as every kernel computes."""
        env = dict(self._consts)
        env.update((k, v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in feeds.items())
        return env

    def _execute(self, env: dict, start: int = 0, observer: Callable | None = None) -> None:
        """Run the top-level ops from index ``start`` on in ``env``, freeing each value after its
        last reader; ``observer(op, outputs)`` after each op."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for op, free in zip(self._ops[start:], self._free[start:]):
                outs = self._exec(op, env)
                if observer is not None:
                    observer(op, outs)
                for name in free:
                    env.pop(name, None)

    def _typed(self, out: dict) -> dict:
        """Float outputs in the dtypes the program declares (kernels compute in fp32)."""
        return {n: a.astype(self._out_dtypes[n]) if a.dtype != self._out_dtypes[n] and a.dtype.kind == "f" else a
                for n, a in out.items()}

    def _constant_output(self, name: str) -> np.ndarray:
        """An output no op computes: a constant of the program (coremltools' const_elimination
        turns an output that does not depend on the inputs into a ``const`` op)."""
        var = next(v for v in self.function.outputs if v.name == name)
        if var.val is None:
            raise TlcError(f"output {name} is neither computed by an op nor a constant of the program")
        return np.array(var.val, dtype=_np_dtype(var.dtype))

    def _value(self, op, var, env):
        if var.val is not None:
            if self._subst is not None and var.name in self._subst:
                return self._subst[var.name]
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

    def _exec(self, op, env) -> tuple:
        """Run one op (a kernel of the op table, or a built-in: states, control flow, lists)."""
        fn = BUILTINS.get(op.op_type)
        if fn is None:
            return self._run_op(op, env)
        try:
            res = fn(self, op, env)
        except TlcError:
            raise
        except Exception as e:
            raise TlcError(f"MIL op {op.name} ({op.op_type}) failed: {type(e).__name__}: {e}") from e
        for var, a in zip(op.outputs, res):
            env[var.name] = a
        return tuple(res)

    def _run_block(self, block, env, args) -> list:
        """Run a nested block (cond / while_loop) with its inputs bound to ``args``; returns its outputs."""
        for var, a in zip(block.inputs, args):
            env[var.name] = a
        for op in block.operations:
            if op.op_type != "const":
                self._exec(op, env)
        return [self._value(block, v, env) for v in block.outputs]

    def _plan(self, op) -> tuple:
        """``(op row, output dtypes, the dtypes its kernel computes in, declared output shapes)`` of
        ``op``, read from coremltools' MIL once per op instead of on every run (its type queries:
        MiniLM's fp16 package ran in 73 instead of 79 ms, mean of 3 alternating runs of 60)."""
        p = self._plans.get(id(op))
        if p is None:
            dts = [_np_dtype(v.dtype) for v in op.outputs]
            p = self._plans[id(op)] = (OPS[op.op_type], dts, [np.float32 if d == np.float16 else d for d in dts],
                                       [tuple(v.shape) for v in op.outputs])
        return p

    def _run_op(self, op, env) -> tuple:
        vals = {}
        for k, var in op.inputs.items():
            vals[k] = [self._value(op, v, env) for v in var] if isinstance(var, (list, tuple)) else self._value(op, var, env)
        row, dts, compute_dts, wants = self._plan(op)
        try:
            arrays, attrs = args_from_mil(row, vals)
            res = run_kernel(row, attrs, [np.asarray(a) for a in arrays], compute_dts)
            res = tuple(round_fp16(a) if d == np.float16 else a for a, d in zip(res, dts))
        except TlcError as e:
            raise TlcError(f"MIL op {op.name} ({op.op_type}): {e.args[0]}") from None
        except Exception as e:
            raise TlcError(f"MIL op {op.name} ({op.op_type}) failed in tlc's kernel: {type(e).__name__}: {e}") from e
        outs = []
        for var, a, want in zip(op.outputs, res, wants):
            if len(want) != a.ndim or any(isinstance(d, (int, np.integer)) and d != s for d, s in zip(want, a.shape)):
                raise TlcError(f"MIL op {op.name} ({op.op_type}) produced shape {list(a.shape)}; "
                               f"the program declares {[d if isinstance(d, (int, np.integer)) else str(d) for d in want]}")
            env[var.name] = a
            outs.append(a)
        return tuple(outs)


class Recording(NamedTuple):
    """One run of :meth:`MILInterpreter.record`: the checked ``feeds`` and every top-level value
    ``{name: (index of the op that made it, array)}``."""

    feeds: dict
    values: dict


def _dims(shape) -> tuple:
    """A MIL var's shape with None for symbolic dimensions."""
    return tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in shape)


def _walk(ops):
    """``ops`` and, recursively, the ops of their nested blocks."""
    for op in ops:
        yield op
        for b in getattr(op, "blocks", ()) or ():
            yield from _walk(b.operations)


def _reads(op):
    """Names of the computed values ``op`` reads, those read inside its nested blocks included."""
    for sub in _walk([op]):
        for var in sub.inputs.values():
            for v in (var if isinstance(var, (list, tuple)) else (var,)):
                if v.val is None:
                    yield v.name
        for b in getattr(sub, "blocks", ()) or ():
            for v in b.outputs:
                if v.val is None:
                    yield v.name


class _State:
    """A state buffer as a value inside the program: ``buffers[name]``, read by ``read_state`` and
    written by ``coreml_update_state``."""

    __slots__ = ("buffers", "name")

    def __init__(self, buffers, name):
        self.buffers, self.name = buffers, name


def _read_state(interp, op, env):
    """iOS18 states.py ``read_state``: the state's current value."""
    st = interp._value(op, op.inputs["input"], env)
    a = st.buffers[st.name]
    return [a.astype(np.float32) if a.dtype == np.float16 else np.array(a)]


def _update_state(interp, op, env):
    """coreml_dialect ``coreml_update_state``: write ``value`` into ``state``; the output is ``value``."""
    st = interp._value(op, op.inputs["state"], env)
    v = interp._value(op, op.inputs["value"], env)
    buf = st.buffers[st.name]
    buf[...] = v.astype(buf.dtype)
    return [v]


#: MIL ops the interpreter runs itself rather than through an op-table kernel: states, and the control
#: flow and list ops of :mod:`tlc.runtime.mil_control`
BUILTINS: dict[str, Callable] = {"read_state": _read_state, "coreml_update_state": _update_state, **CONTROL_BUILTINS}
