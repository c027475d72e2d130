"""@tlc.compile: specialization per input signature, caching, return types."""
import numpy as np
import pytest
import torch

import tlc


def test_function_cache_and_retrace():
    calls = []

    @tlc.compile
    def f(x, y):
        calls.append(1)  # runs only while torch.export traces
        return torch.relu(x @ y) + 1.0, x.sum(-1)

    x, y = torch.randn(4, 5), torch.randn(5, 3)
    a, b = f(x, y)
    assert f.trace_count == 1 and len(calls) == 1
    torch.testing.assert_close(a, torch.relu(x @ y) + 1.0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, x.sum(-1), rtol=1e-5, atol=1e-6)
    x2, y2 = torch.randn(4, 5), torch.randn(5, 3)
    a2, _ = f(x2, y2)  # same shapes: no re-trace, new values
    assert f.trace_count == 1 and len(calls) == 1
    torch.testing.assert_close(a2, torch.relu(x2 @ y2) + 1.0, rtol=1e-5, atol=1e-6)
    f(torch.randn(2, 5), y)  # new shape: a new entry
    assert f.trace_count == 2 and len(f.cache) == 2
    f(torch.randn(4, 5, dtype=torch.float64), y.double())  # new dtype: a new entry
    assert f.trace_count == 3


def test_module_cache():
    m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.LayerNorm(7)).eval()
    cm = tlc.compile(m)
    x = torch.randn(3, 5)
    torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)
    cm(torch.randn(3, 5))
    assert cm.trace_count == 1
    cm(torch.randn(6, 5))
    assert cm.trace_count == 2


def test_module_class_decorator():
    @tlc.compile
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 4)

        def forward(self, x):
            return {"probs": self.proj(x).softmax(-1), "ids": (x > 0).long()}

    h = Head().eval()
    x = torch.randn(2, 8)
    out = h(x)
    with torch.no_grad():
        ref = torch.nn.Module.__call__(h, x)
    assert set(out) == {"probs", "ids"}
    torch.testing.assert_close(out["probs"], ref["probs"], rtol=1e-5, atol=1e-6)
    assert out["ids"].dtype == torch.int64 and torch.equal(out["ids"], ref["ids"])
    h(torch.randn(2, 8))
    assert h._tlc_compiled.trace_count == 1


def test_eager_example_inputs_builds_at_decoration():
    @tlc.compile(example_inputs=(torch.randn(2, 3),), precision="fp32")
    def g(x):
        return x * 2 - 1

    assert g.trace_count == 1
    assert g.compiled.precision == "fp32" and g.compiled.input_names == ["x"]
    g(torch.randn(2, 3))
    assert g.trace_count == 1


def test_numpy_in_numpy_out():
    @tlc.compile
    def h(x):
        return torch.tanh(x)

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y = h(x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, np.tanh(x), rtol=1e-6, atol=1e-6)


def test_kwargs_order_does_not_matter():
    @tlc.compile
    def k(a, b):
        return a - b

    a, b = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(k(a=a, b=b), a - b)
    torch.testing.assert_close(k(b=b, a=a), a - b)


def test_compiled_model_run_named_inputs():
    cm = tlc.build(lambda x, y: x + y, (torch.ones(2), torch.ones(2)))
    out = cm.run({"x": np.array([1, 2], np.float32), "y": np.array([3, 4], np.float32)})
    np.testing.assert_array_equal(out["output"], [4, 6])
    with pytest.raises(tlc.InputError, match="missing"):
        cm.run({"x": np.ones(2, np.float32)})
    with pytest.raises(tlc.InputError, match="shape"):
        cm.run({"x": np.ones(3, np.float32), "y": np.ones(3, np.float32)})


def test_one_tensor_passed_for_two_inputs_gives_two_independent_inputs():
    """torch.export gives one tensor object passed for two inputs a single placeholder (every use
    reads the last input); tlc traces with a copy, so the built graph reads each input (issue 34:
    build_lm's prefill read its cached keys from v_cache)."""
    x = torch.randn(3)
    cm = tlc.build(lambda a, b: a * 2 + b * 3, (x, x), precision="fp32")
    out = cm.run({"a": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}, backend="numpy")
    np.testing.assert_array_equal(out["output"], [2, 2, 2])  # torch eager: 1 * 2 + 0 * 3

    @tlc.compile
    def g(a, b=None):
        return a - b

    assert torch.equal(g(x, b=x), torch.zeros(3))  # traced with one tensor for both ...
    a, b = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(g(a, b=b), a - b)  # ... then called with two (same signature: no re-trace)
    assert g.trace_count == 1
