"""The package interface bound to a traced graph (:func:`bind_interface`): input and output names,
image pre- and post-processing as IR ops, and the classifier's checks.

This is not a pipeline pass (it needs the user's declarations, :class:`tlc.iospec.Interface`, and
runs once, before the pipeline, in :func:`tlc.driver.single.build_one`), but it is written like
one: a function of the graph that returns a new graph, with a Given/Result docstring. The image
ops it adds are ordinary IR nodes, so the passes see them, the precision pass types them, the
placement report lists where they run, and emission writes them as MIL ops (what coremltools'
``insert_image_preprocessing_ops`` pass writes for ``ct.ImageType``: ``mul`` then ``add``).
"""
from __future__ import annotations

import numpy as np

from tlc.dtypes import TensorType as ValueType
from tlc.errors import InputError
from tlc.ir import Graph, GraphBuilder, Node, SourceLoc, Value, replace, verify
from tlc.iospec import (BoundClassifier, ClassifierConfig, ImageIO, ImageType, Interface, PackageIO, TensorType,
                        check_name)

#: traced dtypes a :class:`~tlc.iospec.TensorType` dtype may stand for
_FAMILY = {"float32": ("fp32", "fp16"), "float16": ("fp32", "fp16"), "int32": ("int32", "bool")}


def _rebuild(g: Graph, subst: dict[Value, Value], front=(), back=(), **changes) -> Graph:
    """``g`` with every read of a key of ``subst`` reading its value, ``front`` nodes before its
    nodes and ``back`` nodes after them (and ``changes``: inputs, outputs, output_names)."""
    def s(v):
        return subst.get(v, v)

    nodes = [n if not any(v in subst for v in n.inputs) else Node(n.op, tuple(map(s, n.inputs)), n.outputs, n.attrs,
                                                                   n.name, n.loc) for n in g.nodes]
    fields = {"nodes": tuple(front) + tuple(nodes) + tuple(back), "outputs": tuple(map(s, g.outputs))}
    fields.update(changes)
    return replace(g, **fields)


def _builder(g: Graph, taken: set[str]) -> GraphBuilder:
    """A builder whose new names avoid every name of ``g`` and ``taken``."""
    b = GraphBuilder()
    b._names.update(v.name for v in g.inputs)
    b._names.update(v.name for n in g.nodes for v in n.outputs)
    b._names.update(n.name for n in g.nodes)
    b._names.update(taken)
    return b


def _free_names(g: Graph, names: set[str]) -> Graph:
    """``g`` with its internal values (node outputs) that are called one of ``names`` renamed, so
    those names can be given to inputs or outputs (internal names are tlc's, never the user's)."""
    clash = [n for n in g.nodes if any(v.name in names for v in n.outputs) or n.name in names]
    if not clash:
        return g
    b = _builder(g, names)
    subst: dict[Value, Value] = {}
    renamed: dict[int, Node] = {}
    for n in clash:
        outs = tuple(Value(b.unique(v.name + "_"), v.type) if v.name in names else v for v in n.outputs)
        subst.update((a, c) for a, c in zip(n.outputs, outs) if a is not c)
        renamed[id(n)] = Node(n.op, n.inputs, outs, n.attrs, b.unique(n.name + "_") if n.name in names else n.name, n.loc)
    nodes = []
    for n in g.nodes:
        n = renamed.get(id(n), n)
        if any(v in subst for v in n.inputs):
            n = Node(n.op, tuple(subst.get(v, v) for v in n.inputs), n.outputs, n.attrs, n.name, n.loc)
        nodes.append(n)
    return replace(g, nodes=tuple(nodes), outputs=tuple(subst.get(v, v) for v in g.outputs))


def _image_shape(spec: ImageType, t, what: str) -> tuple[int, int]:
    """``(H, W)`` of the model's image tensor type ``t``; :class:`InputError` unless it is a float
    ``[1, C, H, W]`` (``[1, H, W, C]`` for ``channel_first=False``) with C the layout's channels."""
    c = spec.channels
    want = "[1, C, H, W]" if spec.channel_first else "[1, H, W, C]"
    if t.dtype not in ("fp32", "fp16"):
        raise InputError(f"ImageType {what} is {t.dtype} in the model; an image is a float tensor {want} "
                         f"(Core ML feeds 0-255 float values)")
    shape = tuple(t.shape)
    ch = None if len(shape) != 4 else shape[1] if spec.channel_first else shape[3]
    if len(shape) != 4 or shape[0] != 1 or ch != c:
        raise InputError(f"ImageType {what} has shape {list(shape)}; a {spec.color_layout} image is {want} with "
                         f"C = {c} (batch 1){'' if spec.channel_first else ' (channel_first=False)'}")
    return (shape[2], shape[3]) if spec.channel_first else (shape[1], shape[2])


