"""Adagrad: a per-parameter step size from the running sum of squared gradients."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer, _check_number

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad with PyTorch's update rule (Duchi, Hazan & Singer, 2011).

    For each parameter at step t, with g its gradient (negated if ``maximize``)::

        clr = lr / (1 + (t - 1) lr_decay)
        g = g + weight_decay * p
        s = s + g^2                            # s starts at initial_accumulator_value
        p = p - clr * g / (sqrt(s) + eps)

    Coordinates with large past gradients take small steps, rare ones large
    steps, which suits sparse features (one-hot columns, embeddings).

    Parameters
    ----------
    params : iterable of Tensors or dicts
    lr : float, default 1e-2
    lr_decay, weight_decay, initial_accumulator_value : float, default 0
    eps : float, default 1e-10
    maximize : bool, default False

    >>> opt = cr.optim.Adagrad(model.parameters(), lr=0.05)
    """

    def __init__(self, params: Any, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))
        # PyTorch creates the state (and the accumulator) at construction
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = {"step": 0, "sum": np.full_like(
                    p.data, group["initial_accumulator_value"])}

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        for k in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            _check_number(k, group[k], "Adagrad")

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr, decay, eps, wd = group["lr"], group["lr_decay"], group["eps"], group["weight_decay"]
        for p in params:
            w = p.data
            g = self._grad(p, group["maximize"])
            state = self.state.get(p)
            if state is None:  # a parameter added to the group later
                state = self.state[p] = {"step": 0, "sum": np.full_like(
                    w, group["initial_accumulator_value"])}
            state["step"] += 1
            clr = lr / (1 + (state["step"] - 1) * decay)
            g = self._l2(g, w, wd)
            acc = state["sum"]
            u = self._buf(w, 2)
            np.multiply(g, g, out=u)
            acc += u
            np.sqrt(acc, out=u)
            u += eps
            np.divide(g, u, out=u)
            u *= -clr
            w += u
