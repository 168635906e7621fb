"""The ``chainrule`` command line: train, evaluate and use an MLP without writing code.

::

    chainrule train                       # the bundled digits, 25 % held-out test split
    chainrule train data.csv --target species --hidden 32 --epochs 100
    chainrule evaluate runs/digits/model.safetensors digits
    chainrule predict runs/iris/model.safetensors new.csv --out predictions.csv
    chainrule explain "0.5*(sigmoid(w*x+b)-y)**2" w=0.5 x=1 b=0 y=1
    chainrule playground dataset=spiral hidden=8,8   # the backpropagation playground

Everything a later ``evaluate`` / ``predict`` needs is stored in the checkpoint
itself (``cr.save`` metadata): the architecture, the class names, the feature
names, the input standardisation and how the test split was drawn.

Errors in arguments or files end the program with one line on stderr,
``chainrule: error: ...``, and exit status 2 (1 for anything unexpected);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import math
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

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LOSSES = ("cross_entropy", "mse")
# Default step sizes: Adam-style methods normalise the step, SGD does not.
DEFAULT_LR = {"adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3, "sgd": 0.05}


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


def _hidden(text: str) -> list[int]:
    """``"128,64"`` -> [128, 64]; ``""`` or ``"none"`` -> [] (no hidden layer)."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    sizes = []
    for part in text.split(","):
        try:
            v = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated layer sizes such as 128,64, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
        sizes.append(v)
    return sizes


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
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="feed the features as they are (default: scale each to mean 0, std 1 "
                        "using training-set statistics)")
    g = tr.add_argument_group("model")
    g.add_argument("--hidden", type=_hidden, default=[128, 64], metavar="SIZES",
                   help="hidden layer sizes, comma-separated; 'none' for no hidden layer "
                        "(default: 128,64)")
    g.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                   help="hidden-layer activation (default: relu)")
    g.add_argument("--dropout", type=_float_in(0, 1), default=0.0,
                   help="dropout probability after each hidden activation (default: 0)")
    g = tr.add_argument_group("optimisation")
    g.add_argument("--loss", choices=LOSSES, default=None,
                   help="classification: cross_entropy (softmax + log-loss, default) or mse "
                        "(squared error between softmax output and one-hot target); "
                        "regression always uses mse")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="default: adam")
    g.add_argument("--lr", type=_float_in(0, math.inf, lo_open=True), default=None,
                   help="learning rate (default: 2e-3 for adam/adamw, 1e-3 rmsprop, 0.05 sgd)")
    g.add_argument("--momentum", type=_float_in(0, 1), default=0.0,
                   help="SGD/RMSprop momentum (default: 0)")
    g.add_argument("--weight-decay", type=_float_in(0, math.inf), default=0.0,
                   help="L2 weight decay (default: 0; 0.01 for adamw)")
    g.add_argument("--batch-size", type=_nonneg_int, default=32,
                   help="mini-batch size; 0 = the whole training set (plain gradient "
                        "descent) (default: 32)")
    g.add_argument("--epochs", type=_positive_int, default=40,
                   help="maximum number of epochs (default: 40)")
    g.add_argument("--tol", type=_float_in(0, math.inf, lo_open=True), default=None,
                   help="stop when one step moves the weights by less than TOL "
                        "(||w_new - w_old||_2 < TOL)")
    g.add_argument("--patience", type=_positive_int, default=None,
                   help="hold out --val-size of the training data and stop after PATIENCE "
                        "epochs without a better validation loss (best weights kept)")
    g.add_argument("--val-size", type=_float_in(0, 1, lo_open=True), default=0.1,
                   help="validation fraction of the training data, with --patience "
                        "(default: 0.1)")
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
        description="Evaluate a model written by 'chainrule train'. For 'digits' the test "
        "split is redrawn exactly as at training time; an MNIST directory uses its t10k "
        "files; a CSV file is evaluated whole.",
    )
    ev.add_argument("model", metavar="MODEL", help="model.safetensors from 'chainrule train'")
    ev.add_argument("data", metavar="DATA", nargs="?", default=None,
                    help="'digits', an MNIST directory or a CSV file (default: the data the "
                         "model was trained on)")
    ev.add_argument("--target", default=None, metavar="COL",
                    help="CSV target column (default: the one used for training)")
    ev.set_defaults(func=cmd_evaluate)

    # -- predict -----------------------------------------------------------
    pr = sub.add_parser(
        "predict",
        help="predict labels (or values) for the rows of a CSV file",
        description="Predict with a model written by 'chainrule train'. The CSV needs the "
        "training features (by header name, or in training order without a header); a "
        "target column, if present, is ignored. Class predictions use the original class "
        "names.",
    )
    pr.add_argument("model", metavar="MODEL", help="model.safetensors from 'chainrule train'")
    pr.add_argument("csv", metavar="CSV", help="rows to predict")
    pr.add_argument("--out", default=None, metavar="FILE",
                    help="write a CSV with a 'prediction' column (default: print to stdout)")
    pr.add_argument("--proba", action="store_true",
                    help="also write one probability column per class")
    pr.set_defaults(func=cmd_predict)

    # -- explain (owned by chainrule.cli_explain) ---------------------------
    try:
        from . import cli_explain
    except ImportError:
        cli_explain = None
    if cli_explain is not None:
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
    """Arrays ready for training, and what must be remembered to use the model later."""

    name: str
    kind: str  # "digits", "mnist" or "csv"
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    task: str  # "classification" or "regression"
    classes: list[Any] | None
    feature_names: list[str] | None = None
    target: str | None = None
    split: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


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


