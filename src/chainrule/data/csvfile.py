"""Numeric tables from CSV files (parsed by pandas; see :mod:`chainrule.data.tables`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
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




def _label_value(v: float) -> int | float:
    return int(v) if v.is_integer() else v


def load_csv(
    path: Any,
    target: int | str = -1,
    delimiter: str | None = None,
    header: bool | Literal["auto"] = "auto",
    classification: bool | None = None,
    encoding: str = "utf-8-sig",
) -> CSVData:
    """Load a numeric table; one column is the target, the others the features.

    Parameters
    ----------
    path : file path, or a pandas DataFrame / 2-D NumPy array holding the table
    target : column name (needs a header) or index; negative counts from the
        end. Default: the last column.
    delimiter : one character; default: detected among ``, ; TAB |``.
    header : True, False or "auto" (a first row is a header when some column
        holds a number below it but not in it, or when it holds no number).
    classification : None, True or False
        None: a non-numeric target gives class labels, a numeric one stays a
        float32 value (regression). True: always map the target to class
        indices (numeric labels sort numerically). False: the target must be
        numeric.
    encoding : the default "utf-8-sig" also strips a byte-order mark.

    Every feature cell must be a finite number (tables with categorical
    columns or gaps go through :class:`~chainrule.data.TablePreprocessor`).
    A bad cell raises :class:`DataFormatError` naming the file, line, column
    and the text found. The file is parsed by pandas' C reader.

    Returns
    -------
    CSVData with X float32 (n, n_features), y (n,) int64 labels or float32
    values, feature_names, target_name, classes and class_to_index.

    >>> data = load_csv("iris.csv", target="species")
    >>> data.X.shape, data.classes
    ((150, 4), ['setosa', 'versicolor', 'virginica'])
    >>> X, y = data                     # unpacks to (X, y)
    """
    from .tables import _numeric, beyond_float32, missing_or_bad, not_float32, numbers, read_table

    df = read_table(path, delimiter=delimiter, header=header, encoding=encoding,
                    prefer_header=isinstance(target, str))
    names = [str(c) for c in df.columns]
    where = str(path) if isinstance(path, (str, os.PathLike)) else "the table"
    ncol = len(names)
    if ncol < 2:
        raise DataFormatError(
            f"{where}: found {ncol} column; need at least one feature column and the target"
        )
    if len(df) == 0:
        raise DataFormatError(f"{where}: only a header line ({', '.join(names)}), no data rows")
    meta = df.attrs.get("chainrule_source") or {}
    has_header = meta.get("header", True)

    # Resolve the target column.
    if isinstance(target, str):
        if not has_header:
            raise ValueError(f"load_csv: target={target!r} is a name but {where} is read "
                             "without a header; pass a column index")
        if target not in names:
            raise ValueError(f"load_csv: no column named {target!r} in {where}; columns: "
                             f"{names}")
        t = names.index(target)
    elif isinstance(target, int) and not isinstance(target, bool):
        if not -ncol <= target < ncol:
            raise ValueError(f"load_csv: target index {target} out of range for {ncol} "
                             f"columns in {where}")
        t = target % ncol
    else:
        raise TypeError(f"load_csv: target must be a column name or index, got {target!r}")
    feat = [names[i] for i in range(ncol) if i != t]
    tname = names[t]

    if all(df[c].dtype.kind in "biuf" for c in feat) and not df[feat].isna().to_numpy().any():
        # the usual case, all numbers: one conversion, then the float32 range check
        X64 = df[feat].to_numpy(dtype=np.float64)
        big = beyond_float32(X64)
        if big.any():
            r, j = (int(v) for v in np.argwhere(big)[0])
            raise DataFormatError(not_float32(df, r, feat[j], X64[r, j]))
        X = X64.astype(np.float32)
        feat_done = True
    else:
        X = np.empty((len(df), len(feat)), dtype=np.float32)
        feat_done = False
    for j, name in enumerate([] if feat_done else feat):
        values = _numeric(df[name], name, df)
        bad = np.isnan(values)
        if bad.any():
            raise DataFormatError(missing_or_bad(df, int(np.flatnonzero(bad)[0]), name))
        X[:, j] = values

    col = df[tname]
    raw = col.to_numpy()
    empty = np.asarray(col.isna())
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        where_cell = missing_or_bad(df, r, tname).rsplit(": ", 1)[0]
        raise DataFormatError(f"{where_cell}: empty target cell")
    if raw.dtype.kind in "biuf":
        values = raw.astype(np.float64)
        numeric = True
    else:
        values = numbers(col)
        numeric = not np.isnan(values).any()
    if classification is False and not numeric:
        from .tables import locate

        k = int(np.flatnonzero(np.isnan(values))[0])
        raise DataFormatError(
            f"{locate(df, k, tname)}: target {str(raw[k]).strip()!r} is not a number "
            "(classification=False)"
        )
    if numeric and not classification:
        # a regression target is float32 too: one that does not fit is refused,
        # as a feature cell is, rather than turned into inf
        out_of_range = beyond_float32(values)
        if out_of_range.any():
            k = int(np.flatnonzero(out_of_range)[0])
            raise DataFormatError(not_float32(df, k, tname, values[k]))
        return CSVData(X, values.astype(np.float32), feat, tname)
    if numeric:
        labels: list[Any] = [_label_value(float(v)) for v in values]
    else:
        labels = [str(v).strip() for v in raw]
    classes = sorted(set(labels))
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[c] for c in labels], dtype=np.int64)
    return CSVData(X, y, feat, tname, classes, index)
