"""Placement benchmark: segments and static ANE residency per full-size model (issue 5).

For each spine model (same builders as ``bench_spine.py``: random weights from default
``transformers`` configs, the real all-MiniLM-L6-v2; nothing downloaded) it builds with tlc's
defaults (``precision="mixed"``, ``target="ane"``) and prints from ``cm.report()``:

* ``segments``: number of segments, and their targets;
* ``residency_%``: static ANE residency, the share of estimated FLOPs in ops in Core ML segments
  that pass every ANE eligibility rule; ``coreml_%``: the share in Core ML segments;
* ``off_ane``: ops not predicted on the ANE, by op kind (count);
* ``partition_s``: time of ``tlc.passes.partition.assign`` (the min-cut and segment grouping).

Run::

    python benchmarks/bench_placement.py [--models bert,resnet50,...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_spine import MODELS, log  # noqa: E402

import tlc  # noqa: E402


def measure(name: str) -> dict:
    model, (args, kwargs) = MODELS[name]()
    cm = tlc.build(model.eval(), (args, kwargs))
    cm.emit_graph  # noqa: B018  (precision analysis, not timed here)
    t0 = time.perf_counter()
    rep = cm.report()
    t = time.perf_counter() - t0
    off: dict[str, int] = {}
    for o in rep.not_on_ane():
        off[o.op] = off.get(o.op, 0) + 1
    return {"model": name, "segments": len(rep.segments), "targets": ",".join(s.target for s in rep.segments),
            "residency_%": round(100 * rep.residency, 2), "coreml_%": round(100 * rep.coreml_share, 2),
            "GFLOP": round(rep.total_flops / 1e9, 2), "partition_s": round(t, 3),
            "off_ane": ", ".join(f"{k} {v}" for k, v in sorted(off.items(), key=lambda kv: -kv[1]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args(argv)
    rows = []
    for name in a.models.split(","):
        log(f"{name}: build + report")
        rows.append(measure(name))
    cols = ["model", "segments", "targets", "residency_%", "coreml_%", "GFLOP", "partition_s", "off_ane"]
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
