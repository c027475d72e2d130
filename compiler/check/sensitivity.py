"""Which weight gets how many bits: measured sensitivity and the recipes built from it
(``tlc.build(compress={"target_psnr": 40})`` / ``{"avg_bits": 4.5}``; :mod:`tlc.driver.compression`
wires it to the program and to coremltools).

Everything is measured on the program that ships, in tlc's MIL interpreter, on the calibration
samples, against the fp32 reference outputs: :class:`Probe` replays a recorded run of the
program with some constants replaced by what they decompress to (only the ops from the first
reader of a replaced weight on run again: :meth:`tlc.runtime.MILInterpreter.replay`) and gives
the worst PSNR (coremltools' definition, :func:`tlc.check.metrics.psnr`) over outputs and samples.

* **Sensitivity** (:func:`measure`): each unit (a weight, or a block's weights) compressed alone
  with each candidate config: its single-unit PSNR. Apple's pre-analysis
  (apple/ml-stable-diffusion ``python_coreml_stable_diffusion/mixed_bit_compression_pre_analysis.py``,
  ``benchmark_signal_integrity(cumulative=False)``) and coreai-optimization's stage 1
  (https://apple.github.io/coreai-optimization/utils/mixed_precision.html) do the same in torch.
* **Target** (:func:`cumulative_recipe`): Apple's recipe. Per candidate config, units are sorted
  from least to most sensitive and compressed cumulatively in that order, the PSNR recorded after
  each (``benchmark_signal_integrity(cumulative=True)``); each unit gets the cheapest config
  whose cumulative PSNR at that unit is above the target (``build_recipe``), else stays dense
  (16 bits). A curve stops once it is :data:`STOP_DB` below the target (the units after it could
  not take that config). Apple ships recipes named by average bits (SDXL: 4.50 bits).
* **Budget** (:func:`budget_recipe`): coreai-optimization's stage 2 is a greedy over (layer,
  config) pairs by single-layer PSNR until a bits-per-weight budget is met. tlc's greedy weighs
  each step by what it costs per bit saved: single-unit PSNRs are turned into noise powers
  (``10**(-psnr/10)`` minus the uncompressed program's), which add up across units to first order,
  and the step with the least added noise per bit saved goes first — a large layer saves more
  bits for the same damage, which the PSNR order alone cannot see.
* **Closing the loop** (:func:`repair`): the chosen recipe is measured as a whole; while it is
  below the target, the unit doing the most damage (lowest single-unit PSNR at its config) takes
  its next more expensive config, at most :data:`MAX_REPAIRS` times. "Local rules propose, the
  measurement decides" (design.md); the package itself is checked again after it is written.

Configs are opaque here: any hashable the caller's ``simulate(weight, config)`` understands,
costed by ``bits(unit, config)`` (bits per weight element, tables included).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

from .metrics import psnr

#: a cumulative curve stops this far below the target (dB): later units cannot take that config
STOP_DB = 3.0
#: most repair rounds after the recipe (each one probe run)
MAX_REPAIRS = 64
#: bits of a weight left dense (fp16)
DENSE_BITS = 16.0


@dataclass(frozen=True)
class Unit:
    """What is compressed together: ``weights`` (MIL const names; one, or a block's), ``size``
    (elements) and ``role`` (``"weight"``: conv/linear/matmul weights, counted in the average bits;
    ``"embedding"``: a gather table, int8 or dense)."""

    name: str
    weights: tuple[str, ...]
    size: int
    role: str = "weight"


class Probe:
    """The program run on the calibration samples with some weights replaced.

    ``interp``: a :class:`tlc.runtime.MILInterpreter` of the uncompressed program; ``feeds``: the
    calibration samples (package inputs); ``refs``: the fp32 reference outputs of each sample (float
    outputs are compared). :meth:`__call__` gives the worst PSNR over outputs and samples; ``runs``
    and ``seconds`` count the replays."""

    def __init__(self, interp, feeds: Sequence[dict], refs: Sequence[dict]):
        self.interp = interp
        self.recordings = [interp.record(f) for f in feeds]
        self.refs = [{k: np.asarray(v) for k, v in r.items() if np.asarray(v).dtype.kind == "f"} for r in refs]
        self.runs, self.seconds = 0, 0.0

    def __call__(self, weights: Mapping[str, np.ndarray]) -> float:
        t0 = time.perf_counter()
        worst = float("inf")
        for rec, ref in zip(self.recordings, self.refs):
            out = self.interp.replay(rec, weights)
            for k, r in ref.items():
                worst = min(worst, psnr(out[k], r))
        self.runs += 1
        self.seconds += time.perf_counter() - t0
        return worst


Simulate = Callable[[str, Hashable], "np.ndarray | None"]
Bits = Callable[[Unit, Hashable], float]


def _replaced(unit: Unit, cfg, simulate: Simulate) -> dict | None:
    out = {}
    for w in unit.weights:
        a = simulate(w, cfg)
        if a is None:
            return None
        out[w] = a
    return out


def measure(probe: Probe, units: Sequence[Unit], candidates: Mapping[str, Sequence[Hashable]], simulate: Simulate,
            log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """``{unit name: {config: PSNR dB}}``: each unit compressed alone with each of its candidate
    configs (a config ``simulate`` cannot apply to a weight is left out of the unit's row)."""
    table: dict[str, dict] = {}
    t0 = time.perf_counter()
    for i, u in enumerate(units):
        row = table[u.name] = {}
        for cfg in candidates[u.name]:
            rep = _replaced(u, cfg, simulate)
            if rep is not None:
                row[cfg] = probe(rep)
        if log is not None and (i + 1) % max(1, len(units) // 10) == 0:
            log(f"sensitivity: {i + 1}/{len(units)} units, {probe.runs} runs, {time.perf_counter() - t0:.0f} s")
    return table


@dataclass
class Recipe:
    """A decision: ``assignment`` ``{unit: config or None (dense)}``, the ``psnr`` measured with all
    of it applied (None before), the cumulative ``curves`` ``{config: [(unit, PSNR), ...]}`` it came
    from, ``repairs`` (units moved up by :func:`repair`) and ``notes`` (what the user should know:
    a target out of reach, a budget not met)."""

    assignment: dict
    psnr: float | None = None
    curves: dict = field(default_factory=dict)
    repairs: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def levels(candidates: Mapping[str, Sequence[Hashable]], units: Sequence[Unit], bits: Bits) -> list:
    """Every candidate config once, cheapest first (by its mean bits over the units that take it)."""
    seen: dict = {}
    for u in units:
        for c in candidates[u.name]:
            seen.setdefault(c, []).append(bits(u, c))
    return sorted(seen, key=lambda c: (float(np.mean(seen[c])), repr(c)))


def cumulative_recipe(probe: Probe, units: Sequence[Unit], candidates, single: Mapping[str, Mapping], simulate: Simulate,
                      bits: Bits, target: float, log=None) -> Recipe:
    """Apple's mixed-bit recipe for ``target`` dB (module docstring): per config, units sorted by
    single-unit PSNR (least sensitive first) are compressed cumulatively; a unit takes the cheapest
    config whose cumulative PSNR at it is above ``target``, else stays dense (None)."""
    curves: dict = {}
    for cfg in levels(candidates, units, bits):
        order = sorted((u for u in units if cfg in single[u.name]), key=lambda u: (-single[u.name][cfg], u.name))
        rep: dict = {}
        curve = curves[cfg] = []
        for u in order:
            if single[u.name][cfg] < target:
                break  # alone below the target: so is every cumulative point from here
            rep.update(_replaced(u, cfg, simulate))
            p = probe(rep)
            curve.append((u.name, p))
            if p < target - STOP_DB:
                break
        if log is not None:
            ok = sum(p >= target for _, p in curve)
            log(f"cumulative curve {cfg_label(cfg)}: {ok} of {len(order)} units above {target:g} dB")
    assignment: dict = {}
    for u in units:
        choice = None
        for cfg in sorted(candidates[u.name], key=lambda c: (bits(u, c), repr(c))):
            if any(n == u.name and p >= target for n, p in curves.get(cfg, ())):
                choice = cfg
                break
        assignment[u.name] = choice
    return Recipe(assignment, curves=curves)


def noise(p: float, base: float) -> float:
    """The noise power a single-unit PSNR ``p`` adds above the uncompressed program's ``base``
    (both dB; relative to the reference's peak power), >= 0."""
    return max(10.0 ** (-p / 10.0) - 10.0 ** (-base / 10.0), 0.0)


def budget_recipe(units: Sequence[Unit], candidates, single: Mapping[str, Mapping], bits: Bits, budget: float,
                  base: float) -> Recipe:
    """The assignment with at most ``budget`` bits per weight over the ``"weight"`` units (others
    take their cheapest config whose single-unit PSNR is no worse than the rest of the recipe
    expects), least added noise first (module docstring). Starts dense; each step moves one unit to
    a cheaper config, the move adding the least noise per bit saved, until the budget holds. When
    even the cheapest configs exceed it, the recipe is the cheapest and says so in ``notes``."""
    weights = [u for u in units if u.role == "weight"]
    total = sum(u.size for u in weights) or 1
    cur: dict = {u.name: None for u in units}

    def cost(u, c):
        return DENSE_BITS if c is None else bits(u, c)

    def level(u, c):
        return noise(single[u.name][c], base) if c is not None else 0.0

    avg = sum(cost(u, None) * u.size for u in weights) / total
    while avg > budget + 1e-9:
        best = None
        for u in weights:
            for c in single[u.name]:
                saved = (cost(u, cur[u.name]) - cost(u, c)) * u.size
                if saved <= 0:
                    continue
                score = (level(u, c) - level(u, cur[u.name])) / saved
                if best is None or score < best[0]:
                    best = (score, u, c)
        if best is None:
            break
        _, u, c = best
        avg -= (cost(u, cur[u.name]) - cost(u, c)) * u.size / total
        cur[u.name] = c
    notes = [] if avg <= budget + 1e-9 else [
        f"the budget of {budget:g} bits per weight is below what the candidate configs reach: the cheapest recipe holds "
        f"{avg:.2f} bits"]
    expected = sum(level(u, cur[u.name]) for u in weights)
    for u in units:
        if u.role != "weight":  # e.g. embeddings: compressed only where that adds a tenth of the weights' noise or less
            ok = [c for c in single[u.name] if level(u, c) <= 0.1 * expected]
            cur[u.name] = min(ok, key=lambda c: (cost(u, c), repr(c))) if ok else None
    return Recipe(cur, notes=notes)


def apply(units: Sequence[Unit], assignment: Mapping, simulate: Simulate) -> dict:
    """``{const name: decompressed weight}`` of an assignment (dense units omitted)."""
    return _merged(_parts(units, assignment, simulate))


def _parts(units: Sequence[Unit], assignment: Mapping, simulate: Simulate) -> dict[str, dict]:
    """``{unit name: {const name: decompressed weight}}`` of the compressed units of an assignment."""
    parts = {}
    for u in units:
        cfg = assignment.get(u.name)
        if cfg is not None:
            parts[u.name] = _replaced(u, cfg, simulate) or {}
    return parts


def _merged(parts: Mapping[str, dict]) -> dict:
    rep: dict = {}
    for p in parts.values():
        rep.update(p)
    return rep


def repair(probe: Probe, units: Sequence[Unit], recipe: Recipe, candidates, single, simulate: Simulate, bits: Bits,
           target: float | None) -> Recipe:
    """Measure ``recipe`` as a whole (its ``psnr``); with a ``target``, move the most damaging unit
    to its next more expensive config (or dense) while the whole is below it (at most
    :data:`MAX_REPAIRS` runs; each round decompresses only the unit it moved). Returns the recipe
    it ends with."""
    by = {u.name: u for u in units}
    parts = _parts(units, recipe.assignment, simulate)
    recipe.psnr = probe(_merged(parts))
    n = 0
    while target is not None and recipe.psnr < target and n < MAX_REPAIRS:
        live = [(single[k][c], k) for k, c in recipe.assignment.items() if c is not None]
        if not live:
            break
        _, k = min(live)
        u, c = by[k], recipe.assignment[k]
        dearer = sorted((d for d in single[k] if bits(u, d) > bits(u, c) and single[k][d] > single[k][c]),
                        key=lambda d: (bits(u, d), repr(d)))
        recipe.assignment[k] = dearer[0] if dearer else None
        recipe.repairs.append((k, cfg_label(c), cfg_label(recipe.assignment[k])))
        parts.pop(k, None)
        if recipe.assignment[k] is not None:
            parts[k] = _replaced(u, recipe.assignment[k], simulate) or {}
        recipe.psnr = probe(_merged(parts))
        n += 1
    return recipe


def cfg_label(cfg) -> str:
    """A config's ``label`` (``palettize4/g16``), ``dense`` for None, else ``str``."""
    return "dense" if cfg is None else getattr(cfg, "label", str(cfg))


def average_bits(units: Sequence[Unit], assignment: Mapping, bits: Bits, role: str = "weight") -> float:
    """Bits per weight element over the units of ``role`` (dense: 16), tables and scales included."""
    us = [u for u in units if u.role == role]
    total = sum(u.size for u in us)
    if not total:
        return DENSE_BITS
    return sum((DENSE_BITS if assignment.get(u.name) is None else bits(u, assignment[u.name])) * u.size
               for u in us) / total


__all__ = ["Unit", "Probe", "Recipe", "measure", "levels", "cumulative_recipe", "budget_recipe", "repair", "apply",
           "noise", "average_bits", "cfg_label", "STOP_DB", "MAX_REPAIRS", "DENSE_BITS"]
