"""What a build reads from its inputs: the input signature (:func:`signature_key`), calibration
samples as feeds by input name (:func:`calibration_feed`), the model behind a ``@tlc.compile``
wrapper (:func:`unwrap`), its name and source file for reports."""
from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.utils._pytree as pytree

from tlc.boundary import Boundary, of_graph
from tlc.errors import InputError
from tlc.frontend import normalize_inputs
from tlc.ir import Graph


def unwrap(model):
    """What tlc traces for ``model``: the function or module a ``@tlc.compile`` wrapper
    (:class:`tlc.driver.specialize.CompiledFunction`) wraps, else ``model`` itself."""
    return getattr(model, "__tlc_function__", model)


def complex_boundary(g: Graph):
    """The complex inputs/outputs of ``g`` (tlc.boundary); 0-d values need no conversion in tlc's
    own runtimes."""
    b = of_graph(g)
    return Boundary(complex_inputs=b.complex_inputs, complex_outputs=b.complex_outputs)


def source_of(obj) -> str | None:
    """The file defining ``obj`` (a function, or a module's class), or None."""
    target = obj if not isinstance(obj, torch.nn.Module) else type(obj)
    try:
        return inspect.getsourcefile(target)
    except (TypeError, OSError):
        return None


def model_name(obj) -> str:
    """``ClassName`` for a module, ``fn_name`` for a function (for reports)."""
    if isinstance(obj, torch.nn.Module):
        inner = getattr(obj, "inner", None)  # @tlc.compile on a module class wraps instances
        return type(inner if isinstance(inner, torch.nn.Module) and type(obj).__name__ == "_EagerCall" else obj).__name__
    return getattr(obj, "__name__", type(obj).__name__)


def signature_key(args: tuple, kwargs: dict, kw_order: list | None = None):
    """Hashable key of an input signature: tree structure, and per leaf (shape, dtype) for
    tensors/arrays or the value itself for Python scalars."""
    if kw_order is not None:
        kwargs = {k: kwargs[k] for k in kw_order if k in kwargs} | {k: v for k, v in kwargs.items() if k not in kw_order}
    leaves, spec = pytree.tree_flatten((args, kwargs))
    key = []
    for x in leaves:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            key.append(("T", tuple(x.shape), str(x.dtype)))
        else:
            key.append(("V", repr(x)))
    return (str(spec), tuple(key)), leaves


def calibration_feed(g: Graph, ex, k: int) -> dict:
    """Sample ``k`` of the calibration inputs as ``{graph input name: ndarray}`` (complex inputs as
    their package form, :mod:`tlc.boundary`): a dict keyed by
    exactly the graph's input names is taken by name (``tlc build --calibration FILE.npz``), any
    other value is structured like ``example_inputs``. Raises :class:`InputError` naming the
    sample for a wrong tensor count or shape."""
    names = [v.name for v in g.inputs]
    if isinstance(ex, dict) and set(ex) == set(names):
        arrays = {n: np.asarray(ex[n].detach().cpu().numpy() if isinstance(ex[n], torch.Tensor) else ex[n]) for n in names}
    else:
        a2, k2 = normalize_inputs(ex)
        leaves = [x for x in pytree.tree_leaves((a2, k2)) if isinstance(x, torch.Tensor)]
        if len(leaves) != len(names):
            raise InputError(f"calibration sample {k} has {len(leaves)} tensors; the model takes {len(names)} "
                             f"({', '.join(names)})")
        arrays = {n: t.detach().cpu().numpy() for n, t in zip(names, leaves)}
    arrays = complex_boundary(g).to_package(arrays)
    for v in g.inputs:
        shape = tuple(arrays[v.name].shape)
        if shape != tuple(v.type.shape) and v.type.is_static:
            raise InputError(f"calibration sample {k}: input {v.name} has shape {list(shape)}; the model was traced "
                             f"with {list(v.type.shape)} (shapes are static)")
    return arrays


__all__ = ["unwrap", "signature_key", "calibration_feed", "complex_boundary", "source_of", "model_name"]
