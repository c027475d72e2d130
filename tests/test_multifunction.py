"""Issue 14, items 1, 2 and 5: several input shapes as one multifunction package. A BERT-style
model at three sequence lengths and a MobileNetV2-style model at two image sizes build as one
``.mlpackage``; every function matches torch eager (float64) in the MIL interpreter (fp32 1e-5,
mixed 1e-2); the weights are stored once (weight file <= 1.05x one function's); the runtime picks
the function by shape and pads along declared axes; coremltools-made multifunction packages run;
bad input fails clearly before anything is written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tlc
from tlc.errors import InputError
from tlc.runtime import load, package_info
from tlc.check.metrics import rel_l2

from archs import make, reference
from pkgtools import run_tlc

TOL = {"fp32": 1e-5, "mixed": 1e-2}


def _bert_sig(seq: int, seed: int = 0, pad: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (2, seq), generator=g)
    mask = torch.ones(2, seq, dtype=torch.long)
    if pad:
        mask[1, seq - pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _np(feeds):
    return {k: v.numpy().astype(np.int32) if v.dtype == torch.int64 else v.numpy() for k, v in feeds.items()}


def _check_functions(path, model, sigs, names, tol):
    m = load(path, backend="interpreter")
    assert sorted(m.functions) == sorted(names)
    for name, sig in zip(names, sigs):
        args, kwargs = (sig, {}) if isinstance(sig, tuple) else ((), sig)
        ref = reference(model, args, kwargs)
        feeds = _np(sig) if isinstance(sig, dict) else {m.inputs[0][0]: sig[0].numpy()}
        out = m(feeds)
        assert m.last_function == name  # exact shapes pick their own function
        for got, r in zip(out.values(), ref):
            assert rel_l2(got, r.numpy()) <= tol, (name, rel_l2(got, r.numpy()))


@pytest.fixture(scope="module")
def bert():
    model, _, _ = make("bert")
    return model


@pytest.mark.parametrize("precision", ["fp32", "mixed"])
def test_bert_three_lengths_one_package(bert, tmp_path, precision):
    sigs = [_bert_sig(8), _bert_sig(12, 1, pad=3), _bert_sig(16, 2)]
    mf = tlc.build(bert, sigs, precision=precision, paddable={"input_ids": 1, "attention_mask": 1})
    assert isinstance(mf, tlc.MultiFunctionModel)
    names = ["input_ids_2x8", "input_ids_2x12", "input_ids_2x16"]
    assert list(mf.functions) == names and mf.default_function_name == names[0]
    assert mf.minimum_deployment_target == "iOS18"  # the default for several signatures
    path = mf.save(tmp_path / "bert.mlpackage")
    _check_functions(path, bert, sigs, names, TOL[precision])
    assert mf.sizes["weights"] <= 1.05 * mf.sizes["single_function"], mf.sizes
    assert mf.sizes["functions"] >= 2.5 * mf.sizes["single_function"]  # what three packages would have cost
    info = package_info(path)
    assert info["default_function"] == names[0] and info["function_inputs"][names[2]]["input_ids"] == [2, 16]
    assert json.loads(info["metadata"]["tlc.paddable"])["input_ids"] == {"axes": [1], "value": 0}
    assert info["metadata"]["tlc.precision"] == precision  # tlc's metadata survives save_multifunction


def test_bert_padding_to_a_larger_function_keeps_results(bert, tmp_path):
    """A length-10 input runs in the 12 function, padded with 0 (the mask extended with 0): the real
    positions match torch on the unpadded input, and outputs come back at length 10."""
    mf = tlc.build(bert, [_bert_sig(8), _bert_sig(12)], precision="fp32",
                   paddable={"input_ids": 1, "attention_mask": 1})
    path = mf.save(tmp_path / "bert.mlpackage")
    sig = _bert_sig(10, 5, pad=2)
    ref = reference(bert, (), sig)
    for runner in (load(path, backend="interpreter"), mf):
        out = runner(_np(sig)) if runner is not mf else mf.run(_np(sig), backend="numpy")
        assert out["last_hidden_state"].shape == (2, 10, 64)
        assert rel_l2(out["last_hidden_state"], ref[0].numpy()) <= 1e-5
        assert rel_l2(out["pooler_output"], ref[1].numpy()) <= 1e-5
    assert mf.choose(_np(sig)).function == "input_ids_2x12"
    m = load(path, backend="interpreter")
    m(_np(sig))
    assert m.last_function == "input_ids_2x12"
    with pytest.raises(InputError, match=r"no function .* takes these inputs.*input_ids_2x8.*paddable axes"):
        m(_np(_bert_sig(20)))  # longer than every function
    fixed = load(path, backend="interpreter", paddable={})  # no padding declared: only exact shapes
    with pytest.raises(InputError, match="none declared"):
        fixed(_np(sig))
    # the CompiledModel side calls like the model: exact signature -> its function
    got = mf(**_bert_sig(8))
    assert rel_l2(got.last_hidden_state.numpy(), reference(bert, (), _bert_sig(8))[0].numpy()) <= 1e-5


def test_mobilenetv2_two_image_sizes_mixed(tmp_path):
    model, (x,), _ = make("mobilenetv2")
    sigs = [(x,), (torch.randn(1, 3, 96, 96),)]
    mf = tlc.build(model, sigs, precision="mixed")
    names = list(mf.functions)
    assert names == ["pixel_values_1x3x64x64", "pixel_values_1x3x96x96"]
    path = mf.save(tmp_path / "mnv2.mlpackage")
    _check_functions(path, model, sigs, names, TOL["mixed"])
    assert mf.sizes["weights"] <= 1.05 * mf.sizes["single_function"], mf.sizes


def test_compressed_functions_share_weights(tmp_path):
    model, (x,), _ = make("mobilenetv2")
    mf = tlc.build(model, [(x,), (torch.randn(1, 3, 96, 96),)], precision="fp16", compress="palettize6")
    path = mf.save(tmp_path / "mnv2.mlpackage")
    assert mf.sizes["weights"] <= 1.05 * mf.sizes["single_function"], mf.sizes
    info = package_info(path, function_name="pixel_values_1x3x96x96")
    assert info["compression"].get("constexpr_lut_to_dense", 0) > 0
    m = load(path, backend="interpreter", function_name="pixel_values_1x3x96x96")
    assert m(pixel_values=np.random.default_rng(0).standard_normal((1, 3, 96, 96), np.float32))[
        "last_hidden_state"].shape[-1] == 3


def _mil_package(path, shape, scale):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=ct.target.iOS18)
    def prog(x):
        w = np.full((shape[-1], 4), scale, np.float32)
        return mb.relu(x=mb.matmul(x=x, y=w, name="mm"), name="y")

    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                   compute_precision=ct.precision.FLOAT32)
    m.save(str(path))
    return path


def test_coremltools_made_multifunction_package_runs(tmp_path):
    import coremltools as ct

    a = _mil_package(tmp_path / "a.mlpackage", (2, 8), 0.5)
    b = _mil_package(tmp_path / "b.mlpackage", (3, 8), 0.5)
    desc = ct.utils.MultiFunctionDescriptor()
    desc.add_function(str(a), src_function_name="main", target_function_name="short")
    desc.add_function(str(b), src_function_name="main", target_function_name="long")
    desc.default_function_name = "long"
    ct.utils.save_multifunction(desc, str(tmp_path / "mf.mlpackage"))
    m = load(tmp_path / "mf.mlpackage", backend="interpreter")
    assert m.function_name == "long" and sorted(m.functions) == ["long", "short"]
    for rows, name in ((2, "short"), (3, "long")):
        x = np.random.default_rng(rows).standard_normal((rows, 8)).astype(np.float32)
        out = m(x=x)
        assert m.last_function == name
        np.testing.assert_allclose(out["y"], np.maximum(x @ np.full((8, 4), 0.5), 0), rtol=1e-6, atol=1e-6)
    padded = load(tmp_path / "mf.mlpackage", backend="interpreter", paddable={"x": 0})
    x = np.ones((1, 8), np.float32)
    assert padded(x=x)["y"].shape == (1, 4) and padded.last_function == "short"  # output rows cropped back
    with pytest.raises(InputError, match="paddable names input 'z'"):
        load(tmp_path / "mf.mlpackage", backend="interpreter", paddable={"z": 0})


def test_bad_multifunction_input(bert, tmp_path):
    sigs = [_bert_sig(8), _bert_sig(12)]
    with pytest.raises(InputError, match=r"needs minimum_deployment_target iOS18 .*got iOS17"):
        tlc.build(bert, sigs, minimum_deployment_target="iOS17")
    with pytest.raises(InputError, match="signatures 0 and 1 have the same shapes"):
        tlc.build(bert, [_bert_sig(8), _bert_sig(8, 1)], precision="fp32")
    with pytest.raises(InputError, match="function_names must be identifiers"):
        tlc.build(bert, sigs, precision="fp32", function_names=["a b", "c"])
    with pytest.raises(InputError, match="apply to several example input signatures"):
        tlc.build(bert, sigs[0], paddable={"input_ids": 1})
    with pytest.raises(InputError, match=r"paddable\['input_ids'\]: axis 2 is outside"):
        tlc.build(bert, sigs, precision="fp32", paddable={"input_ids": 2})
    with pytest.raises(InputError, match="calibration sample 1 fits none"):
        tlc.build(bert, sigs, precision="fp32", calibration=[_bert_sig(20)])


def test_cli_shape_builds_one_package_per_shape(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.e = torch.nn.Embedding(50, 64); self.l = torch.nn.Linear(64, 64)\n"
        "    def forward(self, input_ids, attention_mask):\n"
        "        return self.l(self.e(input_ids)) * attention_mask[..., None]\n"
        "torch.manual_seed(0)\n"
        "model = M().eval()\n"
        "example_inputs = {'input_ids': torch.randint(0, 50, (1, 16)), 'attention_mask': torch.ones(1, 16, dtype=torch.long)}\n")
    out = tmp_path / "m.mlpackage"
    r = run_tlc("build", tmp_path / "m.py", "-o", out, "--shape", "input_ids=1x8,1x16,1x32",
                "--paddable", "input_ids:1", "--paddable", "attention_mask:1", "--compress", "int8", "--precision", "fp32")
    rc, text = r.returncode, r.stdout + r.stderr
    assert rc == 0, text
    assert "3 functions" in text and "function input_ids_1x32:" in text and "attention_mask int32[1,32]" in text
    assert "1 weight tensor(s) compressed" in text and "accuracy input_ids_1x16 output: rel-L2" in text
    m = load(out, backend="interpreter")
    assert sorted(m.functions) == ["input_ids_1x16", "input_ids_1x32", "input_ids_1x8"]
    r = run_tlc("inspect", out)
    rc, text = r.returncode, r.stdout + r.stderr
    assert rc == 0 and "functions 3" in text and "linear-quantized" in text, text
    bad = tmp_path / "bad.mlpackage"
    r = run_tlc("build", tmp_path / "m.py", "-o", bad, "--shape", "input_ids=1x8,1x16",
                "--minimum-deployment-target", "iOS17")
    rc, text = r.returncode, r.stdout + r.stderr
    assert rc != 0 and "iOS18" in text and not bad.exists()
    r = run_tlc("build", tmp_path / "m.py", "-o", bad, "--shape", "tokens=1x8,1x16")
    rc, text = r.returncode, r.stdout + r.stderr
    assert rc != 0 and "not a tensor input" in text and not bad.exists()


def test_bucket_choice_pads_least_and_crops_height_and_width_apart():
    """Pure bucket logic (tlc.runtime.buckets): the cost is the padded elements, not the function's
    size; an image output's height and width follow the input's own height and width even when the
    functions are square; --shape needs two shapes."""
    from tlc.runtime.buckets import Function, choose, parse_paddable

    fs = [Function("a", {"x": (1, 3, 224, 224)}, {"y": (1, 8, 224, 224)}),
          Function("b", {"x": (1, 3, 384, 384)}, {"y": (1, 8, 384, 384)})]
    pad = parse_paddable({"x": [2, 3]}, {"x": (1, 3, 224, 224)})
    c = choose(fs, {"x": (1, 3, 224, 100)}, pad)
    assert c.function == "a" and c.crops["y"][2:] == (slice(None), slice(0, 100))
    c = choose(fs, {"x": (1, 3, 300, 100)}, pad)
    assert c.function == "b" and c.crops["y"][2:] == (slice(0, 300), slice(0, 100))
    fs = [Function("A", {"x": (1, 100), "y": (1, 1000)}), Function("B", {"x": (1, 10), "y": (1, 1010)})]
    two = parse_paddable({"x": 1, "y": 1}, {"x": (1, 100), "y": (1, 1000)})
    assert choose(fs, {"x": (1, 10), "y": (1, 1000)}, two).function == "B"  # pads 10 elements, not 90
    from tlc.cli.parse import parse_shapes

    with pytest.raises(InputError, match="give two or more shapes"):
        parse_shapes(["input_ids=1x128"])
