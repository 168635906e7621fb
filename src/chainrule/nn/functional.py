"""Stateless neural-network functions: activations, dropout, and the losses.

The losses are **fused rules** in the same registry as every other op
(:data:`chainrule.ops.RULES`), because fusing them is what makes them stable
and cheap: log-softmax + NLL and sigmoid + BCE have one-line gradients
(the notes' ``a^L - y``) and never form ``log(0)``.

Every loss takes ``reduction='mean' | 'sum' | 'none'`` with PyTorch's
meaning: ``'mean'`` averages over all elements (over the batch for
``cross_entropy``/``nll_loss``), ``'none'`` returns the per-element losses.

Their VJPs use only operators, ``.sum/.reshape`` and ``xp.<fn>``, so
``backward(create_graph=True)`` differentiates through them (second order).

>>> import chainrule.nn.functional as F
>>> logits = cr.tensor(np.array([[2.0, 0.5, -1.0]]), requires_grad=True)
>>> F.cross_entropy(logits, np.array([0])).backward()
>>> logits.grad          # softmax(logits) - onehot(0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from ..ops import SAVES_INPUTS, SAVES_NOTHING, Saves, rule, value
from ..random import _resolve
from ..tensor import Tensor, _mode

__all__ = [
    "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "softplus",
    "linear", "dropout", "flatten",
    "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "mse_loss",
]

# ==========================================================================
# Activations and layers (thin calls into the engine's rules)
# ==========================================================================


def relu(input: Any) -> Tensor:  # noqa: A002
    """max(x, 0), elementwise (gradient 0 at 0)."""
    return ops.relu(input)


def leaky_relu(input: Any, negative_slope: float = 0.01) -> Tensor:  # noqa: A002
    """x for x > 0, ``negative_slope * x`` otherwise."""
    return ops.leaky_relu(input, negative_slope)


def sigmoid(input: Any) -> Tensor:  # noqa: A002
    """1 / (1 + e^-x), stable for any x."""
    return ops.sigmoid(input)


def tanh(input: Any) -> Tensor:  # noqa: A002
    return ops.tanh(input)


def softplus(input: Any) -> Tensor:  # noqa: A002
    return ops.softplus(input)


def _axis(dim: int | None, axis: int | None) -> int:
    if dim is not None and axis is not None and dim != axis:
        raise TypeError(f"give dim or axis, not both (got dim={dim}, axis={axis})")
    return -1 if dim is None and axis is None else (dim if dim is not None else axis)  # type: ignore[return-value]


def softmax(input: Any, dim: int | None = None, *, axis: int | None = None) -> Tensor:  # noqa: A002
    """exp(x) / sum(exp(x)) along ``dim`` (default: the last axis)."""
    return ops.softmax(input, _axis(dim, axis))


def log_softmax(input: Any, dim: int | None = None, *, axis: int | None = None) -> Tensor:  # noqa: A002
    """x - logsumexp(x) along ``dim`` (default: the last axis)."""
    return ops.log_softmax(input, _axis(dim, axis))


def linear(input: Any, weight: Any, bias: Any = None) -> Tensor:  # noqa: A002
    """``input @ weight.T + bias``; input (..., in), weight (out, in), bias (out,)."""
    return ops.linear(input, weight, bias)


def flatten(input: Any, start_dim: int = 1, end_dim: int = -1) -> Tensor:  # noqa: A002
    """Merge dimensions ``start_dim..end_dim`` (inclusive) into one."""
    shape = np.shape(value(input))
    nd = max(len(shape), 1)
    s, e = start_dim % nd, end_dim % nd
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    new = shape[:s] + (int(np.prod(shape[s:e + 1], dtype=np.int64)),) + shape[e + 1:]
    return ops.reshape(input, new)


def dropout(input: Any, p: float = 0.5, training: bool = True,  # noqa: A002
            generator: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    The expected value is unchanged, so nothing needs rescaling at test time;
    with ``training=False`` (or ``p=0``) the input is returned as is. The mask
    comes from ``generator`` or the global one (:func:`chainrule.manual_seed`).

    >>> y = F.dropout(cr.ones((2, 4)), p=0.5)   # entries are 0 or 2
    """
    _check_p(p, "dropout")
    if not training or p == 0.0:
        return input if isinstance(input, Tensor) else Tensor(input)
    x = value(input) if isinstance(input, Tensor) else np.asarray(input)
    dt = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    if p == 1.0:
        mask = np.zeros(x.shape, dtype=dt)
    else:
        mask = _dropout_mask(generator, x.shape, dt, p)
        if _mode.tracer is not None:  # cr.compile: draw a fresh mask on every replay
            _mode.tracer.produced(mask, _dropout_mask, (generator, x.shape, dt, p))
    return ops.mul(input, mask)


