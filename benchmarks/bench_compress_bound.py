"""How many bits per weight the real all-MiniLM-L6-v2 needs for a given embedding PSNR, whatever
the post-training weight quantizer (issue 31's ">= 35 dB at <= 4.5 bits" point).

Every linear weight of the encoder (36 weights, 21.3M parameters; the token embedding stays
dense) is replaced in torch by its quantized values, the model runs in float32, and the pooled,
normalized embedding of the 40 evaluation sentences of ``bench_compress.py`` is compared with the
unquantized one: the worst PSNR (coremltools' definition, ``tlc.check.metrics.psnr``), the worst
cosine and the nearest-neighbour agreement, as ``bench_compress.py --models minilm`` reports them
for packages. Schemes:

* ``intN per-channel``: symmetric round-to-nearest, one scale per output channel (tlc's ``int8``
  mode, and the same at fewer bits): the slope between them is what one bit buys;
* ``int4 per-block B``: one scale per B input values (iOS18 ``constexpr_blockwise_shift_scale``;
  4 + 16/B bits with fp16 scales);
* ``lut4 per-16-channels``: tlc's ``palettize4`` tables (coremltools' exact 1-D k-means, through
  :func:`tlc.backends.coreml.weights.palettize_params`);
* ``gptq int4 per-block 32``: GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization
  for Generative Pre-trained Transformers", Algorithm 1: columns rounded in order, each rounding
  error spread over the columns not yet rounded through the inverse Hessian of the layer's inputs,
  1% dampening), with the Hessians from the 64 :data:`CALIBRATION` sentences (disjoint from the
  evaluation set): the best-known post-training correction of rounding error.

The bits a target needs follow from the slope (``needs``): weight-only quantization noise falls
~6 dB per bit (the rate-distortion bound of a Gaussian source is 6.02 dB per bit), so a target T
needs about ``4 + (T - psnr(int4 per-channel)) / slope`` bits per weight.

Run::

    python benchmarks/bench_compress_bound.py [--target 35] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
from bench_compress import SENTENCES, quality  # noqa: E402


#: 64 sentences for GPTQ's Hessians, none of them in the evaluation set
CALIBRATION = """The museum opened a new exhibit on ancient Egypt. | My neighbor fixed the fence over the weekend. |
The committee will vote on the proposal next week. | Fresh bread smells wonderful in the morning. |
The software update improved battery life. | A strong wind knocked down several trees. |
She finished reading the novel in one night. | The children built a sandcastle at the beach. |
Researchers published a study on sleep and memory. | The river flooded after days of rain. |
He repaired the bicycle chain himself. | The startup raised funding from several investors. |
Traffic was heavy on the highway this morning. | The painter used bright colors on the canvas. |
Our library extended its opening hours. | The chef prepared a three-course dinner. |
Electric cars are becoming more affordable. | The hikers reached the summit before sunset. |
The city council approved the new budget. | A small dog barked at the mailman. |
The lecture covered the basics of thermodynamics. | Farmers harvested wheat in late summer. |
The password must contain at least eight characters. | The actor won an award for his performance. |
Please close the window when you leave. | The bridge was closed for repairs. |
Scientists detected water vapor on the planet. | The market sells fresh fruit every Saturday. |
The teacher graded the exams over the weekend. | My phone battery died during the call. |
The election results will be announced tonight. | The tea was too hot to drink. |
A database index speeds up queries. | The marathon runners crossed the finish line. |
The company recalled thousands of faulty devices. | Birds sang outside the window at dawn. |
The doctor recommended more rest and fluids. | The game was postponed because of rain. |
The printer ran out of ink again. | The volcano erupted, sending ash into the sky. |
They adopted a kitten from the shelter. | The report highlights rising housing costs. |
He forgot his umbrella at the restaurant. | The network outage lasted three hours. |
The violinist tuned her instrument before the show. | Prices at the grocery store went up this month. |
The ship sailed across the Atlantic Ocean. | The students presented their science projects. |
A gentle breeze cooled the afternoon. | The algorithm sorts the list in linear time. |
The bakery sells croissants and muffins. | The mayor spoke at the opening ceremony. |
The hospital hired more nurses this year. | The film was shot in the desert. |
He ran five kilometers before breakfast. | The storm knocked out power across the region. |
The keyboard has a broken space bar. | The garden is full of tomatoes and peppers. |
The court ruled in favor of the defendant. | The satellite transmits data every hour. |
We watched the fireworks from the rooftop. | The cafe offers free wifi to customers. |
The old castle attracts many tourists. | Her presentation impressed the whole team."""
CALIBRATION = [s.strip() for s in CALIBRATION.replace("\n", " ").split("|")]


def per_block(w: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Symmetric round-to-nearest with one scale per ``block`` input values of each output row."""
    o, i = w.shape
    wb = w.reshape(o, i // block, block)
    qmax = 2 ** (bits - 1) - 1
    s = (wb.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-12)
    return (torch.clamp(torch.round(wb / s), -qmax - 1, qmax) * s).reshape(o, i)


def lut_per_16(w: torch.Tensor) -> torch.Tensor:
    """tlc's palettize4 tables (16 entries per 16 output channels) applied to ``w``."""
    from tlc.backends.coreml.weights import palettize_params

    p = palettize_params(w.numpy().astype(np.float16), 4, [16, 0])
    lut = p.lut.reshape(p.lut.shape[0], -1)  # [groups, 16]
    idx = np.asarray(p.indices, np.int64).reshape(lut.shape[0], -1)
    return torch.from_numpy(np.take_along_axis(lut, idx, 1).reshape(w.shape).astype(np.float32))


def gptq(w: torch.Tensor, h: torch.Tensor, bits: int = 4, block: int = 32, damp: float = 0.01) -> torch.Tensor:
    """GPTQ (Algorithm 1 of the paper, one column at a time) onto the per-block int grid, scales
    taken from the block's weights as they stand when its first column is reached."""
    W, H = w.double().clone(), h.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    qmax = 2 ** (bits - 1) - 1
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        if i % block == 0:
            s = (W[:, i:i + block].abs().amax(1) / qmax).clamp(min=1e-12)
        q = torch.clamp(torch.round(W[:, i] / s), -qmax - 1, qmax) * s
        Q[:, i] = q
        W[:, i + 1:] -= ((W[:, i] - q) / hinv[i, i])[:, None] * hinv[i, i + 1:][None]
    return Q.float()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=35.0, help="the PSNR (dB) whose bits per weight are estimated")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    import minilm as mx

    torch.manual_seed(0)
    model = mx.model
    evals = [mx.tokenize(s) for s in SENTENCES]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    original = {n: m.weight.data.clone() for n, m in linears}

    @torch.no_grad()
    def embeddings():
        return [model(**f)["embedding"].numpy() for f in evals]

    refs = embeddings()
    hess = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in linears}
    count = {n: 0 for n, _ in linears}
    mask = [None]

    def hook(mod, inp, out, n):
        x = inp[0][0][mask[0][0].bool()].double()  # the sentence's real tokens, not the padding
        hess[n] += x.T @ x
        count[n] += x.shape[0]

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in linears]
    with torch.no_grad():
        for s in CALIBRATION:
            f = mx.tokenize(s)
            mask[0] = f["attention_mask"]
            model(**f)
    for h in handles:
        h.remove()
    schemes = {f"int{b} per-channel": (b, lambda n, w, b=b: per_block(w, b, w.shape[1])) for b in (8, 6, 5, 4)}
    schemes.update({f"int4 per-block {k}": (4 + 16 / k, lambda n, w, k=k: per_block(w, 4, k)) for k in (32, 16)})
    schemes["lut4 per-16-channels"] = (4 + 16 * 16 / (16 * 384), lambda n, w: lut_per_16(w))
    schemes["gptq int4 per-block 32"] = (4.5, lambda n, w: gptq(w, hess[n] / count[n]))
    rows = []
    print(f"all-MiniLM-L6-v2, {len(linears)} linear weights quantized alike, {len(SENTENCES)} evaluation sentences "
          f"(GPTQ Hessians from {len(CALIBRATION)} others, {count[linears[0][0]]} tokens)")
    print("| scheme | bits/weight | PSNR dB (worst) | cos (worst) | nn | s |\n|---|---|---|---|---|---|")
    for name, (bits, fn) in schemes.items():
        t0 = time.perf_counter()
        for n, m in linears:
            m.weight.data = fn(n, original[n])
        row = {"scheme": name, "bits": bits, **quality(embeddings(), refs, nn=True), "s": time.perf_counter() - t0}
        for n, m in linears:
            m.weight.data = original[n].clone()
        rows.append(row)
        print(f"| {name} | {bits:.2f} | {row['psnr']:.1f} | {row['cos']:.4f} | {row['nn']:.3f} | {row['s']:.0f} |",
              flush=True)
    by = {r["scheme"]: r for r in rows}
    slope = (by["int8 per-channel"]["psnr"] - by["int4 per-channel"]["psnr"]) / 4
    need = 4 + (a.target - by["int4 per-channel"]["psnr"]) / slope
    print(f"slope int4 -> int8 per-channel: {slope:.2f} dB per bit; {a.target:g} dB needs ~{need:.1f} bits per weight "
          f"with round-to-nearest; the best 4.5-bit scheme above reaches "
          f"{max(r['psnr'] for r in rows if r['bits'] <= 4.5):.1f} dB")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "slope_db_per_bit": slope, "bits_needed": need}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
