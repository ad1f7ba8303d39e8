"""DataLoader: batches from a dataset, in a seeded order, optionally loaded ahead in the background.

The order of batches (and the random draws of transforms, see `asg.data.transforms.rng_scope`) depends
only on the seed and the epoch, never on ``num_workers``: workers load batches concurrently but the
loader hands them out in sampler order.

Datasets with a ``get_batch(indices)`` method (`InMemoryDataset`, and `SubsetDataset` of one) are
loaded with one fancy-indexing call per array instead of reading and collating item by item.

>>> import numpy as np
>>> from asg.data import InMemoryDataset
>>> ds = InMemoryDataset(np.arange(10, dtype=np.float32).reshape(5, 2), np.arange(5))
>>> loader = DataLoader(ds, batch_size=2, shuffle=True, seed=0)
>>> len(loader), [y.tolist() for _, y in loader]
(3, [[0, 3], [2, 1], [4]])
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .collate import default_collate
from .datasets import Dataset
from .samplers import BatchSampler, RandomSampler, SequentialSampler, _base_seed
from .transforms import _activate, _LazyGenerator

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["DataLoader"]

CollateFn = Callable[[list[Any]], Any]
# (loader seed, (epoch, batch number)): the entropy and spawn key of a batch's SeedSequence.
RngKey = tuple[int, tuple[int, int]]


def _load_batch(
    dataset: Dataset[Any], indices: np.ndarray, collate_fn: CollateFn | None, rng_key: RngKey
) -> Any:
    """Read and collate the items at ``indices``; random transforms draw from the batch's ``rng_key``."""
    previous = _activate(_LazyGenerator(rng_key))
    try:
        if collate_fn is None:
            get_batch = getattr(dataset, "get_batch", None)
            if callable(get_batch):
                return get_batch(indices)
            return default_collate([dataset[int(i)] for i in indices])
        return collate_fn([dataset[int(i)] for i in indices])
    finally:
        _activate(previous)


# State of a worker process: set once by the pool initializer, so the dataset is sent once per worker.
_worker_state: dict[str, Any] = {}


def _init_process_worker(dataset: Dataset[Any], collate_fn: CollateFn | None) -> None:
    _worker_state["dataset"] = dataset
    _worker_state["collate_fn"] = collate_fn


def _process_worker_load(indices: np.ndarray, rng_key: RngKey) -> Any:
    return _load_batch(_worker_state["dataset"], indices, _worker_state["collate_fn"], rng_key)


