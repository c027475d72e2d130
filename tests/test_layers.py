"""Guards that keep tlc's code in one-way layers (docs/design-notes.md, "Layers").

* Every import of one of tlc's own modules — at module level or inside a function, found with
  ``ast`` in the source, not by importing — goes down the layer order (or stays in its layer), and
  never between two sibling groups that must not know each other (the front end and the runtime;
  the backends and the checks).
* tlc's modules form no import cycle (a type-only ``if TYPE_CHECKING:`` import is not one).
* No module outside tests is over :data:`MAX_LINES` lines, but for the exceptions named in
  :data:`LONG_FILES`, each with its reason.

Each check names the offending import (file, line, the two modules and their layers) or file.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package it is installed as (pyproject.toml's package-dir)
PACKAGES = {"compiler": "tlc", "passes": "tlc.passes", "runtime": "tlc.runtime"}

#: the layers, lowest first: ``(name, group, module prefixes)``. A module may import its own layer
#: and the layers below it. Layers with the same ``group`` are siblings at one height: neither
#: imports the other. A prefix matches the module itself and its submodules.
LAYERS = [
    ("base", 0, ("tlc.version", "tlc.errors", "tlc._lazy", "tlc._coreml", "tlc.dtypes")),
    ("ops", 1, ("tlc.ops",)),
    ("ir", 2, ("tlc.ir", "tlc.serialize", "tlc.boundary", "tlc.iospec")),
    ("frontend", 3, ("tlc.frontend",)),
    ("runtime", 3, ("tlc.runtime",)),
    ("passes", 4, ("tlc.passes",)),
    ("util", 5, ("tlc.util",)),
    ("backends", 6, ("tlc.backends",)),
    ("check", 6, ("tlc.check",)),
    ("driver", 7, ("tlc.driver",)),
    ("api", 8, ("tlc.api", "tlc")),
    ("cli", 9, ("tlc.cli",)),
]

#: modules may not be longer than this (design.md: "files over ~500 lines" are an anti-pattern)
MAX_LINES = 500
#: ``{path: reason}`` of the files allowed to be longer
LONG_FILES: dict[str, str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    pkg = PACKAGES[rel.parts[0]]
    parts = list(rel.with_suffix("").parts[1:])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([pkg] + parts)


def sources() -> dict[str, Path]:
    out = {}
    for folder in PACKAGES:
        for p in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" not in p.parts:
                out[module_name(p)] = p
    return out


MODULES = sources()


def layer_of(module: str) -> tuple[int, str, int]:
    """``(index in LAYERS, name, group)`` of the longest prefix that matches ``module``."""
    best = None
    for i, (name, group, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and (best is None or len(pre) > best[0]):
                best = (len(pre), (i, name, group))
    assert best is not None, f"module {module} is in no layer of tests/test_layers.py: add it to LAYERS"
    return best[1]


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported tlc module, line, type-only)`` for every import in ``path``, function-local ones
    included. ``from X import y`` counts as importing ``X.y`` when that is a module, else ``X``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def target(base: str, names: list[str]) -> list[str]:
        return [f"{base}.{n}" if f"{base}.{n}" in MODULES else base for n in names] or [base]

    def visit(node, type_only: bool):
        for child in ast.iter_child_nodes(node):
            tonly = type_only or (isinstance(child, ast.If) and _type_checking(child))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - (child.level - 1)] + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                if base == "tlc" or base.startswith("tlc."):
                    for t in target(base, [a.name for a in child.names]):
                        found.append((t, child.lineno, tonly))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name == "tlc" or a.name.startswith("tlc."):
                        found.append((a.name, child.lineno, tonly))
            visit(child, tonly)

    visit(tree, False)
    return [(t, line, tonly) for t, line, tonly in found if t != module]


def violations() -> list[str]:
    """Every import against the layer order, as ``file:line: A (layer) imports B (layer)``."""
    out = []
    for m, path in MODULES.items():
        i, name, group = layer_of(m)
        for t, line, _ in imports(m, path):
            if t not in MODULES and not any(t.startswith(k + ".") for k in MODULES):
                continue  # not one of tlc's modules (e.g. `from tlc.x import name`: resolved to tlc.x above)
            j, tname, tgroup = layer_of(t)
            if tgroup > group or (tgroup == group and tname != name):
                why = "a higher layer" if tgroup > group else "a sibling layer"
                out.append(f"{path.relative_to(ROOT)}:{line}: {m} ({name}) imports {t} ({tname}): {why}")
    return out


def cycles() -> list[list[str]]:
    """The import cycles among tlc's modules (strongly connected components of more than one
    module, or a module importing itself), type-only imports left out."""
    g = nx.DiGraph()
    g.add_nodes_from(MODULES)
    for m, path in MODULES.items():
        for t, _, type_only in imports(m, path):
            if not type_only and t in MODULES:
                g.add_edge(m, t)
    return [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]


def long_files() -> list[str]:
    out = []
    for folder in ("compiler", "passes", "runtime", "benchmarks", "examples"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            rel = str(p.relative_to(ROOT))
            n = len(p.read_text().splitlines())
            if n > MAX_LINES and rel not in LONG_FILES:
                out.append(f"{rel}: {n} lines (the limit is {MAX_LINES}; split it, or name it in LONG_FILES with a reason)")
    return out


def test_every_module_is_in_a_layer():
    for m in MODULES:
        layer_of(m)


def test_imports_follow_the_layer_order():
    bad = violations()
    assert not bad, "imports against the layer order (docs/design-notes.md, Layers):\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles()
    assert not found, "import cycles among tlc's modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_is_too_long():
    bad = long_files()
    assert not bad, "\n".join(bad)
    stale = [f for f in LONG_FILES if not (ROOT / f).is_file() or len((ROOT / f).read_text().splitlines()) <= MAX_LINES]
    assert not stale, f"LONG_FILES names files that are gone or short now: {stale}"


@pytest.mark.parametrize("source, expected", [
    # a function-local import of a higher layer is caught like a module-level one
    ("def f():\n    from tlc.driver.model import CompiledModel\n", "tlc.driver.model (driver)"),
    ("from ..cli import main\n", "tlc.cli (cli)"),
    ("from tlc.check import metrics\n", "tlc.check.metrics (check)"),  # backends and check are siblings
])
def test_a_wrong_import_is_reported(tmp_path, monkeypatch, source, expected):
    """The checker itself can fail: a backend module that imports the driver, the CLI or a check."""
    fake = ROOT / "compiler" / "backends" / "_layer_probe.py"
    monkeypatch.setitem(MODULES, "tlc.backends._layer_probe", fake)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else _read(self, *a, **k))
    bad = [v for v in violations() if "_layer_probe" in v]
    assert bad and expected in bad[0], bad


def test_a_cycle_is_reported(monkeypatch):
    fake = ROOT / "compiler" / "util" / "_cycle_probe.py"
    monkeypatch.setitem(MODULES, "tlc.util._cycle_probe", fake)
    original = _read(ROOT / "compiler" / "util" / "files.py")
    files = ROOT / "compiler" / "util" / "files.py"

    def read(self, *a, **k):
        if self == fake:
            return "from tlc.util.files import atomic_dir\n"
        if self == files:
            return original + "\nfrom tlc.util._cycle_probe import x\n"
        return _read(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read)
    assert ["tlc.util._cycle_probe", "tlc.util.files"] in cycles()


_read = Path.read_text
