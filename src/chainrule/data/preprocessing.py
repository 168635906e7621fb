"""Array helpers: train/test split (with stratification), one-hot, standardize."""

from __future__ import annotations

import math
import numbers
from typing import Any, overload

import numpy as np

from ._common import SeedLike, as_array, make_rng

__all__ = ["train_test_split", "one_hot", "standardize", "Standardizer"]


def _test_count(n: int, test_size: float | int) -> int:
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"train_test_split: test_size must be a float or an int, got "
                        f"{test_size!r}")
    if isinstance(test_size, numbers.Integral):
        n_test = int(test_size)
    else:
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"train_test_split: a fractional test_size must be in (0, 1), "
                             f"got {test_size}")
        # Round the test share up, as scikit-learn does.
        n_test = math.ceil(test_size * n)
    if not 0 < n_test < n:
        raise ValueError(
            f"train_test_split: test_size={test_size!r} leaves {n_test} test and "
            f"{n - n_test} training samples out of {n}; both must be at least 1"
        )
    return n_test


def _stratified_test_counts(counts: np.ndarray, n_test: int,
                            rng: np.random.Generator) -> np.ndarray:
    """Per-class test counts summing to ``n_test``, proportional to ``counts``.

    Floor the ideal shares, then give the leftover samples to the classes
    with the largest remainders (ties broken at random so no class is favoured).
    """
    ideal = counts * (n_test / counts.sum())
    take = np.floor(ideal).astype(np.int64)
    left = n_test - int(take.sum())
    if left:
        frac = ideal - take
        keys = np.lexsort((rng.random(len(counts)), -frac))  # by remainder, then random
        # Prefer classes that keep at least one training sample after the extra one.
        keep = take[keys] < counts[keys] - 1
        keys = np.concatenate([keys[keep], keys[~keep & (take[keys] < counts[keys])]])
        take[keys[:left]] += 1
    return take


def train_test_split(
    X: Any,
    y: Any,
    test_size: float | int = 0.25,
    seed: SeedLike = None,
    stratify: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and split ``(X, y)`` into training and test parts.

    Parameters
    ----------
    X : array (n, ...), y : array (n, ...)
    test_size : float in (0, 1) or int
        Fraction (rounded up) or number of test samples.
    seed : int, Generator or None
    stratify : array (n,) or None
        Class labels (usually ``y``) whose proportions both parts keep.

    Returns
    -------
    X_train, X_test, y_train, y_test : ndarrays, in scikit-learn's order.
    Tensors are converted to their arrays; dtypes are kept.

    >>> X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0, stratify=y)
    """
    Xa, ya = as_array(X), as_array(y)
    n = Xa.shape[0] if Xa.ndim else 0
    if ya.ndim == 0 or ya.shape[0] != n:
        raise ValueError(f"train_test_split: X has {n} samples but y has shape "
                         f"{tuple(ya.shape)}; the first dimensions must match")
    n_test = _test_count(n, test_size)
    rng = make_rng(seed, "train_test_split")
    if stratify is None:
        perm = rng.permutation(n)
        test, train = perm[:n_test], perm[n_test:]
    else:
        s = as_array(stratify)
        if s.shape[:1] != (n,):
            raise ValueError(f"train_test_split: stratify has shape {tuple(s.shape)}, "
                             f"expected ({n},)")
        classes, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
        if counts.min() < 2:
            bad = classes[np.argmin(counts)].tolist()  # a Python value reads better
            raise ValueError(f"train_test_split: class {bad!r} has only 1 sample; "
                             "stratification needs at least 2 per class")
        if n_test < len(classes) or n - n_test < len(classes):
            raise ValueError(
                f"train_test_split: {n_test} test and {n - n_test} training samples cannot "
                f"each hold all {len(classes)} classes"
            )
        take = _stratified_test_counts(counts, n_test, rng)
        test_parts, train_parts = [], []
        for c in range(len(classes)):
            members = rng.permutation(np.flatnonzero(inverse.ravel() == c))
            test_parts.append(members[:take[c]])
            train_parts.append(members[take[c]:])
        # Interleave the classes again so neither part is sorted by label.
        test = rng.permutation(np.concatenate(test_parts))
        train = rng.permutation(np.concatenate(train_parts))
    return Xa[train], Xa[test], ya[train], ya[test]


def one_hot(y: Any, num_classes: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Integer labels of shape (n,) -> one-hot rows of shape (n, num_classes).

    ``num_classes`` defaults to ``max(y) + 1``.

    >>> one_hot([0, 2, 1], 3)
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]], dtype=float32)
    """
    lab = as_array(y)
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"one_hot: labels must be integers, got dtype {lab.dtype}")
    if num_classes is None:
        num_classes = int(lab.max()) + 1 if lab.size else 0
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"one_hot: labels must be in [0, {num_classes}), found values "
                         f"from {lab.min()} to {lab.max()}")
    out = np.zeros((*lab.shape, num_classes), dtype=dtype)
    np.put_along_axis(out, lab[..., None].astype(np.intp), 1, axis=-1)
    return out


