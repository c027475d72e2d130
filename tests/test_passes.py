"""Each pass, run alone by name on a small graph: the op list changes as its docstring says, the
result agrees with the unoptimized graph in the NumPy runtime, and a must-not-fire case leaves
the graph alone."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlc.errors import IRError
from tlc.frontend import trace
from tlc.ir import GraphBuilder, TensorType, verify
from tlc.passes import PASSES, run_pipeline
from tlc.passes.rewrite import Pat, any_of, either, matches, rewrite, rewrite_once, scalar
from tlc.runtime import run_graph


def ops(g):
    return [n.op for n in g.nodes if n.op != "const"]


def run_pass(name, fn, *inputs, tol=1e-5):
    g, _ = trace(fn, tuple(inputs))
    g2 = run_pipeline(g, [name])
    verify(g2)
    feeds = {v.name: x.numpy() for v, x in zip(g.inputs, inputs)}
    a, b = run_graph(g, feeds), run_graph(g2, feeds)
    for k in a:
        err = np.linalg.norm(a[k].astype(np.float64) - b[k]) / max(np.linalg.norm(a[k].astype(np.float64)), 1e-30)
        assert err <= tol, f"{name}: output {k} changed by {err:.2e}"
    return g, g2


def test_cse():
    g, g2 = run_pass("cleanup::cse", lambda x: torch.relu(x) * torch.relu(x) + torch.relu(x), torch.randn(3, 4))
    assert ops(g).count("relu") == 3 and ops(g2).count("relu") == 1
    g, g2 = run_pass("cleanup::cse", lambda x: torch.relu(x) + torch.sigmoid(x), torch.randn(3))  # must not fire
    assert ops(g2) == ops(g)


def test_const_fold_and_cap():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 3)))
    w = b.const(np.arange(12, dtype=np.float32).reshape(4, 3), name="w")
    wt = b.add("transpose", [w], {"perm": (1, 0)}).out
    y = b.add("matmul", [x, wt]).out
    g = b.build([y], ["y"])
    g2 = run_pipeline(g, ["cleanup::const_fold"])
    assert ops(g2) == ["matmul"]
    feeds = {"x": np.ones((2, 3), np.float32)}
    np.testing.assert_array_equal(run_graph(g2, feeds)["y"], run_graph(g, feeds)["y"])
    # a big constant used twice is not folded into a second copy
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (600, 600)))
    w = b.const(np.ones((600, 600), np.float32), name="w")
    wt = b.add("transpose", [w], {"perm": (1, 0)}).out
    y = b.add("add", [b.add("matmul", [x, wt]).out, b.add("matmul", [x, w]).out]).out
    g = b.build([y], ["y"])
    assert ops(run_pipeline(g, ["cleanup::const_fold"])) == ops(g)


def test_noop_removal():
    g, g2 = run_pass("cleanup::noop", lambda x: x.reshape(2, 3).float()[:, :] + 1, torch.randn(2, 3))
    assert "reshape" not in ops(g2) and ops(g2) == ["add"]
    b = GraphBuilder()  # identity output of an input must stay: an output cannot alias an input
    x = b.add_input("x", TensorType("fp32", (2,)))
    g = b.build([b.add("identity", [x]).out], ["y"])
    assert ops(run_pipeline(g, ["cleanup::noop"])) == ["identity"]


def test_merge_transposes_and_reshapes():
    g, g2 = run_pass("cleanup::merge_layout", lambda x: x.permute(0, 2, 1).permute(0, 2, 1) * 2, torch.randn(2, 3, 4))
    assert "transpose" not in ops(g2)
    g, g2 = run_pass("cleanup::merge_layout", lambda x: x.permute(0, 2, 1).permute(2, 0, 1) * 2, torch.randn(2, 3, 4))
    assert ops(g2).count("transpose") == 1
    g, g2 = run_pass("cleanup::merge_layout", lambda x: x.reshape(6, 4).unsqueeze(0).reshape(3, 8) * 2, torch.randn(2, 3, 4))
    assert ops(g2).count("reshape") == 1 and "expand_dims" not in ops(g2)
    # must not fire: the inner transpose has a second reader
    g, g2 = run_pass("cleanup::merge_layout", lambda x: (lambda t: t.permute(0, 2, 1) + 1 + t.sum())(x.permute(0, 2, 1)),
                     torch.randn(2, 3, 4))
    assert ops(g2).count("transpose") == 2


class ConvBN(torch.nn.Module):
    def __init__(self, bias=True, pad_first=False):
        super().__init__()
        self.pad_first = pad_first
        self.conv = torch.nn.Conv2d(4, 6, 3, bias=bias)
        self.bn = torch.nn.BatchNorm2d(6).eval()
        self.bn.running_mean.normal_()
        self.bn.running_var.uniform_(0.5, 2)
        self.bn.weight.data.normal_()
        self.bn.bias.data.normal_()

    def forward(self, x):
        if self.pad_first:
            x = F.pad(x, (1, 1, 2, 0))
        return self.bn(self.conv(x))


@pytest.mark.parametrize("bias", [True, False])
def test_conv_batchnorm(bias):
    g, g2 = run_pass("fuse::conv_batchnorm", ConvBN(bias).eval(), torch.randn(1, 4, 8, 8))
    assert ops(g) == ["conv", "batch_norm"] and ops(g2) == ["conv"]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_batchnorm(bias):
    """timm LeViT's LinearNorm: batch_norm over the channels of flattened linear outputs folds into
    the linear (the same scale and shift as a conv's)."""
    torch.manual_seed(0)
    lin, bn = torch.nn.Linear(8, 6, bias=bias), torch.nn.BatchNorm1d(6).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_()
    bn.bias.data.normal_()

    def linear_norm(x):
        return bn(lin(x).flatten(0, 1)).reshape(x.shape[0], x.shape[1], 6)

    x = torch.randn(2, 5, 8)
    g, g2 = run_pass("fuse::conv_batchnorm", linear_norm, x)
    assert "batch_norm" in ops(g) and "batch_norm" not in ops(g2)
    with torch.no_grad():
        ref = linear_norm(x).numpy()
    got = next(iter(run_graph(g2, {g2.inputs[0].name: x.numpy()}).values()))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)  # the folded graph against torch eager


