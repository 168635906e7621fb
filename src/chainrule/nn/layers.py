"""Built-in layers: thin stateful wrappers around :mod:`chainrule.nn.functional`,
plus ``get_config`` / :func:`build` to describe and rebuild an architecture.

>>> model = cr.nn.Sequential(cr.nn.Linear(4, 8), cr.nn.ReLU(), cr.nn.Linear(8, 3))
>>> config = model.get_config()          # a JSON-serialisable list of dicts
>>> twin = cr.nn.build(config)           # same architecture, fresh weights
>>> twin.load_state_dict(model.state_dict())
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, TypeGuard

import numpy as np

from .. import ops
from ..capture import effect
from ..tensor import Tensor, _mode
from . import functional as F
from . import init
from .module import STRUCTURE, Module, Parameter, _adopt

__all__ = [
    "Linear", "Sequential", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "GELU", "SiLU", "ELU", "LayerNorm", "BatchNorm1d", "Embedding", "CategoricalEmbedding",
    "Identity", "Flatten", "Dropout", "MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss",
    "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss", "build", "LAYERS",
]


class _Configurable(Module):
    """A built-in layer whose constructor arguments are its config."""

    def _config_args(self) -> dict[str, Any]:
        return {}

    def get_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **self._config_args()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._config_args().items())


class Linear(_Configurable):
    """``y = x @ weight.T + bias``, one fused node.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    dtype : numpy dtype, default float32
    generator : numpy Generator, optional
        Where the initial weights come from (default: the global generator).

    Shapes: input (..., in_features) -> output (..., out_features); weight
    (out_features, in_features), bias (out_features,). Initialised as in
    PyTorch: weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features)).

    >>> cr.nn.Linear(3, 2)(cr.ones((5, 3))).shape
    (5, 2)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: Any = np.float32, generator: np.random.Generator | None = None) -> None:
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ValueError(f"Linear: {name} must be a non-negative int, got {n!r}")
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"Linear: dtype must be a floating type, got {dtype}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype=dtype))
        self.bias = Parameter(np.empty((self.out_features,), dtype=dtype)) if bias else None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: np.random.Generator | None = None) -> None:
        """PyTorch's default: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        if self.in_features == 0:
            init.zeros_(self.weight)
        else:
            init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(self, x: Any) -> Any:
        return F.linear(x, self.weight, self.bias)

    def _config_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": str(self.weight.dtype)}

    def extra_repr(self) -> str:
        s = (f"in_features={self.in_features}, out_features={self.out_features}, "
             f"bias={self.bias is not None}")
        return s if self.weight.dtype == np.float32 else f"{s}, dtype={self.weight.dtype}"


class Sequential(Module):
    """Layers applied one after the other; indexable, iterable, sized.

    Parameter names follow PyTorch's ("0.weight", "2.bias"), so state dicts
    line up with a PyTorch ``nn.Sequential`` of the same layers.

    A ``Linear`` (with bias) directly followed by a ``ReLU`` runs as one fused
    node, ``linear_relu``: the same values and gradients, but the
    pre-activation z^l is never kept (see :func:`chainrule.ops.linear_relu`).
    The graph then shows one ``linear_relu`` node where you might expect
    ``linear`` then ``relu``; pass ``fuse=False`` (or set ``model.fuse =
    False``) to see every layer as its own node. Inside ``cr.keep_values()``
    (where the teaching views record, since they show z^l) nothing is fused;
    nor are layers with forward hooks, layers whose ``forward`` was replaced,
    and subclasses.

    >>> model = cr.nn.Sequential(cr.nn.Linear(2, 4), cr.nn.Tanh(), cr.nn.Linear(4, 1))
    >>> len(model), model[0]
    """

    #: run Linear + ReLU pairs as one fused node (set False to keep z^l in the graph)
    fuse: bool = True

    def __init__(self, *layers: Module, fuse: bool = True) -> None:
        super().__init__()
        self.fuse = bool(fuse)
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(
                    f"Sequential: item {i} is a {type(layer).__name__}, not a Module "
                    "(wrap functions in a Module, e.g. nn.ReLU() instead of cr.relu)"
                )
        self._layers: list[Module] = list(layers)

    def _members(self) -> Iterator[tuple[str, Any]]:
        for i, layer in enumerate(self._layers):
            yield str(i), layer
        for name, v in super()._members():
            if not name.startswith("_layers."):
                yield name, v

    def forward(self, x: Any) -> Any:
        layers = self._layers
        if not self.fuse or _mode.keep or _mode.anomaly:  # keep_values(): z^l is a node
            for layer in layers:
                x = layer(x)
            return x
        i, n = 0, len(layers)
        while i < n:
            layer = layers[i]
            if i + 1 < n and _fusable(layer, layers[i + 1]):
                x = ops.linear_relu(x, layer.weight, layer.bias)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return Sequential(*self._layers[i], fuse=self.fuse)
        return self._layers[i]

    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._layers)

    def append(self, layer: Module) -> Sequential:
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append: expected a Module, got {type(layer).__name__}")
        self._layers.append(layer)
        _adopt(self, layer)  # its parameters are named "<i>.weight" from now on
        STRUCTURE[0] += 1  # cr.compile captures steps through this model again
        return self

    def get_config(self) -> list[Any]:
        """The list of the layers' configs (what :func:`build` takes)."""
        return [layer.get_config() for layer in self._layers]


