"""Raw tables: reading CSV files fast, and turning mixed columns into model inputs.

* :func:`read_table` reads a CSV file with pandas' C parser (or takes a
  DataFrame, a NumPy array or a dict of columns as it is) and returns a
  ``pandas.DataFrame``. Problems are reported as :class:`DataFormatError`
  naming the file, the line and the column: the fast parser reads, and only
  when something is wrong is the file scanned again line by line to say where.
* :class:`TablePreprocessor` learns, from training rows only, which columns
  are numbers and which are categories, how to fill missing values, the
  categories of each categorical column and the standardisation of the
  numeric ones; it turns any later rows with the same columns into a float32
  matrix, and its state is plain JSON (it is stored in checkpoints).

>>> import pandas as pd
>>> df = pd.DataFrame({"size": [1.0, 2.0, None, 4.0], "color": ["red", "blue", "red", None]})
>>> prep = TablePreprocessor(impute="mean").fit(df)
>>> prep.transform(df).shape, prep.output_names
((4, 3), ['size', 'color=blue', 'color=red'])
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np

from ._common import DataFormatError
from .preprocessing import Standardizer

__all__ = [
    "read_table", "TablePreprocessor", "detect_delimiter", "locate", "IMPUTE_POLICIES",
    "UNSEEN_POLICIES", "PREPROCESSOR_VERSION",
]

IMPUTE_POLICIES = ("error", "mean", "median", "most-frequent")
UNSEEN_POLICIES = ("error", "ignore", "most-frequent")
PREPROCESSOR_VERSION = 1
_F32_MAX = float(np.finfo(np.float32).max)
_DELIMITERS = (",", ";", "\t", "|")
_SOURCE = "chainrule_source"


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - pandas is a dependency
        raise ImportError('reading tables needs pandas: pip install "pandas>=2"') from e
    return pd


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def detect_delimiter(sample: str) -> str | None:
    """The delimiter that splits the sample's lines into the same number (>= 2) of
    fields, preferring the one giving the most fields; None if none does."""
    lines = [ln for ln in sample.splitlines() if ln.strip()][:50]
    if len(lines) > 1 and not sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # the sample may have cut the last line short
    best, best_n = None, 1
    for d in _DELIMITERS:
        try:
            counts = {len(r) for r in csv.reader(lines, delimiter=d)}
        except csv.Error:
            continue
        if len(counts) == 1:
            n = counts.pop()
            if n > best_n:
                best, best_n = d, n
    return best


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _open_text(path: Path, encoding: str) -> Any:
    return open(path, newline="", encoding=encoding)


def _sample(path: Path, encoding: str, size: int = 1 << 16) -> str:
    try:
        with _open_text(path, encoding) as f:
            return f.read(size)
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}: not {encoding} text (byte 0x{e.object[e.start]:02x} cannot be "
            "decoded); is this a CSV file?"
        ) from None


def _first_rows(text: str, delimiter: str, k: int = 2) -> list[list[str]]:
    rows = []
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
    try:
        for r in reader:
            if any(c.strip() for c in r):
                rows.append([c.strip() for c in r])
                if len(rows) == k:
                    break
    except csv.Error:
        pass
    return rows


def _has_header(rows: list[list[str]], prefer: bool) -> bool:
    if prefer:
        return True
    first = rows[0]
    if len(rows) == 1:
        return all(not _is_number(c) for c in first)
    second = rows[1]
    # a header when no cell is a number, or some column has a number below a word
    return all(not _is_number(c) for c in first) or any(
        not _is_number(a) and _is_number(b) for a, b in zip(first, second)
    )


def _check_names(names: list[str], where: str) -> list[str]:
    out = [n if n else f"column_{i}" for i, n in enumerate(names)]
    seen: dict[str, int] = {}
    for i, n in enumerate(out):
        if n in seen:
            raise DataFormatError(
                f"{where}: columns {seen[n] + 1} and {i + 1} are both named {n!r}; column "
                "names must be unique (features are chosen by name when a model is used "
                "later, so a repeated name would be ambiguous)"
            )
        seen[n] = i
    return out


def read_table(
    source: Any,
    delimiter: str | None = None,
    header: bool | Literal["auto"] = "auto",
    encoding: str = "utf-8-sig",
    prefer_header: bool = False,
    chunksize: int | None = None,
) -> Any:
    """A table as a ``pandas.DataFrame``, from a CSV file or from data in memory.

    Parameters
    ----------
    source : path, DataFrame, 2-D ndarray or mapping of column name -> values
        A DataFrame is returned as is (after checking its column names); an
        array gets columns ``column_0, column_1, ...``.
    delimiter : str, optional
        Default: detected from the file's first lines among ``, ; TAB |``.
    header : True, False or "auto"
        "auto": the first row is a header when it holds no number, or when
        some column holds a word in it and a number below it.
    encoding : str
        "utf-8-sig" (the default) also strips a byte-order mark.
    prefer_header : bool
        With ``header="auto"``, take the first row as a header (callers that
        name a column pass this).
    chunksize : int, optional
        Return an iterator of DataFrames of this many rows instead (for files
        larger than memory); every chunk has the same columns.

    Empty cells (and pandas' usual missing markers such as ``NA``) become
    missing values (NaN / None). Duplicate column names, rows with the wrong
    number of fields and undecodable bytes raise :class:`DataFormatError`
    naming the file and line.

    >>> df = read_table("iris.csv")
    >>> df.shape
    (150, 5)
    """
    pd = _pandas()
    if isinstance(source, pd.DataFrame):
        _check_names([str(c) for c in source.columns], "the DataFrame")
        if chunksize is not None:
            return (source.iloc[i:i + chunksize] for i in range(0, len(source), chunksize))
        return source
    if isinstance(source, np.ndarray) or (hasattr(source, "__array__") and
                                          not isinstance(source, (str, os.PathLike))):
        arr = np.asarray(source)
        if arr.ndim != 2:
            raise ValueError(f"read_table: an array table must be 2-D, got shape {arr.shape}")
        return pd.DataFrame(arr, columns=[f"column_{i}" for i in range(arr.shape[1])])
    if isinstance(source, Mapping):
        df = pd.DataFrame(dict(source))
        _check_names([str(c) for c in df.columns], "the table")
        return df
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = _sample(path, encoding)
    if not text.strip():
        raise DataFormatError(f"{path}: the file is empty (no rows)")
    if delimiter is None:
        delimiter = detect_delimiter(text) or ","
    rows = _first_rows(text, delimiter)
    if not rows:
        raise DataFormatError(f"{path}: the file is empty (no rows)")
    has_header = _has_header(rows, prefer_header) if header == "auto" else bool(header)
    ncol = len(rows[0])
    if has_header:
        names = _check_names(rows[0], str(path))
    else:
        names = [f"column_{i}" for i in range(ncol)]
    if ncol < 2:
        other = detect_delimiter(text)
        first_line = text.splitlines()[0] if text else ""
        if (other and other != delimiter) or any(d in first_line for d in ";\t|"):
            d = other if other and other != delimiter else next(
                d for d in ";\t|" if d in first_line)
            raise DataFormatError(
                f"{path}: with delimiter {delimiter!r} the first line is a single column, "
                f"but {d!r} splits it; pass the file's delimiter (--delimiter '{d}' on the "
                f"command line, delimiter='{d}' in Python)"
            )
    # no skipinitialspace: it costs pandas a third of its time, numbers parse with
    # leading blanks anyway, and text cells are stripped where they are read
    kwargs: dict[str, Any] = dict(
        sep=delimiter, header=0 if has_header else None, names=names,
        encoding=encoding, skip_blank_lines=True,
        engine="c", low_memory=False, index_col=False,
    )
    if _old_c_parser(pd):
        _refuse_long_exponent(path, pd.__version__)
    meta = {"path": str(path), "header": has_header, "delimiter": delimiter,
            "encoding": encoding, "names": names}
    if chunksize is not None:
        return _chunks(pd, path, kwargs, meta, chunksize)
    try:
        df = pd.read_csv(path, **kwargs)
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not {encoding} text ({e.reason} at byte {e.start}); "
                              "is this a CSV file?") from None
    except pd.errors.ParserError as e:
        raise _parser_error(path, meta, e) from None
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{path}: the file is empty (no rows)") from None
    df.attrs[_SOURCE] = meta
    if len(df) and df.isna().to_numpy().any():
        _check_row_lengths(df, meta)  # a short row reads as missing cells: find it
    return df


# pandas before 3.0 parses the exponent of a number into a C int without a
# bound: a cell such as 1e39 followed by a hundred more digits (a fuzzer wrote
# one), or an id such as 81e3104049863b72, overflows it and can crash the
# process (pandas issue 62617, fixed in 3.0). Both of its parsers and
# pd.to_numeric share that code, so with such a pandas a file holding a number
# with an exponent of six digits or more (beyond any float's range) is refused
# before pandas reads it, naming the line.
_LONG_EXPONENT = re.compile(rb"[0-9.][eE][+-]?[0-9]{6}")


def _old_c_parser(pd: Any) -> bool:
    try:
        return int(str(pd.__version__).split(".")[0]) < 3
    except ValueError:
        return True


_LONG_EXPONENT_TEXT = re.compile(_LONG_EXPONENT.pattern.decode())


def _read_long_exponents(col: Any) -> Any:
    """``col`` with each text cell that holds a number with an exponent of six
    or more digits replaced by what Python's ``float`` reads there (what pandas
    3 reads: +-inf or 0.0; NaN where it is no number, such as the id
    ``81e3104049863b72``), so that pandas < 3's ``to_numeric``, which can crash
    on such a cell (see above), never sees it."""
    def read(v: Any) -> Any:
        if isinstance(v, str) and _LONG_EXPONENT_TEXT.search(v) is not None:
            try:
                return float(v)
            except ValueError:
                return np.nan
        return v

    return col.map(read)


def _refuse_long_exponent(path: Path, version: str) -> None:
    """Raise DataFormatError if the file holds a number with an exponent of six
    or more digits (see above)."""
    with open(path, "rb") as f:
        tail = b""
        before = 0  # newlines in the file before ``tail + block``
        while True:
            block = f.read(1 << 20)
            if not block:
                return
            text = tail + block
            m = _LONG_EXPONENT.search(text)
            if m is not None:
                line = before + text.count(b"\n", 0, m.start()) + 1
                first = max(text.rfind(b"\n", 0, m.start()) + 1, m.start() - 24)
                cell = text[first:m.end() + 8].split(b"\n")[0]
                raise DataFormatError(
                    f"{path}, line {line}: {cell.decode('utf-8', 'replace')!r} holds a number "
                    f"with an exponent of six or more digits, which the CSV parser of pandas "
                    f"{version} can crash on (fixed in pandas 3.0: pip install 'pandas>=3', "
                    "Python 3.11 or later); remove the cell or write it another way (an id "
                    "can start with a letter)"
                )
            # the next text starts with this block's last bytes
            tail = block[-16:]
            before += text.count(b"\n") - tail.count(b"\n")


def _chunks(pd: Any, path: Path, kwargs: dict, meta: dict, chunksize: int) -> Iterator[Any]:
    start = 0
    try:
        for chunk in pd.read_csv(path, chunksize=chunksize, **kwargs):
            chunk.attrs[_SOURCE] = {**meta, "first_row": start}
            start += len(chunk)
            yield chunk
    except pd.errors.ParserError as e:
        raise _parser_error(path, meta, e) from None


def _parser_error(path: Path, meta: dict, exc: Exception) -> DataFormatError:
    # pandas names the line ("Expected 4 fields in line 7, saw 5"); say it our way
    bad = _scan(meta, stop_at_bad_row=True)
    if bad is not None:
        return bad
    return DataFormatError(f"{path}: {exc}")


def _scan(meta: dict, stop_at_bad_row: bool = False, rows_wanted: Sequence[int] = ()
          ) -> Any:
    """Walk the file with the csv module: the first row with a wrong number of
    fields (as an error), or the physical line numbers of data rows ``rows_wanted``."""
    path, delim = meta["path"], meta["delimiter"]
    want = set(rows_wanted)
    lines: dict[int, tuple[int, list[str]]] = {}  # data row -> (line number, fields)
    ncol = None
    k = -1
    with _open_text(Path(path), meta["encoding"]) as f:
        reader = csv.reader(f, delimiter=delim, skipinitialspace=True)
        start = reader.line_num
        try:
            for r in reader:
                line = start + 1
                start = reader.line_num
                if not any(c.strip() for c in r):
                    continue
                if ncol is None:
                    ncol = len(r)
                    if meta["header"]:
                        continue
                k += 1
                if stop_at_bad_row and len(r) != ncol:
                    return DataFormatError(
                        f"{path}, line {line}: expected {ncol} columns, found {len(r)}: "
                        f"{delim.join(r)!r}"
                    )
                if k in want:
                    lines[k] = (line, r)
                    if len(lines) == len(want):
                        break
        except csv.Error as e:  # (Python 3.10's csv refuses a NUL byte, say)
            if stop_at_bad_row:
                return DataFormatError(f"{path}, line {reader.line_num}: {e}")
            # looking for cells: those found before it; the caller names the row
    return None if stop_at_bad_row else lines


def _check_row_lengths(df: Any, meta: dict) -> None:
    bad = _scan(meta, stop_at_bad_row=True)
    if bad is not None:
        raise bad


def locate(df: Any, row: int, column: str) -> str:
    """Where a cell came from: "file.csv, line 17, column 3 ('x')" for a table read
    from a file, else "row 17, column 'x'" (``row`` is the 0-based position)."""
    where, _ = _cell(df, row, column)
    return where


def _cell(df: Any, row: int, column: str) -> tuple[str, str | None]:
    """(where the cell is, its text in the file or None for in-memory tables)."""
    meta = getattr(df, "attrs", {}).get(_SOURCE)
    cols = [str(c) for c in df.columns]
    j = cols.index(column) + 1 if column in cols else None
    if meta is not None and j is not None:
        r = row + meta.get("first_row", 0)
        found = _scan(meta, rows_wanted=[r]).get(r)
        if found is not None:
            line, cells = found
            # positions in the file: the frame may be a column subset
            k = meta.get("names", cols).index(column) if column in meta.get("names", cols) \
                else j - 1
            text = cells[k].strip() if k < len(cells) else ""
            return f"{meta['path']}, line {line}, column {k + 1} ({column!r})", text
        # a row the line scan does not find (pandas reads a line of one empty
        # quoted cell, or a Unicode line separator, as a row): still the file
        return f"{meta['path']}, data row {row + 1}, column {column!r}", None
    return f"row {row}, column {column!r}", None


def missing_or_bad(df: Any, row: int, column: str) -> str:
    """The message for a NaN cell: an empty cell, or text such as 'nan' that reads
    as no number."""
    where, text = _cell(df, row, column)
    if text:
        return f"{where}: {text!r} is not a finite float32 number"
    return f"{where}: empty cell"


# --------------------------------------------------------------------------
# Column kinds
# --------------------------------------------------------------------------


def _missing(values: np.ndarray) -> np.ndarray:
    pd = _pandas()
    return np.asarray(pd.isna(values))


def _as_text(v: Any) -> str:
    """A category's name: numbers written without a trailing .0 (1 and 1.0 alike)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    return str(v).strip()


