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
from tlc.verify import rel_l2  # noqa: E402

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
    def f(x):
        return torch.flip(x, [1])  # MIL reverse: no Core AI form in tlc yet (docs/coreai.md)

    cm = tlc.build(f, (torch.randn(2, 5),), precision="fp32")
    with pytest.raises(EmitError, match="no Core AI form yet.*reverse.*test_coreai.py"):
        cm.save(tmp_path / "c.aimodel")
    assert not (tmp_path / "c.aimodel").exists() and not list(tmp_path.iterdir())
    with pytest.raises(InputError, match="format must be one of"):
        tlc.build(f, (torch.randn(2, 5),), format="onnx")


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
    assert res.returncode != 0 and "takes inputs" in res.stderr
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
    from tlc.verify import verify

    m, args, kwargs = make(name)
    rep = verify(m, (args, kwargs), precision="fp32", format="both")
    assert rep.passed, rep.text()
    assert rep.coreai and rep.apple_agreement and all(o.rel_l2 <= 1e-5 for o in rep.apple_agreement)
    assert "MIL interpreter vs Core AI runtime" in rep.text()


def test_apple_divergence_names_the_first_op_where_the_formats_part(tmp_path):
    """In fp16 the two runtimes round differently somewhere; with a zero tolerance the bisection
    must name that first op (a node of the program, with its MIL op), and none in fp32 at 1e-3."""
    from tlc.runtime import MILInterpreter
    from tlc.verify import apple_divergence

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
