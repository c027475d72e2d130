"""Partitioning, bundles, the hybrid runtime and the placement report (issue 5).

Segment counts are asserted exactly on small hand-made graphs; bundles are written, reloaded and
run against the NumPy reference and torch eager; the CLI works on bundles.
"""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import archs
import tlc
from tlc.errors import EmitError, IRError, OutputExistsError
from tlc.ir import GraphBuilder, TensorType
from tlc.passes.partition import CostModel, assign, check_segments, split
from tlc.runtime import BundleModel, load, run_graph
from tlc.serialize import graph_from_json, graph_to_json, load_graph, save_graph


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def sandwich(mid, n=64):
    """matmul -> mid -> matmul in fp16, as a graph Core ML can run whole."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp16", (1, n, n)))
    w = b.const(np.random.default_rng(0).standard_normal((n, n)).astype(np.float16) * 0.1)
    y = b.add("matmul", [x, w]).out
    y = mid(b, y)
    y = b.add("matmul", [y, w]).out
    return b.build([y], ["out"])


def fp32_island(b, y):
    """A cheap non-ANE island: relu computed in fp32."""
    y = b.add("cast", [y], {"dtype": "fp32"}).out
    y = b.add("relu", [y]).out
    return b.add("cast", [y], {"dtype": "fp16"}).out


def test_cheap_non_ane_island_stays_in_one_segment():
    g = sandwich(fp32_island)
    p = assign(g)
    assert set(p.segment.values()) == {0} and set(p.target.values()) == {"ane"}
    assert "float16" in p.reasons["relu"]  # reported, though it stays inside the mlprogram
    assert "matmul" not in p.reasons


def test_all_ane_graph_is_one_plain_package(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    cm = tlc.build(m, (x,))
    assert not cm.is_bundle and len(cm.segments) == 1
    path = cm.save(tmp_path / "m.mlpackage")
    assert path.suffix == ".mlpackage"
    rep = cm.report()
    assert rep.residency == 1.0 and len(rep.segments) == 1
    assert {o.op for o in rep.not_on_ane()} == {"cast"}  # the fp32 <-> fp16 casts at the model's edges


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_forced_fallback_target(tmp_path, target):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GELU(), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 5)).eval()
    x = torch.randn(1, 3, 16, 16)
    cm = tlc.build(m, (x,), target=target)
    assert cm.precision == "fp32" and cm.is_bundle
    assert [(s.index, s.target) for s in cm.segments] == [(0, target)]
    path = cm.save(tmp_path / "m.mlpackage")  # the suffix becomes .tlc: this is a bundle
    assert path == tmp_path / "m.tlc" and (path / "segments" / "00.json").exists()
    out = load(path)({cm.input_names[0]: x.numpy()})
    assert rel(out[cm.output_names[0]], m(x).detach().numpy()) < 1e-5
    assert all(f"target={target}" in o.reason for o in cm.report().not_on_ane())


def test_split_rejects_a_non_convex_placement():
    """split() rejects a placement whose segments read values produced later (not convex)."""
    g = sandwich(fp32_island)
    names = [n.name for n in g.nodes if n.op != "const"]
    from tlc.passes.partition import Placement

    bad = Placement({n: (1 if i == 0 else 0) for i, n in enumerate(names)}, {n: "ane" for n in names})
    with pytest.raises(IRError, match="reads"):
        split(g, bad)


@pytest.mark.parametrize("name", archs.ARCHS)
def test_spine_architectures_one_segment_full_residency(name):
    m, args, kwargs = archs.make(name)
    cm = tlc.build(m, (args, kwargs))
    rep = cm.report()
    assert len(rep.segments) == 1 and rep.segments[0].target == "ane"
    assert rep.residency >= 0.99
    assert rep.predicted_ane_share >= 0.99, [(o.name, o.reason) for o in rep.not_on_ane() if o.flops]


# ------------------------------------------------------------------------------- serialization


def test_ir_json_round_trip_runs_identically(tmp_path):
    m, args, kwargs = archs.make("bert")
    cm = tlc.build(m, (args, kwargs))
    g = cm.emit_graph
    save_graph(g, tmp_path / "g.json", tmp_path / "g.safetensors")
    g2 = load_graph(tmp_path / "g.json")
    assert [n.op for n in g2.nodes] == [n.op for n in g.nodes]
    assert [dict(n.attrs).keys() for n in g2.nodes] == [dict(n.attrs).keys() for n in g.nodes]
    feeds = {k: v.numpy().astype(np.int32) for k, v in kwargs.items()}
    a, b = run_graph(g, feeds), run_graph(g2, feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_ir_json_special_values_and_damage(tmp_path):
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 3)))
    y = b.add("clip", [x], {"alpha": float("-inf"), "beta": 6.0}).out
    g = b.build([y], ["y"])
    doc, tensors = graph_to_json(g)
    assert doc["nodes"][0]["attrs"]["alpha"] == {"float": "-inf"}
    g2 = graph_from_json(json.loads(json.dumps(doc)), tensors)
    assert g2.nodes[0].attrs["alpha"] == float("-inf")
    doc["nodes"][0]["inputs"] = ["nope"]
    with pytest.raises(IRError, match="'nope'"):
        graph_from_json(doc, tensors, what="seg.json")
    doc["version"] = 99
    with pytest.raises(IRError, match="not a tlc-ir v1"):
        graph_from_json(doc, tensors)


# ------------------------------------------------------------------------------------- bundles


def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()


def test_bundle_write_is_atomic(tmp_path):
    x = torch.randn(1, 3, 16, 16)
    cm = tlc.build(small_cnn(), (x,), target="cpu")
    path = cm.save(tmp_path / "m.tlc")
    before = sorted(p.name for p in path.rglob("*"))
    with pytest.raises(OutputExistsError):
        cm.save(tmp_path / "m.tlc")
    assert sorted(p.name for p in path.rglob("*")) == before
    # a build that fails half-way (a Core ML segment with a rank-6 tensor cannot be emitted)
    # leaves the existing bundle as it was and no temp files
    from tlc.backends.bundle import write_bundle
    from tlc.passes.partition import Segment

    b = GraphBuilder()
    s = b.add_input("s", TensorType("fp16", (2, 3, 4)))
    y = b.add("relu", [b.add("reshape", [s], {"shape": (1, 2, 1, 3, 2, 2)}).out]).out
    bad = b.build([y], ["y"])
    segs = [Segment(0, "cpu", cm.segments[0].graph, 0), Segment(1, "ane", bad, 0)]
    with pytest.raises(EmitError, match="rank"):
        write_bundle(path, cm.emit_graph, segs, precision="fp32", minimum_deployment_target="iOS17", force=True)
    assert sorted(p.name for p in path.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.tlc"]


def test_bundle_damaged(tmp_path):
    x = torch.randn(1, 3, 16, 16)
    path = tlc.build(small_cnn(), (x,), target="cpu").save(tmp_path / "m.tlc")
    from tlc.runtime import PackageError

    (path / "segments" / "00.safetensors").write_bytes(b"junk")
    with pytest.raises(PackageError, match="00.json"):
        load(path)
    shutil.rmtree(path / "segments")
    with pytest.raises(PackageError, match="missing"):
        load(path)
    (path / "manifest.json").write_text("{}")
    with pytest.raises(PackageError, match="tlc-bundle"):
        load(path)


# ----------------------------------------------------------------------------------------- CLI


MODEL_FILE = '''
import torch
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()
example_inputs = (torch.randn(1, 3, 16, 16),)
'''


def cli(*args, cwd):
    from pkgtools import run_tlc

    return run_tlc(*args, cwd=cwd)


def test_cli_bundle_build_report_run_inspect_verify(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_FILE)
    r = cli("build", "model.py", "--target", "cpu", "--report", "--report-json", "rep.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "model.tlc" in r.stdout and "static ANE residency 0.0%" in r.stdout
    assert "target=cpu" in r.stdout  # every op listed with its reason
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert [s["target"] for s in rep["segments"]] == ["cpu"] and rep["residency"] == 0.0
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32))
    r = cli("run", "model.tlc", "--input", "input=x.npy", cwd=tmp_path)
    assert r.returncode == 0 and "output" in r.stdout, r.stderr
    r = cli("inspect", "model.tlc", cwd=tmp_path)
    assert r.returncode == 0 and "segment 0" in r.stdout and "tlc fallback" in r.stdout, r.stderr
    r = cli("verify", "model.py", "--target", "cpu", cwd=tmp_path)
    assert r.returncode == 0 and "PASS" in r.stdout and "hybrid runtime" in r.stdout, r.stdout + r.stderr
    r = cli("build", "model.py", "--target", "iOS17", cwd=tmp_path)
    assert r.returncode == 2 and "--minimum-deployment-target iOS17" in r.stderr


# ---------------------------------------------------------------------------------- HTML report


def three_segment_report():
    from tlc.passes.partition import Placement
    from tlc.check.report import build_report

    g = sandwich(fp32_island)
    names = [n.name for n in g.nodes if n.op != "const"]  # matmul, cast, relu, cast, matmul
    seg = {n: (0 if i == 0 else 2 if i == len(names) - 1 else 1) for i, n in enumerate(names)}
    tgt = {n: ("cpu" if s == 1 else "ane") for n, s in seg.items()}
    p = Placement(seg, tgt, {n: "test placement" for n, s in seg.items() if s == 1})
    return build_report(g, split(g, p), p, model="sandwich", precision="mixed")


def test_report_text_and_json():
    rep = three_segment_report()
    assert [(s.index, s.target, s.num_ops) for s in rep.segments] == [(0, "ane", 1), (1, "cpu", 3), (2, "ane", 1)]
    assert 0.99 < rep.residency < 1.0  # the two matmuls hold almost all FLOPs
    text = str(rep)
    assert "3 segment(s)" in text and "relu (relu) -> segment 1 [cpu]" in text
    j = json.loads(json.dumps(rep.to_json()))
    assert len(j["ops"]) == 5 and j["segments"][1]["inputs"] == ["matmul: fp16[1,64,64]"]


def test_report_html_in_headless_chromium(tmp_path):
    """The page draws every segment and op (its script builds the SVG), checked in a real browser."""
    from html.parser import HTMLParser

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    rep = three_segment_report()
    page = tmp_path / "report.html"
    rep.write_html(page)
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.seg, self.ops, self.stack = {}, {}, []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "g" and a.get("class") == "segment":
                self.seg[int(a["data-segment"])] = a["data-target"]
                self.stack.append(int(a["data-segment"]))
            elif tag == "g":
                self.stack.append(None)
            elif tag == "rect" and a.get("class") == "op" and self.stack and self.stack[-1] is not None:
                self.ops.setdefault(self.stack[-1], []).append(a["data-op"])

        def handle_endtag(self, tag):
            if tag == "g" and self.stack:
                self.stack.pop()

    c = Collect()
    c.feed(r.stdout)
    assert c.seg == {s.index: s.target for s in rep.segments}
    assert {k: len(v) for k, v in c.ops.items()} == {s.index: s.num_ops for s in rep.segments}
    assert "3 segments, 5 ops drawn" in r.stdout


# ------------------------------------------------------------------------------------- profile


def test_profile_fit_and_cost_model(tmp_path):
    from tlc.errors import InputError
    from tlc.driver.profile import cost_model, fit, measure, write

    rows = [{"node": f"c{i}", "op": "conv", "flops": f, "s": 2e-5 + f * 1e-10} for i, f in enumerate([1e6, 4e6, 9e6])]
    rows.append({"node": "r", "op": "relu", "flops": 0, "s": 3e-6})
    lines = fit(rows)
    assert lines["conv"]["overhead_s"] == pytest.approx(2e-5) and lines["conv"]["s_per_flop"] == pytest.approx(1e-10)
    assert lines["relu"] == {"overhead_s": 3e-6, "s_per_flop": 0.0, "n": 1}
    write(tmp_path / "p.json", {"cpu": rows})
    cm = cost_model(tmp_path / "p.json")
    assert cm.cpu(5e6, 0, "conv") == pytest.approx(2e-5 + 5e-4)
    assert cm.cpu(5e6, 0, "matmul") == CostModel().cpu(5e6, 0)  # not profiled: the default estimate
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="tlc-profile"):
        cost_model(tmp_path / "bad.json")
    # measure() times every non-const node of a real graph
    m = small_cnn()
    x = torch.randn(1, 3, 16, 16)
    built = tlc.build(m, (x,), precision="fp32")
    got = measure(built.graph, {built.input_names[0]: x.numpy()}, runs=2)
    assert [r["op"] for r in got] == ["conv", "relu", "conv"] and all(r["s"] > 0 for r in got)


def test_cli_profile_then_build_with_it(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_FILE)
    r = cli("profile", "model.py", "--runs", "2", cwd=tmp_path)
    assert r.returncode == 0 and "model.profile.json" in r.stdout, r.stderr
    doc = json.loads((tmp_path / "model.profile.json").read_text())
    assert set(doc["backends"]["cpu"]["ops"]) == {"conv", "relu"}
    r = cli("build", "model.py", "--profile", "model.profile.json", cwd=tmp_path)
    assert r.returncode == 0 and "model.mlpackage" in r.stdout, r.stderr


def test_bundle_fallback_on_torch_executor_and_backend_choice(tmp_path):
    """gpu segments run on the torch-device executor (the CPU device here when there is no GPU);
    CompiledModel.run's backends agree with torch eager."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GELU(), torch.nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    ref = m(x).detach().numpy()
    cm = tlc.build(m, (x,), target="gpu")
    path = cm.save(tmp_path / "m.tlc")
    for fallback, backend in (("torch", "torch:"), ("numpy", "numpy")):
        b = load(path, fallback=fallback)
        assert b.segments[0][2].startswith(backend)
        assert rel(b({"input": x.numpy()})["output"], ref) < 1e-5
    with pytest.raises(tlc.InputError, match="fallback"):
        load(path, fallback="gpu")
    for backend in ("numpy", "torch", "auto"):
        assert rel(cm.run({"input": x}, backend=backend)["output"], ref) < 1e-5