class DataLoader:
    """Iterate over ``dataset`` in batches.

    Args:
        dataset: anything with ``__len__`` and ``__getitem__``.
        batch_size: items per batch (ignored when ``batch_sampler`` is given).
        shuffle: visit items in a random order, reshuffled every epoch; reproducible with ``seed``.
        sampler: an iterable of indices (instead of ``shuffle``).
        batch_sampler: an iterable of index batches (instead of batch_size/shuffle/sampler/drop_last).
        drop_last: drop the last, short batch.
        collate_fn: turns a list of items into a batch; default `default_collate` (or ``get_batch``).
        num_workers: 0 loads in the calling thread; n > 0 loads up to ``n * prefetch_factor`` batches
            ahead with n threads or n worker processes, overlapping loading with the caller's compute.
        prefetch_factor: batches loaded ahead per worker.
        worker_type: ``"thread"`` (default; numpy indexing and Pillow decoding release the GIL) or
            ``"process"`` (for pure-Python per-item work; the dataset and collate_fn must be picklable
            and importable, and are sent to each worker once through multiprocessing).
        seed: seed of the shuffle order and of random transforms; None draws one at construction.
        multiprocessing_context: start method for process workers ("spawn" by default).

    The epoch advances by one each time iteration starts; `set_epoch` chooses it (for resuming).

    >>> import numpy as np
    >>> loader = DataLoader(list(range(7)), batch_size=3, drop_last=True)
    >>> [b.tolist() for b in loader], len(loader)
    ([[0, 1, 2], [3, 4, 5]], 2)
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int = 1,
        shuffle: bool = False,
        *,
        sampler: Iterable[int] | None = None,
        batch_sampler: Iterable[Any] | None = None,
        drop_last: bool = False,
        collate_fn: CollateFn | None = None,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        worker_type: Literal["thread", "process"] = "thread",
        seed: int | None = None,
        multiprocessing_context: str = "spawn",
    ) -> None:
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError(
                    "batch_sampler is mutually exclusive with batch_size, shuffle, sampler and drop_last"
                )
        elif sampler is not None and shuffle:
            raise ValueError("sampler is mutually exclusive with shuffle; shuffle inside the sampler")
        if isinstance(num_workers, bool) or int(num_workers) < 0:
            raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
        if int(prefetch_factor) < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor!r}")
        if worker_type not in ("thread", "process"):
            raise ValueError(f"worker_type must be 'thread' or 'process', got {worker_type!r}")
        self.dataset = dataset
        self.seed = _base_seed(seed)
        if batch_sampler is None:
            if sampler is None:
                sampler = RandomSampler(dataset, seed=self.seed) if shuffle else SequentialSampler(dataset)
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.batch_size = batch_size if self.sampler is not None else None
        self.drop_last = drop_last
        self.collate_fn = collate_fn
        self.num_workers = int(num_workers)
        self.prefetch_factor = int(prefetch_factor)
        self.worker_type = worker_type
        self.multiprocessing_context = multiprocessing_context
        self.epoch = 0
        self._process_pool: ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """The next iteration uses ``epoch`` (shuffle order and transform randomness depend on it)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def _rng_key(self, epoch: int, batch_number: int) -> RngKey:
        return (self.seed, (epoch, batch_number))

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        self.epoch += 1
        set_epoch = getattr(self.batch_sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        batches = iter(self.batch_sampler)
        if self.num_workers == 0:
            return self._iterate_inline(batches, epoch)
        return self._iterate_with_workers(batches, epoch)

    def _iterate_inline(self, batches: Iterator[Any], epoch: int) -> Iterator[Any]:
        for number, indices in enumerate(batches):
            idx = np.asarray(indices, dtype=np.int64)
            try:
                batch = _load_batch(self.dataset, idx, self.collate_fn, self._rng_key(epoch, number))
            except Exception as error:
                error.add_note(_where(number, epoch, idx))
                raise
            yield batch

    def _executor(self) -> tuple[Executor, bool]:
        """The executor and whether it should be shut down when the epoch ends."""
        if self.worker_type == "thread":
            return ThreadPoolExecutor(self.num_workers, thread_name_prefix="asg-data-loader"), True
        if self._process_pool is None:
            import multiprocessing  # imported here: only process workers need it
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context(self.multiprocessing_context)
            self._process_pool = ProcessPoolExecutor(
                self.num_workers,
                mp_context=context,
                initializer=_init_process_worker,
                initargs=(self.dataset, self.collate_fn),
            )
            self._finalizer = weakref.finalize(
                self, self._process_pool.shutdown, wait=False, cancel_futures=True
            )
        return self._process_pool, False

    def _submit(self, executor: Executor, indices: np.ndarray, rng_key: RngKey) -> Future:
        if self.worker_type == "thread":
            return executor.submit(_load_batch, self.dataset, indices, self.collate_fn, rng_key)
        return executor.submit(_process_worker_load, indices, rng_key)

    def _iterate_with_workers(self, batches: Iterator[Any], epoch: int) -> Iterator[Any]:
        executor, shut_down_after = self._executor()
        in_flight: deque[tuple[int, np.ndarray, Future]] = deque()
        limit = self.num_workers * self.prefetch_factor
        numbered = enumerate(batches)
        try:
            for number, indices in numbered:
                idx = np.asarray(indices, dtype=np.int64)
                in_flight.append((number, idx, self._submit(executor, idx, self._rng_key(epoch, number))))
                if len(in_flight) >= limit:
                    yield _result(*in_flight.popleft(), epoch)
            while in_flight:
                yield _result(*in_flight.popleft(), epoch)
        finally:
            for _, _, future in in_flight:
                future.cancel()
            if shut_down_after:
                executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop worker processes (thread workers stop by themselves at the end of each epoch)."""
        if self._finalizer is not None:
            self._finalizer()
        self._process_pool = None
        self._finalizer = None

    def __enter__(self) -> DataLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DataLoader(dataset={type(self.dataset).__name__}[{len(self.dataset)}], batches={len(self)}, "
            f"batch_size={self.batch_size}, num_workers={self.num_workers}, worker_type={self.worker_type!r})"
        )


def _where(number: int, epoch: int, indices: np.ndarray) -> str:
    shown = indices[:8].tolist()
    more = "..." if len(indices) > 8 else ""
    return f"while loading batch {number} of epoch {epoch} (dataset indices {shown}{more})"


def _result(number: int, indices: np.ndarray, future: Future, epoch: int) -> Any:
    try:
        return future.result()
    except Exception as error:
        error.add_note(_where(number, epoch, indices))
        raise