def _split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int, stratify: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from .data import train_test_split

    return train_test_split(X, y, test_size=test_size, seed=seed,
                            stratify=y if stratify else None)


def _csv_table(path: Path, target: str | None, task: str) -> Any:
    """load_csv, then decide between classes and regression (see --task)."""
    from .data import load_csv

    tgt = _target_arg(target)
    table = load_csv(path, target=tgt, classification=True if task == "classify" else None)
    if task == "regress":
        if table.classes is not None:
            raise CLIError(f"{path}: target {table.target_name!r} is not numeric; "
                           "it cannot be regressed (use --task classify)")
        return table, "regression"
    if table.classes is not None:
        return table, "classification"
    # A numeric target: a handful of whole numbers is almost always a label column.
    values = np.unique(table.y)
    if task == "auto" and values.size <= 20 and np.all(values == np.round(values)):
        table = load_csv(path, target=tgt, classification=True)
        return table, "classification"
    return table, "regression"


def _check_mnist_dir(path: Path) -> None:
    # load_mnist's own message is a page of download instructions; say it in one line
    if not any("idx" in p.name for p in path.iterdir()):
        raise CLIError(f"{path}: a directory without MNIST IDX files (expected "
                       "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                       "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])")


def load_training_data(args: argparse.Namespace) -> Dataset:
    """DATA -> train/test arrays (digits and CSV: a seeded split; MNIST: its own files)."""
    text = args.data
    if text == DIGITS:
        from .data import load_digits

        X, y = load_digits()
        Xtr, Xte, ytr, yte = _split(X, y, args.test_size, args.seed, stratify=True)
        return Dataset(DIGITS, "digits", Xtr, ytr, Xte, yte, "classification",
                       list(range(10)),
                       split={"test_size": args.test_size, "seed": args.seed})
    path = Path(text)
    if path.is_dir():
        from .data import load_mnist

        _check_mnist_dir(path)
        Xtr, ytr = load_mnist(path, kind="train")
        Xte, yte = load_mnist(path, kind="test")
        return Dataset(path.resolve().name or "mnist", "mnist", Xtr, ytr, Xte, yte,
                       "classification", list(range(10)))
    if not path.exists():
        raise CLIError(_describe_path(text))
    table, task = _csv_table(path, args.target, args.task)
    X, y = table.X, table.y
    stratify = task == "classification"
    if stratify:
        counts = np.bincount(y.astype(np.int64))
        if counts.min(initial=2) < 2:
            stratify = False  # a class with one sample cannot be on both sides
    Xtr, Xte, ytr, yte = _split(X, y, args.test_size, args.seed, stratify=stratify)
    return Dataset(path.stem, "csv", Xtr, ytr, Xte, yte, task, table.classes,
                   feature_names=list(table.feature_names), target=table.target_name,
                   split={"test_size": args.test_size, "seed": args.seed})


