"""``tlc lint``: the Neural Engine rules of tlc's op table applied to any ``.mlpackage``.

Every op of every function is looked up in the op table by its MIL name (tlc's rows are named as
coremltools names MIL ops) and checked against the row's two rule sets (:mod:`tlc.ops`):
*eligibility* (``ane``: breaking it keeps the op off the ANE: Core ML runs it on the GPU/CPU) and
*efficiency* (``ane_efficiency``: it runs on the ANE but breaks a layout rule: misaligned last
axis, Linear on (B, S, C), fused SDPA, rank-5 tensors). Rules and their sources:
:data:`tlc.ops.ANE_RULES`, ../shared/ane-rules.md (Apple's neural_engine_rules.md by line).

Works on packages from any converter (coremltools' own, tlc's, a bundle's Core ML segments); for
tlc packages each finding also names the user's source line (metadata ``tlc.source_lines``,
:func:`tlc.serialize.source_lines`). This is a static *prediction*: only Core ML on a device decides
placement (``MLComputePlan`` on a Mac shows what it chose; docs/partitioning.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tlc.dtypes import NUMPY, TensorType
from tlc.errors import TlcError
from tlc.ops import ANE_RULES, OPS, args_from_mil, rule_of
from tlc.runtime.mil_interpreter import load_program
from tlc.runtime.mlspec import PackageError
from tlc.serialize import read_source_lines

#: MIL dtypes the IR has no name for, as the op table's rules should see them: Apple lists
#: int8/int16 among the ANE's dtypes (neural_engine_rules.md L7-9), so they count as fp16 does;
#: 64-bit types as the 32-bit ones Core ML narrows them to.
_DTYPES = {"fp16": "fp16", "fp32": "fp32", "int32": "int32", "bool": "bool", "int8": "fp16", "uint8": "fp16",
           "int16": "fp16", "uint16": "fp16", "int64": "int32", "fp64": "fp32", "uint32": "int32"}
KINDS = ("eligibility", "efficiency")


class LintError(TlcError):
    """``tlc lint`` cannot read what it was given (not an mlprogram package, damaged files)."""

    exit_code = 2


@dataclass(frozen=True)
class Finding:
    """One rule one op breaks: the ``function`` and MIL op (``op`` type, ``name`` of its first
    output), the rule (``rule`` id, ``kind``, ``reason``, ``rule_source``), the user's ``source``
    line (tlc packages), and the op's estimated FLOPs."""

    function: str
    op: str
    name: str
    rule: str
    kind: str
    reason: str
    rule_source: str
    source: str
    flops: int


