"""Issue 31: compression to a quality target. ``compress={"target_psnr": ...}`` / ``{"avg_bits": ...}``
measures each weight's sensitivity in tlc's MIL interpreter, builds Apple's cumulative-curve recipe,
compresses with coremltools' passes and checks the SAVED package (save -> tlc.runtime.load -> run,
against torch eager in float64); the recipe written beside it rebuilds the package byte for byte;
bad targets and recipes fail with one error and write nothing. Small configs; the real
all-MiniLM-L6-v2 and full-size ResNet-50 / MobileNetV2 are in benchmarks/bench_compress.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tlc
import tlc.runtime
from tlc.check.metrics import psnr
from tlc.errors import InputError, TlcError
from tlc.runtime import MILInterpreter
from tlc.util.files import tree_digest

TARGET = 35.0


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     max_position_embeddings=64)
    return BertModel(cfg).eval()


def _feeds(n=3, length=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 512, (1, length), generator=g).numpy()} for _ in range(n)]


def _eager64(m, feed):
    with torch.no_grad():
        out = m.double()(torch.from_numpy(feed["input_ids"]))
    m.float()
    return {"last_hidden_state": out.last_hidden_state.numpy(), "pooler_output": out.pooler_output.numpy()}


def _constexpr(path) -> dict:
    return {k: v for k, v in MILInterpreter(path).op_histogram().items() if k.startswith("constexpr_")}


@pytest.fixture(scope="module")
def by_target(tmp_path_factory):
    m, feeds = _bert(), _feeds()
    d = tmp_path_factory.mktemp("target")
    cm = tlc.build(m, (torch.from_numpy(feeds[0]["input_ids"]),), calibration=feeds[1:],
                   compress={"target_psnr": TARGET, "max_bits": 4})
    return m, feeds, cm, cm.save(d / "bert.mlpackage")


def test_target_is_met_in_the_saved_package(by_target):
    m, feeds, cm, path = by_target
    rep = cm.compression
    assert rep.met and rep.psnr >= TARGET and rep.avg_bits < 8, rep.summary()
    assert _constexpr(path), "nothing was compressed"
    loaded = tlc.runtime.load(path, backend="interpreter")
    for f in feeds:  # the saved artifact against torch eager in float64
        got, ref = loaded(f), _eager64(m, f)
        for k in ref:
            assert psnr(got[k], ref[k]) >= TARGET, (k, psnr(got[k], ref[k]))
    # the per-layer table: every unit with its config, bits and single-unit PSNR; embeddings never below int8
    layers = {r["unit"]: r for r in rep.layers}
    emb = [r for r in rep.layers if r["role"] == "embedding"]
    assert emb and all(r["config"] in ("int8", "dense") for r in emb), emb
    assert all(r["config"] == "dense" or r["single_psnr"] is not None for r in layers.values())
    # the recipe is data beside the package; the report carries the table (JSON and HTML)
    recipe = json.loads(path.with_name("bert.recipe.json").read_text())
    assert recipe["format"] == "tlc.compress-recipe" and recipe["summary"]["met"] is True
    assert set(recipe["weights"]) == {w for r in rep.layers for w in r["weights"]}
    j = cm.report().to_json()["compression"]
    assert j["avg_bits"] == round(rep.avg_bits, 4) and len(j["layers"]) == len(rep.layers)
    assert "<h2>Compression</h2>" in cm.report().to_html() and "bits/weight" in cm.report().text()


def test_recipe_rebuilds_byte_identically(by_target, tmp_path):
    m, feeds, cm, path = by_target
    recipe = path.with_name("bert.recipe.json")
    again = tlc.build(m, (torch.from_numpy(feeds[0]["input_ids"]),), calibration=feeds[1:], compress=str(recipe))
    out = again.save(tmp_path / "bert.mlpackage")
    assert tree_digest(out) == tree_digest(path)
    assert not (tmp_path / "bert.recipe.json").exists()  # a recipe build measures nothing new
    # another function of the same weights (another sequence length) takes the same configs
    longer = _feeds(2, length=24, seed=5)
    other = tlc.build(m, (torch.from_numpy(longer[0]["input_ids"]),), compress=recipe)
    p = other.save(tmp_path / "bert24.mlpackage")
    assert _constexpr(p) == _constexpr(path)
    got, ref = tlc.runtime.load(p, backend="interpreter")(longer[1]), _eager64(m, longer[1])
    assert psnr(got["last_hidden_state"], ref["last_hidden_state"]) >= TARGET - 5


def test_bits_budget(tmp_path):
    m, feeds = _bert(), _feeds(2)
    cm = tlc.build(m, (torch.from_numpy(feeds[0]["input_ids"]),), calibration=feeds[1:],
                   compress={"avg_bits": 4.5, "max_bits": 8})
    path = cm.save(tmp_path / "b.mlpackage")
    rep = cm.compression
    assert rep.avg_bits <= 4.5 and rep.target is None and rep.met is None, rep.summary()
    got, ref = tlc.runtime.load(path, backend="interpreter")(feeds[1]), _eager64(m, feeds[1])
    assert psnr(got["last_hidden_state"], ref["last_hidden_state"]) == pytest.approx(
        rep.outputs["last_hidden_state"][0], abs=0.5)


def test_by_block(tmp_path):
    """``by="block"``: a layer's weights are measured and compressed together (one unit per block)."""
    m, feeds = _bert(), _feeds(2)
    cm = tlc.build(m, (torch.from_numpy(feeds[0]["input_ids"]),), calibration=feeds[1:],
                   compress={"target_psnr": 30, "max_bits": 4, "by": "block"})
    path = cm.save(tmp_path / "k.mlpackage")
    units = {r["unit"]: r for r in cm.compression.layers if r["role"] == "weight"}
    assert {"encoder_layer_0", "encoder_layer_1"} <= set(units), sorted(units)
    assert len(units["encoder_layer_0"]["weights"]) == 6 and cm.compression.met
    got, ref = tlc.runtime.load(path, backend="interpreter")(feeds[1]), _eager64(m, feeds[1])  # the saved package
    assert psnr(got["last_hidden_state"], ref["last_hidden_state"]) >= 30


