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

import builtins
import functools
import heapq
import itertools
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from . import capture as _capture

if TYPE_CHECKING:
    from types import SimpleNamespace

    from .ops import Rule

__all__ = [
    "Tensor",
    "tensor",
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "is_grad_enabled",
    "detect_anomaly",
    "run_backward",
    "GraphReleasedError",
    "AnomalyError",
    "RemovableHandle",
    "Node",
    "keep_values",
    "set_keep_values",
    "is_keeping_values",
]


# --------------------------------------------------------------------------
# Grad mode (thread-local, as in PyTorch)
# --------------------------------------------------------------------------


class _Mode(threading.local):
    def __init__(self) -> None:
        self.grad = True
        self.anomaly = False
        self.keep = False  # keep_values(): nodes keep every operand and value
        # cr.compile's recorder (compile.py) while it captures a step: the
        # capture points (ops.apply, run_backward, Module.__call__, Tensor(),
        # and every call declared with chainrule.capture.effect) hand it the
        # call; else None
        self.tracer: Any = None


_mode = _Mode()
_capture._mode = _mode  # the effect decorator reads the capture in progress from it
effect = _capture.effect


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



class keep_values:
    """Record the forward pass with every value kept, for the views that show them.

    Outside this block a recorded node keeps only what its backward pass
    needs (saved tensors), so an intermediate value nobody holds is freed as
    soon as the forward moves on. Views that show every node's value
    (``cr.explain``, ``cr.viz.graph``, ``cr.check_graph``, the playground's
    step-through) need them all: record inside this block, and each node
    keeps its output and its operands (constants included) until backward
    frees the graph. Thread-local, like grad mode; ``detect_anomaly`` keeps
    values too.

    >>> with cr.keep_values():
    ...     J = (w * x + b - y) ** 2
    >>> print(cr.explain(J))
    """

    def __init__(self, mode: bool = True) -> None:
        self._on = bool(mode)
        self._prev: list[bool] = []

    def __enter__(self) -> keep_values:
        self._prev.append(_mode.keep)
        _mode.keep = self._on
        return self

    def __exit__(self, *exc: object) -> None:
        _mode.keep = self._prev.pop()

    def __call__(self, fn: Callable) -> Callable:
        import functools

        on = self._on

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with keep_values(on):
                return fn(*args, **kwargs)

        return wrapper


def set_keep_values(mode: bool) -> None:
    """Switch :class:`keep_values` on or off for this thread, outside any block
    (at the top of a teaching notebook: every later graph can be explained)."""
    _mode.keep = bool(mode)


def is_keeping_values() -> bool:
    """True inside :func:`keep_values` (or detect_anomaly) in this thread."""
    return _mode.keep or _mode.anomaly


class enable_grad(set_grad_enabled):
    """Turn recording back on inside a ``no_grad`` block."""

    def __init__(self) -> None:
        super().__init__(True)



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

# One clock ticks for every recorded node and every in-place change. A node's
# ``stamp`` is its tick at creation: unique and larger than the stamps of its
# parents, so the backward walk can order nodes by it alone (Chainer's
# generation numbers, without a separate sort).
#
# Versions belong to memory, not to Tensors (PyTorch's version counter, shared
# by a tensor and its views): ``_VERSIONS[id(base)]`` is the tick of the latest
# in-place change to the memory owned by ``base``. A slice, a reshape or
# ``detach()`` of a tensor has the same base, so a change made through any of
# them is seen. ``_CLOCK[0]`` is the latest such tick: a node recorded after
# it cannot have seen a change, and its check is skipped.
_tick = itertools.count(1).__next__
_CLOCK = [0]
_VERSIONS: dict[int, int] = {}
_VERSION_REFS: dict[int, Any] = {}  # id(base) -> weak reference dropping the entry
_new = object.__new__


def _storage(a: Any) -> Any:
    """The object that owns ``a``'s memory (NumPy keeps ``.base`` pointing at it)."""
    base = getattr(a, "base", None)
    return a if base is None else base


def _forget(key: int, ref: Any) -> None:
    if _VERSION_REFS.get(key) is ref:  # the base was freed: its id may be reused
        del _VERSION_REFS[key]
        _VERSIONS.pop(key, None)


def _bump(t: Any) -> None:
    """Record an in-place change of the memory behind ``t`` (a Tensor or an ndarray)."""
    _bump_key(_storage_key(t.data if isinstance(t, Tensor) else t))


def _storage_key(a: Any) -> int:
    """The key under which ``a``'s memory is versioned (the id of the storage owner,
    as _storage finds it), registered so that the entry goes when that owner does.
    :func:`_bump_key` records a change under it while the caller keeps ``a``."""
    base = getattr(a, "base", None)
    if base is None:
        base = a
    key = id(base)
    if key not in _VERSION_REFS:
        try:
            _VERSION_REFS[key] = weakref.ref(base, functools.partial(_forget, key))
        except TypeError:  # a base that takes no weak references (bytes): keep the entry
            pass
    return key


