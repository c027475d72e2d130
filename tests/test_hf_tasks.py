"""`tlc build DIR --task TASK` for Hugging Face model directories (issue 32): small configs saved
with save_pretrained inside each test (nothing downloaded); the packages carry Hugging Face
exporters' task names, output names, labels and metadata, and match torch."""
import contextlib
import json

import coremltools as ct
import numpy as np
import pytest
import torch
from PIL import Image

import tlc
from tlc.runtime import load

transformers = pytest.importorskip("transformers")


def cli(*args, cwd=None):
    from pkgtools import run_tlc

    return run_tlc(*args, cwd=cwd)


def spec_of(path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64)
SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}


def saved(model, path):
    torch.manual_seed(0)
    model.eval().save_pretrained(path)
    return model.eval()


def test_bert_sequence_classification(tmp_path):
    """classLabel + probabilities {label: p} with id2label's labels, int32 text inputs, exporters'
    metadata; the probabilities match torch's softmax of the logits."""
    torch.manual_seed(0)
    model = saved(transformers.BertForSequenceClassification(transformers.BertConfig(
        **BERT, num_labels=3, id2label=SENTIMENT, label2id={v: k for k, v in SENTIMENT.items()})), tmp_path / "bert")
    r = cli("build", str(tmp_path / "bert"), "--task", "sequence-classification", "--sequence-length", "16",
            "-o", str(tmp_path / "bert.mlpackage"), "--author", "Ada")
    assert r.returncode == 0, r.stderr
    assert "probabilities" in r.stdout and "of 3 labels (negative, neutral, positive)" in r.stdout
    path = tmp_path / "bert.mlpackage"
    d = spec_of(path).description
    assert [(f.name, f.type.multiArrayType.shape) for f in d.input] == [("input_ids", [1, 16]), ("attention_mask", [1, 16])]
    assert [o.name for o in d.output] == ["classLabel", "probabilities"]
    assert (d.predictedFeatureName, d.predictedProbabilitiesName) == ("classLabel", "probabilities")
    md = d.metadata
    assert md.author == "Ada"
    assert md.userDefined["co.huggingface.exporters.task"] == "sequence-classification"
    assert md.userDefined["co.huggingface.exporters.architecture"] == "BertForSequenceClassification"
    assert md.userDefined["co.huggingface.exporters.name"] == "bert"
    ids = torch.randint(0, 99, (1, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    out = load(path)({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        want = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1).numpy().ravel()
    assert set(out["probabilities"]) == set(SENTIMENT.values())
    np.testing.assert_allclose([out["probabilities"][SENTIMENT[i]] for i in range(3)], want, atol=1e-2)
    assert out["classLabel"] == SENTIMENT[int(np.argmax(want))]


def test_vit_image_classification(tmp_path):
    """An RGB image input of the processor's size whose scale/bias are its rescale, mean and std;
    classLabel + probabilities; a PNG through `tlc run` and the interpreter gives what the Hugging
    Face processor + model give."""
    labels = {0: "apple", 1: "banana", 2: "cherry", 3: "date"}
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=37, num_labels=4, id2label=labels,
                                 label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = saved(transformers.ViTForImageClassification(cfg), tmp_path / "vit")
    proc = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                                          image_std=[0.2, 0.3, 0.4])
    proc.save_pretrained(tmp_path / "vit")
    r = cli("build", str(tmp_path / "vit"), "--task", "image-classification", "-o", str(tmp_path / "vit.mlpackage"))
    assert r.returncode == 0, r.stderr
    path = tmp_path / "vit.mlpackage"
    d = spec_of(path).description
    (inp,) = d.input
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    assert (inp.type.imageType.width, inp.type.imageType.height) == (32, 32)
    assert [o.name for o in d.output] == ["classLabel", "probabilities"]
    rgb = np.random.default_rng(5).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "fruit.png")
    with torch.no_grad():
        x = proc(images=Image.open(tmp_path / "fruit.png"), return_tensors="pt")["pixel_values"]
        want = torch.softmax(model(pixel_values=x).logits, -1).numpy().ravel()
    out = load(path)({"image": Image.open(tmp_path / "fruit.png")})
    np.testing.assert_allclose([out["probabilities"][labels[i]] for i in range(4)], want, atol=1e-2)
    r = cli("run", str(path), "--input", f"image={tmp_path / 'fruit.png'}")
    assert r.returncode == 0 and f"'{labels[int(np.argmax(want))]}'" in r.stdout, r.stdout + r.stderr


def test_feature_extraction(tmp_path):
    """last_hidden_state and pooler_output, named and described as exporters does; no --task: the
    task comes from the config's architecture (BertModel)."""
    torch.manual_seed(0)
    model = saved(transformers.BertModel(transformers.BertConfig(**BERT)), tmp_path / "encoder")
    cm = tlc.build_pretrained(tmp_path / "encoder", sequence_length=8, precision="fp32")
    assert cm.output_names == ["last_hidden_state", "pooler_output"]
    path = cm.save(tmp_path / "enc.mlpackage")
    d = spec_of(path).description
    assert d.output[0].shortDescription.startswith("Sequence of hidden-states")
    assert d.metadata.userDefined["co.huggingface.exporters.task"] == "feature-extraction"
    assert d.metadata.userDefined["co.huggingface.exporters.precision"] == "float32"
    ids = torch.randint(0, 99, (1, 8), generator=torch.Generator().manual_seed(4))
    out = load(path)({"input_ids": ids.numpy(), "attention_mask": np.ones((1, 8), np.int32)})
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["pooler_output"], ref.pooler_output.numpy(), atol=1e-4)


