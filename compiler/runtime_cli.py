"""Helpers for the CLI's runtime commands."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def parse_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """``["name=file.npy", ...]`` -> ``{name: array}``; an image file (``.png``, ``.jpg``,
    ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``) is read with PIL as a uint8 ``[H, W, C]`` RGB array (for an
    image input). Raises :class:`InputError` naming the bad item (no ``=``, a missing file, a
    file that is not a NumPy ``.npy`` or a readable image)."""
    feeds = {}
    for item in specs:
        if "=" not in item:
            raise InputError(f"--input {item!r} must be NAME=FILE.npy")
        name, path = item.split("=", 1)
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--input {name}: file {path!r} does not exist")
        if p.suffix.lower() in IMAGE_SUFFIXES:
            try:
                from PIL import Image

                with Image.open(p) as im:
                    feeds[name] = np.asarray(im.convert("L" if im.mode in ("L", "I;16") else "RGB"))
            except Exception as e:
                raise InputError(f"--input {name}: {path!r} is not a readable image ({type(e).__name__}: {e})") from None
            continue
        try:
            feeds[name] = np.load(p, allow_pickle=False)
        except Exception as e:
            raise InputError(f"--input {name}: {path!r} is not a NumPy .npy file ({type(e).__name__}: {e})") from None
    return feeds
