"""An image classifier an app can use as it is (random weights: nothing is downloaded): the package
takes an image (a camera's CVPixelBuffer through Vision) and does the ImageNet normalization
inside, and returns Core ML's classifier outputs, ``classLabel`` and the ``{label: probability}``
dictionary Xcode's preview and ``VNClassificationObservation`` read.

    tlc build examples/image_classifier.py                       # -> image_classifier.mlpackage
    tlc run image_classifier.mlpackage --input image=photo.png   # the top labels

The same from a Hugging Face model directory (``save_pretrained``), with the image processor's
normalization and the config's labels: ``tlc build ./my-vit --task image-classification``.
"""
import torch
import transformers

import tlc

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, per RGB channel

torch.manual_seed(0)
net = transformers.ResNetForImageClassification(transformers.ResNetConfig(
    embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_labels=len(LABELS))).eval()


class Classifier(torch.nn.Module):
    """The network's probabilities (softmax of its logits): what a classifier's dictionary holds."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixel_values):
        return torch.softmax(self.net(pixel_values).logits, dim=-1)


model = Classifier(net).eval()
example_inputs = (torch.randn(1, 3, 96, 96),)

# the package's interface (tlc.build's arguments of the same names): the model sees pixel * scale + bias
inputs = [tlc.ImageType(name="image", scale=[1 / (255 * s) for s in STD], bias=[-m / s for m, s in zip(MEAN, STD)],
                        color_layout="RGB", description="a photo, 96x96")]
outputs = [tlc.TensorType(name="probabilities", description="the probability of each class")]
class_labels = LABELS
author = "tlc examples"
short_description = "A small ResNet that tells CIFAR-10's ten classes apart (random weights)"
