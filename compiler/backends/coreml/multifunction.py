"""Multifunction Core ML programs: single-function programs merged into one, with equal weights
stored once (:func:`merge_functions`, :func:`share_weights`) — what coremltools'
``utils.save_multifunction`` makes, built in memory."""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from tlc.util.coreml import MULTIFUNCTION_MIN_TARGET as MIN_TARGET, at_least

from .compress import array_identity
from .emit import serialize

def share_weights(prog) -> int:
    """Give every group of equal constants in ``prog``'s functions one ``weight_id``, so
    coremltools' milproto backend writes each once to the weight file (its
    ``weight_id_to_file_value``; what ``save_multifunction``'s ``const_deduplication`` pass does).
    Constants that are views of the same memory (the same model weight read by several functions:
    ``tlc.frontend.lower.shared_weights``) are grouped by :func:`tlc.backends.coreml.compress.array_identity`; each
    such group, then, is read once and merged with equal ones by shape, dtype and a BLAKE2b digest
    of its bytes (copies with equal values). Returns the number of shared groups."""
    groups: dict = {}
    for f in prog.functions.values():
        for op in f.operations:
            if op.op_type != "const":
                continue
            op._weight_id = None  # an earlier save's ids (the setter refuses None and a second id)
            val = op.outputs[0].val
            if not isinstance(val, np.ndarray) or val.size < 16:
                continue
            groups.setdefault(array_identity(val), []).append(op)
    by_content: dict = {}
    for key, ops in list(groups.items()):
        val = ops[0].outputs[0].val
        digest = hashlib.blake2b(np.ascontiguousarray(val).data, digest_size=16).hexdigest()
        by_content.setdefault((val.shape, val.dtype.str, digest), []).extend(ops)
    shared = 0
    for i, ops in enumerate(by_content.values()):
        if len(ops) > 1:
            shared += 1
            for op in ops:
                op.weight_id = str(i)
    return shared


def merge_functions(mlmodels: Mapping[str, Any], default_function_name: str, minimum_deployment_target: str):
    """One multifunction ``MLModel`` (iOS18 or newer) from single-function ``MLModel`` s
    (``{function name: model}``, each with its ``main`` program in memory): their programs become
    the functions of one program, equal weights are stored once (:func:`share_weights`), and each
    function keeps its own I/O description — what coremltools' ``utils.save_multifunction`` does,
    without writing the functions out and reading all their weights back first (a 1.1B-parameter
    LM's two functions would hold three copies of its weights; issue 15). Raises :class:`EmitError`."""
    from coremltools.converters.mil.mil import Program
    from coremltools.proto import Model_pb2

    prog = Program()
    descriptions = []
    for name, mlm in mlmodels.items():
        prog.add_function(name, mlm._mil_program.functions["main"])
        d = mlm.get_spec().description
        descriptions.append(Model_pb2.FunctionDescription(name=name, input=d.input, output=d.output, state=d.state,
                                                          predictedFeatureName=d.predictedFeatureName,
                                                          predictedProbabilitiesName=d.predictedProbabilitiesName))
    share_weights(prog)
    prog.default_function_name = default_function_name
    prog.skip_all_passes = True
    prog.export_as_multifunction = True
    target = minimum_deployment_target if at_least(minimum_deployment_target, MIN_TARGET) else MIN_TARGET
    return serialize(prog, target, model_description=Model_pb2.ModelDescription(
        functions=descriptions, defaultFunctionName=default_function_name))


__all__ = ["merge_functions", "share_weights"]
