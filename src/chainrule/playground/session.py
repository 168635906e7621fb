"""One playground session: its data, its network, and training it with chainrule.

Everything numeric here is the library's: the network is an
``nn.Sequential`` of ``nn.Linear`` layers and activation modules, the losses
are ``nn.functional``'s, the optimizers ``cr.optim``'s, and a training step is
the usual ``zero_grad(); loss.backward(); step()``. The session only decides
which rows go into a mini-batch and packs the results for the page; the
step-through goes through :mod:`chainrule.playground.ledger_view`, the one
module that reads ``cr.explain``'s ledger.
"""

from __future__ import annotations

import base64
import math
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import nn, optim
from ..io import save
from ..nn import functional as F
from ..ops import abs as cr_abs
from ..ops import sigmoid, softmax
from ..tensor import Tensor, no_grad
from ..tensor import tensor as make_tensor
from . import ledger_view
from .config import Config, ConfigError
from .datasets import Data

__all__ = ["Session", "TrainingDiverged", "build_model", "encode"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "identity": nn.Identity}


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number; training refuses to go on until a reset."""


def encode(a: np.ndarray, dtype: Any = np.float32) -> str:
    """A flat array as base64 of its little-endian bytes (the page reads it as a typed array)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))
                            .tobytes()).decode("ascii")


def build_model(n_in: int, hidden: Sequence[int], n_out: int, activation: str,
                output_sigmoid: bool, generator: np.random.Generator) -> nn.Sequential:
    """Linear + activation per hidden layer, then a Linear output (and a Sigmoid for MSE).

    Training may fuse Linear + ReLU (faster); the step-through records its
    forward inside ``cr.keep_values()``, which keeps every layer's z^l apart.
    """
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h, generator=generator), _ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, n_out, generator=generator))
    if output_sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


