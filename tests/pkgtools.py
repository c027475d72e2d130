"""Test helpers: packages damaged on purpose (weights, manifests) — no mocks: real files — and
the ``tlc`` CLI run in this process (:func:`run_tlc`)."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import struct
from pathlib import Path

import numpy as np


def weight_blob_of(package: Path, op_name: str, input_name: str = "weight") -> tuple[Path, int, int]:
    """(weight file, data offset, data bytes) of the const feeding ``input_name`` of the MIL op
    emitted for IR node ``op_name`` (``op_name`` or ``op_name_cast_fp16``)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    m = ct.models.MLModel(str(package), skip_model_load=True)
    spec = m.get_spec()
    prog = milproto_load(spec, spec.specificationVersion, m.weights_dir)
    ops = [op for op in prog.functions["main"].operations if op.name in (op_name, op_name + "_cast_fp16")]
    assert ops, f"no MIL op for {op_name}"
    const_name = ops[0].inputs[input_name].name
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                if op.type == "const" and op.outputs[0].name == const_name:
                    bf = op.attributes["val"].blobFileValue
                    wfile = Path(m.weights_dir) / bf.fileName.replace("@model_path/weights/", "")
                    with open(wfile, "rb") as f:
                        f.seek(bf.offset)
                        meta = f.read(64)
                    # MILBlob v2 metadata: uint32 sentinel, uint32 dtype, uint64 size, uint64 data offset
                    _, _, size, data_offset = struct.unpack("<IIQQ", meta[:24])
                    return wfile, data_offset, size
    raise AssertionError(f"const {const_name} is not stored in a weight file")


def corrupt_weights(package: Path, copy_to: Path, op_name: str) -> Path:
    """Copy ``package`` and overwrite the weights of ``op_name`` in the copy with large noise."""
    shutil.copytree(package, copy_to)
    wfile, off, size = weight_blob_of(copy_to, op_name)
    noise = np.random.default_rng(0).standard_normal(size // 2).astype(np.float16) * 50
    with open(wfile, "r+b") as f:
        f.seek(off)
        f.write(noise.tobytes()[:size])
    return copy_to


def run_tlc(*args, cwd=None) -> subprocess.CompletedProcess:
    """``tlc ARGS`` as ``tlc.cli.main`` in this process, with the working directory (``cwd``),
    environment (no ``TLC_DEBUG``), bytecode setting and stdout/stderr of a fresh run: the same
    exit code and output as ``python -m tlc.cli ARGS`` without paying torch's and coremltools'
    import (~4 s) per call. argparse's ``SystemExit`` becomes the return code. The README's own
    commands still run as processes (tests/test_examples.py, the ``--help`` test)."""
    from tlc.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_bc, old_debug = os.getcwd(), sys.dont_write_bytecode, os.environ.pop("TLC_DEBUG", None)
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.dont_write_bytecode = True
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(old_cwd)
        sys.dont_write_bytecode = old_bc
        if old_debug is not None:
            os.environ["TLC_DEBUG"] = old_debug
    return subprocess.CompletedProcess([str(a) for a in args], rc, out.getvalue(), err.getvalue())
