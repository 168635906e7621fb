"""The playground's settings: one flat record that round-trips through the URL.

The page keeps every setting in the URL's fragment (``#dataset=spiral&hidden=8,8``)
so that a teacher can share a set-up by sharing a link; the page sends the same
key/value pairs to the server, which validates them here. Nothing the page sends
is evaluated: every value is parsed as the type its key declares and checked
against its range or its list of choices, and a bad value is refused with a
message naming the key, the value and what is allowed.

>>> cfg = Config.from_params({"dataset": "xor", "hidden": "8,8", "lr": "0.1"})
>>> cfg.hidden, cfg.lr, cfg.problem
([8, 8], 0.1, 'classification')
>>> Config.from_params(cfg.to_params()) == cfg
True
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypedDict

__all__ = [
    "Config",
    "ConfigError",
    "CLASSIFICATION_SETS",
    "REGRESSION_SETS",
    "FEATURES",
    "ACTIVATIONS",
    "LOSSES",
    "OPTIMIZERS",
    "REGULARIZERS",
    "LIMITS",
]


class ConfigError(ValueError):
    """A setting the playground cannot use; the message names the key and the value."""


#: generated classification sets (name -> how many classes it may have)
CLASSIFICATION_SETS = {
    "circle": (2, 2),
    "xor": (2, 2),
    "gauss": (2, 6),
    "spiral": (2, 6),
    "moons": (2, 2),
}
#: generated regression sets
REGRESSION_SETS = ("reg-plane", "reg-gauss")
DATASETS = (*CLASSIFICATION_SETS, *REGRESSION_SETS, "csv")

#: input features computed from the two coordinates (TF Playground's set)
FEATURES = ("x1", "x2", "x1sq", "x2sq", "x1x2", "sinx1", "sinx2")
ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
#: softmax cross-entropy, binary cross-entropy (one sigmoid output), squared error
LOSSES = ("ce", "bce", "mse")
OPTIMIZERS = ("sgd", "momentum", "adam")
REGULARIZERS = ("none", "l1", "l2")
PROBLEMS = ("classification", "regression")

class _Limits(TypedDict):
    hidden_layers: int
    neurons: int
    samples: tuple[int, int]
    noise: tuple[int, int]
    train: tuple[int, int]
    batch: tuple[int, int]
    classes: tuple[int, int]
    lr: tuple[float, float]
    rrate: tuple[float, float]
    momentum: tuple[float, float]
    seed: tuple[int, int]


#: the most hidden layers and neurons per layer; (low, high) of each number
LIMITS: _Limits = {
    "hidden_layers": 10,
    "neurons": 16,
    "samples": (20, 5000),
    "noise": (0, 50),
    "train": (10, 90),
    "batch": (1, 5000),
    "classes": (2, 6),
    "lr": (1e-6, 10.0),
    "rrate": (0.0, 10.0),
    "momentum": (0.0, 0.999),
    "seed": (0, 2**31 - 1),
}


@dataclass
class Config:
    """Every setting of one playground session (the URL's fragment, parsed).

    Data: ``dataset`` (``circle``, ``xor``, ``gauss``, ``spiral``, ``moons``,
    ``reg-plane``, ``reg-gauss`` or ``csv``), ``classes`` (gauss/spiral only),
    ``samples``, ``noise`` (percent, as in TF Playground), ``train`` (percent
    of the samples used for training), ``seed``; for ``csv``, ``csv`` (the id
    the upload returned) and ``target`` (a column name, empty: the last column).

    Network: ``features`` (inputs computed from the two coordinates),
    ``hidden`` (neurons per hidden layer), ``act``; training: ``problem``,
    ``loss``, ``opt``, ``lr``, ``momentum``, ``batch``, ``reg``, ``rrate``.

    Display only (kept so that a shared link looks the same): ``show_test``,
    ``discretize``.
    """

    dataset: str = "circle"
    problem: str = "classification"
    classes: int = 2
    samples: int = 500
    noise: int = 0
    train: int = 50
    seed: int = 1
    csv: str = ""
    target: str = ""
    features: list[str] = field(default_factory=lambda: ["x1", "x2"])
    hidden: list[int] = field(default_factory=lambda: [4, 2])
    act: str = "tanh"
    loss: str = "bce"
    opt: str = "sgd"
    lr: float = 0.03
    momentum: float = 0.9
    batch: int = 10
    reg: str = "none"
    rrate: float = 0.0
    show_test: bool = False
    discretize: bool = False

    # ----- parsing -------------------------------------------------------

    @classmethod
    def from_params(cls, params: Mapping[str, Any], base: Config | None = None) -> Config:
        """Parse key/value pairs (strings from a URL, or JSON values) over ``base``.

        Unknown keys are refused (a misspelt key in a shared link would
        otherwise be dropped without a word). Raises :class:`ConfigError`.
        """
        if not isinstance(params, Mapping):
            raise ConfigError(f"settings must be an object of key/value pairs, got "
                              f"{type(params).__name__}")
        cfg = replace(base) if base is not None else cls()
        known = {f.name: f for f in fields(cls)}
        for key, raw in params.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}; the settings are: "
                                  f"{', '.join(known)}")
            setattr(cfg, key, _PARSERS[key](key, raw))
        cfg._check()
        return cfg

    def _check(self) -> None:
        """Rules that tie several settings together."""
        if self.dataset in CLASSIFICATION_SETS:
            self.problem = "classification"
            lo, hi = CLASSIFICATION_SETS[self.dataset]
            if not lo <= self.classes <= hi:
                if lo == hi:
                    self.classes = lo  # circle, xor and moons have two classes, always
                else:
                    raise ConfigError(f"classes={self.classes}: the {self.dataset} set has "
                                      f"{lo} to {hi} classes")
        elif self.dataset in REGRESSION_SETS:
            self.problem = "regression"
        if self.dataset == "csv" and not self.csv:
            raise ConfigError("dataset=csv needs csv=<the id returned by the upload>; "
                              "upload a CSV file first")
        if self.problem == "regression" and self.loss != "mse":
            # a regression target has one real output: squared error is the only choice
            self.loss = "mse"
        if (self.problem == "classification" and self.loss == "bce"
                and self.dataset != "csv" and self.classes != 2):
            raise ConfigError(f"loss=bce needs two classes, the {self.dataset} set has "
                              f"{self.classes}; use loss=ce (softmax cross-entropy) or mse")
        if not self.features:
            raise ConfigError("features: choose at least one input feature")

    # ----- writing ---------------------------------------------------------

    def to_params(self) -> dict[str, str]:
        """The settings as URL strings (what :meth:`from_params` reads back)."""
        out: dict[str, str] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool):
                out[f.name] = "1" if v else "0"
            elif isinstance(v, list):
                out[f.name] = ",".join(str(x) for x in v)
            elif isinstance(v, float):
                out[f.name] = repr(v)
            else:
                out[f.name] = str(v)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values."""
        return {f.name: (list(getattr(self, f.name)) if isinstance(getattr(self, f.name), list)
                         else getattr(self, f.name)) for f in fields(self)}

    def needs_rebuild(self, other: Config) -> bool:
        """True when going from ``self`` to ``other`` needs new data or a new network.

        The learning rate, momentum, batch size, regularisation and the
        display switches change while training goes on (as in TF Playground,
        a teacher can lower the learning rate mid-run); anything else starts over.
        """
        live = {"lr", "momentum", "batch", "reg", "rrate", "show_test", "discretize"}
        return any(getattr(self, f.name) != getattr(other, f.name)
                   for f in fields(self) if f.name not in live)

    def data_changed(self, other: Config) -> bool:
        """True when ``other`` needs its data made again, not only a new network."""
        keys = ("dataset", "problem", "classes", "samples", "noise", "train", "seed", "csv",
                "target", "features")
        return any(getattr(self, k) != getattr(other, k) for k in keys)


# ----- one parser per key ------------------------------------------------------


def _text(raw: Any, key: str) -> str:
    if isinstance(raw, bool) or raw is None or isinstance(raw, (list, dict)):
        raise ConfigError(f"{key}={raw!r}: expected a single value")
    return str(raw).strip()


def _int(lo: int, hi: int) -> Any:
    def parse(key: str, raw: Any) -> int:
        text = _text(raw, key)
        if not re.fullmatch(r"[+-]?\d{1,12}", text):
            raise ConfigError(f"{key}={text!r}: expected a whole number from {lo} to {hi}")
        v = int(text)
        if not lo <= v <= hi:
            raise ConfigError(f"{key}={v}: expected a whole number from {lo} to {hi}")
        return v
    return parse


def _float(lo: float, hi: float, lo_open: bool = False) -> Any:
    def parse(key: str, raw: Any) -> float:
        text = _text(raw, key)
        try:
            v = float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number") from None
        if not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
            left = "above" if lo_open else "from"
            raise ConfigError(f"{key}={text}: expected a number {left} {lo:g} up to {hi:g}")
        return v
    return parse


def _choice(options: tuple[str, ...]) -> Any:
    def parse(key: str, raw: Any) -> str:
        text = _text(raw, key).lower()
        if text not in options:
            raise ConfigError(f"{key}={text!r}: expected one of {', '.join(options)}")
        return text
    return parse


def _bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _text(raw, key).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key}={text!r}: expected 1 or 0")


