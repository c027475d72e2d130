"""precision::rescale (issue 30): overflowing positively homogeneous regions stay in fp16 with an
exact power-of-two scale folded into their constants; it never fires through an op that needs the
true values, on a region tied to a graph input, or where a constant cannot hold the scale."""
import numpy as np
import pytest
import torch

import tlc
from tlc.check.metrics import rel_l2
from tlc.ir import GraphBuilder, TensorType
from tlc.passes import run_pipeline
from tlc.runtime import load, run_graph


class Block(torch.nn.Module):
    """conv -> relu and conv -> relu -> max_pool, concatenated (an Inception-style block)."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.a = torch.nn.Conv2d(cin, c, 3, padding=1)
        self.b = torch.nn.Conv2d(cin, c, 1)
        self.pool = torch.nn.MaxPool2d(3, 1, 1)

    def forward(self, x):
        return torch.cat([torch.relu(self.a(x)), self.pool(torch.relu(self.b(x)))], 1)


class Growing(torch.nn.Module):
    """``n`` blocks whose activations grow x8 each (weights scaled so on the example input), then a
    GroupNorm (scale-invariant) and, with ``head``, a linear classifier."""

    def __init__(self, n: int = 8, c: int = 4, head: bool = False):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(3 if i == 0 else 2 * c, c) for i in range(n))
        self.norm = torch.nn.GroupNorm(1, 2 * c)
        self.head = torch.nn.Linear(2 * c, 5) if head else None

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        y = self.norm(x)
        return self.head(y.mean((2, 3))) if self.head is not None else y

    @torch.no_grad()
    def grow(self, x, factor: float = 8.0):
        top = float(x.abs().max())
        for b in self.blocks:
            y = b(x)
            k = factor * top / float(y.abs().max())
            for conv in (b.a, b.b):
                conv.weight.mul_(k)
                conv.bias.mul_(k)
            x = b(x)
            top = float(x.abs().max())
        return top


@pytest.fixture(scope="module")
def growing():
    torch.manual_seed(0)
    m = Growing().eval()
    x = torch.rand(1, 3, 8, 8)
    top = m.grow(x)
    assert top > 1e7  # x8 per block from ~1
    return m, x


def test_growing_stack_builds_all_fp16_with_full_residency(growing, tmp_path):
    m, x = growing
    cm = tlc.build(m, (x,))
    assert cm.islands == {}
    assert cm.report().residency == 1.0
    chk = cm.precision_check
    assert chk.passed and len(chk.rounds) == 1
    scaled = [r for r in chk.rescaled if r["exponent"]]
    assert scaled and max(r["max_abs"] for r in scaled) > 1e7
    assert any(r["undone_at"] == [n.name for n in cm.graph.nodes if n.op == "group_norm"] for r in scaled)
    out = load(cm.save(tmp_path / "g.mlpackage"))({"x": x.numpy()})["output"]
    with torch.no_grad():
        ref = m(x).double().numpy()
    assert np.isfinite(out).all() and rel_l2(out, ref) <= 1e-2
    # without the pass, the same build needs fp32 islands: what rescaling saved
    plain = tlc.build(m, (x,), precision="fp16")
    bad = load(plain.save(tmp_path / "p.mlpackage"))({"x": x.numpy()})["output"]
    assert not np.isfinite(bad).all()


def test_pass_output_equals_the_graph_it_rescales(growing):
    """The pass by name on the traced graph: op list unchanged, only constants and the norm's
    epsilon differ, and the NumPy runtime gives the same output (scales are powers of two)."""
    m, x = growing
    g = tlc.build(m, (x,), precision="fp32").graph
    feeds = {"x": x.numpy()}
    r = run_pipeline(g, ["precision::rescale"], {"precision::rescale": {"calibration": [feeds]}})
    assert [n.op for n in r.nodes if n.op != "const"] == [n.op for n in g.nodes if n.op != "const"]
    (gn,) = [n for n in r.nodes if n.op == "group_norm"]
    (gn0,) = [n for n in g.nodes if n.op == "group_norm"]
    assert gn.attrs["epsilon"] < gn0.attrs["epsilon"]
    np.testing.assert_allclose(run_graph(r, feeds)["output"], run_graph(g, feeds)["output"], rtol=1e-5, atol=1e-6)
    maxabs = {}
    run_graph(r, feeds, observer=lambda n, outs: maxabs.__setitem__(n.name, float(np.abs(outs[0]).max())))
    assert max(maxabs.values()) <= 32768  # every value inside fp16's range, with headroom


def test_classifier_output_is_undone_by_one_fp32_multiply(tmp_path):
    """A classifier whose logits exceed fp16: its last region ends at the graph output, undone by
    one fp32 multiply (the only island); everything before it computes in fp16."""
    torch.manual_seed(0)
    m = Growing(n=6, head=True).eval()
    x = torch.rand(1, 3, 8, 8)
    m.grow(x)
    with torch.no_grad():
        m.head.weight.mul_(1e6)
        ref = m(x).double().numpy()
    assert np.abs(ref).max() > 65504
    cm = tlc.build(m, (x,))
    (island,) = cm.islands  # the multiply that undoes the scale at the output, nothing else
    assert island.endswith("_unscale") and "inf in fp16" in cm.islands[island]
    assert cm.report().residency > 0.999
    out = load(cm.save(tmp_path / "c.mlpackage"))({"x": x.numpy()})["output"]
    assert rel_l2(out, ref) <= 1e-2


# ------------------------------------------------------------------------------- must not fire


def _rescaled(g, feeds, io_dtype="fp32"):
    return run_pipeline(g, ["precision::rescale"], {"precision::rescale": {"calibration": [feeds], "io_dtype": io_dtype}})


def _graph(build):
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 8)))
    out = build(b, x)
    return b.build([out], ["y"])


def _w(b, k=1.0, shape=(8, 8)):
    return b.const(np.full(shape, k / 8, np.float32))


def test_must_not_fire_in_range():
    g = _graph(lambda b, x: b.add("relu", [b.add("linear", [x, _w(b, 3.0)]).out]).out)
    assert _rescaled(g, {"x": np.ones((2, 8), np.float32)}) is g  # nothing out of range: the same graph object


def test_must_not_fire_through_a_softmax():
    """Overflowing scores read by a softmax: the softmax needs the true values."""
    g = _graph(lambda b, x: b.add("softmax", [b.add("linear", [x, _w(b, 1e6)]).out], {"axis": -1}).out)
    r = _rescaled(g, {"x": np.ones((2, 8), np.float32)})
    assert [n.attrs for n in r.nodes] == [n.attrs for n in g.nodes]
    (rec,) = r.meta["tlc.rescaled"]
    assert rec["exponent"] == 0 and "softmax" in rec["why_not"]


def test_must_not_fire_on_a_product_of_two_activations():
    def build(b, x):
        h = b.add("linear", [x, _w(b, 1e3)]).out
        return b.add("layer_norm", [b.add("mul", [h, h]).out], {"axes": (1,), "epsilon": 1e-5}).out

    g = _graph(build)
    r = _rescaled(g, {"x": np.ones((2, 8), np.float32)})
    assert all(float(np.abs(n.attrs["val"]).max()) == float(np.abs(o.attrs["val"]).max())
               for n, o in zip(r.nodes, g.nodes) if n.op == "const")
    assert any("multiplies two activations" in rec.get("why_not", "") for rec in r.meta["tlc.rescaled"])


def test_must_not_fire_on_a_region_tied_to_a_graph_input():
    """relu(x) with x itself beyond fp16: the input's scale is the caller's, not the graph's."""
    g = _graph(lambda b, x: b.add("layer_norm", [b.add("relu", [x]).out], {"axes": (1,), "epsilon": 1e-5}).out)
    r = _rescaled(g, {"x": np.full((2, 8), 1e6, np.float32)})
    assert [n.attrs for n in r.nodes] == [n.attrs for n in g.nodes]
    assert "graph input" in r.meta["tlc.rescaled"][0]["why_not"]


