"""The IDX format of MNIST and Fashion-MNIST, plain or gzipped.

Layout: two zero bytes, a dtype code, the number of dimensions, then each dimension as a big-endian
uint32, then the values in C order, big-endian. Files are read whole and checked against that layout.

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
>>> write_idx(path, np.array([3, 1, 4], np.uint8))
>>> read_idx(path).tolist()
[3, 1, 4]
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

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


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise DataFormatError(f"{path}: the gzip stream is damaged or truncated ({error})") from error


def read_idx(
    path: str | os.PathLike[str],
    expected_ndim: int | None = None,
    expected_dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Read an IDX file (gzip detected from its content) into a native-endian numpy array.

    ``expected_ndim`` / ``expected_dtype`` add checks, with errors naming the file. Raises
    `DataFormatError` for a bad header or a file whose length does not match its header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(f"{path}: {len(data)} bytes is too short for an IDX header (4 bytes and more)")
    if data[0] != 0 or data[1] != 0:
        raise DataFormatError(
            f"{path}: not an IDX file: the magic number must start with two zero bytes, got "
            f"0x{data[:4].hex()}"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({IDX_DTYPES[c].name})" for c in IDX_DTYPES)
        raise DataFormatError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise DataFormatError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataFormatError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_size} header bytes, "
            f"the file has {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found_bytes = len(data) - header_size
    if found_bytes != expected_bytes:
        problem = "truncated" if found_bytes < expected_bytes else "longer than its header says"
        raise DataFormatError(
            f"{path}: file is {problem}: header says shape {shape} of {dtype.name} = {expected_bytes} data "
            f"bytes after the {header_size}-byte header, found {found_bytes}"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataFormatError(
            f"{path}: expected an IDX array with {expected_ndim} dimensions, got shape {shape}"
        )
    if expected_dtype is not None and dtype.newbyteorder("=") != np.dtype(expected_dtype):
        raise DataFormatError(
            f"{path}: expected IDX values of dtype {np.dtype(expected_dtype).name}, got {dtype.name}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX; gzipped when ``compress`` is True or, if None, when the name ends in .gz."""
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
    payload = header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
