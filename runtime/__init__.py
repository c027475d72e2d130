"""tlc runtimes.

* :func:`run_graph` — the NumPy reference executor over tlc's IR.
* :class:`MILInterpreter` — executes any mlprogram ``.mlpackage`` with NumPy (no macOS needed).
* :func:`load` — a package as a callable: Core ML predict on macOS, the interpreter elsewhere; a
  bundle (``NAME.tlc/``) as a :class:`BundleModel` running its segments in order.
"""
from __future__ import annotations

from pathlib import Path

from .bundle import BundleModel, is_bundle
from .mil_interpreter import MILInterpreter, PackageError, UnsupportedMILOpError, load_program
from .mlspec import package_info
from .numpy_executor import check_inputs, run_graph, validate_feeds
from .package import BACKENDS, COMPUTE_UNITS, LoadedModel, coreml_available, gpu_available
from .protocol import IOSpec, LoadedArtifact

def load(path: str | Path, backend: str = "auto", compute_units: str = "ALL",
         fallback: str = "auto", function_name: str | None = None, paddable=None) -> LoadedModel | BundleModel:
    """Load an ``.mlpackage`` (:class:`LoadedModel`), a tlc bundle directory (:class:`BundleModel`)
    or a Core AI ``.aimodel`` asset (:class:`~tlc.runtime.coreai_runtime.CoreAIModel`, run by
    Apple's coreai-core runtime) as a callable mapping named arrays to ``{output_name: array}``;
    each speaks :class:`LoadedArtifact` (``inputs`` / ``outputs`` records, ``functions``, ``run``).

    ``backend`` (Core ML parts): ``"auto"`` uses Core ML predict on macOS and the MIL interpreter
    elsewhere; ``compute_units`` (Core ML only): ``ALL``, ``CPU_ONLY``, ``CPU_AND_GPU``,
    ``CPU_AND_NE``. A bundle's fallback segments run as ``fallback`` says (:class:`BundleModel`):
    by default, ``gpu`` segments on tlc's torch-device executor when a GPU is here, the rest on the
    NumPy executor. ``function_name`` fixes the function of a multifunction package; without it each
    call picks the function by input shape, padding along ``paddable`` axes (``{input: axis}``;
    default: those recorded at build time) where no function matches exactly (:class:`LoadedModel`).
    Raises :class:`PackageError` for anything that is not a loadable package or bundle.
    """
    if is_bundle(path):
        return BundleModel(path, backend=backend, compute_units=compute_units, fallback=fallback)
    from .coreai_runtime import CoreAIModel, is_aimodel

    if is_aimodel(path):
        return CoreAIModel(path, function_name)
    return LoadedModel(path, backend=backend, compute_units=compute_units, function_name=function_name,
                       paddable=paddable)


__all__ = ["load", "LoadedModel", "BundleModel", "is_bundle", "LoadedArtifact", "IOSpec", "BACKENDS", "COMPUTE_UNITS", "MILInterpreter", "PackageError", "UnsupportedMILOpError", "load_program",
           "package_info", "run_graph", "check_inputs", "validate_feeds", "coreml_available", "gpu_available"]
