"""Datasets: the `Dataset` protocol, in-memory arrays, lazy maps, concatenation, subsets and splits.

A dataset is anything with ``__len__`` and ``__getitem__(int)``. Datasets that can also fetch a whole
batch at once (``get_batch(indices)``, as `InMemoryDataset` does with numpy fancy indexing) take the
`DataLoader` fast path.

>>> import numpy as np
>>> ds = InMemoryDataset(np.arange(10).reshape(5, 2), np.array([0, 1, 0, 1, 1]))
>>> x1, y1 = ds[1]
>>> len(ds), x1.tolist(), int(y1)
(5, [2, 3], 1)
>>> train, test = random_split(ds, [4, 1], seed=0)
>>> len(train), len(test)
(4, 1)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence, Sized
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from .collate import default_collate

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")
U = TypeVar("U")

SeedLike = int | np.random.Generator | None

__all__ = [
    "ConcatDataset",
    "Dataset",
    "InMemoryDataset",
    "MapDataset",
    "SubsetDataset",
    "random_split",
    "train_test_split",
]


@runtime_checkable
class Dataset(Protocol[T_co]):
    """What every dataset provides: a length and integer indexing from 0 to len - 1.

    >>> isinstance([1, 2, 3], Dataset)
    True
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> T_co: ...


def _as_generator(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _normalize_index(index: Any, length: int, what: str) -> int:
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{what} index must be an integer, got {type(index).__name__}")
    i = int(index)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"{what} index {int(index)} is out of range for length {length}")
    return i


def _index_array(indices: Any, length: int, what: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype != np.int64 or idx.ndim != 1:  # the loader's batches are already 1-D int64
        if idx.dtype == bool or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"{what} indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).reshape(-1)
    if idx.size and (idx.min() < -length or idx.max() >= length):
        bad = idx[(idx < -length) | (idx >= length)][0]
        raise IndexError(f"{what} index {int(bad)} is out of range for length {length}")
    return idx


class InMemoryDataset:
    """One or more arrays with the same first dimension; item ``i`` is the tuple of their rows ``i``.

    With a single array an item is that array's row, not a 1-tuple. ``transform`` is applied to items of
    the first array, ``target_transform`` to items of the second. `get_batch` fetches many items with one
    fancy-indexing operation per array (and applies transforms with their ``batch`` method when they have
    one), which is what the `DataLoader` uses.

    >>> import numpy as np
    >>> x, y = np.zeros((6, 2, 2), np.uint8), np.arange(6)
    >>> ds = InMemoryDataset(x, y)
    >>> images, labels = ds.get_batch(np.array([5, 0]))
    >>> images.shape, labels.tolist()
    ((2, 2, 2), [5, 0])
    """

    def __init__(
        self,
        *arrays: Any,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not arrays:
            raise ValueError("InMemoryDataset needs at least one array")
        converted = tuple(np.asarray(a) for a in arrays)
        for position, array in enumerate(converted):
            if array.ndim == 0:
                raise ValueError(
                    f"InMemoryDataset array {position} is a scalar; arrays need a first dimension"
                )
        lengths = [len(a) for a in converted]
        if len(set(lengths)) != 1:
            raise ValueError(f"InMemoryDataset arrays must have the same length, got lengths {lengths}")
        if target_transform is not None and len(converted) < 2:
            raise ValueError("target_transform needs a second array (the targets)")
        self.arrays: tuple[np.ndarray, ...] = converted
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.arrays[0])

    def _transforms(self) -> list[Callable[[Any], Any] | None]:
        chosen: list[Callable[[Any], Any] | None] = [None] * len(self.arrays)
        chosen[0] = self.transform
        if len(self.arrays) > 1:
            chosen[1] = self.target_transform
        return chosen

    def __getitem__(self, index: int) -> Any:
        i = _normalize_index(index, len(self), "InMemoryDataset")
        items = []
        for array, fn in zip(self.arrays, self._transforms(), strict=True):
            item = array[i]
            items.append(fn(item) if fn is not None else item)
        return items[0] if len(items) == 1 else tuple(items)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> Any:
        """Items ``indices`` already collated: one array per field, batch on axis 0."""
        idx = _index_array(indices, len(self), "InMemoryDataset")
        fields = []
        for array, fn in zip(self.arrays, self._transforms(), strict=True):
            batch = array[idx]
            if fn is not None:
                batch_fn = getattr(fn, "batch", None)
                if callable(batch_fn):
                    batch = batch_fn(batch)
                else:
                    batch = default_collate([fn(item) for item in batch])
            fields.append(batch)
        return fields[0] if len(fields) == 1 else tuple(fields)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in self.arrays)
        return f"InMemoryDataset({shapes})"


