"""The engine: ``Tensor``, grad mode, and the backward walk.

A :class:`Tensor` is a NumPy array plus its place in the computation graph:
the rule that produced it (``_op``), the tensors it was computed from
(``_parents``, a tuple, so the order is deterministic) and whatever the rule
kept for the backward pass (``_ctx``).

The backward pass (:func:`run_backward`) is the chain rule of the notes,
written as one loop:

* visit the nodes in reverse topological order: every node records a creation
  stamp larger than its parents', and the walk always takes the pending node
  with the largest stamp (Chainer's generation numbers), using a heap instead
  of recursion, so a chain of a million ops backpropagates and the order is
  deterministic;
* keep a *gradient table* mapping each node to dL/dnode, the **backpropagated
  gradient**; entries are popped as the walk reaches them, so memory is freed
  early;
* for each node, its rule's VJP multiplies the backpropagated gradient by the
  **local gradient** for each parent; the products from all successors of a
  parent are added in the table: the **sum over successors**.

Everything array-specific lives in the rules (``ops.py``); this file only walks.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Tensor",
    "tensor",
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "is_grad_enabled",
    "detect_anomaly",
    "keep_values",
    "is_keeping_values",
    "run_backward",
    "GraphReleasedError",
    "AnomalyError",
    "RemovableHandle",
]


# --------------------------------------------------------------------------
# Grad mode (thread-local, as in PyTorch)
# --------------------------------------------------------------------------


class _Mode(threading.local):
    def __init__(self) -> None:
        self.grad = True
        self.anomaly = False
        # cr.compile's recorder (compile.py) while it captures or checks a
        # step: told of every op, backward() call, optimizer step, random
        # draw and module call (see compile.py for the protocol); else None
        self.tracer: Any = None
        # inside cr.keep_values(): graphs are recorded for a view that reads
        # every node's value afterwards (cr.explain, the MLP view)
        self.keep = False


_mode = _Mode()


def is_grad_enabled() -> bool:
    """True when operations are recorded for the backward pass (this thread)."""
    return _mode.grad


class set_grad_enabled:
    """Context manager / decorator that switches recording on or off.

    Grad mode is thread-local: switching it in one thread does not affect
    another.
    """

    def __init__(self, mode: bool) -> None:
        self._on = bool(mode)
        self._prev: list[bool] = []

    def __enter__(self) -> None:
        self._prev.append(_mode.grad)
        _mode.grad = self._on

    def __exit__(self, *exc: object) -> None:
        _mode.grad = self._prev.pop()

    def __call__(self, fn: Callable) -> Callable:
        import functools

        on = self._on

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with set_grad_enabled(on):  # a fresh manager per call: re-entrant, thread-safe
                return fn(*args, **kwargs)

        return wrapper


class no_grad(set_grad_enabled):
    """Record nothing inside the block: results have ``requires_grad=False``.

    >>> with no_grad():
    ...     y = x * 2          # y is a plain value, no graph is kept
    """

    def __init__(self) -> None:
        super().__init__(False)



class enable_grad(set_grad_enabled):
    """Turn recording back on inside a ``no_grad`` block."""

    def __init__(self) -> None:
        super().__init__(True)



class keep_values:
    """Record graphs whose every node keeps its value, for the views that show them.

    ``cr.explain``, the MLP view, ``chainrule explain`` and the playground
    read each node's value (z^l, a^l) after the forward pass has moved on.
    Record the forward pass inside this block and they can. Models take it as
    a request to show every quantity of the notes: ``nn.Sequential`` keeps a
    Linear and the ReLU after it as two nodes (z^l, then a^l) instead of the
    fused ``linear_relu`` it uses for training, which never keeps z^l.
    Thread-local, re-entrant; usable as a decorator.

    >>> with cr.keep_values():
    ...     loss = loss_fn(model(x), y)
    >>> print(cr.explain(loss, model=model))     # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._prev: list[bool] = []

    def __enter__(self) -> keep_values:
        self._prev.append(_mode.keep)
        _mode.keep = True
        return self

    def __exit__(self, *exc: object) -> None:
        _mode.keep = self._prev.pop()

    def __call__(self, fn: Callable) -> Callable:
        import functools

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with keep_values():
                return fn(*args, **kwargs)

        return wrapper


def is_keeping_values() -> bool:
    """True inside :class:`keep_values` (this thread)."""
    return _mode.keep


class AnomalyError(FloatingPointError):
    """Raised by :class:`detect_anomaly` at the first non-finite value."""


