"""Packages beyond one static function (issue 12): flexible input shapes (``RangeDim``,
``EnumeratedShapes``), MLState (a stateful accumulator over three calls), multifunction packages
(``function_name=``), image inputs and outputs (RGB / BGR / GRAYSCALE with scale and bias), and
control flow / list ops (``cond``, ``while_loop``, ``make_list`` ... ``list_scatter``) at fp32 and
fp16. Packages are made by coremltools (``ct.convert`` from TorchScript or a MIL Builder program,
``save_multifunction``); references are torch eager or float64 NumPy."""
from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
import torch

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

from milcheck import check, f32, precisions, run_mil
from tlc.errors import InputError
from tlc.runtime import MILInterpreter, load, package_info

INTERPRETER_BUILTINS = {"read_state", "coreml_update_state", "cond", "while_loop", "make_list", "list_length",
                        "list_read", "list_write", "list_gather", "list_scatter"}


def _quiet(fn, *a, **k):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn(*a, **k)


class Scale(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x).sum(-1, keepdim=True) * x + 1.0


def _convert(module, example, inputs, path, **kw):
    ts = torch.jit.trace(module.eval(), example)
    m = _quiet(ct.convert, ts, inputs=inputs, convert_to="mlprogram", skip_model_load=True,
               compute_precision=ct.precision.FLOAT32, **kw)
    m.save(str(path))
    return path


# ------------------------------------------------------------------------------- flexible shapes

def test_range_dim_package(tmp_path):
    p = _convert(Scale(), torch.randn(2, 8), [ct.TensorType(name="x", shape=ct.Shape((ct.RangeDim(1, 16, default=2), 8)))],
                 tmp_path / "range.mlpackage")
    interp = MILInterpreter(p)
    assert interp.shape_rules["x"].describe() == "[1..16, 8]"
    for n in (1, 2, 7, 16):
        x = f32(np.random.default_rng(n).normal(size=(n, 8)))
        (got,) = interp.run({"x": x}).values()
        check(got, Scale()(torch.from_numpy(x.astype(np.float64))), "fp32", f"RangeDim n={n}")
    with pytest.raises(InputError, match=r"allows \[1\.\.16, 8\]"):
        interp.run({"x": f32(np.zeros((17, 8)))})
    with pytest.raises(InputError, match=r"allows \[1\.\.16, 8\]"):
        interp.run({"x": f32(np.zeros((2, 5)))})
    info = package_info(p)
    assert info["inputs"][0]["allowed"] == "[1..16, 8]" and info["inputs"][0]["shapes"]["ranges"] == [[1, 16], [8, 8]]


def test_enumerated_shapes_package(tmp_path):
    shapes = [(2, 8), (4, 8), (3, 5)]
    p = _convert(Scale(), torch.randn(2, 8), [ct.TensorType(name="x", shape=ct.EnumeratedShapes(shapes=shapes, default=(2, 8)))],
                 tmp_path / "enum.mlpackage", minimum_deployment_target=ct.target.iOS17)
    m = load(p, backend="interpreter")
    for s in shapes:
        x = f32(np.random.default_rng(sum(s)).normal(size=s))
        (got,) = m({"x": x}).values()
        check(got, Scale()(torch.from_numpy(x.astype(np.float64))), "fp32", f"shape {s}")
    with pytest.raises(InputError, match=r"allows one of \[2, 8\], \[4, 8\], \[3, 5\]"):
        m({"x": f32(np.zeros((4, 5)))})
    from pkgtools import run_tlc

    out = run_tlc("inspect", p)
    assert out.returncode == 0, out.stderr
    assert "allowed one of [2, 8], [4, 8], [3, 5]" in out.stdout


# ---------------------------------------------------------------------------------------- states

