"""The public entry points: :func:`build` (one signature or several), :func:`compile`
(``@tlc.compile``), :func:`build_lm`, and the types they return. Each checks its options once
(:meth:`tlc.driver.options.BuildOptions.decide`) and hands them to the driver (:mod:`tlc.driver`),
which does the work; nothing here builds anything itself.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from .driver.lm import build_lm
from .driver.model import CompiledModel
from .driver.multifunction import MultiFunctionModel, build_multifunction, signatures
from .driver.options import BuildOptions
from .driver.profile import cost_model
from .driver.single import build_one
from .driver.specialize import CompiledFunction, compile
from .errors import InputError


def build(
    model_or_fn: Callable | torch.nn.Module,
    example_inputs,
    *,
    precision: str | None = None,
    minimum_deployment_target: str | None = None,
    target: str = "ane",
    profile: str | os.PathLike | None = None,
    strict: bool = False,
    calibration: list | None = None,
    calibration_inputs: list | None = None,
    passes: list[str] | None = None,
    skip_passes: list[str] | tuple = (),
    io_dtype: str = "float32",
    fallback: bool = True,
    progress: bool = False,
    compress: str | None = None,
    function_names: list[str] | None = None,
    default_function_name: str | None = None,
    paddable: dict | None = None,
    format: str = "mlpackage",
    cache: bool = False,
    cache_key: str | None = None,
    _cache_values: bool = True,
):
    """Trace ``model_or_fn`` on ``example_inputs``, lower it to tlc's IR and optimize it.

    ``example_inputs``: a tensor, a tuple/list of positional inputs, a dict of keyword inputs,
    or ``(args, kwargs)``; NumPy arrays are accepted. Integer inputs become int32 (Core ML has no
    int64 I/O), float64 becomes fp32. Shapes are static: the package accepts exactly these shapes.
    **Several shapes**: a ``list`` of two or more signatures (each a tuple, list or dict as above,
    :func:`tlc.driver.multifunction.signatures`) traces one static function per signature and returns a
    :class:`tlc.driver.multifunction.MultiFunctionModel`, saved as one multifunction ``.mlpackage``
    (iOS18+; weights stored once). ``function_names`` names the functions (default: from the
    shapes, ``input_ids_1x128``), ``default_function_name`` picks the default (the first), and
    ``paddable`` (``{input: axis or [axes]}``) declares axes along which a smaller input may be
    padded (with 0; ``{input: {"axes": [1], "value": v}}`` for another value) to fit a function at
    run time (:mod:`tlc.runtime.buckets`; recorded in the package).
    ``precision``: ``"mixed"`` (default for ``target="ane"``: fp16 with measured fp32 islands),
    ``"fp16"`` or ``"fp32"`` (default for ``target="gpu"``/``"cpu"``); ``target``: ``"ane"`` (default:
    every op Core ML can run goes into an mlprogram, the rest to tlc's fallback runtime, placed by
    :mod:`tlc.passes.partition`), ``"gpu"`` or ``"cpu"`` (everything in tlc's fallback runtime);
    ``profile``: a ``tlc profile`` file whose measured per-op costs replace the placement cost
    model's estimates (:func:`tlc.driver.profile.cost_model`);
    ``calibration``: more inputs of the same structure as ``example_inputs`` (a list of samples)
    for ``mixed``: its range analysis and its closed loop, which runs the emitted program on every
    sample (the example inputs first) and moves what fails to fp32 (:mod:`tlc.check.calibrate`;
    ``calibration_inputs`` is the former name, still accepted); ``progress``: print the closed
    loop's rounds to stderr as they run (the CLI sets it); ``minimum_deployment_target``: ``"iOS17"``
    (default; = macOS14) or another ``coremltools.target`` name; ``strict``: torch.export mode;
    ``passes``: the pass pipeline (default :data:`tlc.passes.PIPELINE`), ``skip_passes``: names
    to leave out of it; ``io_dtype``: ``"float32"`` (default) or ``"float16"``, the dtype of the
    package's float inputs and outputs, as coremltools' ``ct.TensorType(dtype=np.float16)``
    (iOS16+; an fp16 first/last op then needs no cast; ``CompiledModel`` and tlc's runtimes
    accept fp32 arrays for fp16 inputs); ``fallback``: ``True`` (default) lets ops Core ML cannot run
    go to tlc's fallback runtime (the artifact is then a bundle ``NAME.tlc``, which needs tlc's Python
    runtime); ``False`` demands one shippable ``.mlpackage``: every op MIL can express is placed in
    Core ML whatever the cost model says, and any other op raises
    :class:`~tlc.errors.NotShippableError` listing it (op, reason, source line) before anything is
    written (CLI: ``--no-fallback``). ``compress``: ``"int8"``, ``"int4"`` (iOS18+),
    ``"palettize4"``, ``"palettize6"``, ``"palettize8"``, ``"w8a8"`` (iOS17+: int8 weights and int8
    activations calibrated on the calibration samples in tlc's MIL interpreter) or None: the
    weights of conv/linear/matmul in the package compressed by coremltools after precision
    (per-channel or per-tensor for ``target="ane"``; embeddings and fp32 islands untouched;
    :mod:`tlc.backends.coreml.compress`; CLI: ``--compress``).

    ``format``: what :meth:`CompiledModel.save` writes: ``"mlpackage"`` (default; a bundle
    ``NAME.tlc`` when ops need tlc's fallback runtime), ``"aimodel"`` (Apple's Core AI asset,
    iOS/macOS 27, :mod:`tlc.backends.coreai.emit`; needs the ``coreai`` extra; a bundle
    ``NAME.aimodel.tlc`` of ``.aimodel`` segments when ops need tlc's fallback runtime, including
    ops with no Core AI form: :meth:`CompiledModel.coreai_fallback_ops`) or ``"both"`` (the Core
    ML artifact and the Core AI one beside it); a path ending in ``.aimodel`` always writes Core
    AI. ``compress`` applies to the ``.mlpackage`` only (``InputError`` with another format).

    ``cache``: use the persistent compile cache (:mod:`tlc.driver.cache`): a build whose key (versions,
    options, input signature and values, the model's weights and source files) is in the cache
    loads from it without tracing; its plan and the artifacts :meth:`CompiledModel.save` wrote are
    cached too. ``cache_key``: your own key for the model part (weights and code are then not
    hashed; implies ``cache``). ``$TLC_NO_CACHE=1`` turns the cache off. ``cm.cache_status`` is
    ``"hit"``, ``"miss"`` or None (not cached).

    Raises :class:`~tlc.errors.InputError` (bad inputs, precision or pass names, an unknown
    ``format`` or ``"aimodel"``/``"both"`` without coreai-core, several signatures
    with a deployment target before iOS18, repeated signature shapes, ``fallback=False``
    with a target other than ``"ane"``, an unknown ``compress`` mode or one the deployment target
    cannot hold), :class:`~tlc.errors.NotShippableError` (``fallback=False``),
    :class:`~tlc.errors.FrontendError` (incl. :class:`~tlc.errors.UnsupportedOpError` naming the
    op and its source line, for what not even a fallback op can hold; ops MIL cannot express become
    fallback nodes, :mod:`tlc.ops.fallback`), :class:`~tlc.errors.EmitError` (unknown deployment target),
    :class:`~tlc.errors.IRError` (a pass broke the IR contract: a tlc bug).
    """
    sigs = signatures(example_inputs)
    if sigs is None and (function_names is not None or default_function_name is not None or paddable is not None):
        raise InputError("function_names, default_function_name and paddable apply to several example input "
                         "signatures (example_inputs=[ex_a, ex_b, ...])")
    options = BuildOptions.decide(precision=precision, minimum_deployment_target=minimum_deployment_target,
                                  target=target, io_dtype=io_dtype, fallback=fallback, compress=compress, format=format,
                                  cost=cost_model(profile) if profile is not None else None,
                                  functions=len(sigs) if sigs else 1)
    calibration = list(calibration or []) + list(calibration_inputs or [])
    trace = dict(profile=profile, strict=strict, passes=passes, skip_passes=skip_passes, progress=progress, cache=cache,
                 cache_key=cache_key)
    if sigs is not None:
        return build_multifunction(model_or_fn, sigs, options, function_names=function_names,
                                   default_function_name=default_function_name, paddable=paddable,
                                   calibration=calibration, **trace)
    return build_one(model_or_fn, example_inputs, options, calibration=calibration, cache_values=_cache_values, **trace)


__all__ = ["build", "compile", "build_lm", "CompiledModel", "MultiFunctionModel", "CompiledFunction"]