class MapDataset:
    """Applies ``fn`` to each item of ``dataset`` when the item is read (nothing is computed up front).

    >>> ds = MapDataset([1, 2, 3], lambda v: v * 10)
    >>> [ds[i] for i in range(len(ds))]
    [10, 20, 30]
    """

    def __init__(self, dataset: Dataset[Any], fn: Callable[[Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"MapDataset fn must be callable, got {type(fn).__name__}")
        self.dataset = dataset
        self.fn = fn

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.fn(self.dataset[_normalize_index(index, len(self), "MapDataset")])


class ConcatDataset:
    """Several datasets one after the other.

    >>> ds = ConcatDataset([[1, 2], [3], [4, 5, 6]])
    >>> len(ds), ds[2], ds[-1]
    (6, 3, 6)
    """

    def __init__(self, datasets: Sequence[Dataset[Any]]) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        self.cumulative_sizes: list[int] = []
        total = 0
        for d in self.datasets:
            total += len(d)
            self.cumulative_sizes.append(total)

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index: int) -> Any:
        i = _normalize_index(index, len(self), "ConcatDataset")
        which = bisect.bisect_right(self.cumulative_sizes, i)
        offset = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][i - offset]


class SubsetDataset:
    """The items of ``dataset`` at ``indices``, in that order.

    >>> ds = SubsetDataset(["a", "b", "c", "d"], [3, 0])
    >>> len(ds), ds[0], ds[1]
    (2, 'd', 'a')
    """

    def __init__(self, dataset: Dataset[Any], indices: Sequence[int] | np.ndarray) -> None:
        self.dataset = dataset
        self.indices = _index_array(indices, len(dataset), "SubsetDataset") % max(len(dataset), 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(self.indices[_normalize_index(index, len(self), "SubsetDataset")])]

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> Any:
        """Items ``indices`` collated; one fancy-indexing call when the parent has ``get_batch``."""
        parent_indices = self.indices[_index_array(indices, len(self), "SubsetDataset")]
        parent_get_batch = getattr(self.dataset, "get_batch", None)
        if callable(parent_get_batch):
            return parent_get_batch(parent_indices)
        return default_collate([self.dataset[int(i)] for i in parent_indices])


