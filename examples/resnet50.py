"""ResNet-50 (transformers architecture, random weights: nothing is downloaded).

    tlc build examples/resnet50.py          # -> resnet50.mlpackage
"""
import torch
import transformers

torch.manual_seed(0)
model = transformers.ResNetModel(transformers.ResNetConfig()).eval()  # the default config is ResNet-50
example_inputs = (torch.randn(1, 3, 224, 224),)
