"""Atomic text writes: write a temporary file in the target directory, then ``os.replace`` it.

A reader never sees a half-written file, and a crash mid-write leaves the old file intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_json", "atomic_write_text", "read_json"]


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same directory + ``os.replace``).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = atomic_write_text(p, "hi")
        >>> p.read_text()
        'hi'
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON and write it atomically to ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=True) + "\n")


def read_json(path: str | os.PathLike[str], *, what: str) -> Any:
    """Read a JSON file, naming ``what`` was expected in the error if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no such file {str(p)!r}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {str(p)!r} is not valid JSON ({e})") from None