def test_must_not_fire_on_an_fp16_output():
    """A region ending at a graph output with fp16 I/O: the output cannot hold the true values."""
    g = _graph(lambda b, x: b.add("relu", [b.add("linear", [x, _w(b, 1e6)]).out]).out)
    feeds = {"x": np.ones((2, 8), np.float32)}
    r = _rescaled(g, feeds, io_dtype="fp16")
    assert [n.attrs for n in r.nodes] == [n.attrs for n in g.nodes] and "fp16" in r.meta["tlc.rescaled"][0]["why_not"]
    r32 = _rescaled(g, feeds)  # the same with fp32 I/O: undone by a multiply at the output
    assert [n.op for n in r32.nodes if n.op != "const"] == ["linear", "relu", "mul"]
    np.testing.assert_allclose(run_graph(r32, feeds)["y"], run_graph(g, feeds)["y"], rtol=1e-6)


def test_must_not_fire_when_one_scale_cannot_hold_the_region():
    """A region holding values 1e-3 and 1e7 (added together): no exponent keeps both in fp16."""
    def build(b, x):
        h = b.add("relu", [b.add("linear", [x, _w(b, 1e-3)]).out]).out  # ~1e-3
        big = b.add("linear", [h, _w(b, 1e10)]).out  # ~1e7
        return b.add("layer_norm", [b.add("add", [big, h]).out], {"axes": (1,), "epsilon": 1e-5}).out

    g = _graph(build)
    r = _rescaled(g, {"x": np.ones((2, 8), np.float32)})
    assert [n.attrs for n in r.nodes] == [n.attrs for n in g.nodes]
    assert any("more than fp16's normal range" in rec.get("why_not", "") for rec in r.meta["tlc.rescaled"])


def test_must_not_fire_when_the_weight_cannot_hold_the_scale():
    """An output of ~1e-8 that only a weight with one 1e4 entry (facing a zero input) makes: the
    scale-up would overflow that entry in fp16, so the weighted op's regions are tied and the
    output keeps its scale (the loop then keeps the output tail in fp32)."""
    def build(b, x):
        w = np.full((8, 8), 1e-9, np.float32)
        w[:, 0] = 1e4
        return b.add("linear", [x, b.const(w)]).out

    g = _graph(build)
    feeds = {"x": np.concatenate([np.zeros((2, 1)), np.ones((2, 7))], 1).astype(np.float32)}
    r = _rescaled(g, feeds)
    assert [n.attrs for n in r.nodes] == [n.attrs for n in g.nodes]
    (rec,) = r.meta["tlc.rescaled"]
    assert rec["exponent"] == 0 and "cannot hold 2^" in rec["why_not"]
