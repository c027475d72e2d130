"""``tlc`` command line.

    tlc build model.py [-o OUT] [--format mlpackage|aimodel|both] [--precision mixed|fp16|fp32] [--target ane|gpu|cpu]
              [--minimum-deployment-target iOS17] [--io-dtype float16] [--no-fallback] [--calibration F.npz]
              [--compress int8|int4|palettize4|palettize6|palettize8]
              [--report] [--report-json F]
              [--report-html F] [--force]
    tlc run PKG|BUNDLE|ASSET.aimodel --input NAME=FILE.npy ... [--out DIR] [--backend auto|coreml|interpreter]
    tlc inspect PKG|BUNDLE|ASSET.aimodel [--json] [--function NAME]
    tlc lint PKG|BUNDLE [--fail-on eligibility|efficiency] [--json F] [--all]
    tlc cache info|clear [--json]
    tlc verify model.py [--package PKG] [--format mlpackage|both] [--precision fp16|fp32] [--tol-fp32 1e-5] [--tol-fp16 1e-2]
    tlc bench model.py [--runs 50] [--warmup 10] [--batch B] [--backends eager,tlc-torch,...] [--json FILE]

Errors tlc knows about print one paragraph (what, where) to stderr and exit non-zero
(:attr:`tlc.errors.TlcError.exit_code`); ``TLC_DEBUG=1`` adds the Python traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from . import __version__
from .build_output import (finish_multifunction, human, load_calibration, parse_paddable, print_cache,
                           print_compression, print_precision, print_shippable, print_time)
from .errors import TlcError


def cmd_build(a: argparse.Namespace) -> int:
    if not a.no_cache:
        return _cmd_build(a)
    old = os.environ.get("TLC_NO_CACHE")
    os.environ["TLC_NO_CACHE"] = "1"  # before the model file is imported: its @tlc.compile may trace then
    try:
        return _cmd_build(a)
    finally:
        if old is None:
            os.environ.pop("TLC_NO_CACHE", None)
        else:
            os.environ["TLC_NO_CACHE"] = old


def _cmd_build(a: argparse.Namespace) -> int:  # noqa: C901 - one linear story of a build
    from .api import build
    from .specialize import CompiledFunction
    from ._coreml import package_size
    from .artifact import check_output_path
    from .modelfile import load_model_file

    if a.task == "text-generation":
        from .lm_cli import build_text_generation

        return build_text_generation(a)
    t0 = time.perf_counter()
    fmt = a.format or ("aimodel" if a.output and Path(a.output).suffix == ".aimodel" else "mlpackage")
    requested = Path(a.output) if a.output else Path(Path(a.model).stem + (".aimodel" if fmt == "aimodel" else ".mlpackage"))
    if fmt != "mlpackage":
        from .api import check_format

        check_format(fmt)  # coreai-core installed: fail fast, before tracing
    if fmt == "aimodel" and requested.suffix != ".aimodel":
        requested = requested.with_suffix(".aimodel")
    if requested.suffix == ".aimodel":
        if requested.exists() and not a.force:
            from .errors import OutputExistsError

            raise OutputExistsError(f"{str(requested)!r} already exists; pass --force to replace it")
    elif requested.suffix != ".tlc":
        check_output_path(requested, a.force)  # fail fast, before tracing
    spec = load_model_file(a.model, entry=a.entry)
    t_load = time.perf_counter() - t0
    opts = dict(spec.options)
    opts.pop("strict", None)
    if a.precision:
        opts["precision"] = a.precision
    if a.minimum_deployment_target:
        opts["minimum_deployment_target"] = a.minimum_deployment_target
    if a.target:
        opts["target"] = a.target
    if a.profile:
        opts["profile"] = a.profile
    if a.io_dtype:
        opts["io_dtype"] = a.io_dtype
    if a.no_fallback:
        opts["fallback"] = False
    if a.compress:
        opts["compress"] = a.compress
    if a.calibration:
        opts["calibration"] = load_calibration(a.calibration)
    opts["progress"] = True
    pass_opts = {}
    if a.passes is not None:
        pass_opts["passes"] = [p for p in a.passes.split(",") if p]
    if a.skip_pass:
        pass_opts["skip_passes"] = list(a.skip_pass)
    if a.shape or a.paddable:
        from .multifunction import parse_shapes, signatures_for_shapes

        if not a.shape:
            from .errors import InputError

            raise InputError("--paddable applies to several shapes (--shape NAME=DIMS,DIMS,...)")
        model = spec.model.fn if isinstance(spec.model, CompiledFunction) else spec.model
        sigs = signatures_for_shapes(model, spec.example_inputs, parse_shapes(a.shape))
        if a.paddable:
            opts["paddable"] = parse_paddable(a.paddable)
        cm = build(model, sigs, strict=a.strict_export, cache=True, **opts, **pass_opts)
        return finish_multifunction(a, cm, requested, spec, t0, t_load)
    if (isinstance(spec.model, CompiledFunction) and not a.strict_export and not pass_opts and not a.profile
            and not a.calibration):
        # traced already when the file was imported (eager example_inputs=): reuse that trace
        opts.pop("progress")
        cm = spec.model.compiled_for(spec.example_inputs).with_options(**opts)
        cm.progress = True
    else:
        model = spec.model.fn if isinstance(spec.model, CompiledFunction) else spec.model
        cm = build(model, spec.example_inputs, strict=a.strict_export, cache=True, **opts, **pass_opts)
    if a.print_ir:
        from .ir import format_graph

        print(format_graph(cm.graph, show_loc=True))
    cm.format = fmt
    if fmt == "aimodel":
        out = cm.coreai_output_path(requested)
        if out != requested and a.output:
            print(f"note: some ops run in tlc's fallback runtime; writing the bundle {out} instead of {requested}")
        path = cm.save(out, force=a.force)
        print(f"built {path}  (Core AI {'bundle' if path.suffix == '.tlc' else 'asset'}, {cm.precision}) "
              f"from {spec.path}")
        print_shippable(cm, "coreai")
        print_cache(cm)
        eg = cm.emit_graph
        for v in eg.inputs:
            print(f"  input   {v.name:<24} {v.type}")
        for n, v in zip(eg.output_names, eg.outputs):
            print(f"  output  {n:<24} {v.type}")
        print(f"  size    {human(package_size(path))}")
        return 0
    out = cm.output_path(requested)
    if out != requested and a.output:
        print(f"note: {len(set(cm.placement.segment.values()))} segment(s), some ops run in tlc's fallback runtime; "
              f"writing the bundle {out} instead of {requested}")
    if out.suffix != ".tlc":
        check_output_path(out, a.force)
    elif out.exists() and not a.force:
        from .errors import OutputExistsError

        raise OutputExistsError(f"{str(out)!r} already exists; pass --force to replace it")
    path = cm.save(out, force=a.force)
    total = time.perf_counter() - t0
    g = cm.graph
    t = cm.timings
    hist = ", ".join(f"{k} {v}" for k, v in list(g.op_histogram().items())[:8])
    more = len(g.op_histogram()) - 8
    print(f"built {path}  ({cm.precision}, {cm.minimum_deployment_target}, {cm.io_dtype} I/O"
          + (f", weights {cm.compress}" if cm.compress else "") + f") from {spec.path}")
    print_shippable(cm)
    print_cache(cm)
    eg = cm.emit_graph  # the package's I/O types (fp16 with --io-dtype float16)
    for v in eg.inputs:
        print(f"  input   {v.name:<24} {v.type}")
    for n, v in zip(eg.output_names, eg.outputs):
        print(f"  output  {n:<24} {v.type}")
    print(f"  ops     {g.num_ops}  ({hist}{', ...' if more > 0 else ''})")
    print(f"  size    {human(package_size(path))}  (weights {human(g.weight_bytes())} in fp32)")
    if fmt == "both":
        aim = cm.coreai_output_path(path)
        print(f"  aimodel {aim}  (Core AI {'bundle' if aim.suffix == '.tlc' else 'asset'}, the same graph)")
        if cm.coreai_is_bundle:
            print_shippable(cm, "coreai")
    rep = cm.report()
    print(f"  placed  {len(rep.segments)} segment(s) ("
          + ", ".join(f"{s.index}: {s.target} {s.num_ops} ops" for s in rep.segments)
          + f"), static ANE residency {100 * rep.residency:.1f}% of FLOPs")
    if a.report:
        print(rep.text())
        if not cm.is_bundle or any(s.target == "ane" for s in rep.segments):
            from .lint import lint

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


def cmd_run(a: argparse.Namespace) -> int:
    import numpy as np

    from .runtime_cli import parse_inputs
    from tlc.runtime import load

    m = load(a.package, backend=a.backend, compute_units=a.compute_units, fallback=a.fallback,
             **({"function_name": a.function} if a.function else {}),
             **({"paddable": parse_paddable(a.paddable)} if a.paddable else {}))
    feeds = parse_inputs(a.input or [])
    t0 = time.perf_counter()
    out = m(feeds)
    dt = time.perf_counter() - t0
    fn = getattr(m, "last_function", None)
    print(f"ran {a.package} on {m.backend} in {dt * 1e3:.1f} ms"
          + (f" (function {fn} of {len(m.functions)})" if fn and len(m.functions) > 1 else ""))
    outdir = Path(a.out) if a.out else None
    if outdir:
        outdir.mkdir(parents=True, exist_ok=True)
    for name, arr in out.items():
        f = arr.astype(np.float64) if arr.dtype.kind == "f" else None
        stats = (f"min {f.min():.4g} max {f.max():.4g} mean {f.mean():.4g} nan/inf {int((~np.isfinite(f)).sum())}"
                 if f is not None and f.size else "")
        line = f"  {name:<24} {arr.dtype.name}{list(arr.shape)}  {stats}"
        if outdir:
            np.save(outdir / f"{name}.npy", arr)
            line += f"  -> {outdir / (name + '.npy')}"
        print(line)
    return 0


def _print_io(inputs: list[dict], outputs: list[dict]) -> None:
    for kind, rows in (("input", inputs), ("output", outputs)):
        for r in rows:
            extra = (f"  (value {r['value']})" if "value" in r else "") + (f"  image {r['image']}" if "image" in r else "")
            extra += f"  allowed {r['allowed']}" if "allowed" in r else ""
            print(f"  {kind:<7} {r['name']:<24} {r['dtype']}{r['shape']}{extra}")


def cmd_lint(a: argparse.Namespace) -> int:
    """``tlc lint``: every op breaking an ANE eligibility or efficiency rule (:mod:`tlc.lint`);
    exit 1 with ``--fail-on`` when one does, 2 when the package cannot be read."""
    from .lint import lint

    rep = lint(a.package)
    print(rep.text(limit=None if a.all else 40))
    if a.json:
        import json

        Path(a.json).write_text(json.dumps(rep.to_json(), indent=1) + "\n")
        print(f"  json    {a.json}")
    return rep.exit_code(a.fail_on)


def _inspect_aimodel(path: Path, as_json: bool) -> int:
    """``tlc inspect`` of a Core AI asset: its function's inputs and outputs (from Apple's runtime),
    size and metadata.json."""
    import json

    from ._coreml import package_size
    from tlc.runtime.coreai_runtime import CoreAIModel

    m = CoreAIModel(path)
    meta = json.loads((path / "metadata.json").read_text()) if (path / "metadata.json").is_file() else {}
    info = {"path": str(path), "format": "aimodel", "functions": m.functions, "size_bytes": package_size(path),
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, (s, d) in m.input_types.items()],
            "outputs": [{"name": n, "shape": list(s), "dtype": d} for n, (s, d) in m.output_types.items()],
            "metadata": meta}
    m.close()
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{path}  (Core AI asset, {meta.get('producer', '?')}, function {', '.join(m.functions)}, "
          f"{human(info['size_bytes'])})")
    for kind, rows in (("input", info["inputs"]), ("output", info["outputs"])):
        for r in rows:
            print(f"  {kind:<7} {r['name']:<24} {r['dtype']}{r['shape']}")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    import json

    from tlc.runtime import is_bundle, package_info

    if is_bundle(a.package):
        return _inspect_bundle(Path(a.package), a.json)
    from tlc.runtime.coreai_runtime import is_aimodel

    if is_aimodel(a.package):
        return _inspect_aimodel(Path(a.package), a.json)
    info = package_info(a.package, function_name=a.function)
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}  (mlprogram, spec v{info['specification_version']}, opset {info['opset']}, "
          f"precision {info['precision']}, {human(info['size_bytes'])})")
    if len(info.get("functions", [])) > 1:
        print(f"  functions {len(info['functions'])} (multifunction; default {info['default_function']}):")
        for name, shapes in info["function_inputs"].items():
            print(f"    {'*' if name == info['function'] else ' '} {name:<22} "
                  + ", ".join(f"{k} {v}" for k, v in shapes.items()))
        print(f"  function {info['function']}  (--function NAME shows another)")
    _print_io(info["inputs"], info["outputs"])
    if info["compression"]:
        from tlc.runtime.mil_interpreter import COMPRESSION_OPS

        print("  weights " + ", ".join(f"{n} {COMPRESSION_OPS[k]} ({k})" for k, n in info["compression"].items())
              + (f"  [tlc.compress = {info['metadata']['tlc.compress']}]" if "tlc.compress" in info["metadata"] else ""))
    for st in info.get("states", []):
        print(f"  state   {st['name']:<24} {st['dtype']}{st['shape']}")
    print(f"  ops     {info['num_ops']}  (" + ", ".join(f"{k} {v}" for k, v in info["ops"].items()) + ")")
    if "tlc.lm" in info["metadata"]:
        from tlc.runtime.generate import LMInfo

        lm = LMInfo.from_json(info["metadata"]["tlc.lm"])
        print(f"  lm      text generation: max_context {lm.max_context}, prefill {list(lm.prefill_lengths)} + decode, "
              f"cache {lm.kv_cache} {'float16' if lm.kv_cache == 'state' else 'float32'}{list(lm.cache_shape)}, vocab {lm.vocab_size} (tlc generate PKG --prompt-ids ...)")
    if info["short_description"]:
        print(f"  about   {info['short_description']}")
    for k, v in sorted(info["metadata"].items()):
        print(f"  meta    {k} = {v}")
    return 0


def _inspect_bundle(path: Path, as_json: bool) -> int:
    import json

    from ._coreml import package_size
    from tlc.runtime import BundleModel, package_info

    m = BundleModel(path, backend="interpreter").manifest  # validates the manifest and segment files
    for e in m["segments"]:
        if e["target"] == "ane" and e["path"].endswith(".aimodel"):
            md = path / e["path"] / "metadata.json"
            e["asset"] = json.loads(md.read_text()) if md.is_file() else {}
        elif e["target"] == "ane":
            e["package"] = package_info(path / e["path"])
    if as_json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{path}  (tlc bundle v{m['version']}, {len(m['segments'])} segments, precision {m['precision']}, "
          f"{m.get('minimum_os') or m['minimum_deployment_target']}, {human(package_size(path))})")
    _print_io(m["inputs"], m["outputs"])
    for e in m["segments"]:
        kind = ("Core AI" if e["path"].endswith(".aimodel") else "Core ML") if e["target"] == "ane" else "tlc fallback"
        print(f"  segment {e['index']:<3} {e['target']:<4} {kind:<13} {e['num_ops']:>4} ops  {e['path']}  "
              f"in: {', '.join(e['inputs'])}  out: {', '.join(e['outputs'])}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .modelfile import load_model_file
    from .verify import verify

    spec = load_model_file(a.model, entry=a.entry)
    opts = dict(spec.options)
    opts.pop("strict", None)
    report = verify(spec.model, spec.example_inputs, package=a.package, format=a.format,
                    precision=a.precision or opts.get("precision"),
                    minimum_deployment_target=a.minimum_deployment_target or opts.get("minimum_deployment_target", "iOS17"),
                    target=a.target or opts.get("target", "ane"),
                    io_dtype=a.io_dtype or opts.get("io_dtype", "float32"),
                    tol={"fp32": a.tol_fp32, "fp16": a.tol_fp16}, keep=a.output, force=a.force)
    print(report.text())
    return 0 if report.passed else 1


def cmd_profile(a: argparse.Namespace) -> int:
    from .api import build
    from .specialize import CompiledFunction
    from .modelfile import load_model_file
    from .profile import measure, write

    spec = load_model_file(a.model, entry=a.entry)
    model = spec.model.fn if isinstance(spec.model, CompiledFunction) else spec.model
    cm = build(model, spec.example_inputs, precision="fp32", target="cpu")
    rows = measure(cm.graph, cm.calibration[0], runs=a.runs)  # calibration[0]: the example inputs by name
    out = Path(a.output or Path(a.model).stem + ".profile.json")
    doc = write(out, {"cpu": rows}, source=str(spec.path))
    per_op: dict[str, float] = {}
    for r in rows:
        per_op[r["op"]] = per_op.get(r["op"], 0.0) + r["s"]
    print(f"profiled {len(rows)} ops of {spec.path} on the NumPy executor ({a.runs} runs, median): "
          f"{sum(per_op.values()) * 1e3:.1f} ms per run -> {out}")
    for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])[:10]:
        d = doc["backends"]["cpu"]["ops"][op]
        print(f"  {op:<30} {d['n']:>4} ops {t * 1e3:9.2f} ms  overhead {d['overhead_s'] * 1e6:8.1f} us  "
              f"{(1 / d['s_per_flop'] / 1e9 if d['s_per_flop'] else float('inf')):8.1f} GFLOP/s")
    return 0


def _placement_target(v: str) -> str:
    if v in ("ane", "gpu", "cpu"):
        return v
    hint = (f"; {v!r} looks like an OS version: use --minimum-deployment-target {v}"
            if v[:3].lower() in ("ios", "mac", "tvo", "wat", "vis") else "")
    raise argparse.ArgumentTypeError(f"must be ane, gpu or cpu{hint}")


def cmd_bench(a: argparse.Namespace) -> int:
    from . import bench
    from .modelfile import load_model_file

    spec = load_model_file(a.model, entry=a.entry)
    backends = [b for b in a.backends.split(",") if b]
    devs = [d for d in a.device.split(",") if d] if a.device else None
    caps = [c for c in (a.capture or "").split(",") if c]
    from .progress import note

    res = bench.bench(spec.model, spec.example_inputs, backends=backends, devices_=devs, captures=caps, runs=a.runs,
                      warmup=a.warmup, batch=a.batch, dtype=a.dtype, log=note)
    env = bench.environment()
    print(f"tlc bench {spec.path}  ({a.dtype}, {a.runs} runs after {a.warmup} warm-up, interleaved; "
          f"torch {env['torch']}{', ' + env['cuda_device'] if 'cuda_device' in env else ''})")
    print(bench.table(res))
    if a.json:
        Path(a.json).write_text(bench.to_json(res, model=str(spec.path), runs=a.runs, warmup=a.warmup,
                                              dtype=a.dtype, **env))
        print(f"wrote {a.json}")
    return 0


def _build_options(p: argparse.ArgumentParser) -> None:
    """The build options `tlc build` and `tlc verify` share."""
    p.add_argument("--precision", choices=["mixed", "fp16", "fp32"],
                   help="mixed (default): fp16 with fp32 islands where range analysis or the closed-loop check of the "
                        "package on the calibration samples finds fp16 unsafe; "
                        "fp16: everything; fp32: nothing (or the file's `precision`)")
    p.add_argument("--target", type=_placement_target, metavar="{ane,gpu,cpu}",
                   help="where capable ops run: ane (default: Core ML; the rest in tlc's fallback runtime), "
                        "gpu or cpu (everything in tlc's fallback runtime; precision defaults to fp32)")
    p.add_argument("--minimum-deployment-target", "--deployment-target", dest="minimum_deployment_target",
                   metavar="OS", help="Core ML minimum_deployment_target, e.g. iOS17 (default), iOS18, macOS14")
    p.add_argument("--io-dtype", choices=["float32", "float16"],
                   help="dtype of the package's float inputs/outputs: float32 (default) or float16 (iOS16+; "
                        "coremltools' ct.TensorType(dtype=np.float16)); or the file's `io_dtype`")
    p.add_argument("--entry", help="which @tlc.compile object to use when the file has several")


def make_parser() -> argparse.ArgumentParser:
    from .compress import MODES as COMPRESS_MODES

    p = argparse.ArgumentParser(
        prog="tlc",
        description="tlc: compile PyTorch models and tensor functions to Core ML .mlpackage files.",
    )
    p.add_argument("--version", action="version", version=f"tlc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "build",
        help="trace model.py and write a verified .mlpackage",
        description=(
            "Trace the model defined in MODEL (module-level `model` + `example_inputs`, or one function "
            "decorated with @tlc.compile(example_inputs=...)), lower it to tlc's IR and write a Core ML "
            "mlprogram package. The package is written to a temp path and renamed into place."
        ),
    )
    b.add_argument("model", help="path to model.py")
    b.add_argument("-o", "--output", help="output path (default: ./<model stem>.mlpackage, or <stem>.tlc when some "
                                          "ops need tlc's fallback runtime: then a .mlpackage suffix becomes .tlc)")
    _build_options(b)
    b.add_argument("--no-fallback", action="store_true",
                   help="demand one shippable .mlpackage: every op Core ML can hold goes there; fail (writing nothing) "
                        "listing each op that would need tlc's fallback runtime")
    b.add_argument("--compress", choices=list(COMPRESS_MODES),
                   help="compress conv/linear/matmul weights with coremltools (int8/int4: per-channel linear "
                        "quantization, int4 needs iOS18; palettizeN: a 2^N-entry k-means table per tensor; w8a8: "
                        "int8 weights and activations calibrated on the example/--calibration inputs, iOS17+); "
                        "embeddings and fp32 islands stay as they are")
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
    b.add_argument("--format", choices=["mlpackage", "aimodel", "both"], default=None,
                   help="mlpackage (default), aimodel (Apple's Core AI asset, iOS/macOS 27; needs the coreai extra) or "
                        "both (NAME.aimodel beside the package); -o NAME.aimodel implies aimodel")
    b.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    b.add_argument("--quiet", "-q", action="store_true",
                   help="no progress on stderr (it only shows on a terminal anyway)")
    b.add_argument("--no-cache", action="store_true",
                   help="do not use the persistent compile cache ($TLC_CACHE_DIR; `tlc cache info`): trace and build "
                        "from scratch, store nothing")
    b.add_argument("--strict-export", action="store_true", help="trace with torch.export(strict=True)")
    b.add_argument("--print-ir", action="store_true", help="print tlc's IR (after the passes) before emission")
    b.add_argument("--passes", metavar="A,B,C", help="run exactly these passes, in this order (empty: none)")
    b.add_argument("--skip-pass", action="append", metavar="NAME", help="leave this pass out (repeatable)")
    b.add_argument("--task", choices=["text-generation"],
                   help="text-generation: model.py defines a causal LM; build prefill/decode functions with the KV "
                        "cache as I/O into one multifunction package (tlc.build_lm)")
    from .lm_cli import add_generate_parser, add_lm_options

    add_lm_options(b)
    b.set_defaults(func=cmd_build)

    r = sub.add_parser("run", help="run an .mlpackage on .npy inputs (Core ML on macOS, tlc's MIL interpreter elsewhere)",
                       description="Run PKG on named inputs given as .npy files and print (or save) the outputs.")
    r.add_argument("package", help="path to an .mlpackage or a tlc bundle (NAME.tlc)")
    r.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="one per model input")
    r.add_argument("--out", metavar="DIR", help="save each output as DIR/<name>.npy")
    r.add_argument("--backend", choices=["auto", "coreml", "interpreter"], default="auto")
    r.add_argument("--fallback", default="auto", choices=["auto", "numpy", "torch"],
                   help="bundles: where fallback segments run (auto: gpu segments on tlc's torch-device executor "
                        "when a GPU is here, the rest on NumPy)")
    r.add_argument("--compute-units", default="ALL", choices=["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"],
                   help="Core ML compute units (macOS only)")
    r.add_argument("--function", default=None, help="function of a multifunction package (default: the one whose "
                                                    "input shapes match, else the smallest the inputs fit after padding)")
    r.add_argument("--paddable", action="append", metavar="NAME:AXIS[,AXIS]",
                   help="axes an input may be padded along to fit a function (default: as recorded at build time)")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("inspect", help="show an .mlpackage's inputs, outputs, ops, precision, size, metadata",
                       description="Describe PKG without running it.")
    i.add_argument("package", help="path to an .mlpackage or a tlc bundle (NAME.tlc)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument("--function", default=None, help="function of a multifunction package (default: its default function)")
    i.set_defaults(func=cmd_inspect)

    ln = sub.add_parser("lint", help="list every op of an .mlpackage that breaks an ANE eligibility or efficiency rule",
                        description="Check each op of PKG (any converter's mlprogram, or a tlc bundle's Core ML "
                                    "segments) against tlc's Neural Engine rules (Apple's neural_engine_rules.md and "
                                    "the sources in ane-rules.md): eligibility (the op will not run on the ANE) and "
                                    "efficiency (it runs but breaks a layout rule). Prints a per-rule summary (ops, "
                                    "FLOP share) and each finding with its source line for tlc packages. Exit code: "
                                    "0, or 1 with --fail-on when a rule of that kind (or worse) is broken; 2 for a "
                                    "package that cannot be read.")
    ln.add_argument("package", help="path to an .mlpackage or a tlc bundle (NAME.tlc)")
    ln.add_argument("--fail-on", choices=["eligibility", "efficiency"], default=None,
                    help="exit 1 if an op breaks an eligibility rule (eligibility) or any rule (efficiency)")
    ln.add_argument("--json", metavar="FILE", help="also write the findings as JSON")
    ln.add_argument("--all", action="store_true", help="list every finding (default: the first 40)")
    ln.set_defaults(func=cmd_lint)

    pr = sub.add_parser("profile", help="measure per-op costs of model.py on tlc's fallback runtime (for --profile)",
                        description="Run the model's IR on tlc's NumPy executor, time every op (median over --runs), "
                                    "fit seconds = overhead + FLOPs x s_per_flop per op kind and write a JSON profile "
                                    "that `tlc build --profile FILE` uses for placement decisions.")
    pr.add_argument("model", help="path to model.py (same convention as `tlc build`)")
    pr.add_argument("-o", "--output", help="profile path (default: ./<model stem>.profile.json)")
    pr.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up (default 5)")
    pr.add_argument("--entry", help="which @tlc.compile object to use when the file has several")
    pr.set_defaults(func=cmd_profile)

    v = sub.add_parser(
        "verify", help="build model.py (or take --package), run it in the MIL interpreter, compare with torch eager",
        description=("Per output: max abs error, relative L2 error, cosine similarity, NaN/inf count and PASS/FAIL. "
                     "On FAIL, names the first op whose value departs from tlc's reference runtime, with its "
                     "source line. Exit code 0 on PASS, 1 on FAIL."))
    v.add_argument("model", help="path to model.py (same convention as `tlc build`)")
    v.add_argument("--package", help="verify this existing .mlpackage instead of building one")
    v.add_argument("--format", choices=["mlpackage", "both"], default="mlpackage",
                   help="both: also build the Core AI .aimodel of the same program, run it in Apple's Core AI runtime, "
                        "and compare torch, the MIL interpreter and Core AI in one table (needs the coreai extra)")
    v.add_argument("-o", "--output", help="keep the built package at this path (default: a temp dir)")
    v.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    _build_options(v)
    v.add_argument("--tol-fp32", type=float, default=1e-5, help="rel-L2 tolerance for fp32 packages (default 1e-5)")
    v.add_argument("--tol-fp16", type=float, default=1e-2, help="rel-L2 tolerance for fp16/mixed packages (default 1e-2)")
    v.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (it only shows on a terminal)")
    v.set_defaults(func=cmd_verify)

    add_generate_parser(sub)
    ca = sub.add_parser("cache", help="show (info) or empty (clear) the persistent compile cache",
                        description="The persistent compile cache (tlc.cache): traces, plans and artifacts of earlier "
                                    "builds, keyed by versions, options, inputs, weights and source files.")
    ca.add_argument("action", choices=["info", "clear"])
    ca.add_argument("--json", action="store_true", help="info as JSON")
    ca.set_defaults(func=cmd_cache)

    bn = sub.add_parser(
        "bench", help="latency/throughput of model.py on each backend here, beside torch eager on the same device",
        description=("Trace model.py once, then time torch eager and tlc's backends (torch-device executor on "
                     "cpu/cuda/mps, NumPy executor, Core ML on macOS) in one process, interleaved round by round: "
                     "median and p90 latency, throughput, ratio to eager on the same device. See compiler/bench.py."))
    bn.add_argument("model", help="path to model.py (same convention as `tlc build`)")
    bn.add_argument("--entry", help="which @tlc.compile object to use when the file has several")
    bn.add_argument("--runs", type=int, default=50, help="timed calls per backend (default 50)")
    bn.add_argument("--warmup", type=int, default=10, help="untimed calls per backend first (default 10)")
    bn.add_argument("--batch", type=int, help="repeat/cut the example inputs' first axis to this size")
    bn.add_argument("--backends", default="eager,tlc-torch,tlc-numpy,coreml",
                    help="comma-separated subset of eager,tlc-torch,tlc-numpy,coreml (default: all available)")
    bn.add_argument("--device", help="torch devices for eager/tlc-torch, comma-separated (default: cpu + cuda/mps)")
    bn.add_argument("--capture", help="extra torch-executor captures to time: none,cuda_graph,compile,compile+cuda_graph")
    bn.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    bn.add_argument("--json", metavar="FILE", help="also write the results (with every run's time) as JSON")
    bn.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (it only shows on a terminal)")
    bn.set_defaults(func=cmd_bench)
    return p


def cmd_cache(a: argparse.Namespace) -> int:
    import json

    from .cache import Cache

    c = Cache()
    if a.action == "clear":
        n = c.clear()
        print(f"removed {n} entr{'y' if n == 1 else 'ies'} from {c.root}")
        return 0
    info = c.info()
    if a.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"tlc compile cache at {info['root']} ($TLC_CACHE_DIR)")
    print("  entries " + ", ".join(f"{n} {k}" for k, n in info["entries"].items()))
    print(f"  size    {human(info['bytes'])} of {human(info['max_bytes'])} ($TLC_CACHE_MAX_BYTES; least recently used "
          f"entries are evicted beyond it)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = make_parser()
    a = p.parse_args(argv)
    if not getattr(a, "func", None):
        p.print_help()
        return 2
    from . import progress

    was_quiet = progress._QUIET
    progress.set_quiet(was_quiet or bool(getattr(a, "quiet", False)))
    try:
        return a.func(a)
    except TlcError as e:
        if os.environ.get("TLC_DEBUG"):
            traceback.print_exc()
        print(f"tlc {a.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"tlc {a.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in tlc or an unexpected environment: still one paragraph
        if os.environ.get("TLC_DEBUG"):
            traceback.print_exc()
        print(f"tlc {a.command}: internal error: {type(e).__name__}: {e}. This is a bug in tlc unless the "
              f"message says otherwise; rerun with TLC_DEBUG=1 for the traceback.", file=sys.stderr)
        return 3
    finally:
        progress.set_quiet(was_quiet)


if __name__ == "__main__":
    sys.exit(main())
