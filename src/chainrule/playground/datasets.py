"""The playground's data: generated 2-D problems, uploaded CSV tables, input features.

The generated sets follow TF Playground's (points in the square [-6, 6]^2,
``noise`` in percent): ``circle``, ``xor``, ``gauss`` (two or more Gaussian
clouds), ``spiral`` (two or more arms, from :func:`chainrule.data.make_spirals`),
``moons`` (from :func:`chainrule.data.make_moons`), and two regression
surfaces, ``reg-plane`` and ``reg-gauss``. Every set is drawn from a NumPy
generator seeded by the session's seed, so the same link shows the same points.

Uploaded CSV files are parsed by the library's own reader,
:func:`chainrule.data.load_csv` (the reader ``chainrule train`` uses), from a
private temporary file that is deleted at once; their features are
standardised with the training split's mean and standard deviation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import DataFormatError, load_csv, make_moons, make_spirals, train_test_split
from .config import Config, ConfigError

__all__ = [
    "Data",
    "make_data",
    "feature_matrix",
    "Uploads",
    "UploadError",
    "MAX_UPLOAD_BYTES",
    "FEATURE_LABELS",
]

#: uploads larger than this are refused before they are read
MAX_UPLOAD_BYTES = 20 * 1024 * 1024

#: how the page writes each input feature
FEATURE_LABELS = {
    "x1": "x₁", "x2": "x₂", "x1sq": "x₁²", "x2sq": "x₂²", "x1x2": "x₁x₂",
    "sinx1": "sin(x₁)", "sinx2": "sin(x₂)",
}

_SQUARE = (-6.0, 6.0, -6.0, 6.0)


class UploadError(ValueError):
    """An uploaded file the playground cannot use; the message says why, for the page."""


# --------------------------------------------------------------------------
# Generated sets. Labels are class indices 0..k-1 (classification) or values
# in about [-1, 1] (regression); `noise` is TF Playground's percentage.
# --------------------------------------------------------------------------


def _rng(seed: int, stream: int) -> np.random.Generator:
    # one independent stream per purpose, so that changing the number of
    # samples does not change, say, the initial weights
    return np.random.default_rng([seed, stream])


def _noisy_copy(rng: np.random.Generator, P: np.ndarray, scale: float, noise: float) -> np.ndarray:
    """The points moved by uniform noise: labels are read off the moved points,
    so noise flips labels near the boundary while the shown points stay put."""
    return P + rng.uniform(-scale, scale, P.shape) * noise


def _circle(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    radius = 5.0
    half = n // 2
    r = np.concatenate([rng.uniform(0.0, 0.5 * radius, n - half),
                        rng.uniform(0.7 * radius, radius, half)])
    t = rng.uniform(0.0, 2 * np.pi, n)
    P = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
    Q = _noisy_copy(rng, P, radius, noise)
    y = (np.hypot(Q[:, 0], Q[:, 1]) < 0.5 * radius).astype(np.int64)  # 1 inside
    return P, y


def _xor(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    P = rng.uniform(-5.0, 5.0, (n, 2))
    P += np.where(P > 0, 0.3, -0.3)  # keep the points off the axes, where the label flips
    Q = _noisy_copy(rng, P, 5.0, noise)
    y = (Q[:, 0] * Q[:, 1] >= 0).astype(np.int64)
    return P, y


def _gauss(n: int, noise: float, k: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    # the spread grows with the noise, as in TF Playground (variance 0.5 .. 4)
    sd = np.sqrt(0.5 + 3.5 * noise / 0.5)
    if k == 2:
        centres = np.array([[-2.0, -2.0], [2.0, 2.0]])
    else:
        a = 2 * np.pi * np.arange(k) / k + np.pi / 4
        centres = 3.5 * np.stack([np.cos(a), np.sin(a)], axis=1)
    y = np.arange(n, dtype=np.int64) % k
    P = centres[y] + rng.normal(0.0, sd, (n, 2))
    return P, y


def _spiral(n: int, noise: float, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_spirals(n, n_classes=k, noise=noise, seed=_rng(seed, 10))
    return 5.0 * X.astype(np.float64), y


def _moons(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_moons(n, noise=0.4 * noise, seed=_rng(seed, 11))
    # make_moons lives in [-1, 2] x [-0.5, 1]: centre it and fill the square
    return 3.2 * (X.astype(np.float64) - np.array([0.5, 0.25])), y


def _reg_plane(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    P = rng.uniform(-6.0, 6.0, (n, 2))
    Q = _noisy_copy(rng, P, 6.0, noise)
    return P, (Q[:, 0] + Q[:, 1]) / 10.0


def _reg_gauss(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # six bumps of alternating sign; the label is the bump that is largest in size
    bumps = np.array([[-4, 2.5, 1], [0, 2.5, -1], [4, 2.5, 1],
                      [-4, -2.5, -1], [0, -2.5, 1], [4, -2.5, -1]], dtype=np.float64)
    P = rng.uniform(-6.0, 6.0, (n, 2))
    Q = _noisy_copy(rng, P, 6.0, noise)
    d = np.hypot(Q[:, None, 0] - bumps[None, :, 0], Q[:, None, 1] - bumps[None, :, 1])
    v = bumps[None, :, 2] * np.clip(1.0 - d / 2.0, 0.0, 1.0)
    pick = np.argmax(np.abs(v), axis=1)
    return P, v[np.arange(n), pick]


def generate(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The points ``X`` (n, 2) and labels ``y`` (n,) of a generated set."""
    n, noise, name = cfg.samples, cfg.noise / 100.0, cfg.dataset
    rng = _rng(cfg.seed, 0)
    if name == "circle":
        return _circle(n, noise, rng)
    if name == "xor":
        return _xor(n, noise, rng)
    if name == "gauss":
        return _gauss(n, noise, cfg.classes, rng)
    if name == "spiral":
        return _spiral(n, noise, cfg.classes, cfg.seed)
    if name == "moons":
        return _moons(n, noise, cfg.seed)
    if name == "reg-plane":
        return _reg_plane(n, noise, rng)
    if name == "reg-gauss":
        return _reg_gauss(n, noise, rng)
    raise ConfigError(f"dataset={name!r} is not a generated set")