def _dropout_mask(generator: np.random.Generator | None, shape: tuple, dt: np.dtype,
                  p: float) -> np.ndarray:
    """Entries 1/(1-p) with probability 1-p, else 0 (from ``generator`` or the global one)."""
    mask = (_resolve(generator).random(shape, dtype=dt) >= p).astype(dt)  # P(keep) = 1-p
    mask *= dt.type(1.0 / (1.0 - p))
    return mask


def _check_p(p: float, who: str) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{who}: p must be a probability in [0, 1], got {p!r}")


# ==========================================================================
# Losses: helpers
# ==========================================================================

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str, who: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{who}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
        )


def _reduce(loss: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "mean":
        if loss.size and loss.dtype.char in "fd":
            # what ndarray.mean does for these dtypes (a pairwise sum, then one
            # division), bit for bit, without its Python-level bookkeeping
            return np.asarray(np.add.reduce(loss, axis=None) / loss.size)
        return np.asarray(loss.mean())
    if reduction == "sum":
        return np.asarray(np.add.reduce(loss, axis=None))
    return loss


def _grad_scale(g: Any, reduction: str, n: int, shape: tuple) -> Any:
    """dL/d(elementwise loss) from the backpropagated ``g`` of the reduced loss."""
    if reduction == "mean":
        return g / n
    if reduction == "sum":
        return g
    return g.reshape(shape)


def _floating(x: Any, who: str, what: str = "input") -> np.ndarray:
    arr = value(x) if isinstance(x, Tensor) else np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{who}: {what} must be a floating-point array, got dtype {arr.dtype} "
            f"(shape {arr.shape})"
        )
    return arr


def _same_shape_target(input: Any, target: Any, who: str) -> Any:  # noqa: A002
    """The target as an operand: a Tensor that requires grad stays one (so the loss
    is differentiable in it, as in PyTorch); anything else becomes an array of the
    input's dtype. Shapes must match exactly: no silent broadcasting."""
    x = _floating(input, who)
    t = value(target) if isinstance(target, Tensor) else np.asarray(target)
    if t.shape != x.shape:
        raise ValueError(
            f"{who}: target shape {t.shape} does not match input shape {x.shape}; "
            "they must be equal (reshape one of them, e.g. target.reshape(input.shape), "
            "broadcasting here usually hides a bug)"
        )
    if isinstance(target, Tensor) and target.requires_grad:
        return target if t.dtype == x.dtype else ops.astype(target, x.dtype)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"{who}: target has non-numeric dtype {t.dtype}")
    # the cast is an op so that cr.compile sees where the target came from
    return t if t.dtype == x.dtype else ops.astype(t, x.dtype)