# ----- activations ----------------------------------------------------------


class ReLU(_Configurable):
    """max(x, 0)."""

    def forward(self, x: Any) -> Any:
        return F.relu(x)


# What Sequential's fusion relies on, as the library defines it: fusing skips
# the two layers' calls, so it must not skip anything someone added to them.
_MODULE_CALL = Module.__call__
_LINEAR_FORWARD = Linear.forward
_RELU_FORWARD = ReLU.forward


def _fusable(layer: Module, nxt: Module) -> TypeGuard[Linear]:
    """A stock Linear with bias followed by a stock ReLU, neither patched nor hooked.

    Exact types (a subclass may override anything), class-level calls and
    forwards as defined here, no instance-level ``forward`` and no forward
    hooks (``register_forward_hook``) on either layer: a fused call would
    skip them.
    """
    return (
        type(layer) is Linear
        and type(nxt) is ReLU
        and layer.bias is not None
        and Linear.__call__ is _MODULE_CALL
        and ReLU.__call__ is _MODULE_CALL
        and Linear.forward is _LINEAR_FORWARD
        and ReLU.forward is _RELU_FORWARD
        and not layer._hooked
        and not nxt._hooked
        and "forward" not in layer.__dict__
        and "forward" not in nxt.__dict__
    )


class LeakyReLU(_Configurable):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: Any) -> Any:
        return F.leaky_relu(x, self.negative_slope)

    def _config_args(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


class Sigmoid(_Configurable):
    """1 / (1 + e^-x)."""

    def forward(self, x: Any) -> Any:
        return F.sigmoid(x)


class Tanh(_Configurable):
    def forward(self, x: Any) -> Any:
        return F.tanh(x)


class GELU(_Configurable):
    """x Phi(x) (Phi the standard normal CDF); ``approximate='tanh'`` for the tanh form."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Any) -> Any:
        return F.gelu(x, self.approximate)

    def _config_args(self) -> dict[str, Any]:
        return {"approximate": self.approximate} if self.approximate != "none" else {}


class SiLU(_Configurable):
    """x sigmoid(x) (swish)."""

    def forward(self, x: Any) -> Any:
        return F.silu(x)


class ELU(_Configurable):
    """x for x > 0, alpha (e^x - 1) otherwise."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: Any) -> Any:
        return F.elu(x, self.alpha)

    def _config_args(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class Softmax(_Configurable):
    """softmax along ``dim`` (``axis`` is accepted as an alias); default the last axis."""

    def __init__(self, dim: int | None = None, *, axis: int | None = None) -> None:
        super().__init__()
        self.dim = F._axis(dim, axis)

    def forward(self, x: Any) -> Any:
        return F.softmax(x, self.dim)

    def _config_args(self) -> dict[str, Any]:
        return {"dim": self.dim}


class LogSoftmax(Softmax):
    """log_softmax along ``dim`` (default the last axis)."""

    def forward(self, x: Any) -> Any:
        return F.log_softmax(x, self.dim)


class Identity(_Configurable):
    """Returns its input (accepts and ignores any arguments, as in PyTorch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        return x


class Flatten(_Configurable):
    """Merge dimensions start_dim..end_dim: (N, 28, 28) -> (N, 784) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x: Any) -> Any:
        return F.flatten(x, self.start_dim, self.end_dim)

    def _config_args(self) -> dict[str, Any]:
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}


