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
from ..capture import effect
from ..ops import SAVES_INPUTS, SAVES_NOTHING, Saves, rule, value
from ..random import _resolve
from ..tensor import Tensor

__all__ = [
    "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "softplus",
    "gelu", "silu", "elu", "linear", "dropout", "flatten", "layer_norm", "batch_norm",
    "embedding",
    "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss",
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


def gelu(input: Any, approximate: str = "none") -> Tensor:  # noqa: A002
    """x Phi(x), Phi the standard normal CDF; ``approximate='tanh'`` is PyTorch's
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return ops.gelu(input, approximate)


def silu(input: Any) -> Tensor:  # noqa: A002
    """x sigmoid(x) (swish)."""
    return ops.silu(input)


def elu(input: Any, alpha: float = 1.0) -> Tensor:  # noqa: A002
    """x for x > 0, alpha (e^x - 1) otherwise."""
    return ops.elu(input, alpha)


def _axis(dim: int | None, axis: int | None) -> int:
    if dim is not None and axis is not None and dim != axis:
        raise TypeError(f"give dim or axis, not both (got dim={dim}, axis={axis})")
    if dim is not None:
        return dim
    return -1 if axis is None else axis


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
    if p == 1.0:  # everything dropped: input * 0 (what an all-zero mask gives)
        return ops.mul(input, dt.type(0))
    # a Tensor, so the recorded op keeps this fresh mask without copying it
    return ops.mul(input, Tensor._const(_dropout_mask(generator, x.shape, dt, p)))


# ==========================================================================
# Normalisation layers: one rule that standardises over some axes
# ==========================================================================


@rule("normalize", saves=Saves(inputs=(True,), out=True),
      grads=("({g} - mean({g}) - {out} * mean({g} * {out})) / sigma",))
def NORMALIZE(x, *running, axes, eps, momentum):
    """(x - mean) / sqrt(var + eps) over ``axes`` (biased variance).

    ``running`` is empty, or the arrays ``(running_mean, running_var,
    num_batches_tracked)`` that batch normalisation updates here, in the
    forward pass, with the batch statistics (the variance unbiased, as in
    PyTorch). They are operands rather than settings so that ``cr.compile``
    sees them as state of the step: a replayed step updates them too, and
    its verification restores them like any other tensor it changes.
    """
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    with np.errstate(over="ignore"):  # an overflow is handled just below
        var = (d * d).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    if not np.isfinite(var).all():
        inv = _inv_std_scaled(d, var, inv, axes, eps)
    if running:
        rmean, rvar, counter = running
        n = x.size // mean.size
        if n < 2:
            raise ValueError(
                f"batch_norm: expected more than 1 value per channel when training, got "
                f"input shape {x.shape}"
            )
        rmean *= 1.0 - momentum
        rmean += momentum * mean.reshape(rmean.shape)
        rvar *= 1.0 - momentum
        rvar += (momentum * n / (n - 1)) * var.reshape(rvar.shape)
        counter += 1
    return (d * inv).astype(x.dtype, copy=False), (axes, inv.astype(x.dtype, copy=False), eps)


def _inv_std_scaled(d: np.ndarray, var: np.ndarray, inv: np.ndarray, axes: tuple[int, ...],
                    eps: float) -> np.ndarray:
    """1 / sqrt(var + eps) where d * d overflowed (|d| beyond about 1e154 in
    float64, 1e19 in float32): there inv would be 0 and every output 0, a
    silently wrong normalisation. The deviations are scaled by their largest
    magnitude s first: var = s^2 mean((d / s)^2)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        s = np.max(np.abs(d), axis=axes, keepdims=True)
        s = np.where((s > 0) & np.isfinite(s), s, 1.0)
        r = d / s
        scaled = 1.0 / (s * np.sqrt((r * r).mean(axis=axes, keepdims=True) + eps / (s * s)))
    return np.where(np.isfinite(var), inv, scaled)


@NORMALIZE.defvjp
def _(g, out, ctx, needs, xp, x, *running):
    # With xhat = out: dL/dx = (g - mean(g) - xhat mean(g xhat)) / sigma
    axes, inv, eps = ctx
    if isinstance(x, Tensor):  # create_graph: sigma depends on x, so rebuild it from x
        d = x - x.mean(axis=axes, keepdims=True)
        inv = ((d * d).mean(axis=axes, keepdims=True) + eps) ** -0.5
    gx = (g - g.mean(axis=axes, keepdims=True)
          - out * (g * out).mean(axis=axes, keepdims=True)) * inv
    return (gx,) + (None,) * len(running)


def _normalize(x: Any, axes: tuple[int, ...], eps: float, running: tuple = (),
               momentum: float = 0.0) -> Tensor:
    return ops.apply(NORMALIZE, x, *running, axes=axes, eps=float(eps),
                     momentum=float(momentum))


def layer_norm(input: Any, normalized_shape: Any, weight: Any = None,  # noqa: A002
               bias: Any = None, eps: float = 1e-5) -> Tensor:
    """Standardise over the last ``len(normalized_shape)`` axes, then scale and shift.

    Parameters
    ----------
    input : Tensor (..., *normalized_shape)
    normalized_shape : int or tuple of int
    weight, bias : Tensor of shape ``normalized_shape``, optional
    eps : float

    >>> F.layer_norm(cr.randn(4, 8), 8).shape
    (4, 8)
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(normalized_shape)
    x = value(input) if isinstance(input, Tensor) else np.asarray(input)
    k = len(shape)
    if k == 0 or x.shape[x.ndim - k:] != tuple(shape):
        raise ValueError(
            f"layer_norm: input of shape {x.shape} does not end in normalized_shape {shape}"
        )
    out = _normalize(input, tuple(range(x.ndim - k, x.ndim)), eps)
    if weight is not None:
        out = ops.mul(out, weight)
    if bias is not None:
        out = ops.add(out, bias)
    return out


def batch_norm(input: Any, running_mean: Any, running_var: Any,  # noqa: A002
               weight: Any = None, bias: Any = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5,
               num_batches_tracked: Any = None) -> Tensor:
    """Batch normalisation over the batch axis of (N, C) or (N, C, L) input (PyTorch's).

    Training: standardise with the batch's mean and (biased) variance and move
    ``running_mean`` / ``running_var`` towards the batch's mean and unbiased
    variance by ``momentum``. Evaluation: standardise with the running
    statistics. ``weight`` / ``bias`` (C,) scale and shift each channel.

    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> F.batch_norm(cr.randn(8, 3), rm, rv, training=True).shape
    (8, 3)
    """
    x = value(input) if isinstance(input, Tensor) else np.asarray(input)
    if x.ndim not in (2, 3):
        raise ValueError(f"batch_norm: expected input of shape (N, C) or (N, C, L), got {x.shape}")
    c = x.shape[1]
    chan = (1, c) if x.ndim == 2 else (1, c, 1)
    axes = (0,) if x.ndim == 2 else (0, 2)

    def arr(t: Any) -> Any:
        return None if t is None else (value(t) if isinstance(t, Tensor) else np.asarray(t))

    rm, rv = arr(running_mean), arr(running_var)
    for name, a in (("running_mean", rm), ("running_var", rv)):
        if a is not None and a.shape != (c,):
            raise ValueError(f"batch_norm: {name} has shape {a.shape}, expected ({c},)")
    if training or rm is None:
        running: tuple = ()
        if training and rm is not None and rv is not None:
            # Tensors stay Tensors (a module's buffers): cr.compile then tracks them
            counter = num_batches_tracked if num_batches_tracked is not None \
                else np.zeros((), np.int64)
            running = (running_mean, running_var, counter)
        out = _normalize(input, axes, eps, running, momentum)
    else:
        # with ops on the statistics (the buffers themselves, when given as Tensors),
        # so that a compiled step reads them afresh on every replay
        rmt = running_mean if isinstance(running_mean, Tensor) else rm
        rvt = running_var if isinstance(running_var, Tensor) else rv
        inv = ops.astype(ops.div(1.0, ops.sqrt(ops.add(ops.astype(rvt, np.float64), eps))),
                         x.dtype)
        out = ops.mul(ops.sub(input, ops.astype(ops.reshape(rmt, chan), x.dtype)),
                      ops.reshape(inv, chan))
    if weight is not None:
        out = ops.mul(out, ops.reshape(weight, chan))
    if bias is not None:
        out = ops.add(out, ops.reshape(bias, chan))
    return out


def embedding(input: Any, weight: Any) -> Tensor:  # noqa: A002
    """Rows of ``weight`` (num_embeddings, dim) at integer indices ``input`` (any shape).

    Returns shape ``input.shape + (dim,)``. Repeated indices accumulate their
    gradients into the same row.

    >>> F.embedding(np.array([2, 0, 2]), cr.randn(5, 3)).shape
    (3, 3)
    """
    idx = value(input) if isinstance(input, Tensor) else np.asarray(input)
    w = value(weight) if isinstance(weight, Tensor) else np.asarray(weight)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    _check_indices(idx, w.shape[0], "embedding")
    return ops.getitem(weight, idx.astype(np.intp, copy=False))


# A check of the step's values, declared so that a compiled step makes it on
# every replay too (not only on the batch it was captured with).
@effect(touches=lambda idx, n, who: ())
def _check_indices(idx: np.ndarray, n: int, who: str) -> None:
    """Every index in [0, n)."""
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx.ravel()[np.flatnonzero((idx.ravel() < 0) | (idx.ravel() >= n))[0]])
        raise IndexError(
            f"{who}: index {bad} is out of range for {n} embeddings (valid: 0..{n - 1})"
        )


# Declared an effect: a compiled step draws a fresh mask, from the same
# generator, on every replay (the draw advances the generator's state).
@effect(touches=lambda generator, shape, dt, p: _resolve(generator))
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


def _softmax_rows(x: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(softmax(x), log(sum(exp(x - max)))+max) over axis 1, without overflow;
    the softmax into ``out`` if given."""
    # the ufuncs' own reductions: x.max()/e.sum() add a Python layer that
    # costs as much as the arithmetic on a (32, 10) batch of logits
    m = _reduce_rows(np.maximum, x)
    e = np.subtract(x, m, out=out)
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
    return _ce_forward(x, target, reduction, label_smoothing, np.arange(0, n * c, c))


def _ce_forward(x: np.ndarray, target: np.ndarray, reduction: str, label_smoothing: float,
                offsets: np.ndarray, p: np.ndarray | None = None,
                flat: np.ndarray | None = None) -> tuple[np.ndarray, tuple]:
    """The rule's forward, with ``offsets`` = (0, C, 2C, ...) given (and the
    softmax into ``p``, the target positions into ``flat``, if given).

    Each row's target entry is found by its position in the flattened logits,
    ``offsets + target``: one index array, half the cost of indexing with
    (row, label) pairs. The positions are what the VJP needs of the labels,
    and being a new array they also keep this step's gradient safe from a
    caller who refills the label buffer before ``backward()``.
    """
    n, c = x.shape
    _check_label_range(target, c, "cross_entropy")
    if p is None:
        p = np.empty(x.shape, x.dtype)  # C order, whatever x's layout: see _ce_grad
    p, lse = _softmax_rows(x, p)
    flat = np.add(offsets, target, out=flat, dtype=np.intp)
    loss = lse[:, 0] - x.reshape(-1)[flat]
    if label_smoothing:
        # PyTorch: (1 - eps) * nll + eps * mean_k(-log p_k)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse[:, 0] - x.mean(axis=1))
    return _reduce(loss, reduction), (flat, reduction, label_smoothing, p)


@CROSS_ENTROPY.defvjp
def _(g, out, ctx, needs, xp, x):
    # The notes' shortcut: for C = -sum_k q_k log softmax(z)_k,
    #     dC/dz = softmax(z) * sum_k q_k - q,
    # which is softmax(z) - q exactly when the target row q sums to 1. Here q is
    # the one-hot label (or its label-smoothed version (1-eps) onehot + eps/C),
    # which always sums to 1, so dC/dz = softmax(z) - q holds for every row.
    flat, reduction, ls, p = ctx
    n, c = x.shape
    scale = _grad_scale(g, reduction, n, (n, 1))
    if isinstance(x, Tensor):  # create_graph: rebuild softmax differentiably
        q = np.zeros(x.shape, dtype=x.dtype)
        q.reshape(-1)[flat] = 1.0 - ls
        if ls:
            q += ls / c
        return ((_diff_softmax(x, xp) - q) * scale,)
    # plain NumPy: reuse the softmax saved by the forward pass, one allocation
    return _ce_grad(p * scale, _ce_terms(scale, reduction, ls, c), flat)


def _ce_terms(scale: Any, reduction: str, ls: float, c: int) -> tuple[Any, Any]:
    """What ``_ce_grad`` subtracts, from dL/d(row loss) ``scale``: the label
    smoothing's share of every entry (None without smoothing) and the target
    entry's share."""
    smooth = scale * (ls / c) if ls else None
    return smooth, (scale[:, 0] if reduction == "none" else scale) * (1.0 - ls)


def _ce_grad(d: np.ndarray, terms: tuple[Any, Any], flat: np.ndarray) -> tuple[np.ndarray]:
    """softmax(x) * scale - q * scale, from ``d`` = softmax(x) * scale (in place,
    C order: the forward pass makes the softmax so) and ``terms`` =
    ``_ce_terms(scale, ...)``, with the targets at positions ``flat`` of the
    flattened ``d``."""
    smooth, at_target = terms
    if smooth is not None:
        d -= smooth
    d.reshape(-1)[flat] -= at_target  # a view: d is C-ordered
    return (d,)


class _CrossEntropyKernel(ops.Kernel):
    """``cross_entropy`` for logits of one shape (see :class:`chainrule.ops.Kernel`):
    the rule's own steps, with the row offsets made once, and the softmax and
    the target positions written into kept arrays (0 and 1); the VJP turns the
    softmax into its result in place (it is not needed after it)."""

    __slots__ = ("offsets", "unit", "memo")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        n, c = shape
        super().__init__([(shape, dtype), ((n,), np.dtype(np.intp))])
        self.offsets = np.arange(0, n * c, c)
        self.offsets.flags.writeable = False
        # the seed of a backward pass from the loss (see ops.unit_seed): for it the
        # scale and the terms of the gradient are the same at every replay, and
        # are kept as (reduction, label smoothing, scale, terms)
        self.unit = ops.unit_seed(np.empty((), dtype))
        self.memo: tuple[str, float, Any, tuple[Any, Any]] | None = None

    def forward(self, x: np.ndarray, *, target: np.ndarray, reduction: str,
                label_smoothing: float) -> tuple[np.ndarray, tuple]:
        # (the target positions go only to this kernel's VJP)
        return _ce_forward(x, target, reduction, label_smoothing, self.offsets, self.take(0),
                           self.scratch(1))

    def vjp(self, g: np.ndarray, inplace: bool, ctx: tuple, x: np.ndarray) -> tuple:
        flat, reduction, ls, p = ctx
        memo = self.memo
        if g is self.unit and memo is not None and memo[0] == reduction and (
                memo[1] is ls or type(memo[1]) is type(ls) and memo[1] == ls):
            scale, terms = memo[2], memo[3]
        else:
            n, c = x.shape
            scale = _grad_scale(g, reduction, n, (n, 1))
            terms = _ce_terms(scale, reduction, ls, c)
            if g is self.unit:
                self.memo = (reduction, ls, scale, terms)
        return _ce_grad(np.multiply(p, scale, out=p), terms, flat)


@CROSS_ENTROPY.defkernel
def _(operands: Any, settings: dict, needs: tuple[bool, ...]) -> ops.Kernel | None:
    if len(operands) != 1 or operands[0] is None or set(settings) != {
            "target", "reduction", "label_smoothing"}:
        return None
    shape, dtype = operands[0]
    reduction, ls = settings["reduction"], settings["label_smoothing"]
    if len(shape) != 2 or dtype.char not in "fd" or reduction not in ("mean", "sum", "none") \
            or type(ls) not in (int, float):
        return None
    return _CrossEntropyKernel(shape, dtype)


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


@rule("cross_entropy_weighted", saves=Saves(inputs=(True,)), role="loss", activation="softmax",
      grads=("w_target * (softmax({0}) - onehot(target)) * {g} / sum(w_target)",))
def CROSS_ENTROPY_WEIGHTED(x, *, target, weight, reduction, label_smoothing):
    """Class-weighted cross-entropy (PyTorch's ``weight=``): row i counts weight[target_i].

    Per row: (1 - eps) w[y] (-log p_y) + eps / C sum_k w_k (-log p_k); the
    'mean' divides the sum by sum_i w[y_i], not by N, as PyTorch does.
    """
    n, c = x.shape
    _check_label_range(target, c, "cross_entropy")
    p, lse = _softmax_rows(x)
    rows = np.arange(n)
    wy = weight[target]
    loss = wy * (lse[:, 0] - x[rows, target])
    if label_smoothing:
        smooth = (weight * (lse - x)).sum(axis=1)
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / c) * smooth
    denom = wy.sum()
    if reduction == "mean":
        out = np.asarray(loss.sum() / denom)
    else:
        out = _reduce(loss, reduction)
    # labels and class weights are copied: refilling the caller's buffers
    # before backward() must not change this step's gradient
    return out, (target.copy(), weight.copy(), reduction, label_smoothing, p, denom)


@CROSS_ENTROPY_WEIGHTED.defvjp
def _(g, out, ctx, needs, xp, x):
    # d/dz of row i: (1 - eps) w_y (p - onehot_y) + eps / C (sum_k w_k p - w)
    target, weight, reduction, ls, p, denom = ctx
    n, c = x.shape
    rows = np.arange(n)
    if isinstance(x, Tensor):
        p = _diff_softmax(x, xp)
    onehot = np.zeros(x.shape, dtype=x.dtype)
    onehot[rows, target] = 1.0
    wy = weight[target][:, None]
    d = (p - onehot) * (wy * (1.0 - ls))
    if ls:
        d = d + (p * weight.sum() - weight) * (ls / c)
    if reduction == "mean":
        scale = g / denom
    else:
        scale = _grad_scale(g, reduction, n, (n, 1))
    return (d * scale,)


def _class_weight(weight: Any, c: int, dtype: np.dtype, who: str) -> np.ndarray:
    w = value(weight) if isinstance(weight, Tensor) else np.asarray(weight, dtype=np.float64)
    if w.shape != (c,):
        raise ValueError(f"{who}: weight must have shape ({c},), one per class, got {w.shape}")
    if w.dtype.kind not in "fiu" or not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f"{who}: class weights must be finite and >= 0, got {w!r}")
    # the cast as an op: a compiled step casts the (live) weights on every replay
    # instead of freezing the copy made on its first call
    return ops.astype(w, dtype).data


