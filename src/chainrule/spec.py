"""One model spec: architecture, preprocessing and training settings in one JSON record.

The command line (``chainrule train``), the scikit-learn estimators
(:mod:`chainrule.sklearn`) and :func:`chainrule.load_predictor` all build
from a :class:`ModelSpec`: the activation table, the MLP builder, the
optimizer factory, the losses and the output probabilities live here once.
Every checkpoint the CLI and the estimators write stores the spec in its
metadata (key ``"spec"``), so a saved model can be rebuilt, and used on raw
rows, without the code that trained it.

>>> spec = ModelSpec(task="classification", n_features=4, n_outputs=3, hidden=[16, 8])
>>> model = spec.build_model()                  # Linear(4,16) ReLU Linear(16,8) ReLU Linear(8,3)
>>> opt = spec.make_optimizer(model.parameters())
>>> spec.to_dict()["training"]["optimizer"]
'adam'
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import nn, optim
from .io import CheckpointError
from .tensor import Tensor, no_grad

__all__ = [
    "ModelSpec", "Predictor", "load_predictor", "SPEC_VERSION", "ACTIVATIONS", "OPTIMIZERS",
    "DEFAULT_LR", "LOSSES", "parse_hidden", "auto_hidden", "build_mlp", "make_optimizer",
    "make_loss", "probabilities", "SpecError",
]

SPEC_VERSION = 1

#: activation name -> layer class; "logistic" and "identity" are scikit-learn's names
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "logistic": nn.Sigmoid, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU,
    "identity": nn.Identity,
}
NORMS = {"bn": "batchnorm", "batchnorm": "batchnorm", "ln": "layernorm",
         "layernorm": "layernorm"}
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")
# Adam-style methods normalise the step, SGD does not.
DEFAULT_LR = {"adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3, "sgd": 0.05, "adagrad": 0.05}
LOSSES = {"classification": ("cross_entropy", "mse"),
          "regression": ("mse", "l1", "huber")}


class SpecError(CheckpointError):
    """A model spec that cannot be used (bad values, or written by a newer chainrule)."""


# --------------------------------------------------------------------------
# Hidden layers
# --------------------------------------------------------------------------


def parse_hidden(text: str | Sequence[Any], activation: str = "relu",
                 dropout: float = 0.0) -> list[dict[str, Any]]:
    """Hidden layers from the CLI's ``--hidden`` text (or a list of widths).

    Comma-separated items ``WIDTH[:OPTION...]``; an option is an activation
    name (``relu gelu silu elu tanh sigmoid leaky_relu identity``), ``bn``
    (BatchNorm1d after the Linear) or ``ln`` (LayerNorm), or ``dropP``
    (dropout with probability P). ``"none"`` is no hidden layer.

    >>> parse_hidden("64:bn:gelu,32:drop0.1")
    [{'units': 64, 'activation': 'gelu', 'norm': 'batchnorm', 'dropout': 0.0},
     {'units': 32, 'activation': 'relu', 'norm': None, 'dropout': 0.1}]
    """
    if isinstance(text, str):
        t = text.strip().lower()
        if t in ("", "none", "0"):
            return []
        items: list[Any] = [p.strip() for p in t.split(",")]
    else:
        items = list(text)
    layers = []
    for item in items:
        layer: dict[str, Any] = {"units": 0, "activation": activation, "norm": None,
                                 "dropout": float(dropout)}
        if isinstance(item, Mapping):
            layer.update(item)
            parts: list[str] = []
        elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
            layer["units"] = int(item)
            parts = []
        else:
            head, *parts = str(item).split(":")
            try:
                layer["units"] = int(head)
            except ValueError:
                raise SpecError(f"hidden layer {item!r}: expected a width such as 64 or "
                                "64:gelu:bn, e.g. --hidden 128,64") from None
        for opt in parts:
            if opt in ACTIVATIONS:
                layer["activation"] = opt
            elif opt in NORMS:
                layer["norm"] = NORMS[opt]
            elif opt.startswith("drop"):
                try:
                    layer["dropout"] = float(opt[4:])
                except ValueError:
                    raise SpecError(f"hidden layer {item!r}: {opt!r} needs a probability, "
                                    "e.g. drop0.2") from None
            else:
                raise SpecError(
                    f"hidden layer {item!r}: unknown option {opt!r} (activations: "
                    f"{', '.join(sorted(ACTIVATIONS))}; norms: bn, ln; dropout: dropP)")
        if layer["units"] < 1:
            raise SpecError(f"hidden layer {item!r}: layer sizes must be >= 1")
        if layer["activation"] not in ACTIVATIONS:
            raise SpecError(f"unknown activation {layer['activation']!r}; choose from "
                            f"{', '.join(sorted(ACTIVATIONS))}")
        if not 0.0 <= layer["dropout"] < 1.0:
            raise SpecError(f"hidden layer {item!r}: dropout must be in [0, 1)")
        layers.append(layer)
    return layers


def auto_hidden(n_train: int) -> list[int]:
    """The default widths, scaled to the table: two layers [h, h / 2] with h the
    power of two nearest to n_train / 8, between 16 and 128.

    A 128-unit layer on 100 rows memorises them; a 16-unit layer on 50,000
    rows underfits. digits (about 1,200 training rows) gets 128-64, iris 16-8.
    """
    h = 2 ** round(math.log2(max(n_train, 1) / 8)) if n_train > 0 else 16
    h = int(min(128, max(16, h)))
    return [h, h // 2]


def build_mlp(n_in: int, hidden: Sequence[Mapping[str, Any]], n_out: int,
              embedding: Mapping[str, Any] | None = None, dtype: Any = np.float32) -> Any:
    """Linear (-> norm) -> activation (-> Dropout) per hidden layer, then a Linear
    output (logits or values). ``embedding`` puts a
    :class:`~chainrule.nn.CategoricalEmbedding` in front."""
    layers: list[nn.Module] = []
    width = n_in
    if embedding:
        emb = nn.CategoricalEmbedding(embedding["numeric"], embedding["cardinalities"],
                                      embedding["dims"], dtype=dtype)
        layers.append(emb)
        width = emb.out_features
    for h in hidden:
        layers.append(nn.Linear(width, h["units"], dtype=dtype))
        if h.get("norm") == "batchnorm":
            layers.append(nn.BatchNorm1d(h["units"], dtype=dtype))
        elif h.get("norm") == "layernorm":
            layers.append(nn.LayerNorm(h["units"], dtype=dtype))
        layers.append(ACTIVATIONS[h.get("activation", "relu")]())
        if h.get("dropout", 0.0) > 0:
            layers.append(nn.Dropout(h["dropout"]))
        width = h["units"]
    layers.append(nn.Linear(width, n_out, dtype=dtype))
    return nn.Sequential(*layers)


def make_optimizer(name: str, params: Any, lr: float | None = None, momentum: float = 0.0,
                   weight_decay: float | None = None, nesterov: bool = False,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Any:
    """An optimizer by name with the library's defaults (see :data:`DEFAULT_LR`)."""
    if name not in OPTIMIZERS:
        raise SpecError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[name] if lr is None else lr
    wd = 0.0 if weight_decay is None else weight_decay
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd,
                         nesterov=nesterov and momentum > 0)
    if name == "adam":
        return optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, betas=betas, eps=eps,
                           weight_decay=1e-2 if weight_decay is None else weight_decay)
    if name == "rmsprop":
        return optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=wd)
    return optim.Adagrad(params, lr=lr, weight_decay=wd)


