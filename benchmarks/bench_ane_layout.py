"""ANE layout benchmark (issue 16): ``tlc lint`` on full-size transformers before and after
``layout::ane_transformer``, and on coremltools' own conversion of the same model.

For each visible-zoo transformer (BERT-base, DistilBERT, GPT-2, ViT-base, all-MiniLM-L6-v2,
Whisper-base encoder; the builders of ``bench_spine.py``: default configs, random weights except
MiniLM's real ones, nothing downloaded) it builds with ``precision="fp16"`` twice in one run, with
the pass skipped and with it (the layout rules do not depend on the closed loop of ``mixed``),
saves both packages and runs :func:`tlc.check.lint.lint` on them, then converts the model with
coremltools (``torch.jit.trace`` + ``ct.convert(convert_to="mlprogram")``, fp16) and lints that
too where it converts. Printed per model and package: MIL op count, ops breaking an eligibility
rule, ops breaking an efficiency rule, and per efficiency rule the op count and FLOP share.
Goal: no ``linear_bsc`` / ``fused_sdpa`` / ``head_batched_matmul`` / ``rank5`` violation after the pass (alignment
violations remain where the sequence length is not a multiple of 32: ViT's 197, Whisper's 1500).

``--survey`` (issue 29): the public transformer and hybrid architectures of
``survey_models.py`` (timm, torchvision) and the Hugging Face ones above, full size, random
weights, built with ``precision="fp16"`` (the layout does not depend on ``mixed``'s loop) as a
default ``target="ane"`` build of this tree ("after") and, with ``--base REV``, of a checkout of
``REV`` ("before"; ``benchmarks/ab.py``'s checkout), each model in its own process. Counted on
the emitted program (the IR the package is built from; ``tlc build --report``'s figures): per
efficiency rule the ops breaking it and their FLOP share, ``linear`` ops on token tensors
(rank >= 3 input: inside blocks; a classifier head on (B, C) is not counted), rank-5 ops, ops not
predicted on the ANE, transitions (edges between ops on and off the ANE; also with
``io_dtype="float16"``, where no fp32 output cast is needed), ops left to tlc's fallback runtime,
build seconds, and the error of a build that fails.

Run::

    python benchmarks/bench_ane_layout.py [--models bert,gpt2] [--no-coremltools] [--json FILE]
    python benchmarks/bench_ane_layout.py --survey [--base main] [--models vit_b16,swin_t] [--json FILE]
    python benchmarks/bench_ane_layout.py --table FILE [FILE ...]   # the table of saved survey runs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tlc  # noqa: E402
from tlc.check.lint import lint  # noqa: E402

from bench_spine import MODELS  # noqa: E402
from survey_models import HF, SURVEY, make as make_survey, vision  # noqa: E402

ZOO = ["bert", "distilbert", "gpt2", "vit", "minilm", "whisper_enc"]
RULES = ["linear_bsc", "fused_sdpa", "head_batched_matmul", "rank5", "last_axis_alignment"]


def _row(model: str, package: str, rep, seconds: float) -> dict:
    s = {r["rule"]: r for r in rep.summary()}
    row = {"model": model, "package": package, "ops": rep.num_ops, "eligibility": rep.count("eligibility"),
           "efficiency": rep.count("efficiency"), "s": round(seconds, 1)}
    for r in RULES:
        row[r] = f"{s[r]['ops']} ({100 * s[r]['flops_share']:.0f}%)" if r in s else "0"
    return row


def _coremltools(model, example, path: Path):
    import coremltools as ct

    args, kwargs = example
    tensors = list(args) + list(kwargs.values())

    class Positional(torch.nn.Module):  # trace takes positional inputs
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            out = self.m(*xs[:len(args)], **dict(zip(kwargs, xs[len(args):])))
            return out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Positional(model).eval(), tuple(tensors), strict=False)
        inputs = [ct.TensorType(name=f"x{i}", shape=t.shape) for i, t in enumerate(tensors)]
        mlm = ct.convert(traced, inputs=inputs, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17)
    mlm.save(str(path))
    return path


SURVEY_RULES = RULES


def survey_one(name: str) -> dict:
    """One survey model built by the ``tlc`` on ``sys.path`` (fp16, target ane); its row."""
    vision()  # torchvision on the path breaks transformers' import of it unless its op schemas exist
    torch.manual_seed(0)
    model, example = MODELS[name]() if name in MODELS else make_survey(name)
    model.eval()
    row = {"model": name}
    t0 = time.perf_counter()
    try:
        cm = tlc.build(model, example, precision="fp16")
        rep = cm.report()
        g = cm.emit_graph
    except Exception as e:  # noqa: BLE001 - a failed build is a result here
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
        return row
    row["s"] = round(time.perf_counter() - t0, 1)
    eff = {r["rule"]: r for r in rep.efficiency()}
    for r in SURVEY_RULES:
        row[r] = f"{eff[r]['ops']} ({100 * eff[r]['flops_share']:.0f}%)" if r in eff else "0"
    nodes = [n for n in g.nodes if n.op != "const"]
    row["block_linear"] = sum(n.op == "linear" and n.inputs[0].type.rank >= 3 for n in nodes)
    row["rank5_ops"] = sum(any(v.type.rank == 5 for v in list(n.inputs) + list(n.outputs)) for n in nodes)
    row["rank6_ops"] = sum(any(v.type.rank > 5 for v in list(n.inputs) + list(n.outputs)) for n in nodes)
    off = rep.not_on_ane()
    kinds: dict[str, int] = {}
    for o in off:
        kinds[o.op] = kinds.get(o.op, 0) + 1
    row["not_on_ane"] = len(off)
    row["off_kinds"] = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    row["transitions"] = _transitions(rep)
    try:  # fp16 inputs/outputs: no fp32 casts at the outputs (the edges left are the inputs')
        row["transitions_io16"] = _transitions(cm.with_options(io_dtype="float16").report())
    except Exception as e:  # noqa: BLE001
        row["transitions_io16"] = f"{type(e).__name__}"
    row["fallback_ops"] = len(cm.fallback_ops())
    row["gflop"] = round(rep.total_flops / 1e9, 2)
    return row


def _transitions(rep) -> int:
    """Edges between ops on and off the ANE, computed here so that an older tlc is measured alike."""
    on = {o.name: o.on_ane for o in rep.ops}
    return sum(on[i] != o.on_ane for o in rep.ops for i in o.inputs if i in on)


def _survey_side(name: str, site: Path | None, tmp: Path, side: str) -> dict:
    """:func:`survey_one` in a fresh process, with ``site`` (a base checkout) first on the path."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])  # its tlc comes first
    out = tmp / f"{side}_{name}.json"
    r = subprocess.run([sys.executable, __file__, "--one", name, "--json", str(out)], env=env, capture_output=True,
                       text=True)
    if r.returncode or not out.is_file():
        return {"model": name, "error": f"process failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.read_text())[0]


def survey(models: list[str], base: str | None, json_out: str | None) -> int:
    """Before (``base``) / after rows per model, printed as a markdown table (module docstring)."""
    from ab import checkout

    tmp = Path(tempfile.mkdtemp(prefix="tlc_survey_"))
    site = checkout(base, tmp / "base") if base else None
    rows = []
    for name in models:
        for side, s in ([("before", site)] if base else []) + [("after", None)]:
            row = {"side": side, **_survey_side(name, s, tmp, side)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=1) + "\n")
    print(survey_table(rows))
    return 0


