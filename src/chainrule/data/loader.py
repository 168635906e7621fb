"""DataLoader: batches of tensors from a dataset, shuffled each epoch."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..tensor import Tensor
from ._common import SeedLike, as_array, check_seed, global_generator, wrap
from .dataset import Dataset, TensorDataset, _has_gather

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate over a dataset in (optionally shuffled) mini-batches of Tensors.

    Parameters
    ----------
    data : Dataset or tuple of arrays
        A :class:`Dataset`, or a tuple ``(X, y)`` (any number of aligned
        arrays or Tensors with the same first dimension ``n``).
    batch_size : int or None, default 32
        Samples per batch. ``None`` means one batch holding the whole dataset:
        plain (full-batch) gradient descent.
    shuffle : bool, optional
        Draw a new random order at the start of every epoch (the default,
        unless a ``sampler`` is given).
    seed : int, numpy Generator or None
        With an int, epoch ``k`` uses a generator derived from ``(seed, k)``:
        the order is reproducible and differs between epochs. A Generator is
        advanced once per epoch. ``None`` uses chainrule's global generator
        (``chainrule.random``) when present, else NumPy's fresh entropy.
    drop_last : bool, default False
        Drop the final batch when it is smaller than ``batch_size``.
    sampler : iterable of int, optional
        Yields the indices to batch, in order, each epoch (e.g. a
        ``chainrule.distributed.DistributedSampler``: this rank's shard).
        It decides the order, so it cannot be combined with
        ``shuffle=True``; :meth:`set_epoch` is passed on to it.

    Each iteration yields a tuple of :class:`~chainrule.Tensor` (one per array):
    ``X`` of shape ``(batch, ...)`` keeps its dtype (float32 stays float32,
    float64 stays float64) and integer labels stay integer.

    Example
    -------
    >>> X = np.random.rand(100, 4).astype(np.float32); y = np.arange(100) % 3
    >>> loader = DataLoader((X, y), batch_size=32, seed=0)
    >>> len(loader)
    4
    >>> for xb, yb in loader:
    ...     xb.shape, yb.dtype      # (32, 4) float32, int64; the last batch is (4, 4)
    """

    def __init__(
        self,
        data: Dataset | tuple[Any, ...] | list[Any],
        batch_size: int | None = 32,
        shuffle: bool | None = None,
        seed: SeedLike = None,
        drop_last: bool = False,
        sampler: Any = None,
    ) -> None:
        if isinstance(data, (tuple, list)):
            data = TensorDataset(*data)
        elif isinstance(data, (np.ndarray, Tensor)):
            data = TensorDataset(data)
        elif not isinstance(data, Dataset) and not (
            hasattr(data, "__len__") and hasattr(data, "__getitem__")
        ):
            raise TypeError(
                "DataLoader: expected a Dataset or a tuple of arrays (X, y), got "
                f"{type(data).__name__}"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size <= 0
        ):
            raise ValueError(
                f"DataLoader: batch_size must be a positive int, or None for one full "
                f"batch, got {batch_size!r}"
            )
        check_seed(seed, "DataLoader")
        if sampler is not None and shuffle:
            raise ValueError(
                "DataLoader: sampler and shuffle=True cannot be combined: the sampler decides "
                "the order (DistributedSampler shuffles by itself)"
            )
        self.dataset = data
        self.sampler = sampler
        self.batch_size = None if batch_size is None else int(batch_size)
        self.shuffle = sampler is None if shuffle is None else bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.epoch = 0  # counts started iterations; picks epoch k's order
        self._fast = _has_gather(data)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        if n == 0:
            return 0
        if self.batch_size is None:
            return 1
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use epoch ``epoch``'s order (int seeds, samplers)."""
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def _order(self) -> np.ndarray:
        if self.sampler is not None:
            if hasattr(self.sampler, "indices"):
                return np.asarray(self.sampler.indices(), dtype=np.int64)
            return np.fromiter(iter(self.sampler), dtype=np.int64)
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        if self.seed is None:
            rng = global_generator()
        elif isinstance(self.seed, np.random.Generator):
            rng = self.seed
        else:
            # Seed each epoch from (seed, epoch): reproducible, distinct per
            # epoch, and independent of how many epochs ran before.
            rng = np.random.default_rng([int(self.seed), self.epoch])
        return rng.permutation(n)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = self._order()
        self.epoch += 1
        n = order.shape[0]
        size = n if self.batch_size is None else self.batch_size
        stop = n - n % size if (self.drop_last and size) else n
        for start in range(0, stop, max(size, 1)):
            idx = order[start:start + size]
            if self._fast:
                fields = self.dataset._gather(idx)  # type: ignore[attr-defined]  # _fast: it has one
            else:
                fields = _collate([self.dataset[int(i)] for i in idx])
            yield tuple(wrap(np.ascontiguousarray(f)) for f in fields)

    def __repr__(self) -> str:
        return (
            f"DataLoader(n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, batches={len(self)})"
        )


def _collate(samples: list[Any]) -> tuple[np.ndarray, ...]:
    """Stack per-sample fields into batch arrays (the slow, generic path)."""
    first = samples[0]
    if not isinstance(first, (tuple, list)):
        return (_stack([s for s in samples]),)
    width = len(first)
    for s in samples:
        if not isinstance(s, (tuple, list)) or len(s) != width:
            raise ValueError(
                f"DataLoader: samples must all be tuples of {width} fields; got {s!r}"
            )
    return tuple(_stack([s[k] for s in samples]) for k in range(width))


def _stack(values: list[Any]) -> np.ndarray:
    if all(isinstance(v, (np.ndarray, np.generic, Tensor)) for v in values):
        # Arrays and NumPy scalars keep their dtype.
        return np.stack([v.data if isinstance(v, Tensor) else np.asarray(v) for v in values])
    return as_array(values)  # Python numbers: floats become float32, ints int64
