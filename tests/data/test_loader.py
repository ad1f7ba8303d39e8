"""DataLoader (order, epochs, workers, fast path, errors) and samplers (orders and statistics)."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import numpy as np
import pytest

from asg.data import (
    BatchSampler,
    Compose,
    DataLoader,
    InMemoryDataset,
    MapDataset,
    RandomHorizontalFlip,
    RandomNoise,
    RandomSampler,
    SequentialSampler,
    ToFloat,
    WeightedRandomSampler,
)


def _labels(loader: DataLoader) -> list[list[int]]:
    return [np.asarray(batch[1]).tolist() for batch in loader]


def _dataset(n: int = 10) -> InMemoryDataset:
    return InMemoryDataset(np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n))


# ------------------------------------------------------------------------------------ order / length


@pytest.mark.parametrize("n", [1, 9, 10, 11])
@pytest.mark.parametrize("drop_last", [False, True])
def test_len_matches_the_batches_yielded(n: int, drop_last: bool) -> None:
    loader = DataLoader(_dataset(n), batch_size=5, shuffle=True, drop_last=drop_last, seed=0)
    batches = _labels(loader)
    expected = n // 5 if drop_last else -(-n // 5)
    assert len(loader) == expected == len(batches)
    assert all(len(b) == 5 for b in batches) if drop_last else sum(map(len, batches)) == n


def test_sequential_order_and_last_batch() -> None:
    loader = DataLoader(_dataset(7), batch_size=3)
    assert _labels(loader) == [[0, 1, 2], [3, 4, 5], [6]]
    images, labels = next(iter(loader))
    assert images.dtype == np.float32 and images.shape == (3, 2) and labels.dtype == np.int64
    assert _labels(DataLoader(_dataset(7), batch_size=3, drop_last=True)) == [[0, 1, 2], [3, 4, 5]]


def test_shuffle_is_seeded_and_changes_every_epoch() -> None:
    loader = DataLoader(_dataset(50), batch_size=8, shuffle=True, seed=123)
    epoch0, epoch1 = _labels(loader), _labels(loader)
    flat0 = [label for batch in epoch0 for label in batch]
    assert sorted(flat0) == list(range(50)) and flat0 != list(range(50))
    assert epoch0 != epoch1
    same_seed = DataLoader(_dataset(50), batch_size=8, shuffle=True, seed=123)
    assert _labels(same_seed) == epoch0 and _labels(same_seed) == epoch1
    loader.set_epoch(1)
    assert _labels(loader) == epoch1 and loader.epoch == 2
    assert _labels(DataLoader(_dataset(50), batch_size=8, shuffle=True, seed=124)) != epoch0


def test_unseeded_shuffle_still_differs_per_epoch() -> None:
    loader = DataLoader(_dataset(40), batch_size=40, shuffle=True)
    assert _labels(loader) != _labels(loader)


def _augmenting_dataset(n: int = 37) -> InMemoryDataset:
    images = np.arange(n * 2 * 3, dtype=np.uint8).reshape(n, 1, 2, 3)
    augment = Compose(
        [ToFloat(scale=1 / 255), RandomHorizontalFlip(p=0.5, seed=9), RandomNoise(std=0.1, seed=9)]
    )
    return InMemoryDataset(images, np.arange(n), transform=augment)


def _epochs(loader: DataLoader, count: int = 2) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    return [[(x.copy(), y.copy()) for x, y in loader] for _ in range(count)]


def _assert_same_epochs(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b, strict=True):
        assert len(epoch_a) == len(epoch_b)
        for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b, strict=True):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_array_equal(xa, xb)


@pytest.mark.parametrize("per_item", [False, True], ids=["get_batch", "per_item"])
def test_same_batches_and_augmentations_whatever_num_workers(per_item: bool) -> None:
    ds: Any = _augmenting_dataset()
    if per_item:
        ds = MapDataset(ds, lambda item: item)  # hides get_batch: item-by-item reading and collate
    reference = _epochs(DataLoader(ds, batch_size=5, shuffle=True, seed=7, num_workers=0))
    for workers in (1, 3):
        loader = DataLoader(ds, batch_size=5, shuffle=True, seed=7, num_workers=workers, prefetch_factor=2)
        _assert_same_epochs(_epochs(loader), reference)
    # The augmentation is really random: the same image comes out differently in the next epoch.
    first, second = (
        {int(label): x for xs, ys in epoch for x, label in zip(xs, ys, strict=True)} for epoch in reference
    )
    assert all(not np.array_equal(first[k], second[k]) for k in range(len(ds)))


def test_process_workers_give_the_same_batches() -> None:
    ds = _augmenting_dataset(23)
    reference = _epochs(DataLoader(ds, batch_size=4, shuffle=True, seed=3))
    with DataLoader(ds, batch_size=4, shuffle=True, seed=3, num_workers=2, worker_type="process") as loader:
        _assert_same_epochs(_epochs(loader), reference)
        assert loader._process_pool is not None  # kept between epochs
    assert loader._process_pool is None


def test_fast_path_equals_item_by_item_path() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 10, size=30)
    ds = InMemoryDataset(x, y, transform=ToFloat(scale=1 / 255))
    fast = list(DataLoader(ds, batch_size=7, shuffle=True, seed=1))
    slow = list(
        DataLoader(
            ds,
            batch_size=7,
            shuffle=True,
            seed=1,
            collate_fn=lambda items: tuple(np.stack(col) for col in zip(*items, strict=True)),
        )
    )
    for (fx, fy), (sx, sy) in zip(fast, slow, strict=True):
        assert fx.dtype == sx.dtype == np.float32
        np.testing.assert_array_equal(fx, sx)
        np.testing.assert_array_equal(fy, sy)


def test_get_batch_is_used_once_per_batch() -> None:
    calls: list[list[int]] = []

    class Recording(InMemoryDataset):
        def get_batch(self, indices: Any) -> Any:
            calls.append(np.asarray(indices).tolist())
            return super().get_batch(indices)

        def __getitem__(self, index: int) -> Any:
            raise AssertionError("the fast path must not read items one by one")

    list(DataLoader(Recording(np.arange(10)), batch_size=4))
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ------------------------------------------------------------------------------ collate / samplers


def test_dict_samples_and_custom_collate() -> None:
    samples = [{"x": np.full(3, k, np.float32), "y": k, "name": f"s{k}"} for k in range(5)]
    batches = list(DataLoader(samples, batch_size=2))
    assert batches[0]["x"].shape == (2, 3) and batches[2]["y"].tolist() == [4]
    assert batches[1]["name"] == ["s2", "s3"]
    summed = list(DataLoader(list(range(6)), batch_size=3, collate_fn=sum))
    assert summed == [3, 12]


def test_sampler_and_batch_sampler_arguments() -> None:
    ds = _dataset(6)
    assert _labels(DataLoader(ds, batch_size=2, sampler=[5, 4, 3, 2, 1, 0])) == [[5, 4], [3, 2], [1, 0]]
    loader = DataLoader(ds, batch_sampler=[[0, 5], [1], [2, 3, 4]])
    assert _labels(loader) == [[0, 5], [1], [2, 3, 4]] and len(loader) == 3
    weighted = DataLoader(ds, batch_size=4, sampler=WeightedRandomSampler([0, 0, 0, 0, 0, 1], 8, seed=0))
    assert _labels(weighted) == [[5] * 4, [5] * 4]


def test_argument_errors() -> None:
    ds = _dataset(4)
    with pytest.raises(ValueError, match="batch_sampler is mutually exclusive"):
        DataLoader(ds, batch_size=2, batch_sampler=[[0]])
    with pytest.raises(ValueError, match="sampler is mutually exclusive with shuffle"):
        DataLoader(ds, shuffle=True, sampler=[0])
    with pytest.raises(ValueError, match="num_workers must be a non-negative int"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="prefetch_factor must be >= 1"):
        DataLoader(ds, num_workers=1, prefetch_factor=0)
    with pytest.raises(ValueError, match="worker_type must be 'thread' or 'process'"):
        DataLoader(ds, worker_type="fiber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        DataLoader(ds, batch_size=0)


class _FailsAt:
    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> int:
        if index == self.bad:
            raise KeyError(f"item {index} is broken")
        return index


@pytest.mark.parametrize("workers", [0, 2])
def test_errors_name_the_batch_and_indices(workers: int) -> None:
    loader = DataLoader(_FailsAt(7), batch_size=3, num_workers=workers)
    seen = []
    with pytest.raises(KeyError, match="item 7 is broken") as info:
        for batch in loader:
            seen.append(batch.tolist())
    assert seen == [[0, 1, 2], [3, 4, 5]]
    assert "while loading batch 2 of epoch 0 (dataset indices [6, 7, 8])" in info.value.__notes__


def test_workers_load_ahead_while_the_caller_computes() -> None:
    started: list[int] = []
    lock = threading.Lock()

    class Slow:
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int) -> int:
            with lock:
                started.append(index)
            time.sleep(0.01)
            return index

    loader = DataLoader(Slow(), batch_size=1, num_workers=2, prefetch_factor=2)
    iterator = iter(loader)
    assert next(iterator).tolist() == [0]
    # While the caller "computes" on batch 0 (asks for nothing), the workers fill the prefetch window.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if {1, 2, 3} <= set(started):
                break
        time.sleep(0.01)
    with lock:
        assert {1, 2, 3} <= set(started), started
    assert [b.tolist() for b in iterator] == [[k] for k in range(1, 8)]


def test_breaking_out_early_stops_cleanly() -> None:
    loader = DataLoader(_dataset(100), batch_size=2, num_workers=2)
    for number, _ in enumerate(loader):
        if number == 3:
            break
    assert len(_labels(loader)) == 50


def test_repr() -> None:
    assert repr(DataLoader(_dataset(5), batch_size=2)) == (
        "DataLoader(dataset=InMemoryDataset[5], batches=3, batch_size=2, num_workers=0, worker_type='thread')"
    )


# -------------------------------------------------------------------------------------------- samplers


def test_sequential_and_random_sampler() -> None:
    assert list(SequentialSampler(_dataset(4))) == [0, 1, 2, 3] and len(SequentialSampler(4)) == 4
    perm = list(RandomSampler(100, seed=0))
    assert sorted(perm) == list(range(100)) and perm != list(range(100))
    assert list(RandomSampler(0)) == []


def test_random_sampler_with_replacement_and_num_samples() -> None:
    drawn = np.array(list(RandomSampler(5, replacement=True, num_samples=5000, seed=1)))
    assert len(drawn) == 5000 and drawn.min() == 0 and drawn.max() == 4
    assert np.abs(np.bincount(drawn) / 5000 - 0.2).max() < 0.03
    assert len(np.unique(drawn[:10])) < 10  # repeats happen with replacement
    chained = list(RandomSampler(4, num_samples=10, seed=2))
    assert sorted(chained[:4]) == [0, 1, 2, 3] and sorted(chained[4:8]) == [0, 1, 2, 3] and len(chained) == 10
    short = list(RandomSampler(10, num_samples=3, seed=2))
    assert len(set(short)) == 3


def test_random_sampler_epochs() -> None:
    sampler = RandomSampler(20, seed=5)
    a, b = list(sampler), list(sampler)
    assert a != b and sampler.epoch == 2
    sampler.set_epoch(0)
    assert list(sampler) == a


def test_weighted_sampler_frequencies() -> None:
    weights = np.array([1.0, 2.0, 0.0, 7.0])
    n = 20_000
    drawn = np.array(list(WeightedRandomSampler(weights, num_samples=n, seed=0)))
    freq = np.bincount(drawn, minlength=4) / n
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.015)
    assert freq[2] == 0
    without = list(WeightedRandomSampler([1, 1, 1, 5], num_samples=4, replacement=False, seed=0))
    assert sorted(without) == [0, 1, 2, 3]


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match="finite and non-negative"):
        WeightedRandomSampler([1.0, -1.0], 2)
    with pytest.raises(ValueError, match="must not all be zero"):
        WeightedRandomSampler([0.0, 0.0], 2)
    with pytest.raises(ValueError, match="cannot draw 3 samples without replacement from 2 items"):
        WeightedRandomSampler([1.0, 0.0, 1.0], 3, replacement=False)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        RandomSampler(3, num_samples=0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        RandomSampler(3, seed=-1)
    with pytest.raises(ValueError, match="cannot draw samples from an empty dataset"):
        RandomSampler(0, replacement=True)


def test_batch_sampler() -> None:
    batches = [b.tolist() for b in BatchSampler(range(7), batch_size=3)]
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(BatchSampler(range(7), 3)) == 3 and len(BatchSampler(range(7), 3, drop_last=True)) == 2
    inner = RandomSampler(9, seed=0)
    batch_sampler = BatchSampler(inner, batch_size=9)
    batch_sampler.set_epoch(4)
    assert inner.epoch == 4
    first = next(iter(batch_sampler)).tolist()
    inner.set_epoch(4)
    assert list(inner) == first


# ------------------------------------------------------------------------------ process workers: failures

# Spawned workers import a dataset's class by module name, so the datasets of these tests live in a
# module on sys.path (a test module imported by pytest's importlib mode is not importable by name).
_WORKER_HELPERS = '''
import os
import signal
import re
import threading


class DiesOnce:
    """Reading item 5 ends the worker process (os._exit(3) or SIGKILL), the first time only."""

    def __init__(self, flag, how):
        self.flag, self.how = flag, how

    def __len__(self):
        return 12

    def __getitem__(self, index):
        if index == 5 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            if self.how == "exit":
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
        return index


class TwoArgumentError(Exception):
    """Pickles, but cannot be unpickled: BaseException.__reduce__ gives only the message to __init__."""

    def __init__(self, item, reason):
        super().__init__(f"item {item}: {reason}")


class RaisesOnce:
    """Reading item 5 raises `kind` the first time."""

    def __init__(self, flag, kind):
        self.flag, self.kind = flag, kind

    def __len__(self):
        return 12

    def __getitem__(self, index):
        if index == 5 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            if self.kind == "unpicklable":
                raise TwoArgumentError(index, "broken")
            raise KeyError(f"item {index} is broken")
        return index


class Locks:
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return threading.Lock()


def keep_list(items):
    return items


class BigItems:
    """400 kB items (more than a pipe holds); reading item i first creates the file started-i."""

    def __init__(self, directory):
        self.directory = directory

    def __len__(self):
        return 8

    def __getitem__(self, index):
        open(os.path.join(self.directory, f"started-{index}"), "w").close()
        import numpy as np

        return np.full(100_000, index, np.float32)
'''


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import importlib
    import sys

    directory = tmp_path_factory.mktemp("worker_helpers")
    (directory / "asg_data_worker_helpers.py").write_text(_WORKER_HELPERS)
    sys.path.insert(0, str(directory))
    try:
        yield importlib.import_module("asg_data_worker_helpers")
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("asg_data_worker_helpers", None)


def _process_loader(dataset: Any, **kwargs: Any) -> DataLoader:
    return DataLoader(dataset, batch_size=4, num_workers=2, worker_type="process", **kwargs)


@pytest.mark.parametrize(
    ("how", "message"), [("exit", "exited with code 3"), ("kill", "was killed by SIGKILL")]
)
def test_a_dead_worker_is_reported_and_the_next_epoch_gets_new_workers(
    helpers: Any, tmp_path: Any, how: str, message: str
) -> None:
    from asg.data import WorkerError

    with _process_loader(helpers.DiesOnce(str(tmp_path / "flag"), how)) as loader:
        seen = []
        with pytest.raises(WorkerError) as info:
            for batch in loader:
                seen.append(batch.tolist())
        assert seen == [[0, 1, 2, 3]]
        # Batch 1 went to worker 1 (round robin); the message names it, its exit and the batch.
        assert re.fullmatch(
            rf"DataLoader worker 1 \(pid \d+\) {message}.* while loading batch 1 of epoch 0 "
            r"\(dataset indices \[4, 5, 6, 7\]\); its batches are lost and this epoch cannot go on\. "
            r"The next epoch starts new worker processes",
            str(info.value),
        ), str(info.value)
        assert "terminated abruptly" not in str(info.value)
        assert loader._process_pool is None
        # The next epochs run on new workers, whole; the pool is then kept.
        assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
        pool = loader._process_pool
        assert pool is not None and pool.alive()
        assert [b.tolist() for b in loader][1] == [4, 5, 6, 7]
        assert loader._process_pool is pool


def test_an_exception_that_cannot_be_unpickled_is_reported_with_its_message(
    helpers: Any, tmp_path: Any
) -> None:
    from asg.data import WorkerError

    with _process_loader(helpers.RaisesOnce(str(tmp_path / "flag"), "unpicklable")) as loader:
        with pytest.raises(WorkerError) as info:
            list(loader)
        text = str(info.value)
        assert re.match(
            r"DataLoader worker 1 \(pid \d+\) sent its exception while loading batch 1 of epoch 0 "
            r"\(dataset indices \[4, 5, 6, 7\]\), but the main process could not unpickle it \(TypeError: ",
            text,
        ), text
        assert "TwoArgumentError: item 5: broken" in text  # the worker's own traceback
        assert "pass them all to super().__init__" in text
        assert "terminated abruptly" not in text
        assert [b.tolist() for b in loader][1] == [4, 5, 6, 7]


def test_a_picklable_worker_exception_keeps_its_type_and_the_loader_recovers(
    helpers: Any, tmp_path: Any
) -> None:
    with _process_loader(helpers.RaisesOnce(str(tmp_path / "flag"), "key")) as loader:
        with pytest.raises(KeyError, match="item 5 is broken") as info:
            list(loader)
        assert "while loading batch 1 of epoch 0 (dataset indices [4, 5, 6, 7])" in info.value.__notes__
        assert re.fullmatch(r"raised in DataLoader worker 1 \(pid \d+\)", info.value.__notes__[1])
        assert "item 5 is broken" in str(info.value.__cause__)  # the worker's traceback
        assert len(list(loader)) == 3


def test_a_batch_that_cannot_be_pickled_names_the_worker_and_batch(helpers: Any) -> None:
    from asg.data import WorkerError

    with (
        _process_loader(helpers.Locks(), collate_fn=helpers.keep_list) as loader,
        pytest.raises(
            WorkerError,
            match=r"DataLoader worker 0 \(pid \d+\) could not pickle the batch \(TypeError: cannot pickle "
            r"'_thread.lock' object\) while loading batch 0 of epoch 0 \(dataset indices \[0, 1, 2, 3\]\)",
        ),
    ):
        list(loader)


def test_process_workers_fill_the_prefetch_window_while_the_caller_computes(
    helpers: Any, tmp_path: Any
) -> None:
    loader = DataLoader(helpers.BigItems(str(tmp_path)), batch_size=1, num_workers=2, worker_type="process")
    with loader:
        iterator = iter(loader)
        assert next(iterator)[0, 0] == 0
        # While the caller "computes", batches 1..4 (2 workers x prefetch_factor 2) are all loaded, even
        # though a worker's finished batch does not fit in its pipe until the caller reads it.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = {int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")}
            if {1, 2, 3, 4} <= started:
                break
            time.sleep(0.01)
        assert {1, 2, 3, 4} <= started, started
        assert [int(b[0, 0]) for b in iterator] == list(range(1, 8))
