"""PyTorch's own OpInfo database through tlc (issue 10): how much of torch tlc builds, matches and
keeps in Core ML.

For every entry of ``torch.testing._internal.common_methods_invocations.op_db`` that supports
float32 on the CPU, the **first** sample of ``op.sample_inputs("cpu", torch.float32)`` is taken if
its arguments are tensors or scalars (tensors, Python numbers/bools/strings, ``None``, dtypes, and
lists/tuples of those); the op's tensors become the model's inputs, every other argument is baked
in. Each sample is then:

1. built with ``tlc.build(fn, tensors, precision="fp32")`` (the build never aborts on an op: what
   MIL cannot express becomes a fallback op);
2. saved (one ``.mlpackage`` or a bundle ``NAME.tlc``), reloaded with ``tlc.runtime.load`` and run
   on the sample (the MIL interpreter here; Core ML on macOS) — what is shipped is what is checked;
3. compared with torch eager on the same inputs: every tensor output must have torch's shape and
   agree to ``rtol=1e-4, atol=1e-5`` (NaN where torch has NaN; integer and bool outputs exactly;
   int64 results come back as int32, compared by value).

Reported: **build + match** (steps 1-3 pass; fallback allowed), **Core ML** (no fallback op: one
``.mlpackage``), and every failure by class with the op names. Random ops (``bernoulli``,
``normal``, ``rand_like``, dropout in training, ...) draw from another generator than torch's: they
are built, saved, run and their output shapes checked, then counted as a class of their own — not
as matches (build + match is also given over the deterministic samples alone), but as "no fallback
op" when they lowered to MIL's ``random_*`` (tests/test_random.py checks their distributions).
``empty*`` ops return uninitialized memory in torch and are counted with them.

Run::

    python benchmarks/bench_opinfo.py [--ops add,cumsum,...] [--json out.json] [--markdown out.md]

Takes about 10-15 minutes on 2 cores (about 600 samples; one build, save and reload each).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

#: OpInfo entries whose sample depends on a random generator (no deterministic reference).
RANDOM = {"bernoulli", "cauchy", "exponential", "geometric", "log_normal", "normal", "uniform", "multinomial",
          "rand_like", "randn_like", "randint_like", "randn", "randint", "nn.functional.dropout",
          "nn.functional.dropout2d", "nn.functional.dropout3d", "nn.functional.alpha_dropout",
          "nn.functional.feature_alpha_dropout", "nn.functional.rrelu", "nn.functional.fractional_max_pool2d",
          "nn.functional.fractional_max_pool3d", "svd_lowrank", "pca_lowrank"}
#: OpInfo entries whose result is uninitialized memory in torch (values undefined; shapes compared).
UNINITIALIZED = {"empty_like", "empty", "new_empty", "new_empty_strided", "empty_strided", "empty_permuted"}
RANDOM |= UNINITIALIZED

RTOL, ATOL = 1e-4, 1e-5
TIMEOUT_S = 120


def _full_name(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def _static(x) -> bool:
    """A baked-in argument: a Python scalar, string, None, dtype, or a list/tuple of those."""
    if x is None or isinstance(x, (bool, int, float, str, torch.dtype)):
        return True
    if isinstance(x, (list, tuple)):
        return all(_static(y) or isinstance(y, torch.Tensor) for y in x)
    return False


def _admissible(sample) -> str | None:
    """None if the sample's arguments are tensors/scalars, else why not."""
    parts = [sample.input, *sample.args, *sample.kwargs.values()]
    for p in parts:
        if isinstance(p, torch.Tensor):
            if p.layout != torch.strided:
                return f"tensor of layout {p.layout}"
            continue
        if not _static(p):
            return f"argument of type {type(p).__name__}"
    return None


def _flatten(sample):
    """(tensors, rebuild): the sample's tensors in order and ``rebuild(tensors) -> (input, args, kwargs)``."""
    tensors: list[torch.Tensor] = []

    def take(x):
        if isinstance(x, torch.Tensor):
            tensors.append(x)
            return ("$t", len(tensors) - 1)
        if isinstance(x, (list, tuple)):
            return type(x)(take(y) for y in x)
        return x

    spec = (take(sample.input), take(list(sample.args)), {k: take(v) for k, v in sample.kwargs.items()})

    def put(x, ts):
        if isinstance(x, tuple) and len(x) == 2 and x[0] == "$t":
            return ts[x[1]]
        if isinstance(x, (list, tuple)):
            return type(x)(put(y, ts) for y in x)
        return x

    def rebuild(ts):
        inp, args, kwargs = spec
        return put(inp, ts), put(args, ts), {k: put(v, ts) for k, v in kwargs.items()}

    return tensors, rebuild


def _leaves(out):
    import torch.utils._pytree as pytree

    return [x for x in pytree.tree_leaves(out) if isinstance(x, (torch.Tensor, np.ndarray))]


