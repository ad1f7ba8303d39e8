"""Language-modelling dataset: (context, next-token) blocks cut from one long token stream."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LanguageModelDataset", "random_blocks"]


def _as_tokens(tokens: Sequence[int] | np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{where}: tokens must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{where}: tokens must be integers, got dtype {arr.dtype}")
    return arr


def random_blocks(
    tokens: Sequence[int] | np.ndarray,
    block_size: int,
    batch_size: int,
    *,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``batch_size`` random blocks, as nanoGPT's ``get_batch``: x[b] = tokens[i:i+T], y[b] = tokens[i+1:i+T+1].

    Returns:
        ``(x, y)``, both int64 of shape ``(batch_size, block_size)``.

    Example:
        >>> x, y = random_blocks(np.arange(100), block_size=8, batch_size=4, rng=0)
        >>> x.shape, y.dtype, bool((y == x + 1).all())
        ((4, 8), dtype('int64'), True)
    """
    arr = _as_tokens(tokens, "random_blocks")
    if block_size < 1 or batch_size < 1:
        raise ValueError(
            f"random_blocks: block_size and batch_size must be >= 1. Received: block_size={block_size}, "
            f"batch_size={batch_size}"
        )
    n_starts = arr.shape[0] - block_size
    if n_starts < 1:
        raise ValueError(
            f"random_blocks: need more than block_size={block_size} tokens to form one (x, y) pair, "
            f"got {arr.shape[0]}"
        )
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    starts = gen.integers(0, n_starts, size=batch_size)
    idx = starts[:, None] + np.arange(block_size + 1)[None, :]
    blocks = arr[idx].astype(np.int64, copy=False)
    return blocks[:, :-1], blocks[:, 1:]


class LanguageModelDataset:
    """Every (context, next-token) block of a token stream: item ``i`` is ``(x, y)`` with
    ``x = tokens[s:s+T]`` and ``y = tokens[s+1:s+T+1]``, ``s = i * stride``, both int64 of shape ``(T,)``.

    Implements the Dataset protocol (``__len__``, ``__getitem__``), so a DataLoader batches it to
    ``(B, T)`` arrays. :meth:`random_batch` samples blocks directly for GPT training loops.

    Args:
        tokens: 1-D sequence of token ids (kept without copy when already an int64 array).
        block_size: context length ``T``.
        stride: distance between consecutive block starts (``1``: every position; ``T``: disjoint).

    Example:
        >>> ds = LanguageModelDataset(np.arange(10), block_size=4)
        >>> len(ds)
        6
        >>> x, y = ds[0]
        >>> x.tolist(), y.tolist()
        ([0, 1, 2, 3], [1, 2, 3, 4])
    """

    def __init__(self, tokens: Sequence[int] | np.ndarray, block_size: int, *, stride: int = 1) -> None:
        arr = _as_tokens(tokens, "LanguageModelDataset")
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(
                f"LanguageModelDataset: block_size must be an integer >= 1. Received: {block_size!r}"
            )
        if int(stride) != stride or stride < 1:
            raise ValueError(f"LanguageModelDataset: stride must be an integer >= 1. Received: {stride!r}")
        if arr.shape[0] <= block_size:
            raise ValueError(
                f"LanguageModelDataset: need more than block_size={block_size} tokens to form one (x, y) "
                f"pair, got {arr.shape[0]}"
            )
        self.tokens: np.ndarray = arr.astype(np.int64, copy=False)
        self.block_size = int(block_size)
        self.stride = int(stride)

    def __len__(self) -> int:
        return (self.tokens.shape[0] - self.block_size - 1) // self.stride + 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"LanguageModelDataset: index must be an integer, got {type(index).__name__}")
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"LanguageModelDataset: index {index} out of range for length {n}")
        s = i * self.stride
        t = self.block_size
        return self.tokens[s : s + t], self.tokens[s + 1 : s + t + 1]

    def random_batch(
        self, batch_size: int, *, rng: np.random.Generator | int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``batch_size`` blocks at random start positions (any offset, not only multiples of
        ``stride``); returns ``(x, y)`` of shape ``(batch_size, block_size)``, int64.

        Example:
            >>> ds = LanguageModelDataset(np.arange(50), block_size=5)
            >>> x, y = ds.random_batch(3, rng=np.random.default_rng(0))
            >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
            ((3, 5), True)
        """
        return random_blocks(self.tokens, self.block_size, batch_size, rng=rng)

    def __repr__(self) -> str:
        return (
            f"LanguageModelDataset(tokens={self.tokens.shape[0]}, block_size={self.block_size}, "
            f"stride={self.stride}, len={len(self)})"
        )
