"""Sentence embeddings from a BERT-family model folder in sentence-transformers' layout (e.g. all-MiniLM-L6-v2):
WordPiece tokens, the encoder, mean pooling over the attention mask, then L2 normalisation when the folder's
``modules.json`` lists a ``Normalize`` module.

>>> import numpy as np
>>> from asg.zoo import BertConfig, BertModel
>>> from asg.data import WordPieceTokenizer
>>> tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hi", "there"])
>>> bert = BertModel(
...     BertConfig(
...         vocab_size=6,
...         hidden_size=8,
...         num_hidden_layers=1,
...         num_attention_heads=2,
...         intermediate_size=16,
...         max_position_embeddings=16,
...     )
... )
>>> emb = SentenceEncoder(bert, tok).encode(["hi there", "hi"])
>>> emb.shape, np.allclose(np.linalg.norm(emb, axis=1), 1.0)
((2, 8), True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import asg.core as ag
from asg.data import WordPieceTokenizer

from .bert import BertModel, mean_pool
from .hf import load_bert, resolve_pretrained

__all__ = ["SentenceEncoder"]


class SentenceEncoder:
    """``encode(texts) -> (N, hidden)`` float32 sentence embeddings."""

    def __init__(
        self,
        model: BertModel,
        tokenizer: WordPieceTokenizer,
        normalize: bool = True,
        max_seq_length: int = 256,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.normalize, self.max_seq_length = normalize, max_seq_length
        model.eval()
        ids, mask, types = (
            ag.input(n, ("B", "T"), "int64") for n in ("input_ids", "attention_mask", "token_type_ids")
        )
        hidden, _ = model(ids, mask, types)
        self._fn = ag.compile(mean_pool(hidden, mask, normalize), inputs=[ids, mask, types])

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], cache_dir: str | None = None) -> SentenceEncoder:
        """Load a sentence-transformers folder (or hub cache entry): weights, tokenizer, pooling settings."""
        folder = resolve_pretrained(source, cache_dir)
        pooling = folder / "1_Pooling" / "config.json"
        if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
            raise ValueError(
                f"{pooling}: only mean pooling is implemented (pooling_mode_mean_tokens is false)"
            )
        modules = folder / "modules.json"
        normalize = True
        if modules.is_file():
            normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
        max_len = 256
        st_config = Path(folder) / "sentence_bert_config.json"
        if st_config.is_file():
            max_len = int(json.loads(st_config.read_text()).get("max_seq_length", max_len))
        return cls(load_bert(folder), WordPieceTokenizer.from_pretrained(folder), normalize, max_len)

    def encode(self, texts: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of ``texts`` (truncated to ``max_seq_length`` tokens), one row per text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i : i + batch_size], max_length=self.max_seq_length)
            out.append(self._fn(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)
