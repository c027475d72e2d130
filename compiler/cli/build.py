"""``tlc build``: trace a model file and write its artifact, saying what it is (ships as one package or
not, precision, placement, size, time). ``--task text-generation`` builds an LM (:mod:`tlc.cli.lm`),
``--shape`` several functions in one package."""
from __future__ import annotations

import argparse
import inspect
import os
import time
from pathlib import Path
from typing import Mapping

from tlc.backends.coreml.compress import MODES
from tlc.check.lint import lint
from tlc.driver.options import FORMATS, TASK_ALIASES, TASKS
from tlc.errors import InputError
from tlc.ir import format_graph
from tlc.util.coreml import package_size

from .lm import add_lm_options, build_text_generation, prefill_lengths, report_text_generation
from .modelfile import add_build_options, add_interface_options, io_options, load_model_file, merged_options, model_of
from .output import (finish_multifunction, human, print_cache, print_compression, print_image_ops, print_io,
                     print_precision, print_shippable, print_time)
from .parse import load_calibration, parse_paddable, parse_shapes


def cmd_build(a: argparse.Namespace) -> int:
    """``tlc build``; ``--no-cache`` sets ``$TLC_NO_CACHE`` while it runs (before the model file is
    imported: its ``@tlc.compile`` may trace then)."""
    if not a.no_cache:
        return _cmd_build(a)
    old = os.environ.get("TLC_NO_CACHE")
    os.environ["TLC_NO_CACHE"] = "1"
    try:
        return _cmd_build(a)
    finally:
        if old is None:
            os.environ.pop("TLC_NO_CACHE", None)
        else:
            os.environ["TLC_NO_CACHE"] = old


def _cmd_build(a: argparse.Namespace) -> int:  # noqa: C901 - one linear story of a build
    from tlc.api import build  # the driver, and with it torch: imported when a build runs, not for the parser
    from tlc.driver.save import check_writable, requested_output
    from tlc.driver.specialize import CompiledFunction

    a.task = TASK_ALIASES.get(a.task, a.task)  # one name per task from here on
    if Path(a.model).is_dir():
        return build_directory(a)
    if a.task == "text-generation":
        return build_text_generation(a)
    if a.task is not None:
        raise InputError(f"--task {a.task} builds a Hugging Face model directory (saved with save_pretrained); "
                         f"{a.model!r} is not a directory (a model file defines its own model and inputs; --task "
                         f"text-generation is the task a model file may name)")
    if a.sequence_length is not None:
        raise InputError("--sequence-length applies to a Hugging Face model directory; a model file's example_inputs "
                         "set its shapes")
    t0 = time.perf_counter()
    fmt, requested = requested_output(a.output, Path(a.model).stem, a.format)
    check_writable(requested, a.force)  # fail fast, before tracing
    spec = load_model_file(a.model, entry=a.entry)
    t_load = time.perf_counter() - t0
    opts = merged_options(a, spec)
    io = io_options(a, spec)
    extra = build_extras(a)
    if a.shape or a.paddable:
        if not a.shape:
            raise InputError("--paddable applies to several shapes (--shape NAME=DIMS,DIMS,...)")
        model = model_of(spec)
        sigs = signatures_for_shapes(model, spec.example_inputs, parse_shapes(a.shape))
        if a.paddable:
            extra["paddable"] = parse_paddable(a.paddable)
        mf = build(model, sigs, strict=a.strict_export, cache=True, progress=True, **opts, **extra, **io)
        return finish_multifunction(a, mf, requested, spec, t0, t_load)
    if isinstance(spec.model, CompiledFunction) and not a.strict_export and not extra and not io:
        # traced already when the file was imported (eager example_inputs=): reuse that trace
        cm = spec.model.compiled_for(spec.example_inputs).with_options(format=fmt, **opts)
        cm.progress = True
    else:
        cm = build(model_of(spec), spec.example_inputs, strict=a.strict_export, cache=True, progress=True, format=fmt,
                   **opts, **extra, **io)
    return finish_build(a, cm, fmt, requested, spec.path, t0, t_load)


def build_extras(a: argparse.Namespace) -> dict:
    """``tlc.build`` keywords of the flags every build may take: ``--profile``, ``--calibration``,
    ``--passes``, ``--skip-pass``, ``--strict-precision``."""
    extra = {}
    if getattr(a, "strict_precision", False):
        extra["strict_precision"] = True
    if a.profile:
        extra["profile"] = a.profile
    if a.calibration:
        extra["calibration"] = load_calibration(a.calibration)
    if a.passes is not None:
        extra["passes"] = [p for p in a.passes.split(",") if p]
    if a.skip_pass:
        extra["skip_passes"] = list(a.skip_pass)
    return extra