def _bump_key(key: int) -> None:
    """Record an in-place change of the memory versioned under ``key``."""
    tick = _tick()
    _VERSIONS[key] = tick
    _CLOCK[0] = tick


def _version_of(a: Any) -> int:
    return _VERSIONS.get(id(_storage(a)), 0)


class Node:
    """One recorded op: what the backward pass needs of it (PyTorch's ``grad_fn``).

    An op returns a Tensor holding its value (``.data``) and this node
    (``._node``). The graph is made of nodes, not of values: ``parents[i]`` is
    the node that computed operand ``i``, the leaf Tensor itself for a leaf
    that requires grad, or ``None`` for an operand that does not. So an
    intermediate value nobody holds is freed as soon as the forward pass
    moves on, unless the rule's VJP reads it (saved tensors):

    * ``inputs[i]`` is operand ``i``'s array when the rule saves it (see
      ``ops.Saves``), otherwise a stand-in that knows only its shape and
      dtype (the parent node, the leaf, or a :class:`Meta`);
    * ``out`` is the op's own value when the rule saves it, else ``None``;
    * ``ctx`` is whatever small context the forward kept (axes, a mask);
    * ``params`` are the settings the op was called with (axis, ...).

    Inside :func:`keep_values` (and :class:`detect_anomaly`) a node also keeps
    every operand and its value, for the views that show them (``kept``).
    """

    # The hot path sets these slots; what a node rarely has (a name, hooks,
    # retain_grad, a source line, kept values) lives in the instance dict,
    # made on first use, with the class attributes below as defaults.
    __slots__ = ("op", "parents", "inputs", "out", "ctx", "needs", "stamp", "shape", "dtype",
                 "params", "__dict__", "__weakref__")
    # the slots, for the type checker (annotations alone make no class attribute)
    op: Rule
    parents: tuple[Node | Tensor | None, ...]
    # what the VJP gets for each operand: the kept array, or a stand-in with
    # .shape/.dtype/.ndim (the parent node, the leaf Tensor, a Meta); Tensors
    # throughout under create_graph
    inputs: tuple[Any, ...]
    out: np.ndarray | None
    ctx: Any  # rule-specific; _RELEASED once backward() freed it
    needs: tuple[bool, ...]
    stamp: int
    shape: tuple[int, ...]
    dtype: np.dtype
    params: dict[str, Any]
    name: str | None = None
    meta: Any = None  # detect_anomaly: the source line that created the node
    kept: tuple | None = None  # keep_values: (output, operands as given)
    _hooks: list[Callable] | None = None  # register_hook on the output tensor
    _retain: Any = None  # retain_grad: a weak reference to the output tensor

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def released(self) -> bool:
        """True once a backward pass without ``retain_graph`` has freed what it saved."""
        return self.ctx is _RELEASED

    @property
    def value(self) -> np.ndarray | None:
        """The op's output, where the node kept it (saved for its VJP, or keep_values)."""
        if self.out is not None:
            return self.out
        return None if self.kept is None else self.kept[0]

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<node {self.op.name}{label} shape={self.shape}>"


