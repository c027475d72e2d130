"""The public transformer and hybrid architectures of the ANE-layout survey (issue 29).

Full-size default configurations from timm and torchvision, random weights (``pretrained=False``,
nothing downloaded), one 224x224 image (256 for SwinV2), plus the Hugging Face models of
``bench_spine.py``. Each factory returns ``(model, (args, kwargs))``.

timm and torchvision are not tlc dependencies: install them into a folder of their own and put
it on ``PYTHONPATH`` for the survey only (``pip install --no-deps --target /tmp/vision
timm==1.0.29 torchvision==0.28.0``; docs/partitioning.md): in site-packages, torchvision breaks
``transformers``' imports in every other process. Beside the CPU
build of torch, ``import torchvision`` fails with "operator torchvision::nms does not exist" (the
wheel's C++ ops do not load, and its Python code registers a fake kernel for ``nms`` at import);
:func:`vision` defines the two op schemas it needs with ``torch.library`` first. The models here
never call those ops.
"""
from __future__ import annotations

import torch

#: name -> (library, constructor name, image size, what it exercises)
SURVEY = {
    "vit_b16": ("timm", "vit_base_patch16_224", 224, "packed qkv, 197 tokens"),
    "vit_b32": ("timm", "vit_base_patch32_224", 224, "packed qkv, 50 tokens"),
    "vit_s16": ("timm", "vit_small_patch16_224", 224, "packed qkv"),
    "deit_s": ("timm", "deit_small_patch16_224", 224, "packed qkv"),
    "deit3_s": ("timm", "deit3_small_patch16_224", 224, "layer scale"),
    "beit_b": ("timm", "beit_base_patch16_224", 224, "relative position bias, q/v bias"),
    "eva02_t": ("timm", "eva02_tiny_patch14_224", 224, "RoPE, SwiGLU"),
    "flexivit_s": ("timm", "flexivit_small", 240, "packed qkv, 226 tokens"),
    "swin_t": ("timm", "swin_tiny_patch4_window7_224", 224, "windowed attention, shifted windows"),
    "swinv2_t": ("timm", "swinv2_tiny_window8_256", 256, "cosine attention, log-CPB bias"),
    "cait_xxs24": ("timm", "cait_xxs24_224", 224, "talking heads, class attention"),
    "levit_128s": ("timm", "levit_128s", 224, "attention bias, hybrid"),
    "xcit_t12": ("timm", "xcit_tiny_12_p16_224", 224, "cross-covariance attention"),
    "coat_lite_t": ("timm", "coat_lite_tiny", 224, "factorized attention"),
    "efficientformerv2_s0": ("timm", "efficientformerv2_s0", 224, "talking heads, hybrid"),
    "pvt_v2_b0": ("timm", "pvt_v2_b0", 224, "spatial-reduction attention"),
    "maxvit_t": ("timm", "maxvit_tiny_tf_224", 224, "block + grid attention, rank-6 partitions"),
    "hiera_t": ("timm", "hiera_tiny_224", 224, "mask-unit unroll"),
    "nest_t": ("timm", "nest_tiny", 224, "blockify"),
    "mvitv2_t": ("timm", "mvitv2_tiny", 224, "pooling attention"),
    "tv_vit_b16": ("torchvision", "vit_b_16", 224, "nn.MultiheadAttention"),
    "tv_swin_t": ("torchvision", "swin_t", 224, "windowed attention through F.linear"),
    "tv_swin_v2_t": ("torchvision", "swin_v2_t", 256, "cosine attention"),
    "tv_maxvit_t": ("torchvision", "maxvit_t", 224, "block + grid attention"),
}
HF = ["bert", "distilbert", "gpt2", "vit", "minilm", "whisper_enc"]


def vision():
    """``(timm, torchvision)``, imported beside the CPU torch (module docstring)."""
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        vision._lib = lib  # keep the definitions alive
    except RuntimeError:  # already defined (torchvision's own ops loaded, or a second call)
        pass
    import timm
    import torchvision

    return timm, torchvision


def make(name: str):
    """``(model, (args, kwargs))`` of survey model ``name`` (a key of :data:`SURVEY`)."""
    lib, ctor, size, _ = SURVEY[name]
    timm, torchvision = vision()
    if lib == "timm":
        model = timm.create_model(ctor, pretrained=False)
    else:
        model = getattr(torchvision.models, ctor)(weights=None)
    with torch.no_grad():  # zero-initialised heads (torchvision's ViT, timm's LeViT) would make every output 0
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    return model.eval(), ((torch.randn(1, 3, size, size),), {})
