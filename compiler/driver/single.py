"""The build of one input signature: trace (torch.export, decompositions, lowering), run the pass
pipeline and make the :class:`~tlc.driver.model.CompiledModel` — or load it from the compile cache
(:mod:`tlc.driver.cache`), keyed before anything is traced."""
from __future__ import annotations

import time
from typing import Callable

from tlc.errors import InputError
from tlc.frontend import normalize_inputs, trace
from tlc.passes import ANE_ONLY, PASSES, PIPELINE, run_pipeline
from tlc.passes.interface import bind_interface, package_feed
from tlc.util.progress import stage

from . import cache as _cache
from .cache_key import file_key, source_key
from .inputs import calibration_feed, example_inputs_of, model_name, source_of, unwrap
from .model import CompiledModel, load_trace, store_trace
from .options import BuildOptions
from .plan import check_shippable

def pass_names(options: BuildOptions, passes: list[str] | None, skip_passes=()) -> list[str]:
    """The passes a build runs: ``passes`` (default :data:`tlc.passes.PIPELINE`) without
    ``skip_passes``, and without the Neural Engine layout unless ``options.target`` is ``"ane"``
    (:data:`tlc.passes.ANE_ONLY`: GPU/CPU runtimes want the graph as traced). Raises
    :class:`InputError` naming unknown passes."""
    names = list(PIPELINE if passes is None else passes)
    if options.target != "ane":
        names = [n for n in names if n not in ANE_ONLY]
    unknown = [n for n in names + list(skip_passes) if n not in PASSES]
    if unknown:
        raise InputError(f"unknown pass(es) {unknown}; registered: {', '.join(sorted(PASSES))}")
    return [n for n in names if n not in set(skip_passes)]


def _same(a, b) -> bool:
    """Whether two graphs compute alike step by step: the same ops with the same attributes and
    output types, in the same order (the layout passes did not fire)."""
    def steps(g):
        return [(n.op, repr(sorted((k, v) for k, v in n.attrs.items() if k != "val")), tuple(v.type for v in n.outputs))
                for n in g.nodes]
    return len(a.nodes) == len(b.nodes) and steps(a) == steps(b)


def optimize(g, names: list[str]):
    """Run the pass pipeline ``names`` on ``g``; returns ``(program graph, executor graph)``.

    The Neural Engine layout (:data:`tlc.passes.ANE_ONLY`: the (B, C, 1, S) form, 1x1 convs,
    per-head attention) shapes the Core ML program only; tlc's own executors (torch on a GPU or the
    CPU, NumPy) run the graph without it, as a ``target="gpu"`` build would (issue 33: a default
    build's GPT-2 ran 2.5x slower than torch eager on CUDA in the per-head form). The passes before
    the first layout pass run once; when the layout pass leaves its input as it was (it returns the
    same object), the rest run once too and both are that graph; else the rest run for each graph,
    the executor's without the layout passes."""
    first = next((i for i, n in enumerate(names) if n in ANE_ONLY), None)
    if first is None:
        g = run_pipeline(g, names)
        return g, g
    before = run_pipeline(g, names[:first])
    rest = names[first + 1:]
    laid = run_pipeline(before, names[first:first + 1])
    if laid is before and not ANE_ONLY.intersection(rest):  # the layout did not fire: one graph, passes run once
        g = run_pipeline(before, rest)
        return g, g
    program = run_pipeline(laid, rest)
    plain = run_pipeline(before, [n for n in rest if n not in ANE_ONLY])
    return program, program if _same(program, plain) else plain


def build_one(model_or_fn: Callable, example_inputs, options: BuildOptions, *, profile=None, strict: bool = False,
              calibration: list | None = None, passes: list[str] | None = None, skip_passes=(),
              progress: bool = False, cache: bool = False, cache_key: str | None = None,
              cache_values: bool = True) -> CompiledModel:
    """Trace ``model_or_fn`` on ``example_inputs`` (one signature), optimize it and return its
    :class:`CompiledModel` under the decided ``options`` (:meth:`BuildOptions.decide`). ``profile``:
    the ``tlc profile`` file ``options.cost`` came from (part of the cache key); ``calibration``:
    more samples like ``example_inputs``; ``cache``/``cache_key``: use the compile cache (a
    ``cache_key`` replaces the model part of the key; ``$TLC_NO_CACHE=1`` turns it off);
    ``cache_values``: key on the example values too, not only their signature (``@tlc.compile``
    keys by signature). Other arguments as :func:`tlc.build`. Raises what :func:`tlc.build` raises."""
    model_or_fn = unwrap(model_or_fn)  # a @tlc.compile wrapper builds what it wraps
    example_inputs = example_inputs_of(model_or_fn, example_inputs)
    calibration = list(calibration or [])
    names = pass_names(options, passes, skip_passes)
    store = key = None
    if _cache.enabled(cache or cache_key is not None):
        store = _cache.Cache()
        opts = {f: getattr(options, f) for f in ("precision", "minimum_deployment_target", "target", "io_dtype",
                                                  "fallback", "compress", "format", "strict_precision")}
        opts["interface"] = repr(options.interface)
        opts.update(profile=file_key(profile) if profile is not None else None, strict=strict, passes=names)
        key = source_key(model_or_fn, example_inputs, opts, values=cache_values, calibration=calibration,
                         user_key=cache_key)
        cm = load_trace(store, key, progress=progress)
        if cm is not None:
            cm.cache_key, cm._cache, cm.cache_status = key, store, "hit"
            return cm
    source = source_of(model_or_fn)
    with stage(f"tracing {model_name(model_or_fn)} (torch.export, decompositions, lowering)"):
        traced, info = trace(model_or_fn, example_inputs, strict=strict, meta={"tlc.source": source} if source else {})
    g, io = bind_interface(traced, options.interface)  # names, image ops: before the passes, which may fuse them
    t0 = time.perf_counter()
    with stage(f"optimizing ({len(names)} passes)"):
        g, exec_graph = optimize(g, names)
    timings = {"export": info.export_s, "decompose": info.decompose_s, "lower": info.lower_s,
               "passes": time.perf_counter() - t0}
    feeds = [package_feed(traced, g, io, calibration_feed(traced, ex, k))
             for k, ex in enumerate([example_inputs] + calibration)]
    if not options.fallback:
        check_shippable(g)
        if options.format != "mlpackage":
            check_shippable(g, program="coreai")
    _, kwargs = normalize_inputs(example_inputs)
    cm = CompiledModel(g, exec_graph=exec_graph, options=options, out_spec=info.out_spec, kw_order=list(kwargs),
                       out_torch_dtypes=info.extra["out_dtypes"],  # int64/float64 handed back as the model would
                       timings=timings, source=source, calibration=feeds, name=model_name(model_or_fn),
                       progress=progress, io=io)
    if store is not None:
        t0 = time.perf_counter()
        store_trace(store, key, cm)
        cm.timings["cache_store"] = time.perf_counter() - t0
        cm.cache_key, cm._cache, cm.cache_status = key, store, "miss"
    return cm


__all__ = ["build_one", "pass_names", "optimize"]
