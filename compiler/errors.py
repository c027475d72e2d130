"""Errors tlc raises. Every one names what is wrong and where (op, source line, file).

The CLI prints ``str(error)`` as one paragraph (plus the source line and a few lines of
surrounding IR where known) and exits with :attr:`TlcError.exit_code`; it never shows a raw
traceback for these.
"""
from __future__ import annotations


class TlcError(Exception):
    """Base class. ``loc`` is a :class:`tlc.ir.SourceLoc` (or None), ``context`` extra text
    (e.g. surrounding IR) appended to the message."""

    exit_code = 1

    def __init__(self, message: str, loc=None, context: str | None = None):
        super().__init__(message)
        self.loc = loc
        self.context = context

    def __str__(self) -> str:
        s = self.args[0]
        if self.loc is not None:
            s += f"\n  at {self.loc}"
        if self.context:
            s += "\n" + "\n".join("  " + line for line in self.context.splitlines())
        return s


class IRError(TlcError):
    """The IR contract is broken (bad types, unknown op, ordering)."""


class FrontendError(TlcError):
    """The model could not be traced or lowered into the IR."""


class UnsupportedOpError(FrontendError):
    """Something tlc's IR cannot represent even as a fallback op: a traced callable that is not a
    torch operator, or an argument/result type the IR cannot store. (An ATen or custom op without
    a lowering is *not* an error: it becomes a fallback node, see tlc.ops.fallback. Lowerings also
    raise it to decline arguments; the front-end then keeps the torch op as a fallback node.)"""


class InputError(TlcError):
    """Example or run-time inputs are missing or of the wrong type, shape or dtype."""

    exit_code = 2


class ModelFileError(TlcError):
    """A ``model.py`` given to the CLI is missing, raises, or defines no model."""

    exit_code = 2


class EmitError(TlcError):
    """MIL emission or package writing failed."""


class OutputExistsError(TlcError):
    """The output path exists and ``force`` was not given."""

    exit_code = 2


class NotShippableError(TlcError):
    """``fallback=False`` (``tlc build --no-fallback``) was asked for, and some ops cannot be in the
    one ``.mlpackage`` an app ships. ``ops``: one ``(op, node name, reason, source)`` per blocking
    op, in graph order; the message lists them. Nothing was written."""

    exit_code = 2

    def __init__(self, ops: list[tuple[str, str, str, str]]):
        lines = [f"  {op} (node {name}): {why}" + (f"\n      at {src}" if src else "") for op, name, why, src in ops]
        super().__init__(
            f"not one .mlpackage (or .aimodel): {len(ops)} op(s) cannot run in Core ML (or Core AI), so the model would "
            f"need tlc's fallback "
            f"runtime (a NAME.tlc bundle, which an iOS/macOS app cannot ship). Nothing was written.\n" + "\n".join(lines)
            + "\nWithout --no-fallback (fallback=False) tlc builds the bundle instead.")
        self.ops = ops
