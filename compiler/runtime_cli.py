"""Helpers for the CLI's runtime commands."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def parse_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """``["name=file.npy", ...]`` -> ``{name: array}``; raises :class:`InputError` naming the bad
    item (no ``=``, a missing file, a file that is not a NumPy ``.npy``)."""
    feeds = {}
    for item in specs:
        if "=" not in item:
            raise InputError(f"--input {item!r} must be NAME=FILE.npy")
        name, path = item.split("=", 1)
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--input {name}: file {path!r} does not exist")
        try:
            feeds[name] = np.load(p, allow_pickle=False)
        except Exception as e:
            raise InputError(f"--input {name}: {path!r} is not a NumPy .npy file ({type(e).__name__}: {e})") from None
    return feeds
