"""``tlc run``, ``tlc inspect`` and ``tlc lint``: what a built artifact does and holds. These commands
need only :mod:`tlc.runtime` and :mod:`tlc.check` (no torch, no tracing)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tlc.check.lint import KINDS as LINT_KINDS, lint
from tlc.runtime import BACKENDS, COMPUTE_UNITS, BundleModel, is_bundle, load, package_info
from tlc.runtime.bundle import FALLBACKS
from tlc.runtime.coreai_runtime import CoreAIModel, is_aimodel
from tlc.runtime.generate import LMInfo
from tlc.runtime.mlspec import COMPRESSION_OPS
from tlc.util.coreml import package_size

from .output import human
from .parse import parse_inputs, parse_paddable


def cmd_run(a: argparse.Namespace) -> int:
    m = load(a.package, backend=a.backend, compute_units=a.compute_units, fallback=a.fallback,
             **({"function_name": a.function} if a.function else {}),
             **({"paddable": parse_paddable(a.paddable)} if a.paddable else {}))
    feeds = parse_inputs(a.input or [])
    t0 = time.perf_counter()
    out = m(feeds)
    dt = time.perf_counter() - t0
    fn = getattr(m, "last_function", None)
    print(f"ran {a.package} on {m.backend} in {dt * 1e3:.1f} ms"
          + (f" (function {fn} of {len(m.functions)})" if fn and len(m.functions) > 1 else ""))
    outdir = Path(a.out) if a.out else None
    if outdir:
        outdir.mkdir(parents=True, exist_ok=True)
    for name, arr in out.items():
        if isinstance(arr, dict) or not isinstance(arr, np.ndarray) or arr.dtype == object or arr.dtype.kind in "US":
            _print_classifier_output(name, arr, outdir, a.top)
            continue
        f = arr.astype(np.float64) if arr.dtype.kind == "f" else None
        stats = (f"min {f.min():.4g} max {f.max():.4g} mean {f.mean():.4g} nan/inf {int((~np.isfinite(f)).sum())}"
                 if f is not None and f.size else "")
        line = f"  {name:<24} {arr.dtype.name}{list(arr.shape)}  {stats}"
        if outdir:
            np.save(outdir / f"{name}.npy", arr)
            line += f"  -> {outdir / (name + '.npy')}"
        print(line)
    return 0


def _print_classifier_output(name: str, value, outdir: Path | None, top: int) -> None:
    """A classifier's label (a str or int) or its ``{label: probability}`` dictionary: the label, or
    the ``top`` most probable labels; saved as ``DIR/<name>.json`` with ``--out``."""
    value = value.item() if isinstance(value, np.ndarray) else value
    if isinstance(value, dict):
        best = sorted(value.items(), key=lambda kv: -kv[1])[:top]
        line = f"  {name:<24} {{label: probability}} of {len(value)}, top {len(best)}: " + \
            ", ".join(f"{k} {v:.4f}" for k, v in best)
    else:
        line = f"  {name:<24} {value!r}"
    if outdir:
        (outdir / f"{name}.json").write_text(json.dumps(value, indent=1, default=str) + "\n")
        line += f"  -> {outdir / (name + '.json')}"
    print(line)


#: metadata values longer than this are summarized by ``tlc inspect`` (``--json`` prints them whole)
LONG_VALUE = 120


def summarize(key: str, value: str) -> str:
    """A metadata value as ``tlc inspect`` prints it: whole when short, else summarized: the source
    line table (``tlc.source_lines``) as its op and file counts and first files, JSON by its keys,
    other text by its start and length."""
    if len(value) <= LONG_VALUE:
        return value
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if key == "tlc.source_lines" and isinstance(doc, dict) and "files" in doc:
        files = doc["files"]
        return (f"{len(doc.get('ops', {}))} ops in {len(files)} file(s): " + ", ".join(files[:3])
                + (f", ... (+{len(files) - 3})" if len(files) > 3 else "") + "  [--json shows it whole]")
    if isinstance(doc, dict):
        keys = ", ".join(list(doc)[:6]) + (", ..." if len(doc) > 6 else "")
        return f"JSON with keys {keys} ({len(value)} characters; --json shows it whole)"
    return f"{value[:80]}... ({len(value)} characters; --json shows it whole)"


def _print_io(inputs: list[dict], outputs: list[dict]) -> None:
    for kind, rows in (("input", inputs), ("output", outputs)):
        for r in rows:
            extra = (f"  (value {r['value']})" if "value" in r else "") + (f"  image {r['image']}" if "image" in r else "")
            extra += f"  allowed {r['allowed']}" if "allowed" in r else ""
            kind_of = r["feature"] if "feature" in r else f"{r['dtype']}{r['shape']}"
            print(f"  {kind:<7} {r['name']:<24} {kind_of}{extra}")
            if r.get("description"):
                print(f"  {'':<7} {'':<24} {r['description']}")


def cmd_lint(a: argparse.Namespace) -> int:
    """``tlc lint``: every op breaking an ANE eligibility or efficiency rule (:mod:`tlc.check.lint`);
    exit 1 with ``--fail-on`` when one does, 2 when the package cannot be read."""
    rep = lint(a.package)
    print(rep.text(limit=None if a.all else 40))
    if a.json:
        Path(a.json).write_text(json.dumps(rep.to_json(), indent=1) + "\n")
        print(f"  json    {a.json}")
    return rep.exit_code(a.fail_on)


def _inspect_aimodel(path: Path, as_json: bool) -> int:
    """``tlc inspect`` of a Core AI asset: its function's inputs and outputs (from Apple's runtime),
    size and metadata.json."""
    m = CoreAIModel(path)
    meta = json.loads((path / "metadata.json").read_text()) if (path / "metadata.json").is_file() else {}
    info = {"path": str(path), "format": "aimodel", "functions": m.functions, "size_bytes": package_size(path),
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, (s, d) in m.input_types.items()],
            "outputs": [{"name": n, "shape": list(s), "dtype": d} for n, (s, d) in m.output_types.items()],
            "metadata": meta}
    m.close()
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{path}  (Core AI asset, {meta.get('producer', '?')}, function {', '.join(m.functions)}, "
          f"{human(info['size_bytes'])})")
    for kind, rows in (("input", info["inputs"]), ("output", info["outputs"])):
        for r in rows:
            print(f"  {kind:<7} {r['name']:<24} {r['dtype']}{r['shape']}")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    if is_bundle(a.package):
        return _inspect_bundle(Path(a.package), a.json)
    if is_aimodel(a.package):
        return _inspect_aimodel(Path(a.package), a.json)
    info = package_info(a.package, function_name=a.function)
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}  (mlprogram, spec v{info['specification_version']}, opset {info['opset']}, "
          f"precision {info['precision']}, {human(info['size_bytes'])})")
    if len(info.get("functions", [])) > 1:
        print(f"  functions {len(info['functions'])} (multifunction; default {info['default_function']}):")
        for name, shapes in info["function_inputs"].items():
            print(f"    {'*' if name == info['function'] else ' '} {name:<22} "
                  + ", ".join(f"{k} {v}" for k, v in shapes.items()))
        print(f"  function {info['function']}  (--function NAME shows another)")
    _print_io(info["inputs"], info["outputs"])
    if info["compression"]:
        print("  weights " + ", ".join(f"{n} {COMPRESSION_OPS[k]} ({k})" for k, n in info["compression"].items())
              + (f"  [tlc.compress = {info['metadata']['tlc.compress']}]" if "tlc.compress" in info["metadata"] else ""))
    for st in info.get("states", []):
        print(f"  state   {st['name']:<24} {st['dtype']}{st['shape']}")
    print(f"  ops     {info['num_ops']}  (" + ", ".join(f"{k} {v}" for k, v in info["ops"].items()) + ")")
    if "tlc.lm" in info["metadata"]:
        lm = LMInfo.from_json(info["metadata"]["tlc.lm"])
        print(f"  lm      text generation: max_context {lm.max_context}, prefill {list(lm.prefill_lengths)} + decode, "
              f"cache {lm.kv_cache} {'float16' if lm.kv_cache == 'state' else 'float32'}{list(lm.cache_shape)}, vocab {lm.vocab_size} (tlc generate PKG --prompt-ids ...)")
    if info["classifier"]:
        c = info["classifier"]
        print(f"  classifier  label {c['label']}, probabilities {c['probabilities']} (Core ML classifier: Xcode's "
              f"preview, VNClassificationObservation)")
    for field in ("short_description", "author", "license", "version"):
        if info.get(field):
            print(f"  {'about' if field == 'short_description' else field:<7} {info[field]}")
    for k, v in sorted(info["metadata"].items()):
        print(f"  meta    {k} = {summarize(k, v)}")
    return 0


def _inspect_bundle(path: Path, as_json: bool) -> int:
    m = BundleModel(path, backend="interpreter").manifest  # validates the manifest and segment files
    for e in m["segments"]:
        if e["target"] == "ane" and e["path"].endswith(".aimodel"):
            md = path / e["path"] / "metadata.json"
            e["asset"] = json.loads(md.read_text()) if md.is_file() else {}
        elif e["target"] == "ane":
            e["package"] = package_info(path / e["path"])
    if as_json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{path}  (tlc bundle v{m['version']}, {len(m['segments'])} segments, precision {m['precision']}, "
          f"{m.get('minimum_os') or m['minimum_deployment_target']}, {human(package_size(path))})")
    _print_io(m["inputs"], m["outputs"])
    for e in m["segments"]:
        kind = ("Core AI" if e["path"].endswith(".aimodel") else "Core ML") if e["target"] == "ane" else "tlc fallback"
        print(f"  segment {e['index']:<3} {e['target']:<4} {kind:<13} {e['num_ops']:>4} ops  {e['path']}  "
              f"in: {', '.join(e['inputs'])}  out: {', '.join(e['outputs'])}")
    return 0


def add_parsers(sub) -> None:
    """The ``run``, ``inspect`` and ``lint`` subcommands on ``sub`` (argparse subparsers)."""
    r = sub.add_parser("run", help="run an .mlpackage on .npy inputs (Core ML on macOS, tlc's MIL interpreter elsewhere)",
                       description="Run PKG on named inputs given as .npy files and print (or save) the outputs.")
    r.add_argument("package", help="path to an .mlpackage or a tlc bundle (NAME.tlc)")
    r.add_argument("--input", action="append", metavar="NAME=FILE", help="one per model input: a .npy file, or an image "
                                                                       "file (.png, .jpg, ...) for an image input")
    r.add_argument("--out", metavar="DIR", help="save each output as DIR/<name>.npy (a classifier's label and "
                                                "probabilities as DIR/<name>.json)")
    r.add_argument("--top", type=int, default=5, help="a classifier's most probable labels to print (default 5)")
    r.add_argument("--backend", choices=list(BACKENDS), default="auto")
    r.add_argument("--fallback", default="auto", choices=list(FALLBACKS),
                   help="bundles: where fallback segments run (auto: gpu segments on tlc's torch-device executor "
                        "when a GPU is here, the rest on NumPy)")
    r.add_argument("--compute-units", default="ALL", choices=list(COMPUTE_UNITS),
                   help="Core ML compute units (macOS only)")
    r.add_argument("--function", default=None, help="function of a multifunction package (default: the one whose "
                                                    "input shapes match, else the smallest the inputs fit after padding)")
    r.add_argument("--paddable", action="append", metavar="NAME:AXIS[,AXIS]",
                   help="axes an input may be padded along to fit a function (default: as recorded at build time)")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("inspect", help="show an .mlpackage's inputs, outputs, ops, precision, size, metadata",
                       description="Describe PKG without running it.")
    i.add_argument("package", help="path to an .mlpackage or a tlc bundle (NAME.tlc)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument("--function", default=None, help="function of a multifunction package (default: its default function)")
    i.set_defaults(func=cmd_inspect)

    ln = sub.add_parser("lint", help="list every op of an .mlpackage that breaks an ANE eligibility or efficiency rule",
                        description="Check each op of PKG (any converter's mlprogram, or a tlc bundle's Core ML "
                                    "segments) against tlc's Neural Engine rules (Apple's neural_engine_rules.md and "
                                    "the sources in ane-rules.md): eligibility (the op will not run on the ANE) and "
                                    "efficiency (it runs but breaks a layout rule). Prints a per-rule summary (ops, "
                                    "FLOP share) and each finding with its source line for tlc packages. Exit code: "
                                    "0, or 1 with --fail-on when a rule of that kind (or worse) is broken; 2 for a "
                                    "package that cannot be read.")
    ln.add_argument("package", help="path to an .mlpackage or a tlc bundle (NAME.tlc)")
    ln.add_argument("--fail-on", choices=list(LINT_KINDS), default=None,
                    help="exit 1 if an op breaks an eligibility rule (eligibility) or any rule (efficiency)")
    ln.add_argument("--json", metavar="FILE", help="also write the findings as JSON")
    ln.add_argument("--all", action="store_true", help="list every finding (default: the first 40)")
    ln.set_defaults(func=cmd_lint)


__all__ = ["add_parsers", "cmd_run", "cmd_inspect", "cmd_lint"]
