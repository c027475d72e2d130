"""Issue 16: ``layout::ane_transformer`` (transformers in the ANE's (B, C, 1, S) layout), the ANE
eligibility / efficiency rules of the op table, and ``tlc lint``.

Small BERT, DistilBERT, GPT-2, ViT, Whisper-encoder and Llama (RoPE, GQA) configs: the pass keeps
the numbers (fp32 within 1e-5 of the unrewritten graph in the NumPy runtime and of torch; the
mixed package within 1e-2 of torch in tlc's MIL interpreter) and leaves no reshape and no
transpose inside a block but the one key transpose per attention that MIL's einsum needs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

import tlc
from tlc.ir import GraphBuilder, TensorType
from tlc.check.lint import LintError, lint
from tlc.ops import ANE_RULES, OPS, Reason, rule_of
from tlc.passes import PASSES
from tlc.runtime import load
from tlc.runtime.numpy_executor import run_graph
from tlc.check.metrics import rel_l2

from archs import make
from pkgtools import run_tlc

REPO = Path(__file__).resolve().parent.parent

LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=128)
VIEWS = {"reshape", "transpose", "expand_dims", "squeeze", "tile"}
#: ops a rewritten block is made of (data stays in the (B, C, 1, S) layout between them)
BLOCK = {"linear", "scaled_dot_product_attention", "matmul", "conv", "einsum", "softmax", "layer_norm", "rms_norm", "split", "concat", "slice_by_index", "add", "mul", "sub",
         "real_div", "gelu", "silu", "relu", "tanh", "sigmoid"}


def _case(name):
    torch.manual_seed(0)
    if name == "llama":
        m = T.LlamaModel(T.LlamaConfig(**LLAMA)).eval()
        ids = torch.randint(2, 256, (1, 11), generator=torch.Generator().manual_seed(1))
        return m, (), {"input_ids": ids, "use_cache": False}
    return make(name)


def _feeds(g, args, kwargs):
    vals = [x for x in list(args) + list(kwargs.values()) if isinstance(x, torch.Tensor)]
    return {v.name: (x.numpy().astype(np.int32) if not x.is_floating_point() else x.numpy()) for v, x in zip(g.inputs, vals)}


def _torch_out(m, args, kwargs):
    with torch.no_grad():
        out = m(*args, **kwargs)
    return out.last_hidden_state.numpy()


def _views_inside_blocks(g):
    """View ops (through chains of views) that run from a block op to block ops only, except key
    transposes (perm (0, 3, 2, 1) read by einsum or by the split that feeds einsums) and reshapes
    that only insert or drop unit axes."""
    prod, users = g.producers(), g.users()

    def source(v):
        p = prod.get(v)
        while p is not None and p.op in VIEWS:
            p = prod.get(p.inputs[0])
        return p

    outputs = set(g.outputs)

    def readers(v):
        out = [None] if v in outputs else []  # a graph output is an edge
        for u in users.get(v, []):
            out += readers(u.out) if u.op in VIEWS else [u]
        return out

    bad = []
    for n in g.nodes:
        if n.op not in VIEWS:
            continue
        p, rs = source(n.inputs[0]), readers(n.out)
        if p is None or p.op not in BLOCK or not rs or any(u is None or u.op not in BLOCK for u in rs):
            continue
        if n.op == "reshape" and [d for d in n.inputs[0].type.shape if d != 1] == [d for d in n.out.type.shape if d != 1]:
            continue  # only inserts/drops unit axes (the conv stem's (B, C, S) -> (B, C, 1, S)): no data moves
        if p.op == "conv" and set(p.inputs[1].type.shape[2:]) != {1}:
            continue  # a patch-embedding / stem conv (not a 1x1 projection): the edge of the first block
        if n.op == "transpose" and tuple(n.attrs["perm"]) == (0, 3, 2, 1) and all(
                u.op == "einsum" or (u.op == "split" and u.attrs["axis"] == 3) for u in users.get(n.out, [])):
            continue
        bad.append(f"{n.name} ({n.op})")
    return bad


@pytest.mark.parametrize("name", ["bert", "distilbert", "gpt2", "vit", "whisper_encoder", "llama"])
def test_layout_keeps_numbers_and_leaves_no_views_in_blocks(name, tmp_path):
    m, args, kwargs = _case(name)
    before = tlc.build(m, (args, kwargs), precision="fp32", skip_passes=["layout::ane_transformer"])
    after = tlc.build(m, (args, kwargs), precision="fp32")
    g0, g1 = before.graph, after.graph
    h0, h1 = g0.op_histogram(), g1.op_histogram()
    assert h0.get("scaled_dot_product_attention") and "scaled_dot_product_attention" not in h1
    assert h1.get("einsum") and h1.get("conv", 0) >= h0["linear"] - 2  # BERT/ViT poolers stay linear on (B, C)
    assert not any(n.op == "linear" and n.inputs[0].type.rank == 3 for n in g1.nodes)
    assert _views_inside_blocks(g0), "the check must see the traced head split"
    assert _views_inside_blocks(g1) == []
    feeds = _feeds(g0, args, kwargs)
    o0, o1 = run_graph(g0, feeds), run_graph(g1, feeds)
    for k in o0:
        assert np.abs(np.asarray(o1[k]) - np.asarray(o0[k])).max() <= 1e-5 * max(1.0, np.abs(o0[k]).max()), k
    ref = _torch_out(m, args, kwargs)
    assert np.abs(np.asarray(o1[g1.output_names[0]]) - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())

    mixed = tlc.build(m, (args, kwargs))
    pkg = mixed.save(tmp_path / f"{name}.mlpackage")
    got = load(pkg, backend="interpreter")(feeds)[mixed.output_names[0]]
    assert rel_l2(got, ref) <= 1e-2
    rules = {f.rule for f in lint(pkg).findings}
    assert not rules & {"linear_bsc", "fused_sdpa", "head_batched_matmul", "rank5"} - (
        {"linear_bsc"} if name in ("bert", "vit") else set())  # their poolers: a linear on (B, C)


def test_must_not_fire_without_attention():
    """A non-attention matmul pattern (scores of a sequence with itself, no SDPA) and an MLP on
    (B, S, C): the pass returns the graph unchanged."""

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 16)

        def forward(self, x):
            h = self.fc(x)
            return torch.softmax(h @ h.transpose(-1, -2), dim=-1) @ h

    x = torch.randn(2, 8, 16)
    cm = tlc.build(M().eval(), (x,), precision="fp32", skip_passes=["layout::ane_transformer"])
    assert PASSES["layout::ane_transformer"](cm.graph) is cm.graph
    assert tlc.build(M().eval(), (x,), precision="fp32").graph.op_histogram() == cm.graph.op_histogram()


def test_gpu_target_keeps_the_traced_layout():
    m, args, kwargs = make("bert")
    cm = tlc.build(m, (args, kwargs), target="cpu")
    assert "scaled_dot_product_attention" in cm.graph.op_histogram()


def test_mask_is_finite_and_per_head_attention_matches_fully_masked_free_rows():
    """A float mask with -inf (torch's convention) becomes the finite MASK_FILL; rows that keep
    at least one key match torch exactly."""
    from tlc.ops.linalg import MASK_FILL

    b = GraphBuilder()
    q = b.add_input("q", TensorType("fp32", (1, 2, 5, 8)))
    k = b.add_input("k", TensorType("fp32", (1, 2, 5, 8)))
    v = b.add_input("v", TensorType("fp32", (1, 2, 5, 8)))
    mask = np.triu(np.full((5, 5), -np.inf, np.float32), 1)[None, None]
    a = b.add("scaled_dot_product_attention", [q, k, v, b.const(mask, "mask")], {}).out
    g = b.build([a], ["y"])
    g2 = PASSES["layout::ane_transformer"](g)
    consts = [np.asarray(n.attrs["val"]) for n in g2.nodes if n.op == "const"]
    assert all(np.isfinite(c).all() for c in consts) and any((c == MASK_FILL).any() for c in consts)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 5, 8)).astype(np.float32) for n in "qkv"}
    want = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(feeds[n]) for n in "qkv"),
                                                             attn_mask=torch.from_numpy(mask)).numpy()
    assert np.abs(run_graph(g2, feeds)["y"] - want).max() <= 1e-6


def test_rules_separate_eligibility_from_efficiency():
    lin = OPS["linear"]
    x16, w16 = TensorType("fp16", (1, 128, 768)), TensorType("fp16", (768, 768))
    y16 = TensorType("fp16", (1, 128, 768))
    assert lin.ane([x16, w16], [y16], {}) is None
    eff = lin.ane_efficiency([x16, w16], [y16], {})
    assert [rule_of(r).id for r in eff] == ["linear_bsc"] and "L353" in eff[0]
    x32 = TensorType("fp32", (1, 128, 768))
    why = lin.ane([x32, TensorType("fp32", (768, 768))], [x32], {})
    assert rule_of(why).kind == "eligibility" and "L7-9" in why
    conv = OPS["conv"]
    xc, wc = TensorType("fp16", (1, 768, 1, 197)), TensorType("fp16", (768, 768, 1, 1))
    eff = conv.ane_efficiency([xc, wc], [xc], {"pad": (0, 0, 0, 0)})
    assert [rule_of(r).id for r in eff] == ["last_axis_alignment"] and "pad it to 224" in eff[0]
    assert conv.ane_efficiency([TensorType("fp16", (1, 768, 1, 128)), wc], [TensorType("fp16", (1, 768, 1, 128))],
                               {"pad": (0, 0, 0, 0)}) == []
    q = TensorType("fp16", (1, 12, 128, 64))
    assert [rule_of(r).id for r in OPS["scaled_dot_product_attention"].ane_efficiency([q, q, q], [q], {})] == ["fused_sdpa"]
    t5 = TensorType("fp16", (1, 2, 2, 128, 64))
    assert "rank5" in [rule_of(r).id for r in OPS["tile"].ane_efficiency([t5], [t5], {"reps": (1, 1, 1, 1, 1)})]
    assert all(r.kind in ("eligibility", "efficiency") and r.source for r in ANE_RULES.values())
    with pytest.raises(Exception, match="unknown ANE rule"):
        Reason("x", "no_such_rule")


@pytest.fixture(scope="module")
def gpt2_packages(tmp_path_factory):
    d = tmp_path_factory.mktemp("lint")
    m, args, kwargs = make("gpt2")
    after = tlc.build(m, (args, kwargs)).save(d / "after.mlpackage")
    before = tlc.build(m, (args, kwargs), skip_passes=["layout::ane_transformer"]).save(d / "before.mlpackage")
    return before, after


def test_lint_finds_what_the_pass_removes(gpt2_packages, tmp_path):
    before, after = gpt2_packages
    rb, ra = lint(before), lint(after)
    sb = {r["rule"]: r for r in rb.summary()}
    assert sb["linear_bsc"]["ops"] == 8 and sb["linear_bsc"]["flops_share"] > 0.5
    assert sb["head_batched_matmul"]["ops"] == 4  # iOS17 lowers SDPA to matmuls over (B, h, S, d)
    assert not {"linear_bsc", "head_batched_matmul"} & {r["rule"] for r in ra.summary()}
    f = next(f for f in rb.findings if f.rule == "linear_bsc")
    assert f.kind == "efficiency" and "transformers/" in f.source and f.op == "linear"  # GPT-2's Conv1D
    assert ra.unchecked == {} and rb.unchecked == {}
    res = run_tlc("lint", before, "--fail-on", "efficiency", "--json", tmp_path / "l.json")
    assert res.returncode == 1 and "linear_bsc" in res.stdout
    assert json.loads((tmp_path / "l.json").read_text())["summary"]
    res = run_tlc("lint", after, "--fail-on", "eligibility")
    assert res.returncode == (1 if lint(after).count("eligibility") else 0)
    assert run_tlc("lint", after).returncode == 0


def test_lint_reads_coremltools_conversions(tmp_path):
    import coremltools as ct

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 64)

        def forward(self, x):
            return torch.softmax(self.fc(x), dim=-1)

    x = torch.randn(1, 12, 64)
    traced = torch.jit.trace(M().eval(), x)
    mlm = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=x.shape)], convert_to="mlprogram",
                     minimum_deployment_target=ct.target.iOS17)
    p = tmp_path / "ct.mlpackage"
    mlm.save(str(p))
    rep = lint(p)
    assert "linear_bsc" in {f.rule for f in rep.findings}
    assert all(f.source == "" for f in rep.findings)  # no tlc source table in a coremltools package


def test_lint_bad_packages_give_one_clear_error(gpt2_packages, tmp_path):
    _, after = gpt2_packages
    with pytest.raises(LintError, match="does not exist"):
        lint(tmp_path / "nope.mlpackage")
    bad = shutil.copytree(after, tmp_path / "bad.mlpackage")
    spec = next((bad / "Data").rglob("model.mlmodel"))
    spec.write_bytes(b"not a protobuf" * 10)
    res = run_tlc("lint", bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "cannot be read" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 3

    import coremltools as ct
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    b = NeuralNetworkBuilder([("x", datatypes.Array(3))], [("y", datatypes.Array(3))])
    b.add_activation("relu", "RELU", "x", "y")
    nn = tmp_path / "nn.mlpackage"
    ct.models.MLModel(b.spec, skip_model_load=True).save(str(nn))
    res = run_tlc("lint", nn)
    assert res.returncode == 2 and "mlprogram" in res.stderr and "Traceback" not in res.stderr


def test_report_residency_counts_only_eligible_ops():
    m, args, kwargs = make("bert")
    rep = tlc.build(m, (args, kwargs)).report()
    eligible = sum(o.flops for o in rep.ops if o.on_ane)
    assert rep.residency == pytest.approx(eligible / rep.total_flops)
    assert rep.residency <= rep.coreml_share
    eff = {r["rule"]: r for r in rep.efficiency()}
    assert "last_axis_alignment" in eff  # S = 12: the small config's sequence axis is not 64-byte aligned
    assert "efficiency on the ANE" in rep.text() and rep.to_json()["coreml_share"] == rep.coreml_share


def test_build_report_has_the_lint_section(tmp_path):
    res = run_tlc("build", "examples/tensor_function.py", "-o", tmp_path / "t.mlpackage", "--report", cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "static ANE residency" in res.stdout and "efficiency on the ANE" in res.stdout
    assert f"lint {tmp_path / 't.mlpackage'}" in res.stdout
    g = tlc.build(*_example_fn()).graph
    assert "scaled_dot_product_attention" not in g.op_histogram() and "einsum" in g.op_histogram()


def _example_fn():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tlc_example_tf", REPO / "examples" / "tensor_function.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.attention_block, (mod.Q, mod.K, mod.V)


@pytest.mark.parametrize("name", ["bert", "vit", "llama"])
def test_sequence_padding_to_64_bytes_keeps_numbers(name):
    """With ``misaligned_cost`` high enough the small configs' sequences (12, 17, 11) are padded to 32
    positions (64 bytes of fp16): every (B, C, 1, S) tensor is aligned, padded keys are masked,
    the padding is sliced off at the edges, and the outputs are those of the unpadded graph."""
    m, args, kwargs = _case(name)
    g0 = tlc.build(m, (args, kwargs), precision="fp32", skip_passes=["layout::ane_transformer"]).graph
    g1 = PASSES["layout::ane_transformer"](g0, misaligned_cost=16.0)
    assert any(n.op == "pad" for n in g1.nodes)
    seq = {n.out.type.shape[-1] for n in g1.nodes if n.op in ("layer_norm", "rms_norm", "einsum")
           or n.op == "conv" and n.inputs[1].type.shape[2:] == (1, 1)}  # not ViT's patch-embedding conv
    assert seq == {32}
    assert PASSES["layout::ane_transformer"](g0, misaligned_cost=1.0).op_histogram().get("pad") is None  # never pads
    feeds = _feeds(g0, args, kwargs)
    o0, o1 = run_graph(g0, feeds), run_graph(g1, feeds)
    for k in o0:
        assert np.abs(np.asarray(o1[k]) - np.asarray(o0[k])).max() <= 1e-5 * max(1.0, np.abs(o0[k]).max()), k