class Session:
    """A network training on a data set, as one page sees it.

    Calls from the server hold :attr:`lock`; nothing here is shared between
    sessions except the (read-only) library.
    """

    def __init__(self, sid: str, cfg: Config, data: Data) -> None:
        self.sid = sid
        self.lock = threading.Lock()
        self.cfg = cfg
        self.data = data
        self._grid_cache: dict[int, np.ndarray] = {}
        self._build()

    # ----- construction -----------------------------------------------------

    @property
    def n_out(self) -> int:
        if self.cfg.problem == "regression":
            return 1
        k = self.data.n_classes
        if self.cfg.loss == "ce":
            return k
        return 1 if k == 2 else k  # bce (two classes) or mse: one sigmoid per class

    @property
    def output(self) -> str:
        """How the last layer's output becomes what the page shows."""
        if self.cfg.problem == "regression":
            return "value"
        return {"ce": "softmax", "bce": "sigmoid", "mse": "identity"}[self.cfg.loss]

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """What the loss compares the network's output with."""
        cfg = self.cfg
        if cfg.problem == "regression":
            return y.reshape(-1, 1).astype(np.float32)
        if cfg.loss == "ce":
            return y.astype(np.int64)
        if self.n_out == 1:
            return y.reshape(-1, 1).astype(np.float32)
        return np.eye(self.n_out, dtype=np.float32)[y]

    def _build(self) -> None:
        cfg, data = self.cfg, self.data
        if cfg.problem == "classification" and cfg.loss == "bce" and data.n_classes != 2:
            raise ConfigError(f"loss=bce needs two classes, the data has {data.n_classes}; "
                              "use loss=ce (softmax cross-entropy) or mse")
        init = np.random.default_rng([cfg.seed, 2])
        self.model = build_model(data.X_train.shape[1], cfg.hidden, self.n_out, cfg.act,
                                 cfg.problem == "classification" and cfg.loss == "mse", init)
        self.linears = [m for m in self.model if isinstance(m, nn.Linear)]
        self.opt = self._optimizer()
        self.T_train = self._targets(data.y_train)
        self.T_test = self._targets(data.y_test)
        self._order = np.random.default_rng([cfg.seed, 3])  # mini-batch order
        self._perm: np.ndarray | None = None
        self._pos = 0
        self.epoch = 0
        self.iteration = 0
        self.diverged: str | None = None
        self._norm_sum = np.zeros(len(self.linears))
        self._norm_count = 0
        self.history: list[dict[str, Any]] = []
        self._record()

    def _optimizer(self) -> optim.Optimizer:
        cfg, params = self.cfg, self.model.parameters()
        if cfg.opt == "adam":
            return optim.Adam(params, lr=cfg.lr)
        return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum if cfg.opt == "momentum" else 0)

    def reconfigure(self, cfg: Config, data: Data | None = None) -> bool:
        """Apply new settings; returns True when the data or the network was rebuilt."""
        if self.cfg.needs_rebuild(cfg) or data is not None:
            self.cfg = cfg
            if data is not None:
                self.data = data
                self._grid_cache.clear()
            self._build()
            return True
        self.cfg = cfg
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr
            if cfg.opt == "momentum":
                group["momentum"] = cfg.momentum
        return False

    # ----- the loss ---------------------------------------------------------

    def data_loss(self, out: Tensor, target: np.ndarray) -> Tensor:
        """The loss the settings name, averaged over the rows."""
        cfg = self.cfg
        if cfg.problem == "classification" and cfg.loss == "ce":
            return F.cross_entropy(out, target)
        if cfg.problem == "classification" and cfg.loss == "bce":
            return F.binary_cross_entropy_with_logits(out, target)
        return F.mse_loss(out, target)

    def penalty(self) -> Tensor | None:
        """rate * sum |w| (L1) or rate * sum w^2 / 2 (L2) over the weights (not the biases)."""
        cfg = self.cfg
        if cfg.reg == "none" or cfg.rrate == 0:
            return None
        terms = [cr_abs(m.weight).sum() if cfg.reg == "l1" else (m.weight * m.weight).sum() * 0.5
                 for m in self.linears]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total * cfg.rrate

    def loss(self, X: np.ndarray, target: np.ndarray) -> Tensor:
        """The training objective on rows ``X``: data loss plus the regularisation term."""
        out = self.model(make_tensor(X))
        loss = self.data_loss(out, target)
        pen = self.penalty()
        return loss if pen is None else loss + pen

    # ----- training ---------------------------------------------------------

    def _epoch_order(self) -> np.ndarray:
        """The order of the training rows in the current epoch (drawn when it starts)."""
        if self._perm is None or self._pos >= len(self._perm):
            self._perm = self._order.permutation(len(self.data.X_train))
            self._pos = 0
        return self._perm

    def next_batch(self) -> np.ndarray:
        """The rows of the mini-batch the next training step will use (nothing is consumed)."""
        order = self._epoch_order()
        return order[self._pos:self._pos + self.cfg.batch]

    def _step(self) -> None:
        order = self._epoch_order()
        idx = order[self._pos:self._pos + self.cfg.batch]  # next_batch(), from the same order
        loss = self.loss(self.data.X_train[idx], self.T_train[idx])
        value = float(loss.item())
        if not math.isfinite(value):
            self.diverged = (f"training diverged at epoch {self.epoch}, step {self.iteration}: "
                             f"the loss is {value}; lower the learning rate and reset")
            raise TrainingDiverged(self.diverged)
        self.opt.zero_grad()
        loss.backward()
        params = list(self.model.parameters())
        before = [p.numpy().copy() for p in params]  # small networks: copies are cheap
        self.opt.step()
        if not all(np.isfinite(p.numpy()).all() for p in params):
            # keep the last finite weights, so that the page still shows a network
            with no_grad():
                for p, old in zip(params, before):
                    p.copy_(old)
            self.diverged = (f"training diverged at epoch {self.epoch}, step {self.iteration}: "
                             "the step made a weight overflow; lower the learning rate and "
                             "reset")
            raise TrainingDiverged(self.diverged)
        self._pos += len(idx)
        self.iteration += 1
        # no gradient (None) is a zero one
        self._norm_sum += [0.0 if m.weight.grad is None else
                           float(np.linalg.norm(m.weight.grad.numpy())) for m in self.linears]
        self._norm_count += 1
        if self._pos >= len(order):
            self.epoch += 1
            self._record()

    def train(self, epochs: int = 0, batches: int = 0) -> None:
        """Run whole epochs (finishing the current one first) or single mini-batch steps."""
        if self.diverged:
            raise TrainingDiverged(self.diverged)
        # overflow is caught by the finite checks in _step and reported on the page
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for _ in range(batches):
                self._step()
            for _ in range(epochs):
                start = self.epoch
                while self.epoch == start:
                    self._step()

    def _record(self) -> None:
        """One point of the loss curves and of the gradient-magnitude view (per epoch)."""
        point: dict[str, Any] = {"epoch": self.epoch, **self.metrics()}
        if self._norm_count:
            point["grad_norms"] = (self._norm_sum / self._norm_count).tolist()
        else:
            point["grad_norms"] = None  # before the first step there is no gradient
        self._norm_sum[:] = 0
        self._norm_count = 0
        self.history.append(point)

    def set_weight(self, layer: int, row: int, col: int, value: object) -> None:
        """Set one weight by hand (TF Playground's click-to-edit): W^layer[row, col] = value.

        ``value`` comes from the page as it is: anything but a finite number
        within ±1e6 is refused.
        """
        if not 1 <= layer <= len(self.linears):
            raise ConfigError(f"weight: layer {layer} does not exist (1 to {len(self.linears)})")
        W = self.linears[layer - 1].weight
        rows, cols = W.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise ConfigError(f"weight: W{layer}[{row}, {col}] is outside its shape "
                              f"({rows}, {cols})")
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and abs(value) <= 1e6):
            raise ConfigError(f"weight: {value!r} is not a number from -1e6 to 1e6")
        with no_grad():
            W[row, col] = value

    # ----- reading the network ------------------------------------------------

    def _forward(self, X: np.ndarray) -> np.ndarray:
        with no_grad():
            return self.model(make_tensor(X)).numpy()

    def _block(self) -> int:
        """Rows per forward call on a big input (the boundary grid).

        Blocks of about 2^17 / (in x out) rows keep each layer's product small
        enough that OpenBLAS runs it on one thread: on a busy two-core machine
        its second thread made the 100 x 100 grid of a 2-8-8-1 network 5-10x
        slower (7-20 ms against about 1 ms in 2,048-row blocks).
        """
        widest = max(m.in_features * m.out_features for m in self.linears)
        return int(np.clip(2**17 // max(widest, 1), 256, 4096))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """What the page shows per row: class probabilities (n, k) or values (n,)."""
        block = self._block()
        if len(X) > block:
            return np.concatenate([self._predict(X[i:i + block])
                                   for i in range(0, len(X), block)])
        return self._predict(X)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        with no_grad():
            out = self.model(make_tensor(X))
            if self.output == "softmax":
                return softmax(out, axis=-1).numpy()
            if self.output == "sigmoid":
                p = sigmoid(out).numpy()[:, 0]
                return np.stack([1 - p, p], axis=1)
            a = out.numpy()
        if self.output == "value":
            return a[:, 0]
        if a.shape[1] == 1:  # mse with two classes: the sigmoid output is p(class 1)
            return np.concatenate([1 - a, a], axis=1)
        return a

    def metrics(self) -> dict[str, float | None]:
        """Data loss (no penalty) and accuracy on the training and test rows; None if not finite."""
        out: dict[str, float | None] = {}
        for part, X, T, y in (("train", self.data.X_train, self.T_train, self.data.y_train),
                              ("test", self.data.X_test, self.T_test, self.data.y_test)):
            if len(X) == 0:
                out[f"{part}_loss"] = out[f"{part}_acc"] = None
                continue
            with no_grad():
                loss = float(self.data_loss(self.model(make_tensor(X)), T).item())
            out[f"{part}_loss"] = loss if math.isfinite(loss) else None
            if self.cfg.problem == "classification":
                pred = self.predict(X)
                out[f"{part}_acc"] = float(np.mean(np.argmax(pred, axis=1) == y))
            else:
                out[f"{part}_acc"] = None
        return out

    def weights(self) -> list[dict[str, Any]]:
        out = []
        for m in self.linears:
            assert m.bias is not None  # build_model gives every Linear a bias
            out.append({"W": m.weight.numpy().tolist(), "b": m.bias.numpy().tolist()})
        return out

    def _grid_inputs(self, n: int) -> np.ndarray:
        if n not in self._grid_cache:
            self._grid_cache[n] = self.data.inputs(self.data.grid(n))
        return self._grid_cache[n]

    def boundary(self, n: int) -> dict[str, Any] | None:
        """The output over an n x n grid of the plane (None when the data is not 2-D)."""
        if not self.data.two_d:
            return None
        pred = self.predict(self._grid_inputs(n))
        if self.output == "value":
            return {"n": n, "kind": "value", "value": encode(pred)}
        if pred.shape[1] == 2:
            return {"n": n, "kind": "binary", "value": encode(pred[:, 1])}
        return {"n": n, "kind": "multi", "label": encode(np.argmax(pred, axis=1), np.uint8),
                "value": encode(np.max(pred, axis=1))}

    def neuron_maps(self, n: int) -> list[str] | None:
        """Each neuron's output over an n x n grid, one base64 float32 block per layer.

        Hidden neurons show their activation a^l; the output neurons what the
        page shows for the output (probability or value).
        """
        if not self.data.two_d:
            return None
        h = make_tensor(self._grid_inputs(n))
        blocks: list[str] = []
        hidden_modules = 2 * len(self.cfg.hidden)  # (Linear, activation) per hidden layer
        with no_grad():
            for k, layer in enumerate(list(self.model)[:hidden_modules]):
                h = layer(h)
                if k % 2 == 1:
                    blocks.append(encode(h.numpy().T))  # (units, n*n)
        pred = self.predict(self._grid_inputs(n))
        if pred.ndim == 1:
            out = pred[None, :]
        elif self.n_out == 1:
            out = pred[:, 1][None, :]
        else:
            out = pred.T
        blocks.append(encode(out))
        return blocks

    def input_maps(self, n: int) -> list[str] | None:
        """The value of each input feature over the grid (constant for a session)."""
        if not self.data.two_d:
            return None
        return [encode(col) for col in self._grid_inputs(n).T]

    # ----- what the page receives -------------------------------------------------

    def points(self) -> dict[str, Any]:
        d = self.data
        return {
            "train": {"x": d.P_train.tolist() if d.two_d else None, "y": d.y_train.tolist()},
            "test": {"x": d.P_test.tolist() if d.two_d else None, "y": d.y_test.tolist()},
        }

    def describe(self, grid: int = 100, maps: int = 24) -> dict[str, Any]:
        """Everything the page needs after a (re)build."""
        d = self.data
        return {
            "session": self.sid,
            "config": self.cfg.to_dict(),
            "params": self.cfg.to_params(),
            "data": {
                "problem": d.problem, "classes": d.classes, "inputs": d.input_names,
                "features": d.feature_names, "domain": d.domain, "two_d": d.two_d,
                "n_train": len(d.X_train), "n_test": len(d.X_test), "notes": d.notes,
                "points": self.points(), "input_maps": self.input_maps(maps),
            },
            "network": {
                "sizes": [d.X_train.shape[1], *self.cfg.hidden, self.n_out],
                "activation": self.cfg.act, "output": self.output,
            },
            **self.snapshot(grid, maps, since=0),
        }

    def snapshot(self, grid: int = 100, maps: int = 24, since: int = 0) -> dict[str, Any]:
        """The state after training: counters, losses, weights, heatmaps, new history points."""
        # weights near overflow draw as saturated colours, without warnings on the console
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._snapshot(grid, maps, since)

    def _snapshot(self, grid: int, maps: int, since: int) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "metrics": self.metrics(),
            "weights": self.weights(),
            "boundary": self.boundary(grid),
            "neurons": self.neuron_maps(maps),
            "history": self.history[since:],
            "history_len": len(self.history),
            "next_batch": self.next_batch().tolist(),
            "diverged": self.diverged,
        }

    # ----- the step-through ---------------------------------------------------------

    def stepthrough(self, mode: str, index: int | None = None) -> dict[str, Any]:
        """Backpropagation on one training example or on the next mini-batch, from the ledger."""
        if mode == "example":
            n = len(self.data.X_train)
            if index is None or not 0 <= index < n:
                raise ConfigError(f"step-through: example {index!r} does not exist; the "
                                  f"training set has rows 0 to {n - 1}")
            rows = np.array([index])
        elif mode == "batch":
            rows = self.next_batch()
        else:
            raise ConfigError(f"step-through: mode {mode!r}; expected 'example' or 'batch'")
        X = self.data.X_train[rows]
        view = ledger_view.explain_step(
            self.model, lambda: self.loss(X, self.T_train[rows]), X,
            input_names=self.data.feature_names,
            float32=self.model[0].weight.dtype == np.float32)
        view["output"] = self.output
        view["loss_kind"] = self.cfg.loss
        view["problem"] = self.cfg.problem
        view["regularization"] = None if self.penalty() is None else self.cfg.reg
        view["rows"] = rows.tolist()
        view["labels"] = self.data.y_train[rows].tolist()
        view["points"] = self.data.P_train[rows].tolist() if self.data.two_d else None
        view["epoch"] = self.epoch
        view["iteration"] = self.iteration
        return view

    # ----- export -------------------------------------------------------------------

    def export_name(self) -> str:
        hidden = "-".join(str(h) for h in self.cfg.hidden) or "linear"
        name = self.cfg.dataset if self.cfg.dataset != "csv" else "csv"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"playground-{name}-{hidden}")

    def metadata(self) -> dict[str, Any]:
        """What the checkpoint stores besides the weights: enough to use the model again."""
        d = self.data
        return {
            "playground": self.cfg.to_params(),
            "problem": d.problem,
            "output": self.output,
            "features": d.features,
            "feature_names": d.feature_names,
            "inputs": d.input_names,
            "classes": d.classes,
            "mean": None if d.mean is None else d.mean.tolist(),
            "std": None if d.std is None else d.std.tolist(),
            "target_mean": d.y_mean,
            "target_std": d.y_std,
            "epoch": self.epoch,
        }

    def checkpoint_bytes(self) -> bytes:
        """The network as a chainrule checkpoint (``cr.save``: safetensors + metadata)."""
        fd, path = tempfile.mkstemp(prefix="chainrule-export-", suffix=".safetensors")
        os.close(fd)
        try:
            save(self.model, path, optimizer=self.opt, metadata=self.metadata())
            with open(path, "rb") as f:
                return f.read()
        finally:
            os.unlink(path)

    def python_snippet(self) -> str:
        """A short script that rebuilds the network, loads the checkpoint and predicts."""
        return snippet(self.export_name() + ".safetensors", self.cfg, self.data, self.n_out,
                       self.output)


