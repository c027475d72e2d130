"""tlc verify: PASS on good builds; on a deliberately broken package, FAIL naming the broken op."""
import os
import sys
import textwrap

import pytest
import torch

import tlc
from pkgtools import corrupt_weights
from tlc.check.metrics import ir_node_name
from tlc.driver.verify import verify


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 16)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(self.down(torch.nn.functional.gelu(self.up(x))) + x)


@pytest.fixture()
def mlp():
    torch.manual_seed(0)
    return Mlp().eval(), (torch.randn(4, 16),)


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("fp16", 1e-2)])
def test_verify_passes(mlp, precision, tol):
    model, inputs = mlp
    r = verify(model, inputs, precision=precision)
    assert r.passed and r.precision == precision and r.divergence is None
    (o,) = r.outputs
    assert o.rel_l2 <= tol and o.cosine > 0.9999 and o.nonfinite == 0 and o.tol == tol
    assert "PASS" in r.text()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verify_names_corrupted_op(mlp, precision, tmp_path):
    model, inputs = mlp
    cm = tlc.build(model, inputs, precision=precision)
    good = cm.save(tmp_path / "good.mlpackage")
    target = next(n for n in cm.graph.nodes if n.op == "linear" and n.loc.module == "down")
    bad = corrupt_weights(good, tmp_path / "bad.mlpackage", target.name)
    r = verify(model, inputs, package=bad, compiled=cm)
    assert not r.passed
    assert r.divergence is not None and r.divergence.node.name == target.name
    text = r.text()
    assert "FAIL" in text and target.name in text and "test_verify.py" in text  # the source line
    assert verify(model, inputs, package=good, compiled=cm).passed  # the original is fine


def test_ir_node_name_mapping():
    assert ir_node_name("linear_3_cast_fp16") == "linear_3"
    assert ir_node_name("layer_norm_") == "layer_norm"
    assert ir_node_name("add_7") == "add_7"


def test_cli_verify(mlp, tmp_path):
    model_py = tmp_path / "model.py"
    model_py.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_verify import Mlp
        torch.manual_seed(0)
        model = Mlp().eval()
        example_inputs = (torch.randn(4, 16),)
    """))
    pkg = tmp_path / "m.mlpackage"
    from pkgtools import run_tlc

    r = run_tlc("verify", model_py, "-o", pkg)
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and "rel_l2" in r.stdout and pkg.exists()
    cm = tlc.build(Mlp().eval(), (torch.randn(4, 16),))
    target = next(n.name for n in cm.graph.nodes if n.op == "linear" and n.loc.module == "up")
    bad = corrupt_weights(pkg, tmp_path / "bad.mlpackage", target)
    r = run_tlc("verify", model_py, "--package", bad)
    assert r.returncode == 1
    assert "FAIL" in r.stdout and f"first diverging op: {target}" in r.stdout
