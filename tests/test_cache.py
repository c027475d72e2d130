"""Issue 18: the persistent compile cache, byte-identical builds, progress on long work, input hygiene."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tlc
from tlc.driver.cache import Cache
from tlc.errors import InputError

from pkgtools import run_tlc

REPO = Path(__file__).resolve().parents[1]

SCRIPT = '''
import json, sys, torch
import torch.export
calls = {"export": 0}
_export = torch.export.export
def counting(*a, **k):
    calls["export"] += 1
    return _export(*a, **k)
torch.export.export = counting  # counts, then calls torch's own export
import tlc
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0

@tlc.compile
def f(x):
    return net(x) * SCALE

x = torch.linspace(-1, 1, 32).reshape(2, 16)
y = f(x)
with torch.no_grad():
    ref = f.fn(x)  # torch eager, the function itself
print(json.dumps({"status": f.compiled.cache_status, "exports": calls["export"], "traces": f.trace_count,
                  "timings": sorted(f.compiled.timings), "y": y.tolist(), "ref": ref.tolist()}))
'''


def _child(script: Path, env: dict, *args) -> dict:
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_compile_function_from_the_cache(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TLC_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("TLC_NO_CACHE", None)
    cold = _child(script, env)
    assert cold["status"] == "miss" and cold["exports"] == 1 and cold["traces"] == 1
    warm = _child(script, env)
    assert warm["status"] == "hit" and warm["exports"] == 0 and warm["traces"] == 0  # no export ran
    assert "export" not in warm["timings"] and "cache_load" in warm["timings"]
    assert warm["y"] == cold["y"]
    np.testing.assert_allclose(warm["y"], warm["ref"], rtol=1e-5, atol=1e-6)  # and both are torch's numbers
    script.write_text(SCRIPT.replace("* SCALE", "* SCALE + 1"))  # the function's code changed: a miss
    assert _child(script, env)["status"] == "miss"
    assert _child(script, {**env, "TLC_NO_CACHE": "1"})["status"] is None


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()


def test_weight_option_and_version_changes_miss(monkeypatch, tmp_path):
    m, x = _mlp(), torch.randn(2, 8)
    assert tlc.build(m, (x,), cache=True).cache_status == "miss"
    hit = tlc.build(m, (x,), cache=True)
    assert hit.cache_status == "hit" and "export" not in hit.timings
    np.testing.assert_array_equal(hit(x).numpy(), tlc.build(m, (x,))(x).numpy())
    pkg = hit.save(tmp_path / "hit.mlpackage")  # the cached model's artifact against torch eager
    got = tlc.runtime.load(pkg, backend="interpreter")({hit.input_names[0]: x.numpy()})[hit.output_names[0]]
    with torch.no_grad():
        assert np.abs(got - m(x).numpy()).max() < 2e-2
    assert tlc.build(m, (x,), cache=True, precision="fp32").cache_status == "miss"  # an option
    assert tlc.build(m, (x + 1,), cache=True).cache_status == "miss"  # example values (mixed calibrates on them)
    with torch.no_grad():
        m[2].weight[0, 0] += 1e-3  # one weight
    assert tlc.build(m, (x,), cache=True).cache_status == "miss"
    assert tlc.build(m, (x,), cache=True).cache_status == "hit"
    monkeypatch.setattr(tlc.version, "__version__", tlc.__version__ + ".post1")  # the tlc version
    assert tlc.build(m, (x,), cache=True).cache_status == "miss"
    assert tlc.build(m, (x,), cache_key="my-mlp-v1").cache_status == "miss"  # a user key replaces weights+code
    with torch.no_grad():
        m[2].weight[0, 0] += 1.0
    assert tlc.build(m, (x,), cache_key="my-mlp-v1").cache_status == "hit"


def test_key_sees_partials_buffers_and_attributes():
    """What the model computes with is in the key: a partial's function and arguments, tensors
    outside state_dict (non-persistent buffers, plain tensor attributes), dtype attributes, hooks."""
    import functools

    from tlc.driver.cache_key import source_key

    def key(obj):
        return source_key(obj, (torch.ones(2),), {}, values=False)

    def f(x, scale):
        return x * scale

    def g(x, scale):
        return x * scale + 1

    assert key(functools.partial(f, scale=2.0)) != key(functools.partial(f, scale=3.0))
    assert key(functools.partial(f, scale=2.0)) != key(functools.partial(g, scale=2.0))

    class M(torch.nn.Module):
        def __init__(self, v, dt=torch.float32):
            super().__init__()
            self.mask = torch.ones(3) * v
            self.register_buffer("b", torch.ones(2), persistent=False)
            self.dt = dt

        def forward(self, x):
            return x

    assert key(M(1)) == key(M(1)) and key(M(1)) != key(M(2)) and key(M(1)) != key(M(1, torch.float16))
    m = M(1)
    m.b += 1  # a non-persistent buffer
    assert key(m) != key(M(1))
    m = M(1)
    m.register_forward_hook(lambda mod, args, out: out * 2)
    assert key(m) != key(M(1))


def test_corrupted_entries_are_rebuilt_never_trusted(tmp_path):
    m, x = _mlp(), torch.randn(2, 8)
    tlc.build(m, (x,), cache=True).save(tmp_path / "a.mlpackage")
    c = Cache()
    kinds = {k: [e for e in c.entries() if e[0] == k] for k in ("traces", "plans", "artifacts")}
    assert all(len(v) == 1 for v in kinds.values()), kinds
    weights = kinds["traces"][0][1] / "graph.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    (kinds["artifacts"][0][1] / "entry.json").write_text("{ truncated")
    cm = tlc.build(m, (x,), cache=True)
    assert cm.cache_status == "miss" and cm._cache.rebuilt == 1
    out = cm.save(tmp_path / "b" / "a.mlpackage")
    assert cm._cache.rebuilt == 2  # the damaged artifact entry too
    ref = m(x).detach().numpy()
    got = tlc.runtime.load(out, backend="interpreter")({cm.input_names[0]: x.numpy()})[cm.output_names[0]]
    assert np.abs(got - ref).max() < 2e-2
    assert tlc.build(m, (x,), cache=True).cache_status == "hit"


def _tree(p: Path) -> dict[str, str]:
    return {str(f.relative_to(p)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(p.rglob("*"))
            if f.is_file()}


def test_plan_and_artifact_hits_write_the_same_bytes(tmp_path):
    m, x = _mlp(), torch.randn(2, 8)
    first = tlc.build(m, (x,), cache=True).save(tmp_path / "one" / "m.mlpackage")
    cm = tlc.build(m, (x,), cache=True)
    out = cm.save(tmp_path / "two" / "m.mlpackage")
    assert cm.cache_status == "hit" and cm._cache.hits == 2  # trace, artifact (no plan needed)
    assert cm._plan is None  # nothing was planned or emitted
    assert _tree(first) == _tree(out)
    got = tlc.runtime.load(out, backend="interpreter")({cm.input_names[0]: x.numpy()})[cm.output_names[0]]
    with torch.no_grad():
        assert np.abs(got - m(x).numpy()).max() < 2e-2  # the copied package computes torch's numbers
    assert cm.placement is not None and cm._cache.hits == 3  # the plan, when asked for, from its entry


def test_lru_eviction_and_tlc_cache_info_clear(tmp_path, monkeypatch):
    x = torch.randn(2, 8)
    tlc.build(_mlp(), (x,), cache=True)
    one = Cache().info()
    assert one["entries"]["traces"] == 1 and one["bytes"] > 0
    monkeypatch.setenv("TLC_CACHE_MAX_BYTES", str(int(one["bytes"] * 1.5)))
    m2 = _mlp()
    with torch.no_grad():
        m2[0].bias += 1
    tlc.build(m2, (x,), cache=True)  # a second entry: the least recently used one goes
    info = Cache().info()
    assert info["entries"]["traces"] == 1 and info["bytes"] <= info["max_bytes"]
    assert tlc.build(m2, (x,), cache=True).cache_status == "hit"
    res = run_tlc("cache", "info", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["entries"]["traces"] == 1
    res = run_tlc("cache", "clear")
    assert res.returncode == 0 and "removed 1 entry" in res.stdout
    assert Cache().info()["bytes"] == 0 and Cache().entries() == []


def test_cli_build_hits_the_cache_and_no_cache_skips_it(tmp_path):
    out = tmp_path / "tf.mlpackage"
    res = run_tlc("build", "examples/tensor_function.py", "-o", out, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "cache   trace miss" in res.stdout
    first = _tree(out)
    res = run_tlc("build", "examples/tensor_function.py", "-o", out, "--force", cwd=REPO)
    assert res.returncode == 0 and "cache   trace hit (no export ran)" in res.stdout and "export" not in \
        res.stdout.split("time")[-1]
    assert _tree(out) == first
    res = run_tlc("build", "examples/tensor_function.py", "-o", out, "--force", "--no-cache", cwd=REPO)
    assert res.returncode == 0 and "cache " not in res.stdout and "export" in res.stdout.split("time")[-1]
    assert os.environ.get("TLC_NO_CACHE") is None  # --no-cache does not leak into the process
    assert _tree(out) == first


BUILD = '''
import sys, torch, tlc
torch.manual_seed(0)
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(3)])
    def forward(self, x):
        y = self.a(x)
        if sys.argv[2] == "bundle":  # nonzero: a data-dependent shape, so tlc's fallback runtime
            return self.a(y * (1 + torch.nonzero(y > 0)[:, 2].float().mean() / 64))
        return y
x = torch.randn(2, 8, 64)
cm = tlc.build(M().eval(), (x,))
print(cm.save(sys.argv[1]))
'''


@pytest.mark.parametrize("kind", ["mlpackage", "bundle"])
def test_two_builds_in_two_processes_are_byte_identical(kind, tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILD)
    env = {**os.environ, "TLC_NO_CACHE": "1"}
    outs = []
    for k in range(2):
        r = subprocess.run([sys.executable, str(script), str(tmp_path / f"b{k}" / "m.mlpackage"), kind],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(Path(r.stdout.strip().splitlines()[-1]))
    assert outs[0].suffix == (".tlc" if kind == "bundle" else ".mlpackage")
    a, b = _tree(outs[0]), _tree(outs[1])
    assert len(a) >= 3 and a == b  # every file, every byte
    if kind == "mlpackage":
        man = json.loads((outs[0] / "Manifest.json").read_text())
        assert man["rootModelIdentifier"] in man["itemInfoEntries"]
        from tlc.runtime import package_info

        assert "com.github.apple.coremltools.conversion_date" not in package_info(outs[0])["metadata"]


def test_int64_out_of_range_is_refused_naming_the_input(tmp_path):
    def f(ids):
        return ids * 2

    cm = tlc.build(f, (torch.ones(1, 4, dtype=torch.int64),), precision="fp32")
    pkg = cm.save(tmp_path / "ids.mlpackage")
    big = np.array([[1, 2, 3, 3_000_000_000]], np.int64)
    name = cm.input_names[0]
    with pytest.raises(InputError, match=rf"input '{name}'.*int32's range \[-2147483648, 2147483647\].*3000000000"):
        tlc.runtime.load(pkg)({name: big})
    with pytest.raises(InputError, match="int32's range"):
        cm.run({name: big})
    with pytest.raises(InputError, match="int32's range"):
        cm.run({name: torch.from_numpy(big)}, backend="torch")
    np.save(tmp_path / "ids.npy", big)
    res = run_tlc("run", pkg, "--input", f"{name}={tmp_path / 'ids.npy'}")
    assert res.returncode == 2 and "3000000000" in res.stderr and "Traceback" not in res.stderr
    ok = tlc.runtime.load(pkg)({name: big // 4})[cm.output_names[0]]  # fits int32, as does its double
    np.testing.assert_array_equal(ok, (big // 4) * 2)


def test_stale_temp_dir_of_a_killed_build_is_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    stale = tmp_path / ".m.k1ll3d.tmp"
    (stale / "m.mlpackage").mkdir(parents=True)
    (stale / ".tlc-owner").write_text(f"{socket.gethostname()} {int(dead.stdout)}\n")
    live = tmp_path / ".m.l1ve.tmp"
    live.mkdir()
    (live / ".tlc-owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # a build still running
    old = tmp_path / ".m.0ld.tmp"
    old.mkdir()
    os.utime(old, (0, 0))  # no owner record, a day old: an earlier tlc's leftover
    tlc.build(lambda x: x + 1, (torch.ones(2),), precision="fp32").save(tmp_path / "m.mlpackage")
    assert not stale.exists() and not old.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.l1ve.tmp", "m.mlpackage"]


def test_progress_only_on_a_terminal_or_when_asked(tmp_path, monkeypatch):
    from tlc.util import progress

    out = tmp_path / "tf.mlpackage"
    res = run_tlc("build", "examples/tensor_function.py", "-o", out, "--no-cache", cwd=REPO)
    assert res.returncode == 0 and "..." not in res.stderr  # not a terminal: quiet
    monkeypatch.setenv("TLC_PROGRESS", "1")
    res = run_tlc("build", "examples/tensor_function.py", "-o", out, "--force", "--no-cache", cwd=REPO)
    assert res.returncode == 0
    for stage in ("tracing", "optimizing", "planning mixed", "writing tf.mlpackage"):
        assert f"... {stage}" in res.stderr, res.stderr
    res = run_tlc("build", "examples/tensor_function.py", "-o", out, "--force", "--no-cache", "--quiet", cwd=REPO)
    assert res.returncode == 0 and "..." not in res.stderr
    assert not progress._QUIET  # --quiet ends with the command


def test_build_lm_functions_come_from_the_cache():
    """tlc.build_lm(cache=True): every function's trace is cached (tlc build --task text-generation
    uses it); the cached build generates the same tokens."""
    import transformers as T

    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                             max_position_embeddings=128)).eval()
    cold = tlc.build_lm(model, max_context=24, prefill_lengths=[8], precision="fp32", cache=True)
    warm = tlc.build_lm(model, max_context=24, prefill_lengths=[8], precision="fp32", cache=True)
    assert [cm.cache_status for cm in cold.functions.values()] == ["miss", "miss"]
    assert [cm.cache_status for cm in warm.functions.values()] == ["hit", "hit"]
    prompt = torch.randint(2, 256, (1, 11), generator=torch.Generator().manual_seed(1))
    tokens = warm.generate(prompt, 8, backend="numpy", eos_token_id=[])
    np.testing.assert_array_equal(tokens, cold.generate(prompt, 8, backend="numpy", eos_token_id=[]))
    ref = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0,
                         min_new_tokens=8).numpy()
    np.testing.assert_array_equal(tokens, ref)  # Hugging Face's own greedy tokens
