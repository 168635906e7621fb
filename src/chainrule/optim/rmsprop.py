"""RMSprop, optionally centered and with momentum."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import Tensor
from .adam import _lerp_into
from .optimizer import Optimizer, _check_number

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop with PyTorch's update rule (and operation order).

    For each parameter, with g its gradient (negated if ``maximize``)::

        g = g + weight_decay * p
        s = alpha s + (1 - alpha) g^2
        avg = sqrt(s - gbar^2) + eps,  gbar = gbar + (1 - alpha)(g - gbar)   # centered
        avg = sqrt(s) + eps                                                   # otherwise
        b = momentum b + g / avg;  p = p - lr b       # momentum > 0
        p = p - lr g / avg                            # otherwise

    Parameters
    ----------
    params : iterable of Tensors or dicts
    lr : float, default 1e-2
    alpha : float, default 0.99
    eps : float, default 1e-8
    weight_decay, momentum : float, default 0
    centered, maximize : bool, default False

    >>> opt = cr.optim.RMSprop(model.parameters(), lr=1e-3)
    """

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        for k in ("alpha", "eps", "weight_decay", "momentum"):
            _check_number(k, group[k], "RMSprop")

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        wd, mom, centered = group["weight_decay"], group["momentum"], group["centered"]
        for p in params:
            w = p.data
            g = self._grad(p, group["maximize"])
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {"step": 0, "square_avg": np.zeros_like(w)}
                if mom > 0:
                    state["momentum_buffer"] = np.zeros_like(w)
                if centered:
                    state["grad_avg"] = np.zeros_like(w)
            state["step"] += 1
            g = self._l2(g, w, wd)
            sq = state["square_avg"]
            avg = self._buf(w, 2)
            sq *= alpha
            np.multiply(g, 1 - alpha, out=avg)
            avg *= g
            sq += avg
            if centered:
                ga = state["grad_avg"]
                np.subtract(g, ga, out=avg)
                _lerp_into(ga, g, avg, 1 - alpha)
                np.multiply(ga, ga, out=avg)
                np.subtract(sq, avg, out=avg)
                np.sqrt(avg, out=avg)
            else:
                np.sqrt(sq, out=avg)
            avg += eps
            u = self._buf(w, 3)
            if mom > 0:
                buf = state["momentum_buffer"]
                buf *= mom
                np.divide(g, avg, out=u)
                buf += u
                np.multiply(buf, -lr, out=u)
            else:
                np.multiply(g, -lr, out=u)
                u /= avg
            w += u
