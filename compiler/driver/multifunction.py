"""Several input shapes in one package: ``tlc.build(model, [ex_a, ex_b, ...])`` traces one static
function per input signature and writes one multifunction ``.mlpackage``.

Why functions and not flexible shapes: Core ML runs static shapes on the Neural Engine; with
``RangeDim`` only the default shape stays there (Apple Developer Forums thread 724930;
apple/coremltools#1764, #2370: 0% ANE for other shapes), so one static function per shape
("bucket") is the ANE-friendly answer. Multifunction packages are an iOS18 / macOS15 feature
(coremltools' format; tlc merges the functions' programs in memory and stores equal weights once,
:func:`merge_functions`, as coremltools' ``save_multifunction`` would after writing every function
out and reading them back). Before iOS18 Core ML's
alternative is ``EnumeratedShapes`` on one function, which needs a shape-polymorphic program;
tlc traces static shapes, so it asks for iOS18 instead (:func:`check_multifunction_target`).

Function names come from the shapes (``input_ids_1x128``; :func:`shape_names`); the first
signature's function is the default unless ``default_function_name=`` says otherwise. At run time
the function is chosen by input shape, padding along the axes declared ``paddable``
(:mod:`tlc.runtime.buckets`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from tlc.backends.coreai.emit import save_aimodel
from tlc.backends.coreml.compress import shared_compression
from tlc.backends.coreml.multifunction import merge_functions
from tlc.backends.coreml.package import check_output_path, check_package_io, make_reproducible
from tlc.backends.coreml.state import stateful_mlmodel
from tlc.errors import EmitError, InputError
from tlc.frontend import normalize_inputs
from tlc.runtime import buckets
from tlc.runtime.generate import METADATA_KEY, KVCache, generate
from tlc.runtime.mlspec import check_package, proto, read_spec
from tlc.util.coreml import weight_file_size
from tlc.util.files import atomic_dir
from tlc.util.progress import note

from .cache_key import calibration_key
from .inputs import calibration_feed, signature_key
from .options import BuildOptions, Compression
from .single import build_one

def signatures(example_inputs) -> list | None:
    """The list of input signatures when ``example_inputs`` gives several: a ``list`` of at least
    two items that are each a tuple, a list or a dict (one signature each). Anything else —
    a tensor, a tuple, a dict, a list of tensors (positional inputs) — is one signature (None).
    To pass tuple-valued positional inputs, give a tuple."""
    if isinstance(example_inputs, list) and len(example_inputs) >= 2 and all(
            isinstance(x, (tuple, list, dict)) for x in example_inputs):
        return list(example_inputs)
    return None


def _dims(shape) -> str:
    return "x".join(str(int(d)) for d in shape) or "scalar"


def shape_names(shapes: list[dict[str, tuple]]) -> list[str]:
    """One name per signature from its input shapes (``{input: shape}``, same inputs in each):
    ``NAME_DIMS`` of the first input whose shape differs between signatures (``input_ids_1x128``,
    ``x_1x3x224x224``), joined with more varying inputs until the names are unique. Raises
    :class:`InputError` when two signatures have the same shapes."""
    for i in range(1, len(shapes)):
        for j in range(i):
            if shapes[i] == shapes[j]:
                raise InputError(f"example input signatures {j} and {i} have the same shapes "
                                 f"({', '.join(f'{k} {list(v)}' for k, v in shapes[i].items())}); each function "
                                 f"needs its own shape")
    varying = [k for k in shapes[0] if len({tuple(s[k]) for s in shapes}) > 1]
    for n in range(1, len(varying) + 1):
        names = ["__".join(f"{k}_{_dims(s[k])}" for k in varying[:n]) for s in shapes]
        if len(set(names)) == len(names):
            return names
    return [f"function_{i}" for i in range(len(shapes))]  # pragma: no cover - distinct shapes always separate


def check_function_names(names, n: int) -> list[str]:
    """User-given ``function_names``: ``n`` distinct identifiers; raises :class:`InputError`."""
    names = list(names)
    if len(names) != n:
        raise InputError(f"function_names has {len(names)} names for {n} example input signatures")
    bad = [x for x in names if not isinstance(x, str) or not x.isidentifier()]
    if bad:
        raise InputError(f"function_names must be identifiers (MIL function names); got {bad}")
    if len(set(names)) != n:
        raise InputError(f"function_names must be distinct; got {names}")
    return names


class MultiFunctionModel:
    """One model traced at several input signatures: a :class:`tlc.driver.model.CompiledModel` per
    function, saved as one multifunction ``.mlpackage``.

    Attributes: ``functions`` (``{name: CompiledModel}``, in signature order),
    ``default_function_name``, ``paddable`` (``{input: tlc.runtime.buckets.Padding}``, recorded in
    the package), ``input_names`` / ``output_names`` (the same in every function), ``sizes`` after
    :meth:`save` (``weights``: the package's weight bytes; ``single_function``: the largest
    function's on its own; ``functions``: the sum over functions saved separately), ``timings``
    (per stage, summed over functions, plus ``save``).
    """

    def __init__(self, functions: dict[str, Any], default_function_name: str, paddable=None):
        self.functions = dict(functions)
        if default_function_name not in self.functions:
            raise InputError(f"default_function_name {default_function_name!r} is not one of the functions "
                             f"({', '.join(self.functions)})")
        self.default_function_name = default_function_name
        first = self.default
        for name, cm in self.functions.items():
            if cm.input_names != first.input_names or cm.output_names != first.output_names:
                raise InputError(f"function {name} has inputs {cm.input_names} -> outputs {cm.output_names}, but "
                                 f"{default_function_name} has {first.input_names} -> {first.output_names}: every "
                                 f"signature must give the same inputs and outputs")
        self.paddable = buckets.parse_paddable(paddable, {v.name: v.type.shape for v in first.graph.inputs})
        self.sizes: dict[str, int] = {}
        self._save_s = None
        self.metadata: dict[str, str] = {}  # more package metadata (tlc.build_lm: tlc.lm)
        self.lm = None  # tlc.runtime.generate.LMInfo for tlc.build_lm packages
        self.states: tuple = ()  # tlc.backends.coreml.state.StateBinding: inputs saved as MLState buffers
        #: ``{kv_cache form: its StateBinding tuple}`` a ``tlc.build_lm`` model can be saved in (``save(kv_cache=)``)
        self.state_forms: dict[str, tuple] = {}

    @property
    def default(self):
        """The default function's :class:`~tlc.driver.model.CompiledModel`."""
        return self.functions[self.default_function_name]

    input_names = property(lambda self: self.default.input_names, doc="input names (every function)")
    output_names = property(lambda self: self.default.output_names, doc="output names (every function)")
    precision = property(lambda self: self.default.precision, doc="build option, the same in every function")
    minimum_deployment_target = property(lambda self: self.default.minimum_deployment_target,
                                         doc="build option, the same in every function")
    target = property(lambda self: self.default.target, doc="build option, the same in every function")
    io_dtype = property(lambda self: self.default.io_dtype, doc="build option, the same in every function")
    compress = property(lambda self: self.default.compress, doc="build option, the same in every function")
    is_bundle = property(lambda self: False, doc="always False: a multifunction model is one .mlpackage")

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per build stage (:attr:`tlc.driver.model.CompiledModel.timings` keys) summed over the
        functions, and ``save`` (the whole multifunction save) once saved."""
        t: dict[str, float] = {}
        for cm in self.functions.values():
            for k, v in cm.timings.items():
                t[k] = t.get(k, 0.0) + v
        if self._save_s is not None:
            t["save"] = self._save_s
        return t

    def shapes(self) -> dict[str, dict[str, tuple]]:
        """``{function: {input: shape}}``."""
        return {n: {v.name: tuple(v.type.shape) for v in cm.graph.inputs} for n, cm in self.functions.items()}

    def _buckets(self):
        return [buckets.Function(n, {v.name: tuple(v.type.shape) for v in cm.graph.inputs},
                                 {k: tuple(v.type.shape) for k, v in zip(cm.graph.output_names, cm.graph.outputs)})
                for n, cm in self.functions.items()]

    def output_path(self, path) -> Path:
        """Where :meth:`save` writes: ``path`` itself (always one ``.mlpackage``)."""
        return Path(path)

    def check_shippable(self) -> None:
        """Raise :class:`InputError` when a function needs tlc's fallback runtime (a multifunction
        package holds Core ML functions only), naming the function and its first such ops."""
        for name, cm in self.functions.items():
            if cm.is_bundle:
                ops = cm.fallback_ops()
                listed = "; ".join(f"{op} ({n}): {why}" for op, n, why, _ in ops[:4])
                raise InputError(f"function {name} needs tlc's fallback runtime for {len(ops) or 'some'} op(s) "
                                 f"({listed or 'target ' + cm.target}); a multifunction package holds Core ML "
                                 f"functions only: build each shape separately to get bundles")

    def save(self, path: str | os.PathLike, force: bool = False, kv_cache: str | None = None) -> Path:
        """Write one multifunction ``.mlpackage`` at ``path`` (temp path + rename): each function
        emitted (and compressed) as for a single-function build, made stateful when :attr:`states`
        says so (:func:`tlc.backends.coreml.state.stateful_mlmodel`) and checked against its IR, then the functions'
        programs merged in memory with their weights stored once (:func:`merge_functions`); tlc's
        metadata is written and every function's I/O is checked again in the merged package. Fills
        :attr:`sizes`.
        ``kv_cache`` (``tlc.build_lm`` models): ``"io"`` or ``"state"`` saves that form of the same
        build (default: the form it was built for), so one build gives both the Neural Engine and
        the GPU package. Raises :class:`~tlc.errors.OutputExistsError`, :class:`InputError` (a
        function needs the fallback runtime; ``kv_cache`` on a model that is not an LM build),
        :class:`EmitError`."""
        t0 = time.perf_counter()
        if Path(path).suffix == ".aimodel":
            return self._save_aimodel(Path(path), force, kv_cache, t0)
        path = check_output_path(path, force)
        self.check_shippable()
        states, metadata = self._form(kv_cache)
        progress = any(cm.progress for cm in self.functions.values())
        sizes = {}

        def write(staged: Path):
            mlms = {}
            recipe = None  # compression by target/budget: measured on the first function, its recipe for the others
            with shared_compression():  # a weight every function reads is compressed once
                for k, (name, cm) in enumerate(self.functions.items()):
                    if recipe is not None and cm.compress and cm.compress.measured and not cm._compressed:
                        cm.options = dataclasses.replace(cm.options, compress=Compression(recipe=recipe))
                    if progress:
                        note(f"emitting function {name} ({k + 1} of {len(self.functions)})"
                             + (f", weights {self.compress}" if self.compress else ""))
                    mlm = cm.mlmodel
                    if recipe is None and cm.compression is not None and cm.compress.measured:
                        recipe = cm.compression.recipe
                    if states:
                        mlm = stateful_mlmodel(mlm, states, self.minimum_deployment_target)
                    # the spec in memory: the metadata (tlc's boundary record among it) is set on the MLModel,
                    # not yet in the temporary package it was serialized to
                    problems = check_package_io(mlm.package_path, cm.emit_graph, loaded=mlm.get_spec(), states=states)
                    if problems:
                        raise EmitError(f"function {name} does not match the IR: " + "; ".join(problems))
                    mlms[name] = mlm
            single = {n: weight_file_size(m.package_path) for n, m in mlms.items()}
            if progress:
                note(f"writing {path.name}: {len(mlms)} functions, equal weights stored once")
            merged = merge_functions(mlms, self.default_function_name, self.minimum_deployment_target)
            with contextlib.redirect_stdout(io.StringIO()):
                merged.save(str(staged))
            del merged
            self._write_metadata(staged, metadata)
            make_reproducible(staged)
            spec = read_spec(staged)
            problems = [f"{n}: {p}" for n, cm in self.functions.items()
                        for p in check_package_io(staged, cm.emit_graph, function_name=n, loaded=spec, states=states)]
            if problems:
                raise EmitError(f"multifunction package {path.name} does not match the IR: " + "; ".join(problems))
            sizes.update(weights=weight_file_size(staged), single_function=max(single.values()), functions=sum(single.values()))

        out = atomic_dir(path, force, write)
        self.sizes = sizes
        self._save_s = time.perf_counter() - t0
        return out

    def _save_aimodel(self, path: Path, force: bool, kv_cache: str | None, t0: float) -> Path:
        """One Core AI asset holding every function, named as in the package, the default first
        (what :class:`tlc.runtime.coreai_runtime.CoreAIModel` loads without a name) (issue 17):
        Core AI stores equal constants once, so shared weights are not repeated. ``kv_cache="state"`` has
        no Core AI form in tlc yet (``InputError``; the I/O form works); a function with ops in
        tlc's fallback runtime or without a Core AI form is refused as for the package."""
        states, metadata = self._form(kv_cache)
        if states:
            raise InputError("kv_cache='state' (MLState) has no Core AI form in tlc yet; save(..., kv_cache='io') "
                             "writes the KV cache as inputs and outputs")
        for name, cm in self.functions.items():
            off = cm.coreai_fallback_ops()
            if off:
                raise InputError(f"function {name} needs tlc's fallback runtime for {len(off)} op(s) in Core AI "
                                 f"({'; '.join(f'{op} ({n}): {why}' for op, n, why, _ in off[:4])}); a multifunction "
                                 f".aimodel holds Core AI functions only")
        md = {**self.default._metadata(), **metadata, "tlc.functions": ",".join(self.functions),
              "tlc.default_function": self.default_function_name}
        if self.paddable:
                md[buckets.METADATA_KEY] = buckets.paddable_metadata(self.paddable)
        order = [self.default_function_name] + [n for n in self.functions if n != self.default_function_name]
        out = save_aimodel({n: self.functions[n].emit_graph for n in order}, path, force=force, metadata=md)
        self._save_s = time.perf_counter() - t0
        return out

    def _form(self, kv_cache: str | None):
        """``(states, metadata)`` of the package :meth:`save` writes for ``kv_cache``."""
        if kv_cache is None:
            return self.states, self.metadata
        if self.lm is None:
            raise InputError("save(kv_cache=...) is for models built by tlc.build_lm")
        if kv_cache not in self.state_forms:
            raise InputError(f"kv_cache must be one of {tuple(self.state_forms)}, got {kv_cache!r}")
        info = dataclasses.replace(self.lm, kv_cache=kv_cache)
        return self.state_forms[kv_cache], {**self.metadata, METADATA_KEY: info.to_json()}

    def _write_metadata(self, pkg: Path, metadata: dict | None = None) -> None:
        """Copy the default function's metadata (tlc's keys, coremltools' build info, description)
        into the merged spec, adding ``tlc.functions`` and the paddable axes."""
        _, manifest = check_package(pkg)
        root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
        spec_path = pkg / "Data" / root["path"]
        spec = proto("Model_pb2").Model()
        spec.ParseFromString(spec_path.read_bytes())
        md = spec.description.metadata
        md.CopyFrom(self.default.mlmodel.get_spec().description.metadata)
        md.userDefined["tlc.functions"] = ",".join(self.functions)
        for k, v in (self.metadata if metadata is None else metadata).items():
            md.userDefined[k] = v
        if self.paddable:
            md.userDefined[buckets.METADATA_KEY] = buckets.paddable_metadata(self.paddable)
        spec_path.write_bytes(spec.SerializeToString())

    def choose(self, feeds: Mapping[str, Any]):
        """The :class:`tlc.runtime.buckets.Choice` for ``feeds`` (exact shapes, else padding)."""
        return buckets.choose(self._buckets(), {k: tuple(np.shape(v)) for k, v in feeds.items()}, self.paddable,
                              where="this model")

    def run(self, feeds: Mapping[str, Any], backend: str = "auto", function_name: str | None = None,
            keep_on_device: bool = False):
        """Run the function ``function_name``, or the one whose input shapes the feeds have, or the
        one :meth:`choose` picks (inputs padded and outputs cropped back), on ``backend`` (as
        :meth:`tlc.driver.model.CompiledModel.run`; ``keep_on_device`` likewise, for a function
        that fits without padding)."""
        if function_name is None:
            shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
            function_name = next((n for n, s in self.shapes().items() if s == shapes), None)
        if function_name is not None:
            if function_name not in self.functions:
                raise InputError(f"no function {function_name!r} (functions: {', '.join(self.functions)})")
            return self.functions[function_name].run(feeds, backend=backend, keep_on_device=keep_on_device)
        feeds = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in feeds.items()}
        choice = self.choose(feeds)
        out = self.functions[choice.function].run(choice.pad(feeds, self.paddable), backend=backend)
        return choice.crop(out)

    def generate(self, input_ids, max_new_tokens: int = 32, *, backend: str = "auto", **kwargs):
        """For ``tlc.build_lm`` models: generate tokens with tlc's executors (``backend`` as
        :meth:`run`; :func:`tlc.runtime.generate.generate` takes the other arguments). On the torch
        executor the KV cache stays on its device between steps (:meth:`new_cache`): each step
        copies only the token ids in and the logits out. Raises :class:`InputError` for a model that
        is not an LM build."""
        if self.lm is None:
            raise InputError("generate needs a model built by tlc.build_lm")
        on_device = self.default.resolved_backend(backend) == "torch"
        if on_device and kwargs.get("cache") is not None and not isinstance(getattr(kwargs["cache"], "k", None), torch.Tensor):
            on_device = False  # a host cache (``new_cache()``'s default): each step's outputs come back to the host
        if on_device and kwargs.get("cache") is None:
            kwargs["cache"] = self.new_cache(backend=backend)
        return generate(lambda feeds: self.run(feeds, backend=backend, keep_on_device=on_device), self.lm, input_ids,
                        max_new_tokens, **kwargs)

    def new_cache(self, backend: str = "numpy"):
        """An empty :class:`tlc.runtime.generate.KVCache` for :meth:`generate` (``cache=``): host
        buffers, or, for ``backend="torch"`` (or ``"auto"`` where that means the torch executor),
        zeroed float32 tensors on the torch executor's device."""
        if self.lm is None:
            raise InputError("new_cache needs a model built by tlc.build_lm")
        if self.default.resolved_backend(backend) != "torch":
            return KVCache.empty(self.lm)
        from tlc.runtime.torch_executor import default_device

        zeros = lambda: torch.zeros(self.lm.cache_shape, dtype=torch.float32, device=default_device())  # noqa: E731
        return KVCache(zeros(), zeros(), self.lm.fingerprint)

    def __call__(self, *args, backend: str = "auto", **kwargs):
        """Call like the original model: the function whose signature matches the inputs, else
        the one :meth:`choose` picks for them."""
        key, leaves = signature_key(args, kwargs, self.default._kw_order)
        for cm in self.functions.values():
            if key == cm._signature:
                return cm(*args, backend=backend, **kwargs)
        tensors = [x for x in leaves if isinstance(x, (torch.Tensor, np.ndarray))]
        return self.default.as_model_output(self.run(dict(zip(self.input_names, tensors)), backend=backend), tensors)

    def summary(self) -> str:
        """One line per function (shapes), then the default function's summary."""
        lines = [f"functions: {len(self.functions)} (default {self.default_function_name})"]
        for name, shapes in self.shapes().items():
            lines.append(f"  {name}: " + ", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
        return "\n".join(lines + [self.default.summary()])

    def __repr__(self) -> str:
        return f"<MultiFunctionModel {list(self.functions)} -> {self.output_names}, {self.precision}>"


def build_multifunction(model, sigs: list, options: BuildOptions, *, function_names: list[str] | None = None,
                        default_function_name: str | None = None, paddable=None, calibration: list = (),
                        **trace_options) -> MultiFunctionModel:
    """Trace ``model`` once per signature (:func:`tlc.driver.single.build_one` with the decided
    ``options`` and ``trace_options``; with ``cache=True`` each function's trace and plan come from
    the compile cache), hand each calibration sample to the function whose input shapes it has, and
    name the functions. Raises :class:`InputError` for a calibration sample no function takes,
    repeated shapes or bad names."""
    cms = []
    for k, ex in enumerate(sigs):
        if trace_options.get("progress"):
            name = function_names[k] if function_names is not None and k < len(function_names) else f"#{k}"
            note(f"tracing function {name} ({k + 1} of {len(sigs)})")
        try:
            cm = build_one(model, ex, options, **trace_options)
        except InputError as e:
            raise InputError(f"example input signature {k}: {e.args[0]}") from None
        args, kwargs = normalize_inputs(ex)
        cm._signature = signature_key(args, kwargs, cm._kw_order)[0]
        cms.append(cm)
    shapes = [{v.name: tuple(v.type.shape) for v in cm.graph.inputs} for cm in cms]
    names = check_function_names(function_names, len(cms)) if function_names is not None else shape_names(shapes)
    for j, sample in enumerate(calibration):
        for cm in cms:
            try:
                feed = calibration_feed(cm.graph, sample, j + 1)
            except InputError:
                continue
            cm.calibration.append(feed)
            if cm.cache_key is not None:  # mixed plans on these samples too: its plan and artifacts are keyed by them
                cm.cache_key = calibration_key(cm.cache_key, feed)
            break
        else:
            raise InputError(f"calibration sample {j + 1} fits none of the functions' input shapes ("
                             + "; ".join(f"{n}: " + ", ".join(f"{k} {list(v)}" for k, v in s.items())
                                         for n, s in zip(names, shapes)) + ")")
    return MultiFunctionModel(dict(zip(names, cms)), default_function_name or names[0], paddable)


__all__ = ["MultiFunctionModel", "signatures", "shape_names", "check_function_names", "build_multifunction"]
