"""Weight initialisation, in place, with PyTorch's names, signatures and formulas.

Every function fills a tensor (or ndarray) in place outside the graph and
returns it. Random ones draw from ``generator`` or the global generator
(:func:`chainrule.manual_seed`).

>>> w = cr.nn.Parameter(np.empty((64, 32), dtype=np.float32))
>>> cr.nn.init.kaiming_uniform_(w, nonlinearity="relu")   # U(-b, b), b = sqrt(6 / 32)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..capture import effect
from ..random import _resolve
from ..tensor import Tensor, _bump

__all__ = [
    "calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
]

_LINEAR_LIKE = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid", "identity")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended scale for a nonlinearity (PyTorch's table).

    linear/identity/sigmoid: 1; tanh: 5/3; relu: sqrt(2);
    leaky_relu(slope): sqrt(2 / (1 + slope^2)); selu: 3/4.
    """
    if nonlinearity in _LINEAR_LIKE:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _array(t: Any) -> np.ndarray:
    arr = t.data if isinstance(t, Tensor) else t
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"init: expected a Tensor or ndarray to fill in place, got {type(t)}")
    return arr


def _fill(t: Any, values: Any) -> Any:
    arr = _array(t)
    arr[...] = values  # cast to the tensor's dtype on assignment
    if isinstance(t, Tensor):
        _bump(t)  # graphs recorded with the old values must not backpropagate
    return t


def _fans(t: Any) -> tuple[int, int]:
    shape = _array(t).shape
    if len(shape) < 2:
        raise ValueError(
            f"init: fan in and fan out need a tensor with at least 2 dimensions, got shape {shape}"
        )
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive  # weight layout (out, in, ...)


def _fan(t: Any, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(t)
    return fan_in if mode == "fan_in" else fan_out


@effect(touches=lambda tensor, a=0.0, b=1.0, generator=None: (tensor, _resolve(generator)))
def uniform_(tensor: Any, a: float = 0.0, b: float = 1.0,
             generator: np.random.Generator | None = None) -> Any:
    """Fill with U(a, b)."""
    return _fill(tensor, _resolve(generator).uniform(a, b, _array(tensor).shape))


@effect(touches=lambda tensor, mean=0.0, std=1.0, generator=None: (tensor, _resolve(generator)))
def normal_(tensor: Any, mean: float = 0.0, std: float = 1.0,
            generator: np.random.Generator | None = None) -> Any:
    """Fill with N(mean, std^2)."""
    return _fill(tensor, _resolve(generator).normal(mean, std, _array(tensor).shape))


@effect
def constant_(tensor: Any, val: float) -> Any:
    """Fill with ``val``."""
    return _fill(tensor, val)


@effect
def zeros_(tensor: Any) -> Any:
    return _fill(tensor, 0)


@effect
def ones_(tensor: Any) -> Any:
    return _fill(tensor, 1)


def xavier_uniform_(tensor: Any, gain: float = 1.0,
                    generator: np.random.Generator | None = None) -> Any:
    """Glorot: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor: Any, gain: float = 1.0,
                   generator: np.random.Generator | None = None) -> Any:
    """Glorot: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def kaiming_uniform_(tensor: Any, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu",
                     generator: np.random.Generator | None = None) -> Any:
    """He: U(-b, b) with b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    ``a=sqrt(5)`` (what ``nn.Linear`` uses) gives b = 1 / sqrt(fan_in).
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor: Any, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu",
                    generator: np.random.Generator | None = None) -> Any:
    """He: N(0, std^2) with std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0.0, std, generator)
