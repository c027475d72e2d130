"""Spine acceptance on small configs: every architecture traces, lowers, runs in the NumPy
runtime within fp32 rel-L2 1e-5 of torch eager (float64 reference), and its fp16 and fp32
packages reload with the expected input/output names, shapes and dtypes."""
import numpy as np
import pytest
import torch

import tlc
from tlc.backends.coreml.package import check_package_io
from archs import ARCHS, make, reference


def rel_l2(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module", params=ARCHS)
def built(request):
    model, args, kwargs = make(request.param)
    cm = tlc.build(model, (args, kwargs))
    return request.param, model, args, kwargs, cm


def test_numpy_runtime_matches_torch(built):
    name, model, args, kwargs, cm = built
    got = torch.utils._pytree.tree_leaves(cm(*args, **kwargs))
    ref = reference(model, args, kwargs)
    assert len(got) == len(ref) > 0
    for g, r in zip(got, ref):
        assert tuple(g.shape) == tuple(r.shape)
        assert g.dtype == torch.float32
        assert rel_l2(g, r) <= 1e-5, f"{name}: rel-L2 {rel_l2(g, r):.2e}"


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_package_io(built, precision, tmp_path):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.converters.mil.mil import types

    name, model, args, kwargs, cm = built
    cm = cm.with_options(precision=precision)
    path = cm.save(tmp_path / f"{name}.mlpackage")
    assert check_package_io(path, cm.emit_graph) == []
    m = ct.models.MLModel(str(path), skip_model_load=True)
    spec = m.get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    prog = milproto_load(spec, spec.specificationVersion, m.weights_dir)
    f = prog.functions["main"]
    # names from the user's signature / the model's output structure
    expected_in = list(kwargs) or {"vit": ["pixel_values"], "resnet": ["pixel_values"], "mobilenetv2": ["pixel_values"],
                                   "convnext": ["pixel_values"], "whisper_encoder": ["input_features"]}[name]
    assert list(f.inputs) == expected_in
    for n, a in zip(expected_in, list(args) + list(kwargs.values())):
        assert tuple(f.inputs[n].shape) == tuple(a.shape)
        assert types.builtin_to_string(f.inputs[n].dtype) == ("int32" if not a.is_floating_point() else "fp32")
    assert "last_hidden_state" in [o.name for o in f.outputs]
    for o, r in zip(f.outputs, reference(model, args, kwargs)):
        assert tuple(o.shape) == tuple(r.shape)
        assert types.builtin_to_string(o.dtype) == "fp32"
    consts = [op for op in f.operations if op.op_type == "const" and op.outputs[0].val is not None
              and getattr(op.outputs[0].val, "size", 0) > 64]
    want = np.float16 if precision == "fp16" else np.float32
    assert consts and all(op.outputs[0].val.dtype in (want, np.int32, np.bool_) for op in consts)
    md = m.user_defined_metadata
    assert md["tlc.precision"] == precision and md["tlc.version"] == tlc.__version__
