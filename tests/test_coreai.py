"""Issue 17: Core AI ``.aimodel`` emission (one ``emit_coreai`` field per op row) run by Apple's
own runtime (coreai-core), on Linux: every spine architecture (small configs) matches torch in
fp32 and its mixed-precision program within 1e-2; the MIL interpreter and the Core AI runtime
agree on the same build; ops without a Core AI form fail clearly before anything is written."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("coreai.authoring", reason="coreai-core (the coreai extra) is not installed: "
                                               "pip install -e '.[coreai]'")

import tlc  # noqa: E402
from tlc.errors import EmitError, InputError  # noqa: E402
from tlc.runtime import PackageError, load  # noqa: E402
from tlc.check.metrics import rel_l2  # noqa: E402

from archs import ARCHS, make, reference  # noqa: E402
from pkgtools import run_tlc  # noqa: E402


def _feeds(cm, args, kwargs):
    vals = [x for x in list(args) + list(kwargs.values()) if isinstance(x, torch.Tensor)]
    return {n: (x.numpy().astype(np.int32) if not x.is_floating_point() else x.numpy())
            for n, x in zip(cm.input_names, vals)}


@pytest.mark.parametrize("name", ARCHS)
def test_spine_architecture_runs_in_the_coreai_runtime(name, tmp_path):
    m, args, kwargs = make(name)
    cm = tlc.build(m, (args, kwargs), precision="fp32")
    p = cm.save(tmp_path / f"{name}.aimodel")
    assert p.suffix == ".aimodel" and (p / "metadata.json").is_file()
    got = load(p)(_feeds(cm, args, kwargs))
    ref = reference(m, args, kwargs)
    for out_name, r in zip(cm.output_names, ref):
        assert rel_l2(got[out_name], r.numpy()) <= 1e-5, out_name


@pytest.mark.parametrize("name", ARCHS)
def test_mixed_precision_program_within_1e_2(name, tmp_path):
    m, args, kwargs = make(name)
    cm = tlc.build(m, (args, kwargs))  # mixed: fp16 with fp32 islands
    assert any(v.type.dtype == "fp16" for n in cm.emit_graph.nodes for v in n.outputs)
    got = load(cm.save(tmp_path / "m.aimodel"))(_feeds(cm, args, kwargs))
    ref = reference(m, args, kwargs)
    assert rel_l2(got[cm.output_names[0]], ref[0].numpy()) <= 1e-2


def test_format_both_writes_two_programs_that_agree(tmp_path):
    """One IR lowered two ways, executed by two independent runtimes (tlc's MIL interpreter and
    Apple's Core AI runtime)."""
    m, args, kwargs = make("distilbert")
    cm = tlc.build(m, (args, kwargs), precision="fp32", format="both")
    pkg = cm.save(tmp_path / "d.mlpackage")
    assert pkg.suffix == ".mlpackage" and (tmp_path / "d.aimodel").is_dir()
    feeds = _feeds(cm, args, kwargs)
    a = load(pkg, backend="interpreter")(feeds)
    b = load(tmp_path / "d.aimodel")(feeds)
    for k in cm.output_names:
        assert np.abs(a[k] - b[k]).max() <= 1e-5 * max(1.0, np.abs(a[k]).max()), k


def test_op_without_a_coreai_form_fails_before_writing(tmp_path):
    """to_aiprogram/save_aimodel (one program) refuse an op Core AI cannot hold, naming it and its
    source line, before anything is written."""
    from tlc.backends.coreai.emit import save_aimodel

    def f(x):
        return torch.flip(x[:, ::-1] if False else x, [1]) + 1  # reverse, with a Core AI form

    cm = tlc.build(f, (torch.randn(2, 5),), precision="fp32")
    g = cm.emit_graph
    bad = tlc.ir.GraphBuilder()
    x = bad.add_input("x", tlc.ir.TensorType("fp32", (2, 5)))
    y = bad.add("random_uniform", [], {"shape": (2, 5), "low": 0.0, "high": 1.0, "seed": 1})
    bad_g = bad.build([bad.add("add", [x, y.out]).out], ["y"])
    with pytest.raises(EmitError, match="no Core AI form yet.*random_uniform"):
        save_aimodel(bad_g, tmp_path / "c.aimodel")
    assert not list(tmp_path.iterdir())
    assert load(save_aimodel(g, tmp_path / "ok.aimodel"))({"x": np.ones((2, 5), np.float32)})
    with pytest.raises(InputError, match="format must be one of"):
        tlc.build(f, (torch.randn(2, 5),), format="onnx")
    with pytest.raises(InputError, match="not compressed by tlc yet"):
        tlc.build(f, (torch.randn(2, 5),), format="aimodel", compress="int8")


def _mlp_with(op_fn, width=512, depth=6):
    """Linear layers around ``op_fn``: enough ANE work on both sides that the partitioner keeps
    them in Apple programs and cuts out only ``op_fn``'s op."""
    torch.manual_seed(0)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])
            self.b = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])

        def forward(self, x):
            return self.b(op_fn(self.a(x)))

    return M().eval()