class Dropout(_Configurable):
    """Inverted dropout with probability ``p``; the identity in eval mode.

    >>> drop = cr.nn.Dropout(0.2)
    >>> drop.eval()(x) is x
    True
    """

    def __init__(self, p: float = 0.5, generator: np.random.Generator | None = None) -> None:
        super().__init__()
        F._check_p(p, "Dropout")
        self.p = float(p)
        self.generator = generator

    def forward(self, x: Any) -> Any:
        return F.dropout(x, self.p, self.training, self.generator)

    def _config_args(self) -> dict[str, Any]:
        return {"p": self.p}


# ----- normalisation and embeddings ------------------------------------------


def _check_count(who: str, name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{who}: {name} must be a positive int, got {n!r}")
    return int(n)


class LayerNorm(_Configurable):
    """Standardise each sample over its last axes, then scale and shift (PyTorch's).

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing shape to normalise over, e.g. the number of features.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learn ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``.

    >>> cr.nn.LayerNorm(8)(cr.randn(4, 8)).shape
    (4, 8)
    """

    weight: Parameter | None  # None without elementwise_affine
    bias: Parameter | None

    def __init__(self, normalized_shape: Any, eps: float = 1e-5,
                 elementwise_affine: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
            else tuple(normalized_shape)
        self.normalized_shape = tuple(_check_count("LayerNorm", "normalized_shape", d)
                                      for d in shape)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))
            self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype))
        else:
            self.weight = self.bias = None

    def forward(self, x: Any) -> Any:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def _config_args(self) -> dict[str, Any]:
        shape = self.normalized_shape
        return {"normalized_shape": shape[0] if len(shape) == 1 else list(shape),
                "eps": self.eps, "elementwise_affine": self.elementwise_affine}


class BatchNorm1d(_Configurable):
    """Batch normalisation of (N, C) or (N, C, L) input (PyTorch's ``BatchNorm1d``).

    In training mode each channel is standardised with the batch's mean and
    variance, and ``running_mean`` / ``running_var`` follow the batch
    statistics with ``momentum``; in eval mode the running statistics are
    used, so a prediction does not depend on the rest of its batch. The
    running statistics are buffers: they are in ``state_dict()`` and in
    saved checkpoints (with ``num_batches_tracked``, as in PyTorch).

    >>> bn = cr.nn.BatchNorm1d(3)
    >>> bn(cr.randn(16, 3)).shape       # training: updates the running statistics
    (16, 3)
    """

    weight: Parameter | None  # None without affine
    bias: Parameter | None
    running_mean: Tensor  # buffers (register_buffer)
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        self.num_features = _check_count("BatchNorm1d", "num_features", num_features)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"BatchNorm1d: momentum must be in [0, 1], got {momentum!r}")
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = bool(affine)
        c = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(c, dtype=dtype))
            self.bias = Parameter(np.zeros(c, dtype=dtype))
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", np.zeros(c, dtype=dtype))
        self.register_buffer("running_var", np.ones(c, dtype=dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))

    def forward(self, x: Any) -> Any:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps, self.num_batches_tracked)

    def _config_args(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine}


