"""DistributedSampler: disjoint shards that cover the data, one global order whatever the rank count."""

import re

import numpy as np
import pytest

from asg.data import DataLoader, DistributedSampler, InMemoryDataset


def shards(n, replicas, **kw):
    return [np.array(list(DistributedSampler(n, replicas, r, **kw))) for r in range(replicas)]


@pytest.mark.parametrize("n", [1, 7, 12, 13])
@pytest.mark.parametrize("replicas", [1, 2, 3, 5])
def test_padded_shards_cover_the_data_and_repeat_only_the_padding(n, replicas):
    parts = shards(n, replicas, seed=3)
    size = -(-n // replicas)
    assert [len(p) for p in parts] == [size] * replicas
    everything = np.concatenate(parts)
    assert set(everything.tolist()) == set(range(n))
    assert len(everything) - len(set(everything.tolist())) == size * replicas - n


@pytest.mark.parametrize("n", [7, 12, 13])
@pytest.mark.parametrize("replicas", [2, 3, 5])
def test_drop_last_shards_are_disjoint(n, replicas):
    parts = shards(n, replicas, seed=3, drop_last=True)
    assert [len(p) for p in parts] == [n // replicas] * replicas
    everything = np.concatenate(parts)
    assert len(set(everything.tolist())) == len(everything) == n // replicas * replicas


def test_the_global_order_does_not_depend_on_the_number_of_ranks():
    """Interleaving the shards rebuilds the one-rank order: rank r has positions r, r+R, r+2R ..."""
    single = np.array(list(DistributedSampler(24, 1, 0, seed=5)))
    assert sorted(single.tolist()) == list(range(24)) and single.tolist() != list(range(24))
    for replicas in (2, 3, 4, 6):
        parts = shards(24, replicas, seed=5)
        rebuilt = np.stack(parts, axis=1).reshape(-1)
        np.testing.assert_array_equal(rebuilt, single)
        # The k-th batches of B per rank together are the k-th run of B * R of the global order.
        b = 2
        for k in range(24 // (b * replicas)):
            union = sorted(np.concatenate([p[k * b : (k + 1) * b] for p in parts]).tolist())
            assert union == sorted(single[k * b * replicas : (k + 1) * b * replicas].tolist())


def test_reproducible_per_seed_and_epoch():
    a = DistributedSampler(50, 2, 1, seed=7)
    first, second = list(a), list(a)  # iterating advances the epoch
    assert first != second
    a.set_epoch(0)
    assert list(a) == first
    b = DistributedSampler(50, 2, 1, seed=7)
    b.set_epoch(1)
    assert list(b) == second
    assert list(DistributedSampler(50, 2, 1, seed=8)) != first


@pytest.mark.torch
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("n", "replicas"), [(10, 3), (12, 4), (5, 4), (3, 5)])
def test_unshuffled_shards_equal_torch(n, replicas, drop_last):
    torch_data = pytest.importorskip("torch.utils.data")
    for r in range(replicas):
        ours = list(DistributedSampler(n, replicas, r, shuffle=False, drop_last=drop_last))
        theirs = list(
            torch_data.DistributedSampler(
                range(n), num_replicas=replicas, rank=r, shuffle=False, drop_last=drop_last
            )
        )
        assert ours == theirs, (r, ours, theirs)


def test_a_data_loader_sets_the_epoch():
    data = InMemoryDataset(np.arange(20, dtype=np.float32))
    sampler = DistributedSampler(data, num_replicas=2, rank=1, seed=2)
    loader = DataLoader(data, batch_size=5, sampler=sampler)
    epochs = [np.concatenate([np.asarray(b) for b in loader]) for _ in range(2)]
    for epoch, seen in enumerate(epochs):
        expected = DistributedSampler(20, 2, 1, seed=2)
        expected.set_epoch(epoch)
        np.testing.assert_array_equal(seen, np.array(list(expected), np.float32))
    assert epochs[0].tolist() != epochs[1].tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_replicas=2, rank=2), "rank must be in [0, num_replicas), got rank=2 with num_replicas=2"),
        (dict(num_replicas=0, rank=0), "num_replicas must be an int >= 1, got 0"),
        (dict(num_replicas=2, rank=-1), "rank must be an int >= 0, got -1"),
    ],
)
def test_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(f"DistributedSampler: {message}")):
        DistributedSampler(10, **kwargs)
