"""Issue 13: errors name the pass that raised them; every registry (ops, passes, lowerings)
rejects a second registration of a name."""
from __future__ import annotations

import pytest

import tlc.ops
from tlc.errors import IRError
from tlc.frontend.common import LOWERINGS, lower
from tlc.ir import replace
from tlc.passes import PASSES, register_pass, run_pipeline


def _graph():
    import torch

    from tlc.frontend import trace

    return trace(lambda x: torch.relu(x) + 1.0, (torch.randn(2, 3),))[0]


@pytest.fixture
def temp_pass():
    added = []

    def make(name, fn):
        register_pass(name)(fn)
        added.append(name)

    yield make
    for n in added:
        PASSES.pop(n, None)


def test_an_error_in_a_pass_names_the_pass_and_what_ran_before(temp_pass):
    def broken(g):
        raise KeyError("value %7 has no producer")

    temp_pass("test::broken", broken)
    with pytest.raises(KeyError) as e:
        run_pipeline(_graph(), ["cleanup::noop", "cleanup::const_fold", "test::broken", "cleanup::dce"])
    msg = str(e.value)
    assert "pass 'test::broken' failed (after: cleanup::noop, cleanup::const_fold)" in msg, msg
    assert "value %7 has no producer" in msg


def test_a_tlc_error_keeps_its_class_and_location(temp_pass):
    g0 = _graph()
    loc = g0.nodes[0].loc

    def broken(g):
        raise IRError("rank mismatch", loc=loc)

    temp_pass("test::broken_ir", broken)
    with pytest.raises(IRError) as e:
        run_pipeline(g0, ["test::broken_ir"])
    assert str(e.value).startswith("pass 'test::broken_ir' failed (the first pass): rank mismatch")
    assert e.value.loc is loc


def test_a_pass_that_breaks_the_ir_contract_is_named(temp_pass, monkeypatch):
    monkeypatch.setenv("TLC_VERIFY", "1")

    def retype(g):  # puts the nodes out of topological order
        return replace(g, nodes=tuple(reversed(g.nodes)))

    temp_pass("test::retype", retype)
    with pytest.raises(IRError, match=r"pass 'test::retype' broke the IR contract \(after: cleanup::noop\)"):
        run_pipeline(_graph(), ["cleanup::noop", "test::retype"])


def test_registries_reject_duplicates():
    with pytest.raises(IRError, match="registered twice"):
        tlc.ops.register("relu", infer=lambda i, a: i, numpy=lambda a, x: x, emit_mil=None, host_only="test")
    with pytest.raises(IRError, match="registered twice"):
        register_pass("cleanup::dce")(lambda g: g)
    with pytest.raises(IRError, match="two lowerings"):
        lower("aten.relu.default")(lambda L, x: x)
    assert "aten.relu.default" in LOWERINGS and "aten.narrow_copy.default" in LOWERINGS


def test_importing_the_runtime_does_not_import_torch():
    """Running or inspecting a package needs no torch: ``import tlc.runtime`` (and the op table
    with its torch kernels, :mod:`tlc._lazy`) leaves it unimported; ``tlc.build`` imports it."""
    import subprocess
    import sys

    code = ("import sys, tlc.runtime, tlc.ops; assert 'torch' not in sys.modules, 'torch imported'; "
            "import tlc; tlc.build; assert 'torch' in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_tlc_inspect_reads_the_spec_without_torch_or_coremltools(tmp_path):
    """``tlc inspect PKG`` reads the spec through coremltools' protobuf modules only
    (:mod:`tlc.runtime.mlspec`): neither torch nor the coremltools package is imported."""
    import subprocess
    import sys

    import torch

    import tlc

    pkg = tmp_path / "m.mlpackage"
    tlc.build(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval(), (torch.randn(2, 4),)).save(pkg)
    code = ("import sys; from tlc.cli import main; rc = main(['inspect', sys.argv[1]]); "
            "bad = [m for m in ('torch', 'coremltools') if m in sys.modules]; assert not bad, bad; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(pkg)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "float32[2, 4]" in r.stdout, r.stdout
    assert "linear 1" in r.stdout and "relu 1" in r.stdout, r.stdout


def test_op_traits_are_in_the_rows():
    """Passes read op facts from the rows, not from name lists of their own (issue 13)."""
    from tlc.ir import TensorType
    from tlc.ops import OPS, elementwise_ops

    assert {"sign", "logical_not", "add", "cast", "identity"} <= elementwise_ops()
    assert "select" in elementwise_ops("ternary") and "matmul" not in elementwise_ops()
    t = [TensorType("fp32", (2, 3))]
    assert OPS["reshape"].is_noop({"shape": (2, 3)}, t) and not OPS["reshape"].is_noop({"shape": (3, 2)}, t)
    assert OPS["cast"].is_noop({"dtype": "fp32"}, t) and not OPS["cast"].is_noop({"dtype": "fp16"}, t)
    assert OPS["relu"].is_noop is None


def _gather_graph():
    import numpy as np

    from tlc.ir import GraphBuilder, TensorType

    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (3, 4)))
    idx = b.add_input("idx", TensorType("int32", (2,)))
    y = b.add("gather", [b.add("relu", [x]).out, idx], {"axis": 0}).out
    feeds = {"x": np.ones((3, 4), np.float32), "idx": np.array([0, 7], np.int32)}  # 7: out of range
    return b.build([b.add("exp", [y]).out], ["y"]), feeds


def test_kernel_failures_print_the_ir_around_the_node():
    """Both executors name the node and show the IR context printer's lines (tlc.ir.node_context):
    the failing node marked, its neighbours, and (NumPy) the arrays it got."""
    from tlc.errors import TlcError
    from tlc.runtime import run_graph
    from tlc.runtime.torch_executor import TorchExecutor

    g, feeds = _gather_graph()
    with pytest.raises(TlcError) as e:
        run_graph(g, feeds)
    text = str(e.value)
    assert "NumPy kernel for gather failed on node gather" in text
    assert ">> %gather: fp32[2,4] = gather(%relu, %idx, axis=0)" in text and "= relu(%x)" in text
    assert "inputs at run time: %relu: float32[3, 4], %idx: int32[2]" in text
    with pytest.raises(TlcError) as e:
        TorchExecutor(g, device="cpu").run(feeds)
    assert "torch kernel for gather failed on node gather" in str(e.value)
    assert ">> %gather: fp32[2,4] = gather(%relu, %idx, axis=0)" in str(e.value)