def _hidden(key: str, raw: Any) -> list[int]:
    parts = raw if isinstance(raw, list) else [p for p in _text(raw, key).split(",") if p.strip()]
    top, width = LIMITS["hidden_layers"], LIMITS["neurons"]
    if len(parts) > top:
        raise ConfigError(f"{key}: {len(parts)} hidden layers; the playground allows up to {top}")
    one = _int(1, width)
    return [one(f"{key}[{i}]", p) for i, p in enumerate(parts)]


def _features(key: str, raw: Any) -> list[str]:
    parts = raw if isinstance(raw, list) else [p for p in _text(raw, key).split(",") if p.strip()]
    out: list[str] = []
    for p in parts:
        name = _text(p, key).lower()
        if name not in FEATURES:
            raise ConfigError(f"{key}: {name!r} is not a feature; expected some of "
                              f"{', '.join(FEATURES)}")
        if name not in out:
            out.append(name)
    # a fixed order, so that the same set of features is the same network
    return [f for f in FEATURES if f in out]


def _csv_id(key: str, raw: Any) -> str:
    text = _text(raw, key)
    if text and not re.fullmatch(r"[0-9a-f]{8,64}", text):
        raise ConfigError(f"{key}={text!r}: not an upload id (hexadecimal digits)")
    return text


def _column(key: str, raw: Any) -> str:
    text = _text(raw, key)
    if len(text) > 200:
        raise ConfigError(f"{key}: a column name of {len(text)} characters (at most 200)")
    return text


_PARSERS: dict[str, Any] = {
    "dataset": _choice(DATASETS),
    "problem": _choice(PROBLEMS),
    "classes": _int(*LIMITS["classes"]),
    "samples": _int(*LIMITS["samples"]),
    "noise": _int(*LIMITS["noise"]),
    "train": _int(*LIMITS["train"]),
    "seed": _int(*LIMITS["seed"]),
    "csv": _csv_id,
    "target": _column,
    "features": _features,
    "hidden": _hidden,
    "act": _choice(ACTIVATIONS),
    "loss": _choice(LOSSES),
    "opt": _choice(OPTIMIZERS),
    "lr": _float(*LIMITS["lr"]),
    "momentum": _float(*LIMITS["momentum"]),
    "batch": _int(*LIMITS["batch"]),
    "reg": _choice(REGULARIZERS),
    "rrate": _float(*LIMITS["rrate"]),
    "show_test": _bool,
    "discretize": _bool,
}
