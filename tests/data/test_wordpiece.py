"""WordPieceTokenizer against Hugging Face `tokenizers` (a built vocabulary) and, with the real
all-MiniLM-L6-v2 files fetched by scripts/fetch_test_data.sh into .data/all-minilm-l6-v2 (or
$ASG_MINILM_DIR), against transformers' tokenizer for that model. Each comparison skips without its
reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from asg.data import WordPieceTokenizer

REPO = Path(__file__).resolve().parents[2]
MINILM_DIR = Path(os.environ.get("ASG_MINILM_DIR") or REPO / ".data" / "all-minilm-l6-v2")

TEXTS = [
    "Hello, world! This is a test.",
    "UNAFFABLE résumé naïve Ångström — déjà vu?",
    "don't stop: e-mail me at a.b@c.org (now)...",
    "中文字符 mixed with English 日本語",
    "tabs\tand\nnewlines\r\n and   spaces\u00a0nbsp",
    "a" * 120 + " longwordthatisnotinthevocabulary xyzzy",
    "[CLS] special [SEP] tokens [MASK] stay whole",
    "control\u0000chars\u200b and emoji 🙂 ½ ² ﬁ",
    "",
]

WORDS = ["hello", "world", "this", "is", "a", "test", "un", "##aff", "##able", "resume", "naive", "##s", "ang",
         "##st", "##rom", "de", "##ja", "vu", "don", "t", "stop", "e", "mail", "me", "at", "b", "c", "org", "now",
         "mixed", "with", "english", "中", "文", "字", "tab", "and", "new", "##line", "space", "##b", "##sp", "special",
         "tokens", "stay", "whole", "control", "chars", "emoji", "1", "fi", "long", "##word"]  # fmt: skip
PUNCT = list(",!.:?()@-—'½²")


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PUNCT, *WORDS]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def test_matches_hf_tokenizers_on_a_built_vocabulary(vocab_file):
    tokenizers = pytest.importorskip("tokenizers")
    ref = tokenizers.BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    ours = WordPieceTokenizer.from_vocab_file(vocab_file)
    for text in TEXTS:
        want = ref.encode(text)
        got = ours.encode(text)
        assert got["input_ids"] == want.ids, (text, ours.tokenize(text), want.tokens)
        assert got["token_type_ids"] == want.type_ids
    pair = ref.encode("hello world", "this is a test")
    assert ours.encode("hello world", "this is a test")["token_type_ids"] == pair.type_ids
    cased_ref = tokenizers.BertWordPieceTokenizer(str(vocab_file), lowercase=False)
    cased = WordPieceTokenizer.from_vocab_file(vocab_file, lowercase=False)
    assert cased.encode("Hello hello")["input_ids"] == cased_ref.encode("Hello hello").ids


def test_wordpiece_rules(vocab_file):
    tok = WordPieceTokenizer.from_vocab_file(vocab_file)
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert tok.tokenize("unaffablex") == ["[UNK]"]  # one unknown piece makes the whole word unknown
    assert tok.tokenize("a" * 101) == ["[UNK]"]  # longer than max_input_chars_per_word
    assert tok.tokenize("Déjà-vu!") == ["de", "##ja", "-", "vu", "!"]
    assert tok.decode(tok.encode("unaffable world")["input_ids"]) == "unaffable world"
    enc = tok.encode("hello world this is", "a test a test", max_length=8)  # longest first, as HF
    assert tok.decode(enc["input_ids"], skip_special_tokens=False) == "[CLS] hello world [SEP] a test a [SEP]"
    batch = tok(["hello", "hello world"])
    assert batch["input_ids"].tolist() == [[2, *tok.convert_tokens_to_ids(["hello"]), 3, 0],
                                           [2, *tok.convert_tokens_to_ids(["hello", "world"]), 3]]  # fmt: skip
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_tokenizer_json_errors_name_the_field(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
    with pytest.raises(
        ValueError, match=r"tokenizer.json: field 'model' must be a WordPiece model .* got type 'BPE'"
    ):
        WordPieceTokenizer.from_tokenizer_json(bad)
    with pytest.raises(ValueError, match="unk_token '\\[UNK\\]' is not in the vocabulary"):
        WordPieceTokenizer(["a", "b"])


@pytest.mark.data
def test_matches_transformers_on_the_real_minilm_vocabulary():
    if not (MINILM_DIR / "vocab.txt").is_file():
        pytest.skip(f"no all-MiniLM-L6-v2 files in {MINILM_DIR} (run scripts/fetch_test_data.sh)")
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(MINILM_DIR))
    from_json = WordPieceTokenizer.from_tokenizer_json(MINILM_DIR / "tokenizer.json")
    from_txt = WordPieceTokenizer.from_vocab_file(MINILM_DIR / "vocab.txt")
    assert from_json.vocab_size == from_txt.vocab_size == 30522
    texts = [*TEXTS, "The quick brown fox jumps over the lazy dog.", "Sentence embeddings with MiniLM-L6-v2!"]
    for text in texts:
        want = ref(text)["input_ids"]
        assert from_json.encode(text)["input_ids"] == want, text
        assert from_txt.encode(text)["input_ids"] == want, text
    batch = from_json(texts[:3])
    want = ref(texts[:3], padding=True, return_tensors="np")
    assert (batch["input_ids"] == want["input_ids"]).all()
    assert (batch["attention_mask"] == want["attention_mask"]).all()
