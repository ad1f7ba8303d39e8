"""Datasets, splits and the default collate."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest

from asg.data import (
    ConcatDataset,
    Dataset,
    InMemoryDataset,
    MapDataset,
    SubsetDataset,
    ToFloat,
    default_collate,
    random_split,
    train_test_split,
)

# ----------------------------------------------------------------------------------- InMemoryDataset


def test_in_memory_items_single_and_tuple() -> None:
    x = np.arange(12).reshape(4, 3)
    y = np.array([5, 6, 7, 8])
    single = InMemoryDataset(x)
    np.testing.assert_array_equal(single[1], [3, 4, 5])
    pair = InMemoryDataset(x, y)
    features, label = pair[-1]
    assert features.tolist() == [9, 10, 11] and int(label) == 8
    assert len(pair) == 4 and isinstance(pair, Dataset)
    assert repr(pair) == "InMemoryDataset(int64[4, 3], int64[4])"


def test_in_memory_index_errors() -> None:
    ds = InMemoryDataset(np.zeros((3, 2)))
    with pytest.raises(IndexError, match="InMemoryDataset index 3 is out of range for length 3"):
        ds[3]
    with pytest.raises(IndexError, match="index -4 is out of range"):
        ds[-4]
    with pytest.raises(TypeError, match="index must be an integer, got float"):
        ds[1.0]  # type: ignore[index]
    with pytest.raises(IndexError, match="index 7 is out of range for length 3"):
        ds.get_batch([0, 7])
    with pytest.raises(TypeError, match="indices must be integers"):
        ds.get_batch(np.array([0.0, 1.0]))


def test_in_memory_construction_errors() -> None:
    with pytest.raises(ValueError, match="same length, got lengths \\[3, 2\\]"):
        InMemoryDataset(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="at least one array"):
        InMemoryDataset()
    with pytest.raises(ValueError, match="array 1 is a scalar"):
        InMemoryDataset(np.zeros(3), np.float32(1))
    with pytest.raises(ValueError, match="target_transform needs a second array"):
        InMemoryDataset(np.zeros(3), target_transform=lambda t: t)


def test_in_memory_get_batch_matches_item_by_item_collate() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 2, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=20)
    w = rng.normal(size=20).astype(np.float32)
    ds = InMemoryDataset(x, y, w, transform=ToFloat(scale=1 / 255), target_transform=lambda t: t * 2)
    idx = np.array([19, 0, 7, 7, -1])
    fast = ds.get_batch(idx)
    slow = default_collate([ds[int(i)] for i in idx])
    assert len(fast) == 3
    for a, b in zip(fast, slow, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fast[0], x[idx].astype(np.float32) / 255, rtol=1e-6)
    assert fast[1].tolist() == (y[idx] * 2).tolist()


def test_in_memory_transform_is_applied_lazily_per_item() -> None:
    calls = []
    ds = InMemoryDataset(np.arange(5), transform=lambda v: calls.append(int(v)) or v)
    ds[3]
    assert calls == [3]


# -------------------------------------------------------------------------------- Map / Concat / Subset


def test_map_dataset_is_lazy() -> None:
    calls = []

    def double(v: int) -> int:
        calls.append(v)
        return 2 * v

    ds = MapDataset([1, 2, 3], double)
    assert calls == [] and len(ds) == 3
    assert ds[2] == 6 and ds[-3] == 2 and calls == [3, 1]
    with pytest.raises(TypeError, match="fn must be callable"):
        MapDataset([1], 3)  # type: ignore[arg-type]


def test_concat_dataset_boundaries() -> None:
    ds = ConcatDataset([[0, 1], [], [2], [3, 4, 5]])
    assert len(ds) == 6 and [ds[i] for i in range(6)] == [0, 1, 2, 3, 4, 5]
    assert ds[-6] == 0 and ds.cumulative_sizes == [2, 2, 3, 6]
    with pytest.raises(IndexError, match="ConcatDataset index 6 is out of range for length 6"):
        ds[6]
    with pytest.raises(ValueError, match="at least one dataset"):
        ConcatDataset([])


def test_subset_dataset_and_its_batch_path() -> None:
    parent = InMemoryDataset(np.arange(10) * 10, np.arange(10))
    subset = SubsetDataset(parent, [9, -1, 2])  # -1 means the last item, like a list
    assert len(subset) == 3 and subset.indices.tolist() == [9, 9, 2]
    assert int(subset[2][0]) == 20
    values, labels = subset.get_batch([2, 0])
    assert values.tolist() == [20, 90] and labels.tolist() == [2, 9]
    from_list = SubsetDataset([{"a": 1}, {"a": 2}, {"a": 3}], [2, 0])  # parent without get_batch
    assert from_list.get_batch([0, 1])["a"].tolist() == [3, 1]
    with pytest.raises(IndexError, match="SubsetDataset index 10 is out of range for length 10"):
        SubsetDataset(parent, [10])


# ------------------------------------------------------------------------------------------- splits


def test_train_test_split_arrays() -> None:
    x = np.arange(50).reshape(25, 2)
    y = np.arange(25)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, seed=1)
    assert len(x_test) == 5 and len(x_train) == 20
    np.testing.assert_array_equal(x_train[:, 0] // 2, y_train)  # rows stay paired
    np.testing.assert_array_equal(x_test[:, 0] // 2, y_test)
    assert sorted(np.concatenate([y_train, y_test]).tolist()) == list(range(25))
    again = train_test_split(x, y, test_size=0.2, seed=1)
    np.testing.assert_array_equal(again[3], y_test)
    other = train_test_split(x, y, test_size=0.2, seed=2)
    assert other[3].tolist() != y_test.tolist()
    # Fractions round the test part up; counts are exact.
    assert len(train_test_split(y, test_size=0.21)[1]) == 6
    assert len(train_test_split(y, test_size=3)[1]) == 3


def test_train_test_split_without_shuffle_keeps_order() -> None:
    train, test = train_test_split(np.arange(10), test_size=3, shuffle=False)
    assert train.tolist() == list(range(7)) and test.tolist() == [7, 8, 9]


def test_train_test_split_stratified_keeps_proportions() -> None:
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    x = np.arange(100)
    for seed in range(5):
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, seed=seed, stratify=y)
        assert np.bincount(y_test).tolist() == [12, 6, 2]
        assert np.bincount(y_train).tolist() == [48, 24, 8]
        np.testing.assert_array_equal(y[x_test], y_test)
        assert len(set(x_train.tolist()) | set(x_test.tolist())) == 100


def test_train_test_split_stratified_uneven_counts_total_is_exact() -> None:
    y = np.array([0] * 7 + [1] * 5 + [2] * 3)
    _, y_test = train_test_split(y, test_size=4, seed=0, stratify=y)
    counts = np.bincount(y_test, minlength=3)
    assert counts.sum() == 4 and counts[0] == 2  # 7*4/15 = 1.87 -> 2; the others share the rest
    assert all(c <= n - 1 for c, n in zip(counts, (7, 5, 3), strict=True))


def test_train_test_split_errors() -> None:
    with pytest.raises(ValueError, match="class 3 has only 1 member"):
        train_test_split(np.arange(5), test_size=2, stratify=[1, 1, 2, 2, 3])
    with pytest.raises(ValueError, match="input 0 has 3, input 1 has 2"):
        train_test_split(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"as a fraction must be in \(0, 1\), got 1.5"):
        train_test_split(np.zeros(3), test_size=1.5)
    with pytest.raises(ValueError, match="test_size=3 must leave both parts non-empty"):
        train_test_split(np.zeros(3), test_size=3)
    with pytest.raises(ValueError, match="one label per item \\(3\\)"):
        train_test_split(np.zeros(3), stratify=[0, 1])
    with pytest.raises(ValueError, match="stratified splitting needs shuffle=True"):
        train_test_split(np.zeros(4), stratify=[0, 0, 1, 1], shuffle=False)


def test_train_test_split_of_a_dataset_gives_subsets() -> None:
    ds = InMemoryDataset(np.arange(10))
    train, test = train_test_split(ds, test_size=0.3, seed=0)
    assert isinstance(train, SubsetDataset) and (len(train), len(test)) == (7, 3)
    assert sorted([int(train[i]) for i in range(7)] + [int(test[i]) for i in range(3)]) == list(range(10))


def test_random_split_counts_fractions_and_errors() -> None:
    parts = random_split(list(range(11)), [0.5, 0.3, 0.2], seed=0)
    assert [len(p) for p in parts] == [6, 3, 2]  # floor 5, 3, 2 then the leftover one goes first
    items = sorted(v for p in parts for v in (p[i] for i in range(len(p))))
    assert items == list(range(11))
    a, _ = random_split(list(range(10)), [7, 3], seed=4)
    a2, _ = random_split(list(range(10)), [7, 3], seed=4)
    assert a.indices.tolist() == a2.indices.tolist()
    with pytest.raises(ValueError, match="must be non-negative and sum to 10"):
        random_split(list(range(10)), [5, 4])
    with pytest.raises(ValueError, match=r"fractions .* sum to 1"):
        random_split(list(range(10)), [0.5, 0.4])


# ------------------------------------------------------------------------------------------- collate


def test_collate_arrays_numbers_and_strings() -> None:
    arrays = default_collate([np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)])
    assert arrays.shape == (2, 2, 3) and arrays.dtype == np.float32
    ints = default_collate([1, 2, 3])
    assert ints.dtype == np.int64 and ints.tolist() == [1, 2, 3]
    assert default_collate([0.5, 1.5]).dtype == np.float64
    assert default_collate([np.uint8(3), np.uint8(4)]).dtype == np.uint8
    assert default_collate([True, False]).dtype == bool
    assert default_collate(["a", "b"]) == ["a", "b"]


def test_collate_nested_structures() -> None:
    Pair = namedtuple("Pair", ["image", "label"])
    samples = [{"pair": Pair(np.full(2, k), k), "meta": [k, f"id{k}"], "name": f"n{k}"} for k in range(3)]
    batch = default_collate(samples)
    assert set(batch) == {"pair", "meta", "name"}
    assert isinstance(batch["pair"], Pair)
    assert batch["pair"].image.shape == (3, 2) and batch["pair"].label.tolist() == [0, 1, 2]
    assert isinstance(batch["meta"], list) and batch["meta"][0].tolist() == [0, 1, 2]
    assert batch["meta"][1] == ["id0", "id1", "id2"] and batch["name"] == ["n0", "n1", "n2"]
    tup = default_collate([(np.zeros(1), 1), (np.ones(1), 2)])
    assert isinstance(tup, tuple) and tup[0].shape == (2, 1)


def test_collate_errors() -> None:
    with pytest.raises(ValueError, match="different shapes \\[\\(2,\\), \\(3,\\)\\]"):
        default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match="must share the keys"):
        default_collate([{"a": 1}, {"b": 2}])
    with pytest.raises(ValueError, match="must all have length 2"):
        default_collate([(1, 2), (1,)])
    with pytest.raises(TypeError, match="does not know how to batch object"):
        default_collate([object(), object()])
    with pytest.raises(ValueError, match="empty list"):
        default_collate([])


# ----------------------------------------------------------------------------- import hygiene


def test_importing_asg_data_pulls_in_no_gpu_viewer_or_optional_code() -> None:
    code = (
        "import sys, asg.data\n"
        "heavy = ('asg.gpu', 'asg.viz', 'wgpu', 'pyqtgraph', 'PIL', 'multiprocessing', 'torch')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
