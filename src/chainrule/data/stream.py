"""Training on tables larger than memory: a CSV file read in chunks, batch by batch.

:class:`CSVStream` is an iterable of ``(X, y)`` batches that :func:`chainrule.fit`
takes in place of a DataLoader. Memory holds one chunk (``chunk_rows`` rows)
at a time, whatever the size of the file. A first pass over the file
(:meth:`CSVStream.fit`) learns what the in-memory path learns from a loaded
table: the standardisation of the numeric columns (Chan's pairwise update,
so the statistics are those of the whole training part), the fill values
for missing cells (``impute="mean"``), the classes of the target or its mean
and standard deviation.

A NumPy ``.npy`` file larger than memory needs no class of its own:
``np.load(path, mmap_mode="r")`` gives an array backed by the file, and a
:class:`~chainrule.data.DataLoader` over it reads only the rows of each batch.

>>> train = CSVStream("big.csv", target="label", batch_size=256, seed=0).fit()
>>> val = train.validation()                 # the held-out rows, same statistics
>>> cr.fit(model, F.cross_entropy, opt, train, val=val, epochs=3)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..tensor import Tensor
from ._common import DataFormatError
from .preprocessing import Standardizer

__all__ = ["CSVStream"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _held_out(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each (global) row number is a validation row: a fixed hash of the row
    number and the seed, so the same rows are held out in every pass, with no memory."""
    if fraction <= 0:
        return np.zeros(rows.shape, dtype=bool)
    with np.errstate(over="ignore"):
        h = (rows.astype(np.uint64) + np.uint64(seed) * np.uint64(1_000_003)) * _GOLDEN
        h ^= h >> np.uint64(29)
        h *= _GOLDEN
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


