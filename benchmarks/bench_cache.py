"""Cold vs cached first call of the MiniLM example in a fresh process (issue 18).

Each round starts two fresh Python processes side by side: one with an empty persistent compile
cache (cold: torch.export, decompositions, lowering, passes, then the call) and one with the
cache the cold one filled (cached: the key, the entry's integrity check and load, then the call).
Both time the first call of ``tlc.compile(model)`` on the example inputs, after imports and model
construction, which are the same for both; the whole process wall time is printed too.

    python benchmarks/bench_cache.py [--rounds 3]

Goal (issue 18): cached first call <= 10% of cold.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, runpy, sys, time
t_start = time.perf_counter()
import torch, tlc
ns = runpy.run_path(sys.argv[1])  # examples/minilm.py: the model (real weights) and its example inputs
f = tlc.compile(ns["model"])
t0 = time.perf_counter()
out = f(**ns["example_inputs"])
t1 = time.perf_counter()
cm = f.compiled
print(json.dumps({"first_call_s": t1 - t0, "status": cm.cache_status, "traces": f.trace_count,
                  "setup_s": t0 - t_start, "checksum": float(out["embedding"].double().sum())}))
'''


def child(cache: Path) -> dict:
    env = {**os.environ, "TLC_CACHE_DIR": str(cache)}
    env.pop("TLC_NO_CACHE", None)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, str(REPO / "examples" / "minilm.py")], capture_output=True,
                       text=True, env=env, cwd=REPO)
    if r.returncode:
        sys.exit(f"child failed:\n{r.stderr[-3000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    d["process_s"] = time.perf_counter() - t0
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    cold, warm = [], []
    for k in range(a.rounds):
        with tempfile.TemporaryDirectory(prefix="tlc-bench-cache-") as d:
            c = child(Path(d))
            w = child(Path(d))
        assert c["status"] == "miss" and w["status"] == "hit" and w["traces"] == 0, (c, w)
        assert abs(c["checksum"] - w["checksum"]) < 1e-6 * max(1.0, abs(c["checksum"])), (c, w)
        cold.append(c)
        warm.append(w)
        print(f"round {k + 1}: cold first call {c['first_call_s']:.2f} s, cached {w['first_call_s']:.3f} s "
              f"(processes {c['process_s']:.1f} s / {w['process_s']:.1f} s)", file=sys.stderr)
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    fc, fw = med(cold, "first_call_s"), med(warm, "first_call_s")
    pc, pw = med(cold, "process_s"), med(warm, "process_s")
    print(f"MiniLM example (examples/minilm.py), median of {a.rounds} round(s), fresh processes side by side")
    print(f"{'':<28}{'cold':>10}{'cached':>10}{'cached/cold':>13}")
    print(f"{'first call (s)':<28}{fc:>10.3f}{fw:>10.3f}{fw / fc:>12.1%}")
    print(f"{'whole process (s)':<28}{pc:>10.2f}{pw:>10.2f}{pw / pc:>12.1%}")
    print(f"goal: cached first call <= 10% of cold: {'MET' if fw <= 0.1 * fc else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