# --------------------------------------------------------------------------
# Model and training
# --------------------------------------------------------------------------


def build_mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str,
              dropout: float) -> Any:
    """Linear -> activation (-> Dropout) per hidden layer, then a Linear output (logits)."""
    from . import nn

    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
           "leaky_relu": nn.LeakyReLU}[activation]
    layers: list[Any] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def make_optimizer(name: str, params: Any, lr: float, momentum: float,
                   weight_decay: float) -> Any:
    from . import optim

    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=weight_decay or 1e-2)
    return optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _softmax_mse(out: Any, target: Any) -> Any:
    # the notes' quadratic cost on a softmax output layer, against one-hot rows
    from . import ops
    from .nn import functional as F

    return F.mse_loss(ops.softmax(out, axis=-1), target)


def _loss_fn(task: str, loss: str) -> Any:
    from .nn import functional as F

    if task == "regression":
        return F.mse_loss
    return F.cross_entropy if loss == "cross_entropy" else _softmax_mse


def _targets(task: str, loss: str, y: np.ndarray, n_classes: int) -> np.ndarray:
    """What the loss compares the outputs with: labels, one-hot rows, or (n, 1) values."""
    if task == "regression":
        return y.reshape(-1, 1).astype(np.float32)
    if loss == "mse":
        from .data import one_hot

        return one_hot(y.astype(np.int64), n_classes)
    return y.astype(np.int64)


def _metrics(task: str) -> list[str] | None:
    # explicit: with --loss mse the targets are one-hot rows, which "auto" would not see
    # as labels; Accuracy compares arg-maxes either way
    return ["accuracy"] if task == "classification" else None


def _standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    # constant columns (the digits' blank border pixels) are centred, not scaled
    std = np.where(std > 0, std, 1.0)
    return mean, std


def _apply_std(X: np.ndarray, prep: dict[str, Any] | None) -> np.ndarray:
    if not prep:
        return X.astype(np.float32, copy=False)
    mean = np.asarray(prep["mean"], dtype=np.float64)
    std = np.asarray(prep["std"], dtype=np.float64)
    return ((X - mean) / std).astype(np.float32)


def _regression_scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = pred.ravel().astype(np.float64) - y.ravel().astype(np.float64)
    mse = float(np.mean(err**2))
    var = float(np.var(y.astype(np.float64)))
    r2 = 1.0 - mse / var if var > 0 else float("nan")
    return {"mse": mse, "rmse": math.sqrt(mse), "r2": r2}


