"""Hybrid runtime: runs a bundle (``NAME.tlc/``, format in :mod:`tlc.backends.bundle`) segment by segment.

Core ML segments run through Core ML predict on macOS or tlc's MIL interpreter elsewhere; Core AI
segments (``NN.aimodel``, bundles built with ``format="aimodel"``) run in Apple's Core AI runtime
(:mod:`tlc.runtime.coreai_runtime`, Linux and macOS). Fallback
segments (tlc IR) placed on ``gpu`` run in tlc's torch-device executor when a GPU is here (``mps``
or ``cuda``), and consecutive device segments hand each other device tensors (no host round trip);
``cpu`` segments, and ``gpu`` segments on a machine without a GPU, run in tlc's NumPy executor.
Values pass between segments by IR value name and are dropped after the last segment that reads
them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from tlc.boundary import Boundary
from tlc.errors import InputError, IRError, TlcError
from tlc.ir import DTYPES
from tlc.ops import get_op
from tlc.serialize import load_graph

from .coreai_runtime import CoreAIModel
from .mil_interpreter import PackageError
from .numpy_executor import run_graph, validate_feeds
from .protocol import NamedIO, io_specs

MANIFEST = "manifest.json"


#: where a bundle's fallback segments run (``BundleModel(fallback=)``, ``tlc run --fallback``)
FALLBACKS = ("auto", "numpy", "torch")


def is_bundle(path: str | Path) -> bool:
    """True if ``path`` is a directory holding a tlc bundle manifest."""
    return (Path(path) / MANIFEST).is_file()


class _FallbackSegment:
    """A fallback segment on the NumPy executor, or (``device=True``) the torch-device executor
    unless it holds a host-only op (no torch kernel: data-dependent shapes, ...)."""

    def __init__(self, path: Path, device: bool):
        try:
            self.graph = load_graph(path)
        except IRError as e:
            raise PackageError(f"bundle segment {path.name}: {e}") from None
        self.torch = None
        if device and not any(get_op(n.op).host_only for n in self.graph.nodes):
            from .torch_executor import TorchExecutor

            self.torch = TorchExecutor(self.graph)
        self.backend = f"torch:{self.torch.device.type}" if self.torch is not None else "numpy"

    def __call__(self, feeds):
        if self.torch is not None:
            return self.torch.run(feeds, keep_on_device=True)
        return run_graph(self.graph, {k: _host(v) for k, v in feeds.items()})


def _host(a):
    """A device tensor from a torch segment as a NumPy array (anything else unchanged)."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") else a


