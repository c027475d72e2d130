"""The public entry points: :func:`build` (one signature or several), :func:`compile`
(``@tlc.compile``), :func:`build_lm`, and the types they return. Each checks its options once
(:meth:`tlc.driver.options.BuildOptions.decide`) and hands them to the driver (:mod:`tlc.driver`),
which does the work; nothing here builds anything itself.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

from .driver.hf import prepare
from .driver.lm import build_lm
from .driver.model import CompiledModel
from .driver.multifunction import MultiFunctionModel, build_multifunction, signatures
from .driver.options import BuildOptions, decide_interface, default_precision
from .driver.profile import cost_model
from .driver.single import build_one
from .driver.specialize import CompiledFunction, compile
from .errors import InputError


def build(
    model_or_fn: Callable | torch.nn.Module | torch.export.ExportedProgram,
    example_inputs=None,
    *,
    inputs: list | None = None,
    outputs: list | None = None,
    classifier_config=None,
    class_labels=None,
    author: str | None = None,
    license: str | None = None,
    version: str | None = None,
    short_description: str | None = None,
    metadata: dict | None = None,
    precision: str | None = None,
    minimum_deployment_target: str | None = None,
    target: str = "ane",
    profile: str | os.PathLike | None = None,
    strict: bool = False,
    strict_precision: bool = False,
    calibration: list | None = None,
    calibration_inputs: list | None = None,
    passes: list[str] | None = None,
    skip_passes: list[str] | tuple = (),
    io_dtype: str = "float32",
    fallback: bool = True,
    progress: bool = False,
    compress: str | dict | None = None,
    function_names: list[str] | None = None,
    default_function_name: str | None = None,
    paddable: dict | None = None,
    format: str = "mlpackage",
    cache: bool = False,
    cache_key: str | None = None,
    _cache_values: bool = True,
):
    """Trace ``model_or_fn`` on ``example_inputs``, lower it to tlc's IR and optimize it.

    ``model_or_fn``: an ``nn.Module``, a function on tensors, or an ``ExportedProgram``
    (``torch.export.export``'s result, as ExecuTorch and coremltools take; lowered as exported,
    ``example_inputs`` defaulting to the ones it was exported with: the same package as its module).
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
    ``strict_precision``: with ``precision="mixed"``, raise :class:`tlc.check.calibrate.PrecisionError`
    when no fp32 island assignment passes the closed loop (default: ship the smallest passing
    program, at worst every op in fp32, and say so; CLI ``--strict-precision``);
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
    :mod:`tlc.backends.coreml.compress`; CLI: ``--compress``). By measured sensitivity (issue 31):
    ``"auto"`` or ``{"target_psnr": 40, "max_bits": 4, "granularity": "auto"}`` (the fewest bits per
    weight whose package reaches that PSNR in dB on the calibration samples) or ``{"avg_bits": 4.5}``
    (the best PSNR within a bits budget), keys as :func:`tlc.driver.options.check_compress`; or a
    recipe file ``"NAME.recipe.json"`` such a build wrote beside its package (a byte-identical
    rebuild). What was decided and measured: ``cm.compression``
    (:class:`tlc.driver.compression.CompressionReport`). CLI: ``--compress auto --target-psnr DB``,
    ``--avg-bits B``, ``--compress-recipe FILE``.

    **The package's interface** (:mod:`tlc.iospec`; coremltools' names): ``inputs`` / ``outputs``,
    one entry per model input / output in order (from the first; None keeps one as traced):
    :class:`tlc.TensorType` (``name``, ``dtype``, ``description``) or :class:`tlc.ImageType`
    (``name``, ``scale``, ``bias``, ``color_layout`` ``"RGB"``/``"BGR"``/``"GRAYSCALE"``,
    ``channel_first``: the package takes an image, and the model ``pixel * scale + bias``, computed
    by ops in the program); ``classifier_config`` (:class:`tlc.ClassifierConfig`) or
    ``class_labels`` (a list, a label file or a Hugging Face ``id2label``): a Core ML classifier,
    whose outputs are ``classLabel`` and the ``{label: probability}`` dictionary; ``author``,
    ``license``, ``version``, ``short_description`` (Xcode's model page) and ``metadata`` (more
    ``{key: value}`` strings). Names must be Core ML feature names and distinct.

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

    Raises :class:`~tlc.errors.InputError` (bad inputs, precision or pass names, bad I/O
    declarations: an ``ImageType`` on a non-float input or a shape other than ``[1, C, H, W]``,
    labels whose count differs from the probabilities output's size, clashing names; an unknown
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
    interface = decide_interface(inputs=inputs, outputs=outputs, classifier_config=classifier_config,
                                 class_labels=class_labels, author=author, license=license, version=version,
                                 short_description=short_description, metadata=metadata)
    options = BuildOptions.decide(precision=precision, minimum_deployment_target=minimum_deployment_target,
                                  target=target, io_dtype=io_dtype, fallback=fallback, compress=compress, format=format,
                                  cost=cost_model(profile) if profile is not None else None,
                                  functions=len(sigs) if sigs else 1, interface=interface,
                                  strict_precision=strict_precision)
    calibration = list(calibration or []) + list(calibration_inputs or [])
    trace = dict(profile=profile, strict=strict, passes=passes, skip_passes=skip_passes, progress=progress, cache=cache,
                 cache_key=cache_key)
    if sigs is not None:
        return build_multifunction(model_or_fn, sigs, options, function_names=function_names,
                                   default_function_name=default_function_name, paddable=paddable,
                                   calibration=calibration, **trace)
    return build_one(model_or_fn, example_inputs, options, calibration=calibration, cache_values=_cache_values, **trace)


#: ``co.huggingface.exporters.precision`` for tlc's precisions (exporters writes float32 or float16)
HF_PRECISION = {"mixed": "float16", "fp16": "float16", "fp32": "float32"}


def build_pretrained(path: str | os.PathLike, task: str | None = None, *, sequence_length: int | None = None,
                     short_description: str | None = None, metadata: dict | None = None, max_context: int = 256,
                     prefill_lengths=(32,), kv_cache: str = "io", **options):
    """Build the Hugging Face model saved in directory ``path`` (``save_pretrained``; nothing is
    downloaded) for ``task``, with the input names, output names, labels and metadata of Hugging
    Face's Core ML exporter (:mod:`tlc.driver.hf`: ``feature-extraction``,
    ``sequence-classification``, ``image-classification``, ``token-classification``,
    ``question-answering``, ``object-detection``, ``semantic-segmentation``; None infers it from the
    config's architecture). ``text-generation`` builds the causal LM with :func:`build_lm`
    (``max_context``, ``prefill_lengths``, ``kv_cache``). ``sequence_length``: the text inputs'
    length (default 128). ``options``: :func:`build`'s (``precision``, ``author``, ...);
    ``metadata`` adds keys to the task's. What the user should know (a directory without an image
    processor) is a ``UserWarning``. Returns a :class:`CompiledModel` (a
    :class:`MultiFunctionModel` for ``text-generation``). Raises :class:`~tlc.errors.InputError`
    for a path that is not a model directory, an unknown task, a model the task cannot load, and
    what :func:`build` raises."""
    p = prepare(path, task, sequence_length)
    for note in p.notes:
        warnings.warn(note, stacklevel=2)
    precision = options.get("precision") or default_precision(options.get("target", "ane"))
    md = {**p.metadata, "co.huggingface.exporters.precision": HF_PRECISION.get(precision, precision), **(metadata or {})}
    desc = short_description or p.short_description
    if p.task == "text-generation":
        return build_lm(p.model, max_context=max_context, prefill_lengths=prefill_lengths, kv_cache=kv_cache,
                        short_description=desc, metadata=md, **options)
    return build(p.model, p.example_inputs, inputs=p.inputs, outputs=p.outputs, class_labels=p.classifier_labels,
                 short_description=desc, metadata=md, **options)


__all__ = ["build", "build_pretrained", "compile", "build_lm", "CompiledModel", "MultiFunctionModel", "CompiledFunction"]
