"""The ``chainrule`` command line: train, evaluate and use an MLP without writing code.

::

    chainrule train                       # the bundled digits, 25 % held-out test split
    chainrule train data.csv --target species --categorical city --impute median
    chainrule evaluate runs/digits/model.safetensors      # its held-out test split
    chainrule predict runs/iris/model.safetensors new.csv --out predictions.csv
    chainrule export runs/iris/model.safetensors --onnx iris.onnx
    chainrule explain "0.5*(sigmoid(w*x+b)-y)**2" w=0.5 x=1 b=0 y=1
    chainrule playground dataset=spiral hidden=8,8   # the backpropagation playground

Everything a later ``evaluate`` / ``predict`` / ``export`` needs is stored in the
checkpoint itself: the model spec (:mod:`chainrule.spec`: architecture,
preprocessing with its fitted statistics and categories, class names,
training settings) and how the test split was drawn.

Errors in arguments or files end the program with one line on stderr,
``chainrule: error: ...``, and exit status 2 (1 for anything unexpected);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

__all__ = ["main", "build_parser", "CLIError"]

PROG = "chainrule"
DIGITS = "digits"

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "gelu", "silu", "elu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")
LOSSES = ("cross_entropy", "mse", "l1", "huber")


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        self.exit(2, f"{PROG}: error: {message}{hint}\n")


# --------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> Any:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (
            v < hi if hi_open else v <= hi)
        if not ok:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(f"expected a number in {left}{lo:g}, {hi:g}{right}, "
                                             f"got {text}")
        return v
    return parse


def _hidden(text: str) -> Any:
    """``"128,64"``, ``"64:bn:gelu,32"``, ``"none"`` or ``"auto"`` (checked here,
    expanded by :func:`chainrule.spec.parse_hidden` once the activation is known)."""
    if text.strip().lower() == "auto":
        return "auto"
    from .spec import SpecError, parse_hidden

    try:
        parse_hidden(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return text


def _fraction_or_zero(text: str) -> float:
    v = _float_in(0, 1)(text)
    return v


def build_parser() -> argparse.ArgumentParser:
    """The ``chainrule`` parser with its subcommands."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Train, evaluate and use multi-layer perceptrons built on chainrule, "
        "a reverse-mode autodiff engine in NumPy.",
        epilog="Run 'chainrule COMMAND --help' for a command's options. "
        "Quick start: 'chainrule train' trains on the bundled handwritten digits; "
        "'chainrule playground' opens the backpropagation playground in the browser.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback when something fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    # -- train -------------------------------------------------------------
    tr = sub.add_parser(
        "train",
        help="train an MLP on the digits, MNIST IDX files or a CSV file",
        description="Train an MLP with a progress bar, report test accuracy (or RMSE/R^2 for "
        "a numeric CSV target), and write the model, history.csv and a loss-curve PNG to "
        "--out.",
        epilog="DATA: 'digits' (default; the bundled 8x8 digits, 25%% stratified test split), "
        "a directory holding MNIST/Fashion-MNIST IDX files (train and t10k), or a CSV file "
        "(with --target).",
    )
    tr.add_argument("data", nargs="?", default=DIGITS, metavar="DATA",
                    help="'digits' (default), an MNIST directory, or a CSV file")
    g = tr.add_argument_group("data")
    g.add_argument("--target", default=None, metavar="COL",
                   help="CSV target column: a name from the header, or an index "
                        "(0-based, negative from the end; default: the last column)")
    g.add_argument("--task", choices=("auto", "classify", "regress"), default="auto",
                   help="CSV only. auto: text labels or at most 20 distinct integers are "
                        "classes, other numbers are regression (default: auto)")
    g.add_argument("--test-size", type=_float_in(0, 1, lo_open=True), default=0.25,
                   help="held-out test fraction for digits and CSV (default: 0.25)")
    g.add_argument("--delimiter", default=None, metavar="CHAR",
                   help="CSV field delimiter (default: detected among , ; TAB |)")
    g.add_argument("--categorical", default="auto", metavar="COLS",
                   help="comma-separated categorical columns (default: auto, every column "
                        "whose cells are all text)")
    g.add_argument("--encoding", choices=("onehot", "embed"), default="onehot",
                   help="categorical columns as one-hot columns, or as codes feeding an "
                        "nn.Embedding per column (default: onehot)")
    g.add_argument("--embed-dim", type=_positive_int, default=None, metavar="D",
                   help="embedding width per categorical column with --encoding embed "
                        "(default: min(16, (categories + 1) // 2))")
    g.add_argument("--impute", choices=("error", "mean", "median", "most-frequent"),
                   default="error",
                   help="missing cells: refuse them (default), or fill numeric columns with "
                        "the training mean/median/most frequent value (categorical columns "
                        "take their most frequent category)")
    g.add_argument("--unseen", choices=("error", "ignore", "most-frequent"), default="error",
                   help="a category at predict time that training never saw: refuse it "
                        "(default), encode it as no category, or as the most frequent one")
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="feed numeric features as they are (default: scale each to mean 0, "
                        "std 1 using training-set statistics)")
    g = tr.add_argument_group("model")
    g.add_argument("--hidden", type=_hidden, default="auto", metavar="SPEC",
                   help="hidden layers, comma-separated WIDTH[:OPTION...]; options: an "
                        "activation, bn (BatchNorm1d), ln (LayerNorm), dropP; 'none' for no "
                        "hidden layer (default: auto, two layers scaled to the table: "
                        "16-8 up to 128-64)")
    g.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                   help="hidden-layer activation (default: relu)")
    g.add_argument("--dropout", type=_float_in(0, 1), default=0.0,
                   help="dropout probability after each hidden activation (default: 0)")
    g = tr.add_argument_group("optimisation")
    g.add_argument("--loss", choices=LOSSES, default=None,
                   help="classification: cross_entropy (softmax + log-loss, default) or mse "
                        "(squared error between softmax output and one-hot target); "
                        "regression: mse (default), l1 or huber")
    g.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                   help="balanced: weight each class by n / (classes x its count) in the "
                        "cross-entropy, for imbalanced classes (default: none)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="default: adam")
    g.add_argument("--lr", type=_float_in(0, math.inf, lo_open=True), default=None,
                   help="learning rate (default: 2e-3 for adam/adamw, 1e-3 rmsprop, "
                        "0.05 sgd/adagrad)")
    g.add_argument("--momentum", type=_float_in(0, 1), default=0.0,
                   help="SGD/RMSprop momentum (default: 0)")
    g.add_argument("--weight-decay", type=_float_in(0, math.inf), default=None,
                   help="L2 weight decay (default: 0; 0.01 for adamw)")
    g.add_argument("--batch-size", type=_nonneg_int, default=32,
                   help="mini-batch size; 0 = the whole training set (plain gradient "
                        "descent) (default: 32)")
    g.add_argument("--epochs", type=_positive_int, default=200,
                   help="maximum number of epochs (default: 200; early stopping usually "
                        "ends training well before)")
    g.add_argument("--tol", type=_float_in(0, math.inf, lo_open=True), default=None,
                   help="stop when one step moves the weights by less than TOL "
                        "(||w_new - w_old||_2 < TOL)")
    g.add_argument("--val-size", type=_fraction_or_zero, default=0.15,
                   help="validation fraction held out of the training data, evaluated every "
                        "epoch and used for early stopping; 0 trains on all of it (default: "
                        "0.15)")
    g.add_argument("--patience", type=_nonneg_int, default=20,
                   help="stop after PATIENCE epochs without a better validation loss and "
                        "restore the best epoch's weights; 0 = never stop early (default: 20)")
    g = tr.add_argument_group("run")
    g.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seeds the split, the initial weights, dropout and shuffling "
                        "(default: 0)")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: runs/<data name>, overwritten)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress output; print only the final result")
    g.add_argument("--no-compile", dest="compile", action="store_false",
                   help="run every step eagerly (no cr.compile replay)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training on the ranks of an MPI job: "
                        "'mpiexec -n 4 chainrule train --distributed ...' (needs "
                        "pip install \"chainrule[mpi]\"); --batch-size stays the global batch, "
                        "so the result matches one process; rank 0 prints and writes the files")
    tr.set_defaults(func=cmd_train)

    # -- evaluate ----------------------------------------------------------
    ev = sub.add_parser(
        "evaluate",
        help="accuracy and loss of a saved model on a dataset",
        description="Evaluate a model written by 'chainrule train'. Without DATA, the test "
        "split held out at training time is redrawn (digits, CSV: verified against the "
        "checkpoint) and only those rows are scored; an MNIST directory uses its t10k files; "
        "a DATA file given explicitly is scored whole.",
    )
    ev.add_argument("model", metavar="MODEL", help="model.safetensors from 'chainrule train'")
    ev.add_argument("data", metavar="DATA", nargs="?", default=None,
                    help="'digits', an MNIST directory or a CSV file (default: the held-out "
                         "test rows of the data the model was trained on)")
    ev.add_argument("--target", default=None, metavar="COL",
                    help="CSV target column (default: the one used for training)")
    ev.add_argument("--delimiter", default=None, metavar="CHAR",
                    help="CSV field delimiter (default: detected)")
    ev.set_defaults(func=cmd_evaluate)

    # -- predict -----------------------------------------------------------
    pr = sub.add_parser(
        "predict",
        help="predict labels (or values) for the rows of a CSV file",
        description="Predict with a model written by 'chainrule train'. The CSV needs the "
        "training columns (by header name, any order; strings for categorical columns), "
        "or, without a header, the training columns in training order; other columns such "
        "as the target are ignored. The stored preprocessing is applied; class predictions "
        "use the original class names.",
    )
    pr.add_argument("model", metavar="MODEL", help="model.safetensors from 'chainrule train'")
    pr.add_argument("csv", metavar="CSV", help="rows to predict")
    pr.add_argument("--out", default=None, metavar="FILE",
                    help="write a CSV with a 'prediction' column (default: print to stdout)")
    pr.add_argument("--proba", action="store_true",
                    help="also write one probability column per class")
    pr.add_argument("--delimiter", default=None, metavar="CHAR",
                    help="CSV field delimiter (default: detected)")
    pr.set_defaults(func=cmd_predict)

    # -- export ------------------------------------------------------------
    ex = sub.add_parser(
        "export",
        help="export a saved model to ONNX",
        description="Write an ONNX model with a dynamic batch dimension: the network, the "
        "stored standardisation as ONNX nodes (input: the numeric feature columns after "
        "categorical encoding, see docs/onnx.md), class names in the metadata. Needs "
        "pip install \"chainrule[onnx]\".",
    )
    ex.add_argument("model", metavar="MODEL", help="model.safetensors from 'chainrule train'")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--opset", type=_positive_int, default=17,
                    help="ONNX opset version, 13 to 21 (default: 17)")
    ex.add_argument("--no-verify", dest="verify", action="store_false",
                    help="do not compare onnxruntime's outputs with chainrule's")
    ex.set_defaults(func=cmd_export)

    # -- explain (owned by chainrule.teach.cli) -------------------------------
    # imported outright: a failure there is a bug to see, not a reason to
    # drop the subcommand without a word
    from . import cli_explain

    cli_explain.add_parser(sub)

    # -- playground (owned by chainrule.playground.cli) -----------------------
    from .playground import cli as playground_cli

    playground_cli.add_parser(sub)
    return parser


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclass
class Dataset:
    """The rows to train and test on, and what must be remembered to use the model later.

    ``features`` holds every row's raw features (a DataFrame for CSV files, an
    array for digits/MNIST); ``train_idx`` / ``test_idx`` pick the rows of each
    side (MNIST brings its own test files: ``test_set``, its features and labels).
    """

    name: str
    kind: str  # "digits", "mnist" or "csv"
    features: Any
    y: np.ndarray  # class indices or float values, one per row of features
    train_idx: np.ndarray
    test_idx: np.ndarray
    task: str  # "classification" or "regression"
    classes: list[Any] | None
    feature_names: list[str] | None = None
    target: str | None = None
    split: dict[str, Any] | None = None
    test_set: tuple[Any, np.ndarray] | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def rows(self, features: Any, idx: np.ndarray | None) -> Any:
        if idx is None:
            return features
        return features.iloc[idx] if hasattr(features, "iloc") else features[idx]

    @property
    def n_test(self) -> int:
        return len(self.test_set[1]) if self.test_set is not None else len(self.test_idx)


