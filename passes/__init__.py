"""Graph passes: functions ``Graph -> Graph`` registered under namespaced names.

The default pipeline is a plain list of names (:data:`PIPELINE`), each ordering constraint
commented beside its entry. :func:`run_pipeline` re-verifies the graph after every pass when
``TLC_DEBUG`` or ``TLC_VERIFY`` is set (the test suite sets ``TLC_VERIFY=1``) and prints per-pass timing and op counts at ``TLC_DEBUG=1``.
Passes live in ``cleanup.py``, ``fuse.py``, ``attention.py``, ``stable.py``, ``layout.py``, ``ane_layout.py`` (its forms in ``ane_forms.py``) and ``precision.py`` (the fp16 program it builds in ``fp16_program.py``, the exact rescaling it runs first in ``rescale.py``); fusions are
declarative patterns run by the bounded engine in ``rewrite.py``. docs/passes.md lists them.
"""
from __future__ import annotations

import os
import sys
import time
from tlc.errors import IRError, TlcError
from tlc.ir import Graph, verify

from .registry import _REQUIRED, PASS_OPTIONS, PASSES, register_pass  # noqa: F401  (tlc.passes.register_pass, ...)

#: Default pipeline, in order.
PIPELINE = [
    "cleanup::noop",  # first: no-op reshapes/casts would hide the patterns below
    "cleanup::const_fold",  # folds weight transposes etc. so fusions see plain constants
    "fuse::pad_conv",  # before conv_batchnorm only for tidiness; the two are independent
    "fuse::conv_batchnorm",  # needs const conv weights (after const_fold)
    "fuse::linear_bias",  # after conv_batchnorm: a folded conv already has its bias
    "fuse::activations",  # after const_fold: the pattern constants must be plain consts
    "canon::attention",  # after const_fold (masks, biases are plain consts); before norm_attention, which fuses what it unpacks
    "fuse::norm_attention",  # after const_fold, like fuse::activations
    "canon::attention_batch",  # after norm_attention: folds the rank-5 attention it fused to rank 4
    "cleanup::attention_mask",  # after const_fold and norm_attention: masks are plain consts by then
    "stable::logsumexp",  # the stable:: rewrites only need plain ops; before layout, which moves reductions' axes
    "stable::log_softmax",
    "stable::logcumsumexp",
    "stable::variance",
    "layout::ane_transformer",  # after the fusions and attention_mask (it reads fused linears, plain masks); target="ane" only
    "layout::channels_first",  # after linear_bias: sinks transposes through linear(+bias) -> 1x1 conv
    "cleanup::merge_layout",  # merges what layout left adjacent
    "layout::fold_rank",  # after merge_layout (fewer views to fold); before cse/dce, which tidy what it leaves
    "cleanup::cse",  # after fusions, which create identical constants/ops
    "cleanup::dce",  # last: removes what earlier passes orphaned
]

#: passes that lay the graph out for the Neural Engine only: a build for target="gpu"/"cpu" skips
#: them, and tlc's own executors (torch, NumPy) run the graph without them (tlc.driver.single.optimize)
ANE_ONLY = frozenset({"layout::ane_transformer"})


def _pass_kwargs(name: str, given: dict) -> dict:
    declared = PASS_OPTIONS.get(name, {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise IRError(f"pass {name!r} has no option {', '.join(map(repr, unknown))} "
                      f"(its options: {', '.join(declared) or 'none'})")
    missing = [k for k, d in declared.items() if d is _REQUIRED and k not in given]
    if missing:
        raise IRError(f"pass {name!r} needs the option(s) {', '.join(map(repr, missing))}")
    return dict(given)


def _name_the_pass(e: BaseException, name: str, ran: list[str]) -> None:
    """Prefix ``e``'s message with the pass that raised it and the passes before it, keeping its
    class, ``loc`` and traceback (the CLI prints ``str(e)``)."""
    after = f" (after: {', '.join(ran[-4:])}{', ...' if len(ran) > 4 else ''})" if ran else " (the first pass)"
    prefix = f"pass {name!r} failed{after}: "
    if e.args and isinstance(e.args[0], str):
        e.args = (prefix + e.args[0],) + e.args[1:]
    else:
        e.args = (prefix + type(e).__name__,) + e.args
    if hasattr(e, "add_note") and not isinstance(e, TlcError):
        e.add_note(f"raised inside tlc pass {name!r}")


def run_pipeline(g: Graph, names: list[str] | None = None, options: dict[str, dict] | None = None) -> Graph:
    """Run the named passes (default :data:`PIPELINE`) in order; ``options`` gives keyword
    options per pass name (``{"precision::fp16": {"io_dtype": "fp16"}}``).

    Raises :class:`IRError` for an unknown pass name, an option the pass does not declare or a
    required one not given; any error a pass raises keeps its class and
    source location, its message prefixed with ``pass 'NAME' failed (after: ...)``; under
    ``TLC_VERIFY``/``TLC_DEBUG`` an :class:`IRError` names the pass whose output broke the IR
    contract."""
    debug = os.environ.get("TLC_DEBUG", "")
    ran: list[str] = []
    options = dict(options or {})
    names = PIPELINE if names is None else names
    stray = sorted(set(options) - set(names))
    if stray:
        raise IRError(f"options given for passes that do not run: {', '.join(stray)}")
    for name in names:
        if name not in PASSES:
            raise IRError(f"unknown pass {name!r} (registered: {', '.join(sorted(PASSES))})")
        kwargs = _pass_kwargs(name, options.get(name, {}))
        t0 = time.perf_counter()
        before = g.num_ops
        try:
            g = PASSES[name](g, **kwargs)
        except Exception as e:
            _name_the_pass(e, name, ran)
            raise
        if debug or os.environ.get("TLC_VERIFY"):
            try:
                verify(g)
            except IRError as e:
                raise IRError(f"pass {name!r} broke the IR contract (after: {', '.join(ran) or 'none'}): {e.args[0]}",
                              loc=e.loc, context=e.context) from None
        ran.append(name)
        if debug:
            print(f"[tlc] {name:<28} {1e3 * (time.perf_counter() - t0):8.2f} ms  ops {before} -> {g.num_ops}",
                  file=sys.stderr)
            if debug == "2":
                print(g, file=sys.stderr)
    return g


from . import ane_layout, attention, cleanup, fuse, layout, precision, rank, rescale, stable  # noqa: E402,F401  (register their passes)
from .cleanup import dce  # noqa: E402,F401  (tlc.passes.dce: used by passes and the build alike)
