"""DistributedSampler: each rank's share of a dataset, reshuffled every epoch."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["DistributedSampler"]


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"DistributedSampler: {name} must be an int, got {value!r}")
    return int(value)


class DistributedSampler:
    """The indices of one rank's shard of ``dataset`` (PyTorch's sampler, NumPy's generator).

    Every epoch all ranks draw the same permutation of ``0 .. n-1`` (from
    ``(seed, epoch)``), pad it by repeating its first indices until its length
    is a multiple of ``num_replicas`` (or, with ``drop_last``, cut it down to
    one), and rank ``r`` takes every ``num_replicas``-th index starting at
    ``r``. So the shards are disjoint apart from the padding, cover the
    dataset, and all have ``len(sampler)`` indices: every rank runs the same
    number of steps, which synchronous training needs.

    The permutation is the one ``DataLoader((X, y), seed=seed)`` draws for the
    same epoch, and taking every ``num_replicas``-th index keeps batches
    aligned: with a per-rank batch of ``B / num_replicas``, step ``k`` of all
    ranks together sees exactly the ``B`` samples of step ``k`` of a single
    process with batch ``B`` (apart from padding in the last step).

    Parameters
    ----------
    dataset : sized
        Anything with ``len()``.
    num_replicas : int, optional
        Number of ranks (default: :func:`world_size`).
    rank : int, optional
        This rank (default: :func:`rank`).
    shuffle : bool, default True
        A new permutation every epoch; False keeps the order 0 .. n-1.
    seed : int, default 0
        Must be the same on every rank.
    drop_last : bool, default False
        Drop the tail that does not divide evenly instead of padding.

    Call :meth:`set_epoch` at the start of every epoch (``DataLoader.set_epoch``
    and ``fit`` do it for you), or every epoch reuses the first one's order.

    >>> s = DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=False)
    >>> list(s)                       # 10 padded to 12: [0..9, 0, 1]
    [1, 4, 7, 0]
    >>> loader = cr.data.DataLoader((X, y), batch_size=32, sampler=s)
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None or rank is None:
            from . import comm

            num_replicas = comm.world_size() if num_replicas is None else num_replicas
            rank = comm.rank() if rank is None else rank
        num_replicas = _check_int(num_replicas, "num_replicas")
        rank = _check_int(rank, "rank")
        if num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: invalid rank {rank}; it must be in "
                             f"[0, {num_replicas - 1}] for num_replicas={num_replicas}")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = bool(shuffle)
        self.seed = _check_int(seed, "seed")
        self.drop_last = bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % num_replicas:
            # the largest size that every rank can have without padding
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        order = order.astype(np.int64, copy=False)
        if self.total_size > n and n > 0:
            # pad with the first indices (repeated as often as needed), as PyTorch does
            reps = math.ceil((self.total_size - n) / n)
            order = np.concatenate([order, np.tile(order, reps)[: self.total_size - n]])
        else:
            order = order[: self.total_size]
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s permutation from now on (the same on every rank)."""
        self.epoch = _check_int(epoch, "epoch")

    def __repr__(self) -> str:
        return (f"DistributedSampler(n={len(self.dataset)}, num_replicas={self.num_replicas}, "
                f"rank={self.rank}, shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_last={self.drop_last}, num_samples={self.num_samples})")
