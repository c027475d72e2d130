"""Issue 28: every artifact ``tlc.runtime.load`` returns speaks one protocol
(:class:`tlc.runtime.protocol.LoadedArtifact`): ``inputs`` / ``outputs`` as ``(name, shape, dtype)``
records, ``functions``, ``__call__(feeds)`` / ``__call__(**named)`` and ``run(feeds)`` — checked on
the five kinds: an ``.mlpackage``, a multifunction ``.mlpackage``, a bundle ``NAME.tlc``, a Core AI
``.aimodel`` and a Core AI bundle ``NAME.aimodel.tlc``. Each is run the way a script written for
another kind would run it (feeding by ``inputs[i].name``) and compared with torch eager."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import tlc
from tlc.check.metrics import rel_l2
from tlc.ops import OPS
from tlc.runtime import load
from tlc.runtime.protocol import IOSpec, LoadedArtifact

coreai = pytest.importorskip("coreai.authoring", reason="the Core AI kinds need coreai-core (the coreai extra)")


class Two(torch.nn.Module):
    """Two inputs, two outputs (one of them 0-d, which a Core ML package holds as [1])."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(16, 16)
        self.b = torch.nn.Linear(16, 8)

    def forward(self, x, y):
        h = torch.sin(self.a(x)) + y
        out = self.b(h)
        return out, out.abs().mean()


def _inputs(batch=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 16, generator=g), torch.randn(batch, 16, generator=g)


def _no_form(monkeypatch, field):
    """``sin`` as if it had no MIL (``emit_mil``) or Core AI (``emit_coreai``) form: it goes to tlc's
    fallback runtime and the artifact becomes a bundle."""
    monkeypatch.setitem(OPS, "sin", dataclasses.replace(OPS["sin"], **{field: None}))


def _build(kind, tmp_path, monkeypatch):
    m = Two().eval()
    x, y = _inputs()
    if kind == "mlpackage":
        path = tlc.build(m, (x, y), precision="fp32").save(tmp_path / "m.mlpackage")
    elif kind == "multifunction":
        x2, y2 = _inputs(8)
        path = tlc.build(m, [(x, y), (x2, y2)], precision="fp32").save(tmp_path / "m.mlpackage")
    elif kind == "bundle":
        _no_form(monkeypatch, "emit_mil")
        path = tlc.build(m, (x, y), precision="fp32").save(tmp_path / "m.mlpackage")
    elif kind == "aimodel":
        path = tlc.build(m, (x, y), precision="fp32", format="aimodel").save(tmp_path / "m.aimodel")
    else:  # a Core AI bundle
        _no_form(monkeypatch, "emit_coreai")
        path = tlc.build(m, (x, y), precision="fp32", format="aimodel").save(tmp_path / "m.aimodel")
    return m, path


KINDS = {"mlpackage": ".mlpackage", "multifunction": ".mlpackage", "bundle": ".tlc", "aimodel": ".aimodel",
         "coreai_bundle": ".tlc"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_artifact_kind_speaks_the_protocol(kind, tmp_path, monkeypatch):
    model, path = _build(kind, tmp_path, monkeypatch)
    assert path.suffix == KINDS[kind], path
    m = load(path)
    assert isinstance(m, LoadedArtifact), type(m)
    # the records: names, shapes and dtypes as the model takes and returns them
    assert all(isinstance(s, IOSpec) and isinstance(s.dtype, np.dtype) for s in m.inputs + m.outputs)
    assert [(s.name, s.shape, s.dtype) for s in m.inputs] == [("x", (4, 16), np.float32), ("y", (4, 16), np.float32)]
    assert m.input_names == ["x", "y"] and len(m.outputs) == 2
    assert m.outputs[0].shape == (4, 8) and m.outputs[0].dtype == np.float32
    if kind != "aimodel" and kind != "coreai_bundle":
        assert m.outputs[1].shape == (), m.outputs[1]  # the 0-d output as the model returns it
    assert sorted(m.functions) == (["x_4x16", "x_8x16"] if kind == "multifunction" else ["main"])
    assert m.output_names == [s.name for s in m.outputs]
    # a script written for another kind: feeds by the records' names, three ways to call
    x, y = _inputs()
    feeds = {m.inputs[0].name: x.numpy(), m.inputs[1][0]: y.numpy()}
    a, b, c = m(feeds), m(**feeds), m.run(feeds)
    assert set(a) == set(m.output_names)
    with torch.no_grad():
        want = [t.numpy() for t in model(x, y)]
    for name, w in zip(m.output_names, want):
        assert rel_l2(a[name], w) <= 1e-5, (kind, name)
        assert np.array_equal(a[name], b[name]) and np.array_equal(a[name], c[name])
    with pytest.raises(tlc.InputError):
        m({"x": x.numpy()})  # y missing
    getattr(m, "close", lambda: None)()
