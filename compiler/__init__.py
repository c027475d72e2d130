"""tlc: a graph compiler from PyTorch models and tensor functions to Core ML mlprogram packages.

Public API::

    cm = tlc.build(model, example_inputs)       # precision="mixed" -> CompiledModel
    cm.save("model.mlpackage"); outputs = cm(*inputs)

    @tlc.compile                      # specializes per input signature, caches
    def f(x, y): ...

See README.md and docs/ for the model.py convention used by ``tlc build``.
"""
__version__ = "0.1.0"

from .errors import (  # noqa: E402
    EmitError, FrontendError, InputError, IRError, ModelFileError, NotShippableError, OutputExistsError, TlcError,
    UnsupportedOpError,
)
from .api import CompiledFunction, CompiledModel, build, compile  # noqa: E402

__all__ = [
    "build", "compile", "CompiledModel", "CompiledFunction", "TlcError", "IRError", "FrontendError",
    "UnsupportedOpError", "InputError", "ModelFileError", "EmitError", "OutputExistsError", "NotShippableError",
    "__version__",
]