def _check_labels(x: np.ndarray, target: Any, who: str) -> np.ndarray:
    """Integer class labels of shape (N,), each in [0, C), for logits of shape (N, C)."""
    t = value(target) if isinstance(target, Tensor) else np.asarray(target)
    if x.ndim != 2:
        raise ValueError(
            f"{who}: input must have shape (N, C) (a batch of N rows of C class scores), "
            f"got shape {x.shape}"
        )
    n, c = x.shape
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"{who}: class labels must have an integer dtype, got {t.dtype} (shape {t.shape}); "
            "convert with labels.astype(np.int64), or pass class probabilities of shape "
            f"{x.shape} instead"
        )
    if t.shape != (n,):
        raise ValueError(
            f"{who}: labels must have shape ({n},) to match input of shape {x.shape}, "
            f"got shape {t.shape}"
        )
    return t  # the range is checked by the rules themselves (_check_label_range)


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _check_label_range(t: np.ndarray, c: int, who: str) -> None:
    """Every label in [0, c). Done inside the rules' forward functions, so that a
    step replayed by cr.compile (which calls the rules directly) checks it too."""
    if not t.size:
        return
    # one pass: seen as unsigned, a negative label is a huge number
    u = t.view(_UNSIGNED[t.dtype.itemsize]) if t.dtype.kind == "i" else t
    if np.maximum.reduce(u, axis=None) >= c:
        pos = int(np.flatnonzero((t < 0) | (t >= c))[0])
        raise ValueError(
            f"{who}: label {int(t[pos])} at position {pos} is out of range for {c} classes "
            f"(labels must be in [0, {c - 1}])"
        )