def build_directory(a: argparse.Namespace) -> int:
    """``tlc build DIR [--task TASK]``: a Hugging Face model directory (:func:`tlc.build_pretrained`),
    with exporters' task names, output names, labels and metadata."""
    import warnings

    from tlc.api import build_pretrained
    from tlc.driver.save import check_writable, requested_output

    t0 = time.perf_counter()
    name = Path(a.model).resolve().name
    if a.shape or a.paddable or a.entry or a.class_labels:
        raise InputError("--shape, --paddable, --entry and --class-labels apply to model files; a model directory's "
                         "task sets its inputs and labels (--sequence-length sets the text length)")
    opts = merged_options(a, None)
    io = io_options(a)
    desc = io.pop("short_description", None)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", UserWarning)
        if a.task == "text-generation":
            out = Path(a.output) if a.output else Path(name + ".mlpackage")
            mf = build_pretrained(a.model, "text-generation", max_context=a.max_context, short_description=desc,
                                  prefill_lengths=prefill_lengths(a), kv_cache=a.kv_cache, progress=True, cache=True,
                                  **{k: v for k, v in opts.items() if k in ("precision", "minimum_deployment_target",
                                                                            "compress")}, **io)
            return report_text_generation(a, mf, out, a.model, t0)
        fmt, requested = requested_output(a.output, name, a.format)
        check_writable(requested, a.force)
        cm = build_pretrained(a.model, a.task, sequence_length=a.sequence_length, short_description=desc,
                              strict=a.strict_export, cache=True, progress=True, format=fmt, **opts,
                              **build_extras(a), **io)
    for w in notes:
        print(f"note: {w.message}")
    task = dict(cm.io.metadata.user).get("co.huggingface.exporters.task")
    return finish_build(a, cm, fmt, requested, f"{a.model} (Hugging Face, {task})", t0, time.perf_counter() - t0)


def finish_build(a: argparse.Namespace, cm, fmt: str, requested: Path, source, t0: float, t_load: float) -> int:
    """Save ``cm`` (built from ``source``) as ``tlc build`` asked and print what was built."""
    from tlc.driver.save import check_writable

    if a.print_ir:
        print(format_graph(cm.graph, show_loc=True))
    if fmt == "aimodel":
        out = cm.coreai_output_path(requested)
        if out != requested and a.output:
            print(f"note: some ops run in tlc's fallback runtime; writing the bundle {out} instead of {requested}")
        path = cm.save(out, force=a.force)
        print(f"built {path}  (Core AI {'bundle' if path.suffix == '.tlc' else 'asset'}, {cm.precision}) "
              f"from {source}")
        print_shippable(cm, "coreai")
        print_cache(cm)
        print_io(cm)
        print(f"  size    {human(package_size(path))}")
        return 0
    out = cm.output_path(requested)
    if out != requested and a.output:
        print(f"note: {len(set(cm.placement.segment.values()))} segment(s), some ops run in tlc's fallback runtime; "
              f"writing the bundle {out} instead of {requested}")
    check_writable(out, a.force)
    path = cm.save(out, force=a.force)
    total = time.perf_counter() - t0
    g = cm.graph
    hist = ", ".join(f"{k} {v}" for k, v in list(g.op_histogram().items())[:8])
    more = len(g.op_histogram()) - 8
    print(f"built {path}  ({cm.precision}, {cm.minimum_deployment_target}, {cm.io_dtype} I/O"
          + (f", weights {cm.compress}" if cm.compress else "") + f") from {source}")
    print_shippable(cm)
    print_cache(cm)
    print_io(cm)  # the package's I/O types (fp16 with --io-dtype float16), images, classifier
    print_image_ops(cm)
    print(f"  ops     {g.num_ops}  ({hist}{', ...' if more > 0 else ''})")
    if cm.exec_graph is not cm.graph:
        print(f"  exec    tlc's torch/NumPy executors run the graph without layout::ane_transformer: "
              f"{cm.exec_graph.num_ops} ops (the Core ML program is laid out for the Neural Engine)")
    print(f"  size    {human(package_size(path))}  (weights {human(g.weight_bytes())} in fp32)")
    if fmt == "both":
        aim = cm.coreai_output_path(path)
        print(f"  aimodel {aim}  (Core AI {'bundle' if aim.suffix == '.tlc' else 'asset'}, the same graph)")
        if cm.coreai_is_bundle:
            print_shippable(cm, "coreai")
    rep = cm.report()
    print(f"  placed  {len(rep.segments)} segment(s) ("
          + ", ".join(f"{s.index}: {s.target} {s.num_ops} ops" for s in rep.segments)
          + f"), static ANE residency {100 * rep.residency:.1f}% of FLOPs ({100 * rep.residency_under('documented'):.1f}% "
            f"under documented rules only)")
    if a.report:
        print(rep.text())
        if not cm.is_bundle or any(s.target == "ane" for s in rep.segments):
            print(lint(path).text())
    if a.report_json:
        rep.write_json(a.report_json)
        print(f"  report  {a.report_json}")
    if a.report_html:
        rep.write_html(a.report_html)
        print(f"  report  {a.report_html}")
    if cm.precision == "mixed":
        print_precision(cm)
    if cm.compress:
        print_compression(cm, path)
    print_time(total, t_load, cm.timings)
    return 0


