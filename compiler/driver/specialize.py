"""``@tlc.compile``: specialize a function or module per input signature.

:func:`compile` wraps a Python tensor function, an ``nn.Module`` instance or an ``nn.Module``
subclass; the first call with a new signature (tree structure, tensor shapes and dtypes, Python
scalar values: :func:`tlc.driver.inputs.signature_key`) builds a
:class:`~tlc.driver.model.CompiledModel` (:func:`tlc.driver.single.build_one`), later calls with that
signature reuse it. The options are checked once, when the wrapper is made.
"""
from __future__ import annotations

import functools

import torch

from tlc.errors import TlcError
from tlc.frontend import normalize_inputs

from .inputs import signature_key
from .model import CompiledModel
from .options import BuildOptions
from .single import build_one


class CompiledFunction:
    """What ``@tlc.compile`` returns: calls build a :class:`CompiledModel` per input signature
    (shapes, dtypes, structure, Python scalar values) on first use and reuse it after.

    ``cache`` maps signature -> CompiledModel; ``trace_count`` counts traces (one per new
    signature not found in the persistent compile cache either); ``persistent``: whether the
    persistent compile cache (:mod:`tlc.driver.cache`) is used, so that a new process with the same
    model and signature loads instead of tracing (keyed by the signature, not the values, as the
    in-memory cache). With ``example_inputs``, the first entry is built at decoration time.
    """

    def __init__(self, fn, *, example_inputs=None, cache: bool = True, strict: bool = False, **options):
        self.fn = fn
        self.__tlc_function__ = fn  # what tlc.build traces when given this wrapper
        self.options = options  # as given (the CLI merges them with a model file's); decided once here:
        self.build_options = BuildOptions.decide(**options)
        self.strict = strict
        self.persistent = cache
        self.cache: dict = {}
        self.trace_count = 0
        self.example_inputs = example_inputs
        functools.update_wrapper(self, fn, updated=()) if not isinstance(fn, torch.nn.Module) else None
        if example_inputs is not None:
            self.compiled_for(example_inputs)

    def compiled_for(self, example_inputs) -> CompiledModel:
        """The CompiledModel for these inputs (built and cached if new)."""
        args, kwargs = normalize_inputs(example_inputs)
        key, _ = signature_key(args, kwargs)
        cm = self.cache.get(key)
        if cm is None:
            cm = build_one(self.fn, (args, kwargs), self.build_options, strict=self.strict, cache=self.persistent,
                           cache_values=False)
            self.trace_count += cm.cache_status != "hit"
            self.cache[key] = cm
        return cm

    @property
    def compiled(self) -> CompiledModel:
        """The first CompiledModel built (the one for ``example_inputs`` when given)."""
        if not self.cache:
            raise TlcError("nothing compiled yet: call the function once or pass example_inputs=")
        return next(iter(self.cache.values()))

    def __call__(self, *args, **kwargs):
        return self.compiled_for((args, kwargs))(*args, **kwargs)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"<tlc.compile {name}: {len(self.cache)} compiled signature(s)>"


def compile(fn=None, *, example_inputs=None, precision: str | None = None, minimum_deployment_target: str = "iOS17",
            target: str = "ane", strict: bool = False, io_dtype: str = "float32", fallback: bool = True,
            compress: str | None = None, cache: bool = True):
    """Decorator/wrapper: ``@tlc.compile``, ``@tlc.compile(example_inputs=...)``,
    ``tlc.compile(module_instance)`` or on an ``nn.Module`` subclass (instances then run through
    tlc). Specializes on input shapes/dtypes at first call; see :class:`CompiledFunction`.
    Options as in :func:`build`; ``cache=False`` keeps the specializations in memory only (no
    persistent compile cache, :mod:`tlc.driver.cache`).
    """
    options = dict(precision=precision, minimum_deployment_target=minimum_deployment_target, target=target,
                   strict=strict, io_dtype=io_dtype, fallback=fallback, compress=compress, cache=cache)
    # pass selection stays a build()/CLI option; @tlc.compile uses the default pipeline
    if fn is None:
        return lambda f: compile(f, example_inputs=example_inputs, **options)
    if isinstance(fn, type) and issubclass(fn, torch.nn.Module):
        return _compile_module_class(fn, options)
    return CompiledFunction(fn, example_inputs=example_inputs, **options)


class _EagerCall(torch.nn.Module):
    """Holds a module whose class ``__call__`` is routed through tlc, and calls it eagerly."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return torch.nn.Module.__call__(self.inner, *args, **kwargs)


def _compile_module_class(cls, options):
    def __call__(self, *args, **kwargs):
        cf = self.__dict__.get("_tlc_compiled")
        if cf is None:
            cf = CompiledFunction(_EagerCall(self), **options)
            self.__dict__["_tlc_compiled"] = cf
        return cf(*args, **kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__, "__doc__": cls.__doc__})