def test_conv_batchnorm_must_not_fire_when_conv_is_reused():
    class M(ConvBN):
        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    g, g2 = run_pass("fuse::conv_batchnorm", M().eval(), torch.randn(1, 4, 8, 8))
    assert "batch_norm" in ops(g2)


def test_pad_conv():
    g, g2 = run_pass("fuse::pad_conv", ConvBN(pad_first=True).eval(), torch.randn(1, 4, 8, 8))
    assert "pad" in ops(g) and "pad" not in ops(g2)
    conv = next(n for n in g2.nodes if n.op == "conv")
    assert conv.attrs["pad"] == (2, 0, 1, 1)
    # must not fire: non-zero pad value
    g, g2 = run_pass("fuse::pad_conv", lambda x, w: F.conv2d(F.pad(x, (1, 1, 1, 1), value=1.0), w),
                     torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))
    assert "pad" in ops(g2)


def test_bias_and_matmul_to_linear():
    w, b = torch.randn(5, 4), torch.randn(4)
    g, g2 = run_pass("fuse::linear_bias", lambda x: x @ w + b, torch.randn(2, 3, 5))
    assert ops(g) == ["matmul", "add"] and ops(g2) == ["linear"]
    cw, cb = torch.randn(6, 3, 1, 1), torch.randn(1, 6, 1, 1)
    g, g2 = run_pass("fuse::linear_bias", lambda x: F.conv2d(x, cw) + cb, torch.randn(1, 3, 4, 4))
    assert ops(g2) == ["conv"] and len(next(n for n in g2.nodes if n.op == "conv").inputs) == 3
    # must not fire: the add is not per-channel
    g, g2 = run_pass("fuse::linear_bias", lambda x: F.conv2d(x, cw) + torch.ones(1, 1, 4, 4), torch.randn(1, 3, 4, 4))
    assert ops(g2) == ["conv", "add"]


def test_rewrite_engine_bound_errors_loudly():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (3,)))
    g = b.build([b.add("relu", [x]).out], ["y"])

    def forever(m):  # rewrites relu into relu again: never settles
        return m.add("relu", [m["r"].inputs[0]])

    with pytest.raises(IRError, match="did not settle after 4 sweeps"):
        rewrite(g, [(Pat("relu", name="r"), forever)], max_iters=4)



