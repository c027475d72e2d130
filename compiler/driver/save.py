"""Saving a compiled model: where each artifact goes (the output-path rules, in one place) and writing
it — one ``.mlpackage``, a bundle ``NAME.tlc``, a Core AI ``.aimodel`` or its bundle
``NAME.aimodel.tlc`` — through the compile cache's artifact entries when the model came from the cache.

The functions take a :class:`tlc.driver.model.CompiledModel` (``cm``), whose methods
(``save``, ``output_path``, ``coreai_output_path``) call them.

Path rules:

* ``format="mlpackage"``: the requested path for one Core ML program; ``NAME.tlc`` (suffix
  replaced) when ops run in tlc's fallback runtime, or when ``.tlc`` was asked for.
* ``format="aimodel"``, or any path ending in ``.aimodel``: ``NAME.aimodel``, or the bundle
  ``NAME.aimodel.tlc`` when ops need tlc's fallback runtime (never the Core ML bundle's name); an
  explicit ``NAME.tlc`` with ``format="aimodel"`` is kept as given.
* ``format="both"``: the Core ML artifact as above and the Core AI one beside it.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from tlc.backends.bundle import bundle_path, write_bundle
from tlc.backends.coreai.emit import save_aimodel as write_aimodel_atomic
from tlc.backends.coreml.package import check_output_path, check_package_io, save_atomic
from tlc.errors import InputError, NotShippableError, OutputExistsError, TlcError
from tlc.util.files import refuse_existing
from tlc.util.progress import stage

from .cache import copy_artifact
from .cache_key import artifact_key
from .options import check_coreai_compress, check_format
from .recipe import recipe_json, recipe_path, write_recipe


def requested_output(output: str | os.PathLike | None, stem: str, format: str | None) -> tuple[str, Path]:
    """``(format, path)`` a build writes for ``-o output`` (None: ``./STEM`` with the format's
    suffix) and ``--format`` (None: ``aimodel`` for an output ending in ``.aimodel``, else
    ``mlpackage``); an ``aimodel`` path always ends in ``.aimodel``. Raises
    :class:`~tlc.errors.InputError` for an unknown format (or a Core AI one without coreai-core)."""
    fmt = format or ("aimodel" if output and Path(output).suffix == ".aimodel" else "mlpackage")
    check_format(fmt)
    path = Path(output) if output else Path(stem + (".aimodel" if fmt == "aimodel" else ".mlpackage"))
    if fmt == "aimodel" and path.suffix != ".aimodel":
        path = path.with_suffix(".aimodel")
    return fmt, path


def check_writable(path: Path, force: bool) -> Path:
    """Fail fast, before any tracing, when ``path`` cannot be written: an existing path without
    ``force`` (:class:`~tlc.errors.OutputExistsError`), a package path not ending in
    ``.mlpackage`` (:class:`~tlc.errors.EmitError`)."""
    if path.suffix in (".aimodel", ".tlc"):
        return refuse_existing(path, force)
    return check_output_path(path, force)


def output_path(cm, path: str | os.PathLike) -> Path:
    """Where ``cm.save(path)`` writes (the module docstring's rules); a path ending in
    ``.aimodel``: :func:`coreai_output_path`."""
    path = Path(path)
    if path.suffix == ".aimodel":
        return coreai_output_path(cm, path)
    return bundle_path(path) if cm.is_bundle or path.suffix == ".tlc" else path


def coreai_output_path(cm, path: str | os.PathLike) -> Path:
    """Where the Core AI artifact goes for a requested ``path``: ``NAME.aimodel`` when the model is
    one Core AI program, else the bundle ``NAME.aimodel.tlc``, or an explicit ``NAME.tlc`` path as
    given (with ``format="aimodel"``)."""
    path = Path(path)
    if path.suffix == ".tlc" and cm.format == "aimodel":
        return path
    stem = path.with_suffix("") if path.suffix in (".aimodel", ".mlpackage", ".tlc", "") else path
    return Path(f"{stem}.aimodel.tlc") if cm.coreai_is_bundle else Path(f"{stem}.aimodel")


def save(cm, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``cm``'s artifact(s) at ``path`` (:meth:`tlc.driver.model.CompiledModel.save`), copying
    them from the compile cache's artifact entry when ``cm`` came from the cache and the entry is
    there (and ``cm.mlmodel`` was not handed out, since it may have been edited), else writing and
    storing them. Returns the path written (the Core ML one for ``format="both"``)."""
    path = Path(path)
    cm._written = []
    if cm.cache_key is None or (cm.compress and cm.compress.measured):
        # compression by target/budget: its report and recipe file come from the measurement, which a
        # cached artifact does not carry (the trace and the plan are still taken from the cache)
        return _save(cm, path, force)
    akey = artifact_key(cm.cache_key, path, cm.format)
    got = None if cm._mlmodel_handed_out else cm._cache.get("artifacts", akey)
    t0 = time.perf_counter()
    if got is not None:
        if cm.format != "mlpackage" or path.suffix == ".aimodel":
            check_coreai_options(cm)
        d, meta = got
        try:
            outs = [copy_artifact(d / name, path.parent / name, force) for name in meta["outputs"]]
            cm.timings["save"] = time.perf_counter() - t0
            return outs[0]
        except OutputExistsError:
            raise
        except (TlcError, OSError) as e:  # the entry went away mid-copy (evicted, cleared): build it
            print(f"tlc: cached artifact unusable ({type(e).__name__}: {e}); building it", file=sys.stderr)
    out = _save(cm, path, force)
    written = list(cm._written)
    cm._cache.put("artifacts", akey, lambda d: [shutil.copytree(p, d / p.name) for p in written],
                  {"outputs": [p.name for p in written]})
    return out


def _save(cm, path: Path, force: bool) -> Path:
    with stage(f"writing {path.name} ({cm.format})"):
        if cm.format == "aimodel" or path.suffix == ".aimodel":
            return save_aimodel(cm, coreai_output_path(cm, path), force)
        path = output_path(cm, path)
        if cm.format == "both":
            aim = refuse_existing(coreai_output_path(cm, path), force)
            out = save_coreml(cm, path, force)
            save_aimodel(cm, aim, force)
            return out
        return save_coreml(cm, path, force)


def save_coreml(cm, path: Path, force: bool) -> Path:
    """Write the Core ML artifact at ``path``: a bundle for a ``.tlc`` path (Core ML segments and
    fallback segments, :func:`tlc.backends.bundle.write_bundle`), else the one package, reloaded and
    checked against the IR (:func:`tlc.backends.coreml.package.check_package_io`), and, for
    compression by target or budget, its recipe beside it (``NAME.recipe.json``,
    :mod:`tlc.driver.recipe`; checked writable before the package is written). Raises
    :class:`InputError` on a bundle for an activation-calibrating ``compress`` mode (its Core ML
    segments do not see the model's inputs) and for compression by target, budget or recipe
    (measured on one program's outputs: a bundle has several)."""
    if path.suffix == ".tlc":
        c = cm.compress
        if c and (c.activations or c.mode is None):
            raise InputError(f"compress={str(c)!r} " + (
                "calibrates activations on the whole model's inputs, which a bundle's Core ML segments do not see"
                if c.activations else "measures and compresses one Core ML program, and this model is a bundle")
                + " (ops run in tlc's fallback runtime: see report()); use a weight-only mode (int8, int4, "
                  "palettize4/6/8) for bundles")
        t0 = time.perf_counter()
        out = write_bundle(path, cm.emit_graph, cm.segments, precision=cm.precision,
                           minimum_deployment_target=cm.minimum_deployment_target,
                           metadata={**cm._metadata(), **cm.io.metadata.as_dict()}, force=force,
                           compress=c.mode if c else None, skip=tuple(cm.islands))
    else:
        path = check_output_path(path, force)  # before spending time on emission
        measured = bool(cm.compress) and cm.compress.measured
        if measured and recipe_path(path).exists():
            refuse_existing(recipe_path(path), force)
        mlm = cm._emitted_mlmodel()
        t0 = time.perf_counter()
        out = save_atomic(mlm, path, force=force, check=lambda staged: check_package_io(staged, cm.emit_graph, io=cm.io))
        if measured and cm.compression is not None:
            r = cm.compression
            write_recipe(recipe_path(out), recipe_json(r.recipe, r.summary(), r.layers), force=True)
    cm.timings["save"] = time.perf_counter() - t0
    cm._written.append(out)
    return out


def check_coreai_options(cm) -> None:
    """Before writing Core AI: ``fallback=False`` with ops outside Core AI raises
    :class:`~tlc.errors.NotShippableError`; ``compress`` raises :class:`InputError` (Core AI assets
    are not compressed by tlc yet). Both depend on the plan or on the path (a ``.aimodel`` path
    writes Core AI whatever the format), so they are checked here, at save time."""
    check_coreai_compress(cm.compress)
    if not cm.fallback and cm.coreai_is_bundle:
        raise NotShippableError(cm.coreai_fallback_ops())


def save_aimodel(cm, path: Path, force: bool) -> Path:
    """Write ``cm`` as Core AI (:mod:`tlc.backends.coreai.emit`) at ``path``: the same optimized,
    precision-typed graph the ``.mlpackage`` is emitted from, as one ``.aimodel`` or, for a ``.tlc``
    path, a bundle whose Core ML segments are ``.aimodel`` assets (``write_bundle`` with
    ``program="coreai"``). Raises :class:`~tlc.errors.EmitError` for an emission that fails,
    :class:`InputError` without coreai-core."""
    check_coreai_options(cm)
    t0 = time.perf_counter()
    md = {**cm._metadata(), **cm.io.metadata.as_dict()}  # a Core AI asset has no model-page fields: all as keys
    if path.suffix == ".tlc":
        out = write_bundle(path, cm.emit_graph, cm.plan.coreai_segments, precision=cm.precision,
                           minimum_deployment_target=cm.minimum_deployment_target, metadata=md, force=force,
                           program="coreai")
    else:
        out = write_aimodel_atomic(cm.emit_graph, path, force=force, metadata=md)
    cm.timings["save_aimodel"] = time.perf_counter() - t0
    cm._written.append(out)
    return out


__all__ = ["requested_output", "check_writable", "output_path", "coreai_output_path", "save", "save_coreml",
           "save_aimodel", "check_coreai_options"]