def numbers(col: Any) -> np.ndarray:
    """``pd.to_numeric(col, errors="coerce")`` as float64: NaN where a cell is no number.

    ``read_csv`` keeps an integer beyond float64's range (a cell of 310 digits)
    as a Python int, and ``to_numeric`` raises OverflowError on it even with
    ``errors="coerce"``: such cells are read from their text instead, as +-inf,
    which the float32 range checks then refuse, naming the cell. With pandas
    before 3.0, text cells holding a number with an exponent of six or more
    digits are read first (see :func:`_read_long_exponents`): a frame built in
    memory never went through the file check that guards ``read_table``."""
    pd = _pandas()
    if _old_c_parser(pd) and not pd.api.types.is_numeric_dtype(col):
        col = _read_long_exponents(col)
    try:
        num = pd.to_numeric(col, errors="coerce")
    except OverflowError:
        num = pd.to_numeric(col.map(lambda v: str(v) if type(v) is int else v), errors="coerce")
    return num.to_numpy(dtype=np.float64, na_value=np.nan)


def _numeric(col: Any, name: str, df: Any, what: str = "column") -> np.ndarray:
    """The column as float64 (NaN where missing); a text cell is an error naming it."""
    values = col.to_numpy()
    if values.dtype.kind in "biuf":
        out = values.astype(np.float64)
    else:
        out = numbers(col)
        bad = np.isnan(out) & ~_missing(values)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataFormatError(
                f"{locate(df, r, name)}: {str(values[r]).strip()!r} is not a number, but "
                f"{what} {name!r} is numeric; declare it categorical (--categorical {name}) "
                "if it holds categories"
            )
    big = beyond_float32(out)
    if big.any():
        r = int(np.flatnonzero(big)[0])
        raise DataFormatError(not_float32(df, r, name, out[r]))
    return out


