"""``layout::fold_rank``: rank > 5 view chains rewritten at rank <= 5 by merging axes that move
together (issue 10). Per pass: op lists before/after, numerics against the unoptimized graph in the
NumPy runtime, and must-not-fire cases (a rank-6 graph input or output). A permutation that moves
every axis becomes transposes of rank <= 4 (issue 29)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tlc
from tlc.ir import GraphBuilder, TensorType, verify
from tlc.passes import run_pipeline
from tlc.runtime import run_graph

from shipcheck import ship


def _ranks(g):
    return [v.type.rank for n in g.nodes for v in n.outputs]


def _same(g, h, feeds):
    a, b = run_graph(g, feeds), run_graph(h, feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def _window_partition_graph():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (1, 8, 8, 8)))
    v = b.add("reshape", [x], {"shape": (1, 2, 4, 2, 4, 8)}).out
    p = b.add("transpose", [v], {"perm": (0, 1, 3, 2, 4, 5)}).out
    s = b.add("mul", [p, b.const(np.float32(2.0))]).out
    w = b.add("reshape", [s], {"shape": (4, 16, 8)}).out
    return b.build([w], ["y"])


def test_window_partition_folds_to_rank_4():
    g = _window_partition_graph()
    h = run_pipeline(g, ["layout::fold_rank"])
    verify(h)
    assert max(_ranks(g)) == 6 and max(_ranks(h)) == 4
    assert [n.op for n in h.nodes if n.op != "const"] == ["reshape", "transpose", "mul", "reshape"]
    t = next(n for n in h.nodes if n.op == "transpose")
    assert t.attrs["perm"] == (0, 2, 1, 3) and t.inputs[0].type.shape == (2, 4, 2, 32)
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)
    _same(g, h, {"x": x})


def test_broadcast_operand_and_reduction_fold():
    """A rank-6 value times a per-channel constant, then reduced over one axis: the constant is
    reshaped to the merged groups and the reduction keeps its own group."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 3, 4, 210)))
    v = b.add("reshape", [x], {"shape": (2, 3, 4, 5, 6, 7)}).out
    c = b.const(np.random.default_rng(1).standard_normal((6, 7)).astype(np.float32))
    y = b.add("mul", [v, c]).out
    r = b.add("reduce_sum", [y], {"axes": (1,), "keep_dims": False}).out  # rank 5 out
    g = b.build([r], ["y"])
    h = run_pipeline(g, ["layout::fold_rank"])
    verify(h)
    assert max(_ranks(h)) <= 5
    mul = next(n for n in h.nodes if n.op == "mul")
    assert mul.out.type.shape == (2, 3, 20, 42)  # groups (2), (3) reduced, (4, 5) and (6, 7) where c broadcasts
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 210)).astype(np.float32)}
    out_g, out_h = run_graph(g, feeds)["y"], run_graph(h, feeds)["y"]
    np.testing.assert_allclose(out_h, out_g, rtol=1e-6, atol=1e-6)