def _softmax_mse(out: Any, target: Any) -> Any:
    # the notes' quadratic cost on a softmax output layer, against one-hot rows
    from . import ops
    from .nn import functional as F

    return F.mse_loss(ops.softmax(out, axis=-1), target)


def make_loss(task: str, loss: str, class_weight: Any = None) -> Callable[[Any, Any], Any]:
    """The training loss: mean over the batch, on the network's raw outputs."""
    from .nn import functional as F

    if task == "regression":
        return {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}[loss]
    if loss == "mse":
        return _softmax_mse
    if class_weight is None:
        return F.cross_entropy
    w = np.asarray(class_weight, dtype=np.float64)

    def weighted_cross_entropy(out: Any, target: Any) -> Any:
        return F.cross_entropy(out, target, weight=w)

    return weighted_cross_entropy


def probabilities(out: np.ndarray, output: str) -> np.ndarray:
    """Class probabilities from raw outputs: 'softmax' over columns, 'logistic' per column."""
    out = np.asarray(out, dtype=np.float64)
    if output == "softmax":
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    # a stable logistic: exp of a non-positive number never overflows
    e = np.exp(-np.abs(out))
    return np.where(out >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def balanced_class_weight(y: np.ndarray, n_classes: int) -> list[float]:
    """scikit-learn's 'balanced': n_samples / (n_classes * count of each class)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(float)
    return (len(y) / (n_classes * np.maximum(counts, 1))).tolist()


# --------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """Everything needed to build, train and use a model, as JSON-serialisable fields.

    Architecture: ``n_features`` inputs (after preprocessing), ``hidden``
    layers (dicts from :func:`parse_hidden`), ``n_outputs`` outputs, an
    optional ``embedding`` input layer. Preprocessing: the
    :class:`~chainrule.data.TablePreprocessor` state (or None). Target: its
    ``name``, the ``classes`` in output order, the regression ``scale``
    (mean, std of the training target) and the ``output`` function
    ('softmax', 'logistic' or 'identity'). ``training``: optimizer, lr,
    batch size, epochs, validation and early-stopping settings, seed...
    ``architecture``: the built model's ``get_config()`` (filled by
    :meth:`build_model`), which is what :func:`load_predictor` rebuilds.
    """

    task: str = "classification"
    n_features: int = 0
    n_outputs: int = 1
    hidden: list[Any] = field(default_factory=lambda: [128, 64])
    activation: str = "relu"
    dropout: float = 0.0
    embedding: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    target: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    architecture: list[Any] | None = None
    version: int = SPEC_VERSION

    _TRAINING_DEFAULTS = {
        "optimizer": "adam", "lr": None, "momentum": 0.0, "weight_decay": None,
        "batch_size": 32, "epochs": 200, "patience": 20, "val_size": 0.15,
        "loss": None, "class_weight": None, "seed": 0, "tol": None, "compile": "auto",
    }

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise SpecError(f"task must be 'classification' or 'regression', got {self.task!r}")
        self.training = {**self._TRAINING_DEFAULTS, **(self.training or {})}
        if self.training["loss"] is None:
            self.training["loss"] = "cross_entropy" if self.task == "classification" else "mse"
        if self.training["loss"] not in LOSSES[self.task]:
            raise SpecError(f"loss {self.training['loss']!r} does not fit a {self.task} "
                            f"target; choose from {', '.join(LOSSES[self.task])}")
        if self.training["optimizer"] not in OPTIMIZERS:
            raise SpecError(f"unknown optimizer {self.training['optimizer']!r}; choose from "
                            f"{', '.join(OPTIMIZERS)}")
        self.target.setdefault("output",
                               "softmax" if self.task == "classification" else "identity")

    # ----- (de)serialisation ------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = {
            "version": self.version, "task": self.task, "n_features": self.n_features,
            "n_outputs": self.n_outputs, "hidden": self.hidden_layers(),
            "activation": self.activation, "dropout": self.dropout, "embedding": self.embedding,
            "preprocessing": self.preprocessing, "target": self.target,
            "training": self.training, "data": self.data, "architecture": self.architecture,
        }
        return json.loads(json.dumps(d))  # plain JSON values (and a check that they are)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "the spec") -> ModelSpec:
        check_version(d, where)
        keys = {"task", "n_features", "n_outputs", "hidden", "activation", "dropout",
                "embedding", "preprocessing", "target", "training", "data", "architecture",
                "version"}
        try:
            return cls(**{k: v for k, v in d.items() if k in keys})
        except (TypeError, KeyError) as e:
            raise SpecError(f"{where}: the model spec is damaged ({e})") from None

    # ----- building ---------------------------------------------------------

    def hidden_layers(self) -> list[dict[str, Any]]:
        return parse_hidden(self.hidden, self.activation, self.dropout)

    def build_model(self, dtype: Any = np.float32) -> Any:
        """A freshly initialised network for this spec (and ``architecture`` filled in)."""
        model = build_mlp(self.n_features, self.hidden_layers(), self.n_outputs,
                          self.embedding, dtype)
        self.architecture = model.get_config()
        return model

    def rebuild_model(self) -> Any:
        """The stored architecture, built (weights still to be loaded)."""
        if self.architecture is None:
            return self.build_model()
        return nn.build(self.architecture)

    def make_optimizer(self, params: Any) -> Any:
        t = self.training
        return make_optimizer(t["optimizer"], params, t["lr"], t["momentum"], t["weight_decay"])

    def loss_fn(self) -> Callable[[Any, Any], Any]:
        return make_loss(self.task, self.training["loss"], self.training.get("class_weight"))

    def targets(self, y: np.ndarray) -> np.ndarray:
        """What the loss compares the outputs with: class indices, one-hot rows, or
        (n, 1) standardised values."""
        if self.task == "regression":
            sc = self.target.get("scale") or {"mean": 0.0, "std": 1.0}
            yy = (np.asarray(y, dtype=np.float64) - sc["mean"]) / sc["std"]
            return yy.reshape(len(yy), -1).astype(np.float32)
        if self.training["loss"] == "mse":
            from .data import one_hot

            return one_hot(np.asarray(y, dtype=np.int64), self.n_outputs)
        return np.asarray(y, dtype=np.int64)

    def metrics(self) -> list[str] | None:
        # explicit: with loss mse the targets are one-hot rows, which "auto" would not see
        # as labels; Accuracy compares arg-maxes either way
        return ["accuracy"] if self.task == "classification" else None

    def outputs_to_predictions(self, out: np.ndarray) -> np.ndarray:
        """Raw network outputs -> class indices, or values in the target's units."""
        if self.task == "regression":
            sc = self.target.get("scale") or {"mean": 0.0, "std": 1.0}
            vals = np.asarray(out, dtype=np.float64) * sc["std"] + sc["mean"]
            return vals[:, 0] if vals.shape[1] == 1 else vals
        if self.target["output"] == "softmax":
            return np.asarray(out).argmax(axis=1)
        p = probabilities(out, "logistic")
        return (p[:, 0] > 0.5).astype(np.int64) if p.shape[1] == 1 else (p > 0.5)

    def fit(self, model: Any, X: np.ndarray, y: np.ndarray, val: Any = None,
            callbacks: Sequence[Any] = (), progress: bool = True,
            optimizer: Any = None, loss_fn: Any = None, distributed: bool = False) -> Any:
        """Train ``model`` on (X, encoded targets y) with this spec's settings
        through :func:`chainrule.fit`; returns the History."""
        from .training import fit

        t = self.training
        opt = optimizer if optimizer is not None else self.make_optimizer(model.parameters())
        batch = t["batch_size"]
        batch = None if batch in (0, None) else min(int(batch), len(X))
        return fit(model, loss_fn or self.loss_fn(), opt, (X, y), epochs=int(t["epochs"]),
                   val=val, callbacks=list(callbacks), metrics=self.metrics(),
                   batch_size=batch, shuffle=True, seed=t["seed"], progress=progress,
                   compile=t.get("compile", "auto"), distributed=distributed)


