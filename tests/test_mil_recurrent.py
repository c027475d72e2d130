"""MIL ``rnn``, ``gru``, ``lstm`` in tlc's interpreter (issue 12), at fp32 and fp16, against
torch.nn.RNN / GRU / LSTM in float64 (weights reordered to MIL's gate layouts) and, for what
torch has no module for (gru without reset_after, peepholes, clip, the other activations), a
float64 NumPy reference written from coremltools' docstrings and its op tests' NumPy
references (mil/ops/tests/iOS14/test_recurrent.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import coremltools as ct
from coremltools.converters.mil import Builder as mb

from milcheck import check, f32, precisions, run_mil

INTERPRETER_ONLY = {"rnn", "gru", "lstm"}
S, B, I, H = 5, 2, 3, 4


def _r(precision):
    return (lambda a: torch.from_numpy(np.asarray(a, np.float16).astype(np.float64))) if precision == "fp16" else \
        (lambda a: torch.from_numpy(np.asarray(a, np.float64)))


def _data(seed, gates, bidir=False):
    rng = np.random.default_rng(seed)
    d = 2 if bidir else 1
    return dict(x=f32(rng.normal(size=(S, B, I))), h0=f32(rng.normal(size=(B, d * H)) * 0.5),
                c0=f32(rng.normal(size=(B, d * H)) * 0.5),
                w_ih=f32(rng.normal(size=(gates * H, I)) * 0.5), w_hh=f32(rng.normal(size=(gates * H, H)) * 0.5),
                b=f32(rng.normal(size=gates * H) * 0.3), b2=f32(rng.normal(size=gates * H) * 0.3),
                w_ih_b=f32(rng.normal(size=(gates * H, I)) * 0.5), w_hh_b=f32(rng.normal(size=(gates * H, H)) * 0.5),
                b_b=f32(rng.normal(size=gates * H) * 0.3), p=f32(rng.normal(size=3 * H) * 0.3))


@precisions
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("output_sequence", [True, False])
def test_rnn(activation, direction, output_sequence, precision, tmp_path):
    d = _data(0, 1)
    R = _r(precision)
    m = torch.nn.RNN(I, H, nonlinearity=activation).double()
    with torch.no_grad():
        m.weight_ih_l0.copy_(R(d["w_ih"])), m.weight_hh_l0.copy_(R(d["w_hh"]))
        m.bias_ih_l0.copy_(R(d["b"])), m.bias_hh_l0.zero_()
    xs = R(d["x"]).flip(0) if direction == "reverse" else R(d["x"])
    out, hn = m(xs, R(d["h0"])[None])
    got = run_mil(tmp_path, lambda x, h: list(mb.rnn(x=x, initial_h=h, weight_ih=d["w_ih"], weight_hh=d["w_hh"], bias=d["b"],
                                                      direction=direction, output_sequence=output_sequence,
                                                      activation=activation)),
                  {"x": d["x"], "h": d["h0"]}, precision, "rnn")
    check(got[0], out if output_sequence else out[-1:], precision, "rnn all_h")
    check(got[1], hn[0], precision, "rnn h")


def _torch_gates(w, order):
    """Rows of a torch weight [k*H, ...] reordered (torch gate order -> MIL gate order)."""
    parts = np.split(np.asarray(w), len(order))
    return np.concatenate([parts[i] for i in order])


@precisions
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gru_reset_after_is_torch(direction, precision, tmp_path):
    """iOS18 gru(reset_after=True, input_bias=b_ih, bias=b_hh) is torch.nn.GRU."""
    d = _data(1, 3)
    R = _r(precision)
    m = torch.nn.GRU(I, H).double()
    # torch [r, z, n] <- MIL [r, o(=n), z]
    to_torch = [0, 2, 1]
    with torch.no_grad():
        m.weight_ih_l0.copy_(R(_torch_gates(d["w_ih"], to_torch))), m.weight_hh_l0.copy_(R(_torch_gates(d["w_hh"], to_torch)))
        m.bias_ih_l0.copy_(R(_torch_gates(d["b2"], to_torch))), m.bias_hh_l0.copy_(R(_torch_gates(d["b"], to_torch)))
    xs = R(d["x"]).flip(0) if direction == "reverse" else R(d["x"])
    out, hn = m(xs, R(d["h0"])[None])
    got = run_mil(tmp_path, lambda x, h: list(mb.gru(x=x, initial_h=h, weight_ih=d["w_ih"], weight_hh=d["w_hh"], bias=d["b"],
                                                      input_bias=d["b2"], reset_after=True, direction=direction,
                                                      output_sequence=True)),
                  {"x": d["x"], "h": d["h0"]}, precision, "gru", target=ct.target.iOS18)
    check(got[0], out, precision, "gru all_h")
    check(got[1], hn[0], precision, "gru h")


def _act(name):
    return {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "scaled_tanh": np.tanh,
            "relu": lambda v: np.maximum(v, 0), "linear": lambda v: v,
            "hard_sigmoid": lambda v: np.minimum(np.maximum(0.2 * v + 0.5, 0), 1)}[name]


@precisions
@pytest.mark.parametrize("acts", [("sigmoid", "tanh"), ("hard_sigmoid", "linear")])
@pytest.mark.parametrize("output_sequence", [True, False])
def test_gru_classic(acts, output_sequence, precision, tmp_path):
    """gru without reset_after (iOS15/17): o = act(W_o x + R_o (r * h) + b_o)."""
    d = _data(2, 3)
    f = lambda a: np.asarray(a, np.float16 if precision == "fp16" else np.float32).astype(np.float64)
    Wr, Wo, Wz = np.split(f(d["w_ih"]), 3)
    Rr, Ro, Rz = np.split(f(d["w_hh"]), 3)
    br, bo, bz = np.split(f(d["b"]), 3)
    ra, a = _act(acts[0]), _act(acts[1])
    h, hs = f(d["h0"]), []
    for xt in f(d["x"]):
        z = ra(xt @ Wz.T + h @ Rz.T + bz)
        r = ra(xt @ Wr.T + h @ Rr.T + br)
        o = a(xt @ Wo.T + (h * r) @ Ro.T + bo)
        h = (1 - z) * o + z * h
        hs.append(h)
    got = run_mil(tmp_path, lambda x, h: list(mb.gru(x=x, initial_h=h, weight_ih=d["w_ih"], weight_hh=d["w_hh"], bias=d["b"],
                                                      recurrent_activation=acts[0], activation=acts[1],
                                                      output_sequence=output_sequence)),
                  {"x": d["x"], "h": d["h0"]}, precision, "gru")
    check(got[0], np.stack(hs) if output_sequence else hs[-1][None], precision, "gru all_h")
    check(got[1], h, precision, "gru h")


@precisions
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_is_torch(direction, precision, tmp_path):
    d = _data(3, 4, bidir=direction == "bidirectional")
    R = _r(precision)
    bi = direction == "bidirectional"
    m = torch.nn.LSTM(I, H, bidirectional=bi).double()
    to_torch = [0, 1, 3, 2]  # torch [i, f, g, o] <- MIL [i, f, o, z]
    with torch.no_grad():
        m.weight_ih_l0.copy_(R(_torch_gates(d["w_ih"], to_torch))), m.weight_hh_l0.copy_(R(_torch_gates(d["w_hh"], to_torch)))
        m.bias_ih_l0.copy_(R(_torch_gates(d["b"], to_torch))), m.bias_hh_l0.zero_()
        if bi:
            m.weight_ih_l0_reverse.copy_(R(_torch_gates(d["w_ih_b"], to_torch)))
            m.weight_hh_l0_reverse.copy_(R(_torch_gates(d["w_hh_b"], to_torch)))
            m.bias_ih_l0_reverse.copy_(R(_torch_gates(d["b_b"], to_torch))), m.bias_hh_l0_reverse.zero_()
    xs = R(d["x"]).flip(0) if direction == "reverse" else R(d["x"])
    h0, c0 = R(d["h0"]), R(d["c0"])
    if bi:
        h0, c0 = torch.stack([h0[:, :H], h0[:, H:]]), torch.stack([c0[:, :H], c0[:, H:]])
    else:
        h0, c0 = h0[None], c0[None]
    out, (hn, cn) = m(xs, (h0, c0))
    extra = dict(weight_ih_back=d["w_ih_b"], weight_hh_back=d["w_hh_b"], bias_back=d["b_b"]) if bi else {}
    got = run_mil(tmp_path, lambda x, h, c: list(mb.lstm(x=x, initial_h=h, initial_c=c, weight_ih=d["w_ih"], weight_hh=d["w_hh"],
                                                          bias=d["b"], direction=direction, output_sequence=True, **extra)),
                  {"x": d["x"], "h": d["h0"], "c": d["c0"]}, precision, "lstm")
    check(got[0], out, precision, "lstm all_h")
    check(got[1], torch.cat(list(hn), -1), precision, "lstm h")
    check(got[2], torch.cat(list(cn), -1), precision, "lstm c")


@precisions
@pytest.mark.parametrize("acts", [("sigmoid", "tanh", "tanh"), ("hard_sigmoid", "relu", "scaled_tanh"),
                                  ("sigmoid", "linear", "relu")])
def test_lstm_peephole_clip_activations(acts, precision, tmp_path):
    d = _data(4, 4)
    f = lambda a: np.asarray(a, np.float16 if precision == "fp16" else np.float32).astype(np.float64)
    Wi, Wf, Wo, Wz = np.split(f(d["w_ih"]), 4)
    Ri, Rf, Ro, Rz = np.split(f(d["w_hh"]), 4)
    bi, bf, bo, bz = np.split(f(d["b"]), 4)
    pi, pf, po = np.split(f(d["p"]), 3)
    a1, a2, a3 = (_act(a) for a in acts)
    clip = 0.8
    h, c, hs = f(d["h0"]), f(d["c0"]), []
    for xt in f(d["x"]):
        i = a1(xt @ Wi.T + h @ Ri.T + bi + c * pi)
        fg = a1(xt @ Wf.T + h @ Rf.T + bf + c * pf)
        g = a2(xt @ Wz.T + h @ Rz.T + bz)
        c = np.clip(fg * c + i * g, -clip, clip)
        o = a1(xt @ Wo.T + h @ Ro.T + bo + c * po)
        h = o * a3(c)
        hs.append(h)
    got = run_mil(tmp_path, lambda x, h, c: list(mb.lstm(
        x=x, initial_h=h, initial_c=c, weight_ih=d["w_ih"], weight_hh=d["w_hh"], bias=d["b"], peephole=d["p"],
        recurrent_activation=acts[0], cell_activation=acts[1], activation=acts[2], clip=np.float32(clip),
        output_sequence=False)), {"x": d["x"], "h": d["h0"], "c": d["c0"]}, precision, "lstm")
    check(got[0], hs[-1][None], precision, "lstm last h")
    check(got[1], h, precision, "lstm h")
    check(got[2], c, precision, "lstm c")
