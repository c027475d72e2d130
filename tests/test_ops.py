"""Per-op numerics: each ATen op (with its attribute combinations) is traced by tlc, lowered to
the IR op of its table row and run by the NumPy kernel; results must match torch eager in
float64 (fp32 rel-L2 <= 1e-5 unless stated)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tlc

torch.manual_seed(0)


def check(fn, *inputs, tol=1e-5, ops=None, skip_passes=()):
    cm = tlc.build(fn, tuple(inputs), precision="fp32", skip_passes=skip_passes)
    got = cm(*inputs)
    ref_fn = copy.deepcopy(fn).double() if isinstance(fn, torch.nn.Module) else fn
    with torch.no_grad():
        ref = ref_fn(*[x.double() if x.is_floating_point() else x for x in inputs])
    got = got if isinstance(got, (tuple, list)) else (got,)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        if r.dtype in (torch.bool, torch.int64, torch.int32):
            assert torch.equal(g.long(), r.long())
            continue
        err = float(torch.linalg.norm(g.double() - r) / max(float(torch.linalg.norm(r)), 1e-30))
        assert err <= tol, f"rel-L2 {err:.2e}"
    if ops is not None:
        hist = cm.graph.op_histogram()
        for op in ops:
            assert op in hist, f"expected IR op {op} in {hist}"
    return cm


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), (1, "same", 1, 1), (1, 2, 2, 1), (2, 1, 1, 2), (1, 1, 1, 8), (2, 3, 1, 8), (1, 0, 1, 4),
])
@pytest.mark.parametrize("k", [1, 3])
def test_conv2d(stride, padding, dilation, groups, k):
    if padding == "same" and stride != 1:
        pytest.skip("torch forbids padding='same' with stride > 1")
    w = torch.randn(8, 8 // groups, k, k)
    b = torch.randn(8)
    check(lambda x: F.conv2d(x, w.to(x.dtype), b.to(x.dtype), stride, padding, dilation, groups),
          torch.randn(2, 8, 11, 9), ops=["conv"])


@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (2, 1, 1), (1, 2, 4)])
def test_conv1d(stride, padding, groups):
    w = torch.randn(8, 4 // groups * 1 if groups == 4 else 4, 3)
    cin = 4 if groups != 4 else 4
    w = torch.randn(8, cin // groups, 3)
    check(lambda x: F.conv1d(x, w.to(x.dtype), None, stride, padding, 1, groups), torch.randn(1, cin, 20), ops=["conv"])


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(3, 2, 1, False), (2, 2, 0, False), (3, 2, 0, True), (3, 1, 1, False)])
def test_max_pool2d(kernel, stride, padding, ceil_mode):
    check(lambda x: F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode), torch.randn(1, 3, 10, 9), ops=["max_pool"])


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,count_include_pad", [
    (3, 2, 1, False, True), (3, 2, 1, False, False), (2, 2, 0, False, True), (3, 2, 1, True, True), (3, 2, 0, True, False),
])
def test_avg_pool2d(kernel, stride, padding, ceil_mode, count_include_pad):
    check(lambda x: F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad), torch.randn(1, 3, 10, 9),
          ops=["avg_pool"])


@pytest.mark.parametrize("out", [1, (2, 3)])
def test_adaptive_avg_pool2d(out):
    check(lambda x: F.adaptive_avg_pool2d(x, out), torch.randn(1, 3, 8, 9))


def test_batch_norm_eval():
    bn = torch.nn.BatchNorm2d(6).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_()
    check(bn, torch.randn(2, 6, 5, 5), ops=["batch_norm"])


@pytest.mark.parametrize("shape", [(7,), (3, 7)])
def test_layer_norm(shape):
    ln = torch.nn.LayerNorm(shape, eps=1e-6)
    ln.weight.data.normal_()
    ln.bias.data.normal_()
    check(ln, torch.randn((2, 4) + shape) * 3 + 1, ops=["layer_norm"])


@pytest.mark.parametrize("fn,op", [
    (lambda x: F.gelu(x), "gelu"), (lambda x: F.gelu(x, approximate="tanh"), "gelu"), (F.silu, "silu"),
    (torch.sigmoid, "sigmoid"), (torch.tanh, "tanh"), (F.relu, "relu"), (F.relu6, "clip"),
    (F.hardtanh, "clip"), (F.hardswish, "sigmoid_hard"), (F.hardsigmoid, "sigmoid_hard"), (F.softplus, "softplus"),
    (lambda x: F.leaky_relu(x, 0.2), "leaky_relu"), (torch.erf, "erf"), (torch.exp, "exp"),
    (lambda x: torch.log(x.abs() + 0.1), "log"), (lambda x: torch.rsqrt(x.abs() + 0.1), "rsqrt"),
    (lambda x: torch.sqrt(x.abs()), "sqrt"), (lambda x: 1 / (x.abs() + 0.5), "inverse"), (lambda x: x / (x.abs() + 0.5), "real_div"), (torch.neg, "mul"),
    (lambda x: x.clamp(-0.5, 0.7), "clip"), (lambda x: x.clamp(min=0.1), "maximum"), (torch.abs, "abs"),
    (lambda x: torch.pow(x, 3), "pow"), (lambda x: torch.where(x > 0, x, x * 0.1), "select"),
    (lambda x: F.softmax(x, -1), "softmax"), (lambda x: F.softmax(x, 1), "softmax"),
])
def test_unary(fn, op):
    check(fn, torch.randn(3, 5, 7) * 3, ops=[op])


def test_erf_accuracy_wide_range():
    from tlc.ops.unary import erf

    x = np.linspace(-6, 6, 20001).astype(np.float32)
    ref = torch.erf(torch.from_numpy(x).double()).numpy()
    assert np.max(np.abs(erf(x) - ref)) < 2e-7


@pytest.mark.parametrize("mask", [None, "bool", "float", "causal"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa(mask, scale):
    """The scaled_dot_product_attention row (the ANE layout pass skipped), and the per-head form
    ``layout::ane_transformer`` makes of it (einsums), both against torch."""
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 4)
    if mask == "causal":
        q = torch.randn(2, 3, 6, 8)
        fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)  # noqa: E731
    else:
        m = None
        if mask == "bool":
            m = torch.rand(2, 1, 5, 6) > 0.3
            m[..., 0] = True
        elif mask == "float":
            m = torch.randn(2, 1, 5, 6)
        fn = lambda q, k, v: F.scaled_dot_product_attention(  # noqa: E731
            q, k, v, attn_mask=None if m is None else (m if m.dtype == torch.bool else m.to(q.dtype)), scale=scale)
    check(fn, q, k, v, ops=["scaled_dot_product_attention"], skip_passes=["layout::ane_transformer"])
    check(fn, q, k, v, ops=["einsum", "softmax"])


def test_linear_matmul_addmm():
    w, b = torch.randn(6, 4), torch.randn(6)
    check(lambda x: F.linear(x, w.to(x.dtype), b.to(x.dtype)), torch.randn(2, 3, 4), ops=["linear"])
    check(lambda x, y: x @ y, torch.randn(2, 3, 4), torch.randn(4, 5), ops=["matmul"])
    check(lambda x, y: x @ y, torch.randn(2, 3, 4), torch.randn(4), ops=["matmul"])
    check(lambda x, y: torch.bmm(x, y), torch.randn(2, 3, 4), torch.randn(2, 4, 5), ops=["matmul"])
    check(lambda x: torch.addmm(b.to(x.dtype), x, w.t().contiguous().to(x.dtype)), torch.randn(3, 4), ops=["linear"])


def test_reductions_and_norms():
    x = torch.randn(3, 4, 5)
    check(lambda x: (x.mean(-1), x.sum((0, 2), keepdim=True), x.amax(1), x.amin(-1)), x)
    check(lambda x: torch.linalg.vector_norm(x, dim=-1), x, ops=["reduce_l2_norm"])
    check(lambda x: F.normalize(x, dim=1), x)


def test_shape_ops():
    x = torch.randn(2, 3, 4, 5)
    check(lambda x: x.reshape(6, 20).t(), x, ops=["reshape", "transpose"])
    check(lambda x: x.permute(0, 2, 3, 1).unsqueeze(1).squeeze(1), x)
    check(lambda x: torch.cat([x, x * 2], dim=2), x, ops=["concat"])
    check(lambda x: x.split([1, 3], dim=2)[1] + 0, x, ops=["split"])
    check(lambda x: x[:, 1:, ::2, -3:], x, ops=["slice_by_index"])
    check(lambda x: x[:, 1], x)
    check(lambda x: x[..., None].expand(2, 3, 4, 5, 3), x, ops=["tile"])
    check(lambda x: F.pad(x, (1, 2, 0, 3), value=0.5), x, ops=["pad"])
    check(lambda x: x.flatten(1), x)
    check(lambda x: x.unbind(1)[2], x)
    check(lambda x: x.repeat(1, 2, 1, 1), x, ops=["tile"])
    check(lambda x: torch.flip(x, (1, -1)), x, ops=["reverse"])


def test_integer_inputs_and_gather():
    table = torch.randn(10, 4)
    ids = torch.tensor([[1, 9, 0], [3, 3, 2]])
    check(lambda i: F.embedding(i, table), ids, ops=["gather"])
    x = torch.randn(4, 5, 6)
    idx = torch.tensor([3, 0, 1])
    check(lambda x, i: x[:, i], x, idx, ops=["gather"])
    check(lambda x: x[torch.tensor([0, 2]), torch.tensor([1, 4])], x)


def test_comparisons_and_logic():
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    check(lambda x, y: ((x > y) & (x > 0)) | ~(y < -1), x, y)
    check(lambda x, y: (x == x, x != y, x <= 0.5, x >= y), x, y)
    check(lambda x: (x > 0).float() * 2 + (x < 0).to(torch.int32), x)


def test_int_arithmetic_promotes_like_torch():
    check(lambda i, x: x * i + i // 2, torch.tensor([[1, 2, 3]]), torch.randn(2, 3))
