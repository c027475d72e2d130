"""Every MIL op tlc's MIL interpreter supports is tested against torch: the per-op tests live in
tests/test_mil_*.py (method and tolerances: tests/milcheck.py), each listing the ops it tests in
``COVERED`` (or ``INTERPRETER_ONLY`` for rows only the interpreter has); this file checks that
together they cover every row."""
from __future__ import annotations

import importlib

import tlc

#: the files of per-op tests, each with a ``COVERED`` set of the MIL ops it tests
PER_OP_TESTS = ("test_mil_elementwise", "test_mil_data_movement", "test_mil_norm_linalg", "test_mil_conv_pool",
                "test_mil_ops_extra", "test_mil_ops_index")


#: IR ops with no MIL op of that name: emitted as several MIL ops (each covered above) and tested
#: end to end elsewhere (rms_norm: tests/test_rms_norm.py; group_norm: tests/test_one_package.py,
#: tests/test_lowerings.py).
IR_ONLY = {"rms_norm", "group_norm"}

#: test modules that each define ``INTERPRETER_ONLY``, the interpreter-only rows they test
INTERPRETER_ONLY_TESTS = ("test_mil_ops_extra", "test_mil_compression", "test_mil_recurrent", "test_mil_resize",
                         "test_mil_ops_more")


def test_every_interpreter_op_is_covered():
    COVERED = set().union(*(importlib.import_module(m).COVERED for m in PER_OP_TESTS))
    # the files that test interpreter-only rows (compiler/ops/mil_only.py, compression.py, ...)
    INTERPRETER_ONLY = set().union(*(importlib.import_module(m).INTERPRETER_ONLY for m in INTERPRETER_ONLY_TESTS))

    mil_ops = {name for name, row in tlc.ops.OPS.items() if row.emit_mil is not None}  # not fallback-only ops
    missing = mil_ops - {"const"} - IR_ONLY - COVERED
    interpreter_only = {name for name, row in tlc.ops.OPS.items() if row.interpreter_only}
    assert interpreter_only == INTERPRETER_ONLY, f"untested interpreter-only rows: {sorted(interpreter_only - INTERPRETER_ONLY)}"
    assert not missing, f"MIL ops the interpreter supports but no test file tests: {sorted(missing)}"
