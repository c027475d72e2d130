"""What ``tlc build`` prints: the shipping verdict, precision, compression, multifunction functions,
the cache line and timings."""
from __future__ import annotations

import time
from pathlib import Path

from tlc.check.metrics import accuracy
from tlc.check.report import compression_lines
from tlc.util.coreml import package_size, weight_file_size


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit.replace('B', 'iB') if unit != 'B' else unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


#: the stages ``tlc build`` reports, in order: (label, ``CompiledModel.timings`` key)
TIME_STAGES = (("export", "export"), ("decompose", "decompose"), ("lower", "lower"), ("passes", "passes"),
               ("cache load", "cache_load"), ("cache store", "cache_store"),
               ("plan cache load", "plan_cache_load"), ("precision", "precision"),
               ("closed loop", "closed_loop"), ("emit", "emit_mil"), ("mil passes", "mil_passes"),
               ("serialize", "serialize"), ("partition", "partition"), ("compress", "compress"), ("finish", "finish"),
               ("save", "save"))


def print_time(total: float, t_load: float, t: dict) -> None:
    """The build's wall time and its stages (those that ran)."""
    parts = [f"{label} {t[k]:.2f}" for label, k in TIME_STAGES if k in t]
    print(f"  time    {total:.2f} s  (load {t_load:.2f}" + "".join(f", {p}" for p in parts) + ")")


def print_compression(cm, path, function_name: str | None = None, weights_after: int | None = None,
                       default: str | None = None) -> None:
    """Weight bytes before/after compression and the package's accuracy on the calibration inputs."""
    before = cm.weights_before_compress or 0
    after = weights_after if weights_after is not None else weight_file_size(path)
    label = f" {function_name}" if function_name else ""
    if cm.is_bundle:
        n = sum(s.target == "ane" for s in cm.segments)  # (compress by target/recipe: one program only)
        print(f"  weights {cm.compress}: " + (f"compressed in the {n} Core ML segment(s); weight files {human(after)}"
                                             if n else "nothing compressed: no op runs in a Core ML segment"))
    elif weights_after is None or function_name == default:
        n = len(cm.compressed_weights)
        print(f"  weights {cm.compress}: {human(before)} -> {human(after)}" + (f" ({after / before:.2f}x)" if before else "")
              + f", {n} weight tensor(s) compressed" + ("" if n else " (none qualifies: conv/linear/matmul weights "
                                                        "of >= 2048 elements outside fp32 islands)")
              + (f"  (the {function_name} function's constants before; the package's weight file after)"
                 if weights_after is not None else ""))
        if cm.compression is not None:
            for line in compression_lines(cm.compression.to_json(), layers=5):
                print("  " + line)
            if cm.compress.measured:
                from tlc.driver.recipe import recipe_path

                print(f"  recipe  {recipe_path(path)}  (--compress-recipe FILE rebuilds this package)")
        if cm.float_activation_ops:
            print(f"          {cm.float_activation_ops} op(s) keep float activations: a tensor they read or write is "
                  f"outlier-dominated (estimated int8 SNR < 30 dB on the calibration inputs)")
    for name, e, p in accuracy(path, cm.graph, cm.calibration, function_name=function_name):
        print(f"  accuracy{label} {name}: rel-L2 {e:.2e}, PSNR {p:.1f} dB  (worst of {len(cm.calibration)} calibration "
              f"sample(s), MIL interpreter vs the fp32 reference)")


def finish_multifunction(a, mf, requested: Path, spec, t0: float, t_load: float) -> int:
    """Save a :class:`tlc.driver.multifunction.MultiFunctionModel` and print what was built, per function."""
    path = mf.save(requested, force=a.force)
    total = time.perf_counter() - t0
    print(f"built {path}  ({mf.precision}, {mf.minimum_deployment_target}, {mf.io_dtype} I/O"
          + (f", weights {mf.compress}" if mf.compress else "") + f") from {spec.path}")
    print(f"  ships   one .mlpackage with {len(mf.functions)} functions (multifunction; in an app choose one with "
          f"MLModelConfiguration.functionName; default {mf.default_function_name})")
    for name, cm in mf.functions.items():
        eg = cm.emit_graph
        rep = cm.report()
        ins = ", ".join(f"{v.name} {v.type}" for v in eg.inputs)
        outs = ", ".join(f"{n} {v.type}" for n, v in zip(eg.output_names, eg.outputs))
        print(f"  function {name}{' (default)' if name == mf.default_function_name else ''}: {ins} -> {outs}; "
              f"{cm.graph.num_ops} ops, static ANE residency {100 * rep.residency:.1f}%"
              + (f", {len(cm.islands)} fp32 island op(s)" if cm.precision == "mixed" else ""))
    sz = mf.sizes
    print(f"  size    {human(package_size(path))}  (weights stored once: {human(sz['weights'])}; one function alone "
          f"{human(sz['single_function'])}, ratio {sz['weights'] / max(sz['single_function'], 1):.2f}; "
          f"{len(mf.functions)} separate packages would hold {human(sz['functions'])})")
    if mf.paddable:
        print("  padding " + ", ".join(f"{k} axis {', '.join(map(str, p.axes))} (value {p.value})"
                                     for k, p in mf.paddable.items())
              + ": a smaller input runs in the smallest function it fits, outputs cropped back")
    if mf.compress:
        for name, cm in mf.functions.items():
            print_compression(cm, path, function_name=name, weights_after=sz["weights"],
                               default=mf.default_function_name)
    print_time(total, t_load, mf.timings)
    return 0


