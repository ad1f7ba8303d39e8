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

import signal
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from .collate import default_collate
from .datasets import Dataset
from .samplers import BatchSampler, RandomSampler, SequentialSampler, _base_seed
from .transforms import _activate, _LazyGenerator

__all__ = ["DataLoader", "WorkerError"]

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


class WorkerError(RuntimeError):
    """A DataLoader worker process died, or sent back a batch or an exception that could not be moved
    between processes. The message names the worker, its pid, the exit code or signal, and the batch."""


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, attached as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n(traceback in the worker process)\n{self.text}"


class _Unsendable:
    """Sent by a worker in place of a batch or an exception that it could not pickle."""

    def __init__(self, description: str) -> None:
        self.description = description


def _worker_loop(dataset: Dataset[Any], collate_fn: CollateFn | None, tasks: Any, results: Any) -> None:
    """Body of a worker process: load the batches named in ``tasks`` until None.

    A sender thread writes each result to the ``results`` pipe as a header ``(number, ok, traceback
    text)`` then the batch or the exception, so that loading the next batch goes on while the main
    process has not read the last one yet (the whole prefetch window is loaded ahead).
    """
    import queue
    import threading

    outbox: queue.SimpleQueue[tuple[int, bool, str, Any] | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_results, args=(outbox, results), name="asg-data-sender")
    sender.start()
    try:
        while True:
            task = tasks.get()
            if task is None:
                return
            number, indices, rng_key = task
            try:
                outbox.put((number, True, "", _load_batch(dataset, indices, collate_fn, rng_key)))
            except Exception as error:
                outbox.put((number, False, "".join(traceback.format_exception(error)), error))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the main process reports it
        return
    finally:
        outbox.put(None)
        sender.join()


def _send_results(outbox: Any, results: Any) -> None:
    while (item := outbox.get()) is not None:
        number, ok, text, payload = item
        results.send((number, ok, text))
        try:
            results.send(payload)  # pickles the whole object before writing, so a failure writes nothing
        except Exception as error:
            what = "batch" if ok else f"{type(payload).__name__} exception"
            results.send(_Unsendable(f"could not pickle the {what} ({type(error).__name__}: {error})"))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its result pipe"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hints = {
            "SIGKILL": " (kill -9, or the system's out-of-memory killer)",
            "SIGSEGV": " (a crash in native code)",
        }
        return f"was killed by {name}{hints.get(name, '')}"
    if code == 1:
        return (
            "exited with code 1 (an uncaught exception in the worker, e.g. the dataset or collate_fn could "
            "not be unpickled there; its traceback is on stderr)"
        )
    return f"exited with code {code}"


