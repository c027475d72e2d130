"""Issue 10: everything Core ML can run stays in Core ML — real models build as one shippable
.mlpackage; scalars stay 0-d; rank-6 views fold; FFT front-ends lower to real MIL ops; the
fallback never aborts, and `--no-fallback` makes any fallback an error that writes nothing.

Small configs (random weights from diffusers / transformers configs; nothing downloaded). Every
check runs the saved artifact (save -> tlc.runtime.load -> run) against torch eager."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import tlc
from tlc.errors import NotShippableError
from tlc.runtime import load
from tlc.check.metrics import rel_l2

from shipcheck import reference, ship


# ---------------------------------------------------------------------------------- diffusers


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    m = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()
    inputs = (torch.randn(1, 4, 16, 16), torch.tensor([10.0]), torch.randn(1, 7, 32))
    return m, inputs


class _Decode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z).sample


@pytest.fixture(scope="module")
def vae_decoder():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
                        norm_num_groups=8, sample_size=32).eval()
    return _Decode(vae).eval(), (torch.randn(1, 4, 8, 8),)


@pytest.mark.parametrize("which", ["unet", "vae_decoder"])
def test_diffusers_model_is_one_package_on_the_ane(which, request, tmp_path):
    """group norm, cross-attention, nearest upsampling, timestep embedding: one .mlpackage,
    >= 99% static ANE residency under mixed precision, fp32 within 1e-5 of torch and the mixed
    package within 1e-2 in tlc's MIL interpreter."""
    model, inputs = request.getfixturevalue(which)
    cm = ship(model, inputs, tmp_path, tol=1e-5, name=f"{which}_fp32")
    ops = set(cm.graph.op_histogram())
    assert "group_norm" in ops and "upsample_nearest_neighbor" in ops
    assert not any("." in op for op in ops)  # no torch op left for the fallback runtime
    mixed = cm.with_options(precision="mixed")
    assert not mixed.is_bundle
    assert mixed.report().residency >= 0.99
    assert mixed.report().predicted_ane_share >= 0.99
    path = mixed.save(tmp_path / f"{which}_mixed.mlpackage")
    out = load(path)({n: x.numpy() for n, x in zip(cm.input_names, inputs)})
    (ref,) = reference(model, inputs)
    assert rel_l2(out[cm.output_names[0]], ref.numpy()) <= 1e-2


# ------------------------------------------------------------------------------ transformers


def _window_partition(x, w):
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c)  # rank 6
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w, w, c)


def _window_reverse(win, w, h, wd):
    c = win.shape[-1]
    x = win.view(-1, h // w, wd // w, w, w, c)  # rank 6
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, wd, c)


class SwinWindowBlock(torch.nn.Module):
    """Swin-style window attention: partition into w x w windows (rank-6 views), attention per
    window, reverse the partition, residual."""

    def __init__(self, c=16, w=4, heads=2):
        super().__init__()
        self.w = w
        self.norm = torch.nn.LayerNorm(c)
        self.attn = torch.nn.MultiheadAttention(c, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(c, 2 * c), torch.nn.GELU(), torch.nn.Linear(2 * c, c))

    def forward(self, x):
        b, h, wd, c = x.shape
        win = _window_partition(self.norm(x), self.w).view(-1, self.w * self.w, c)
        a, _ = self.attn(win, win, win, need_weights=False)
        x = x + _window_reverse(a.view(-1, self.w, self.w, c), self.w, h, wd)
        return x + self.mlp(x)


def test_swin_window_attention_block(tmp_path):
    torch.manual_seed(0)
    cm = ship(SwinWindowBlock().eval(), (torch.randn(2, 8, 8, 16),), tmp_path, tol=1e-5, name="swin")
    assert max(v.type.rank for n in cm.graph.nodes for v in n.outputs) <= 5  # layout::fold_rank folded them


def test_roberta_cumsum_gather_position_ids(tmp_path):
    """RoBERTa builds position ids from the input ids (ne, cumsum, mul, add) and gathers them."""
    from transformers import RobertaConfig
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40)
    ids = torch.randint(2, 100, (2, 9))
    ids[0, -3:] = cfg.pad_token_id
    cm = ship(RobertaEmbeddings(cfg).eval(), (ids,), tmp_path, tol=1e-5, name="roberta_emb")
    assert "cumsum" in cm.graph.op_histogram()


