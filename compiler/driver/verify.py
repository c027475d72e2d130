"""``tlc verify``: execute a package with the MIL interpreter and compare it with torch eager.

Per output: max abs error, relative L2 error, cosine similarity, count of NaN/inf, and PASS/FAIL
against a tolerance on relative L2 (fp32 packages ``1e-5``, fp16/mixed ``1e-2`` by default).
On FAIL the run is bisected: tlc's IR runs in the NumPy reference runtime and the package in
the interpreter, both recording every intermediate; MIL op names carry tlc's node names, so the
first IR node (in topological order) whose package value departs from the reference by more than
the tolerance is named with its source line.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.utils._pytree as pytree

from tlc.backends.coreai.emit import save_aimodel
from tlc.check.metrics import DEFAULT_TOL, Divergence, OutputCheck, compare, first_divergence, ir_node_name, rel_l2
from tlc.errors import TlcError
from tlc.frontend import normalize_inputs
from tlc.ir import Graph, replace
from tlc.passes import dce
from tlc.runtime import BundleModel, MILInterpreter, is_bundle, load, package_info
from tlc.runtime.coreai_runtime import CoreAIModel
from tlc.util.progress import stage

from .inputs import graph_outputs, model_outputs, pixel_feeds, unwrap
from .model import CompiledModel
from .options import BuildOptions, check_format
from .save import save_aimodel as save_model_aimodel
from .single import build_one

@dataclass
class VerifyReport:
    """Result of :func:`verify`: per-output checks, overall verdict, the divergence if any."""

    package: Path
    precision: str
    outputs: list[OutputCheck]
    divergence: Divergence | None = None
    timings: dict = field(default_factory=dict)
    #: ``format="both"``: the Core AI asset's outputs vs torch eager, the two Apple formats against
    #: each other (MIL interpreter vs Core AI runtime), and the first op where they disagree
    coreai: list[OutputCheck] | None = None
    apple_agreement: list[OutputCheck] | None = None
    apple_divergence: Divergence | None = None
    #: the package's ``tlc.precision_fallback`` metadata: why ``mixed``'s closed loop shipped a
    #: fallback program (no island assignment passed within its rounds); empty otherwise
    precision_fallback: str = ""

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs + (self.coreai or []) + (self.apple_agreement or []))

    def text(self) -> str:
        """The report as a table: one row per output, the verdict, and the divergence if any."""
        runtime = "hybrid runtime" if self.package.suffix == ".tlc" else "MIL interpreter"
        lines = [f"verify {self.package} ({self.precision}, {runtime} vs torch eager)",
                 f"  {'output':<24} {'shape':<16} {'max_abs':>9} {'rel_l2':>9} {'cosine':>10} {'nan/inf':>7} "
                 f"{'tol':>7}  result"]
        for o in self.outputs:
            lines.append(f"  {o.name:<24} {str(list(o.shape)):<16} {o.max_abs:9.2e} {o.rel_l2:9.2e} {o.cosine:10.7f} "
                         f"{o.nonfinite:7d} {o.tol:7.0e}  {'PASS' if o.passed else 'FAIL'}")
        for title, rows in (("Core AI runtime vs torch eager", self.coreai),
                            ("MIL interpreter vs Core AI runtime (the two Apple formats)", self.apple_agreement)):
            if rows is None:
                continue
            lines.append(f"  {title}")
            for o in rows:
                lines.append(f"  {o.name:<24} {str(list(o.shape)):<16} {o.max_abs:9.2e} {o.rel_l2:9.2e} {o.cosine:10.7f} "
                             f"{o.nonfinite:7d} {o.tol:7.0e}  {'PASS' if o.passed else 'FAIL'}")
        lines.append("PASS" if self.passed else "FAIL")
        if self.precision_fallback:
            lines.append(f"note: this package is the FALLBACK program of precision='mixed': {self.precision_fallback}")
        if self.divergence is not None:
            lines.append(str(self.divergence))
        if self.apple_divergence is not None:
            lines.append("the Apple formats part at: " + str(self.apple_divergence).replace(
                "against tlc's reference runtime", "between the MIL interpreter and the Core AI runtime"))
        return "\n".join(lines)


def _verify_coreai(report: VerifyReport, cm, interp, feeds, got, refs, tol, package: Path) -> None:
    """``format="both"``: fill ``report``'s Core AI rows (see :func:`verify`)."""
    check_format("both")
    if cm.is_bundle:
        raise TlcError("verify --format both needs one Core ML program; this model has ops in tlc's fallback runtime")
    work = Path(tempfile.mkdtemp(prefix="tlc-verify-coreai-"))
    try:
        aim = save_model_aimodel(cm, cm.coreai_output_path(work / "model.aimodel"), force=True)
        t0 = time.perf_counter()
        m = load(aim)  # a CoreAIModel, or a bundle of Core AI segments and fallback ones
        try:
            ca_out = m(dict(feeds))
        finally:
            getattr(m, "close", lambda: None)()
        report.timings["coreai"] = time.perf_counter() - t0
        report.coreai = [compare(n, ca_out[n], r.detach().double().numpy(), tol) for n, r in zip(cm.output_names, refs)]
        report.apple_agreement = [compare(n, ca_out[n], np.asarray(got[n], np.float64), tol) for n in cm.output_names]
        if not all(o.passed for o in report.apple_agreement):
            report.apple_divergence = apple_divergence(cm.emit_graph, interp, feeds, tol, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def apple_divergence(graph: Graph, interp, feeds: dict, tol: float, workdir: Path) -> Divergence | None:
    """The first node of ``graph`` (the program both Apple formats were emitted from) whose value
    in the Core AI runtime departs (rel-L2 > ``tol``) from its value in tlc's MIL interpreter
    (``interp``). Core AI has no per-op observer: prefixes of the graph ending at a node are
    emitted as small ``.aimodel`` assets and bisected over the graph order (about log2(ops)
    emissions) to a node that differs, then followed up the dataflow to the first node whose
    inputs agree but whose output does not: the op where the formats part. None when no node differs."""
    mil: dict[str, tuple] = {}
    interp.run(feeds, observer=lambda op, outs: mil.__setitem__(ir_node_name(op.name), (op.name, outs[0])))
    cands = [n for n in graph.nodes if n.op != "const" and len(n.outputs) == 1 and n.name in mil
             and n.out.type.dtype in ("fp32", "fp16") and tuple(np.shape(mil[n.name][1])) == n.out.type.shape]

    errs: dict[int, float] = {}

    def err(i: int) -> float:
        if i not in errs:
            errs[i] = _probe(i)
        return errs[i]

    def _probe(i: int) -> float:
        n = cands[i]
        sub = dce(replace(graph, outputs=(n.out,), output_names=("probe",)))
        path = save_aimodel(sub, workdir / f"probe{i}.aimodel", force=True)
        m = CoreAIModel(path)
        try:
            got = m({k: v for k, v in feeds.items() if k in m.input_names})["probe"]
        finally:
            m.close()
        return rel_l2(np.asarray(got, np.float32), np.asarray(mil[n.name][1], np.float32))

    if not cands or err(len(cands) - 1) <= tol:
        return None
    lo, hi = 0, len(cands) - 1  # invariant: cands[hi] diverges
    while lo < hi:
        mid = (lo + hi) // 2
        if err(mid) > tol:
            hi = mid
        else:
            lo = mid + 1
    index = {n: i for i, n in enumerate(cands)}
    prod = graph.producers()
    i = hi
    while True:  # up the dataflow while an input differs too
        up = next((index[p] for v in cands[i].inputs if (p := prod.get(v)) in index and err(index[p]) > tol), None)
        if up is None:
            break
        i = up
    n = cands[i]
    return Divergence(n, err(i), mil[n.name][0], float(np.abs(np.asarray(mil[n.name][1], np.float64)).max()))


def verify(
    model_or_fn,
    example_inputs,
    *,
    package: str | Path | None = None,
    precision: str | None = None,
    minimum_deployment_target: str = "iOS17",
    target: str = "ane",
    io_dtype: str = "float32",
    tol: dict | None = None,
    compiled: CompiledModel | None = None,
    keep: str | Path | None = None,
    force: bool = False,
    format: str = "mlpackage",
    interface=None,
) -> VerifyReport:
    """Trace (or take ``compiled``), save the package or bundle (unless ``package`` is given), run
    it with the MIL interpreter (bundles: the hybrid runtime) and compare with torch eager (the model in eval mode). The trace is
    needed even with ``package``: it supplies the input names and the reference graph that
    bisection compares against.

    ``io_dtype``: the built package's float I/O (``"float16"``: inputs are given to it as fp32
    and converted, as ``ct.TensorType(dtype=np.float16)`` packages take them on device).
    ``tol``: ``{"fp32": 1e-5, "fp16": 1e-2}`` overrides (relative L2). The tolerance is chosen
    by the precision the package actually computes in (:func:`tlc.runtime.package_info`).
    ``keep``: where to write the built package (default: a temp dir, removed afterwards); an
    existing ``keep`` is replaced only with ``force``.
    ``format="both"`` also writes the Core AI asset of the same program (``NAME.aimodel`` beside
    the package), runs it in Apple's Core AI runtime, compares it with torch eager and with the
    MIL interpreter (same tolerance), and on disagreement names the first op where the two Apple
    formats part (:func:`apple_divergence`). Needs coreai-core.
    ``interface``: the package's I/O declarations (:func:`tlc.driver.options.decide_interface`):
    image inputs are fed the pixels that give the example inputs, a classifier's dictionary and
    image outputs are compared as the model's tensors.
    Raises :class:`TlcError` subclasses for bad models, inputs or packages.
    """
    tols = {**DEFAULT_TOL, **(tol or {})}
    t0 = time.perf_counter()
    cm = compiled or build_one(model_or_fn, example_inputs, BuildOptions.decide(
        precision=precision, minimum_deployment_target=minimum_deployment_target, target=target, io_dtype=io_dtype,
        interface=interface))
    tmp = None
    if package is None:
        if keep is None:
            tmp = tempfile.TemporaryDirectory(prefix="tlc-verify-")
            keep = Path(tmp.name) / "model.mlpackage"
        package = cm.save(keep, force=force or tmp is not None)
    t_build = time.perf_counter() - t0
    try:
        if is_bundle(package):
            interp = BundleModel(package, backend="interpreter")
            prec, meta = interp.manifest["precision"], interp.manifest.get("metadata", {})
        else:
            interp = MILInterpreter(package)
            info = package_info(package)
            prec, meta = info["precision"], info["metadata"]
        tol_v = tols["fp32"] if prec == "fp32" else tols["fp16"]
        args, kwargs = normalize_inputs(example_inputs)
        leaves = pytree.tree_leaves((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        feeds = pixel_feeds(cm.io, {n: t.detach().cpu().numpy() for n, t in zip(cm.input_names, tensors)})
        missing = [n for n, *_ in interp.inputs if n not in feeds]
        if missing:
            raise TlcError(f"package {str(package)!r} expects inputs {missing} that the model's example inputs do not provide")
        t1 = time.perf_counter()
        with stage(f"running {Path(package).name} in tlc's MIL interpreter"):
            got = model_outputs(cm.io, graph_outputs(cm.io, interp.run(feeds), cm.output_names))  # MILInterpreter / BundleModel
        t_interp = time.perf_counter() - t1
        model = unwrap(model_or_fn)
        modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
        for m, _ in modes:
            m.training = False  # the package is an inference trace: compare with eval-mode torch
        try:
            with torch.no_grad():
                ref_out = model(*args, **kwargs)
        finally:
            for m, training in modes:
                m.training = training
        refs = [t for t in pytree.tree_leaves(ref_out) if isinstance(t, torch.Tensor)]
        rows = []
        for name, r in zip(cm.output_names, refs):
            if name not in got:
                raise TlcError(f"package {str(package)!r} has no output {name!r} (outputs: {', '.join(got)})")
            rows.append(compare(name, got[name], r.detach().double().numpy(), tol_v))
        report = VerifyReport(Path(package), prec, rows, timings={"build": t_build, "interpreter": t_interp},
                              precision_fallback=meta.get("tlc.precision_fallback", ""))
        if not all(o.passed for o in rows):
            with stage("bisecting to the first op that diverges"):
                report.divergence = first_divergence(cm.graph, interp, feeds, tol_v)
        if format == "both":
            with stage("building and running the Core AI asset"):
                _verify_coreai(report, cm, interp, feeds, got, refs, tol_v, Path(package))
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()
