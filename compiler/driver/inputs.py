"""What a build reads from its inputs: the input signature (:func:`signature_key`), calibration
samples as feeds by input name (:func:`calibration_feed`), the model behind a ``@tlc.compile``
wrapper (:func:`unwrap`), its name and source file for reports."""
from __future__ import annotations

import inspect
import sys

import numpy as np
import torch
import torch.utils._pytree as pytree

from tlc.boundary import Boundary, of_graph
from tlc.errors import InputError
from tlc.frontend import normalize_inputs
from tlc.ir import Graph
from tlc.iospec import PackageIO
from tlc.runtime.mil_io import ImageFormat, image_to_tensor


def unwrap(model):
    """What tlc traces for ``model``: the function or module a ``@tlc.compile`` wrapper
    (:class:`tlc.driver.specialize.CompiledFunction`) wraps, else ``model`` itself."""
    return getattr(model, "__tlc_function__", model)


def complex_boundary(g: Graph):
    """The complex inputs/outputs of ``g`` (tlc.boundary); 0-d values need no conversion in tlc's
    own runtimes."""
    b = of_graph(g)
    return Boundary(complex_inputs=b.complex_inputs, complex_outputs=b.complex_outputs)


def exported_class(ep) -> type | None:
    """The ``nn.Module`` class an ``ExportedProgram`` was exported from (the root of its nodes'
    ``nn_module_stack``, looked up in ``sys.modules``), or None."""
    for node in ep.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            _, cls = next(iter(stack.values()))
            if isinstance(cls, type):
                return cls
            mod, _, name = str(cls).rpartition(".")
            obj = sys.modules.get(mod)
            for part in name.split("."):
                obj = getattr(obj, part, None)
            return obj if isinstance(obj, type) else None
    return None


def example_inputs_of(model, example_inputs):
    """``example_inputs``, or for an ``ExportedProgram`` given without them the ones it was
    exported with (``ep.example_inputs``). Raises :class:`InputError` when neither exists."""
    if example_inputs is not None:
        return example_inputs
    if isinstance(model, torch.export.ExportedProgram) and model.example_inputs is not None:
        return model.example_inputs
    raise InputError("example_inputs are needed (the model is traced on them; an ExportedProgram saved without its "
                     "example inputs needs them too)")


def source_of(obj) -> str | None:
    """The file defining ``obj`` (a function, a module's class, the class an ``ExportedProgram``
    came from), or None."""
    if isinstance(obj, torch.export.ExportedProgram):
        obj = exported_class(obj)
        if obj is None:
            return None
    target = obj if not isinstance(obj, torch.nn.Module) else type(obj)
    try:
        return inspect.getsourcefile(target)
    except (TypeError, OSError):
        return None


def model_name(obj) -> str:
    """``ClassName`` for a module (or the ``ExportedProgram`` of one), ``fn_name`` for a function
    (for reports)."""
    if isinstance(obj, torch.export.ExportedProgram):
        cls = exported_class(obj)
        return cls.__name__ if cls is not None else "ExportedProgram"
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


def image_feeds(io: PackageIO, feeds: dict) -> dict:
    """``feeds`` with each image input given as the package takes it (a PIL image, a uint8
    ``[H, W, C]`` array: :func:`tlc.runtime.mil_io.image_to_tensor`) as its float ``[1, C, H, W]``
    tensor; other values as given."""
    for im in io.images:
        if im.name in feeds and not (hasattr(feeds[im.name], "ndim") and feeds[im.name].ndim == 4):
            feeds = {**feeds, im.name: image_to_tensor(feeds[im.name], ImageFormat(im.color_layout), im.name)}
    return feeds


def pixel_feeds(io: PackageIO, feeds: dict) -> dict:
    """``feeds`` of the model's own values (``CompiledModel.__call__``) with each image input as
    the image tensor that gives that value (:meth:`tlc.iospec.ImageType.to_pixels`)."""
    for im in io.images:
        x = feeds[im.name]
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        feeds = {**feeds, im.name: im.spec.to_pixels(x)}
    return feeds


def model_outputs(io: PackageIO, out: dict) -> dict:
    """Package outputs (``CompiledModel.run``) as the model returns them: an image output's pixel
    values mapped back through its ``scale`` and ``bias`` (``(pixels - bias) / scale``)."""
    for im in io.image_outputs:
        p = np.asarray(out[im.name], np.float64)
        s = im.spec
        v = (p - np.reshape(s.bias, (1, -1, 1, 1))) / np.reshape(s.scale, (1, -1, 1, 1))
        out = {**out, im.name: (v if s.channel_first else v.transpose(0, 2, 3, 1)).astype(np.float32)}
    return out


def graph_outputs(io: PackageIO, got: dict, output_names: list[str]) -> dict:
    """A package's outputs (``MILInterpreter.run``) as the graph's: a classifier's dictionary as the
    probabilities tensor (``[1, N]``, label order) under the graph's output name, an image output
    (uint8 ``[H, W, C]`` or a PIL image: :func:`tlc.runtime.mil_io.image_to_tensor`) as its float
    ``[1, C, H, W]`` pixels; for comparing with the model."""
    got = dict(got)
    c = io.classifier
    if c is not None and c.dict_name in got:
        d = got.pop(c.dict_name)
        d = d.item() if isinstance(d, np.ndarray) else d
        got[c.probabilities] = np.asarray([[d[k] for k in c.labels]], np.float32)
    for im in io.image_outputs:  # a bundle's image output is already the [1, C, H, W] tensor
        got[im.name] = np.asarray(image_to_tensor(got[im.name], ImageFormat(im.color_layout), im.name), np.float32)
    return {n: got[n] for n in output_names if n in got}


__all__ = ["graph_outputs", "exported_class", "example_inputs_of", "image_feeds", "pixel_feeds", "model_outputs", "unwrap", "signature_key", "calibration_feed", "complex_boundary", "source_of", "model_name"]
