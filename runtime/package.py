"""An ``.mlpackage`` ready to run (:class:`LoadedModel`): Core ML predict on macOS, tlc's MIL
interpreter everywhere; and which of Core ML and a torch GPU this machine has."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from tlc.boundary import Boundary
from tlc.errors import InputError, TlcError

from . import buckets
from .mil_interpreter import MILInterpreter, PackageError
from .protocol import NamedIO, io_specs

BACKENDS = ("auto", "coreml", "interpreter")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def gpu_available() -> bool:
    """True when torch sees a GPU tlc's torch-device executor can use (``mps`` or ``cuda``)."""
    from .torch_executor import default_device

    return default_device().type != "cpu"


def coreml_available() -> bool:
    """True on macOS where coremltools' native Core ML bindings load."""
    if sys.platform != "darwin":
        return False
    try:  # pragma: no cover - macOS only
        from coremltools.libcoremlpython import _MLModelProxy  # noqa: F401

        return True
    except Exception:  # pragma: no cover
        return False


class LoadedModel(NamedIO):
    """A package ready to run: call with named NumPy arrays, get ``{output_name: array}``.

    ``backend`` is ``"coreml"`` (macOS, Core ML predict with ``compute_units``) or
    ``"interpreter"`` (tlc's NumPy MIL interpreter); ``inputs``/``outputs`` are
    :class:`~tlc.runtime.protocol.IOSpec` records (of the default function of a multifunction
    package): the protocol every loaded artifact speaks (:mod:`tlc.runtime.protocol`). Inputs and outputs that are 0-d or complex in
    the model (``[1]`` / real ``[..., 2]`` inside the package, recorded in its metadata:
    :mod:`tlc.boundary`) are taken and returned as 0-d / complex64 arrays (``boundary``;
    ``scalar_inputs`` / ``scalar_outputs``).

    Multifunction packages (``functions`` lists them): with ``function_name`` given, every call
    runs that function; without, each call runs the function whose input shapes match, else the
    smallest one the inputs fit after padding along ``paddable`` axes (:mod:`tlc.runtime.buckets`;
    default: what ``tlc.build(..., paddable=)`` stored in the package metadata), with the
    outputs cropped back. ``last_function`` names the function the last call ran.
    """

    def __init__(self, path: str | Path, backend: str = "auto", compute_units: str = "ALL",
                 function_name: str | None = None, paddable=None):
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if compute_units not in COMPUTE_UNITS:
            raise InputError(f"compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}")
        self.path = Path(path)
        self.compute_units = compute_units
        self.interpreter = MILInterpreter(self.path, function_name=function_name)  # validates the package everywhere
        self.function_name = self.interpreter.function_name
        self.functions = list(self.interpreter.functions)
        self.auto_function = function_name is None and len(self.functions) > 1
        self.last_function = None
        metadata = dict(self.interpreter.spec.description.metadata.userDefined)
        try:
            self.boundary = Boundary.from_metadata(metadata)
        except TlcError as e:
            raise PackageError(f"{str(self.path)!r}: {e}") from None
        self.scalar_inputs, self.scalar_outputs = self.boundary.scalar_inputs, self.boundary.scalar_outputs
        self.inputs = io_specs(self.boundary.user_io(self.interpreter.inputs))
        self.outputs = io_specs(self.boundary.user_io(self.interpreter.output_rows, outputs=True))
        self._buckets = None
        if self.auto_function:
            from .mlspec import spec_summary

            summaries = [spec_summary(self.interpreter.spec, f) for f in self.functions]
            self._buckets = [buckets.Function(s["function"], {d["name"]: tuple(d["shape"]) for d in s["inputs"]},
                                              {d["name"]: tuple(d["shape"]) for d in s["outputs"]}) for s in summaries]
            shapes = self._buckets[0].inputs
        else:
            shapes = {n: s for n, s, _ in self.interpreter.inputs}
        self.paddable = buckets.parse_paddable(metadata.get(buckets.METADATA_KEY) if paddable is None else paddable,
                                               shapes)
        self._interpreters = {self.function_name: self.interpreter}
        if backend == "coreml" and not coreml_available():
            raise TlcError("backend 'coreml' needs macOS with Core ML; use backend='interpreter' here")
        self.backend = "coreml" if backend == "coreml" or (backend == "auto" and coreml_available()) else "interpreter"
        self._coreml = {}
        if self.backend == "coreml":  # pragma: no cover - macOS only
            self._coreml[self.function_name] = self._coreml_model(self.function_name)

    def _coreml_model(self, name):  # pragma: no cover - macOS only
        import coremltools as ct

        return ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, self.compute_units),
                                 function_name=name)

    def _function(self, name: str) -> MILInterpreter:
        if name not in self._interpreters:
            i = self.interpreter
            self._interpreters[name] = MILInterpreter(self.path, function_name=name,
                                                      loaded=(i.mlmodel, i.spec, i.program))
        return self._interpreters[name]

    def make_state(self):
        """State buffers for a stateful package (Core ML's ``make_state()`` on macOS, else
        :meth:`MILInterpreter.make_state`); pass as ``state=`` to every call."""
        if self._coreml:  # pragma: no cover - macOS only
            return self._coreml[self.function_name].make_state()
        return self.interpreter.make_state()

    def choose(self, feeds: Mapping[str, np.ndarray]):
        """The :class:`tlc.runtime.buckets.Choice` a call with ``feeds`` makes (the fixed function
        when one was named). Raises :class:`~tlc.errors.InputError` when no function fits."""
        if not self.auto_function:
            return buckets.Choice(self.function_name, {}, {})
        shapes = {k: np.shape(v) for k, v in feeds.items()}
        return buckets.choose(self._buckets, shapes, self.paddable, where=self.path.name)

    def __call__(self, feeds: Mapping[str, np.ndarray] | None = None, *, state=None, **named) -> dict[str, np.ndarray]:
        """Run on named arrays (a dict and/or keywords); returns ``{output_name: array}``.
        Raises :class:`~tlc.errors.InputError` for missing/misnamed inputs, a wrong dtype, or a
        shape the package (none of its functions, after padding) does not allow."""
        feeds = self.boundary.to_package({**(feeds or {}), **named})
        choice = self.choose(feeds)
        feeds = choice.pad(feeds, self.paddable)
        self.last_function = name = choice.function
        interp = self._function(name)
        if self.backend == "coreml":  # pragma: no cover - macOS only
            if name not in self._coreml:
                self._coreml[name] = self._coreml_model(name)
            feeds = interp.check_feeds(feeds)
            m = self._coreml[name]
            res = m.predict(feeds, state=state) if state is not None else m.predict(feeds)
            out = {k: np.asarray(res[k]) for k in interp.outputs}
        else:
            out = interp.run(feeds, state=state)
        return self.boundary.from_package(choice.crop(out))

    def run(self, feeds: Mapping[str, np.ndarray], *, state=None) -> dict[str, np.ndarray]:
        """``self(feeds)`` (:class:`tlc.runtime.protocol.LoadedArtifact`)."""
        return self(feeds, state=state)

    @property
    def lm(self):
        """The :class:`tlc.runtime.generate.LMInfo` of a ``tlc.build_lm`` package, else None."""
        from .generate import METADATA_KEY, LMInfo

        text = dict(self.interpreter.spec.description.metadata.userDefined).get(METADATA_KEY)
        return LMInfo.from_json(text) if text else None

    def new_cache(self):
        """An empty :class:`tlc.runtime.generate.KVCache` for :meth:`generate` (``cache=``): host
        buffers for a ``kv_cache="io"`` package, the package's own state (:meth:`make_state`) for a
        ``kv_cache="state"`` one."""
        from .generate import KVCache

        info = self._lm_info()
        return KVCache.of_state(info, self.make_state()) if info.kv_cache == "state" else KVCache.empty(info)

    def _lm_info(self):
        info = self.lm
        if info is None:
            raise InputError(f"{self.path.name} is not an LM package (no tlc.lm metadata: build it with tlc.build_lm)")
        return info

    def generate(self, input_ids, max_new_tokens: int = 32, **kwargs):
        """Generate tokens with a ``tlc.build_lm`` package (:func:`tlc.runtime.generate.generate`:
        ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``stream``, ``seed``,
        ``cache``, ``stats``); returns ``[1, n + generated]`` int64. Raises
        :class:`~tlc.errors.InputError` for a package that is not an LM build or bad input."""
        from .generate import generate

        if kwargs.get("cache") is None:
            kwargs["cache"] = self.new_cache()
        return generate(self, self._lm_info(), input_ids, max_new_tokens, **kwargs)

    def __repr__(self) -> str:
        fn = f", functions {self.functions}" if len(self.functions) > 1 else ""
        return f"<tlc LoadedModel {self.path.name} on {self.backend}: {[n for n, *_ in self.inputs]} -> {self.outputs}{fn}>"
