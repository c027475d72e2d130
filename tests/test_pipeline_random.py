"""Property test: the whole default pass pipeline preserves results on random valid graphs
(elementwise, matmul/linear with bias adds, conv with pads and batch_norm, norms, and
reshape/transpose chains), checked in the NumPy runtime."""
import numpy as np
from hypothesis import given, settings, strategies as st

from tlc.ir import GraphBuilder, TensorType, verify
from tlc.passes import PASSES, PIPELINE, run_pipeline
from tlc.runtime import run_graph


def build_random(data) -> tuple:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    b = GraphBuilder()
    c = data.draw(st.sampled_from([2, 3, 4]))
    x = b.add_input("x", TensorType("fp32", (1, c, 6, 5)))
    cur = x
    live = [x]
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["unary", "const_bin", "conv_bn", "pad_conv", "transpose2", "reshape2",
                                          "linear_bias", "layer_norm", "add_live", "dup"]))
        t = cur.type
        if kind == "unary":
            cur = b.add(data.draw(st.sampled_from(["relu", "tanh", "sigmoid", "abs"])), [cur]).out
        elif kind == "const_bin":
            k = b.const(rng.normal(size=(1, t.shape[1]) + (1,) * (t.rank - 2)).astype(np.float32))
            cur = b.add(data.draw(st.sampled_from(["add", "mul", "sub"])), [cur, k]).out
        elif kind in ("conv_bn", "pad_conv") and t.rank == 4:
            cin = t.shape[1]
            cout = data.draw(st.sampled_from([2, 3, 5]))
            if kind == "pad_conv":
                cur = b.add("pad", [cur], {"pad": (0, 0, 0, 0, 1, 1, 1, 0), "mode": "constant", "constant_val": 0.0}).out
            w = b.const(rng.normal(size=(cout, cin, 3, 3)).astype(np.float32) * 0.3)
            cur = b.add("conv", [cur, w], {"pad": (1, 1, 1, 1)}).out
            if kind == "conv_bn":
                p = [b.const(v.astype(np.float32)) for v in (rng.normal(size=cout), rng.uniform(0.5, 2, cout),
                                                               rng.normal(size=cout), rng.normal(size=cout))]
                cur = b.add("batch_norm", [cur] + p, {"epsilon": 1e-5}).out
        elif kind == "transpose2":
            perm = tuple(rng.permutation(t.rank).tolist())
            mid = b.add("transpose", [cur], {"perm": perm}).out
            inv = tuple(np.argsort(perm).tolist())
            cur = b.add("transpose", [mid], {"perm": inv}).out
        elif kind == "reshape2":
            mid = b.add("reshape", [cur], {"shape": (t.size,)}).out
            cur = b.add("reshape", [mid], {"shape": t.shape}).out
        elif kind == "linear_bias":
            n = data.draw(st.sampled_from([3, 4]))
            w = b.const(rng.normal(size=(t.shape[-1], n)).astype(np.float32))
            y = b.add("matmul", [cur, w]).out if t.rank >= 2 else cur
            cur = b.add("add", [y, b.const(rng.normal(size=(n,)).astype(np.float32))]).out
        elif kind == "layer_norm":
            cur = b.add("layer_norm", [cur], {"axes": (-1,), "epsilon": 1e-5}).out
        elif kind == "add_live":
            other = live[data.draw(st.integers(0, len(live) - 1))]
            if other.type == cur.type:
                cur = b.add("add", [cur, other]).out
        elif kind == "dup":
            a1 = b.add("relu", [cur]).out
            a2 = b.add("relu", [cur]).out
            cur = b.add("add", [a1, a2]).out
        live.append(cur)
    outs = [cur] + ([live[len(live) // 2]] if len(live) > 2 and live[len(live) // 2] is not cur else [])
    return b.build(outs, [f"y{i}" for i in range(len(outs))]), rng


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_pipeline_preserves_results(data):
    g, rng = build_random(data)
    x = rng.normal(size=g.inputs[0].type.shape).astype(np.float32)
    before = run_graph(g, {"x": x})
    g2 = run_pipeline(g, PIPELINE)
    verify(g2)
    assert g2.num_ops <= g.num_ops
    after = run_graph(g2, {"x": x})
    for k in before:
        a, b = before[k].astype(np.float64), after[k].astype(np.float64)
        err = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)
        assert err < 1e-5, f"{k}: rel-L2 {err:.2e}\n{g}\n---\n{g2}"


def test_pipeline_names_are_registered():
    assert set(PIPELINE) <= set(PASSES)
