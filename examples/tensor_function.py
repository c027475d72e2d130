"""A plain tensor function compiled with @tlc.compile: scaled dot-product attention with a
residual and RMS normalization.

    tlc build examples/tensor_function.py   # builds the example_inputs signature
    python examples/tensor_function.py      # first call traces, second reuses the cache
"""
import torch

import tlc

torch.manual_seed(0)
Q, K, V = (torch.randn(1, 4, 16, 32) for _ in range(3))


@tlc.compile(example_inputs=(Q, K, V))
def attention_block(q, k, v):
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    x = a + q
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


if __name__ == "__main__":
    out = attention_block(Q, K, V)
    a = torch.nn.functional.scaled_dot_product_attention(Q, K, V) + Q
    ref = a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-6)
    print(attention_block, "max abs error vs torch:", (out - ref).abs().max().item())
