"""``tlc`` command line.

    tlc build model.py [-o OUT] [--format mlpackage|aimodel|both] [--precision mixed|fp16|fp32] [--target ane|gpu|cpu]
              [--minimum-deployment-target iOS17] [--io-dtype float16] [--no-fallback] [--calibration F.npz]
              [--compress int8|int4|palettize4|palettize6|palettize8]
              [--report] [--report-json F]
              [--report-html F] [--force]
              [--class-labels FILE] [--author A] [--license L] [--model-version V] [--description D] [--metadata K=V]
    tlc build DIR --task TASK [--sequence-length N] ...   (a Hugging Face model directory, exporters' task names)
    tlc run PKG|BUNDLE|ASSET.aimodel --input NAME=FILE.npy|IMAGE.png ... [--out DIR] [--top K] [--backend auto|coreml|interpreter]
    tlc inspect PKG|BUNDLE|ASSET.aimodel [--json] [--function NAME]
    tlc lint PKG|BUNDLE [--fail-on eligibility|efficiency] [--json F] [--all]
    tlc cache info|clear [--json]
    tlc verify model.py [--package PKG] [--format mlpackage|both] [--precision fp16|fp32] [--tol-fp32 1e-5] [--tol-fp16 1e-2]
    tlc bench model.py [--runs 50] [--warmup 10] [--batch B] [--backends eager,tlc-torch,...] [--json FILE]

Errors tlc knows about print one paragraph (what, where) to stderr and exit non-zero
(:attr:`tlc.errors.TlcError.exit_code`); ``TLC_DEBUG=1`` adds the Python traceback.

One module per command group: :mod:`.build` (``build``), :mod:`.run` (``run``, ``inspect``,
``lint``), :mod:`.tools` (``verify``, ``profile``, ``bench``, ``cache``), :mod:`.lm` (``generate``);
:mod:`.modelfile` loads model files and merges their options with the flags, :mod:`.parse` reads
option values, :mod:`.output` prints what a build made.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from tlc.errors import TlcError
from tlc.util import progress
from tlc.version import __version__

from . import build, lm, run, tools


def make_parser() -> argparse.ArgumentParser:
    """The ``tlc`` argument parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog="tlc",
        description="tlc: compile PyTorch models and tensor functions to Core ML .mlpackage files.",
    )
    p.add_argument("--version", action="version", version=f"tlc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    build.add_parser(sub)
    run.add_parsers(sub)
    tools.add_parsers(sub)
    lm.add_generate_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = make_parser()
    a = p.parse_args(argv)
    if not getattr(a, "func", None):
        p.print_help()
        return 2
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

