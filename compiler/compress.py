"""Weight compression of the MIL program tlc emits: ``compress="int8" | "int4" | "palettize4" |
"palettize6" | "palettize8"`` (``tlc.build``, ``tlc build --compress``).

Compression is coremltools' (``coremltools.optimize.coreml.linear_quantize_weights`` /
``palettize_weights``), applied to the program after tlc's precision and closed loop, to the
weights of ``conv``, ``conv_transpose``, ``linear`` and ``matmul`` only: embeddings (``gather``
tables) and every op ``precision="mixed"`` kept in fp32 stay uncompressed. The Neural Engine takes
per-channel (int8/int4) and per-tensor palettized weights; per-block int4 is for the GPU and is
known to give wrong output on the ANE (apple/coreai-models#279; ExecuTorch's Core ML llama
example: "the ANE requires channelwise"), so ``target="ane"`` always uses the per-channel forms.
The MIL interpreter runs every ``constexpr_*`` op these produce, so compressed packages verify on
Linux. Weights below coremltools' ``weight_threshold`` (2048 elements) are left as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

#: MIL op types whose constant weights are compressed.
WEIGHT_OPS = ("conv", "conv_transpose", "linear", "matmul")


@dataclass(frozen=True)
class Mode:
    """One ``compress=`` mode: ``kind`` (``"quantize"``/``"palettize"``), ``nbits``, the oldest
    ``minimum_deployment_target`` whose opset holds its ``constexpr_*`` form (coremltools:
    int8 per-channel and per-tensor LUTs from iOS16, int4 from iOS18), and a description."""

    kind: str
    nbits: int
    min_target: str
    about: str


MODES = {
    "int8": Mode("quantize", 8, "iOS16", "8-bit symmetric linear quantization, one scale per output channel"),
    "int4": Mode("quantize", 4, "iOS18", "4-bit symmetric linear quantization: per output channel for the ANE, "
                                         "per block of 32 input channels for target='gpu'"),
    "palettize4": Mode("palettize", 4, "iOS16", "16-entry k-means look-up table per tensor"),
    "palettize6": Mode("palettize", 6, "iOS16", "64-entry k-means look-up table per tensor"),
    "palettize8": Mode("palettize", 8, "iOS16", "256-entry k-means look-up table per tensor"),
}


def check_compress(compress: str | None, target: str, minimum_deployment_target: str) -> str | None:
    """``compress`` if it is None or a key of :data:`MODES` that ``minimum_deployment_target``
    can hold; raises :class:`InputError` naming the option, the allowed values and, for a target
    too old, the one needed."""
    if compress is None:
        return None
    if compress not in MODES:
        raise InputError(f"compress must be one of {', '.join(MODES)} (or None), got {compress!r}")
    from .emit import resolve_target, target_name

    need = MODES[compress].min_target
    if resolve_target(minimum_deployment_target) < resolve_target(need):
        raise InputError(f"compress={compress!r} needs minimum_deployment_target {need} or newer (got "
                         f"{target_name(minimum_deployment_target)}): its constexpr ops arrived in that opset")
    return compress


def _op_config(compress: str, target: str):
    import coremltools.optimize.coreml as cto

    m = MODES[compress]
    if m.kind == "quantize":
        block = m.nbits == 4 and target == "gpu"
        return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8" if m.nbits == 8 else "int4",
                                           granularity="per_block" if block else "per_channel", block_size=32)
    return cto.OpPalettizerConfig(mode="kmeans", nbits=m.nbits, granularity="per_tensor")


#: coremltools' default ``weight_threshold``: smaller weights are not worth a constexpr op.
WEIGHT_THRESHOLD = 2048


def weight_consts(prog, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the ``const`` ops of a MIL program that are weights of :data:`WEIGHT_OPS` only
    (every reader is one of them and not in ``skip``) with at least :data:`WEIGHT_THRESHOLD`
    elements: what tlc compresses. A constant also read by another op (a shared scalar, a
    layer-norm gamma) or by an fp32 island stays as it is."""
    import numpy as np

    out = []
    for f in prog.functions.values():
        for op in f.operations:
            if op.op_type != "const" or np.size(op.outputs[0].val) < WEIGHT_THRESHOLD:
                continue
            readers = op.outputs[0].child_ops
            if readers and all(r.op_type in WEIGHT_OPS and r.name not in skip for r in readers):
                out.append(op.name)
    return out


def config(compress: str, target: str, names: list[str]):
    """The ``coremltools.optimize.coreml.OptimizationConfig`` compressing exactly the const ops
    ``names`` (:func:`weight_consts`): per-channel quantization or per-tensor palettization
    (per-block int4 only for ``target="gpu"``)."""
    import coremltools.optimize.coreml as cto

    op = _op_config(compress, target)
    return cto.OptimizationConfig(op_name_configs={n: op for n in names})


def const_bytes(prog) -> int:
    """Bytes of every ``const`` op value of a MIL program as stored (what the weight file holds
    before compression, without its 64-byte alignment)."""
    import numpy as np

    return sum(np.asarray(op.outputs[0].val).nbytes for f in prog.functions.values() for op in f.operations
               if op.op_type == "const" and op.outputs[0].val is not None and np.size(op.outputs[0].val) >= 2)


def accuracy(package, graph, calibration: list[dict], function_name: str | None = None) -> list[tuple]:
    """``(output, worst rel-L2, worst PSNR dB)`` per output of ``package`` run in tlc's MIL
    interpreter on every calibration sample, against ``graph`` (the traced model, its own dtypes:
    fp32) run by the NumPy reference executor, which matches torch eager to ~1e-6
    (tests/test_architectures.py). PSNR as :func:`tlc.verify.psnr` (coremltools' definition)."""
    import numpy as np

    from tlc.runtime import load, run_graph

    from .verify import psnr, rel_l2

    m = load(package, backend="interpreter", function_name=function_name)
    worst: dict[str, list[float]] = {}
    for feed in calibration:
        ref = run_graph(graph, feed)
        got = m(feed)
        for k, r in ref.items():
            if np.asarray(r).dtype.kind != "f":
                continue
            e, p = rel_l2(got[k], r), psnr(got[k], r)
            w = worst.setdefault(k, [0.0, float("inf")])
            w[0], w[1] = max(w[0], e), min(w[1], p)
    return [(k, e, p) for k, (e, p) in worst.items()]


def compress_mlmodel(mlmodel, compress: str, target: str, skip: tuple[str, ...] = ()):
    """``mlmodel`` (an mlprogram ``MLModel`` tlc emitted: it keeps its MIL program) with the
    weights :func:`weight_consts` selects compressed as ``compress`` says; returns a new
    ``MLModel`` (``mlmodel`` itself when nothing qualifies) and the names of the compressed
    constants. ``skip``: op names (fp32 islands) whose weights stay. Quiet: coremltools' progress
    bars and warnings are suppressed."""
    import contextlib
    import io
    import warnings

    import coremltools.optimize.coreml as cto

    fn = cto.linear_quantize_weights if MODES[compress].kind == "quantize" else cto.palettize_weights
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        names = weight_consts(mlmodel._mil_program, skip)
        return (fn(mlmodel, config(compress, target, names)) if names else mlmodel), names


__all__ = ["MODES", "WEIGHT_OPS", "WEIGHT_THRESHOLD", "Mode", "check_compress", "weight_consts", "config",
           "const_bytes", "accuracy", "compress_mlmodel"]
