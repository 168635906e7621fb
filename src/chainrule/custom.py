"""Custom differentiable ops (``cr.Function``) and per-node gradient checks (``cr.check_graph``).

A :class:`Function` is written like PyTorch's ``torch.autograd.Function``:
a static ``forward(ctx, *args)`` and a static ``backward(ctx, *grad_outputs)``
that returns dL/d(input) for each input, given dL/d(output). Under the hood
each subclass becomes one engine :class:`~chainrule.ops.Rule` (forward and
VJP side by side), applied with :func:`~chainrule.ops.apply`, so it takes part
in ``backward()``, ``cr.grad``, ``cr.explain`` and ``cr.viz`` like any
built-in op. It is *not* added to ``cr.RULES``, the registry of built-ins.

>>> class Cube(cr.Function):
...     @staticmethod
...     def forward(ctx, x):
...         ctx.save_for_backward(x)
...         return x ** 3
...     @staticmethod
...     def backward(ctx, g):
...         (x,) = ctx.saved_tensors
...         return g * 3 * x ** 2
>>> y = Cube.apply(cr.tensor(2.0, requires_grad=True))

:func:`check_graph` checks every node of a real graph against finite
differences and names the first one whose backward is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np

from . import ops
from .ops import NUMPY_NS, Rule
from .tensor import _RELEASED, Tensor, no_grad

__all__ = [
    "Function", "FunctionCtx", "once_differentiable", "DoubleBackwardError",
    "check_graph", "GraphCheckError", "GraphCheckReport",
]


# --------------------------------------------------------------------------
# cr.Function
# --------------------------------------------------------------------------


class FunctionCtx:
    """What ``forward`` hands to ``backward``: saved tensors and any attributes you set.

    ``ctx.needs_input_grad[i]`` tells ``backward`` whether input ``i`` wants a
    gradient (return ``None`` for the others to save work).
    """

    def __init__(self) -> None:
        self.saved_tensors: tuple[Tensor | None, ...] = ()
        self.needs_input_grad: tuple[bool, ...] = ()
        self._layout: tuple = ()  # which forward arguments are tensors (graph operands)
        self._inputs: list[Tensor] = []  # the tensors forward saw, in operand order

    def save_for_backward(self, *tensors: Any) -> None:
        """Keep ``tensors`` for ``backward`` (read them back as ``ctx.saved_tensors``)."""
        self.saved_tensors = tuple(
            t if isinstance(t, Tensor) or t is None else Tensor._const(np.asarray(t))
            for t in tensors
        )


class Function:
    """Base class for an op with a hand-written derivative.

    Subclass it with two static methods:

    ``forward(ctx, *args)``
        Compute the output from the inputs (Tensors and any other Python
        values). It runs without recording a graph; use Tensor methods or
        NumPy (``x.numpy()``). Return one Tensor or array.
    ``backward(ctx, grad_output)``
        Return the gradient of the loss with respect to each forward
        argument (one per argument; ``None`` for non-tensors or inputs that
        need none), given ``grad_output`` = dL/d(output).

    Call it with ``MyOp.apply(*args)``. Check the derivative with
    ``cr.gradcheck`` or, inside a whole model, ``cr.check_graph(loss)``.
    """

    _rule: Rule

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # One engine rule per subclass, deliberately kept out of ops.RULES
        # (the registry of built-in ops that the tests enumerate).
        rule = Rule(cls.__name__, _make_forward(cls))
        rule.defvjp(_make_vjp(cls))
        rule.doc = cls.__doc__
        cls._rule = rule

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any) -> Any:
        raise NotImplementedError("a Function subclass must define forward(ctx, *args)")

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Any) -> Any:
        raise NotImplementedError(
            "a Function subclass must define backward(ctx, grad_output) returning one "
            "gradient per forward argument"
        )

    @classmethod
    def apply(cls, *args: Any) -> Tensor:
        """Run the op on ``args`` and record it in the graph (if any input requires grad)."""
        if cls is Function:
            raise TypeError("Function.apply: subclass cr.Function and call MyOp.apply(...)")
        layout = tuple(isinstance(a, (Tensor, np.ndarray)) for a in args)
        operands = [a for a, is_t in zip(args, layout) if is_t]
        others = tuple(a for a, is_t in zip(args, layout) if not is_t)
        # forward copies the caller's plain arrays: what it saves for backward
        # must not change if the caller refills them before backward()
        copies = tuple(isinstance(a, np.ndarray) for a in operands)
        return ops.apply(cls._rule, *operands, layout=layout, others=others, copies=copies)


def _make_forward(cls: type[Function]) -> Callable:
    def forward(*arrays: Any, layout: tuple, others: tuple,
                copies: tuple = ()) -> tuple[np.ndarray, FunctionCtx]:
        ctx = FunctionCtx()
        ctx._layout = (layout, others, copies)
        wrapped = [
            Tensor._const(np.array(a) if i < len(copies) and copies[i] else np.asarray(a))
            for i, a in enumerate(arrays)
        ]
        ctx._inputs = wrapped
        args = _merge(layout, wrapped, others)
        with no_grad():
            out = cls.forward(ctx, *args)
        if isinstance(out, (tuple, list)):
            raise TypeError(
                f"{cls.__name__}.forward returned {len(out)} values; a chainrule Function "
                "has exactly one output (return a single Tensor or array)"
            )
        return np.asarray(out.data if isinstance(out, Tensor) else out), ctx

    forward.__name__ = f"{cls.__name__}_forward"
    return forward


def _merge(layout: tuple, tensors: list, others: tuple) -> list:
    it_t, it_o = iter(tensors), iter(others)
    return [next(it_t) if is_t else next(it_o) for is_t in layout]


class DoubleBackwardError(RuntimeError):
    """A Function's backward was asked for a derivative it cannot give again.

    Raised under ``backward(create_graph=True)``, ``cr.hessian`` or
    ``cr.grad(cr.grad(f))`` when the backward leaves Tensor operations (NumPy,
    ``.numpy()``, ``no_grad``) or is marked :func:`once_differentiable`:
    differentiating its result again would silently give 0 or a part of the
    answer.
    """


def once_differentiable(backward: Callable) -> Callable:
    """Mark a Function's ``backward`` as computed outside the graph (NumPy).

    Its first derivatives work everywhere; asking for a second one
    (``create_graph=True``, ``cr.hessian``, ``cr.grad(cr.grad(f))``) raises
    :class:`DoubleBackwardError` at once instead of returning a wrong number.
    The same idea as PyTorch's ``torch.autograd.function.once_differentiable``.

    >>> class Sq(cr.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x.numpy() ** 2
    ...     @staticmethod
    ...     @cr.once_differentiable
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return g.numpy() * 2 * x.numpy()
    """
    backward._once_differentiable = True  # type: ignore[attr-defined]  # a marker on the function
    return backward


class _Recorded(Tensor):
    """A tensor handed to a Function's backward while the backward itself is
    recorded (create_graph=True): the ways out of the graph raise, since a
    derivative computed outside it cannot be differentiated again."""

    __slots__ = ()
    _function: str = "Function"  # the class name, for messages

    def _leave(self, how: str) -> Any:
        raise DoubleBackwardError(
            f"{self._function}.backward is being differentiated again (create_graph=True, "
            f"as in cr.hessian or cr.grad of cr.grad), but it calls {how} on a tensor it was "
            "given, which leaves the graph: the second derivative would be lost. Compute "
            "with Tensor operations (g * 3 * x ** 2, not g.numpy() * 3 * x.numpy() ** 2), or "
            "mark the backward @cr.once_differentiable if it is meant for first derivatives "
            "only (see docs/custom-functions.md)."
        )

    def numpy(self) -> np.ndarray:
        return self._leave(".numpy()")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._leave("a NumPy function (np.asarray, np.exp, ...)")

    def item(self) -> Any:
        return self._leave(".item()")

    def tolist(self) -> Any:
        return self._leave(".tolist()")


def _recorded(t: Tensor, function: str, seed: bool = False) -> Tensor:
    """``t`` as a graph node whose exits raise (see :class:`_Recorded`).

    A constant input is handed over as it is (its values are all backward
    needs from it).
    """
    if t.requires_grad:
        r = ops.clone(t)  # one identity node: the gradient flows on to t
    elif seed:
        # A constant incoming gradient (the seed): a leaf that requires grad
        # stands for it, so that every result of Tensor operations on it
        # requires grad; a result that does not was computed outside the graph.
        r = Tensor(t.data, requires_grad=True)
    else:
        return t
    r.__class__ = _Recorded
    rec = cast(_Recorded, r)
    rec._function = function
    return rec


def _double_backward_error(cls: type, what: str) -> DoubleBackwardError:
    return DoubleBackwardError(
        f"{cls.__name__}.backward cannot be differentiated again (create_graph=True, as in "
        f"cr.hessian or cr.grad of cr.grad): {what}. A backward that is differentiated again "
        "must compute its result with Tensor operations on grad_output and on the tensors "
        "saved with ctx.save_for_backward (the inputs); see docs/custom-functions.md."
    )


def _make_vjp(cls: type[Function]) -> Callable:
    once = getattr(cls.backward, "_once_differentiable", False)

    def vjp(g: Any, out: Any, ctx: FunctionCtx, needs: tuple, xp: Any, *inputs: Any) -> tuple:
        layout = ctx._layout[0]
        it = iter(needs)
        ctx.needs_input_grad = tuple(next(it) if is_t else False for is_t in layout)
        recording = isinstance(g, Tensor)  # create_graph=True: backward's own ops are recorded
        if recording:
            if once:
                raise _double_backward_error(cls, "its backward is marked once_differentiable")
            grads = _recorded_backward(cls, ctx, g, inputs)
        else:
            with no_grad():
                grads = cls.backward(ctx, Tensor._const(np.asarray(g)))
        if not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if len(grads) != len(layout):
            raise RuntimeError(
                f"{cls.__name__}.backward returned {len(grads)} gradient(s) but forward "
                f"took {len(layout)} argument(s); return one per argument (None for "
                "arguments that need no gradient)"
            )
        result: list[Any] = []  # arrays, or Tensors when recording
        for k, (gi, is_t) in enumerate(zip(grads, layout)):
            if not is_t:
                continue
            if gi is None:
                result.append(None)
            elif recording:
                if not isinstance(gi, Tensor):
                    raise _double_backward_error(
                        cls, f"it returned a {type(gi).__name__} for argument {k}, not a Tensor")
                if ctx.needs_input_grad[k] and not gi.requires_grad:
                    raise _double_backward_error(
                        cls, f"the gradient it returned for argument {k} does not depend on "
                        "grad_output through Tensor operations (computed under no_grad, or "
                        "from .data)")
                if type(gi) is _Recorded:  # backward returned what it was given
                    gi = ops.clone(gi)  # a plain tensor: the guard stays inside backward
                result.append(gi)
            else:
                result.append(np.asarray(gi.data if isinstance(gi, Tensor) else gi))
        return tuple(result)

    return vjp


def _recorded_backward(cls: type[Function], ctx: FunctionCtx, g: Tensor, inputs: tuple) -> Any:
    """Run ``backward`` so that its operations are recorded (create_graph=True).

    The tensors saved for backward stand for the graph's own inputs, so that
    the gradient can be differentiated again through them; they and
    grad_output are handed over as nodes whose ways out of the graph raise.
    """
    name = cls.__name__
    real = {id(w): t for w, t in zip(ctx._inputs, inputs)}
    saved = ctx.saved_tensors
    swapped: list[Tensor | None] = []
    for s in saved:
        if s is None:
            swapped.append(None)
            continue
        t = real.get(id(s))
        if t is None:
            raise _double_backward_error(
                cls, "it saved a tensor that is not one of its inputs (a value computed in "
                "forward is a constant to the graph, so its own derivative would be lost); "
                "save the inputs and recompute such values in backward")
        swapped.append(_recorded(t, name))
    ctx.saved_tensors = tuple(swapped)
    try:
        return cls.backward(ctx, _recorded(g, name, seed=True))
    finally:
        ctx.saved_tensors = saved


# --------------------------------------------------------------------------
# cr.check_graph
# --------------------------------------------------------------------------


class GraphCheckError(AssertionError):
    """A node's backward (its VJP) disagrees with finite differences of its forward."""


class GraphCheckReport:
    """What :func:`check_graph` looked at: nodes checked and nodes it could not check."""

    def __init__(self) -> None:
        self.checked: list[str] = []
        self.skipped: list[tuple[str, str]] = []  # (node, why)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<GraphCheckReport: {len(self.checked)} nodes checked, {len(self.skipped)} skipped>"


def _params(node: Any) -> dict:
    """The settings the op ran with (recorded on its node)."""
    ctx = node._ctx
    if isinstance(ctx, FunctionCtx):
        layout, others, copies = ctx._layout
        return {"layout": layout, "others": others, "copies": copies}
    if node._op.name == "astype":
        return {"dtype": np.float64}  # checked in float64 like everything else
    return dict(node.params)


def check_graph(
    t: Tensor,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int = 0,
) -> GraphCheckReport:
    """Check the backward of every node in the graph behind ``t`` by finite differences.

    For each recorded node, in forward order: its rule's forward is re-run on
    float64 copies of the node's actual inputs, a random cotangent ``u`` is
    pulled back through the rule's VJP, and for each input that needs a
    gradient ``<VJP(u), v>`` is compared with the central difference
    ``<u, (f(x + eps v) - f(x - eps v)) / (2 eps)>`` along a random ``v``.

    Raises :class:`GraphCheckError` naming the first node whose VJP is wrong
    (its op, label, input and both numbers). Returns a report otherwise.

    >>> loss = model(x).sum()
    >>> cr.check_graph(loss)        # before backward(), which frees the graph
    <GraphCheckReport: 7 nodes checked, 0 skipped>
    """
    from .teach._graph import value_of, walk  # the views' adapter to the graph
    from .teach.ledger import node_names

    order = walk([t], what="check_graph")
    names = node_names(order)
    rng = np.random.default_rng(seed)
    report = GraphCheckReport()
    for node in order:
        if node._op is None or not node._requires_grad:
            continue
        label = names[id(node)]
        if node._ctx is _RELEASED:
            raise RuntimeError(
                "check_graph: the graph was freed by backward(); run check_graph before "
                "backward(), or call backward(retain_graph=True)"
            )
        rule: Rule = node._op
        if not rule.has_vjp:
            report.skipped.append((label, "no VJP"))
            continue
        params = _params(node)
        needs = node._needs
        x64 = [a.astype(np.float64) if a.dtype.kind in "fc" else a
               for a in (value_of(p, "check_graph") for p in node._parents)]

        def f(arrays: list, rule: Rule = rule, params: dict = params) -> np.ndarray:
            with np.errstate(all="ignore"):
                return np.asarray(rule.forward(*arrays, **params)[0], dtype=np.float64)

        try:
            with np.errstate(all="ignore"):
                out, ctx = rule.forward(*x64, **params)
                out = np.asarray(out, dtype=np.float64)
                u = rng.standard_normal(out.shape)
                pgs = rule.vjp(u, out, ctx, needs, NUMPY_NS, *x64)
        except Exception as exc:  # an op whose settings cannot be recovered
            report.skipped.append((label, f"{type(exc).__name__}: {exc}"))
            continue
        for i, need in enumerate(needs):
            if not need or x64[i].dtype.kind not in "fc":
                continue
            v = rng.standard_normal(x64[i].shape)
            plus = list(x64)
            minus = list(x64)
            plus[i] = x64[i] + eps * v
            minus[i] = x64[i] - eps * v
            numeric = float(np.sum(u * (f(plus) - f(minus))) / (2 * eps))
            pg = pgs[i] if i < len(pgs) else None
            if pg is None:
                analytic = 0.0
            else:
                pg = np.asarray(pg, dtype=np.float64)
                if pg.shape != x64[i].shape:
                    raise GraphCheckError(
                        f"check_graph: node {label} ('{rule.name}'): its backward returned a "
                        f"gradient of shape {pg.shape} for input {i} of shape {x64[i].shape}"
                    )
                analytic = float(np.sum(pg * v))
            if not np.isfinite(numeric):
                continue  # at a singularity (log at 0, ...): nothing to compare
            if abs(analytic - numeric) > atol + rtol * abs(numeric):
                where = f"\nThe node was created at:\n{node._meta}" if node._meta else ""
                parent = names[id(node._parents[i])]
                raise GraphCheckError(
                    f"check_graph: the backward of node {label} ('{rule.name}') is wrong for "
                    f"input {i} ({parent}, shape {x64[i].shape}): along a random direction "
                    f"the VJP gives {analytic:.6g} but finite differences give {numeric:.6g} "
                    f"(eps={eps}, atol={atol}, rtol={rtol}). Nodes before it in forward "
                    f"order passed: {', '.join(report.checked) or 'none'}.{where}"
                )
        report.checked.append(label)
    return report