def signatures_for_shapes(model, example_inputs, shapes: Mapping[str, list[tuple[int, ...]]], seed: int = 0) -> list:
    """Example inputs at each of ``shapes`` (``{input: [shape per function]}``, :func:`parse_shapes`):
    ``[(args, kwargs), ...]`` with each named top-level tensor input replaced by one of the new
    shape whose values are drawn from the example tensor's own values (valid token ids stay
    valid, a 0/1 mask stays 0/1). Inputs not named follow a named one whose example shape they
    share (``attention_mask`` follows ``input_ids``), else keep their example. Raises
    :class:`InputError` for an unknown input name or a rank change."""
    import torch  # the commands that trace import torch; building the parser does not

    from tlc.driver.inputs import unwrap
    from tlc.frontend import normalize_inputs

    args, kwargs = normalize_inputs(example_inputs)
    model = unwrap(model)
    fn = getattr(model, "forward", model) if isinstance(model, torch.nn.Module) else model
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"--shape: cannot match the example inputs to the model's parameters ({e})") from None
    tensors = {k: v for k, v in bound.arguments.items() if isinstance(v, torch.Tensor)}
    unknown = [k for k in shapes if k not in tensors]
    if unknown:
        raise InputError(f"--shape names {unknown}, not a tensor input of the model (tensor inputs: "
                         f"{', '.join(tensors)})")
    follows = dict.fromkeys(shapes)
    for k, t in tensors.items():
        if k not in shapes:
            lead = next((n for n in shapes if tuple(tensors[n].shape) == tuple(t.shape)), None)
            if lead is not None:
                follows[k] = lead
    g = torch.Generator().manual_seed(seed)
    n = len(next(iter(shapes.values())))
    out = []
    for i in range(n):
        b = inspect.signature(fn).bind(*args, **kwargs)
        for k, lead in follows.items():
            shape = shapes[lead or k][i]
            ex = tensors[k]
            if len(shape) != ex.dim():
                raise InputError(f"--shape {lead or k}={'x'.join(map(str, shape))}: input {k} has rank {ex.dim()} "
                                 f"in the example inputs")
            flat = ex.reshape(-1)
            b.arguments[k] = flat[torch.randint(0, flat.numel(), shape, generator=g)].clone()
        out.append((tuple(b.args), dict(b.kwargs)))
    return out


