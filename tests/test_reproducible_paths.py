"""What a package tells about its builder (issue 32): source locations are stored relative to their
package or project root, so the same model built from two checkouts with two virtual environments
gives byte-identical artifacts that hold neither path."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlc.serialize import relative_source, source_roots

LIB = """import torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return torch.tanh(x @ self.w) * 2 + x.mean(-1, keepdim=True)
"""

MODEL = """import torch
from mylib.blocks import Block


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x):
        y = self.block(x) * 3
        return {KEEP}


model = Net().eval()
example_inputs = (torch.randn(1, 8, generator=torch.Generator().manual_seed(1)),)
"""


def build_in(root: Path, venv: str, keep: str) -> Path:
    """Write the project (model.py) and its library (mylib, in a virtual environment's
    site-packages under ``root``) and build it with the CLI in a fresh process from ``root``."""
    site = root / venv
    (site / "mylib").mkdir(parents=True)
    (site / "mylib" / "__init__.py").write_text("")
    (site / "mylib" / "blocks.py").write_text(LIB)
    (root / "model.py").write_text(MODEL.replace("{KEEP}", keep))
    env = {**os.environ, "TLC_NO_CACHE": "1", "PYTHONPATH": os.pathsep.join(
        [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(site)])}
    env.pop("SOURCE_DATE_EPOCH", None)
    r = subprocess.run([sys.executable, "-m", "tlc.cli", "build", "model.py", "-o", "model.mlpackage", "-q"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return next(p for p in root.glob("model.*") if p.suffix != ".py")


@pytest.mark.parametrize("kind,keep", [("package", "y"), ("bundle", "y[y > 0.5].sum() + y.sum()")])
def test_two_checkouts_build_the_same_bytes(kind, keep, tmp_path):
    """``kind`` package: one .mlpackage; bundle: a tlc bundle (a data-dependent op in tlc's fallback
    runtime), whose fallback segment's JSON holds source locations too."""
    a = build_in(tmp_path / "alice" / "proj", "venv/lib/python3.11/site-packages", keep)
    b = build_in(tmp_path / "bob" / "work" / "checkout", ".env/site-packages", keep)
    assert a.name == b.name == ("model.mlpackage" if kind == "package" else "model.tlc")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    home = os.path.expanduser("~")
    forbidden = [str(tmp_path / "alice"), str(tmp_path / "bob"), str(tmp_path), "site-packages", sys.prefix + "/"]
    forbidden += [home + "/"] if home not in ("", "/") else []
    for root in (a, b):
        for f in root.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                for path in forbidden:  # no checkout, virtual environment, Python install or home path
                    assert path.encode() not in data, (f, path)
    if kind == "package":
        from tlc.runtime import package_info

        md = package_info(a)["metadata"]
        files_in, source = json.loads(md["tlc.source_lines"])["files"], md["tlc.source"]
    else:  # the cost model keeps this small graph on the CPU: its segment's IR JSON holds the locations
        source = json.loads((a / "manifest.json").read_text())["metadata"]["tlc.source"]
        files_in = {n["loc"]["file"] for seg in a.glob("segments/*.json")
                    for n in json.loads(seg.read_text())["nodes"] if "file" in n.get("loc", {})}
    assert sorted(set(files_in)) == ["model.py", "mylib/blocks.py"] and source == "model.py"


def test_relative_source(tmp_path):
    site = tmp_path / "venv" / "site-packages"
    roots = [str(site), str(tmp_path / "proj")]
    assert relative_source(str(site / "transformers" / "models" / "bert" / "modeling_bert.py"), roots) == \
        "transformers/models/bert/modeling_bert.py"
    assert relative_source(str(tmp_path / "proj" / "model.py"), roots) == "model.py"
    assert relative_source("/somewhere/else/net.py", roots) == "net.py"  # under no root: the file name alone
    assert relative_source("<string>", roots) == "<string>"
    assert relative_source(None, roots) is None
    import torch

    assert relative_source(torch.__file__) == "torch/__init__.py"  # site-packages is on sys.path
    assert source_roots() and all(os.path.dirname(r) != r for r in source_roots())  # never the file-system root


def test_digests_read_files_in_chunks(tmp_path):
    """tree_digest hashes a package's files a few MiB at a time (a 1.1B LM's weight file read whole
    was the peak of its build) and gives the digest of the bytes, whatever the chunk size."""
    import hashlib

    from tlc.util.files import file_sha256, tree_digest

    data = os.urandom(3 * 1024 + 17)
    f = tmp_path / "pkg" / "Data" / "weight.bin"
    f.parent.mkdir(parents=True)
    f.write_bytes(data)
    assert file_sha256(f, chunk=1000) == file_sha256(f) == hashlib.sha256(data).digest()
    expected = hashlib.sha256(b"Data/weight.bin\0" + hashlib.sha256(data).digest()).hexdigest()
    assert tree_digest(tmp_path / "pkg") == expected