def test_op_without_a_coreai_form_becomes_a_bundle_with_coreai_segments(tmp_path, monkeypatch):
    """Issue 17: ops Core AI cannot express follow the partitioning rules: a bundle
    ``NAME.aimodel.tlc`` whose Apple segments are ``.aimodel`` assets, the op in tlc's fallback
    runtime, said so by ``coreai_fallback_ops``; the .mlpackage of the same build stays one program."""
    import dataclasses
    import json

    from tlc.ops import OPS

    monkeypatch.setitem(OPS, "sin", dataclasses.replace(OPS["sin"], emit_coreai=None))  # as if it had no form
    m = _mlp_with(torch.sin)
    x = torch.randn(64, 512)
    cm = tlc.build(m, (x,), precision="fp16", format="both")
    assert not cm.is_bundle and cm.coreai_is_bundle
    off = cm.coreai_fallback_ops()
    assert [o[0] for o in off] == ["sin"] and "Core AI has no form of sin" in off[0][2]
    pkg = cm.save(tmp_path / "m.mlpackage")
    assert pkg.suffix == ".mlpackage" and (tmp_path / "m.aimodel.tlc").is_dir()
    man = json.loads((tmp_path / "m.aimodel.tlc" / "manifest.json").read_text())
    assert man["program"] == "coreai"
    assert [(e["target"], e["format"]) for e in man["segments"]] == [("ane", "aimodel"), ("cpu", "tlc-graph"),
                                                                     ("ane", "aimodel")]
    b = load(tmp_path / "m.aimodel.tlc")
    assert [s[2] for s in b.segments] == ["coreai", "numpy", "coreai"]
    with torch.no_grad():
        want = m(x).numpy()
    got = b({"x": x.numpy()})[cm.output_names[0]]
    assert rel_l2(got, want) <= 1e-2
    one = load(pkg, backend="interpreter")({"x": x.numpy()})[cm.output_names[0]]
    assert rel_l2(got, one) <= 1e-2
    with pytest.raises(tlc.errors.NotShippableError, match="sin"):
        tlc.build(m, (x,), precision="fp16", format="aimodel", fallback=False)
    strict = cm.with_options(fallback=False)  # Core ML holds every op, so this passes; Core AI does not
    with pytest.raises(tlc.errors.NotShippableError, match="sin"):
        strict.save(tmp_path / "strict.aimodel")
    assert not (tmp_path / "strict.aimodel").exists() and not (tmp_path / "strict.aimodel.tlc").exists()


def test_aimodel_metadata_minimum_os_and_fixed_creation_date(tmp_path, monkeypatch):
    import json

    cm = tlc.build(lambda x: torch.relu(x) * 2, (torch.randn(2, 3),), precision="fp32")
    md = json.loads((cm.save(tmp_path / "r.aimodel") / "metadata.json").read_text())
    custom = md["creatorDefinedMetadata"]
    assert custom["tlc.version"] == tlc.__version__ and custom["tlc.minimum_os"] == "iOS/macOS 27"
    assert custom["tlc.io_dtype"] == "float32" and md["author"].startswith("tlc ")
    assert md["creationDate"] == "19700101T000000Z"  # no wall-clock timestamp (issue 18)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    md = json.loads((cm.save(tmp_path / "r.aimodel", force=True) / "metadata.json").read_text())
    assert md["creationDate"] == "20260101T000000Z"


def _ir_unary(op, attrs, x):
    gb = tlc.ir.GraphBuilder()
    v = gb.add_input("x", tlc.ir.TensorType("fp32", x.shape))
    return gb.build([gb.add(op, [v], attrs).out], ["y"])


@pytest.mark.parametrize("op,attrs", [("clamped_relu", {"alpha": 0.2, "beta": 1.5}), ("elu", {"alpha": 0.7}),
                                      ("linear_activation", {"alpha": 2.0, "beta": -0.5}),
                                      ("scaled_tanh", {"alpha": 1.5, "beta": 0.5}), ("threshold", {"alpha": 0.3}),
                                      ("thresholded_relu", {"alpha": 0.3}), ("sigmoid_hard", {"alpha": 0.2, "beta": 0.5}),
                                      ("floor", {}), ("ceil", {})])
