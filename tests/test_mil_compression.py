"""MIL weight-compression ops (``constexpr_*``) and iOS17 ``quantize``/``dequantize`` in tlc's
interpreter (issue 12).

Two kinds of check:

* **Per op** (Builder programs, fp32 and fp16): each op's output, added to a program input so the
  package computes something, against a float64 NumPy reference written from coremltools' op
  docstrings (the worked examples of ``iOS18/compression.py`` are used verbatim where given).
  iOS16's bit-packed forms are packed with coremltools' own ``pack_elements_into_bits``.
* **Packages compressed by ``coremltools.optimize.coreml``** (4-bit palettized per tensor and per
  grouped channel, int8 per channel, 4-bit per block, 50% sparse + 4-bit palettized; iOS16 and
  iOS18 forms): the weights the interpreter decompresses equal coremltools'
  ``materialized_val_inference`` of the same op exactly, and the outputs match the uncompressed
  package within the compression's error (documented in docs/interpreter.md).
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.optimize._utils import pack_elements_into_bits

from milcheck import check, f32, precisions, run_mil
from tlc.runtime import MILInterpreter

INTERPRETER_ONLY = {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_cast",
           "constexpr_lut_to_dense", "constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale",
           "constexpr_sparse_to_dense", "quantize", "dequantize"}

iOS16, iOS17, iOS18 = ct.target.iOS16, ct.target.iOS17, ct.target.iOS18


def _plus(tmp_path, const_fn, shape, precision, op, target, rng, ref_const):
    """Run ``x + const_fn()`` and compare with ``x + ref_const`` (float64)."""
    x = f32(rng.normal(size=shape))

    def build(x):
        c = const_fn()
        return mb.add(x=x, y=mb.cast(x=c, dtype="fp32") if c.dtype != types.fp32 else c)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, op, target=target)
    xr = x.astype(np.float16).astype(np.float64) if precision == "fp16" else x.astype(np.float64)
    check(got, xr + ref_const, precision, op)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------- iOS18 forms

# iOS18/compression.py constexpr_lut_to_dense, "Case 1: per-group scalar palettization"
CASE1_INDICES = np.array([2, 3, 3, 0, 1, 0, 3, 0, 2, 1, 0, 3]).reshape(6, 2)
CASE1_LUT = np.array([1.0, 5.0, 9.0, 13.0, 2.0, 10.0, 18.0, 26.0]).reshape(2, 1, 4, 1)
CASE1_OUT = np.array([[9.0, 13.0], [13.0, 1.0], [5.0, 1.0], [26.0, 2.0], [18.0, 10.0], [2.0, 26.0]])


@precisions
def test_lut_to_dense_per_group(precision, rng, tmp_path):
    lut_dt = np.float16 if precision == "fp16" else np.float32
    _plus(tmp_path, lambda: mb.constexpr_lut_to_dense(indices=CASE1_INDICES.astype(types.np_uint2_dtype),
                                            lut=CASE1_LUT.astype(lut_dt)),
          (6, 2), precision, "constexpr_lut_to_dense", iOS18, rng, CASE1_OUT)


@precisions
@pytest.mark.parametrize("vector_axis", [1, 2])
def test_lut_to_dense_vector(vector_axis, precision, rng, tmp_path):
    """Case 2 (1-bit vector palettization, VECTOR_SIZE 3) of the same docstring."""
    idx = np.array([[[0, 0], [1, 0]], [[1, 1], [0, 0]]])
    a, b = [0.5, -1.0, 2.0], [3.0, 0.25, -4.0]
    lut = np.array([a, b]).reshape(1, 1, 1, 2, 3)
    cent = np.array([a, b])
    # out[n, j*3 + v, k] = cent[idx[n, j, k], v] (axis 1); out[n, j, k*3 + v] (axis 2)
    if vector_axis == 1:
        ref = np.moveaxis(cent[idx], 3, 2).reshape(2, 6, 2)
    else:
        ref = cent[idx].reshape(2, 2, 6)
    dt = np.float16 if precision == "fp16" else np.float32
    _plus(tmp_path, lambda: mb.constexpr_lut_to_dense(indices=idx.astype(types.np_uint1_dtype), lut=lut.astype(dt),
                                            vector_axis=np.int32(vector_axis)),
          ref.shape, precision, "constexpr_lut_to_dense", iOS18, rng, ref)


@precisions
@pytest.mark.parametrize("form", ["int8", "int4_offset", "uint4_offset_float"])
def test_blockwise_shift_scale(form, precision, rng, tmp_path):
    """output = scale[i // bs0, j // bs1] * (data - offset[...]): per-channel rows and 4-wide blocks."""
    shape, sshape = (4, 8), (4, 2)
    dt = np.float16 if precision == "fp16" else np.float32
    scale = rng.uniform(0.05, 0.2, sshape).astype(dt)
    if form == "int8":
        data, offset = rng.integers(-128, 128, shape), None
        args = dict(data=data.astype(np.int8))
    elif form == "int4_offset":
        data, offset = rng.integers(-8, 8, shape), rng.integers(-8, 8, sshape)
        args = dict(data=data.astype(types.np_int4_dtype), offset=offset.astype(types.np_int4_dtype))
    else:
        data, offset = rng.integers(0, 16, shape), rng.uniform(4, 10, sshape).astype(dt)
        args = dict(data=data.astype(types.np_uint4_dtype), offset=offset)
    s = np.repeat(scale.astype(np.float64), 4, axis=1)
    o = 0 if offset is None else np.repeat(np.asarray(offset, np.float64), 4, axis=1)
    _plus(tmp_path, lambda: mb.constexpr_blockwise_shift_scale(scale=scale, **args), shape, precision,
          "constexpr_blockwise_shift_scale", iOS18, rng, s * (data - o))


MASK = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 1], [0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]])