class Standardizer:
    """Per-column standardisation ``(x - mean) / std`` with a fit/transform API.

    Statistics are computed in float64 (a float32 sum over many rows loses
    digits); constant columns are centred but not divided (their std is taken
    as 1). :meth:`partial_fit` accumulates over chunks (Chan et al.'s pairwise
    update), so a table larger than memory can be scaled in one pass. The
    state is two lists of numbers (:meth:`get_state`), stored in checkpoints.

    >>> sc = Standardizer().fit(X_train)
    >>> X_tr, X_te = sc.transform(X_train), sc.transform(X_test)
    >>> Standardizer.from_state(sc.get_state()).transform(X_test)   # the same numbers
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean_: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def fit(self, X: Any) -> Standardizer:
        """Statistics of the columns of ``X`` (n, d), replacing any earlier ones."""
        self.n, self.mean_, self._m2 = 0, None, None
        return self.partial_fit(X)

    def partial_fit(self, X: Any) -> Standardizer:
        """Add the rows of ``X`` to the statistics."""
        a = as_array(X)
        if a.ndim != 2:
            raise ValueError(f"Standardizer: expected a 2-D array (n, d), got shape {a.shape}")
        if self.mean_ is not None and a.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"Standardizer: X has {a.shape[1]} columns, the statistics so "
                             f"far have {self.mean_.shape[0]}")
        k = a.shape[0]
        if k == 0:
            return self
        mean = a.mean(axis=0, dtype=np.float64)
        m2 = ((a - mean) ** 2).sum(axis=0, dtype=np.float64)
        if self.mean_ is None:
            self.n, self.mean_, self._m2 = k, mean, m2
            return self
        n = self.n + k
        delta = mean - self.mean_
        self.mean_ = self.mean_ + delta * (k / n)
        self._m2 = self._m2 + m2 + delta**2 * (self.n * k / n)
        self.n = n
        return self

    @property
    def scale_(self) -> np.ndarray:
        """The standard deviations used (1 for constant columns)."""
        if self.mean_ is None or self._m2 is None:  # (set together)
            raise RuntimeError("Standardizer: call fit() first")
        std = np.sqrt(self._m2 / self.n)
        return np.where(std > 0, std, 1.0)

    def transform(self, X: Any) -> np.ndarray:
        """``(X - mean) / std``; floating X keeps its dtype, integers become float32."""
        a = as_array(X)
        if self.mean_ is None:
            raise RuntimeError("Standardizer: call fit() first")
        if a.ndim != 2 or a.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"Standardizer: X has shape {a.shape}, expected (n, "
                             f"{self.mean_.shape[0]})")
        dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float32)
        return ((a - self.mean_) / self.scale_).astype(dtype)

    def inverse_transform(self, X: Any) -> np.ndarray:
        a = as_array(X)
        return (a * self.scale_ + self.mean_).astype(a.dtype if a.dtype.kind == "f"
                                                     else np.float32)

    def fit_transform(self, X: Any) -> np.ndarray:
        return self.fit(X).transform(X)

    def get_state(self) -> dict[str, Any]:
        """``{"mean": [...], "std": [...], "n": rows}``: plain JSON."""
        return {"mean": self.mean_.tolist() if self.mean_ is not None else None,
                "std": self.scale_.tolist() if self.mean_ is not None else None,
                "n": int(self.n)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Standardizer:
        mean = np.asarray(state["mean"], dtype=np.float64)
        std = np.asarray(state["std"], dtype=np.float64)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError("Standardizer.from_state: mean and std must be lists of the "
                             "same length")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("Standardizer.from_state: mean and std must be finite, std > 0")
        self = cls()
        self.n = int(state.get("n") or 1)
        self.mean_ = mean
        self._m2 = std**2 * self.n
        return self

    def __repr__(self) -> str:
        d = None if self.mean_ is None else self.mean_.shape[0]
        return f"Standardizer(columns={d}, rows={self.n})"


@overload
def standardize(X_train: Any, X_test: None = None) -> np.ndarray: ...
@overload
def standardize(X_train: Any, X_test: Any) -> tuple[np.ndarray, np.ndarray]: ...


def standardize(X_train: Any, X_test: Any = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Scale each feature (column) to zero mean and unit variance.

    Mean and standard deviation come from ``X_train`` only and are applied to
    both, so no information from the test set leaks into training. Constant
    columns are centred but not divided (their std is taken as 1). Floating
    inputs keep their dtype; integer inputs become float32.

    Returns ``X_train_std`` alone, or ``(X_train_std, X_test_std)``.

    >>> X_tr, X_te = standardize(X_tr, X_te)
    """
    a = as_array(X_train)
    dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float32)
    flat = a.reshape(a.shape[0], -1) if a.ndim != 2 else a
    sc = Standardizer().fit(flat)
    tr = sc.transform(flat).reshape(a.shape).astype(dtype)
    if X_test is None:
        return tr
    b = as_array(X_test)
    if b.shape[1:] != a.shape[1:]:
        raise ValueError(f"standardize: X_test rows have shape {b.shape[1:]}, X_train rows "
                         f"{a.shape[1:]}")
    return tr, sc.transform(b.reshape(b.shape[0], -1)).reshape(b.shape).astype(dtype)
