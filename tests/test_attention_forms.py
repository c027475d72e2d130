"""Issue 29: the attention forms timm and torchvision ship, recognised by what they compute and laid
out for the ANE (``canon::attention``, ``fuse::norm_attention``, ``layout::ane_transformer``).

The modules below re-create each library's form in plain torch (timm and torchvision are not
tlc dependencies): timm's packed qkv (``reshape(B, N, 3, h, d) -> permute -> unbind``), Swin's
shifted-window attention (rank-6 window partition, explicit matmul -> softmax -> matmul with a
relative-position bias and the shift mask added through torchvision's rank-5 view, MLP on a
channels-last (B, H, W, C) map), LeViT's attention (BatchNorm over flattened tokens, per-head
q/k/v split, keys transposed in one step, a learned bias). Each is built, its rewritten graph
checked for what the layout promises (no rank-5 tensor, no linear on tokens, attention per
head), and its numbers compared with torch: fp32 in the NumPy runtime within 1e-5, the saved
default package in tlc's MIL interpreter within 1e-2. Every rule has a must-not-fire case."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tlc
from tlc.check.metrics import rel_l2
from tlc.ir import GraphBuilder, TensorType
from tlc.passes import PASSES, run_pipeline
from tlc.passes.ane_pad import PadPolicy
from tlc.runtime import load
from tlc.runtime.numpy_executor import run_graph


class PackedAttention(nn.Module):
    """timm's ``Attention``: one qkv linear, reshape to (B, N, 3, h, d), permute, unbind."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.h, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, bias=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class ViTBlock(nn.Module):
    def __init__(self, dim=64, heads=4, tokens=50, rel_bias=False):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = PackedAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.bias = nn.Parameter(torch.randn(1, heads, tokens, tokens)) if rel_bias else None  # BEiT-style

    def forward(self, x):
        x = x + self.attn(self.n1(x), self.bias)
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    """Patch conv stem, class token, two blocks, the class token out (ViT-B/32's 50 tokens)."""

    def __init__(self, dim=64, tokens=50, rel_bias=False):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.blocks = nn.Sequential(*(ViTBlock(dim, tokens=tokens, rel_bias=rel_bias) for _ in range(2)))
        self.norm = nn.LayerNorm(dim)

    def forward(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.norm(self.blocks(x))[:, 0]


def _windows(x, w):  # (B, H, W, C) -> (B*nW, w*w, C) through a rank-6 view, as Swin does
    B, H, W, C = x.shape
    return x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)


def _unwindows(x, w, H, W):
    C = x.shape[-1]
    return x.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


