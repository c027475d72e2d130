"""Tracing: ``torch.export`` with tlc's decomposition table.

Why these choices (measured with ``benchmarks/bench_spine.py``, which times both modes):

* ``strict=False`` (non-strict, Python-level tracing) is the default. Both modes trace all nine
  spine models on torch 2.13 / transformers 5.23, and non-strict is 3-10x faster (BERT-base:
  0.9 s vs 8.9 s; ResNet-50: 1.0 s vs 6.0 s). ``strict=True`` (TorchDynamo) can be asked for.
* The decomposition table is torch's core-ATen table **minus** the ops MIL has natively
  (:data:`KEEP`): keeping ``linear``, ``layer_norm``, ``gelu``, ``scaled_dot_product_attention``,
  ``conv*`` ... means emission is 1:1 and no pattern has to re-discover them.
"""
from __future__ import annotations

import inspect
import logging
import time
import warnings
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from ..errors import FrontendError, InputError

aten = torch.ops.aten

#: Composite ops tlc lowers directly instead of letting torch decompose them (all have a MIL
#: counterpart: linear, conv, layer_norm, gelu, silu, softmax, scaled_dot_product_attention,
#: gather (embedding), pooling, clip (hardtanh), batch_norm).
KEEP = [
    aten.linear.default,
    aten.conv1d.default,
    aten.conv2d.default,
    aten.layer_norm.default,
    aten.gelu.default,
    aten.silu.default,
    aten.softmax.int,
    aten.scaled_dot_product_attention.default,
    aten.embedding.default,
    aten.adaptive_avg_pool2d.default,
    aten.adaptive_avg_pool1d.default,
    aten.hardtanh.default,
    aten.relu6.default,
    aten.hardsigmoid.default,
    aten.hardswish.default,
    aten.max_pool2d.default,
    aten.max_pool1d.default,
    aten.avg_pool2d.default,
    aten.avg_pool1d.default,
    aten.batch_norm.default,
    aten.matmul.default,
    aten.softplus.default,
    aten.leaky_relu.default,
    # resampling: every upsample lowers to per-axis matrices torch computes (tlc.frontend.aten_nn);
    # decomposed, bicubic alone becomes ~150 index/arithmetic ops
    aten.upsample_nearest1d.vec, aten.upsample_nearest3d.vec, aten.upsample_nearest2d.default,
    aten._upsample_nearest_exact1d.vec, aten._upsample_nearest_exact2d.vec, aten._upsample_nearest_exact3d.vec,
    aten.upsample_linear1d.vec, aten.upsample_trilinear3d.vec, aten.upsample_bicubic2d.vec,
    aten._upsample_bilinear2d_aa.vec, aten._upsample_bicubic2d_aa.vec,
    # padding modes MIL `pad` has (decomposed, they become gathers with computed indices)
    aten.pad.default, aten._pad_circular.default,
    aten.reflection_pad1d.default, aten.reflection_pad2d.default, aten.reflection_pad3d.default,
    aten.replication_pad1d.default, aten.replication_pad2d.default, aten.replication_pad3d.default,
    # F.unfold / F.fold as one-hot convs (decomposed: gathers / index_put with computed indices)
    aten.im2col.default, aten.col2im.default,
    aten.conv3d.default, aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input,
    aten.max_pool3d.default, aten.adaptive_avg_pool3d.default, aten.group_norm.default,
]


def decomposition_table() -> dict:
    """torch's default (core ATen) decompositions without the ops in :data:`KEEP`."""
    table = torch.export.default_decompositions()
    for op in KEEP:
        table.pop(op, None)
    return table


