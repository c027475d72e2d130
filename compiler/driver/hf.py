"""Hugging Face model directories (``save_pretrained``) as packages an app can use: ``tlc build DIR
--task TASK`` / :func:`tlc.build_pretrained`.

The task names, output names and metadata are those of Hugging Face's Core ML exporter
(``python -m exporters.coreml --feature=...``: huggingface/exporters src/exporters/coreml/config.py
``_input_descriptions`` / ``_output_descriptions``, convert.py ``get_input_types``, ``Wrapper`` and
``export_pytorch``), so an app written against an exporters package takes tlc's:

======================  ==========================  =========================================
task                    inputs                      outputs
======================  ==========================  =========================================
feature-extraction      input_ids, attention_mask   last_hidden_state (+ pooler_output)
                        (vision models: image)
sequence-classification input_ids, attention_mask   classLabel, probabilities {label: p}
image-classification    image                       classLabel, probabilities {label: p}
token-classification    input_ids, attention_mask   token_scores (softmax; labels in metadata)
question-answering      input_ids, attention_mask   start_scores, end_scores (softmax)
object-detection        image                       logits, pred_boxes (labels in metadata)
semantic-segmentation   image                       classLabels (per-pixel argmax at input size)
text-generation         (tlc.build_lm)              prefill/decode functions with the KV cache
======================  ==========================  =========================================

Images are Core ML images (``tlc.ImageType``, RGB) whose scale and bias are the image processor's
``rescale_factor``, ``image_mean`` and ``image_std`` (per channel: tlc emits a per-channel ``mul``,
where exporters divides in a wrapper); the size is the processor's (``crop_size`` when it crops,
else ``size``), else the config's ``image_size``. Text inputs are int32 ``[1, sequence_length]``.
Metadata: ``co.huggingface.exporters.name`` / ``.task`` / ``.architecture`` / ``.framework`` /
``.precision``, ``transformers_version``, and ``classes`` (comma-joined labels) where exporters
writes it. Only local directories are read (``local_files_only``): nothing is downloaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlc.errors import InputError
from tlc.iospec import ImageType, TensorType

from .options import TASK_ALIASES, TASKS

#: task (:data:`tlc.driver.options.TASKS`) -> the transformers auto class that loads its model
AUTO_CLASSES = {
    "feature-extraction": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "object-detection": "AutoModelForObjectDetection",
    "semantic-segmentation": "AutoModelForSemanticSegmentation",
    "text-generation": "AutoModelForCausalLM",
}
#: the architecture suffix (``config.architectures[0]``) that names each task, to infer ``--task``
SUFFIXES = {"ForSequenceClassification": "sequence-classification", "ForImageClassification": "image-classification",
            "ForTokenClassification": "token-classification", "ForQuestionAnswering": "question-answering",
            "ForObjectDetection": "object-detection", "ForSemanticSegmentation": "semantic-segmentation",
            "ForCausalLM": "text-generation", "LMHeadModel": "text-generation", "Model": "feature-extraction"}

#: the outputs of each task (:class:`TaskModel` returns them in this order)
OUTPUTS = {"feature-extraction": ("last_hidden_state", "pooler_output"), "sequence-classification": ("probabilities",),
           "image-classification": ("probabilities",), "token-classification": ("token_scores",),
           "question-answering": ("start_scores", "end_scores"), "object-detection": ("logits", "pred_boxes"),
           "semantic-segmentation": ("classLabels",)}

#: exporters' descriptions of the inputs and outputs (config.py)
DESCRIPTIONS = {
    "input_ids": "Indices of input sequence tokens in the vocabulary",
    "attention_mask": "Mask to avoid performing attention on padding token indices (1 = not masked, 0 = masked)",
    "image": "Input image",
    "last_hidden_state": "Sequence of hidden-states at the output of the last layer of the model",
    "pooler_output": "Last layer hidden-state of the first token of the sequence",
    "probabilities": "Probability of each category",
    "classLabel": "Category with the highest score",
    "token_scores": "Classification scores for each vocabulary token (after softmax)",
    "start_scores": "Span-start scores (after softmax)",
    "end_scores": "Span-end scores (after softmax)",
    "logits": "Classification logits (including no-object) for all queries",
    "pred_boxes": "Normalized boxes coordinates for all queries, represented as (center_x, center_y, width, height)",
    "classLabels": "Classification scores for each pixel",
}


def task_name(task: str | None, config) -> str:
    """The task (:data:`tlc.driver.options.TASKS`) for ``--task TASK`` (an alias:
    :data:`tlc.driver.options.TASK_ALIASES`), or inferred from
    ``config.architectures[0]`` when None. Raises :class:`InputError` for an unknown task or one
    that cannot be inferred."""
    if task is None:
        arch = (getattr(config, "architectures", None) or [""])[0]
        task = next((t for suf, t in SUFFIXES.items() if arch.endswith(suf)), None)
        if task is None:
            raise InputError(f"cannot tell the task of {arch or 'this model (config.architectures is empty)'}: give --task "
                             f"(one of {', '.join(TASKS)})")
        return task
    task = TASK_ALIASES.get(task, task)
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; tasks: {', '.join(TASKS)} (exporters' names)")
    return task


@dataclass
class Pretrained:
    """What :func:`prepare` makes of a model directory: the ``model`` to trace (a wrapper that
    returns the task's outputs by name), its ``example_inputs``, the interface (``inputs``,
    ``outputs``, ``classifier_labels``), ``metadata`` and a ``short_description``; ``lm``: the
    causal LM itself for ``text-generation``; ``notes``: what the user should know (a missing
    image processor)."""

    task: str
    name: str
    model: Any
    example_inputs: Any = None
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    classifier_labels: Any = None
    metadata: dict = field(default_factory=dict)
    short_description: str = ""
    notes: list = field(default_factory=list)


class TaskModel(torch.nn.Module):
    """A Hugging Face model returning the task's outputs as a dict (the package's output names),
    as exporters' ``Wrapper``: softmax where exporters applies it; semantic segmentation upsampled
    to the input size and reduced to the label of each pixel."""

    def __init__(self, model, task: str, text: bool, has_pooler: bool = False):
        super().__init__()
        self.model, self.task, self.text, self.has_pooler = model.eval(), task, text, has_pooler

    def forward(self, *inputs):
        if self.text:
            out = self.model(input_ids=inputs[0], attention_mask=inputs[1], return_dict=True)
        else:
            out = self.model(pixel_values=inputs[0], return_dict=True)
        t = self.task
        if t == "feature-extraction":
            res = {"last_hidden_state": out.last_hidden_state}
            if self.has_pooler and getattr(out, "pooler_output", None) is not None:
                res["pooler_output"] = out.pooler_output
            return res
        if t in ("sequence-classification", "image-classification"):
            return {"probabilities": torch.softmax(out.logits, dim=-1)}
        if t == "token-classification":
            return {"token_scores": torch.softmax(out.logits, dim=-1)}
        if t == "question-answering":
            return {"start_scores": torch.softmax(out.start_logits, -1), "end_scores": torch.softmax(out.end_logits, -1)}
        if t == "object-detection":
            return {"logits": out.logits, "pred_boxes": out.pred_boxes}
        x = torch.nn.functional.interpolate(out.logits, size=inputs[0].shape[-2:], mode="bilinear", align_corners=False)
        return {"classLabels": x.argmax(1).to(torch.int32)}


def _config(path: Path):
    from transformers import AutoConfig

    if not path.exists():
        raise InputError(f"{str(path)!r} does not exist")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(f"{str(path)!r} is not a Hugging Face model directory (no config.json; write one with "
                         f"model.save_pretrained(DIR))")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises ValueError/OSError/KeyError for unknown or damaged configs
        raise InputError(f"{str(path)!r}: transformers cannot read its config.json ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _load(path: Path, task: str, config):
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[task])
    try:
        return auto.from_pretrained(path, local_files_only=True).eval()
    except Exception as e:
        head = (str(e).splitlines() or [""])[0]
        raise InputError(f"{str(path)!r} has no {task} model transformers can load ({type(e).__name__}: {head}); its "
                         f"config says {getattr(config, 'architectures', None)}") from None


def _image_input(path: Path, config, notes: list) -> tuple[ImageType, tuple[int, int, int]]:
    """The image input's ImageType and ``(C, H, W)`` from the image processor (or the config)."""
    proc = None
    if (path / "preprocessor_config.json").is_file():
        proc = json.loads((path / "preprocessor_config.json").read_text())
    c = int(getattr(config, "num_channels", 3))
    size = getattr(config, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
    rescale, mean, std = 1 / 255, [0.0] * c, [1.0] * c
    if proc is None:
        notes.append("no preprocessor_config.json: the image input is scaled to [0, 1] with no mean/std normalization "
                     "(save the image processor with save_pretrained next to the model to include it)")
    else:
        sz = proc.get("crop_size") if proc.get("do_center_crop") and proc.get("crop_size") else proc.get("size")
        if isinstance(sz, dict):
            h, w = (sz["height"], sz["width"]) if "height" in sz else (sz.get("shortest_edge", h),) * 2
        elif isinstance(sz, int):
            h = w = sz
        if proc.get("do_rescale", True):
            rescale = float(proc.get("rescale_factor", 1 / 255))
        else:
            rescale = 1.0
        if proc.get("do_normalize", True):
            mean = list(proc.get("image_mean", mean))
            std = list(proc.get("image_std", std))
    scale = [rescale / s for s in std]
    bias = [-m / s for m, s in zip(mean, std)]
    layout = "GRAYSCALE" if c == 1 else "RGB"
    return ImageType(name="image", scale=scale, bias=bias, color_layout=layout, description=DESCRIPTIONS["image"]), \
        (c, int(h), int(w))


def _token_ids(path: Path, config, length: int) -> torch.Tensor:
    """``[1, length]`` example token ids: a sentence through the directory's tokenizer when it has
    one, else ids drawn (seeded) from the vocabulary."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        ids = tok("The quick brown fox jumps over the lazy dog.", padding="max_length", truncation=True,
                  max_length=length, return_tensors="pt")["input_ids"]
        if ids.shape == (1, length):
            return ids
    except Exception:  # noqa: BLE001 - no tokenizer saved (or one that cannot pad): random ids
        pass
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, int(getattr(config, "vocab_size", 1000)), (1, length), generator=g)


def prepare(path, task: str | None = None, sequence_length: int | None = None) -> Pretrained:
    """Load the model of directory ``path`` for ``task`` (None: from ``config.architectures``)
    and make what ``tlc.build`` needs (:class:`Pretrained`). ``sequence_length``: the text inputs'
    length (default 128, at most the model's ``max_position_embeddings``). Raises
    :class:`InputError` for a path that is not a model directory, an unknown task, a model the
    task's auto class cannot load, a bad sequence length."""
    path = Path(path)
    if task is not None:
        task = task_name(task, None)  # an unknown task is named before the directory is read
    config = _config(path)
    task = task_name(task, config)
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    name = path.resolve().name
    meta = {"co.huggingface.exporters.name": name, "co.huggingface.exporters.task": task,
            "co.huggingface.exporters.architecture": arch, "co.huggingface.exporters.framework": "pytorch"}
    if getattr(config, "transformers_version", None):
        meta["transformers_version"] = config.transformers_version
    model = _load(path, task, config)
    desc = f"{arch} ({task}) from {name}, converted by tlc"
    if task == "text-generation":
        return Pretrained(task, name, model, metadata=meta, short_description=desc)
    notes: list[str] = []
    text = "pixel_values" not in _forward_params(model)
    if text:
        limit = int(getattr(config, "max_position_embeddings", 512) or 512)
        length = int(sequence_length or min(128, limit))
        if not 1 <= length <= limit:
            raise InputError(f"sequence length {length} is outside 1..{limit} (the model's max_position_embeddings)")
        ids = _token_ids(path, config, length)
        example = (ids, torch.ones_like(ids))
        inputs = [TensorType(name=n, description=DESCRIPTIONS[n]) for n in ("input_ids", "attention_mask")]
    else:
        if sequence_length is not None:
            raise InputError("--sequence-length applies to text models; this one takes images")
        spec, (c, h, w) = _image_input(path, config, notes)
        pixels = np.random.default_rng(0).integers(0, 256, (1, c, h, w)).astype(np.float32)
        example = (torch.from_numpy(spec.from_pixels(pixels)),)
        inputs = [spec]
    has_pooler = task == "feature-extraction" and "pooler_output" in _output_fields(model, example, text)
    wrapper = TaskModel(model, task, text, has_pooler)
    outputs = [TensorType(name=k, description=DESCRIPTIONS[k]) for k in OUTPUTS[task]
               if k != "pooler_output" or has_pooler]
    labels = None
    id2label = getattr(config, "id2label", None) or {}
    if task in ("sequence-classification", "image-classification"):
        labels = dict(id2label)
    elif task in ("token-classification", "object-detection", "semantic-segmentation") and id2label:
        labels_list = [id2label[i] for i in sorted(id2label)]
        meta["classes"] = ",".join(map(str, labels_list))
        if task == "semantic-segmentation":  # Xcode's preview (exporters does the same)
            meta["com.apple.coreml.model.preview.type"] = "imageSegmenter"
            meta["com.apple.coreml.model.preview.params"] = json.dumps({"labels": labels_list})
    return Pretrained(task, name, wrapper, example, inputs, outputs, labels, meta, desc, notes)


def _forward_params(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _output_fields(model, example, text: bool) -> set[str]:
    """The fields the bare model returns (``pooler_output`` or not)."""
    with torch.no_grad():
        out = model(input_ids=example[0], attention_mask=example[1], return_dict=True) if text else \
            model(pixel_values=example[0], return_dict=True)
    return {k for k, v in out.items() if v is not None}


__all__ = ["AUTO_CLASSES", "OUTPUTS", "DESCRIPTIONS", "Pretrained", "TaskModel", "prepare", "task_name"]