def _xy_graph():
    """y = mul(c, sigmoid(mul(x, 1.0)) * mul(x, 1.0)): silu of x once the x * 1 are gone."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (4,)))
    one = b.add("const", [], {"val": np.ones((), np.float32)}).out
    x1 = b.add("mul", [x, one]).out
    x2 = b.add("mul", [one, x]).out
    y = b.add("mul", [x1, b.add("sigmoid", [x2]).out]).out
    return b.build([y], ["y"])


def _drop_mul_one(m):
    return m.val("x")


def _silu(m):
    return m.add("silu", [m.val("x")]) if m.private(m.val("x")) else None


RULES_XY = [(either("mul", Pat(name="x"), scalar(1.0)), _drop_mul_one),
            (either("mul", Pat(name="x"), Pat("sigmoid", (Pat(name="x"),))), _silu)]


def test_pattern_either_order_backtracks_and_rebinds():
    g = _xy_graph()
    mul1, mul2 = [n for n in g.nodes if n.op == "mul"][:2]
    p = either("mul", Pat(name="x"), scalar(1.0))
    # x binds the graph input in both operand orders: the engine backtracked past x = const
    assert [b["x"].name for b in matches(p, mul1.out, g)] == ["x"]
    assert [b["x"].name for b in matches(p, mul2.out, g)] == ["x"]
    assert matches(p, g.outputs[0], g) == []  # neither operand of the root is a 1.0 constant
    assert matches(scalar(2.0), mul1.inputs[1], g) == []
    alt = any_of(Pat("sigmoid"), Pat("mul", (Pat(name="a"), Pat(name="a"))), name="r")
    assert [sorted(b) for b in matches(alt, mul1.out, g)] == []  # mul(x, 1): a cannot bind both
    assert [sorted(b) for b in matches(alt, g.nodes[-2].out, g)] == [["r"]]  # the sigmoid


def test_rule_fires_in_a_later_sweep_against_that_sweeps_graph():
    """silu can only match after the x * 1.0 are gone (sweep 1): its match and its ``private``
    check must read sweep 1's producers (in sweep 0's, sigmoid and mul read two different muls)."""
    g = _xy_graph()
    g1, fired0 = rewrite_once(g, RULES_XY)
    assert fired0 == ["_drop_mul_one", "_drop_mul_one"]
    g2, fired1 = rewrite_once(g1, RULES_XY)
    assert fired1 == ["_silu"] and ops(g2) == ["silu"]
    assert ops(rewrite(g, RULES_XY)) == ["silu"]
    feeds = {"x": np.linspace(-3, 3, 4, dtype=np.float32)}
    np.testing.assert_allclose(run_graph(g2, feeds)["y"], run_graph(g, feeds)["y"], rtol=1e-6)


def test_rms_norm_gamma_absorbed_in_the_sweep_after_the_norm():
    """fuse::norm_attention's rms_norm rule fires in sweep 0, the gamma rule on its result only in
    sweep 1: a rule reading producer maps captured before sweep 0 would miss it."""
    w = torch.randn(16)
    g, g2 = run_pass("fuse::norm_attention", lambda x: w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)),
                     torch.randn(2, 5, 16))
    assert ops(g2) == ["rms_norm"] and len(next(n for n in g2.nodes if n.op == "rms_norm").inputs) == 2

def test_every_registered_pass_has_given_result_docstring():
    for name, fn in PASSES.items():
        doc = fn.__doc__ or ""
        assert "Given" in doc and "Result" in doc, f"{name} lacks a Given/Result docstring"


class ConvNeXtBlock(torch.nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.dw = torch.nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = torch.nn.LayerNorm(c)
        self.up = torch.nn.Linear(c, 4 * c)
        self.down = torch.nn.Linear(4 * c, c)
        self.gamma = torch.nn.Parameter(torch.rand(c))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.down(F.gelu(self.up(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


def test_channels_first_removes_convnext_transposes():
    g, g2 = run_pass("layout::channels_first", ConvNeXtBlock().eval(), torch.randn(1, 8, 6, 6))
    assert ops(g).count("transpose") == 2 and "transpose" not in ops(g2)
    assert ops(g2).count("conv") == 3 and "linear" not in ops(g2)
    ln = next(n for n in g2.nodes if n.op == "layer_norm")
    assert ln.attrs["axes"] == (1,)


def test_channels_first_must_not_add_transposes():
    w = torch.randn(6, 8)
    # the channels-last result is the output: sinking cannot cancel anything, so nothing changes
    g, g2 = run_pass("layout::channels_first", lambda x: F.gelu(F.linear(x.permute(0, 2, 3, 1), w)), torch.randn(1, 8, 3, 3))
    assert ops(g2) == ops(g)


@pytest.mark.parametrize("fn,op", [
    (lambda x: 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0)))), "gelu"),
    (lambda x: x * 0.5 * (1.0 + torch.erf(x / 1.4142135623730951)), "gelu"),
    (lambda x: x * torch.sigmoid(x), "silu"),
    (lambda x: torch.log(1 + torch.exp(x)), "softplus"),
])
def test_activation_recognition(fn, op):
    g, g2 = run_pass("fuse::activations", fn, torch.randn(3, 7))
    assert ops(g2) == [op], ops(g2)


def test_activation_recognition_must_not_fire_on_shared_interior():
    # the tanh value is also returned: fusing would have to keep it, so nothing changes
    def f(x):
        t = torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0)))
        return 0.5 * x * (1.0 + t), t

    g, g2 = run_pass("fuse::activations", f, torch.randn(3, 7))
    assert ops(g2) == ops(g)
    g, g2 = run_pass("fuse::activations", lambda x: x * torch.sigmoid(x * 2), torch.randn(4))  # not silu
    assert "silu" not in ops(g2)


@pytest.mark.parametrize("form", ["div_sqrt", "mul_rsqrt", "mul_square"])
def test_layer_norm_recognition(form):
    def ln(x):
        m = x.mean(-1, keepdim=True)
        d = x - m
        var = (d * d if form == "mul_square" else d.pow(2)).mean(-1, keepdim=True)
        return d * torch.rsqrt(var + 1e-5) if form == "mul_rsqrt" else d / torch.sqrt(var + 1e-5)

    g, g2 = run_pass("fuse::norm_attention", ln, torch.randn(2, 5, 16) * 3 + 1)
    assert ops(g2) == ["layer_norm"]
    assert next(n for n in g2.nodes if n.op == "layer_norm").attrs["epsilon"] == pytest.approx(1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_recognition(masked):
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 4:] = -1e4

    def attn(q, k, v):
        s = torch.matmul(q, k.transpose(-1, -2)) * 0.25
        if masked:
            s = s + mask
        return torch.matmul(torch.softmax(s, -1), v)

    g, g2 = run_pass("fuse::norm_attention", attn, torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16),
                     torch.randn(1, 2, 6, 8))
    assert ops(g2) == ["scaled_dot_product_attention"]


def test_norm_attention_must_not_fire_when_probs_are_returned():
    def attn(q, k, v):
        p = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.25, -1)
        return torch.matmul(p, v), p

    g, g2 = run_pass("fuse::norm_attention", attn, torch.randn(1, 4, 8), torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    assert "scaled_dot_product_attention" not in ops(g2)


@pytest.mark.parametrize("mask", [torch.ones(1, 1, 6, 6, dtype=torch.bool), torch.zeros(1, 1, 6, 6)])
def test_trivial_attention_mask_dropped(mask):
    attn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    g, g2 = run_pass("cleanup::attention_mask", attn, *[torch.randn(1, 2, 6, 8) for _ in range(3)])
    sdpa = lambda gr: next(n for n in gr.nodes if n.op == "scaled_dot_product_attention")  # noqa: E731
    assert len(sdpa(g).inputs) == 4 and len(sdpa(g2).inputs) == 3
    assert not any(n.op == "const" for n in g2.nodes)


def test_attention_mask_must_not_fire_on_a_real_mask():
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool).tril()
    attn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    g, g2 = run_pass("cleanup::attention_mask", attn, *[torch.randn(1, 2, 6, 8) for _ in range(3)])
    assert g2 is g


class LlamaStyleRMSNorm(torch.nn.Module):
    """transformers' LlamaRMSNorm, written out as in modeling_llama.py."""

    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.to(torch.float32)
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps)).to(dt)


