"""Stochastic gradient descent, with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer, _check_number

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD with PyTorch's update rule (and operation order).

    For each parameter, with g its gradient (negated if ``maximize``)::

        g = g + weight_decay * p                     # if weight_decay
        b = g                    (first step)        # if momentum
        b = momentum * b + (1 - dampening) * g       (later steps)
        g = g + momentum * b  if nesterov else b
        p = p - lr * g

    Parameters
    ----------
    params : iterable of Tensors or dicts
    lr : float, default 1e-3
    momentum, dampening, weight_decay : float, default 0
    nesterov, maximize : bool, default False

    >>> opt = cr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    """

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        for k in ("momentum", "weight_decay", "dampening"):
            _check_number(k, group[k], "SGD")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0")

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
        wd, nesterov = group["weight_decay"], group["nesterov"]
        for p in params:
            w = p.data
            g = self._grad(p, group["maximize"])
            if wd != 0:
                t = self._buf(w, 1)
                np.multiply(w, wd, out=t)
                np.add(g, t, out=t)
                g = t
            if mom != 0:
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:  # the first step starts the buffer at g, undamped
                    buf = state["momentum_buffer"] = g.copy()
                else:
                    buf *= mom
                    if damp != 0:
                        t = self._buf(w, 2)
                        np.multiply(g, 1 - damp, out=t)
                        buf += t
                    else:
                        buf += g
                if nesterov:
                    t = self._buf(w, 2)
                    np.multiply(buf, mom, out=t)
                    np.add(g, t, out=t)
                    g = t
                else:
                    g = buf
            t = self._buf(w, 3)
            np.multiply(g, -lr, out=t)
            w += t
