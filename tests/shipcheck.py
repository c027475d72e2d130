"""Test helper: build, check the artifact is one .mlpackage, save it, reload it with
``tlc.runtime.load`` and compare every output with torch eager (float64 where the model allows)."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.utils._pytree as pytree

import tlc
from tlc.runtime import load
from tlc.check.metrics import rel_l2


def reference(model, inputs, double: bool = True) -> list[torch.Tensor]:
    """torch eager outputs (flattened), in float64 when ``double`` (a deep copy of a module)."""
    m = model
    ins = list(inputs)
    if double:
        if isinstance(model, torch.nn.Module):
            m = copy.deepcopy(model).double()
        ins = [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in ins]
    try:
        with torch.no_grad():
            out = m(*ins)
    except RuntimeError:  # a function with float32 constants of its own: compare in float32
        if not double:
            raise
        return reference(model, inputs, double=False)
    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


def compare(got: np.ndarray, want: torch.Tensor, tol: float, what: str) -> None:
    want_np = want.detach().numpy()
    assert tuple(got.shape) == tuple(want_np.shape), f"{what}: shape {got.shape}, torch {want_np.shape}"
    if want_np.dtype.kind in "biu":
        np.testing.assert_array_equal(got.astype(np.int64), want_np.astype(np.int64), err_msg=what)
    else:
        err = rel_l2(got, want_np)
        assert err <= tol, f"{what}: rel-L2 {err:.3g} > {tol:g}"


def ship(model, inputs, tmp_path, *, tol: float, precision: str = "fp32", double: bool = True, name: str = "m",
         **build_options):
    """Build ``model`` on ``inputs``; assert it is one .mlpackage (no fallback op); save, reload,
    run and compare each output with torch (``tol`` relative L2; integers exactly), in memory too.
    Returns the CompiledModel."""
    cm = tlc.build(model, tuple(inputs), precision=precision, **build_options)
    assert not cm.is_bundle, f"{name}: not one .mlpackage: {cm.fallback_ops()}"
    assert cm.fallback_ops() == []
    refs = reference(model, inputs, double)
    path = cm.save(tmp_path / f"{name}.mlpackage")
    assert path.suffix == ".mlpackage"
    feeds = {n: (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)) for n, x in zip(cm.input_names, inputs)}
    out = load(path)(feeds)
    assert list(out) == cm.output_names
    for n, r in zip(cm.output_names, refs):
        compare(out[n], r, tol, f"{name}: saved output {n}")
    if precision == "fp32":
        mem = cm.run(feeds, backend="numpy")
        for n, r in zip(cm.output_names, refs):
            compare(mem[n], r, tol, f"{name}: in-memory output {n}")
    return cm
