"""Graph passes: functions ``Graph -> Graph`` registered under namespaced names.

The default pipeline is a plain list of names (:data:`PIPELINE`), each ordering constraint
commented beside its entry. :func:`run_pipeline` re-verifies the graph after every pass when
``TLC_DEBUG`` or ``TLC_VERIFY`` is set (the test suite sets ``TLC_VERIFY=1``) and prints per-pass timing and op counts at ``TLC_DEBUG=1``.
Passes live in ``cleanup.py``, ``fuse.py``, ``stable.py``, ``layout.py`` and ``precision.py``; fusions are
declarative patterns run by the bounded engine in ``rewrite.py``. docs/passes.md lists them.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

from tlc.errors import IRError
from tlc.ir import Graph, replace, verify

PASSES: dict[str, Callable[[Graph], Graph]] = {}

#: Default pipeline, in order.
PIPELINE = [
    "cleanup::noop",  # first: no-op reshapes/casts would hide the patterns below
    "cleanup::const_fold",  # folds weight transposes etc. so fusions see plain constants
    "fuse::pad_conv",  # before conv_batchnorm only for tidiness; the two are independent
    "fuse::conv_batchnorm",  # needs const conv weights (after const_fold)
    "fuse::linear_bias",  # after conv_batchnorm: a folded conv already has its bias
    "fuse::activations",  # after const_fold: the pattern constants must be plain consts
    "fuse::norm_attention",  # after const_fold, like fuse::activations
    "cleanup::attention_mask",  # after const_fold and norm_attention: masks are plain consts by then
    "stable::logsumexp",  # the stable:: rewrites only need plain ops; before layout, which moves reductions' axes
    "stable::log_softmax",
    "stable::logcumsumexp",
    "stable::variance",
    "layout::channels_first",  # after linear_bias: sinks transposes through linear(+bias) -> 1x1 conv
    "cleanup::merge_layout",  # merges what layout left adjacent
    "layout::fold_rank",  # after merge_layout (fewer views to fold); before cse/dce, which tidy what it leaves
    "cleanup::cse",  # after fusions, which create identical constants/ops
    "cleanup::dce",  # last: removes what earlier passes orphaned
]


def register_pass(name: str):
    """Decorator: register ``fn(Graph) -> Graph`` under ``name`` (``namespace::pass``)."""
    if "::" not in name:
        raise IRError(f"pass name {name!r} must be namespaced, e.g. 'cleanup::dce'")

    def deco(fn):
        if name in PASSES:
            raise IRError(f"pass {name!r} registered twice")
        PASSES[name] = fn
        return fn

    return deco


def run_pipeline(g: Graph, names: list[str] | None = None) -> Graph:
    """Run the named passes (default :data:`PIPELINE`) in order; raises :class:`IRError` for an
    unknown pass name or, under ``TLC_DEBUG``, for a pass that breaks the IR contract."""
    debug = os.environ.get("TLC_DEBUG", "")
    for name in PIPELINE if names is None else names:
        if name not in PASSES:
            raise IRError(f"unknown pass {name!r} (registered: {', '.join(sorted(PASSES))})")
        t0 = time.perf_counter()
        before = g.num_ops
        g = PASSES[name](g)
        if debug or os.environ.get("TLC_VERIFY"):
            verify(g)
        if debug:
            print(f"[tlc] {name:<28} {1e3 * (time.perf_counter() - t0):8.2f} ms  ops {before} -> {g.num_ops}",
                  file=sys.stderr)
            if debug == "2":
                print(g, file=sys.stderr)
    return g


@register_pass("cleanup::dce")
def dce(g: Graph) -> Graph:
    """Dead-code elimination: drop nodes none of whose outputs reach a graph output.

    Given:  %a = relu(%x); %b = exp(%x); return %a
    Result: %a = relu(%x); return %a
    """
    live = set(g.outputs)
    keep = []
    for n in reversed(g.nodes):
        if any(v in live for v in n.outputs):
            keep.append(n)
            live.update(n.inputs)
    if len(keep) == len(g.nodes):
        return g
    return replace(g, nodes=tuple(reversed(keep)))


from . import cleanup, fuse, layout, partition, precision, rank, stable  # noqa: E402,F401  (register their passes)