def _compare(got: list, want: list, values: bool = True) -> str | None:
    """None if ``got`` matches torch's ``want`` (shapes; values too unless ``values`` is False:
    random ops, whose draws come from another generator), else what differs."""
    if len(got) != len(want):
        return f"{len(got)} outputs, torch gives {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if not values:
            gs = tuple(np.asarray(g.detach().numpy() if isinstance(g, torch.Tensor) else g).shape)
            if gs != tuple(w.shape):
                return f"output {i}: shape {list(gs)}, torch {list(w.shape)}"
            continue
        g = np.asarray(g.detach().resolve_conj().resolve_neg().numpy() if isinstance(g, torch.Tensor) else g)
        w = w.detach().resolve_conj().resolve_neg().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
        if w.dtype.kind == "c" or g.dtype.kind == "c":
            g, w = (np.stack([a.real, a.imag], -1) if a.dtype.kind == "c" else np.stack([a, np.zeros_like(a)], -1)
                    for a in (g, w))
        if g.shape != w.shape:
            return f"output {i}: shape {list(g.shape)}, torch {list(w.shape)}"
        if w.dtype.kind in "biu" or w.dtype == np.bool_:
            if not np.array_equal(g.astype(np.int64), w.astype(np.int64)):
                return f"output {i}: integer values differ"
            continue
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        if not np.allclose(g64, w64, rtol=RTOL, atol=ATOL, equal_nan=True):
            with np.errstate(all="ignore"):
                err = np.nanmax(np.abs(g64 - w64)) if g64.size else 0.0
            return f"output {i}: max abs error {err:.3g}"
    return None


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_sample(op, sample, tmp: Path, values: bool = True) -> dict:
    """Build, save, reload, run and compare one sample (shapes only when ``values`` is False);
    returns a result row."""
    import tlc
    from tlc.runtime import load

    tensors, rebuild = _flatten(sample)
    name = _full_name(op)

    def fn(*ts):
        inp, args, kwargs = rebuild(ts)
        return op.op(inp, *args, **kwargs)

    try:
        with torch.no_grad():
            want = fn(*[t.clone() for t in tensors])
    except Exception as e:  # noqa: BLE001 - e.g. CUDA-only ops (jiterator)
        return {"status": "skipped", "why": f"torch eager fails on the CPU: {type(e).__name__}: {str(e)[:120]}"}
    if not isinstance(want, (torch.Tensor, tuple, list)) or not _leaves(want):
        return {"status": "skipped", "why": f"returns {type(want).__name__}, not tensors"}
    want = _leaves(want)
    row: dict = {}
    try:
        cm = tlc.build(fn, tuple(tensors), precision="fp32")
        row["ops"] = cm.graph.op_histogram()
        row["bundle"] = cm.is_bundle
        if cm.is_bundle:
            row["fallback"] = sorted({o.op for o in cm.report().ops if o.target != "ane"})
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        return {"status": "build", "why": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    try:
        path = cm.save(tmp / f"{name.replace('.', '_')}.mlpackage")
        m = load(path)
        feeds = {n: t.numpy() for n, t in zip(cm.input_names, tensors)}
        out = m(feeds)
        got = [out[n] for n in cm.output_names]
    except Exception as e:  # noqa: BLE001
        return {**row, "status": "saved", "why": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    try:
        mem = _leaves(cm(*tensors))
    except Exception as e:  # noqa: BLE001
        return {**row, "status": "memory", "why": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    bad = _compare(got, want, values)
    if bad:
        return {**row, "status": "mismatch", "why": "saved artifact: " + bad}
    bad = _compare(mem, want, values)
    if bad:
        return {**row, "status": "mismatch", "why": "in memory: " + bad}
    return {**row, "status": "ok"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", help="comma-separated OpInfo names (default: all)")
    ap.add_argument("--json", help="write every row to this file")
    ap.add_argument("--markdown", help="write the summary tables (Markdown) to this file")
    a = ap.parse_args(argv)
    from torch.testing._internal.common_methods_invocations import op_db

    want = set(a.ops.split(",")) if a.ops else None
    rows = []
    signal.signal(signal.SIGALRM, _alarm)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tlc-opinfo-") as tmpd:
        for op in op_db:
            name = _full_name(op)
            if want and name not in want and op.name not in want:
                continue
            row = {"op": name}
            try:
                if torch.float32 not in op.supported_dtypes("cpu"):
                    continue
                torch.manual_seed(0)
                sample = next(iter(op.sample_inputs("cpu", torch.float32, requires_grad=False)), None)
            except Exception as e:  # noqa: BLE001
                rows.append({**row, "status": "skipped", "why": f"no sample ({type(e).__name__})"})
                continue
            if sample is None:
                rows.append({**row, "status": "skipped", "why": "no sample"})
                continue
            why = _admissible(sample)
            if why:
                rows.append({**row, "status": "skipped", "why": why})
                continue
            t0 = time.perf_counter()
            signal.alarm(TIMEOUT_S)
            log = io.StringIO()
            try:
                random_op = name in RANDOM or op.name in RANDOM
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    res = run_sample(op, sample, Path(tmpd), values=not random_op)
            except _Timeout:
                res = {"status": "timeout", "why": f"over {TIMEOUT_S} s"}
            except Exception as e:  # noqa: BLE001
                res = {"status": "reference", "why": f"torch eager failed: {type(e).__name__}: {str(e)[:200]}"}
                if os.environ.get("TLC_DEBUG"):
                    traceback.print_exc()
            finally:
                signal.alarm(0)
            if random_op and res["status"] == "ok":
                res = {**res, "status": "random",
                       "why": "uninitialized in torch: built and run, shapes match; values undefined"
                       if (name in UNINITIALIZED or op.name in UNINITIALIZED) else
                       "random op: built and run, shapes match; values not comparable (another generator)"}
            res["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append({**row, **res})
            mark = {"ok": "ok" if not res.get("bundle") else "ok (bundle)"}.get(res["status"], res["status"].upper())
            print(f"{name:<48} {mark:<14} {res.get('why', '')[:110]}", flush=True)
    report = summarize(rows)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    print()
    print(report["text"])
    if a.json:
        meta = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "torch": torch.__version__}
        Path(a.json).write_text(json.dumps({"rows": rows, **meta, **{k: v for k, v in report.items() if k != "text"}},
                                           indent=1))
    if a.markdown:
        Path(a.markdown).write_text(report["markdown"])
    return 0


CLASSES = [
    ("ok", "build + match, one .mlpackage"),
    ("ok-bundle", "build + match, bundle (some ops in tlc's fallback runtime)"),
    ("mismatch", "built, numbers differ from torch eager"),
    ("build", "tlc.build failed"),
    ("saved", "saving, reloading or running the saved artifact failed"),
    ("memory", "running the CompiledModel in memory failed"),
    ("timeout", f"over {TIMEOUT_S} s"),
    ("random", "random (or uninitialized: empty*) op: built and run, shapes match torch; values not comparable"),
    ("reference", "torch eager itself failed on the sample"),
]


def summarize(rows: list[dict]) -> dict:
    """Shares and failure classes of the admissible samples (skipped ones are counted apart)."""
    adm = [r for r in rows if r["status"] != "skipped"]
    by = defaultdict(list)
    for r in adm:
        k = "ok-bundle" if r["status"] == "ok" and r.get("bundle") else r["status"]
        by[k].append(r)
    n = len(adm) or 1
    ok = len(by["ok"]) + len(by["ok-bundle"])
    det = n - len(by["random"]) - sum(1 for r in adm if r["op"] in RANDOM and r["status"] != "random")
    coreml = len(by["ok"]) + sum(1 for r in by["random"] if not r.get("bundle"))  # no fallback op (random ones too)
    fallback_ops = Counter(op for r in by["ok-bundle"] for op in r.get("fallback", ()))
    lines = [f"OpInfo float32 samples: {len(rows)} entries, {len(adm)} admissible "
             f"({len(rows) - len(adm)} skipped: arguments not tensors/scalars)",
             f"build + match:            {ok}/{len(adm)} = {100 * ok / n:.1f}%  "
             f"(of the {det} deterministic ones: {100 * ok / max(det, 1):.1f}%)",
             f"one .mlpackage (no fallback op): {coreml}/{len(adm)} = {100 * coreml / n:.1f}%  "
             f"(of them random ops: {coreml - len(by['ok'])}; deterministic only: "
             f"{100 * len(by['ok']) / max(det, 1):.1f}%)", ""]
    md = ["| class | samples | share | ops |", "|---|---|---|---|"]
    for key, desc in CLASSES:
        rs = by.get(key, [])
        lines.append(f"{key:<10} {len(rs):>4}  {desc}")
        if key not in ("ok",):
            for r in rs:
                lines.append(f"    {r['op']:<44} {r.get('why', '')[:120]}")
        names = ", ".join(f"`{r['op']}`" for r in rs) if key not in ("ok",) else f"{len(rs)} ops"
        md.append(f"| {desc} | {len(rs)} | {100 * len(rs) / n:.1f}% | {names} |")
    if fallback_ops:
        lines.append("")
        lines.append("fallback ops in bundles: " + ", ".join(f"{k} {v}" for k, v in fallback_ops.most_common()))
    head = [f"- admissible samples: **{len(adm)}** of {len(rows)} OpInfo float32 entries "
            f"({len(rows) - len(adm)} skipped: arguments not tensors/scalars)",
            f"- build + match: **{ok} = {100 * ok / n:.1f}%** (of the {det} deterministic samples: "
            f"{100 * ok / max(det, 1):.1f}%)",
            f"- one `.mlpackage`, no fallback op: **{coreml} = {100 * coreml / n:.1f}%** ({coreml - len(by['ok'])} of "
            f"them random ops, lowered to MIL's random_*; of the deterministic samples: "
            f"{100 * len(by['ok']) / max(det, 1):.1f}%)", ""]
    if fallback_ops:
        md += ["", "Fallback ops in the bundles: " + ", ".join(f"`{k}` {v}" for k, v in fallback_ops.most_common())]
    return {"text": "\n".join(lines), "markdown": "\n".join(head + md) + "\n", "admissible": len(adm),
            "ok": ok, "coreml": coreml, "deterministic": det}


if __name__ == "__main__":
    sys.exit(main())
