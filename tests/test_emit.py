"""MIL emission and package writing: pass pipeline, deployment targets, names, atomic saves."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tlc
from tlc.backends.coreml.emit import TLC_PIPELINE, to_mil_program


def attn(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


QKV = tuple(torch.randn(1, 2, 4, 8) for _ in range(3))


def mil_ops(prog):
    return [op.op_type for op in prog.functions["main"].operations if op.op_type != "const"]


def test_precision_is_decided_by_tlc_not_coremltools(tmp_path):
    """coremltools' add_fp16_cast is not in the pipeline (it would cast fp32 islands too); an fp16
    package still computes in fp16 because tlc's IR says so."""
    from coremltools.converters.mil.mil import types

    assert "common::add_fp16_cast" not in TLC_PIPELINE
    cm = tlc.build(attn, QKV, precision="fp16")
    prog = to_mil_program(cm.emit_graph)
    dts = {types.builtin_to_string(op.outputs[0].dtype) for op in prog.functions["main"].operations
           if op.op_type not in ("const", "cast")}
    assert dts == {"fp16"}
    assert to_mil_program(tlc.build(attn, QKV, precision="fp32").emit_graph).functions["main"].inputs["q"].dtype == types.fp32


@pytest.mark.parametrize("target,expect", [("iOS17", "softmax"), ("iOS18", "scaled_dot_product_attention")])
def test_sdpa_by_deployment_target(target, expect):
    cm = tlc.build(attn, QKV, minimum_deployment_target=target, skip_passes=["layout::ane_transformer"])
    ops = mil_ops(to_mil_program(cm.graph, target))
    assert expect in ops
    if target == "iOS17":
        assert "scaled_dot_product_attention" not in ops


def test_unknown_target_and_precision():
    with pytest.raises(tlc.EmitError, match="minimum_deployment_target"):
        tlc.build(attn, QKV, minimum_deployment_target="iOS99")
    with pytest.raises(tlc.InputError, match="precision"):
        tlc.build(attn, QKV, precision="int8")


def test_mil_op_names_follow_ir_nodes(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
    cm = tlc.build(m, (torch.randn(2, 4),))
    prog = to_mil_program(cm.graph)
    names = {op.name for op in prog.functions["main"].operations}
    ir_names = {n.name for n in cm.graph.nodes if n.op != "const"}
    assert ir_names - {cm.graph.outputs[0].name} <= names


def test_atomic_save_and_force(tmp_path):
    import coremltools as ct

    cm = tlc.build(attn, QKV)
    out = tmp_path / "a.mlpackage"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(tlc.OutputExistsError, match="already exists"):
        cm.save(out)
    assert (out / "keep.txt").read_text() == "user data"
    cm.save(out, force=True)
    assert not (out / "keep.txt").exists()
    m = ct.models.MLModel(str(out), skip_model_load=True)
    assert m.user_defined_metadata["tlc.version"] == tlc.__version__
    assert m.user_defined_metadata["tlc.source"].endswith("test_emit.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mlpackage"]  # no temp dirs left


def test_failed_save_writes_nothing(tmp_path):
    cm = tlc.build(attn, QKV)
    with pytest.raises(tlc.EmitError, match=r"\.mlpackage"):
        cm.save(tmp_path / "model.bin")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(tlc.EmitError):
        cm.save(blocker / "sub" / "m.mlpackage")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bool_io_is_int32_in_package(tmp_path):
    cm = tlc.build(lambda x, m: (x * m, m & (x > 0)), (torch.randn(3), torch.tensor([True, False, True])))
    from coremltools.converters.mil.mil import types

    prog = to_mil_program(cm.graph)
    f = prog.functions["main"]
    assert types.builtin_to_string(f.inputs["m"].dtype) == "int32"
    assert [types.builtin_to_string(o.dtype) for o in f.outputs] == ["fp32", "int32"]
    out = cm(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([True, True, False]))
    assert out[1].dtype == torch.bool and out[1].tolist() == [True, False, False]
    np.testing.assert_allclose(out[0].numpy(), [1.0, -2.0, 0.0])


def test_flip_emits_reverse_and_runs_in_interpreter(tmp_path):
    from tlc.runtime import MILInterpreter

    x = torch.randn(2, 3, 4)
    cm = tlc.build(lambda x: torch.flip(x, (0, 2)) * 2, (x,), precision="fp32")
    assert "reverse" in mil_ops(to_mil_program(cm.graph))
    out = MILInterpreter(cm.save(tmp_path / "f.mlpackage")).run({"x": x.numpy()})
    np.testing.assert_allclose(out["output"], (torch.flip(x, (0, 2)) * 2).numpy(), rtol=1e-6)


def test_serialization_matches_ct_convert(tmp_path):
    """tlc's emission runs coremltools' passes and milproto backend itself (no ct.convert); the
    package must be what ct.convert(prog, pass_pipeline=TLC_PIPELINE) writes: same spec (metadata
    aside: conversion date) and the same weight file, byte for byte."""
    import coremltools as ct

    from tlc.backends.coreml.emit import convert
    from tlc.util.coreml import resolve_target

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10), torch.nn.LayerNorm(10)).eval()
    cm = tlc.build(m, (torch.randn(1, 3, 8, 8),))
    g = cm.emit_graph
    ours, info = convert(g, "mixed", "iOS17")
    assert info.build_mil_s > 0 and info.mil_passes_s > 0 and info.serialize_s > 0
    theirs = ct.convert(to_mil_program(g, "iOS17"), convert_to="mlprogram",
                        minimum_deployment_target=resolve_target("iOS17"), compute_precision=ct.precision.FLOAT32,
                        pass_pipeline=ct.PassPipeline(pass_names=list(TLC_PIPELINE), pipeline_name="tlc"),
                        skip_model_load=True)
    a, b = ours.get_spec(), theirs.get_spec()
    assert {k for k in b.description.metadata.userDefined} <= {k for k in a.description.metadata.userDefined}
    a.description.metadata.Clear()
    b.description.metadata.Clear()
    assert a.SerializeToString() == b.SerializeToString()
    ours.save(str(tmp_path / "a.mlpackage"))
    theirs.save(str(tmp_path / "b.mlpackage"))
    wa = sorted((tmp_path / "a.mlpackage").rglob("weight.bin"))
    wb = sorted((tmp_path / "b.mlpackage").rglob("weight.bin"))
    assert len(wa) == len(wb) == 1 and wa[0].read_bytes() == wb[0].read_bytes()


def test_deployment_target_table_is_coremltools_own():
    """tlc checks and orders ``minimum_deployment_target`` names from a copy of coremltools'
    ``AvailableTarget`` (so deciding options imports no coremltools); the copy must not drift."""
    import coremltools as ct

    from tlc.util.coreml import DEPLOYMENT_TARGETS, SPEC_VERSIONS, resolve_target, target_name

    assert SPEC_VERSIONS == {n: m.value for n, m in ct.target.__members__.items()}
    for name in SPEC_VERSIONS:
        assert resolve_target(name) == getattr(ct.target, name)
        assert getattr(ct.target, target_name(name)) == getattr(ct.target, name)
    assert set(DEPLOYMENT_TARGETS) <= set(SPEC_VERSIONS)
    assert target_name("macOS14") == "iOS17" and target_name(ct.target.iOS18) == "iOS18"
