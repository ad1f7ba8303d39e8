"""Samplers: the order in which a `DataLoader` visits dataset indices.

Random samplers are reproducible: the order of an epoch depends only on ``(seed, epoch)``. Each
iteration uses the current epoch and then moves to the next one; `set_epoch` picks the epoch
explicitly (the `DataLoader` calls it before every epoch).

>>> sampler = RandomSampler(5, seed=0)
>>> first, second = list(sampler), list(sampler)
>>> sorted(first), first != second
([0, 1, 2, 3, 4], True)
>>> sampler.set_epoch(0)
>>> list(sampler) == first
True
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import numpy as np

from .datasets import dataset_length

__all__ = ["BatchSampler", "RandomSampler", "Sampler", "SequentialSampler", "WeightedRandomSampler"]


def _base_seed(seed: int | None) -> int:
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


class Sampler(ABC):
    """Base class: an iterable of dataset indices with a length, and an epoch for reshuffling."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (random samplers reshuffle per epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def _next_epoch_generator(self, seed: int) -> np.random.Generator:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(self.epoch,)))
        self.epoch += 1
        return rng

    @abstractmethod
    def __iter__(self) -> Iterator[int]:
        raise NotImplementedError

    @abstractmethod
    def __len__(self) -> int:
        raise NotImplementedError


class SequentialSampler(Sampler):
    """0, 1, ..., n - 1.

    >>> list(SequentialSampler(3))
    [0, 1, 2]
    """

    def __init__(self, data_source: Sized | int) -> None:
        self.length = dataset_length(data_source)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.length))

    def __len__(self) -> int:
        return self.length


class RandomSampler(Sampler):
    """A random permutation of 0..n-1, or ``num_samples`` draws (with or without replacement).

    Without replacement and with ``num_samples`` larger than n, whole permutations are chained.

    >>> idx = list(RandomSampler(4, replacement=True, num_samples=10, seed=3))
    >>> len(idx), all(0 <= i < 4 for i in idx)
    (10, True)
    """

    def __init__(
        self,
        data_source: Sized | int,
        replacement: bool = False,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.length = dataset_length(data_source)
        if num_samples is not None and (isinstance(num_samples, bool) or int(num_samples) <= 0):
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if self.length == 0 and (replacement or num_samples):
            raise ValueError("cannot draw samples from an empty dataset")
        self.replacement = bool(replacement)
        self.num_samples = self.length if num_samples is None else int(num_samples)
        self.seed = _base_seed(seed)

    def indices(self) -> np.ndarray:
        """The indices of the current epoch as an int64 array (and advance the epoch)."""
        rng = self._next_epoch_generator(self.seed)
        if self.replacement:
            return rng.integers(0, self.length, size=self.num_samples, dtype=np.int64)
        reps = -(-self.num_samples // self.length) if self.length else 0
        perms = [rng.permutation(self.length) for _ in range(reps)]
        return np.concatenate(perms)[: self.num_samples] if perms else np.empty(0, np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices drawn with probability proportional to ``weights``.

    >>> sampler = WeightedRandomSampler([0.0, 1.0, 3.0], num_samples=4000, seed=0)
    >>> counts = np.bincount(list(sampler), minlength=3)
    >>> int(counts[0]), bool(abs(counts[2] / 4000 - 0.75) < 0.03)
    (0, True)
    """

    def __init__(
        self,
        weights: Iterable[float] | np.ndarray,
        num_samples: int,
        replacement: bool = True,
        seed: int | None = None,
    ) -> None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size == 0:
            raise ValueError("WeightedRandomSampler needs at least one weight")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("WeightedRandomSampler weights must be finite and non-negative")
        if w.sum() <= 0:
            raise ValueError("WeightedRandomSampler weights must not all be zero")
        if isinstance(num_samples, bool) or int(num_samples) <= 0:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not replacement and num_samples > np.count_nonzero(w):
            raise ValueError(
                f"cannot draw {num_samples} samples without replacement from "
                f"{np.count_nonzero(w)} items with non-zero weight"
            )
        self.weights = w
        self.probabilities = w / w.sum()
        self.num_samples = int(num_samples)
        self.replacement = bool(replacement)
        self.seed = _base_seed(seed)

    def indices(self) -> np.ndarray:
        """The indices of the current epoch as an int64 array (and advance the epoch)."""
        rng = self._next_epoch_generator(self.seed)
        drawn = rng.choice(
            len(self.weights), size=self.num_samples, replace=self.replacement, p=self.probabilities
        )
        return drawn.astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class BatchSampler(Sampler):
    """Groups the indices of ``sampler`` into int64 arrays of ``batch_size`` (the last one may be short).

    >>> [b.tolist() for b in BatchSampler(SequentialSampler(5), batch_size=2, drop_last=False)]
    [[0, 1], [2, 3], [4]]
    >>> len(BatchSampler(SequentialSampler(5), batch_size=2, drop_last=True))
    2
    """

    def __init__(self, sampler: Iterable[int], batch_size: int, drop_last: bool = False) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch here and on the wrapped sampler, so a random sampler reshuffles per epoch."""
        super().set_epoch(epoch)
        inner: Any = self.sampler
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[np.ndarray]:
        indices_fn = getattr(self.sampler, "indices", None)
        if callable(indices_fn):
            all_indices = np.asarray(indices_fn(), dtype=np.int64)
        elif isinstance(self.sampler, SequentialSampler):
            all_indices = np.arange(len(self.sampler), dtype=np.int64)
        else:
            all_indices = np.fromiter(iter(self.sampler), dtype=np.int64)
        self.epoch += 1
        n = len(all_indices)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield all_indices[start : start + self.batch_size]

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
