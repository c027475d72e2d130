"""RMS norm end to end: a small random-weight Llama builds with its norms fused into ``rms_norm``,
emits a package (layer_norm over concat([x, -x])) that tlc's MIL interpreter runs within rel-L2
1e-2 of torch eager in fp32 and mixed precision, and activations of |x| ~ 1e3 — where the
decomposed form's x^2 overflows fp16 — stay finite."""
import numpy as np
import pytest
import torch
import transformers as T

import tlc
from tlc.runtime import MILInterpreter
from tlc.check.metrics import rel_l2

T.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=1000, max_position_embeddings=64, use_cache=False)
    model = T.LlamaModel(cfg).eval()
    for m in model.modules():  # random norm weights, so gamma matters
        if type(m).__name__ == "LlamaRMSNorm":
            torch.nn.init.normal_(m.weight, 1.0, 0.5)
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state.double().numpy()
    return model, ids, ref


def mil_op_types(path):
    return MILInterpreter(path).op_histogram()


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("mixed", 1e-2)])
def test_llama_rms_norm_package_matches_torch(llama, precision, tol, tmp_path):
    model, ids, ref = llama
    cm = tlc.build(model, ((), {"input_ids": ids}), precision=precision)
    hist = cm.graph.op_histogram()
    assert hist.get("rms_norm") == 5 and "rsqrt" not in hist and "pow" not in hist  # 2 layers x 2 + final norm
    path = cm.save(tmp_path / f"llama_{precision}.mlpackage")
    mil = mil_op_types(path)
    assert mil["layer_norm"] == 5 and "rsqrt" not in mil and "pow" not in mil
    out = MILInterpreter(path).run({"input_ids": ids.numpy()})["last_hidden_state"]
    assert np.isfinite(out).all()
    assert rel_l2(out, ref) <= tol, f"{precision}: rel-L2 {rel_l2(out, ref):.2e}"


class Loud(torch.nn.Module):
    """A projection whose outputs reach |x| ~ 1e3, then an RMS norm: x^2 ~ 1e6 > 65504."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(32, 32)
        self.norm = torch.nn.RMSNorm(32, eps=1e-6)
        torch.nn.init.normal_(self.norm.weight, 1.0, 0.5)

    def forward(self, x):
        return self.norm(self.proj(x) * 500.0)


def test_large_activations_stay_finite_in_fp16(tmp_path):
    torch.manual_seed(0)
    model, x = Loud().eval(), torch.randn(4, 32)
    with torch.no_grad():
        h = model.proj(x) * 500.0
        ref = model(x).double().numpy()
    assert h.abs().max() > 256  # its square overflows fp16

    def run(cm, name):
        return MILInterpreter(cm.save(tmp_path / f"{name}.mlpackage")).run({"x": x.numpy()})["output"]

    # decomposed (fusion skipped): x^2 overflows, rsqrt(inf) = 0, the output collapses
    raw = tlc.build(model, (x,), precision="fp16", skip_passes=["fuse::norm_attention"])
    assert "pow" in raw.graph.op_histogram()
    bad = run(raw, "raw")
    assert not np.isfinite(bad).all() or rel_l2(bad, ref) > 0.5
    # range analysis would have to keep the decomposed form in fp32 ...
    assert tlc.build(model, (x,), skip_passes=["fuse::norm_attention"]).islands
    # ... while the fused rms_norm computes in fp16 throughout and stays accurate
    for precision in ("fp16", "mixed"):
        cm = tlc.build(model, (x,), precision=precision)
        assert "rms_norm" in cm.graph.op_histogram() and cm.islands == {}
        out = run(cm, precision)
        assert np.isfinite(out).all() and rel_l2(out, ref) <= 1e-2, (precision, rel_l2(out, ref))


def test_rms_norm_over_two_axes_package(tmp_path):
    """Normalized over the last two axes: emission concatenates along the last one and
    layer_norm spans both (gamma doubled along its last axis)."""
    torch.manual_seed(0)
    w = torch.randn(3, 8)

    def f(x):
        return w * (x * torch.rsqrt(x.pow(2).mean((-2, -1), keepdim=True) + 1e-6))

    x = torch.randn(2, 3, 8) * 5
    ref = f(x.double()).numpy()
    for precision, tol in (("fp32", 1e-6), ("mixed", 1e-2)):
        cm = tlc.build(f, (x,), precision=precision)
        assert cm.graph.op_histogram() == {"rms_norm": 1}
        out = MILInterpreter(cm.save(tmp_path / f"{precision}.mlpackage")).run({"x": x.numpy()})["output"]
        assert rel_l2(out, ref) <= tol