def _check_fraction_or_count(value: float | int, n: int, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a fraction in (0, 1) or a count, got {value!r}")
    if isinstance(value, (int, np.integer)):
        count = int(value)
        if not 0 < count < n:
            raise ValueError(f"{name}={count} must leave both parts non-empty (dataset has {n} items)")
        return count
    fraction = float(value)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{name} as a fraction must be in (0, 1), got {fraction}")
    count = math.ceil(fraction * n)
    if not 0 < count < n:
        raise ValueError(f"{name}={fraction} leaves an empty part with {n} items")
    return count


def _stratified_test_indices(labels: np.ndarray, n_test: int, rng: np.random.Generator) -> np.ndarray:
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        lonely = classes[counts.argmin()].item()
        raise ValueError(
            f"stratified split: class {lonely!r} has only 1 member; every class needs at least 2"
        )
    n = len(labels)
    ideal = counts * n_test / n
    per_class = np.floor(ideal).astype(np.int64)
    # Largest remainders get the leftover test slots, so the total is exactly n_test.
    leftover = n_test - int(per_class.sum())
    order = np.lexsort((rng.random(len(classes)), -(ideal - per_class)))
    per_class[order[:leftover]] += 1
    # Leave at least one member of each class for training, moving the excess to classes with room.
    excess = int(np.maximum(per_class - (counts - 1), 0).sum())
    per_class = np.minimum(per_class, counts - 1)
    for k in order:
        if excess == 0:
            break
        extra = min(excess, int(counts[k] - 1 - per_class[k]))
        per_class[k] += extra
        excess -= extra
    chosen = []
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        chosen.append(rng.choice(members, size=int(per_class[k]), replace=False))
    return np.concatenate(chosen)


def train_test_split(
    *data: Any,
    test_size: float | int = 0.25,
    seed: SeedLike = None,
    shuffle: bool = True,
    stratify: Any = None,
) -> list[Any]:
    """Split arrays (or one dataset) into a training and a test part.

    With arrays, returns ``[a_train, a_test, b_train, b_test, ...]`` (the same rows in each array). With a
    single non-array dataset, returns ``[train_subset, test_subset]`` as `SubsetDataset`. ``test_size`` is a
    fraction (rounded up) or a count. ``stratify`` (labels) keeps class proportions in both parts; the
    test part then has exactly ``test_size`` items split across classes by largest remainder.

    >>> import numpy as np
    >>> x, y = np.arange(20).reshape(10, 2), np.array([0] * 5 + [1] * 5)
    >>> x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.4, seed=0, stratify=y)
    >>> x_tr.shape, np.bincount(y_te).tolist()
    ((6, 2), [2, 2])
    """
    if not data:
        raise ValueError("train_test_split needs at least one array or dataset")
    single_dataset = len(data) == 1 and not isinstance(data[0], (np.ndarray, list, tuple))
    n = len(data[0])
    for position, d in enumerate(data):
        if len(d) != n:
            raise ValueError(
                f"train_test_split inputs must have the same length: input 0 has {n}, "
                f"input {position} has {len(d)}"
            )
    n_test = _check_fraction_or_count(test_size, n, "test_size")
    rng = _as_generator(seed)
    if stratify is not None:
        if not shuffle:
            raise ValueError("stratified splitting needs shuffle=True")
        labels = np.asarray(stratify)
        if labels.shape[:1] != (n,):
            raise ValueError(f"stratify must have one label per item ({n}), got shape {labels.shape}")
        test_idx = _stratified_test_indices(labels, n_test, rng)
        mask = np.zeros(n, dtype=bool)
        mask[test_idx] = True
        train_idx = rng.permutation(np.flatnonzero(~mask))
        test_idx = rng.permutation(test_idx)
    else:
        order = rng.permutation(n) if shuffle else np.arange(n)
        train_idx, test_idx = order[: n - n_test], order[n - n_test :]
    if single_dataset:
        return [SubsetDataset(data[0], train_idx), SubsetDataset(data[0], test_idx)]
    out: list[Any] = []
    for d in data:
        arr = np.asarray(d)
        out.extend([arr[train_idx], arr[test_idx]])
    return out


def random_split(
    dataset: Dataset[Any], lengths: Sequence[int | float], seed: SeedLike = None
) -> list[SubsetDataset]:
    """Split ``dataset`` into non-overlapping random subsets of the given lengths.

    ``lengths`` are counts summing to ``len(dataset)`` or fractions summing to 1 (remainders go one each
    to the first parts).

    >>> parts = random_split(list(range(10)), [0.5, 0.3, 0.2], seed=1)
    >>> [len(p) for p in parts]
    [5, 3, 2]
    """
    n = len(dataset)
    if not lengths:
        raise ValueError("random_split needs at least one length")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in lengths):
        counts = [int(v) for v in lengths]
        if any(c < 0 for c in counts) or sum(counts) != n:
            raise ValueError(f"random_split lengths {counts} must be non-negative and sum to {n}")
    else:
        fractions = [float(v) for v in lengths]
        if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
            raise ValueError(f"random_split fractions {fractions} must be non-negative and sum to 1")
        counts = [math.floor(f * n) for f in fractions]
        for k in range(n - sum(counts)):
            counts[k % len(counts)] += 1
    order = _as_generator(seed).permutation(n)
    parts, start = [], 0
    for c in counts:
        parts.append(SubsetDataset(dataset, order[start : start + c]))
        start += c
    return parts


def dataset_length(data: Sized | int) -> int:
    """The length of a sized object, or the int itself (used by samplers)."""
    if isinstance(data, (bool, np.bool_)):
        raise TypeError("expected a dataset or a length, got a bool")
    if isinstance(data, (int, np.integer)):
        if data < 0:
            raise ValueError(f"length must be non-negative, got {data}")
        return int(data)
    return len(data)
