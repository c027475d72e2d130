"""The torch-device executor (runtime/torch_executor.py) and the ``torch`` kernels of the op table.

Always (CPU): every op row has a torch kernel or a host-only reason; each op's torch kernel agrees
with its NumPy kernel on one-node graphs; the small spine architectures (tests/archs.py) agree with
torch eager; inputs, outputs and errors at the edges.
With a GPU (``cuda`` or ``mps``; otherwise skipped, the reason shown by ``pytest -ra``): the same
per-op and architecture checks on the device, fp16, CUDA-graph capture, device tensors passing
through with no copy, and two executors chained on the device.
"""
import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import archs
import tlc
from tlc.errors import InputError, TlcError
from tlc.ir import GraphBuilder, TensorType, dtype_of
from tlc.ops import OPS
from tlc.runtime import run_graph
from tlc.runtime.torch_executor import TorchExecutor, default_capture, default_device

GPU = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else None
needs_gpu = pytest.mark.skipif(GPU is None, reason="no GPU here: torch.cuda.is_available() and "
                                                   "torch.backends.mps.is_available() are both False")
rng = np.random.default_rng(0)


def R(*shape, lo=-2.0, hi=2.0, dtype=np.float32):
    return rng.uniform(lo, hi, shape).astype(dtype)


def I(*shape, lo=-5, hi=6):
    return rng.integers(lo, hi, shape).astype(np.int32)


def B(*shape):
    return rng.random(shape) > 0.5


POS = dict(lo=0.1, hi=3.0)
X34, Y4 = R(3, 4), R(4)
IMG = R(2, 4, 9, 9)

