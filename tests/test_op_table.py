"""The op table: every row is complete; ANE rules give reasons; FLOP estimates."""
import pytest

from tlc.ir import TensorType
from tlc.ops import OPS, get_op
from tlc.ops.fallback import is_fallback

T = TensorType


def test_every_row_is_complete():
    for name, row in OPS.items():
        assert row.name == name
        assert callable(row.infer) and callable(row.numpy) and callable(row.ane) and callable(row.flops)
        # only fallback ops (torch op names, tlc.ops.fallback) lack MIL emission
        assert (row.emit_mil is None and not row.interpreter_only) == is_fallback(name), f"{name}: emit_mil is {row.emit_mil}"
        assert row.numpy.__doc__ or row.doc, f"{name} kernel has no docstring naming its MIL semantics"


def test_ane_rules_give_reasons():
    x = T("fp16", (1, 8, 16, 16))
    w = T("fp16", (8, 8, 3, 3))
    assert get_op("conv").ane([x, w], [x], {"dilations": (1, 1)}) is None
    x32 = T("fp32", (1, 8, 16, 16))
    assert "float16" in get_op("conv").ane([x32, T("fp32", (8, 8, 3, 3))], [x32], {})
    assert "coremltools#2365" in get_op("add").ane([T("int32", (4,))] * 2, [T("int32", (4,))], {})
    reason = get_op("conv").ane([x, w], [x], {"dilations": (2, 2)})
    assert "dilated" in reason and "hollance" in reason
    assert "gather" in get_op("gather").ane([T("fp32", (10, 4)), T("int32", (3,))], [T("fp32", (3, 4))], {})
    six = T("fp32", (1, 2, 2, 2, 2, 2))
    assert "rank 6" in get_op("relu").ane([six], [six], {})
    assert "65536" in get_op("relu").ane([T("fp32", (70000,))], [T("fp32", (70000,))], {})
    assert "kernel" in get_op("max_pool").ane([x], [x], {"kernel_sizes": (15, 15), "strides": (1, 1)})


@pytest.mark.parametrize("op,ins,outs,attrs,flops", [
    ("linear", [T("fp32", (2, 8)), T("fp32", (4, 8))], [T("fp32", (2, 4))], {}, 2 * 2 * 4 * 8),
    ("matmul", [T("fp32", (3, 2, 5)), T("fp32", (5, 7))], [T("fp32", (3, 2, 7))], {}, 2 * 3 * 2 * 7 * 5),
    ("conv", [T("fp32", (1, 4, 8, 8)), T("fp32", (6, 2, 3, 3))], [T("fp32", (1, 6, 6, 6))], {"groups": 2}, 2 * 216 * 18),
    ("add", [T("fp32", (4, 5)), T("fp32", (5,))], [T("fp32", (4, 5))], {}, 20),
    ("reshape", [T("fp32", (4, 5))], [T("fp32", (20,))], {"shape": (20,)}, 0),
])
def test_flops(op, ins, outs, attrs, flops):
    assert get_op(op).flops(ins, outs, attrs) == flops
