"""What an app-ready package costs (issue 32): the same classifier built as a bare tensor program
and as a package with an image input and Core ML classifier outputs, side by side in one process.

For each model (random weights, full size: nothing is downloaded) the softmax of the logits is
built twice with ``precision="mixed"``: ``tensor`` (a MultiArray ``pixel_values`` in, a
probabilities array out) and ``app`` (``tlc.ImageType`` with ImageNet's normalization in,
``classLabel`` + the ``{label: probability}`` dictionary out, labels from the config). Printed:
build + save seconds of each, the ``finish`` stage alone (images and classifier put on the
program, :func:`tlc.backends.coreml.features.finish_package`), package sizes, the two image ops'
placement, and how far the app package's probabilities are from the tensor package's on the same
image (tlc's MIL interpreter).

    python benchmarks/bench_package_io.py [--models resnet50,vit] [--json FILE]

Goal: the app package costs little over the tensor one (its ops are two elementwise ops and a
``classify``; the build pays one more serialization of the weights).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tlc
from tlc.runtime import load
from tlc.util.coreml import package_size

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def model_of(name: str):
    import transformers

    torch.manual_seed(0)
    if name == "resnet50":
        net = transformers.ResNetForImageClassification(transformers.ResNetConfig(num_labels=1000))
    elif name == "vit":
        net = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000))
    elif name == "mobilenetv2":
        net = transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(num_labels=1000))
    else:
        raise SystemExit(f"unknown model {name!r}")
    labels = [net.config.id2label[i] for i in range(net.config.num_labels)]

    class Probabilities(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net.eval()

        def forward(self, pixel_values):
            return torch.softmax(self.net(pixel_values).logits, -1)

    return Probabilities().eval(), labels


def run(name: str, work: Path) -> dict:
    model, labels = model_of(name)
    image = tlc.ImageType(name="image", scale=[1 / (255 * s) for s in STD], bias=[-m / s for m, s in zip(MEAN, STD)])
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3)).astype(np.uint8)
    x = torch.from_numpy(image.from_pixels(rgb.transpose(2, 0, 1)[None].astype(np.float32)))
    row = {"model": name}
    for kind, kw in (("tensor", {}), ("app", {"inputs": [image], "outputs": [tlc.TensorType(name="probabilities")],
                                              "class_labels": labels})):
        t0 = time.perf_counter()
        cm = tlc.build(model, (x,), **kw)
        path = cm.save(work / f"{name}_{kind}.mlpackage")
        row[f"t_{kind}"] = time.perf_counter() - t0
        row[f"size_{kind}"] = package_size(path)
        row[f"finish_{kind}"] = cm.timings.get("finish", 0.0)
        m = load(path)
        out = m({"image": rgb} if kind == "app" else {"pixel_values": x.numpy()})
        row[f"probs_{kind}"] = (np.asarray([out["probabilities"][k] for k in labels]) if kind == "app"
                                else np.asarray(out["output"]).ravel())
        if kind == "app":
            row["image_ops"] = ", ".join(f"{n.op} on {cm.placement.target[n.name]}" for n in cm.emit_graph.nodes
                                         if n.op != "const" and n.loc is not None and n.loc.module == "image input image")
    row["max_abs_diff"] = float(np.abs(row.pop("probs_app") - row.pop("probs_tensor")).max())
    row["ratio"] = row["t_app"] / row["t_tensor"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,vit")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlc-bench-io-") as d:
        for name in a.models.split(","):
            rows.append(run(name, Path(d)))
            print(f"{name}: done", file=sys.stderr)
    print(f"{'model':<12}{'tensor s':>10}{'app s':>9}{'app/tensor':>12}{'finish s':>10}{'size tensor':>13}"
          f"{'size app':>10}{'max |dp|':>10}  image ops")
    for r in rows:
        print(f"{r['model']:<12}{r['t_tensor']:>10.2f}{r['t_app']:>9.2f}{r['ratio']:>12.2f}{r['finish_app']:>10.2f}"
              f"{r['size_tensor'] / 2**20:>11.1f}MB{r['size_app'] / 2**20:>8.1f}MB{r['max_abs_diff']:>10.1e}  "
              f"{r['image_ops']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
