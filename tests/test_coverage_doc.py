"""docs/coverage.md is generated from the lowering tables (benchmarks/gen_coverage.py); this test
fails when a lowering was added or changed without regenerating it, so the doc cannot drift."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gen_coverage as gen  # noqa: E402


def test_coverage_doc_is_current():
    # a fresh process: the table is read from the lowering functions' code and closures as a
    # plain import of tlc leaves them (the test session's imports would add to them)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gen_coverage.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stale_doc_is_detected(tmp_path, capsys, monkeypatch):
    """The checker itself, against the committed doc as what the code generates (no second
    16-second generation)."""
    text = (ROOT / "docs" / "coverage.md").read_text()
    monkeypatch.setattr(gen, "rows", lambda: [])
    monkeypatch.setattr(gen, "markdown", lambda rs, opinfo: text)
    doc = tmp_path / "coverage.md"
    doc.write_text(text)
    assert gen.check(doc) == 0
    doc.write_text(text.replace("| `aten.cumsum.default` |", "| `aten.cumsum.renamed` |"))
    assert gen.check(doc) == 1
    out = capsys.readouterr().out
    assert "stale" in out and "cumsum" in out
