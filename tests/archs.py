"""Small random-weight configs of the spine architectures (full sizes live in benchmarks/).

``make(name)`` -> (model, args, kwargs). Token inputs include padding (a real attention mask).
"""
from __future__ import annotations

import torch
import transformers as T
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from tlc.util.testing import trained_like_batchnorm

T.logging.set_verbosity_error()

ARCHS = ["bert", "distilbert", "gpt2", "vit", "resnet", "mobilenetv2", "convnext", "whisper_encoder"]


def _ids(vocab=1000, seq=12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, seq), generator=g)
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, seq - 4:] = 0  # second sequence is padded
    return (), {"input_ids": ids, "attention_mask": mask}


def make(name: str):
    torch.manual_seed(0)
    if name == "bert":
        m = T.BertModel(T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=1000))
        args, kwargs = _ids()
    elif name == "distilbert":
        m = T.DistilBertModel(T.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=1000))
        args, kwargs = _ids()
    elif name == "gpt2":
        m = T.GPT2Model(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, use_cache=False,
                                     bos_token_id=0, eos_token_id=0))
        args, kwargs = _ids()
    elif name == "vit":
        m = T.ViTModel(T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128, image_size=32, patch_size=8))
        args, kwargs = (torch.randn(1, 3, 32, 32),), {}
    elif name == "resnet":
        m = T.ResNetModel(T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]))
        args, kwargs = (torch.randn(1, 3, 64, 64),), {}
    elif name == "mobilenetv2":
        m = T.MobileNetV2Model(T.MobileNetV2Config(depth_multiplier=0.35, image_size=64))
        args, kwargs = (torch.randn(1, 3, 64, 64),), {}
        trained_like_batchnorm(m, args[0])
    elif name == "convnext":
        m = T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1]))
        args, kwargs = (torch.randn(1, 3, 64, 64),), {}
    elif name == "whisper_encoder":
        m = WhisperEncoder(T.WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4,
                                           decoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=16,
                                           max_source_positions=50))
        args, kwargs = (torch.randn(1, 16, 100),), {}
    else:
        raise KeyError(name)
    return m.eval(), args, kwargs


def reference(model, args, kwargs):
    """Torch eager outputs in float64 (the model is copied to double), flattened to a list."""
    import copy

    import torch.utils._pytree as pytree

    m64 = copy.deepcopy(model).double()
    a64 = [a.double() if a.is_floating_point() else a for a in args]
    with torch.no_grad():
        out = m64(*a64, **kwargs)
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