#: survey columns: (row key, table heading)
SURVEY_COLS = [("block_linear", "linear on tokens"), ("head_batched_matmul", "head-batched matmul"),
               ("fused_sdpa", "fused SDPA"), ("rank5_ops", "rank-5 ops"), ("rank6_ops", "rank > 5 ops"),
               ("last_axis_alignment", "misaligned (FLOPs)"), ("not_on_ane", "off the ANE"),
               ("transitions", "transitions"), ("transitions_io16", "transitions, fp16 I/O"),
               ("fallback_ops", "fallback ops"), ("s", "build s")]


def survey_table(rows: list[dict]) -> str:
    """One markdown row per model, each cell ``before → after`` (later rows of the same model and
    side replace earlier ones); a failed build shows its error."""
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        by.setdefault(r["model"], {})[r.get("side", "after")] = r
    lines = ["| model | GFLOP | " + " | ".join(h for _, h in SURVEY_COLS) + " |", "|" + "---|" * (len(SURVEY_COLS) + 2)]

    def cell(r, k):
        if r is None:
            return ""
        if "error" in r:
            return "fails" if k == SURVEY_COLS[0][0] else ""
        return str(r.get(k, "")).replace(" (", "&nbsp;(")

    for model, sides in by.items():
        b, a = sides.get("before"), sides.get("after")
        gf = (a or b or {}).get("gflop", "")
        cells = []
        for k, _ in SURVEY_COLS:
            cb, ca = cell(b, k), cell(a, k)
            cells.append(ca if b is None else f"{cb} → {ca}")
        lines.append(f"| {model} | {gf} | " + " | ".join(cells) + " |")
        for side, r in sides.items():
            if r and "error" in r:
                lines.append(f"|  | {side} fails: {r['error'][:150].replace('|', '/')} |" + " |" * (len(SURVEY_COLS) - 1))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None)
    ap.add_argument("--no-coremltools", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--survey", action="store_true", help="the issue-29 survey (module docstring)")
    ap.add_argument("--base", help="survey: git revision measured as 'before'")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # survey: measure one model in this process
    ap.add_argument("--table", nargs="+", help="survey: print the table of saved --json files (later rows win)")
    a = ap.parse_args(argv)
    if a.one:
        row = survey_one(a.one)
        if a.json:
            Path(a.json).write_text(json.dumps([row]) + "\n")
        return 0
    if a.table:
        print(survey_table([r for f in a.table for r in json.loads(Path(f).read_text())]))
        return 0
    if a.survey:
        return survey((a.models or ",".join(list(SURVEY) + HF)).split(","), a.base, a.json)
    a.models = a.models or ",".join(ZOO)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="tlc_bench_layout_"))
    for name in a.models.split(","):
        torch.manual_seed(0)
        model, example = MODELS[name]()
        model.eval()
        for label, skip in (("tlc, pass off", ["layout::ane_transformer"]), ("tlc, pass on", [])):
            t0 = time.perf_counter()
            cm = tlc.build(model, example, precision="fp16", skip_passes=skip)
            p = cm.save(tmp / f"{name}_{len(skip)}.mlpackage", force=True)
            rows.append(_row(name, label, lint(p), time.perf_counter() - t0))
            print(rows[-1], file=sys.stderr, flush=True)
        if not a.no_coremltools:
            t0 = time.perf_counter()
            try:
                p = _coremltools(model, example, tmp / f"{name}_ct.mlpackage")
                rows.append(_row(name, "coremltools", lint(p), time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - a converter failure is a result here
                msg = " ".join(str(e).split())[:70].replace("|", "/")
                rows.append({"model": name, "package": "coremltools", "ops": f"failed: {type(e).__name__}: {msg}"})
            print(rows[-1], file=sys.stderr, flush=True)
    cols = ["model", "package", "ops", "eligibility", "efficiency"] + RULES + ["s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
