"""Latency and throughput of a model on every backend available here, beside torch eager.

``tlc bench model.py`` (and :func:`bench`) traces the model once per batch size, then times, in
the same process and interleaved round by round (so that clock and thermal drift hit every backend
alike):

* ``eager:<dev>`` — the torch model itself on each device (``cpu``, and ``cuda`` / ``mps`` when
  present), under ``torch.inference_mode()``;
* ``compile:<dev>`` — ``torch.compile(model, mode="reduce-overhead")`` (Inductor kernels and, on
  CUDA, CUDA graphs: the anchor users compare with); its note gives the first call's seconds (the
  compile);
* ``tlc-torch:<dev>`` — tlc's torch-device executor (:mod:`tlc.runtime.torch_executor`) with its
  default capture for the device (Inductor + CUDA graphs on CUDA), running the default build's
  executor graph (:attr:`tlc.driver.model.CompiledModel.exec_graph`), and
  ``tlc-torch:<dev>:<capture>`` for other captures asked for with ``--capture``;
  ``tlc-torch/gpu:<dev>`` the same for a ``target="gpu"`` build (``builds``);
* ``tlc-numpy`` — tlc's NumPy executor over the IR (the reference; slow on big models);
* ``coreml`` — the saved ``.mlpackage`` through Core ML predict (macOS only).

Device backends get their inputs already on the device and keep outputs there (then synchronize),
so they time the model, not host transfers; ``tlc-numpy`` and ``coreml`` take and return host
arrays. Each timed call ends with a device synchronize. Reported per backend: ``median_ms`` and
``p90_ms`` over ``runs`` calls after ``warmup`` untimed calls, ``throughput`` = batch / median
(samples per second), ``vs_eager`` = median / median of torch eager on the same device (below 1:
faster than eager), and ``rel_err``: relative L2 error ``||tlc - eager|| / ||eager||`` of the first
output against torch eager on that device; ``first_ms``: the first call (compiling or recording a
capture).
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.utils._pytree as pytree

from tlc.errors import InputError
from tlc.frontend import normalize_inputs
from tlc.runtime import coreml_available, run_graph
from tlc.runtime.torch_executor import TorchExecutor, default_capture
from tlc.version import __version__

from .cache import use_for_inductor
from .inputs import unwrap
from .options import BuildOptions
from .single import build_one

BACKENDS = ("eager", "compile", "tlc-torch", "tlc-numpy", "coreml")


@dataclass
class Result:
    """One backend's timings (milliseconds; throughput in samples per second)."""

    backend: str
    device: str
    batch: int
    median_ms: float
    p90_ms: float
    throughput: float
    vs_eager: float | None = None
    rel_err: float | None = None
    note: str = ""
    first_ms: float | None = None
    times_ms: list = field(default_factory=list, repr=False)


