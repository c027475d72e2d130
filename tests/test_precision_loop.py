"""Verified mixed precision (issue 11): fp16 constants judged as the program holds them, the
closed loop that runs the emitted program on every calibration sample, user calibration data,
and the stable forms of the known fp16 cliffs."""
import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T

import tlc
from tlc.check.calibrate import PrecisionError, verified_mixed
from tlc.ir import GraphBuilder, TensorType
from tlc.passes.fp16_program import FP16_TINY, fp16_attr_fix
from tlc.runtime import MILInterpreter
from tlc.check.metrics import rel_l2

T.logging.set_verbosity_error()


def _vit_family(name):
    torch.manual_seed(0)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    if name == "deit":
        return T.DeiTModel(T.DeiTConfig(**small, image_size=32, patch_size=8)).eval(), torch.randn(1, 3, 32, 32)
    if name == "beit":
        return T.BeitModel(T.BeitConfig(**small, image_size=32, patch_size=8)).eval(), torch.randn(1, 3, 32, 32)
    if name == "ast":
        cfg = T.ASTConfig(**small, num_mel_bins=32, max_length=48, patch_size=16, frequency_stride=16, time_stride=16)
        return T.ASTModel(cfg).eval(), torch.randn(1, 48, 32)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["deit", "beit", "ast"])
def test_vit_family_default_mixed_package_is_finite_and_close(name, tmp_path):
    model, x = _vit_family(name)
    assert model.config.layer_norm_eps == 1e-12  # the HF default that is 0 in fp16
    with torch.no_grad():
        ref = model(x).last_hidden_state.double().numpy()
    cm = tlc.build(model, (x,))
    out = MILInterpreter(cm.save(tmp_path / "m.mlpackage")).run({cm.input_names[0]: x.numpy()})["last_hidden_state"]
    assert np.isfinite(out).all()
    assert rel_l2(out, ref) <= 1e-2
    assert cm.precision_check.passed and cm.precision_check.samples == 1
    fixed = cm.emit_graph.meta["tlc.fp16_constants"]
    assert fixed and all("epsilon 1e-12 -> 5.96e-08" in why for why in fixed.values())
    if name == "deit":  # its only fp16 problem is the epsilon: fixed, no island needed
        assert cm.islands == {}
        assert len(cm.precision_check.rounds) == 1


def test_deit_without_the_epsilon_fix_is_what_the_loop_catches(tmp_path):
    """The same DeiT with the constant left at 0 in fp16 is all-NaN in the interpreter: the loop
    must see that (the program, not the IR's fp32 semantics), so the fix above is what saves it."""
    model, x = _vit_family("deit")
    cm = tlc.build(model, (x,), precision="fp16")
    g = cm.emit_graph
    assert all(n.attrs["epsilon"] == FP16_TINY for n in g.nodes if n.op == "layer_norm")
    from tlc.ir import Node, replace
    import types

    raw = replace(g, nodes=tuple(Node(n.op, n.inputs, n.outputs, types.MappingProxyType({**n.attrs, "epsilon": 1e-12}),
                                      n.name, n.loc) if n.op == "layer_norm" else n for n in g.nodes))
    from tlc.backends.coreml.emit import convert

    mlm, _ = convert(raw, "fp16")
    out = MILInterpreter(mlm.package_path).run({"pixel_values": x.numpy()})["last_hidden_state"]
    assert not np.isfinite(out).all()


def test_epsilon_bound_and_blocker_rules():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 8)))
    ln = b.add("layer_norm", [x], {"axes": (1,), "epsilon": 1e-12})
    ok = b.add("layer_norm", [x], {"axes": (1,), "epsilon": 1e-5})  # subnormal in fp16 but not 0: kept
    cl = b.add("clip", [x], {"alpha": -1e9, "beta": 1e9})
    lr = b.add("leaky_relu", [x], {"alpha": 1e-9})
    attrs, note, block = fp16_attr_fix(ln)
    assert attrs["epsilon"] == 2.0 ** -24 and "1e-12" in note and block is None
    assert fp16_attr_fix(ok) == (None, None, None)
    attrs, note, block = fp16_attr_fix(cl)
    assert (attrs["alpha"], attrs["beta"]) == (-65504.0, 65504.0) and block is None
    attrs, note, block = fp16_attr_fix(lr)
    assert attrs is None and "is 0 in fp16" in block