def beyond_float32(values: np.ndarray) -> np.ndarray:
    """Where ``values`` (float64, NaN for a missing cell) holds a number float32
    cannot: +-inf, or beyond float32's largest."""
    return ~np.isnan(values) & ~(np.abs(values) <= _F32_MAX)


def not_float32(df: Any, row: int, column: str, value: float) -> str:
    """The message for a number outside float32's range, quoting the file's own text."""
    where, text = _cell(df, row, column)
    return f"{where}: {text or repr(float(value))!r} is not a finite float32 number"


def _looks_categorical(col: Any) -> bool:
    """Text that is not all numbers (ignoring missing cells)."""
    pd = _pandas()
    values = col.to_numpy()
    if values.dtype.kind in "biuf":
        return False
    present = values[~_missing(values)]
    if present.size == 0:
        return False
    num = numbers(pd.Series(present))
    # mixed columns (mostly numbers, some words) are a data error, not categories
    return bool(np.isnan(num).all())


# --------------------------------------------------------------------------
# The preprocessor
# --------------------------------------------------------------------------


class TablePreprocessor:
    """Raw table columns -> a float32 model input, fitted on training rows only.

    Parameters
    ----------
    categorical : "auto" or list of column names
        Columns whose (non-missing) cells are all text are categorical; a
        list adds columns that hold numbers but are categories (codes, zip
        codes). A column mixing numbers and words is an error naming the cell.
    impute : {"error", "mean", "median", "most-frequent"}
        What to do with missing cells. "error" (the default) refuses them with
        the file, line and column. "mean" / "median" fill numeric columns with
        the training rows' mean / median; categorical columns (and every
        column under "most-frequent") take their most frequent training value.
    encoding : {"onehot", "embed"}
        "onehot": one 0/1 column per category (sorted). "embed": one column of
        integer codes per categorical column, placed after the numeric ones,
        for :class:`chainrule.nn.CategoricalEmbedding`.
    unseen : {"error", "ignore", "most-frequent"}
        A category at transform time that training never saw: refuse it,
        encode it as no category (an all-zero one-hot row; with "embed" a
        reserved extra code), or treat it as the most frequent category.
    standardize : bool
        Scale numeric columns to mean 0, std 1 (training statistics).

    Attributes (after :meth:`fit`)
    -------------------------------
    feature_names : list of str
        The input columns, in order.
    numeric, categorical : list of str
    categories : dict name -> list of str
    output_names : list of str
        One per output column ("color=red" for one-hot columns).
    n_outputs : int

    >>> prep = TablePreprocessor(categorical=["city"], impute="median").fit(train_df)
    >>> X = prep.transform(test_df)             # float32 (n, prep.n_outputs)
    >>> state = prep.get_state()                # JSON; TablePreprocessor.from_state(state)
    """

    def __init__(self, categorical: Any = "auto", impute: str = "error",
                 encoding: str = "onehot", unseen: str = "error",
                 standardize: bool = True) -> None:
        if impute not in IMPUTE_POLICIES:
            raise ValueError(f"TablePreprocessor: impute must be one of {IMPUTE_POLICIES}, "
                             f"got {impute!r}")
        if unseen not in UNSEEN_POLICIES:
            raise ValueError(f"TablePreprocessor: unseen must be one of {UNSEEN_POLICIES}, "
                             f"got {unseen!r}")
        if encoding not in ("onehot", "embed"):
            raise ValueError(f"TablePreprocessor: encoding must be 'onehot' or 'embed', got "
                             f"{encoding!r}")
        if categorical != "auto":
            if isinstance(categorical, str):
                categorical = [c for c in categorical.split(",") if c]
            categorical = [str(c) for c in categorical]
        self.categorical_arg = categorical
        self.impute = impute
        self.encoding = encoding
        self.unseen = unseen
        self.standardize = bool(standardize)
        self.fitted = False

    # ----- fitting ----------------------------------------------------------

    def fit(self, table: Any) -> TablePreprocessor:
        """Learn column kinds, fill values, categories and scaling from ``table``
        (a DataFrame, array or path: see :func:`read_table`)."""
        if _plain_numbers(table) and self.categorical_arg in ("auto", []):
            return self._fit_array(np.asarray(table))
        df = read_table(table)
        names = [str(c) for c in df.columns]
        if not names:
            raise ValueError("TablePreprocessor.fit: the table has no columns")
        declared = self.categorical_arg
        if declared != "auto":
            unknown = [c for c in declared if c not in names]
            if unknown:
                raise ValueError(f"categorical column(s) {unknown} are not in the table; "
                                 f"columns: {names}")
        self.feature_names = names
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.numeric_categories: dict[str, bool] = {}
        self.fill: dict[str, Any] = {}
        self.categories: dict[str, list[str]] = {}
        self.most_frequent: dict[str, str] = {}
        numeric_cols = []
        for name in names:
            col = df[name]
            # declared columns are categorical even when they hold numbers (zip codes);
            # text columns are categorical whether declared or not
            is_cat = (declared != "auto" and name in declared) or _looks_categorical(col)
            if is_cat:
                self._fit_categorical(df, name, col)
            else:
                values = _numeric(col, name, df)
                numeric_cols.append(self._fit_numeric(df, name, values))
        if numeric_cols and self.standardize:
            self.scaler: Standardizer | None = Standardizer().fit(np.column_stack(numeric_cols))
        else:
            self.scaler = None
        self.fitted = True
        return self

    def _fit_array(self, X: np.ndarray) -> TablePreprocessor:
        """All-numeric 2-D arrays (digits, MNIST): no per-column DataFrame work."""
        if X.ndim != 2:
            raise ValueError(f"TablePreprocessor.fit: expected a 2-D table, got shape {X.shape}")
        names = [f"column_{i}" for i in range(X.shape[1])]
        self.feature_names, self.numeric, self.categorical = names, list(names), []
        self.categories, self.most_frequent, self.numeric_categories = {}, {}, {}
        self.fill = {}
        Xf = X.astype(np.float64)
        _check_finite_array(Xf, names)
        miss = np.isnan(Xf)
        cols = []
        for j, name in enumerate(names):
            cols.append(self._fit_numeric(_ArrayCells(X), name, Xf[:, j]) if miss[:, j].any()
                        else self._fit_numeric_quick(name, Xf[:, j]))
        if self.standardize:
            self.scaler = Standardizer().fit(np.column_stack(cols) if miss.any() else Xf)
        else:
            self.scaler = None
        self.fitted = True
        return self

    def _fit_numeric_quick(self, name: str, values: np.ndarray) -> np.ndarray:
        fill = None
        if self.impute == "mean":
            fill = float(values.mean())
        elif self.impute == "median":
            fill = float(np.median(values))
        elif self.impute == "most-frequent":
            vals, counts = np.unique(values, return_counts=True)
            fill = float(vals[np.argmax(counts)])
        self.fill[name] = fill
        return values

    def _refuse_missing(self, df: Any, name: str, mask: np.ndarray) -> NoReturn:
        r = int(np.flatnonzero(mask)[0])
        raise DataFormatError(
            f"{locate(df, r, name)}: missing value (empty cell); choose a policy for gaps "
            "with --impute mean|median|most-frequent (impute= in Python)"
        )

    def _fit_numeric(self, df: Any, name: str, values: np.ndarray) -> np.ndarray:
        if name not in self.numeric:
            self.numeric.append(name)
        miss = np.isnan(values)
        fill: float | None  # None: gaps met later are refused (impute="error")
        if miss.any():
            if self.impute == "error":
                self._refuse_missing(df, name, miss)
            present = values[~miss]
            if present.size == 0:
                raise DataFormatError(f"column {name!r} has no values at all to impute from")
            if self.impute == "mean":
                fill = float(present.mean())
            elif self.impute == "median":
                fill = float(np.median(present))
            else:
                vals, counts = np.unique(present, return_counts=True)
                fill = float(vals[np.argmax(counts)])  # ties: the smallest value
            values = np.where(miss, fill, values)
        else:
            # nothing missing in training: later gaps still get a value under a policy
            fill = {
                "mean": float(values.mean()) if values.size else 0.0,
                "median": float(np.median(values)) if values.size else 0.0}.get(self.impute)
            if self.impute == "most-frequent" and values.size:
                vals, counts = np.unique(values, return_counts=True)
                fill = float(vals[np.argmax(counts)])
        self.fill[name] = fill
        return values

    def _fit_categorical(self, df: Any, name: str, col: Any) -> None:
        self.categorical.append(name)
        values = col.to_numpy()
        miss = _missing(values)
        if miss.any() and self.impute == "error":
            self._refuse_missing(df, name, miss)
        texts = [_as_text(v) for v in values[~miss]]
        if not texts:
            raise DataFormatError(f"column {name!r} has no values at all")
        cats, counts = np.unique(np.asarray(texts, dtype=object).astype(str),
                                 return_counts=True)
        self.categories[name] = [str(c) for c in cats]
        # ties: the first in sorted order, so the choice does not depend on row order
        self.most_frequent[name] = str(cats[int(np.argmax(counts))])
        self.fill[name] = self.most_frequent[name]
        self.numeric_categories[name] = all(_is_number(c) for c in self.categories[name])

    # ----- what comes out ---------------------------------------------------

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("TablePreprocessor: call fit() first")

    @property
    def output_names(self) -> list[str]:
        self._check_fitted()
        names = list(self.numeric)
        for c in self.categorical:
            if self.encoding == "onehot":
                names += [f"{c}={v}" for v in self.categories[c]]
            else:
                names.append(c)
        return names

    @property
    def n_outputs(self) -> int:
        return len(self.output_names)

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column for ``encoding='embed'`` (one extra code
        for unseen categories under ``unseen='ignore'``)."""
        extra = 1 if self.unseen == "ignore" else 0
        return [len(self.categories[c]) + extra for c in self.categorical]

    # ----- transforming -----------------------------------------------------

    def transform(self, table: Any, scale: bool = True) -> np.ndarray:
        """Rows with the training columns (by name; extra columns are ignored)
        -> float32 array (n, n_outputs). ``scale=False`` leaves the numeric
        columns unstandardised (what an exported ONNX model takes as input)."""
        self._check_fitted()
        if not scale and self.scaler is not None:
            saved, self.scaler = self.scaler, None
            try:
                return self.transform(table)
            finally:
                self.scaler = saved
        pd = _pandas()
        if not self.categorical and _plain_numbers(table) and np.ndim(table) == 2 and \
                np.shape(table)[1] == len(self.feature_names):
            return self._transform_array(np.asarray(table))
        if isinstance(table, np.ndarray) and table.ndim == 2 and \
                table.shape[1] == len(self.feature_names):
            df = pd.DataFrame(table, columns=self.feature_names)
        elif isinstance(table, np.ndarray) and table.ndim == 1 and \
                table.shape[0] == len(self.feature_names):
            df = pd.DataFrame(table[None, :], columns=self.feature_names)
        elif isinstance(table, Sequence) and table and isinstance(table[0], Mapping):
            df = pd.DataFrame(list(table))
        else:
            df = read_table(table)
        have = [str(c) for c in df.columns]
        missing = [c for c in self.feature_names if c not in have]
        if missing:
            raise DataFormatError(
                f"column {missing[0]!r} is missing from the rows given (the model was "
                f"trained on the columns {self.feature_names})"
                + (f"; also missing: {missing[1:]}" if len(missing) > 1 else "")
            )
        df.columns = have
        n = len(df)
        parts = []
        if self.numeric:
            num = np.empty((n, len(self.numeric)), dtype=np.float64)
            for j, name in enumerate(self.numeric):
                values = _numeric(df[name], name, df)
                miss = np.isnan(values)
                if miss.any():
                    if self.fill.get(name) is None:
                        self._refuse_missing(df, name, miss)
                    values = np.where(miss, self.fill[name], values)
                num[:, j] = values
            if self.scaler is not None:
                num = self.scaler.transform(num)
            parts.append(num.astype(np.float32))
        for name in self.categorical:
            parts.append(self._encode(df, name))
        if not parts:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def _transform_array(self, X: np.ndarray) -> np.ndarray:
        Xf = X.astype(np.float64)
        _check_finite_array(Xf, self.feature_names)
        miss = np.isnan(Xf)
        if miss.any():
            for j, name in enumerate(self.numeric):
                m = miss[:, j]
                if m.any():
                    if self.fill.get(name) is None:
                        self._refuse_missing(_ArrayCells(X), name, m)
                    Xf[m, j] = self.fill[name]
        if self.scaler is not None:
            Xf = self.scaler.transform(Xf)
        return Xf.astype(np.float32)

    def _codes(self, df: Any, name: str) -> np.ndarray:
        values = df[name].to_numpy()
        cats = self.categories[name]
        if values.dtype.kind in "biuf" and not self.numeric_categories.get(name, False):
            raise DataFormatError(
                f"column {name!r} is categorical (values such as {cats[:3]}) but the rows "
                f"given hold numbers (dtype {values.dtype}); pass the category names"
            )
        miss = _missing(values)
        if miss.any():
            if self.impute == "error":
                self._refuse_missing(df, name, miss)
        index = {c: k for k, c in enumerate(cats)}
        codes = np.empty(len(values), dtype=np.int64)
        for r, v in enumerate(values):
            if miss[r]:
                codes[r] = index[self.fill[name]]
                continue
            k = index.get(_as_text(v))
            if k is None:
                if self.unseen == "error":
                    raise DataFormatError(
                        f"{locate(df, r, name)}: category {_as_text(v)!r} was not seen in "
                        f"training (known: {cats[:10]}{' ...' if len(cats) > 10 else ''}); "
                        "choose a policy with --unseen ignore|most-frequent (unseen= in "
                        "Python)"
                    )
                k = len(cats) if self.unseen == "ignore" else index[self.most_frequent[name]]
            codes[r] = k
        return codes

    def _encode(self, df: Any, name: str) -> np.ndarray:
        codes = self._codes(df, name)
        if self.encoding == "embed":
            return codes.astype(np.float32)[:, None]
        k = len(self.categories[name])
        out = np.zeros((len(codes), k + 1), dtype=np.float32)
        out[np.arange(len(codes)), codes] = 1.0
        return out[:, :k]  # the extra column (unseen, 'ignore') is dropped: all zeros

    def fit_transform(self, table: Any) -> np.ndarray:
        return self.fit(table).transform(table)

    # ----- state ------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Everything :meth:`transform` needs, as JSON-serialisable values."""
        self._check_fitted()
        state = {
            "version": PREPROCESSOR_VERSION,
            "feature_names": list(self.feature_names),
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "most_frequent": dict(self.most_frequent),
            "numeric_categories": dict(getattr(self, "numeric_categories", {})),
            "fill": {k: v for k, v in self.fill.items()},
            "impute": self.impute,
            "encoding": self.encoding,
            "unseen": self.unseen,
            "standardize": self.standardize,
            "scaler": None if self.scaler is None else self.scaler.get_state(),
        }
        json.dumps(state)  # fail here, not when a checkpoint is written
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TablePreprocessor:
        """Rebuild a fitted preprocessor from :meth:`get_state`'s output."""
        version = state.get("version")
        if not isinstance(version, int) or version > PREPROCESSOR_VERSION:
            raise ValueError(
                f"the stored preprocessing has version {version!r}; this chainrule reads up "
                f"to {PREPROCESSOR_VERSION} (upgrade chainrule)"
            )
        self = cls(categorical=list(state["categorical"]), impute=state["impute"],
                   encoding=state["encoding"], unseen=state["unseen"],
                   standardize=state["standardize"])
        self.feature_names = list(state["feature_names"])
        self.numeric = list(state["numeric"])
        self.categorical = list(state["categorical"])
        self.categories = {k: list(v) for k, v in state["categories"].items()}
        self.most_frequent = dict(state["most_frequent"])
        self.numeric_categories = dict(state.get("numeric_categories", {}))
        self.fill = dict(state["fill"])
        sc = state.get("scaler")
        self.scaler = None if sc is None else Standardizer.from_state(sc)
        self.fitted = True
        return self

    def __repr__(self) -> str:
        if not self.fitted:
            return f"TablePreprocessor(impute={self.impute!r}, encoding={self.encoding!r})"
        return (f"TablePreprocessor({len(self.numeric)} numeric, {len(self.categorical)} "
                f"categorical -> {self.n_outputs} columns, impute={self.impute!r})")



def _plain_numbers(table: Any) -> bool:
    return isinstance(table, np.ndarray) and table.dtype.kind in "biuf"


class _ArrayCells:
    """Enough of a DataFrame for :func:`locate` on a plain array."""

    def __init__(self, X: np.ndarray) -> None:
        self.columns = [f"column_{i}" for i in range(X.shape[1])]
        self.attrs: dict[str, Any] = {}


def _check_finite_array(X: np.ndarray, names: list[str]) -> None:
    bad = beyond_float32(X)
    if bad.any():
        r, j = (int(v) for v in np.argwhere(bad)[0])
        raise DataFormatError(f"row {r}, column {names[j]!r}: {X[r, j]!r} is not a finite "
                              "float32 number")
