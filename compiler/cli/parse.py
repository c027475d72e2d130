"""The small parsers of command-line values: ``--input NAME=FILE`` (:func:`parse_inputs`),
``--paddable`` (:func:`parse_paddable`), ``--calibration FILE.npz`` (:func:`load_calibration`),
``--shape`` (:func:`parse_shapes`). Each raises
:class:`~tlc.errors.InputError` naming the value it cannot read."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tlc.errors import InputError


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


def parse_paddable(specs: list[str]) -> dict:
    """``--paddable NAME:AXIS[,AXIS]`` values -> ``{name: [axes]}`` (checked by tlc.runtime.buckets)."""
    out = {}
    for s in specs:
        name, sep, axes = s.partition(":")
        try:
            out[name] = [int(x) for x in axes.split(",")]
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InputError(f"--paddable {s!r}: expected NAME:AXIS[,AXIS], e.g. input_ids:1")
    return out


def load_calibration(path: str) -> list[dict]:
    """Calibration samples from ``FILE.npz``: one array per model input, named like the input,
    holding that input's samples stacked along a new first axis (``[N, *shape]``). Raises
    :class:`~tlc.errors.InputError` for a missing/unreadable file or arrays whose sample counts
    differ."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"--calibration {path}: cannot read it as .npz ({e})") from None
    if not arrays:
        raise InputError(f"--calibration {path}: the file holds no arrays")
    counts = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise InputError(f"--calibration {path}: every array must hold the same number N >= 1 of samples along its first "
                         f"axis ([N, *input shape]); got " + ", ".join(f"{k} {list(arrays[k].shape)}" for k in arrays))
    n = next(iter(counts.values()))
    return [{k: v[i] for k, v in arrays.items()} for i in range(n)]


def parse_shapes(specs: list[str]) -> dict[str, list[tuple[int, ...]]]:
    """``--shape`` values (``NAME=DIMS[,DIMS...]``, DIMS like ``1x128``; repeatable) ->
    ``{input: [shape, ...]}``. Raises :class:`InputError` naming the bad value."""
    out: dict[str, list[tuple[int, ...]]] = {}
    for s in specs:
        name, sep, dims = s.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes = [tuple(int(d) for d in part.lower().split("x")) for part in dims.split(",")]
            if not shapes or any(d <= 0 for sh in shapes for d in sh):
                raise ValueError
        except ValueError:
            raise InputError(f"--shape {s!r}: expected NAME=DIMS[,DIMS...] with positive dims, e.g. "
                             f"input_ids=1x64,1x128") from None
        if name in out:
            raise InputError(f"--shape names input {name!r} twice")
        out[name] = shapes
    short = [k for k, v in out.items() if len(v) < 2]
    if short:
        raise InputError(f"--shape {short[0]}=...: give two or more shapes (one function each); for one shape, make "
                         f"the model file's example_inputs that shape")
    counts = {k: len(v) for k, v in out.items()}
    if len(set(counts.values())) > 1:
        raise InputError("every --shape must list the same number of shapes (one per function); got "
                         + ", ".join(f"{k}: {n}" for k, n in counts.items()))
    return out


__all__ = ["parse_inputs", "parse_paddable", "load_calibration", "parse_shapes", "IMAGE_SUFFIXES"]
