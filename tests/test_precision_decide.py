"""The closed loop decides (issue 30): it starts from all-fp16, adds islands where the whole program
fails, prunes those it does not need, handles underflowing outputs, never aborts by default, and
keeps PrecisionError behind strict_precision=True. Every check runs the saved package
(tlc.runtime.load) against torch fp32."""
import json

import numpy as np
import pytest
import torch

import tlc
from tlc.check.calibrate import PrecisionError, PrecisionWarning
from tlc.check.metrics import rel_l2
from tlc.passes.precision import analyze, choose_islands
from tlc.driver.verify import verify
from tlc.runtime import load


def run_saved(cm, feeds: dict, path):
    return load(cm.save(path))(feeds)


class Harmless(torch.nn.Module):
    """x + 1e-3 ((x + 100) - 100): the sub loses ~3% of x in fp16 (ulp 1/16 at 100), far over the
    graph's median error, so the local rule proposes it; what it adds to the output is 1e-3 of that."""

    def forward(self, x):
        return x + 1e-3 * ((x + 100.0) - 100.0)


def test_local_rule_proposes_but_all_fp16_passes(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(4, 64)
    cm = tlc.build(Harmless(), (x,))
    chk = cm.precision_check
    sub = next(n.name for n in cm.graph.nodes if n.op == "sub")
    assert sub in chk.proposed and "median" in chk.proposed[sub]
    assert sub in choose_islands(cm.graph, *analyze(cm.graph, cm.calibration))  # today's rule alone: an island
    assert cm.islands == {} and len(chk.rounds) == 1 and chk.rounds[0].phase == "start"
    assert chk.rounds[0].tol == chk.prune_tol < chk.tol  # leaving the proposal out needed the margin
    out = run_saved(cm, {"x": x.numpy()}, tmp_path / "h.mlpackage")["output"]
    assert rel_l2(out, Harmless()(x.double()).numpy()) <= 2.5e-3
    assert cm.report().residency == 1.0


class TwoBranches(torch.nn.Module):
    """Branch a needs fp32 ((relu(x) + 1000) - 1000 on x ~ 1e-3); branch b's proposal (Harmless,
    over a wider tensor) does not. The loop adds both proposals, then prunes b's."""

    def forward(self, x, y):
        return (torch.relu(x) + 1000.0 - 1000.0) * 3.0, Harmless()(y)


def test_pruning_removes_the_proposal_the_program_does_not_need(tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(2, 16) * 1e-2, torch.rand(4, 256)
    cm = tlc.build(TwoBranches(), (x, y))
    chk = cm.precision_check
    subs = [n.name for n in cm.graph.nodes if n.op == "sub"]
    assert set(subs) <= set(chk.proposed)
    assert [r.phase for r in chk.rounds][:3] == ["start", "add", "add"] and chk.rounds[-1].phase == "prune"
    assert chk.passed and list(chk.pruned) == [subs[1]] and subs[1] not in cm.islands and subs[0] in cm.islands
    assert chk.rounds[chk.shipped].removed == (subs[1],)
    got = run_saved(cm, {"x": x.numpy(), "y": y.numpy()}, tmp_path / "t.mlpackage")
    a, b = (got[k] for k in cm.output_names)
    ra, rb = (t.double().numpy() for t in TwoBranches()(x.double(), y.double()))
    assert rel_l2(a, ra) <= 1e-2 and rel_l2(b, rb) <= 1e-2
    text = cm.report().text()
    assert f"pruned island {subs[1]}" in text and "% of FLOPs off the ANE" in text


class Faint(torch.nn.Module):
    """A DPT-like head whose output never exceeds ~1e-8 (below fp16's smallest subnormal, 6e-8)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 1, 1)
        with torch.no_grad():
            self.b.weight.mul_(1e-7)
            self.b.bias.mul_(1e-7)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))))


def test_underflowing_output_builds_by_default(tmp_path):
    torch.manual_seed(0)
    m, x = Faint().eval(), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = m(x).double().numpy()
    assert 0 < np.abs(ref).max() < 6e-8
    cm = tlc.build(m, (x,))
    chk = cm.precision_check
    assert chk.passed and not chk.fallback
    (region,) = [r for r in chk.rescaled if r["exponent"]]
    assert region["exponent"] < 0  # scaled up into fp16's range ...
    assert list(cm.islands) == [region["undone_at"][0]]  # ... and undone by one fp32 multiply at the output
    out = run_saved(cm, {"x": x.numpy()}, tmp_path / "f.mlpackage")["output"]
    assert rel_l2(out, ref) <= 1e-2


class ManyCancel(torch.nn.Module):
    """Eight cancellations that each need their own add in fp32: bisection finds one per round,
    more than the rounds allow."""

    def forward(self, x):
        return torch.stack([torch.relu(x[i]) + 1000.0 * (i + 1) - 1000.0 * (i + 1) for i in range(8)]) * 3.0


@pytest.fixture(scope="module")
def many():
    torch.manual_seed(0)
    return ManyCancel(), torch.rand(8, 32) * 1e-2


def test_no_passing_assignment_ships_the_fallback_loudly(many, tmp_path):
    m, x = many
    with pytest.warns(PrecisionWarning, match="shipped the smallest passing program"):
        cm = tlc.build(m, (x,))
        chk = cm.precision_check
    assert chk.passed and "no fp32 island assignment passed" in chk.fallback
    assert chk.rounds[chk.shipped].phase == "fallback" and "FALLBACK" in chk.text()
    path = cm.save(tmp_path / "m.mlpackage")
    assert rel_l2(load(path)({"x": x.numpy()})["output"], m(x).numpy()) <= 1e-2  # torch fp32: what it reproduces
    assert "FALLBACK" in cm.report().text()
    rep = verify(m, (x,), compiled=cm, package=path)
    assert rep.passed and rep.precision_fallback and chk.fallback.startswith(rep.precision_fallback)
    assert "FALLBACK" in rep.text()


def test_strict_precision_keeps_the_error(many):
    m, x = many
    with pytest.raises(PrecisionError, match=r"no fp32 island assignment passed the closed loop after \d+ round"):
        tlc.build(m, (x,), strict_precision=True).emit_graph


def test_cli_strict_precision_and_fallback_output(many, tmp_path, capsys):
    from tlc.cli import main

    src = tmp_path / "many.py"
    src.write_text("import torch, sys\n"
                   f"sys.path.insert(0, {str(__import__('os').path.dirname(__file__))!r})\n"
                   "from test_precision_decide import ManyCancel\n"
                   "torch.manual_seed(0)\nmodel = ManyCancel()\nexample_inputs = (torch.rand(8, 32) * 1e-2,)\n")
    out = tmp_path / "s.mlpackage"
    assert main(["build", str(src), "-o", str(out), "--strict-precision", "--no-cache"]) != 0
    assert "no fp32 island assignment passed the closed loop" in capsys.readouterr().err
    assert not out.exists()
    with pytest.warns(PrecisionWarning):
        assert main(["build", str(src), "-o", str(out), "--no-cache", "--report-json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "FALLBACK" in text and out.exists()
    assert json.loads((tmp_path / "r.json").read_text())["precision_check"]["fallback"]
