"""BERT's WordPiece tokenizer: basic tokenization (cleaning, lower-casing, accent stripping, punctuation and
CJK splitting) followed by greedy longest-match-first sub-words marked ``##``, as Hugging Face's
``BertTokenizer`` / ``tokenizers.BertWordPieceTokenizer``. Reads ``vocab.txt`` or ``tokenizer.json``.

Example:
    >>> tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "!", "hello"])
    >>> tok.tokenize("Unaffable! Héllo")
    ['un', '##aff', '##able', '!', 'hello']
    >>> enc = tok.encode("hello", "unaffable")
    >>> enc["input_ids"], enc["token_type_ids"]
    ([2, 8, 3, 4, 5, 6, 3], [0, 0, 0, 1, 1, 1, 1])
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WordPieceTokenizer"]


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:  # all ASCII non-alphanumerics
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )  # fmt: skip


class WordPieceTokenizer:
    """WordPiece over a BERT vocabulary (one token per line of ``vocab.txt``; the id is the line number).

    Args:
        vocab: the tokens in id order.
        lowercase: lower-case and strip accents first (uncased BERT models, MiniLM).
        unk_token, cls_token, sep_token, pad_token, mask_token: the special tokens; they are never split.
        max_input_chars_per_word: longer words become ``unk_token``, as in HF.
        strip_accents: default: same as ``lowercase``.
        tokenize_chinese_chars: put spaces around CJK ideographs.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        lowercase: bool = True,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        mask_token: str = "[MASK]",
        max_input_chars_per_word: int = 100,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
    ) -> None:
        self.vocab: dict[str, int] = {}
        for i, token in enumerate(vocab):
            self.vocab.setdefault(token, i)
        self.ids_to_tokens = list(vocab)
        if unk_token not in self.vocab:
            raise ValueError(f"WordPieceTokenizer: unk_token {unk_token!r} is not in the vocabulary")
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        self.max_input_chars_per_word = max_input_chars_per_word
        self.special_tokens = [
            t for t in (unk_token, cls_token, sep_token, pad_token, mask_token) if t in self.vocab
        ]

    # ------------------------------------------------------------------ files
    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> WordPieceTokenizer:
        """Read ``vocab.txt`` (UTF-8, one token per line)."""
        text = Path(path).read_text(encoding="utf-8")
        tokens = text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        return cls([t.rstrip("\r") for t in tokens], **kwargs)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike[str], **kwargs: Any) -> WordPieceTokenizer:
        """Read a Hugging Face ``tokenizer.json`` whose model is WordPiece (its vocab, unk token, limits and
        the BertNormalizer's lowercase / strip_accents / handle_chinese_chars flags)."""
        where = os.fspath(path)
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err})") from None
        model = doc.get("model") or {}
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise ValueError(
                f"{where}: field 'model' must be a WordPiece model with a 'vocab' object, got type {model.get('type')!r}"
            )
        vocab = sorted(model["vocab"], key=model["vocab"].__getitem__)
        norm = doc.get("normalizer") or {}
        options: dict[str, Any] = {
            "unk_token": model.get("unk_token", "[UNK]"),
            "max_input_chars_per_word": model.get("max_input_chars_per_word", 100),
        }
        if norm.get("type") == "BertNormalizer":
            options["lowercase"] = bool(norm.get("lowercase", True))
            options["strip_accents"] = norm.get("strip_accents")
            options["tokenize_chinese_chars"] = bool(norm.get("handle_chinese_chars", True))
        options.update(kwargs)
        return cls(vocab, **options)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], **kwargs: Any) -> WordPieceTokenizer:
        """From a model folder: ``tokenizer.json`` if present, else ``vocab.txt`` with ``tokenizer_config.json``'s
        ``do_lower_case``."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            return cls.from_tokenizer_json(folder / "tokenizer.json", **kwargs)
        if not (folder / "vocab.txt").is_file():
            raise FileNotFoundError(f"{folder}: neither tokenizer.json nor vocab.txt")
        config = folder / "tokenizer_config.json"
        if config.is_file() and "lowercase" not in kwargs:
            kwargs["lowercase"] = bool(json.loads(config.read_text()).get("do_lower_case", True))
        return cls.from_vocab_file(folder / "vocab.txt", **kwargs)

    # ------------------------------------------------------------------ tokenizing
    @property
    def vocab_size(self) -> int:
        """The number of tokens in the vocabulary (special tokens included)."""
        return len(self.ids_to_tokens)

    def _clean(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if self.tokenize_chinese_chars and _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(" " if _is_whitespace(ch) else ch)
        return "".join(out)

    def _basic(self, text: str) -> list[str]:
        words = []
        for word in self._clean(text).split():
            if word in self.special_tokens:
                words.append(word)
                continue
            if self.lowercase:
                word = word.lower()
            if self.strip_accents:
                word = "".join(
                    c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
                )
            piece: list[str] = []
            for ch in word:
                if _is_punctuation(ch):
                    if piece:
                        words.append("".join(piece))
                        piece = []
                    words.append(ch)
                else:
                    piece.append(ch)
            if piece:
                words.append("".join(piece))
        return words

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.unk_token]
            pieces.append(candidate)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text`` (no special tokens added)."""
        return [p for word in self._basic(text) for p in self._wordpiece(word)]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """The id of each token; a token not in the vocabulary maps to ``unk_token``'s id."""
        unk = self.vocab[self.unk_token]
        return [self.vocab.get(t, unk) for t in tokens]

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        add_special_tokens: bool = True,
        max_length: int | None = None,
    ) -> dict[str, list[int]]:
        """``{"input_ids", "token_type_ids", "attention_mask"}`` of ``[CLS] text [SEP] (text_pair [SEP])``.

        ``max_length`` truncates the longer of the two sequences first (HF's ``longest_first``).
        """
        a = self.convert_tokens_to_ids(self.tokenize(text))
        b = self.convert_tokens_to_ids(self.tokenize(text_pair)) if text_pair is not None else None
        if max_length is not None:
            special = (2 + (b is not None)) if add_special_tokens else 0
            budget = max_length - special
            if budget < 0:
                raise ValueError(
                    f"WordPieceTokenizer.encode: max_length={max_length} leaves no room for the special tokens"
                )
            while len(a) + len(b or []) > budget:
                if b is not None and len(b) > len(a):
                    b.pop()
                else:
                    a.pop()
        if add_special_tokens:
            cls_id, sep_id = self.vocab[self.cls_token], self.vocab[self.sep_token]
            ids, types = [cls_id, *a, sep_id], [0] * (len(a) + 2)
            if b is not None:
                ids += [*b, sep_id]
                types += [1] * (len(b) + 1)
        else:
            ids, types = a + (b or []), [0] * len(a) + [1] * len(b or [])
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids)}

    def __call__(self, texts: str | Sequence[str], *, max_length: int | None = None) -> dict[str, np.ndarray]:
        """A padded batch: int64 arrays ``input_ids``, ``token_type_ids``, ``attention_mask`` of shape ``(B, T)``.

        >>> tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hi", "there"])
        >>> tok(["hi there", "hi"])["attention_mask"].tolist()
        [[1, 1, 1, 1], [1, 1, 1, 0]]
        """
        batch = [
            self.encode(t, max_length=max_length) for t in ([texts] if isinstance(texts, str) else texts)
        ]
        width = max(len(e["input_ids"]) for e in batch)
        pad = self.vocab.get(self.pad_token, 0)
        out = {
            k: np.zeros((len(batch), width), np.int64)
            for k in ("input_ids", "token_type_ids", "attention_mask")
        }
        out["input_ids"][:] = pad
        for i, e in enumerate(batch):
            for k in out:
                out[k][i, : len(e[k])] = e[k]
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Tokens joined with spaces, ``##`` pieces glued to the previous token (HF's ``decode`` without cleanup)."""
        tokens = [self.ids_to_tokens[int(i)] for i in ids]
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.special_tokens or t == self.unk_token]
        return " ".join(tokens).replace(" ##", "")

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"
