"""Atomic file writes (used by every writer in asg-data) and JSON reading with errors naming file and field.

`atomic_writer` writes a temporary file in the target's directory, flushes it to disk and renames it over
the target with ``os.replace``: a reader (or a process killed mid-write) sees the old file or the new one,
never a truncated one. The new file keeps the old file's permission bits (a new file gets the usual
``0o666 & ~umask``), a symlink is written through (its target is replaced, the link stays a link), and the
temporary file is removed if anything fails. Only a process killed outright (``kill -9``) can leave its
temporary file behind: it is named ``.<name>.<random>.tmp`` beside the target.

Example:
    >>> import os, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_writer(p) as f:
    ...     _ = f.write(b"hello")
    >>> p.read_bytes(), os.listdir(p.parent)
    (b'hello', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "json_field",
    "read_json",
]


def _resolve_target(path: Path) -> Path:
    """The file to replace: ``path`` itself, or the final target of a symlink (which may not exist yet)."""
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def _create_temporary(target: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` beside ``target``; mode 0o666 so that the kernel applies the umask."""
    directory = target.parent
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = directory / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise FileNotFoundError(
                f"cannot write {str(target)!r}: its directory {str(directory)!r} does not exist"
            ) from None
    raise FileExistsError(f"cannot write {str(target)!r}: could not create a unique temporary file beside it")


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; not every platform can open a directory, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a binary file that replaces ``path`` atomically when the ``with`` block ends without error.

    The file is written beside the target (so the final ``os.replace`` is a rename on one file system),
    fsynced, given the existing file's permission bits, then renamed over it. On any exception the
    temporary file is removed and the target is left as it was.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "data.bin"
        >>> with atomic_writer(p) as f:
        ...     _ = f.write(bytes([1, 2, 3]))
        >>> list(p.read_bytes())
        [1, 2, 3]
    """
    target = _resolve_target(Path(path))
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a directory")
    try:
        old_mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        old_mode = None
    fd, tmp = _create_temporary(target)
    try:
        with os.fdopen(fd, "wb") as f:
            if old_mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), old_mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        if old_mode is not None and not hasattr(os, "fchmod"):
            os.chmod(tmp, old_mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see `atomic_writer`); returns ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
        >>> _ = atomic_write_bytes(p, b"ab")
        >>> p.read_bytes()
        b'ab'
    """
    with atomic_writer(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see `atomic_writer`), without newline translation.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = atomic_write_text(p, "hi")
        >>> p.read_text()
        'hi'
    """
    return atomic_write_bytes(path, text.encode(encoding))


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
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: {str(p)!r} is not UTF-8 text ({e})") from None


_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def json_field(
    d: Any, key: str, where: str, kind: type | tuple[type, ...], expected: str, *, optional: bool = False
) -> Any:
    """``d[key]`` checked to be a ``kind``; a missing or mistyped field raises ``ValueError`` naming it.

    ``where`` says which file (or call) ``d`` came from; ``expected`` describes the field's form.
    With ``optional``, a missing or null field gives None. Booleans never count as integers.

    Example:
        >>> json_field(
        ...     {"chars": ["a"]}, "chars", "CharTokenizer.load: 'c.json'", list, "a list of characters"
        ... )
        ['a']
        >>> json_field({}, "chars", "CharTokenizer.load: 'c.json'", list, "a list of characters")
        Traceback (most recent call last):
        ...
        ValueError: CharTokenizer.load: 'c.json': field 'chars' is missing; expected a list of characters
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object with field {key!r}, got {_json_type(d)}")
    value = d.get(key)
    if value is None:
        if optional:
            return None
        if key not in d:
            raise ValueError(f"{where}: field {key!r} is missing; expected {expected}")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(
            f"{where}: field {key!r} is {_json_type(value)} ({_short(value)}); expected {expected}"
        )
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
