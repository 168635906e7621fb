"""Gradient utilities: clipping by norm or value."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..capture import effect
from ..tensor import Tensor, _bump

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _as_list(parameters: Any) -> list[Tensor]:
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _grads(parameters: Any) -> list[Tensor]:
    """The ``.grad`` tensors of ``parameters`` that have one."""
    return [g for g in (p._grad for p in _as_list(parameters)) if g is not None]


def _params_touched(parameters: Any, *args: Any, **kwargs: Any) -> list[Tensor]:
    return _as_list(parameters)


@effect(touches=_params_touched)
def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

    The norm is taken over all gradients as if concatenated into one vector
    (``norm_type`` may be ``inf``). Gradients are multiplied in place by
    ``min(1, max_norm / (total_norm + 1e-6))``, as in PyTorch.

    Returns
    -------
    Tensor, shape ()
        The total norm *before* clipping.

    >>> loss.backward()
    >>> cr.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    """
    grads = _grads(parameters)
    norm_type = float(norm_type)
    if not grads:
        return Tensor(np.float32(0.0))
    dtype = grads[0].data.dtype
    with np.errstate(over="ignore"):
        if math.isinf(norm_type):
            norms = [np.abs(g.data).max() if g.data.size else 0.0 for g in grads]
            total = np.max(np.asarray(norms, dtype=dtype))
        else:
            norms = [np.sum(np.abs(g.data) ** norm_type) for g in grads]
            total = np.sum(np.asarray(norms, dtype=np.float64)) ** (1.0 / norm_type)
    total = dtype.type(total)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
            f"{total}, so they cannot be clipped; pass error_if_nonfinite=False to skip this check"
        )
    coef = min(float(max_norm) / (float(total) + 1e-6), 1.0)
    if coef < 1.0:
        for g in grads:
            g.data *= dtype.type(coef)
            _bump(g)
    return Tensor(np.asarray(total))


@effect(touches=_params_touched)
def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] in place."""
    for g in _grads(parameters):
        np.clip(g.data, -clip_value, clip_value, out=g.data)
        _bump(g)
