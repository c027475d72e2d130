"""Loading a ``model.py`` for the CLI.

The convention (README.md, docs/model-file.md): a model file defines either

* module-level ``model`` (an ``nn.Module`` or a callable) and ``example_inputs`` (a tensor, a
  tuple/list of tensors, or a dict of named tensors), or
* exactly one function (or module) wrapped with ``@tlc.compile(example_inputs=...)``.

Optional module-level ``precision``, ``minimum_deployment_target`` and ``io_dtype`` set defaults that CLI flags
override: :func:`merged_options` is the one place that merges them (with a ``@tlc.compile``'s own
options), and :func:`add_build_options` declares the flags the commands share.
"""
from __future__ import annotations

import importlib.util
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import argparse

from tlc.driver.options import IO_DTYPES, PRECISIONS, TARGETS
from tlc.errors import InputError, ModelFileError, TlcError

#: build options a model file (or a ``@tlc.compile`` in it) may set and a flag may override
OPTION_KEYS = ("precision", "minimum_deployment_target", "target", "io_dtype", "fallback", "compress")

#: the package interface a model file may declare at module level (``tlc.build``'s arguments of the same
#: names: docs/model-file.md), each overridden by its flag where one exists
IO_KEYS = ("inputs", "outputs", "class_labels", "classifier_config", "author", "license", "version",
           "short_description", "metadata")


@dataclass
class ModelSpec:
    """What a model file provides."""

    model: Any
    example_inputs: Any
    name: str
    path: Path
    options: dict = field(default_factory=dict)
    io: dict = field(default_factory=dict)  # module-level IO_KEYS: the package interface
    tokenizer: Any = None  # module-level `tokenizer`, if the file defines one (tlc generate --prompt)


