"""The NumPy runtime's fast kernel paths against torch eager in float64.

Covers what the per-op tests in test_ops.py (small tensors, traced models) do not reach: conv's
im2col/batched-GEMM path with batch > 1 and groups, depthwise convs (channel blocks on threads),
tap-loop pools, and the tiled multi-threaded kernels (gelu, erf, softmax, layer_norm) at sizes
above two tiles — there the result must be bit-identical to the same function run untiled. Also
the executor's compiled plan (observer order, repeated runs, freeing).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlc.ops import OPS, parallel, run_kernel
from tlc.ops.unary import erf

rng = np.random.default_rng(0)


def rel_l2(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm((np.asarray(got, np.float64) - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


def kernel(op, attrs, *arrays):
    out_dt = [np.dtype(np.float32)]
    return run_kernel(OPS[op], attrs, list(arrays), out_dt)[0]


# ------------------------------------------------------------------------------------------ conv


@pytest.mark.parametrize("n,cin,cout,k,stride,pad,dil,groups,hw", [
    (1, 16, 32, 3, 1, 1, 1, 1, (14, 14)),    # dense 3x3: im2col + one GEMM
    (2, 16, 32, 3, 2, 1, 1, 1, (15, 13)),    # batch 2, stride 2, odd sizes
    (1, 32, 64, 1, 2, 0, 1, 1, (14, 14)),    # 1x1 stride 2 (ResNet downsample)
    (2, 32, 64, 1, 1, 0, 1, 1, (7, 9)),      # 1x1 stride 1: no column copy
    (1, 3, 16, 7, 2, 3, 1, 1, (32, 32)),     # stem
    (2, 16, 32, 3, 1, 2, 2, 4, (12, 12)),    # grouped + dilated
    (1, 64, 64, 3, 1, 1, 1, 64, (56, 56)),   # depthwise, large: channel blocks on threads
    (2, 24, 24, 3, 2, 1, 1, 24, (17, 16)),   # depthwise stride 2, batch 2
    (1, 24, 24, 5, 1, 4, 2, 24, (20, 20)),   # depthwise dilated
    (1, 8, 24, 3, 1, 1, 1, 8, (10, 10)),     # channel multiplier 3: grouped GEMM path
])
def test_conv2d_paths(n, cin, cout, k, stride, pad, dil, groups, hw):
    x = rng.standard_normal((n, cin) + hw).astype(np.float32)
    w = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    attrs = {"strides": (stride, stride), "pad": (pad,) * 4, "dilations": (dil, dil), "groups": groups}
    got = kernel("conv", attrs, x, w, b)
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                   stride, pad, dil, groups).numpy()
    assert got.shape == ref.shape and got.dtype == np.float32 and got.flags.c_contiguous
    assert rel_l2(got, ref) < 1e-6


@pytest.mark.parametrize("groups,cout", [(1, 8), (6, 6), (3, 12)])
def test_conv1d_paths(groups, cout):
    x = rng.standard_normal((2, 6, 40)).astype(np.float32)
    w = rng.standard_normal((cout, 6 // groups, 5)).astype(np.float32)
    attrs = {"strides": (2,), "pad": (2, 1), "dilations": (1,), "groups": groups}
    got = kernel("conv", attrs, x, w)
    ref = F.conv1d(F.pad(torch.from_numpy(x).double(), (2, 1)), torch.from_numpy(w).double(), None, 2, 0, 1, groups)
    assert rel_l2(got, ref.numpy()) < 1e-6


def test_conv_fp16_rounds_once():
    """fp16 inputs: computed in fp32 then rounded once (the shared fp16 rule): within one fp16 ulp
    of the exact result (fp32 accumulation may round a near-tie the other way)."""
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float16)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float16)
    attrs = {"strides": (1, 1), "pad": (1, 1, 1, 1), "dilations": (1, 1), "groups": 8}
    got = run_kernel(OPS["conv"], attrs, [x, w], [np.dtype(np.float16)])[0]
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), None, 1, 1, 1, 8).numpy()
    assert got.dtype == np.float16
    ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
    assert (np.abs(got.astype(np.float64) - ref) <= ulp).all()


# ----------------------------------------------------------------------------------------- pools


@pytest.mark.parametrize("kernel_size,stride,pad,ceil_mode", [(3, 2, 1, False), (3, 2, 0, True), (2, 2, 0, False)])
def test_max_pool_large(kernel_size, stride, pad, ceil_mode):
    x = rng.standard_normal((1, 64, 57, 56)).astype(np.float32)
    attrs = {"kernel_sizes": (kernel_size,) * 2, "strides": (stride,) * 2, "pad": (pad,) * 4, "ceil_mode": ceil_mode}
    ref = F.max_pool2d(torch.from_numpy(x), kernel_size, stride, pad, ceil_mode=ceil_mode).numpy()
    np.testing.assert_array_equal(kernel("max_pool", attrs, x), ref)


@pytest.mark.parametrize("exclude", [False, True])
def test_avg_pool_large(exclude):
    x = rng.standard_normal((2, 40, 29, 30)).astype(np.float32)
    attrs = {"kernel_sizes": (3, 3), "strides": (2, 2), "pad": (1, 1, 1, 1), "ceil_mode": True,
             "exclude_padding_from_average": exclude}
    ref = F.avg_pool2d(torch.from_numpy(x).double(), 3, 2, 1, ceil_mode=True, count_include_pad=not exclude).numpy()
    assert rel_l2(kernel("avg_pool", attrs, x), ref) < 1e-7


# -------------------------------------------------------------------------- tiled / threaded


BIG = (3, 197, 3072)  # > 2 tiles: the tiled, threaded path


@pytest.mark.parametrize("mode,ref", [
    ("EXACT", lambda t: F.gelu(t)),
    ("TANH_APPROXIMATION", lambda t: F.gelu(t, approximate="tanh")),
    ("SIGMOID_APPROXIMATION", lambda t: t * torch.sigmoid(1.702 * t)),
])
def test_gelu_tiled(mode, ref):
    from tlc.ops.unary import _GELU

    x = (rng.standard_normal(BIG) * 3).astype(np.float32)
    got = kernel("gelu", {"mode": mode}, x)
    np.testing.assert_array_equal(got, _GELU[mode](x))  # tiling changes nothing
    assert rel_l2(got, ref(torch.from_numpy(x).double()).numpy()) < 1e-6


def test_erf_special_values_and_shapes():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 4.0, -4.5, 1e-30, 1e-40], np.float32)
    got = erf(x)
    assert np.isnan(got[0]) and list(got[1:3]) == [1.0, -1.0]
    assert got[3] == 0 and got[5] == 1.0 and got[6] == -1.0
    np.testing.assert_allclose(got[7:], 2 / np.sqrt(np.pi) * x[7:].astype(np.float64), rtol=3e-7, atol=1e-44)
    assert erf(np.array(0.5, np.float32)).shape == ()
    assert erf(np.array([0.5], np.float16)).dtype == np.float16


def test_softmax_and_layer_norm_tiled():
    x = (rng.standard_normal((2, 12, 197, 197)) * 4).astype(np.float32)
    got = kernel("softmax", {"axis": -1}, x)
    assert rel_l2(got, torch.softmax(torch.from_numpy(x).double(), -1).numpy()) < 1e-6
    got1 = kernel("softmax", {"axis": 1}, x)  # not the last axis: untiled path
    assert rel_l2(got1, torch.softmax(torch.from_numpy(x).double(), 1).numpy()) < 1e-6

    h = (rng.standard_normal((4, 197, 768)) * 3 + 1).astype(np.float32)
    g, b = rng.standard_normal(768).astype(np.float32), rng.standard_normal(768).astype(np.float32)
    got = kernel("layer_norm", {"axes": (-1,), "epsilon": 1e-6}, h, g, b)
    ref = F.layer_norm(torch.from_numpy(h).double(), (768,), torch.from_numpy(g).double(), torch.from_numpy(b).double(), 1e-6)
    assert rel_l2(got, ref.numpy()) < 1e-6
    h2 = h.reshape(4, 197, 32, 24)  # two trailing axes as one row; and a non-trailing axis set
    ref2 = F.layer_norm(torch.from_numpy(h2).double(), (32, 24), None, None, 1e-5).numpy()
    assert rel_l2(kernel("layer_norm", {"axes": (-2, -1)}, h2), ref2) < 1e-6
    ref3 = torch.from_numpy(h2).double()
    ref3 = ((ref3 - ref3.mean(1, keepdim=True)) / torch.sqrt(ref3.var(1, unbiased=False, keepdim=True) + 1e-5)).numpy()
    assert rel_l2(kernel("layer_norm", {"axes": (1,)}, h2), ref3) < 1e-6


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_map_rows_and_parallel_for_match_serial(threads, monkeypatch):
    monkeypatch.setattr(parallel, "NUM_THREADS", threads)
    x = rng.standard_normal((5, 70007)).astype(np.float32)  # rows do not divide into whole tiles
    fn = lambda t: np.exp(-np.abs(t)) * t  # noqa: E731
    np.testing.assert_array_equal(parallel.map_rows(fn, x), fn(x))
    rows = lambda t: t - t.max(axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_array_equal(parallel.map_rows(rows, x.reshape(-1, 7), 7), rows(x.reshape(-1, 7)))
    assert parallel.map_rows(fn, np.zeros((0, 3), np.float32), 3).shape == (0, 3)
    with pytest.raises(ValueError):
        parallel.map_rows(fn, x, 3)
    hits = np.zeros(1000, int)

    def body(a, b):
        hits[a:b] += 1

    parallel.parallel_for(body, 1000, grain=10)
    assert (hits == 1).all()

    def boom(a, b):
        raise RuntimeError("kernel bug")

    with pytest.raises(RuntimeError, match="kernel bug"):
        parallel.parallel_for(boom, 1000, grain=10)


# ------------------------------------------------------------------------------------- executor


def test_plan_runs_repeatedly_and_observes_every_node():
    import tlc
    from tlc.runtime import numpy_executor

    def fn(x, y):
        h = F.gelu(x @ y + 1.0)
        return h.softmax(-1), h.sum(0)

    x, y = torch.randn(6, 5), torch.randn(5, 4)
    cm = tlc.build(fn, (x, y), precision="fp32")
    seen = []
    out1 = numpy_executor.run_graph(cm.graph, {"x": x.numpy(), "y": y.numpy()}, observer=lambda n, o: seen.append(n))
    assert seen == list(cm.graph.nodes)  # constants included, graph order
    assert numpy_executor.plan(cm.graph) is numpy_executor.plan(cm.graph)  # compiled once per graph
    out2 = numpy_executor.run_graph(cm.graph, {"x": x.numpy(), "y": y.numpy()})
    for name in cm.output_names:
        np.testing.assert_array_equal(out1[name], out2[name])
    ref = fn(x.double(), y.double())
    assert rel_l2(out2[cm.output_names[0]], ref[0].numpy()) < 1e-6
    assert rel_l2(out2[cm.output_names[1]], ref[1].numpy()) < 1e-6