def check_version(d: Mapping[str, Any], where: str) -> None:
    """Refuse a spec written by a newer chainrule, in one sentence."""
    version = d.get("version") if isinstance(d, Mapping) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise SpecError(f"{where}: the stored model spec has no valid version number")
    if version > SPEC_VERSION:
        from . import __version__

        raise SpecError(
            f"{where}: the model spec is version {version}, written by a newer chainrule; "
            f"this chainrule {__version__} reads specs up to version {SPEC_VERSION} "
            "(upgrade chainrule: pip install -U chainrule)"
        )


# --------------------------------------------------------------------------
# Checkpoints: the spec of a saved model (today's and older ones)
# --------------------------------------------------------------------------


def spec_of_checkpoint(ckpt: Any) -> ModelSpec:
    """The spec stored in a checkpoint, or one rebuilt from the metadata that
    ``chainrule train`` wrote before specs existed (commit 8146a23 and earlier)."""
    meta = ckpt.metadata or {}
    where = str(ckpt.path)
    if "spec" in meta:
        spec = ModelSpec.from_dict(meta["spec"], where)
        if spec.architecture is None:
            spec.architecture = ckpt.config
        return spec
    if meta.get("trained_by") == "chainrule train":
        return _legacy_spec(meta, ckpt.config, where)
    raise CheckpointError(
        f"{where}: this checkpoint has no model spec (it was saved with cr.save from your "
        "own code, not by 'chainrule train' or a chainrule estimator), so there is no "
        "stored preprocessing to apply to raw rows; load the network with cr.load_model "
        "and feed it prepared arrays"
    )


