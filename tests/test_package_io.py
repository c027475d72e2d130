"""Packages an app can use as they are (issue 32): image inputs (``tlc.ImageType``), Core ML
classifiers (``class_labels``), named and described inputs/outputs, metadata, and
``tlc.build(ExportedProgram)``. Every package is read back with coremltools' spec API *and* run in
tlc's MIL interpreter against torch eager on the same preprocessing."""
import json

import coremltools as ct
import numpy as np
import pytest
import torch
from PIL import Image

import tlc
from tlc.iospec import Interface, RESERVED_NAMES, check_name
from tlc.passes.interface import bind_interface
from tlc.runtime import load, package_info


def cli(*args, cwd=None):
    from pkgtools import run_tlc

    return run_tlc(*args, cwd=cwd)


LABELS = ["cat", "dog", "bird", "fish", "frog"]


class TinyClassifier(torch.nn.Module):
    """conv -> relu -> mean over pixels -> linear -> softmax: probabilities of len(LABELS) classes."""

    def __init__(self, c: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(c, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, len(LABELS))

    def forward(self, x):
        return torch.softmax(self.fc(torch.relu(self.conv(x)).mean((2, 3))) * 4, dim=-1)


def spec_of(path):
    """The saved package's spec, read with coremltools' own API."""
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def png(tmp_path, seed=1, size=(10, 12)):
    rgb = np.random.default_rng(seed).integers(0, 256, (size[0], size[1], 3)).astype(np.uint8)
    p = tmp_path / "cat.png"
    Image.fromarray(rgb).save(p)
    return p


@pytest.mark.parametrize("layout", ["RGB", "BGR", "GRAYSCALE"])
def test_image_classifier(layout, tmp_path):
    """ImageType + labels: the spec has an imageType input of the declared size and color layout,
    a classLabel (String) output and the probabilities dictionary (Core ML's classifier); a PNG
    run through the package (`tlc run --input image=cat.png` and tlc.runtime.load) gives torch's
    top label and probabilities (<= 1e-2) on the same preprocessing."""
    c = 1 if layout == "GRAYSCALE" else 3
    mean, std = [0.5, 0.4, 0.3][:c], [0.25, 0.2, 0.3][:c]
    scale = [1 / (255 * s) for s in std]
    bias = [-m / s for m, s in zip(mean, std)]
    model = TinyClassifier(c).eval()
    cm = tlc.build(model, torch.randn(1, c, 10, 12),
                   inputs=[tlc.ImageType(name="image", scale=scale, bias=bias, color_layout=layout,
                                         description="a photo")],
                   outputs=[tlc.TensorType(name="probabilities", description="probability of each animal")],
                   class_labels=LABELS)
    path = cm.save(tmp_path / "clf.mlpackage")
    spec = spec_of(path)
    (inp,) = spec.description.input
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    im = inp.type.imageType
    assert (im.width, im.height) == (12, 10)
    assert ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(im.colorSpace) == layout
    assert inp.shortDescription == "a photo"
    outs = {o.name: o for o in spec.description.output}
    assert list(outs) == ["classLabel", "probabilities"]
    assert outs["classLabel"].type.WhichOneof("Type") == "stringType"
    assert outs["probabilities"].type.WhichOneof("Type") == "dictionaryType"
    assert outs["probabilities"].shortDescription == "probability of each animal"
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.predictedProbabilitiesName == "probabilities"

    image = png(tmp_path)
    pixels = np.asarray(Image.open(image).convert("L" if c == 1 else "RGB"), np.float64)
    pixels = pixels[..., None] if c == 1 else (pixels[..., ::-1] if layout == "BGR" else pixels)
    x = (pixels * np.asarray(scale) + np.asarray(bias)).transpose(2, 0, 1)[None]
    with torch.no_grad():
        want = model(torch.tensor(x, dtype=torch.float32)).numpy().ravel()
    out = load(path)({"image": Image.open(image)})
    got = np.asarray([out["probabilities"][k] for k in LABELS])
    np.testing.assert_allclose(got, want, atol=1e-2)
    assert out["classLabel"] == LABELS[int(np.argmax(want))]

    r = cli("run", str(path), "--input", f"image={image}", "--top", "2", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert f"'{LABELS[int(np.argmax(want))]}'" in r.stdout
    assert "top 2:" in r.stdout and LABELS[int(np.argmax(want))] in r.stdout.split("top 2:")[1]
    saved = json.loads((tmp_path / "out" / "probabilities.json").read_text())
    np.testing.assert_allclose([saved[k] for k in LABELS], got, rtol=1e-6)
    assert json.loads((tmp_path / "out" / "classLabel.json").read_text()) == LABELS[int(np.argmax(want))]
    # the preprocessing ops are in the program, placed and reported like the others
    ops = [n for n in cm.emit_graph.nodes if n.op != "const" and n.loc is not None and n.loc.module == "image input image"]
    assert [n.op for n in ops] == ["mul", "add"]
    assert all(cm.placement.target[n.name] == "ane" for n in ops)


def test_image_output_and_channels_last_input(tmp_path):
    """An image output (value * scale + bias, here [-1, 1] -> 0-255) and a channels-last image
    input (the model takes [1, H, W, C]: a transpose is emitted); CompiledModel.__call__ takes and
    returns the model's own values."""
    def invert(x):  # [1, H, W, 3] in [-1, 1] -> [1, H, W, 3]
        return -x

    spec_in = tlc.ImageType(name="photo", scale=2 / 255, bias=-1.0, channel_first=False)
    spec_out = tlc.ImageType(name="negative", scale=127.5, bias=127.5, channel_first=False)
    x = torch.rand(1, 6, 7, 3) * 2 - 1
    cm = tlc.build(invert, x, inputs=[spec_in], outputs=[spec_out], precision="fp32")
    torch.testing.assert_close(cm(x), -x, atol=1e-5, rtol=0)
    path = cm.save(tmp_path / "inv.mlpackage")
    kinds = {f.name: f.type.WhichOneof("Type") for f in list(spec_of(path).description.input)
             + list(spec_of(path).description.output)}
    assert kinds == {"photo": "imageType", "negative": "imageType"}
    rgb = np.random.default_rng(2).integers(0, 256, (6, 7, 3)).astype(np.uint8)
    out = load(path)({"photo": rgb})["negative"]
    assert out.dtype == np.uint8 and out.shape == (6, 7, 3)
    assert np.abs(out.astype(int) - (255 - rgb.astype(int))).max() <= 1


def test_exported_program_builds_the_same_package(tmp_path):
    """tlc.build(ExportedProgram) (torch.export's result) writes the package its module writes,
    byte for byte, and takes the example inputs it was exported with."""
    model = TinyClassifier(3).eval()
    x = torch.randn(1, 3, 10, 12)
    ep = torch.export.export(model, (x,))
    a = tlc.build(model, (x,), class_labels=LABELS, author="me").save(tmp_path / "module.mlpackage")
    b = tlc.build(ep, class_labels=LABELS, author="me").save(tmp_path / "exported.mlpackage")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def two_in_two_out(x, mask):
    h = torch.tanh(x * 2 + 1)
    return {"hidden": h * mask, "total": (h.sum(-1, keepdim=True) - x.mean(-1, keepdim=True)).exp()}


def test_named_described_io_and_metadata(tmp_path):
    """Names, descriptions, author/license/version/description and user keys in the spec and in
    `tlc inspect` (long values summarized; --json whole); the outputs match torch."""
    x, mask = torch.randn(2, 8), torch.ones(2, 8)
    cm = tlc.build(two_in_two_out, (x, mask),
                   inputs=[tlc.TensorType(name="features", description="the features"), None],
                   outputs=[tlc.TensorType(name="embedding", description="per-feature values"),
                            tlc.TensorType(description="the total")],
                   author="Ada", license="MIT", version="1.2", short_description="a tiny test model",
                   metadata={"com.example.kind": "demo"})
    assert cm.input_names == ["features", "mask"] and cm.output_names == ["embedding", "total"]
    path = cm.save(tmp_path / "named.mlpackage")
    spec = spec_of(path)
    d = spec.description
    assert [(f.name, f.shortDescription) for f in d.input] == [("features", "the features"), ("mask", "")]
    assert [(f.name, f.shortDescription) for f in d.output] == [("embedding", "per-feature values"),
                                                                ("total", "the total")]
    md = d.metadata
    assert (md.author, md.license, md.versionString, md.shortDescription) == ("Ada", "MIT", "1.2", "a tiny test model")
    assert md.userDefined["com.example.kind"] == "demo" and md.userDefined["tlc.version"] == tlc.__version__
    out = load(path)({"features": x.numpy(), "mask": mask.numpy()})
    ref = two_in_two_out(x, mask)
    np.testing.assert_allclose(out["embedding"], ref["hidden"].numpy(), atol=1e-2)
    np.testing.assert_allclose(out["total"], ref["total"].numpy(), rtol=1e-2)
    r = cli("inspect", str(path))
    assert r.returncode == 0, r.stderr
    for text in ("features", "the features", "per-feature values", "author  Ada", "license MIT", "version 1.2",
                 "a tiny test model", "com.example.kind = demo"):
        assert text in r.stdout, text
    line = next(ln for ln in r.stdout.splitlines() if "tlc.source_lines" in ln)
    assert "ops in 1 file(s): test_package_io.py" in line and len(line) < 200
    info = json.loads(cli("inspect", str(path), "--json").stdout)
    assert json.loads(info["metadata"]["tlc.source_lines"])["files"] == ["test_package_io.py"]
    assert info["inputs"][0]["description"] == "the features" and info["author"] == "Ada"


@pytest.mark.parametrize("kw,match", [
    ({"inputs": [tlc.ImageType(name="image")]}, "ImageType input 0 .* is int32"),
    ({"outputs": [None, tlc.ImageType(name="picture")]}, "ImageType output 1 .*has shape \\[1\\]"),
    ({"class_labels": ["a", "b"]}, "class_labels has 2 labels but the classifier output 'output_0' has shape "
                                   "\\[1, 3\\] \\(3 values\\)"),
    ({"inputs": [tlc.TensorType(name="y"), tlc.TensorType(name="y")]}, "input name 'y' is used twice"),
    ({"outputs": [tlc.TensorType(name="ids")]}, "output name 'ids' is used twice \\(input and output\\)"),
    ({"inputs": [None, tlc.TensorType(dtype=np.int32)]}, "TensorType\\(dtype=int32\\) for input 1 .* fp32"),
    ({"class_labels": ["a", "b", "c"], "outputs": [tlc.TensorType(name="classLabel")]}, "both named 'classLabel'"),
    ({"class_labels": ["a"], "classifier_config": tlc.ClassifierConfig(["a"])}, "not both"),
    ({"inputs": [tlc.TensorType(), tlc.TensorType(), tlc.TensorType()]}, "declares 3 inputs; the model has 2"),
    ({"inputs": [ct.TensorType(name="ids")]}, "use tlc.TensorType"),
])
def test_bad_interface(kw, match, tmp_path):
    """One clear error naming the input or output, nothing written."""
    def f(ids, x):
        return torch.softmax(x[:, :3] * ids[:, :3], -1), x.sum(-1)

    ids = torch.ones(1, 4, dtype=torch.int64)
    with pytest.raises(tlc.InputError, match=match):
        tlc.build(f, (ids, torch.randn(1, 4)), **kw).save(tmp_path / "bad.mlpackage")
    assert not (tmp_path / "bad.mlpackage").exists()


def test_image_shape_must_be_batch_one_nchw():
    with pytest.raises(tlc.InputError, match="shape \\[2, 3, 4, 4\\]; a RGB image is \\[1, C, H, W\\] with C = 3"):
        tlc.build(lambda x: x * 2, torch.randn(2, 3, 4, 4), inputs=[tlc.ImageType()])
    with pytest.raises(tlc.InputError, match="shape \\[1, 3, 4, 4\\]; a GRAYSCALE image .* C = 1"):
        tlc.build(lambda x: x * 2, torch.randn(1, 3, 4, 4), inputs=[tlc.ImageType(color_layout="GRAYSCALE")])


@pytest.mark.parametrize("make,match", [
    (lambda: tlc.ImageType(color_layout="RGBA"), "color_layout must be one of RGB, BGR, GRAYSCALE"),
    (lambda: tlc.ImageType(scale=0), "scale must not be 0"),
    (lambda: tlc.ImageType(bias=[1, 2]), "bias has 2 values; a 3-channel image takes 1 or 3"),
    (lambda: tlc.TensorType(name="my-input"), "'my-input' is not a Core ML feature name"),
    (lambda: tlc.TensorType(name="2x"), "'2x' is not a Core ML feature name"),
    (lambda: tlc.TensorType(name="string"), "MIL type keyword"),
    (lambda: tlc.TensorType(dtype=np.float64), "dtype must be one of float32, float16, int32"),
    (lambda: tlc.ClassifierConfig([]), "class_labels is empty"),
    (lambda: tlc.ClassifierConfig(["a", 1]), "all strings or all integers"),
    (lambda: tlc.ClassifierConfig(["a", "b", "a"]), "label 'a' appears twice"),
    (lambda: tlc.ClassifierConfig({0: "a", 2: "b"}), "indices 0..1"),
    (lambda: tlc.ClassifierConfig("/no/such/labels.txt"), "does not exist"),
])
def test_bad_specs(make, match):
    with pytest.raises(tlc.InputError, match=match):
        make()


def test_bad_metadata():
    with pytest.raises(tlc.InputError, match="keys starting 'tlc.' are tlc's own"):
        tlc.build(lambda x: x + 1, torch.randn(2), metadata={"tlc.version": "9"})
    with pytest.raises(tlc.InputError, match="map strings to strings"):
        tlc.build(lambda x: x + 1, torch.randn(2), metadata={"k": 3})


def test_labels_from_a_file_and_id2label(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("cat\ndog\n\n")
    assert tlc.ClassifierConfig(f).class_labels == ("cat", "dog")
    assert tlc.ClassifierConfig({"1": "dog", "0": "cat"}).class_labels == ("cat", "dog")
    assert tlc.ClassifierConfig([3, 1]).class_labels == (3, 1)


def test_names_follow_coremltools_sanitizer():
    """tlc refuses exactly the names coremltools' NameSanitizer would change (silently, when the
    package is written)."""
    from coremltools.converters.mil.mil.passes.defs.preprocess import NameSanitizer

    for name in ["x", "input_ids", "_x", "x2", "2x", "my-input", "a b", "é", "classLabel", *sorted(RESERVED_NAMES)]:
        kept = NameSanitizer().sanitize_name(name) == name
        try:
            check_name(name, "test")
            ok = True
        except tlc.InputError:
            ok = False
        assert ok == kept, name


def test_bind_interface_must_not_fire():
    """No declarations: the graph is returned as it is (the same object), with no image or
    classifier for emission."""
    cm = tlc.build(lambda x: x * 2, torch.randn(3), precision="fp32")
    g, io = bind_interface(cm.graph, Interface())
    assert g is cm.graph and not io.images and io.classifier is None and not io.descriptions


def test_int_labels_and_named_probabilities_output(tmp_path):
    """Int64 labels (Core ML's Int64 classLabel); without outputs= naming the probabilities, the
    dictionary takes coremltools' name (classLabel_probs); predicted_feature_name renames the label."""
    model = TinyClassifier(3).eval()
    x = torch.randn(1, 3, 6, 6)
    cfg = tlc.ClassifierConfig([10, 20, 30, 40, 50], predicted_feature_name="animal")
    path = tlc.build(model, x, classifier_config=cfg).save(tmp_path / "ints.mlpackage")
    d = spec_of(path).description
    assert (d.predictedFeatureName, d.predictedProbabilitiesName) == ("animal", "animal_probs")
    assert {o.name: o.type.WhichOneof("Type") for o in d.output} == {"animal": "int64Type",
                                                                     "animal_probs": "dictionaryType"}
    out = load(path)({"x": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy().ravel()
    assert int(out["animal"]) == [10, 20, 30, 40, 50][int(np.argmax(want))]
    np.testing.assert_allclose([out["animal_probs"][k] for k in (10, 20, 30, 40, 50)], want, atol=1e-2)
    info = package_info(path)
    assert info["classifier"] == {"label": "animal", "probabilities": "animal_probs"}