@pytest.mark.parametrize("fn,gamma", [
    (LlamaStyleRMSNorm(16), True),
    (torch.nn.RMSNorm(16, eps=1e-5), True),
    (torch.nn.RMSNorm(16), True),  # eps=None: torch uses finfo(fp32).eps
    (lambda x: F.rms_norm(x, (16,), eps=1e-5), False),
    (lambda x: x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6), False),
])
def test_rms_norm_recognition(fn, gamma):
    if isinstance(fn, torch.nn.Module):
        torch.nn.init.normal_(fn.weight)
    g, g2 = run_pass("fuse::norm_attention", fn, torch.randn(2, 5, 16) * 3)
    assert ops(g2) == ["rms_norm"], ops(g2)
    rn = next(n for n in g2.nodes if n.op == "rms_norm")
    assert rn.attrs["axes"] == (2,) and len(rn.inputs) == (2 if gamma else 1)


def test_rms_norm_must_not_fire():
    # the mean of squares is also returned: fusing would have to keep it
    def shared(x):
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + 1e-6), var

    g, g2 = run_pass("fuse::norm_attention", shared, torch.randn(2, 16))
    assert ops(g2) == ops(g)
    # over a leading axis only: not a trailing-axes norm
    g, g2 = run_pass("fuse::norm_attention", lambda x: x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + 1e-6),
                     torch.randn(4, 16))
    assert ops(g2) == ops(g)
    # a weight over the rows, not the normalized axis, stays a separate mul; a centred norm is a layer_norm
    w = torch.randn(4, 1)
    g, g2 = run_pass("fuse::norm_attention", lambda x: w * F.rms_norm(x, (16,), eps=1e-5), torch.randn(4, 16))
    assert sorted(ops(g2)) == ["mul", "rms_norm"]
    g, g2 = run_pass("fuse::norm_attention", lambda x: F.rms_norm(x - x.mean(-1, keepdim=True), (16,), eps=1e-5),
                     torch.randn(4, 16))
    assert ops(g2) == ["layer_norm"]
