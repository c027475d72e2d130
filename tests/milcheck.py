"""Shared helpers of the per-op MIL interpreter tests (tests/test_mil_*.py): build a MIL program
with coremltools' Builder, convert, save, run it in :class:`tlc.runtime.MILInterpreter`, and
compare with a float64 torch reference.


Every MIL op the interpreter supports (every key of ``tlc.ops.OPS`` except ``const``) is built
with coremltools' MIL Builder over its attribute combinations, converted by ``ct.convert`` with
tlc's pass pipeline at FLOAT32 and FLOAT16 compute precision, saved, loaded and run by
:class:`tlc.runtime.MILInterpreter`, and compared with an independent torch reference computed in
float64:

* fp32 packages: rel-L2 <= 1e-5 (exact for int/bool results);
* fp16 packages: rel-L2 <= 1e-2 (exact for int/bool results), no NaN/inf where the reference is
  finite. With FLOAT16 coremltools casts the fp32 inputs (and const weights) to fp16, so the
  reference is computed from the fp16-rounded values: the tolerance measures the op, not the
  input rounding.

Each test also asserts that the op under test is present in the converted package (so that no
coremltools pass folded it away and the test is not vacuous).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

from tlc.runtime import MILInterpreter

PRECISIONS = ("fp32", "fp16")
TOL = {"fp32": 1e-5, "fp16": 1e-2}
_COMPUTE = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}
_count = itertools.count()


# ----------------------------------------------------------------------------------- helpers


#: coremltools' own fp16 conversion, minimal: these tests check the interpreter on programs that
#: coremltools casts to fp16 (tlc's packages get their fp16 from tlc's IR instead).
FP16_PIPELINE = [
    "common::dedup_op_and_var_names",  # add_fp16_cast relies on its unique-name cache
    "common::add_fp16_cast",  # removed by ct.convert for compute_precision=FLOAT32
    "common::update_output_dtypes",
    "common::const_elimination",
    "common::dead_code_elimination",
    "common::cast_optimization",
    "common::dead_code_elimination",
]


def run_mil(tmp_path, build, inputs, precision, op, target=None, expect_fp16=True):
    """Build ``main(**inputs)`` with the MIL Builder (``build(**vars)`` returns a Var or a list
    of Vars), convert it at ``precision`` with tlc's pass pipeline, save it under ``tmp_path``,
    check that MIL op ``op`` is in the package, run it with :class:`MILInterpreter` and return
    the outputs as a list of arrays. For an fp16 package with float inputs, ``expect_fp16``
    asserts that some op computes in fp16 (that the FLOAT16 conversion took effect).

    Float inputs are fp32 placeholders, int inputs int32. Core ML has no bool I/O: a bool input
    is an int32 placeholder cast to bool inside the program, a bool output is cast to int32 and
    turned back into bool here (after checking it holds only 0/1).
    """
    target = target or ct.target.iOS17
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    feeds, phs = {}, {}
    for name, a in inputs.items():
        if a.dtype.kind == "f":
            feeds[name], dt = a.astype(np.float32), types.fp32
        elif a.dtype.kind in "iub":
            feeds[name], dt = a.astype(np.int32), types.int32
        else:
            raise TypeError(a.dtype)
        phs[name] = mb.placeholder(shape=a.shape, dtype=dt)
    with Function(phs, opset_version=target) as func:
        args = {n: (mb.cast(x=func.inputs[n], dtype="bool", name=f"{n}_bool") if inputs[n].dtype == np.bool_
                    else func.inputs[n]) for n in inputs}
        outs = build(**args)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        is_bool = [o.dtype == types.bool for o in outs]
        outs = [mb.cast(x=o, dtype="int32", name=f"out{i}_int") if b else o for i, (o, b) in enumerate(zip(outs, is_bool))]
        func.set_outputs(outs)
    prog = Program()
    prog.add_function("main", func)
    pipeline = ct.PassPipeline(pass_names=list(FP16_PIPELINE), pipeline_name="t")
    path = tmp_path / f"{op}_{precision}_{next(_count)}.mlpackage"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        model = ct.convert(prog, convert_to="mlprogram", compute_precision=_COMPUTE[precision],
                           minimum_deployment_target=target, pass_pipeline=pipeline, skip_model_load=True)
        model.save(str(path))
    interp = MILInterpreter(path)
    hist = interp.op_histogram()
    assert op in hist, f"op {op} is not in the converted package (ops: {hist})"
    if expect_fp16 and precision == "fp16" and any(a.dtype.kind == "f" for a in inputs.values()):
        from tlc.runtime.mil_interpreter import _walk

        assert any(_is_fp16(o) for o in _walk(interp._ops)), "the FLOAT16 package computes nothing in fp16"
    res = interp.run(feeds)
    got = [res[n] for n in interp.outputs]
    for i, b in enumerate(is_bool):
        if b:
            assert got[i].dtype == np.int32 and set(np.unique(got[i]).tolist()) <= {0, 1}, got[i]
            got[i] = got[i].astype(bool)
    return got


def _is_fp16(op):
    return op.outputs and op.outputs[0].dtype == types.fp16


def R(a, precision):
    """The value a package computes with, as a torch tensor: float arrays in float64 (rounded to
    fp16 first for an fp16 package), int/bool arrays unchanged."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        if precision == "fp16":
            with np.errstate(over="ignore"):  # values above 65504 become inf, as in the package
                a = a.astype(np.float16)
        return torch.from_numpy(a.astype(np.float64))
    return torch.from_numpy(a.copy())