def _describe_path(text: str) -> str:
    return (f"{text}: no such file or directory (DATA is 'digits', a CSV file or a "
            "directory of MNIST IDX files)")


def _target_arg(text: str | None) -> int | str:
    if text is None:
        return -1
    try:
        return int(text)
    except ValueError:
        return text


def _split_indices(y: np.ndarray, test_size: float, seed: int, stratify: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices; the same arguments always give the same split."""
    from .data import train_test_split

    idx = np.arange(len(y))
    strat = None
    if stratify:
        counts = np.bincount(y.astype(np.int64))
        if counts[counts > 0].min(initial=2) >= 2:
            strat = y  # a class with one sample cannot be on both sides
    tr, te, _, _ = train_test_split(idx, idx, test_size=test_size, seed=seed, stratify=strat)
    return tr, te


def _label_key(v: Any) -> str:
    # labels round-trip through JSON, so compare them by their text (1 and 1.0 alike)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    return str(v).strip()


def _check_mnist_dir(path: Path) -> None:
    # load_mnist's own message is a page of download instructions; say it in one line
    if not any("idx" in p.name for p in path.iterdir()):
        raise CLIError(f"{path}: a directory without MNIST IDX files (expected "
                       "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                       "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])")


def _file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _target_numbers(df: Any, tname: str) -> np.ndarray:
    """The target column as float64, NaN where a cell is text; a column of numbers
    holding one that float32 cannot (a 320-digit integer, 1e39) is refused,
    naming the cell, as ``load_csv`` refuses it."""
    from .data.tables import beyond_float32, not_float32, numbers

    num = numbers(df[tname])
    if not np.isnan(num).any():
        big = beyond_float32(num)
        if big.any():
            r = int(np.flatnonzero(big)[0])
            raise CLIError(not_float32(df, r, tname, num[r]))
    return num


def _csv_target(path: Path, df: Any, target: str | None, task: str
                ) -> tuple[str, np.ndarray, list[Any] | None, str]:
    """(target name, y, classes, task) from the table (see --task)."""
    from .data.tables import locate

    names = [str(c) for c in df.columns]
    if len(names) < 2:
        raise CLIError(f"{path}: found {len(names)} column; need at least one feature column "
                       "and the target (if the file uses another delimiter, pass --delimiter)")
    tgt = _target_arg(target)
    if isinstance(tgt, str):
        if tgt not in names:
            raise CLIError(f"{path}: no column named {tgt!r}; columns: {names}")
        tname = tgt
    else:
        if not -len(names) <= tgt < len(names):
            raise CLIError(f"{path}: target index {tgt} is out of range for {len(names)} "
                           "columns")
        tname = names[tgt]
    col = df[tname]
    miss = np.asarray(col.isna())
    if miss.any():
        r = int(np.flatnonzero(miss)[0])
        raise CLIError(f"{locate(df, r, tname)}: empty target cell (rows without a target "
                       "cannot be trained on; remove them)")
    raw = col.to_numpy()
    num = _target_numbers(df, tname)
    numeric = not np.isnan(num).any()
    if task == "regress":
        if not numeric:
            raise CLIError(f"{path}: target {tname!r} is not numeric; it cannot be regressed "
                           "(use --task classify)")
        return tname, num, None, "regression"
    if numeric:
        values = np.unique(num)
        if task == "classify" or (values.size <= 20 and np.all(values == np.round(values))):
            classes: list[Any] = [int(v) if float(v).is_integer() else float(v) for v in values]
            index = {_label_key(c): k for k, c in enumerate(classes)}
            y = np.array([index[_label_key(v)] for v in num], dtype=np.int64)
            return tname, y, classes, "classification"
        return tname, num, None, "regression"
    labels = [str(v).strip() for v in raw]
    classes = sorted(set(labels))
    index = {c: k for k, c in enumerate(classes)}
    return tname, np.array([index[c] for c in labels], dtype=np.int64), classes, \
        "classification"


def _read_csv(path: Path, delimiter: str | None, target: str | None) -> Any:
    from .data import read_table

    return read_table(path, delimiter=delimiter,
                      prefer_header=isinstance(_target_arg(target), str))


def load_training_data(args: argparse.Namespace) -> Dataset:
    """DATA -> all rows, with seeded train/test row indices (MNIST: its own files)."""
    text = args.data
    split = {"test_size": args.test_size, "seed": args.seed}
    if text == DIGITS:
        from .data import load_digits

        X, y = load_digits()
        tr, te = _split_indices(y, args.test_size, args.seed, stratify=True)
        return Dataset(DIGITS, "digits", X, y, tr, te, "classification", list(range(10)),
                       split={**split, "stratify": True, "n_rows": len(y)}, source=DIGITS)
    path = Path(text)
    if path.is_dir():
        from .data import load_mnist

        _check_mnist_dir(path)
        Xtr, ytr = load_mnist(path, kind="train")
        Xte, yte = load_mnist(path, kind="test")
        Xtr, Xte = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
        return Dataset(path.resolve().name or "mnist", "mnist", Xtr, ytr,
                       np.arange(len(ytr)), np.zeros(0, np.int64), "classification",
                       list(range(10)), test_set=(Xte, yte),
                       source=str(path.resolve()))
    if not path.exists():
        raise CLIError(_describe_path(text))
    df = _read_csv(path, args.delimiter, args.target)
    tname, y, classes, task = _csv_target(path, df, args.target, args.task)
    features = df.drop(columns=[tname])
    tr, te = _split_indices(y, args.test_size, args.seed, stratify=task == "classification")
    meta = df.attrs.get("chainrule_source", {})
    split = {**split, "stratify": task == "classification", "n_rows": int(len(df)),
             "sha256": _file_digest(path), "delimiter": meta.get("delimiter")}
    return Dataset(path.stem, "csv", features, y, tr, te, task, classes,
                   feature_names=[str(c) for c in features.columns], target=tname,
                   split=split, source=str(path.resolve()))


# --------------------------------------------------------------------------
# Model and training
# --------------------------------------------------------------------------


def _regression_scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = pred.ravel().astype(np.float64) - y.ravel().astype(np.float64)
    mse = float(np.mean(err**2))
    var = float(np.var(y.astype(np.float64)))
    r2 = 1.0 - mse / var if var > 0 else float("nan")
    return {"mse": mse, "rmse": math.sqrt(mse), "r2": r2}


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _prepare_out(out: Path) -> None:
    """Make --out and prove it can be written to, before any training time is spent."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".chainrule-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CLIError(f"--out {out}: cannot write there ({e.strerror or e}); choose another "
                       "directory") from None


def _embedding(prep: Any, dim: int | None) -> dict[str, Any] | None:
    if prep.encoding != "embed" or not prep.categorical:
        return None
    cards = prep.cardinalities
    dims = [dim or min(16, max(1, (c + 1) // 2)) for c in cards]
    return {"numeric": len(prep.numeric), "cardinalities": cards, "dims": dims}


def _evaluate(spec: Any, model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Test metrics: accuracy and loss, or RMSE / R^2 / MSE in the target's units."""
    from .spec import run_model
    from .training import evaluate

    if spec.task == "classification":
        res = evaluate(model, spec.loss_fn(), (X, spec.targets(y)), metrics=spec.metrics())
        return {"accuracy": float(res["accuracy"]), "loss": float(res["loss"])}
    pred = spec.outputs_to_predictions(run_model(model, X))
    return _regression_scores(pred, y)


def _result_line(task: str, m: dict[str, float], n: int, prefix: str = "") -> str:
    if task == "classification":
        return (f"{prefix}accuracy: {m['accuracy']:.4f}  ({round(m['accuracy'] * n)}/{n})  "
                f"{prefix}loss: {m['loss']:.4f}")
    return f"{prefix}RMSE: {m['rmse']:.4g}  {prefix}R^2: {m['r2']:.4f}  {prefix}MSE: {m['mse']:.4g}"


def cmd_train(args: argparse.Namespace) -> int:
    import chainrule as cr

    from .data import TablePreprocessor, train_test_split
    from .spec import ModelSpec, SpecError, auto_hidden, balanced_class_weight
    from .training import EarlyStopping, WeightChangeStopping

    rank = _distributed_start(args)
    say = (lambda *a, **k: None) if args.quiet or rank else print

    # -- data --------------------------------------------------------------
    ds = load_training_data(args)
    out = Path(args.out) if args.out else Path("runs") / _safe_name(ds.name)
    if not rank:  # rank 0 alone writes the files
        _prepare_out(out)
    task = ds.task
    n_classes = len(ds.classes) if ds.classes is not None else 0
    if task == "classification" and n_classes < 2:
        raise CLIError(f"{args.data}: the target has {n_classes} class; need at least 2")
    loss_name = args.loss or ("mse" if task == "regression" else "cross_entropy")
    if task == "regression" and loss_name == "cross_entropy":
        raise CLIError("--loss cross_entropy needs class labels; this target is numeric "
                       "(regression uses mse, l1 or huber; use --task classify for integer "
                       "classes)")
    if task == "classification" and loss_name not in ("cross_entropy", "mse"):
        raise CLIError(f"--loss {loss_name} is a regression loss; this target has classes")

    # validation rows: held out of the training rows, never used for a gradient step
    train_idx, val_idx = ds.train_idx, None
    if args.val_size > 0:
        strat = ds.y[train_idx] if task == "classification" else None
        if strat is not None and np.bincount(strat.astype(np.int64)).min(initial=2) < 2:
            strat = None
        try:
            train_idx, val_idx, _, _ = train_test_split(
                ds.train_idx, ds.train_idx, test_size=args.val_size, seed=args.seed + 1,
                stratify=strat)
        except ValueError:
            # too few rows to hold any out: say so and train on them all
            say(f"note: {len(ds.train_idx)} training rows are too few for a validation "
                "split; training on all of them without early stopping")

    # -- preprocessing: fitted on the training rows only ---------------------
    prep = TablePreprocessor(categorical=args.categorical, impute=args.impute,
                             encoding=args.encoding, unseen=args.unseen,
                             standardize=args.standardize)
    prep.fit(ds.rows(ds.features, train_idx))
    Xtr = prep.transform(ds.rows(ds.features, train_idx))
    Xval = None if val_idx is None else prep.transform(ds.rows(ds.features, val_idx))
    if ds.test_set is not None:
        Xte, yte = prep.transform(ds.test_set[0]), ds.test_set[1]
    else:
        Xte, yte = prep.transform(ds.rows(ds.features, ds.test_idx)), ds.y[ds.test_idx]
    ytr = ds.y[train_idx]

    target: dict[str, Any] = {"name": ds.target, "classes": ds.classes}
    if task == "regression":
        # training on standardised targets keeps the first steps well scaled
        target["scale"] = {"mean": float(ytr.mean()), "std": float(ytr.std() or 1.0)}
    embedding = _embedding(prep, args.embed_dim)
    hidden = auto_hidden(len(Xtr)) if args.hidden == "auto" else args.hidden
    class_weight = balanced_class_weight(ytr, n_classes) if (
        task == "classification" and args.class_weight == "balanced") else None
    try:
        spec = ModelSpec(
            task=task, n_features=int(Xtr.shape[1]),
            n_outputs=1 if task == "regression" else n_classes, hidden=hidden,
            activation=args.activation, dropout=args.dropout, embedding=embedding,
            preprocessing=prep.get_state(), target=target,
            training={"optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
                      "weight_decay": args.weight_decay, "batch_size": args.batch_size,
                      "epochs": args.epochs, "patience": args.patience,
                      "val_size": args.val_size, "loss": loss_name,
                      "class_weight": class_weight, "seed": args.seed, "tol": args.tol,
                      "compile": "auto" if args.compile else False},
            data={"kind": ds.kind, "source": ds.source, "split": ds.split,
                  "target": ds.target})
    except SpecError as e:
        raise CLIError(str(e)) from None

    # -- model, loss, optimizer --------------------------------------------
    cr.manual_seed(args.seed)
    model = spec.build_model()
    opt = spec.make_optimizer(model.parameters())
    val = None if Xval is None else (Xval, spec.targets(ds.y[val_idx]))
    callbacks: list[Any] = []
    if args.tol is not None:
        callbacks.append(WeightChangeStopping(tol=args.tol))
    if val is not None and args.patience > 0:
        callbacks.append(EarlyStopping(patience=args.patience, restore_best_weights=True))

    n_params = sum(int(p.size) for p in model.parameters())
    widths = [str(prep.n_outputs)] + [str(h["units"]) for h in spec.hidden_layers()] + \
        [str(spec.n_outputs)]
    cat = f", {len(prep.categorical)} categorical ({prep.encoding})" if prep.categorical else ""
    say(f"data: {ds.name}: {_fmt_int(len(Xtr))} training, "
        + (f"{_fmt_int(len(Xval))} validation, " if Xval is not None else "")
        + f"{_fmt_int(len(Xte))} test samples, {len(prep.feature_names)} features{cat}, "
        + (f"{n_classes} classes" if task == "classification" else "numeric target"))
    lr = opt.param_groups[0]["lr"]
    batch = spec.training["batch_size"]
    say(f"model: MLP {'-'.join(widths)} ({args.activation}"
        + (f", dropout {args.dropout:g}" if args.dropout else "")
        + f"), {_fmt_int(n_params)} parameters; loss {loss_name}; {args.optimizer} lr={lr:g}, "
        + ("full batch" if batch == 0 else f"batch {min(batch, len(Xtr))}")
        + f", up to {args.epochs} epochs"
        + (f", early stopping (patience {args.patience})" if callbacks and val else ""))

    # -- train ---------------------------------------------------------------
    t0 = time.perf_counter()
    history = spec.fit(model, Xtr, spec.targets(ytr), val=val, callbacks=callbacks,
                       progress=not args.quiet, optimizer=opt, distributed=args.distributed)
    seconds = time.perf_counter() - t0
    samples = len(Xtr) * history.epochs
    rate = samples / seconds if seconds > 0 else float("nan")
    best = getattr(history, "best_epoch", None)

    # -- test ----------------------------------------------------------------
    m = _evaluate(spec, model, Xte, yte)
    metrics = {f"test_{k}": v for k, v in m.items()}
    result = _result_line(task, m, len(Xte), prefix="test ")

    if rank:
        return 0  # the replicas are equal: rank 0 alone reports and writes the files

    # -- files ---------------------------------------------------------------
    meta = {
        "trained_by": "chainrule train",
        "spec": spec.to_dict(),
        "task": task,
        "classes": ds.classes,
        "feature_names": prep.feature_names,
        "target": ds.target,
        "data": {"kind": ds.kind, "source": ds.source, "split": ds.split},
        "epochs_run": history.epochs,
        "best_epoch": best,
        "metrics": metrics,
        "train_seconds": seconds,
    }
    model_path = cr.save(model, out / "model.safetensors", metadata=meta)
    history.to_csv(out / "history.csv")
    written = [model_path, out / "history.csv"]
    try:
        written.append(history.plot(out / "loss.png"))
    except ImportError:
        say('loss curve not drawn: matplotlib is not installed (pip install "chainrule[plot]")')

    say(f"trained {history.epochs} epochs in {seconds:.1f} s ({rate:,.0f} samples/s)"
        + (f"; kept the weights of epoch {best} (best validation loss)"
           if best is not None and callbacks and val is not None else ""))
    say("wrote " + ", ".join(str(p) for p in written))
    print(result)
    return 0


def _distributed_start(args: argparse.Namespace) -> int:
    """Start MPI for --distributed (returns this rank); refuse a rank of an MPI job
    started without it (every rank would train alone and write the same files)."""
    from . import _rank_env

    size = _rank_env.launcher_world_size() or 1
    if not args.distributed:
        if size > 1:
            message = (f"this is one of {size} ranks started by mpiexec, but without "
                       "--distributed: every rank would train the same model on all the data "
                       "and write the same files; add --distributed")
            try:  # join MPI only to stop the whole job at once with this message
                from .distributed import comm
            except ImportError:
                raise CLIError(message) from None
            comm.init()
            comm.abort(f"{PROG} train: {message}", 2)
        return 0
    import warnings

    from .distributed import comm  # ImportError names the pip install

    if not _rank_env.launched():
        print(f"{PROG}: note: --distributed, but not started by mpiexec: training as a "
              "single process (run 'mpiexec -n N chainrule train --distributed ...')",
              file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # said just above
        return comm.init().rank


def _stop_other_ranks(status: int) -> None:
    """After a failure under --distributed: the other ranks would wait for this one."""
    comm = sys.modules.get("chainrule.distributed.comm")
    if status and comm is not None and comm.is_initialized() and comm.world_size() > 1:
        comm.abort(f"rank {comm.rank()} of {comm.world_size()} failed (exit status "
                   f"{status}); stopping the other ranks", status)


def _safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip("._") or "run"


# --------------------------------------------------------------------------
# Using a saved model
# --------------------------------------------------------------------------


def _load_predictor(path_text: str) -> Any:
    from .io import CheckpointError
    from .spec import load_predictor

    path = Path(path_text)
    if not path.is_file():
        raise CLIError(f"{path}: no such model file")
    try:
        return load_predictor(path)
    except CheckpointError as e:
        if "no model spec" in str(e):
            raise CLIError(f"{path}: a checkpoint without 'chainrule train' metadata (task, "
                           "classes, preprocessing); load it in Python with cr.load "
                           "instead") from None
        raise


def _labels_to_indices(values: Any, classes: list[Any], where: str) -> np.ndarray:
    index = {_label_key(c): i for i, c in enumerate(classes)}
    out = np.empty(len(values), dtype=np.int64)
    for r, v in enumerate(values):
        k = index.get(_label_key(v))
        if k is None:
            raise CLIError(f"{where}: label {_label_key(v)!r} was not seen in training "
                           f"(classes: {classes})")
        out[r] = k
    return out


def _eval_rows(args: argparse.Namespace, pred: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """(network input, y as class indices or values, which rows were scored)."""
    spec = pred.spec
    data = spec.data or {}
    split = data.get("split") or {}
    text = args.data or data.get("source")
    if text is None:
        raise CLIError("no DATA given and the checkpoint does not say what it was trained on")
    held_out = args.data is None
    if text == DIGITS:
        from .data import load_digits

        X, y = load_digits()
        if not held_out and args.data == DIGITS and not split:
            return pred.transform(X), y, "all 1,797 digits"
        split = split or {"test_size": 0.25, "seed": 0}
        _, te = _split_indices(y, split["test_size"], split["seed"], stratify=True)
        return pred.transform(X[te]), y[te], (
            f"the held-out test split: {len(te)} of {len(y)} digits (test_size "
            f"{split['test_size']:g}, seed {split['seed']}; never used in training)")
    path = Path(text)
    if path.is_dir():
        from .data import load_mnist

        _check_mnist_dir(path)
        X, y = load_mnist(path, kind="test")
        return pred.transform(X.reshape(len(X), -1)), y, f"the {len(y)} t10k test images"
    if not path.exists():
        raise CLIError(_describe_path(text) if not held_out else
                       f"{text}: the training data is no longer there; pass DATA explicitly")
    df = _read_csv(path, args.delimiter or split.get("delimiter"),
                   args.target or spec.target.get("name"))
    tname = args.target or spec.target.get("name")
    if tname not in [str(c) for c in df.columns]:
        raise CLIError(f"{path}: no target column {tname!r} (pass --target)")
    col = df[tname]
    if spec.task == "classification":
        y = _labels_to_indices(col.to_numpy(), list(spec.target.get("classes") or []),
                               str(path))
    else:
        y = _target_numbers(df, tname)
        if np.isnan(y).any():
            raise CLIError(f"{path}: the target {tname!r} is not numeric, but the model is a "
                           "regression model")
    if held_out:
        if split.get("sha256") and split["sha256"] != _file_digest(path):
            raise CLIError(f"{path} changed since training (its checksum differs), so its "
                           "held-out test rows cannot be redrawn; pass DATA to score a whole "
                           "file")
        _, te = _split_indices(y, split["test_size"], split["seed"],
                               stratify=split.get("stratify", spec.task == "classification"))
        rows = df.iloc[te]
        return pred.transform(rows), y[te], (
            f"the held-out test split: {len(te)} of {len(df)} rows of {path.name} (test_size "
            f"{split['test_size']:g}, seed {split['seed']}; never used in training)")
    return pred.transform(df), y, f"all {len(df)} rows of {path.name}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    pred = _load_predictor(args.model)
    X, y, which = _eval_rows(args, pred)
    m = _evaluate(pred.spec, pred.model, X, y)
    print(f"model: {args.model}  scored {which}  ({len(X)} samples)")
    print(_result_line(pred.spec.task, m, len(X)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .data import read_table

    pred = _load_predictor(args.model)
    path = Path(args.csv)
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    names = pred.feature_names or []
    df = read_table(path, delimiter=args.delimiter)
    have = [str(c) for c in df.columns]
    if not (df.attrs.get("chainrule_source") or {}).get("header", True):
        target = pred.spec.target.get("name")
        if len(have) == len(names):
            df.columns = names
        elif len(have) == len(names) + 1 and target:
            raise CLIError(f"{path}: {len(have)} columns without a header; give a header row "
                           f"so the target column {target!r} can be told apart")
        else:
            raise CLIError(f"{path}: {len(have)} columns without a header, but the model "
                           f"expects {len(names)} features ({', '.join(names)})")
    elif names and not all(n in have for n in names):
        missing = [n for n in names if n not in have]
        raise CLIError(f"{path}: columns {have} do not match the model's features "
                       f"(missing: {', '.join(missing)})")
    header = ["prediction"]
    if pred.task == "classification":
        labels = pred.predict(df)
        rows: list[list[Any]] = [[lab] for lab in labels]
        if args.proba:
            proba = pred.predict_proba(df)
            header += [f"p_{c}" for c in pred.classes_]
            rows = [r + [f"{p:.6g}" for p in pr] for r, pr in zip(rows, proba)]
    else:
        if args.proba:
            raise CLIError("--proba needs a classification model")
        values = np.asarray(pred.predict(df)).reshape(len(df), -1)
        rows = [[f"{v:.6g}" for v in row] for row in values]
    if args.out:
        import io as _io

        from .io import atomic_write

        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        atomic_write(args.out, buf.getvalue().encode("utf-8"))
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import onnx as cr_onnx

    path = Path(args.model)
    if not path.is_file():
        raise CLIError(f"{path}: no such model file")
    out = cr_onnx.export(path, args.onnx, opset=args.opset)
    line = f"wrote {out} (opset {args.opset})"
    if args.verify:
        diff = cr_onnx.verify(path, out)
        line += f"; onnxruntime agrees with chainrule to {diff:.2g} (max abs difference)"
    print(line)
    return 0


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (also the console script's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is honoured anywhere on the line, even when parsing fails later
    debug = "--debug" in argv
    try:
        parser = build_parser()
        from . import cli_explain

        # an expression starting with '-' is not an option of `explain`
        words = cli_explain.protect_expression([a for a in argv if a != "--debug"])
        args = parser.parse_args(words)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader went away (`chainrule explain ... | head`): stop quietly
        from .teach.cli import quiet_broken_pipe

        return quiet_broken_pipe()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        _stop_other_ranks(130)
        return 130
    except SystemExit:
        raise
    except (CLIError, OSError, ValueError, ImportError) as exc:
        # what users cause: bad files, bad values, a missing optional package
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        _stop_other_ranks(2)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback is behind --debug
        if debug:
            raise
        print(f"{PROG}: error: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        _stop_other_ranks(1)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
