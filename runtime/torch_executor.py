"""Torch-device executor: runs a tlc IR graph (or a fallback segment of one) with the ``torch``
kernels of the op table, on ``mps`` (Apple), ``cuda`` (NVIDIA) or the CPU.

API (what the hybrid runtime builds on)::

    ex = TorchExecutor(graph, device=None, capture=None)
    out = ex.run({"x": array_or_tensor, ...})                       # {output name: np.ndarray}
    dev = ex.run({"x": tensor_on_device}, keep_on_device=True)       # {output name: torch.Tensor}
    ex.device        # torch.device the weights live on
    ex.capture       # what is in use: "none", "cuda_graph", "compile" or "compile+cuda_graph"
    ex.capture_error # why a requested capture fell back to plain execution (None if it did not)

* ``device``: ``None`` picks ``mps`` if available, else ``cuda``, else ``cpu``; or any torch
  device / string.
* Weights (``const`` nodes) are converted once, at construction, and stay on the device.
* The run loop is precompiled: each node becomes (kernel, attrs, input slots, output slots, slots
  to free), values live in a flat list, and every value is dropped after its last reader, so the
  peak memory is the live set (as in the NumPy executor).
* Inputs: NumPy arrays or torch tensors, checked with
  :func:`tlc.runtime.numpy_executor.validate_feeds` (names, shapes, dtypes, the same safe
  conversions, :class:`~tlc.errors.InputError` otherwise). A tensor already on the device with the
  graph's dtype is used as is (no copy); anything else is converted once at the edge.
* Outputs: NumPy arrays (copied to the host), or, with ``keep_on_device=True``, tensors on the
  device, so that consecutive device segments pass device tensors with no host round trip. Output
  tensors may alias an input or a weight (an ``identity`` or a ``reshape`` of one): do not modify
  them in place.
* ``capture``: ``None`` = the default for the device (:func:`default_capture`:
  ``"compile+cuda_graph"`` on CUDA where Inductor runs, else ``"cuda_graph"``; ``"none"``
  elsewhere; measured in docs/performance.md, "## GPU"), or ``"none"``, ``"cuda_graph"``,
  ``"compile"``, ``"compile+cuda_graph"``. ``cuda_graph`` records the whole run once into a CUDA
  graph (static input buffers that each run copies the inputs into, then one replay; outputs are
  cloned out of the graph's buffers), which removes the per-kernel launch cost that dominates at
  small batch sizes. ``compile`` runs the loop through ``torch.compile`` (Inductor fuses
  elementwise chains; the first run pays the compile time, which Inductor's on-disk caches pay once
  per machine). A capture that fails falls back (compilation first, then graph recording) and
  records why in ``capture_error``.

Numerics: fp32 values are computed by the same torch/cuBLAS/cuDNN calls torch eager makes for the
same ops (with torch's default TF32 settings), so results match eager closely; fp16 is computed
as torch computes it on the device (see the ``torch`` field in :mod:`tlc.ops`), which may differ
from the NumPy executor's fp16 rule by a few fp16 ulps in matmul/conv/attention.

Errors: :class:`~tlc.errors.InputError` for bad inputs; :class:`~tlc.errors.TlcError` naming the
node and source line when a kernel fails; :class:`~tlc.errors.TlcError` when an op of the graph is
``host_only`` (no torch kernel) or a device is not available.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Mapping

import numpy as np
import torch

from tlc.errors import TlcError
from tlc.ir import DTYPES, Graph, node_context
from tlc.ops import get_op
from tlc._lazy import resolve_all
from tlc.dtypes import TORCH as TORCH_DTYPES

from .numpy_executor import fit_int, last_uses, validate_feeds, value_slots

CAPTURES = ("none", "cuda_graph", "compile", "compile+cuda_graph")


def default_device() -> torch.device:
    """``mps`` if available, else ``cuda``, else ``cpu``."""
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def inductor_available() -> bool:
    """Whether ``torch.compile`` can build CUDA kernels here: Inductor generates Triton kernels for
    CUDA, so Triton must be importable (it is not on CPU-only installs or Windows)."""
    return importlib.util.find_spec("triton") is not None


def default_capture(device: torch.device) -> str:
    """The capture used when none is asked for: on CUDA ``compile+cuda_graph`` (Inductor's fused
    kernels replayed as one CUDA graph: what ``torch.compile(mode="reduce-overhead")`` does) when
    Inductor can run, else ``cuda_graph``; none elsewhere (MPS and CPU have no graph replay).
    Measured on an H100 (issue 33, docs/performance.md "## GPU"): compile+cuda_graph beat
    cuda_graph on ResNet-50, GPT-2 and ViT-B at batch 1 and 32 (e.g. ResNet-50 b1 0.46 vs 0.84
    ms, GPT-2 b32 2.67 vs 5.22 ms); its one-time compile is paid once per machine through
    Inductor's on-disk caches (``TORCHINDUCTOR_CACHE_DIR``; tlc's driver points it into tlc's
    compile cache). A capture that fails falls back (``capture_error`` says why)."""
    if device.type != "cuda":
        return "none"
    return "compile+cuda_graph" if inductor_available() else "cuda_graph"


def _numpy_dtype(dt: torch.dtype) -> np.dtype:
    """NumPy dtype standing in for a torch dtype in input validation (bfloat16 -> float32: both
    are floats, which validate_feeds converts)."""
    try:
        return torch.empty((), dtype=dt).numpy().dtype
    except TypeError:
        return np.dtype(np.float32) if dt.is_floating_point else np.dtype(np.int64)


class TorchExecutor:
    """Run ``graph`` with torch kernels on one device (module docstring: API and semantics).

    ``graph``: a verified tlc :class:`~tlc.ir.Graph`; ``device``: ``None`` (auto), a string or a
    ``torch.device``; ``capture``: ``None`` (device default) or one of :data:`CAPTURES`.
    """

    def __init__(self, graph: Graph, device: str | torch.device | None = None, capture: str | None = None):
        self.graph = graph
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TlcError("device 'cuda' is not available here (torch.cuda.is_available() is False)")
        if self.device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise TlcError("device 'mps' is not available here (torch.backends.mps.is_available() is False)")
        capture = default_capture(self.device) if capture is None else capture
        if capture not in CAPTURES:
            raise TlcError(f"capture must be one of {CAPTURES} or None, got {capture!r}")
        if "cuda_graph" in capture and self.device.type != "cuda":
            raise TlcError(f"capture {capture!r} needs a CUDA device, not {self.device}")
        self.capture = capture
        self.capture_error: str | None = None
        self.inputs = [(v.name, v.type.shape, DTYPES[v.type.dtype]) for v in graph.inputs]
        self.outputs = list(graph.output_names)
        self._in_dtypes = [TORCH_DTYPES[v.type.dtype] for v in graph.inputs]
        self._plan()
        self._graph = None  # CUDA graph, its static inputs and outputs, once recorded
        self._fn = self._execute
        self._ran = False  # one eager run precedes a compile (see _run_device)
        if "compile" in capture:
            self._fn = torch.compile(self._loop, dynamic=False)

    # ------------------------------------------------------------------------------- planning

    def _plan(self) -> None:
        g = self.graph
        slot = value_slots(g)
        host_only = sorted({f"{n.op} ({get_op(n.op).host_only})" for n in g.nodes if get_op(n.op).torch is None})
        if host_only:
            raise TlcError(f"the torch executor cannot run host-only ops: {', '.join(host_only)}")
        free = last_uses(g)
        read = {v for n in g.nodes for v in n.inputs} | set(g.outputs)
        template: list[Any] = [None] * len(slot)
        steps = []
        self.nodes = []
        for i, n in enumerate(g.nodes):
            if n.op == "const":  # converted once, resident on the device
                # contiguous: a weight folded from a transpose is a strided view, and a strided weight
                # makes cuBLAS and Inductor pick other (slower) layouts than the model's own
                template[slot[n.out]] = get_op("const").torch(n.attrs).to(self.device).contiguous()
                continue
            dead = [v for v in n.outputs if v not in read]  # never read: drop at once
            steps.append((get_op(n.op).torch, dict(n.attrs), tuple(slot[v] for v in n.inputs),
                          tuple(slot[v] for v in n.outputs), tuple(slot[v] for v in list(free.get(i, ())) + dead)))
            self.nodes.append(n)
        self._template = template
        self._steps = steps
        self._in_slots = [slot[v] for v in g.inputs]
        self._out_slots = [slot[v] for v in g.outputs]

    def _env(self, inputs: list[torch.Tensor]) -> list:
        """The value slots at the start of a call: constants from the template, ``inputs`` (device
        tensors in graph order) in their slots."""
        env = self._template.copy()
        for s, t in zip(self._in_slots, inputs):
            env[s] = t
        return env

    @staticmethod
    def _step(env: list, step) -> None:
        """Run one precompiled step on ``env``: its kernel, its outputs into their slots, and the
        slots it reads last freed."""
        fn, attrs, ins, outs, free = step
        r = fn(attrs, *[env[j] for j in ins])
        if len(outs) == 1:
            env[outs[0]] = r
        else:
            for o, t in zip(outs, r):
                env[o] = t
        for j in free:
            env[j] = None

    def _loop(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """One pass over the precompiled steps; ``inputs`` are device tensors in graph order. Plain
        Python over plain torch calls, with nothing ``torch.compile`` cannot trace: it compiles
        this (a failing kernel is named by :meth:`_execute`)."""
        env = self._env(inputs)
        for step in self._steps:
            self._step(env, step)
        return [env[s] for s in self._out_slots]

    def _execute(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`_loop`, eagerly, naming the node (and source line) whose kernel fails."""
        env = self._env(inputs)
        i = -1
        try:
            for i, step in enumerate(self._steps):
                self._step(env, step)
        except TlcError:
            raise
        except Exception as e:
            if i < 0:
                raise
            n = self.nodes[i]
            raise TlcError(f"torch kernel for {n.op} failed on node {n.name} ({self.device}): "
                           f"{type(e).__name__}: {e}", loc=n.loc, context=node_context(self.graph, n)) from e
        return [env[s] for s in self._out_slots]

    # ----------------------------------------------------------------------------------- edges

    def _device_inputs(self, feeds: Mapping[str, Any]) -> list[torch.Tensor]:
        """Validate ``feeds`` and return device tensors in graph-input order (no copy for a tensor
        already on the device with the right dtype)."""
        tensors = {k: v for k, v in feeds.items() if isinstance(v, torch.Tensor)}
        # tensors are checked through zero-stride NumPy stand-ins: same rules, no device copy
        stand_in = {k: np.broadcast_to(np.zeros((), _numpy_dtype(v.dtype)), tuple(v.shape)) for k, v in tensors.items()}
        checked = validate_feeds(self.inputs, {**feeds, **stand_in}, "the graph")
        out = []
        for (name, _, _), dt in zip(self.inputs, self._in_dtypes):
            t = tensors.get(name)
            if t is None:
                a = checked[name]
                t = torch.from_numpy(a if a.flags.writeable else a.copy())
            elif (t.dtype != dt and t.numel() and not t.is_floating_point() and t.dtype != torch.bool
                  and not dt.is_floating_point and dt != torch.bool):
                fit_int(name, np.array([int(t.min()), int(t.max())]), _numpy_dtype(dt), "the graph")  # never wrap
            out.append(t.to(device=self.device, dtype=dt))  # no-op when already there
        return out

    def _record(self, inputs: list[torch.Tensor]) -> None:
        """Record one run as a CUDA graph (after two warm-up runs on a side stream, as
        torch.cuda.graph requires); static inputs start as copies of the first inputs."""
        static_in = [t.clone() for t in inputs]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        cg = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cg):
            static_out = self._fn(static_in)
        self._graph = (cg, static_in, static_out)

    def _fall_back(self, e: Exception) -> None:
        """A capture failed (Inductor could not compile, a kernel cannot be recorded): drop the
        failing part and say why in ``capture_error``. Compilation goes first (``compile+cuda_graph``
        -> ``cuda_graph`` -> ``none``), since CUDA graphs of the plain kernels almost always record."""
        self.capture_error = ((self.capture_error + "; ") if self.capture_error else "") + f"{type(e).__name__}: {e}"
        if "compile" in self.capture:
            self.capture = "cuda_graph" if "cuda_graph" in self.capture else "none"
            self._fn = self._execute
        else:
            self.capture = "none"
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run_device(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self._ran and "compile" in self.capture:
            # one eager run first: it names a failing kernel, and it resolves the torch functions the
            # kernels reach through tlc._lazy, so the compiled trace sees plain torch calls
            resolve_all()
            self._execute(inputs)
        self._ran = True
        while "cuda_graph" not in self.capture:
            try:
                return self._fn(inputs)
            except TlcError:
                raise
            except Exception as e:  # compile failed: run plainly and say why
                if self.capture == "none":
                    raise
                self._fall_back(e)
        while self._graph is None:
            try:
                self._record(inputs)
            except TlcError:
                raise
            except Exception as e:  # capture is an optimization: run plainly and say why
                self._fall_back(e)
                if "cuda_graph" not in self.capture:
                    return self._fn(inputs)
        cg, static_in, static_out = self._graph
        for s, t in zip(static_in, inputs):
            if s is not t:
                s.copy_(t)
        cg.replay()
        return [t.clone() for t in static_out]  # the next replay overwrites the static outputs

    def run(self, feeds: Mapping[str, Any] | None = None, keep_on_device: bool = False, **named) -> dict:
        """Run on named NumPy arrays / torch tensors (a dict and/or keywords).

        Returns ``{output_name: np.ndarray}``, or ``{output_name: torch.Tensor}`` on
        :attr:`device` when ``keep_on_device``. Raises :class:`~tlc.errors.InputError` for
        missing/misnamed inputs or wrong shapes/dtypes, :class:`~tlc.errors.TlcError` naming the
        node when a kernel fails.
        """
        inputs = self._device_inputs({**(feeds or {}), **named})
        with torch.inference_mode():
            outs = self._run_device(inputs)
        if keep_on_device:
            return dict(zip(self.outputs, outs))
        return {n: t.cpu().numpy() for n, t in zip(self.outputs, outs)}

    __call__ = run

    def __repr__(self) -> str:
        return (f"<TorchExecutor {len(self._steps)} ops on {self.device}, capture {self.capture}: "
                f"{[n for n, *_ in self.inputs]} -> {self.outputs}>")


__all__ = ["TorchExecutor", "default_device", "default_capture", "inductor_available", "CAPTURES"]
