"""Every bundled example builds through the CLI into a package that reloads with the expected
I/O; the tensor-function example also runs and matches torch."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPECT = {
    "minilm.py": (["input_ids", "attention_mask"], ["embedding"]),
    "resnet50.py": (["pixel_values"], ["last_hidden_state", "pooler_output"]),
    "tensor_function.py": (["q", "k", "v"], ["output"]),
    "image_classifier.py": (["image"], ["classLabel", "probabilities"]),
}


@pytest.mark.parametrize("example", sorted(EXPECT))
def test_cli_builds_example(example, tmp_path):
    import coremltools as ct

    out = tmp_path / "out.mlpackage"
    r = subprocess.run([sys.executable, "-m", "tlc.cli", "build", os.path.join(ROOT, "examples", example), "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"built {out}" in r.stdout and "ops" in r.stdout and "size" in r.stdout
    m = ct.models.MLModel(str(out), skip_model_load=True)
    spec = m.get_spec()
    ins, outs = EXPECT[example]
    assert [i.name for i in spec.description.input] == ins
    assert [o.name for o in spec.description.output] == outs


def test_tensor_function_example_runs():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tensor_function.py")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    err = float(r.stdout.strip().rsplit(":", 1)[1])
    assert err < 1e-5
