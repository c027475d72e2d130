"""Rows for MIL's recurrent ops ``rnn``, ``gru``, ``lstm`` (interpreter only: tlc's front-end
lowers torch's recurrent modules to matmuls and elementwise ops, packages made by coremltools
carry these ops).

Semantics: coremltools ``converters/mil/mil/ops/defs/iOS15/recurrent.py`` (the docstrings),
``iOS17/recurrent.py`` (fp16), ``iOS18/recurrent.py`` (gru ``reset_after`` / ``input_bias``),
and the NumPy references of coremltools' own op tests
(``mil/ops/tests/iOS14/test_recurrent.py``), which fix what the docstrings leave open:

* ``x`` is ``[seq, batch, input]``; outputs ``(all_h [seq or 1, batch, D*H], h_final, [c_final])``;
  with ``output_sequence`` False ``all_h`` holds the last step only.
* ``direction="reverse"`` runs over the time-reversed input and returns the steps in the order
  they were computed (coremltools' test flips the input for torch and compares unflipped);
  ``"bidirectional"`` (lstm) concatenates the forward pass with the backward pass aligned to
  input time, as torch's bidirectional LSTM does (coremltools' torch front-end maps it 1:1).
* Gate layouts: lstm ``[i, f, o, z]`` (z the cell gate), gru ``[r, o, z]`` (o the new gate).
  lstm peepholes ``[i, f, o]``: i and f see c_{t-1}, o sees c_t; ``clip`` clips the cell state.
  gru without ``reset_after``: o = act(W_o x + R_o (r * h) + b_o); with it (iOS18, torch's GRU):
  o = act(W_o x + b_io + r * (R_o h + b_o)), ``input_bias`` the ``b_i*`` part.
* Activations: ``sigmoid``, ``tanh``, ``relu``, ``linear`` (identity), ``scaled_tanh``
  (alpha tanh(beta x), defaults 1 and 1), ``hard_sigmoid`` (clip(0.2 x + 0.5, 0, 1)).

Kernels compute in float32 (an fp16 program's values arrive widened, each output is rounded once).
Tests: tests/test_mil_recurrent.py (against torch.nn.RNN / GRU / LSTM in float64, and float64
NumPy for the activations and peepholes torch lacks).
"""
from __future__ import annotations

import numpy as np

from .mil_only import interpreter_row, tensor_inputs


def _act(name: str):
    name = str(name).lower()
    if name == "sigmoid":
        return lambda v: 1.0 / (1.0 + np.exp(-v))
    if name in ("tanh", "scaled_tanh"):
        return np.tanh
    if name == "relu":
        return lambda v: np.maximum(v, 0)
    if name == "linear":
        return lambda v: v
    if name == "hard_sigmoid":
        return lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0)
    raise ValueError(f"unknown recurrent activation {name!r}")


def _sequence(step, x, h0, reverse: bool):
    """Run ``step(x_t, state) -> state`` (state a tuple whose first entry is h) over x [S, B, I]."""
    xs = x[::-1] if reverse else x
    state, hs = h0, []
    for t in range(xs.shape[0]):
        state = step(xs[t], state)
        hs.append(state[0])
    return state, (np.stack(hs) if hs else np.zeros((0,) + h0[0].shape, np.float32))


def _finish(hs, final, output_sequence):
    return hs if output_sequence else final[0][None]


def _rnn(attrs, x, h0, w_ih, w_hh):
    """iOS15 ``rnn``: h_t = activation(W_ih x_t + W_hh h_{t-1} + bias)."""
    b = attrs.get("bias", np.zeros(w_hh.shape[0], np.float32))
    act = _act(attrs.get("activation", "tanh"))
    step = lambda xt, s: (act(xt @ w_ih.T + s[0] @ w_hh.T + b).astype(np.float32),)
    final, hs = _sequence(step, x, (h0,), attrs.get("direction", "forward") == "reverse")
    return _finish(hs, final, bool(attrs.get("output_sequence", False))), final[0]