class Embedding(_Configurable):
    """A lookup table: integer index i -> row i of ``weight`` (num_embeddings, embedding_dim).

    Initialised N(0, 1) as in PyTorch. Input: integer array of any shape;
    output: that shape + (embedding_dim,).

    >>> cr.nn.Embedding(10, 3)(np.array([1, 4, 4])).shape
    (3, 3)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Any = np.float32,
                 generator: np.random.Generator | None = None) -> None:
        super().__init__()
        self.num_embeddings = _check_count("Embedding", "num_embeddings", num_embeddings)
        self.embedding_dim = _check_count("Embedding", "embedding_dim", embedding_dim)
        self.weight = Parameter(np.empty((self.num_embeddings, self.embedding_dim), dtype=dtype))
        init.normal_(self.weight, 0.0, 1.0, generator=generator)

    def forward(self, x: Any) -> Any:
        return F.embedding(x, self.weight)

    def _config_args(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}


class CategoricalEmbedding(_Configurable):
    """The input layer of a table with categorical columns: embed the codes, keep the numbers.

    Input rows are ``[numeric features..., code_1, ..., code_k]`` (float; the
    last k columns hold integer category codes, as written by
    :class:`chainrule.data.TablePreprocessor` with ``categorical='embed'``).
    Output: the numeric features followed by one ``nn.Embedding`` vector per
    categorical column, concatenated: width ``numeric_features + sum(dims)``.

    Parameters
    ----------
    numeric_features : int
    cardinalities : list of int
        Number of codes of each categorical column.
    dims : list of int
        Embedding width of each categorical column.

    >>> emb = cr.nn.CategoricalEmbedding(2, [3, 5], [2, 3])
    >>> emb(cr.tensor(np.array([[0.1, -1.0, 2, 4]], np.float32))).shape
    (1, 7)
    """

    def __init__(self, numeric_features: int, cardinalities: Any, dims: Any,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        if isinstance(numeric_features, bool) or not isinstance(
                numeric_features, (int, np.integer)) or numeric_features < 0:
            raise ValueError("CategoricalEmbedding: numeric_features must be an int >= 0, "
                             f"got {numeric_features!r}")
        cards, dims = list(cardinalities), list(dims)
        if len(cards) != len(dims) or not cards:
            raise ValueError("CategoricalEmbedding: give one embedding width per categorical "
                             f"column (cardinalities {cards}, dims {dims})")
        self.numeric_features = int(numeric_features)
        self.cardinalities = [_check_count("CategoricalEmbedding", "cardinality", c)
                              for c in cards]
        self.dims = [_check_count("CategoricalEmbedding", "dim", d) for d in dims]
        self.embeddings = [Embedding(c, d, dtype=dtype) for c, d in zip(self.cardinalities,
                                                                         self.dims)]

    @property
    def in_features(self) -> int:
        return self.numeric_features + len(self.cardinalities)

    @property
    def out_features(self) -> int:
        return self.numeric_features + sum(self.dims)

    def forward(self, x: Any) -> Any:
        arr = ops.value(x) if isinstance(x, ops.Tensor) else np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.in_features:
            raise ValueError(
                f"CategoricalEmbedding: expected input of shape (N, {self.in_features}) "
                f"({self.numeric_features} numeric columns + {len(self.cardinalities)} "
                f"category codes), got {arr.shape}"
            )
        m = self.numeric_features
        parts = [ops.getitem(x, (slice(None), slice(0, m)))] if m else []
        for j, emb in enumerate(self.embeddings):
            # ops, so that a compiled step takes each batch's codes on every replay
            codes = ops.getitem(x, (slice(None), m + j))
            idx = ops.astype(codes, np.int64)
            _check_codes(idx.data, codes.data, m + j)
            parts.append(emb(idx))
        return ops.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def _config_args(self) -> dict[str, Any]:
        return {"numeric_features": self.numeric_features,
                "cardinalities": list(self.cardinalities), "dims": list(self.dims)}


@effect(touches=lambda idx, codes, column: ())  # made again on every replay of a compiled step
def _check_codes(idx: np.ndarray, codes: np.ndarray, column: int) -> None:
    if not np.array_equal(idx, codes):
        raise ValueError(f"CategoricalEmbedding: column {column} must hold integer "
                         "category codes")


# ----- losses ---------------------------------------------------------------


class _Loss(_Configurable):
    _fn: Any = None

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        F._check_reduction(reduction, type(self).__name__)
        self.reduction = reduction

    def forward(self, input: Any, target: Any) -> Any:  # noqa: A002
        return type(self)._fn(input, target, reduction=self.reduction)

    def _config_args(self) -> dict[str, Any]:
        return {"reduction": self.reduction}


class MSELoss(_Loss):
    """mean((input - target)^2); see :func:`~chainrule.nn.functional.mse_loss`."""

    _fn = staticmethod(F.mse_loss)


class L1Loss(_Loss):
    """mean(|input - target|); see :func:`~chainrule.nn.functional.l1_loss`."""

    _fn = staticmethod(F.l1_loss)


class HuberLoss(_Loss):
    """Quadratic below ``delta``, linear above; see :func:`~chainrule.nn.functional.huber_loss`."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction)
        self.delta = float(delta)

    def forward(self, input: Any, target: Any) -> Any:  # noqa: A002
        return F.huber_loss(input, target, self.reduction, self.delta)

    def _config_args(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "delta": self.delta}