def test_a_permutation_of_every_axis_folds_in_steps():
    """(0, 2, 4, 1, 3, 5) keeps no two axes together: no merge folds it, so it becomes transposes of
    rank <= 4 of merged axes (issue 29: Hiera's unroll, MaxViT's grid), exactly."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 3 * 4 * 5, 42)))
    v = b.add("reshape", [x], {"shape": (2, 3, 4, 5, 6, 7)}).out
    p = b.add("transpose", [v], {"perm": (0, 2, 4, 1, 3, 5)}).out
    y = b.add("reshape", [p], {"shape": (2, 2520)}).out
    g = b.build([y], ["y"])
    h = run_pipeline(g, ["layout::fold_rank"])
    verify(h)
    assert max(_ranks(h)) <= 4 and sum(n.op == "transpose" for n in h.nodes) >= 2
    _same(g, h, {"x": np.random.default_rng(0).standard_normal((2, 60, 42)).astype(np.float32)})


def test_maxvit_grid_partition_is_two_rank_4_transposes():
    """A rank-5 transpose that moves every axis (MaxViT's grid: (7, 8, 7, 8, C) -> (8, 8, 7, 7, C)):
    two transposes of rank <= 4; a rank-5 transpose of a graph input is left as it is."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (1, 3136, 16)))
    v = b.add("reshape", [x], {"shape": (7, 8, 7, 8, 16)}).out
    p = b.add("transpose", [v], {"perm": (1, 3, 0, 2, 4)}).out
    g = b.build([b.add("reshape", [p], {"shape": (64, 49, 16)}).out], ["y"])
    h = run_pipeline(g, ["layout::fold_rank"])
    assert max(_ranks(h)) <= 4 and [n.op for n in h.nodes].count("transpose") == 2
    _same(g, h, {"x": np.random.default_rng(1).standard_normal((1, 3136, 16)).astype(np.float32)})
    b = GraphBuilder()
    x5 = b.add_input("x", TensorType("fp32", (2, 3, 4, 5, 6)))
    g = b.build([b.add("reshape", [b.add("transpose", [x5], {"perm": (4, 2, 0, 3, 1)}).out], {"shape": (720,)}).out],
                ["y"])
    assert run_pipeline(g, ["layout::fold_rank"]) is g


def test_rank_5_regions_fold_to_rank_4():
    """Hiera's q pooling: a max over a rank-5 view of the heads ((1, h, 4, 49, d) -> (1, h, 49, d))
    runs at rank <= 4 (rule rank5); a rank-5 graph input keeps its region as it is."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (1, 8, 196, 16)))
    v = b.add("reshape", [x], {"shape": (1, 8, 4, 49, 16)}).out
    g = b.build([b.add("reduce_max", [v], {"axes": (2,), "keep_dims": False}).out], ["y"])
    h = run_pipeline(g, ["layout::fold_rank"])
    assert max(_ranks(g)) == 5 and max(_ranks(h)) <= 4
    _same(g, h, {"x": np.random.default_rng(2).standard_normal((1, 8, 196, 16)).astype(np.float32)})
    b = GraphBuilder()
    x5 = b.add_input("x", TensorType("fp32", (1, 8, 4, 49, 16)))
    g = b.build([b.add("reduce_max", [x5], {"axes": (2,), "keep_dims": False}).out], ["y"])
    assert run_pipeline(g, ["layout::fold_rank"]) is g


def test_folded_axes_keep_within_the_ane_size_limit():
    """torchvision MaxViT's scaled keys: a scalar ``mul`` on a rank-5 view of 200704 elements
    folds to rank <= 4 with no axis above 65536 (one merged axis would leave the ANE), same numbers."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (64, 98, 32)))
    v = b.add("reshape", [x], {"shape": (1, 64, 49, 2, 32)}).out
    s = b.add("mul", [v, b.const(np.float32(0.5))]).out
    g = b.build([b.add("reshape", [s], {"shape": (64, 98, 32)}).out], ["y"])
    h = run_pipeline(g, ["layout::fold_rank"])
    assert max(_ranks(h)) <= 4
    assert max(d for n in h.nodes for v in n.outputs for d in v.type.shape) <= 65536
    _same(g, h, {"x": np.random.default_rng(3).standard_normal((64, 98, 32)).astype(np.float32)})


def test_a_rank_6_graph_output_must_not_fold():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (4, 6)))
    v = b.add("reshape", [x], {"shape": (1, 2, 2, 2, 3, 1)}).out
    g = b.build([b.add("relu", [v]).out], ["y"])
    assert run_pipeline(g, ["layout::fold_rank"]) is g


def test_unit_axes_drop_out():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 3, 4)))
    v = b.add("reshape", [x], {"shape": (1, 2, 1, 3, 1, 4, 1)}).out
    p = b.add("transpose", [v], {"perm": (6, 5, 4, 3, 2, 1, 0)}).out
    y = b.add("reshape", [p], {"shape": (4, 3, 2)}).out
    g = b.build([y], ["y"])
    h = run_pipeline(g, ["layout::fold_rank"])
    assert max(_ranks(h)) == 3
    _same(g, h, {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})


@pytest.mark.parametrize("fn, shape", [
    (lambda x: F.pixel_shuffle(x, 2), (1, 8, 5, 6)),
    (lambda x: F.pixel_unshuffle(x, 2), (1, 3, 6, 4)),
    (lambda x: F.pixel_unshuffle(F.pixel_shuffle(x, 3), 3) * 2 + x, (2, 9, 3, 3)),
    (lambda x: x.reshape(2, 2, 2, 3, 2, 2).permute(0, 1, 3, 2, 4, 5).softmax(-1).reshape(2, 48), (2, 48)),
], ids=["pixel_shuffle", "pixel_unshuffle", "shuffle_roundtrip", "softmax_rank6"])
def test_models_with_rank_6_views_are_one_package(fn, shape, tmp_path):
    torch.manual_seed(0)
    cm = ship(fn, (torch.randn(*shape),), tmp_path, tol=1e-6, name="r6")
    assert max(_ranks(cm.graph)) <= 5


def test_unfoldable_rank_6_runs_in_the_fallback_runtime(tmp_path):
    def fn(x):
        return (x.permute(0, 2, 4, 1, 3, 5) * 2).sum()

    x = torch.randn(2, 3, 4, 5, 6, 7)
    cm = tlc.build(fn, (x,), precision="fp32")
    assert cm.is_bundle
    reasons = [why for _, _, why, _ in cm.fallback_ops()]
    assert any("rank 6" in r for r in reasons)
    out = tlc.runtime.load(cm.save(tmp_path / "m.mlpackage"))({"x": x.numpy()})["output"]
    assert abs(float(out) - float(fn(x))) <= 1e-3 * abs(float(fn(x)))