class SwinBlock(nn.Module):
    """Shifted-window attention written as torchvision writes it: explicit matmuls, q scaled first,
    a relative-position bias, the shift mask added through a rank-5 view of the scores; the MLP
    on the channels-last (B, H, W, C) map."""

    def __init__(self, dim=32, heads=2, size=14, window=7, shift=3):
        super().__init__()
        self.h, self.w, self.shift, self.size = heads, window, shift, size
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.rel = nn.Parameter(torch.randn(heads, window * window, window * window) * 0.1)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        img = torch.zeros(size, size)
        cnt = 0
        for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                img[hs, ws] = cnt
                cnt += 1
        mw = _windows(img[None, :, :, None], window).squeeze(-1)
        mask = mw[:, None, :] - mw[:, :, None]
        self.register_buffer("mask", mask.masked_fill(mask != 0, -100.0))

    def attn(self, x):
        B, H, W, C = x.shape
        x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
        t = _windows(x, self.w)
        n, N, _ = t.shape
        q, k, v = self.qkv(t).reshape(n, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        s = (q * (C // self.h) ** -0.5).matmul(k.transpose(-2, -1)) + self.rel
        nw = self.mask.shape[0]
        s = (s.view(n // nw, nw, self.h, N, N) + self.mask.unsqueeze(1).unsqueeze(0)).view(-1, self.h, N, N)
        y = s.softmax(-1).matmul(v).transpose(1, 2).reshape(n, N, C)
        y = _unwindows(self.proj(y), self.w, H, W)
        return torch.roll(y, (self.shift, self.shift), (1, 2))

    def forward(self, img_map):
        x = img_map + self.attn(self.n1(img_map))
        return x + self.mlp(self.n2(x))


class LeViTAttention(nn.Module):
    """timm LeViT: a bias-free qkv linear with BatchNorm1d over the flattened tokens, each head's
    q, k, v split from its own channels, keys transposed to (B, h, d, N) in one step, a learned
    attention bias, hardswish before the output projection."""

    def __init__(self, dim=64, heads=4, key=8, val=16, res=7):
        super().__init__()
        self.h, self.key, self.val = heads, key, val
        self.qkv = nn.Linear(dim, heads * (2 * key + val), bias=False)
        self.bn = nn.BatchNorm1d(heads * (2 * key + val))
        self.bn.running_mean.normal_()
        self.bn.running_var.uniform_(0.5, 2.0)
        self.proj = nn.Linear(heads * val, dim)
        self.bias = nn.Parameter(torch.randn(heads, res * res, res * res) * 0.1)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.bn(self.qkv(x).flatten(0, 1)).reshape(B, N, -1)
        q, k, v = qkv.view(B, N, self.h, -1).split([self.key, self.key, self.val], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        a = ((q @ k) * self.key ** -0.5 + self.bias).softmax(-1)
        return self.proj(F.hardswish((a @ v).transpose(1, 2).reshape(B, N, self.h * self.val)))


class BlockAttention(nn.Module):
    """timm NesT: tokens grouped in blocks (B, T, N, C); packed qkv at rank 6, attention at rank 5
    (B, h, T, N, d) -- the blocks are one more batch axis."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.h, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, T, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, N, 3, self.h, C // self.h).permute(3, 0, 4, 1, 2, 5).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.permute(0, 2, 3, 4, 1).reshape(B, T, N, C))


class EinsumWindowAttention(nn.Module):
    """torchvision's MaxViT attention: windows as a batch axis G of (B, G, P, C), q/k/v by
    ``chunk``, keys scaled, ``einsum`` products over (B, G, h) -- lowered by torch to rank-3 ``bmm``
    through rank-6 views -- and a relative-position bias (1, h, P, P)."""

    def __init__(self, dim=32, heads=2, tokens=16):
        super().__init__()
        self.h, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(1, heads, tokens, tokens))

    def forward(self, x):
        B, G, P, C = x.shape
        q, k, v = (t.reshape(B, G, P, self.h, C // self.h).permute(0, 1, 3, 2, 4) for t in self.qkv(x).chunk(3, -1))
        s = torch.einsum("bghid,bghjd->bghij", q, k * (C // self.h) ** -0.5)
        y = torch.einsum("bghij,bghjd->bghid", F.softmax(s + self.bias, dim=-1), v)
        return self.proj(y.permute(0, 1, 3, 2, 4).reshape(B, G, P, C))


def _case(name):
    torch.manual_seed(0)
    if name == "vit":
        return ViT().eval(), (torch.randn(1, 3, 28, 28),)
    if name == "beit":
        return ViT(rel_bias=True).eval(), (torch.randn(1, 3, 28, 28),)
    if name == "swin":
        return SwinBlock().eval(), (torch.randn(1, 14, 14, 32),)
    if name == "nest":
        return BlockAttention().eval(), (torch.randn(1, 4, 16, 32),)
    if name == "maxvit":
        return EinsumWindowAttention().eval(), (torch.randn(1, 4, 16, 32),)
    return LeViTAttention().eval(), (torch.randn(1, 49, 64),)


def _ranks(g):
    return {v.type.rank for n in g.nodes for v in list(n.inputs) + list(n.outputs)}


@pytest.mark.parametrize("name", ["vit", "beit", "swin", "levit", "nest", "maxvit"])
def test_forms_are_laid_out_and_keep_numbers(name, tmp_path):
    m, args = _case(name)
    before = tlc.build(m, args, precision="fp32", skip_passes=["layout::ane_transformer", "canon::attention", "canon::attention_batch"])
    after = tlc.build(m, args, precision="fp32")
    g0, g1 = before.graph, after.graph
    assert 5 in _ranks(g0) or name == "levit"  # the traced packed qkv / window view
    assert max(_ranks(g1)) <= 4, "no rank-5 (or higher) tensor after the layout"
    h1 = g1.op_histogram()
    assert "scaled_dot_product_attention" not in h1 and h1.get("einsum")
    assert not any(n.op in ("linear", "matmul") and n.inputs[0].type.rank >= 3 for n in g1.nodes)
    feeds = {g0.inputs[0].name: args[0].numpy()}
    with torch.no_grad():
        ref = m(*args).numpy()
    got = run_graph(g1, feeds)[g1.output_names[0]]
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    pkg = tlc.build(m, args).save(tmp_path / f"{name}.mlpackage")
    out = load(pkg, backend="interpreter")(feeds)
    assert rel_l2(next(iter(out.values())), ref) <= 1e-2


def test_swin_windows_are_the_batch_and_padded_by_cost():
    """The 7x7 windows are the batch of (B*nW, C, 1, 49) blocks, padded to 64 positions (the cost
    model pads 49 -> 64: r = 1.31); the 14x14 map's 196 tokens of the MLP pad to 224."""
    m, args = _case("swin")
    g = tlc.build(m, args, precision="fp32").graph
    einsum = [n for n in g.nodes if n.op == "einsum"]
    assert {n.out.type.shape for n in einsum} >= {(4, 64, 1, 64)}  # scores: [B*nW, Sk, 1, Sq], padded
    convs = {n.out.type.shape[0] for n in g.nodes if n.op == "conv"}
    assert convs == {1, 4}  # the MLP on the whole map (B = 1), the projections per window (B*nW = 4)


def _pass(name, g):
    return run_pipeline(g, [name])


def _trace(fn, *xs):
    from tlc.frontend import trace

    return trace(fn, tuple(xs))[0]


def test_unpack_qkv_must_not_fire_on_other_picks():
    """A pick along the heads axis (not the packing axis) and a reshape that splits more than the
    last axis are left as traced."""
    def heads_pick(x):
        return x.reshape(1, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)[:, :, 1]

    def not_last(x):
        return x.reshape(1, 5, 3, 4, 8).permute(3, 0, 2, 1, 4)[0]

    for fn in (heads_pick, not_last):
        g = _trace(fn, torch.randn(1, 5, 96))
        assert _pass("canon::attention", g).op_histogram() == g.op_histogram()


def test_unpack_qkv_fires_and_keeps_numbers():
    def packed(x):
        q, k, v = x.reshape(1, 5, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        return q * 2 + k * 3 + v

    x = torch.randn(1, 5, 96)
    g = _trace(packed, x)
    g2 = _pass("canon::attention", g)
    assert 5 in _ranks(g) and 5 not in _ranks(g2)
    feeds = {g.inputs[0].name: x.numpy()}
    assert np.array_equal(run_graph(g2, feeds)[g2.output_names[0]], packed(x).numpy())


def test_bias_and_window_rules_must_not_fire():
    """Two adds of constants where the first sum is read elsewhere; a view that does not only split
    the leading axis."""
    c1, c2, c3 = torch.randn(4, 4), torch.randn(4, 4), torch.randn(2, 4)

    def shared(s):
        a = s + c1
        return a + c2, a

    def not_leading(s):
        return (s.view(2, 2, 2, 4) + c3).view(2, 4, 4)

    for fn, x in ((shared, torch.randn(2, 4, 4)), (not_leading, torch.randn(2, 4, 4))):
        g = _trace(fn, x)
        assert _pass("canon::attention", g).op_histogram() == g.op_histogram()


def test_batch_axes_must_not_fire_with_a_batched_mask():
    def masked(q, m):
        return F.scaled_dot_product_attention(q, q, q, attn_mask=m)

    g = _trace(masked, torch.randn(1, 2, 3, 4, 8), torch.randn(1, 2, 3, 4, 4))
    assert _pass("canon::attention", g).op_histogram() == g.op_histogram()


def test_batched_products_fire_and_keep_numbers():
    """einsum over (B, G, h) lowered to rank-3 bmm through rank-6 views becomes the matmul over
    the batch axes: no rank-3 matmul, no rank-6 view; the same numbers."""
    def products(q, k):
        return torch.einsum("bghid,bghjd->bghij", q, k)

    q, k = torch.randn(1, 3, 2, 5, 8), torch.randn(1, 3, 2, 6, 8)
    g = _trace(products, q, k)
    g2 = _pass("canon::attention", g)
    assert 6 in _ranks(g) and max(_ranks(g2)) <= 5
    assert [n.out.type.rank for n in g2.nodes if n.op == "matmul"] == [5]
    feeds = {g.inputs[0].name: q.numpy(), g.inputs[1].name: k.numpy()}
    got = run_graph(g2, feeds)[g2.output_names[0]]
    assert np.abs(got - products(q, k).numpy()).max() <= 1e-5


def test_batched_products_must_not_fire_on_mixed_views():
    """A merge that moves batch axes (the result's batch order is not the operands') and a split
    of the result that cuts across its matrix axes are left as traced."""
    def moved(a, b):
        return torch.bmm(a.permute(1, 0, 2, 3).reshape(6, 4, 5), b.reshape(6, 5, 4)).view(2, 3, 4, 4)

    def cut(a, b):
        return torch.bmm(a.reshape(6, 4, 5), b.reshape(6, 5, 4)).view(2, 3, 2, 8)

    for fn in (moved, cut):
        g = _trace(fn, torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 4))
        assert _pass("canon::attention", g).op_histogram() == g.op_histogram()


def test_key_transpose_must_not_fire_on_plain_swaps():
    def plain(q, k):
        return q @ k.transpose(-2, -1)

    g = _trace(plain, torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))
    assert _pass("canon::attention", g).op_histogram() == g.op_histogram()


def test_linear_batchnorm_must_not_fire_when_the_reshape_mixes_channels():
    lin, bn = nn.Linear(8, 8), nn.BatchNorm1d(4).eval()

    def mixed(x):
        return bn(lin(x).reshape(-1, 4))

    g = _trace(mixed, torch.randn(1, 5, 8))
    assert "batch_norm" in _pass("fuse::conv_batchnorm", g).op_histogram()


def test_padding_policy_by_cost():
    """49 (a window) and 50 (ViT-B/32) pad to 64 under the default cost; 12 (32: r = 2.7) does not;
    ``misaligned_cost=1`` never pads."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (1, 4, 64, 32)))
    b.add("scaled_dot_product_attention", [x, x, x], {})
    g = b.build([b.nodes[-1].out], ["y"])
    p = PadPolicy(g)
    assert p.pad(49) == 15 and p.pad(50) == 14 and p.pad(12) == 0 and p.pad(64) == 0 and p.pad(1) == 0
    assert PadPolicy(g, misaligned_cost=1.0).pad(50) == 0

    def attention_over(S):  # the lengths the graph's attention reads: the cost formula decides
        b = GraphBuilder()
        x = b.add_input("x", TensorType("fp32", (1, 4, S, 32)))
        b.add("scaled_dot_product_attention", [x, x, x], {})
        return b.build([b.nodes[-1].out], ["y"])

    for S, pad in ((49, 15), (50, 14), (12, 0)):
        assert PadPolicy(attention_over(S)).pad(S) == pad, S
        assert PadPolicy(attention_over(S), misaligned_cost=1.0).pad(S) == 0, S


def test_float_masks_keep_numbers_and_must_not_fire_on_comparisons():
    """A padding mask from an int32 input becomes fp arithmetic (no bool/int op left inside); a mask
    computed by a comparison of integers (token ids != 0, not exact in fp16) is left as traced."""
    from tlc.passes.ane_masks import float_masks

    def masked(q, mask):
        keep = mask.bool()[:, None, None, :] & torch.ones(1, 1, 6, 6, dtype=torch.bool)
        return F.scaled_dot_product_attention(q, q, q, attn_mask=keep)

    def by_ids(q, ids):
        return F.scaled_dot_product_attention(q, q, q, attn_mask=(ids != 0)[:, None, None, :])

    q = torch.randn(2, 2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    g = _trace(masked, q, mask)
    g2 = float_masks(g)
    assert not {"logical_and", "logical_not"} & set(g2.op_histogram())
    assert all(n.out.type.dtype == "fp32" for n in g2.nodes if n.op not in ("const", "cast"))
    feeds = {g.inputs[0].name: q.numpy(), g.inputs[1].name: mask.numpy().astype(np.int32)}
    want = masked(q, mask).numpy()
    assert np.abs(run_graph(g2, feeds)[g2.output_names[0]] - want).max() <= 1e-6
    g = _trace(by_ids, q, mask)
    assert float_masks(g) is g


def test_float_masks_take_mean_pooling_s_cast():
    """Mean pooling's ``mask[..., None].expand(...).float()``: the views run on the float twin,
    the int32 input is cast once where it enters; same numbers."""
    from tlc.passes.ane_masks import float_masks

    def pooled(x, mask):
        m = mask[:, :, None].expand(x.shape).float()
        return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)

    x, mask = torch.randn(2, 6, 8), torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    g = _trace(pooled, x, mask)
    g2 = float_masks(g)
    assert any(n.out.type.dtype == "int32" for n in g.nodes if n.op not in ("const", "cast"))
    assert all(n.out.type.dtype == "fp32" for n in g2.nodes if n.op not in ("const", "cast"))
    assert [n.inputs[0] for n in g2.nodes if n.op == "cast"] == [g2.inputs[1]]
    feeds = {g.inputs[0].name: x.numpy(), g.inputs[1].name: mask.numpy().astype(np.int32)}
    got = run_graph(g2, feeds)[g2.output_names[0]]
    assert np.array_equal(got, run_graph(g, feeds)[g.output_names[0]])  # the rewrite is exact
    assert np.abs(got - pooled(x, mask).numpy()).max() <= 1e-6  # and torch eager agrees


def test_transitions_are_counted_in_the_report_and_lint(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from archs import make
    from tlc.check.lint import lint

    m, args, kwargs = make("distilbert")
    cm = tlc.build(m, (args, kwargs))
    rep = cm.report()
    on = {o.name: o.on_ane for o in rep.ops}
    assert rep.transitions == sum(on[i] != o.on_ane for o in rep.ops for i in o.inputs if i in on)
    # the int32 mask enters as one cast, the embedding gather, one cast per output: no bool/int op inside
    assert {o.op for o in rep.not_on_ane()} <= {"cast", "gather"} and rep.transitions == 3
    assert "transition(s)" in rep.text() and rep.to_json()["transitions"] == rep.transitions
    lr = lint(cm.save(tmp_path / "d.mlpackage"))
    assert lr.transitions == len(lr.transition_edges) >= 1 and "transition(s)" in lr.text()