class Cancel(torch.nn.Module):
    """(relu(x) + 1000) - 1000 on x ~ 1e-3: the add rounds x away in fp16 (ulp 0.5 at 1000), so
    the sub's output is 0. The loop starts all-fp16, finds the sub diverging, moves it to fp32,
    finds it still wrong in fp32 and moves the add that feeds it."""

    def forward(self, x):
        return (torch.relu(x) + 1000.0 - 1000.0) * 3.0


def test_closed_loop_moves_what_the_error_needs_to_fp32(tmp_path):
    x = torch.rand(2, 64) * 1e-2
    cm = tlc.build(Cancel(), (x,))
    chk = cm.precision_check
    assert [(r.phase, r.passed) for r in chk.rounds] == [("start", False), ("add", False), ("add", True)]
    assert chk.rounds[0].outputs[0].rel_l2 > 0.5  # round 0: the fp16 add made the result 0
    assert list(chk.rounds[0].added) == ["sub"] and "sub" in chk.proposed  # the local rule's proposal, confirmed
    assert list(chk.rounds[1].added) == ["add"] and "feeds fp32 island sub" in cm.islands["add"]
    assert chk.pruned == {} and chk.shipped == 2  # pruning the one fp32 stretch is the start program: known to fail
    out = MILInterpreter(cm.save(tmp_path / "c.mlpackage")).run({"x": x.numpy()})["output"]
    assert rel_l2(out, Cancel()(x.double()).numpy()) <= 1e-2
    rep = cm.report().to_json()["precision_check"]
    assert rep["passed"] and len(rep["rounds"]) == 3 and rep["rounds"][1]["added_islands"] == {"add": cm.islands["add"]}


def test_closed_loop_without_rounds_left_raises_naming_the_op():
    x = torch.rand(2, 64) * 1e-2
    cm = tlc.build(Cancel(), (x,))
    from tlc.backends.coreml.emit import convert

    def emit(eg):
        mlm, _ = convert(eg, "mixed")
        return MILInterpreter(mlm.package_path), mlm

    with pytest.raises(PrecisionError, match=r"first diverging op sub \(sub\) at .*test_precision_loop.py:\d+"):
        verified_mixed(cm.graph, cm.calibration, "fp32", emit, max_rounds=0, strict=True)