class SmoothL1Loss(_Loss):
    """PyTorch's smooth L1; see :func:`~chainrule.nn.functional.smooth_l1_loss`."""

    def __init__(self, reduction: str = "mean", beta: float = 1.0) -> None:
        super().__init__(reduction)
        self.beta = float(beta)

    def forward(self, input: Any, target: Any) -> Any:  # noqa: A002
        return F.smooth_l1_loss(input, target, self.reduction, self.beta)

    def _config_args(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "beta": self.beta}


class BCELoss(_Loss):
    """BCE on probabilities; see :func:`~chainrule.nn.functional.binary_cross_entropy`."""

    _fn = staticmethod(F.binary_cross_entropy)


class BCEWithLogitsLoss(_Loss):
    """sigmoid + BCE fused; see
    :func:`~chainrule.nn.functional.binary_cross_entropy_with_logits`."""

    _fn = staticmethod(F.binary_cross_entropy_with_logits)


class NLLLoss(_Loss):
    """NLL of log-probabilities; see :func:`~chainrule.nn.functional.nll_loss`."""

    _fn = staticmethod(F.nll_loss)


class CrossEntropyLoss(_Loss):
    """Softmax + cross-entropy on logits; see :func:`~chainrule.nn.functional.cross_entropy`.

    >>> loss = cr.nn.CrossEntropyLoss()(model(x), labels)
    """

    def __init__(self, weight: Any = None, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        if isinstance(weight, str):  # the old positional order was (reduction, ...)
            weight, reduction = None, weight
        super().__init__(reduction)
        self.label_smoothing = float(label_smoothing)
        self.weight = None if weight is None else np.asarray(
            ops.value(weight), dtype=np.float64)

    def forward(self, input: Any, target: Any) -> Any:  # noqa: A002
        return F.cross_entropy(input, target, self.reduction, self.label_smoothing,
                               weight=self.weight)

    def _config_args(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"reduction": self.reduction,
                               "label_smoothing": self.label_smoothing}
        if self.weight is not None:
            cfg["weight"] = self.weight.tolist()
        return cfg


# ----- rebuilding from a config ---------------------------------------------

LAYERS: dict[str, type[Module]] = {
    cls.__name__: cls
    for cls in (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, ELU, Softmax, LogSoftmax,
                Identity, Flatten, Dropout, LayerNorm, BatchNorm1d, Embedding,
                CategoricalEmbedding, MSELoss, L1Loss, HuberLoss, SmoothL1Loss, BCELoss,
                BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss)
}


def build(config: Any) -> Module:
    """Rebuild a model from :meth:`Module.get_config` output (fresh weights).

    Parameters
    ----------
    config : list of dicts, or a dict
        A list builds a :class:`Sequential` (a nested list, a nested
        Sequential); a dict ``{"type": "Linear", ...}`` builds one layer, and
        ``{"type": "Sequential", "layers": [...]}`` is accepted too.

    >>> cr.nn.build([{"type": "Linear", "in_features": 2, "out_features": 1}, {"type": "Sigmoid"}])
    """
    if isinstance(config, (list, tuple)):
        return Sequential(*[build(c) for c in config])
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(
            f"build: each layer config must be a dict with a 'type' key (or a list of them), "
            f"got {config!r}"
        )
    kind = config["type"]
    args = {k: v for k, v in config.items() if k != "type"}
    if kind == "Sequential":
        return build(args.get("layers", []))
    cls = LAYERS.get(kind)
    if cls is None:
        raise ValueError(
            f"build: unknown layer type {kind!r}; known types: Sequential, "
            f"{', '.join(sorted(LAYERS))}"
        )
    try:
        return cls(**args)
    except TypeError as exc:
        raise ValueError(f"build: bad arguments for {kind}: {args!r} ({exc})") from exc
