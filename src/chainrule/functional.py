"""Functional transforms in the style of JAX: ``grad``, ``value_and_grad``,
``vjp``, ``jacobian``, ``hessian`` and ``gradcheck``.

They run the same engine as ``Tensor.backward`` (``tensor.run_backward``),
asking it for the gradients of chosen inputs instead of filling ``.grad``.
The engine never imports this module.

Functions passed in take and return Tensors: ``f(x)`` is called with
Tensors built from the arrays you give, and must return a Tensor. Results are
NumPy arrays, except when the transform is itself being differentiated
(``cr.grad(cr.grad(f))``), where Tensors are returned so the outer transform
can follow them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .tensor import Tensor, is_grad_enabled, run_backward

__all__ = ["grad", "value_and_grad", "vjp", "jacobian", "hessian", "gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with central finite differences."""


def _argnums(argnums: int | Sequence[int], n: int, who: str) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not -n <= a < n:
            raise ValueError(f"{who}: argnums {argnums} out of range for {n} arguments")
    return tuple(a % n for a in nums)


def _prepare(args: Sequence[Any], nums: tuple[int, ...], who: str):
    """Turn the differentiated arguments into leaves that require grad."""
    args = list(args)
    nested = False
    for i in nums:
        a = args[i]
        if isinstance(a, Tensor) and a.requires_grad and is_grad_enabled():
            nested = True  # an outer transform is tracing us: keep its graph
            continue
        t = Tensor(a.data if isinstance(a, Tensor) else a)
        if t.dtype.kind not in "fc":
            raise TypeError(
                f"{who}: argument {i} has dtype {t.dtype}; only floating inputs can be "
                "differentiated (pass floats, e.g. np.float64 arrays)"
            )
        t.requires_grad = True
        args[i] = t
    return args, nested


def _scalar_output(out: Any, who: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"{who}: the function must return a Tensor, got {type(out).__name__}")
    if out.size != 1:
        raise ValueError(
            f"{who}: the function must return a scalar, got shape {out.shape}; "
            "use cr.vjp or cr.jacobian for non-scalar outputs"
        )
    return out


def _finish(g: Any, like: Tensor, nested: bool) -> Any:
    if g is None:  # the output does not depend on this input
        g = np.zeros_like(like.data)
        return Tensor(g) if nested else g
    if nested:
        return g if isinstance(g, Tensor) else Tensor._const(g)
    return g.data if isinstance(g, Tensor) else g


