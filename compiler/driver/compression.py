"""Compression by target, by budget or by recipe, for one emitted program: the driver's side of
``compress={"target_psnr": 40}``, ``{"avg_bits": 4.5}`` and ``compress="NAME.recipe.json"``.

It wires tlc's measurement (:mod:`tlc.check.sensitivity`: the program replayed in the MIL
interpreter with weights replaced) to coremltools' compression (:mod:`tlc.backends.coreml.weights`:
what a config does to one weight; :func:`tlc.backends.coreml.compress.compress_mlmodel`: the
passes that write it), then checks the compressed program on the calibration samples. It lives
in the driver because it needs both: ``check/`` and ``backends/`` are siblings that never import
each other (docs/design-notes.md, Layers), and the driver hands the measurement the backend's
functions, as it hands the closed loop of ``precision="mixed"`` its emission.

What is compressed: the weights of conv/linear/matmul outside fp32 islands
(:func:`~tlc.backends.coreml.compress.weight_consts`), each with the cheapest candidate config the
recipe allows (:func:`candidates`), and, with ``embeddings="auto"``, embedding tables
(:func:`~tlc.backends.coreml.compress.embedding_consts`) in int8 where that is measured harmless
(Apple's Qwen3 recipe keeps embeddings out of 4-bit: ``Embedding: null``).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from tlc.backends.coreml.compress import compress_mlmodel, embedding_consts, weight_consts
from tlc.backends.coreml.weights import WeightConfig, kmeans_memo, output_axis, simulate
from tlc.check import sensitivity as S
from tlc.check.metrics import psnr, rel_l2
from tlc.runtime import MILInterpreter, run_graph
from tlc.util.progress import note, stage
from tlc.util.coreml import SPEC_VERSIONS

from .options import Compression
from .recipe import Recipe, weight_name

#: a unit's config makes the whole miss the target by at most this much before :func:`tlc.check.sensitivity.repair`
#: runs; embeddings take int8 only where alone it keeps this margin above the goal (dB)
EMBEDDING_MARGIN_DB = 10.0


def candidates(c: Compression, ios18: bool) -> list[WeightConfig]:
    """The configs tried on conv/linear/matmul weights, fewest bits first: for each palette size
    coremltools takes in ``min_bits``..``max_bits`` (1, 2, 3, 4, 6), k-means palettization —
    ``granularity="auto"``: one table per ``group_size`` output channels for 1-4 bits from iOS18
    (the ANE's grouped form; per tensor before), one per tensor for 6 bits (its 64-entry k-means
    per 16 channels cost ~30x more time for ~1 dB, measured on all-MiniLM-L6-v2) — and for 8 bits
    int8 per output channel (exact to ~50-64 dB there, without a 256-entry k-means).
    ``per_channel``: int4 (iOS18) / int8 quantization only. Before iOS18, ``constexpr_lut_to_dense``
    takes tables of 2, 4, 16, 64 or 256 entries only (iOS16 opset), so 3 bits is not tried."""
    bits = [b for b in ((1, 2, 3, 4, 6, 8) if ios18 else (1, 2, 4, 6, 8)) if c.min_bits <= b <= c.max_bits]
    out = []
    for b in bits:
        if c.granularity == "per_channel":
            if b == 8 or (b == 4 and ios18):
                out.append(WeightConfig("quantize", b, "per_channel"))
        elif b == 8 and c.granularity == "auto":
            out.append(WeightConfig("quantize", 8, "per_channel"))
        elif c.granularity == "per_grouped_channel" or (c.granularity == "auto" and ios18 and b <= 4):
            out.append(WeightConfig("palettize", b, "per_grouped_channel", c.group_size))
        else:
            out.append(WeightConfig("palettize", b))
    return out


_BLOCK = re.compile(r"^(.*?_\d+)_")


def block_of(name: str) -> str:
    """The block a weight belongs to for ``by="block"``: its name up to the first ``_<number>``
    (``model_layers_3_self_attn_q_proj_weight`` -> ``model_layers_3``); the name itself without one."""
    m = _BLOCK.match(name)
    return m.group(1) if m else name


@dataclass
class CompressionReport:
    """What a compression by target, budget or recipe decided and measured: ``request`` (the option),
    ``layers`` (one dict per unit: ``unit``, ``weights``, ``role``, ``size``, ``config`` label,
    ``bits``, ``single_psnr`` at the chosen config, ``psnr`` per candidate label, ``cumulative_psnr``),
    ``avg_bits`` (over conv/linear/matmul weights, dense = 16), ``predicted_psnr`` (the recipe replayed
    before compressing), ``outputs`` (``{output: (worst PSNR, worst rel-L2)}`` of the compressed
    program on the calibration samples), ``baseline_psnr`` (the uncompressed program's), ``target``,
    ``budget``, ``notes``, ``runs`` / ``seconds`` of measurement, and the :class:`~tlc.driver.recipe.Recipe`."""

    request: str
    recipe: Recipe
    layers: list = field(default_factory=list)
    avg_bits: float = S.DENSE_BITS
    predicted_psnr: float | None = None
    outputs: dict = field(default_factory=dict)
    baseline_psnr: float | None = None
    target: float | None = None
    budget: float | None = None
    notes: list = field(default_factory=list)
    runs: int = 0
    seconds: float = 0.0

    @property
    def psnr(self) -> float:
        """The compressed program's worst PSNR over outputs and samples (dB)."""
        return min((p for p, _ in self.outputs.values()), default=float("inf"))

    @property
    def met(self) -> bool | None:
        """Whether the target holds on the compressed program (None without a target)."""
        return None if self.target is None else self.psnr >= self.target

    def summary(self) -> dict:
        """The recipe file's ``summary`` (:func:`tlc.driver.recipe.recipe_json`)."""
        return {"request": self.request, "target_psnr": self.target, "avg_bits_budget": self.budget,
                "avg_bits": round(self.avg_bits, 4), "psnr": _r(self.psnr), "predicted_psnr": _r(self.predicted_psnr),
                "baseline_psnr": _r(self.baseline_psnr), "met": self.met,
                "outputs": {k: {"psnr": _r(p), "rel_l2": e} for k, (p, e) in self.outputs.items()},
                "measurement_runs": self.runs, "measurement_s": round(self.seconds, 2), "notes": list(self.notes)}

    def to_json(self) -> dict:
        """``summary()`` plus ``layers``: the report's ``compression`` entry."""
        return {**self.summary(), "layers": self.layers}


def _r(x):
    return None if x is None or not np.isfinite(x) else round(float(x), 2)


def _units(prog_ops: dict, names: list[str], embeddings: list[str], by: str) -> list[S.Unit]:
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(block_of(weight_name(n)) if by == "block" else weight_name(n), []).append(n)
    units = [S.Unit(k, tuple(v), int(sum(np.size(prog_ops[w].outputs[0].val) for w in v))) for k, v in groups.items()]
    return units + [S.Unit(weight_name(e), (e,), int(np.size(prog_ops[e].outputs[0].val)), "embedding") for e in embeddings]


def _verify(mlmodel, feeds, refs) -> dict:
    """``{output: (worst PSNR, worst rel-L2)}`` of ``mlmodel``'s program on ``feeds`` against ``refs``."""
    interp = MILInterpreter(mlmodel.package_path, mlmodel=mlmodel)
    out: dict = {}
    for f, ref in zip(feeds, refs):
        got = interp.run(f)
        for k, r in ref.items():
            if np.asarray(r).dtype.kind != "f" or k not in got:
                continue
            p, e = psnr(got[k], r), rel_l2(got[k], r)
            q = out.get(k, (float("inf"), 0.0))
            out[k] = (min(q[0], p), max(q[1], e))
    return out


def compress_model(cm, mlmodel, skip: tuple = ()):
    """Compress ``mlmodel`` (the program :class:`tlc.driver.model.CompiledModel` ``cm`` emitted) as
    ``cm.compress`` says. A uniform mode: :func:`~tlc.backends.coreml.compress.compress_mlmodel`
    (``w8a8`` calibrated on ``cm.calibration``); by target, budget or recipe: :func:`compress_measured`
    on the calibration samples against the fp32 reference outputs (``cm.graph`` run by tlc's NumPy
    executor). ``skip``: the fp32 islands. Returns ``(Compressed, CompressionReport or None)``."""
    spec = cm.compress
    feeds = [cm._package_feed(f) for f in cm.calibration]
    if spec.mode is not None:
        return compress_mlmodel(mlmodel, spec.mode, skip=skip, calibration=feeds, progress=cm.progress), None
    refs = [run_graph(cm.exec_graph, f) for f in cm.calibration]
    return compress_measured(mlmodel, spec, skip=skip, feeds=feeds, refs=refs, progress=cm.progress)


def compress_measured(mlmodel, spec: Compression, *, skip: tuple, feeds: list[dict], refs: list[dict],
                      progress: bool = False):
    """Compress ``mlmodel`` (the emitted, uncompressed program) as ``spec`` asks: by target or
    budget (sensitivity measured on ``feeds`` against the fp32 outputs ``refs``), or by a recipe
    file. ``skip``: ops whose weights stay dense (fp32 islands). Returns ``(Compressed, report)``
    (:class:`tlc.backends.coreml.compress.Compressed`, :class:`CompressionReport`). Raises
    :class:`~tlc.errors.InputError` for a recipe naming a weight the program does not have."""
    prog = mlmodel._mil_program
    ops = {op.name: op for op in prog.functions["main"].operations}
    ios18 = mlmodel.get_spec().specificationVersion >= SPEC_VERSIONS["iOS18"]
    names = weight_consts(prog, skip)
    emb = embedding_consts(prog, skip) if spec.embeddings == "auto" or spec.recipe is not None else []
    units = _units(ops, names, emb, spec.by)
    shape_axis = {n: (tuple(np.shape(ops[n].outputs[0].val)), output_axis(ops[n])) for u in units for n in u.weights}

    def bits(u: S.Unit, cfg) -> float:
        return sum(cfg.bits(*shape_axis[w]) * np.size(ops[w].outputs[0].val) for w in u.weights) / max(u.size, 1)

    log = note if progress else None
    with kmeans_memo():
        if spec.recipe is not None:
            configs = spec.recipe.for_program(names + emb)
            assignment = {u.name: configs.get(u.weights[0]) for u in units}
            rep = CompressionReport(str(spec), spec.recipe)
            rec_psnr = None
        else:
            rep, assignment, rec_psnr = _measure(mlmodel, spec, units, ops, bits, feeds, refs, log, ios18)
            configs = {w: assignment[u.name] for u in units for w in u.weights if assignment[u.name] is not None}
            rep.recipe = Recipe({weight_name(w): assignment[u.name] for u in units for w in u.weights})
        with stage(f"compressing {len(configs)} weights ({rep.recipe.label()})"):
            c = compress_mlmodel(mlmodel, configs, progress=progress, metadata={"tlc.compress": rep.recipe.label()})
    rep.predicted_psnr = rec_psnr
    rep.avg_bits = S.average_bits(units, assignment, bits)
    rep.outputs = _verify(c.mlmodel, feeds, refs)
    if not rep.layers:
        rep.layers = [{"unit": u.name, "weights": [weight_name(w) for w in u.weights], "role": u.role, "size": u.size,
                       "config": S.cfg_label(assignment.get(u.name)),
                       "bits": round(S.DENSE_BITS if assignment.get(u.name) is None else bits(u, assignment[u.name]), 4)}
                      for u in units]
    if rep.target is not None and not rep.met:
        worst = sorted((L for L in rep.layers if L.get("single_psnr") is not None), key=lambda L: L["single_psnr"])[:3]
        rep.notes.append(f"target {rep.target:g} dB not met: the package reaches {rep.psnr:.1f} dB (uncompressed "
                         f"{rep.baseline_psnr:.1f} dB); the weights costing most: " + ", ".join(
                             f"{L['unit']} ({L['config']}: {L['single_psnr']:.1f} dB alone)" for L in worst))
    return c, rep


def _measure(mlmodel, spec: Compression, units, ops, bits, feeds, refs, log, ios18):
    """Sensitivity, the recipe (target: Apple's cumulative curves; budget: least noise per bit) and
    its repair; returns ``(report, assignment, predicted PSNR)``."""
    t0 = time.perf_counter()
    cands = {u.name: (candidates(spec, ios18) if u.role == "weight" else [WeightConfig("quantize", 8, "per_channel")])
             for u in units}
    sim = lambda w, cfg: simulate(ops[w], cfg)  # noqa: E731
    with stage(f"measuring sensitivity: {len(units)} units x {max(len(v) for v in cands.values()) if cands else 0} "
               f"configs on {len(feeds)} sample(s)"):
        probe = S.Probe(MILInterpreter(mlmodel.package_path, mlmodel=mlmodel), feeds, refs)
        base = probe({})
        single = S.measure(probe, units, cands, sim, log)
    goal = spec.target_psnr
    rep = CompressionReport(str(spec), Recipe(), baseline_psnr=base, target=goal, budget=spec.avg_bits)
    weights = [u for u in units if u.role == "weight"]
    if goal is not None and base < goal:
        rep.notes.append(f"the uncompressed package reaches only {base:.1f} dB (fp16 rounding against the fp32 model): "
                         f"no recipe reaches {goal:g} dB; every weight stays dense")
        recipe = S.Recipe({u.name: None for u in units})
    elif goal is not None:
        with stage(f"cumulative curves toward {goal:g} dB"):
            recipe = S.cumulative_recipe(probe, weights, cands, single, sim, bits, goal, log)
        for u in units:
            if u.role != "weight":
                ok = [c for c, p in single[u.name].items() if p >= goal + EMBEDDING_MARGIN_DB]
                recipe.assignment[u.name] = ok[0] if ok else None
    else:
        recipe = S.budget_recipe(units, cands, single, bits, spec.avg_bits, base)
    recipe = S.repair(probe, units, recipe, cands, single, sim, bits, goal)
    rep.notes += recipe.notes
    if recipe.repairs:
        rep.notes.append(f"{len(recipe.repairs)} unit(s) moved up after measuring the whole recipe: "
                         + ", ".join(f"{k} {a} -> {b}" for k, a, b in recipe.repairs[:6])
                         + (", ..." if len(recipe.repairs) > 6 else ""))
    curve_at = {(n, c): p for c, pts in recipe.curves.items() for n, p in pts}
    for u in units:
        cfg = recipe.assignment.get(u.name)
        rep.layers.append({
            "unit": u.name, "weights": [weight_name(w) for w in u.weights], "role": u.role, "size": u.size,
            "config": S.cfg_label(cfg), "bits": round(S.DENSE_BITS if cfg is None else bits(u, cfg), 4),
            "single_psnr": _r(single[u.name].get(cfg)) if cfg is not None else None,
            "cumulative_psnr": _r(curve_at.get((u.name, cfg))),
            "psnr": {S.cfg_label(c): _r(p) for c, p in single[u.name].items()}})
        if cfg is None and u.role == "weight" and goal is not None and single[u.name]:
            best = max(single[u.name].values())
            if best < goal:
                rep.notes.append(f"{u.name} stays dense: compressed alone it reaches at most {best:.1f} dB "
                                 f"(max_bits {spec.max_bits})")
    rep.runs, rep.seconds = probe.runs, time.perf_counter() - t0
    if log is not None:
        log(f"recipe: {S.average_bits(units, recipe.assignment, bits):.2f} bits/weight, {recipe.psnr:.1f} dB "
            f"predicted ({probe.runs} runs, {rep.seconds:.0f} s)")
    return rep, recipe.assignment, recipe.psnr


__all__ = ["candidates", "block_of", "CompressionReport", "compress_model", "compress_measured", "EMBEDDING_MARGIN_DB"]
