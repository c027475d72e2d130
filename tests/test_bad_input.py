"""Bad input to ``tlc build`` (CLI, run as a subprocess) and to the Python API.

For every kind of bad input the contract is (compiler/cli/, compiler/errors.py):

* one paragraph on stderr, ``tlc build: error: ...``, naming the problem and where it is
  (the model file, the ATen op, the ``file:line`` of the user's source);
* a non-zero exit code (:attr:`tlc.errors.TlcError.exit_code`);
* no Python traceback (that needs ``TLC_DEBUG=1``);
* nothing written: no output package, no temp directory left next to where it would go.
"""
from __future__ import annotations

import os
import subprocess

from pkgtools import run_tlc
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import tlc

# --------------------------------------------------------------------------------- helpers

_ENV = {k: v for k, v in os.environ.items() if k != "TLC_DEBUG"}
_ENV["PYTHONDONTWRITEBYTECODE"] = "1"  # importing model.py must not litter tmp_path either


def run_cli_process(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m tlc.cli ARGS`` in a fresh process (what a user runs)."""
    return subprocess.run(
        [sys.executable, "-m", "tlc.cli", *map(str, args)],
        cwd=cwd, env=_ENV, capture_output=True, text=True, timeout=600,
    )


run_cli = run_tlc


def write_model(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    return path


def line_of(path: Path | str, needle: str) -> int:
    """1-based number of the only line of ``path`` containing ``needle``."""
    hits = [i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} occurs on lines {hits} of {path}"
    return hits[0]


def assert_clean_failure(res: subprocess.CompletedProcess, out: Path, *needles: str, exit_code: int | None = None):
    """Non-zero exit, one-paragraph ``tlc build: error:`` message containing every needle, no
    traceback, and nothing written at or next to ``out``."""
    err = res.stderr.strip()
    assert res.returncode != 0, f"expected failure, got rc=0\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    if exit_code is not None:
        assert res.returncode == exit_code, f"rc={res.returncode}, expected {exit_code}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, f"raw traceback printed:\n{res.stderr}"
    assert "Traceback" not in res.stdout, f"raw traceback printed:\n{res.stdout}"
    assert res.stdout.strip() == "", f"unexpected stdout on failure:\n{res.stdout}"
    assert err.startswith("tlc build: error: "), f"stderr is not a tlc error message:\n{res.stderr}"
    lines = err.splitlines()
    # One paragraph: the message line, then only indented continuation lines (at / source line).
    assert len(lines) <= 4, f"error message is not one short paragraph:\n{res.stderr}"
    assert all(line.startswith(" ") and line.strip() for line in lines[1:]), \
        f"stderr has more than the one error paragraph:\n{res.stderr}"
    assert err.count("error:") == 1, res.stderr
    for needle in needles:
        assert needle in err, f"{needle!r} missing from the error message:\n{res.stderr}"
    assert not out.exists(), f"{out} was written despite the error"
    if out.parent.exists():  # no package, no `.<stem>.*.tmp` staging dir
        assert list(out.parent.iterdir()) == [], f"left in output dir: {list(out.parent.iterdir())}"


GOOD_MODEL = """
    import torch


    class M(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) + 1


    model = M()
    example_inputs = (torch.randn(2, 3),)
"""


# ----------------------------------------------------------------------------- 1. missing file


@pytest.mark.parametrize("what", ["missing", "directory", "not_python"])
def test_cli_model_file_missing(tmp_path, what):
    if what == "missing":
        model = tmp_path / "nosuchmodel.py"
        needle = "does not exist"
    elif what == "directory":
        model = tmp_path / "adir.py"
        model.mkdir()
        needle = "directory"
    else:
        model = write_model(tmp_path, "model.txt", GOOD_MODEL)
        needle = ".py"
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    assert_clean_failure(res, out, str(model), needle, exit_code=2)


def test_cli_model_file_missing_default_output_not_written(tmp_path):
    # Without -o the package would go to ./<stem>.mlpackage; nothing may appear in the cwd.
    res = run_cli("build", "nosuchmodel.py", cwd=tmp_path)
    assert_clean_failure(res, tmp_path / "nosuchmodel.mlpackage", "nosuchmodel.py", "does not exist", exit_code=2)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ 2. raises at import


@pytest.mark.parametrize(
    "source, marker, needles",
    [
        (
            """
            import torch

            SCALE = 2
            raise RuntimeError("boom")

            model = torch.nn.ReLU()
            example_inputs = (torch.randn(2),)
            """,
            'raise RuntimeError("boom")',
            ["RuntimeError", "boom"],
        ),
        (
            """
            import torch
            import tlc_no_such_module_xyz

            model = torch.nn.ReLU()
            example_inputs = (torch.randn(2),)
            """,
            "import tlc_no_such_module_xyz",
            ["ModuleNotFoundError", "tlc_no_such_module_xyz"],
        ),
    ],
    ids=["runtime_error", "import_error"],
)
def test_cli_model_file_raises_at_import(tmp_path, source, marker, needles):
    model = write_model(tmp_path, "raising.py", source)
    line = line_of(model, marker)
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    assert_clean_failure(res, out, *needles, f"{model}:{line}", exit_code=2)


# ------------------------------------------------------------------------ 3. no model at all


def test_cli_model_file_defines_no_model(tmp_path):
    model = write_model(tmp_path, "nomodel.py", """
        import torch


        def f(x):
            return x + 1


        inputs = (torch.randn(2),)
    """)
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    # explains the convention: module-level model + example_inputs, or @tlc.compile(example_inputs=...)
    assert_clean_failure(res, out, str(model), "no model", "`model`", "`example_inputs`", "@tlc.compile",
                         exit_code=2)


# ------------------------------------------------------------- 4. model without example_inputs


def test_cli_model_without_example_inputs(tmp_path):
    model = write_model(tmp_path, "noinputs.py", """
        import torch


        def model(x):
            return x + 1


        inputs = (torch.randn(2),)  # wrong name
    """)
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    assert_clean_failure(res, out, str(model), "`model`", "example_inputs", exit_code=2)


# ------------------------------------------------------------- 5. example_inputs of wrong type


def test_cli_example_inputs_wrong_type(tmp_path):
    model = write_model(tmp_path, "strinputs.py", """
        import torch


        def model(x):
            return x + 1


        example_inputs = "hello"
    """)
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    # InputError (exit 2); the message must also say which file's example_inputs is wrong.
    assert_clean_failure(res, out, "example_inputs", "str", model.name, exit_code=2)


# ---------------------------------------------------------------------------- 6. unknown op
# Issue 5: an op without a lowering (or with complex values) no longer stops the build: it becomes a
# fallback node (tlc.ops.fallback), and `tlc build -o m.mlpackage` writes the bundle m.tlc instead.

_UNKNOWN_OP_SOURCES = {
    "module": """
        import torch


        class M(torch.nn.Module):
            def forward(self, x):
                y = x * 2
                return torch.nextafter(y, torch.zeros_like(y))


        model = M()
        example_inputs = (torch.randn(4, 4),)
    """,
    "function": """
        import torch


        def model(x):
            y = x * 2
            return torch.nextafter(y, torch.zeros_like(y))


        example_inputs = (torch.randn(4, 4),)
    """,
    "tlc_compile": """
        import torch

        import tlc


        @tlc.compile(example_inputs=(torch.randn(4, 4),))
        def f(x):
            y = x * 2
            return torch.nextafter(y, torch.zeros_like(y))
    """,
}


def assert_fallback_bundle(res: subprocess.CompletedProcess, out: Path, op: str, expected) -> None:
    """The build succeeded with ``op`` in tlc's fallback runtime: a bundle next to ``out`` whose
    output for a random input ``x`` matches ``expected(x)`` (mixed precision: 1e-2)."""
    import numpy as np

    from tlc.check.metrics import rel_l2

    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert op in res.stdout and "fallback runtime" in res.stderr + res.stdout
    bundle = out.with_suffix(".tlc")
    assert list(out.parent.iterdir()) == [bundle]
    x = np.random.default_rng(0).standard_normal((4, 2) if "index" in op else (4, 4)).astype(np.float32)
    got = tlc.runtime.load(bundle)({"x": x})["output"]
    with torch.no_grad():
        ref = expected(torch.from_numpy(x)).numpy()
    assert rel_l2(got, ref) <= 1e-2


@pytest.mark.parametrize("kind", list(_UNKNOWN_OP_SOURCES))
def test_cli_unknown_op(tmp_path, kind):
    model = write_model(tmp_path, "unknownop.py", _UNKNOWN_OP_SOURCES[kind])
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    assert_fallback_bundle(res, out, "aten.nextafter.default", lambda x: torch.nextafter(x * 2, torch.zeros_like(x)))


# --------------------------------------------------------------------------- 7. complex dtypes


def test_cli_complex_example_input(tmp_path):
    model = write_model(tmp_path, "cplxin.py", """
        import torch


        def model(x):
            return x + 1


        example_inputs = (torch.randn(4, dtype=torch.complex64),)
    """)
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    # issue 10: a complex input is a real [..., 2] pair at the package boundary (tlc.boundary)
    assert res.returncode == 0, res.stderr
    assert "ships   one .mlpackage" in res.stdout and "fp32[4,2]" in res.stdout
    z = (np.arange(4) + 1j * np.arange(4, 8)).astype(np.complex64)
    assert np.allclose(tlc.runtime.load(out)({"x": z})["output"], z + 1)


@pytest.mark.parametrize(
    "expr, needle, expected",
    [("torch.view_as_complex(x)[x[:, 0] > 0].abs().sum() + x[:, 0]", "aten.index.Tensor",
      lambda x: torch.view_as_complex(x)[x[:, 0] > 0].abs().sum() + x[:, 0]),
     ("(x * 1j)[x > 0].abs().sum() + x[:, 0]", "aten.index.Tensor", lambda x: (x * 1j)[x > 0].abs().sum() + x[:, 0])],
    ids=["view_as_complex_mask", "mul_1j_mask"],
)
def test_cli_model_creates_complex_tensor(tmp_path, expr, needle, expected):
    model = write_model(tmp_path, "cplxop.py", f"""
        import torch


        class M(torch.nn.Module):
            def forward(self, x):
                y = x + 1
                return {expr}  # complex here


        model = M()
        example_inputs = (torch.randn(4, 2),)
    """)
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    assert_fallback_bundle(res, out, needle, expected)


# ----------------------------------------------------------------- tracing fails in the model


def test_cli_model_fails_while_tracing(tmp_path):
    # A shape bug in the user's forward: torch.export fails. The user gets tlc's message with
    # their line, not torch's internal log (fake_tensor logs a full traceback at ERROR level).
    model = write_model(tmp_path, "shapebug.py", """
        import torch


        class M(torch.nn.Module):
            def forward(self, x):
                y = x + 1
                return y @ torch.ones(5, 5)


        model = M()
        example_inputs = (torch.randn(4, 4),)
    """)
    line = line_of(model, "y @ torch.ones(5, 5)")
    out = tmp_path / "out" / "m.mlpackage"
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    assert_clean_failure(res, out, "torch.export could not trace", "RuntimeError", f"{model}:{line}")


# ------------------------------------------------------------------------- 8. output exists


def _existing_output(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out" / "good.mlpackage"
    out.mkdir(parents=True)
    marker = out / "keep.txt"
    marker.write_text("precious")
    return out, marker


def test_cli_refuses_existing_output_without_force(tmp_path):
    model = write_model(tmp_path, "good.py", GOOD_MODEL)
    out, marker = _existing_output(tmp_path)
    res = run_cli("build", model, "-o", out, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    err = res.stderr.strip()
    assert err.startswith("tlc build: error: ") and len(err.splitlines()) == 1, res.stderr
    assert "already exists" in err and "--force" in err and str(out) in err
    # untouched
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert marker.read_text() == "precious"
    assert list(out.parent.iterdir()) == [out]


def test_cli_force_replaces_existing_output(tmp_path):
    import coremltools as ct

    model = write_model(tmp_path, "good.py", GOOD_MODEL)
    out, marker = _existing_output(tmp_path)
    res = run_cli("build", model, "-o", out, "--force", "--precision", "fp32", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert f"built {out}" in res.stdout
    assert not marker.exists()
    assert (out / "Manifest.json").is_file()
    assert list(out.parent.iterdir()) == [out]  # no temp dir / old copy left behind
    m = ct.models.MLModel(str(out), skip_model_load=True)
    spec = m.get_spec()
    assert [i.name for i in spec.description.input] == ["x"]
    assert [o.name for o in spec.description.output] == ["output"]
    assert spec.WhichOneof("Type") == "mlProgram"


def test_cli_force_with_failing_model_keeps_existing_output(tmp_path):
    model = write_model(tmp_path, "shapebug.py", """
        import torch


        class M(torch.nn.Module):
            def forward(self, x):
                return x @ torch.ones(5, 5)


        model = M()
        example_inputs = (torch.randn(4, 4),)
    """)
    out, marker = _existing_output(tmp_path)
    res = run_cli("build", model, "-o", out, "--force", cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "torch.export could not trace" in res.stderr
    assert marker.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert list(out.parent.iterdir()) == [out]


# ---------------------------------------------------------------------------------- 9. --help


def test_cli_help(tmp_path):
    res = run_cli_process("--help", cwd=tmp_path)  # one real process: the entry point itself
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "build" in res.stdout and "model.py" in res.stdout and ".mlpackage" in res.stdout


def test_cli_build_help(tmp_path):
    res = run_cli("build", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    text = " ".join(res.stdout.split())
    # the model.py convention
    assert "`model`" in text and "`example_inputs`" in text and "@tlc.compile" in text
    # the options
    for opt in ("-o", "--output", "--precision", "fp16", "fp32", "--force", "--target", "--entry"):
        assert opt in text, opt
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ Python API


def _fn_add(x):
    return x + 1


class _NoLoweringModule(torch.nn.Module):
    def forward(self, x):
        y = x * 2
        return torch.nextafter(y, torch.zeros_like(y))  # <nextafter-module>


def _no_lowering_fn(x):
    y = x * 2
    return torch.nextafter(y, torch.zeros_like(y))  # <nextafter-fn>


class _ComplexModule(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):  # a boolean mask on a complex value: data-dependent, so the pair falls back
        if self.kind == "view_as_complex":
            return torch.view_as_complex(x)[x[:, 0] > 0].abs().sum() + x[:, 0]  # <view_as_complex>
        if self.kind == "rfft":
            return torch.fft.rfft(x)[x[:, :5] > 0].abs().sum() + x[:, 0]  # <rfft>
        return (x * 1j)[x > 0].abs().sum() + x[:, 0]  # <mul_1j>


def test_api_example_inputs_wrong_type():
    with pytest.raises(tlc.InputError) as ei:
        tlc.build(_fn_add, "not inputs")
    msg = str(ei.value)
    assert "example_inputs" in msg and "str" in msg
    assert ei.value.exit_code == 2


def test_api_example_input_element_wrong_type():
    with pytest.raises(tlc.InputError) as ei:
        tlc.build(lambda x, y: x, (torch.randn(2), "a"))
    assert "#1" in str(ei.value) and "str" in str(ei.value)


def test_api_not_a_model():
    with pytest.raises(tlc.InputError) as ei:
        tlc.build(42, (torch.randn(2),))
    assert "int" in str(ei.value)


def test_api_bad_precision():
    with pytest.raises(tlc.InputError) as ei:
        tlc.build(_fn_add, (torch.randn(2),), precision="fp8")
    assert "fp8" in str(ei.value) and "fp16" in str(ei.value)


def test_api_compile_with_bad_example_inputs():
    with pytest.raises(tlc.InputError):
        tlc.compile(_fn_add, example_inputs="not inputs")


def test_api_complex_example_input():
    with pytest.raises(tlc.InputError) as ei:
        tlc.build(_fn_add, (torch.randn(4, dtype=torch.complex32),))
    assert "complex32" in str(ei.value) and "#0" in str(ei.value)
    z = torch.randn(3, dtype=torch.complex128)  # taken as complex64 (issue 10)
    cm = tlc.build(_fn_add, (z,))
    assert torch.allclose(cm(z.to(torch.complex64)), z.to(torch.complex64) + 1)


def _assert_loc_here(err: tlc.TlcError, name: str):
    marker = f"# <{name}>"
    assert err.loc is not None, str(err)
    assert err.loc.file is not None and Path(err.loc.file).resolve() == Path(__file__).resolve(), \
        f"location points at {err.loc.file}:{err.loc.line}, not at the user's code:\n{err}"
    assert err.loc.line == line_of(__file__, marker), str(err)
    assert f"{Path(__file__).name}:{err.loc.line}" in str(err)


def _assert_falls_back(model, x, needle: str, marker: str, tmp_path):
    """Issue 5: an op MIL cannot express (no lowering, complex values) no longer stops the build: it
    becomes a fallback node that keeps its torch name, runs in the NumPy runtime and is saved in
    a bundle. Emitting it into an mlprogram is a clear error naming the op and the user's line."""
    from tlc.backends.coreml.emit import to_mil_program

    cm = tlc.build(model, (x,), precision="fp32")
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(cm(x), ref, rtol=1e-5, atol=1e-5)
    path = cm.save(tmp_path / "m.mlpackage")
    assert path == tmp_path / "m.tlc" and list(tmp_path.iterdir()) == [path]
    assert torch.allclose(torch.from_numpy(tlc.runtime.load(path)({"x": x.numpy()})["output"]), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(tlc.EmitError) as ei:
        to_mil_program(cm.graph)
    msg = str(ei.value)
    assert needle in msg and "fallback runtime" in msg, msg
    _assert_loc_here(ei.value, marker)


def test_api_unknown_op_module(tmp_path):
    _assert_falls_back(_NoLoweringModule(), torch.randn(4, 4), "aten.nextafter.default", "nextafter-module", tmp_path)


def test_api_unknown_op_function(tmp_path):
    # Plain tensor functions are a first-class input to tlc.build; the location must be the
    # user's line, not tlc's FunctionModule.forward wrapper.
    _assert_falls_back(_no_lowering_fn, torch.randn(4, 4), "aten.nextafter.default", "nextafter-fn", tmp_path)


@pytest.mark.parametrize(
    "kind, shape, needle",
    [
        ("view_as_complex", (4, 2), "aten.complex.default"),
        ("rfft", (4, 8), "aten.complex.default"),
        ("mul_1j", (4, 2), "aten.complex.default"),
    ],
)
def test_api_model_creates_complex_tensor(kind, shape, needle, tmp_path):
    _assert_falls_back(_ComplexModule(kind), torch.randn(*shape), needle, kind, tmp_path)


def test_api_save_existing_output(tmp_path):
    import coremltools as ct

    cm = tlc.build(_fn_add, (torch.randn(2, 3),), precision="fp32")
    out = tmp_path / "m.mlpackage"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(tlc.OutputExistsError):
        cm.save(out)
    assert (out / "keep.txt").read_text() == "precious"
    assert cm.save(out, force=True) == out
    assert not (out / "keep.txt").exists()
    assert list(tmp_path.iterdir()) == [out]
    ct.models.MLModel(str(out), skip_model_load=True)


def test_api_save_bad_suffix_writes_nothing(tmp_path):
    cm = tlc.build(_fn_add, (torch.randn(2, 3),), precision="fp32")
    with pytest.raises(tlc.EmitError) as ei:
        cm.save(tmp_path / "m.pkg")
    assert ".mlpackage" in str(ei.value)
    assert list(tmp_path.iterdir()) == []
