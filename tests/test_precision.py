"""Mixed precision: range analysis keeps exactly the overflowing region in fp32; fp16 everywhere
turns it into NaN; mask sentinels are clamped; the island rules."""
import numpy as np
import pytest
import torch

import tlc
from tlc.ir import GraphBuilder, TensorType
from tlc.passes.precision import choose_islands
from tlc.runtime import MILInterpreter
from tlc.check.metrics import rel_l2


class Hot(torch.nn.Module):
    """A block whose activations exceed 1e5 and feed a softmax (which needs the true values:
    rescaling cannot keep them in fp16)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.softmax(self.proj(x) * 3e5, -1)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = torch.nn.Linear(16, 16)
        self.hot = Hot()
        self.post = torch.nn.Linear(16, 8)

    def forward(self, x):
        return torch.tanh(self.post(self.hot(torch.nn.functional.gelu(self.pre(x)))))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(4, 16)


def run_package(cm, x, tmp_path, name):
    return MILInterpreter(cm.save(tmp_path / f"{name}.mlpackage")).run({"x": x.numpy()})["output"]


def test_fp16_overflows_mixed_keeps_exactly_the_hot_region(net, tmp_path):
    model, x = net
    with torch.no_grad():
        ref = model(x).double().numpy()
    fp16 = tlc.build(model, (x,), precision="fp16")
    with pytest.warns(UserWarning, match="overflows fp16"):
        out16 = run_package(fp16, x, tmp_path, "fp16")
    assert not np.isfinite(out16).all()  # overflow -> inf -> NaN through the softmax, as on device

    mixed = tlc.build(model, (x,), precision="mixed")
    out = run_package(mixed, x, tmp_path, "mixed")
    assert np.isfinite(out).all()
    assert rel_l2(out, ref) <= 1e-2
    hot = {n.name for n in mixed.graph.nodes if n.loc and (n.loc.module or "").startswith("hot") and n.op in ("mul", "softmax")}
    assert set(mixed.islands) == hot and len(hot) == 2
    assert mixed.precision_check.passed and len(mixed.precision_check.rounds) == 1  # required: no round to find it
    assert all("> 65504: inf in fp16" in why for why in mixed.islands.values())
    assert "softmax" in mixed.precision_check.rescaled[0]["why_not"]  # the region the softmax reads stays as it is
    # everything else computes in fp16
    g = mixed.emit_graph
    fp32_ops = {n.name for n in g.nodes if n.op not in ("const", "cast") and any(v.type.dtype == "fp32" for v in n.outputs)}
    assert fp32_ops == hot


def test_overflow_into_a_norm_is_rescaled_not_islanded(tmp_path):
    """The same overflow feeding a LayerNorm (scale-invariant) instead: precision::rescale folds
    2^-k into the multiply's constant and the norm's epsilon; no island."""
    def f(x, w):
        return torch.nn.functional.layer_norm((x @ w) * 3e5, (16,))

    torch.manual_seed(0)
    x, w = torch.randn(4, 16), torch.randn(16, 16)
    cm = tlc.build(lambda x: f(x, w), (x,))
    assert cm.islands == {} and cm.precision_check.passed
    (region,) = [r for r in cm.precision_check.rescaled if r["exponent"]]
    assert region["max_abs"] > 65504 and region["undone_at"] == [n.name for n in cm.graph.nodes if n.op == "layer_norm"]
    out = run_package(cm, x, tmp_path, "norm")
    assert np.isfinite(out).all() and rel_l2(out, f(x.double(), w.double()).numpy()) <= 1e-2


def test_calibration_inputs_widen_the_ranges(tmp_path):
    def f(x):
        return torch.softmax(x * 1000.0, -1)

    small = torch.randn(2, 8) * 0.01  # |x * 1000| ~ 10: safe
    big = torch.randn(2, 8) * 100  # |x * 1000| ~ 1e5: not
    assert tlc.build(f, (small,)).islands == {}
    cm = tlc.build(f, (small,), calibration_inputs=[(big,)])
    assert set(n for n in cm.islands) == {n.name for n in cm.graph.nodes if n.op in ("mul", "softmax")}
    out = run_package(cm, big, tmp_path, "cal")
    assert np.isfinite(out).all() and rel_l2(out, f(big.double()).numpy()) < 1e-2


def test_float_min_mask_sentinel_is_clamped(tmp_path):
    def attn(q, k, m):
        s = q @ k.transpose(-1, -2) + (1.0 - m) * torch.finfo(torch.float32).min
        return torch.softmax(s, -1)

    q, k = torch.randn(1, 4, 8), torch.randn(1, 6, 8)
    m = torch.ones(1, 1, 6)
    m[..., 4:] = 0
    cm = tlc.build(attn, (q, k, m))
    assert cm.islands == {}
    out = MILInterpreter(cm.save(tmp_path / "a.mlpackage")).run({"q": q.numpy(), "k": k.numpy(), "m": m.numpy()})["output"]
    ref = attn(q.double(), k.double(), m.double()).numpy()
    assert np.isfinite(out).all() and rel_l2(out, ref) < 1e-2
    assert np.all(out[..., 4:] == 0)  # masked keys get exactly zero weight


def test_error_rule_flags_outliers():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (4,)))
    nodes = [b.add("relu", [x]), b.add("tanh", [x]), b.add("exp", [x])]
    g = b.build([n.out for n in nodes], ["a", "b", "c"])
    err = {nodes[0]: 1e-4, nodes[1]: 2e-4, nodes[2]: 5e-2}
    islands = choose_islands(g, {}, err)
    assert list(islands) == [nodes[2].name] and "median" in islands[nodes[2].name]
    assert choose_islands(g, {}, {nodes[0]: 1e-4, nodes[1]: 2e-4, nodes[2]: 5e-4}) == {}  # under the floor


def test_float_to_int_cast_that_fp16_would_change_stays_fp32(tmp_path):
    def f(x):
        return (x * 1.0).to(torch.int32) + 1

    x = torch.tensor([2049.0, 3.0])
    cm = tlc.build(f, (x,))
    cast = next(n.name for n in cm.graph.nodes if n.op == "cast")
    assert cast in cm.islands and "integer" in cm.islands[cast]
    out = MILInterpreter(cm.save(tmp_path / "c.mlpackage")).run({"x": x.numpy()})["output"]
    assert out.tolist() == [2050, 4]


def test_rounding_variance_constant():
    from tlc.passes.precision import KAPPA_FP16

    x = np.exp(np.random.default_rng(0).uniform(-5, 5, 10**6)).astype(np.float32)  # log-uniform magnitudes
    r = x.astype(np.float16).astype(np.float32)
    assert np.mean(((r - x) / x) ** 2) == pytest.approx(KAPPA_FP16, rel=0.05)


class Cancel(torch.nn.Module):
    """A linear computing h - (h + 1e-3 c): its result cancels, so fp16 rounding of its input
    is a large relative error."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 16)
        self.b = torch.nn.Linear(32, 16, bias=False)
        self.b.weight.data = torch.cat([torch.eye(16), -torch.eye(16)], 1)
        self.register_buffer("c", torch.randn(16))

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cat([h, h + 1e-3 * self.c], -1))


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "cancel"])
def test_estimated_conv_linear_error_matches_rerun(name, monkeypatch):
    """conv/linear errors are estimated, not re-run: within 0.5-2x of the re-run measurement,
    cancellation included, and the same islands."""
    from archs import make

    from tlc.passes import precision as P

    if name == "cancel":
        torch.manual_seed(0)
        model, args, kwargs = Cancel().eval(), (torch.randn(6, 16),), {}
    else:
        model, args, kwargs = make(name)
    cm = tlc.build(model, (args, kwargs))
    g = P.clamp_sentinels(cm.graph)
    est = P.analyze(g, cm.calibration)
    monkeypatch.setattr(P, "ESTIMATED", ())
    meas = P.analyze(g, cm.calibration)
    nodes = [n for n in g.nodes if n.op in ("conv", "linear")]
    assert nodes
    for n in nodes:
        assert 0.5 <= est[1][n] / meas[1][n] <= 2.0, (n.name, est[1][n], meas[1][n])
    assert set(P.choose_islands(g, *est)) == set(P.choose_islands(g, *meas))
    if name == "cancel":
        assert max(est[1][n] for n in nodes) > 1e-2  # the cancelling linear is seen


def test_mask_sentinels_found_in_fp16_and_fp32_constants():
    """clamp_sentinels' test reads fp16 constants by their bits (only +/-inf is a sentinel there)
    and large ones in chunks; fp32 sentinels are |x| >= 1e30 as before."""
    from tlc.passes.precision import _has_sentinel

    h = np.zeros((3000, 700), np.float16)
    assert not _has_sentinel(h)
    h[2999, 5] = -np.inf  # in the last 1M-value chunk
    assert _has_sentinel(h)
    h[2999, 5] = np.nan  # NaN is not a sentinel (as np.abs(nan) >= 1e30 is False)
    assert not _has_sentinel(h)
    f = np.zeros(10, np.float32)
    assert not _has_sentinel(f)
    f[3] = np.finfo(np.float32).min
    assert _has_sentinel(f)
