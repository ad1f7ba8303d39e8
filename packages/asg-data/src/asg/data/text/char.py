"""Character-level tokenizer: one id per Unicode code point, fitted on a corpus (as in nanoGPT's char model)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .._atomic import atomic_write_json, json_field, read_json

__all__ = ["CharTokenizer"]

_FORMAT = "asg.CharTokenizer"


def _describe(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


class CharTokenizer:
    """Maps each character to an integer id; ids follow the sorted order of the characters.

    Args:
        chars: the vocabulary characters (duplicates are removed, order is sorted).
        unk_token: if given, unknown characters encode to this token's id (appended after the
            characters, so character ids stay those of ``sorted(set(corpus))``) and decode to this
            string. If ``None`` (default), encoding an unknown character raises ``ValueError``.

    Example:
        >>> tok = CharTokenizer.fit("hello world")
        >>> tok.encode("hello")
        [3, 2, 4, 4, 5]
        >>> tok.decode(tok.encode("world"))
        'world'
        >>> tok.vocab_size
        8
    """

    def __init__(self, chars: Iterable[str], *, unk_token: str | None = None) -> None:
        chars = list(chars)
        for k, c in enumerate(chars):
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer: chars[{k}] must be a single character, got {c!r}")
        self._chars: list[str] = sorted(set(chars))
        if unk_token is not None and (not isinstance(unk_token, str) or not unk_token):
            raise ValueError(f"CharTokenizer: unk_token must be a non-empty string, got {unk_token!r}")
        self.unk_token = unk_token
        self._stoi: dict[str, int] = {c: i for i, c in enumerate(self._chars)}
        self._itos: list[str] = list(self._chars)
        self.unk_id: int | None = None
        if unk_token is not None:
            self.unk_id = len(self._itos)
            self._itos.append(unk_token)

    @classmethod
    def fit(cls, corpus: str | Iterable[str], *, unk_token: str | None = None) -> CharTokenizer:
        """Build the vocabulary from every character of ``corpus`` (a string or an iterable of strings).

        Example:
            >>> CharTokenizer.fit(["ab", "ba", "c"]).vocab_size
            3
        """
        texts = [corpus] if isinstance(corpus, str) else corpus
        seen: set[str] = set()
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"CharTokenizer.fit: corpus items must be str, got {type(t).__name__}")
            seen.update(t)
        if not seen:
            raise ValueError("CharTokenizer.fit: the corpus is empty")
        return cls(seen, unk_token=unk_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids (characters, plus one if ``unk_token`` is set)."""
        return len(self._itos)

    def __len__(self) -> int:
        return len(self._itos)

    @property
    def chars(self) -> list[str]:
        """The vocabulary characters in id order (without ``unk_token``)."""
        return list(self._chars)

    @property
    def vocab(self) -> dict[str, int]:
        """A copy of the token -> id mapping (including ``unk_token`` if set)."""
        return {t: i for i, t in enumerate(self._itos)}

    def encode(self, text: str) -> list[int]:
        """Encode ``text`` to a list of ids, one per character.

        Raises:
            ValueError: a character is not in the vocabulary and no ``unk_token`` was given; the
                message names the character, its code point and its position.
        """
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pass
        if self.unk_id is not None:
            unk = self.unk_id
            return [stoi.get(c, unk) for c in text]
        pos = next(i for i, c in enumerate(text) if c not in stoi)
        raise ValueError(
            f"CharTokenizer.encode: character {_describe(text[pos])} at position {pos} is not in the "
            f"vocabulary ({len(self._chars)} characters); fit the tokenizer on a corpus that contains "
            f"it, or construct it with unk_token='<unk>' to map unknown characters to one id"
        )

    def decode(self, ids: Iterable[int]) -> str:
        """Decode a sequence of ids (list, tuple or 1-D integer array) back to a string."""
        itos = self._itos
        n = len(itos)
        out = []
        for pos, i in enumerate(ids):
            k = int(i)
            if not 0 <= k < n:
                raise ValueError(f"CharTokenizer.decode: id {k} at position {pos} is out of range [0, {n})")
            out.append(itos[k])
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (see :meth:`from_dict`)."""
        return {"format": _FORMAT, "version": 1, "chars": self._chars, "unk_token": self.unk_token}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | None = None) -> CharTokenizer:
        """Rebuild a tokenizer from :meth:`to_dict` output, checking its format tag and fields.

        ``source`` (the file ``d`` was read from) is named in the errors.

        Example:
            >>> CharTokenizer.from_dict({"format": "asg.CharTokenizer", "version": 1}, source="c.json")
            Traceback (most recent call last):
            ...
            ValueError: CharTokenizer.load: 'c.json': field 'chars' is missing; expected a list of single characters
        """
        where = f"CharTokenizer.load: {source!r}" if source is not None else "CharTokenizer.from_dict"
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{where}: expected format {_FORMAT!r}, got {got!r}")
        if d.get("version") != 1:
            raise ValueError(
                f"{where}: unsupported version {d.get('version')!r} (this reader knows version 1)"
            )
        chars = json_field(d, "chars", where, list, "a list of single characters")
        unk_token = json_field(d, "unk_token", where, str, "a string or null", optional=True)
        try:
            return cls(chars, unk_token=unk_token)
        except ValueError as error:
            raise ValueError(f"{where}: {str(error).removeprefix('CharTokenizer: ')}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as JSON (written atomically).

        Example:
            >>> import tempfile, os
            >>> p = os.path.join(tempfile.mkdtemp(), "chars.json")
            >>> tok = CharTokenizer.fit("abc")
            >>> tok.save(p)
            >>> CharTokenizer.load(p).encode("cab")
            [2, 0, 1]
        """
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        """Load a tokenizer saved with :meth:`save`."""
        return cls.from_dict(read_json(path, what="CharTokenizer.load"), source=str(path))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CharTokenizer):
            return NotImplemented
        return self._chars == other._chars and self.unk_token == other.unk_token

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk_token={self.unk_token!r})"