def devices() -> list[str]:
    """Torch devices present: ``cpu`` and, when available, ``cuda`` and ``mps``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def sync(device: str) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device.startswith("mps"):
        torch.mps.synchronize()


def batched(example_inputs, batch: int | None):
    """``example_inputs`` as ``(args, kwargs)`` with every tensor's first axis repeated/cut to
    ``batch`` (unchanged when ``batch`` is None; 0-d tensors are left alone)."""
    args, kwargs = normalize_inputs(example_inputs)
    if batch is None:
        return args, kwargs

    def fix(x):
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return x
        reps = -(-batch // x.shape[0])
        return torch.cat([x] * reps)[:batch].contiguous()

    return pytree.tree_map(fix, (args, kwargs))


def _to(tree, device, dtype=None):
    def move(x):
        if not isinstance(x, torch.Tensor):
            return x
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        return x.to(device)

    return pytree.tree_map(move, tree)


def _first(out) -> np.ndarray:
    leaves = [x for x in pytree.tree_leaves(out) if isinstance(x, (torch.Tensor, np.ndarray))]
    x = leaves[0]
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)


def time_interleaved(calls: dict[str, Callable[[], Any]], syncs: dict[str, str], runs: int, warmup: int) -> dict:
    """Time each zero-argument callable ``runs`` times after ``warmup`` calls, round-robin (one
    call of each per round). Returns ``{name: [milliseconds, ...]}``."""
    for name, fn in calls.items():
        for _ in range(warmup):
            fn()
        sync(syncs[name])
    times: dict[str, list] = {n: [] for n in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            dev = syncs[name]
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def p90(xs: list[float]) -> float:
    """90th percentile (linear interpolation, as numpy.percentile)."""
    return float(np.percentile(xs, 90))


def bench(model, example_inputs, *, backends=("eager", "tlc-torch", "tlc-numpy", "coreml"), devices_=None,
          captures=(), runs: int = 50, warmup: int = 10, batch: int | None = None, dtype: str = "fp32",
          builds=("ane",), log: Callable[[str], None] = lambda s: None) -> list[Result]:
    """Benchmark ``model`` on ``example_inputs`` (batched to ``batch``) on each backend.

    ``backends``: subset of :data:`BACKENDS` (unavailable ones are skipped: ``coreml`` off macOS);
    ``devices_``: torch devices for ``eager``/``tlc-torch`` (default :func:`devices`);
    ``captures``: extra torch-executor captures to time besides the device default (e.g.
    ``("none",)``); ``dtype``: ``"fp32"`` or ``"fp16"`` (model and float inputs cast to half; the
    IR is traced in fp16; ``tlc-numpy``/``coreml`` then skipped); ``builds``: the build targets whose
    executor graphs ``tlc-torch`` times (``"ane"``: the default build; ``"gpu"``: ``target="gpu"``).
    Returns one :class:`Result` per
    backend and device, eager first per device. Raises :class:`~tlc.errors.InputError` for unknown
    backends or dtypes.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or dtype not in ("fp32", "fp16"):
        raise InputError(f"unknown backend(s) {unknown} or dtype {dtype!r}; backends: {BACKENDS}, dtypes fp32, fp16")
    if isinstance(model, torch.nn.Module):
        model = model.eval()
    fn = unwrap(model)  # a @tlc.compile object: its function
    tdt = torch.float16 if dtype == "fp16" else None
    args, kwargs = batched(example_inputs, batch)
    nbatch = batch or next((x.shape[0] for x in pytree.tree_leaves((args, kwargs))
                            if isinstance(x, torch.Tensor) and x.dim()), 1)
    devs = list(devices_ or devices())
    host_model = copy.deepcopy(fn).to(tdt) if (tdt is not None and isinstance(fn, torch.nn.Module)) else fn
    h_args, h_kwargs = _to((args, kwargs), "cpu", tdt)
    log(f"tracing (batch {nbatch}, {dtype})")
    cms = {t: build_one(host_model, (h_args, h_kwargs), BuildOptions.decide(precision="fp32", target=t)) for t in builds}
    cm = cms[builds[0]]
    leaves = [x for x in pytree.tree_leaves((h_args, h_kwargs)) if isinstance(x, torch.Tensor)]
    host_feeds = {n: x.numpy() for n, x in zip(cm.input_names, leaves)}

    calls, syncs, notes, firsts, first_ms = {}, {}, {}, {}, {}

    def first(name, call):  # the first call compiles or records; its output is the one compared
        t0 = time.perf_counter()
        firsts[name] = _first(call())
        sync(syncs[name])
        first_ms[name] = (time.perf_counter() - t0) * 1e3

    use_for_inductor()
    for dev in devs:
        if "eager" in backends or "compile" in backends:
            m = copy.deepcopy(host_model).to(dev) if isinstance(host_model, torch.nn.Module) else host_model
            a, k = _to((h_args, h_kwargs), dev)

            def eager(m=m, a=a, k=k):
                with torch.inference_mode():
                    return m(*a, **k)

            if "eager" in backends:
                calls[f"eager:{dev}"], syncs[f"eager:{dev}"] = eager, dev
            if "compile" in backends:
                compiled = torch.compile(m, mode="reduce-overhead")

                def comp(c=compiled, a=a, k=k):
                    with torch.inference_mode():
                        return c(*a, **k)

                name = f"compile:{dev}"
                calls[name], syncs[name] = comp, dev
                log(f"torch.compile(mode='reduce-overhead') on {dev}")
                first(name, comp)
                notes[name] = f"first call {first_ms[name] / 1e3:.1f} s (compile)"
        if "tlc-torch" in backends:
            for target, c in cms.items():
                feeds = {n: x.to(dev) for n, x in zip(c.input_names, leaves)}
                for cap in dict.fromkeys([default_capture(torch.device(dev))] + list(captures)):
                    if "cuda_graph" in cap and not dev.startswith("cuda"):
                        continue
                    log(f"tlc-torch on {dev}, {target} build, capture {cap}")
                    ex = TorchExecutor(c.exec_graph, device=dev, capture=cap)
                    name = f"tlc-torch{'' if target == 'ane' else '/' + target}:{dev}" + (
                        "" if cap == default_capture(torch.device(dev)) else f":{cap}")
                    calls[name] = lambda ex=ex, f=feeds: ex.run(f, keep_on_device=True)
                    syncs[name] = dev
                    first(name, calls[name])  # first run: records/compiles the capture
                    notes[name] = f"capture {ex.capture}, {len(c.exec_graph.nodes)} nodes" + (
                        f" (fell back: {ex.capture_error})" if ex.capture_error else "")
    if "tlc-numpy" in backends and dtype == "fp32":
        calls["tlc-numpy"], syncs["tlc-numpy"] = (lambda: run_graph(cm.exec_graph, host_feeds)), "cpu"
    if "coreml" in backends and coreml_available() and dtype == "fp32":  # pragma: no cover - macOS only
        calls["coreml"], syncs["coreml"] = (lambda: cm.run(host_feeds, backend="coreml")), "cpu"
        notes["coreml"] = f"{cm.precision} package, compute units ALL"
    for name, call in calls.items():
        if name not in firsts:
            first(name, call)
    log(f"timing {len(calls)} backends: {runs} runs after {warmup} warm-up calls each, interleaved")
    times = time_interleaved(calls, syncs, runs, warmup)
    results = []
    for name, ts in times.items():
        dev = syncs[name]
        med = statistics.median(ts)
        results.append(Result(name, dev, nbatch, med, p90(ts), nbatch / med * 1e3, note=notes.get(name, ""),
                              first_ms=first_ms.get(name), times_ms=ts))
    for r in results:
        ref_name = f"eager:{r.device}"
        if ref_name in times:
            ref = next(x for x in results if x.backend == ref_name)
            r.vs_eager = r.median_ms / ref.median_ms
            a, b = firsts[r.backend], firsts[ref_name]
            a, b = a.astype(np.float64), b.astype(np.float64)
            r.rel_err = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)) if a.shape == b.shape else float("nan")
    return results


def table(results: list[Result]) -> str:
    """Plain-text table of results (one row per backend)."""
    cols = ["backend", "batch", "median_ms", "p90_ms", "throughput", "vs_eager", "rel_err", "note"]
    rows = []
    for r in results:
        rows.append([r.backend, str(r.batch), f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput:.1f}",
                     "-" if r.vs_eager is None else f"{r.vs_eager:.2f}x",
                     "-" if r.rel_err is None else f"{r.rel_err:.1e}", r.note])
    widths = [max(len(c), *(len(x[i]) for x in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) if i in (0, 7) else v.rjust(w)  # noqa: E731
                                  for i, (v, w) in enumerate(zip(vals, widths))).rstrip()
    return "\n".join([line(cols), "  ".join("-" * w for w in widths)] + [line(x) for x in rows])


def to_json(results: list[Result], **meta) -> str:
    """JSON text: ``{"meta": {...}, "results": [Result fields..., times_ms]}``."""
    return json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2)


def environment() -> dict:
    """Versions and devices, for the JSON's ``meta``."""
    env = {"tlc": __version__, "torch": torch.__version__, "numpy": np.__version__, "devices": devices()}
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
    return env
