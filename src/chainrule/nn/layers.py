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
from typing import Any

import numpy as np

from .. import ops
from ..tensor import is_keeping_values
from . import functional as F
from . import init
from .module import STRUCTURE, Module, Parameter, _adopt

__all__ = [
    "Linear", "Sequential", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "Identity", "Flatten", "Dropout", "MSELoss", "BCELoss", "BCEWithLogitsLoss",
    "CrossEntropyLoss", "NLLLoss", "build", "LAYERS",
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
        if not self.fuse or is_keeping_values():
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


def _fusable(layer: Module, nxt: Module) -> bool:
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
        and not layer.has_forward_hooks()
        and not nxt.has_forward_hooks()
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

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(reduction)
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: Any, target: Any) -> Any:  # noqa: A002
        return F.cross_entropy(input, target, self.reduction, self.label_smoothing)

    def _config_args(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "label_smoothing": self.label_smoothing}


# ----- rebuilding from a config ---------------------------------------------

LAYERS: dict[str, type[Module]] = {
    cls.__name__: cls
    for cls in (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, LogSoftmax, Identity,
                Flatten, Dropout, MSELoss, BCELoss, BCEWithLogitsLoss, CrossEntropyLoss,
                NLLLoss)
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
