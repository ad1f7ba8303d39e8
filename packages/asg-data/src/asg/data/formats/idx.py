"""The IDX format of MNIST and Fashion-MNIST, plain or gzipped.

Layout: two zero bytes, a dtype code, the number of dimensions, then each dimension as a big-endian
uint32, then the values in C order, big-endian. The header is checked before the data is read: a
header that claims more data than the file can hold is an error, and nothing is allocated for it.

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
>>> write_idx(path, np.array([3, 1, 4], np.uint8))
>>> read_idx(path).tolist()
[3, 1, 4]
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._atomic import atomic_writer
from ..errors import DataFormatError

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

# IDX dtype code -> numpy dtype of the stored (big-endian) values.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES_BY_KIND = {(d.kind, d.itemsize): code for code, d in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
# Deflate expands at most 1032:1, so a gzip file of n bytes holds at most this many bytes per input byte.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


def _read_up_to(stream: BinaryIO, count: int) -> bytearray:
    """Read ``count`` bytes (fewer at the end of the stream), a chunk at a time: memory follows the data
    actually present, never the size a damaged header claims."""
    out = bytearray()
    while len(out) < count:
        chunk = stream.read(min(_CHUNK, count - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def read_idx(
    path: str | os.PathLike[str],
    expected_ndim: int | None = None,
    expected_dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Read an IDX file (gzip detected from its content) into a native-endian numpy array.

    The header is read first and the size it claims is checked against the file (for gzip, against
    the most a stream of that size can decompress to) before the data is read; a gzipped file is then
    decompressed only up to the claimed size plus one byte. ``expected_ndim`` / ``expected_dtype`` add
    checks. Every error is a `DataFormatError` naming the file.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "huge-idx4"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 4]) + bytes([0, 1, 0, 0]) * 4)  # claims 65536**4 bytes
        >>> read_idx(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        asg.data.errors.DataFormatError: ...huge-idx4: file is truncated: header says shape
        (65536, 65536, 65536, 65536) of uint8 = 18446744073709551616 data bytes after the 20-byte header, found 0
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            file_size = os.fstat(raw.fileno()).st_size
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not compressed:
                return _read_idx_stream(path, raw, file_size, None, expected_ndim, expected_dtype)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _read_idx_stream(path, stream, None, file_size, expected_ndim, expected_dtype)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataFormatError(f"{path}: the gzip stream is damaged or truncated ({error})") from error


def _read_idx_stream(
    path: Path,
    stream: BinaryIO,
    plain_size: int | None,
    gzip_size: int | None,
    expected_ndim: int | None,
    expected_dtype: np.dtype | type | None,
) -> np.ndarray:
    """Parse an IDX stream; ``plain_size`` is the size of a plain file, ``gzip_size`` that of a gzip file."""
    head = _read_up_to(stream, 4)
    if len(head) < 4:
        raise DataFormatError(f"{path}: {len(head)} bytes is too short for an IDX header (4 bytes and more)")
    if head[0] != 0 or head[1] != 0:
        raise DataFormatError(
            f"{path}: not an IDX file: the magic number must start with two zero bytes, got "
            f"0x{bytes(head).hex()}"
        )
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({IDX_DTYPES[c].name})" for c in IDX_DTYPES)
        raise DataFormatError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise DataFormatError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    dims = _read_up_to(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataFormatError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_size} header bytes, "
            f"the file has {4 + len(dims)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    dtype = IDX_DTYPES[code]
    expected_bytes = math.prod(shape) * dtype.itemsize  # Python ints: a huge header cannot overflow to 0
    claim = (
        f"header says shape {shape} of {dtype.name} = {expected_bytes} data bytes after the "
        f"{header_size}-byte header"
    )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataFormatError(
            f"{path}: expected an IDX array with {expected_ndim} dimensions, got shape {shape}"
        )
    if expected_dtype is not None and dtype.newbyteorder("=") != np.dtype(expected_dtype):
        raise DataFormatError(
            f"{path}: expected IDX values of dtype {np.dtype(expected_dtype).name}, got {dtype.name}"
        )
    if plain_size is not None and plain_size - header_size != expected_bytes:
        found_bytes = plain_size - header_size
        problem = "truncated" if found_bytes < expected_bytes else "longer than its header says"
        raise DataFormatError(f"{path}: file is {problem}: {claim}, found {found_bytes}")
    if gzip_size is not None and header_size + expected_bytes > gzip_size * _MAX_DEFLATE_RATIO:
        raise DataFormatError(
            f"{path}: file is truncated or its header is damaged: {claim}, but a {gzip_size}-byte gzip "
            f"file decompresses to at most {gzip_size * _MAX_DEFLATE_RATIO} bytes"
        )
    data = _read_up_to(stream, expected_bytes)
    if len(data) < expected_bytes:
        raise DataFormatError(f"{path}: file is truncated: {claim}, found {len(data)}")
    if gzip_size is not None and stream.read(1):
        raise DataFormatError(
            f"{path}: file is longer than its header says: {claim}, found at least {expected_bytes + 1}"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.itemsize == 1:
        return array.view(dtype.newbyteorder("="))  # the bytearray is ours: no copy needed
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX, atomically; gzipped when ``compress`` is True or, if None, when the name
    ends in .gz. An existing file keeps its permissions; a symlink is written through.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> write_idx(p, np.array([7, 2], np.uint8))
        >>> p.read_bytes()
        b'\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x02\\x07\\x02'
    """
    path = Path(path)
    arr = np.asarray(array)
    code = _CODES_BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None or arr.dtype.kind not in "uif" or (arr.dtype.kind == "u" and arr.dtype.itemsize != 1):
        raise ValueError(
            f"IDX cannot store dtype {arr.dtype}; use uint8, int8, int16, int32, float32 or float64"
        )
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {arr.ndim}")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    values = np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    with atomic_writer(path) as f:
        if compress:
            # filename="" keeps the temporary file's name out of the gzip header; mtime=0: reproducible.
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
                gz.write(header)
                gz.write(values)
        else:
            f.write(header)
            f.write(values)