def _predict_raw(model: Any, X: np.ndarray) -> np.ndarray:
    from .tensor import Tensor, no_grad

    model.eval()
    outs = []
    with no_grad():
        for start in range(0, len(X), 4096):
            outs.append(model(Tensor(np.ascontiguousarray(X[start:start + 4096]))).data)
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs)


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def cmd_train(args: argparse.Namespace) -> int:
    import chainrule as cr

    from .training import EarlyStopping, WeightChangeStopping, evaluate

    rank = _distributed_start(args)
    say = (lambda *a, **k: None) if args.quiet or rank else print

    # -- data --------------------------------------------------------------
    ds = load_training_data(args)
    task = ds.task
    loss_name = args.loss or ("mse" if task == "regression" else "cross_entropy")
    if task == "regression" and loss_name != "mse":
        raise CLIError("--loss cross_entropy needs class labels; this target is numeric "
                       "(regression uses mse; use --task classify for integer classes)")
    n_classes = len(ds.classes) if ds.classes is not None else 0
    if task == "classification" and n_classes < 2:
        raise CLIError(f"{args.data}: the target has {n_classes} class; need at least 2")
    prep = None
    if args.standardize:
        mean, std = _standardizer(ds.X_train)
        prep = {"mean": mean.tolist(), "std": std.tolist()}
    Xtr = _apply_std(ds.X_train, prep)
    Xte = _apply_std(ds.X_test, prep)
    y_scale = None
    if task == "regression":
        # training on standardised targets keeps the first steps well scaled
        y_scale = {"mean": float(ds.y_train.mean()), "std": float(ds.y_train.std() or 1.0)}
        ytr_fit = (ds.y_train - y_scale["mean"]) / y_scale["std"]
    else:
        ytr_fit = ds.y_train
    ttr = _targets(task, loss_name, ytr_fit, n_classes)

    val = None
    if args.patience is not None:
        from .data import train_test_split

        strat = ds.y_train if task == "classification" else None
        if strat is not None and np.bincount(strat.astype(np.int64)).min(initial=2) < 2:
            strat = None
        Xtr, Xval, ttr, tval = train_test_split(Xtr, ttr, test_size=args.val_size,
                                                seed=args.seed + 1, stratify=strat)
        val = (Xval, tval)

    # -- model, loss, optimizer --------------------------------------------
    cr.manual_seed(args.seed)
    n_out = 1 if task == "regression" else n_classes
    model = build_mlp(Xtr.shape[1], args.hidden, n_out, args.activation, args.dropout)
    loss_fn = _loss_fn(task, loss_name)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    opt = make_optimizer(args.optimizer, model.parameters(), lr, args.momentum,
                         args.weight_decay)
    batch = None if args.batch_size == 0 else min(args.batch_size, len(Xtr))
    callbacks: list[Any] = []
    if args.tol is not None:
        callbacks.append(WeightChangeStopping(tol=args.tol))
    if args.patience is not None:
        callbacks.append(EarlyStopping(patience=args.patience, restore_best_weights=True))

    widths = [Xtr.shape[1], *args.hidden, n_out]
    n_params = sum(int(p.size) for p in model.parameters())
    say(f"data: {ds.name}: {_fmt_int(len(ds.X_train))} training and "
        f"{_fmt_int(len(ds.X_test))} test samples, {Xtr.shape[1]} features, "
        + (f"{n_classes} classes" if task == "classification" else "numeric target"))
    say(f"model: MLP {'-'.join(map(str, widths))} ({args.activation}"
        + (f", dropout {args.dropout:g}" if args.dropout else "")
        + f"), {_fmt_int(n_params)} parameters; loss {loss_name}; {args.optimizer} lr={lr:g}, "
        + ("full batch" if batch is None else f"batch {batch}") + f", up to {args.epochs} epochs")

    # -- train ---------------------------------------------------------------
    t0 = time.perf_counter()
    history = cr.fit(model, loss_fn, opt, (Xtr, ttr), epochs=args.epochs, val=val,
                     callbacks=callbacks, metrics=_metrics(task), batch_size=batch,
                     shuffle=True, seed=args.seed, progress=not args.quiet,
                     compile="auto" if args.compile else False, distributed=args.distributed)
    seconds = time.perf_counter() - t0
    samples = len(Xtr) * history.epochs
    rate = samples / seconds if seconds > 0 else float("nan")
    if history.stopped_early and history.stop_reason:
        say(f"stopped after epoch {history.epochs}: {history.stop_reason}")

    # -- test ----------------------------------------------------------------
    metrics: dict[str, float]
    if task == "classification":
        tte = _targets(task, loss_name, ds.y_test, n_classes)
        res = evaluate(model, loss_fn, (Xte, tte), metrics=_metrics(task))
        metrics = {"test_accuracy": float(res["accuracy"]), "test_loss": float(res["loss"])}
        result = (f"test accuracy: {metrics['test_accuracy']:.4f}  "
                  f"({round(metrics['test_accuracy'] * len(Xte))}/{len(Xte)})  "
                  f"test loss: {metrics['test_loss']:.4f}")
    else:
        pred = _predict_raw(model, Xte) * y_scale["std"] + y_scale["mean"]
        sc = _regression_scores(pred, ds.y_test)
        metrics = {"test_rmse": sc["rmse"], "test_r2": sc["r2"], "test_mse": sc["mse"]}
        result = f"test RMSE: {sc['rmse']:.4g}  test R^2: {sc['r2']:.4f}"

    if rank:
        return 0  # the replicas are equal: rank 0 alone reports and writes the files

    # -- files ---------------------------------------------------------------
    out = Path(args.out) if args.out else Path("runs") / _safe_name(ds.name)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "trained_by": "chainrule train",
        "data": {"kind": ds.kind, "source": args.data if ds.kind != "csv" else
                 str(Path(args.data).resolve()), "split": ds.split},
        "task": task,
        "loss": loss_name,
        "classes": ds.classes,
        "feature_names": ds.feature_names,
        "target": ds.target,
        "n_features": int(Xtr.shape[1]),
        "standardize": prep,
        "target_scale": y_scale,
        "hyperparameters": {
            "hidden": list(args.hidden), "activation": args.activation,
            "dropout": args.dropout, "optimizer": args.optimizer, "lr": lr,
            "momentum": args.momentum, "weight_decay": args.weight_decay,
            "batch_size": args.batch_size, "epochs": args.epochs, "tol": args.tol,
            "patience": args.patience, "seed": args.seed,
        },
        "epochs_run": history.epochs,
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

    say(f"trained {history.epochs} epochs in {seconds:.1f} s ({rate:,.0f} samples/s)")
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


