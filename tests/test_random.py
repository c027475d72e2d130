"""Random sampling stays in Core ML (MIL random_uniform / random_normal / random_bernoulli) and is
never frozen into a constant (issue 10). Values come from another generator than torch's, so
these tests check distributions: large draws from the saved package (tlc's MIL interpreter),
their moments against the distribution's (6 standard errors), supports, and that two draws
differ."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tlc
from tlc.runtime import load

N = 20000


def _run(fn, inputs, tmp_path, name="r"):
    cm = tlc.build(fn, inputs, precision="fp32")
    assert not cm.is_bundle, cm.fallback_ops()
    assert any(n.op.startswith("random_") for n in cm.graph.nodes)
    m = load(cm.save(tmp_path / f"{name}.mlpackage"))
    feeds = {n: x.numpy() for n, x in zip(cm.input_names, inputs)}
    return cm, m(feeds)[cm.output_names[0]], m(feeds)[cm.output_names[0]]


def _moments(a, mean, var):
    a = np.asarray(a, np.float64).ravel()
    se = math.sqrt(var / a.size)
    assert abs(a.mean() - mean) < 6 * se, (a.mean(), mean)
    assert abs(a.var() - var) < 6 * math.sqrt(2 * var * var / a.size) + 1e-9, (a.var(), var)


X = torch.zeros(N)


@pytest.mark.parametrize("name, fn, mean, var, support", [
    ("rand_like", lambda x: torch.rand_like(x), 0.5, 1 / 12, (0.0, 1.0)),
    ("randn_like", lambda x: torch.randn_like(x) * 2 + 1, 1.0, 4.0, None),
    ("uniform_", lambda x: x.clone().uniform_(-2, 3), 0.5, 25 / 12, (-2.0, 3.0)),
    ("exponential_", lambda x: x.clone().exponential_(2.0), 0.5, 0.25, (0.0, float("inf"))),
    ("bernoulli_p", lambda x: torch.bernoulli(torch.full_like(x, 0.3) + x), 0.3, 0.21, (0.0, 1.0)),
    ("bernoulli_float", lambda x: x.bernoulli(0.7), 0.7, 0.21, (0.0, 1.0)),
    ("normal_tensors", lambda x: torch.normal(x + 3.0, x + 0.5), 3.0, 0.25, None),
    ("randint_like", lambda x: torch.randint_like(x, 2, 9).float(), 5.0, (7 ** 2 - 1) / 12, (2.0, 8.0)),
    ("geometric_", lambda x: x.clone().geometric_(0.25), 4.0, 0.75 / 0.0625, (1.0, float("inf"))),
])
def test_distribution_of_draws(name, fn, mean, var, support, tmp_path):
    _, a, b = _run(fn, (X,), tmp_path, name)
    assert a.shape == (N,) and not np.array_equal(a, b)  # fresh draws on every run
    _moments(a, mean, var)
    if support:
        assert a.min() >= support[0] and a.max() <= support[1]
    if name in ("bernoulli_p", "bernoulli_float", "randint_like", "geometric_"):
        assert np.array_equal(a, np.round(a))


def test_random_without_tensor_inputs_is_not_a_constant(tmp_path):
    """torch.randn(n) has no tensor argument: torch.export's graph would let it be folded into one
    fixed draw; tlc keeps it a random op."""
    _, a, b = _run(lambda x: torch.randn(N) + x, (torch.zeros(()),), tmp_path)
    assert not np.array_equal(a, b)
    _moments(a, 0.0, 1.0)


def test_two_draws_are_not_merged(tmp_path):
    cm, a, _ = _run(lambda x: torch.rand_like(x) - torch.rand_like(x), (X,), tmp_path)
    assert sum(n.op == "random_uniform" for n in cm.graph.nodes) == 2  # cse must not merge them
    _moments(a, 0.0, 1 / 6)


def test_dropout_in_training_mode(tmp_path):
    x = torch.ones(N)
    _, a, _ = _run(lambda t: F.dropout(t, 0.25, training=True), (x,), tmp_path)
    assert set(np.unique(a).tolist()) <= {0.0, float(np.float32(1 / 0.75))}
    _moments(a == 0, 0.25, 0.25 * 0.75)


def test_randperm_and_multinomial(tmp_path):
    _, a, b = _run(lambda x: torch.randperm(50) + x.long(), (torch.zeros((), dtype=torch.int64),), tmp_path)
    assert sorted(a.tolist()) == list(range(50)) and not np.array_equal(a, b)
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).repeat(N // 4, 1)
    _, draws, _ = _run(lambda q: torch.multinomial(q, 3), (p,), tmp_path, "mn")
    assert all(len(set(r)) == 3 for r in draws[:500].tolist())  # without replacement
    _, rep, _ = _run(lambda q: torch.multinomial(q, 1, replacement=True), (p,), tmp_path, "mr")
    freq = np.bincount(rep.ravel(), minlength=4) / rep.size
    assert np.allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.02)


def test_random_ops_in_a_mixed_precision_package(tmp_path):
    """A diffusion-style step: noise drawn on the device, scaled, added; mixed precision keeps it."""
    def step(x, t):
        return x * t + torch.randn_like(x) * (1 - t)

    x, t = torch.randn(4, 64), torch.tensor(0.5)
    cm = tlc.build(step, (x, t))
    assert not cm.is_bundle
    out = load(cm.save(tmp_path / "step.mlpackage"))({"x": x.numpy(), "t": t.numpy()})["output"]
    resid = out - x.numpy() * 0.5
    _moments(resid / 0.5, 0.0, 1.0)