@dataclass
class LintReport:
    """What :func:`lint` found. ``findings`` in program order; ``num_ops`` / ``total_flops`` over
    the non-const ops checked; ``unchecked`` maps MIL op types that have no tlc row (so no rule)
    to their counts."""

    path: str
    functions: list[str]
    num_ops: int = 0
    total_flops: int = 0
    findings: list[Finding] = field(default_factory=list)
    unchecked: dict[str, int] = field(default_factory=dict)
    #: edges (a value one op writes and another reads) between an op the rules place on the ANE
    #: and one they do not (each a potential ANE <-> CPU/GPU hand-over), as (producer, reader) names
    transition_edges: list[tuple[str, str]] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        """Number of :attr:`transition_edges`."""
        return len(self.transition_edges)

    def summary(self) -> list[dict]:
        """Per rule: ``rule``, ``kind``, ``ops`` (distinct ops breaking it), ``flops_share`` of the
        model's FLOPs in them, ``source``; eligibility first, then by op count."""
        rows: dict[str, dict] = {}
        for f in self.findings:
            r = rows.setdefault(f.rule, {"rule": f.rule, "kind": f.kind, "ops": 0, "flops": 0,
                                         "source": ANE_RULES[f.rule].source})
            r["ops"] += 1
            r["flops"] += f.flops
        out = sorted(rows.values(), key=lambda r: (KINDS.index(r["kind"]), -r["ops"], r["rule"]))
        for r in out:
            r["flops_share"] = r.pop("flops") / self.total_flops if self.total_flops else 0.0
        return out

    def count(self, kind: str) -> int:
        """Number of distinct ops breaking at least one rule of ``kind``."""
        return len({(f.function, f.name) for f in self.findings if f.kind == kind})

    def exit_code(self, fail_on: str | None) -> int:
        """1 if an op breaks a rule at or above ``fail_on`` (``"eligibility"``: eligibility
        rules; ``"efficiency"``: either kind), else 0 (``None``: always 0)."""
        if fail_on is None:
            return 0
        kinds = KINDS[:KINDS.index(fail_on) + 1]
        return int(any(self.count(k) for k in kinds))

    def text(self, limit: int | None = 40) -> str:
        """The summary table, then each finding (the first ``limit``; None: all)."""
        lines = [f"lint {self.path}: {self.num_ops} op(s) in {len(self.functions)} function(s); "
                 f"{self.count('eligibility')} op(s) break an eligibility rule (off the ANE), "
                 f"{self.count('efficiency')} an efficiency rule (on the ANE, slower); "
                 f"{self.transitions} transition(s) between ops on and off the ANE"]
        if self.findings:
            lines.append(f"  {'rule':<22} {'kind':<12} {'ops':>5} {'FLOPs':>7}  source")
            for r in self.summary():
                lines.append(f"  {r['rule']:<22} {r['kind']:<12} {r['ops']:>5} {100 * r['flops_share']:>6.1f}%  "
                             f"{r['source']}")
        for f in self.findings[:limit]:
            where = f"  [{f.source}]" if f.source else ""
            fn = f"{f.function}:" if len(self.functions) > 1 else ""
            lines.append(f"  {f.kind[:5]} {fn}{f.name} ({f.op}): {f.reason}{where}")
        if limit is not None and len(self.findings) > limit:
            lines.append(f"  ... {len(self.findings) - limit} more (--all lists every finding)")
        if self.unchecked:
            lines.append("  no tlc rule for: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.unchecked.items())))
        lines.append("  predicted from tlc's op table (../shared/ane-rules.md); Core ML decides on the device "
                     "(MLComputePlan on a Mac confirms)")
        return "\n".join(lines)

    __str__ = text

    def to_json(self) -> dict:
        """JSON-ready dict: path, functions, num_ops, total_flops, summary, findings, unchecked."""
        return {"path": self.path, "functions": self.functions, "num_ops": self.num_ops,
                "total_flops": self.total_flops, "summary": self.summary(), "transitions": self.transitions,
                "transition_edges": [list(e) for e in self.transition_edges],
                "findings": [asdict(f) for f in self.findings], "unchecked": self.unchecked}


def _ir_type(var) -> TensorType | None:
    from coremltools.converters.mil.mil import types

    if not types.is_tensor(var.sym_type) and not types.is_scalar(var.sym_type):
        return None
    dt = _DTYPES.get(types.builtin_to_string(var.dtype))
    if dt is None:
        return None
    shape = tuple(int(d) if isinstance(d, (int, np.integer)) else str(d) for d in (var.shape or ()))
    return TensorType(dt, shape)


def _placeholder(t: TensorType) -> np.ndarray:
    shape = tuple(d if isinstance(d, int) else 1 for d in t.shape)
    return np.broadcast_to(np.zeros((), NUMPY[t.dtype]), shape)  # no memory: only shapes are read


def check_op(op) -> tuple[list[str], int] | None:
    """``(reasons, flops)`` for one loaded MIL op (a coremltools ``Operation``) under its tlc row,
    or None when tlc has no row (or the row cannot read this op's form)."""
    row = OPS.get(op.op_type)
    if row is None:
        return None
    types_of: dict[int, TensorType] = {}
    vals = {}
    for k, v in op.inputs.items():
        vs = v if isinstance(v, (list, tuple)) else [v]
        arrays = []
        for var in vs:
            t = _ir_type(var)
            if t is None and var.val is None:
                return None  # a computed non-tensor value (a list, a state): no rule reads it
            if t is None:
                arrays.append(var.val)  # a string or other non-tensor constant (dtype, pad_type, mode)
                continue
            a = var.val if var.val is not None else _placeholder(t)
            a = np.asarray(a) if not isinstance(a, np.ndarray) else a
            if t.dtype == "fp16" and a.dtype.kind in "iu":  # int8/int16 counted as fp16 (see _DTYPES)
                a = _placeholder(t)
            types_of[id(a)] = t
            arrays.append(a)
        vals[k] = arrays if isinstance(v, (list, tuple)) else arrays[0]
    try:
        arrays, attrs = args_from_mil(row, vals)
    except Exception:
        return None
    ins = [types_of.get(id(a)) or TensorType(_DTYPES.get(str(np.asarray(a).dtype).replace("float", "fp"), "fp32"),
                                             np.shape(a)) for a in arrays if isinstance(a, np.ndarray)]
    outs = [_ir_type(v) for v in op.outputs]
    if any(t is None for t in outs):
        return None
    reasons = []
    try:
        why = row.ane(ins, outs, attrs)
        if why:
            reasons.append(why)
        reasons += row.ane_efficiency(ins, outs, attrs)
        flops = int(row.flops(ins, outs, attrs))
    except Exception:
        return None
    return reasons, flops


def _source_of(name: str, table: dict[str, str]) -> str:
    """The source line of the node a MIL op name derives from (``node``, ``node_h3``, ...)."""
    while name:
        if name in table:
            return table[name]
        if "_" not in name:
            return ""
        name = name.rsplit("_", 1)[0]
    return ""


def _walk(ops):
    for op in ops:
        yield op
        for blk in getattr(op, "blocks", ()) or ():
            yield from _walk(blk.operations)


def _packages(path: Path) -> list[Path]:
    if path.suffix == ".tlc" or (path / "manifest.json").is_file():
        return sorted((path / "segments").glob("*.mlpackage")) if (path / "segments").is_dir() else []
    return [path]


def lint(path: str | Path) -> LintReport:
    """Check every op of an ``.mlpackage`` (or of each Core ML segment of a ``NAME.tlc`` bundle)
    against tlc's ANE rules. Raises :class:`LintError` (one line naming the problem) for a path
    that is not a readable mlprogram package: missing, not a package, a neuralnetwork model,
    damaged spec or weights."""
    path = Path(path)
    pkgs = _packages(path)
    if not pkgs:
        if (path / "segments").is_dir() and any((path / "segments").glob("*.aimodel")):
            raise LintError(f"{str(path)!r}: a bundle of Core AI segments; tlc lint checks Core ML (.mlpackage) "
                            f"programs against the ANE rules, which are not known for Core AI yet")
        raise LintError(f"{str(path)!r}: a tlc bundle with no Core ML segment (nothing runs on the ANE)")
    rep = LintReport(str(path), [])
    for pkg in pkgs:
        try:
            mlmodel, spec, prog = load_program(pkg)
        except PackageError as e:
            raise LintError(f"tlc lint: {e}") from None
        table = read_source_lines(dict(spec.description.metadata.userDefined))
        prefix = f"{pkg.name}:" if len(pkgs) > 1 else ""
        for fname, fn in prog.functions.items():
            rep.functions.append(prefix + fname)
            on_ane: dict[int, bool] = {}  # id(op) -> whether the eligibility rules place it on the ANE
            for op in _walk(fn.operations):
                if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                    continue
                rep.num_ops += 1
                got = check_op(op)
                if got is None:
                    rep.unchecked[op.op_type] = rep.unchecked.get(op.op_type, 0) + 1
                    continue
                reasons, flops = got
                rep.total_flops += flops
                src = _source_of(op.name, table)
                for r in reasons:
                    rule = rule_of(r)
                    rep.findings.append(Finding(prefix + fname, op.op_type, op.name, rule.id, rule.kind, str(r),
                                                rule.source, src, flops))
                on_ane[id(op)] = not any(rule_of(r).kind == "eligibility" for r in reasons)
                rep.transition_edges += [(prefix + p.name, prefix + op.name) for p in _producers(op)
                                         if id(p) in on_ane and on_ane[id(p)] != on_ane[id(op)]]
    return rep


def _producers(op) -> list:
    """The distinct ops whose outputs ``op`` reads (function inputs and constants have none)."""
    out: dict[int, object] = {}
    for v in op.inputs.values():
        for var in (v if isinstance(v, (list, tuple)) else [v]):
            p = getattr(var, "op", None)
            if p is not None:
                out.setdefault(id(p), p)
    return list(out.values())