class Meta:
    """Shape and dtype of an operand whose value a VJP does not read (not saved)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, a: Any) -> None:
        self.shape = a.shape
        self.dtype = a.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __repr__(self) -> str:
        return f"<not saved: shape={self.shape} dtype={self.dtype}>"


_FLOAT_KINDS = "fc"


#: Bytes the arrays cr.compile's kernels keep, and parameters, are aligned to:
#: a cache line, as PyTorch aligns its CPU tensors (see aligned_empty)
ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on an ``ALIGN``-byte
    boundary: a view of a slightly larger byte buffer (its ``.base``); for a
    dtype holding Python objects, NumPy's own array.

    NumPy aligns a new array to 16 bytes only, so where one lands is chance:
    an array off a cache-line boundary makes every 64-byte vector load or
    store of an elementwise loop, an ``axpy`` or a product's output touch two
    lines. On the bench's 784-256-256-10 step at B = 32 (AVX-512) the compiled
    step's own NumPy calls took 364 us with every array aligned, against 380
    us with its kept arrays 16 bytes off (389 us with the parameters off too);
    under memory pressure from other tenants of the host the gap grew to 25%.
    """
    dtype = np.dtype(dtype)
    if dtype.hasobject:  # references cannot be laid over raw bytes: NumPy's own array
        return np.empty(shape, dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-ordered copy of ``a`` made by :func:`aligned_empty`."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


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

    # The per-op hot path sets only these slots: the value, whether it
    # requires grad, and the node of the op that computed it (None for a
    # leaf). Everything a tensor rarely needs (a stored gradient, hooks, a
    # name) lives in the instance dict, created on first use, with the class
    # attributes below as defaults.
    __slots__ = ("data", "_requires_grad", "_node", "__dict__", "__weakref__")
    data: np.ndarray
    _requires_grad: bool
    _node: Node | None
    _grad: Tensor | None = None
    _hooks: list[Callable] | None = None  # leaves; a non-leaf keeps them on its node
    _post_hooks: list[Callable] | None = None  # run after .grad is accumulated (leaves)
    _name: str | None = None

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
        self._node = None
        if name is not None:
            self._name = name
        self._requires_grad = False
        if requires_grad:
            self.requires_grad = True
        if _mode.tracer is not None:  # cr.compile: a tensor made from the step's values
            _mode.tracer.made(self, data, dtype)

    # ----- graph construction (used by ops.apply) -------------------------

    @classmethod
    def _const(cls, data: np.ndarray) -> Tensor:
        """Wrap an array without copying it (results of unrecorded ops)."""
        t = _new(cls)
        t.data = data
        t._requires_grad = False
        t._node = None
        return t

    @classmethod
    def _of(cls, data: np.ndarray, node: Node) -> Tensor:
        """A tensor for ``node``'s output ``data`` (what an op returns; also how
        a recorded backward pass sees a saved value: gradients flowing into it
        go to ``node``)."""
        t = _new(cls)
        t.data = data
        t._requires_grad = True
        t._node = node
        return t

    # ----- names ----------------------------------------------------------

    @property
    def name(self) -> str | None:
        """A label used by drawings (``cr.viz.graph``) and traces (``cr.explain``)."""
        node = self._node
        return self._name if node is None else node.name

    @name.setter
    def name(self, value: str | None) -> None:
        self._set_name(value)

    def _set_name(self, value: str | None) -> None:  # (Parameter's name setter too)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"name: expected a string or None, got {type(value).__name__}")
        node = self._node
        if node is None:
            self._name = value
        else:  # the node carries it, so views of the graph see it after the tensor is gone
            node.name = value

    def named(self, name: str) -> Tensor:
        """Set :attr:`name` and return ``self``: ``x = (b * b).named("x")``."""
        self.name = name
        return self

    @property
    def _op(self) -> Any:
        """The rule that computed this tensor, or None for a leaf (internal)."""
        node = self._node
        return None if node is None else node.op

    @property
    def _version(self) -> int:
        """The tick of the latest in-place change to this tensor's memory (0: none)."""
        base = self.data.base
        return _VERSIONS.get(id(self.data if base is None else base), 0)

    # ----- properties -----------------------------------------------------

    @property
    def requires_grad(self) -> bool:
        """Whether operations on this tensor are recorded for backward."""
        return self._requires_grad

    @requires_grad.setter
    @effect
    def requires_grad(self, flag: bool) -> None:
        flag = bool(flag)
        if flag and self.data.dtype.kind not in _FLOAT_KINDS:
            raise TypeError(
                f"requires_grad: only floating-point tensors can require gradients, "
                f"this one has dtype {self.data.dtype}; convert first, e.g. "
                f"cr.tensor(values, dtype=np.float32, requires_grad=True)"
            )
        if not flag and self._node is not None:
            raise RuntimeError(
                "requires_grad: this tensor was computed by a recorded op "
                f"({self._node.op.name}); use .detach() to get a tensor outside the graph"
            )
        self._requires_grad = flag

    def requires_grad_(self, flag: bool = True) -> Tensor:
        """Set ``requires_grad`` in place and return ``self`` (PyTorch style)."""
        self.requires_grad = flag
        return self

    @property
    def grad(self) -> Tensor | None:
        """dL/dself after ``backward()``; kept for leaves and ``retain_grad()`` tensors."""
        node = self._node
        if self._grad is None and node is not None and node._retain is None:
            warnings.warn(
                f"reading .grad of a non-leaf tensor (computed by {node.op.name}): "
                "backward() keeps gradients only for leaves (tensors you created "
                "with requires_grad=True). To read the backpropagated gradient of "
                "an intermediate value such as z^l (that is delta^l), call "
                ".retain_grad() on it before backward().",
                UserWarning,
                stacklevel=2,
            )
        return self._grad

    @grad.setter
    @effect
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
        return None if self._node is None else GradFn(self._node)

    @property
    def is_leaf(self) -> bool:
        """True for tensors not computed by a recorded op (PyTorch's definition)."""
        return self._node is None

    @property
    def op(self) -> str | None:
        """Name of the op that produced this tensor, or None for a leaf."""
        return None if self._node is None else self._node.op.name

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
    def size(self) -> _Size:
        """The number of elements (NumPy); call it for the shape (PyTorch's ``size()``)."""
        return _Size(self.data.shape, self.data.size)

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
        if self._node is not None:
            extra.append(f"grad_fn=<{self._node.op.name}>")
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
        node = self._node
        if node is not None and node._retain is None:
            # weakly: once nobody holds this tensor, nobody can read its .grad
            node._retain = weakref.ref(self)
        return self

    @property
    def retains_grad(self) -> bool:
        node = self._node
        return node is not None and node._retain is not None

    def register_hook(self, fn: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Call ``fn(grad)`` when dL/dself is computed; a returned tensor replaces it.

        Returns a handle: ``handle.remove()`` (or ``handle()``) removes the hook.
        """
        if not self._requires_grad:
            raise RuntimeError(
                "register_hook: this tensor does not require grad, so the hook would never run"
            )
        owner: Any = self if self._node is None else self._node  # the graph's vertex
        if owner._hooks is None:
            owner._hooks = []
        owner._hooks.append(fn)
        return RemovableHandle(owner._hooks, fn)

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
        if not self._requires_grad or self._node is not None:
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

    # (``float`` in annotations below would name the method Tensor.float)
    @effect
    def add_(self, other: Any, alpha: builtins.float = 1.0) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        self._check_inplace("add_")
        if alpha == 1.0:
            np.add(self.data, o, out=self.data, casting="same_kind")
        else:
            self.data += alpha * np.asarray(o, dtype=self.data.dtype)
        _bump(self)
        return self

    @effect
    def sub_(self, other: Any, alpha: builtins.float = 1.0) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        return self.add_(-np.asarray(o, dtype=self.data.dtype), alpha)

    @effect
    def mul_(self, other: Any) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        self._check_inplace("mul_")
        np.multiply(self.data, o, out=self.data, casting="same_kind")
        _bump(self)
        return self

    @effect
    def zero_(self) -> Tensor:
        self._check_inplace("zero_")
        self.data.fill(0)
        _bump(self)
        return self

    @effect
    def fill_(self, value: builtins.float) -> Tensor:
        self._check_inplace("fill_")
        self.data.fill(value)
        _bump(self)
        return self

    @effect
    def copy_(self, src: Any) -> Tensor:
        s = src.data if isinstance(src, Tensor) else np.asarray(src)
        if s.shape != self.shape and np.broadcast_shapes(s.shape, self.shape) != self.shape:
            raise ValueError(
                f"copy_: source shape {s.shape} does not fit tensor shape {self.shape}"
            )
        return self._inplace("copy_", s)

    @effect
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

    # comparisons give boolean tensors outside the graph (elementwise, as in
    # NumPy and PyTorch: hence not object.__eq__'s bool)
    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.compare("eq", self, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.compare("ne", self, other)

    def __lt__(self, other: Any) -> Tensor:
        return _ops.compare("lt", self, other)

    def __le__(self, other: Any) -> Tensor:
        return _ops.compare("le", self, other)

    def __gt__(self, other: Any) -> Tensor:
        return _ops.compare("gt", self, other)

    def __ge__(self, other: Any) -> Tensor:
        return _ops.compare("ge", self, other)

    # ----- methods: one-line calls into ops.py ----------------------------
    # PyTorch's names and meanings; reductions and shape methods take
    # dim=/keepdim= and NumPy's axis=/keepdims= alike (see ops.py).

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

    def leaky_relu(self, negative_slope: builtins.float = 0.01) -> Tensor:
        return _ops.leaky_relu(self, negative_slope)

    def softplus(self) -> Tensor:
        return _ops.softplus(self)

    def sin(self) -> Tensor:
        return _ops.sin(self)

    def cos(self) -> Tensor:
        return _ops.cos(self)

    def abs(self) -> Tensor:
        return _ops.abs(self)

    def neg(self) -> Tensor:
        return _ops.neg(self)

    negative = neg

    def add(self, other: Any, *, alpha: Any = 1) -> Tensor:
        """self + alpha * other."""
        return _ops.add(self, other, alpha=alpha)

    def sub(self, other: Any, *, alpha: Any = 1) -> Tensor:
        """self - alpha * other."""
        return _ops.sub(self, other, alpha=alpha)

    subtract = sub

    def mul(self, other: Any) -> Tensor:
        return _ops.mul(self, other)

    multiply = mul

    def div(self, other: Any) -> Tensor:
        return _ops.div(self, other)

    divide = true_divide = div

    def pow(self, exponent: Any) -> Tensor:
        return _ops.pow(self, exponent)

    def square(self) -> Tensor:
        return _ops.square(self)

    def maximum(self, other: Any) -> Tensor:
        return _ops.maximum(self, other)

    def minimum(self, other: Any) -> Tensor:
        return _ops.minimum(self, other)

    def where(self, condition: Any, other: Any) -> Tensor:
        """``self`` where ``condition`` holds, else ``other`` (``torch.Tensor.where``)."""
        return _ops.where(condition, self, other)

    def masked_fill(self, mask: Any, value: Any) -> Tensor:
        """A copy with ``value`` where ``mask`` is true (the mask broadcasts to self)."""
        return _ops.masked_fill(self, mask, value)

    def sum(self, dim: Any = None, keepdim: bool | None = None, *,
            axis: Any = None, keepdims: bool | None = None) -> Tensor:
        return _ops.sum(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def mean(self, dim: Any = None, keepdim: bool | None = None, *,
             axis: Any = None, keepdims: bool | None = None) -> Tensor:
        return _ops.mean(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def max(self, dim: Any = None, keepdim: bool | None = None, *,
            axis: Any = None, keepdims: bool | None = None) -> Any:
        """``x.max()`` / ``x.max(axis=...)``: values; ``x.max(dim)``: (values, indices)."""
        return _ops.max(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def min(self, dim: Any = None, keepdim: bool | None = None, *,
            axis: Any = None, keepdims: bool | None = None) -> Any:
        """``x.min()`` / ``x.min(axis=...)``: values; ``x.min(dim)``: (values, indices)."""
        return _ops.min(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def amax(self, dim: Any = None, keepdim: bool | None = None, *,
             axis: Any = None, keepdims: bool | None = None) -> Tensor:
        return _ops.amax(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def amin(self, dim: Any = None, keepdim: bool | None = None, *,
             axis: Any = None, keepdims: bool | None = None) -> Tensor:
        return _ops.amin(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def var(self, dim: Any = None, unbiased: bool | None = None, keepdim: bool | None = None,
            *, correction: Any = None, axis: Any = None, keepdims: bool | None = None,
            ddof: Any = None) -> Tensor:
        """Variance, unbiased by default (PyTorch); ``correction=``/``unbiased=``/``ddof=``."""
        return _ops.var(self, dim, unbiased, keepdim, correction=correction, axis=axis,
                        keepdims=keepdims, ddof=ddof)

    def std(self, dim: Any = None, unbiased: bool | None = None, keepdim: bool | None = None,
            *, correction: Any = None, axis: Any = None, keepdims: bool | None = None,
            ddof: Any = None) -> Tensor:
        """Standard deviation, unbiased by default (PyTorch); gradient 0 where it is 0."""
        return _ops.std(self, dim, unbiased, keepdim, correction=correction, axis=axis,
                        keepdims=keepdims, ddof=ddof)

    def logsumexp(self, dim: Any = None, keepdim: bool | None = None, *,
                  axis: Any = None, keepdims: bool | None = None) -> Tensor:
        return _ops.logsumexp(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def softmax(self, dim: int | None = None, *, axis: int | None = None) -> Tensor:
        return _ops.softmax(self, dim, axis=axis)

    def log_softmax(self, dim: int | None = None, *, axis: int | None = None) -> Tensor:
        return _ops.log_softmax(self, dim, axis=axis)

    def clip(self, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
        return _ops.clip(self, min, max)

    clamp = clip

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.reshape(self, shape)

    def view(self, *shape: Any) -> Tensor:
        return self.reshape(*shape)

    def reshape_as(self, other: Tensor) -> Tensor:
        return _ops.reshape(self, other.shape)

    view_as = reshape_as

    def flatten(self, start_dim: int | None = None, end_dim: int = -1, *,
                start_axis: int | None = None) -> Tensor:
        return _ops.flatten(self, start_dim, end_dim, start_axis=start_axis)

    def transpose(self, *dims: Any, dim0: Any = None, dim1: Any = None,
                  axes: Any = None) -> Tensor:
        """``x.transpose(d0, d1)`` swaps two dimensions, as in PyTorch.

        Without arguments it reverses them all (``x.T``); a tuple, or three
        or more ints, is a NumPy-style permutation (prefer :meth:`permute`).
        """
        if dim0 is not None or dim1 is not None:
            if dims:
                raise TypeError("transpose: give the dims positionally or as dim0=/dim1=")
            return _ops.transpose(self, dim0, dim1)
        if len(dims) == 2:
            return _ops.transpose(self, dims[0], dims[1])
        if len(dims) == 1 and not isinstance(dims[0], (tuple, list)):
            raise TypeError(
                f"transpose: got one dim ({dims[0]!r}); give the two dims to swap, "
                "x.transpose(dim0, dim1)"
            )
        if len(dims) == 1:
            dims = tuple(dims[0])
        if axes is not None:
            if dims:
                raise TypeError("transpose: give a permutation or axes=, not both")
            dims = tuple(axes)
        return _ops.permute(self, dims) if dims else _ops.transpose(self)

    def permute(self, *dims: Any) -> Tensor:
        """Reorder the dimensions: ``x.permute(2, 0, 1)``."""
        return _ops.permute(self, *dims)

    def t(self) -> Tensor:
        """Transpose of a tensor of at most 2 dimensions."""
        return _ops.t(self)

    @property
    def T(self) -> Tensor:  # noqa: N802
        return _ops.transpose(self)

    def swapaxes(self, axis0: int, axis1: int) -> Tensor:
        return _ops.swapaxes(self, axis0, axis1)

    def swapdims(self, dim0: int, dim1: int) -> Tensor:
        return _ops.swapaxes(self, dim0, dim1)

    def squeeze(self, dim: Any = None, *, axis: Any = None) -> Tensor:
        """Drop size-1 dimensions (a ``dim`` whose size is not 1 stays, as in PyTorch)."""
        return _ops.squeeze(self, dim, axis=axis)

    def unsqueeze(self, dim: Any = None, *, axis: Any = None) -> Tensor:
        """A new size-1 dimension at ``dim`` (``axis=`` too)."""
        return _ops.expand_dims(self, axis, dim=dim)

    def expand_dims(self, axis: Any = None, *, dim: Any = None) -> Tensor:
        """A new size-1 dimension at ``axis`` (``dim=`` too)."""
        return _ops.expand_dims(self, axis, dim=dim)

    def expand(self, *sizes: Any) -> Tensor:
        """Repeat size-1 dimensions to ``sizes`` (-1 keeps a size), as in PyTorch."""
        return _ops.expand(self, *sizes)

    def expand_as(self, other: Tensor) -> Tensor:
        return _ops.expand(self, other.shape)

    def broadcast_to(self, shape: Sequence[int]) -> Tensor:
        return _ops.broadcast_to(self, shape)

    def matmul(self, other: Any) -> Tensor:
        return _ops.matmul(self, other)

    def argmax(self, dim: Any = None, keepdim: bool | None = None, *,
               axis: Any = None, keepdims: bool | None = None) -> Tensor:
        """Index of the (first) maximum (not differentiable)."""
        return _ops.argmax(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def argmin(self, dim: Any = None, keepdim: bool | None = None, *,
               axis: Any = None, keepdims: bool | None = None) -> Tensor:
        """Index of the (first) minimum (not differentiable)."""
        return _ops.argmin(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def numel(self) -> int:
        """The number of elements (``x.size`` in NumPy's spelling)."""
        return int(self.data.size)

    def dim(self) -> int:
        """The number of dimensions (``x.ndim``)."""
        return self.data.ndim


class _Size(int):
    """``t.size``: the element count, as NumPy's ``a.size`` -- and callable, as
    PyTorch's ``t.size()`` (the shape) and ``t.size(dim)`` (one dimension)."""

    _shape: tuple[int, ...]

    def __new__(cls, shape: tuple[int, ...], count: int) -> _Size:
        obj = int.__new__(cls, count)
        obj._shape = shape
        return obj

    def __call__(self, dim: int | None = None) -> Any:
        if dim is None:
            return self._shape
        nd = len(self._shape)
        span = nd or 1  # a 0-d tensor takes dim 0 / -1, as in PyTorch
        if not -span <= dim < span:
            raise IndexError(f"size: dim {dim} is out of range for shape {self._shape}")
        return self._shape[dim] if nd else 1


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

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def name(self) -> str:
        return self._node.op.name

    def name_(self) -> str:  # PyTorch spells it grad_fn.name()
        return self._node.op.name

    @property
    def next_functions(self) -> tuple[GradFn | None, ...]:
        """The grad_fn of each operand (None for leaves and constants)."""
        return tuple(GradFn(p) if type(p) is Node else None for p in self._node.parents)

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.name
        return isinstance(other, GradFn) and other._node is self._node

    def __hash__(self) -> int:
        return hash(id(self._node))


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


def _describe(node: Node) -> str:
    return f"'{node.op.name}'" + (f" (node '{node.name}')" if node.name else "")


def _released_error(node: Node) -> GraphReleasedError:
    return GraphReleasedError(
        f"backward: the graph through {_describe(node)} was already freed by an earlier "
        "backward() call (the values it saved for the backward pass are gone). "
        "Either call backward(retain_graph=True) the first time if you need to "
        "backpropagate through the same graph twice, or recompute the forward pass."
    )


def _check_versions(node: Node) -> None:
    """Refuse a saved value whose memory was changed in place after it was saved."""
    stamp = node.stamp
    for i, a in enumerate(node.inputs):
        if type(a) is np.ndarray and _VERSIONS.get(id(_storage(a)), 0) > stamp:
            p = node.parents[i] if i < len(node.parents) else None
            name = getattr(p, "name", None)
            _changed(node, f"its input {i} ({f'{name!r}, ' if name else ''}shape {a.shape})")
    out = node.out
    if out is not None and _VERSIONS.get(id(_storage(out)), 0) > stamp:
        _changed(node, f"its output (shape {out.shape})")


def _changed(node: Node, what: str) -> None:
    where = f"\nThe op was created at:\n{node.meta}" if node.meta else (
        " Run the forward pass inside cr.detect_anomaly() to see the line that created the op.")
    raise RuntimeError(
        f"backward: {_describe(node)} saved {what} for the backward pass, but that memory was "
        "modified in place after the op was recorded (through the tensor itself or any view "
        "of it: a slice, a reshape, .detach(), .numpy()), so the gradient would be wrong. "
        "Modify a copy (t.clone()) instead, or make the change before the forward pass "
        f"(optimizer.step() belongs after backward()).{where}"
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


def vertex(t: Tensor) -> Any:
    """The graph vertex of ``t``: its node, or the tensor itself for a leaf."""
    node = t._node
    return t if node is None else node


def _graph_operand(a: Any, parent: Any) -> Any:
    """A saved operand as a Tensor of the graph, for a recorded backward pass:
    gradients flowing into it reach ``parent`` (so gradients of gradients do)."""
    if type(a) is not np.ndarray:
        return a  # a stand-in: the VJP reads only its shape and dtype
    if parent is None:
        return Tensor._const(a)
    if type(parent) is Node:
        return Tensor._of(a, parent)
    return parent  # a leaf: the tensor itself


# with ``inputs`` the gradients come back (a compile tracer never takes over
# such a call); without, they go into .grad and the result is None
@overload
def run_backward(roots: Sequence[Tensor], seeds: Sequence[Any], retain_graph: bool | None = None,
                 create_graph: bool = False, *, inputs: Sequence[Tensor],
                 observer: Any = None) -> list[Any]: ...
@overload
def run_backward(roots: Sequence[Tensor], seeds: Sequence[Any], retain_graph: bool | None = None,
                 create_graph: bool = False, inputs: None = None,
                 observer: Any = None) -> None: ...


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
    ``observer`` (used by ``cr.explain``) sees the walk: ``observer.visit(v,
    g)`` when the walk reaches a vertex ``v`` (a :class:`Node`, or a leaf
    Tensor) with its backpropagated gradient ``g`` (hooks applied), then
    ``observer.term(node, slot, parent, contribution)`` for every operand slot
    of that node whose parent gets a gradient: the term dL/dnode x
    dnode/dparent of the parent's sum over successors. ``retain_graph``
    defaults to ``create_graph``, since a recorded backward pass refers to
    the graph.
    """
    if retain_graph is None:
        retain_graph = create_graph
    if _mode.tracer is not None:  # cr.compile: record this backward pass, then run it
        return _mode.tracer.backward(run_backward, roots, seeds, retain_graph, create_graph,
                                     inputs, observer)
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

    g: Any  # a gradient: an array, or a Tensor under create_graph
    table: dict[Any, Any] = {}  # the gradient table: vertex -> dL/dvertex
    owned: set[Any] = set()  # vertices whose table entry we may update in place
    for r, s in zip(roots, seeds):
        g = _seed(r, s)
        if create_graph:
            g = Tensor._const(g)
        v = vertex(r)
        if v in table:
            table[v] = table[v] + g
            owned.discard(v)
        else:
            table[v] = g
            owned.add(v)

    wanted = None if inputs is None else {vertex(t): i for i, t in enumerate(inputs)}
    results: list[Any] = [None] * (0 if inputs is None else len(inputs))
    anomaly = _mode.anomaly
    # Rules with a ``vjp_inplace`` may write their result into g when the
    # table owns it; not while an observer or detect_anomaly reads g after
    # the VJP, nor when recording (g is then a Tensor of the new graph).
    reuse = not create_graph and observer is None and not anomaly

    # The walk order: always take the pending node recorded last (largest
    # ``stamp``). Every successor of a node was recorded after it, so when a
    # node comes up, all its contributions are already in the table; this is
    # a topological order found without a separate pass over the graph.
    # Leaves (no stamp) get keys after every node, in arrival order.
    heap: list[tuple[int, Any]] = []
    leaf_key = itertools.count(1).__next__
    for v in table:
        heapq.heappush(heap, (-v.stamp if type(v) is Node else leaf_key(), v))
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
            if mine:
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

            if type(node) is not Node:  # a leaf: the gradient arrives here
                if wanted is None:
                    _store_grad(node, g, mine, create_graph)
                    if node._post_hooks:
                        for hook in list(node._post_hooks):
                            hook(node)
                elif node in wanted:
                    results[wanted[node]] = g
                continue
            if wanted is not None:
                if node in wanted:
                    results[wanted[node]] = g
                    mine = False
            elif node._retain is not None:
                t = node._retain()
                if t is not None:
                    _store_grad(t, g, mine, create_graph)
                    mine = False

            # ---- the local step: backpropagated gradient x local gradient ----
            op = node.op
            if node.ctx is _RELEASED:
                raise _released_error(node)
            if _CLOCK[0] > node.stamp:  # something changed in place since this op ran
                _check_versions(node)
            parents = node.parents
            if create_graph:
                out = node.out
                pgs = op.vjp(g, None if out is None else Tensor._of(out, node), node.ctx,
                             node.needs, xp, *[_graph_operand(a, p)
                                               for a, p in zip(node.inputs, parents)])
            else:
                pgs = vjp_step(node, g, mine and reuse, not retain_graph, reuse)
            if anomaly:
                _check_finite_vjp(node, g, pgs)
            if not retain_graph:  # free what was saved, and the graph behind it
                node.ctx = _RELEASED
                node.inputs = ()
                node.out = None
                node.parents = ()
                if node.kept is not None:
                    node.kept = None

            # ---- the sum over successors: add into each parent's entry ----
            for slot, p in enumerate(parents):
                if p is None:
                    continue
                pg = pgs[slot]
                if pg is None:
                    continue
                pg = conform_grad(op, pg, p, not create_graph)
                if observer is not None:
                    observer.term(node, slot, p, pg)
                old = table.get(p)
                if old is None:
                    table[p] = pg
                    heappush(heap, (-p.stamp if type(p) is Node else leaf_key(), p))
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


def vjp_step(node: Any, g: np.ndarray, inplace_ok: bool, release: bool,
             split_ok: bool = True) -> Sequence[Any]:
    """The local step of the chain rule at one node, on NumPy arrays: the gradients
    for its operands, ``g`` x d(out)/d(operand), from its rule's VJP.

    The one place that chooses how a VJP runs, for ``run_backward`` and for the
    replay of a compiled step (``chainrule.compile``), which calls it with a node
    of its own holding ``op``, ``out``, ``ctx``, ``needs`` and ``inputs``:

    * ``inplace_ok``: the caller alone holds ``g`` (no table entry, ``.grad``,
      hook or observer sees it), so a rule with ``vjp_inplace`` may write into it;
    * a rule given in two steps (``Rule.defsplit``) runs its elementwise step,
      then -- when ``release`` -- lets go of ``node.ctx`` (a mask) before the
      second step allocates its results (``split_ok=False``: the composed VJP,
      for callers that show every intermediate, such as an observer).

    The caller must not hold ``node.ctx`` itself, or the release frees nothing.
    """
    op = node.op
    ins = node.inputs
    needs = node.needs
    split = op.split if split_ok else None
    if split is not None:
        step, inner = split
        g = step(g, node.out, node.ctx, inplace_ok and op.vjp_inplace is not None)
        if release:
            node.ctx = _RELEASED
        out = ctx = None
        vjp = inner.vjp
    else:
        out = node.out
        ctx = node.ctx
        vjp = op.vjp_inplace if inplace_ok and op.vjp_inplace is not None else op.vjp
    if len(ins) == 2:
        return vjp(g, out, ctx, needs, _NUMPY_NS, ins[0], ins[1])
    if len(ins) == 1:
        return vjp(g, out, ctx, needs, _NUMPY_NS, ins[0])
    return vjp(g, out, ctx, needs, _NUMPY_NS, *ins)


def conform_grad(op: Any, pg: Any, parent: Any, arrays: bool = True) -> Any:
    """A VJP's result for ``parent`` (anything with ``.shape``/``.dtype``): the
    parent's shape (else the rule is wrong: say which) and dtype (float32
    stays float32 end to end)."""
    if arrays and type(pg) is not np.ndarray:
        pg = np.asarray(pg)  # 0-d results come back as NumPy scalars
    shape = parent.shape
    if pg.shape != shape:
        raise RuntimeError(
            f"backward: the VJP of '{op.name}' returned a gradient of shape "
            f"{pg.shape} for an input of shape {shape} (a bug in that rule)"
        )
    dt = pg.dtype
    pdt = parent.dtype
    if dt is not pdt and dt != pdt:  # `is`: the cheap common case
        pg = pg.astype(pdt)
    return pg


# Accumulating into .grad is a read-modify-write; two threads running
# backward() on graphs that share a leaf would lose updates without it.
_GRAD_LOCK = threading.Lock()


def _store_grad(t: Tensor, g: Any, mine: bool, create_graph: bool) -> None:
    """Accumulate dL/dt into ``t.grad`` (leaves and retain_grad tensors)."""
    with _GRAD_LOCK:
        if create_graph:
            old = t._grad
            t._grad = (g if isinstance(g, Tensor) else Tensor._const(g)) if old is None \
                else old + g
            return
        _add_grad(t, g, mine)


def _add_grad(t: Tensor, g: np.ndarray, mine: bool) -> None:
    # the caller holds _GRAD_LOCK
    old = t._grad
    if old is None:
        t._grad = Tensor._const(g if mine else g.copy())
    elif old.shape == g.shape and old.data.flags.writeable:
        np.add(old.data, g, out=old.data, casting="unsafe")
        _bump(old)
    else:
        t._grad = Tensor._const(old.data + g)


def _where(node: Any) -> str:
    return node.meta or "(created outside detect_anomaly, no source line recorded)"


def _check_finite_grad(node: Any, g: Any) -> None:
    arr = _ops.value(g)
    if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
        if type(node) is Node:
            what, where = node.op.name, _where(node)
        else:
            what, where = f"leaf {node.name or node.shape}", "(a leaf: made by your code)"
        raise AnomalyError(
            f"detect_anomaly: the gradient flowing into '{what}' is not finite "
            f"({_summary(arr)}).\nThe node was created at:\n{where}"
        )


def _check_finite_vjp(node: Node, g: Any, pgs: Sequence[Any]) -> None:
    """Blame the op whose backward turned a finite gradient into a NaN/Inf (sqrt at 0)."""
    for i, (p, pg) in enumerate(zip(node.parents, pgs)):
        if pg is None or p is None:
            continue
        arr = _ops.value(pg)
        if np.issubdtype(np.asarray(arr).dtype, np.inexact) and not np.isfinite(arr).all():
            operands = node.kept[1] if node.kept is not None else node.inputs
            ins = "\n".join(f"  input {k}: {_summary(_ops.value(q))}"
                            if not isinstance(q, (Node, Meta)) else f"  input {k}: shape {q.shape}"
                            for k, q in enumerate(operands))
            raise AnomalyError(
                f"detect_anomaly: the backward of '{node.op.name}' produced a non-finite "
                f"gradient for its input {i} ({_summary(arr)}) from the finite gradient "
                f"{_summary(_ops.value(g))} flowing into it.\nIts inputs:\n{ins}\n"
                f"The op was created at:\n{_where(node)}"
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

_NUMPY_NS: SimpleNamespace = _ops.NUMPY_NS  # the array namespace of a plain backward pass
