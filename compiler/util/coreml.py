"""Apple's Python packages above the core: coremltools deployment targets (``minimum_deployment_target``
names, their ordering and ``ct.target`` members) and coreai-core's import (:func:`coreai`). The quiet import itself (:func:`tlc._coreml.quiet_coremltools`) lives in
the core, which the runtime and the op rows' emitters need too.

Names are checked and ordered from :data:`SPEC_VERSIONS`, a copy of coremltools 9.0's
``AvailableTarget`` (``coremltools/converters/mil/_deployment_compatibility.py``; a test compares
the two), so checking options does not import coremltools (4.7 s cold, measured here): a build
answered by the compile cache never pays it.
"""
from __future__ import annotations

from .._coreml import package_size, quiet_coremltools, weight_file_size  # noqa: F401  (one place to import them from above the core)
from ..errors import EmitError, InputError

#: Every ``ct.target`` name -> its Core ML specification version (coremltools 9.0 ``AvailableTarget``).
SPEC_VERSIONS = {
    "iOS13": 4, "iOS14": 5, "iOS15": 6, "iOS16": 7, "iOS17": 8, "iOS18": 9, "iOS26": 10,
    "macOS10_15": 4, "macOS10_16": 5, "macOS11": 5, "macOS12": 6, "macOS13": 7, "macOS14": 8, "macOS15": 9,
    "macOS26": 10,
    "watchOS6": 4, "watchOS7": 5, "watchOS8": 6, "watchOS9": 7, "watchOS10": 8, "watchOS11": 9, "watchOS26": 10,
    "tvOS13": 4, "tvOS14": 5, "tvOS15": 6, "tvOS16": 7, "tvOS17": 8, "tvOS18": 9, "tvOS26": 10,
}

#: The ``minimum_deployment_target`` names tlc's docs and errors offer (mlprogram needs iOS15 / macOS12
#: or newer; any other ``ct.target`` name is accepted too). Not the placement ``target`` (``ane``/
#: ``gpu``/``cpu``: :data:`tlc.driver.options.TARGETS`).
DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")

#: the oldest deployment target whose packages hold several functions (coremltools
#: ``save_multifunction`` writes specification version 9 = iOS18)
MULTIFUNCTION_MIN_TARGET = "iOS18"

#: how to install coreai-core (an optional extra)
COREAI_INSTALL = 'pip install -e ".[coreai]"  (coreai-core 1.0.0b3: Linux x86_64 manylinux_2_34, macOS arm64)'

#: the canonical name of each specification version: coremltools' own (its ``iOS`` member)
_CANONICAL = {v: n for n, v in reversed(SPEC_VERSIONS.items()) if n.startswith("iOS")}


def spec_version(target) -> int:
    """The Core ML specification version of a deployment target given as a name (``"iOS17"``,
    ``"macOS14"``) or a ``ct.target`` member; raises :class:`~tlc.errors.EmitError` for a name
    coremltools does not know."""
    if not isinstance(target, str):
        value = getattr(target, "value", None)
        if value in _CANONICAL:
            return int(value)
        target = str(target)
    if target not in SPEC_VERSIONS:
        raise EmitError(f"unknown minimum_deployment_target {target!r} (choose from {', '.join(DEPLOYMENT_TARGETS)})")
    return SPEC_VERSIONS[target]


def target_name(target) -> str:
    """Canonical name (``"iOS17"``; ``"macOS14"`` gives ``"iOS17"``, the same specification) of a
    deployment target given as a name or a ``ct.target`` member; raises
    :class:`~tlc.errors.EmitError` as :func:`spec_version`."""
    return _CANONICAL[spec_version(target)]


def at_least(target, oldest: str) -> bool:
    """Whether deployment target ``target`` (a name or ``ct.target`` member) is ``oldest`` or newer."""
    return spec_version(target) >= spec_version(oldest)


def coreai():
    """``coreai.authoring`` (Apple's Core AI authoring API, imported on first use); raises
    :class:`~tlc.errors.InputError` with the install line when the optional extra is absent."""
    try:
        import coreai.authoring as ca
    except ImportError:
        raise InputError(f"Core AI (.aimodel) needs Apple's coreai-core: {COREAI_INSTALL}") from None
    return ca


def resolve_target(target):
    """The ``ct.target`` member of a deployment target given as a name or a member (imports
    coremltools: for emission); raises :class:`~tlc.errors.EmitError` as :func:`spec_version`."""
    return getattr(quiet_coremltools().target, target_name(target))


__all__ = ["SPEC_VERSIONS", "DEPLOYMENT_TARGETS", "MULTIFUNCTION_MIN_TARGET", "COREAI_INSTALL", "coreai", "spec_version", "target_name", "at_least", "resolve_target",
           "quiet_coremltools", "package_size", "weight_file_size"]
