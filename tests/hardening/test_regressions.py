"""One test per failure the hardening work found (each failed before its fix).

The fuzzers found most of these; they are pinned here as plain, fast cases so
that they never come back regardless of what the random search draws.
"""

from __future__ import annotations

import json
import re
import struct
import tracemalloc

import numpy as np
import pytest

import chainrule as cr
from chainrule import io as crio
from chainrule.data._common import DataFormatError

try:
    from chainrule.data import load_csv
except ImportError:
    from chainrule.data.csvfile import load_csv

CheckpointError = crio.CheckpointError


def _parts(raw: bytes):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.fixture
def saved_model(tmp_path):
    model = cr.nn.Sequential(cr.nn.Linear(3, 4), cr.nn.ReLU(), cr.nn.Linear(4, 2))
    path = tmp_path / "m.cr"
    crio.save(model, path)
    return path


def _edit_meta(path, edit):
    header, body = _parts(path.read_bytes())
    meta = json.loads(header["__metadata__"]["chainrule"])
    edit(meta)
    header["__metadata__"]["chainrule"] = json.dumps(meta)
    path.write_bytes(_join(header, body))
    return path


# ----- cr.load ---------------------------------------------------------------


def test_tensor_dtype_that_is_not_a_string(saved_model):
    # was: TypeError: unhashable type: 'list' from `dtype not in _DTYPES`
    header, body = _parts(saved_model.read_bytes())
    header["0.bias"]["dtype"] = []
    saved_model.write_bytes(_join(header, body))
    with pytest.raises(CheckpointError, match=r"m\.cr.*'0\.bias'.*dtype \[\]"):
        crio.load(saved_model)


def test_model_section_that_is_not_an_object(saved_model):
    # was: AttributeError: 'bool' object has no attribute 'get'
    _edit_meta(saved_model, lambda m: m.update(model=True))
    with pytest.raises(CheckpointError, match=r"m\.cr.*model section"):
        crio.load(saved_model)


def test_weight_keys_that_are_not_strings(saved_model):
    # was: TypeError: unhashable type: 'list'
    _edit_meta(saved_model, lambda m: m["model"].update(keys=[[], "0.bias"]))
    ckpt = crio.load(saved_model)  # the list is ignored: weights come in file order
    assert set(ckpt.state_dict) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000])
def test_absurdly_nested_header(tmp_path, body):
    # was: RecursionError from json.loads
    path = tmp_path / "deep.cr"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(CheckpointError, match="deep.cr.*not valid JSON"):
        crio.load(path)


def test_nested_chainrule_metadata(saved_model):
    header, body = _parts(saved_model.read_bytes())
    header["__metadata__"]["chainrule"] = "[" * 100_000
    saved_model.write_bytes(_join(header, body))
    with pytest.raises(CheckpointError, match="chainrule metadata is not valid JSON"):
        crio.load(saved_model)


@pytest.mark.parametrize("edit", [
    lambda cfg: cfg[0].update(dtype=False),
    lambda cfg: cfg[0].update(in_features=None),
    lambda cfg: cfg[0].update(type=["Linear"]),
    lambda cfg: cfg[2].update(out_features=3),
    lambda cfg: cfg.append(None),
], ids=["dtype False", "in_features None", "type a list", "wrong width", "None layer"])
def test_damaged_architecture_is_a_checkpoint_error(saved_model, edit):
    # was: ValueError / TypeError / KeyError from nn.build or load_state_dict
    _edit_meta(saved_model, lambda m: edit(m["model"]["config"]))
    ckpt = crio.load(saved_model)
    with pytest.raises(CheckpointError, match=r"m\.cr.*architecture"):
        ckpt.model()