def _gru(attrs, x, h0, w_ih, w_hh):
    """``gru`` (iOS15/17/18): gates [r, o, z]; see the module docstring for ``reset_after``."""
    hdim = w_hh.shape[1]
    b = attrs.get("bias", np.zeros(3 * hdim, np.float32))
    bi = attrs.get("input_bias", np.zeros(3 * hdim, np.float32))
    ract, act = _act(attrs.get("recurrent_activation", "sigmoid")), _act(attrs.get("activation", "tanh"))
    after = bool(attrs.get("reset_after", False))
    wr, wo, wz = np.split(w_ih, 3)
    rr, ro, rz = np.split(w_hh, 3)
    br, bo, bz = np.split(b, 3)
    bir, bio, biz = np.split(bi, 3)

    def step(xt, s):
        h = s[0]
        r = ract(xt @ wr.T + bir + h @ rr.T + br)
        z = ract(xt @ wz.T + biz + h @ rz.T + bz)
        if after:
            o = act(xt @ wo.T + bio + r * (h @ ro.T + bo))
        else:
            o = act(xt @ wo.T + bio + (r * h) @ ro.T + bo)
        return (((1 - z) * o + z * h).astype(np.float32),)

    final, hs = _sequence(step, x, (h0,), attrs.get("direction", "forward") == "reverse")
    return _finish(hs, final, bool(attrs.get("output_sequence", False))), final[0]


def _lstm_dir(x, h0, c0, w_ih, w_hh, b, p, acts, clip, reverse):
    hdim = w_hh.shape[1]
    b = np.zeros(4 * hdim, np.float32) if b is None else b
    p = np.zeros(3 * hdim, np.float32) if p is None else p
    ract, cact, act = acts
    wi, wf, wo, wz = np.split(w_ih, 4)
    ri, rf, ro, rz = np.split(w_hh, 4)
    bi, bf, bo, bz = np.split(b, 4)
    pi, pf, po = np.split(p, 3)

    def step(xt, s):
        h, c = s
        i = ract(xt @ wi.T + h @ ri.T + bi + c * pi)
        f = ract(xt @ wf.T + h @ rf.T + bf + c * pf)
        z = cact(xt @ wz.T + h @ rz.T + bz)
        c = f * c + i * z
        if clip is not None:
            c = np.clip(c, -clip, clip)
        o = ract(xt @ wo.T + h @ ro.T + bo + c * po)
        return (o * act(c)).astype(np.float32), c.astype(np.float32)

    return _sequence(step, x, (h0, c0), reverse)


def _lstm(attrs, x, h0, c0, w_ih, w_hh):
    """``lstm`` (iOS15/17): gates [i, f, o, z], optional peepholes and ``clip``; ``direction``
    forward, reverse or bidirectional (``*_back`` weights, initial states split [forward | back])."""
    acts = tuple(_act(attrs.get(k, d)) for k, d in (("recurrent_activation", "sigmoid"),
                                                     ("cell_activation", "tanh"), ("activation", "tanh")))
    clip = attrs.get("clip")
    clip = None if clip is None else float(np.asarray(clip))
    direction = attrs.get("direction", "forward")
    seq = bool(attrs.get("output_sequence", False))
    if direction != "bidirectional":
        (h, c), hs = _lstm_dir(x, h0, c0, w_ih, w_hh, attrs.get("bias"), attrs.get("peephole"), acts, clip,
                               direction == "reverse")
        return (hs if seq else h[None]), h, c
    hd = w_hh.shape[1]
    (hf, cf), hsf = _lstm_dir(x, h0[:, :hd], c0[:, :hd], w_ih, w_hh, attrs.get("bias"), attrs.get("peephole"),
                              acts, clip, False)
    (hb, cb), hsb = _lstm_dir(x, h0[:, hd:], c0[:, hd:], attrs["weight_ih_back"], attrs["weight_hh_back"],
                              attrs.get("bias_back"), attrs.get("peephole_back"), acts, clip, True)
    h, c = np.concatenate([hf, hb], -1), np.concatenate([cf, cb], -1)
    out = np.concatenate([hsf, hsb[::-1]], -1) if seq else h[None]
    return out, h, c


interpreter_row("rnn", _rnn, from_mil=tensor_inputs("x", "initial_h", "weight_ih", "weight_hh", optional=("bias",)))
interpreter_row("gru", _gru, from_mil=tensor_inputs("x", "initial_h", "weight_ih", "weight_hh", optional=("bias", "input_bias")))
interpreter_row("lstm", _lstm, from_mil=tensor_inputs("x", "initial_h", "initial_c", "weight_ih", "weight_hh",
                                            optional=("bias", "peephole", "weight_ih_back", "weight_hh_back",
                                                      "bias_back", "peephole_back")))