def test_out_of_reach_target_leaves_every_weight_dense(tmp_path):
    """Must-not-fire: no config keeps 150 dB, so nothing is compressed and the build says why."""
    m, feeds = _bert(), _feeds(2)
    cm = tlc.build(m, (torch.from_numpy(feeds[0]["input_ids"]),), calibration=feeds[1:],
                   compress={"target_psnr": 150})
    path = cm.save(tmp_path / "d.mlpackage")
    assert _constexpr(path) == {}
    rep = cm.compression
    assert rep.met is False and rep.avg_bits == 16.0
    assert any("no recipe reaches 150 dB" in n or "not met" in n for n in rep.notes), rep.notes
    ref = tlc.build(m, (torch.from_numpy(feeds[0]["input_ids"]),), calibration=feeds[1:]).save(tmp_path / "u.mlpackage")
    a, b = MILInterpreter(path).run(feeds[1]), MILInterpreter(ref).run(feeds[1])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # its recipe (every weight dense) rebuilds the same package, metadata included
    (tmp_path / "again").mkdir()
    again = tlc.build(m, (torch.from_numpy(feeds[0]["input_ids"]),), calibration=feeds[1:],
                      compress=str(path.with_name("d.recipe.json")))
    assert tree_digest(again.save(tmp_path / "again" / "d.mlpackage")) == tree_digest(path)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.fc = torch.nn.Linear(64, 64)

    def forward(self, x):
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.relu(self.c3(y)).mean((2, 3)))


def test_grouped_tables_on_ios18(tmp_path):
    torch.manual_seed(0)
    m = ConvNet().eval()
    xs = [torch.randn(1, 3, 16, 16) for _ in range(3)]
    cm = tlc.build(m, (xs[0],), calibration=[{"x": x.numpy()} for x in xs[1:]], minimum_deployment_target="iOS18",
                   compress={"target_psnr": 30, "max_bits": 4})
    path = cm.save(tmp_path / "c.mlpackage")
    configs = {r["config"] for r in cm.compression.layers}
    assert any("/g16" in c for c in configs), configs
    assert "constexpr_lut_to_dense" in _constexpr(path)
    with torch.no_grad():
        ref = m.double()(xs[2].double()).numpy()
    got = next(iter(tlc.runtime.load(path, backend="interpreter")({"x": xs[2].numpy()}).values()))
    assert psnr(got, ref) >= 30