def check(got, ref, precision, what=""):
    """Compare an interpreter output with the float64 torch reference (see module docstring)."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{what}: shape {list(got.shape)}, reference {list(ref.shape)}"
    if ref.dtype == np.bool_:
        assert got.dtype == np.bool_, f"{what}: dtype {got.dtype}, expected bool"
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return
    if ref.dtype.kind in "iu":
        assert got.dtype.kind in "iu", f"{what}: dtype {got.dtype}, expected an integer dtype"
        np.testing.assert_array_equal(got.astype(np.int64), ref.astype(np.int64), err_msg=what)
        return
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}, expected float32"
    g = got.astype(np.float64)
    fin = np.isfinite(ref)
    bad = fin & ~np.isfinite(g)
    assert not bad.any(), f"{what}: {precision} output has {int(bad.sum())} NaN/inf where the reference is finite"
    if not fin.all():  # where the reference overflows (inf) the output must hold the same value
        np.testing.assert_array_equal(g[~fin], ref[~fin], err_msg=what)
        g, ref = np.where(fin, g, 0.0), np.where(fin, ref, 0.0)
    err = float(np.linalg.norm((g - ref).ravel()) / max(float(np.linalg.norm(ref.ravel())), 1e-30))
    if not err <= TOL[precision]:
        d = np.abs(g - ref)
        i = np.unravel_index(np.nanargmax(np.where(np.isnan(d), np.inf, d)), d.shape) if d.size else ()
        raise AssertionError(f"{what}: rel-L2 error {err:.3g} > {TOL[precision]} ({precision}); worst at {i}: "
                             f"got {g[i]!r}, reference {ref[i]!r}")


def check_all(got, refs, precision, labels=None):
    assert len(got) == len(refs)
    for i, (g, r) in enumerate(zip(got, refs)):
        check(g, r, precision, labels[i] if labels else f"output {i}")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def f32(a):
    return np.asarray(a, dtype=np.float32)


precisions = pytest.mark.parametrize("precision", PRECISIONS)



def same_pads(pad_type, in_sp, kernel, strides, dilations):
    """MIL pad_type same / same_lower as explicit (before, after) pairs: output = ceil(in /
    stride), total = max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0); 'same' puts the
    odd unit after, 'same_lower' before."""
    pads = []
    for i, k, s, d in zip(in_sp, kernel, strides, dilations):
        out = math.ceil(i / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - i, 0)
        lo, hi = total // 2, total - total // 2
        pads += [hi, lo] if pad_type == "same_lower" else [lo, hi]
    return pads


def explicit_pads(pad_type, pad, in_sp, kernel, strides, dilations):
    if pad_type == "valid":
        return [0] * (2 * len(in_sp))
    if pad_type == "custom":
        return list(pad)
    return same_pads(pad_type, in_sp, kernel, strides, dilations)


def torch_pad(p):
    """MIL pad lists (before, after) from the first padded axis on; F.pad from the last axis."""
    pairs = [p[i:i + 2] for i in range(0, len(p), 2)]
    return [v for pair in reversed(pairs) for v in pair]