def print_precision(cm) -> None:
    """Calibration samples, the closed loop's result per output (its rounds, pruned islands and,
    loudly, a fallback), rescaled regions, fp32 islands and fp16 constant fixes."""
    chk = cm.precision_check
    n = len(cm.calibration)
    print(f"  calib   {n} sample(s) (the example inputs" + (f" + {n - 1} from --calibration/calibration=)" if n > 1 else ")"))
    if chk is not None:
        print(chk.text(indent="  ").replace("  checked", "  loop    checked", 1))
    for r in (chk.rescaled if chk is not None else ()):
        print(f"  rescale {len(r['ops'])} op(s) ({', '.join(r['ops'][:3])}{', ...' if len(r['ops']) > 3 else ''}): "
              + (r["why"] if r["exponent"] else f"not rescaled ({r['max_abs']:.3g}): {r['why_not']}"))
    isl = cm.islands
    print(f"  fp32    {len(isl)} island op(s)" + ("" if isl else " (everything computes in fp16)"))
    for name, why in isl.items():
        print(f"          {name}: {why}")
    fixed = cm.emit_graph.meta.get("tlc.fp16_constants", {})
    if fixed:
        print(f"  fp16    {len(fixed)} op(s) hold a constant changed to what fp16 can hold")
        by_note: dict[str, list[str]] = {}
        for name, why in fixed.items():
            by_note.setdefault(why, []).append(name)
        for why, names in by_note.items():
            print(f"          {', '.join(names[:4])}{f' (+{len(names) - 4})' if len(names) > 4 else ''}: {why}")


def print_io(cm) -> None:
    """The package's inputs and outputs as an app sees them: names, types (fp16 with
    ``--io-dtype float16``), image features, a classifier's label and dictionary, descriptions."""
    eg = cm.emit_graph
    io = cm.io
    images = {im.name: im for im in io.images + io.image_outputs}
    text = dict(io.descriptions)

    def row(kind, name, what):
        im = images.get(name)
        extra = f"  image {im.color_layout} {im.shape[3]}x{im.shape[2]}" if im else ""
        print(f"  {kind:<7} {name:<24} {what}{extra}" + (f"  ({text[name]})" if name in text else ""))

    for v in eg.inputs:
        row("input", v.name, v.type)
    types = dict(zip(eg.output_names, eg.outputs))
    c = io.classifier
    for name in io.output_features(list(eg.output_names)):
        if c is not None and name == c.label_name:
            row("output", name, "String" if isinstance(c.labels[0], str) else "Int64")
        elif c is not None and name == c.dict_name:
            shown = ", ".join(map(str, c.labels[:4])) + (", ..." if len(c.labels) > 4 else "")
            row("output", name, f"{{label: probability}} of {len(c.labels)} labels ({shown})")
        else:
            row("output", name, types[name].type)


def print_image_ops(cm) -> None:
    """Where the image inputs' and outputs' scale/bias ops run (they are ordinary ops of the
    program: the placement decides, as for every op)."""
    target = cm.placement.target
    for kind in ("input", "output"):
        ops = [n for n in cm.emit_graph.nodes if n.op != "const" and n.loc is not None
               and (n.loc.module or "").startswith(f"image {kind}")]
        names = sorted({n.loc.module.split(" ", 2)[2] for n in ops})
        for name in names:
            mine = [n for n in ops if n.loc.module == f"image {kind} {name}"]
            where = ", ".join(f"{n.op} on {target.get(n.name, '?')}" for n in mine)
            print(f"  image   {kind} {name}: {len(mine)} op(s) in the program" + (f" ({where})" if mine else ""))


def print_shippable(cm, program: str = "coreml") -> None:
    """The first thing a user must know: does this ship as one .mlpackage (``program="coreai"``:
    one .aimodel)?"""
    coreai = program == "coreai"
    off = cm.coreai_fallback_ops() if coreai else cm.fallback_ops()
    one, where_ = (".aimodel", "Core AI") if coreai else (".mlpackage", "Core ML")
    if not off:
        print(f"  ships   one {one}: every op is in {where_} (drop it into Xcode)")
        return
    p = cm.plan.coreai_placement if coreai else cm.placement
    nseg = len(set(p.segment.values()))
    print(f"  ships   NOT one {one}: a tlc bundle of {nseg} segment(s); {len(off)} op(s) run in tlc's fallback "
          f"runtime, which an iOS/macOS app does not have (--no-fallback makes this an error):")
    for op, name, why, src in off[:12]:
        print(f"          {op} ({name}): {why}" + (f"  [{src.split('  ')[0]}]" if src else ""))
    if len(off) > 12:
        print(f"          ... and {len(off) - 12} more (--report lists every op)")


def print_cache(cm) -> None:
    """One line on the persistent compile cache (:mod:`tlc.driver.cache`): the trace's status and the
    entries read (trace, plan, artifact) in this build."""
    if cm.cache_status is None:
        return
    c = cm._cache
    print(f"  cache   trace {cm.cache_status}" + (" (no export ran)" if cm.cache_status == "hit" else "")
          + f"; {c.hits} entr{'y' if c.hits == 1 else 'ies'} read, {c.misses} built and stored in {c.root}"
          + (f"; {c.rebuilt} damaged entr{'y' if c.rebuilt == 1 else 'ies'} rebuilt" if c.rebuilt else "")
          + " (--no-cache skips it)")