def load_model_file(path: str | Path, entry: str | None = None, need_inputs: bool = True) -> ModelSpec:
    """Import ``path`` and find its model per the convention above.

    ``entry`` names the ``@tlc.compile`` object to use when the file has several;
    ``need_inputs=False`` accepts a ``model`` without ``example_inputs`` (text generation makes its
    own).
    Raises :class:`ModelFileError` when the file is missing, raises while importing (naming the
    exception and the line in the file), or defines no model / no ``example_inputs``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    if path.suffix != ".py":
        raise ModelFileError(f"model file {str(path)!r} must be a Python file (.py)")
    modname = f"_tlc_model_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod  # as importlib's recipe does: inspect (tlc.source), dataclasses and pickle look here
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(mod)
    except SystemExit as e:
        sys.modules.pop(modname, None)
        raise ModelFileError(f"model file {str(path)!r} called sys.exit({e.code}) while being imported") from None
    except BaseException as e:
        sys.modules.pop(modname, None)
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
        where = f" at {path}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""
        if isinstance(e, TlcError):  # e.g. an eager @tlc.compile(example_inputs=...) failed
            raise
        raise ModelFileError(
            f"model file {str(path)!r} raised {type(e).__name__}: {e}{where}"
        ) from e
    finally:
        try:
            sys.path.remove(str(path.parent.resolve()))
        except ValueError:
            pass
    spec = _find(mod, path, entry, need_inputs)
    spec.tokenizer = getattr(mod, "tokenizer", None)
    spec.io = {k: getattr(mod, k) for k in IO_KEYS if getattr(mod, k, None) is not None}
    from tlc.frontend import normalize_inputs  # torch: imported by the commands that trace, not by `tlc run`

    if spec.example_inputs is None and not need_inputs:
        return spec
    try:  # fail here, naming the file, before any slow work
        normalize_inputs(spec.example_inputs)
    except InputError as e:
        raise InputError(f"model file {str(path)!r}: {e.args[0]}") from None
    return spec


def _find(mod, path: Path, entry: str | None, need_inputs: bool = True) -> ModelSpec:
    from tlc.driver.specialize import CompiledFunction  # torch (see load_model_file)

    options = {k: getattr(mod, k) for k in ("precision", "minimum_deployment_target", "io_dtype") if hasattr(mod, k)}
    compiled = {k: v for k, v in vars(mod).items() if isinstance(v, CompiledFunction)}
    if entry is not None:
        if entry not in compiled:
            raise ModelFileError(f"model file {str(path)!r} has no @tlc.compile object named {entry!r} "
                                 f"(found: {', '.join(compiled) or 'none'})")
        compiled = {entry: compiled[entry]}
    if hasattr(mod, "model") and entry is None:
        if not hasattr(mod, "example_inputs") and not need_inputs:
            return ModelSpec(mod.model, None, path.stem, path, options)
        if not hasattr(mod, "example_inputs"):
            raise ModelFileError(f"model file {str(path)!r} defines `model` but no `example_inputs` "
                                 f"(a tensor, tuple of tensors, or dict of named tensors)")
        return ModelSpec(mod.model, mod.example_inputs, path.stem, path, options)
    if len(compiled) == 1:
        name, cf = next(iter(compiled.items()))
        if cf.example_inputs is None:
            raise ModelFileError(f"@tlc.compile function {name!r} in {str(path)!r} has no example_inputs=; "
                                 f"the CLI needs them to trace")
        return ModelSpec(cf, cf.example_inputs, name, path, {**options, **cf.options})
    if len(compiled) > 1:
        raise ModelFileError(f"model file {str(path)!r} has several @tlc.compile objects ({', '.join(compiled)}); "
                             f"choose one with --entry NAME")
    raise ModelFileError(
        f"model file {str(path)!r} defines no model: define module-level `model` and `example_inputs`, "
        f"or decorate one function with @tlc.compile(example_inputs=...)")


def merged_options(a: argparse.Namespace, spec: ModelSpec | None, keys=OPTION_KEYS) -> dict:
    """The build options of a command (only ``keys``): the model file's (module-level settings and a
    ``@tlc.compile``'s own options), each overridden by its flag when the flag was given
    (``--no-fallback`` sets ``fallback=False``). The options are checked where they enter the
    driver (:meth:`tlc.driver.options.BuildOptions.decide`)."""
    opts = {k: v for k, v in (spec.options if spec is not None else {}).items() if k in keys}
    for k in keys:
        v = getattr(a, k, None)
        if v:
            opts[k] = v
    if "fallback" in keys and getattr(a, "no_fallback", False):
        opts["fallback"] = False
    if "compress" in keys:
        c = compress_option(a)
        if c is not None:
            opts["compress"] = c
    return opts


def compress_option(a: argparse.Namespace):
    """``compress=`` of ``--compress MODE|auto``, ``--target-psnr DB`` / ``--avg-bits B``, ``--max-bits N``
    and ``--compress-recipe FILE`` (None when none is given): a mode string, a dict
    (``{"target_psnr": 40, "max_bits": 4}``; ``--target-psnr`` or ``--avg-bits`` alone imply ``auto``)
    or the recipe path. Raises :class:`InputError` for a recipe beside ``--compress`` and for the
    target flags beside a uniform mode. Values are checked by
    :func:`tlc.driver.options.check_compress`."""
    mode, recipe = getattr(a, "compress", None), getattr(a, "compress_recipe", None)
    auto = {k: getattr(a, f, None) for k, f in (("target_psnr", "target_psnr"), ("avg_bits", "avg_bits"),
                                                  ("max_bits", "max_bits"))}
    auto = {k: v for k, v in auto.items() if v is not None}
    if recipe is not None:
        if mode or auto:
            raise InputError("--compress-recipe FILE gives every weight's config; leave out --compress, --target-psnr, "
                             "--avg-bits and --max-bits")
        return str(recipe)
    if auto:
        if mode not in (None, "auto"):
            raise InputError(f"--target-psnr, --avg-bits and --max-bits go with --compress auto, not --compress {mode}")
        return auto
    return mode or None


def io_options(a: argparse.Namespace, spec: ModelSpec | None = None) -> dict:
    """The package interface of a build (``tlc.build``'s ``inputs``, ``outputs``, ``class_labels``,
    ``author``, ... keywords): the model file's module-level settings (:data:`IO_KEYS`), each
    overridden by its flag (``--class-labels``, ``--author``, ``--license``, ``--model-version``,
    ``--description``; ``--metadata KEY=VALUE`` adds keys). Checked where they enter the driver
    (:func:`tlc.driver.options.decide_interface`)."""
    io = dict(spec.io) if spec is not None else {}
    flags = {"class_labels": "class_labels", "author": "author", "license": "license", "version": "model_version",
             "short_description": "description"}
    for key, flag in flags.items():
        v = getattr(a, flag, None)
        if v is not None:
            io[key] = v
    if "class_labels" in io and "classifier_config" in io and getattr(a, "class_labels", None) is not None:
        del io["classifier_config"]  # the flag replaces the file's classifier
    pairs = getattr(a, "metadata", None) or []
    if pairs:
        md = dict(io.get("metadata") or {})
        for item in pairs:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise InputError(f"--metadata {item!r} must be KEY=VALUE")
            md[k] = v
        io["metadata"] = md
    return io


def add_interface_options(p: argparse.ArgumentParser) -> None:
    """The flags that name, describe and label a package (``tlc build``)."""
    p.add_argument("--class-labels", metavar="FILE", help="a classifier package: one label per line, in the order of the "
                                                          "model's (first) output; outputs classLabel and the "
                                                          "{label: probability} dictionary (or the file's `class_labels`)")
    p.add_argument("--author", help="the package's author (Xcode's model page)")
    p.add_argument("--license", help="the package's license (Xcode's model page)")
    p.add_argument("--model-version", metavar="VERSION", help="the package's version (Xcode's model page; default tlc's)")
    p.add_argument("--description", metavar="TEXT", help="the package's short description (Xcode's model page)")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="a user-defined metadata key (repeatable)")


def model_of(spec: ModelSpec):
    """What a command traces: the function or module itself (a ``@tlc.compile`` object's ``fn``)."""
    from tlc.driver.inputs import unwrap

    return unwrap(spec.model)


def _placement_target(v: str) -> str:
    if v in TARGETS:
        return v
    hint = (f"; {v!r} looks like an OS version: use --minimum-deployment-target {v}"
            if v[:3].lower() in ("ios", "mac", "tvo", "wat", "vis") else "")
    raise argparse.ArgumentTypeError(f"must be {', '.join(TARGETS[:-1])} or {TARGETS[-1]}{hint}")


def add_build_options(p: argparse.ArgumentParser) -> None:
    """The build options `tlc build` and `tlc verify` share (and ``--entry``)."""
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="mixed (default): fp16 with fp32 islands where range analysis or the closed-loop check of the "
                        "package on the calibration samples finds fp16 unsafe; "
                        "fp16: everything; fp32: nothing (or the file's `precision`)")
    p.add_argument("--target", type=_placement_target, metavar="{" + ",".join(TARGETS) + "}",
                   help="where capable ops run: ane (default: Core ML; the rest in tlc's fallback runtime), "
                        "gpu or cpu (everything in tlc's fallback runtime; precision defaults to fp32)")
    p.add_argument("--minimum-deployment-target", "--deployment-target", dest="minimum_deployment_target",
                   metavar="OS", help="Core ML minimum_deployment_target, e.g. iOS17 (default), iOS18, macOS14")
    p.add_argument("--io-dtype", choices=list(IO_DTYPES),
                   help="dtype of the package's float inputs/outputs: float32 (default) or float16 (iOS16+; "
                        "coremltools' ct.TensorType(dtype=np.float16)); or the file's `io_dtype`")
    p.add_argument("--entry", help="which @tlc.compile object to use when the file has several")


__all__ = ["ModelSpec", "load_model_file", "merged_options", "io_options", "model_of", "add_build_options",
           "add_interface_options", "OPTION_KEYS", "IO_KEYS"]