def _legacy_spec(meta: Mapping[str, Any], config: Any, where: str) -> ModelSpec:
    from .data.tables import PREPROCESSOR_VERSION

    hp = meta.get("hyperparameters") or {}
    n = int(meta.get("n_features") or 0)
    names = meta.get("feature_names") or [f"column_{i}" for i in range(n)]
    std = meta.get("standardize")
    prep = {
        "version": PREPROCESSOR_VERSION, "feature_names": list(names), "numeric": list(names),
        "categorical": [], "categories": {}, "most_frequent": {}, "numeric_categories": {},
        "fill": {k: None for k in names}, "impute": "error", "encoding": "onehot",
        "unseen": "error", "standardize": bool(std),
        "scaler": None if not std else {"mean": std["mean"], "std": std["std"], "n": 1},
    }
    task = meta.get("task", "classification")
    classes = meta.get("classes")
    target = {"name": meta.get("target"), "classes": classes,
              "scale": meta.get("target_scale"),
              "output": "softmax" if task == "classification" else "identity"}
    training = {k: hp.get(k) for k in ("optimizer", "lr", "momentum", "weight_decay",
                                       "batch_size", "epochs", "patience", "seed", "tol")
                if hp.get(k) is not None}
    training["loss"] = meta.get("loss")
    data = dict(meta.get("data") or {})
    n_out = len(classes) if task == "classification" and classes else 1
    try:
        return ModelSpec(task=task, n_features=n, n_outputs=n_out,
                         hidden=list(hp.get("hidden", [])),
                         activation=hp.get("activation", "relu"),
                         dropout=float(hp.get("dropout", 0.0)), preprocessing=prep,
                         target=target, training=training, data=data, architecture=config)
    except (SpecError, TypeError, ValueError) as e:
        raise SpecError(f"{where}: the checkpoint's 'chainrule train' metadata cannot be "
                        f"read ({e})") from None