@pytest.mark.parametrize("compress, match", [
    ({"target_psnr": 0}, "target_psnr must be a PSNR in dB above 0"),
    ({"target_psnr": -3}, "target_psnr must be a PSNR in dB above 0"),
    ({"target_psnr": 40, "max_bits": 9}, "max_bits must be an integer from 1 to 8"),
    ({"target_psnr": 40, "max_bits": 0}, "max_bits must be an integer from 1 to 8"),
    ({"target_psnr": 40, "max_bits": float("inf")}, "max_bits must be an integer from 1 to 8"),
    ({"target_psnr": float("nan")}, "target_psnr must be a PSNR in dB above 0"),
    ({"avg_bits": 12}, "avg_bits must be a number of bits per weight from 1 to 8"),
    ({"target_psnr": 40, "granularity": "per_block"}, "granularity must be one of auto, per_tensor"),
    ({"target_psnr": 40, "avg_bits": 4}, "not both"),
    ({"target": 40}, "unknown key"),
    ("missing.recipe.json", "does not exist"),
])
def test_bad_targets_write_nothing(compress, match, tmp_path):
    m = torch.nn.Linear(64, 64).eval()
    with pytest.raises(InputError, match=match):
        tlc.build(m, (torch.randn(2, 64),), compress=compress).save(tmp_path / "m.mlpackage")
    assert list(tmp_path.iterdir()) == []


def test_bad_recipe_files_write_nothing(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64)).eval()
    x = torch.randn(2, 64)
    r = tmp_path / "r.recipe.json"
    out = tmp_path / "out"

    def build(weights, **extra):
        r.write_text(json.dumps({"format": "tlc.compress-recipe", "version": 1, "weights": weights, **extra}))
        tlc.build(m, (x,), compress=r).save(out / "m.mlpackage")

    with pytest.raises(InputError, match=r"names 1 weight\(s\) the model does not have.*lm_head_weight"):
        build({"lm_head_weight": {"kind": "palettize", "nbits": 4}})
    with pytest.raises(InputError, match="weight 'x': palettize nbits must be one of"):
        build({"x": {"kind": "palettize", "nbits": 5}})
    with pytest.raises(InputError, match="weight 'x': unknown key"):
        build({"x": {"kind": "palettize", "nbits": 4, "bits": 4}})
    with pytest.raises(InputError, match="has version 2"):
        build({"x": None}, version=2)
    r.write_text("{not json")
    with pytest.raises(InputError, match="is not readable JSON"):
        tlc.build(m, (x,), compress=r)
    assert not out.exists()
    # a recipe with iOS18-only configs on an iOS17 build: one error naming the weight and the target
    r.write_text(json.dumps({"format": "tlc.compress-recipe", "version": 1, "weights": {
        "x": {"kind": "palettize", "nbits": 4, "granularity": "per_grouped_channel", "group_size": 16}}}))
    with pytest.raises(InputError, match="need minimum_deployment_target iOS18"):
        tlc.build(m, (x,), compress=r, minimum_deployment_target="iOS17")


def test_kmeans_on_every_core_matches_coremltools():
    """tlc's threaded kmeans1d call gives coremltools' own tables and indices, byte for byte."""
    from coremltools.optimize.coreml._quantization_passes import palettize_weights as P

    from tlc.backends.coreml.weights import _kmeans1d, palettize_params

    if _kmeans1d() is None:  # tlc then calls coremltools' own path: the comparison would be with itself
        pytest.skip("coremltools' kmeans1d library is not built for this platform")
    w = np.random.default_rng(0).standard_normal((64, 2048)).astype(np.float16)
    w[:, :40] = np.array([0.0, -0.0, 6e-8, -6e-8, 1e-6, -1e-6, 65504, -65504], np.float16).repeat(5)  # +-0, subnormals
    for nbits, blocks in ((4, [16, 0]), (2, [0, 0]), (6, [0, 0])):
        ours = palettize_params(w, nbits, blocks)
        theirs = P.blockwise_compress(w, "KMEANS", nbits, blocks)
        assert np.array_equal(ours.indices, theirs.indices) and np.array_equal(ours.lut, theirs.lut), nbits


def test_unique_by_bit_pattern_is_numpy_unique():
    """The histogram of fp16 bit patterns palettize_params uses instead of a sort gives np.unique's
    values (in order, -0.0 merged with 0.0), inverse and counts; an array with a NaN is left to
    np.unique (None)."""
    from tlc.backends.coreml.weights import _unique_fp16

    rng = np.random.default_rng(1)
    x = (rng.standard_normal(50_000) * 0.02).astype(np.float16)
    x[:8] = np.array([0.0, -0.0, np.inf, -np.inf, 6e-8, -6e-8, 65504, -65504], np.float16)
    values, inverse, counts = _unique_fp16(x)
    ref_values, ref_inverse, ref_counts = np.unique(x, return_inverse=True, return_counts=True)
    assert np.array_equal(values, ref_values) and np.array_equal(inverse, ref_inverse.reshape(-1))
    assert np.array_equal(counts, ref_counts) and counts.sum() == x.size
    x[3] = np.nan
    assert _unique_fp16(x) is None


