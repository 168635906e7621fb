"""Numeric tables from CSV files, read with the standard ``csv`` module."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._common import DataFormatError

__all__ = ["load_csv", "CSVData"]


@dataclass(frozen=True)
class CSVData:
    """What :func:`load_csv` returns. Unpacks as ``X, y = load_csv(...)``.

    Attributes
    ----------
    X : float32 ndarray of shape (n, n_features)
    y : ndarray of shape (n,): int64 class indices, or float32 values (regression)
    feature_names : list of str, one per column of X
    target_name : str
    classes : list or None
        For classification, ``classes[k]`` is the original label of index k
        (sorted); None for a regression target.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    target_name: str
    classes: list[Any] | None = None
    class_to_index: dict[Any, int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.X, self.y))

    @property
    def is_classification(self) -> bool:
        return self.classes is not None

    def decode(self, indices: Any) -> list[Any]:
        """Class indices -> original labels (classification only)."""
        if self.classes is None:
            raise ValueError("decode: this table has a regression target (no classes)")
        return [self.classes[int(i)] for i in np.asarray(indices).ravel()]


def _number(text: str) -> float | None:
    """The finite float in ``text``, or None. NaN and Inf count as bad values:
    they would poison training silently."""
    try:
        v = float(text)
    except ValueError:
        return None
    # beyond float32's range the value would turn into inf in X (float32)
    return v if math.isfinite(v) and abs(v) <= _F32_MAX else None


_F32_MAX = float(np.finfo(np.float32).max)


def _is_blank(row: list[str]) -> bool:
    return all(not c.strip() for c in row)


def _label_value(v: float) -> int | float:
    return int(v) if v.is_integer() else v


def load_csv(
    path: str | os.PathLike[str],
    target: int | str = -1,
    delimiter: str = ",",
    header: bool | Literal["auto"] = "auto",
    classification: bool | None = None,
    encoding: str = "utf-8-sig",
) -> CSVData:
    """Load a numeric table; one column is the target, the others the features.

    Parameters
    ----------
    path : file path
    target : column name (needs a header) or index; negative counts from the
        end. Default: the last column.
    delimiter : one character, "," by default.
    header : True, False or "auto" (a first row is a header when some column
        holds a number below it but not in it, or when it holds no number).
    classification : None, True or False
        None: a non-numeric target gives class labels, a numeric one stays a
        float32 value (regression). True: always map the target to class
        indices (numeric labels sort numerically). False: the target must be
        numeric.
    encoding : the default "utf-8-sig" also strips a byte-order mark.

    Every feature cell must be a finite number. A bad row raises
    :class:`DataFormatError` naming the file, line, column and the text found.

    Returns
    -------
    CSVData with X float32 (n, n_features), y (n,) int64 labels or float32
    values, feature_names, target_name, classes and class_to_index.

    >>> data = load_csv("iris.csv", target="species")
    >>> data.X.shape, data.classes
    ((150, 4), ['setosa', 'versicolor', 'virginica'])
    >>> X, y = data                     # unpacks to (X, y)
    """
    path = Path(path)
    with open(path, newline="", encoding=encoding) as f:
        reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
        # (physical line number, cells); blank lines anywhere are skipped.
        try:
            rows = [(reader.line_num, r) for r in reader if not _is_blank(r)]
        except UnicodeDecodeError as e:
            raise DataFormatError(
                f"{path}: not {encoding} text (byte 0x{e.object[e.start]:02x} cannot be "
                "decoded); is this a CSV file?"
            ) from None
        except csv.Error as e:
            raise DataFormatError(f"{path}, line {reader.line_num}: {e}") from None
    if not rows:
        raise DataFormatError(f"{path}: the file is empty (no rows)")

    first = [c.strip() for c in rows[0][1]]
    if header == "auto":
        if isinstance(target, str):
            has_header = True
        elif len(rows) == 1:
            has_header = all(_number(c) is None for c in first)
        else:
            second = rows[1][1]
            has_header = all(_number(c) is None for c in first) or any(
                _number(a) is None and _number(b) is not None
                for a, b in zip(first, second)
            )
    else:
        has_header = bool(header)
    if has_header:
        names = [c if c else f"column_{i}" for i, c in enumerate(first)]
        data = rows[1:]
    else:
        names = [f"column_{i}" for i in range(len(first))]
        data = rows
    if not data:
        raise DataFormatError(f"{path}: only a header line ({', '.join(names)}), no data rows")
    ncol = len(names)
    if ncol < 2:
        raise DataFormatError(
            f"{path}: found {ncol} column; need at least one feature column and the target"
        )

    # Resolve the target column.
    if isinstance(target, str):
        if not has_header:
            raise ValueError(f"load_csv: target={target!r} is a name but {path} is read "
                             "without a header; pass a column index")
        if target not in names:
            raise ValueError(f"load_csv: no column named {target!r} in {path}; columns: "
                             f"{names}")
        t = names.index(target)
    elif isinstance(target, int) and not isinstance(target, bool):
        if not -ncol <= target < ncol:
            raise ValueError(f"load_csv: target index {target} out of range for {ncol} "
                             f"columns in {path}")
        t = target % ncol
    else:
        raise TypeError(f"load_csv: target must be a column name or index, got {target!r}")
    feat = [i for i in range(ncol) if i != t]

    X = np.empty((len(data), len(feat)), dtype=np.float32)
    raw_target: list[str] = []
    for r, (line, cells) in enumerate(data):
        if len(cells) != ncol:
            raise DataFormatError(
                f"{path}, line {line}: expected {ncol} columns, found {len(cells)}: "
                f"{delimiter.join(cells)!r}"
            )
        for j, i in enumerate(feat):
            text = cells[i].strip()
            v = _number(text)
            if v is None:
                what = "empty cell" if not text else f"{text!r} is not a finite float32 number"
                raise DataFormatError(
                    f"{path}, line {line}, column {i + 1} ({names[i]!r}): {what}"
                )
            X[r, j] = v
        text = cells[t].strip()
        if not text:
            raise DataFormatError(
                f"{path}, line {line}, column {t + 1} ({names[t]!r}): empty target cell"
            )
        raw_target.append(text)

    values = [_number(s) for s in raw_target]
    numeric = all(v is not None for v in values)
    if classification is False and not numeric:
        k = next(k for k, v in enumerate(values) if v is None)
        raise DataFormatError(
            f"{path}, line {data[k][0]}, column {t + 1} ({names[t]!r}): target "
            f"{raw_target[k]!r} is not a number (classification=False)"
        )
    if numeric and not classification:
        y = np.asarray(values, dtype=np.float32)
        return CSVData(X, y, [names[i] for i in feat], names[t])
    if numeric:
        labels: list[Any] = [_label_value(v) for v in values]  # type: ignore[arg-type]
    else:
        labels = raw_target
    classes = sorted(set(labels))
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[c] for c in labels], dtype=np.int64)
    return CSVData(X, y, [names[i] for i in feat], names[t], classes, index)