def value_and_grad(
    f: Callable[..., Tensor], argnums: int | Sequence[int] = 0
) -> Callable[..., tuple[Any, Any]]:
    """``f``'s value and its gradient w.r.t. the arguments in ``argnums``.

    >>> val, g = cr.value_and_grad(lambda x: (x ** 2).sum())(np.array([1.0, 2.0]))
    >>> g
    array([2., 4.])

    With a tuple ``argnums`` the gradient is a tuple, one entry per argument.
    """

    def wrapped(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        nums = _argnums(argnums, len(args), "value_and_grad")
        targs, nested = _prepare(args, nums, "value_and_grad")
        out = _scalar_output(f(*targs, **kwargs), "value_and_grad")
        inputs = [targs[i] for i in nums]
        gs = run_backward((out,), (None,), retain_graph=nested, create_graph=nested,
                          inputs=inputs) if out.requires_grad else [None] * len(inputs)
        gs = [_finish(g, t, nested) for g, t in zip(gs, inputs)]
        val = out if nested else out.data
        return val, (gs[0] if isinstance(argnums, int) else tuple(gs))

    return wrapped


def grad(f: Callable[..., Tensor], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """The gradient of scalar-valued ``f`` w.r.t. the arguments in ``argnums``.

    >>> cr.grad(lambda w, x: ((w * x - 1.0) ** 2).sum())(np.array(2.0), np.array(3.0))
    array(30.)

    Nest it for higher derivatives: ``cr.grad(cr.grad(f))``.
    """
    vg = value_and_grad(f, argnums)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return vg(*args, **kwargs)[1]

    return wrapped


def vjp(f: Callable[..., Tensor], *primals: Any
        ) -> tuple[np.ndarray | Tensor, Callable[[Any], tuple]]:
    """Evaluate ``f(*primals)`` and return ``(out, vjp_fn)``.

    ``vjp_fn(cotangent)`` gives the tuple ``cotangent^T J_i`` for each primal,
    where ``J_i`` is the Jacobian of ``f`` w.r.t. primal ``i``. It may be
    called several times.
    """
    targs, nested = _prepare(primals, tuple(range(len(primals))), "vjp")
    out = f(*targs)
    if not isinstance(out, Tensor):
        raise TypeError(f"vjp: the function must return a Tensor, got {type(out).__name__}")

    def vjp_fn(cotangent: Any) -> tuple:
        ct = np.asarray(cotangent.data if isinstance(cotangent, Tensor) else cotangent)
        if ct.shape != out.shape:
            raise ValueError(
                f"vjp: the cotangent has shape {ct.shape}, the output has shape {out.shape}"
            )
        if not out.requires_grad:
            return tuple(_finish(None, t, nested) for t in targs)
        gs = run_backward((out,), (ct,), retain_graph=True, create_graph=nested, inputs=targs)
        return tuple(_finish(g, t, nested) for g, t in zip(gs, targs))

    return (out if nested else out.data), vjp_fn


def jacobian(f: Callable[..., Tensor], argnums: int = 0) -> Callable[..., np.ndarray]:
    """The full Jacobian of ``f`` w.r.t. argument ``argnums``: shape out.shape + in.shape.

    Built row by row with one VJP per output element (reverse mode).
    """

    def wrapped(*args: Any) -> np.ndarray:
        i = _argnums(argnums, len(args), "jacobian")[0]
        x0 = args[i]

        def fi(x: Tensor) -> Tensor:
            a = list(args)
            a[i] = x
            return f(*a)

        out, back = vjp(fi, x0)
        out = np.asarray(out)
        x0 = np.asarray(x0.data if isinstance(x0, Tensor) else x0)
        jac = np.zeros(out.shape + x0.shape, dtype=np.result_type(out.dtype, x0.dtype))
        seed = np.zeros_like(out)
        for k in np.ndindex(out.shape):
            seed[k] = 1
            jac[k] = np.asarray(back(seed)[0])
            seed[k] = 0
        return jac

    return wrapped


def hessian(f: Callable[..., Tensor], argnums: int = 0) -> Callable[..., np.ndarray]:
    """The Hessian of scalar ``f`` w.r.t. one argument (the Jacobian of its gradient)."""

    def wrapped(*args: Any) -> np.ndarray:
        i = _argnums(argnums, len(args), "hessian")[0]

        def g(x: Tensor) -> Tensor:
            a = list(args)
            a[i] = x
            return grad(f, i)(*a)

        return jacobian(g)(args[i])

    return wrapped


# --------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------


def gradcheck(
    f: Callable[..., Tensor],
    inputs: Sequence[Any],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int = 0,
) -> bool:
    """Compare the engine's gradients of ``f`` with central finite differences.

    Every input is cast to float64. For a non-scalar output the check uses
    ``L = sum(f(x) * r)`` with a fixed random ``r``, which exercises the whole
    Jacobian. Each input element is perturbed by +-eps; the analytic gradient
    must satisfy ``|analytic - numeric| <= atol + rtol * |numeric|``.

    Returns True, or raises :class:`GradcheckError` naming the input, the
    element with the worst disagreement, and both values.
    """
    xs = [np.array(x.data if isinstance(x, Tensor) else x, dtype=np.float64) for x in inputs]

    def call(vals: Sequence[np.ndarray]) -> Any:
        # The inputs require grad in every evaluation, the numeric ones too:
        # f may register a hook on an intermediate, which needs a graph (the
        # graph is dropped right after).
        return f(*[Tensor(v, requires_grad=True) for v in vals])

    probe = call(xs)
    if not isinstance(probe, Tensor):
        raise TypeError(f"gradcheck: the function must return a Tensor, got {type(probe)}")
    r = np.random.default_rng(seed).standard_normal(probe.shape)
    if probe.size == 1:
        r = np.ones(probe.shape)

    def loss(*vals: np.ndarray) -> float:
        out = call(vals)
        return float(np.sum(np.asarray(out.data, dtype=np.float64) * r))

    def scalar(*ts: Tensor) -> Tensor:
        return (f(*ts) * r).sum()

    analytic = value_and_grad(scalar, tuple(range(len(xs))))(*xs)[1]
    for i, (x, a) in enumerate(zip(xs, analytic)):
        num = np.zeros_like(x)
        for k in np.ndindex(x.shape):
            orig = x[k]
            x[k] = orig + eps
            up = loss(*xs)
            x[k] = orig - eps
            down = loss(*xs)
            x[k] = orig
            num[k] = (up - down) / (2 * eps)
        a = np.asarray(a, dtype=np.float64)
        err = np.abs(a - num) - (atol + rtol * np.abs(num))
        bad = ~(err <= 0)  # also catches NaN
        if bad.any():
            score = np.where(bad, np.nan_to_num(err, nan=np.inf), -np.inf)
            worst = np.unravel_index(int(np.argmax(score)), x.shape) if x.ndim else ()
            raise GradcheckError(
                f"gradcheck: input {i} (shape {x.shape}), element {tuple(int(j) for j in worst)}: "
                f"analytic {float(a[worst])!r} vs numeric {float(num[worst])!r} "
                f"({int(bad.sum())} of {x.size} elements outside atol={atol}, rtol={rtol})"
            )
    return True