# ------------------------------------------------------- segment counts with fallback-only ops

CHEAP = CostModel(segment_transition_s=1e-9)  # transitions ~free: every ANE-capable op goes to Core ML


class Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c(x)


def sort(x):
    """A fallback-only op (MIL cannot express nextafter; since issue 10 sorting lowers to MIL topk)."""
    return torch.nextafter(x, torch.zeros_like(x))


class ConvSortConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = Conv(), Conv()

    def forward(self, x):
        return self.b(sort(self.a(x)))


class TwoBranches(torch.nn.Module):
    """branch 1: conv -> sort (coreml -> fallback); branch 2: sort -> conv -> sort (F -> C -> F).
    The minimum is 3 segments; scheduling branch 1 as early as possible would give 4."""

    def __init__(self):
        super().__init__()
        self.a, self.b = Conv(), Conv()

    def forward(self, x, y):
        return sort(self.a(x)), sort(self.b(sort(y)))


def placed(model, *xs, cost=CHEAP, target="ane"):
    cm = tlc.build(model.eval(), xs, precision="fp16")
    g = cm.emit_graph
    segs = split(g, assign(g, cost=cost, target=target))
    check_segments(g, segs)
    return g, segs


def test_fallback_op_between_ane_ops_makes_three_segments():
    x = torch.randn(1, 4, 8, 8)
    g, segs = placed(ConvSortConv(), x)
    assert [s.target for s in segs] == ["ane", "cpu", "ane"]
    assert [n.op for n in segs[1].graph.nodes if n.op != "const"] == ["aten.nextafter.default"]


