"""Residency and accuracy of the default build (``precision="mixed"``) on full-size models.

For each model (the visible zoo of ``bench_spine.py`` plus :data:`VISION`, a public list of
torchvision and timm architectures at full size with random weights, installed through the
``bench`` extra) it builds the default package, saves it, runs it in tlc's MIL interpreter on the
example input (a bundle in the hybrid runtime) and compares every output with torch eager fp32:

* ``residency`` / ``residency_doc``: static ANE residency under every ANE rule and under
  documented rules only (``-`` where the tree has no evidence levels);
* ``islands``: fp32 island ops; ``rescaled``: regions ``precision::rescale`` scaled; ``programs``:
  programs the closed loop emitted; ``fallback``: 1 when it shipped a fallback program;
* ``rel_l2``: worst relative L2 error over the float outputs, ``nonfinite``: NaN/inf in them;
* ``error``: the exception the build raised, if any (``PrecisionError`` included); ``build_s``.

Before/after in one run: ``benchmarks/ab.py --same-script`` runs this script (the head's copy) on
two revisions, one model per process, alternating::

    python benchmarks/ab.py --base main --head issue30 --same-script --models mobilenet_v3_large,... bench_residency.py

Alone: ``python benchmarks/bench_residency.py [--models a,b] [--json out.json]`` (default: all).
torchvision's compiled ops do not load beside tlc's CPU torch ("operator torchvision::nms does
not exist"); the script declares the two op schemas its import registers fakes for first.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils._pytree as pytree  # noqa: E402

# torchvision's import registers fake kernels for ``torchvision::nms`` / ``qnms``, which must exist; when its
# compiled ops do not match the installed torch they do not, so they are declared here, before anything
# (transformers included, which imports torchvision when it is installed) imports it. Never called.
_LIB = torch.library.Library("torchvision", "DEF")
for _op in ("nms", "qnms"):
    _LIB.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


import tlc  # noqa: E402
from bench_spine import MODELS as ZOO, log  # noqa: E402
from tlc.runtime import load  # noqa: E402


def _vision():
    """``(torchvision, timm)`` (importable beside a torch whose build torchvision's C++ ops do not
    match: see ``_LIB`` above)."""
    import timm
    import torchvision

    return torchvision, timm


def _tv(name: str, size: int = 224, **kw):
    def make():
        tv, _ = _vision()
        fn = getattr(tv.models.segmentation, name, None) or getattr(tv.models, name)
        return fn(weights=None, **kw), ((torch.randn(1, 3, size, size),), {})
    return make


def _timm(name: str):
    def make():
        _, timm = _vision()
        m = timm.create_model(name, pretrained=False)
        size = m.pretrained_cfg.get("input_size", (3, 224, 224))
        return m, ((torch.randn(1, *size),), {})
    return make


#: torchvision and timm architectures, full size, random weights (the issue's shapes: mobile
#: classifiers, Inception-style stacks, dilated segmentation heads, conv/attention hybrids).
#: Segmentation models at 224x224 (they take any size; 520 is their training size).
VISION = {
    "mobilenet_v3_large": _tv("mobilenet_v3_large"),
    "mobilenet_v3_small": _tv("mobilenet_v3_small"),
    "inception_v3": _tv("inception_v3", 299, aux_logits=False, init_weights=True),
    "googlenet": _tv("googlenet", aux_logits=False, init_weights=True),
    "lraspp_mobilenet_v3_large": _tv("lraspp_mobilenet_v3_large", weights_backbone=None),
    "deeplabv3_mobilenet_v3_large": _tv("deeplabv3_mobilenet_v3_large", weights_backbone=None, aux_loss=False),
    "shufflenet_v2_x1_0": _tv("shufflenet_v2_x1_0"),
    "mnasnet1_0": _tv("mnasnet1_0"),
    "squeezenet1_1": _tv("squeezenet1_1"),
    "efficientnet_b0": _tv("efficientnet_b0"),
    "regnet_y_400mf": _tv("regnet_y_400mf"),
    "densenet121": _tv("densenet121"),
    "efficientformer_l1": _timm("efficientformer_l1"),
    "mobilevit_s": _timm("mobilevit_s"),
    "levit_128": _timm("levit_128"),
    "ghostnet_100": _timm("ghostnet_100"),
    "rexnet_100": _timm("rexnet_100"),
    "hrnet_w18_small": _timm("hrnet_w18_small"),
    "fastvit_t8": _timm("fastvit_t8"),
    "mobilenetv4_conv_small": _timm("mobilenetv4_conv_small"),
    "repvgg_a0": _timm("repvgg_a0"),
    "poolformer_s12": _timm("poolformer_s12"),
    "edgenext_small": _timm("edgenext_small"),
    "dla34": _timm("dla34"),
}
MODELS = {**ZOO, **VISION}


def measure(name: str) -> dict:
    torch.manual_seed(0)
    model, (args, kwargs) = MODELS[name]()
    model.eval()
    row: dict = {"model": name}
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="tlc-res-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            log(f"{name}: tlc.build + save")
            cm = tlc.build(model, (args, kwargs))
            path = cm.save(Path(tmp) / "m.mlpackage")
            row["build_s"] = time.perf_counter() - t0
            rep = cm.report()
            row["residency"] = round(rep.residency, 4)
            under = getattr(rep, "residency_under", None)
            row["residency_doc"] = round(under("documented"), 4) if under else "-"
            chk = cm.precision_check
            row["islands"] = len(cm.islands)
            row["rescaled"] = sum(1 for r in getattr(chk, "rescaled", ()) if r.get("exponent"))
            row["programs"] = len(chk.rounds) if chk is not None else 0
            row["fallback"] = int(bool(getattr(chk, "fallback", "")))
            log(f"{name}: run the package")
            feeds = {n: np.asarray(t) for n, t in zip(cm.input_names, (x for x in pytree.tree_leaves((args, kwargs))
                                                                      if isinstance(x, torch.Tensor)))}
            got = load(path)(feeds)
            with torch.no_grad():
                refs = [t for t in pytree.tree_leaves(model(*args, **kwargs)) if isinstance(t, torch.Tensor)]
            errs, bad = [], 0
            for n, r in zip(cm.output_names, refs):
                r = r.double().numpy()
                if r.dtype.kind != "f":
                    continue
                g = np.asarray(got[n], np.float64).reshape(r.shape)
                bad += int((~np.isfinite(g) & np.isfinite(r)).sum())
                d = np.linalg.norm(np.nan_to_num(g - r, nan=1e30, posinf=1e30, neginf=1e30))
                errs.append(float(d / max(np.linalg.norm(r), 1e-30)))
            row["rel_l2"] = float(f"{max(errs):.3g}") if errs else 0.0
            row["nonfinite"] = bad
            row["error"] = ""
    except Exception as e:  # the build's exception is the finding: PrecisionError, a lowering gap, ...
        row.setdefault("build_s", time.perf_counter() - t0)
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    del model
    gc.collect()
    return row


def fmt(col: str, v) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{100 * v:.1f}%" if col.startswith("residency") else f"{v:.1e}" if col == "rel_l2" else f"{v:.1f}"


COLS = ["model", "residency", "residency_doc", "islands", "rescaled", "programs", "fallback", "rel_l2", "nonfinite",
        "build_s", "error"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of: {', '.join(MODELS)}")
    p.add_argument("--json")
    a = p.parse_args(argv)
    names = [m for m in a.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    rows = [measure(n) for n in names]
    print(f"tlc {tlc.__version__}, torch {torch.__version__}; default build (precision=mixed), MIL interpreter vs torch "
          f"eager fp32 on the example input")
    print("| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    for r in rows:
        print("| " + " | ".join(fmt(c, r.get(c, "")) for c in COLS) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
