"""Errors raised when reading dataset files.

>>> issubclass(DataFormatError, ValueError), issubclass(DatasetNotFoundError, FileNotFoundError)
(True, True)
"""

from __future__ import annotations

__all__ = ["DataFormatError", "DatasetNotFoundError"]


class DataFormatError(ValueError):
    """A dataset file exists but does not hold what its format promises (bad header, wrong size...)."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message says which file, where it was looked for and how to get it."""