def test_stateful_accumulator(tmp_path):
    """acc += x; y = 2 * acc: three calls with one state keep the running sum; a fresh state
    starts from zero; a call without a state is refused. (Core ML states are fp16 only:
    coremltools refuses an fp32 StateTensorSpec.)"""
    precision, dt = "fp16", types.fp16

    @mb.program(input_specs=[mb.TensorSpec((1, 4), dtype=dt), mb.StateTensorSpec((1, 4), dtype=dt)],
                opset_version=ct.target.iOS18)
    def prog(x, acc):
        s = mb.add(x=mb.read_state(input=acc), y=x)
        mb.coreml_update_state(state=acc, value=s)
        return mb.mul(x=s, y=np.float16(2.0))

    p = tmp_path / "acc.mlpackage"
    _quiet(ct.convert, prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
           skip_model_load=True).save(str(p))
    m = load(p, backend="interpreter")
    state = m.make_state()
    xs = [f32(np.random.default_rng(i).normal(size=(1, 4))) for i in range(3)]
    npdt = np.float16 if precision == "fp16" else np.float32
    acc = np.zeros((1, 4), np.float64)
    for x in xs:
        acc = acc + x.astype(npdt)
        (y,) = m({"x": x.astype(npdt)}, state=state).values()
        np.testing.assert_allclose(y.astype(np.float64), 2 * acc, rtol=2e-3 if precision == "fp16" else 1e-6)
    np.testing.assert_allclose(state["acc"].astype(np.float64), acc, rtol=2e-3 if precision == "fp16" else 1e-6)
    (y0,) = m({"x": xs[0].astype(npdt)}, state=m.make_state()).values()
    np.testing.assert_allclose(y0.astype(np.float64), 2 * xs[0].astype(npdt), rtol=1e-3)
    with pytest.raises(InputError, match="stateful"):
        m({"x": xs[0].astype(npdt)})
    assert package_info(p)["states"] == [{"name": "acc", "shape": [1, 4], "dtype": np.dtype(npdt).name}]


# --------------------------------------------------------------------------------- multifunction

def test_multifunction_package(tmp_path):
    """Two functions (different shapes and ops) in one package by coremltools'
    save_multifunction; each runs by function_name=, the default one without it."""
    from coremltools.models.utils import MultiFunctionDescriptor, save_multifunction

    a = _convert(Scale(), torch.randn(2, 8), [ct.TensorType(name="x", shape=(2, 8))], tmp_path / "a.mlpackage",
                 minimum_deployment_target=ct.target.iOS18)

    class Other(torch.nn.Module):
        def forward(self, x):
            return torch.tanh(x) * 3.0

    b = _convert(Other(), torch.randn(1, 4, 3), [ct.TensorType(name="x", shape=(1, 4, 3))], tmp_path / "b.mlpackage",
                 minimum_deployment_target=ct.target.iOS18)
    desc = MultiFunctionDescriptor()
    desc.add_function(str(a), "main", "scale")
    desc.add_function(str(b), "main", "other")
    desc.default_function_name = "other"
    p = tmp_path / "multi.mlpackage"
    _quiet(save_multifunction, desc, str(p))
    default = MILInterpreter(p)
    assert default.function_name == "other" and sorted(default.functions) == ["other", "scale"]
    x = f32(np.random.default_rng(0).normal(size=(1, 4, 3)))
    check(list(default.run({"x": x}).values())[0], torch.tanh(torch.from_numpy(x.astype(np.float64))) * 3, "fp32", "other")
    m = load(p, backend="interpreter", function_name="scale")
    x2 = f32(np.random.default_rng(1).normal(size=(2, 8)))
    check(list(m({"x": x2}).values())[0], Scale()(torch.from_numpy(x2.astype(np.float64))), "fp32", "scale")
    with pytest.raises(Exception, match="no function 'nope'.*functions: "):
        MILInterpreter(p, function_name="nope")
    info = package_info(p, function_name="scale")
    assert info["function"] == "scale" and info["inputs"][0]["shape"] == [2, 8]


# ---------------------------------------------------------------------------------------- images

