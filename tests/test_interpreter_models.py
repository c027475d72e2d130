"""Issue 3 acceptance on small configs: tlc's fp32 and fp16 packages of every spine architecture
run in the MIL interpreter and match torch eager (float64 reference); so do the packages
coremltools itself produces for ResNet, MobileNetV2 and ConvNeXt."""
import warnings

import numpy as np
import pytest
import torch

import tlc
from archs import ARCHS, make, reference
from tlc.runtime import MILInterpreter, package_info
from tlc.check.metrics import rel_l2

TOL = {"fp32": 1e-5, "fp16": 1e-2}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", ARCHS)
def test_tlc_package_in_interpreter(name, precision, tmp_path):
    model, args, kwargs = make(name)
    cm = tlc.build(model, (args, kwargs), precision=precision)
    path = cm.save(tmp_path / f"{name}.mlpackage")
    assert package_info(path)["precision"] == precision
    interp = MILInterpreter(path)
    feeds = {n: t.numpy() for n, t in zip(cm.input_names, list(args) + list(kwargs.values()))}
    out = interp.run(feeds)
    tol = TOL[precision]
    refs = reference(model, args, kwargs)
    assert list(out) == cm.output_names
    for (oname, got), ref in zip(out.items(), refs):
        assert got.dtype == np.float32
        assert np.isfinite(got).all(), f"{name} {oname}: NaN/inf in the interpreter's output"
        err = rel_l2(got, ref.numpy())
        assert err <= tol, f"{name} {precision} {oname}: rel-L2 {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "convnext"])
def test_coremltools_package_in_interpreter(name, tmp_path):
    import coremltools as ct

    model, args, kwargs = make(name)
    ep = torch.export.export(model, args, strict=False).run_decompositions({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    path = tmp_path / f"ct_{name}.mlpackage"
    ml.save(str(path))
    interp = MILInterpreter(path)
    assert package_info(path)["precision"] == "fp16"  # coremltools' default compute precision
    (iname, shape, _), = interp.inputs
    out = interp.run({iname: args[0].numpy()})
    refs = reference(model, args, kwargs)
    tol = TOL["fp16"]
    assert len(out) == len(refs)
    for got, ref in zip(out.values(), refs):
        assert np.isfinite(got).all()
        assert rel_l2(got, ref.numpy()) <= tol


def test_fp16_overflow_shows_as_inf(tmp_path):
    """A block whose activations exceed 65504 overflows in the fp16 package, exactly where the
    device would, and is finite in the fp32 package."""
    def f(x):
        h = x * 300.0  # |h| up to ~1e3
        return torch.nn.functional.layer_norm(h * h, (8,))  # h*h up to ~1e6 > 65504

    x = torch.randn(2, 8) + 3.0
    outs = {}
    for precision in ("fp32", "fp16"):
        cm = tlc.build(f, (x,), precision=precision)
        out = MILInterpreter(cm.save(tmp_path / f"o{precision}.mlpackage")).run({"x": x.numpy()})
        outs[precision] = out["output"]
    assert np.isfinite(outs["fp32"]).all()
    assert rel_l2(outs["fp32"], f(x.double()).numpy()) < 1e-5
    assert not np.isfinite(outs["fp16"]).all()
