"""tlc.runtime.load, `tlc run`, `tlc inspect`, and bad packages / bad inputs: each a clear
error naming what is wrong and what was expected."""
import json
import shutil

import numpy as np
import pytest
import torch

import tlc
from tlc.runtime import MILInterpreter, PackageError, load, package_info


def cli(*args, cwd=None):
    from pkgtools import run_tlc

    return run_tlc(*args, cwd=cwd)


def f(x, ids):
    table = torch.arange(40, dtype=torch.float32).reshape(10, 4) / 10
    return {"y": torch.tanh(x @ x.transpose(0, 1)), "emb": table[ids] * 2}


X = torch.randn(3, 4)
IDS = torch.tensor([1, 7, 3])


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    d = tmp_path_factory.mktemp("pkg")
    return tlc.build(f, (X, IDS), precision="fp32").save(d / "f.mlpackage")


def test_load_runs_with_interpreter(pkg):
    m = load(pkg)
    assert m.backend == "interpreter"
    assert [n for n, *_ in m.inputs] == ["x", "ids"] and m.output_names == ["y", "emb"]
    out = m({"x": X.numpy(), "ids": IDS.numpy()})  # int64 ids are accepted (cast to int32)
    ref = f(X.double(), IDS)
    np.testing.assert_allclose(out["y"], ref["y"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["emb"], ref["emb"].numpy(), rtol=1e-6)
    out2 = m(x=X.numpy(), ids=IDS.numpy())
    np.testing.assert_array_equal(out2["y"], out["y"])
    with pytest.raises(tlc.TlcError, match="macOS"):
        load(pkg, backend="coreml")


@pytest.mark.parametrize("feeds,match", [
    ({"x": X.numpy()}, "missing \\['ids'\\]"),
    ({"x": X.numpy(), "ids": IDS.numpy(), "z": X.numpy()}, "unexpected \\['z'\\]"),
    ({"x": np.ones((3, 5), np.float32), "ids": IDS.numpy()}, "'x' has shape \\[3, 5\\], expected \\[3, 4\\]"),
    ({"x": X.numpy(), "ids": np.ones(3, np.float32)}, "'ids' has dtype float32, expected int32"),
])
def test_bad_feeds(pkg, feeds, match):
    with pytest.raises(tlc.InputError, match=match):
        load(pkg)(feeds)


def test_not_a_package(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        MILInterpreter(tmp_path / "nope.mlpackage")
    (tmp_path / "dir.mlpackage").mkdir()
    with pytest.raises(PackageError, match="not an .mlpackage"):
        MILInterpreter(tmp_path / "dir.mlpackage")


def test_truncated_weights(pkg, tmp_path):
    bad = shutil.copytree(pkg, tmp_path / "t.mlpackage")
    weights = next((bad / "Data").rglob("weight.bin"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(PackageError, match="truncated"):
        MILInterpreter(bad)
    r = cli("run", bad, "--input", "x=/dev/null")
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr


def test_missing_weight_file(pkg, tmp_path):
    bad = shutil.copytree(pkg, tmp_path / "m.mlpackage")
    next((bad / "Data").rglob("weight.bin")).unlink()
    with pytest.raises(PackageError, match="missing"):
        MILInterpreter(bad)


def test_neuralnetwork_model_refused(tmp_path):
    import coremltools as ct
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    b = NeuralNetworkBuilder([("x", datatypes.Array(3))], [("y", datatypes.Array(3))])
    b.add_activation("relu", "RELU", "x", "y")
    p = tmp_path / "nn.mlpackage"
    ct.models.MLModel(b.spec, skip_model_load=True).save(str(p))
    with pytest.raises(PackageError, match="neuralNetwork model; tlc's interpreter runs mlprogram models only"):
        MILInterpreter(p)


def test_cli_run_and_out_dir(pkg, tmp_path):
    np.save(tmp_path / "x.npy", X.numpy())
    np.save(tmp_path / "ids.npy", IDS.numpy().astype(np.int32))
    r = cli("run", pkg, "--input", f"x={tmp_path / 'x.npy'}", "--input", f"ids={tmp_path / 'ids.npy'}",
            "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "interpreter" in r.stdout and "y" in r.stdout and "nan/inf 0" in r.stdout
    y = np.load(tmp_path / "out" / "y.npy")
    np.testing.assert_allclose(y, torch.tanh(X @ X.T).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inputs,match", [
    (["x"], "must be NAME=FILE.npy"),
    (["x=/no/such.npy"], "does not exist"),
    (["x=@NOTNPY"], "not a NumPy .npy file"),
])
def test_cli_run_bad_inputs(pkg, tmp_path, inputs, match):
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    inputs = [i.replace("@NOTNPY", str(junk)) for i in inputs]
    r = cli("run", pkg, *[a for i in inputs for a in ("--input", i)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tlc run: error:" in r.stderr and match.split(" ")[0] in r.stderr


def test_cli_run_wrong_shape(pkg, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    np.save(tmp_path / "ids.npy", IDS.numpy())
    r = cli("run", pkg, "--input", f"x={tmp_path / 'x.npy'}", "--input", f"ids={tmp_path / 'ids.npy'}")
    assert r.returncode == 2 and "'x' has shape [2, 4], expected [3, 4]" in r.stderr


def test_inspect(pkg):
    info = package_info(pkg)
    assert [i["name"] for i in info["inputs"]] == ["x", "ids"]
    assert info["inputs"][1]["dtype"] == "int32" and info["outputs"][0]["shape"] == [3, 3]
    assert info["precision"] == "fp32" and info["ops"]["matmul"] == 1 and info["ops"]["gather"] == 1
    assert info["metadata"]["tlc.version"] == tlc.__version__
    r = cli("inspect", pkg)
    assert r.returncode == 0 and "precision fp32" in r.stdout and "matmul 1" in r.stdout and "tlc.source" in r.stdout
    r = cli("inspect", pkg, "--json")
    assert json.loads(r.stdout)["num_ops"] == info["num_ops"]
    r = cli("inspect", "/no/such.mlpackage")
    assert r.returncode == 2 and "does not exist" in r.stderr
