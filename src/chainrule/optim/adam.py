"""Adam and AdamW (decoupled weight decay), with optional AMSGrad."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer, _check_number

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam with PyTorch's update rule (and operation order).

    For each parameter at step t, with g its gradient (negated if ``maximize``)::

        g = g + weight_decay * p                 # Adam (L2 penalty in the gradient)
        p = p * (1 - lr * weight_decay)          # AdamW instead (decoupled decay)
        m = m + (1 - beta1) * (g - m)            # = beta1 m + (1 - beta1) g
        v = beta2 v + (1 - beta2) g^2
        v_max = max(v_max, v)                    # amsgrad: use v_max below
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p = p - (lr / (1 - beta1^t)) * m / denom

    Parameters
    ----------
    params : iterable of Tensors or dicts
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad, maximize : bool, default False

    >>> opt = cr.optim.Adam(model.parameters(), lr=1e-3)
    """

    _decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _validate(self, group: dict[str, Any]) -> None:
        who = type(self).__name__
        super()._validate(group)
        _check_number("eps", group["eps"], who)
        _check_number("weight_decay", group["weight_decay"], who)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        _check_number("beta1 (betas[0])", betas[0], who, 0.0, 1.0, hi_open=True)
        _check_number("beta2 (betas[1])", betas[1], who, 0.0, 1.0, hi_open=True)
        group["betas"] = tuple(betas)

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        wd, amsgrad = group["weight_decay"], group["amsgrad"]
        for p in params:
            w = p.data
            g = self._grad(p, group["maximize"])
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {"step": 0, "exp_avg": np.zeros_like(w),
                                         "exp_avg_sq": np.zeros_like(w)}
                if amsgrad:
                    state["max_exp_avg_sq"] = np.zeros_like(w)
            state["step"] = step = state["step"] + 1
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if wd != 0:
                if self._decoupled:
                    w *= 1 - lr * wd
                else:
                    g = self._l2(g, w, wd)
            t = self._buf(w, 2)
            # m.lerp_(g, 1 - beta1): m + w (g - m), the form PyTorch uses for w < 0.5
            np.subtract(g, m, out=t)
            _lerp_into(m, g, t, 1 - b1)
            # v = beta2 v + ((1 - beta2) g) g
            v *= b2
            np.multiply(g, 1 - b2, out=t)
            t *= g
            v += t
            bias1 = 1 - b1**step
            bias2_sqrt = (1 - b2**step) ** 0.5
            if amsgrad:
                vmax = state["max_exp_avg_sq"]
                np.maximum(vmax, v, out=vmax)
                np.sqrt(vmax, out=t)
            else:
                np.sqrt(v, out=t)
            t /= bias2_sqrt
            t += eps
            u = self._buf(w, 3)
            np.multiply(m, -(lr / bias1), out=u)  # addcdiv: p + (value * m) / denom
            u /= t
            w += u


def _lerp_into(start: np.ndarray, end: np.ndarray, diff: np.ndarray, weight: float) -> None:
    """start <- lerp(start, end, weight), given diff = end - start (overwritten).

    PyTorch computes start + weight (end - start) for weight < 0.5 and
    end - (1 - weight) (end - start) otherwise; do the same.
    """
    if abs(weight) < 0.5:
        diff *= weight
        start += diff
    else:
        diff *= 1 - weight
        np.subtract(end, diff, out=start)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam update, instead of adding ``weight_decay * p`` to the gradient.

    Same parameters as :class:`Adam`, but ``weight_decay`` defaults to 1e-2.

    >>> opt = cr.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    """

    _decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)
