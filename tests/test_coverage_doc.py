"""docs/coverage.md is generated from the lowering tables (benchmarks/gen_coverage.py); this test
fails when a lowering was added or changed without regenerating it, so the doc cannot drift."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_coverage_doc_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gen_coverage.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stale_doc_is_detected(tmp_path):
    doc = tmp_path / "coverage.md"
    text = (ROOT / "docs" / "coverage.md").read_text()
    doc.write_text(text.replace("| `aten.cumsum.default` |", "| `aten.cumsum.renamed` |"))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gen_coverage.py"), "--check", "-o", str(doc)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "stale" in r.stdout and "cumsum" in r.stdout