def _load_checkpoint(path_text: str) -> tuple[Any, dict[str, Any]]:
    from .io import load

    path = Path(path_text)
    if not path.is_file():
        raise CLIError(f"{path}: no such model file")
    ckpt = load(path)
    meta = ckpt.metadata or {}
    if meta.get("trained_by") != "chainrule train":
        raise CLIError(f"{path}: a checkpoint without 'chainrule train' metadata (task, "
                       "classes, preprocessing); load it in Python with cr.load instead")
    return ckpt.model(), meta


def _eval_data(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) to evaluate on: y as class indices or raw numeric values."""
    data_meta = meta.get("data") or {}
    text = args.data or data_meta.get("source")
    if text is None:
        raise CLIError("no DATA given and the checkpoint does not say what it was trained on")
    if text == DIGITS:
        from .data import load_digits

        X, y = load_digits()
        split = data_meta.get("split") or {"test_size": 0.25, "seed": 0}
        _, Xte, _, yte = _split(X, y, split["test_size"], split["seed"], stratify=True)
        return Xte, yte
    path = Path(text)
    if path.is_dir():
        from .data import load_mnist

        _check_mnist_dir(path)
        return load_mnist(path, kind="test")
    if not path.exists():
        raise CLIError(_describe_path(text))
    from .data import load_csv

    target = args.target if args.target is not None else meta.get("target")
    task = meta.get("task")
    table = load_csv(path, target=_target_arg(target),
                     classification=True if task == "classification" else None)
    X = _select_features(table.X, table.feature_names, meta, path)
    if task == "classification":
        classes = meta.get("classes") or []
        index = {_label_key(c): i for i, c in enumerate(classes)}
        try:
            y = np.array([index[_label_key(c)] for c in table.decode(table.y)], dtype=np.int64)
        except KeyError as e:
            raise CLIError(f"{path}: label {e.args[0]!r} was not seen in training "
                           f"(classes: {classes})") from None
        return X, y
    if table.classes is not None:
        raise CLIError(f"{path}: the target {table.target_name!r} is not numeric, but the "
                       "model is a regression model")
    return X, table.y


def _label_key(v: Any) -> str:
    # labels round-trip through JSON, so compare them by their text (1 and 1.0 alike)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _select_features(X: np.ndarray, names: list[str], meta: dict[str, Any], path: Path
                     ) -> np.ndarray:
    want = meta.get("feature_names")
    n = meta.get("n_features")
    if want and all(w in names for w in want):
        return X[:, [names.index(w) for w in want]]
    if X.shape[1] != n:
        raise CLIError(f"{path}: {X.shape[1]} feature columns, but the model expects {n}"
                       + (f" ({', '.join(want)})" if want else ""))
    return X


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .nn import functional as F
    from .training import evaluate

    model, meta = _load_checkpoint(args.model)
    X, y = _eval_data(args, meta)
    X = _apply_std(X, meta.get("standardize"))
    _check_width(X, meta, args.model)
    task = meta.get("task")
    print(f"model: {args.model}  data: {args.data or (meta.get('data') or {}).get('source')}"
          f"  ({len(X)} samples)")
    if task == "classification":
        classes = meta.get("classes") or []
        loss_name = meta.get("loss", "cross_entropy")
        loss_fn = F.cross_entropy if loss_name == "cross_entropy" else _softmax_mse
        res = evaluate(model, loss_fn, (X, _targets(task, loss_name, y, len(classes))),
                       metrics=_metrics(task))
        print(f"accuracy: {res['accuracy']:.4f}  ({round(res['accuracy'] * len(X))}/{len(X)})"
              f"  loss: {res['loss']:.4f}")
    else:
        scale = meta.get("target_scale") or {"mean": 0.0, "std": 1.0}
        pred = _predict_raw(model, X) * scale["std"] + scale["mean"]
        sc = _regression_scores(pred, y)
        print(f"RMSE: {sc['rmse']:.4g}  R^2: {sc['r2']:.4f}  MSE: {sc['mse']:.4g}")
    return 0


def _check_width(X: np.ndarray, meta: dict[str, Any], model_path: str) -> None:
    n = meta.get("n_features")
    if n is not None and X.shape[1] != n:
        raise CLIError(f"the data has {X.shape[1]} features but {model_path} expects {n}")


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_feature_csv(path: Path, meta: dict[str, Any]) -> np.ndarray:
    """The model's feature columns from a CSV (by header name, else by position)."""
    n = meta.get("n_features")
    want = meta.get("feature_names")
    target = meta.get("target")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f, skipinitialspace=True))
                    if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not UTF-8 text; is this a CSV file?") from None
    except csv.Error as e:
        raise CLIError(f"{path}: {e}") from None
    if not rows:
        raise CLIError(f"{path}: the file is empty")
    first = [c.strip() for c in rows[0][1]]
    has_header = any(_number(c) is None for c in first)
    if has_header:
        header, body = first, rows[1:]
        if want and all(w in header for w in want):
            cols = [header.index(w) for w in want]
        else:
            cols = [i for i, h in enumerate(header) if h != target]
            if len(cols) != n:
                missing = [w for w in (want or []) if w not in header]
                raise CLIError(f"{path}: columns {header} do not match the model's features "
                               + (f"(missing: {', '.join(missing)})" if missing else
                                  f"(expected {n})"))
    else:
        body = rows
        width = len(first)
        if width == n:
            cols = list(range(n))
        elif width == (n or 0) + 1 and want and target:
            raise CLIError(f"{path}: {width} columns without a header; give a header row so "
                           f"the target column {target!r} can be told apart")
        else:
            raise CLIError(f"{path}: {width} columns, but the model expects {n} features")
    X = np.empty((len(body), len(cols)), dtype=np.float32)
    for r, (line, cells) in enumerate(body):
        for j, c in enumerate(cols):
            text = cells[c].strip() if c < len(cells) else ""
            v = _number(text)
            if v is None:
                raise CLIError(f"{path}, line {line}, column {c + 1}: "
                               + ("empty cell" if not text else f"{text!r} is not a number"))
            X[r, j] = v
    return X


