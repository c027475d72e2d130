"""Shared access to coremltools: a quiet import and package helpers used by emission, the API
and the runtime (one copy of each)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path


def quiet_coremltools():
    """Import coremltools without its import-time chatter (on Linux it logs that its native
    runtime is missing, which is expected: tlc never calls Core ML predict off macOS)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        import coremltools as ct
    return ct


def package_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a package directory (all files under it)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def weight_file_size(path: str | os.PathLike) -> int:
    """Bytes of a package's weight files (``Data/com.apple.CoreML/weights/``)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and "weights" in f.parts)
