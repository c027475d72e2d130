"""``tlc`` command line.

    tlc build model.py [-o OUT.mlpackage] [--precision fp16|fp32] [--target iOS17] [--force]

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
from .errors import TlcError


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit.replace('B', 'iB') if unit != 'B' else unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def cmd_build(a: argparse.Namespace) -> int:
    from .api import CompiledFunction, build
    from .emit import check_output_path, package_size
    from .modelfile import load_model_file

    t0 = time.perf_counter()
    out = check_output_path(Path(a.output) if a.output else Path(Path(a.model).stem + ".mlpackage"), a.force)
    spec = load_model_file(a.model, entry=a.entry)
    t_load = time.perf_counter() - t0
    opts = dict(spec.options)
    opts.pop("strict", None)
    if a.precision:
        opts["precision"] = a.precision
    if a.target:
        opts["minimum_deployment_target"] = a.target
    if isinstance(spec.model, CompiledFunction) and not a.strict_export:
        # traced already when the file was imported (eager example_inputs=): reuse that trace
        cm = spec.model.compiled_for(spec.example_inputs).with_options(**opts)
    else:
        model = spec.model.fn if isinstance(spec.model, CompiledFunction) else spec.model
        cm = build(model, spec.example_inputs, strict=a.strict_export, **opts)
    if a.print_ir:
        from .ir import format_graph

        print(format_graph(cm.graph, show_loc=True))
    path = cm.save(out, force=a.force)
    total = time.perf_counter() - t0
    g = cm.graph
    t = cm.timings
    hist = ", ".join(f"{k} {v}" for k, v in list(g.op_histogram().items())[:8])
    more = len(g.op_histogram()) - 8
    print(f"built {path}  ({cm.precision}, {cm.minimum_deployment_target}) from {spec.path}")
    for v in g.inputs:
        print(f"  input   {v.name:<24} {v.type}")
    for n, v in zip(g.output_names, g.outputs):
        print(f"  output  {n:<24} {v.type}")
    print(f"  ops     {g.num_ops}  ({hist}{', ...' if more > 0 else ''})")
    print(f"  size    {_human(package_size(path))}  (weights {_human(g.weight_bytes())} in fp32)")
    print(f"  time    {total:.2f} s  (load {t_load:.2f}, export {t['export']:.2f}, decompose {t['decompose']:.2f}, "
          f"lower {t['lower']:.2f}, emit {t.get('emit_mil', 0):.2f}, convert {t.get('convert', 0):.2f}, "
          f"save {t.get('save', 0):.2f})")
    return 0


def make_parser() -> argparse.ArgumentParser:
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
    b.add_argument("-o", "--output", help="output .mlpackage path (default: ./<model stem>.mlpackage)")
    b.add_argument("--precision", choices=["fp16", "fp32"], help="compute precision (default fp16, or the file's `precision`)")
    b.add_argument("--target", help="minimum_deployment_target, e.g. iOS17 (default), iOS18, macOS14")
    b.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    b.add_argument("--entry", help="which @tlc.compile object to build when the file has several")
    b.add_argument("--strict-export", action="store_true", help="trace with torch.export(strict=True)")
    b.add_argument("--print-ir", action="store_true", help="print tlc's IR before emission")
    b.set_defaults(func=cmd_build)
    return p


def main(argv: list[str] | None = None) -> int:
    p = make_parser()
    a = p.parse_args(argv)
    if not getattr(a, "func", None):
        p.print_help()
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