class Spiky(torch.nn.Module):
    """Fine on small inputs; on inputs above ~16, x^4 overflows fp16 (a product of activations, which
    rescaling cannot move: it stays an fp32 island)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.lin(x * x * x * x) * 1e-3)


def test_calibration_samples_reach_ranges_the_example_does_not(tmp_path):
    torch.manual_seed(0)
    m = Spiky().eval()
    small = torch.rand(1, 8)
    big = torch.rand(1, 8) * 20
    plain = tlc.build(m, (small,))
    assert plain.islands == {} and plain.precision_check.samples == 1
    cm = tlc.build(m, (small,), calibration=[(big,)])
    assert cm.precision_check.samples == 2 and cm.precision_check.passed
    assert cm.islands  # x^4 reaches 1.6e5 on the second sample
    out = MILInterpreter(cm.save(tmp_path / "s.mlpackage")).run({"x": big.numpy()})["output"]
    with torch.no_grad():
        assert rel_l2(out, m.double()(big.double()).numpy()) <= 1e-2
    with pytest.raises(tlc.errors.InputError, match="calibration sample 1: input x has shape"):
        tlc.build(m, (small,), calibration=[(torch.rand(2, 8),)])


def test_cli_calibration_npz(tmp_path, capsys):
    from tlc.cli import main

    src = tmp_path / "spiky.py"
    src.write_text(
        "import torch\n"
        f"import sys; sys.path.insert(0, {str(__import__('os').path.dirname(__file__))!r})\n"
        "from test_precision_loop import Spiky\n"
        "torch.manual_seed(0)\nmodel = Spiky().eval()\nexample_inputs = (torch.rand(1, 8),)\n")
    np.savez(tmp_path / "cal.npz", x=(np.random.default_rng(0).random((3, 1, 8)) * 20).astype(np.float32))
    assert main(["build", str(src), "-o", str(tmp_path / "s.mlpackage"), "--calibration", str(tmp_path / "cal.npz"),
                 "--report-json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "calib   4 sample(s)" in out and "PASS" in out
    rep = json.loads((tmp_path / "r.json").read_text())["precision_check"]
    assert rep["samples"] == 4 and rep["passed"] and rep["islands"]
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 1, 8), np.float32), y=np.zeros((3, 1), np.float32))
    assert main(["build", str(src), "-o", str(tmp_path / "b.mlpackage"), "--calibration", str(tmp_path / "bad.npz")]) != 0
    assert "same number N >= 1 of samples" in capsys.readouterr().err
    assert not (tmp_path / "b.mlpackage").exists()


# ------------------------------------------------------------------------------- stable forms

STABLE = {
    # name: (function, input that breaks the naive form in fp16, the pass that fixes it)
    "logsumexp": (lambda x: torch.log(torch.exp(x).sum(-1)), lambda: torch.rand(2, 8) * 4 + 12, "stable::logsumexp"),
    "log_softmax": (lambda x: torch.log(torch.softmax(x, -1)), lambda: torch.randn(2, 8) * 10, "stable::log_softmax"),
    "logcumsumexp": (lambda x: torch.log(torch.cumsum(torch.exp(x), -1)), lambda: torch.rand(2, 8) * 4 + 12,
                     "stable::logcumsumexp"),
    "variance": (lambda x: (x * x).mean(-1) - x.mean(-1) ** 2, lambda: torch.randn(2, 64) * 0.5 + 100, "stable::variance"),
}


@pytest.mark.parametrize("name", sorted(STABLE))
def test_stable_form_in_fp16_matches_torch_fp32(name, tmp_path):
    fn, make, pass_name = STABLE[name]
    torch.manual_seed(0)
    x = make()
    ref = fn(x.double()).numpy()

    def run(**kw):
        cm = tlc.build(fn, (x,), precision="fp16", **kw)
        return cm, MILInterpreter(cm.save(tmp_path / f"{len(list(tmp_path.iterdir()))}.mlpackage")).run(
            {cm.input_names[0]: x.numpy()})["output"]

    cm, out = run()
    assert rel_l2(out, ref) <= 1e-2
    _, naive = run(skip_passes=[pass_name])  # the form the model wrote: inf, -inf or cancellation
    assert not np.isfinite(naive).all() or rel_l2(naive, ref) > 0.1


@pytest.mark.parametrize("x0", [20.0, 30.0])
def test_softplus_and_mish_for_large_x_in_fp16(x0, tmp_path):
    x = torch.full((2, 4), x0)
    for k, fn in enumerate((lambda x: torch.log(1 + torch.exp(x)), F.softplus, F.mish)):
        cm = tlc.build(fn, (x,), precision="fp16")
        assert "exp" not in [n.op for n in cm.graph.nodes]  # log(1 + exp(x)) became softplus
        out = MILInterpreter(cm.save(tmp_path / f"{k}.mlpackage")).run({cm.input_names[0]: x.numpy()})["output"]
        assert rel_l2(out, fn(x.double()).numpy()) <= 1e-2


def test_finfo_min_mask_in_fp16(tmp_path):
    def attend(q, k, mask):
        s = q @ k.transpose(-1, -2) + (1.0 - mask) * torch.finfo(torch.float32).min
        return torch.softmax(s, -1)

    torch.manual_seed(0)
    q, k = torch.randn(1, 6, 8), torch.randn(1, 6, 8)
    mask = torch.ones(1, 1, 6)
    mask[..., 4:] = 0
    cm = tlc.build(attend, (q, k, mask), precision="fp16")
    out = MILInterpreter(cm.save(tmp_path / "a.mlpackage")).run(
        {"q": q.numpy(), "k": k.numpy(), "mask": mask.numpy()})["output"]
    assert np.isfinite(out).all() and rel_l2(out, attend(q.double(), k.double(), mask.double()).numpy()) <= 1e-2


def test_round_fp16_is_a_float16_round_trip_bit_for_bit():
    from tlc.ops import round_fp16

    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(20000).astype(np.float32) * s for s in (1e-7, 1e-5, 1e-3, 1, 100, 1e4, 7e4)]
    edge = np.array([0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, -65520, 2.0 ** -24, 2.0 ** -25,
                     3 * 2.0 ** -26, 2.0 ** -14, 2.0 ** -14 * (1 - 2.0 ** -11), 1e38, -1e-40, 1 + 2.0 ** -11], np.float32)
    bits = rng.integers(0, 2 ** 32, 200000, dtype=np.uint64).astype(np.uint32).view(np.float32)  # NaN payloads too
    x = np.concatenate(parts + [edge, bits])
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(round_fp16(x).view(np.uint32), want.view(np.uint32))


def test_to_float16_and_back_match_numpy():
    from tlc.ops import to_float16, to_float32

    x = (np.random.default_rng(1).standard_normal((300, 300)) * 3e4).astype(np.float32)  # some past 65504
    x[0, :3] = [np.inf, np.nan, 65519.0]
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = to_float16(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
    assert np.array_equal(to_float32(want), want.astype(np.float32), equal_nan=True)
