"""Generate docs/coverage.md from the code: every ATen op tlc's front-end knows, how it lowers.

The table is derived from the lowering registries themselves, so it cannot drift from them:

* :data:`tlc.frontend.aten.LOWERINGS` (ATen op -> lowering function) and
  :data:`tlc.frontend.aten_complex.COMPLEX_LOWERINGS` / ``PARTWISE`` (complex values as real pairs);
* for each lowering, the IR ops it can emit are read from its code: string literals passed to
  ``L.add(...)`` / ``L.cast(...)`` in its body, op names held in its closure (lowerings made by
  factories such as ``_binary("add")``), and the same for every tlc front-end function it calls,
  recursively; the messages of the ``UnsupportedOpError`` it can raise are the cases that still
  go to the fallback runtime (the front-end keeps the torch op then);
* every IR op row says whether MIL has it (``emit_mil``); fallback-only rows with a NumPy kernel
  (:mod:`tlc.ops.fallback`) are listed with their reason; every other torch op runs as itself in
  tlc's fallback runtime.

With ``--opinfo FILE`` (the ``--json`` output of ``benchmarks/bench_opinfo.py``) the measured
OpInfo results are appended.

Run::

    python benchmarks/gen_coverage.py [--opinfo opinfo.json] [-o docs/coverage.md]
    python benchmarks/gen_coverage.py --check      # tests/test_coverage_doc.py: the doc is current
"""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import textwrap
from pathlib import Path

TRIVIAL = {"cast", "identity", "reshape", "expand_dims", "squeeze", "const"}


def _frontend_modules():
    """Every module of tlc.frontend (where a helper imported inside a lowering is looked up)."""
    import importlib
    import pkgutil

    import tlc.frontend

    return [importlib.import_module(f"tlc.frontend.{m.name}") for m in pkgutil.iter_modules(tlc.frontend.__path__)]


def _render(node) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "…" for v in node.values)
    return "…"


def _dynamic(tree, glb) -> bool:
    """Whether the code emits an op whose name is not a literal: ``X.add(op, ...)``, or a local
    builder (``e(f[trig], ...)``: a called name that is not a module-level function)."""
    def emitter(f):
        return (isinstance(f, ast.Attribute) and f.attr == "add") or (isinstance(f, ast.Name) and f.id not in glb
                                                                        and f.id not in dir(__builtins__))
    return any(isinstance(n, ast.Call) and emitter(n.func) and n.args and not isinstance(n.args[0], ast.Constant)
               for n in ast.walk(tree))


def _is_dynamic(fn) -> bool:
    try:
        return _dynamic(ast.parse(textwrap.dedent(inspect.getsource(fn))), getattr(fn, "__globals__", {}))
    except (OSError, TypeError, SyntaxError):
        return False


def analyze(fn, seen=None) -> tuple[set[str], list[str]]:
    """(IR ops ``fn`` can emit, messages of the UnsupportedOpError it can raise), recursively
    through the tlc front-end functions it calls and the op names in its closure (interpreter-only
    rows are MIL ops the front-end never emits: a string such as ``"shape"`` is not one of them)."""
    from tlc.ops import OPS as ALL

    OPS = {k: v for k, v in ALL.items() if not v.interpreter_only}

    seen = set() if seen is None else seen
    if fn in seen:
        return set(), []
    seen.add(fn)
    ops: set[str] = set()
    declines: list[str] = []
    mods = _frontend_modules()
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        if isinstance(v, str) and v in OPS:
            ops.add(v)
        elif callable(v) and getattr(v, "__module__", "").startswith("tlc.frontend"):
            o, d = analyze(v, seen)
            ops |= o
            declines += d
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return ops, declines
    glb = getattr(fn, "__globals__", {})
    if _dynamic(tree, glb):  # L.add(op, ...) with op chosen in the body: the op names written there
        ops |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and n.value in OPS and "." not in n.value}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                    and node.args[0].value in OPS and "." not in node.args[0].value:
                ops.add(node.args[0].value)  # L.add("op", ...) and builder helpers e("op", ...), b("op", ...)
            if isinstance(f, ast.Attribute) and f.attr == "cast":
                ops.add("cast")
            elif isinstance(f, ast.Name):
                target = glb.get(f.id)
                if target is None:  # imported inside the function
                    for m in mods:
                        target = getattr(m, f.id, None)
                        if target is not None:
                            break
                if callable(target) and getattr(target, "__module__", "").startswith("tlc.frontend"):
                    o, d = analyze(target, seen)
                    ops |= o
                    declines += d
                    if _is_dynamic(target):  # a helper that emits the op it is given: _draw(L, "random_normal")
                        ops |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                                and a.value in OPS and "." not in a.value}
        elif isinstance(node, ast.ImportFrom):
            continue
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            f = node.exc.func
            if isinstance(f, ast.Name) and f.id == "UnsupportedOpError" and node.exc.args:
                declines.append(_render(node.exc.args[0]))
    return ops, declines