def add_parser(sub) -> None:
    """The ``build`` subcommand on ``sub`` (argparse subparsers)."""
    b = sub.add_parser(
        "build",
        help="trace model.py and write a verified .mlpackage",
        description=(
            "Trace the model defined in MODEL (module-level `model` + `example_inputs`, or one function "
            "decorated with @tlc.compile(example_inputs=...)), lower it to tlc's IR and write a Core ML "
            "mlprogram package. The package is written to a temp path and renamed into place."
        ),
    )
    b.add_argument("model", help="path to model.py, or a Hugging Face model directory (save_pretrained) with --task")
    b.add_argument("-o", "--output", help="output path (default: ./<model stem>.mlpackage, or <stem>.tlc when some "
                                          "ops need tlc's fallback runtime: then a .mlpackage suffix becomes .tlc)")
    add_build_options(b)
    b.add_argument("--no-fallback", action="store_true",
                   help="demand one shippable .mlpackage: every op Core ML can hold goes there; fail (writing nothing) "
                        "listing each op that would need tlc's fallback runtime")
    b.add_argument("--compress", choices=list(MODES) + ["auto"],
                   help="compress conv/linear/matmul weights with coremltools (int8/int4: per-channel linear "
                        "quantization, int4 needs iOS18; palettizeN: a 2^N-entry k-means table per tensor; w8a8: "
                        "int8 weights and activations calibrated on the example/--calibration inputs, iOS17+; "
                        "auto: mixed bits per weight chosen by measured sensitivity to reach --target-psnr, default "
                        "40 dB, or --avg-bits; writes NAME.recipe.json beside the package); fp32 islands stay as they are")
    b.add_argument("--target-psnr", type=float, metavar="DB",
                   help="with --compress auto: the PSNR (dB, coremltools' definition) the package must reach on the "
                        "calibration inputs against the fp32 model, with the fewest bits per weight")
    b.add_argument("--avg-bits", type=float, metavar="BITS",
                   help="with --compress auto: a budget of bits per weight (tables included); the best PSNR within it")
    b.add_argument("--max-bits", type=int, metavar="N", help="with --compress auto: the most bits a weight may take (1-8)")
    b.add_argument("--compress-recipe", metavar="FILE",
                   help="compress with the per-weight configs of a recipe file a --compress auto build wrote "
                        "(NAME.recipe.json): the same weights give a byte-identical package, without measuring")
    b.add_argument("--shape", action="append", metavar="NAME=DIMS[,DIMS...]",
                   help="build one function per shape into one multifunction package (iOS18+), e.g. "
                        "input_ids=1x64,1x128,1x512; inputs sharing NAME's example shape follow it (repeatable)")
    b.add_argument("--paddable", action="append", metavar="NAME:AXIS[,AXIS]",
                   help="with --shape: an input may be padded along AXIS (with 0) to fit a larger function at run time")
    b.add_argument("--profile", metavar="FILE", help="measured per-op costs from `tlc profile` for the placement cost model")
    b.add_argument("--calibration", metavar="FILE.npz",
                   help="more calibration samples for precision=mixed (range analysis and the closed loop that runs the "
                        "package on each): one array per input, named like it, samples stacked on a new first axis")
    b.add_argument("--report", action="store_true", help="print the placement report: segments, ANE residency, "
                                                         "every op not on the ANE with its reason and source line")
    b.add_argument("--report-json", metavar="FILE", help="write the placement report as JSON")
    b.add_argument("--report-html", metavar="FILE", help="write the placement report as HTML (graph drawn, segments coloured)")
    b.add_argument("--format", choices=list(FORMATS), default=None,
                   help="mlpackage (default), aimodel (Apple's Core AI asset, iOS/macOS 27; needs the coreai extra) or "
                        "both (NAME.aimodel beside the package); -o NAME.aimodel implies aimodel")
    b.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    b.add_argument("--quiet", "-q", action="store_true",
                   help="no progress on stderr (it only shows on a terminal anyway)")
    b.add_argument("--no-cache", action="store_true",
                   help="do not use the persistent compile cache ($TLC_CACHE_DIR; `tlc cache info`): trace and build "
                        "from scratch, store nothing")
    b.add_argument("--strict-export", action="store_true", help="trace with torch.export(strict=True)")
    b.add_argument("--strict-precision", action="store_true",
                   help="precision=mixed: fail (PrecisionError, nothing written) when no fp32 island assignment passes "
                        "the closed loop, instead of shipping the smallest passing program (at worst all fp32)")
    b.add_argument("--print-ir", action="store_true", help="print tlc's IR (after the passes) before emission")
    b.add_argument("--passes", metavar="A,B,C", help="run exactly these passes, in this order (empty: none)")
    b.add_argument("--skip-pass", action="append", metavar="NAME", help="leave this pass out (repeatable)")
    b.add_argument("--task", choices=list(TASKS) + list(TASK_ALIASES), metavar="TASK",
                   help="a Hugging Face model directory's task, with Hugging Face exporters' names, inputs, outputs "
                        "and labels: " + ", ".join(TASKS) + " (default: from the config's architecture); "
                        "text-generation also takes a model.py defining a causal LM: prefill/decode functions with the "
                        "KV cache as I/O in one multifunction package (tlc.build_lm)")
    b.add_argument("--sequence-length", type=int, metavar="N",
                   help="a Hugging Face text model's input length (default 128; the package's shapes are static)")
    add_interface_options(b)
    add_lm_options(b)
    b.set_defaults(func=cmd_build)


__all__ = ["add_parser", "cmd_build", "signatures_for_shapes"]
