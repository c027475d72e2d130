"""Sequence padding by cost for ``layout::ane_transformer``: pad a token axis to the ANE's 64-byte
last-axis boundary when the padded program costs less under the efficiency rules' cost model.

In the (B, C, 1, S) layout the sequence is every block tensor's last axis. Apple's rule
(neural_engine_rules.md L23, ../shared/ane-rules.md) asks that axis to span a multiple of 64 bytes
(32 fp16 values); ViT-B/16's 197 tokens, ViT-B/32's 50, a Swin window's 49 do not.

**The cost model.** A program's cost is the sum over its ops of their FLOPs (the op table's
``flops`` rules), each op whose tensors break ``last_axis_alignment`` charged
``misaligned_cost`` times (:data:`MISALIGNED_COST`). Padding S to S' = S + p (r = S'/S) makes every
op on that sequence aligned and scales its FLOPs: by r for per-token ops (1x1 convs, norms,
elementwise), by r² for attention whose queries and keys are both the padded sequence. The
padding is applied iff

    lin·r + quad·r² + cross·r  <  (lin + quad + cross) · misaligned_cost

with ``lin`` the FLOPs of the per-token ops on S, ``quad`` of attention over S × S, ``cross`` of
attention with one side on S. At the default 2.0 this pads ViT-B/16 (197 -> 224, r = 1.14),
ViT-B/32 (50 -> 64, r = 1.28), Swin's 7x7 windows (49 -> 64) and Whisper (1500 -> 1504), and
leaves short sequences alone (12 -> 32: r = 2.7). A sequence that an explicit attention product
reads (matmul -> softmax -> matmul left unfused, laid out by passes/ane_heads.py) is not padded:
its padded keys would sit unmasked on the scores' channel axis; nor is one that q·kᵀ contracts
over (XCiT's attention over channels sums over the tokens).

Apple publishes no figure for what a misaligned axis costs; 2.0 is an assumption (the ANE stores
a misaligned axis padded to its 64-byte boundary, so it does the padded work anyway, and Core ML
adds relayout copies between such ops), stated here and an option of the pass
(``layout::ane_transformer(misaligned_cost=...)``; 1.0 or less never pads). Padding never changes
a result: padded keys are masked, ops that could turn padding into inf/NaN read the unpadded
value, reductions and pooling over tokens read the logical (unpadded) tensor
(:mod:`tlc.passes.ane_forms`).
"""
from __future__ import annotations

from tlc.ir import Graph
from tlc.ops import OPS

from .partition import node_flops

#: 32 fp16 values = 64 bytes, the ANE's last-axis alignment (Apple neural_engine_rules.md L23)
ALIGN = 32
#: What an op breaking ``last_axis_alignment`` costs per FLOP relative to an aligned one (an
#: assumption: Apple publishes no figure; see the module docstring).
MISALIGNED_COST = 2.0


def _flops(n) -> int:
    if n.op == "const" or n.op not in OPS:
        return 0
    try:
        return node_flops(n)
    except Exception:  # a row whose FLOP rule cannot read this node: it weighs nothing here
        return 0


class PadPolicy:
    """Decides, per sequence length, how many positions to append (see module docstring).

    ``misaligned_cost``: the cost factor of a misaligned op (default :data:`MISALIGNED_COST`)."""

    def __init__(self, g: Graph, misaligned_cost: float = MISALIGNED_COST):
        self.cost = float(misaligned_cost)
        self.lin: dict[int, int] = {}
        self.quad: dict[int, int] = {}
        self.cross: dict[int, int] = {}
        self._memo: dict[int, int] = {}
        self.unpadded: set[int] = set()  # sequences an explicit attention product reads (passes/ane_heads.py)
        for n in g.nodes:
            if n.op == "matmul" and n.outputs and n.out.type.rank >= 4:
                self.unpadded.update(n.out.type.shape[-2:])
            if not n.outputs or not all(v.type.is_static for v in list(n.inputs) + list(n.outputs)):
                continue
            if n.op == "scaled_dot_product_attention" and n.inputs[0].type.rank == 4:
                sq, sk = n.inputs[0].type.shape[2], n.inputs[1].type.shape[2]
                self.unpadded.add(n.inputs[0].type.shape[3])  # contracted in q·kᵀ (XCiT: the tokens)
                f = _flops(n)
                if sq == sk:
                    self.quad[sq] = self.quad.get(sq, 0) + f
                else:
                    for s in (sq, sk):
                        self.cross[s] = self.cross.get(s, 0) + f
                continue
            t = n.outputs[0].type
            seq = t.shape[1] if t.rank == 3 else t.shape[2] if t.rank == 4 and n.op != "conv" else None
            if seq is not None:
                self.lin[seq] = self.lin.get(seq, 0) + _flops(n)

    def pad(self, S: int) -> int:
        """Positions to append to a sequence of length ``S`` (0: leave it as it is)."""
        if S not in self._memo:
            self._memo[S] = self._decide(S)
        return self._memo[S]

    def _decide(self, S: int) -> int:
        p = -S % ALIGN
        if S <= 1 or not p or self.cost <= 1.0 or S in self.unpadded:
            return 0
        r = (S + p) / S
        lin, quad, cross = self.lin.get(S, 0), self.quad.get(S, 0), self.cross.get(S, 0)
        total = lin + quad + cross
        if not total:
            return p if r < self.cost else 0
        return p if lin * r + quad * r * r + cross * r < total * self.cost else 0


__all__ = ["ALIGN", "MISALIGNED_COST", "PadPolicy"]