@precisions
def test_sparse_to_dense(precision, rng, tmp_path):
    nz = rng.normal(size=int(MASK.sum()))
    dense = np.zeros(MASK.shape)
    dense[MASK == 1] = nz
    dt = np.float16 if precision == "fp16" else np.float32
    _plus(tmp_path, lambda: mb.constexpr_sparse_to_dense(nonzero_data=nz.astype(dt), mask=MASK.astype(types.np_uint1_dtype)),
          MASK.shape, precision, "constexpr_sparse_to_dense", iOS18, rng,
          np.where(MASK == 1, dense.astype(dt).astype(np.float64), 0.0))


@precisions
@pytest.mark.parametrize("vector", [False, True])
def test_lut_to_sparse(vector, precision, rng, tmp_path):
    """The docstring's example: indices_mask [4, 6], 1-bit indices, scalar LUT {0: 2, 1: 3} or the
    vector LUT [[2, 2], [3, 3]] along axis 0; followed by constexpr_sparse_to_dense."""
    nzi = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1])
    dt = np.float16 if precision == "fp16" else np.float32
    lut = (np.array([[2.0, 2.5], [3.0, 3.5]]).reshape(1, 1, 2, 2) if vector
           else np.array([2.0, 3.0]).reshape(1, 1, 2, 1)).astype(dt)
    if vector:
        cent = np.array([[2.0, 2.5], [3.0, 3.5]])
        ref = np.zeros((8, 6))
        for (r, c), i in zip(np.argwhere(MASK == 1), nzi):
            ref[2 * r: 2 * r + 2, c] = cent[i]
    else:
        ref = np.zeros((4, 6))
        ref[MASK == 1] = np.array([2.0, 3.0])[nzi]

    def const():
        kw = {"vector_axis": np.int32(0)} if vector else {}
        m, v = mb.constexpr_lut_to_sparse(indices_mask=MASK.astype(types.np_uint1_dtype),
                                          indices_nonzero_data=nzi.astype(types.np_uint1_dtype), lut=lut, **kw)
        return mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m)

    _plus(tmp_path, const, ref.shape, precision, "constexpr_lut_to_sparse", iOS18, rng, ref)


@precisions
def test_sparse_blockwise_shift_scale(precision, rng, tmp_path):
    """The docstring's example: per-column scale [0.1 .. 0.4] and offset [1 .. 4] over a sparse
    [4, 4] int8 tensor, followed by constexpr_sparse_to_dense."""
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]])
    nz = np.array([10, 11, 3, 4, 5, 6, 7, 8, 9])
    dt = np.float16 if precision == "fp16" else np.float32
    scale, offset = np.array([[0.1, 0.2, 0.3, 0.4]]), np.array([[1, 2, 3, 4]])
    ref = np.zeros((4, 4))
    ref[mask == 1] = nz
    ref = np.where(mask == 1, (ref - offset) * scale.astype(dt).astype(np.float64), 0.0)

    def const():
        m, v = mb.constexpr_sparse_blockwise_shift_scale(
            data_mask=mask.astype(types.np_uint1_dtype), nonzero_data=nz.astype(np.int8),
            scale=scale.astype(dt), offset=offset.astype(np.int8))
        return mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m)

    _plus(tmp_path, const, (4, 4), precision, "constexpr_sparse_blockwise_shift_scale", iOS18, rng, ref)


# ---------------------------------------------------------------------------------- iOS16 forms