def cross_entropy(
    input: Any,  # noqa: A002
    target: Any,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Any = None,
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
    weight : array of shape (C,), optional
        A weight per class (for imbalanced classes): each row's loss is
        multiplied by the weight of its label, and ``'mean'`` divides by the
        sum of those weights (PyTorch's definition).

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
    w = None if weight is None or x.ndim != 2 else _class_weight(weight, x.shape[1], x.dtype, who)
    if t.dtype.kind == "f" and t.ndim == 2:
        if x.ndim != 2:
            raise ValueError(f"{who}: input must have shape (N, C), got {x.shape}")
        tgt = _same_shape_target(input, target, who)
        if w is not None:
            # -sum_k w_k q_k log p_k: the smoothed target times the weights, averaged over N
            if label_smoothing:
                tgt = ops.add(ops.mul(tgt, 1.0 - label_smoothing),
                              label_smoothing / x.shape[1])
            return ops.apply(CROSS_ENTROPY_PROBS, input, ops.mul(tgt, w),
                             reduction=reduction, label_smoothing=0.0)
        return ops.apply(CROSS_ENTROPY_PROBS, input, tgt, reduction=reduction,
                         label_smoothing=float(label_smoothing))
    if reduction == "mean" and x.ndim == 2 and x.shape[0] == 0:
        raise ValueError(
            f"{who}: the batch is empty (input shape {x.shape}), so its mean loss is "
            "undefined; skip empty batches or use reduction='sum'"
        )
    labels = _check_labels(x, t, who)
    if w is not None:
        return ops.apply(CROSS_ENTROPY_WEIGHTED, input, target=labels, weight=w,
                         reduction=reduction, label_smoothing=float(label_smoothing))
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
    return _reduce(-x[np.arange(n), target], reduction), (target.copy(), reduction)


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
    # checked here, not in the wrapper, so that a step replayed by cr.compile checks it too
    if p.size and not ((p >= 0).all() and (p <= 1).all()):
        bad = int(np.flatnonzero(~((p >= 0) & (p <= 1)))[0])
        raise ValueError(
            f"binary_cross_entropy: input must hold probabilities in [0, 1], found "
            f"{p.flat[bad]!r} at flat index {bad} (shape {p.shape}); pass logits to "
            "binary_cross_entropy_with_logits"
        )
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
    _floating(input, who)
    tgt = _same_shape_target(input, target, who)
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
    return _elementwise_loss(MSE, input, target, reduction)


def _elementwise_loss(r: Any, input: Any, target: Any, reduction: str,  # noqa: A002
                      **params: Any) -> Tensor:
    """A loss rule over (input, target) of one shape, after the shared checks."""
    _check_reduction(reduction, r.name)
    tgt = _same_shape_target(input, target, r.name)
    return ops.apply(r, input, tgt, reduction=reduction, **params)


# ==========================================================================
# l1_loss, huber_loss, smooth_l1_loss: robust regression losses
# ==========================================================================


@rule("l1_loss", saves=SAVES_INPUTS, role="loss",
      grads=("sign({0} - {1}) * {g} / n", "-sign({0} - {1}) * {g} / n"))
def L1(x, y, *, reduction):
    """|x - y| elementwise."""
    return _reduce(np.abs(x - y), reduction), reduction


@L1.defvjp
def _(g, out, ctx, needs, xp, x, y):
    # sign(x - y), 0 where they are equal (PyTorch's choice at the kink)
    gd = np.sign(value(x) - value(y)) * _grad_scale(g, ctx, value(x).size, value(x).shape)
    return (gd if needs[0] else None, -gd if needs[1] else None)


def l1_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:  # noqa: A002
    """Mean absolute error: mean(|input - target|); shapes must match.

    >>> F.l1_loss(cr.tensor([1.0, 2.0]), np.array([0.0, 4.0], dtype=np.float32)).item()
    1.5
    """
    return _elementwise_loss(L1, input, target, reduction)


@rule("huber_loss", saves=SAVES_INPUTS, role="loss",
      grads=("clip({0} - {1}, -delta, delta) * {g} / n",
             "-clip({0} - {1}, -delta, delta) * {g} / n"))
def HUBER(x, y, *, reduction, delta):
    """0.5 d^2 where |d| < delta, delta (|d| - delta / 2) elsewhere; d = x - y."""
    d = x - y
    a = np.abs(d)
    loss = np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    return _reduce(loss.astype(d.dtype, copy=False), reduction), (reduction, delta)


@HUBER.defvjp
def _(g, out, ctx, needs, xp, x, y):
    # d inside the quadratic zone, +-delta outside: the error clipped to [-delta, delta]
    reduction, delta = ctx
    d = x - y
    dv = value(d)
    scale = _grad_scale(g, reduction, dv.size, dv.shape)
    if isinstance(d, Tensor):
        gd = xp.where(np.abs(dv) <= delta, d, np.sign(dv) * delta) * scale
    else:
        gd = np.clip(d, -delta, delta) * scale
    return (gd if needs[0] else None, -gd if needs[1] else None)


def huber_loss(input: Any, target: Any, reduction: str = "mean",  # noqa: A002
               delta: float = 1.0) -> Tensor:
    """Huber loss: quadratic for errors below ``delta``, linear above (PyTorch's).

    Less sensitive to outliers than :func:`mse_loss`; its gradient is the
    error clipped to [-delta, delta].

    >>> F.huber_loss(cr.tensor([0.5, 3.0]), np.zeros(2, np.float32)).item()
    1.3125
    """
    if not (isinstance(delta, (int, float)) and delta > 0 and np.isfinite(delta)):
        raise ValueError(f"huber_loss: delta must be a number > 0, got {delta!r}")
    return _elementwise_loss(HUBER, input, target, reduction, delta=float(delta))


def smooth_l1_loss(input: Any, target: Any, reduction: str = "mean",  # noqa: A002
                   beta: float = 1.0) -> Tensor:
    """PyTorch's smooth L1: 0.5 d^2 / beta where |d| < beta, |d| - beta / 2 elsewhere.

    Equal to ``huber_loss(..., delta=beta) / beta``; ``beta=0`` is the L1 loss.
    """
    if not (isinstance(beta, (int, float)) and beta >= 0 and np.isfinite(beta)):
        raise ValueError(f"smooth_l1_loss: beta must be a number >= 0, got {beta!r}")
    if beta == 0:
        return l1_loss(input, target, reduction)
    return ops.mul(huber_loss(input, target, reduction, delta=beta), 1.0 / beta)
