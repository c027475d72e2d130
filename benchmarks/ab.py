"""A/B: run one benchmark script on two trees of tlc, side by side in one run.

The base tree is ``git archive REV`` unpacked in a temp directory, made importable as ``tlc`` with
a folder of links laid out as pyproject.toml's package-dir says (``compiler/`` is ``tlc``,
``passes/`` is ``tlc.passes``, ``runtime/`` is ``tlc.runtime``) and put first on ``PYTHONPATH``;
the head is the working tree as installed, or another revision checked out the same way (``--head``). Each tree runs *its own* copy of the script (a refactor
may change the script's imports too), one model per process, alternating base and head model by
model so that drift in the machine's speed hits both alike; ``--same-script`` runs the head's copy on
both trees instead (a new script, or one that must measure both the same way: it may then use only
what both trees have). Each side's ``PYTHONPATH`` is its tree first, then the caller's (packages a
benchmark needs from elsewhere, e.g. the ``bench`` extra installed with ``pip --target``). Every
script must take ``--models A``
and ``--json FILE`` (a list of row dicts with a ``model`` key): ``bench_passes.py`` and
``bench_spine.py`` do.

Printed per model and column: both values, and for a time (a column ``*_s`` or ``t_*``, or a ratio
of times) the ratio head / base, for anything else (op counts, sizes, errors) ``=`` or ``DIFF``. Exit code 1 when
anything but a time differs.

Run::

    python benchmarks/ab.py --base HEAD~3 --models resnet50,mobilenetv2 bench_passes.py
    python benchmarks/ab.py --base main --models bert,gpt2 --rounds 2 bench_spine.py --check
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: pyproject.toml's package-dir: source folder -> where it sits inside the ``tlc`` package
LAYOUT = {"compiler": "", "passes": "passes", "runtime": "runtime"}


def checkout(rev: str, dest: Path) -> Path:
    """``rev``'s tree unpacked under ``dest/tree`` and an import folder ``dest/site`` whose ``tlc``
    is that tree's package; returns the site folder."""
    data = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    tree = dest / "tree"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tree, filter="data")
    pkg = dest / "site" / "tlc"
    pkg.mkdir(parents=True)
    for entry in (tree / "compiler").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for folder, inside in LAYOUT.items():
        if inside:
            (pkg / inside).symlink_to(tree / folder)
    return dest / "site"


def run(tree: Path, script: str, model: str, args: list[str], site: Path | None, out: Path,
        script_tree: Path | None = None) -> list[dict]:
    """One process: ``tree``'s own ``benchmarks/SCRIPT --models MODEL --json OUT ARGS`` (``script_tree``'s
    copy of the script when given), with ``site`` (the tree's ``tlc``) first on ``PYTHONPATH``."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, str((script_tree or tree) / "benchmarks" / script), "--models", model, "--json", str(out),
           *args]
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode not in (0, 1) or not out.is_file():
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(out.read_text())


def timed(column: str) -> bool:
    """Whether a column is a time or a ratio of times (``*_s``, ``t_*``, ``*ratio``): compared by ratio."""
    return column.endswith("_s") or column.startswith("t_") or column.endswith("ratio")


def compare(base: dict, head: dict) -> tuple[list[str], bool]:
    """Lines ``column  base  head  verdict`` for the columns both rows have, and whether every
    column that is not a time is equal."""
    lines, same = [], True
    for k in base:
        if k == "model" or k not in head:
            continue
        a, b = base[k], head[k]
        if timed(k) and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            verdict = f"x{b / a:.2f}" if a else "-"
        else:
            verdict = "=" if a == b else "DIFF"
            same &= a == b
        fa = f"{a:.3f}" if isinstance(a, float) else str(a)
        fb = f"{b:.3f}" if isinstance(b, float) else str(b)
        lines.append(f"  {k:<22} {fa[:40]:>14} {fb[:40]:>14}  {verdict}")
    return lines, same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision of the base tree")
    ap.add_argument("--head", help="git revision of the head tree (default: the working tree as installed)")
    ap.add_argument("--models", required=True, help="comma-separated models, one process each per tree")
    ap.add_argument("--rounds", type=int, default=1, help="runs per model and tree (times: the median is shown)")
    ap.add_argument("--same-script", action="store_true", help="run the head tree's copy of the script on both trees")
    ap.add_argument("script", help="a script in benchmarks/ of both trees (bench_passes.py, bench_spine.py)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="more arguments for the script")
    a = ap.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="tlc-ab-") as tmp:
        tmp = Path(tmp)
        site = checkout(a.base, tmp / "base")
        head = (tmp / "head" / "tree", checkout(a.head, tmp / "head")) if a.head else (ROOT, None)
        sides = {"base": (tmp / "base" / "tree", site), "head": head}
        print(f"{a.script} {' '.join(a.args)}: base = {a.base}, head = {a.head or 'the working tree'}; {a.rounds} "
              f"round(s), alternating per model; python {sys.version.split()[0]}")
        for model in [m for m in a.models.split(",") if m]:
            rows: dict[str, list[dict]] = {"base": [], "head": []}
            for r in range(a.rounds):
                for side, (tree, s) in sides.items():
                    print(f"[{model}] round {r + 1}: {side}", file=sys.stderr, flush=True)
                    rows[side] += run(tree, a.script, model, a.args, s, tmp / f"{side}-{model}-{r}.json",
                                      sides["head"][0] if a.same_script else None)
            merged = {}
            for side, rs in rows.items():
                row = dict(rs[0])
                for k, v in row.items():
                    if timed(k) and all(isinstance(x.get(k), (int, float)) for x in rs):
                        row[k] = statistics.median(x[k] for x in rs)
                merged[side] = row
            lines, same = compare(merged["base"], merged["head"])
            ok &= same
            print(f"{model}:  {'column':<20} {'base':>14} {'head':>14}")
            print("\n".join(lines))
    print("everything but times identical" if ok else "DIFFERENCES (see DIFF above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
