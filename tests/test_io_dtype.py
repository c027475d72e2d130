"""fp16 model I/O (``io_dtype="float16"``, coremltools' ``ct.TensorType(dtype=np.float16)``
semantics): float inputs/outputs are fp16 in the package with no cast at the boundary when the
first/last ops compute in fp16; the MIL interpreter, CompiledModel, ``tlc run`` and ``tlc verify``
take fp32 arrays for them; targets before iOS16 are refused."""
import textwrap

import numpy as np
import pytest
import torch

import tlc
from tlc.backends.coreml.package import check_package_io
from tlc.runtime import MILInterpreter, package_info
from tlc.check.metrics import rel_l2


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return {"logits": self.fc(h.mean((2, 3))), "features": h}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = {k: v.double().numpy() for k, v in model(x).items()}
    return model, x, ref


def casts(path):
    return MILInterpreter(path).op_histogram().get("cast", 0)


@pytest.mark.parametrize("precision", ["mixed", "fp16"])
def test_fp16_io_package_has_no_boundary_casts(net, precision, tmp_path):
    model, x, ref = net
    fp32_io = tlc.build(model, (x,), precision=precision).save(tmp_path / "a.mlpackage")
    cm = tlc.build(model, (x,), precision=precision, io_dtype="float16")
    path = cm.save(tmp_path / "b.mlpackage")
    assert check_package_io(path, cm.emit_graph) == []
    interp = MILInterpreter(path)
    assert [d for _, _, d in interp.inputs] == [np.float16]
    assert casts(fp32_io) == 3 and casts(path) == 0  # 1 input + 2 output casts gone
    assert sum(interp.op_histogram().values()) == sum(MILInterpreter(fp32_io).op_histogram().values()) - 3
    out = interp.run({"x": x.numpy()})  # fp32 given, converted to the package's fp16
    for k, r in ref.items():
        assert out[k].dtype == np.float16 and np.isfinite(out[k]).all()
        assert rel_l2(out[k], r) <= 1e-2, (k, rel_l2(out[k], r))
    assert package_info(path)["metadata"]["tlc.io_dtype"] == "float16"


def test_fp32_compute_with_fp16_io_casts_at_the_boundary(net, tmp_path):
    model, x, ref = net
    cm = tlc.build(model, (x,), precision="fp32", io_dtype="float16")
    path = cm.save(tmp_path / "c.mlpackage")
    g = cm.emit_graph
    assert g.inputs[0].type.dtype == "fp16" and all(v.type.dtype == "fp16" for v in g.outputs)
    assert {v.type.dtype for n in g.nodes if n.op not in ("cast", "const") for v in n.outputs} == {"fp32"}
    assert casts(path) == 3
    out = MILInterpreter(path).run({"x": x.numpy()})
    assert all(rel_l2(out[k], r) <= 1e-3 for k, r in ref.items())  # only the I/O rounding


def test_compiled_model_and_decorator_accept_fp32(net):
    model, x, ref = net
    cm = tlc.build(model, (x,), io_dtype="float16")
    out = cm(x)  # torch in, torch out in the model's own dtype
    assert out["logits"].dtype == torch.float32 and rel_l2(out["logits"].numpy(), ref["logits"]) <= 1e-2
    run = cm.run({"x": x.numpy().astype(np.float16)})  # fp16 given to the fp32 reference graph: converted
    assert run["logits"].dtype == np.float16 and rel_l2(run["logits"], ref["logits"]) <= 1e-2
    assert cm.with_options(io_dtype="float32").run({"x": x.numpy()})["logits"].dtype == np.float32

    @tlc.compile(io_dtype="float16")
    def f(a):
        return torch.tanh(a) * 2

    a = torch.randn(4, 5)
    y = f(a)  # computed by the fp32 reference, returned with the package's fp16 rounding, as torch fp32
    assert y.dtype == torch.float32 and torch.equal(y, y.half().float())
    np.testing.assert_allclose(y.numpy(), (torch.tanh(a) * 2).numpy(), rtol=1e-3)
    assert f.compiled.io_dtype == "float16" and f.compiled.emit_graph.inputs[0].type.dtype == "fp16"


def test_bad_io_dtype_and_old_target(net):
    model, x, _ = net
    with pytest.raises(tlc.InputError, match="iOS16"):
        tlc.build(model, (x,), io_dtype="float16", minimum_deployment_target="iOS15")
    with pytest.raises(tlc.InputError, match="io_dtype"):
        tlc.build(model, (x,), io_dtype="fp16")
    cm = tlc.build(model, (x,), io_dtype="float16", minimum_deployment_target="macOS13")  # = iOS16: fine
    with pytest.raises(tlc.InputError, match="iOS16"):
        cm.with_options(minimum_deployment_target="macOS12")


def test_cli_build_run_verify_with_fp16_io(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(textwrap.dedent("""
        import torch
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.GELU(), torch.nn.Linear(6, 3)).eval()
        example_inputs = (torch.randn(2, 6),)
    """))

    def cli(*args):
        from pkgtools import run_tlc

        r = run_tlc(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = cli("build", src, "-o", tmp_path / "m.mlpackage", "--io-dtype", "float16")
    assert "float16 I/O" in out and "input   input" in out and "fp16[2,6]" in out
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32))
    out = cli("run", tmp_path / "m.mlpackage", "--input", f"input={tmp_path / 'x.npy'}", "--out", tmp_path / "o")
    assert np.load(tmp_path / "o" / "output.npy").dtype == np.float16
    assert "PASS" in cli("verify", src, "--package", tmp_path / "m.mlpackage")
    assert "PASS" in cli("verify", src, "--io-dtype", "float16")
