"""docs/interpreter-coverage.md is generated from coremltools' op registry and tlc's op table
(benchmarks/gen_interpreter_coverage.py); this test fails when a kernel was added without
regenerating it, or when a coremltools upgrade registers ops the table does not list."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gen_interpreter_coverage as gen  # noqa: E402


def test_interpreter_coverage_doc_is_current():
    assert gen.DOC.read_text() == gen.render(), "docs/interpreter-coverage.md is stale: run benchmarks/gen_interpreter_coverage.py"


def test_coverage_rows_name_every_registered_op_once():
    rs = gen.rows()
    names = [n for n, _, _ in rs]
    assert len(names) == len(set(names)) and "conv" in names and "lstm" in names
    status = dict((n, s) for n, _, s in rs)
    assert status["conv"].startswith("kernel (shared") and status["prelu"] == "kernel (interpreter only)"
    assert status["while_loop"].startswith("built into")
