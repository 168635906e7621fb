"""The bad-input table: every public entry point against every class of bad input.

``ROWS`` is the single source of truth: ``test_bad_inputs.py`` runs every row
and ``docs/bad-inputs.md`` is generated from it (``markdown()``); a test checks
the page and the table agree. A row says what is called, with what, which
exception must come out and which fragments its message must contain (the
operation, the argument, and the shapes or values at fault). ``raises=None``
rows document behaviour that is deliberately not an error (e.g. NaN
propagation) and check it. ``bug=...`` rows are known defects, reported to the
owning module: they run as strict xfails so a fix is noticed.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import chainrule as cr
from chainrule import io as crio
from chainrule.data._common import DataFormatError
from chainrule.functional import GradcheckError

nn = cr.nn
F = cr.nn.functional

KINDS = [
    "wrong shape", "wrong dtype", "NaN/Inf", "empty", "out of range", "wrong value",
    "wrong file type", "missing file", "missing dependency", "misuse", "bad CLI argument",
]


@dataclass
class Row:
    entry: str  # the public entry point
    kind: str  # one of KINDS
    bad: str  # the input, in words or code
    call: Callable[[Any], Any]  # call(env) where env has .tmp and .monkeypatch
    raises: Any  # an exception type, "exit 2" for the CLI, or None (no error)
    says: tuple[str, ...] = ()  # fragments the message must contain
    check: Callable[[Any], bool] | None = None  # for raises=None rows
    bug: str | None = None  # known defect (strict xfail)

    @property
    def id(self) -> str:
        return f"{self.entry} | {self.kind} | {self.bad}"


def f32(*shape):
    return cr.tensor(np.ones(shape, np.float32))


def leaf(*shape):
    return cr.tensor(np.ones(shape), requires_grad=True)


def _model():
    return nn.Sequential(nn.Linear(3, 2))


def _XY(n=8, d=3, classes=2):
    return np.ones((n, d), np.float32), np.zeros(n, np.int64)


def _fit(env, **kw):
    model = _model()
    opt = cr.optim.SGD(model.parameters(), lr=0.1)
    train = kw.pop("train", _XY())
    loss_fn = kw.pop("loss_fn", F.cross_entropy)
    return cr.fit(model, loss_fn, opt, train, progress=False, **kw)


def _saved(env) -> Path:
    path = env.tmp / "m.cr"
    crio.save(_model(), path)
    return path


def _file(env, name: str, data: bytes) -> Path:
    p = env.tmp / name
    p.write_bytes(data)
    return p


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _mnist_dir(env, images: bytes) -> Path:
    d = env.tmp / "mnist"
    d.mkdir(exist_ok=True)
    (d / "train-images-idx3-ubyte").write_bytes(images)
    (d / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2]))
    return d


def _csv(env, text: str) -> Path:
    return _file(env, "t.csv", text.encode())


def _block(env, *modules):
    for m in modules:
        env.monkeypatch.setitem(sys.modules, m, None)
        for loaded in [k for k in sys.modules if k.startswith(m + ".")]:
            env.monkeypatch.setitem(sys.modules, loaded, None)


def cli(env, *argv):
    """Run the CLI in-process; return (exit status, stderr, stdout)."""
    from chainrule import cli as cli_mod

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli_mod.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue(), out.getvalue()


def _anomaly_log(env):
    with cr.detect_anomaly():
        cr.log(cr.tensor(np.array([1.0, -1.0]), requires_grad=True))


def _backward_twice(env):
    y = (leaf(3) * 2).sum()
    y.backward()
    y.backward()


def _inplace_saved(env):
    x = leaf(3)
    w = cr.tensor(np.ones(3), requires_grad=True)
    y = (x * w).sum()
    with cr.no_grad():
        w.add_(1.0)
    y.backward()


def _bad_vjp_rule(env):
    bad = cr.ops.Rule("bad_square", lambda x: (x * x, None))
    bad.defvjp(lambda g, out, ctx, needs, xp, x: (g * 3 * x,))
    cr.gradcheck(lambda x: cr.apply(bad, x).sum(), [np.array([1.0, 2.0])])


ROWS: list[Row] = [
    # ---- tensor creation -----------------------------------------------------
    Row("cr.tensor", "wrong dtype", "strings with requires_grad=True",
        lambda e: cr.tensor(["a", "b"], requires_grad=True), TypeError,
        ("requires_grad", "floating-point", "<U1")),
    Row("cr.tensor", "wrong dtype", "int64 array with requires_grad=True",
        lambda e: cr.tensor(np.arange(3), requires_grad=True), TypeError,
        ("requires_grad", "int64")),
    Row("cr.tensor", "wrong shape", "ragged nested list [[1., 2.], [3.]]",
        lambda e: cr.tensor([[1.0, 2.0], [3.0]]), ValueError, ("tensor", "inhomogeneous")),
    Row("cr.zeros / ones / randn / rand", "out of range", "cr.zeros(-1)",
        lambda e: cr.zeros(-1), ValueError, ("zeros", "non-negative", "-1")),
    Row("cr.zeros / ones / randn / rand", "wrong dtype", "cr.randn(2, 3.5)",
        lambda e: cr.randn(2, 3.5), ValueError, ("randn", "3.5")),
    Row("cr.tensor", "NaN/Inf", "cr.tensor([nan, inf])",
        lambda e: cr.tensor([np.nan, np.inf]), None,
        check=lambda t: np.isnan(t.data[0]) and np.isinf(t.data[1])),
    # ---- ops --------------------------------------------------------------------
    Row("+ - * / (broadcasting ops)", "wrong shape", "(3, 4) + (5,)",
        lambda e: f32(3, 4) + f32(5), ValueError,
        ("add", "(3, 4)", "(5,)", "cannot be broadcast")),
    Row("+ - * / (broadcasting ops)", "wrong dtype", "float tensor + array of strings",
        lambda e: f32(3) + np.array(["a", "b", "c"]), TypeError, ("add", "<U1", "numeric")),
    Row("matmul / @", "wrong shape", "(3, 4) @ (5, 2)",
        lambda e: f32(3, 4) @ f32(5, 2), ValueError, ("matmul", "(3, 4)", "(5, 2)", "4 != 5")),
    Row("matmul / @", "wrong shape", "0-d @ (3,)",
        lambda e: cr.matmul(f32(), f32(3)), ValueError, ("matmul", "0-d")),
    Row("sum / mean / max / min / var", "out of range", "sum(axis=2) of a (3, 4) tensor",
        lambda e: f32(3, 4).sum(axis=2), ValueError, ("sum", "axis 2", "2 dimensions")),
    Row("sum / mean / max / min / var", "empty", "max of a (0,) tensor",
        lambda e: cr.max(f32(0)), ValueError, ("max", "empty", "(0,)")),
    Row("sum / mean / max / min / var", "empty", "mean of a (0, 3) tensor",
        lambda e: f32(0, 3).mean(), ValueError, ("mean", "empty", "(0, 3)")),
    Row("sum / mean / max / min / var", "out of range", "var(ddof=3) of 3 values",
        lambda e: cr.var(f32(3), ddof=3), ValueError, ("var", "ddof=3", "(3,)")),
    Row("reshape", "wrong shape", "(3, 4) to (5, 2)",
        lambda e: f32(3, 4).reshape(5, 2), ValueError, ("reshape", "size 12", "(5,2)")),
    Row("permute", "wrong value", "dims (0, 0)",
        lambda e: f32(2, 3).permute(0, 0), ValueError, ("permute", "(0, 0)", "permutation")),
    Row("softmax / log_softmax / logsumexp", "out of range", "softmax(axis=3) of (3, 4)",
        lambda e: cr.softmax(f32(3, 4), axis=3), ValueError, ("softmax", "axis 3")),
    Row("indexing", "out of range", "t[5] of a (2, 3) tensor",
        lambda e: f32(2, 3)[5], IndexError, ("getitem", "5", "size 2")),
    Row("indexing", "out of range", "t[[0, 7]] of a (2, 3) tensor",
        lambda e: f32(2, 3)[np.array([0, 7])], IndexError, ("getitem", "7", "size 2")),
    Row("concatenate / stack", "empty", "concatenate([])",
        lambda e: cr.concatenate([]), ValueError, ("concatenate", "at least one")),
    Row("concatenate / stack", "wrong shape", "concatenate (2, 3) with (2, 4) on axis 0",
        lambda e: cr.concatenate([f32(2, 3), f32(2, 4)]), ValueError,
        ("concatenate", "(2, 3)", "(2, 4)")),
    Row("concatenate / stack", "wrong shape", "stack (2, 3) with (2, 4)",
        lambda e: cr.stack([f32(2, 3), f32(2, 4)]), ValueError, ("stack", "(2, 3)", "(2, 4)")),
    Row("where", "wrong shape", "condition (4,) with operands (3,)",
        lambda e: cr.where(np.ones(4, bool), f32(3), f32(3)), ValueError,
        ("where", "condition shape (4,)", "(3,)")),
    Row("clip", "wrong value", "clip() with neither min nor max",
        lambda e: cr.clip(f32(3)), ValueError, ("clip", "min", "max")),
    Row("elementwise ops", "NaN/Inf", "log(-1): NaN propagates (as in NumPy)",
        lambda e: cr.log(cr.tensor(np.array([-1.0]))), None,
        check=lambda t: np.isnan(t.data).all()),
    Row("cr.detect_anomaly", "NaN/Inf", "log(-1) inside detect_anomaly()",
        _anomaly_log, cr.AnomalyError, ("detect_anomaly", "'log'", "non-finite", "1 NaN")),
    # ---- backward -----------------------------------------------------------------
    Row("Tensor.backward", "wrong shape", "backward() on a (3,) output",
        lambda e: (leaf(3) * 2).backward(), RuntimeError, ("backward", "(3,)", "scalar")),
    Row("Tensor.backward", "wrong shape", "seed of shape (2,) for a (3,) output",
        lambda e: (leaf(3) * 2).backward(np.ones(2)), ValueError, ("backward", "(2,)", "(3,)")),
    Row("Tensor.backward", "misuse", "backward() on a tensor that does not require grad",
        lambda e: f32(3).sum().backward(), RuntimeError, ("backward", "does not require grad")),
    Row("Tensor.backward", "misuse", "second backward() through a freed graph",
        _backward_twice, RuntimeError, ("backward", "retain_graph=True")),
    Row("Tensor.backward", "misuse", "a saved input changed in place before backward()",
        _inplace_saved, RuntimeError, ("backward", "'mul'", "modified in place")),
    # ---- functional transforms ----------------------------------------------------------
    Row("cr.grad / value_and_grad", "wrong shape", "f returns shape (3,)",
        lambda e: cr.grad(lambda a: a * 2)(np.ones(3)), ValueError,
        ("value_and_grad", "scalar", "(3,)")),
    Row("cr.grad / value_and_grad", "wrong dtype", "int64 argument",
        lambda e: cr.grad(lambda a: (a * 2).sum())(np.ones(3, int)), TypeError,
        ("value_and_grad", "argument 0", "int64")),
    Row("cr.grad / value_and_grad", "out of range", "argnums=3 with one argument",
        lambda e: cr.grad(lambda a: a.sum(), argnums=3)(np.ones(3)), ValueError,
        ("argnums 3", "1 arguments")),
    Row("cr.vjp", "wrong shape", "cotangent (4,) for output (3,)",
        lambda e: cr.vjp(lambda a: a * 2, np.ones(3))[1](np.ones(4)), ValueError,
        ("vjp", "(4,)", "(3,)")),
    Row("cr.gradcheck", "wrong dtype", "f returns a float, not a Tensor",
        lambda e: cr.gradcheck(lambda a: 3.0, [np.ones(3)]), TypeError,
        ("gradcheck", "Tensor", "float")),
    Row("cr.gradcheck", "wrong value", "a rule whose VJP is wrong",
        _bad_vjp_rule, GradcheckError, ("input 0", "element (1,)", "analytic 6.0", "numeric 4.0")),
    # ---- nn layers and losses ----------------------------------------------------------
    Row("nn.Linear", "wrong shape", "Linear(4, 2) on a (2, 3) batch",
        lambda e: nn.Linear(4, 2)(f32(2, 3)), ValueError, ("linear", "(2, 3)", "(2, 4)")),
    Row("nn.Linear", "out of range", "Linear(-1, 2)",
        lambda e: nn.Linear(-1, 2), ValueError, ("Linear", "in_features", "-1")),
    Row("nn.Linear", "wrong dtype", "Linear(2.5, 2)",
        lambda e: nn.Linear(2.5, 2), ValueError, ("Linear", "in_features", "2.5")),
    Row("nn.Sequential", "wrong dtype", "Sequential(Linear, 'relu')",
        lambda e: nn.Sequential(nn.Linear(2, 2), "relu"), TypeError,
        ("Sequential", "item 1", "str")),
    Row("nn.Dropout", "out of range", "Dropout(1.5)",
        lambda e: nn.Dropout(1.5), ValueError, ("Dropout", "p", "1.5")),
    Row("nn.Softmax", "out of range", "Softmax(dim=5) on a (2, 3) batch",
        lambda e: nn.Softmax(dim=5)(f32(2, 3)), ValueError, ("softmax", "axis 5")),
    Row("F.cross_entropy / CrossEntropyLoss", "out of range", "label 5 with 3 classes",
        lambda e: F.cross_entropy(f32(2, 3), np.array([0, 5])), ValueError,
        ("cross_entropy", "label 5", "3 classes")),
    Row("F.cross_entropy / CrossEntropyLoss", "out of range", "label -1",
        lambda e: F.cross_entropy(f32(2, 3), np.array([0, -1])), ValueError,
        ("cross_entropy", "label -1")),
    Row("F.cross_entropy / CrossEntropyLoss", "wrong shape", "3 labels for 2 rows",
        lambda e: F.cross_entropy(f32(2, 3), np.array([0, 1, 2])), ValueError,
        ("cross_entropy", "(2,)", "(3,)")),
    Row("F.cross_entropy / CrossEntropyLoss", "wrong dtype", "float labels of shape (N,)",
        lambda e: F.cross_entropy(f32(2, 3), np.array([0.5, 1.0])), TypeError,
        ("cross_entropy", "integer dtype", "float64")),
    Row("F.cross_entropy / CrossEntropyLoss", "wrong shape", "1-D logits",
        lambda e: F.cross_entropy(f32(3), np.array([0])), ValueError,
        ("cross_entropy", "(N, C)", "(3,)")),
    Row("F.cross_entropy / CrossEntropyLoss", "empty", "a batch of 0 rows",
        lambda e: nn.CrossEntropyLoss()(f32(0, 3), np.zeros(0, np.int64)), ValueError,
        ("cross_entropy", "(0, 3)")),
    Row("F.cross_entropy / CrossEntropyLoss", "NaN/Inf", "NaN logits: the loss is NaN",
        lambda e: F.cross_entropy(cr.tensor(np.array([[np.nan, 1.0]])), np.array([0])), None,
        check=lambda t: np.isnan(t.item())),
    Row("F.mse_loss / MSELoss", "wrong shape", "input (2, 3), target (3, 2)",
        lambda e: F.mse_loss(f32(2, 3), np.ones((3, 2), np.float32)), ValueError,
        ("mse_loss", "(3, 2)", "(2, 3)")),
    Row("F.binary_cross_entropy / BCELoss", "out of range", "probabilities equal to 2",
        lambda e: F.binary_cross_entropy(f32(2, 3) * 2, np.ones((2, 3), np.float32)),
        ValueError, ("binary_cross_entropy", "[0, 1]", "2.0")),
    Row("losses (reduction=)", "wrong value", "reduction='avg'",
        lambda e: F.mse_loss(f32(3), f32(3), reduction="avg"), ValueError,
        ("mse_loss", "reduction", "'avg'")),
    # ---- optimizers ---------------------------------------------------------------------
    Row("optim.SGD / Adam / AdamW / RMSprop", "out of range", "SGD(lr=-1)",
        lambda e: cr.optim.SGD(_model().parameters(), lr=-1), ValueError, ("SGD", "lr -1")),
    Row("optim.SGD / Adam / AdamW / RMSprop", "wrong dtype", "SGD(lr='x')",
        lambda e: cr.optim.SGD(_model().parameters(), lr="x"), TypeError, ("SGD", "lr", "'x'")),
    Row("optim.SGD / Adam / AdamW / RMSprop", "empty", "SGD([])",
        lambda e: cr.optim.SGD([], lr=0.1), ValueError, ("SGD", "empty parameter list")),
    Row("optim.SGD / Adam / AdamW / RMSprop", "wrong dtype", "a NumPy array as a parameter",
        lambda e: cr.optim.SGD([np.ones(3)], lr=0.1), TypeError, ("SGD", "parameter 0",
                                                                 "ndarray")),
    Row("optim.SGD / Adam / AdamW / RMSprop", "out of range", "Adam(betas=(1.5, 0.9))",
        lambda e: cr.optim.Adam(_model().parameters(), betas=(1.5, 0.9)), ValueError,
        ("Adam", "beta1", "1.5")),
    Row("optim.SGD / Adam / AdamW / RMSprop", "out of range", "Adam(eps=-1)",
        lambda e: cr.optim.Adam(_model().parameters(), eps=-1), ValueError, ("Adam", "eps -1")),
    Row("optim.SGD / Adam / AdamW / RMSprop", "wrong value", "SGD(nesterov=True) without momentum",
        lambda e: cr.optim.SGD(_model().parameters(), lr=0.1, nesterov=True), ValueError,
        ("SGD", "nesterov", "momentum")),
    # ---- data --------------------------------------------------------------------------------
    Row("data.DataLoader", "out of range", "batch_size=0",
        lambda e: cr.data.DataLoader(_XY(), batch_size=0), ValueError,
        ("DataLoader", "batch_size", "0")),
    Row("data.DataLoader", "wrong shape", "X with 4 rows, y with 3",
        lambda e: cr.data.DataLoader((np.ones((4, 2)), np.ones(3)), batch_size=2), ValueError,
        ("TensorDataset", "(4, 2)", "(3,)")),
    Row("data.DataLoader", "wrong dtype", "seed='a'",
        lambda e: cr.data.DataLoader(_XY(), batch_size=2, seed="a"), TypeError,
        ("DataLoader", "seed", "'a'")),
    Row("data.DataLoader", "NaN/Inf", "NaN features pass through unchanged",
        lambda e: next(iter(cr.data.DataLoader((np.full((4, 2), np.nan), np.ones(4)),
                                               batch_size=2))), None,
        check=lambda b: np.isnan(b[0].data).all()),
    Row("data.load_mnist", "missing file", "a directory without the IDX files",
        lambda e: cr.data.load_mnist(e.tmp / "nowhere"), FileNotFoundError,
        ("load_mnist", "train-images-idx3-ubyte", "nowhere")),
    Row("data.load_mnist", "wrong value", "kind='val'",
        lambda e: cr.data.load_mnist(e.tmp, kind="val"), ValueError, ("load_mnist", "'val'")),
    Row("data.load_mnist", "wrong file type", "a PNG named train-images-idx3-ubyte",
        lambda e: cr.data.load_mnist(_mnist_dir(e, PNG)), DataFormatError,
        ("train-images-idx3-ubyte", "not an IDX file")),
    Row("data.load_mnist", "wrong shape", "header declares 10^12 bytes in a 30-byte file",
        lambda e: cr.data.load_mnist(_mnist_dir(e, bytes([0, 0, 8, 3]) + (10**4).to_bytes(4, "big")
                                                * 3 + b"\0" * 14)),
        DataFormatError, ("train-images-idx3-ubyte", "(10000, 10000, 10000)", "30 bytes")),
    Row("data.load_csv", "missing file", "a path that does not exist",
        lambda e: cr.data.load_csv(e.tmp / "nope.csv"), FileNotFoundError, ("nope.csv",)),
    Row("data.load_csv", "wrong file type", "a PNG",
        lambda e: cr.data.load_csv(_file(e, "x.png", PNG)), DataFormatError,
        ("x.png", "not utf-8-sig text", "0x89")),
    Row("data.load_csv", "NaN/Inf", "a 'nan' feature cell",
        lambda e: cr.data.load_csv(_csv(e, "a,b\nnan,1\n")), DataFormatError,
        ("t.csv", "line 2", "column 1", "'nan'")),
    Row("data.load_csv", "out of range", "1e39 (beyond float32)",
        lambda e: cr.data.load_csv(_csv(e, "a,b\n1e39,1\n")), DataFormatError,
        ("t.csv", "line 2", "'1e39'", "float32")),
    Row("data.load_csv", "out of range", "a regression target of 1e39",
        lambda e: cr.data.load_csv(_csv(e, "a,b\n1,0.5\n2,1e39\n")), DataFormatError,
        ("t.csv", "line 3", "'1e39'", "float32")),
    Row("data.load_csv", "out of range", "a feature cell of 320 digits (beyond float64)",
        lambda e: cr.data.load_csv(_csv(e, "1.0," + "9" * 320 + ",0.5")), DataFormatError,
        ("t.csv", "line 1", "column 2", "'999")),
    Row("data.load_csv", "empty", "a last line of one empty quoted cell",
        lambda e: cr.data.load_csv(_csv(e, '1.0,2.0,0.5\n2.0,1.0,1.5\n""')), DataFormatError,
        ("t.csv", "data row 3", "empty cell")),
    Row("data.load_csv", "wrong shape", "a row with 3 cells in a 2-column table",
        lambda e: cr.data.load_csv(_csv(e, "a,b\n1,2\n1,2,3\n")), DataFormatError,
        ("t.csv", "line 3", "expected 2 columns", "found 3")),
    Row("data.load_csv", "empty", "an empty file",
        lambda e: cr.data.load_csv(_csv(e, "")), DataFormatError, ("t.csv", "empty")),
    Row("data.load_csv", "wrong value", "target='zz' (no such column)",
        lambda e: cr.data.load_csv(_csv(e, "a,b\n1,2\n"), target="zz"), ValueError,
        ("load_csv", "'zz'", "['a', 'b']")),
    # ---- save / load ---------------------------------------------------------------------------
    Row("cr.save", "wrong dtype", "an object that is neither a Module nor a state dict",
        lambda e: cr.save(object(), e.tmp / "x.cr"), TypeError, ("save", "object")),
    Row("cr.save", "wrong dtype", "metadata holding an object()",
        lambda e: cr.save(_model(), e.tmp / "x.cr", metadata={"a": object()}), TypeError,
        ("save", "metadata", "JSON")),
    Row("cr.save", "wrong dtype", "a state dict with an object array",
        lambda e: cr.save({"w": np.array([None])}, e.tmp / "x.cr"), TypeError,
        ("save", "'w'", "object")),
    Row("cr.save", "missing file", "into a directory that does not exist",
        lambda e: cr.save(_model(), e.tmp / "nowhere" / "x.cr"), FileNotFoundError,
        ("x.cr", "nowhere", "does not exist")),
    Row("cr.load", "missing file", "a path that does not exist",
        lambda e: cr.load(e.tmp / "nope.cr"), FileNotFoundError, ("nope.cr",)),
    Row("cr.load", "wrong file type", "a PNG",
        lambda e: cr.load(_file(e, "x.png", PNG)), crio.CheckpointError,
        ("x.png", "not a valid checkpoint", "header claims")),
    Row("cr.load", "wrong file type", "a pickle (never unpickled)",
        lambda e: cr.load(_file(e, "x.pt", b"\x80\x04\x95" + b"\0" * 20)), crio.CheckpointError,
        ("x.pt", "pickle", "never unpickles")),
    Row("cr.load", "wrong file type", "a zip (torch.save / .npz)",
        lambda e: cr.load(_file(e, "x.pt", b"PK\x03\x04" + b"\0" * 30)), crio.CheckpointError,
        ("x.pt", "zip")),
    Row("cr.load", "empty", "a 0-byte file",
        lambda e: cr.load(_file(e, "x.cr", b"")), crio.CheckpointError, ("x.cr", "empty")),
    Row("cr.load", "wrong shape", "header length 10^12 in a 10-byte file",
        lambda e: cr.load(_file(e, "x.cr", (10**12).to_bytes(8, "little") + b"{}")),
        crio.CheckpointError, ("x.cr", "1000000000000", "truncated")),
    Row("Checkpoint.load_into", "wrong shape", "weights (2, 3) into Linear(4, 2)",
        lambda e: cr.load(_saved(e)).load_into(nn.Sequential(nn.Linear(4, 2))), ValueError,
        ("load_state_dict", "'0.weight'", "(2, 3)", "(2, 4)")),
    # ---- fit -----------------------------------------------------------------------------------
    Row("cr.fit", "wrong shape", "X with 8 rows, y with 5",
        lambda e: _fit(e, train=(_XY()[0], _XY()[1][:5]), epochs=1), ValueError,
        ("(8, 3)", "(5,)")),
    Row("cr.fit", "wrong shape", "5 features for a Linear(3, 2) model",
        lambda e: _fit(e, train=(np.ones((8, 5), np.float32), _XY()[1]), epochs=1), ValueError,
        ("linear", "(8, 5)", "(2, 3)")),
    Row("cr.fit", "out of range", "labels 7 for a 2-class model",
        lambda e: _fit(e, train=(_XY()[0], _XY()[1] + 7), epochs=1), ValueError,
        ("cross_entropy", "label 7", "2 classes")),
    Row("cr.fit", "out of range", "epochs=-1",
        lambda e: _fit(e, epochs=-1), ValueError, ("fit", "epochs", "-1")),
    Row("cr.fit", "wrong dtype", "loss_fn='mse' (a string)",
        lambda e: _fit(e, loss_fn="mse", epochs=1), TypeError, ("fit", "loss_fn", "'mse'")),
    Row("cr.fit", "NaN/Inf", "NaN features: trains, History records loss=nan",
        lambda e: _fit(e, train=(np.full((8, 3), np.nan, np.float32), _XY()[1]), epochs=2),
        None, check=lambda h: all(np.isnan(v) for v in h.history["loss"])),
    Row("cr.fit", "missing dependency", "tqdm not installed, progress=True",
        lambda e: (_block(e, "tqdm"), _fit(e, epochs=1))[1], None,
        check=lambda h: len(h.history["loss"]) == 1),
    # ---- optional dependencies ------------------------------------------------------------------
    Row("History.plot", "missing dependency", "matplotlib not installed",
        lambda e: (_block(e, "matplotlib"), _fit(e, epochs=1).plot(e.tmp / "h.png")),
        ImportError, ("History.plot", "matplotlib", "chainrule[plot]")),
    Row("cr.sklearn", "missing dependency", "scikit-learn not installed",
        lambda e: (_block(e, "sklearn"), e.monkeypatch.delitem(sys.modules, "chainrule.sklearn",
                                                                raising=False),
                   __import__("chainrule.sklearn")),
        ImportError, ("chainrule.sklearn", "scikit-learn", "chainrule[sklearn]")),
    # ---- CLI -----------------------------------------------------------------------------------
    Row("chainrule train", "bad CLI argument", "--epochs 0",
        lambda e: cli(e, "train", "--epochs", "0"), "exit 2", ("--epochs", "positive", "0")),
    Row("chainrule train", "bad CLI argument", "--lr abc",
        lambda e: cli(e, "train", "--lr", "abc"), "exit 2", ("--lr", "'abc'")),
    Row("chainrule train", "bad CLI argument", "--hidden 0,x",
        lambda e: cli(e, "train", "--hidden", "0,x"), "exit 2", ("--hidden", "'0,x'")),
    Row("chainrule train", "bad CLI argument", "--bogus",
        lambda e: cli(e, "train", "--bogus"), "exit 2", ("unrecognized", "--bogus")),
    Row("chainrule", "bad CLI argument", "an unknown command",
        lambda e: cli(e, "frobnicate"), "exit 2", ("invalid choice", "'frobnicate'")),
    Row("chainrule train", "missing file", "DATA that does not exist",
        lambda e: cli(e, "train", e.tmp / "nope.csv", "--quiet"), "exit 2",
        ("nope.csv", "no such file")),
    Row("chainrule train", "wrong file type", "DATA is a PNG",
        lambda e: cli(e, "train", _file(e, "x.png", PNG), "--quiet"), "exit 2",
        ("x.png", "not utf-8-sig text")),
    Row("chainrule train", "out of range", "a target cell of 1e39 (beyond float32)",
        lambda e: cli(e, "train", _csv(e, "a,y\n" + "1,0.5\n" * 9 + "2,1e39\n"), "--target", "y",
                      "--quiet", "--out", e.tmp / "run"), "exit 2",
        ("t.csv", "line 11", "'1e39'", "float32")),
    Row("chainrule evaluate / predict", "wrong file type", "MODEL is a PNG",
        lambda e: cli(e, "evaluate", _file(e, "x.png", PNG)), "exit 2",
        ("x.png", "not a valid checkpoint")),
    Row("chainrule train", "missing dependency", "matplotlib not installed: trains, no plot",
        lambda e: (_block(e, "matplotlib"),
                   cli(e, "train", "--epochs", "1", "--out", e.tmp / "run"))[1], None,
        check=lambda r: r[0] == 0 and "matplotlib is not installed" in r[1] + r[2]),
]


def markdown() -> str:
    """The table of docs/bad-inputs.md, generated from ROWS."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| Entry point | Bad input | Input | Outcome | The message names |",
             "| --- | --- | --- | --- | --- |"]
    for r in ROWS:
        if r.raises is None:
            outcome = "no error (checked)"
        elif r.raises == "exit 2":
            outcome = "exit status 2, one line on stderr"
        else:
            outcome = f"`{r.raises.__name__}`"
        if r.bug:
            outcome += f" **expected; today: bug** ({r.bug})"
        says = ", ".join(f"`{s}`" for s in r.says) or "-"
        lines.append(f"| {cell(r.entry)} | {r.kind} | {cell(r.bad)} | {cell(outcome)} | "
                     f"{cell(says)} |")
    return "\n".join(lines) + "\n"