class ChannelMean(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


@pytest.mark.parametrize("layout", ["RGB", "BGR", "GRAYSCALE"])
def test_image_input(layout, tmp_path):
    """ImageType(scale=1/255, bias=-0.5 (per channel for colour)): a PIL image and a uint8 array
    give the channel means Core ML's preprocessing gives, channels in the layout's order."""
    from PIL import Image

    c = 1 if layout == "GRAYSCALE" else 3
    bias = [-0.5, -0.25, 0.0] if c == 3 else -0.5
    p = _convert(ChannelMean(), torch.rand(1, c, 6, 7),
                 [ct.ImageType(name="img", shape=(1, c, 6, 7), scale=1 / 255.0, bias=bias,
                               color_layout=getattr(ct.colorlayout, layout))], tmp_path / f"img_{layout}.mlpackage")
    rgb = np.random.default_rng(3).integers(0, 256, (6, 7, 3)).astype(np.uint8)
    m = load(p, backend="interpreter")
    if c == 3:
        chans = rgb.astype(np.float64)[..., ::-1] if layout == "BGR" else rgb.astype(np.float64)
    else:
        chans = np.asarray(Image.fromarray(rgb).convert("L"), np.float64)[..., None]
    want = (chans / 255.0).mean((0, 1)) + np.asarray(bias)
    for img in (Image.fromarray(rgb), rgb if c == 3 else np.asarray(Image.fromarray(rgb).convert("L"))):
        (got,) = m({"img": img}).values()
        np.testing.assert_allclose(got.astype(np.float64).ravel(), want, rtol=1e-5, atol=1e-6)
    assert package_info(p)["inputs"][0]["image"] == layout
    with pytest.raises(InputError, match="image input 'img'"):
        m({"img": rgb.astype(np.float32)})


def test_image_output(tmp_path):
    class Invert(torch.nn.Module):
        def forward(self, x):
            return 255.0 - x

    ts = torch.jit.trace(Invert().eval(), torch.rand(1, 3, 4, 5))
    p = tmp_path / "inv.mlpackage"
    _quiet(ct.convert, ts, inputs=[ct.ImageType(name="img", shape=(1, 3, 4, 5))],
           outputs=[ct.ImageType(name="out", color_layout=ct.colorlayout.RGB)], convert_to="mlprogram",
           minimum_deployment_target=ct.target.iOS16, skip_model_load=True).save(str(p))
    rgb = np.random.default_rng(4).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    out = load(p, backend="interpreter")({"img": rgb})["out"]
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, 255 - rgb)


# ----------------------------------------------------------------------------- control flow, lists

@precisions
def test_cond(precision, tmp_path):
    x = f32(np.random.default_rng(0).normal(size=(3, 4)))
    for flag in (1, 0):
        def build(x, flag):
            return mb.cond(pred=mb.squeeze(x=mb.cast(x=flag, dtype="bool")),
                           _true_fn=lambda: mb.mul(x=x, y=2.0), _false_fn=lambda: mb.exp(x=x))

        (got,) = run_mil(tmp_path, build, {"x": x, "flag": np.int32([flag])}, precision, "cond")
        t = torch.from_numpy((x.astype(np.float16) if precision == "fp16" else x).astype(np.float64))
        check(got, t * 2 if flag else torch.exp(t), precision, f"cond {flag}")


@precisions
def test_while_loop(precision, tmp_path):
    """x doubled while i < n (n an input): the loop runs n times."""
    x = f32(np.random.default_rng(1).normal(size=(2, 3)))
    for n in (0, 3):
        def build(x, n):
            def cond(i, v):
                return mb.less(x=i, y=mb.squeeze(x=n))

            def body(i, v):
                return mb.add(x=i, y=1), mb.mul(x=v, y=2.0)

            return list(mb.while_loop(_cond=cond, _body=body, loop_vars=(np.int32(0), x)))

        i, got = run_mil(tmp_path, build, {"x": x, "n": np.array([n], np.int32)}, precision, "while_loop")
        assert int(np.asarray(i)) == n
        t = torch.from_numpy((x.astype(np.float16) if precision == "fp16" else x).astype(np.float64))
        check(got, t * 2 ** n, precision, f"while n={n}")


@precisions
def test_list_ops(precision, tmp_path):
    """A list written in a loop (element k = x * k), read, gathered, scattered and measured."""
    x = f32(np.random.default_rng(2).normal(size=(2, 3)))

    def build(x):
        ls = mb.make_list(init_length=1, dynamic_length=True, elem_shape=(2, 3), dtype="fp32")

        def cond(i, ls):
            return mb.less(x=i, y=4)

        def body(i, ls):
            return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=mb.mul(x=x, y=mb.cast(x=i, dtype="fp32")))

        _, ls = mb.while_loop(_cond=cond, _body=body, loop_vars=(np.int32(0), ls))
        ls = mb.list_scatter(ls=ls, indices=np.int32([0, 5]), value=mb.stack(values=[x, mb.mul(x=x, y=-1.0)], axis=0))
        return [mb.list_read(ls=ls, index=2), mb.list_gather(ls=ls, indices=np.int32([5, 3, 0])),
                mb.list_length(ls=ls)]

    read, gathered, length = run_mil(tmp_path, build, {"x": x}, precision, "list_write", expect_fp16=False)
    t = torch.from_numpy((x.astype(np.float16) if precision == "fp16" else x).astype(np.float64))
    check(read, t * 2, precision, "list_read")
    check(gathered, torch.stack([-t, t * 3, t]), precision, "list_gather")
    assert int(np.asarray(length)) == 6


def test_builtins_are_what_the_coverage_doc_counts():
    from tlc.runtime.mil_interpreter import BUILTINS

    assert set(BUILTINS) == INTERPRETER_BUILTINS