def test_token_classification_labels_in_metadata(tmp_path):
    torch.manual_seed(0)
    labels = {0: "O", 1: "B-PER", 2: "I-PER"}
    model = saved(transformers.BertForTokenClassification(transformers.BertConfig(
        **BERT, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})), tmp_path / "ner")
    cm = tlc.build_pretrained(tmp_path / "ner", "token-classification", sequence_length=8)
    assert cm.output_names == ["token_scores"]
    path = cm.save(tmp_path / "ner.mlpackage")
    assert spec_of(path).description.metadata.userDefined["classes"] == "O,B-PER,I-PER"
    ids = torch.randint(0, 99, (1, 8), generator=torch.Generator().manual_seed(4))
    out = load(path)({"input_ids": ids.numpy(), "attention_mask": np.ones((1, 8), np.int32)})
    with torch.no_grad():
        want = torch.softmax(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, -1).numpy()
    np.testing.assert_allclose(out["token_scores"], want, atol=1e-2)


def test_bad_directories_and_tasks(tmp_path):
    """A directory that is not a Hugging Face model, an unknown task, a task on a model file: one
    clear error, nothing written."""
    (tmp_path / "empty").mkdir()
    r = cli("build", str(tmp_path / "empty"), "--task", "image-classification", "-o", str(tmp_path / "x.mlpackage"))
    assert r.returncode == 2 and "is not a Hugging Face model directory (no config.json" in r.stderr
    r = cli("build", str(tmp_path / "empty"), "--task", "image-captioning")
    assert r.returncode == 2 and "invalid choice: 'image-captioning'" in r.stderr
    with pytest.raises(tlc.InputError, match="unknown task 'image-captioning'"):
        tlc.build_pretrained(tmp_path / "empty", "image-captioning")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(tlc.InputError, match="cannot read its config.json"):
        tlc.build_pretrained(tmp_path / "broken", "feature-extraction")
    torch.manual_seed(0)
    saved(transformers.BertModel(transformers.BertConfig(**BERT)), tmp_path / "enc")
    with pytest.raises(tlc.InputError, match="has no image-classification model transformers can load"):
        tlc.build_pretrained(tmp_path / "enc", "image-classification")
    model_py = tmp_path / "model.py"
    model_py.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\nexample_inputs = (torch.randn(1, 2),)\n")
    r = cli("build", str(model_py), "--task", "image-classification", "-o", str(tmp_path / "m.mlpackage"))
    assert r.returncode == 2 and "builds a Hugging Face model directory" in r.stderr
    assert not list(tmp_path.glob("*.mlpackage"))


def _qa():
    return transformers.BertForQuestionAnswering(transformers.BertConfig(**BERT)), "question-answering"


def _segmentation():
    return transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 2],
        decoder_hidden_size=16, num_labels=3, image_size=32)), "semantic-segmentation"


def _detection():
    return transformers.YolosForObjectDetection(transformers.YolosConfig(
        image_size=[32, 32], patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, num_detection_tokens=5, num_labels=3)), "object-detection"


@pytest.mark.parametrize("make", [_qa, _segmentation, _detection], ids=["qa", "segmentation", "detection"])
def test_other_tasks_match_torch(make, tmp_path):
    """question-answering (start/end scores), semantic-segmentation (a label per pixel at the
    input size, Xcode's imageSegmenter preview), object-detection (logits, boxes): exporters'
    outputs, equal to what the Hugging Face model computes (fp32)."""
    torch.manual_seed(0)
    model, task = make()
    model = saved(model, tmp_path / "m")
    with pytest.warns(UserWarning, match="no preprocessor_config.json") if task != "question-answering" else \
            contextlib.nullcontext():
        cm = tlc.build_pretrained(tmp_path / "m", task, sequence_length=8 if task == "question-answering" else None,
                                  precision="fp32")
    path = cm.save(tmp_path / "m.mlpackage")
    md = spec_of(path).description.metadata.userDefined
    assert md["co.huggingface.exporters.task"] == task
    m = load(path)
    with torch.no_grad():
        if task == "question-answering":
            ids = torch.randint(0, 99, (1, 8), generator=torch.Generator().manual_seed(4))
            out = m({"input_ids": ids.numpy(), "attention_mask": np.ones((1, 8), np.int32)})
            ref = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            np.testing.assert_allclose(out["start_scores"], torch.softmax(ref.start_logits, -1).numpy(), atol=1e-5)
            np.testing.assert_allclose(out["end_scores"], torch.softmax(ref.end_logits, -1).numpy(), atol=1e-5)
            return
        rgb = np.random.default_rng(6).integers(0, 256, (32, 32, 3)).astype(np.uint8)
        x = torch.from_numpy(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)
        out = m({"image": rgb})
        ref = model(pixel_values=x)
    if task == "semantic-segmentation":
        up = torch.nn.functional.interpolate(ref.logits, size=(32, 32), mode="bilinear", align_corners=False)
        assert out["classLabels"].shape == (1, 32, 32)
        assert (out["classLabels"] == up.argmax(1).numpy()).mean() > 0.99
        assert md["com.apple.coreml.model.preview.type"] == "imageSegmenter" and md["classes"] == "LABEL_0,LABEL_1,LABEL_2"
    else:
        np.testing.assert_allclose(out["logits"], ref.logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(out["pred_boxes"], ref.pred_boxes.numpy(), atol=1e-4)
