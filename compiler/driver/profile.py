"""Measured per-op costs for the placement cost model (``tlc profile``).

:func:`measure` times every node of a graph on a fallback backend (median over ``runs`` after
one warm-up run). :func:`fit` turns the timings into one line per op kind, ``seconds =
overhead_s + flops * s_per_flop`` (least squares, both coefficients clamped at >= 0; op kinds whose
nodes all have the same FLOPs get ``s_per_flop = 0`` and ``overhead_s`` = their median time).
:func:`cost_model` loads a profile file into a :class:`tlc.passes.partition.CostModel` whose
``cpu``/``gpu`` estimates use the fitted lines for the op kinds the profile covers and the
default rates for the rest.

File format (JSON, ``"format": "tlc-profile"``, ``"version": 1``)::

    {"machine": "...", "source": "model.py",
     "backends": {"cpu": {"ops": {"conv": {"overhead_s": 1.2e-05, "s_per_flop": 3.1e-11, "n": 53}, ...},
                          "nodes": [{"node": "conv2d", "op": "conv", "flops": 118013952, "s": 0.0041}, ...]}}}
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from statistics import median
from typing import Mapping

import numpy as np

from tlc.errors import InputError
from tlc.ir import Graph
from tlc.passes.partition import CostModel, node_flops
from tlc.runtime import run_graph

FORMAT = "tlc-profile"
VERSION = 1


def measure(g: Graph, feeds: Mapping[str, np.ndarray], runs: int = 5) -> list[dict]:
    """Seconds per node on tlc's NumPy executor: ``[{"node", "op", "flops", "s"}]`` (median over
    ``runs`` runs after a warm-up; a node's time is the wall time between the executor finishing
    the previous node and finishing it, so it includes tlc's per-op dispatch)."""
    times: dict[str, list[float]] = {}
    for r in range(runs + 1):
        last = [time.perf_counter()]

        def observe(n, outs):
            now = time.perf_counter()
            if r and n.op != "const":
                times.setdefault(n.name, []).append(now - last[0])
            last[0] = now

        run_graph(g, feeds, observer=observe)
    rows = []
    for n in g.nodes:
        if n.name in times:
            rows.append({"node": n.name, "op": n.op, "flops": node_flops(n), "s": median(times[n.name])})
    return rows


def fit(rows: list[dict]) -> dict[str, dict]:
    """Per op kind ``{"overhead_s", "s_per_flop", "n"}`` from :func:`measure` rows (see module
    docstring for the model)."""
    by_op: dict[str, list[dict]] = {}
    for r in rows:
        by_op.setdefault(r["op"], []).append(r)
    out = {}
    for op, rs in by_op.items():
        f = np.array([r["flops"] for r in rs], np.float64)
        t = np.array([r["s"] for r in rs], np.float64)
        if len(rs) < 2 or np.ptp(f) == 0:
            a, b = float(np.median(t)), 0.0
            if f.max() > 0:  # one size only: attribute the time to the work, keep no overhead
                a, b = 0.0, float(np.median(t / np.maximum(f, 1)))
        else:
            b = max(0.0, float(np.cov(f, t, bias=True)[0, 1] / np.var(f)))
            a = max(0.0, float(t.mean() - b * f.mean()))
        out[op] = {"overhead_s": a, "s_per_flop": b, "n": len(rs)}
    return out


def write(path: str | Path, backends: dict[str, list[dict]], source: str = "") -> dict:
    """Write a profile file for ``{backend ("cpu"/"gpu"): measure() rows}``; returns the document."""
    doc = {"format": FORMAT, "version": VERSION, "machine": f"{platform.node()} {platform.machine()} "
                                                             f"{platform.processor() or ''}".strip(),
           "source": source, "backends": {b: {"ops": fit(rows), "nodes": rows} for b, rows in backends.items()}}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def cost_model(path: str | Path):
    """A :class:`~tlc.passes.partition.CostModel` using the fitted lines of the profile at
    ``path``. Raises :class:`InputError` for a missing or malformed file."""
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} file")
        measured = {b: {op: (float(d["overhead_s"]), float(d["s_per_flop"])) for op, d in v["ops"].items()}
                    for b, v in doc["backends"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot use profile {str(path)!r}: {e}") from None
    return CostModel(measured=measured)