# --------------------------------------------------------------------------
# Input features
# --------------------------------------------------------------------------

_FEATURE_FUNCS = {
    "x1": lambda a, b: a,
    "x2": lambda a, b: b,
    "x1sq": lambda a, b: a * a,
    "x2sq": lambda a, b: b * b,
    "x1x2": lambda a, b: a * b,
    "sinx1": lambda a, b: np.sin(a),
    "sinx2": lambda a, b: np.sin(b),
}


def feature_matrix(P: np.ndarray, features: list[str]) -> np.ndarray:
    """The network's inputs for points ``P`` (n, 2): one float32 column per feature."""
    a, b = P[:, 0].astype(np.float64), P[:, 1].astype(np.float64)
    return np.stack([_FEATURE_FUNCS[f](a, b) for f in features], axis=1).astype(np.float32)


# --------------------------------------------------------------------------
# The data of a session
# --------------------------------------------------------------------------


@dataclass
class Data:
    """A session's training and test data and how raw points become network inputs.

    ``P_*`` are the points as shown (raw coordinates, or a CSV's raw columns);
    ``X_*`` the network's inputs (standardised for CSV, then the features);
    ``y_*`` class indices (int64) or values (float32).
    """

    P_train: np.ndarray
    P_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    problem: str
    input_names: list[str]
    feature_names: list[str]  # what the network's input neurons are
    classes: list[str] = field(default_factory=list)  # class names (classification)
    domain: tuple[float, float, float, float] | None = _SQUARE  # None: no 2-D view
    mean: np.ndarray | None = None  # CSV standardisation (raw column units)
    std: np.ndarray | None = None
    y_mean: float = 0.0  # CSV regression targets are standardised too
    y_std: float = 1.0
    features: list[str] = field(default_factory=list)  # feature keys, 2-D data only
    notes: list[str] = field(default_factory=list)
    X_train: np.ndarray = field(init=False)
    X_test: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.X_train = self.inputs(self.P_train)
        self.X_test = self.inputs(self.P_test)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def two_d(self) -> bool:
        return self.domain is not None

    def inputs(self, P: np.ndarray) -> np.ndarray:
        """Raw points or rows (n, d) -> the network's inputs (n, n_features), float32."""
        Q = np.asarray(P, dtype=np.float64)
        if self.mean is not None:
            Q = (Q - self.mean) / self.std
        if self.features:
            return feature_matrix(Q, self.features)
        return Q.astype(np.float32)

    def grid(self, n: int) -> np.ndarray:
        """An n x n grid of raw points over the domain, row 0 at the top (largest x2)."""
        if self.domain is None:
            raise ValueError("this data set has no 2-D view (more than two feature columns)")
        x0, x1, y0, y1 = self.domain
        xs = np.linspace(x0, x1, n)
        ys = np.linspace(y1, y0, n)
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _split(P: np.ndarray, y: np.ndarray, cfg: Config, classify: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # a count, not a fraction: 1 - 0.7 is 0.30000000000000004, which rounds up a row
    n = len(P)
    test = min(n - 1, max(1, n - round(n * cfg.train / 100)))
    if classify:
        try:
            return train_test_split(P, y, test_size=test, seed=_rng(cfg.seed, 1), stratify=y)
        except ValueError:
            pass  # a class too small to stratify: split at random instead
    return train_test_split(P, y, test_size=test, seed=_rng(cfg.seed, 1))


def make_data(cfg: Config, uploads: Uploads | None = None) -> Data:
    """The data a session trains on, from its settings (and the uploads, for ``csv``)."""
    if cfg.dataset == "csv":
        if uploads is None:
            raise ConfigError("dataset=csv: no uploads are available here")
        return uploads.data(cfg)
    P, y = generate(cfg)
    classify = cfg.problem == "classification"
    if not classify:
        y = y.astype(np.float32)
    Ptr, Pte, ytr, yte = _split(P, y, cfg, classify)
    classes = [f"class {k}" for k in range(cfg.classes)] if classify else []
    return Data(Ptr, Pte, ytr, yte, cfg.problem, ["x₁", "x₂"],
                [FEATURE_LABELS[f] for f in cfg.features], classes,
                features=list(cfg.features))


# --------------------------------------------------------------------------
# Uploaded CSV files
# --------------------------------------------------------------------------


@dataclass
class _Upload:
    name: str
    raw: bytes
    columns: list[str]
    rows: int


def _safe_name(name: str) -> str:
    """A file name fit to be shown: no directories, no control characters, not too long."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:120]
    return base or "upload.csv"


class Uploads:
    """The CSV files uploaded to one server, kept in memory by content id.

    At most ``keep`` files are kept (the oldest goes first); each is parsed
    when it arrives, so a bad file is refused with the reader's own message
    (file, line, column) before anything uses it.
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._files: OrderedDict[str, _Upload] = OrderedDict()
        self._lock = threading.Lock()

    def _parse(self, name: str, raw: bytes, target: int | str = -1,
               classification: bool | None = None) -> Any:
        """``load_csv`` on the bytes: written to a private temporary file, read, deleted."""
        fd, path = tempfile.mkstemp(prefix="chainrule-upload-", suffix=".csv")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            return load_csv(path, target=target, classification=classification)
        except (DataFormatError, ValueError, TypeError) as e:
            # the reader names its file: show the name the user knows
            raise UploadError(str(e).replace(path, name)) from None
        finally:
            os.unlink(path)

    def add(self, name: str, raw: bytes) -> dict[str, Any]:
        """Check and keep an upload; returns its id and a summary for the page."""
        name = _safe_name(name)
        if len(raw) > MAX_UPLOAD_BYTES:
            raise UploadError(f"{name}: {len(raw):,} bytes; uploads are limited to "
                              f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        if not raw.strip():
            raise UploadError(f"{name}: the file is empty")
        table = self._parse(name, raw)
        uid = hashlib.sha256(raw).hexdigest()[:16]
        columns = [*table.feature_names, table.target_name]
        with self._lock:
            self._files[uid] = _Upload(name, raw, columns, int(table.X.shape[0]))
            self._files.move_to_end(uid)
            while len(self._files) > self.keep:
                self._files.popitem(last=False)
        numeric = table.classes is None
        values = np.unique(table.y)
        # a handful of whole numbers is almost always a label column (as in `chainrule train`)
        looks_like_labels = (not numeric) or (
            values.size <= 20 and bool(np.all(values == np.round(values))))
        return {
            "id": uid, "name": name, "rows": int(table.X.shape[0]), "columns": columns,
            "target": table.target_name, "features": len(table.feature_names),
            "problem": "classification" if looks_like_labels else "regression",
        }

    def get(self, uid: str) -> _Upload:
        with self._lock:
            up = self._files.get(uid)
        if up is None:
            raise ConfigError(f"csv={uid}: this server holds no such upload (uploads live "
                              "only as long as the server); upload the file again")
        return up

    def data(self, cfg: Config) -> Data:
        """The session data for ``dataset=csv``: the upload read with the chosen target."""
        up = self.get(cfg.csv)
        target: int | str = cfg.target if cfg.target else -1
        if isinstance(target, str) and target not in up.columns:
            raise ConfigError(f"target={target!r}: {up.name} has no such column; its columns "
                              f"are {', '.join(up.columns)}")
        classify = cfg.problem == "classification"
        table = self._parse(up.name, up.raw, target=target, classification=classify)
        P = table.X.astype(np.float64)
        y = table.y if classify else table.y.astype(np.float32)
        if classify and len(table.classes) < 2:
            raise ConfigError(f"{up.name}: the target {table.target_name!r} holds a single "
                              "class; classification needs at least two")
        if classify and cfg.loss == "bce" and len(table.classes) != 2:
            raise ConfigError(f"loss=bce needs two classes; {table.target_name!r} has "
                              f"{len(table.classes)}; use loss=ce (softmax cross-entropy)")
        if len(P) < 4:
            raise ConfigError(f"{up.name}: {len(P)} rows; the playground needs at least 4 "
                              "(some to train on, some to test)")
        Ptr, Pte, ytr, yte = _split(P, y, cfg, classify)
        mean = Ptr.mean(axis=0)
        std = Ptr.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant column is centred, not divided
        two_d = P.shape[1] == 2
        notes = []
        y_mean, y_std = 0.0, 1.0
        if not classify:
            y_mean = float(ytr.mean())
            y_std = float(ytr.std()) or 1.0
            ytr = ((ytr - y_mean) / y_std).astype(np.float32)
            yte = ((yte - y_mean) / y_std).astype(np.float32)
            notes.append(f"the target is standardised (mean {y_mean:.4g}, sd {y_std:.4g}); "
                         "losses are in standardised units")
        if two_d:
            lo, hi = P.min(axis=0), P.max(axis=0)
            pad = np.where(hi > lo, 0.05 * (hi - lo), 1.0)
            domain = (float(lo[0] - pad[0]), float(hi[0] + pad[0]),
                      float(lo[1] - pad[1]), float(hi[1] + pad[1]))
            features = list(cfg.features)
            a, b = table.feature_names
            names = [FEATURE_LABELS[f].replace("x₁", a).replace("x₂", b) for f in features]
        else:
            domain = None
            features = []
            names = list(table.feature_names)
            notes.append(f"{len(names)} feature columns: no 2-D boundary view; the network "
                         "takes every column (standardised) as an input")
        classes = [str(c) for c in table.classes] if classify else []
        return Data(Ptr, Pte, ytr, yte, cfg.problem, list(table.feature_names), names,
                    classes, domain, mean, std, y_mean, y_std, features, notes)