def test_architecture_larger_than_the_file_does_not_allocate(saved_model):
    # was: MemoryError (or an OOM kill): Linear(10**6, 10**6) built before any check
    def edit(meta):
        meta["model"]["config"][0].update(in_features=10**6, out_features=10**6)

    _edit_meta(saved_model, edit)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError,
                           match=r"Linear in_features=1000000, but the file holds only \d+ weight"):
            crio.load_model(saved_model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_small_parameterless_models_still_load(tmp_path):
    model = cr.nn.Sequential(cr.nn.ReLU(), cr.nn.Softmax(dim=-1))
    crio.save(model, tmp_path / "p.cr")
    assert len(crio.load_model(tmp_path / "p.cr")) == 2


# ----- load_csv ----------------------------------------------------------------


def test_csv_that_is_not_utf8(tmp_path):
    # was: UnicodeDecodeError without the file name
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,\xff\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: not utf-8-sig text \(byte 0xff"):
        load_csv(path)


def test_csv_with_a_field_over_the_csv_module_limit(tmp_path):
    # was: _csv.Error (not a ValueError) escaping. The CSV reader is pandas' now, which
    # has no field-size limit: the long label loads as a label
    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,"' + "x" * 200_000 + '"\n')
    assert load_csv(path).classes == ["x" * 200_000]


def test_csv_number_beyond_float32(tmp_path):
    # was: a silent inf in X (RuntimeWarning: overflow encountered in cast)
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1e39,2\n")
    with pytest.raises(DataFormatError, match=r"line 2, column 1 \('a'\): '1e39'"):
        load_csv(path)


@pytest.mark.parametrize("cell", ["1e39", "-1e39", "inf"])
def test_csv_regression_target_beyond_float32(tmp_path, cell):
    # was: a silent inf in y (found by the CSV fuzzer: 3.5,-1.0,1e39 as the last row)
    path = tmp_path / "t.csv"
    path.write_text(f"a,b,y\n1.0,2.0,0.5\n3.5,-1.0,{cell}\n")
    with pytest.raises(DataFormatError, match=rf"line 3, column 3 \('y'\): '{cell}'.*float32"):
        load_csv(path)
    assert load_csv(path, classification=True).classes is not None  # a class label is fine


@pytest.mark.parametrize("row", ["1.0,{big},0.5", "1.0,-{big},0.5"])
def test_csv_integer_beyond_float64_is_refused_naming_the_cell(tmp_path, row):
    # was: OverflowError from pandas.to_numeric, which read_csv's Python int for
    # a 320-digit cell defeats even with errors="coerce" (found by the CSV fuzzer).
    # pandas 3 reads the cell as a number too large for float32, pandas 2 as no
    # number: refused either way, naming the cell
    path = tmp_path / "t.csv"
    path.write_text(row.format(big="9" * 320))
    with pytest.raises(DataFormatError, match=r"t\.csv, line 1, column 2 .*'-?9{320}' is "
                                              r"not a (finite float32 )?number"):
        load_csv(path)


def test_csv_target_integer_beyond_float64_is_refused_or_a_label(tmp_path):
    # the fuzzer's own input: the target column. pandas 3 reads a number (refused
    # as beyond float32), pandas 2 no number, so the column holds class labels;
    # never an OverflowError, never a number made up
    path = tmp_path / "t.csv"
    path.write_text("1.0,2.0," + "9" * 320)
    try:
        data = load_csv(path)
    except DataFormatError as exc:
        assert re.search(r"t\.csv, line 1, column 3 .*'9{320}' is not a finite float32", str(exc))
    else:
        assert data.classes == ["9" * 320] and data.y.tolist() == [0]
    with pytest.raises(DataFormatError, match=r"t\.csv, line 1, column 3"):
        load_csv(path, classification=False)


@pytest.mark.parametrize("last", ['""', "\u2028"])
def test_csv_error_in_a_row_the_line_scan_misses_names_the_file(tmp_path, last):
    # was: "row 2, column 'column_0': empty cell", without the file (found by the
    # CSV fuzzer): pandas reads these last lines as rows, the line scan does not
    path = tmp_path / "t.csv"
    path.write_text("1.0,2.0,0.5\n2.0,1.0,1.5\n" + last, encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"t\.csv, data row 3, column 'column_0'"):
        load_csv(path)


def test_csv_nul_byte_in_a_cell_is_refused_naming_the_file(tmp_path):
    # was (Python 3.10): AttributeError, the line scan's csv.Error ("line contains
    # NUL") taken for its table of lines (found by the CSV fuzzer on 3.10)
    path = tmp_path / "t.csv"
    path.write_bytes(b"1.0,2.0,0.5\n\x01\x00.0,1.0,1.5\n3.5,-1.0,2.5\n")
    with pytest.raises(DataFormatError, match=r"t\.csv, (line 2, column 1|data row 2, column)"):
        load_csv(path)


@pytest.mark.parametrize("lines_before", [3, 150_000])  # within the first block, past it
@pytest.mark.parametrize("cell", ["99999991e39" + "9" * 100, "81e3104049863b72", "2.5E-1234567"])
def test_csv_long_exponent_is_refused_where_pandas_could_crash(tmp_path, lines_before, cell):
    # pandas < 3 overflows a C int on an exponent of many digits and can crash
    # the process (the CSV fuzzer found one on Python 3.10 / pandas 2.3): such a
    # file is refused before pandas reads it there, naming the line
    from chainrule.data import tables

    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n" + "1.0,2.0,0\n" * lines_before + f"1.0,{cell},1\n3,4,0\n")
    with pytest.raises(DataFormatError, match=rf"t\.csv, line {lines_before + 2}: .*exponent of "
                                              r"six or more digits.*pandas 2\.9"):
        tables._refuse_long_exponent(path, "2.9")
    if tables._old_c_parser(__import__("pandas")):
        with pytest.raises(DataFormatError, match=rf"line {lines_before + 2}: .*exponent"):
            load_csv(path)
    ok = tmp_path / "ok.csv"
    ok.write_text("a,b\n1e5,2\n1.5e-30,1e12345z\n")  # five digits, or not a number
    tables._refuse_long_exponent(ok, "2.9")


@pytest.mark.parametrize("forced", [False, True])
def test_text_cells_with_long_exponents_in_a_frame_built_in_memory(monkeypatch, forced):
    # a DataFrame made in memory never goes through the file check: with pandas
    # < 3, to_numeric crashed the process on '81e3104049863b72' (Python 3.10,
    # pandas 2.3). Those cells are read by Python's float first, which gives
    # what pandas 3 gives; ``forced`` takes that path under any pandas
    import pandas as pd

    from chainrule.data import tables

    if forced:
        monkeypatch.setattr(tables, "_old_c_parser", lambda pd: True)
    col = pd.Series(["1e39" + "0" * 100, "81e3104049863b72", "1e1000000", "-1E+0000007",
                     " 1e-9999999 ", "2.5", None, "abc", 3])
    got = tables.numbers(col)
    want = [np.inf, np.nan, np.inf, -1e7, 0.0, 2.5, np.nan, np.nan, 3.0]
    np.testing.assert_array_equal(got, want)
    frame = pd.DataFrame({"a": ["1", "81e3104049863b72", "2"], "b": [1.0, 2.0, 3.0]})
    with pytest.raises(DataFormatError, match=r"'81e3104049863b72' is not a number"):
        tables._numeric(frame["a"], "a", frame)


def test_csv_float32_limits_still_load(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n3.4e38,0\n-3.4e38,1\n")
    X, y = load_csv(path)
    assert np.isfinite(X).all()


@pytest.mark.parametrize("depth", [500, 900])
def test_deeply_nested_architecture(saved_model, depth):
    # was: RecursionError from the config walk / nn.build
    def edit(meta):
        c = {"type": "ReLU"}
        for _ in range(depth):
            c = [c]
        meta["model"]["config"] = c

    ckpt = crio.load(_edit_meta(saved_model, edit))
    with pytest.raises(CheckpointError, match=r"m\.cr.*architecture"):
        ckpt.model()


def test_weight_listed_twice_in_the_metadata(saved_model):
    # was: KeyError: '0.weight' (found by the long bulk fuzz: one bit flip turns
    # "2.weight" into "0.weight" in the key list)
    _edit_meta(saved_model, lambda m: m["model"].update(
        keys=["0.weight", "0.bias", "0.weight", "2.bias"]))
    with pytest.raises(CheckpointError, match=r"m\.cr.*more than once.*'0\.weight'"):
        crio.load(saved_model)