@precisions
@pytest.mark.parametrize("axis", [0, 1])
def test_affine_dequantize(axis, precision, rng, tmp_path):
    q = rng.integers(0, 256, (3, 5))
    n = q.shape[axis]
    zp, sc = rng.integers(100, 150, n), rng.uniform(0.01, 0.1, n)
    dt = np.float16 if precision == "fp16" else np.float32
    bshape = (-1, 1) if axis == 0 else (1, -1)
    ref = sc.astype(dt).astype(np.float64).reshape(bshape) * (q - zp.reshape(bshape))
    _plus(tmp_path, lambda: mb.constexpr_affine_dequantize(quantized_data=q.astype(np.uint8), zero_point=zp.astype(np.uint8),
                                                 scale=sc.astype(dt), axis=axis),
          q.shape, precision, "constexpr_affine_dequantize", iOS16, rng, ref)


@precisions
@pytest.mark.parametrize("nbits", [1, 2, 4, 6])
def test_lut_to_dense_ios16(nbits, precision, rng, tmp_path):
    shape = (5, 7)  # 35 elements: the packed buffer does not end on a byte boundary
    idx = rng.integers(0, 2 ** nbits, shape)
    lut = rng.normal(size=2 ** nbits)
    dt = np.float16 if precision == "fp16" else np.float32
    packed = pack_elements_into_bits(idx.ravel().astype(np.uint8), nbits)
    _plus(tmp_path, lambda: mb.constexpr_lut_to_dense(lut=lut.astype(dt), indices=packed, shape=np.uint32(shape)),
          shape, precision, "constexpr_lut_to_dense", iOS16, rng, lut.astype(dt).astype(np.float64)[idx])


@precisions
def test_sparse_to_dense_ios16(precision, rng, tmp_path):
    shape = (3, 7)
    mask = rng.integers(0, 2, shape)
    nz = rng.normal(size=int(mask.sum()))
    dt = np.float16 if precision == "fp16" else np.float32
    ref = np.zeros(shape)
    ref[mask == 1] = nz.astype(dt)
    packed = np.packbits(mask.ravel().astype(np.uint8), bitorder="little")
    _plus(tmp_path, lambda: mb.constexpr_sparse_to_dense(nonzero_data=nz.astype(dt), mask=packed, shape=np.uint32(shape)),
          shape, precision, "constexpr_sparse_to_dense", iOS16, rng, ref)


@precisions
def test_constexpr_cast(precision, rng, tmp_path):
    w = rng.normal(size=(3, 4)).astype(np.float16)
    _plus(tmp_path, lambda: mb.constexpr_cast(source_val=w, output_dtype="fp32"), (3, 4), precision, "constexpr_cast",
          iOS16, rng, w.astype(np.float64))


# ------------------------------------------------------------------------ quantize / dequantize

@precisions
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_dequantize(dtype, per_channel, precision, rng, tmp_path):
    """quantize: clip(round_half_even(x / s) + zp); dequantize: (q - zp) * s. Values include .5
    ties and some beyond the int range (clipped). The division is the fp32 one (the op's inputs
    are fp32 or fp16; coremltools' value_inference divides in float32 too): -0.75 / fp32(0.1) is
    -7.5 in float32, -7.4999999 in float64."""
    x = f32(rng.normal(0, 3, (4, 6)))
    x.ravel()[:4] = [0.25, -0.75, 40.0, -40.0]
    s = np.array([0.1, 0.2, 0.5, 0.05])[:, None] if per_channel else np.array(0.1)
    zp = (np.array([3, -2, 0, 5]) if dtype == "int8" else np.array([128, 120, 130, 125]))[:, None] if per_channel \
        else np.array(3 if dtype == "int8" else 128)
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    kw = {"axis": 0} if per_channel else {}
    fdt = np.float16 if precision == "fp16" else np.float32
    sv, zv = (s.ravel() if per_channel else s), (zp.ravel() if per_channel else zp)

    def build(x):
        if precision == "fp16":
            x = mb.cast(x=x, dtype="fp16")
        q = mb.quantize(input=x, scale=sv.astype(fdt), zero_point=zv.astype(dtype), output_dtype=dtype, **kw)
        dq = mb.dequantize(input=q, scale=sv.astype(fdt), zero_point=zv.astype(dtype), **kw)
        return [mb.cast(x=q, dtype="int32"), mb.cast(x=dq, dtype="fp32") if precision == "fp16" else dq]

    q_got, dq_got = run_mil(tmp_path, build, {"x": x}, precision, "quantize", target=iOS17)
    xr = x.astype(np.float16).astype(np.float64) if precision == "fp16" else x.astype(np.float64)
    sr = s.astype(fdt).astype(np.float64)
    q = np.clip(np.round((xr.astype(np.float32) / sr.astype(np.float32)).astype(np.float64)) + zp, lo, hi)
    np.testing.assert_array_equal(q_got, q.astype(np.int32))
    check(dq_got, (q - zp) * sr, precision, "dequantize")


# ----------------------------------------------------------- packages from coremltools.optimize