class CSVStream:
    """Mini-batches from a CSV file read ``chunk_rows`` rows at a time.

    Parameters
    ----------
    path : CSV file (header row required)
    target : column name of the target
    features : list of column names, optional
        Default: every numeric column other than the target.
    task : "classification" or "regression", optional
        Default: classification for a text target or one with at most 20
        distinct whole numbers, regression otherwise.
    batch_size : int
    chunk_rows : int
        Rows read per chunk; memory holds about one chunk (as float64 while it
        is parsed) plus one batch.
    shuffle : bool
        Shuffle the rows within each chunk, differently every epoch.
    seed : int
        Seeds the shuffling and which rows are held out.
    val_fraction : float
        Share of the rows held out for :meth:`validation` (a fixed hash of the
        row number: the same rows in every pass).
    impute : "error" or "mean"
        Missing numeric cells: refuse them (file, line, column), or fill them
        with the training rows' mean.
    standardize : bool
    delimiter : str, optional

    Yields ``(X, y)`` Tensors: X float32 (batch, n_features); y int64 class
    indices or float32 values of shape (batch, 1) (standardised for regression;
    :attr:`target_scale` holds the mean and std to undo it).
    """

    # what fit() learns (no values here: they exist once it ran)
    classes: list[Any] | None  # classification: the labels, in order of their index
    target_scale: dict[str, float] | None  # regression: the target's mean and std
    fill: np.ndarray  # per feature: the value that fills a gap
    scaler: Standardizer | None

    def __init__(self, path: str | os.PathLike, target: str, features: list[str] | None = None,
                 task: str | None = None, batch_size: int = 256, chunk_rows: int = 65536,
                 shuffle: bool = True, seed: int = 0, val_fraction: float = 0.1,
                 impute: str = "error", standardize: bool = True,
                 delimiter: str | None = None, _part: str = "train") -> None:
        if impute not in ("error", "mean"):
            raise ValueError(f"CSVStream: impute must be 'error' or 'mean' (a median needs the "
                             f"whole column in memory), got {impute!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"CSVStream: val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1 or chunk_rows < 1:
            raise ValueError("CSVStream: batch_size and chunk_rows must be >= 1")
        self.path = Path(path)
        self.target = target
        self.features = features
        self.task = task
        self.batch_size = int(batch_size)
        self.chunk_rows = int(chunk_rows)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.impute = impute
        self.standardize = bool(standardize)
        self.delimiter = delimiter
        self.part = _part
        self.epoch = 0
        self.fitted = False

    # ----- the statistics pass ------------------------------------------------

    def _chunks(self) -> Iterator[Any]:
        from .tables import read_table

        return read_table(self.path, delimiter=self.delimiter, header=True,
                          chunksize=self.chunk_rows)

    def fit(self) -> CSVStream:
        """One pass over the file: features, classes or target scaling, standardisation."""
        import pandas as pd

        scaler = Standardizer()
        sums = counts = None
        classes: set[Any] = set()
        tsum = tsq = 0.0
        tn = 0
        text_target = False
        start = 0
        for chunk in self._chunks():
            if self.target not in chunk.columns:
                raise ValueError(f"CSVStream: no column named {self.target!r} in {self.path}; "
                                 f"columns: {list(chunk.columns)}")
            if self.features is None:
                self.features = [str(c) for c in chunk.columns if c != self.target and
                                 chunk[c].dtype.kind in "biuf"]
                if not self.features:
                    raise DataFormatError(f"{self.path}: no numeric feature columns")
            keep = ~_held_out(np.arange(start, start + len(chunk)), self.val_fraction,
                              self.seed)
            start += len(chunk)
            X = self._numbers(chunk, fill=False)[keep]
            miss = np.isnan(X)
            if miss.any() and self.impute == "error":
                self._refuse(chunk, np.flatnonzero(keep)[np.argwhere(miss)[0][0]],
                             int(np.argwhere(miss)[0][1]))
            Xf = np.where(miss, 0.0, X)
            s, c = Xf.sum(axis=0), (~miss).sum(axis=0)
            sums = s if sums is None else sums + s
            counts = c if counts is None else counts + c
            y = chunk[self.target].to_numpy()[keep]
            if y.dtype.kind not in "biuf":
                text_target = True
            if text_target or len(classes) <= 21:
                classes.update(pd.unique(pd.Series(y)).tolist())
            if y.dtype.kind in "biuf":
                yf = y.astype(np.float64)
                tsum += float(yf.sum())
                tsq += float((yf * yf).sum())
                tn += len(yf)
            if not miss.any():
                scaler.partial_fit(Xf)
            else:
                self.fill = sums / np.maximum(counts, 1)
                scaler.partial_fit(np.where(miss, self.fill, X))
        if counts is None:
            raise DataFormatError(f"{self.path}: no data rows")
        self.fill = sums / np.maximum(counts, 1)
        if self.task is None:
            whole = not text_target and len(classes) <= 20 and all(
                float(v).is_integer() for v in classes)
            self.task = "classification" if text_target or whole else "regression"
        if self.task == "classification":
            self.classes = sorted(classes, key=lambda v: (isinstance(v, str), v))
            self.target_scale = None
        else:
            self.classes = None
            mean = tsum / tn
            self.target_scale = {"mean": mean, "std": float(np.sqrt(max(tsq / tn - mean**2,
                                                                          0.0))) or 1.0}
        self.scaler = scaler if self.standardize else None
        self.fitted = True
        return self

    def _numbers(self, chunk: Any, fill: bool = True) -> np.ndarray:
        from .tables import _numeric

        features = self._fitted_features()
        X = np.empty((len(chunk), len(features)), dtype=np.float64)
        for j, name in enumerate(features):
            if name not in chunk.columns:
                raise DataFormatError(f"{self.path}: column {name!r} is missing")
            X[:, j] = _numeric(chunk[name], name, chunk)
        if fill:
            miss = np.isnan(X)
            if miss.any():
                if self.impute == "error":
                    r, j = (int(v) for v in np.argwhere(miss)[0])
                    self._refuse(chunk, r, j)
                X = np.where(miss, self.fill, X)
        return X

    def _fitted_features(self) -> list[str]:
        if self.features is None:
            raise RuntimeError("CSVStream: call fit() first (it picks the feature columns)")
        return self.features

    def _refuse(self, chunk: Any, row: int, j: int) -> NoReturn:
        from .tables import missing_or_bad

        raise DataFormatError(missing_or_bad(chunk, int(row), self._fitted_features()[j]) +
                              " (missing value; CSVStream(impute='mean') fills gaps)")

    # ----- iteration ----------------------------------------------------------

    def validation(self) -> CSVStream:
        """The held-out rows as a stream with this stream's statistics (no shuffling)."""
        if not self.fitted:
            raise RuntimeError("CSVStream: call fit() first")
        other = CSVStream.__new__(CSVStream)
        other.__dict__.update(self.__dict__)
        other.part, other.shuffle = "val", False
        return other

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _encode_y(self, y: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            assert self.classes is not None  # fit() set them
            index = {v: k for k, v in enumerate(self.classes)}
            try:
                return np.fromiter((index[v] for v in y.tolist()), dtype=np.int64,
                                   count=len(y))
            except KeyError as e:
                raise DataFormatError(f"{self.path}: label {e.args[0]!r} was not seen when "
                                      "the stream was fitted") from None
        sc = self.target_scale
        assert sc is not None  # fit() set it (regression)
        return ((y.astype(np.float64) - sc["mean"]) / sc["std"]).astype(np.float32)[:, None]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.fitted:
            raise RuntimeError("CSVStream: call fit() before iterating (one pass over the "
                               "file learns the statistics)")
        epoch = self.epoch
        self.epoch += 1
        start = 0
        carry_x = carry_y = None
        for k, chunk in enumerate(self._chunks()):
            held = _held_out(np.arange(start, start + len(chunk)), self.val_fraction,
                             self.seed)
            start += len(chunk)
            mask = held if self.part == "val" else ~held
            X = self._numbers(chunk)[mask]
            if self.scaler is not None:
                X = self.scaler.transform(X)
            X = X.astype(np.float32)
            y = self._encode_y(chunk[self.target].to_numpy()[mask])
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch, k]).permutation(len(X))
                X, y = X[order], y[order]
            if carry_x is not None:  # a partial batch from the previous chunk goes first
                X, y = np.concatenate([carry_x, X]), np.concatenate([carry_y, y])
            n_full = len(X) - len(X) % self.batch_size
            for i in range(0, n_full, self.batch_size):
                yield (Tensor._const(np.ascontiguousarray(X[i:i + self.batch_size])),
                       Tensor._const(np.ascontiguousarray(y[i:i + self.batch_size])))
            carry_x, carry_y = X[n_full:], y[n_full:]
        if carry_x is not None and len(carry_x):
            yield Tensor._const(np.ascontiguousarray(carry_x)), \
                Tensor._const(np.ascontiguousarray(carry_y))

    def __repr__(self) -> str:
        return (f"CSVStream({str(self.path)!r}, target={self.target!r}, part={self.part!r}, "
                f"batch_size={self.batch_size}, chunk_rows={self.chunk_rows})")