def cmd_predict(args: argparse.Namespace) -> int:
    model, meta = _load_checkpoint(args.model)
    path = Path(args.csv)
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    X = _apply_std(read_feature_csv(path, meta), meta.get("standardize"))
    raw = _predict_raw(model, X)
    header = ["prediction"]
    if meta.get("task") == "classification":
        classes = meta.get("classes") or list(range(raw.shape[1]))
        z = raw - raw.max(axis=1, keepdims=True)
        proba = np.exp(z)
        proba /= proba.sum(axis=1, keepdims=True)
        labels = [classes[int(k)] for k in raw.argmax(axis=1)]
        rows: list[list[Any]] = [[lab] for lab in labels]
        if args.proba:
            header += [f"p_{c}" for c in classes]
            rows = [r + [f"{p:.6g}" for p in pr] for r, pr in zip(rows, proba)]
    else:
        if args.proba:
            raise CLIError("--proba needs a classification model")
        scale = meta.get("target_scale") or {"mean": 0.0, "std": 1.0}
        values = raw.ravel() * scale["std"] + scale["mean"]
        rows = [[f"{v:.6g}"] for v in values]
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
        args = [a for a in argv if a != "--debug"]
        try:
            from . import cli_explain

            # an expression starting with '-' is not an option of `explain`
            args = cli_explain.protect_expression(args)
        except ImportError:
            pass
        args = parser.parse_args(args)
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
