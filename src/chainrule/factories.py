"""Ways to make leaf tensors: zeros, ones, random values, ranges.

Defaults follow the dtype rule of the package: floating results are float32
unless a ``dtype`` is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .capture import effect
from .random import _resolve
from .tensor import Tensor

__all__ = [
    "zeros", "ones", "full", "zeros_like", "ones_like", "full_like",
    "randn", "rand", "arange", "linspace", "eye",
]


def _shape(shape: tuple, who: str) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
               for s in shape):
        raise ValueError(f"{who}: shape must be non-negative ints, got {shape!r}")
    return tuple(int(s) for s in shape)


def _make(arr: np.ndarray, requires_grad: bool, name: str | None = None) -> Tensor:
    t = Tensor._const(arr)
    t.name = name
    if requires_grad:
        t.requires_grad = True
    return t


def zeros(*shape: Any, dtype: Any = np.float32, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros: ``cr.zeros(2, 3)`` or ``cr.zeros((2, 3))``."""
    return _make(np.zeros(_shape(shape, "zeros"), dtype=dtype), requires_grad)


def ones(*shape: Any, dtype: Any = np.float32, requires_grad: bool = False) -> Tensor:
    """A tensor of ones: ``cr.ones(2, 3)`` or ``cr.ones((2, 3))``."""
    return _make(np.ones(_shape(shape, "ones"), dtype=dtype), requires_grad)


def full(shape: Any, fill_value: float, dtype: Any = np.float32,
         requires_grad: bool = False) -> Tensor:
    """A tensor of ``shape`` filled with ``fill_value``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return _make(np.full(shape, fill_value, dtype=dtype), requires_grad)


def _like(t: Any) -> np.ndarray:
    # a plain array: only the shape and dtype are used, never the values
    arr = t.data if isinstance(t, Tensor) else np.asarray(t)
    return arr if type(arr) is np.ndarray else arr.view(np.ndarray)


def zeros_like(t: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _make(np.zeros_like(_like(t), dtype=dtype), requires_grad)


def ones_like(t: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _make(np.ones_like(_like(t), dtype=dtype), requires_grad)


def full_like(t: Any, fill_value: float, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _make(np.full_like(_like(t), fill_value, dtype=dtype), requires_grad)


def randn(*shape: Any, seed: int | None = None, generator: np.random.Generator | None = None,
          dtype: Any = np.float32, requires_grad: bool = False) -> Tensor:
    """Standard normal samples of ``shape``.

    Drawn from the global generator, so :func:`chainrule.manual_seed` makes
    them repeat (as ``torch.randn`` follows ``torch.manual_seed``); or from
    ``generator``, or from a fresh generator seeded with ``seed``.

    >>> cr.manual_seed(0); a = cr.randn(2, 3)
    >>> cr.manual_seed(0); b = cr.randn(2, 3)
    >>> bool((a == b).all())
    True
    """
    return _random("randn", shape, seed, generator, dtype, requires_grad)


def rand(*shape: Any, seed: int | None = None, generator: np.random.Generator | None = None,
         dtype: Any = np.float32, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1) of ``shape``; seeded like :func:`randn`."""
    return _random("rand", shape, seed, generator, dtype, requires_grad)


def _random(kind: str, shape: tuple, seed: int | None, generator: np.random.Generator | None,
            dtype: Any, requires_grad: bool) -> Tensor:
    if seed is not None and generator is not None:
        raise TypeError(f"{kind}: give seed= or generator=, not both")
    shape = _shape(shape, kind)
    return _make(_draw(seed, generator, kind, shape, np.dtype(dtype)), requires_grad)


# Declared an effect: a compiled step draws afresh on every replay, from the
# same generator (or a fresh one from the same seed), as eager mode does.
@effect(touches=lambda seed, generator, kind, shape, dtype:
        () if seed is not None else _resolve(generator))
def _draw(seed: int | None, generator: np.random.Generator | None, kind: str, shape: tuple,
          dtype: np.dtype) -> np.ndarray:
    """One draw from a generator seeded with ``seed``, or ``generator``, or the
    global one, in float64 then cast (so a seed gives the same values whatever
    the dtype)."""
    rng = np.random.default_rng(seed) if seed is not None else _resolve(generator)
    arr = rng.standard_normal(shape) if kind == "randn" else rng.random(shape)
    return arr if arr.dtype == dtype else arr.astype(dtype)


def arange(start: float, stop: float | None = None, step: float = 1, dtype: Any = None,
           requires_grad: bool = False) -> Tensor:
    """Evenly spaced values in [start, stop), like ``np.arange`` (floats become float32)."""
    arr = np.arange(start, stop, step) if stop is not None else np.arange(start)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return _make(arr, requires_grad)


def linspace(start: float, stop: float, num: int = 50, dtype: Any = np.float32,
             requires_grad: bool = False) -> Tensor:
    return _make(np.linspace(start, stop, num, dtype=dtype), requires_grad)


def eye(n: int, m: int | None = None, dtype: Any = np.float32,
        requires_grad: bool = False) -> Tensor:
    return _make(np.eye(n, m, dtype=dtype), requires_grad)
