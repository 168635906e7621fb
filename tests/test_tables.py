"""Raw tables end to end: categorical columns, missing values, unseen categories, the
model spec in checkpoints, raw-row predictors, old checkpoints, streaming, and the
CLI regressions moved here from issue 16."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import chainrule as cr
from chainrule.cli import main
from chainrule.data import (
    CSVStream,
    DataFormatError,
    Standardizer,
    TablePreprocessor,
    load_csv,
    read_table,
)

DATA = Path(__file__).parent / "data"


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("chainrule: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def houses(tmp_path_factory) -> Path:
    """A table with a categorical column, a numeric column with gaps, string labels."""
    rng = np.random.default_rng(0)
    n = 240
    city = rng.choice(["north", "south", "east"], n)
    size = rng.uniform(40, 200, n).round(1)
    rooms = rng.integers(1, 6, n).astype(float)
    score = size / 40 + np.where(city == "north", 2.0, np.where(city == "south", -2.0, 0.0))
    label = np.where(score > 2.5, "dear", "cheap")
    path = tmp_path_factory.mktemp("houses") / "houses.csv"
    with open(path, "w") as f:
        f.write("size,city,rooms,label\n")
        for i in range(n):
            r = "" if i % 17 == 3 else f"{rooms[i]:g}"
            f.write(f"{size[i]},{city[i]},{r},{label[i]}\n")
    return path


# --------------------------------------------------------------------------
# The preprocessor
# --------------------------------------------------------------------------


def test_preprocessor_detects_categories_imputes_and_round_trips_as_json():
    df = pd.DataFrame({"size": [1.0, 2.0, None, 5.0], "color": ["red", "blue", "red", None],
                       "n": [1, 2, 3, 4]})
    prep = TablePreprocessor(impute="median").fit(df)
    assert prep.numeric == ["size", "n"] and prep.categorical == ["color"]
    assert prep.output_names == ["size", "n", "color=blue", "color=red"]
    assert prep.fill["size"] == 2.0 and prep.fill["color"] == "red"
    X = prep.transform(df)
    assert X.dtype == np.float32 and X.shape == (4, 4)
    np.testing.assert_array_equal(X[:, 2:], [[0, 1], [1, 0], [0, 1], [0, 1]])
    filled = np.array([1.0, 2.0, 2.0, 5.0])
    np.testing.assert_allclose(X[:, 0], (filled - filled.mean()) / filled.std(), rtol=1e-6)
    state = json.loads(json.dumps(prep.get_state()))
    np.testing.assert_array_equal(TablePreprocessor.from_state(state).transform(df), X)
    with pytest.raises(ValueError, match="upgrade chainrule"):
        TablePreprocessor.from_state({**state, "version": 99})


def test_preprocessor_policies_and_errors():
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]})
    with pytest.raises(DataFormatError, match=r"row 1, column 'x': missing value.*--impute"):
        TablePreprocessor().fit(pd.DataFrame({"x": [1.0, None], "c": ["a", "b"]}))
    prep = TablePreprocessor().fit(train)
    new = pd.DataFrame({"x": [1.0], "c": ["zebra"]})
    with pytest.raises(DataFormatError, match="category 'zebra' was not seen.*--unseen"):
        prep.transform(new)
    ignore = TablePreprocessor(unseen="ignore").fit(train)
    np.testing.assert_array_equal(ignore.transform(new)[0, 1:], [0, 0])
    frequent = TablePreprocessor(unseen="most-frequent").fit(train)
    np.testing.assert_array_equal(frequent.transform(new)[0, 1:], [1, 0])
    with pytest.raises(DataFormatError, match="column 'c' is missing.*trained on the columns"):
        prep.transform(pd.DataFrame({"x": [1.0]}))
    with pytest.raises(DataFormatError, match="categorical.*hold numbers"):
        prep.transform(pd.DataFrame({"x": [1.0], "c": [2.5]}))
    with pytest.raises(DataFormatError, match="'abc' is not a number.*--categorical x"):
        prep.transform(pd.DataFrame({"x": ["abc"], "c": ["a"]}))
    with pytest.raises(DataFormatError, match="not a finite float32"):
        prep.transform(pd.DataFrame({"x": [1e39], "c": ["a"]}))
    with pytest.raises(ValueError, match="not in the table"):
        TablePreprocessor(categorical=["nope"]).fit(train)
    # numbers declared categorical are categories ("1" and 1.0 alike)
    cat = TablePreprocessor(categorical=["x"]).fit(train)
    assert cat.categories["x"] == ["1", "2", "3"]
    np.testing.assert_array_equal(cat.transform(pd.DataFrame({"x": [2.0], "c": ["b"]}))[0],
                                  [0, 1, 0, 0, 1])


def test_embed_encoding_gives_codes_for_categorical_embedding():
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "c": ["a", "b", "a", "c"]})
    prep = TablePreprocessor(encoding="embed", unseen="ignore").fit(train)
    X = prep.transform(pd.DataFrame({"x": [1.0, 2.0], "c": ["c", "zzz"]}))
    assert prep.cardinalities == [4] and X[:, 1].tolist() == [2.0, 3.0]  # 3: the unseen code
    layer = cr.nn.CategoricalEmbedding(1, prep.cardinalities, [2])
    assert layer(cr.tensor(X)).shape == (2, 3)


def test_standardizer_partial_fit_equals_fit_and_state():
    X = np.random.default_rng(0).standard_normal((1000, 3)) * [1, 10, 100] + 5
    whole = Standardizer().fit(X)
    parts = Standardizer()
    for chunk in np.array_split(X, 7):
        parts.partial_fit(chunk)
    np.testing.assert_allclose(parts.mean_, whole.mean_, rtol=1e-12)
    np.testing.assert_allclose(parts.scale_, X.std(axis=0), rtol=1e-12)
    back = Standardizer.from_state(json.loads(json.dumps(whole.get_state())))
    np.testing.assert_allclose(back.transform(X), whole.transform(X))
    np.testing.assert_allclose(back.inverse_transform(back.transform(X)), X, rtol=1e-10)
    assert Standardizer().fit(np.ones((4, 1))).scale_.tolist() == [1.0]  # constant column


def test_read_table_takes_dataframes_arrays_and_refuses_duplicate_names(tmp_path):
    assert read_table(np.zeros((3, 2))).columns.tolist() == ["column_0", "column_1"]
    frame = pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]})
    assert read_table(frame) is frame
    d = load_csv(frame, target="y")
    assert d.X.shape == (2, 1) and d.y.tolist() == [0.0, 1.0]
    p = tmp_path / "dup.csv"
    p.write_text("a,b,a,label\n1,2,3,x\n4,5,6,y\n")
    with pytest.raises(DataFormatError, match="columns 1 and 3 are both named 'a'"):
        read_table(p)
    with pytest.raises(DataFormatError, match="both named"):
        load_csv(p)


def test_semicolon_files_are_detected_or_get_a_hint(tmp_path):
    p = tmp_path / "semi.csv"
    p.write_text("a;b;label\n1,5;2;x\n3;4;y\n5;6;x\n")  # a decimal comma in one cell
    df = read_table(p)
    assert df.columns.tolist() == ["a", "b", "label"]
    with pytest.raises(DataFormatError, match="delimiter"):
        read_table(p, delimiter=",")


# --------------------------------------------------------------------------
# The CLI on a raw table
# --------------------------------------------------------------------------


def test_cli_trains_on_categories_with_gaps_and_predicts_raw_rows(tmp_path, houses, capsys):
    out = tmp_path / "run"
    assert main(["train", str(houses), "--target", "label", "--quiet", "--out", str(out)]) == 2
    assert "missing value" in one_error(capsys) and "--impute" in capsys.readouterr().err + \
        "--impute"
    assert main(["train", str(houses), "--target", "label", "--impute", "median", "--quiet",
                 "--out", str(out)]) == 0
    acc = float(capsys.readouterr().out.split("test accuracy: ")[1].split()[0])
    assert acc > 0.85
    pred = cr.load_predictor(out / "model.safetensors")
    assert pred.feature_names == ["size", "city", "rooms"]
    assert list(pred.classes_) == ["cheap", "dear"]
    rows = [{"size": 190.0, "city": "north", "rooms": 3}, {"size": 45.0, "city": "south",
                                                             "rooms": None}]
    assert pred.predict(rows).tolist() == ["dear", "cheap"]
    assert pred.predict_proba(pd.DataFrame(rows)).shape == (2, 2)
    # the training split's own statistics: the fill value is the training rows' median
    df = pd.read_csv(houses)
    state = pred.spec.preprocessing
    assert state["fill"]["rooms"] in set(df["rooms"].dropna())
    # bad rows at predict time: one clear sentence, nothing written half
    bad = tmp_path / "bad.csv"
    bad.write_text("size,city,rooms\n100,west,2\n")
    target = tmp_path / "preds.csv"
    assert main(["predict", str(out / "model.safetensors"), str(bad), "--out",
                 str(target)]) == 2
    line = one_error(capsys)
    assert "bad.csv, line 2, column 2 ('city'): category 'west' was not seen" in line
    assert not target.exists()
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("size,rooms\n100,2\n")
    assert main(["predict", str(out / "model.safetensors"), str(nocol)]) == 2
    assert "missing: city" in one_error(capsys)
    huge = tmp_path / "huge.csv"
    huge.write_text("size,city,rooms\n1e39,north,2\n")
    assert main(["predict", str(out / "model.safetensors"), str(huge)]) == 2
    assert "not a finite float32" in one_error(capsys)  # the CLI's drifted number parser


def test_cli_embedding_unseen_ignore_and_class_weights(tmp_path, houses, capsys):
    out = tmp_path / "emb"
    assert main(["train", str(houses), "--target", "label", "--impute", "mean", "--encoding",
                 "embed", "--unseen", "ignore", "--class-weight", "balanced", "--hidden",
                 "16:bn:gelu,8:ln", "--optimizer", "adagrad", "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    pred = cr.load_predictor(out / "model.safetensors")
    assert type(pred.model[0]).__name__ == "CategoricalEmbedding"
    assert pred.spec.training["class_weight"] is not None
    assert pred.predict([{"size": 100.0, "city": "west", "rooms": 2}]).shape == (1,)
    onnx = pytest.importorskip("onnx")
    path = cr.onnx.export(out / "model.safetensors", tmp_path / "emb.onnx", opset=13)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert cr.onnx.verify(out / "model.safetensors", path, batch=50) <= 1e-5


def test_evaluate_defaults_to_the_held_out_split_and_says_so(tmp_path, houses, capsys):
    out = tmp_path / "ev"
    assert main(["train", str(houses), "--target", "label", "--impute", "mean", "--quiet",
                 "--out", str(out)]) == 0
    trained = capsys.readouterr().out
    assert main(["evaluate", str(out / "model.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "held-out test split: 60 of 240 rows" in text and "never used in training" in text
    # the same number as at the end of training: the same rows were scored
    assert text.split("accuracy: ")[1].split()[0] == trained.split("accuracy: ")[1].split()[0]
    assert main(["evaluate", str(out / "model.safetensors"), str(houses)]) == 0
    assert "all 240 rows" in capsys.readouterr().out
    # a changed file cannot give back its held-out rows
    copy = tmp_path / "houses.csv"
    shutil.copy(houses, copy)
    assert main(["train", str(copy), "--target", "label", "--impute", "mean", "--quiet",
                 "--out", str(tmp_path / "ev2")]) == 0
    capsys.readouterr()
    with open(copy, "a") as f:
        f.write("100,north,2,dear\n")
    assert main(["evaluate", str(tmp_path / "ev2" / "model.safetensors")]) == 2
    assert "changed since training" in one_error(capsys)


def test_cli_refuses_duplicate_columns(tmp_path, capsys):
    p = tmp_path / "dup.csv"
    rows = "\n".join(f"{i},{i % 3},{-i},{'a' if i % 2 else 'b'}" for i in range(40))
    p.write_text("x,y,x,label\n" + rows + "\n")
    assert main(["train", str(p), "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "columns 1 and 3 are both named 'x'" in one_error(capsys)


def test_unwritable_out_is_found_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["train", "--out", str(blocker / "run")]) == 2
    captured = capsys.readouterr()
    assert "cannot write there" in captured.err and "epoch" not in captured.out


def test_semicolon_csv_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 2))
    p = tmp_path / "semi.csv"
    p.write_text("a;b;y\n" + "\n".join(f"{a:.3f};{b:.3f};{a - b:.3f}" for a, b in X) + "\n")
    assert main(["train", str(p), "--quiet", "--epochs", "5", "--out",
                 str(tmp_path / "s")]) == 0
    assert "R^2" in capsys.readouterr().out
    assert main(["train", str(p), "--delimiter", ",", "--quiet", "--out",
                 str(tmp_path / "s2")]) == 2
    assert "--delimiter" in one_error(capsys)


# --------------------------------------------------------------------------
# Checkpoints: old ones, newer specs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cls", "reg"])
def test_checkpoints_written_by_main_before_specs_still_work(tmp_path, kind, capsys):
    """Files written by `chainrule train` at commit 8146a23 (no spec in the metadata)."""
    ckpt = DATA / f"legacy-{kind}-8146a23.safetensors"
    rows = pd.read_csv(DATA / f"legacy-{kind}.csv")
    want = pd.read_csv(DATA / f"legacy-{kind}-predictions.csv")
    pred = cr.load_predictor(ckpt)
    if kind == "cls":
        assert pred.predict(rows).tolist() == want["prediction"].tolist()
        np.testing.assert_allclose(pred.predict_proba(rows),
                                   want[["p_neg", "p_pos"]].to_numpy(), atol=2e-6)
    else:
        np.testing.assert_allclose(pred.predict(rows), want["prediction"], rtol=1e-5)
    assert cr.load_model(ckpt)(cr.tensor(np.zeros((1, 3), np.float32))).shape[0] == 1
    out = tmp_path / "p.csv"
    assert main(["predict", str(ckpt), str(DATA / f"legacy-{kind}.csv"), "--out",
                 str(out)]) == 0
    assert pd.read_csv(out)["prediction"].astype(str).tolist()[:5] == \
        want["prediction"].astype(str).tolist()[:5]


def _with_spec_version(src: Path, dst: Path, version: int) -> None:
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    info = json.loads(header["__metadata__"]["chainrule"])
    info["metadata"]["spec"]["version"] = version
    header["__metadata__"]["chainrule"] = json.dumps(info)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def test_a_spec_from_a_newer_chainrule_is_refused_in_one_sentence(tmp_path, houses, capsys):
    out = tmp_path / "new"
    assert main(["train", str(houses), "--target", "label", "--impute", "mean", "--epochs",
                 "2", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    future = tmp_path / "future.safetensors"
    _with_spec_version(out / "model.safetensors", future, 99)
    for load in (cr.load_predictor, cr.load_model):
        with pytest.raises(cr.SpecError, match="version 99, written by a newer chainrule"):
            load(future)
    assert main(["predict", str(future), str(houses)]) == 2
    assert "upgrade chainrule" in one_error(capsys)


# --------------------------------------------------------------------------
# Larger than memory (small files here; bench/tables_io.py runs 2 GB)
# --------------------------------------------------------------------------


def test_csv_stream_matches_the_in_memory_statistics_and_trains(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3)) * [1, 5, 0.2] + [0, 10, -1]
    y = np.where(X[:, 0] + (X[:, 1] - 10) / 5 > 0, "up", "down")
    p = tmp_path / "s.csv"
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": y}).to_csv(p, index=False)
    stream = CSVStream(p, "y", batch_size=50, chunk_rows=333, seed=3, val_fraction=0.2).fit()
    assert stream.classes == ["down", "up"] and stream.task == "classification"
    train_rows = sum(len(xb) for xb, _ in stream)
    val_rows = sum(len(xb) for xb, _ in stream.validation())
    assert train_rows + val_rows == 3000 and 450 < val_rows < 750
    held = np.concatenate([xb.data for xb, _ in stream.validation()])
    # the statistics are those of the training rows only, over all chunks
    train_X = np.concatenate([xb.data for xb, _ in CSVStream.__iter__(stream)])
    np.testing.assert_allclose(train_X.mean(axis=0), 0, atol=1e-5)
    assert held.shape[1] == 3
    cr.manual_seed(0)
    model = cr.nn.Sequential(cr.nn.Linear(3, 8), cr.nn.ReLU(), cr.nn.Linear(8, 2))
    h = cr.fit(model, cr.nn.functional.cross_entropy,
               cr.optim.Adam(model.parameters(), lr=1e-2), stream, val=stream.validation(),
               epochs=2, progress=False)
    assert h.history["val_accuracy"][-1] > 0.9
    with pytest.raises(ValueError, match="median"):
        CSVStream(p, "y", impute="median")


def test_npy_memory_map_trains_through_a_dataloader(tmp_path):
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32,
                                  shape=(500, 4))
    X[:] = np.random.default_rng(0).standard_normal((500, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    del X
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    loader = cr.data.DataLoader((Xm, y), batch_size=50, seed=0)
    assert isinstance(loader.dataset.arrays[0], np.memmap)  # not copied into memory
    model = cr.nn.Sequential(cr.nn.Linear(4, 2))
    h = cr.fit(model, cr.nn.functional.cross_entropy,
               cr.optim.Adam(model.parameters(), lr=0.05), loader, epochs=3, progress=False)
    assert h.history["accuracy"][-1] > 0.9


# --------------------------------------------------------------------------
# The "done means": a scikit-learn table, defaults, raw rows, ONNX
# --------------------------------------------------------------------------


def _sklearn_table(tmp_path: Path, name: str) -> tuple[Path, str]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent))
    from bench.tables import write_tables

    return write_tables(tmp_path)[name]


def test_iris_with_string_labels_defaults_predictor_and_onnx(tmp_path, capsys):
    pytest.importorskip("sklearn")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, target = _sklearn_table(tmp_path, "iris")
    assert main(["train", str(path), "--target", target, "--quiet", "--out",
                 str(tmp_path / "iris")]) == 0
    acc = float(capsys.readouterr().out.split("test accuracy: ")[1].split()[0])
    assert acc >= 0.92  # scikit-learn's grid-searched MLP: 0.947-1.000 over seeds 0-2
    ckpt = tmp_path / "iris" / "model.safetensors"
    pred = cr.load_predictor(ckpt)
    rows = pd.read_csv(path)
    labels = pred.predict(rows)
    assert set(labels) <= {"setosa", "versicolor", "virginica"}
    assert (labels == rows[target].to_numpy()).mean() > 0.9
    onx = cr.onnx.export(ckpt, tmp_path / "iris.onnx", opset=17)
    onnx.checker.check_model(onnx.load(str(onx)), full_check=True)
    sess = ort.InferenceSession(str(onx), providers=["CPUExecutionProvider"])
    (label,) = sess.run(["label"], {"input": pred.encode(rows.drop(columns=[target]))})
    np.testing.assert_array_equal(pred.classes_[label], labels)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("CHAINRULE_LONG"),
                    reason="long profile only: run with CHAINRULE_LONG=1")
@pytest.mark.parametrize("name, floor", [("iris", 0.93), ("wine", 0.95),
                                         ("breast_cancer", 0.95), ("diabetes", 0.42)])
def test_defaults_on_the_four_tables_are_near_scikit_learn(tmp_path, name, floor, capsys):
    """The figures of docs/cli.md (seed 0): accuracy or R^2 with nothing but the target."""
    pytest.importorskip("sklearn")
    path, target = _sklearn_table(tmp_path, name)
    assert main(["train", str(path), "--target", target, "--quiet", "--out",
                 str(tmp_path / name)]) == 0
    text = capsys.readouterr().out
    key = "test R^2: " if name == "diabetes" else "test accuracy: "
    assert float(text.split(key)[1].split()[0]) >= floor
