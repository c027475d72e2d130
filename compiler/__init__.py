"""tlc: a graph compiler from PyTorch models and tensor functions to Core ML mlprogram packages.

Public API::

    cm = tlc.build(model, example_inputs)       # precision="mixed" -> CompiledModel
    cm.save("model.mlpackage"); outputs = cm(*inputs)

    @tlc.compile                      # specializes per input signature, caches
    def f(x, y): ...

See README.md and docs/ for the model.py convention used by ``tlc build``.
"""
from .version import __version__
from .errors import (  # noqa: E402
    EmitError, FrontendError, InputError, IRError, ModelFileError, NotShippableError, OutputExistsError, TlcError,
    UnsupportedOpError,
)
from .iospec import ClassifierConfig, ImageType, TensorType  # noqa: E402  (no torch: the I/O specs of tlc.build)

_API = ("CompiledFunction", "CompiledModel", "MultiFunctionModel", "build", "build_lm", "build_pretrained", "compile")


def __getattr__(name):
    """``tlc.build``, ``tlc.compile``, ... import the API (and with it torch) on first use, so
    ``import tlc.runtime`` (running and inspecting packages) does not pay torch's import."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tlc' has no attribute {name!r}")

__all__ = [
    "TensorType", "ImageType", "ClassifierConfig", "build", "build_pretrained", "build_lm", "compile", "CompiledModel", "MultiFunctionModel", "CompiledFunction", "TlcError", "IRError", "FrontendError",
    "UnsupportedOpError", "InputError", "ModelFileError", "EmitError", "OutputExistsError", "NotShippableError",
    "__version__",
]