def test_bart_shift_tokens_right(tmp_path):
    """BART's decoder inputs: new_zeros, a slice copy (slice_scatter), a select copy, masked_fill."""
    from transformers.models.bart.modeling_bart import shift_tokens_right

    class Shift(torch.nn.Module):
        def forward(self, labels):
            return shift_tokens_right(labels, 1, 2)

    labels = torch.randint(0, 100, (2, 7))
    labels[0, -2:] = -100
    ship(Shift(), (labels,), tmp_path, tol=0, name="bart_shift")


class WhisperLogMel(torch.nn.Module):
    """Whisper's front-end (openai/whisper audio.log_mel_spectrogram): stft -> |.|^2 -> mel
    filterbank matmul -> log10 -> clamp to max - 8 -> scale."""

    def __init__(self, n_fft=400, hop=160, n_mels=80):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        self.register_buffer("mel", torch.rand(n_mels, n_fft // 2 + 1) / 10)

    def forward(self, audio):
        st = torch.stft(audio, self.n_fft, self.hop, window=self.window, return_complex=True)
        power = st[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.mel @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0


def test_whisper_log_mel_front_end(tmp_path):
    torch.manual_seed(0)
    cm = ship(WhisperLogMel(), (torch.randn(1, 8000),), tmp_path, tol=1e-4, name="logmel")
    assert not any(v.type.dtype == "complex64" for n in cm.graph.nodes for v in n.outputs)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: torch.fft.irfft(torch.fft.rfft(x) * torch.fft.rfft(x).abs(), n=30), (torch.randn(3, 30),)),
    (lambda x: torch.fft.fft2(x).abs().log1p(), (torch.randn(2, 6, 8),)),
    (lambda x: torch.view_as_real(torch.fft.ifft(torch.fft.fft(x, norm="ortho") * 1j)), (torch.randn(2, 12),)),
    (lambda x: (torch.view_as_complex(x) ** 2).angle(), (torch.randn(4, 5, 2),)),
], ids=["rfft_irfft", "fft2_abs", "ifft_1j_view_as_real", "view_as_complex_pow_angle"])
def test_complex_pairs_stay_in_core_ml(fn, inputs, tmp_path):
    ship(fn, inputs, tmp_path, tol=1e-4, double=False, name="spectral")


# ------------------------------------------------------------------------------------ scalars


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: torch.sum(x), (torch.randn(3, 4),)),
    (lambda a, b: torch.dot(a, b), (torch.randn(5), torch.randn(5))),
    (lambda x, y: x.mean() * y + 1, (torch.randn(3, 4), torch.tensor(2.0))),
    (lambda c, a, b: torch.where(c, a, b), (torch.tensor(True), torch.tensor(1), torch.tensor(2))),
    (lambda x: (x.argmax(), x.max()), (torch.randn(6),)),
], ids=["sum", "dot", "scalar_input", "where_0d", "argmax_max"])
def test_scalars_stay_0d(fn, inputs, tmp_path):
    """0-d in the IR, in CompiledModel and through a saved package (which widens them to [1] at
    its boundary and says so in its metadata)."""
    cm = ship(fn, inputs, tmp_path, tol=1e-6, name="scalar")
    assert all(v.type.shape == () for v in cm.graph.outputs)
    got = cm(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    assert all(tuple(t.shape) == () for t in got)
    m = load(tmp_path / "scalar.mlpackage")
    assert m.scalar_outputs == set(cm.output_names)
    assert [s for n, s, _ in m.inputs if n in m.scalar_inputs] == [()] * len(m.scalar_inputs)


def test_constant_outputs_run_from_the_package(tmp_path):
    def fn(x):
        return x + 1, torch.arange(4.0) * 2

    # x + 1 in fp32 against the float64 reference: one rounding (tol=0 held only for lucky inputs)
    ship(fn, (torch.randn(2, generator=torch.Generator().manual_seed(0)),), tmp_path, tol=1e-7, name="const_out")


# ----------------------------------------------------------------------- fallback never aborts


_SPD = torch.randn(4, 4)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: torch.linalg.inv(x), (torch.randn(4, 4) + 4 * torch.eye(4),)),
    (lambda a, b: torch.linalg.solve(a, b), (torch.randn(3, 3) + 3 * torch.eye(3), torch.randn(3))),
    (lambda x: torch.linalg.cholesky(x @ x.T + torch.eye(4)), (_SPD,)),
    (lambda x: torch.linalg.slogdet(x), (torch.randn(2, 3, 3) + 2 * torch.eye(3),)),
], ids=["inv", "solve", "cholesky", "slogdet"])
def test_small_linalg_is_unrolled_into_core_ml(fn, inputs, tmp_path):
    """Gaussian elimination with partial pivoting / Cholesky, unrolled for the static n (issue 10;
    torch.export wraps their error checks in ``with_effects``, which tlc drops)."""
    ship(fn, inputs, tmp_path, tol=1e-5, double=False, name="la")


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: torch.linalg.qr(x), (torch.randn(4, 3),)),
    (lambda x: torch.linalg.svd(x)[1], (torch.randn(4, 3),)),
    (lambda x: torch.linalg.eigh(x + x.T)[0], (torch.randn(3, 3),)),
], ids=["qr", "svdvals", "eigh"])
def test_iterative_linalg_runs_in_the_fallback_runtime(fn, inputs, tmp_path):
    """QR/SVD/eigendecompositions (iterative in LAPACK) stay torch ops in the fallback runtime: the
    build never aborts and the bundle matches torch."""
    cm = tlc.build(fn, inputs, precision="fp32")
    assert cm.is_bundle
    refs = reference(fn, inputs, double=False)
    path = cm.save(tmp_path / "la.mlpackage")
    out = load(path)({n: x.numpy() for n, x in zip(cm.input_names, inputs)})
    for n, r in zip(cm.output_names, refs):
        assert rel_l2(out[n], r.numpy()) <= 1e-5, n


