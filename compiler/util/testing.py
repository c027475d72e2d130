"""Helpers for testing and benchmarking compiled models on random weights."""
from __future__ import annotations

import torch


def trained_like_batchnorm(model: torch.nn.Module, example: torch.Tensor, residual_gamma: float = 0.3) -> None:
    """Give a random-weight MobileNetV2 the BatchNorm state a trained one has.

    * Running statistics from a batch of 64 (as training leaves them). With transformers' init
      (conv std 0.02, running var 1) activations shrink to ~1e-24 over the 52 conv/BN layers,
      far below fp16's range (measured), which no trained checkpoint does.
    * The BN closing each residual branch (``reduce_1x1``) gets gamma = ``residual_gamma``:
      trained networks keep residual branches small (zero-gamma init, Goyal et al. 2017,
      "Accurate, Large Minibatch SGD"). With gamma = 1 the random network is chaotic: torch's own
      fp16 run is 4.7e-2 rel-L2 off float64 and even fp32 is 7e-6 (measured); with 0.3 they are
      8e-4 and 3e-7, so tests measure the compiler rather than the network's conditioning.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives exactly its statistics
    model.train()
    with torch.no_grad():
        model(torch.randn((64,) + tuple(example.shape[1:]), generator=torch.Generator().manual_seed(2)))
    model.eval()
    for name, mod in model.named_modules():
        if name.endswith("reduce_1x1.normalization"):
            mod.weight.data.mul_(residual_gamma)