def _affine(b: GraphBuilder, x: Value, spec: ImageType, name: str, loc: SourceLoc) -> Value:
    """``x * scale + bias`` per channel of a ``[1, C, H, W]`` value (ops left out where they do nothing)."""
    c = spec.channels
    for op, vals, suffix, neutral in (("mul", spec.scale, "__scaled__", 1.0), ("add", spec.bias, "__biased__", 0.0)):
        if all(v == neutral for v in vals):
            continue
        arr = np.float32(vals[0]) if len(set(vals)) == 1 else np.asarray(vals, np.float32).reshape(1, c, 1, 1)
        const = b.const(np.asarray(arr, np.float32), name=f"{name}{suffix}_value", loc=loc)
        x = b.add(op, [x, const], name=f"{name}{suffix}", loc=loc).out
    return x


def _check_dtype(spec: TensorType, t, what: str) -> None:
    if spec.dtype is not None and t.dtype not in _FAMILY[spec.dtype]:
        raise InputError(f"TensorType(dtype={spec.dtype}) for {what}, which is {t.dtype} in the model: tlc does not "
                         f"insert a cast the model does not have (int64 inputs are int32 in any package)")


def bind_interface(g: Graph, iface: Interface) -> tuple[Graph, PackageIO]:
    """Apply the I/O declarations ``iface`` to the traced graph ``g``; returns the graph the
    package is built from and the :class:`~tlc.iospec.PackageIO` emission needs.

    Given:  graph(%pixel_values: fp32[1, 3, 224, 224]) -> logits
            with inputs=[ImageType(name="image", scale=s, bias=b)], outputs=[TensorType(name="probs")]
    Result: graph(%image: fp32[1, 3, 224, 224]) -> probs
            %image__scaled__ = mul(%image, s); %image__biased__ = add(%image__scaled__, b)
            (and every read of %pixel_values reads %image__biased__)

    ``inputs``/``outputs`` entries apply to the model's inputs/outputs in order; a ``TensorType``
    renames (and describes) one, an ``ImageType`` also adds the ops (:class:`tlc.iospec.ImageType`).
    A classifier's probabilities output must be float with one value per label. Raises
    :class:`~tlc.errors.InputError` naming the input or output: more declarations than the model has
    inputs/outputs, an image that is not a float ``[1, C, H, W]`` with the layout's channels, a
    dtype of another family, labels whose count differs from the output's size, names that clash.
    With nothing declared, ``g`` is returned as it is."""
    if not iface.declares_io:
        return g, PackageIO(metadata=iface.metadata)
    names_in = [v.name for v in g.inputs]
    if len(iface.inputs) > len(g.inputs):
        raise InputError(f"inputs= declares {len(iface.inputs)} inputs; the model has {len(g.inputs)} "
                         f"({', '.join(names_in)})")
    if len(iface.outputs) > len(g.outputs):
        raise InputError(f"outputs= declares {len(iface.outputs)} outputs; the model has {len(g.outputs)} "
                         f"({', '.join(g.output_names)})")
    new_in = [s.name if s is not None and s.name else v.name for s, v in zip(iface.inputs, g.inputs)] + \
        names_in[len(iface.inputs):]
    new_out = [s.name if s is not None and s.name else n for s, n in zip(iface.outputs, g.output_names)] + \
        list(g.output_names[len(iface.outputs):])
    _unique(new_in, new_out)
    g = _free_names(g, set(new_in) - set(names_in))
    b = _builder(g, set(new_in) | set(new_out))
    subst: dict[Value, Value] = {}
    inputs, front, images, descr = [], [], [], []
    for i, v in enumerate(g.inputs):
        spec = iface.inputs[i] if i < len(iface.inputs) else None
        name = new_in[i]
        what = f"input {i} ({v.name}{'' if name == v.name else ' -> ' + name})"
        if isinstance(spec, TensorType):
            _check_dtype(spec, v.type, what)
        if isinstance(spec, ImageType):
            h, w = _image_shape(spec, v.type, what)
            shape = (1, spec.channels, h, w)
            nv = Value(name, ValueType("fp32", shape))
            loc = SourceLoc(None, None, f"ImageType input {name!r}: pixel * scale + bias", f"image input {name}")
            start = len(b.nodes)
            x = _affine(b, nv, spec, name, loc)
            if not spec.channel_first:
                x = b.add("transpose", [x], {"perm": (0, 2, 3, 1)}, name=f"{name}__channels_last__", loc=loc).out
            if x.type.dtype != v.type.dtype:
                x = b.add("cast", [x], {"dtype": v.type.dtype}, name=f"{name}__cast__", loc=loc).out
            front += b.nodes[start:]
            images.append(ImageIO(name, spec.color_layout, shape, spec))
            subst[v] = x
        elif name != v.name:
            nv = Value(name, v.type)
            subst[v] = nv
        else:
            nv = v
        inputs.append(nv)
        if spec is not None and spec.description:
            descr.append((name, spec.description))
    g = _rebuild(g, subst, front=front, inputs=tuple(inputs))
    outs, back, image_outs = list(g.outputs), [], []
    for i, (spec, v) in enumerate(zip(iface.outputs, g.outputs)):
        what = f"output {i} ({g.output_names[i]}{'' if new_out[i] == g.output_names[i] else ' -> ' + new_out[i]})"
        if isinstance(spec, TensorType):
            _check_dtype(spec, v.type, what)
        if isinstance(spec, ImageType):
            h, w = _image_shape(spec, v.type, what)
            loc = SourceLoc(None, None, f"ImageType output {new_out[i]!r}: value * scale + bias",
                            f"image output {new_out[i]}")
            start = len(b.nodes)
            x = v if v.type.dtype == "fp32" else b.add("cast", [v], {"dtype": "fp32"}, name=f"{new_out[i]}__cast__",
                                                      loc=loc).out
            if not spec.channel_first:
                x = b.add("transpose", [x], {"perm": (0, 3, 1, 2)}, name=f"{new_out[i]}__channels_first__", loc=loc).out
            x = _affine(b, x, spec, new_out[i], loc)
            back += b.nodes[start:]
            outs[i] = x
            image_outs.append(ImageIO(new_out[i], spec.color_layout, (1, spec.channels, h, w), spec))
        if spec is not None and spec.description:
            descr.append((new_out[i], spec.description))
    g = _rebuild(g, {}, back=back, outputs=tuple(outs), output_names=tuple(new_out))
    classifier = _bind_classifier(g, iface, new_in, descr) if iface.classifier is not None else None
    verify(g)
    return g, PackageIO(tuple(images), tuple(image_outs), classifier, tuple(descr), iface.metadata)