def rows() -> list[dict]:
    from tlc.frontend.common import LOWERINGS
    from tlc.frontend.aten_complex import COMPLEX_LOWERINGS, PARTWISE, _MULTI, _SPLIT
    from tlc.frontend.export import KEEP
    from tlc.ops import OPS

    out = []
    keep = {str(op) for op in KEEP}
    for key in sorted(LOWERINGS):
        fn = LOWERINGS[key]
        ops, declines = analyze(fn)
        ops = {o for o in ops if o != "const"}
        core = sorted(o for o in ops if o not in TRIVIAL) or sorted(ops)
        not_mil = sorted(o for o in ops if OPS[o].emit_mil is None)
        kind = "MIL op" if len(core) == 1 else "MIL decomposition"
        doc = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        pair = key in COMPLEX_LOWERINGS or key in PARTWISE or key in _MULTI or key in _SPLIT
        out.append({"aten": key, "status": "fallback" if not_mil else kind, "mil_ops": sorted(ops), "core": core,
                    "declines": sorted(set(declines)), "doc": doc, "kept": key in keep, "complex": pair})
    for key in sorted(set(COMPLEX_LOWERINGS) - set(LOWERINGS)):
        fn = COMPLEX_LOWERINGS[key]
        ops, declines = analyze(fn)
        doc = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        out.append({"aten": key, "status": "MIL decomposition (complex as real/imag pairs)",
                    "mil_ops": sorted(o for o in ops if o != "const"), "core": sorted(ops - TRIVIAL),
                    "declines": sorted(set(declines)), "doc": doc, "kept": False, "complex": True})
    for name, row in sorted(OPS.items()):
        if row.emit_mil is None and "." in name:
            why = row.ane([], [], {}) or ""
            out.append({"aten": name, "status": "fallback kernel (complex / data-dependent inputs)"
                        if name in LOWERINGS or name in COMPLEX_LOWERINGS else "fallback (NumPy kernel)",
                        "mil_ops": [], "core": [], "declines": [],
                        "doc": (row.doc or "").split("\n\n")[0].replace("\n", " "), "why": why, "kept": False,
                        "complex": False})
    return out


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(rs: list[dict], opinfo: dict | None) -> str:
    n_mil = sum(1 for r in rs if r["status"].startswith("MIL"))
    n_fb = sum(1 for r in rs if r["status"].startswith("fallback"))
    lines = [
        "# Op coverage",
        "",
        "Generated by `python benchmarks/gen_coverage.py"
        + (" --opinfo opinfo.json" if opinfo else "") + "` from tlc's lowering tables: do not edit by hand.",
        "",
        "Order of preference (../shared/design.md): one MIL op; else a short decomposition into MIL ops; only",
        "what MIL cannot express goes to tlc's fallback runtime, and the build says so (`tlc build` prints",
        "whether the result is one `.mlpackage`; `--no-fallback` makes any fallback op an error).",
        "",
        f"- ATen ops with a lowering to MIL: **{n_mil}** (one op or a decomposition; some decline particular",
        "  arguments, listed in the last column, and then that node runs in the fallback runtime)",
        f"- fallback-only ops with a NumPy kernel: **{n_fb}**; every other torch op (ATen or `torch.library`)",
        "  runs as the torch op itself in tlc's fallback runtime (the report names it with its source line)",
        "- complex values (FFT, `stft`, complex arithmetic) are lowered as real/imaginary pairs when the",
        "  model's outputs are real (marked `pair`); data-dependent shapes (`nonzero`, boolean-mask indexing,",
        "  `unique`) stay in the fallback runtime",
        "",
    ]
    if opinfo:
        lines += ["## PyTorch OpInfo samples", "",
                  "Measured with `python benchmarks/bench_opinfo.py --json opinfo.json` "
                  f"({opinfo.get('date', '')}; {opinfo.get('seconds', '?')} s): the first float32 sample of every "
                  "OpInfo entry whose arguments are tensors/scalars, built with `precision=\"fp32\"`, saved, "
                  "reloaded with `tlc.runtime.load` and run, compared with torch eager (rtol 1e-4, atol 1e-5).", "",
                  opinfo["markdown"], ""]
    lines += ["## ATen ops", "",
              "| ATen op | lowers to | MIL ops used | falls back when | rule |", "|---|---|---|---|---|"]
    for r in rs:
        status = r["status"] + (" · pair" if r["complex"] and "pair" not in r["status"] else "")
        if r["kept"]:
            status += " · kept from torch's decompositions"
        ops = ", ".join(f"`{o}`" for o in r["mil_ops"])
        dec = "; ".join(r["declines"]) if r["declines"] else ""
        if "why" in r:
            dec = r["why"]
        lines.append(f"| `{r['aten']}` | {status} | {ops} | {_md_escape(dec)} | {_md_escape(r['doc'][:160])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--opinfo", help="bench_opinfo.py --json output to include")
    ap.add_argument("--check", action="store_true", help="exit 1 if the doc's ATen table is stale; write nothing")
    ap.add_argument("-o", "--output", default=str(Path(__file__).resolve().parent.parent / "docs" / "coverage.md"))
    a = ap.parse_args(argv)
    opinfo = None
    if a.opinfo:
        from bench_opinfo import summarize

        d = json.loads(Path(a.opinfo).read_text())
        opinfo = {**summarize(d["rows"]), "seconds": d.get("seconds"), "date": d.get("date", "")}
    if a.check:
        return check(Path(a.output))
    Path(a.output).write_text(markdown(rows(), opinfo))
    print(f"wrote {a.output}")
    return 0


def check(path: Path) -> int:
    """0 when the ATen-op table in ``path`` is what the code generates now, else 1 (with the first
    differing line); the measured OpInfo section is not regenerated (it needs a 10-minute run)."""
    marker = "## ATen ops"
    want = markdown(rows(), None).split(marker, 1)[1]
    have = path.read_text().split(marker, 1)[1] if marker in path.read_text() else ""
    if have == want:
        print(f"{path}: up to date")
        return 0
    for i, (h, w) in enumerate(zip(have.splitlines() + [""] * 10**4, want.splitlines())):
        if h != w:
            print(f"{path} is stale (rerun benchmarks/gen_coverage.py): table line {i + 1}\n  doc:  {h[:200]}\n"
                  f"  code: {w[:200]}")
            break
    else:
        print(f"{path} is stale: it has {len(have.splitlines())} table lines, the code gives {len(want.splitlines())}")
    return 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