def test_replay_matches_run(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64)).eval()
    x = torch.randn(2, 64)
    path = tlc.build(m, (x,), precision="fp32").save(tmp_path / "m.mlpackage")
    it = MILInterpreter(path)
    feed = {it.inputs[0][0]: x.numpy()}
    rec = it.record(feed)
    base = it.run(feed)
    same = it.replay(rec, {})
    assert all(np.array_equal(base[k], same[k]) for k in base)
    consts = [op for op in it.function.operations if op.op_type == "const" and np.size(op.outputs[0].val) == 64 * 64]
    name = consts[-1].name
    zero = it.replay(rec, {name: np.zeros_like(consts[-1].outputs[0].val)})
    assert not all(np.array_equal(base[k], zero[k]) for k in base)
    assert np.allclose(next(iter(zero.values())), m[2].bias.detach().numpy(), atol=1e-6)
    with pytest.raises(TlcError, match="no constants"):
        it.replay(rec, {"nope": np.zeros(3)})


def test_cli_compress_auto_and_recipe(tmp_path):
    from pkgtools import run_tlc

    f = tmp_path / "m.py"
    f.write_text("import torch\ntorch.manual_seed(0)\n"
                 "model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64)).eval()\n"
                 "example_inputs = (torch.randn(4, 64),)\n")
    out = tmp_path / "m.mlpackage"
    r = run_tlc("build", f, "-o", out, "--compress", "auto", "--target-psnr", "30", "--max-bits", "4")
    assert r.returncode == 0, r.stderr
    assert "bits/weight" in r.stdout and "m.recipe.json" in r.stdout, r.stdout
    again = tmp_path / "again" / "m.mlpackage"
    r = run_tlc("build", f, "-o", again, "--compress-recipe", tmp_path / "m.recipe.json")
    assert r.returncode == 0, r.stderr
    assert tree_digest(again) == tree_digest(out)
    # built again (the trace and plan from the compile cache): measured again, the recipe written again
    r = run_tlc("build", f, "-o", tmp_path / "second" / "m.mlpackage", "--compress", "auto", "--target-psnr", "30",
                "--max-bits", "4")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "second" / "m.recipe.json").read_text())["weights"] == \
        json.loads((tmp_path / "m.recipe.json").read_text())["weights"]
    r = run_tlc("build", f, "-o", tmp_path / "x.mlpackage", "--compress", "auto", "--target-psnr", "0")
    assert r.returncode == 2 and "target_psnr must be a PSNR in dB above 0" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.mlpackage").exists()
    r = run_tlc("build", f, "-o", tmp_path / "x.mlpackage", "--compress", "int8", "--target-psnr", "30")
    assert r.returncode == 2 and "go with --compress auto" in r.stderr, r.stderr


def test_multifunction_measures_once_and_shares_the_recipe(tmp_path):
    """By target on a multifunction build: measured on the first function, whose recipe the other
    functions take, so every weight is compressed once and stored once."""
    torch.manual_seed(0)
    m = ConvNet().eval()
    sigs = [(torch.randn(1, 3, 16, 16),), (torch.randn(1, 3, 24, 24),)]
    mf = tlc.build(m, sigs, precision="fp16", minimum_deployment_target="iOS18", compress={"target_psnr": 30})
    path = mf.save(tmp_path / "mf.mlpackage")
    first, second = mf.functions.values()
    assert first.compression is not None and first.compression.met
    assert str(second.compress).startswith("recipe") and second.compression.recipe.weights == \
        first.compression.recipe.weights
    assert mf.sizes["weights"] <= 1.05 * mf.sizes["single_function"], mf.sizes
    name = list(mf.functions)[1]
    got = next(iter(tlc.runtime.load(path, backend="interpreter", function_name=name)(
        {"x": sigs[1][0].numpy()}).values()))
    with torch.no_grad():
        ref = m.double()(sigs[1][0].double()).numpy()
    assert psnr(got, ref) >= 30 - 3


def test_recipe_path_beside_a_dotted_package_name():
    """Only the package suffix is replaced: two packages m.a / m.b get two recipe files."""
    from pathlib import Path

    from tlc.driver.recipe import recipe_path

    assert recipe_path("d/bert.v2.mlpackage") == Path("d/bert.v2.recipe.json")
    assert recipe_path("m.a.mlpackage") != recipe_path("m.b.mlpackage")
