"""The IR contract: typed construction, the verifier, immutability, the printer, freeing."""
import dataclasses
import types

import numpy as np
import pytest

from tlc.errors import IRError
from tlc.ir import GraphBuilder, Node, SourceLoc, TensorType, Value, format_graph, verify
from tlc.runtime import run_graph
from tlc.runtime.numpy_executor import last_uses


def small_graph():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 3)))
    w = b.const(np.ones((4, 3), np.float32), name="w")
    y = b.add("linear", [x, w], loc=SourceLoc("model.py", 7, "y = self.fc(x)", "fc")).out
    z = b.add("relu", [y]).out
    return b.build([z, y], ["z", "y"]), b


def test_builder_infers_types():
    g, _ = small_graph()
    assert [n.op for n in g.nodes] == ["const", "linear", "relu"]
    assert g.outputs[0].type == TensorType("fp32", (2, 4))
    assert g.num_ops == 2 and g.op_histogram() == {"linear": 1, "relu": 1}


def test_builder_rejects_bad_types_with_location():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 3)))
    i = b.add_input("i", TensorType("int32", (2, 3)))
    with pytest.raises(IRError, match="different dtypes"):
        b.add("add", [x, i])
    with pytest.raises(IRError, match="inner dimensions") as e:
        b.add("matmul", [x, x], loc=SourceLoc("m.py", 3, "x @ x"))
    assert "m.py:3" in str(e.value)
    with pytest.raises(IRError, match="unknown IR op"):
        b.add("no_such_op", [x])
    with pytest.raises(IRError, match="do not broadcast"):
        b.add("mul", [x, b.add_input("y", TensorType("fp32", (4,)))])


def test_verifier_catches_order_and_types():
    g, _ = small_graph()
    swapped = dataclasses.replace(g, nodes=(g.nodes[0], g.nodes[2], g.nodes[1]))
    with pytest.raises(IRError, match="used before it is defined"):
        verify(swapped)
    lin = g.nodes[1]
    bad = Node(lin.op, lin.inputs, (Value(lin.out.name, TensorType("fp32", (2, 5))),), lin.attrs, lin.name, lin.loc)
    with pytest.raises(IRError, match="differ from its infer rule") as e:
        verify(dataclasses.replace(g, nodes=(g.nodes[0], bad, g.nodes[2]), outputs=(g.outputs[0], bad.out)))
    assert "model.py:7" in str(e.value) and ">>" in str(e.value)  # source line and surrounding IR
    dangling = Value("ghost", TensorType("fp32", (1,)))
    with pytest.raises(IRError, match="not defined"):
        verify(dataclasses.replace(g, outputs=(dangling, g.outputs[1])))


def test_nodes_and_constants_are_immutable():
    g, _ = small_graph()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.nodes[1].op = "relu"
    assert isinstance(g.nodes[0].attrs, types.MappingProxyType)
    with pytest.raises(TypeError):
        g.nodes[0].attrs["val"] = None
    with pytest.raises(ValueError):
        g.nodes[0].attrs["val"][0, 0] = 5.0


def test_printer():
    g, _ = small_graph()
    text = format_graph(g, show_loc=True)
    assert "graph(%x: fp32[2,3])" in text
    assert "= linear(%x, %w)" in text and "# model.py:7" in text
    assert "return z=%relu, y=%linear" in text


def test_runtime_frees_after_last_use():
    g, _ = small_graph()
    free = last_uses(g)
    freed = {v.name for vs in free.values() for v in vs}
    assert "w" in freed and "x" in freed
    assert "linear" not in freed  # a graph output is never freed
    out = run_graph(g, {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2})
    np.testing.assert_allclose(out["y"], (np.arange(6).reshape(2, 3) - 2) @ np.ones((3, 4)))
    np.testing.assert_allclose(out["z"], np.maximum(out["y"], 0))


def test_tensor_type_validation():
    with pytest.raises(IRError, match="unknown IR dtype"):
        TensorType("int64", (1,))
    with pytest.raises(IRError, match="non-negative"):
        TensorType("fp32", (-1, 2))
    assert TensorType("fp16", (2, 3)).nbytes == 12


def test_dce_pass():
    from tlc.passes import run_pipeline

    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (3,)))
    a = b.add("relu", [x]).out
    b.add("exp", [x])  # dead
    b.const(np.ones(3, np.float32), name="unused")  # dead
    g = b.build([a], ["a"])
    g2 = run_pipeline(g, ["cleanup::dce"])
    assert [n.op for n in g2.nodes] == ["relu"]
    assert run_pipeline(g2, ["cleanup::dce"]) is g2  # nothing to do: same graph back
    with pytest.raises(IRError, match="unknown pass"):
        run_pipeline(g, ["cleanup::nope"])
