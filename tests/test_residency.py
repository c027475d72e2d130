"""Residency you can trust (issue 30): every ANE rule carries its evidence level, and the placement
report gives residency under documented rules and under all rules, naming the rules between them."""
import json

import pytest
import torch

import tlc
from tlc.dtypes import TensorType
from tlc.ops import ANE_RULES, EVIDENCE, OPS


class Dilated(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.atrous = torch.nn.Conv2d(16, 16, 3, padding=4, dilation=4)

    def forward(self, x):
        return torch.relu(self.atrous(torch.relu(self.stem(x))))


def test_every_rule_has_an_evidence_level_and_source():
    assert set(EVIDENCE) == {"documented", "observed", "unverified"}
    for r in ANE_RULES.values():
        assert r.evidence in EVIDENCE and r.source, r
    # the rules ../shared/ane-rules.md marks as third-party claims are not presented as facts
    for rule in ("dilated_conv", "pool_window", "upsample_scale", "gather"):
        assert ANE_RULES[rule].evidence == "unverified" and "hollance" in ANE_RULES[rule].source
    assert ANE_RULES["dtype"].evidence == "documented" and "neural_engine_rules.md" in ANE_RULES["dtype"].source


def test_ane_reasons_lists_every_rule_an_op_breaks():
    t32 = TensorType("fp32", (1, 8, 8, 8))
    reasons = OPS["conv"].ane_reasons([t32, TensorType("fp32", (8, 8, 3, 3))], [t32], {"dilations": (2, 2)})
    assert [r.rule for r in reasons] == ["dilated_conv", "dtype"]  # ane() gives only the first
    assert OPS["conv"].ane([t32, TensorType("fp32", (8, 8, 3, 3))], [t32], {"dilations": (2, 2)}).rule == "dilated_conv"


@pytest.fixture(scope="module")
def dilated():
    torch.manual_seed(0)
    return tlc.build(Dilated().eval(), (torch.rand(1, 3, 32, 32),))


def test_report_gives_residency_under_documented_and_all_rules(dilated, tmp_path):
    rep = dilated.report()
    assert rep.residency_under("unverified") == pytest.approx(rep.residency)
    doc = rep.residency_under("documented")
    assert doc == pytest.approx(1.0) and rep.residency < 0.5  # the dilated conv holds most FLOPs
    (gap,) = rep.residency_gap()
    assert gap["rule"] == "dilated_conv" and gap["evidence"] == "unverified" and gap["ops"] == 1
    assert gap["flops_share"] == pytest.approx(doc - rep.residency)
    text = rep.text()
    assert "under documented rules only" in text and "dilated_conv (unverified" in text
    rep.write_json(tmp_path / "r.json")
    js = json.loads((tmp_path / "r.json").read_text())
    assert js["residency_by_evidence"]["unverified"] == pytest.approx(js["residency"])
    assert js["residency_gap"][0]["rule"] == "dilated_conv"


def test_fp32_islands_are_documented_losses(tmp_path):
    """An fp32 island breaks the documented dtype rule: it counts against residency under every level."""
    def f(q, k):
        return torch.softmax(q @ k.transpose(-1, -2) * 1e4, -1)

    cm = tlc.build(f, (torch.randn(1, 8, 16), torch.randn(1, 8, 16)))
    rep = cm.report()
    assert cm.islands and rep.residency < 1.0 and rep.residency_under("documented") == pytest.approx(rep.residency)
    isl, regions = rep.precision_costs()
    assert {r["name"] for r in isl} == set(cm.islands) and all(r["flops_share"] > 0 for r in isl)
    assert regions and regions[0]["exponent"] == 0 and "softmax" in regions[0]["why_not"]
