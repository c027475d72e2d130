"""Run a Core AI ``.aimodel`` asset with Apple's own runtime (``coreai-core``; Linux and macOS).

``coreai.authoring.AIModelAsset.load(path)`` -> ``asset.executable()`` (an async context) ->
``load_function(name)`` -> ``await fn({name: coreai.runtime.NDArray(array)})``. The model keeps
one event loop and the executable open between calls; :meth:`CoreAIModel.close` (or garbage
collection) releases them.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Mapping

import numpy as np

from .mlspec import PackageError

INSTALL = 'pip install -e ".[coreai]"'


def is_aimodel(path: str | Path) -> bool:
    """Whether ``path`` is a Core AI asset directory (``*.aimodel`` holding ``metadata.json``)."""
    p = Path(path)
    return p.suffix == ".aimodel" or (p / "metadata.json").is_file() and any(p.glob("*.mlirb"))


class CoreAIModel:
    """A ``.aimodel`` as a callable: ``model({input: array}) -> {output: array}``; ``function_name``
    picks the function (default ``main``). ``inputs`` / ``outputs`` list the function's names.
    Raises :class:`PackageError` for a missing or unloadable asset, or when coreai-core is not
    installed (with the line that installs it)."""

    backend = "coreai"  #: what ran it (``tlc run`` prints it)

    def __init__(self, path: str | Path, function_name: str = "main"):
        self.path = Path(path)
        self.functions = [function_name]
        if not self.path.is_dir():
            raise PackageError(f"{str(self.path)!r} does not exist (or is not a .aimodel directory)")
        try:
            from coreai.authoring import AIModelAsset
            from coreai.runtime import NDArray
        except ImportError:
            raise PackageError(f"running a .aimodel needs Apple's coreai-core: {INSTALL}") from None
        self._ndarray = NDArray
        try:
            asset = AIModelAsset.load(str(self.path))
            self._loop = asyncio.new_event_loop()
            self._cm = asset.executable()
            self._ex = self._loop.run_until_complete(self._cm.__aenter__())
            self._fn = self._ex.load_function(function_name)
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError/...
            raise PackageError(f"{str(self.path)!r}: Core AI cannot load function {function_name!r} "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        desc = self._fn.desc
        self.inputs = list(desc.input_names)
        self.outputs = list(desc.output_names)
        #: ``{name: (shape, dtype name)}`` of the function's inputs and outputs
        self.input_types = {n: (tuple(desc.input_descriptor(n).shape), str(desc.input_descriptor(n).dtype))
                            for n in self.inputs}
        self.output_types = {n: (tuple(desc.output_descriptor(n).shape), str(desc.output_descriptor(n).dtype))
                             for n in self.outputs}

    def __call__(self, feeds: Mapping[str, np.ndarray] | None = None, **named) -> dict[str, np.ndarray]:
        feeds = {**(feeds or {}), **named}
        if self.inputs and set(feeds) != set(self.inputs):
            from tlc.errors import InputError

            raise InputError(f"{self.path.name} takes inputs {self.inputs}; got {sorted(feeds)}")
        args = {k: self._ndarray(np.ascontiguousarray(_narrow(k, v))) for k, v in feeds.items()}
        out = self._loop.run_until_complete(self._fn(args))
        return {k: np.asarray(v.numpy()) for k, v in out.items()}

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


def _narrow(name: str, v) -> np.ndarray:
    """An input as Core AI takes it: int64 -> int32 (refused when a value does not fit), float64
    -> float32, as tlc's builds declare them (Core AI assets from tlc have no 64-bit inputs)."""
    a = np.asarray(v)
    if a.dtype == np.int64:
        from .numpy_executor import fit_int

        return fit_int(name, a, np.int32, "the Core AI asset")
    return a.astype(np.float32) if a.dtype == np.float64 else a
