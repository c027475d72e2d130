"""Stateful Core ML programs (iOS18 ``MLState``): turn a function's cache input and the output
that holds the new entries into one state buffer the program reads and updates itself.

tlc builds every function with its caches as plain I/O first (that is the form its IR, its
executors, the mixed-precision closed loop and compression all work on); :func:`make_stateful`
then rewrites the finished MIL program, so both forms compute exactly the same thing:

* the input ``state`` becomes a state of the same shape (``StateTensorPlaceholder``), read once at
  the top with ``read_state``;
* the output ``output`` (the entries of this call's tokens) is written into the value read, along
  ``axis`` starting at the int32 ``[1]`` input ``offset``, with ``slice_update`` (iOS18), and the
  result stored back with ``coreml_update_state``; the output itself is dropped.

Core ML holds states in float16 only (coremltools ``backend/mil/load.py``: "Core ML only support
fp16 for state"), so an fp32 program reads its cache through a cast to fp32 and writes through a
cast to fp16; a mixed/fp16 program, which already cast the cache input to fp16, reads the state
directly. This form is what Core ML's GPU path wants (coremltools "Stateful Models" guide; the
stateful Mistral-7B example); Apple's Neural Engine rules ask for the opposite (no in-graph writes:
apple/coreai-models ``neural_engine_rules.md``), which is why ``kv_cache="io"`` is tlc's default.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlc.errors import EmitError
from tlc.runtime import load_program
from tlc.util.coreml import at_least, resolve_target

from .emit import copy_metadata, serialize
from .package import write_package


@dataclass(frozen=True)
class StateBinding:
    """``state``: the input that becomes a state; ``output``: the output written into it (then
    dropped); ``axis``: the axis of the write; ``offset``: the int32 ``[1]`` input holding where
    along ``axis`` the write starts."""

    state: str
    output: str
    axis: int
    offset: str


def _only_casts_to_fp16(var) -> list:
    ops = list(var.child_ops)
    if ops and all(op.op_type == "cast" and op.dtype.val == "fp16" for op in ops):
        return ops
    return []


def make_stateful(prog, bindings, function_name: str = "main") -> None:
    """Rewrite function ``function_name`` of the MIL ``prog`` in place as the module docstring says.
    Raises :class:`EmitError` when a bound input or output is missing, the offset is not an int32
    ``[1]`` input, or the output's shape does not fit the state along ``axis``."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.program import StateTensorPlaceholder

    func = prog.functions[function_name]
    outputs = {o.name: o for o in func.outputs}
    for b in bindings:
        for name, kind in ((b.state, "input"), (b.offset, "input"), (b.output, "output")):
            if name not in (func.inputs if kind == "input" else outputs):
                raise EmitError(f"make_stateful: function {function_name} has no {kind} {name!r}")
        old, new, offset = func.inputs[b.state], outputs[b.output], func.inputs[b.offset]
        if tuple(offset.shape) != (1,) or offset.dtype != types.int32:
            raise EmitError(f"make_stateful: offset {b.offset!r} must be int32 [1], got {offset.sym_type}")
        shape = tuple(int(d) for d in old.shape)
        if len(new.shape) != len(shape) or any(
                int(a) != s for k, (a, s) in enumerate(zip(new.shape, shape)) if k != b.axis):
            raise EmitError(f"make_stateful: output {b.output}{list(new.shape)} does not fit state {b.state}"
                            f"{list(shape)} along axis {b.axis}")
        casts = _only_casts_to_fp16(old)
        placeholder = StateTensorPlaceholder(shape, dtype=types.fp16, name=b.state)
        func.placeholder_inputs[b.state] = placeholder
        func._input_dict[b.state] = placeholder.outputs[0]
        func.function_inputs = tuple(func._input_dict.values())
        state = placeholder.outputs[0]
        with func:
            first = func.operations[0]
            read = mb.read_state(input=state, before_op=first, name=f"{b.state}_read")
            if casts:  # mixed/fp16: the program already reads the cache in fp16
                for op in casts:
                    func.replace_uses_of_var_after_op(anchor_op=None, old_var=op.outputs[0], new_var=read)
                func.remove_ops(casts)
            else:
                dt = types.builtin_to_string(old.dtype)
                value = mb.cast(x=read, dtype=dt, before_op=first, name=f"{b.state}_read_{dt}")
                func.replace_uses_of_var_after_op(anchor_op=value.op, old_var=old, new_var=value)
            src = new
            if src.op is not None and src.op.op_type == "cast" and src.op.x.dtype == types.fp16:
                src = src.op.x  # the fp16 value before the output cast
            elif src.dtype != types.fp16:
                src = mb.cast(x=src, dtype="fp16", name=f"{b.output}_fp16")
            rank = len(shape)
            begin = mb.concat(values=[np.zeros(b.axis, np.int32), offset, np.zeros(rank - b.axis - 1, np.int32)],
                              axis=0, name=f"{b.state}_begin")
            end = mb.add(x=begin, y=np.array([int(d) for d in new.shape], np.int32), name=f"{b.state}_end")
            updated = mb.slice_update(x=read, update=src, begin=begin, end=end, name=f"{b.state}_updated")
            mb.coreml_update_state(state=state, value=updated, name=f"{b.state}_write")
        func.set_outputs([o for o in func.outputs if o.name != b.output])
        outputs.pop(b.output)
        dead = new.op
        while dead is not None and not dead.outputs[0].child_ops and dead.outputs[0] not in func.outputs \
                and dead.op_type in ("cast", "identity"):
            up = dead.x if dead.x.op is not None else None
            func.remove_ops([dead])
            dead = up.op if up is not None else None
    func.output_types = None


def stateful_mlmodel(mlmodel, bindings, minimum_deployment_target: str = "iOS18"):
    """A new ``MLModel`` of ``mlmodel``'s program with :func:`make_stateful` applied (the program is
    reloaded from ``mlmodel``'s package, so ``mlmodel`` stays as it was), with its metadata,
    version and description. Needs iOS18 (``read_state``/``slice_update``); raises
    :class:`EmitError`."""
    if not at_least(minimum_deployment_target, "iOS18"):
        raise EmitError(f"kv_cache='state' needs minimum_deployment_target iOS18 or newer (MLState), got "
                        f"{minimum_deployment_target}")
    with tempfile.TemporaryDirectory(prefix="tlc-stateful-") as tmp:
        src = Path(tmp) / "io.mlpackage"
        write_package(mlmodel, src)
        _, _, prog = load_program(src)
        make_stateful(prog, bindings)
        prog.functions["main"].opset_version = resolve_target(minimum_deployment_target)
        out = serialize(prog, minimum_deployment_target)
    copy_metadata(mlmodel.get_spec(), out)
    return out


__all__ = ["StateBinding", "make_stateful", "stateful_mlmodel"]
