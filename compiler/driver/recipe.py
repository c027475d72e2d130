"""Compression recipes are data: the per-weight configs a build chose, written beside the package
as JSON (``NAME.recipe.json``), and read back (``tlc.build(..., compress="NAME.recipe.json")``,
``tlc build --compress-recipe FILE``) to rebuild the same package byte for byte, or to compress
another function of the same weights (another input shape, another deployment target holding the
same configs) without measuring again.

The file::

    {"format": "tlc.compress-recipe", "version": 1,
     "weights": {"encoder_layer_0_attention_self_query_weight": {"kind": "palettize", "nbits": 4,
                  "granularity": "per_grouped_channel", "group_size": 16, ...}, ...,
                 "encoder_layer_0_intermediate_dense_weight": null},       # null: stays dense (fp16)
     "summary": {...}, "layers": [...]}                                   # what was measured; not read back

Weights are named as tlc names the program's constants, without the ``_fp16`` the precision pass
appends (:func:`weight_name`), so one recipe serves fp16 and fp32 builds alike. Only ``format``,
``version`` and ``weights`` are read back; each config is a
:class:`tlc.backends.coreml.weights.WeightConfig` (coremltools' field names). Apple's recipes
(apple/ml-stable-diffusion ``mixed_bit_compression_apply.py``) are ``{layer: nbits}`` maps named by
their average bits; tlc's carry the whole config per weight so they rebuild exactly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tlc.backends.coreml.weights import WeightConfig
from tlc.errors import InputError
from tlc.util.files import atomic_file

FORMAT = "tlc.compress-recipe"
VERSION = 1


def weight_name(const_name: str) -> str:
    """The recipe's name for a MIL const op: its name without the ``_fp16`` suffix precision adds."""
    return const_name[:-5] if const_name.endswith("_fp16") else const_name


@dataclass(frozen=True)
class Recipe:
    """Per-weight configs: ``weights`` ``{weight name: WeightConfig or None (dense)}``, in the
    program's order; ``source``: the file it was read from (empty when made by a build)."""

    weights: dict = field(default_factory=dict)
    source: str = ""

    def __hash__(self):
        return hash((tuple(self.weights.items()), self.source))

    def for_program(self, const_names: list[str]) -> dict:
        """``{const name: WeightConfig}`` of the consts ``const_names`` (a program's) this recipe
        compresses. Raises :class:`InputError` for a weight the recipe names that is none of them
        (listing a few the program has), before anything is compressed or written."""
        by_name = {weight_name(c): c for c in const_names}
        missing = [k for k in self.weights if k not in by_name]
        if missing:
            have = ", ".join(sorted(by_name)[:4]) + (", ..." if len(by_name) > 4 else "")
            raise InputError(f"recipe {self.source or '(given)'} names {len(missing)} weight(s) the model does not have "
                             f"(or whose ops cannot be compressed, e.g. read by an fp32 island): {', '.join(missing[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}; the model's compressible weights are {have}")
        return {by_name[k]: v for k, v in self.weights.items() if v is not None}

    def label(self) -> str:
        """What the package's ``tlc.compress`` metadata says: the configs and how many weights take
        each (the same for a build by target and a rebuild from its file: both give one package)."""
        counts: dict[str, int] = {}
        for v in self.weights.values():
            k = "dense" if v is None else v.label
            counts[k] = counts.get(k, 0) + 1
        return "recipe: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def read_recipe(path: str | os.PathLike) -> Recipe:
    """The :class:`Recipe` in file ``path``. Raises :class:`InputError` naming the file and the
    key for a missing/unreadable file, another format or version, or a bad weight config."""
    p = Path(path)
    where = str(p)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"recipe file {where!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise InputError(f"recipe file {where!r} is not readable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"recipe file {where!r} is not a tlc compression recipe (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise InputError(f"recipe file {where!r} has version {data.get('version')!r}; this tlc reads version {VERSION}")
    weights = data.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise InputError(f"recipe file {where!r}: \"weights\" must be a non-empty object {{weight name: config or null}}")
    out = {}
    for k, v in weights.items():
        out[k] = None if v is None else WeightConfig.from_json(v, f"recipe file {where!r}, weight {k!r}")
    return Recipe(out, where)


def recipe_json(recipe: Recipe, summary: dict, layers: list) -> dict:
    """The file's JSON (module docstring): ``recipe``'s weights and what was measured."""
    return {"format": FORMAT, "version": VERSION,
            "weights": {k: None if v is None else v.to_json() for k, v in recipe.weights.items()},
            "summary": summary, "layers": layers}


def recipe_path(package: str | os.PathLike) -> Path:
    """Where the recipe of ``package`` is written: ``NAME.recipe.json`` beside ``NAME.mlpackage``
    (only the last suffix replaced: ``bert.v2.mlpackage`` -> ``bert.v2.recipe.json``)."""
    return Path(package).with_suffix(".recipe.json")


def write_recipe(path: Path, data: dict, force: bool) -> Path:
    """Write ``data`` (:func:`recipe_json`) to ``path`` (temp file + rename). A file with the same
    bytes is left as it is (a rebuild from its own recipe); another one is replaced only with
    ``force`` (:class:`~tlc.errors.OutputExistsError` otherwise)."""
    text = (json.dumps(data, indent=1, sort_keys=False) + "\n").encode()
    if path.is_file() and path.read_bytes() == text:
        return path
    return atomic_file(path, force, text)


__all__ = ["FORMAT", "VERSION", "Recipe", "weight_name", "read_recipe", "recipe_json", "recipe_path", "write_recipe"]