def snippet(filename: str, cfg: Config, data: Data, n_out: int, output: str) -> str:
    """The Python the export offers next to the checkpoint (see :meth:`Session.python_snippet`)."""
    act = {"tanh": "nn.Tanh()", "relu": "nn.ReLU()", "sigmoid": "nn.Sigmoid()",
           "identity": "nn.Identity()"}[cfg.act]
    sizes = [data.X_train.shape[1], *cfg.hidden]
    lines = [f"    nn.Linear({a}, {b}), {act}," for a, b in zip(sizes[:-1], sizes[1:])]
    lines.append(f"    nn.Linear({sizes[-1]}, {n_out}),")
    if cfg.problem == "classification" and cfg.loss == "mse":
        lines.append("    nn.Sigmoid(),")
    body = "\n".join(lines)
    n_raw = len(data.input_names)
    example = ", ".join(["0.5"] * n_raw)
    prep = []
    if data.mean is not None and data.std is not None:  # set together
        prep.append(f"mean = np.array({data.mean.tolist()!r})\n"
                    f"std = np.array({data.std.tolist()!r})\n"
                    "P = (P - mean) / std                   # the training split's standardisation")
    if data.features:
        cols = {
            "x1": "a", "x2": "b", "x1sq": "a * a", "x2sq": "b * b", "x1x2": "a * b",
            "sinx1": "np.sin(a)", "sinx2": "np.sin(b)",
        }
        exprs = ", ".join(cols[f] for f in data.features)
        prep.append("a, b = P[:, 0], P[:, 1]\n"
                    f"X = np.stack([{exprs}], axis=1).astype(np.float32)"
                    f"   # the input features: {data.feature_names!r}")
    else:
        prep.append("X = P.astype(np.float32)")
    if output == "softmax":
        tail = ("proba = cr.softmax(out, axis=-1).numpy()\n"
                f"print(proba.argmax(axis=1))       # class indices; names: {data.classes!r}")
    elif output == "sigmoid":
        tail = ("p = cr.sigmoid(out).numpy()[:, 0]  # P(class 1)\n"
                f"print((p > 0.5).astype(int))      # class indices; names: {data.classes!r}")
    elif output == "identity":
        tail = ("p = out.numpy()                   # sigmoid outputs, trained with squared error\n"
                + ("print((p[:, 0] > 0.5).astype(int))" if n_out == 1
                   else "print(p.argmax(axis=1))")
                + f"  # class indices; names: {data.classes!r}")
    else:
        tail = (f"y = out.numpy()[:, 0] * {data.y_std!r} + {data.y_mean!r}"
                "   # back to the target's units\nprint(y)")
    return (
        f'"""Rebuild the network trained in the chainrule playground and use it.\n\n'
        f"Settings: {_settings_line(cfg)}\n"
        f"Needs {filename} (the checkpoint exported with this file) in the current "
        'directory.\n"""\n'
        "import numpy as np\n\n"
        "import chainrule as cr\n"
        "from chainrule import nn\n\n"
        "model = nn.Sequential(\n"
        f"{body}\n"
        ")\n"
        f'cr.load("{filename}").load_into(model)   # weights checked by name and shape\n'
        f'# or, without writing the layers: model = cr.load_model("{filename}")\n\n'
        # names come from the user's CSV header: repr keeps a newline in one from ending
        # the comment (the snippet is code the user runs)
        f"P = np.array([[{example}]])             # raw inputs: {data.input_names!r}\n"
        + "\n".join(prep) + "\n"
        "with cr.no_grad():\n"
        "    out = model(cr.tensor(X))\n"
        f"{tail}\n"
    )


def _settings_line(cfg: Config) -> str:
    p = cfg.to_params()
    return "&".join(f"{k}={p[k]}" for k in ("dataset", "hidden", "act", "loss", "opt", "lr"))
