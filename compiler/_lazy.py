"""torch, imported on first use: ``from tlc._lazy import torch, F``.

tlc's op table carries a torch kernel per row (the GPU fallback runtime), but running or
inspecting a package needs none of them: ``import tlc.runtime`` must not pay torch's import
(~1-5 s). A module that writes ``torch.add`` at import time gets a :class:`Deferred` attribute
that imports torch and resolves when first called; everything done inside functions (the
kernels) goes through :class:`LazyModule`, which imports torch on the first attribute access.
tests/test_registries.py checks that ``import tlc.runtime`` leaves torch unimported.
"""
from __future__ import annotations

import importlib
import sys
import types


class Deferred:
    """``module.attr`` resolved on first call (a torch function named at import time)."""

    __slots__ = ("_module", "_attr", "_fn")

    def __init__(self, module: str, attr: str):
        self._module, self._attr, self._fn = module, attr, None
        _DEFERRED.append(self)

    def resolve(self):
        """The function itself (imported now if it was not yet)."""
        fn = self._fn
        if fn is None:
            fn = self._fn = getattr(importlib.import_module(self._module), self._attr)
        return fn

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._attr}>"


class LazyModule(types.ModuleType):
    """A module imported on the first attribute access; ``deferred(name)`` names a function of
    it without importing it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr):
        mod = sys.modules.get(self._lazy_name) or importlib.import_module(self._lazy_name)
        value = getattr(mod, attr)
        self.__dict__[attr] = value  # found directly from now on (no __getattr__: torch.compile traces through)
        return value

    def deferred(self, attr: str) -> Deferred:
        return Deferred(self._lazy_name, attr)


#: every :class:`Deferred` made, so that :func:`resolve_all` can resolve them before tracing
_DEFERRED: list = []


def resolve_all() -> None:
    """Import torch and resolve every :class:`Deferred` and the names the op kernels read through
    :data:`torch` / :data:`F`: what ``torch.compile`` must see as plain torch functions (an
    import or a ``sys.modules`` lookup inside a kernel would break its graph). The torch executor
    calls it before compiling."""
    for d in _DEFERRED:
        d.resolve()


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