def _reduce_rows(ufunc: np.ufunc, x: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(x, axis=1, keepdims=True)`` for a 2-D ``x``.

    NumPy reduces along a short last axis one row at a time, about 40 ns a
    row: 40 us for the row maxima of a (1024, 10) batch of logits, as long as
    the matrix products of a small layer. For many short rows, combining whole
    columns (``ufunc(col_0, col_1)``, then each next column into the result)
    does the same work in a quarter of the time. The maximum is exact either
    way; a sum then adds left to right instead of NumPy's pairwise order,
    which for rows this short changes at most the last bits.
    """
    n, c = x.shape
    if n < 256 or not 2 <= c <= 16:
        return ufunc.reduce(x, axis=1, keepdims=True)
    out = ufunc(x[:, 0:1], x[:, 1:2])
    for j in range(2, c):
        ufunc(out, x[:, j:j + 1], out=out)
    return out


def _softmax_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softmax(x), log(sum(exp(x - max)))+max) over axis 1, without overflow."""
    # the ufuncs' own reductions: x.max()/e.sum() add a Python layer that
    # costs as much as the arithmetic on a (32, 10) batch of logits
    m = _reduce_rows(np.maximum, x)
    e = np.subtract(x, m)
    np.exp(e, out=e)
    s = _reduce_rows(np.add, e)
    e /= s
    lse = np.log(s)
    lse += m
    return e, lse


def _diff_softmax(x: Any, xp: Any) -> Any:
    """softmax over axis 1 written with differentiable pieces (the create_graph path).

    Shifting by the row maximum is exact for any constant, so the max is taken
    as a plain array and is not differentiated.
    """
    m = value(x).max(axis=1, keepdims=True)
    e = xp.exp(x - m)
    return e / e.sum(axis=1, keepdims=True)


def _diff_log_softmax(x: Any, xp: Any) -> Any:
    m = value(x).max(axis=1, keepdims=True)
    z = x - m
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


# ==========================================================================
# cross_entropy with integer labels: log-softmax + NLL in one node
# ==========================================================================


@rule(
    "cross_entropy",
    saves=Saves(inputs=(True,)),
    role="loss",
    activation="softmax",
    grads=("(softmax({0}) - onehot(target)) * {g} / N",),
)
def CROSS_ENTROPY(x, *, target, reduction, label_smoothing):
    """-log softmax(x)[target] per row; x (N, C) logits, target (N,) int labels."""
    n, c = x.shape
    _check_label_range(target, c, "cross_entropy")
    p, lse = _softmax_rows(x)
    rows = np.arange(n)
    loss = lse[:, 0] - x[rows, target]
    if label_smoothing:
        # PyTorch: (1 - eps) * nll + eps * mean_k(-log p_k)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse[:, 0] - x.mean(axis=1))
    return _reduce(loss, reduction), (target, reduction, label_smoothing, p)


@CROSS_ENTROPY.defvjp
def _(g, out, ctx, needs, xp, x):
    # The notes' shortcut: for C = -sum_k q_k log softmax(z)_k,
    #     dC/dz = softmax(z) * sum_k q_k - q,
    # which is softmax(z) - q exactly when the target row q sums to 1. Here q is
    # the one-hot label (or its label-smoothed version (1-eps) onehot + eps/C),
    # which always sums to 1, so dC/dz = softmax(z) - q holds for every row.
    target, reduction, ls, p = ctx
    n, c = x.shape
    rows = np.arange(n)
    scale = _grad_scale(g, reduction, n, (n, 1))
    if isinstance(x, Tensor):  # create_graph: rebuild softmax differentiably
        q = np.zeros(x.shape, dtype=x.dtype)
        q[rows, target] = 1.0 - ls
        if ls:
            q += ls / c
        return ((_diff_softmax(x, xp) - q) * scale,)
    # plain NumPy: reuse the softmax saved by the forward pass, one allocation
    d = p * scale
    if ls:
        d -= scale * (ls / c)
    d[rows, target] -= (scale[:, 0] if reduction == "none" else scale) * (1.0 - ls)
    return (d,)


# ==========================================================================
# cross_entropy with class-probability targets (soft labels)
# ==========================================================================


@rule(
    "cross_entropy_probs",
    saves=Saves(inputs=(True, (0,))),
    role="loss",
    activation="softmax",
    grads=("(softmax({0}) * sum({1}) - {1}) * {g} / N", "-log_softmax({0}) * {g} / N"),
)
def CROSS_ENTROPY_PROBS(x, y, *, reduction, label_smoothing):
    """-sum_k y_k log softmax(x)_k per row; x and y of shape (N, C)."""
    n, c = x.shape
    p, lse = _softmax_rows(x)
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + label_smoothing / c
    logp = x - lse
    loss = -(y * logp).sum(axis=1)
    return _reduce(loss, reduction), (reduction, label_smoothing, p, logp)


@CROSS_ENTROPY_PROBS.defvjp
def _(g, out, ctx, needs, xp, x, y):
    # The general form softmax * sum_k q_k - q: targets need not sum to 1
    # (PyTorch does not require it); with rows summing to 1 it is softmax - q.
    reduction, ls, p, logp = ctx
    n, c = x.shape
    scale = _grad_scale(g, reduction, n, (n, 1))
    if isinstance(x, Tensor):
        p = _diff_softmax(x, xp)
        logp = _diff_log_softmax(x, xp)
    gx = None
    if needs[0]:  # reads y (kept only then)
        q = y * (1.0 - ls) + ls / c if ls else y
        gx = (p * q.sum(axis=1, keepdims=True) - q) * scale
    gy = logp * (scale * -(1.0 - ls)) if needs[1] else None
    return gx, gy


def cross_entropy(
    input: Any,  # noqa: A002
    target: Any,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy between logits and class labels (or class probabilities).

    Parameters
    ----------
    input : Tensor, shape (N, C)
        Unnormalised scores (logits); softmax is applied inside, stably.
    target : array, shape (N,) of ints in [0, C), or shape (N, C) of floats
        Class labels, or class probabilities (soft labels, differentiable).
    reduction : {'mean', 'sum', 'none'}
        'mean' averages over the N rows.
    label_smoothing : float in [0, 1]
        Mix the target with the uniform distribution (PyTorch's definition).

    Returns
    -------
    Tensor, shape () or (N,) for reduction='none'.

    The gradient w.r.t. the logits is (softmax(input) - onehot(target)) / N:
    the notes' ``a^L - y`` for a softmax output layer.

    >>> F.cross_entropy(cr.tensor([[2.0, 1.0, 0.1]]), np.array([0])).item()
    0.417...
    """
    who = "cross_entropy"
    _check_reduction(reduction, who)
    x = _floating(input, who)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{who}: label_smoothing must be in [0, 1], got {label_smoothing}")
    t = value(target) if isinstance(target, Tensor) else np.asarray(target)
    if t.dtype.kind == "f" and t.ndim == 2:
        if x.ndim != 2:
            raise ValueError(f"{who}: input must have shape (N, C), got {x.shape}")
        tgt = _same_shape_target(input, target, who)
        return ops.apply(CROSS_ENTROPY_PROBS, input, tgt, reduction=reduction,
                         label_smoothing=float(label_smoothing))
    if reduction == "mean" and x.ndim == 2 and x.shape[0] == 0:
        raise ValueError(
            f"{who}: the batch is empty (input shape {x.shape}), so its mean loss is "
            "undefined; skip empty batches or use reduction='sum'"
        )
    labels = _check_labels(x, t, who)
    return ops._unary(CROSS_ENTROPY, input, target=labels, reduction=reduction,
                      label_smoothing=float(label_smoothing))


# ==========================================================================
# nll_loss: log-probabilities + labels
# ==========================================================================


@rule("nll_loss", saves=SAVES_NOTHING, role="loss", grads=("-onehot(target) * {g} / N",))
def NLL_LOSS(x, *, target, reduction):
    """-x[i, target_i] per row; x (N, C) log-probabilities."""
    n = x.shape[0]
    _check_label_range(target, x.shape[1], "nll_loss")
    return _reduce(-x[np.arange(n), target], reduction), (target, reduction)


@NLL_LOSS.defvjp
def _(g, out, ctx, needs, xp, x):
    # the gradient is -scale at the label, 0 elsewhere: constant in x, linear in g
    target, reduction = ctx
    n = x.shape[0]
    onehot = np.zeros(x.shape, dtype=x.dtype)
    onehot[np.arange(n), target] = -1.0
    return (onehot * _grad_scale(g, reduction, n, (n, 1)),)


def nll_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:  # noqa: A002
    """Negative log-likelihood of log-probabilities ``input`` (N, C) at labels ``target`` (N,).

    ``nll_loss(log_softmax(z), y)`` equals ``cross_entropy(z, y)``.

    >>> F.nll_loss(F.log_softmax(logits, dim=1), labels)
    """
    who = "nll_loss"
    _check_reduction(reduction, who)
    labels = _check_labels(_floating(input, who), target, who)
    return ops.apply(NLL_LOSS, input, target=labels, reduction=reduction)


# ==========================================================================
# binary_cross_entropy_with_logits: sigmoid + BCE in one node
# ==========================================================================


@rule(
    "binary_cross_entropy_with_logits",
    saves=Saves(inputs=(True, (0,))),
    role="loss",
    activation="sigmoid",
    grads=("(sigmoid({0}) - {1}) * {g} / n", "-{0} * {g} / n"),
)
def BCE_WITH_LOGITS(x, y, *, reduction):
    """BCE(sigmoid(x), y) = max(x, 0) - x y + log(1 + e^-|x|): finite for any x."""
    loss = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    return _reduce(loss, reduction), reduction


@BCE_WITH_LOGITS.defvjp
def _(g, out, ctx, needs, xp, x, y):
    # The notes' dC/dz^L = a^L - y: the sigmoid's derivative a(1 - a) cancels the
    # BCE's denominator a(1 - a), for any target y in [0, 1] (soft ones too).
    scale = _grad_scale(g, ctx, x.size, x.shape)
    gx = (xp.sigmoid(x) - y) * scale if needs[0] else None
    gy = x * -scale if needs[1] else None
    return gx, gy


def binary_cross_entropy_with_logits(
    input: Any, target: Any, reduction: str = "mean"  # noqa: A002
) -> Tensor:
    """Binary cross-entropy of ``sigmoid(input)`` against ``target`` in [0, 1], fused.

    Parameters
    ----------
    input : Tensor, any shape
        Logits z (pre-sigmoid scores).
    target : array, same shape as input
        Targets in [0, 1].

    The gradient is (sigmoid(z) - y) / n, and the loss stays finite for
    |z| = 1000, where ``binary_cross_entropy(sigmoid(z), y)`` saturates.

    >>> F.binary_cross_entropy_with_logits(z, y)
    """
    who = "binary_cross_entropy_with_logits"
    _check_reduction(reduction, who)
    tgt = _same_shape_target(input, target, who)
    return ops.apply(BCE_WITH_LOGITS, input, tgt, reduction=reduction)


# ==========================================================================
# binary_cross_entropy on probabilities
# ==========================================================================

_LOG_FLOOR = -100.0  # PyTorch clamps log(p) and log(1 - p) at -100 so p = 0 or 1 stays finite
_DENOM_FLOOR = 1e-12  # and keeps p (1 - p) away from 0 in the gradient


@rule(
    "binary_cross_entropy",
    saves=SAVES_INPUTS,
    role="loss",
    grads=("({0} - {1}) / ({0} (1 - {0})) * {g} / n", "(log(1 - {0}) - log({0})) * {g} / n"),
)
def BCE(p, y, *, reduction):
    """-(y log p + (1 - y) log(1 - p)), each log clamped at -100."""
    with np.errstate(divide="ignore"):
        logp = np.maximum(np.log(p), _LOG_FLOOR)
        log1mp = np.maximum(np.log1p(-p), _LOG_FLOOR)
    loss = -(y * logp + (1 - y) * log1mp)
    return _reduce(loss, reduction), (reduction, logp, log1mp)


@BCE.defvjp
def _(g, out, ctx, needs, xp, p, y):
    # d/dp = (p - y) / (p (1 - p)), the denominator floored as PyTorch does;
    # d/dy = log(1 - p) - log(p) with the clamped logs.
    reduction, logp, log1mp = ctx
    scale = _grad_scale(g, reduction, p.size, p.shape)
    gp = gy = None
    if needs[0]:
        d = p * (1 - p)
        d = xp.where(value(d) > _DENOM_FLOOR, d, _DENOM_FLOOR)
        gp = (p - y) / d * scale
    if needs[1]:
        if isinstance(p, Tensor):
            lp = xp.where(value(logp) > _LOG_FLOOR, xp.log(p), _LOG_FLOOR)
            l1 = xp.where(value(log1mp) > _LOG_FLOOR, xp.log(1 - p), _LOG_FLOOR)
        else:
            lp, l1 = logp, log1mp
        gy = (l1 - lp) * scale
    return gp, gy


def binary_cross_entropy(input: Any, target: Any, reduction: str = "mean") -> Tensor:  # noqa: A002
    """Binary cross-entropy of probabilities ``input`` in [0, 1] against ``target``.

    Logs are clamped at -100 (as in PyTorch), so p = 0 or 1 gives a large but
    finite loss. Prefer :func:`binary_cross_entropy_with_logits` on logits: it
    is exact where ``sigmoid`` rounds to 0 or 1.

    >>> F.binary_cross_entropy(cr.sigmoid(z), y)
    """
    who = "binary_cross_entropy"
    _check_reduction(reduction, who)
    x = _floating(input, who)
    tgt = _same_shape_target(input, target, who)
    if x.size and not ((x >= 0).all() and (x <= 1).all()):
        bad = int(np.flatnonzero(~((x >= 0) & (x <= 1)))[0])
        raise ValueError(
            f"{who}: input must hold probabilities in [0, 1], found {x.flat[bad]!r} at flat "
            f"index {bad} (shape {x.shape}); pass logits to binary_cross_entropy_with_logits"
        )
    return ops.apply(BCE, input, tgt, reduction=reduction)


# ==========================================================================
# mse_loss
# ==========================================================================


@rule(
    "mse_loss",
    saves=SAVES_INPUTS,
    role="loss",
    grads=("2 ({0} - {1}) * {g} / n", "-2 ({0} - {1}) * {g} / n"),
)
def MSE(x, y, *, reduction):
    """(x - y)^2 elementwise."""
    d = x - y
    return _reduce(d * d, reduction), reduction


@MSE.defvjp
def _(g, out, ctx, needs, xp, x, y):
    gd = (x - y) * (_grad_scale(g, ctx, x.size, x.shape) * 2)
    return (gd if needs[0] else None, -gd if needs[1] else None)


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:  # noqa: A002
    """Mean squared error: mean((input - target)^2); shapes must match.

    >>> F.mse_loss(cr.tensor([1.0, 2.0]), np.array([1.0, 0.0], dtype=np.float32)).item()
    2.0
    """
    who = "mse_loss"
    _check_reduction(reduction, who)
    tgt = _same_shape_target(input, target, who)
    return ops.apply(MSE, input, tgt, reduction=reduction)