class _Masked(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return h[h > 0].sum() * h  # boolean-mask indexing: data-dependent


def test_no_fallback_lists_the_blocking_ops_and_writes_nothing(tmp_path):
    with pytest.raises(NotShippableError) as ei:
        tlc.build(_Masked(), (torch.randn(3, 4),), fallback=False)
    e = ei.value
    assert any(op == "aten.index.Tensor" and "data-dependent" in why for op, _, why, _ in e.ops)
    assert all(src.startswith(__file__) for _, _, _, src in e.ops if src)
    assert "h[h > 0]" in str(e) and "not one .mlpackage" in str(e)
    with pytest.raises(tlc.InputError):
        tlc.build(_Masked(), (torch.randn(3, 4),), fallback=False, target="cpu")
    # a model Core ML can hold whole builds the same with fallback=False
    cm = tlc.build(lambda x: torch.relu(x) * 2, (torch.randn(3),), fallback=False)
    assert not cm.is_bundle


def test_no_fallback_forces_cheap_ops_into_core_ml():
    """With fallback=False every op MIL can express is placed in Core ML, whatever the cost model
    would prefer; nothing is left for the fallback runtime."""
    def fn(x):
        return (x.sum(0) > 0).float() + x.cumsum(0)[0]

    cm = tlc.build(fn, (torch.randn(4, 3),), fallback=False, precision="fp32")
    assert set(cm.placement.target.values()) == {"ane"}


_MODEL = textwrap.dedent("""
    import torch

    class M(torch.nn.Module):
        def forward(self, x):
            return x[x > 0].sum() + x  # data-dependent

    model = M()
    example_inputs = (torch.randn(5),)
""")


def test_cli_no_fallback_fails_cleanly_and_build_says_what_ships(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(_MODEL)
    out = tmp_path / "out.mlpackage"
    from pkgtools import run_tlc

    r = run_tlc("build", f, "-o", out, "--no-fallback")
    assert r.returncode == 2, r.stderr
    assert "not one .mlpackage" in r.stderr and "aten.index.Tensor" in r.stderr and "Traceback" not in r.stderr
    assert f"{f}:" in r.stderr  # the user's source line
    assert not out.exists() and not out.with_suffix(".tlc").exists()
    r = run_tlc("build", f, "-o", out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("  ships   NOT one .mlpackage") for line in lines[:3]), r.stdout  # in the first lines
    assert out.with_suffix(".tlc").is_dir()
    f2 = tmp_path / "ok.py"
    f2.write_text("import torch\nmodel = torch.nn.Linear(3, 2)\nexample_inputs = (torch.randn(1, 3),)\n")
    r = run_tlc("build", f2, "-o", tmp_path / "ok.mlpackage", "--no-fallback")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith("  ships   one .mlpackage"), r.stdout