class _ProcessPool:
    """``n`` worker processes, each with its own task queue and result pipe, so that a result is known
    to come from one worker and the batch it was given, and a worker that dies is seen at once (its
    process sentinel) with its exit code."""

    def __init__(self, n: int, context: str, dataset: Dataset[Any], collate_fn: CollateFn | None) -> None:
        import multiprocessing  # imported here: only process workers need it

        ctx = multiprocessing.get_context(context)
        self.tasks: list[Any] = []
        self.results: list[Any] = []
        self.processes: list[Any] = []
        try:
            for k in range(n):
                tasks = ctx.Queue()
                reader, writer = ctx.Pipe(duplex=False)
                process = ctx.Process(
                    target=_worker_loop,
                    args=(dataset, collate_fn, tasks, writer),
                    name=f"asg-data-worker-{k}",
                    daemon=True,
                )
                self.tasks.append(tasks)
                self.results.append(reader)
                self.processes.append(process)
                process.start()
                writer.close()  # the worker holds the only writer: its death is an EOF here
        except BaseException:
            self.shutdown(graceful=False)
            raise

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.processes)

    def run(
        self, batches: Iterator[Any], epoch: int, rng_key: Callable[[int, int], RngKey], prefetch: int
    ) -> Iterator[Any]:
        """Yield the batches in order; batch ``b`` goes to worker ``b % n``, at most ``prefetch`` per worker."""
        n = len(self.processes)
        outstanding: list[deque[tuple[int, np.ndarray]]] = [deque() for _ in range(n)]
        ready: dict[int, Any] = {}  # batch number -> (worker, indices, ok, traceback, payload) or WorkerError
        numbered = enumerate(batches)
        exhausted = False
        next_number = 0

        def fill() -> None:
            nonlocal exhausted
            while not exhausted and sum(map(len, outstanding)) + len(ready) < n * prefetch:
                item = next(numbered, None)
                if item is None:
                    exhausted = True
                    return
                number, indices = item
                idx = np.asarray(indices, dtype=np.int64)
                self.tasks[number % n].put((number, idx, rng_key(epoch, number)))
                outstanding[number % n].append((number, idx))

        fill()
        while True:
            if next_number not in ready:
                if not any(outstanding):
                    return
                self._collect(outstanding, ready, epoch)
                continue
            entry = ready.pop(next_number)
            if isinstance(entry, WorkerError):
                raise entry
            k, idx, ok, text, payload = entry
            where = _where(next_number, epoch, idx)
            pid = self.processes[k].pid
            if isinstance(payload, _Unsendable):
                raise WorkerError(
                    f"DataLoader worker {k} (pid {pid}) {payload.description} {where}; the batch and "
                    f"any exception must be picklable to leave a worker process"
                    + (f". The worker's exception:\n{text}" if text else "")
                )
            if not ok:
                payload.add_note(where)
                payload.add_note(f"raised in DataLoader worker {k} (pid {pid})")
                raise payload from _RemoteTraceback(text)
            next_number += 1
            fill()
            yield payload

    def _collect(
        self, outstanding: list[deque[tuple[int, np.ndarray]]], ready: dict[int, Any], epoch: int
    ) -> None:
        """Wait until a busy worker sends a result or dies, and move what came into ``ready``.

        A failure is stored in ``ready`` under the batch it concerns (for a dead worker, every batch it
        held), so that the batches before it are still delivered, in order, before it is raised.
        """
        from multiprocessing.connection import wait

        owner: dict[Any, int] = {}
        for k, queue in enumerate(outstanding):
            if queue:
                owner[self.results[k]] = k
                owner[self.processes[k].sentinel] = k
        for k in sorted({owner[obj] for obj in wait(list(owner))}):
            number, idx = outstanding[k][0]
            conn = self.results[k]
            try:
                if not conn.poll():  # the process ended and left nothing to read
                    raise EOFError
                got, ok, text = conn.recv()
                try:
                    payload = conn.recv()
                except (EOFError, OSError):
                    raise
                except Exception as error:  # the bytes arrived but cannot be unpickled here
                    failure = self._unpickling_failed(k, number, idx, epoch, ok, text, error)
                    failure.__cause__ = error
                    outstanding[k].popleft()
                    ready[number] = failure
                    continue
            except (EOFError, OSError):
                failure = self._died(k, number, idx, epoch)
                for lost, _ in outstanding[k]:
                    ready[lost] = failure
                outstanding[k].clear()
                continue
            if got != number:
                raise WorkerError(f"DataLoader worker {k} sent batch {got} while batch {number} was expected")
            outstanding[k].popleft()
            ready[number] = (k, idx, ok, text, payload)

    def _unpickling_failed(
        self, k: int, number: int, idx: np.ndarray, epoch: int, ok: bool, text: str, error: Exception
    ) -> WorkerError:
        what = "batch" if ok else "exception"
        message = (
            f"DataLoader worker {k} (pid {self.processes[k].pid}) sent its {what} {_where(number, epoch, idx)}, "
            f"but the main process could not unpickle it ({type(error).__name__}: {error})"
        )
        if not ok:
            message += (
                ". An exception class whose __init__ takes other arguments than its message cannot be "
                "rebuilt: pass them all to super().__init__, or define __reduce__. The exception raised "
                f"in the worker:\n{text}"
            )
        return WorkerError(message)

    def _died(self, k: int, number: int, idx: np.ndarray, epoch: int) -> WorkerError:
        process = self.processes[k]
        process.join(timeout=5)
        return WorkerError(
            f"DataLoader worker {k} (pid {process.pid}) {_describe_exit(process.exitcode)} "
            f"{_where(number, epoch, idx)}; its batches are lost and this epoch cannot go on. The next "
            f"epoch starts new worker processes"
        )

    def shutdown(self, graceful: bool = True) -> None:
        """Stop the workers: ask them to exit (``graceful``; up to 1 s) then terminate those still running."""
        if graceful:
            for tasks, process in zip(self.tasks, self.processes, strict=False):
                if process.is_alive():
                    tasks.put(None)
            for process in self.processes:
                if process.pid is not None:
                    process.join(timeout=1)
        for process in self.processes:
            if process.pid is not None and process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for tasks in self.tasks:
            tasks.cancel_join_thread()
            tasks.close()
        for conn in self.results:
            conn.close()
        self.processes, self.tasks, self.results = [], [], []


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
            and importable, and are sent to each worker once, when it starts). Process workers are
            kept from epoch to epoch; a worker that dies raises `WorkerError` naming the worker, its
            exit code or signal and the batch, and the next epoch starts new workers.
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
        self._process_pool: _ProcessPool | None = None
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
        if self.worker_type == "process":
            return self._iterate_with_processes(batches, epoch)
        return self._iterate_with_threads(batches, epoch)

    def _iterate_inline(self, batches: Iterator[Any], epoch: int) -> Iterator[Any]:
        for number, indices in enumerate(batches):
            idx = np.asarray(indices, dtype=np.int64)
            try:
                batch = _load_batch(self.dataset, idx, self.collate_fn, self._rng_key(epoch, number))
            except Exception as error:
                error.add_note(_where(number, epoch, idx))
                raise
            yield batch

    def _iterate_with_threads(self, batches: Iterator[Any], epoch: int) -> Iterator[Any]:
        executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="asg-data-loader")
        in_flight: deque[tuple[int, np.ndarray, Future]] = deque()
        limit = self.num_workers * self.prefetch_factor
        try:
            for number, indices in enumerate(batches):
                idx = np.asarray(indices, dtype=np.int64)
                future = executor.submit(
                    _load_batch, self.dataset, idx, self.collate_fn, self._rng_key(epoch, number)
                )
                in_flight.append((number, idx, future))
                if len(in_flight) >= limit:
                    yield _result(*in_flight.popleft(), epoch)
            while in_flight:
                yield _result(*in_flight.popleft(), epoch)
        finally:
            for _, _, future in in_flight:
                future.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    def _iterate_with_processes(self, batches: Iterator[Any], epoch: int) -> Iterator[Any]:
        pool = self._process_pool
        if pool is None or not pool.alive():  # first epoch, or a worker died since the last one
            self.close()
            pool = self._process_pool = _ProcessPool(
                self.num_workers, self.multiprocessing_context, self.dataset, self.collate_fn
            )
            self._finalizer = weakref.finalize(self, pool.shutdown)
        finished = False
        try:
            yield from pool.run(batches, epoch, self._rng_key, self.prefetch_factor)
            finished = True
        finally:
            if not finished:  # an error, or the caller stopped early: the next epoch gets new workers
                if self._finalizer is not None:
                    self._finalizer.detach()
                pool.shutdown(graceful=False)
                self._process_pool = self._finalizer = None

    def close(self) -> None:
        """Stop worker processes (thread workers stop by themselves at the end of each epoch).

        Process workers are kept from one epoch to the next; after an epoch that raised or was left
        early (or once a worker died), the next epoch starts new ones.
        """
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
