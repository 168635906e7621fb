"""Datasets: indexable collections of samples, and ways to split them."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import SeedLike, as_array, make_rng

__all__ = ["Dataset", "TensorDataset", "Subset", "random_split"]


class Dataset:
    """A collection of samples: subclasses define ``__len__`` and ``__getitem__``.

    ``dataset[i]`` returns one sample, usually a tuple ``(features, label)``.
    :class:`DataLoader` collates samples into batches by stacking each field.

    >>> class Squares(Dataset):
    ...     def __len__(self): return 10
    ...     def __getitem__(self, i): return (np.float32(i), np.float32(i * i))
    """

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__")

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")


class TensorDataset(Dataset):
    """Samples are rows of aligned arrays: ``dataset[i] == (X[i], y[i], ...)``.

    Parameters
    ----------
    *arrays : ndarray or Tensor, each of shape (n, ...)
        All with the same first dimension ``n``. Tensors are unwrapped to
        their arrays; ndarrays keep their dtype (labels stay integer).

    >>> ds = TensorDataset(np.zeros((5, 3), np.float32), np.arange(5))
    >>> len(ds), ds[2][1]
    (5, 2)
    """

    def __init__(self, *arrays: Any) -> None:
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        arrs = tuple(as_array(a) for a in arrays)
        for k, a in enumerate(arrs):
            if a.ndim == 0:
                raise ValueError(f"TensorDataset: array {k} is a scalar; it needs a first "
                                 "(sample) dimension")
        n = arrs[0].shape[0]
        bad = [(k, a.shape) for k, a in enumerate(arrs) if a.shape[0] != n]
        if bad:
            shapes = ", ".join(f"array {k}: {tuple(a.shape)}" for k, a in enumerate(arrs))
            raise ValueError(
                "TensorDataset: all arrays must have the same first dimension (number of "
                f"samples), got {shapes}"
            )
        self.arrays: tuple[np.ndarray, ...] = arrs

    def __len__(self) -> int:
        return int(self.arrays[0].shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return tuple(a[index] for a in self.arrays)

    def _gather(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        # One fancy-index per array: the whole batch in a few C-level copies.
        return tuple(a[idx] for a in self.arrays)


class Subset(Dataset):
    """The samples of ``dataset`` at positions ``indices`` (what
    :func:`random_split` returns). Array-backed parents stay fast to batch."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | np.ndarray) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(self.indices[index])]

    def _gather(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        # called only when the wrapped dataset has one (_has_gather)
        return self.dataset._gather(self.indices[idx])  # type: ignore[attr-defined]


def _has_gather(ds: Any) -> bool:
    if isinstance(ds, Subset):
        return _has_gather(ds.dataset)
    return callable(getattr(ds, "_gather", None))


def _split_counts(n: int, lengths: Sequence[float]) -> list[int]:
    if len(lengths) == 0:
        raise ValueError("random_split: lengths is empty")
    vals = list(lengths)
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 0:
            raise ValueError(f"random_split: lengths must be non-negative numbers, got {lengths}")
    if all(isinstance(v, numbers.Integral) for v in vals):
        counts = [int(v) for v in vals]
        if sum(counts) != n:
            raise ValueError(
                f"random_split: lengths {counts} sum to {sum(counts)}, but the dataset has "
                f"{n} samples"
            )
        return counts
    if not math.isclose(sum(vals), 1.0, abs_tol=1e-6) or any(v > 1 for v in vals):
        raise ValueError(
            f"random_split: fractional lengths must each be in [0, 1] and sum to 1, got "
            f"{lengths} (sum {sum(vals):g})"
        )
    counts = [math.floor(n * v) for v in vals]
    # Hand out the samples lost to flooring one each, first come first served.
    for k in range(n - sum(counts)):
        counts[k % len(counts)] += 1
    return counts


def random_split(dataset: Dataset, lengths: Sequence[float], seed: SeedLike = None
                 ) -> list[Subset]:
    """Split ``dataset`` into non-overlapping random subsets.

    ``lengths`` are either counts summing to ``len(dataset)`` or fractions
    summing to 1 (PyTorch style: the remainder of flooring goes to the first
    subsets, one sample each).

    >>> train, val = random_split(TensorDataset(X, y), [0.8, 0.2], seed=0)
    """
    n = len(dataset)
    counts = _split_counts(n, lengths)
    perm = make_rng(seed, "random_split").permutation(n)
    bounds = np.cumsum([0, *counts])
    return [Subset(dataset, perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
