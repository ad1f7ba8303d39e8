"""`DistributedSampler`: each of ``num_replicas`` ranks gets a disjoint shard of the dataset.

As ``torch.utils.data.DistributedSampler``: one global order per epoch (a permutation that depends
only on ``(seed, epoch)``, not on the number of ranks), made a multiple of ``num_replicas`` by
repeating its first indices (``drop_last=False``) or by dropping its tail (``drop_last=True``);
rank ``r`` takes every ``num_replicas``-th index starting at ``r``. With a per-rank batch of B, the
ranks' k-th batches together are the global order's k-th run of ``B * num_replicas`` indices, which is
what one process with batch ``B * num_replicas`` sees: resuming on another number of ranks continues
the same data order. The sampler takes plain ints: it needs neither MPI nor asg-nn.

>>> [list(DistributedSampler(10, num_replicas=3, rank=r, shuffle=False)) for r in range(3)]
[[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]
>>> [list(DistributedSampler(10, num_replicas=3, rank=r, shuffle=False, drop_last=True)) for r in range(3)]
[[0, 3, 6], [1, 4, 7], [2, 5, 8]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np

from .datasets import dataset_length
from .samplers import Sampler, _base_seed

__all__ = ["DistributedSampler"]


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"DistributedSampler: {what} must be an int >= {minimum}, got {value!r}")
    return int(value)


class DistributedSampler(Sampler):
    """This rank's share of the indices of ``data_source``, reshuffled per epoch (``set_epoch``).

    Args:
        data_source: a sized dataset or its length.
        num_replicas: the number of ranks (``get_world_size()`` of asg.nn.parallel).
        rank: this rank, in ``[0, num_replicas)``.
        shuffle: a random global order per epoch (else 0..n-1).
        seed: the shuffling seed; every rank must pass the same one (default 0, as PyTorch).
        drop_last: drop the global order's tail instead of padding it, so no index appears twice.

    Every rank yields ``len(self)`` indices: ``ceil(n / num_replicas)`` when padding,
    ``n // num_replicas`` when dropping.

    >>> a = DistributedSampler(8, num_replicas=2, rank=0, seed=1)
    >>> b = DistributedSampler(8, num_replicas=2, rank=1, seed=1)
    >>> sorted(list(a) + list(b))
    [0, 1, 2, 3, 4, 5, 6, 7]
    """

    def __init__(
        self,
        data_source: Sized | int,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.length = dataset_length(data_source)
        self.num_replicas = _count(num_replicas, "num_replicas", 1)
        self.rank = _count(rank, "rank", 0)
        if self.rank >= self.num_replicas:
            raise ValueError(
                f"DistributedSampler: rank must be in [0, num_replicas), got rank={rank} with "
                f"num_replicas={num_replicas}"
            )
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = _base_seed(seed)
        if self.drop_last:
            self.num_samples = self.length // self.num_replicas
        else:
            self.num_samples = -(-self.length // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def global_indices(self) -> np.ndarray:
        """The epoch's order over all ranks (padded or cut to ``total_size``), and advance the epoch."""
        rng = self._next_epoch_generator(self.seed)
        order = rng.permutation(self.length) if self.shuffle else np.arange(self.length, dtype=np.int64)
        order = order.astype(np.int64)
        if self.drop_last or self.length == 0:
            return order[: self.total_size]
        reps = -(-self.total_size // self.length)
        return np.tile(order, reps)[: self.total_size]

    def indices(self) -> np.ndarray:
        """This rank's indices of the current epoch as an int64 array (and advance the epoch)."""
        return self.global_indices()[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
