"""Control flow and tensor lists in tlc's MIL interpreter: ``cond``, ``while_loop``, ``make_list``,
``list_length``, ``list_read``, ``list_write``, ``list_gather``, ``list_scatter``
(coremltools ``converters/mil/mil/ops/defs/iOS15/control_flow.py``).

These are not kernels over arrays: ``cond`` and ``while_loop`` run nested blocks of the program,
and lists are values of their own (:class:`TensorList`), so they are built-ins of the
interpreter (:data:`tlc.runtime.mil_interpreter.BUILTINS`) rather than rows of the op table.
Tests: tests/test_mil_structure.py.
"""
from __future__ import annotations

import numpy as np

from tlc.errors import TlcError

_LIST_DTYPES = {"fp32": np.float32, "fp16": np.float32, "int32": np.int32, "bool": np.bool_}


class TensorList:
    """A MIL list: ``items`` (arrays of one ``elem_shape``, None where never written), growable
    when ``dynamic``. Lists are values: list_write / list_scatter return a new list."""

    __slots__ = ("items", "elem_shape", "dtype", "dynamic")

    def __init__(self, items, elem_shape, dtype, dynamic):
        self.items, self.elem_shape, self.dtype, self.dynamic = items, elem_shape, dtype, dynamic

    def read(self, i: int, where: str) -> np.ndarray:
        if not -len(self.items) <= i < len(self.items):
            raise TlcError(f"{where}: index {i} is outside the list (length {len(self.items)})")
        v = self.items[i]
        return np.zeros(self.elem_shape, self.dtype) if v is None else v

    def written(self, pairs, where: str) -> "TensorList":
        items = list(self.items)
        for i, v in pairs:
            if i >= len(items):
                if not self.dynamic:
                    raise TlcError(f"{where}: index {i} is past the end of a fixed-length list ({len(items)})")
                items += [None] * (i + 1 - len(items))
            items[i] = np.asarray(v)
        return TensorList(items, self.elem_shape, self.dtype, self.dynamic)


def _v(interp, op, env, name):
    var = op.inputs.get(name)
    return None if var is None else interp._value(op, var, env)


def _cond(interp, op, env):
    """``cond``: run the true block (``blocks[0]``) if ``pred`` else the false block."""
    pred = bool(np.asarray(_v(interp, op, env, "pred")).item())
    return interp._run_block(op.blocks[0 if pred else 1], env, [])


def _while_loop(interp, op, env):
    """``while_loop``: while the cond block (``blocks[0]``) gives True on the loop variables,
    replace them by the body block's (``blocks[1]``) outputs; the outputs are their final values."""
    vals = [interp._value(op, v, env) for v in op.inputs["loop_vars"]]
    cond_block, body = op.blocks
    for _ in range(1 << 31):
        (go,) = interp._run_block(cond_block, env, vals)
        if not bool(np.asarray(go).item()):
            return vals
        vals = interp._run_block(body, env, vals)
    raise TlcError(f"MIL op {op.name} (while_loop) ran 2^31 iterations without its condition turning false")


def _make_list(interp, op, env):
    """``make_list``: ``init_length`` (default 1) unwritten elements of ``elem_shape``, ``dtype``
    (default fp32; fp16 held in float32 as every fp16 value here), growable if ``dynamic_length``
    (default True)."""
    n = _v(interp, op, env, "init_length")
    n = 1 if n is None else int(np.asarray(n).item())
    dyn = _v(interp, op, env, "dynamic_length")
    dt = _v(interp, op, env, "dtype")
    shape = tuple(int(np.asarray(interp._value(op, d, env)).item()) for d in op.inputs["elem_shape"])
    return [TensorList([None] * n, shape, _LIST_DTYPES[str(dt) if dt is not None else "fp32"],
                       True if dyn is None else bool(dyn))]


def _list_length(interp, op, env):
    return [np.int32(len(_v(interp, op, env, "ls").items))]


def _list_read(interp, op, env):
    ls = _v(interp, op, env, "ls")
    return [np.array(ls.read(int(np.asarray(_v(interp, op, env, "index")).item()), op.name), copy=True)]


def _list_write(interp, op, env):
    i = int(np.asarray(_v(interp, op, env, "index")).item())
    return [_v(interp, op, env, "ls").written([(i, _v(interp, op, env, "value"))], op.name)]


def _list_gather(interp, op, env):
    """``list_gather``: the elements at ``indices`` stacked on a new leading axis."""
    ls = _v(interp, op, env, "ls")
    idx = np.asarray(_v(interp, op, env, "indices")).astype(int).ravel()
    return [np.stack([ls.read(int(i), op.name) for i in idx]) if idx.size else np.zeros((0,) + ls.elem_shape, ls.dtype)]


def _list_scatter(interp, op, env):
    """``list_scatter``: ``value[k]`` written at ``indices[k]``."""
    ls = _v(interp, op, env, "ls")
    idx = np.asarray(_v(interp, op, env, "indices")).astype(int).ravel()
    val = np.asarray(_v(interp, op, env, "value"))
    return [ls.written([(int(i), val[k]) for k, i in enumerate(idx)], op.name)]


#: the built-ins of this module, by MIL op type (merged into :data:`tlc.runtime.mil_interpreter.BUILTINS`)
CONTROL_BUILTINS = {"cond": _cond, "while_loop": _while_loop, "make_list": _make_list, "list_length": _list_length,
                    "list_read": _list_read, "list_write": _list_write, "list_gather": _list_gather,
                    "list_scatter": _list_scatter}