class FunctionModule(torch.nn.Module):
    """Wraps a plain tensor function so ``torch.export`` can trace it; ``forward`` carries the
    function's own signature, so exported input names are the function's parameter names."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "function")

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def as_module(model_or_fn: Any) -> torch.nn.Module:
    """``nn.Module`` as is; a callable wrapped in :class:`FunctionModule`; anything else raises
    :class:`InputError`."""
    if isinstance(model_or_fn, torch.nn.Module):
        return model_or_fn
    if callable(model_or_fn):
        # torch.export records stack frames only for functions named `forward` or registered as
        # anchors; register the user's function so its source lines reach tlc's error messages.
        anchor = getattr(torch.fx.proxy, "_register_stack_trace_anchor", None)
        if anchor is not None:
            anchor(model_or_fn)
        m = FunctionModule(model_or_fn)
        try:
            sig = inspect.signature(model_or_fn)
            # torch.export names placeholders after forward's parameters
            m.forward = _with_signature(m.forward, sig)
        except (TypeError, ValueError):
            pass
        return m
    raise InputError(f"expected an nn.Module or a callable, got {type(model_or_fn).__name__}")


def distinct_inputs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` where a tensor object that fills more than one input is copied in every
    place after its first.

    torch.export gives one tensor object passed for two inputs a single placeholder: every use of
    either input reads the last one and the other is left unused (strict and non-strict alike; by
    design, pytorch/pytorch#144683). The inputs of the built graph are independent, so the
    example inputs must be too. Issue 34: ``build_lm``'s prefill examples passed one empty tensor
    as both ``k_cache`` and ``v_cache``, and every prefill function read its cached keys from
    ``v_cache`` (wrong only at ``position > 0``, where cache slots are visible).
    """
    ids = [id(x) for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    if len(set(ids)) == len(ids):
        return args, kwargs  # the usual case: the inputs as given, containers untouched
    seen: set[int] = set()

    def distinct(x):
        if not isinstance(x, torch.Tensor):
            return x
        if id(x) in seen:
            return x.clone()
        seen.add(id(x))
        return x

    return pytree.tree_map(distinct, (args, kwargs))


def _with_signature(f, sig):
    def forward(*args, **kwargs):
        return f(*args, **kwargs)

    forward.__signature__ = sig
    return forward


def export(module: torch.nn.Module, args: tuple, kwargs: dict, strict: bool = False):
    """Trace ``module`` with torch.export and apply :func:`decomposition_table`.

    Returns ``(exported_program, seconds_export, seconds_decompose)``. Raises
    :class:`FrontendError` with torch's message and the user's source line when tracing fails.
    """
    # remember every submodule's mode (a wrapper's .train() would otherwise switch the user's
    # own modules into training mode)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    # torch logs a full traceback (log.exception) when fake-tensor propagation fails; tlc reports
    # the error itself, in one paragraph.
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    old_level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)
    try:
        t0 = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own pytree deprecation chatter (LeafSpec) is not the user's concern
            warnings.filterwarnings("ignore", category=FutureWarning)
            ep = torch.export.export(module, *distinct_inputs(args, kwargs), strict=strict)
            t1 = time.perf_counter()
            ep = ep.run_decompositions(decomposition_table())
        t2 = time.perf_counter()
    except Exception as e:  # torch raises many types; report them uniformly
        msg = str(e).strip().splitlines()
        head = msg[0] if msg else type(e).__name__
        hint = (" The model returns a transformers cache object: pass use_cache=False in the example inputs (or "
                "build a generator with tlc.build_lm, which holds the KV cache as functional I/O)."
                if "cache_utils" in head else "")
        raise FrontendError(
            f"torch.export could not trace the model ({type(e).__name__}: {head}).{hint} The model must run "
            f"on the example inputs (check their shapes and dtypes); beyond that, data-dependent Python "
            f"control flow is the usual cause (tlc traces with torch.export(strict={strict})).",
            loc=_user_frame(e),
        ) from e
    finally:
        for m, training in modes:
            m.training = training
        fake_log.setLevel(old_level)
    return ep, t1 - t0, t2 - t1


def decompose_exported(ep) -> tuple:
    """``(exported_program, 0.0, seconds_decompose)`` for a program the user exported
    (``torch.export.export``): tlc's decompositions (:func:`decomposition_table`) applied as to its
    own trace, so a module and its ``ExportedProgram`` build the same package. Raises
    :class:`FrontendError` when torch's decompositions fail."""
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            ep = ep.run_decompositions(decomposition_table())
    except Exception as e:  # torch raises many types; report them uniformly
        head = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FrontendError(f"torch could not decompose the ExportedProgram ({type(e).__name__}: {head})",
                            loc=_user_frame(e)) from e
    return ep, 0.0, time.perf_counter() - t0


def _user_frame(e: BaseException):
    """SourceLoc of the innermost traceback frame outside torch, if any."""
    import traceback

    from ..ir import SourceLoc

    import os

    torch_dir = os.path.dirname(torch.__file__)
    tlc_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # compiler/
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(torch_dir) and not f.filename.startswith(tlc_dir)]
    if not frames:
        return None
    f = frames[-1]
    return SourceLoc(f.filename, f.lineno, f.line)
