"""The pass registry: every pass is a function ``Graph -> Graph`` registered under a namespaced
name (``cleanup::dce``) with the keyword-only options its signature declares. The pipeline and
:func:`tlc.passes.run_pipeline` live in :mod:`tlc.passes`; each pass module registers its passes here.
"""
from __future__ import annotations

import inspect
from typing import Callable

from tlc.errors import IRError
from tlc.ir import Graph

PASSES: dict[str, Callable[[Graph], Graph]] = {}

#: ``{pass name: {option name: default}}``: the keyword-only parameters each pass declares
#: (``def mixed(g, *, calibration, io_dtype="fp32")``), read from its signature at registration.
PASS_OPTIONS: dict[str, dict[str, object]] = {}
_REQUIRED = object()


def register_pass(name: str):
    """Decorator: register ``fn(Graph, *, option=default, ...) -> Graph`` under ``name``
    (``namespace::pass``). Options are the function's keyword-only parameters (a parameter
    without a default is required); :func:`run_pipeline` checks what it is given against them.
    Raises :class:`IRError` for an un-namespaced name, a name registered twice, or a parameter
    that is not keyword-only."""
    if "::" not in name:
        raise IRError(f"pass name {name!r} must be namespaced, e.g. 'cleanup::dce'")

    def deco(fn):
        if name in PASSES:
            raise IRError(f"pass {name!r} registered twice")
        params = list(inspect.signature(fn).parameters.values())
        opts = {}
        for p in params[1:]:
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise IRError(f"pass {name!r}: option {p.name!r} must be keyword-only (def {fn.__name__}(g, *, ...))")
            opts[p.name] = _REQUIRED if p.default is inspect.Parameter.empty else p.default
        PASSES[name] = fn
        PASS_OPTIONS[name] = opts
        return fn

    return deco


__all__ = ["PASSES", "PASS_OPTIONS", "register_pass"]