def test_mil_activations_match_the_numpy_kernel(op, attrs, tmp_path):
    """The activations other converters' packages use (tlc's front-end does not produce them):
    Core AI forms against the op table's NumPy kernel, in float64."""
    from tlc.backends.coreai.emit import save_aimodel
    from tlc.ops import get_op

    x = np.concatenate([np.random.default_rng(1).standard_normal(40) * 3, [-1.0, -0.5, 0.0, 0.3, 1.0, 2.5],
                        [np.inf, -np.inf, np.nan, 2.0 ** 30 + 0.5, -(2.0 ** 24) - 2, 0.3]])  # specials: inf, NaN, huge
    x = x.astype(np.float32).reshape(2, 26)
    got = load(save_aimodel(_ir_unary(op, attrs, x), tmp_path / "u.aimodel"))({"x": x})["y"]
    want = get_op(op).numpy(attrs, x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    fin = np.isfinite(want)
    assert np.all(np.abs(got[fin] - want[fin]) <= 1e-5 * np.maximum(1.0, np.abs(want[fin])))  # per element


@pytest.mark.parametrize("name,fn,op", [
    ("flip", lambda x: torch.flip(x, [0, 2]), "reverse"),
    ("floor_ceil", lambda x: torch.floor(3 * x) + torch.ceil(2 * x), "floor"),
    ("hardsigmoid", torch.nn.functional.hardsigmoid, "sigmoid_hard"),
    ("scatter_add", lambda x: x.scatter_add(2, torch.tensor([[[0, 2, 2, 5]] * 4] * 3), x[:, :, :4]), None),
    ("scatter", lambda x: x.scatter(1, torch.tensor([[[3, 0, 1, 2, 0, 1]]] * 3), -x[:, :1]), None),
    ("index_put", lambda x: x.index_put((torch.tensor([0, 2]), torch.tensor([1, -1])), torch.ones(2, 6)), "scatter_nd"),
    ("index_put_acc", lambda x: x.index_put((torch.tensor([0, 0, 2]),), torch.ones(3, 4, 6), accumulate=True),
     "scatter_nd"),
    ("index_add", lambda x: x.index_add(1, torch.tensor([3, 0, 3]), x[:, :3] * 2), None),
    ("gather_2d", lambda x: x[torch.tensor([0, 2, -1]), torch.tensor([1, 3, 0])], None),
])
def test_reverse_floor_scatters_and_gathers(name, fn, op, tmp_path):
    x = torch.randn(3, 4, 6)
    cm = tlc.build(fn, (x,), precision="fp32")
    if op is not None:
        assert op in cm.graph.op_histogram()
    assert not cm.coreai_is_bundle
    got = load(cm.save(tmp_path / "s.aimodel"))({cm.input_names[0]: x.numpy()})[cm.output_names[0]]
    want = fn(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("nd,kw", [(2, dict(stride=2, padding=1, output_padding=1)), (2, dict(stride=(2, 3), dilation=(1, 2))),
                                   (2, dict(stride=2, groups=2)), (1, dict(stride=3, padding=2, output_padding=1))])
def test_conv_transpose(nd, kw, tmp_path):
    torch.manual_seed(0)
    conv = (torch.nn.ConvTranspose2d if nd == 2 else torch.nn.ConvTranspose1d)(4, 6, 3, **kw).eval()
    x = torch.randn(1, 4, *(5, 7)[:nd])
    cm = tlc.build(conv, (x,), precision="fp32")
    assert "conv_transpose" in cm.graph.op_histogram()
    got = load(cm.save(tmp_path / "t.aimodel"))({cm.input_names[0]: x.numpy()})[cm.output_names[0]]
    with torch.no_grad():
        want = conv(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_cli_build_and_run_aimodel(tmp_path):
    out = tmp_path / "tf.aimodel"
    res = run_tlc("build", "examples/tensor_function.py", "-o", out, cwd=tlc_repo())
    assert res.returncode == 0, res.stderr
    assert "Core AI asset" in res.stdout and out.is_dir()
    assert run_tlc("build", "examples/tensor_function.py", "-o", out, cwd=tlc_repo()).returncode != 0  # exists
    q = np.random.default_rng(0).standard_normal((1, 4, 16, 32)).astype(np.float32)
    for n in "qkv":
        np.save(tmp_path / f"{n}.npy", q)
    res = run_tlc("run", out, *[a for n in "qkv" for a in ("--input", f"{n}={tmp_path / (n + '.npy')}")],
                  "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    assert "on coreai" in res.stdout
    got = np.load(tmp_path / "o" / "output.npy")
    a = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(q),) * 3) + torch.from_numpy(q)
    want = (a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-6)).numpy()
    assert rel_l2(got, want) <= 1e-2  # the example builds mixed precision
    res = run_tlc("run", out, "--input", f"q={tmp_path / 'q.npy'}")
    assert res.returncode == 2 and "missing ['k', 'v']" in res.stderr
    res = run_tlc("inspect", out)
    assert res.returncode == 0 and "Core AI asset" in res.stdout and "input   q" in res.stdout, res.stdout


def test_missing_asset_is_a_package_error(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        load(tmp_path / "none.aimodel")


def tlc_repo():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ARCHS)
def test_verify_format_both_agrees_within_1e_5(name):
    """`tlc verify --format both` on the zoo: torch, the MIL interpreter and the Core AI runtime in
    one report; in fp32 the two Apple formats agree within 1e-5."""
    from tlc.driver.verify import verify

    m, args, kwargs = make(name)
    rep = verify(m, (args, kwargs), precision="fp32", format="both")
    assert rep.passed, rep.text()
    assert rep.coreai and rep.apple_agreement and all(o.rel_l2 <= 1e-5 for o in rep.apple_agreement)
    assert "MIL interpreter vs Core AI runtime" in rep.text()


def test_apple_divergence_names_the_first_op_where_the_formats_part(tmp_path):
    """In fp16 the two runtimes round differently somewhere; with a zero tolerance the bisection
    must name that first op (a node of the program, with its MIL op), and none in fp32 at 1e-3."""
    from tlc.runtime import MILInterpreter
    from tlc.driver.verify import apple_divergence

    m, args, kwargs = make("bert")
    feeds = None
    for prec, tol, expect in (("fp16", 0.0, True), ("fp32", 1e-3, False)):
        cm = tlc.build(m, (args, kwargs), precision=prec)
        feeds = _feeds(cm, args, kwargs)
        pkg = cm.save(tmp_path / f"b_{prec}.mlpackage")
        d = apple_divergence(cm.emit_graph, MILInterpreter(pkg), feeds, tol, tmp_path)
        if expect:
            assert d is not None and d.node in cm.emit_graph.nodes and d.rel_l2 > 0 and d.mil_op
        else:
            assert d is None


@pytest.fixture(scope="module")
def diffusers_models():
    import test_one_package as op

    return {"unet": op.unet.__wrapped__(), "vae_decoder": op.vae_decoder.__wrapped__()}


@pytest.mark.parametrize("which", ["unet", "vae_decoder"])
def test_diffusers_models_group_norm_upsample(which, diffusers_models, tmp_path):
    """group norm, cross-attention, nearest upsampling, timestep embedding in Core AI (fp32)."""
    model, inputs = diffusers_models[which]
    cm = tlc.build(model, inputs, precision="fp32")
    assert {"group_norm", "upsample_nearest_neighbor"} <= set(cm.graph.op_histogram())
    got = load(cm.save(tmp_path / "d.aimodel"))({n: x.numpy() for n, x in zip(cm.input_names, inputs)})
    with torch.no_grad():
        ref = model(*inputs)
    ref = getattr(ref, "sample", ref)
    assert rel_l2(got[cm.output_names[0]], ref.numpy()) <= 1e-5


def test_activations_and_batch_norm(tmp_path):
    bn = torch.nn.BatchNorm1d(6).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)

    def f(x):
        y = torch.cat([torch.nn.functional.leaky_relu(x, 0.1), torch.nn.functional.relu6(3 * x),
                       torch.nn.functional.softsign(x), torch.nn.functional.softplus(8 * x), torch.exp2(x)], dim=1)
        return bn(y.reshape(4, 6, -1))

    x = torch.randn(4, 6, 5)
    cm = tlc.build(f, (x,), precision="fp32")
    assert "batch_norm" in cm.graph.op_histogram()
    got = load(cm.save(tmp_path / "a.aimodel"))({cm.input_names[0]: x.numpy()})[cm.output_names[0]]
    with torch.no_grad():
        want = f(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("fn", [lambda x: torch.cumsum(x, 1), lambda x: torch.topk(x, 2, dim=1).values,
                                lambda x: torch.topk(x, 3, dim=1).indices, lambda x: torch.argmin(x, -1, keepdim=True),
                                lambda x: torch.take_along_dim(x, torch.argsort(x, dim=1), 1), torch.sign],
                         ids=["cumsum", "topk_values", "topk_indices", "argmin", "argsort_take", "sign"])
def test_scans_sorting_and_indexing(fn, tmp_path):
    x = torch.randn(3, 6)
    cm = tlc.build(fn, (x,), precision="fp32")
    got = load(cm.save(tmp_path / "s.aimodel"))({cm.input_names[0]: x.numpy()})[cm.output_names[0]]
    want = fn(x).numpy()
    assert np.abs(got.astype(np.float64) - want).max() <= 1e-5


def test_fp16_io_and_integer_range(tmp_path):
    """io_dtype="float16" assets take fp16 (or fp32, converted) and return fp16; int64 token ids
    that do not fit int32 are refused, naming the input, never wrapped (issue 18)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(2, 16)
    cm = tlc.build(m, (x,), io_dtype="float16", format="aimodel")
    r = load(cm.save(tmp_path / "h.aimodel"))
    name, out = cm.input_names[0], cm.output_names[0]
    assert r.input_types[name][1] == "float16" and r.output_types[out][1] == "float16"
    a, b = r({name: x.numpy()})[out], r({name: x.numpy().astype(np.float16)})[out]
    assert a.dtype == np.float16 and np.array_equal(a, b)
    with torch.no_grad():
        assert rel_l2(a.astype(np.float32), m(x).numpy()) <= 1e-2

    cm = tlc.build(lambda ids: ids + 1, (torch.ones(1, 3, dtype=torch.int64),), precision="fp32", format="aimodel")
    r = load(cm.save(tmp_path / "ids.aimodel"))
    with pytest.raises(InputError, match=r"int32's range.*3000000000"):
        r({cm.input_names[0]: np.array([[1, 2, 3_000_000_000]], np.int64)})
    np.testing.assert_array_equal(r({cm.input_names[0]: np.array([[1, 2, 3]], np.int64)})[cm.output_names[0]],
                                  [[2, 3, 4]])


def test_several_shapes_become_one_multifunction_asset_with_weights_once(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).eval()
    xs = [torch.randn(1, 64), torch.randn(8, 64)]
    mf = tlc.build(m, [(x,) for x in xs], precision="fp32")
    one = mf.functions[mf.default_function_name].save(tmp_path / "one.aimodel")
    p = mf.save(tmp_path / "mf.aimodel")
    from tlc._coreml import package_size

    assert package_size(p) < 1.2 * package_size(one)  # the second function adds no weights
    default = load(p)
    assert default.functions[0] == mf.default_function_name and set(default.functions) == set(mf.functions)
    for name, x in zip(mf.functions, xs):
        r = load(p, function_name=name)
        got = r({mf.functions[name].input_names[0]: x.numpy()})[mf.functions[name].output_names[0]]
        with torch.no_grad():
            assert rel_l2(got, m(x).numpy()) <= 1e-5, name


def test_lm_prefill_and_decode_functions_in_one_asset(tmp_path):
    """tlc.build_lm with the KV cache as I/O: one .aimodel with the prefill and decode functions,
    each agreeing with torch eager (tlc.driver.lm.LMStep, what was traced) and with the MIL interpreter
    on the .mlpackage of the same build."""
    import transformers as T

    from tlc.driver.lm import LMStep

    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                             max_position_embeddings=128)).eval()
    mf = tlc.build_lm(model, max_context=24, prefill_lengths=[8], precision="fp32")
    aim, pkg = mf.save(tmp_path / "lm.aimodel"), mf.save(tmp_path / "lm.mlpackage")
    assert set(load(aim).functions) == {"decode", "prefill_8"}
    with pytest.raises(InputError, match="kv_cache='state'"):
        mf.save(tmp_path / "st.aimodel", kv_cache="state")
    rng = np.random.default_rng(0)
    for fn in ("decode", "prefill_8"):
        a, b = load(aim, function_name=fn), load(pkg, backend="interpreter", function_name=fn)
        feeds = {n: rng.integers(0, 8, s).astype(d) if "int" in d else (0.1 * rng.standard_normal(s)).astype(d)
                 for n, (s, d) in a.input_types.items()}
        if fn != "decode":  # prefill at position > 0 differs from eager: tests/test_lm.py's xfail
            feeds["position"] = np.zeros_like(feeds["position"])
        oa, ob = a(feeds), b(feeds)
        for k in ob:
            assert np.abs(oa[k] - ob[k]).max() <= 1e-5 * max(1.0, np.abs(ob[k]).max()), (fn, k)
        with torch.no_grad():
            ref = LMStep(model).eval()(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "position", "k_cache",
                                                                                 "v_cache")))
        ref = ref if isinstance(ref, dict) else dict(zip(("logits", "k_new", "v_new"), ref))
        assert set(ref) == set(oa)
        for k, r in ref.items():
            assert rel_l2(oa[k], r.numpy()) <= 1e-5, (fn, k)
