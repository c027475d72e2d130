"""``tlc verify``, ``tlc profile``, ``tlc bench`` and ``tlc cache``: the tools built on the driver.
The commands import the driver (and with it torch) when they run, so building the parser stays
cheap for ``tlc run``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tlc.driver.cache import Cache
from tlc.util.progress import note

from .modelfile import add_build_options, io_options, load_model_file, merged_options, model_of
from .output import human


def cmd_verify(a: argparse.Namespace) -> int:
    from tlc.driver.options import decide_interface
    from tlc.driver.verify import verify

    spec = load_model_file(a.model, entry=a.entry)
    opts = merged_options(a, spec, keys=("precision", "minimum_deployment_target", "target", "io_dtype"))
    report = verify(spec.model, spec.example_inputs, package=a.package, format=a.format,
                    tol={"fp32": a.tol_fp32, "fp16": a.tol_fp16}, keep=a.output, force=a.force,
                    interface=decide_interface(**io_options(a, spec)), **opts)
    print(report.text())
    return 0 if report.passed else 1


def cmd_profile(a: argparse.Namespace) -> int:
    from tlc.driver.options import BuildOptions
    from tlc.driver.profile import measure, write
    from tlc.driver.single import build_one

    spec = load_model_file(a.model, entry=a.entry)
    cm = build_one(model_of(spec), spec.example_inputs, BuildOptions.decide(precision="fp32", target="cpu"))
    rows = measure(cm.graph, cm.calibration[0], runs=a.runs)  # calibration[0]: the example inputs by name
    out = Path(a.output or Path(a.model).stem + ".profile.json")
    doc = write(out, {"cpu": rows}, source=str(spec.path))
    per_op: dict[str, float] = {}
    for r in rows:
        per_op[r["op"]] = per_op.get(r["op"], 0.0) + r["s"]
    print(f"profiled {len(rows)} ops of {spec.path} on the NumPy executor ({a.runs} runs, median): "
          f"{sum(per_op.values()) * 1e3:.1f} ms per run -> {out}")
    for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])[:10]:
        d = doc["backends"]["cpu"]["ops"][op]
        print(f"  {op:<30} {d['n']:>4} ops {t * 1e3:9.2f} ms  overhead {d['overhead_s'] * 1e6:8.1f} us  "
              f"{(1 / d['s_per_flop'] / 1e9 if d['s_per_flop'] else float('inf')):8.1f} GFLOP/s")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from tlc.driver import bench

    spec = load_model_file(a.model, entry=a.entry)
    backends = [b for b in a.backends.split(",") if b]
    devs = [d for d in a.device.split(",") if d] if a.device else None
    caps = [c for c in (a.capture or "").split(",") if c]
    res = bench.bench(spec.model, spec.example_inputs, backends=backends, devices_=devs, captures=caps, runs=a.runs,
                      warmup=a.warmup, batch=a.batch, dtype=a.dtype, log=note)
    env = bench.environment()
    print(f"tlc bench {spec.path}  ({a.dtype}, {a.runs} runs after {a.warmup} warm-up, interleaved; "
          f"torch {env['torch']}{', ' + env['cuda_device'] if 'cuda_device' in env else ''})")
    print(bench.table(res))
    if a.json:
        Path(a.json).write_text(bench.to_json(res, model=str(spec.path), runs=a.runs, warmup=a.warmup,
                                              dtype=a.dtype, **env))
        print(f"wrote {a.json}")
    return 0


def cmd_cache(a: argparse.Namespace) -> int:
    c = Cache()
    if a.action == "clear":
        n = c.clear()
        print(f"removed {n} entr{'y' if n == 1 else 'ies'} from {c.root}")
        return 0
    info = c.info()
    if a.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"tlc compile cache at {info['root']} ($TLC_CACHE_DIR)")
    print("  entries " + ", ".join(f"{n} {k}" for k, n in info["entries"].items()))
    print(f"  size    {human(info['bytes'])} of {human(info['max_bytes'])} ($TLC_CACHE_MAX_BYTES; least recently used "
          f"entries are evicted beyond it)")
    return 0


def add_parsers(sub) -> None:
    """The ``profile``, ``verify``, ``cache`` and ``bench`` subcommands on ``sub`` (argparse subparsers)."""
    pr = sub.add_parser("profile", help="measure per-op costs of model.py on tlc's fallback runtime (for --profile)",
                        description="Run the model's IR on tlc's NumPy executor, time every op (median over --runs), "
                                    "fit seconds = overhead + FLOPs x s_per_flop per op kind and write a JSON profile "
                                    "that `tlc build --profile FILE` uses for placement decisions.")
    pr.add_argument("model", help="path to model.py (same convention as `tlc build`)")
    pr.add_argument("-o", "--output", help="profile path (default: ./<model stem>.profile.json)")
    pr.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up (default 5)")
    pr.add_argument("--entry", help="which @tlc.compile object to use when the file has several")
    pr.set_defaults(func=cmd_profile)

    v = sub.add_parser(
        "verify", help="build model.py (or take --package), run it in the MIL interpreter, compare with torch eager",
        description=("Per output: max abs error, relative L2 error, cosine similarity, NaN/inf count and PASS/FAIL. "
                     "On FAIL, names the first op whose value departs from tlc's reference runtime, with its "
                     "source line. Exit code 0 on PASS, 1 on FAIL."))
    v.add_argument("model", help="path to model.py (same convention as `tlc build`)")
    v.add_argument("--package", help="verify this existing .mlpackage instead of building one")
    v.add_argument("--format", choices=["mlpackage", "both"], default="mlpackage",
                   help="both: also build the Core AI .aimodel of the same program, run it in Apple's Core AI runtime, "
                        "and compare torch, the MIL interpreter and Core AI in one table (needs the coreai extra)")
    v.add_argument("-o", "--output", help="keep the built package at this path (default: a temp dir)")
    v.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    add_build_options(v)
    v.add_argument("--tol-fp32", type=float, default=1e-5, help="rel-L2 tolerance for fp32 packages (default 1e-5)")
    v.add_argument("--tol-fp16", type=float, default=1e-2, help="rel-L2 tolerance for fp16/mixed packages (default 1e-2)")
    v.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (it only shows on a terminal)")
    v.set_defaults(func=cmd_verify)

    ca = sub.add_parser("cache", help="show (info) or empty (clear) the persistent compile cache",
                        description="The persistent compile cache (tlc.driver.cache): traces, plans and artifacts of earlier "
                                    "builds, keyed by versions, options, inputs, weights and source files.")
    ca.add_argument("action", choices=["info", "clear"])
    ca.add_argument("--json", action="store_true", help="info as JSON")
    ca.set_defaults(func=cmd_cache)

    bn = sub.add_parser(
        "bench", help="latency/throughput of model.py on each backend here, beside torch eager on the same device",
        description=("Trace model.py once, then time torch eager and tlc's backends (torch-device executor on "
                     "cpu/cuda/mps, NumPy executor, Core ML on macOS) in one process, interleaved round by round: "
                     "median and p90 latency, throughput, ratio to eager on the same device. See compiler/driver/bench.py."))
    bn.add_argument("model", help="path to model.py (same convention as `tlc build`)")
    bn.add_argument("--entry", help="which @tlc.compile object to use when the file has several")
    bn.add_argument("--runs", type=int, default=50, help="timed calls per backend (default 50)")
    bn.add_argument("--warmup", type=int, default=10, help="untimed calls per backend first (default 10)")
    bn.add_argument("--batch", type=int, help="repeat/cut the example inputs' first axis to this size")
    bn.add_argument("--backends", default="eager,tlc-torch,tlc-numpy,coreml",
                    help="comma-separated subset of eager,compile,tlc-torch,tlc-numpy,coreml (default: eager,tlc-torch,"
                         "tlc-numpy,coreml where available; compile: torch.compile(mode='reduce-overhead'))")
    bn.add_argument("--device", help="torch devices for eager/tlc-torch, comma-separated (default: cpu + cuda/mps)")
    bn.add_argument("--capture", help="extra torch-executor captures to time: none,cuda_graph,compile,compile+cuda_graph")
    bn.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    bn.add_argument("--json", metavar="FILE", help="also write the results (with every run's time) as JSON")
    bn.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (it only shows on a terminal)")
    bn.set_defaults(func=cmd_bench)


__all__ = ["add_parsers", "cmd_verify", "cmd_profile", "cmd_bench", "cmd_cache"]
