"""Stochastic gradient descent, with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import Tensor
from . import _blas
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
    fused : bool, default False
        Run ``p = p - lr * g`` and the momentum update as BLAS ``axpy``/``scal``
        calls (the OpenBLAS inside NumPy's wheel, see ``optim/_blas.py``): one
        pass over memory instead of two, spread over the BLAS threads, and each
        multiply-add rounded once, as in PyTorch's ``fused=True``. Same update
        rule; results equal the unfused ones to rounding. Parameters that are
        small (under 16,384 elements, where NumPy is quicker than the call),
        not float32/float64 or not contiguous are updated the unfused way. A
        NumPy built against another BLAS raises a RuntimeError that says so.

    >>> opt = cr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    """

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 maximize: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, fused=bool(fused)))

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        for k in ("momentum", "weight_decay", "dampening"):
            _check_number(k, group[k], "SGD")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0")
        if group["fused"]:
            _blas.require("SGD")

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
        wd, nesterov = group["weight_decay"], group["nesterov"]
        fused = group["fused"]
        for p in params:
            w = p.data
            blas = fused and _blas.supports(w)
            g = self._grad(p, group["maximize"])
            g = self._l2(g, w, wd)
            if mom != 0:
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:  # the first step starts the buffer at g, undamped
                    buf = state["momentum_buffer"] = g.copy()
                elif blas and _blas.supports(buf):
                    _blas.scal(mom, buf)
                    _blas.axpy(1 - damp, g, buf)
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
            if blas:
                _blas.axpy(-lr, g, w)
                continue
            t = self._buf(w, 3)
            np.multiply(g, -lr, out=t)
            w += t
