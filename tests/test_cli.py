"""The ``chainrule`` command line, end to end (subprocesses) and in process (errors)."""

from __future__ import annotations

import csv
import gzip
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr
from chainrule.cli import main

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "chainrule", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def accuracy_of(text: str) -> float:
    m = re.search(r"test accuracy: ([0-9.]+)", text)
    assert m, text
    return float(m.group(1))


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("chainrule: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Path]:
    """A small classification CSV (string labels), a regression CSV and rows to predict."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 3)).round(4)
    label = np.where(X[:, 0] + X[:, 1] > 0, "pos", "neg")
    value = 2 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] ** 2
    paths = {k: tmp_path / f"{k}.csv" for k in ("cls", "reg", "new")}
    with open(paths["cls"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "label"])
        w.writerows([[*x, lab] for x, lab in zip(X, label)])
    with open(paths["reg"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "y"])
        w.writerows([[*x, round(v, 4)] for x, v in zip(X, value)])
    with open(paths["new"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["c", "b", "a"])  # other column order: matched by name
        w.writerows([[x[2], x[1], x[0]] for x in X[:8]])
    return paths


# --------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------


def test_quick_train_on_digits_writes_everything(tmp_path: Path):
    proc = run_cli("train", "--epochs", "3", "--out", "run", cwd=tmp_path, check=True)
    assert accuracy_of(proc.stdout) > 0.9
    assert "test loss" in proc.stdout
    assert "samples/s" in proc.stdout
    run = tmp_path / "run"
    assert (run / "model.safetensors").stat().st_size > 0
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # the checkpoint rebuilds the architecture and remembers the run
    ckpt = cr.load(run / "model.safetensors")
    model = ckpt.model()
    assert model(cr.tensor(np.zeros((2, 64), np.float32))).shape == (2, 10)
    assert ckpt.metadata["classes"] == list(range(10))
    split = ckpt.metadata["data"]["split"]
    assert split["test_size"] == 0.25 and split["seed"] == 0 and split["n_rows"] == 1797
    # evaluate redraws the same test split: the same accuracy as at the end of training
    ev = run_cli("evaluate", "run/model.safetensors", "digits", cwd=tmp_path, check=True)
    m = re.search(r"accuracy: ([0-9.]+)", ev.stdout)
    assert m and float(m.group(1)) == accuracy_of(proc.stdout)


def test_default_training_reaches_097_on_digits(tmp_path: Path):
    # the documented defaults: a 15 % validation split, early stopping (patience 20),
    # width scaled to the table (128-64 here), Adam 2e-3, batch 32
    proc = run_cli("train", "--quiet", "--out", "run", cwd=tmp_path, check=True)
    assert accuracy_of(proc.stdout) >= 0.97
    assert proc.stdout.count("\n") == 1  # --quiet: the result line only


def test_csv_classification_train_predict_evaluate(tmp_path: Path, tables):
    run_cli("train", str(tables["cls"]), "--target", "label", "--epochs", "25", "--quiet",
            "--hidden", "16", "--out", "cls", cwd=tmp_path, check=True)
    meta = cr.load(tmp_path / "cls" / "model.safetensors").metadata
    assert meta["classes"] == ["neg", "pos"] and meta["feature_names"] == ["a", "b", "c"]
    pred = run_cli("predict", "cls/model.safetensors", str(tables["new"]), "--out",
                   "preds.csv", "--proba", cwd=tmp_path, check=True)
    assert "8 predictions" in pred.stdout
    rows = list(csv.DictReader(open(tmp_path / "preds.csv")))
    assert len(rows) == 8 and set(rows[0]) == {"prediction", "p_neg", "p_pos"}
    X = np.loadtxt(tables["new"], delimiter=",", skiprows=1)
    truth = np.where(X[:, 2] + X[:, 1] > 0, "pos", "neg")
    assert np.mean([r["prediction"] == t for r, t in zip(rows, truth)]) >= 0.75
    ev = run_cli("evaluate", "cls/model.safetensors", str(tables["cls"]), cwd=tmp_path,
                 check=True)
    assert float(re.search(r"accuracy: ([0-9.]+)", ev.stdout).group(1)) > 0.85


def test_csv_regression(tmp_path: Path, tables):
    proc = run_cli("train", str(tables["reg"]), "--epochs", "40", "--hidden", "32",
                   "--quiet", "--out", "reg", cwd=tmp_path, check=True)
    r2 = float(re.search(r"R\^2: (-?[0-9.]+)", proc.stdout).group(1))
    assert "RMSE" in proc.stdout and r2 > 0.8
    pred = run_cli("predict", "reg/model.safetensors", str(tables["new"]), cwd=tmp_path,
                   check=True)
    lines = pred.stdout.splitlines()
    assert lines[0] == "prediction" and len(lines) == 9
    float(lines[1])


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


def test_mnist_directory(tmp_path: Path):
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 30, size=(n, 28, 28), dtype=np.uint8)
        images[np.arange(n), labels, :] = 255  # a learnable stripe per class
        _write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", labels)
    proc = run_cli("train", "mnist", "--epochs", "5", "--hidden", "32", "--quiet",
                   "--out", "m", cwd=tmp_path, check=True)
    assert accuracy_of(proc.stdout) > 0.5
    ev = run_cli("evaluate", "m/model.safetensors", "mnist", cwd=tmp_path, check=True)
    assert "(40 samples)" in ev.stdout


def test_help_and_version(tmp_path: Path):
    proc = run_cli("--help", cwd=tmp_path, check=True)
    for name in ("train", "evaluate", "predict", "explain"):
        assert name in proc.stdout
    assert run_cli("--version", cwd=tmp_path, check=True).stdout.strip() == \
        f"chainrule {cr.__version__}"


def test_errors_end_with_one_line(tmp_path: Path):
    for args in (("train", "--epochs", "zero"), ("train", "missing.csv"), ("nonsense",)):
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 2
        one_error_line(proc.stderr)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    proc = run_cli("evaluate", "junk.safetensors", "digits", cwd=tmp_path)
    assert proc.returncode == 2
    assert "junk.safetensors" in one_error_line(proc.stderr)
    # --debug shows the traceback instead
    proc = run_cli("--debug", "evaluate", "junk.safetensors", "digits", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# --------------------------------------------------------------------------
# Errors, in process (fast)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--hidden", "12,x"], "--hidden"),
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--dropout", "1"], "--dropout"),
        (["train", "--activation", "swish"], "--activation"),
        (["train", "--optimizer", "lbfgs"], "--optimizer"),
        (["train", "--batch-size", "-3"], "--batch-size"),
        (["evaluate"], "MODEL"),
    ],
)
def test_bad_arguments(args, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert fragment in line


def test_bad_files(tmp_path: Path, tables, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n3,oops,y\n")
    cases = [
        (["train", str(bad), "--quiet", "--out", str(tmp_path / "o")], "oops"),
        (["train", str(tables["cls"]), "--target", "nope", "--quiet"], "nope"),
        (["train", str(tables["reg"]), "--loss", "cross_entropy", "--quiet"], "numeric"),
        (["train", str(tmp_path), "--quiet"], "MNIST"),
        (["evaluate", str(tables["cls"]), "digits"], "not a valid checkpoint"),
        (["evaluate", str(tmp_path / "none.safetensors")], "no such model file"),
    ]
    for args, fragment in cases:
        assert main(args) == 2, args
        assert fragment in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("task", ["auto", "classify", "regress"])
def test_train_refuses_a_target_beyond_float32_naming_the_cell(tmp_path: Path, capsys, task):
    # was: "internal error: OverflowError" (pandas' to_numeric on a 320-digit
    # integer, even with errors="coerce"); now what load_csv says. pandas 2 reads
    # no number in that cell: the column is then text (class labels, or not
    # numeric for a regression)
    import pandas as pd

    rows = ["a,b,y"] + [f"{i * 0.1},{i % 3},{i % 2}" for i in range(30)]
    rows[5] = "0.5,1," + "9" * 320
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    code = main(["train", str(path), "--target", "y", "--task", task, "--epochs", "1",
                 "--quiet", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert "internal error" not in err
    if int(pd.__version__.split(".")[0]) >= 3:
        assert code == 2
        assert re.search(r"t\.csv, line 6, column 3 \('y'\): '9{320}' is not a finite "
                         r"float32 number", one_error_line(err))
    else:
        assert code == (2 if task == "regress" else 0)


def test_predict_rejects_mismatched_csv(tmp_path: Path, tables, capsys):
    assert main(["train", str(tables["cls"]), "--target", "label", "--epochs", "1",
                 "--quiet", "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    model = str(tmp_path / "m" / "model.safetensors")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("x,y\n1,2\n")
    assert main(["predict", model, str(wrong)]) == 2
    assert "features" in one_error_line(capsys.readouterr().err)
    text = tmp_path / "text.csv"
    text.write_text("a,b,c\n1,2,three\n")
    assert main(["predict", model, str(text)]) == 2
    assert "'three' is not a number" in one_error_line(capsys.readouterr().err)
    # a foreign (plain safetensors) checkpoint is refused with a hint
    plain = tmp_path / "plain.safetensors"
    cr.save({"w": np.zeros(3, np.float32)}, plain)
    assert main(["predict", str(plain), str(tables["new"])]) == 2
    assert "cr.load" in one_error_line(capsys.readouterr().err)


def test_full_batch_tol_patience_and_options(tmp_path: Path, capsys):
    # plain gradient descent with the notes' stopping rule
    code = main(["train", "--batch-size", "0", "--optimizer", "sgd", "--lr", "0.5",
                 "--epochs", "500", "--tol", "0.05", "--hidden", "16", "--quiet",
                 "--out", str(tmp_path / "gd")])
    assert code == 0
    hist = list(csv.DictReader(open(tmp_path / "gd" / "history.csv")))
    assert len(hist) < 500 and all(r["steps"] == str(i + 1) for i, r in enumerate(hist))
    # early stopping on a validation split, other losses/activations/optimizers
    code = main(["train", "--patience", "2", "--epochs", "60", "--loss", "mse",
                 "--activation", "tanh", "--optimizer", "rmsprop", "--dropout", "0.1",
                 "--momentum", "0.5", "--weight-decay", "1e-4", "--no-compile",
                 "--quiet", "--out", str(tmp_path / "es")])
    assert code == 0
    hist = list(csv.DictReader(open(tmp_path / "es" / "history.csv")))
    assert "val_loss" in hist[0] and len(hist) < 60
    out = capsys.readouterr().out
    assert accuracy_of(out) > 0.8


def test_missing_matplotlib_is_one_line(tmp_path: Path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "matplotlib is not installed" in out
    assert not (tmp_path / "r" / "loss.png").exists()
    assert (tmp_path / "r" / "model.safetensors").exists()