class BundleModel(NamedIO):
    """A bundle ready to run: call with named arrays, get ``{output_name: array}``.

    ``segments``: per segment ``(index, target, backend)``; ``inputs`` / ``outputs``:
    :class:`~tlc.runtime.protocol.IOSpec` records (the protocol of :mod:`tlc.runtime.protocol`);
    ``functions``: ``["main"]``; ``backend``: a summary such as
    ``"interpreter+numpy"``. ``fallback``: ``"auto"`` (``gpu`` segments on the torch-device executor
    when a GPU is here), ``"numpy"`` (every fallback segment on the NumPy executor) or ``"torch"``
    (every fallback segment on the torch-device executor, on the best device here).
    Raises :class:`PackageError` for a missing/damaged manifest or segment.
    """

    def __init__(self, path: str | Path, backend: str = "auto", compute_units: str = "ALL", fallback: str = "auto"):
        from .package import LoadedModel, gpu_available

        if fallback not in FALLBACKS:
            raise InputError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")

        self.path = Path(path)
        try:
            m = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise PackageError(f"{self.path}: cannot read the bundle manifest: {e}") from None
        if m.get("format") != "tlc-bundle" or m.get("version") != 1:
            raise PackageError(f"{self.path}: not a tlc-bundle v1 manifest "
                               f"(format {m.get('format')!r}, version {m.get('version')!r})")
        self.manifest = m
        self.functions = ["main"]
        try:
            self.boundary = Boundary.from_metadata(m.get("metadata") or {})
        except TlcError as e:
            raise PackageError(f"{self.path}: {e}") from None
        self.boundary.scalar_inputs, self.boundary.scalar_outputs = set(), set()  # 0-d is native in bundles
        try:
            self._inputs = [(d["name"], tuple(d["shape"]), DTYPES[d["dtype"]]) for d in m["inputs"]]
            self.inputs = io_specs(self.boundary.user_io(self._inputs))
            self.outputs = io_specs(self.boundary.user_io([(d["name"], tuple(d["shape"]), DTYPES[d["dtype"]])
                                                           for d in m["outputs"]], outputs=True))
            self._out_values = {d["name"]: d["value"] for d in m["outputs"]}
            self._segments = []
            for e in m["segments"]:
                p = self.path / e["path"]
                if not p.exists():
                    raise PackageError(f"{self.path}: segment {e['index']} file {e['path']} is missing")
                if e["target"] == "ane" and p.suffix == ".aimodel":
                    runner = CoreAIModel(p)
                elif e["target"] == "ane":
                    runner = LoadedModel(p, backend="interpreter" if backend == "interpreter" else backend,
                                         compute_units=compute_units)
                else:
                    on_device = fallback == "torch" or (fallback == "auto" and e["target"] == "gpu" and gpu_available())
                    runner = _FallbackSegment(p, on_device)
                self._segments.append((e, runner))
        except KeyError as e:
            raise PackageError(f"{self.path}: manifest entry lacks {e.args[0]!r} (damaged or hand-edited)") from None
        last_use: dict[str, int] = {}
        for i, (e, _) in enumerate(self._segments):
            for name in e["inputs"]:
                last_use[name] = i
        self._drop_after = [[n for n, i2 in last_use.items() if i2 == i and n not in self._out_values.values()]
                            for i in range(len(self._segments))]
        self.backend = "+".join(dict.fromkeys(r.backend for _, r in self._segments))

    @property
    def segments(self) -> list[tuple[int, str, str]]:
        """``(index, target, backend)`` per segment, in execution order."""
        return [(e["index"], e["target"], r.backend) for e, r in self._segments]

    def __call__(self, feeds: Mapping[str, np.ndarray] | None = None, **named) -> dict[str, np.ndarray]:
        """Run on named arrays (a dict and/or keywords); returns ``{output_name: array}``.
        Raises :class:`~tlc.errors.InputError` for missing/misnamed inputs or wrong shape/dtype."""
        return self.run({**(feeds or {}), **named})

    def run(self, feeds: Mapping[str, np.ndarray], observer=None) -> dict[str, np.ndarray]:
        """Like calling the model; ``observer(op_name, outputs)`` is called after every op of every
        segment (MIL op names for Core ML segments run by the interpreter, IR node names for
        fallback segments). Not available for segments run by Core ML predict."""
        env = validate_feeds(self._inputs, self.boundary.to_package(feeds), self.path.name)
        for i, (e, runner) in enumerate(self._segments):
            sub = {n: env[n] for n in e["inputs"]}
            if not (isinstance(runner, _FallbackSegment) and runner.torch is not None):
                sub = {k: _host(v) for k, v in sub.items()}
            if observer is None:
                out = runner(sub)
            elif isinstance(runner, _FallbackSegment):
                out = run_graph(runner.graph, sub, observer=lambda n, outs: observer(n.name, outs))
            elif runner.backend == "interpreter":
                out = runner.interpreter.run(sub, observer=lambda op, outs: observer(op.name, outs))
            else:  # Core ML predict (macOS) and Core AI segments have no per-op observer
                out = runner(sub)
            env.update(out)
            for n in self._drop_after[i]:
                env.pop(n, None)
        return self.boundary.from_package({name: _host(env[v]) for name, v in self._out_values.items()})

    def __repr__(self) -> str:
        segs = ", ".join(f"{i}:{t}/{b}" for i, t, b in self.segments)
        return f"<tlc BundleModel {self.path.name} [{segs}]: {self.input_names} -> {self.output_names}>"
