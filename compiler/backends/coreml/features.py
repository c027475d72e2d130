"""The package an app developer sees (issue 32): image inputs and outputs, Core ML's classifier
outputs, feature descriptions and the model page's metadata, put on a tensor program emitted by
:func:`tlc.backends.coreml.emit.convert` (:func:`finish_package`).

The spec is written by coremltools' own machinery: the milproto backend's exporter
(coremltools/converters/mil/backend/mil/load.py ``get_func_input`` / ``get_func_output``) turns a
function's ``ct.ImageType`` input and output types into ``imageType`` features, and its
``classifier_config`` adds the ``classify`` op and the classifier description
(``predictedFeatureName``, ``predictedProbabilitiesName``, a String/Int64 label);
``ct.utils.rename_feature`` renames a feature; ``MLModel.author`` / ``input_description`` /
``user_defined_metadata`` write the rest. The image arithmetic (``scale``, ``bias``) is already in
the program as tlc IR ops (:func:`tlc.passes.interface.bind_interface`), so the ``ct.ImageType``
here carries none.

The closed loop of ``precision="mixed"`` and weight compression work on the tensor program; the
package is finished last, so neither sees a classifier's dictionary output.
"""
from __future__ import annotations

from tlc.errors import EmitError
from tlc.iospec import PackageIO
from tlc.util.coreml import quiet_coremltools as _ct, resolve_target

from .emit import copy_metadata, serialize


def _rename_output(prog, spec, old: str, new: str) -> None:
    """Rename output feature ``old`` of the program in memory and of its spec."""
    ct = _ct()
    for v in prog.functions["main"].outputs:
        if v.name == old:
            v.name = new
    ct.utils.rename_feature(spec, old, new, rename_inputs=False)


def finish_package(mlmodel, io: PackageIO, minimum_deployment_target: str):
    """``mlmodel`` (a tensor program from :func:`tlc.backends.coreml.emit.convert`, compressed or
    not) as the package ``io`` describes: image inputs/outputs (``imageType`` features of the
    declared color layout), the classifier (``classify`` on the probabilities output, whose
    dictionary gets ``io.classifier.dict_name``), feature descriptions, and ``author``,
    ``license``, ``version``, ``short_description`` and user-defined metadata over tlc's. Images
    and a classifier re-serialize the program (with its weights; the program in ``mlmodel`` is
    reused and changed: the caller replaces ``mlmodel`` by the result); descriptions and metadata
    are set on the spec. Raises :class:`EmitError` when coremltools refuses the declarations."""
    ct = _ct()
    if io.images or io.image_outputs or io.classifier is not None:
        prog = mlmodel._mil_program
        func = prog.functions["main"]
        spec = mlmodel.get_spec()
        if io.images:
            func.input_types = tuple(ct.ImageType(name=im.name, shape=im.shape, channel_first=True,
                                                  color_layout=getattr(ct.colorlayout, im.color_layout))
                                     for im in io.images)
        if io.image_outputs:
            images = {im.name: im for im in io.image_outputs}
            layout = {n: getattr(ct.colorlayout, im.color_layout) for n, im in images.items()}
            func.set_output_types([ct.ImageType(name=v.name, color_layout=layout[v.name]) if v.name in images
                                   else ct.TensorType(name=v.name) for v in func.outputs])
        config = None
        c = io.classifier
        if c is not None:
            probs = next(v for v in func.outputs if v.name == c.probabilities)
            taken = {v.name for op in func.operations for v in op.outputs} | set(func.inputs)
            tensor = f"{c.probabilities}_values"
            while tensor in taken:
                tensor += "_"
            probs.name = tensor  # the dictionary may take the output's name
            config = ct.ClassifierConfig(list(c.labels), predicted_feature_name=c.label_name,
                                         predicted_probabilities_output=tensor)
        try:
            out = serialize(prog, resolve_target(minimum_deployment_target), classifier_config=config)
        except EmitError as e:
            raise EmitError(f"coremltools refuses the package's image or classifier declarations: {e.args[0]}") from None
        if c is not None and c.dict_name != f"{c.label_name}_probs":
            _rename_output(prog, out._spec, f"{c.label_name}_probs", c.dict_name)
        copy_metadata(spec, out)
        mlmodel = out
    describe(mlmodel, io)
    return mlmodel


def describe(mlmodel, io: PackageIO) -> None:
    """Set ``io``'s feature descriptions and metadata on ``mlmodel``'s spec (in place)."""
    names_in = {f.name for f in mlmodel._spec.description.input}
    for name, text in io.descriptions:
        (mlmodel.input_description if name in names_in else mlmodel.output_description)[name] = text
    md = io.metadata
    for field in ("author", "license", "version", "short_description"):
        if getattr(md, field) is not None:
            setattr(mlmodel, field, getattr(md, field))
    for k, v in md.user:
        mlmodel.user_defined_metadata[k] = v


__all__ = ["finish_package", "describe"]