def _unique(inputs: list[str], outputs: list[str]) -> None:
    seen: dict[str, str] = {}
    for kind, names in (("input", inputs), ("output", outputs)):
        for n in names:
            check_name(n, kind)
            if n in seen:
                raise InputError(f"{kind} name {n!r} is used twice ({seen[n]} and {kind}); Core ML feature names "
                                 f"must differ")
            seen[n] = kind


def _bind_classifier(g: Graph, iface: Interface, inputs: list[str], descr: list) -> BoundClassifier:
    cfg: ClassifierConfig = iface.classifier
    names = list(g.output_names)
    probs = cfg.predicted_probabilities_output or names[0]
    if probs not in names:
        raise InputError(f"ClassifierConfig predicted_probabilities_output {probs!r} is not an output of the model "
                         f"(outputs: {', '.join(names)})")
    i = names.index(probs)
    t = g.outputs[i].type
    n = int(np.prod(t.shape)) if t.shape else 1
    if t.dtype not in ("fp32", "fp16"):
        raise InputError(f"classifier output {probs!r} is {t.dtype}; the probabilities of a classifier are float")
    if n != len(cfg.class_labels) or any(d != 1 for d in t.shape[:-1]):
        raise InputError(f"class_labels has {len(cfg.class_labels)} labels but the classifier output {probs!r} has shape "
                         f"{list(t.shape)} ({n} values): Core ML's classifier needs one value per label, batch 1")
    named = i < len(iface.outputs) and iface.outputs[i] is not None and iface.outputs[i].name
    dict_name = probs if named else f"{cfg.predicted_feature_name}_probs"
    label = cfg.predicted_feature_name
    others = [o for o in names if o != probs]
    for nm in (label, dict_name):
        if nm in inputs or nm in others:
            raise InputError(f"classifier output name {nm!r} is also the name of an {'input' if nm in inputs else 'output'}"
                             f"; choose another predicted_feature_name or output name")
    if label == dict_name:
        raise InputError(f"classifier label and probabilities outputs are both named {label!r}")
    text = dict(descr)
    if dict_name != probs and probs in text:
        text[dict_name] = text.pop(probs)
    text.setdefault(label, "the label with the highest probability")
    text.setdefault(dict_name, "the probability of each label")
    descr[:] = list(text.items())
    return BoundClassifier(cfg.class_labels, label, dict_name, probs)


def package_feed(traced: Graph, g: Graph, io: PackageIO, feed: dict) -> dict:
    """A feed of the traced model's inputs (``{traced input name: array}``) as the package built
    from ``g`` takes it: under the package's input names, image inputs as their 0-255 image
    tensors (:meth:`tlc.iospec.ImageType.to_pixels`)."""
    images = {im.name: im.spec for im in io.images}
    out = {}
    for old, new in zip(traced.inputs, g.inputs):
        a = feed[old.name]
        out[new.name] = images[new.name].to_pixels(a) if new.name in images else a
    return out


__all__ = ["bind_interface", "package_feed"]
