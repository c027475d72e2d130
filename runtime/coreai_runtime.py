"""Run a Core AI ``.aimodel`` asset with Apple's own runtime (``coreai-core``; Linux and macOS).

``coreai.authoring.AIModelAsset.load(path)`` -> ``asset.executable()`` (an async context) ->
``load_function(name)`` -> ``await fn({name: coreai.runtime.NDArray(array)})``. The model keeps
one event loop and the executable open between calls; :meth:`CoreAIModel.close` (or garbage
collection) releases them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .mlspec import PackageError
from .numpy_executor import validate_feeds
from .protocol import NamedIO, io_specs

INSTALL = 'pip install -e ".[coreai]"'


def is_aimodel(path: str | Path) -> bool:
    """Whether ``path`` is a Core AI asset directory (``*.aimodel`` holding ``metadata.json``)."""
    p = Path(path)
    return p.suffix == ".aimodel" or (p / "metadata.json").is_file() and any(p.glob("*.mlirb"))


class CoreAIModel(NamedIO):
    """A ``.aimodel`` as a callable: ``model({input: array}) -> {output: array}``; ``function_name``
    picks the function (default ``main``, else the asset's first: a multifunction asset from
    ``tlc.build`` with several shapes). ``functions`` lists every function of the asset;
    ``inputs`` / ``outputs`` are the chosen function's :class:`~tlc.runtime.protocol.IOSpec`
    records (:mod:`tlc.runtime.protocol`), ``input_types`` / ``output_types`` the same as
    ``{name: (shape, Core AI dtype name)}``.
    Raises :class:`PackageError` for a missing or unloadable asset, or when coreai-core is not
    installed (with the line that installs it)."""

    backend = "coreai"  #: what ran it (``tlc run`` prints it)

    def __init__(self, path: str | Path, function_name: str | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise PackageError(f"{str(self.path)!r} does not exist (or is not a .aimodel directory)")
        import asyncio  # with coreai-core, when an asset is loaded: `import tlc.runtime` stays light

        try:
            from coreai.authoring import AIModelAsset
            from coreai.runtime import NDArray
        except ImportError:
            raise PackageError(f"running a .aimodel needs Apple's coreai-core: {INSTALL}") from None
        self._ndarray = NDArray
        try:
            asset = AIModelAsset.load(str(self.path))
            self.functions = list(asset.summary().function_names)
            function_name = function_name or ("main" if "main" in self.functions or not self.functions
                                              else self.functions[0])
            self.function_name = function_name
            self._loop = asyncio.new_event_loop()
            self._cm = asset.executable()
            self._ex = self._loop.run_until_complete(self._cm.__aenter__())
            self._fn = self._ex.load_function(function_name)
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError/...
            raise PackageError(f"{str(self.path)!r}: Core AI cannot load function {function_name!r} "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        desc = self._fn.desc
        self.input_types = {n: (tuple(desc.input_descriptor(n).shape), str(desc.input_descriptor(n).dtype))
                            for n in desc.input_names}
        self.output_types = {n: (tuple(desc.output_descriptor(n).shape), str(desc.output_descriptor(n).dtype))
                             for n in desc.output_names}
        self.inputs = io_specs((n, shape, _np_dtype(dt)) for n, (shape, dt) in self.input_types.items())
        self.outputs = io_specs((n, shape, _np_dtype(dt)) for n, (shape, dt) in self.output_types.items())

    def __call__(self, feeds: Mapping[str, np.ndarray] | None = None, **named) -> dict[str, np.ndarray]:
        """Run on named arrays; returns ``{output_name: array}``. Inputs are checked and converted
        as for Core ML packages (:func:`tlc.runtime.numpy_executor.validate_feeds`: names, shapes,
        fp32 arrays for fp16 inputs, int64 narrowed to int32 only when every value fits). Raises
        :class:`~tlc.errors.InputError`."""
        feeds = validate_feeds(self.inputs, {**(feeds or {}), **named}, self.path.name)
        args = {k: self._ndarray(np.ascontiguousarray(v)) for k, v in feeds.items()}
        out = self._loop.run_until_complete(self._fn(args))
        return {k: np.asarray(v.numpy()) for k, v in out.items()}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``self(feeds)`` (:class:`tlc.runtime.protocol.LoadedArtifact`)."""
        return self(feeds)

    def close(self) -> None:
        """Release the executable and the event loop (idempotent)."""
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            try:
                loop.run_until_complete(self._cm.__aexit__(None, None, None))
            finally:
                loop.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _np_dtype(name: str) -> np.dtype:
    """A Core AI descriptor's dtype name (``float16``, ``int32``, ...) as NumPy's."""
    try:
        return np.dtype(name.rsplit(".", 1)[-1].lower())
    except TypeError:
        raise PackageError(f"Core AI input dtype {name!r} has no NumPy equivalent in tlc") from None