class detect_anomaly:
    """Find where a NaN or Inf comes from.

    Inside the block every recorded op remembers the line of user code that
    created it, and the first op whose forward output or backward gradient is
    not finite raises :class:`AnomalyError` naming the op, summarising its
    inputs and pointing at that line::

        with cr.detect_anomaly():
            loss = model(x).log().mean()
            loss.backward()

    It slows every op down (a finiteness check and a stack capture), so use it
    to debug, not to train.
    """

    def __init__(self, check_forward: bool = True) -> None:
        self.check_forward = check_forward
        self._prev: list[bool] = []

    def __enter__(self) -> detect_anomaly:
        self._prev.append(_mode.anomaly)
        _mode.anomaly = True
        # Every op's output is checked here, with the op and the source line;
        # NumPy's own RuntimeWarning ("divide by zero in log") would come first
        # and, where warnings are errors, hide that better report.
        err = np.errstate(divide="ignore", invalid="ignore", over="ignore")
        err.__enter__()
        self._err = getattr(self, "_err", [])
        self._err.append(err)
        return self

    def __exit__(self, *exc: object) -> None:
        self._err.pop().__exit__(None, None, None)
        _mode.anomaly = self._prev.pop()


def _user_frame() -> str:
    """The innermost stack frame outside chainrule's own source files."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for frame in reversed(traceback.extract_stack()[:-1]):
        if not os.path.abspath(frame.filename).startswith(here):
            return (
                f'File "{frame.filename}", line {frame.lineno}, in {frame.name}\n'
                f"    {frame.line}"
            )
    return "<unknown>"


def _summary(a: Any) -> str:
    a = np.asarray(a)
    if a.size == 0:
        return f"shape {a.shape} (empty)"
    if not np.issubdtype(a.dtype, np.number):
        return f"shape {a.shape} {a.dtype}"
    fin = np.isfinite(a)
    if fin.all():
        return f"shape {a.shape} {a.dtype}, min {a.min():.4g}, max {a.max():.4g}"
    return (
        f"shape {a.shape} {a.dtype}, {int(np.isnan(a).sum())} NaN, "
        f"{int(np.isinf(a).sum())} Inf of {a.size}"
    )


class GraphReleasedError(RuntimeError):
    """backward() reached a node whose saved values an earlier backward freed."""


# --------------------------------------------------------------------------
# Tensor
# --------------------------------------------------------------------------

_RELEASED = object()  # marks a node whose saved values were freed by backward()

# One clock ticks for every recorded node and every in-place change.
# A node's ``_stamp`` is its tick at creation: unique, and larger than the
# stamps of its parents, so the backward walk can order nodes by it alone
# (Chainer's generation numbers, without a separate sort). ``_CLOCK[0]`` is
# the tick of the latest in-place change; a parent changed after the node was
# recorded has ``_version > node._stamp``.
_tick = itertools.count(1).__next__
_CLOCK = [0]
_new = object.__new__


def _bump(t: Tensor) -> None:
    _CLOCK[0] = t._version = _tick()

_FLOAT_KINDS = "fc"


def _as_array(data: Any, dtype: Any = None) -> np.ndarray:
    """Convert user data to an ndarray with chainrule's dtype rules.

    Python floats (and lists of them) become float32; ndarrays keep their
    dtype; NumPy scalars keep theirs; ints stay integer.
    """
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.array(data, dtype=dtype)
    if isinstance(data, np.ndarray):
        return data.copy()
    if isinstance(data, np.generic):
        return np.array(data)
    try:
        arr = np.array(data)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"tensor: cannot make an array from this data: {exc}") from exc
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return arr


class Tensor:
    """An n-dimensional array that records the operations applied to it.

    Parameters
    ----------
    data : array_like
        The value. Python floats become float32, ndarrays keep their dtype
        (the array is copied).
    requires_grad : bool
        Record operations on this tensor so that ``backward()`` can compute
        d(output)/d(this). Only floating-point tensors can require grad.
    name : str, optional
        A label used by drawings (``cr.viz.graph``) and traces (``cr.explain``).

    Examples
    --------
    >>> x = cr.tensor([1.0, 2.0], requires_grad=True)
    >>> y = (x * x).sum()
    >>> y.backward()
    >>> x.grad
    tensor([2., 4.], dtype=float32)
    """

    # The per-op hot path sets only these slots; everything a node rarely
    # needs (a stored gradient, hooks, a name) lives in the instance dict,
    # created on first use, with the class attributes below as defaults.
    __slots__ = (
        "data",
        "_requires_grad",
        "_op",
        "_parents",
        "_ctx",
        "_needs",
        "_stamp",
        "__dict__",
        "__weakref__",
    )
    _grad: Tensor | None = None
    _version = 0  # the clock value of the last in-place change (0: never changed)
    _retains = False
    _hooks: list[Callable] | None = None
    _post_hooks: list[Callable] | None = None  # run after .grad is accumulated (leaves)
    _meta: Any = None
    name: str | None = None

    # so that ``ndarray * Tensor`` calls Tensor.__rmul__ and returns a Tensor
    __array_priority__ = 1000.0

    def __init__(
        self,
        data: Any,
        requires_grad: bool = False,
        dtype: Any = None,
        name: str | None = None,
    ) -> None:
        self.data = _as_array(data, dtype)
        self._op = None
        self._parents: tuple[Tensor, ...] = ()
        self._ctx = None
        if name is not None:
            self.name = name
        self._requires_grad = False
        if requires_grad:
            self.requires_grad = True

    # ----- graph construction (used by ops.apply) -------------------------

    @classmethod
    def _node(cls, data: np.ndarray, op: Any, parents: tuple, ctx: Any, needs: tuple) -> Tensor:
        """Make a non-leaf tensor; the per-op hot path, so no checks here.

        ``needs[i]``: whether parent i requires grad (the VJP skips the others).
        ``_stamp`` remembers the in-place clock, to detect later changes to
        the values this op saved for backward.
        """
        t = _new(cls)
        t.data = data
        t._requires_grad = True
        t._op = op
        t._parents = parents
        t._ctx = ctx
        t._needs = needs
        t._stamp = _tick()
        return t

    @classmethod
    def _const(cls, data: np.ndarray) -> Tensor:
        """Wrap an array without copying it (results of unrecorded ops)."""
        t = _new(cls)
        t.data = data
        t._requires_grad = False
        t._op = None
        t._parents = ()
        t._ctx = None
        return t

    # ----- properties -----------------------------------------------------

    @property
    def requires_grad(self) -> bool:
        """Whether operations on this tensor are recorded for backward."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        flag = bool(flag)
        if flag and self.data.dtype.kind not in _FLOAT_KINDS:
            raise TypeError(
                f"requires_grad: only floating-point tensors can require gradients, "
                f"this one has dtype {self.data.dtype}; convert first, e.g. "
                f"cr.tensor(values, dtype=np.float32, requires_grad=True)"
            )
        if not flag and self._op is not None:
            raise RuntimeError(
                "requires_grad: this tensor was computed by a recorded op "
                f"({self._op.name}); use .detach() to get a tensor outside the graph"
            )
        self._requires_grad = flag

    def requires_grad_(self, flag: bool = True) -> Tensor:
        """Set ``requires_grad`` in place and return ``self`` (PyTorch style)."""
        self.requires_grad = flag
        return self

    @property
    def grad(self) -> Tensor | None:
        """dL/dself after ``backward()``; kept for leaves and ``retain_grad()`` tensors."""
        if self._grad is None and self._op is not None and not self._retains:
            warnings.warn(
                f"reading .grad of a non-leaf tensor (computed by {self._op.name}): "
                "backward() keeps gradients only for leaves (tensors you created "
                "with requires_grad=True). To read the backpropagated gradient of "
                "an intermediate value such as z^l (that is delta^l), call "
                ".retain_grad() on it before backward().",
                UserWarning,
                stacklevel=2,
            )
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is None:
            self._grad = None
            return
        value = value if isinstance(value, Tensor) else Tensor(value, dtype=self.data.dtype)
        if value.shape != self.shape:
            raise ValueError(
                f"grad: assigned gradient has shape {value.shape}, tensor has shape {self.shape}"
            )
        self._grad = value

    @property
    def grad_fn(self) -> GradFn | None:
        """The op that produced this tensor (``None`` for leaves)."""
        return None if self._op is None else GradFn(self)

    @property
    def is_leaf(self) -> bool:
        """True for tensors not computed by a recorded op (PyTorch's definition)."""
        return self._op is None

    @property
    def op(self) -> str | None:
        """Name of the op that produced this tensor, or None for a leaf."""
        return None if self._op is None else self._op.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    # ----- conversion -----------------------------------------------------

    def numpy(self) -> np.ndarray:
        """The underlying array (shared, not copied), like ``Tensor.numpy()`` in PyTorch."""
        return self.data

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if dtype is None or dtype == self.data.dtype:
            return self.data.copy() if copy else self.data
        return self.data.astype(dtype)

    def item(self) -> Any:
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(
                f"item: only one-element tensors can be converted to a Python "
                f"number, this one has shape {self.shape}"
            )
        return self.data.item()

    def tolist(self) -> Any:
        return self.data.tolist()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise ValueError(
                f"the truth value of a tensor with shape {self.shape} is ambiguous; "
                "use .any() or .all()"
            )
        return bool(self.data.item())

    def any(self) -> bool:
        return bool(self.data.any())

    def all(self) -> bool:
        return bool(self.data.all())

    def named(self, name: str) -> Tensor:
        """Give this tensor a name (shown by ``cr.explain`` and drawings); returns it.

        Same as ``t.name = name``, in a form that fits inside an expression.

        >>> b = cr.tensor(1.0, requires_grad=True, name="b")
        >>> x = (b * b).named("x")
        >>> x.name
        'x'
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"named: expected a non-empty str, got {name!r}")
        self.name = name
        return self

    def detach(self) -> Tensor:
        """The same values as a new leaf outside the graph (shares memory)."""
        return Tensor._const(self.data)

    def clone(self) -> Tensor:
        """A copy that stays in the graph (gradients flow back to ``self``)."""
        return _ops.clone(self)

    def copy(self) -> Tensor:
        return _ops.clone(self)

    def astype(self, dtype: Any) -> Tensor:
        """Cast to ``dtype``; differentiable between floating dtypes."""
        return _ops.astype(self, dtype)

    def float(self) -> Tensor:
        return _ops.astype(self, np.float32)

    def double(self) -> Tensor:
        return _ops.astype(self, np.float64)

    def __repr__(self) -> str:
        body = np.array2string(
            self.data, separator=", ", prefix="tensor(", threshold=200, precision=4
        )
        extra = [f"dtype={self.data.dtype}"]
        if self._op is not None:
            extra.append(f"grad_fn=<{self._op.name}>")
        elif self._requires_grad:
            extra.append("requires_grad=True")
        if self.name:
            extra.append(f"name={self.name!r}")
        return f"tensor({body}, {', '.join(extra)})"

    __hash__ = object.__hash__  # __eq__ is elementwise, so hash by identity

    # ----- reverse mode ---------------------------------------------------

    def backward(
        self,
        grad: Any = None,
        retain_graph: bool | None = None,
        create_graph: bool = False,
    ) -> None:
        """Compute d(self)/d(leaf) for every leaf that requires grad.

        Gradients are *added* to each leaf's ``.grad`` (call ``zero_grad`` or set
        ``.grad = None`` between steps). ``grad`` is the seed dL/dself; it may be
        omitted only for one-element outputs, where it is 1.

        The graph is freed afterwards unless ``retain_graph=True``.
        ``create_graph=True`` records the backward pass itself so the gradients
        can be differentiated again (it implies ``retain_graph``).
        """
        if retain_graph is None:
            retain_graph = create_graph
        run_backward((self,), (grad,), retain_graph, create_graph)

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this non-leaf after backward (e.g. z^l, to read delta^l)."""
        if not self._requires_grad:
            raise RuntimeError(
                "retain_grad: this tensor does not require grad, so no gradient "
                "will ever reach it"
            )
        if self._op is not None:
            self._retains = True
        return self

    @property
    def retains_grad(self) -> bool:
        return self._retains

    def register_hook(self, fn: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Call ``fn(grad)`` when dL/dself is computed; a returned tensor replaces it.

        Returns a handle: ``handle.remove()`` (or ``handle()``) removes the hook.
        """
        if not self._requires_grad:
            raise RuntimeError(
                "register_hook: this tensor does not require grad, so the hook would never run"
            )
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(fn)
        return RemovableHandle(self._hooks, fn)

    def register_post_accumulate_grad_hook(
        self, fn: Callable[[Tensor], None]
    ) -> RemovableHandle:
        """Call ``fn(self)`` each time ``backward()`` has added into ``self.grad``.

        Only for leaves (PyTorch's rule): the hook runs right after the
        accumulation, while the rest of the backward walk is still to come, so
        it can start work on a finished gradient early (data-parallel training
        starts its all-reduce there). Its return value is ignored. Not called
        by ``cr.grad``/``cr.vjp``, which do not accumulate into ``.grad``.
        """
        if not self._requires_grad or self._op is not None:
            raise RuntimeError(
                "register_post_accumulate_grad_hook: only leaf tensors that require "
                "grad accumulate into .grad, so the hook would never run on this one"
            )
        if self._post_hooks is None:
            self._post_hooks = []
        self._post_hooks.append(fn)
        return RemovableHandle(self._post_hooks, fn)

    # ----- in-place updates (outside the graph only) ----------------------

    def _check_inplace(self, what: str) -> None:
        if _mode.grad and self._requires_grad:
            kind = "a leaf that requires grad" if self._op is None else "a recorded result"
            raise RuntimeError(
                f"{what}: in-place change of {kind} while gradients are being recorded; "
                "do it inside `with cr.no_grad():` (as optimizers do), or use the "
                "out-of-place form"
            )

    def _inplace(self, what: str, value: np.ndarray) -> Tensor:
        self._check_inplace(what)
        self.data[...] = value
        _bump(self)
        return self

    def add_(self, other: Any, alpha: float = 1.0) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        self._check_inplace("add_")
        if alpha == 1.0:
            np.add(self.data, o, out=self.data, casting="same_kind")
        else:
            self.data += alpha * np.asarray(o, dtype=self.data.dtype)
        _bump(self)
        return self

    def sub_(self, other: Any, alpha: float = 1.0) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        return self.add_(-np.asarray(o, dtype=self.data.dtype), alpha)

    def mul_(self, other: Any) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        self._check_inplace("mul_")
        np.multiply(self.data, o, out=self.data, casting="same_kind")
        _bump(self)
        return self

    def zero_(self) -> Tensor:
        self._check_inplace("zero_")
        self.data.fill(0)
        _bump(self)
        return self

    def fill_(self, value: float) -> Tensor:
        self._check_inplace("fill_")
        self.data.fill(value)
        _bump(self)
        return self

    def copy_(self, src: Any) -> Tensor:
        s = src.data if isinstance(src, Tensor) else np.asarray(src)
        if s.shape != self.shape and np.broadcast_shapes(s.shape, self.shape) != self.shape:
            raise ValueError(
                f"copy_: source shape {s.shape} does not fit tensor shape {self.shape}"
            )
        return self._inplace("copy_", s)

    def __setitem__(self, index: Any, value: Any) -> None:
        self._check_inplace("__setitem__")
        self.data[_ops._raw_index(index)] = value.data if isinstance(value, Tensor) else value
        _bump(self)

    # ----- operators: one-line calls into ops.py --------------------------

    def __add__(self, other: Any) -> Tensor:
        return _ops.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _ops.add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _ops.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _ops.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _ops.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _ops.mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _ops.div(other, self)

    def __pow__(self, other: Any) -> Tensor:
        return _ops.pow(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _ops.pow(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return _ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _ops.matmul(other, self)

    def __neg__(self) -> Tensor:
        return _ops.neg(self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return _ops.abs(self)

    def __getitem__(self, index: Any) -> Tensor:
        return _ops.getitem(self, index)

    def __iter__(self):  # noqa: ANN204
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        for i in range(self.data.shape[0]):
            yield self[i]

    # comparisons give boolean tensors outside the graph
    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return Tensor._const(self.data == _ops.value(other))

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return Tensor._const(self.data != _ops.value(other))

    def __lt__(self, other: Any) -> Tensor:
        return Tensor._const(self.data < _ops.value(other))

    def __le__(self, other: Any) -> Tensor:
        return Tensor._const(self.data <= _ops.value(other))

    def __gt__(self, other: Any) -> Tensor:
        return Tensor._const(self.data > _ops.value(other))

    def __ge__(self, other: Any) -> Tensor:
        return Tensor._const(self.data >= _ops.value(other))

    # ----- methods: one-line calls into ops.py ----------------------------

    def exp(self) -> Tensor:
        return _ops.exp(self)

    def log(self) -> Tensor:
        return _ops.log(self)

    def sqrt(self) -> Tensor:
        return _ops.sqrt(self)

    def tanh(self) -> Tensor:
        return _ops.tanh(self)

    def sigmoid(self) -> Tensor:
        return _ops.sigmoid(self)

    def relu(self) -> Tensor:
        return _ops.relu(self)

    def leaky_relu(self, negative_slope: float = 0.01) -> Tensor:
        return _ops.leaky_relu(self, negative_slope)

    def softplus(self) -> Tensor:
        return _ops.softplus(self)

    def sin(self) -> Tensor:
        return _ops.sin(self)

    def cos(self) -> Tensor:
        return _ops.cos(self)

    def abs(self) -> Tensor:
        return _ops.abs(self)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops.sum(self, axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops.mean(self, axis, keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops.max(self, axis, keepdims)

    def min(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops.min(self, axis, keepdims)

    def var(self, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Tensor:
        return _ops.var(self, axis, keepdims, ddof)

    def std(self, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Tensor:
        return _ops.sqrt(_ops.var(self, axis, keepdims, ddof))

    def logsumexp(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops.logsumexp(self, axis, keepdims)

    def softmax(self, axis: int = -1) -> Tensor:
        return _ops.softmax(self, axis)

    def log_softmax(self, axis: int = -1) -> Tensor:
        return _ops.log_softmax(self, axis)

    def clip(self, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
        return _ops.clip(self, min, max)

    clamp = clip

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.reshape(self, shape)

    def view(self, *shape: Any) -> Tensor:
        return self.reshape(*shape)

    def flatten(self, start_axis: int = 0) -> Tensor:
        return _ops.flatten(self, start_axis)

    def transpose(self, *axes: Any) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops.transpose(self, axes or None)

    @property
    def T(self) -> Tensor:  # noqa: N802
        return _ops.transpose(self, None)

    def swapaxes(self, a: int, b: int) -> Tensor:
        return _ops.swapaxes(self, a, b)

    def squeeze(self, axis: Any = None) -> Tensor:
        return _ops.squeeze(self, axis)

    def expand_dims(self, axis: Any) -> Tensor:
        return _ops.expand_dims(self, axis)

    unsqueeze = expand_dims

    def broadcast_to(self, shape: Sequence[int]) -> Tensor:
        return _ops.broadcast_to(self, shape)

    def matmul(self, other: Any) -> Tensor:
        return _ops.matmul(self, other)

    def argmax(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Indices of the maxima (not differentiable)."""
        return Tensor._const(np.argmax(self.data, axis=axis, keepdims=keepdims))

    def argmin(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Indices of the minima (not differentiable)."""
        return Tensor._const(np.argmin(self.data, axis=axis, keepdims=keepdims))


class RemovableHandle:
    """What ``register_*hook`` returns: ``handle.remove()`` takes the hook out.

    Calling the handle does the same (the older spelling). Removing twice is
    harmless.
    """

    __slots__ = ("_hooks", "_fn")

    def __init__(self, hooks: list, fn: Callable) -> None:
        self._hooks = hooks
        self._fn = fn

    def remove(self) -> None:
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)

    __call__ = remove

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class GradFn:
    """A read-only view of the op that produced a tensor (``t.grad_fn``)."""

    __slots__ = ("_t",)

    def __init__(self, t: Tensor) -> None:
        self._t = t

    @property
    def name(self) -> str:
        return self._t._op.name

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return self._t._parents

    @property
    def next_functions(self) -> tuple[GradFn | None, ...]:
        return tuple(p.grad_fn for p in self._t._parents)

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.name
        return isinstance(other, GradFn) and other._t is self._t

    def __hash__(self) -> int:
        return hash(id(self._t))


def tensor(
    data: Any, dtype: Any = None, requires_grad: bool = False, name: str | None = None
) -> Tensor:
    """Make a leaf tensor from array-like ``data`` (copied).

    Python floats become float32; ndarrays keep their dtype (so float64 data
    stays float64 end to end). Only floating tensors can require grad.

    >>> w = cr.tensor([[1.0, 2.0]], requires_grad=True)
    >>> w.dtype
    dtype('float32')
    """
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, name=name)


# --------------------------------------------------------------------------
# The backward walk
# --------------------------------------------------------------------------


def _released_error(node: Tensor) -> GraphReleasedError:
    return GraphReleasedError(
        f"backward: the graph through '{node._op.name}' was already freed by an earlier "
        "backward() call (the values it saved for the backward pass are gone). "
        "Either call backward(retain_graph=True) the first time if you need to "
        "backpropagate through the same graph twice, or recompute the forward pass."
    )


def _check_versions(node: Tensor) -> None:
    for p in node._parents:
        if p._version > node._stamp:
            what = f"'{p.name}'" if p.name else f"its input of shape {p.shape}"
            raise RuntimeError(
                f"backward: '{node._op.name}' saved {what} for the backward pass, but it "
                "was modified in place after the op was recorded, so the gradient would "
                "be wrong. Modify a copy (t.clone()) instead, or make the change before "
                "the forward pass (optimizer.step() belongs after backward())."
            )
    if node._version > node._stamp:
        raise RuntimeError(
            f"backward: the output of '{node._op.name}' was modified in place after it was "
            "recorded, so the gradient would be wrong; modify a copy (t.clone()) instead."
        )


def _seed(root: Tensor, grad: Any) -> np.ndarray:
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"backward: the output has shape {root.shape}; without an argument "
                "backward() seeds dL/dL = 1, which only makes sense for a scalar "
                "(one-element) output. Reduce it first (y.sum().backward()) or pass "
                "a seed of the same shape: y.backward(cr.ones_like(y))."
            )
        return np.ones(root.data.shape, root.data.dtype)
    g = np.array(grad.data if isinstance(grad, Tensor) else grad, dtype=root.data.dtype)
    if g.shape != root.shape:
        raise ValueError(
            f"backward: the seed has shape {g.shape} but the output has shape "
            f"{root.shape}; they must match exactly"
        )
    return g


def run_backward(
    roots: Sequence[Tensor],
    seeds: Sequence[Any],
    retain_graph: bool | None = None,
    create_graph: bool = False,
    inputs: Sequence[Tensor] | None = None,
    observer: Any = None,
) -> list[Any] | None:
    """The chain rule over the recorded graph, in reverse topological order.

    ``roots``/``seeds``: the outputs and dL/doutput for each (``None`` = 1 for a
    scalar). With ``inputs=None`` gradients are accumulated into ``.grad`` of
    leaves (``Tensor.backward``); otherwise the gradients w.r.t. ``inputs``
    are returned and no ``.grad`` is touched (``cr.grad``/``cr.vjp``).
    ``observer`` (used by ``cr.explain``) sees the walk: ``observer.visit(node,
    g)`` when the walk reaches a node with its backpropagated gradient ``g``
    (hooks applied), then ``observer.term(node, slot, parent, contribution)``
    for every operand slot of that node whose parent gets a gradient: the
    term dL/dnode x dnode/dparent of the parent's sum over successors. ``retain_graph`` defaults to
    ``create_graph``, since a recorded backward pass refers to the graph.
    """
    if retain_graph is None:
        retain_graph = create_graph
    tracer = _mode.tracer
    if tracer is not None and tracer.backward(roots, seeds, retain_graph, create_graph,
                                              inputs, observer):
        return None  # cr.compile ran its recorded backward program instead
    for r in roots:
        if not r._requires_grad:
            raise RuntimeError(
                "backward: this tensor does not require grad: none of the values it "
                "was computed from had requires_grad=True (or it was computed under "
                "no_grad()), so there is no graph to backpropagate through"
            )
    # the array namespace handed to the VJPs (module attributes: an import
    # statement here would cost more than a small op's whole backward step)
    xp = _ops.TENSOR_NS if create_graph else _ops.NUMPY_NS

    table: dict[Tensor, Any] = {}  # the gradient table: node -> dL/dnode
    owned: set[Tensor] = set()  # nodes whose table entry we may update in place
    for r, s in zip(roots, seeds):
        g = _seed(r, s)
        if create_graph:
            g = Tensor._const(g)
        if r in table:
            table[r] = table[r] + g
        else:
            table[r] = g
            owned.add(r)

    wanted = None if inputs is None else {t: i for i, t in enumerate(inputs)}
    results: list[Any] = [None] * (0 if inputs is None else len(inputs))
    anomaly = _mode.anomaly
    # Rules with a ``vjp_inplace`` may write their result into g when the
    # table owns it; not while an observer or detect_anomaly reads g after
    # the VJP, nor when recording (g is then a Tensor of the new graph).
    reuse = not create_graph and observer is None and not anomaly

    # The walk order: always take the pending node recorded last (largest
    # ``_stamp``). Every successor of a node was recorded after it, so when a
    # node comes up, all its contributions are already in the table; this is
    # a topological order found without a separate pass over the graph.
    # Leaves (no stamp, no parents) get keys after every node, in arrival order.
    heap: list[tuple[int, Tensor]] = []
    leaf_key = itertools.count(1).__next__
    for r in table:
        heapq.heappush(heap, (leaf_key() if r._op is None else -r._stamp, r))
    heappush = heapq.heappush
    heappop = heapq.heappop

    prev_mode = _mode.grad
    _mode.grad = create_graph  # record the backward pass only when asked to
    # A derivative may be infinite where the function is finite (sqrt at 0):
    # return inf silently as PyTorch does; detect_anomaly reports it if asked.
    errstate = np.errstate(divide="ignore", invalid="ignore", over="ignore")
    errstate.__enter__()
    try:
        while heap:
            node = heappop(heap)[1]
            g = table.pop(node)
            mine = node in owned
            owned.discard(node)
            if node._hooks:
                for hook in list(node._hooks):
                    new = hook(g if create_graph else Tensor._const(g))
                    if new is not None:
                        g = new if create_graph else _ops.value(new)
                mine = False  # a hook may have kept the tensor it was shown
            if anomaly:
                _check_finite_grad(node, g)
            if observer is not None:
                observer.visit(node, g)

            op = node._op
            if wanted is not None:
                if node in wanted:
                    results[wanted[node]] = g
                    mine = False
            elif op is None or node._retains:
                _store_grad(node, g, mine, create_graph)
                mine = False
                if node._post_hooks:
                    for hook in list(node._post_hooks):
                        hook(node)
            if op is None:
                continue

            # ---- the local step: backpropagated gradient x local gradient ----
            ctx = node._ctx
            if ctx is _RELEASED:
                raise _released_error(node)
            parents = node._parents
            if _CLOCK[0] > node._stamp:  # something changed in place since this op ran
                _check_versions(node)
            needs = node._needs
            if create_graph:
                pgs = op.vjp(g, node, ctx, needs, xp, *parents)
            else:
                out = node.data
                vjp = op.vjp
                if reuse:
                    inplace = mine and op.vjp_inplace is not None  # g is ours alone
                    if not op.uses_out:
                        # Nothing below needs the node itself: let go of it now,
                        # so that if nothing else holds it (an activation inside
                        # a model), its value is freed before the VJP allocates.
                        out = None
                        if not retain_graph:
                            node._ctx = _RELEASED
                            node._parents = ()
                        node = None
                    if op.split is not None:
                        # the VJP's elementwise step, then let go of ctx (a mask)
                        # before the second step allocates its results
                        step, inner = op.split
                        g = step(g, out, ctx, inplace)
                        if node is not None and not retain_graph:
                            node._ctx = _RELEASED
                        ctx = out = None
                        vjp = inner.vjp
                    elif inplace:
                        vjp = op.vjp_inplace  # the rule may write into g
                if len(parents) == 2:
                    pgs = vjp(g, out, ctx, needs, xp, parents[0].data, parents[1].data)
                elif len(parents) == 1:
                    pgs = vjp(g, out, ctx, needs, xp, parents[0].data)
                else:
                    pgs = vjp(g, out, ctx, needs, xp, *[p.data for p in parents])
            if anomaly:
                _check_finite_vjp(node, g, pgs, parents)
            if node is not None and not retain_graph:
                node._ctx = _RELEASED
                node._parents = ()

            # ---- the sum over successors: add into each parent's entry ----
            for slot, (p, pg) in enumerate(zip(parents, pgs)):
                if pg is None or not p._requires_grad:
                    continue
                pg = conform_grad(op, pg, p.data, not create_graph)
                if observer is not None:
                    observer.term(node, slot, p, pg)
                old = table.get(p)
                if old is None:
                    table[p] = pg
                    heappush(heap, (leaf_key() if p._op is None else -p._stamp, p))
                    if not create_graph and pg is not g and pg.base is None:
                        owned.add(p)
                elif p in owned:
                    np.add(old, pg, out=old)
                elif create_graph:
                    table[p] = old + pg
                else:
                    total = old + pg
                    # 0-d operands give a NumPy scalar; keep table entries arrays
                    table[p] = total if type(total) is np.ndarray else np.asarray(total)
                    owned.add(p)
    finally:
        errstate.__exit__(None, None, None)
        _mode.grad = prev_mode
    return results if inputs is not None else None


def conform_grad(op: Any, pg: Any, pd: np.ndarray, arrays: bool = True) -> Any:
    """A VJP's result for a parent with data ``pd``: same shape (else the rule
    is wrong: say which) and same dtype (float32 stays float32 end to end)."""
    if arrays and type(pg) is not np.ndarray:
        pg = np.asarray(pg)  # 0-d results come back as NumPy scalars
    if pg.shape != pd.shape:
        raise RuntimeError(
            f"backward: the VJP of '{op.name}' returned a gradient of shape "
            f"{pg.shape} for an input of shape {pd.shape} (a bug in that rule)"
        )
    dt = pg.dtype
    if dt is not pd.dtype and dt != pd.dtype:  # `is`: the cheap common case
        pg = pg.astype(pd.dtype)
    return pg


def _store_grad(node: Tensor, g: Any, mine: bool, create_graph: bool) -> None:
    """Accumulate dL/dnode into ``node.grad`` (leaves and retain_grad tensors)."""
    old = node._grad
    if create_graph:
        node._grad = g if old is None else old + g
        return
    if old is None:
        node._grad = Tensor._const(g if mine else g.copy())
    elif old.shape == g.shape and old.data.flags.writeable:
        np.add(old.data, g, out=old.data, casting="unsafe")
        _bump(old)
    else:
        node._grad = Tensor._const(old.data + g)


def _check_finite_grad(node: Tensor, g: Any) -> None:
    arr = _ops.value(g)
    if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
        where = node._meta or "(created outside detect_anomaly, no source line recorded)"
        what = node._op.name if node._op is not None else f"leaf {node.name or node.shape}"
        raise AnomalyError(
            f"detect_anomaly: the gradient flowing into '{what}' is not finite "
            f"({_summary(arr)}).\nThe node was created at:\n{where}"
        )


def _check_finite_vjp(node: Tensor, g: Any, pgs: Sequence[Any], parents: Sequence[Tensor]) -> None:
    """Blame the op whose backward turned a finite gradient into a NaN/Inf (sqrt at 0)."""
    for i, (p, pg) in enumerate(zip(parents, pgs)):
        if pg is None or not p._requires_grad:
            continue
        arr = _ops.value(pg)
        if np.issubdtype(np.asarray(arr).dtype, np.inexact) and not np.isfinite(arr).all():
            where = node._meta or "(created outside detect_anomaly, no source line recorded)"
            ins = "\n".join(f"  input {k}: {_summary(q.data)}" for k, q in enumerate(parents))
            raise AnomalyError(
                f"detect_anomaly: the backward of '{node._op.name}' produced a non-finite "
                f"gradient for its input {i} ({_summary(arr)}) from the finite gradient "
                f"{_summary(_ops.value(g))} flowing into it.\nIts inputs:\n{ins}\n"
                f"The op was created at:\n{where}"
            )


def check_forward_anomaly(op_name: str, out: np.ndarray, arrays: Sequence[Any]) -> str:
    """Called by ops.apply under detect_anomaly: check the output, return the source line."""
    where = _user_frame()
    if np.issubdtype(out.dtype, np.inexact) and not np.isfinite(out).all():
        ins = "\n".join(f"  input {i}: {_summary(a)}" for i, a in enumerate(arrays))
        raise AnomalyError(
            f"detect_anomaly: '{op_name}' produced a non-finite output ({_summary(out)}).\n"
            f"Its inputs:\n{ins}\nCreated at:\n{where}"
        )
    return where


from . import ops as _ops  # noqa: E402  (ops needs Tensor, defined above)