# (id, op, inputs, attrs): every op with a torch kernel appears at least once
SAMPLES = [
    ("einsum", "einsum", [R(2, 5, 1, 7), R(2, 7, 1, 3)], {"equation": "nchw,nwhu->nchu"}),
    *[(op, op, [X34, Y4], {}) for op in ("add", "sub", "mul", "maximum", "minimum")],
    ("real_div", "real_div", [X34, R(4, **POS)], {}),
    ("pow", "pow", [R(3, 4, **POS), Y4], {}),
    ("floor_div", "floor_div", [X34, R(4, **POS)], {}),
    ("floor_div_int", "floor_div", [I(3, 4), np.array([3, -2, 5, -7], np.int32)], {}),
    ("mod", "mod", [X34, R(4, **POS)], {}),
    ("mod_int", "mod", [I(3, 4), np.array([3, -2, 5, -7], np.int32)], {}),
    ("add_int", "add", [I(3, 4), I(4)], {}),
    *[(op, op, [np.round(X34), np.round(Y4)], {}) for op in
      ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")],
    *[(op, op, [B(3, 4), B(4)], {}) for op in ("logical_and", "logical_or", "logical_xor")],
    *[(op, op, [X34], {}) for op in ("exp", "tanh", "sigmoid", "relu", "erf", "abs", "sign", "sin", "cos",
                                     "floor", "ceil", "square", "silu", "softplus")],
    ("softplus_big", "softplus", [R(3, 4, lo=-40, hi=40)], {}),
    ("round_half", "round", [np.arange(-3, 3, 0.5, dtype=np.float32)], {}),
    ("relu_int", "relu", [I(3, 4)], {}),
    ("abs_int", "abs", [I(3, 4)], {}),
    *[(op, op, [R(3, 4, **POS)], {}) for op in ("log", "sqrt", "rsqrt", "inverse")],
    *[(op + "_eps", op, [R(3, 4, **POS)], {"epsilon": 1e-3}) for op in ("log", "rsqrt", "inverse")],
    ("logical_not", "logical_not", [B(3, 4)], {}),
    *[(f"gelu_{m}", "gelu", [X34], {"mode": m}) for m in ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION")],
    ("clip", "clip", [X34], {"alpha": -0.5, "beta": 0.7}),
    ("leaky_relu", "leaky_relu", [X34], {"alpha": 0.1}),
    ("sigmoid_hard", "sigmoid_hard", [X34], {"alpha": 0.2, "beta": 0.5}),
    ("clamped_relu", "clamped_relu", [X34], {"alpha": 0.1, "beta": 0.6}),
    ("elu", "elu", [X34], {"alpha": 0.7}),
    ("linear_activation", "linear_activation", [X34], {"alpha": 1.5, "beta": -0.25}),
    ("relu6", "relu6", [X34 * 8], {}),
    ("scaled_tanh", "scaled_tanh", [X34], {"alpha": 2.0, "beta": 0.5}),
    ("softsign", "softsign", [X34], {}),
    ("threshold", "threshold", [X34], {"alpha": 0.3}),
    ("thresholded_relu", "thresholded_relu", [X34], {"alpha": 0.3}),
    ("cast_f2i", "cast", [X34 * 3], {"dtype": "int32"}),
    ("cast_i2f", "cast", [I(3, 4)], {"dtype": "fp32"}),
    ("cast_f2b", "cast", [np.round(X34)], {"dtype": "bool"}),
    ("cast_f2h", "cast", [X34], {"dtype": "fp16"}),
    ("select", "select", [B(3, 1), X34, Y4], {}),
    ("linear", "linear", [R(2, 5, 8), R(6, 8), R(6)], {}),
    ("linear_nobias", "linear", [R(5, 8), R(6, 8)], {}),
    ("matmul", "matmul", [R(2, 3, 4, 5), R(3, 5, 6)], {}),
    ("matmul_t", "matmul", [R(2, 5, 4), R(6, 5)], {"transpose_x": True, "transpose_y": True}),
    ("sdpa", "scaled_dot_product_attention", [R(2, 3, 5, 8), R(2, 3, 7, 8), R(2, 3, 7, 4)], {}),
    ("sdpa_bool", "scaled_dot_product_attention",
     [R(2, 3, 5, 8), R(2, 3, 7, 8), R(2, 3, 7, 4), np.tril(np.ones((5, 7), bool))], {"scale": 0.3}),
    ("sdpa_float", "scaled_dot_product_attention", [R(2, 3, 5, 8), R(2, 3, 7, 8), R(2, 3, 7, 4), R(2, 1, 1, 7)], {}),
    ("conv", "conv", [IMG, R(6, 4, 3, 3), R(6)], {"strides": (2, 1), "pad": (1, 1, 0, 2)}),
    ("conv_sym", "conv", [IMG, R(6, 2, 3, 3)], {"pad": (1, 1, 1, 1), "groups": 2, "dilations": (2, 1)}),
    ("conv_dw", "conv", [IMG, R(4, 1, 3, 3), R(4)], {"pad": (1, 1, 1, 1), "groups": 4}),
    ("conv1d", "conv", [R(2, 4, 11), R(6, 4, 3)], {"strides": (2,), "pad": (2, 0)}),
    *[(f"{p}_{i}", p, [IMG], a) for p in ("max_pool", "avg_pool") for i, a in enumerate([
        {"kernel_sizes": (3, 3), "strides": (2, 2), "pad": (1, 1, 1, 1)},
        {"kernel_sizes": (3, 3), "strides": (2, 2), "pad": (1, 1, 1, 1), "ceil_mode": True},
        {"kernel_sizes": (2, 3), "strides": (2, 2), "pad": (0, 1, 1, 0), "ceil_mode": True},
        {"kernel_sizes": (3, 3), "strides": (1, 2), "pad": (0, 2, 1, 1)},
        {"kernel_sizes": (3, 3), "strides": (2, 2), "pad": (1, 1, 1, 1), "exclude_padding_from_average": True},
        {"kernel_sizes": (2, 2), "strides": (2, 2), "pad": (0, 1, 0, 1), "ceil_mode": True,
         "exclude_padding_from_average": True},
    ])],
    ("max_pool1d", "max_pool", [R(2, 3, 10)], {"kernel_sizes": (3,), "strides": (2,), "pad": (1, 0)}),
    ("avg_pool1d", "avg_pool", [R(2, 3, 10)], {"kernel_sizes": (3,), "strides": (2,), "pad": (1, 1)}),
    ("layer_norm", "layer_norm", [R(2, 3, 8), R(8), R(8)], {"axes": (-1,), "epsilon": 1e-5}),
    ("layer_norm_mid", "layer_norm", [R(2, 3, 8), R(3)], {"axes": (1,)}),
    ("rms_norm", "rms_norm", [R(2, 3, 8), R(8)], {"axes": (-1,), "epsilon": 1e-6}),
    ("rms_norm_2axes", "rms_norm", [R(2, 3, 8)], {"axes": (1, 2)}),
    ("batch_norm", "batch_norm", [IMG, R(4), R(4, **POS), R(4), R(4)], {"epsilon": 1e-3}),
    ("softmax", "softmax", [R(2, 5, 3)], {"axis": 1}),
    *[(f"{op}_{k}", op, [R(2, 3, 4, lo=0.5, hi=1.5)], {"axes": ax, "keep_dims": k})
      for op in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_l1_norm",
                 "reduce_l2_norm", "reduce_log_sum", "reduce_log_sum_exp", "reduce_sum_square")
      for k, ax in ((False, (0, 2)), (True, (-1,)))],
    ("reduce_sum_all", "reduce_sum", [X34], {"axes": None}),
    ("reduce_sum_none", "reduce_sum", [X34], {"axes": ()}),
    ("reduce_sum_int", "reduce_sum", [I(3, 4)], {"axes": (1,)}),
    ("reduce_prod_int", "reduce_prod", [I(3, 4)], {"axes": (0,), "keep_dims": True}),
    ("identity", "identity", [X34], {}),
    ("reshape", "reshape", [X34], {"shape": (2, 6)}),
    ("transpose", "transpose", [R(2, 3, 4)], {"perm": (2, 0, 1)}),
    ("expand_dims", "expand_dims", [X34], {"axes": (0, -1)}),
    ("squeeze", "squeeze", [R(3, 1, 4, 1)], {"axes": (1, -1)}),
    ("concat", "concat", [X34, R(3, 2)], {"axis": -1}),
    ("concat_interleave", "concat", [X34, R(3, 4)], {"axis": 0, "interleave": True}),
    ("split", "split", [R(3, 7)], {"axis": 1, "split_sizes": (2, 4, 1)}),
    ("slice", "slice_by_index", [R(4, 6, 5)], {"begin": (1, 0, 2), "end": (4, 6, 3), "stride": (2, 3, 1),
                                                "flip": (1,), "squeeze_mask": (False, False, True)}),
    ("gather", "gather", [R(5, 3), np.array([[0, -1], [4, 2]], np.int32)], {"axis": 0}),
    ("gather_axis1", "gather", [I(2, 5), np.array([3, -5, 1], np.int32)], {"axis": 1}),
    ("reverse", "reverse", [R(2, 3, 4)], {"axes": (0, 2)}),
    ("reverse_all", "reverse", [X34], {"axes": None}),
    ("tile", "tile", [R(2, 3)], {"reps": (2, 3)}),
    ("pad", "pad", [R(2, 3, 4)], {"pad": (1, 2, 0, 3), "constant_val": 1.5}),
    ("pad_reflect", "pad", [R(2, 3, 4)], {"pad": (1, 2, 2, 1), "mode": "reflect"}),
    ("pad_replicate", "pad", [R(2, 3, 4)], {"pad": (0, 1, 1, 2, 3, 0), "mode": "replicate"}),
    # issue 10 rows
    *[(op, op, [R(3, 4, lo=-0.9, hi=0.9)], {}) for op in ("sinh", "cosh", "tan", "asin", "acos", "atan", "atanh", "exp2")],
    ("gather_along_axis", "gather_along_axis", [R(3, 5), np.array([[0, 4], [2, 2], [1, -1]], np.int32)], {"axis": 1}),
    ("gather_nd", "gather_nd", [R(4, 5, 3), np.array([[0, 4], [3, 1], [2, -2]], np.int32)], {}),
    *[(f"scatter_{m}", "scatter", [R(5, 3), np.array([3, 0], np.int32), R(2, 3)], {"axis": 0, "mode": m})
      for m in ("update", "add", "sub", "mul", "max", "min")],
    *[(f"scatter_along_axis_{m}", "scatter_along_axis", [R(3, 5), np.array([[0, 4], [2, 1], [3, 1]], np.int32), R(3, 2)],
       {"axis": 1, "mode": m}) for m in ("update", "add", "max")],
    *[(f"scatter_nd_{m}", "scatter_nd", [R(4, 3), np.array([[2], [0], [2]], np.int32)[:2 if m == "update" else 3], R(2 if m == "update" else 3, 3)],
       {"mode": m}) for m in ("update", "add", "min")],
    ("cumsum", "cumsum", [R(3, 4)], {"axis": 1}),
    ("cumsum_excl_rev", "cumsum", [R(3, 4)], {"axis": 0, "exclusive": True, "reverse": True}),
    ("cumsum_int", "cumsum", [I(3, 4)], {"axis": 1}),
    ("topk", "topk", [R(3, 5)], {"k": 2, "axis": 1}),
    ("topk_asc", "topk", [R(3, 5)], {"k": 3, "axis": 0, "ascending": True}),
    ("argsort", "argsort", [R(3, 5)], {"axis": -1}),
    ("argsort_asc", "argsort", [R(3, 5)], {"axis": 0, "ascending": True}),
    ("reduce_argmax", "reduce_argmax", [R(3, 5)], {"axis": 1}),
    ("reduce_argmin", "reduce_argmin", [R(3, 5)], {"axis": 0, "keep_dims": True}),
    ("conv3d", "conv", [R(1, 2, 4, 4, 4), R(3, 2, 2, 2, 2), R(3)], {"pad": (1, 0, 0, 1, 1, 1), "strides": (1, 2, 1)}),
    ("conv_transpose", "conv_transpose", [R(2, 4, 5, 5), R(4, 3, 3, 3), R(3)],
     {"strides": (2, 2), "pad": (1, 1, 1, 1), "output_padding": (1, 1)}),
    ("conv_transpose_groups", "conv_transpose", [R(1, 4, 6), R(4, 1, 3)], {"strides": (2,), "pad": (0, 1), "groups": 4}),
    ("upsample_nearest_neighbor", "upsample_nearest_neighbor", [IMG], {"scale_factor_height": 2, "scale_factor_width": 3}),
    ("group_norm", "group_norm", [IMG, R(4), R(4)], {"num_groups": 2, "epsilon": 1e-5}),
]


def one_node_graph(op, inputs, attrs):
    """A graph of one ``op`` node over inputs a0, a1, ... (``const`` for op ``const``)."""
    b = GraphBuilder()
    if op == "const":
        outs = [b.const(inputs[0])]
    else:
        ins = [b.add_input(f"a{i}", TensorType(dtype_of(a), a.shape)) for i, a in enumerate(inputs)]
        outs = list(b.add(op, ins, attrs).outputs)
    return b.build(outs, [f"y{i}" for i in range(len(outs))])


def check_op(op, inputs, attrs, device, rtol=1e-5, atol=1e-6):
    g = one_node_graph(op, inputs, attrs)
    feeds = {f"a{i}": a for i, a in enumerate(inputs)} if op != "const" else {}
    want = run_graph(g, feeds)
    got = TorchExecutor(g, device=device, capture="none").run(feeds)
    for name, v in zip(g.output_names, g.outputs):
        w, o = want[name], got[name]
        assert o.dtype == w.dtype and o.shape == w.shape == v.type.shape, (name, o.dtype, w.dtype, o.shape, w.shape)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(o, w)
        else:
            np.testing.assert_allclose(o.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)


SAMPLES.append(("const", "const", [R(3, 4)], {}))


def test_every_op_has_a_torch_kernel_or_a_host_only_reason():
    missing = [n for n, row in OPS.items() if row.torch is None and not row.host_only]
    assert not missing, f"ops with neither a torch kernel nor a host_only reason: {missing}"
    both = [n for n, row in OPS.items() if row.torch is not None and row.host_only]
    assert not both, f"ops with a torch kernel and a host_only reason: {both}"


def test_every_torch_kernel_is_exercised_here():
    untested = sorted({n for n, row in OPS.items() if row.torch is not None} - {op for _, op, _, _ in SAMPLES})
    assert not untested, f"add a SAMPLES entry for {untested}"


@pytest.mark.parametrize("op,inputs,attrs", [s[1:] for s in SAMPLES], ids=[s[0] for s in SAMPLES])
def test_op_torch_kernel_matches_numpy_cpu(op, inputs, attrs):
    check_op(op, inputs, attrs, "cpu")


FP16_OPS = ["add", "gelu_EXACT", "softmax", "layer_norm", "linear", "conv", "sdpa_bool", "avg_pool_4", "reduce_mean_True"]


@pytest.mark.parametrize("sid", FP16_OPS)
def test_op_torch_kernel_fp16_cpu(sid):
    _, op, inputs, attrs = next(s for s in SAMPLES if s[0] == sid)
    half = [a.astype(np.float16) if a.dtype == np.float32 else a for a in inputs]
    check_op(op, half, attrs, "cpu", rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------ architectures


def run_arch(name, device, capture=None, dtype=torch.float32):
    """(tlc torch-executor outputs, torch eager outputs) for archs.make(name) on ``device``."""
    m, args, kwargs = archs.make(name)
    m = m.to(device=device, dtype=dtype)
    cast = lambda x: x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)  # noqa: E731
    args, kwargs = pytree.tree_map(cast, (args, kwargs))
    cm = tlc.build(m.cpu(), pytree.tree_map(lambda x: x.cpu(), (args, kwargs)), precision="fp32")
    m = m.to(device)
    ex = TorchExecutor(cm.graph, device=device, capture=capture)
    feeds = dict(zip(cm.input_names, [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]))
    got = ex.run(feeds, keep_on_device=True)
    with torch.no_grad():
        ref = [t for t in pytree.tree_leaves(m(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    return ex, [got[n] for n in cm.output_names], ref


def rel_l2(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp(min=1e-30))


@pytest.mark.parametrize("name", archs.ARCHS)
def test_architectures_match_eager_cpu(name):
    ex, got, ref = run_arch(name, "cpu")
    assert ex.capture == "none" and ex.device.type == "cpu"
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.device.type == "cpu"
        assert rel_l2(g, r) < 1e-5


# ---------------------------------------------------------------------------------------- edges


def small_graph():
    def f(x, ids):
        table = torch.arange(40, dtype=torch.float32).reshape(10, 4) / 10
        return {"y": torch.tanh(x @ x.transpose(0, 1)), "emb": table[ids] * 2}

    x, ids = torch.randn(3, 4), torch.tensor([1, 7, 3])
    return tlc.build(f, (x, ids), precision="fp32"), f, x, ids


def test_inputs_outputs_and_errors():
    cm, f, x, ids = small_graph()
    ex = TorchExecutor(cm.graph, device="cpu")
    ref = f(x, ids)
    out = ex.run({"x": x.numpy(), "ids": ids.numpy()})  # NumPy in (int64 ids converted), NumPy out
    assert isinstance(out["y"], np.ndarray) and np.allclose(out["y"], ref["y"].numpy(), atol=1e-6)
    dev = ex(x=x, ids=ids.int(), keep_on_device=True)  # tensors in (keywords), tensors out
    assert isinstance(dev["emb"], torch.Tensor) and torch.allclose(dev["emb"], ref["emb"])
    with pytest.raises(InputError, match="missing"):
        ex.run({"x": x})
    with pytest.raises(InputError, match="shape"):
        ex.run({"x": torch.randn(2, 4), "ids": ids})
    with pytest.raises(InputError, match="dtype"):
        ex.run({"x": x.int(), "ids": ids})
    with pytest.raises(TlcError, match="capture"):
        TorchExecutor(cm.graph, device="cpu", capture="cuda_graph")
    with pytest.raises(TlcError, match="gather failed on node"):
        ex.run({"x": x, "ids": torch.tensor([1, 70, 3])})  # out of range: names the node


def test_device_tensor_passes_through_without_copy():
    b = GraphBuilder()
    x = b.add_input("x", TensorType("fp32", (2, 3)))
    g = b.build([b.add("identity", [x]).out], ["y"])
    t = torch.randn(2, 3)
    out = TorchExecutor(g, device="cpu", capture="none").run({"x": t}, keep_on_device=True)
    assert out["y"].data_ptr() == t.data_ptr()


def test_default_device_and_capture(monkeypatch):
    """Issue 33: CUDA's default capture is Inductor + CUDA graphs where Inductor can run (Triton
    importable), CUDA graphs alone where it cannot; no capture on the CPU or MPS."""
    import tlc.runtime.torch_executor as te

    d = default_device()
    assert d.type == ("mps" if torch.backends.mps.is_available() else "cuda" if torch.cuda.is_available() else "cpu")
    assert default_capture(torch.device("cuda")) == ("compile+cuda_graph" if te.inductor_available() else "cuda_graph")
    monkeypatch.setattr(te, "inductor_available", lambda: False)  # as on a machine without Triton
    assert default_capture(torch.device("cuda")) == "cuda_graph"
    monkeypatch.setattr(te, "inductor_available", lambda: True)
    assert default_capture(torch.device("cuda")) == "compile+cuda_graph"
    assert default_capture(torch.device("cpu")) == default_capture(torch.device("mps")) == "none"


def test_a_failing_compile_falls_back_to_plain_execution():
    """A capture is an optimization: when Inductor cannot compile the graph, the executor runs the
    plain kernels, says why (``capture_error``) and gives the same numbers."""
    cm, f, x, ids = small_graph()
    ex = TorchExecutor(cm.graph, device="cpu", capture="compile")

    def broken(inputs):  # what a torch.compile that cannot build kernels for this graph does
        raise RuntimeError("InductorError: no C++ compiler")

    ex._fn = broken
    out = ex.run({"x": x, "ids": ids})
    assert ex.capture == "none" and "no C++ compiler" in ex.capture_error
    assert np.allclose(out["y"], f(x, ids)["y"].numpy(), atol=1e-6)


def test_default_build_executes_the_graph_without_the_ane_layout():
    """Issue 33: the Core ML program keeps the Neural Engine layout (per-head einsums, 1x1 convs);
    tlc's torch and NumPy executors run the build's graph without it, as a target="gpu" build would,
    and agree with torch eager."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    m = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(0, 100, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[0, 12:] = 0
    cm = tlc.build(m, ((), {"input_ids": ids, "attention_mask": mask}))
    assert cm.graph.op_histogram().get("einsum", 0) >= 8  # laid out for the ANE: per-head attention
    assert "einsum" not in cm.exec_graph.op_histogram()
    gpu = tlc.build(m, ((), {"input_ids": ids, "attention_mask": mask}), target="gpu")
    assert cm.exec_graph.op_histogram() == gpu.graph.op_histogram()
    with torch.no_grad():
        want = m(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    for backend in ("torch", "numpy"):
        got = cm.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, backend=backend)
        assert np.abs(got[cm.output_names[0]] - want).max() < 1e-4, backend
    assert cm._torch.graph is cm.exec_graph


def test_inductor_caches_live_in_tlcs_cache(monkeypatch, tmp_path):
    """The compiled kernels of a capture are cached under tlc's compile cache, so a second process
    starts warm; a user's own $TORCHINDUCTOR_CACHE_DIR is left alone, and nothing is set with the
    cache off."""
    import os

    from tlc.driver.cache import use_for_inductor

    monkeypatch.setenv("TLC_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TLC_NO_CACHE", "1")
    use_for_inductor()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    monkeypatch.delenv("TLC_NO_CACHE")
    use_for_inductor()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "c" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    use_for_inductor()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_lm_cache_stays_on_the_executor_device():
    """Issue 33: generate() on tlc's torch executor keeps the KV cache as tensors on its device
    (only token ids go in and logits come out each step), and gives Hugging Face's greedy tokens."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    m = transformers.LlamaForCausalLM(cfg).eval()
    mf = tlc.build_lm(m, max_context=48, prefill_lengths=[8], precision="fp32")
    ids = torch.randint(1, 256, (1, 11))
    cache = mf.new_cache(backend="torch")
    assert isinstance(cache.k, torch.Tensor) and cache.k.device.type == default_device().type
    k = cache.k
    got = mf.generate(ids.numpy(), 10, backend="torch", cache=cache)
    want = m.generate(ids, max_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(ids))
    assert got.tolist() == want.tolist()
    assert cache.k is k and cache.length == 11 + 9 and float(cache.k[:, :, :, :cache.length].abs().sum()) > 0


def test_weights_are_converted_once():
    cm, *_ = small_graph()
    ex = TorchExecutor(cm.graph, device="cpu")
    consts = [t for t in ex._template if t is not None]
    assert consts and all(isinstance(t, torch.Tensor) for t in consts)
    ptrs = [t.data_ptr() for t in consts]
    ex.run({"x": np.ones((3, 4), np.float32), "ids": np.array([0, 1, 2])})
    assert [t.data_ptr() for t in ex._template if t is not None] == ptrs


def test_compile_capture_cpu():
    cm, f, x, ids = small_graph()
    ex = TorchExecutor(cm.graph, device="cpu", capture="compile")
    out = ex.run({"x": x, "ids": ids})
    assert np.allclose(out["y"], f(x, ids)["y"].numpy(), atol=1e-6)


# -------------------------------------------------------------------------------------- on a GPU


@pytest.fixture
def strict_fp32():
    """TF32 off, so fp32 matmul/conv on CUDA are true fp32 (eager and tlc alike)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@needs_gpu
@pytest.mark.parametrize("op,inputs,attrs", [s[1:] for s in SAMPLES], ids=[s[0] for s in SAMPLES])
def test_op_torch_kernel_matches_numpy_gpu(op, inputs, attrs, strict_fp32):
    check_op(op, inputs, attrs, GPU, rtol=1e-5, atol=1e-5)


@needs_gpu
@pytest.mark.parametrize("name", archs.ARCHS)
def test_architectures_match_eager_gpu(name, strict_fp32):
    ex, got, ref = run_arch(name, GPU)
    assert ex.capture == default_capture(torch.device(GPU)) and ex.capture_error is None
    for g, r in zip(got, ref):
        assert g.device.type == GPU and g.shape == r.shape
        assert rel_l2(g, r) < 1e-5


@needs_gpu
@pytest.mark.parametrize("name", ["bert", "gpt2", "resnet", "vit"])
def test_architectures_fp16_gpu(name):
    ex, got, ref = run_arch(name, GPU, dtype=torch.float16)
    for g, r in zip(got, ref):
        assert g.dtype == torch.float16 and rel_l2(g, r) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA graph capture needs one")
@pytest.mark.parametrize("name", ["bert", "resnet"])
def test_cuda_graph_replays_new_inputs(name):
    m, args, kwargs = archs.make(name)
    cm = tlc.build(m, (args, kwargs), precision="fp32")
    plain = TorchExecutor(cm.graph, device="cuda", capture="none")
    graph = TorchExecutor(cm.graph, device="cuda", capture="cuda_graph")
    feeds = dict(zip(cm.input_names, [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]))
    for step in range(3):  # new values each run: the static buffers must take them
        feeds = {k: (v + step if v.is_floating_point() else v) for k, v in feeds.items()}
        a, b = plain.run(feeds), graph.run(feeds)
        assert graph.capture == "cuda_graph" and graph.capture_error is None
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-6)


@needs_gpu
def test_chained_executors_stay_on_device():
    """Two segments (x -> h, h -> y) pass the device tensor along, as the hybrid runtime will."""
    b1 = GraphBuilder()
    x = b1.add_input("x", TensorType("fp32", (4, 8)))
    wv = R(8, 8)
    g1 = b1.build([b1.add("relu", [b1.add("linear", [x, b1.const(wv)]).out]).out], ["h"])
    b2 = GraphBuilder()
    h = b2.add_input("h", TensorType("fp32", (4, 8)))
    g2 = b2.build([b2.add("tanh", [h]).out], ["y"])
    s1, s2 = TorchExecutor(g1, device=GPU), TorchExecutor(g2, device=GPU)
    xv = R(4, 8)
    mid = s1.run({"x": xv}, keep_on_device=True)
    assert mid["h"].device.type == GPU
    y = s2.run(mid)["y"]
    np.testing.assert_allclose(y, np.tanh(np.maximum(xv @ wv.T, 0)), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------- tlc bench


def test_tlc_bench_cli(tmp_path):
    import json
    import subprocess
    import sys

    f = tmp_path / "mlp.py"
    f.write_text("import torch\ntorch.manual_seed(0)\n"
                 "model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))\n"
                 "example_inputs = (torch.randn(2, 16),)\n")
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "tlc.cli", "bench", str(f), "--runs", "3", "--warmup", "1", "--batch", "5",
                        "--backends", "eager,tlc-torch,tlc-numpy", "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "median_ms" in r.stdout and "tlc-torch:cpu" in r.stdout
    res = {x["backend"]: x for x in json.loads(out.read_text())["results"]}
    assert set(res) == {"eager:cpu", "tlc-torch:cpu", "tlc-numpy"}
    for x in res.values():
        assert x["batch"] == 5 and len(x["times_ms"]) == 3 and x["median_ms"] > 0 and x["rel_err"] < 1e-5
    bad = subprocess.run([sys.executable, "-m", "tlc.cli", "bench", str(f), "--backends", "eager,tensorrt"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown backend" in bad.stderr


def test_bench_batched_inputs():
    from tlc.driver.bench import batched

    args, kwargs = batched(((torch.arange(6).reshape(2, 3),), {"m": torch.ones(2, 4)}), 5)
    assert args[0].shape == (5, 3) and kwargs["m"].shape == (5, 4)
    assert args[0][2].tolist() == [0, 1, 2]  # rows repeat in order