# --------------------------------------------------------------------------
# Predictor: raw rows in, labels / probabilities / values out
# --------------------------------------------------------------------------


class Predictor:
    """A trained model with its stored preprocessing: takes raw rows, returns labels.

    Rows are a pandas DataFrame, a list of dicts, a 2-D array (columns in
    training order) or a CSV path, with the same columns as the training
    table (by name; strings included; extra columns such as the target are
    ignored). Classification returns the original class names.

    >>> pred = cr.load_predictor("runs/iris/model.safetensors")
    >>> pred.predict([{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
    ...                "petal_width": 0.2}])
    array(['setosa'], dtype=object)
    >>> pred.predict_proba(df)        # (n, n_classes), columns in pred.classes_ order
    """

    def __init__(self, model: Any, spec: ModelSpec) -> None:
        from .data.tables import TablePreprocessor

        self.model = model
        self.spec = spec
        self.preprocessor = None if spec.preprocessing is None else \
            TablePreprocessor.from_state(spec.preprocessing)
        model.eval()

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def classes_(self) -> np.ndarray | None:
        c = self.spec.target.get("classes")
        return None if c is None else np.asarray(c, dtype=object)

    @property
    def feature_names(self) -> list[str] | None:
        return None if self.preprocessor is None else list(self.preprocessor.feature_names)

    def transform(self, rows: Any) -> np.ndarray:
        """Raw rows -> the float32 network input (stored preprocessing applied)."""
        if self.preprocessor is None:
            arr = np.asarray(rows, dtype=np.float32)
            if arr.ndim != 2 or arr.shape[1] != self.spec.n_features:
                raise ValueError(f"expected rows of {self.spec.n_features} numbers, got an "
                                 f"array of shape {arr.shape}")
            return arr
        return self.preprocessor.transform(rows)

    def encode(self, rows: Any) -> np.ndarray:
        """Raw rows -> the input of the exported ONNX model: categorical columns
        encoded, missing cells filled, numeric columns not yet standardised
        (the ONNX graph standardises them itself)."""
        if self.preprocessor is None:
            return self.transform(rows)
        return self.preprocessor.transform(rows, scale=False)

    def raw_outputs(self, rows: Any) -> np.ndarray:
        """The network's outputs (logits / standardised values), in eval mode, no graph."""
        return run_model(self.model, self.transform(rows))

    def predict(self, rows: Any) -> np.ndarray:
        """Class names (classification) or values in the target's units (regression)."""
        pred = self.spec.outputs_to_predictions(self.raw_outputs(rows))
        classes = self.classes_
        if self.task == "classification" and classes is not None and pred.ndim == 1:
            return classes[pred]
        return pred

    def predict_proba(self, rows: Any) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns in ``classes_`` order."""
        if self.task != "classification":
            raise ValueError("predict_proba: this is a regression model (use predict)")
        p = probabilities(self.raw_outputs(rows), self.spec.target["output"])
        if p.shape[1] == 1:
            p = np.column_stack([1.0 - p[:, 0], p[:, 0]])
        return p

    def __repr__(self) -> str:
        return (f"Predictor({self.task}, {len(self.feature_names or [])} input columns, "
                f"classes={None if self.classes_ is None else list(self.classes_)})")


def run_model(model: Any, X: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``model(X)`` in eval mode under no_grad, in chunks (bounded memory)."""
    was = getattr(model, "training", None)
    model.eval()
    outs = []
    try:
        with no_grad():
            for start in range(0, len(X), chunk):
                outs.append(model(Tensor(np.ascontiguousarray(X[start:start + chunk]))).data)
    finally:
        if was:
            model.train()
    if not outs:
        n_out = getattr(model[-1], "out_features", 0) if hasattr(model, "__getitem__") else 0
        return np.zeros((0, n_out), dtype=np.float32)
    return np.concatenate(outs)


def load_predictor(path: Any) -> Predictor:
    """A checkpoint written by ``chainrule train`` or a chainrule estimator, as a
    :class:`Predictor` that takes raw rows.

    Raises :class:`~chainrule.CheckpointError` for a file that is not a
    checkpoint or holds no model spec, and :class:`SpecError` for a spec
    written by a newer chainrule.

    >>> pred = cr.load_predictor("runs/iris/model.safetensors")
    >>> pred.predict(pd.read_csv("new_flowers.csv"))
    """
    from .io import load

    ckpt = load(path)
    spec = spec_of_checkpoint(ckpt)
    model = ckpt.model() if spec.architecture == ckpt.config else _load_arch(ckpt, spec)
    return Predictor(model, spec)


def _load_arch(ckpt: Any, spec: ModelSpec) -> Any:
    model = spec.rebuild_model()
    model.load_state_dict(ckpt.state_dict)
    return model