W_SHAPE = (64, 32)
CONFIGS = {
    # name: (compress(model), opset, rel-L2 bound against the uncompressed package: the compression's
    # error on N(0, 1) weights, measured with this test's seed and rounded up; 50% magnitude pruning
    # alone removes ~0.45 of a Gaussian weight's norm)
    "palettize4": (lambda m: cto.palettize_weights(m, cto.OptimizationConfig(
        cto.OpPalettizerConfig(nbits=4, mode="kmeans", weight_threshold=0))), iOS18, 0.25),
    "palettize4_grouped": (lambda m: cto.palettize_weights(m, cto.OptimizationConfig(
        cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_grouped_channel", group_size=16,
                               weight_threshold=0))), iOS18, 0.25),
    "int8_per_channel": (lambda m: cto.linear_quantize_weights(m, cto.OptimizationConfig(
        cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=0))), iOS18, 0.02),
    "int4_per_block": (lambda m: cto.linear_quantize_weights(m, cto.OptimizationConfig(
        cto.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_block", block_size=8,
                                    weight_threshold=0))), iOS18, 0.1),
    "sparse_palettize4": (lambda m: cto.palettize_weights(cto.prune_weights(m, cto.OptimizationConfig(
        cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0))), cto.OptimizationConfig(
        cto.OpPalettizerConfig(nbits=4, mode="kmeans", weight_threshold=0)), joint_compression=True), iOS18, 0.6),
    "palettize4_ios16": (lambda m: cto.palettize_weights(m, cto.OptimizationConfig(
        cto.OpPalettizerConfig(nbits=4, mode="kmeans", weight_threshold=0))), iOS16, 0.25),
    "int8_ios16": (lambda m: cto.linear_quantize_weights(m, cto.OptimizationConfig(
        cto.OpLinearQuantizerConfig(mode="linear", dtype="int8", weight_threshold=0))), iOS16, 0.02),
    "sparse_ios16": (lambda m: cto.prune_weights(m, cto.OptimizationConfig(
        cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0))), iOS16, 0.6),
}


def _quiet(fn, *a, **k):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@precisions
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_optimize_package(name, precision, tmp_path):
    """A conv + linear model compressed by coremltools.optimize.coreml: decompressed weights equal
    coremltools' own decompression bit for bit; outputs match the uncompressed package."""
    compress, target, bound = CONFIGS[name]
    rng = np.random.default_rng(1)
    wc, wl = f32(rng.normal(size=(W_SHAPE[1], 4, 3, 3))), f32(rng.normal(size=W_SHAPE))

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4, 6, 6))], opset_version=target)
    def prog(x):
        y = mb.conv(x=x, weight=wc, pad_type="same")
        y = mb.reduce_mean(x=y, axes=[2, 3])
        return mb.linear(x=y, weight=wl)

    model = _quiet(ct.convert, prog, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
                   compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    plain, small = tmp_path / "plain.mlpackage", tmp_path / "small.mlpackage"
    model.save(str(plain))
    _quiet(compress, model).save(str(small))
    x = f32(rng.normal(size=(2, 4, 6, 6)))
    ref = list(MILInterpreter(plain).run({"x": x}).values())[0].astype(np.float64)
    interp = MILInterpreter(small)
    constexpr = [op for op in interp._all_ops if op.op_type.startswith("constexpr_")]
    assert constexpr, f"{name}: no constexpr op in the compressed package ({interp.op_histogram()})"
    constexpr_vals = {}
    for op in constexpr:
        want = op.materialized_val_inference()
        want = want if isinstance(want, tuple) else (want,)
        for var, w in zip(op.outputs, want):
            np.testing.assert_array_equal(interp._consts[var.name], np.asarray(w).astype(interp._consts[var.name].dtype),
                                          err_msg=f"{name}: {op.op_type} {var.name}")
            constexpr_vals[var.name] = np.asarray(w)
    got = list(interp.run({"x": x}).values())[0]
    weights = {}  # the dense conv (4-d) and linear (2-d) weights: coremltools' decompression or a plain const
    for op in interp._ops:
        if op.op_type in ("conv", "linear"):
            w = op.inputs["weight"]
            weights[op.op_type] = np.asarray(w.val if w.val is not None else
                                             constexpr_vals[w.name], np.float64)
    # the program in float64 torch with the weights coremltools decompresses: the interpreter's error
    xt = torch.from_numpy((x.astype(np.float16) if precision == "fp16" else x).astype(np.float64))
    y = F.conv2d(xt, torch.from_numpy(weights["conv"]), padding="same").mean((2, 3))
    check(got, y @ torch.from_numpy(weights["linear"]).T, precision, name)
    # and against the uncompressed package: the compression's own error
    err = float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))
    assert err <= bound, f"{name} ({precision}): rel-L2 {err:.3g} against the uncompressed package > {bound}"