def test_small_ane_island_between_fallback_ops_is_absorbed():
    """Default costs: two Core ML transitions cost more than running the small convs in the
    fallback runtime, so the whole model is one fallback segment."""
    x = torch.randn(1, 4, 8, 8)
    g, segs = placed(ConvSortConv(), x, cost=CostModel())
    assert len(segs) == 1 and segs[0].target in ("cpu", "gpu")
    p = assign(g)
    conv = next(n.name for n in g.nodes if n.op == "conv")
    assert "cheaper than two Core ML transitions" in p.reasons[conv]


def test_independent_branches_share_segments():
    x, y = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    g, segs = placed(TwoBranches(), x, y)
    assert [s.target for s in segs] == ["cpu", "ane", "cpu"]


def test_host_only_ops_keep_their_segment_on_the_cpu():
    x = torch.randn(1, 4, 8, 8)
    g, segs = placed(ConvSortConv(), x, target="gpu")
    assert [s.target for s in segs] == ["gpu"]  # forced: the runtime runs host-only ops on NumPy
    big = CostModel(gpu_launch_s=0.0, gpu_flops=1e18)  # the GPU would win everything...
    g, segs = placed(ConvSortConv(), x, cost=big)
    assert [s.target for s in segs] == ["cpu"]  # ...but fallback ops have no torch-device kernel


def test_three_segment_bundle_runs_end_to_end(tmp_path):
    torch.manual_seed(0)
    m = ConvSortConv().eval()
    x = torch.randn(1, 4, 8, 8)
    cm = tlc.build(m, (x,), precision="fp32").with_options(cost=CHEAP)  # the placement under test: ane, cpu, ane
    assert [s.target for s in cm.segments] == ["ane", "cpu", "ane"]
    path = cm.save(tmp_path / "m.mlpackage")
    assert path.suffix == ".tlc" and sorted(p.name for p in (path / "segments").iterdir()) == [
        "00.mlpackage", "01.json", "01.safetensors", "02.mlpackage"]
    out = load(path)({cm.input_names[0]: x.numpy()})[cm.output_names[0]]
    assert rel(out, m(x).detach().numpy()) < 1e-5
