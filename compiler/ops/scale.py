"""The op-row fact ``scale`` (:class:`PositiveScale`): how an op treats a positive scale on its
float tensors. ``precision::rescale`` (:mod:`tlc.passes.rescale`) reads it to keep overflowing
regions in fp16; the rows set it (``register(..., scale=COMMUTES)``)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import IRError


@dataclass(frozen=True)
class PositiveScale:
    """How an op treats a positive scale s (tlc uses powers of two, exact in fp16 and fp32) on its
    float tensors: the op-row fact ``precision::rescale`` reads (:mod:`tlc.passes.rescale`). These
    are the positive-homogeneity identities of each op's definition (max(s x, 0) = s max(x, 0) for
    s > 0; a weighted sum is linear in each operand; a normalization divides by the input's own
    scale):

    * ``"commutes"``: f(s x1, s x2, ...) = s f(x1, x2, ...) with every float input scaled by the
      same s (relu, pooling, concat, add, reshape, gather of a table, ...); the float attributes
      named in ``attrs`` (pad's ``constant_val``) scale with the data.
    * ``"product"``: f(s a, t b) = s t f(a, b) for the float inputs at ``operands``, with the input
      at ``bias`` (when given) scaled by s t as well: conv, linear, matmul, mul.
    * ``"invariant"``: f(s x) = f(x) for the input at position 0 when the attribute ``epsilon``
      is scaled by s**2 (layer / group / RMS norm: (s x - mean) / sqrt(s**2 var + s**2 eps));
      the inputs at ``affine`` (gamma, beta) scale with the output.
    """

    kind: str
    operands: tuple[int, ...] = (0, 1)
    bias: int | None = None
    affine: tuple[int, ...] = ()
    attrs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("commutes", "product", "invariant"):
            raise IRError(f"unknown PositiveScale kind {self.kind!r}")


#: the common case, shared by the rows it applies to
COMMUTES = PositiveScale("commutes")


__all__ = ["PositiveScale", "COMMUTES"]
