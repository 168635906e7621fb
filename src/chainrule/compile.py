"""``cr.compile``: capture one training step, then replay it as a flat program.

A training step builds the same graph every time it runs on a batch of the
same shape: the same ops, wired the same way, reaching the same parameters.
Only the numbers change. ``compile`` records that structure once, as a
*tape*, and from then on runs the tape instead of the step's Python: no
Tensors, no graph nodes, no topological sort, no gradient-table hashing. What
is left is the arithmetic -- each rule's forward function and its VJP on plain
NumPy arrays, in the order eager mode calls them -- and the calls the step
makes that change state (``optimizer.step()``, ``zero_grad()``,
``scheduler.step()``, clipping, in-place updates, random draws), which are
performed again, live, on every replay.

A replay is correct by construction, or the step is not replayed
----------------------------------------------------------------
Skipping the step's Python is only right if nothing the Python decides
changes between calls. The capture makes sure of that, or refuses:

* **Guards** (checked before every replay, a few microseconds): the shapes,
  dtypes and Python values of the arguments; the attributes of every module
  the step can reach or calls (settings such as ``Dropout.p``, the training
  flag, the layers in lists and dicts, the ``forward`` in use); the variables
  the step function reads from its closure and globals, and those of the
  user functions it calls; for every parameter the tape reads, its
  ``requires_grad``, hooks and array. A failed guard captures the step again
  (several variants are kept per signature).
* **Taint**: while capturing, the step's arguments, every value an op
  computes and every random draw are handed to the step's Python as
  "traced" arrays. Anything the Python computes from them with NumPy is
  traced too, so when such a value reaches an op as a constant, or a value is
  read into Python and then used (a branch on ``loss.item()``, printing it),
  the capture refuses and names the line. Comparisons (``yb > -1``),
  ``argmax`` and ``cr.tensor(xb)`` are ops, so masks are recomputed.
* **Effects**: calls that change state declare themselves
  (:func:`chainrule.capture.effect`) and are replayed. Any other change the
  step makes to state it can reach (an attribute set, a list appended to, an
  array written with NumPy, a generator advanced) is found by comparing that
  state before and after each stretch of the step's own Python; the capture
  then refuses, naming what changed and where.
* **Verification**: the second call with the same signature is traced again
  (it must record the same program: arrays made inside the step with NumPy
  are different objects each time, and are refused), then its starting state
  is put back, the tape is replayed on the same batch, and both outcomes are
  compared bit for bit. If anything differs, eager mode's outcome is restored
  (parameters, gradients, optimizer and scheduler state, learning rates,
  generators, whatever the effects touched) and the signature stays eager.

``step.unsupported`` says why a step runs eagerly; ``cr.compile(fn,
strict=True)`` raises :class:`CompileError` instead of running eagerly.

>>> step = cr.compile(step_fn)      # step_fn(xb, yb) -> loss
>>> for xb, yb in loader:
...     loss = step(xb, yb)         # same value and same parameters as step_fn
"""

from __future__ import annotations

import builtins
import copy
import functools
import keyword
import linecache
import os
import struct
import sys
import threading
import types
import weakref
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .capture import Effect
from .nn.module import SETTINGS_EPOCH, STEP_MARK, STRUCTURE, Module
from .ops import DYNAMIC, GETITEM, Kernel, Rule, _op_error, _scalar_array, unit_seed
from .optim import _blas
from .optim.optimizer import Optimizer
from .random import default_generator
from .tensor import (
    _GRAD_LOCK,
    _RELEASED,
    _VERSIONS,
    Node,
    Tensor,
    _add_grad,
    _as_array,
    _bump_key,
    _mode,
    _storage,
    _storage_key,
    _store_grad,
    _tick,
    conform_grad,
    vjp_step,
)

if TYPE_CHECKING:
    from .optim.sgd import SGD

__all__ = ["compile", "CompiledStep", "CompileError", "CompileWarning"]

_OPT_STEP = Optimizer.step.__effect__.fn  # the undecorated step: what a tape records
_OPT_ZERO = Optimizer.zero_grad.__effect__.fn


class CompileError(RuntimeError):
    """``cr.compile(..., strict=True)``: a call could not be replayed (the message says why)."""


class CompileWarning(UserWarning):
    """A compiled training step runs eagerly (``fit`` says it once, with the reason)."""


class _Refuse(Exception):
    """The step did something a replay cannot reproduce: it runs eagerly."""


# Where an operand comes from, at replay time:
#   (_ARG, i)    array argument i of the step (a Tensor argument's .data)
#   (_OP, j)     the output of tape op j
#   (_FX, k)     the array an effect returned (a random draw, a clipped norm)
#   (_ITM, q)    a Python number the step read from a traced array (loss.item())
#   (_LEAF, t)   t.data of a tensor made outside the step (a parameter), read live
#   (_CONST, v)  v itself (Python scalars, arrays made outside the step)
#   (_SEQ, (type, refs))  a tuple or list of the above
_ARG, _OP, _FX, _ITM, _LEAF, _CONST, _SEQ = range(7)
_SLOT_KINDS = (_ARG, _OP, _FX, _ITM)
_Ref = tuple[int, Any]  # (one of the codes above, what it says)

# Tape instructions
_I_OP, _I_FX, _I_ITEM, _I_BACKWARD = range(4)

# Tagged tuples, told apart by their first element (layouts at _Tape, _Program,
# _Recorder._fx_arg and _Recorder._ret). A replay unpacks them in its loop, so
# they stay plain tuples: the type checker sees their elements as Any.
_Instr = tuple[Any, ...]  # a tape instruction
_Step = tuple[Any, ...]  # a program step
_FxSpec = tuple[Any, ...]  # how a replay rebuilds an argument of a declared call
_RetSpec = tuple[Any, ...]  # how a replay rebuilds the step's return value
_Where = tuple[str, int]  # (file, line) of the step's code
# [kind, container, key, expected, path, owner]; a guard updates ``expected`` in place
_GuardEntry = list[Any]

_MAX_CAPTURES = 6  # captures per signature (variants and retries) before it stays eager
_MAX_VARIANTS = 4  # tapes kept per signature, each with its own guards
_MAX_SIGNATURES = 64
_MAX_REACH = 20_000  # objects the step may reach before the capture gives up checking them

_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__)) + os.sep


# ---------------------------------------------------------------------------
# The graph, as compile reads it (kept in one place: the engine's node layout
# may change)
# ---------------------------------------------------------------------------


def _node_rule(t: Tensor) -> Rule | None:
    """The rule that computed ``t``, or None for a leaf / an unrecorded result."""
    node = t._node
    return None if node is None else node.op


def _node_needs(t: Tensor) -> tuple[bool, ...]:
    """Which operands of the op that computed ``t`` require grad (none for a leaf)."""
    node = t._node
    return () if node is None else node.needs


def _node_hooked(t: Tensor) -> bool:
    """Gradient hooks or retain_grad() on a recorded node."""
    node = t._node
    return node is not None and (bool(node._hooks) or node._retain is not None)


# A replay's backward pass runs with division, invalid and overflow
# warnings off, as run_backward does with np.errstate. NumPy 2 keeps that
# state in a context variable; setting it to a state made once (from the
# state it was made from, so an outer np.errstate still counts) costs a fifth
# of entering np.errstate. NumPy 1 has no such variable: np.errstate itself.
_ERR_STATE: Any = None
_make_extobj: Any = None
try:
    from numpy._core import umath as _umath

    _ERR_STATE, _make_extobj = _umath._extobj_contextvar, _umath._make_extobj
except (ImportError, AttributeError):  # NumPy 1.x
    pass
# [(the state the quiet one was made from, the quiet one)]: the pair is replaced
# whole, so a thread reads a matching pair even while another makes a new one
_QUIET: list[tuple[Any, Any]] = [(None, None)]


def _quiet() -> Any:
    """Enter the backward pass's error state; :func:`_loud` takes the result."""
    if _ERR_STATE is None:
        state = np.errstate(divide="ignore", invalid="ignore", over="ignore")
        state.__enter__()
        return state
    now = _ERR_STATE.get()
    made = _QUIET[0]
    if made[0] is not now:
        made = _QUIET[0] = (now, _make_extobj(divide="ignore", invalid="ignore", over="ignore"))
    return _ERR_STATE.set(made[1])


def _loud(token: Any) -> None:
    """Leave the state :func:`_quiet` entered."""
    if _ERR_STATE is None:
        token.__exit__(None, None, None)
    else:
        _ERR_STATE.reset(token)


def _released_result(data: np.ndarray, rule: Rule) -> Tensor:
    """What eager mode returns after backward(): a tensor whose graph was freed."""
    node = object.__new__(Node)
    node.op = rule
    node.parents = node.inputs = node.needs = ()
    node.out = None
    node.ctx = _RELEASED
    node.stamp = _tick()
    node.shape = data.shape
    node.dtype = data.dtype
    node.params = {}
    return Tensor._of(data, node)


# ---------------------------------------------------------------------------
# Where the step's Python is
# ---------------------------------------------------------------------------


def _user_frame() -> types.FrameType | None:
    f: types.FrameType | None = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith((_HERE, _NUMPY_DIR, "<frozen")):
            return f
        f = f.f_back
    return None


def _user_line() -> str:
    """``file:line (code)`` of the innermost frame outside chainrule and NumPy."""
    f = _user_frame()
    if f is None:
        return "an unknown line"
    code = linecache.getline(f.f_code.co_filename, f.f_lineno).strip()
    return f"{f.f_code.co_filename}:{f.f_lineno}" + (f" ({code})" if code else "")


# ---------------------------------------------------------------------------
# Taint: the step's values, as its Python sees them during a capture
# ---------------------------------------------------------------------------


def _recorder() -> _Recorder | None:
    """The capture in progress, unless it has already refused the step."""
    rec = _mode.tracer
    return rec if isinstance(rec, _Recorder) and rec.error is None else None


def _use(how: str) -> None:
    """The step's Python used a value computed from its data: a replay cannot follow."""
    rec = _recorder()
    if rec is not None:
        rec.refuse(
            f"the step uses a value computed from its data in Python ({how}) at {_user_line()}; "
            "a replay does not run the step's Python, so the value would be frozen. Compute it "
            "with chainrule ops, or return it (tensor, or .item()) and use it outside the step"
        )


def _traced_number(arr: np.ndarray, v: Any) -> Any:
    """``arr.item()``: the number, marked as coming from the step's data."""
    rec = _recorder()
    if rec is None:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _use(".item() of a boolean or complex value")
        return v
    src = rec.read(arr)
    out = _TracedFloat(v) if isinstance(v, float) else _TracedInt(v)
    out._src = src
    return out


def _traced_tree(arr: np.ndarray, v: Any) -> Any:
    if isinstance(v, list):
        return [_traced_tree(arr, e) for e in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        out = _TracedFloat(v) if isinstance(v, float) else _TracedInt(v)
        out._src = None
        return out
    _use(".tolist() of boolean or complex values")
    return v


def _retaint(res: Any) -> Any:
    if type(res) is np.ndarray:
        return res.view(_Traced)
    if isinstance(res, tuple):
        return tuple(_retaint(r) for r in res)
    if isinstance(res, list):
        return [_retaint(r) for r in res]
    return res


def _plain_call_args(args: tuple, kwargs: dict) -> tuple[tuple, dict, list]:
    """``args`` and ``kwargs`` with the capture's traced arrays and numbers made plain,
    so that ops and declared calls compute exactly as in eager mode (NumPy code
    that tests ``type(a) is np.ndarray`` must see plain arrays). Tensors holding
    traced arrays get plain ones for the call: the returned list puts them back."""
    swapped: list[tuple[Tensor, np.ndarray, np.ndarray]] = []

    def plain(v: Any) -> Any:
        if isinstance(v, Tensor):
            d = v.data
            if isinstance(d, _Traced):
                v.data = d.view(np.ndarray)
                swapped.append((v, d, v.data))
            return v
        if isinstance(v, _Traced):
            return v.view(np.ndarray)
        if isinstance(v, (_TracedFloat, _TracedInt)):
            return _plain_number(v)
        if type(v) in (tuple, list):
            return type(v)(plain(e) for e in v)
        return v

    return (tuple(plain(a) for a in args), {k: plain(v) for k, v in kwargs.items()}, swapped)


def _restore_data(swapped: list[tuple[Tensor, np.ndarray, np.ndarray]]) -> None:
    for t, traced, plain in reversed(swapped):
        if t.data is plain:  # not replaced by the call
            t.data = traced


def _plain_array(a: Any) -> Any:
    return a.view(np.ndarray) if isinstance(a, _Traced) else a


# ndarray's own shape descriptor (the stubs type ``np.ndarray.shape`` as its getter)
_NDARRAY_SHAPE: Any = vars(np.ndarray)["shape"]


class _Traced(np.ndarray):
    """A view of an array whose values come from the step's data.

    Only seen by the step's Python during a capture. NumPy keeps the type through
    arithmetic, views and reductions (and :meth:`__array_function__` through
    functions like ``np.where``), so a value computed from it with plain NumPy is
    recognised when it reaches an op. Reading it into Python gives a traced
    number (see :class:`_TracedFloat`); branching on it, printing it or indexing
    out a scalar is a *use*, which makes the capture refuse.
    """

    _dd = False  # its shape depends on the data (boolean-mask indexing)

    def __array_finalize__(self, obj: Any) -> None:
        if obj is not None and getattr(obj, "_dd", False):
            self._dd = True

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # keep 0-d results (``xb.max() > 3``) traced: a NumPy scalar would lose the mark
        return super().__array_wrap__(arr, context, False)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        res = super().__array_function__(func, types_, args, kwargs)
        if func in _SHAPE_ONLY:
            return _plain_array(res)
        return _retaint(res)

    # ----- values read into Python -------------------------------------------

    def item(self, *args: Any) -> Any:
        return _traced_number(self, np.ndarray.item(self, *args))

    def tolist(self) -> Any:
        return _traced_tree(self, np.ndarray.tolist(self))

    def __float__(self) -> float:
        v = np.ndarray.__float__(self)
        rec = _recorder()
        if rec is not None:
            rec.converted(v, rec.read(self), "float()")
        return v

    def __int__(self) -> int:
        v = np.ndarray.__int__(self)
        rec = _recorder()
        if rec is not None:
            rec.converted(v, rec.read(self), "int()")
        return v

    def __bool__(self) -> bool:
        _use("the truth value of an array, e.g. `if` on it")
        return np.ndarray.__bool__(self)

    def __index__(self) -> int:
        _use("an array used as an index or size")
        return np.ndarray.__index__(self)

    def __complex__(self) -> complex:
        _use("complex()")
        return np.ndarray.__complex__(self)

    def __format__(self, spec: str) -> str:
        _use("formatting it into a string")
        return np.ndarray.__format__(self, spec)

    def __repr__(self) -> str:
        _use("printing it")
        return np.ndarray.__repr__(self.view(np.ndarray))

    def __str__(self) -> str:
        _use("printing it")
        return np.ndarray.__str__(self.view(np.ndarray))

    def __getitem__(self, index: Any) -> Any:
        out = np.ndarray.__getitem__(self, index)
        if not isinstance(out, np.ndarray):
            _use("one element taken out as a scalar, e.g. yb[0]")
        return out

    def __iter__(self) -> Any:
        if self.ndim == 1:
            _use("iterating over its elements")
        return np.ndarray.__iter__(self)

    # ----- shapes that depend on the data ------------------------------------

    def __len__(self) -> int:
        if self._dd:
            _use("len() of a boolean-masked selection, whose size depends on the data")
        return np.ndarray.__len__(self)

    @property
    def shape(self) -> tuple[int, ...]:
        if self._dd and _recorder() is not None:
            _use(".shape of a boolean-masked selection, whose size depends on the data")
        return np.ndarray.shape.__get__(self)

    @shape.setter
    def shape(self, value: Any) -> None:
        _NDARRAY_SHAPE.__set__(self, value)

    @property
    def size(self) -> int:
        if self._dd and _recorder() is not None:
            _use(".size of a boolean-masked selection, whose size depends on the data")
        return np.ndarray.size.__get__(self)


# NumPy functions whose result depends on their argument's shape and dtype only
_SHAPE_ONLY = frozenset((np.zeros_like, np.ones_like, np.empty_like))


class _TracedFloat(float):
    """A float read from the step's data (``loss.item()``) during a capture.

    Arithmetic keeps the mark; a use in Python (comparison, ``bool``, formatting,
    ``int``/``round``, hashing) makes the capture refuse. Returned by the step,
    or passed to an op or a declared call, it is re-read from the replay's
    array. ``_src`` is where it was read (None once arithmetic changed it).
    """

    __slots__ = ("_src",)
    _src: _Ref | None


class _TracedInt(int):
    """An int read from the step's data (``labels.sum().item()``); see _TracedFloat."""

    # an int subclass cannot have slots: the class attribute is the default
    _src: _Ref | None = None


def _install_traced_number_methods() -> None:
    uses = {
        "__bool__": "its truth value, e.g. `if` on it",
        "__lt__": "a comparison", "__le__": "a comparison", "__gt__": "a comparison",
        "__ge__": "a comparison", "__eq__": "a comparison", "__ne__": "a comparison",
        "__hash__": "hashing it (a dict key or set member)",
        "__format__": "formatting it into a string", "__repr__": "printing it",
        "__str__": "printing it", "__round__": "round()", "__trunc__": "math.trunc()",
        "__floor__": "math.floor()", "__ceil__": "math.ceil()",
    }
    arith = ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
             "__truediv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__",
             "__rmod__", "__pow__", "__rpow__", "__neg__", "__pos__", "__abs__")
    for cls, base in ((_TracedFloat, float), (_TracedInt, int)):
        for name, how in uses.items():
            if not hasattr(base, name):
                continue

            def use(self: Any, *args: Any, _name: str = name, _how: str = how,
                    _base: type = base) -> Any:
                _use(_how)
                return getattr(_base, _name)(self, *args)

            setattr(cls, name, use)
        for name in arith:
            if not hasattr(base, name):
                continue

            def op(self: Any, *args: Any, _name: str = name, _base: type = base) -> Any:
                r = getattr(_base, _name)(self, *args)
                if r is NotImplemented or _recorder() is None:
                    return r
                if isinstance(r, float):
                    f = _TracedFloat(r)
                    f._src = None
                    return f
                if isinstance(r, int) and not isinstance(r, bool):
                    i = _TracedInt(r)
                    i._src = None
                    return i
                return r

            setattr(cls, name, op)

        def conv(self: Any, _base: type = base, _kind: str = base.__name__) -> Any:
            v = getattr(_base, f"__{_kind}__")(self)
            rec = _recorder()
            if rec is not None:
                rec.converted(v, getattr(self, "_src", None), f"{_kind}()")
            return v

        setattr(cls, f"__{base.__name__}__", conv)
        if base is float:
            setattr(cls, "__int__", _int_of_float)  # noqa: B010  (one loop for both classes)
        else:
            setattr(cls, "__index__", _index_of_int)  # noqa: B010
            setattr(cls, "__float__", _float_of_int)  # noqa: B010


def _int_of_float(self: Any) -> int:
    _use("int() of it")
    return float.__int__(self)


def _index_of_int(self: Any) -> int:
    _use("it as an index or a size")
    return int.__index__(self)


def _float_of_int(self: Any) -> float:
    _use("float() of it")
    return int.__float__(self)


_install_traced_number_methods()


def _plain_number(v: Any) -> Any:
    if isinstance(v, _TracedFloat):
        return float.__float__(v)
    if isinstance(v, _TracedInt):
        return int.__int__(v)
    return v


def _traced_number_in(v: Any) -> bool:
    if isinstance(v, (_TracedFloat, _TracedInt)):
        return True
    if isinstance(v, (list, tuple)):
        return any(_traced_number_in(e) for e in v)
    return False


# ---------------------------------------------------------------------------
# What the step can reach: its closure, the globals it names, its arguments
# ---------------------------------------------------------------------------

_MISSING = object()
_ATOMS = (bool, int, float, complex, str, bytes, type(None))
_OPAQUE = (type, types.ModuleType, types.BuiltinFunctionType, types.MethodWrapperType,
           types.WrapperDescriptorType, types.MethodDescriptorType, types.CodeType,
           types.FrameType, types.GetSetDescriptorType, types.MemberDescriptorType,
           np.dtype, np.ufunc, Rule, Effect, threading.local, range, slice)


def _atom(v: Any) -> Any:
    """How a value appears in its container's fingerprint: plain values by value
    (floats by their exact bits), everything else by identity."""
    t = type(v)
    if t is float:
        return (float, v.hex())
    if t in _ATOMS:
        return (t, v)
    if isinstance(v, np.generic):
        return (t, v.tobytes())
    return (id, id(v))


def _same_plain(a: Any, b: Any) -> bool:
    """a and b are equal plain values (numbers, strings, tuples of them)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same_plain(x, y) for x, y in zip(a, b))
    if isinstance(a, (_ATOMS, np.generic)):
        return _atom(a) == _atom(b)
    return False


def _is_ours(code: types.CodeType) -> bool:
    return code.co_filename.startswith(_HERE)


def _code_names(code: types.CodeType) -> set[str]:
    """Every global name a function (and the functions nested in it) may read."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return names


def _fp_array(a: np.ndarray) -> tuple:
    if a.dtype.hasobject:
        return ("a", a.shape, a.dtype.str, tuple(_atom(v) for v in a.flat))
    c = a if a.flags.c_contiguous else np.ascontiguousarray(a)
    # its bytes as a flat uint8 array: a memoryview cast refuses empty arrays and
    # datetime dtypes, which a step may reach like any other array
    return ("a", a.shape, a.dtype.str,
            zlib.crc32(c.view(np.ndarray).reshape(-1).view(np.uint8).data))


def _fp(obj: Any) -> Any:
    """An object's own state, for change detection (its children by identity)."""
    if isinstance(obj, np.ndarray):
        return _fp_array(obj)
    if isinstance(obj, Tensor):
        return ("t", id(obj.data), id(obj._grad), obj._requires_grad)
    if isinstance(obj, np.random.Generator):
        return ("g", obj.bit_generator.state)
    if isinstance(obj, np.random.RandomState):
        st = obj.get_state(legacy=False)
        return ("r", _fp_array(st["state"]["key"]), st["state"]["pos"], st["has_gauss"],
                st["gauss"])
    if isinstance(obj, types.FunctionType):
        cells = tuple(_atom(_cell(c)) for c in obj.__closure__ or ())
        names = () if _is_ours(obj.__code__) else tuple(
            (n, _atom(obj.__globals__.get(n, _MISSING))) for n in sorted(_code_names(obj.__code__)))
        return ("f", cells, _atom(obj.__defaults__), _atom(obj.__kwdefaults__), names,
                id(obj.__code__))
    if isinstance(obj, types.MethodType):
        return ("m", id(obj.__self__), id(obj.__func__))
    if isinstance(obj, functools.partial):
        return ("p", id(obj.func), tuple(map(_atom, obj.args)),
                tuple((k, _atom(v)) for k, v in obj.keywords.items()))
    if isinstance(obj, (list, tuple)):
        return tuple(map(_atom, obj))
    if isinstance(obj, dict):
        return tuple((_atom(k), _atom(v)) for k, v in obj.items())
    if isinstance(obj, (set, frozenset)):
        return frozenset(map(_atom, obj))
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        return tuple((k, _atom(v)) for k, v in d.items())
    return None


def _cell(c: Any) -> Any:
    try:
        return c.cell_contents
    except ValueError:  # an empty cell (a variable not assigned yet)
        return _MISSING


def _user_class_functions(cls: type) -> list[tuple[str, Any]]:
    """Functions defined in a user's class and its user-defined bases."""
    out = []
    for c in cls.__mro__:
        mod = getattr(c, "__module__", "") or ""
        if c is object or mod == "builtins" or mod.split(".")[0] in ("chainrule", "numpy"):
            continue
        for name, v in vars(c).items():
            f = v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
            if isinstance(f, types.FunctionType):
                out.append((f"{c.__name__}.{name}", f))
            elif isinstance(v, property):
                for acc in (v.fget, v.fset):
                    if isinstance(acc, types.FunctionType):
                        out.append((f"{c.__name__}.{name}", acc))
    return out


def _children(obj: Any) -> list[tuple[str, Any]]:
    """(label, child) for the objects ``obj`` refers to, as the walk follows them."""
    if isinstance(obj, Tensor):
        out: list[tuple[str, Any]] = [(".data", obj.data)]
        if obj._grad is not None:
            out.append((".grad", obj._grad))
        return out
    if isinstance(obj, (np.ndarray, np.random.Generator, np.random.RandomState)):
        return []
    if isinstance(obj, types.FunctionType):
        # "=" starts a name of its own (the variable), instead of a suffix to the path
        fname = obj.__qualname__
        out = [(f"={n}{_NOTE}(a closure variable of {fname})", _cell(c))
               for n, c in zip(obj.__code__.co_freevars, obj.__closure__ or ())]
        out += [(f"=a default argument of {fname}", v) for v in obj.__defaults__ or ()]
        out += [(f"=the default of {k!r} of {fname}", v)
                for k, v in (obj.__kwdefaults__ or {}).items()]
        if not _is_ours(obj.__code__):  # chainrule's own module globals are library state
            g = obj.__globals__
            out += [(f"={n}{_NOTE}(a global of {fname})", g[n])
                    for n in sorted(_code_names(obj.__code__)) if n in g]
        return out
    if isinstance(obj, types.MethodType):
        return [(".__self__", obj.__self__), (".__func__", obj.__func__)]
    if isinstance(obj, functools.partial):
        return ([(".func", obj.func)] + [(f".args[{i}]", v) for i, v in enumerate(obj.args)]
                + [(f".keywords[{k!r}]", v) for k, v in obj.keywords.items()])
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            label = f"[{k!r}]" if isinstance(k, _ATOMS) else f"[<{type(k).__name__}>]"
            if not isinstance(k, _ATOMS):
                out.append((f"{label} (key)", k))
            out.append((label, v))
        return out
    if isinstance(obj, (set, frozenset)):
        return [(" (member)", v) for v in obj]
    d = getattr(obj, "__dict__", None)
    if not isinstance(d, dict):
        return []
    out = [(f".{k}", v) for k, v in d.items()]
    cls = type(obj)
    if not _is_ours_class(cls):
        out += [(f" (method {n})", f) for n, f in _user_class_functions(cls)]
    return out


def _is_ours_class(cls: type) -> bool:
    mod = getattr(cls, "__module__", "") or ""
    return mod.split(".")[0] in ("chainrule", "builtins")


def _walkable(v: Any) -> bool:
    if isinstance(v, _ATOMS) or isinstance(v, np.generic) or v is _MISSING:
        return False
    if isinstance(v, _OPAQUE) or isinstance(v, (CompiledStep, _Recorder)):
        return False
    if isinstance(v, (Tensor, np.ndarray, np.random.Generator, np.random.RandomState,
                      types.FunctionType, types.MethodType, functools.partial, list, tuple,
                      dict, set, frozenset)):
        return True
    return isinstance(getattr(v, "__dict__", None), dict)


# Paths are "name<_NOTE>(where the name lives)"; suffixes go before the note
_NOTE = "\x00 "


def _extend(path: str, suffix: str) -> str:
    name, sep, note = path.partition(_NOTE)
    return name + suffix + sep + note


def _show(path: str) -> str:
    return path.replace(_NOTE, " ")


class _Reach:
    """The objects the step can reach, each with the path it was first found by.

    Followed: the step function's closure and defaults, the globals named by
    its code (for functions outside chainrule), the methods of user-defined
    classes, attributes, containers, a Tensor's array and gradient. Not
    followed: Python modules, classes, chainrule's own module globals, and the
    objects in ``stop`` (those the step's declared calls manage).
    """

    def __init__(self, roots: list[tuple[str, Any]], stop: set[int] | frozenset = frozenset(),
                 live: bool = False, names: set[str] | None = None) -> None:
        self.objs: list[Any] = []
        self.paths: dict[int, str] = {}
        self.incomplete: str | None = None
        # for guards: the attributes any code the step reaches names; of a plain
        # object (not a module) only those are followed (an estimator's counters
        # that no code of the step reads are not the step's inputs)
        self.names = names
        # objects whose plain values are read live (an optimizer's settings): only
        # which objects they hold is guarded, not their numbers
        self.structural: set[int] = set()
        stack = [(p, v, False) for p, v in reversed(roots)]
        while stack:
            path, v, structural = stack.pop()
            if not _walkable(v) or id(v) in self.paths:
                continue
            if len(self.objs) >= _MAX_REACH:
                self.incomplete = path
                break
            owned = id(v) in stop
            if owned and not (live and hasattr(type(v), "_compile_structure")):
                continue
            if live and (owned or getattr(type(v), "_compile_live_state", False)):
                # read by its declared methods only (an optimizer, a scheduler): follow
                # just the attributes a step may list, as structure
                for name in reversed(getattr(type(v), "_compile_structure", ())):
                    if name in vars(v):
                        stack.append((_extend(path, f".{name}"), vars(v)[name], True))
                continue
            self.paths[id(v)] = path
            self.objs.append(v)
            if structural:
                self.structural.add(id(v))
            kids = _children(v)
            if names is not None and _plain_object(v):
                kids = [(label, c) for label, c in kids
                        if not label.startswith(".") or label[1:] in names]
            for label, c in reversed(kids):
                stack.append((label[1:] if label[:1] == "=" else _extend(path, label), c,
                              structural))

    def code_names(self) -> set[str]:
        """Every name the functions reached (and the functions nested in them) use."""
        out: set[str] = set()
        for o in self.objs:
            if isinstance(o, types.FunctionType):
                out |= _code_names(o.__code__)
        return out

    def tensors(self) -> list[Tensor]:
        return [o for o in self.objs if isinstance(o, Tensor)]

    def fingerprints(self) -> dict[int, Any]:
        return {id(o): _fp(o) for o in self.objs}

    def changed(self, before: dict[int, Any], now: dict[int, Any]) -> str | None:
        """The first object (in walk order) whose state differs, described."""
        for o in self.objs:
            i = id(o)
            if i in before and before[i] != now.get(i):
                return _describe_change(o, self.paths[i], before[i], now.get(i))
        return None

    def guard_entries(self) -> list[_GuardEntry]:
        """Identity checks that hold as long as the state the step's Python reads
        is unchanged: ``[kind, container, key, expected, path, owner]``."""
        out: list[_GuardEntry] = []
        for o in self.objs:
            path = self.paths[id(o)]

            def at(suffix: str, path: str = path) -> str:
                return _show(_extend(path, suffix))

            if isinstance(o, (Tensor, np.ndarray, np.random.Generator, np.random.RandomState,
                              tuple, frozenset)):
                continue  # values read live, or immutable (reached by identity)
            if isinstance(o, types.FunctionType):
                for n, c in zip(o.__code__.co_freevars, o.__closure__ or ()):
                    v = _cell(c)
                    if v is not _MISSING:
                        out.append(["cell", c, None, v, f"{n} (closure of {o.__qualname__})", o])
                for attr in ("__code__", "__defaults__", "__kwdefaults__"):
                    out.append(["attr", o, attr, getattr(o, attr), at("." + attr), o])
                if not _is_ours(o.__code__):
                    g = o.__globals__
                    for n in sorted(_code_names(o.__code__)):
                        if n in g:
                            out.append(["dget", g, n, g[n], f"{n} (global of {o.__qualname__})", o])
            elif isinstance(o, types.MethodType):
                continue  # immutable
            elif isinstance(o, functools.partial):
                out.append(["attr", o, "args", o.args, at(".args"), o])
                out.append(["attr", o, "keywords", o.keywords, at(".keywords"), o])
            elif isinstance(o, list):
                plain = id(o) in self.structural  # numbers in it are read live
                out.append(["len", o, None, len(o), at(""), o])
                out += [["item", o, i, v, at(f"[{i}]"), o] for i, v in enumerate(o)
                        if not (plain and _is_plain(v))]
            elif isinstance(o, dict):
                plain = id(o) in self.structural
                out.append(["len", o, None, len(o), at(""), o])
                out += [["dget", o, k, v, at(f"[{k!r}]"), o] for k, v in o.items()
                        if not (plain and _is_plain(v))]
            elif isinstance(o, set):
                out.append(["eq", o, None, frozenset(o), at(""), o])
            else:
                d = o.__dict__
                if self.names is not None and _plain_object(o):
                    out += [["dget", d, k, d.get(k, _MISSING), at(f".{k}"), o]
                            for k in sorted(self.names & d.keys())]
                    continue
                out.append(["len", d, None, len(d), at(" (its attributes)"), o])
                out += [["dget", d, k, v, at(f".{k}"), o] for k, v in d.items()]
                if isinstance(o, Module):  # the class decides what forward runs
                    cls = type(o)
                    out.append(["attr", o, "__class__", cls, at(".__class__"), o])
                    for attr in ("forward", "__call__"):
                        out.append(["attr", cls, attr, getattr(cls, attr),
                                    f"{cls.__name__}.{attr}", o])
        return out


def _is_plain(v: Any) -> bool:
    return isinstance(v, (_ATOMS, np.generic)) or (
        isinstance(v, tuple) and all(_is_plain(e) for e in v))


def _plain_object(v: Any) -> bool:
    """An object of some class, walked through its attributes (not a module, a
    tensor, an array, a function or a container)."""
    return not isinstance(v, (Module, Tensor, np.ndarray, types.FunctionType, types.MethodType,
                              functools.partial, list, tuple, dict, set, frozenset)) and \
        isinstance(getattr(v, "__dict__", None), dict)


def _describe_change(o: Any, raw: str, before: Any, now: Any) -> str:
    def path_(suffix: str = "") -> str:
        return _show(_extend(raw, suffix))

    path = path_()
    if isinstance(o, np.ndarray):
        if before[1:3] != now[1:3]:
            return f"the shape or dtype of {path}"
        return f"the values of {path} (written in place)"
    if isinstance(o, Tensor):
        if before[1] != now[1]:
            return path_(".data (replaced by another array)")
        if before[2] != now[2]:
            return path_(".grad")
        return path_(".requires_grad")
    if isinstance(o, (np.random.Generator, np.random.RandomState)):
        return (f"the state of the random generator {path} (a draw outside chainrule's "
                "declared random functions)")
    if isinstance(o, types.FunctionType):
        return f"a variable or default that {path} reads"
    if isinstance(before, tuple) and isinstance(now, tuple):
        if isinstance(o, (list, tuple)):
            if len(before) != len(now):
                return path_(" (its length)")
            for i, (a, b) in enumerate(zip(before, now)):
                if a != b:
                    return path_(f"[{i}]")
        keys_b = dict(e for e in before if isinstance(e, tuple) and len(e) == 2)
        keys_n = dict(e for e in now if isinstance(e, tuple) and len(e) == 2)
        for k in list(keys_b) + [k for k in keys_n if k not in keys_b]:
            if keys_b.get(k, _MISSING) != keys_n.get(k, _MISSING):
                name = k if isinstance(k, str) else (k[1] if isinstance(k, tuple) else k)
                return path_(f"[{name!r}]") if isinstance(o, dict) else path_(f".{name}")
    return path


# Compiled guard functions by the shape of their entries (a capture of the same
# step has the same shape): compiling a long expression costs milliseconds.
_GUARD_CODE: dict[tuple[tuple[str, Any, bool], ...], types.CodeType] = {}


class _Guard:
    """Identity checks, compiled into one Python expression.

    An entry is ``[kind, container, key, expected, path]``. When the fast check
    fails, each entry is looked at: a plain value that was replaced by an equal
    one (``m.p = 0.5`` again), or a parameter array replaced by one of the same
    shape and dtype, updates the entry; anything else is reported.
    """

    __slots__ = ("entries", "fast", "epoch")

    entries: list[_GuardEntry]
    fast: Callable[[], bool]
    epoch: list[int]

    def __init__(self, entries: list[_GuardEntry]) -> None:
        self.entries = entries
        # module attributes last checked at these counts (attribute sets; structure
        # changes, which include hooks added without setting an attribute)
        self.epoch = [SETTINGS_EPOCH[0], STRUCTURE[0]]
        self._build()

    def _build(self) -> None:
        ns: dict[str, Any] = {"M": _MISSING, "e": [ent[3] for ent in self.entries],
                              "E": self.epoch, "EPOCH": SETTINGS_EPOCH, "STRUCT": STRUCTURE}
        shape: list[tuple[str, Any, bool]] = []  # (kind, key, a module's own attribute?)
        for i, (kind, obj, key, _exp, _path, owner) in enumerate(self.entries):
            ns[f"o{i}"] = obj
            ns[f"k{i}"] = key
            # a module's own attributes: skipped while no module attribute was set
            group = isinstance(owner, Module) and (obj is vars(owner) or key == "__class__")
            shape.append((kind, key if kind in ("item", "attr") else None, group))
        shape_key = tuple(shape)
        code = _GUARD_CODE.get(shape_key)
        if code is None:
            settings: list[str] = []
            rest: list[str] = []
            for i, (kind, key, group) in enumerate(shape):
                e = f"e[{i}]"
                if kind == "cell":
                    term = f"o{i}.cell_contents is {e}"
                elif kind == "dget":
                    term = f"o{i}.get(k{i}, M) is {e}"
                elif kind == "len":
                    term = f"len(o{i}) == {e}"
                elif kind == "item":
                    term = f"o{i}[{int(key)}] is {e}"
                elif kind == "attr":
                    term = f"o{i}.{key} is {e}"
                else:  # "eq"
                    term = f"o{i} == {e}"
                (settings if group else rest).append(term)
            joint = " and\n                ".join
            body = (f"((E[0] == EPOCH[0] and E[1] == STRUCT[0]) or "
                    f"({joint(settings) or 'True'}))")
            if rest:
                body += f" and\n            {joint(rest)}"
            src = (f"def guard():\n    try:\n        return ({body})\n"
                   "    except (AttributeError, IndexError, ValueError):\n        return False\n")
            code = builtins.compile(src, "<cr.compile guard>", "exec")
            if len(_GUARD_CODE) >= 256:
                _GUARD_CODE.clear()
            _GUARD_CODE[shape_key] = code
        exec(code, ns)  # noqa: S102  (our own code)
        self.fast = ns["guard"]

    def check(self) -> str | None:
        """None when every entry holds (after refreshing equal plain values)."""
        if self.fast():
            self.epoch[:] = SETTINGS_EPOCH[0], STRUCTURE[0]
            return None
        refreshed = False
        now: Any
        for ent in self.entries:
            kind, obj, key, exp, path, _owner = ent
            if kind == "len":
                now = len(obj)
                if now != exp:
                    return f"{path} changed size ({exp} -> {now})"
                continue
            if kind == "eq":
                if obj != exp:
                    return f"{path} changed"
                continue
            try:
                now = (_cell(obj) if kind == "cell" else obj.get(key, _MISSING) if kind == "dget"
                       else obj[key] if kind == "item" else getattr(obj, key, _MISSING))
            except IndexError:
                return f"{path} changed"
            if now is exp:
                continue
            if _same_plain(now, exp) or (
                    key == "data" and isinstance(now, np.ndarray) and isinstance(exp, np.ndarray)
                    and now.shape == exp.shape and now.dtype == exp.dtype):
                ent[3] = now
                refreshed = True
                continue
            return f"{path} changed ({_short(exp)} -> {_short(now)})"
        if refreshed:
            self._build()
        self.epoch[:] = SETTINGS_EPOCH[0], STRUCTURE[0]
        return None


def _short(v: Any) -> str:
    if v is _MISSING:
        return "unset"
    if isinstance(v, _ATOMS) or isinstance(v, np.generic):
        r = repr(_plain_number(v))
        return r if len(r) < 40 else r[:37] + "..."
    if isinstance(v, np.ndarray):
        return f"an array of shape {v.shape}"
    return f"a {type(v).__name__}"


# ---------------------------------------------------------------------------
# The tape
# ---------------------------------------------------------------------------


# A tensor the step makes from its own values (cr.tensor(xb)): a copy, as an op
def _made_forward(x: np.ndarray, *, dtype: Any) -> tuple[np.ndarray, None]:
    return _as_array(x, dtype), None


_MADE = Rule("tensor", _made_forward)


class _Tape:
    """One step, recorded.

    ``instrs`` holds what the step did, in order (``lines`` says where):

    * ``(_I_OP, j, rule, refs, settings, dyn, recorded)``: op ``j``,
      ``rule.forward(*operands, **settings)``, its operands found by ``refs``;
      ``dyn`` is None, or ``((name, ref), ...)`` for settings that hold the
      step's values (an index with arrays); ``recorded``: eager mode made a
      graph node for it;
    * ``(_I_FX, k, effect, args, kwargs)``: a declared call, its arguments as
      ``_FxSpec`` (see ``_Recorder._fx_arg``); the array it returned is
      effect output ``k`` (None: nothing the step uses);
    * ``(_I_ITEM, q, ref)``: number ``q`` read with ``.item()``;
    * ``(_I_BACKWARD,)``.
    """

    __slots__ = ("instrs", "lines", "n_ops", "n_fx", "n_items", "rules", "recorded", "needs",
                 "bwd_refs", "order", "root", "post_hooks", "keep", "ret", "leaves",
                 "touched", "guard", "nargs", "metas")

    def __init__(self, nargs: int) -> None:
        self.nargs = nargs
        self.instrs: list[_Instr] = []
        self.lines: list[_Where | None] = []  # where the step's code is, per instruction
        self.n_ops = 0
        self.n_fx = 0  # arrays returned by declared calls (random draws, clipped norms)
        self.n_items = 0  # numbers read with .item()
        self.rules: list[Rule] = []
        # per op: (shape, dtype) of each array operand as captured (None: not an array)
        self.metas: list[tuple[tuple[tuple[int, ...], np.dtype] | None, ...]] = []
        self.recorded: list[bool] = []
        self.needs: list[tuple[bool, ...]] = []
        self.bwd_refs: list[tuple[_Ref, ...]] = []  # per op: operand refs the VJP sees
        self.order: list[int] = []  # the ops backward visits, last recorded first
        self.root = -1
        self.post_hooks: list[Tensor] = []  # leaves with post-accumulate-grad hooks
        self.keep: set[int] = set()  # outputs still needed after backward
        self.ret: _RetSpec = (_CONST, None)  # how to build the return value (set by finish)
        self.leaves: list[Tensor] = []  # tensors made outside the step that ops read
        self.touched: list[_Ref] = []  # refs of what the declared calls may change
        self.guard: _Guard | None = None


def _fmt_line(where: _Where | None) -> str:
    if where is None:
        return "an unknown line"
    fname, lineno = where
    code = linecache.getline(fname, lineno).strip()
    return f"{fname}:{lineno}" + (f" ({code})" if code else "")


def _frame_line() -> _Where | None:
    f = _user_frame()
    return None if f is None else (f.f_code.co_filename, f.f_lineno)


def _is_iterator(x: Any) -> bool:
    return hasattr(x, "__next__") and hasattr(x, "__iter__")


def _has_bool_index(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, np.ndarray) and i.dtype == np.bool_ for i in parts)


def _meta(a: Any) -> tuple[tuple[int, ...], np.dtype] | None:
    """An operand's shape and dtype, for kernels (None: not an array)."""
    if isinstance(a, Tensor):
        a = a.data
    if isinstance(a, np.ndarray):
        return (_NDARRAY_SHAPE.__get__(a), a.dtype)
    return None


def _mem_key(a: np.ndarray) -> tuple[int, tuple[int, ...], tuple[int, ...], str]:
    return (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)


class _Recorder:
    """The capture in progress: every capture point hands it its call.

    It runs each call as eager mode would (with itself detached, so that nothing
    inside an op or a declared call is recorded twice), records it on the tape,
    and refuses -- detaching itself, so the rest of the step just runs eagerly --
    at the first thing a replay could not reproduce.
    """

    def __init__(self, fn: Callable[..., Any], flat: list[Any], roots: list[tuple[str, Any]],
                 locate: bool = False) -> None:
        self.fn = fn
        self.locate = locate  # check for state changes around every declared call
        self.tape = _Tape(len(flat))
        self.error: str | None = None
        self.retry = False  # the refusal may not happen again (a one-time initialisation)
        self.keepalive: list[Any] = []  # objects whose id() is a key below
        self.by_id: dict[int, _Ref] = {}  # id(Tensor or array) -> source
        # (address, shape, strides, dtype) -> source
        self.by_mem: dict[tuple[int, tuple[int, ...], tuple[int, ...], str], _Ref] = {}
        self.traced: list[np.ndarray] = []  # arrays holding the step's values
        self.nodes: list[Tensor] = []  # op results, by op index
        self.leaf_ids: set[int] = set()
        self.called: list[Module] = []  # modules the step called
        self.conversions: list[list] = []  # [value, source, how, line, consumed]
        self.owned: set[int] = set()  # objects the declared calls manage (not guarded)
        # argument tensors given traced data: (tensor, its array, the traced view)
        self.swapped: list[tuple[Tensor, np.ndarray, np.ndarray]] = []
        self.roots = roots
        self.flat = flat
        self.reach: _Reach | None = None
        self.fp: dict[int, Any] = {}
        self.since = "the start of the step"
        self.guard_entries: list[_GuardEntry] = []
        self.names: set[str] | None = None
        self.data_owner: dict[int, Tensor] = {}

    # ----- running the step -----------------------------------------------------

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Call the step with traced arguments; returns what it returns."""
        targs, tkwargs = self._taint_args(args, kwargs)
        self.reach = _Reach(self.roots)
        if self.reach.incomplete is not None:
            self.refuse(
                f"the step can reach more than {_MAX_REACH:,} objects (through "
                f"{self.reach.incomplete}); cr.compile cannot check them all for changes"
            )
        else:
            self.data_owner = {id(t.data): t for t in self.reach.tensors()}
            self.fp = self.reach.fingerprints()
            self.names = self.reach.code_names()
            self.guard_entries = _Reach(self.roots, live=True, names=self.names).guard_entries()
        _mode.tracer = self  # attached even after a refusal: see refuse()
        try:
            out = self.fn(*targs, **tkwargs)
            self._boundary("the end of the step")
            return out
        finally:
            _mode.tracer = None
            for t, d, view in self.swapped:
                if t.data is view:  # not replaced by the step
                    t.data = d

    def _taint_args(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        counter = iter(range(len(self.flat)))

        def taint(v: Any) -> Any:
            if isinstance(v, Tensor):
                i = next(counter)
                if v._requires_grad:
                    self.refuse(f"argument {i} of the step is a tensor that requires grad")
                    return v
                d = v.data
                view = d.view(_Traced)
                self.swapped.append((v, d, view))
                v.data = view
                self._note(v, (_ARG, i))
                self._note_array(view, (_ARG, i))
                return v
            if isinstance(v, np.ndarray):
                i = next(counter)
                view = v.view(_Traced)
                self._note_array(view, (_ARG, i))
                return view
            if isinstance(v, (tuple, list)):
                return type(v)(taint(e) for e in v)
            if isinstance(v, dict):
                return {k: taint(e) for k, e in v.items()}
            return v

        return tuple(taint(a) for a in args), {k: taint(v) for k, v in kwargs.items()}

    def refuse(self, why: str, retry: bool = False) -> None:
        """Give up on this capture: the rest of the step runs eagerly, unrecorded.

        The recorder stays attached, passing every call straight through: the
        step's values are still traced arrays, which the engine's fast paths
        must not see (ops.apply handles them)."""
        if self.error is None:
            self.error = why
            self.retry = retry

    def _attach(self) -> None:
        _mode.tracer = self

    def untaint(self) -> None:
        """Give the tensors made during the capture plain arrays again."""
        for obj in self.keepalive:
            if isinstance(obj, Tensor) and isinstance(obj.data, _Traced):
                obj.data = obj.data.view(np.ndarray)

    # ----- where values come from ---------------------------------------------

    def _note(self, obj: Any, src: _Ref) -> None:
        self.keepalive.append(obj)
        self.by_id[id(obj)] = src

    def _note_array(self, arr: np.ndarray, src: _Ref) -> None:
        self._note(arr, src)
        self.by_mem.setdefault(_mem_key(arr), src)
        self.traced.append(arr)

    def _slot(self, v: Any) -> _Ref | None:
        """The replay slot that holds ``v`` (a tensor or array of the step), or None."""
        src = self.by_id.get(id(v))
        if src is not None:
            return src
        if isinstance(v, Tensor):
            v = v.data
            src = self.by_id.get(id(v))
            if src is not None:
                return src
        if isinstance(v, np.ndarray) and v.size:
            src = self.by_mem.get(_mem_key(v))  # np.asarray(xb): a plain view of the same memory
            if src is not None:
                return src
        return None

    def _untraced(self, v: np.ndarray) -> None:
        """Refuse ``v`` if it holds the step's values but no op computed it."""
        if isinstance(v, _Traced):
            raise _Refuse(
                "a value computed from the step's data outside chainrule's ops (with NumPy, "
                "or a copy such as x.data.copy()) would be frozen into the replay"
            )
        if v.size and any(np.may_share_memory(v, t) for t in self.traced):
            raise _Refuse(
                "a part of the step's data taken with NumPy (e.g. np.asarray(xb)[:, 0]) would be "
                "frozen into the replay; index the tensor instead"
            )

    def _source(self, v: Any) -> _Ref:
        """Where an op's operand comes from (see the _ARG... codes)."""
        if isinstance(v, Tensor):
            src = self._slot(v)
            if src is not None:
                return src
            if _node_rule(v) is not None:
                raise _Refuse("the graph reaches a non-leaf tensor computed outside the step")
            if isinstance(v.data, _Traced):
                self._untraced(v.data)
            return self._leaf(v)
        if isinstance(v, np.ndarray):
            src = self._slot(v)
            if src is not None:
                return src
            owner = self.data_owner.get(id(v))
            if owner is not None:  # p.data: read it live, like the tensor
                return self._leaf(owner)
            self._untraced(v)
            return (_CONST, v)
        if isinstance(v, (_TracedFloat, _TracedInt)):
            if v._src is not None:
                return v._src
            raise _Refuse("a Python number computed from the step's data (e.g. "
                          "loss.item() * 2) would be frozen into the replay")
        if isinstance(v, (tuple, list)):
            refs = tuple(self._source(e) for e in v)
            if all(r[0] == _CONST for r in refs):
                return (_CONST, v)
            return (_SEQ, (type(v), refs))
        return (_CONST, v)

    def _leaf(self, t: Tensor) -> _Ref:
        if id(t) not in self.leaf_ids:
            self.leaf_ids.add(id(t))
            self.keepalive.append(t)
            self.tape.leaves.append(t)
        return (_LEAF, t)

    # ----- the capture points -------------------------------------------------

    def op(self, fn: Callable[..., Tensor], rule: Rule, args: tuple,
           params: dict[str, Any]) -> Tensor:
        """ops.apply: run the op eagerly (on plain arrays), then record it."""
        _mode.tracer = None
        pargs, pparams, swapped = _plain_call_args(args, params)
        try:
            t = fn(rule, *pargs, **pparams)
        finally:
            _restore_data(swapped)
            self._attach()
        if self.error is not None:
            self.keepalive.append(t)  # untainted at the end
            return t
        try:
            fwd = tuple(self._source(a) for a in args)
            dynamic = {k: self._source(v) for k, v in params.items()}
        except _Refuse as exc:
            self.refuse(f"{exc}: it is used by the op '{rule.name}' at {_user_line()}")
            return t
        tape = self.tape
        if all(r[0] == _CONST for r in dynamic.values()):
            settings: Any = params  # the same dict every replay
            dyn = None
        else:
            settings = {k: v for k, v in params.items() if dynamic[k][0] == _CONST}
            dyn = tuple((k, r) for k, r in dynamic.items() if r[0] != _CONST)
        j = tape.n_ops
        tape.n_ops += 1
        r = _node_rule(t)
        recorded = r is not None
        tape.rules.append(rule)
        tape.metas.append(tuple(_meta(a) for a in pargs))
        tape.recorded.append(recorded)
        if recorded:
            tape.needs.append(_node_needs(t))
            # The VJP sees each operand as an array: for a Python-scalar operand
            # that is the 0-d array of the output's dtype the node keeps.
            tape.bwd_refs.append(tuple(
                ref if ref[0] != _CONST or isinstance(ref[1], np.ndarray)
                else (_CONST, _scalar_array(ref[1], t.data.dtype))
                for ref in fwd
            ))
        else:
            tape.needs.append(())
            tape.bwd_refs.append(())
        tape.instrs.append((_I_OP, j, rule, fwd, settings, dyn, recorded))
        tape.lines.append(_frame_line())
        dd = (rule is GETITEM and _has_bool_index(params.get("index"))) or any(
            getattr(a.data if isinstance(a, Tensor) else a, "_dd", False) for a in args)
        self._taint_result(t, (_OP, j), dd)
        self.nodes.append(t)
        return t

    def _taint_result(self, t: Tensor, src: _Ref, dd: bool = False) -> None:
        d = t.data
        # a plain array becomes traced; one of another class (already traced) stays
        view: Any = d.view(_Traced) if type(d) is np.ndarray else d
        if dd:
            view._dd = True
        t.data = view
        self._note(t, src)
        self._note_array(view, src)

    def made(self, t: Tensor, data: Any, dtype: Any) -> None:
        """Tensor(data): a tensor made from the step's values is a copy op."""
        if self.error is not None:
            return
        src = self._slot(data) if isinstance(data, (Tensor, np.ndarray)) else None
        if src is None:
            arr = data.data if isinstance(data, Tensor) else data
            if isinstance(arr, np.ndarray):
                try:
                    self._untraced(arr)
                except _Refuse as exc:
                    self.refuse(f"{exc}: a tensor is made from it at {_user_line()}")
            elif _traced_number_in(data):
                self.refuse(f"a tensor is made from numbers read from the step's data at "
                            f"{_user_line()}; they would be frozen into the replay")
            return
        if t._requires_grad:
            self.refuse(f"a tensor that requires grad is made from the step's data at "
                        f"{_user_line()}; make it from a tensor the step computes instead")
            return
        tape = self.tape
        j = tape.n_ops
        tape.n_ops += 1
        tape.rules.append(_MADE)
        tape.metas.append((_meta(data),))
        tape.recorded.append(False)
        tape.needs.append(())
        tape.bwd_refs.append(())
        tape.instrs.append((_I_OP, j, _MADE, (src,), {"dtype": dtype}, None, False))
        tape.lines.append(_frame_line())
        self._taint_result(t, (_OP, j))
        self.nodes.append(t)

    def module(self, m: Module) -> None:
        """Module.__call__: its settings are guarded; forward hooks cannot be replayed."""
        if self.error is not None:
            return
        if all(c is not m for c in self.called):
            self.called.append(m)
        hooked = m.has_forward_hooks() if hasattr(m, "has_forward_hooks") else any(
            getattr(m, name, None) for name in _MODULE_HOOK_ATTRS)
        if hooked:
            self.refuse(
                f"{type(m).__name__} has forward hooks (called at {_user_line()}); a replay "
                "does not run the step's Python, so it would skip them"
            )

    def read(self, arr: np.ndarray) -> _Ref | None:
        """``.item()`` of a traced array: the replay reads the same slot again."""
        src = self._slot(arr)
        if src is None or self.error is not None:
            return None
        q = self.tape.n_items
        self.tape.n_items += 1
        self.tape.instrs.append((_I_ITEM, q, src))
        self.tape.lines.append(_frame_line())
        return (_ITM, q)

    def converted(self, v: Any, src: _Ref | None, how: str) -> None:
        """float()/int() of a traced value: allowed only for a number the step returns."""
        self.conversions.append([v, src, how, _frame_line(), False])

    def effect(self, spec: Effect, args: tuple, kwargs: dict) -> Any:
        """A declared state-changing call: run it, record it, replay it every step."""
        if self.error is not None:
            return self._plain_call(spec.fn, args, kwargs)
        line = _frame_line()
        if spec.refuse is not None:
            reason = spec.refuse(*args, **kwargs)
            if reason is not None:
                self.refuse(f"{spec.name}() at {_fmt_line(line)}: {reason}")
                return self._plain_call(spec.fn, args, kwargs)
        args = tuple(list(a) if _is_iterator(a) else a for a in args)
        kwargs = {k: (list(v) if _is_iterator(v) else v) for k, v in kwargs.items()}
        where = f"the call {spec.name}() at {_fmt_line(line)}"
        self._boundary(where)
        if self.error is not None:
            return self._plain_call(spec.fn, args, kwargs)
        try:
            aspec = tuple(self._fx_arg(a) for a in args)
            kspec = {k: self._fx_arg(v) for k, v in kwargs.items()}
        except _Refuse as exc:
            self.refuse(f"{exc}: it is passed to {spec.name}() at {_fmt_line(line)}")
            return self._plain_call(spec.fn, args, kwargs)
        for o in spec.touched(args, kwargs):
            ref = self._slot(o) if isinstance(o, (Tensor, np.ndarray)) else None
            if ref is None:
                self.tape.touched.append((_CONST, o))
                self.keepalive.append(o)
            elif ref[0] == _ARG:
                self.tape.touched.append(ref)
        for o in spec.owned(args, kwargs):
            self.owned.add(id(o))
            self.keepalive.append(o)
        res = self._plain_call(spec.fn, args, kwargs)
        if self.error is not None:
            return res
        k = None
        if isinstance(res, (Tensor, np.ndarray)) and self._slot(res) is None and not any(
                res is a for a in args) and id(res) not in self.data_owner:
            k = self.tape.n_fx
            self.tape.n_fx += 1
            if isinstance(res, Tensor):
                self._taint_result(res, (_FX, k))
            else:
                res = res.view(_Traced)
                self._note_array(res, (_FX, k))
        self.tape.instrs.append((_I_FX, k, spec, aspec, kspec))
        self.tape.lines.append(line)
        self._baseline(where)
        return res

    def _plain_call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Call ``fn`` with the capture detached and the arguments' traced arrays plain."""
        _mode.tracer = None
        pargs, pkwargs, swapped = _plain_call_args(args, kwargs)
        try:
            return fn(*pargs, **pkwargs)
        finally:
            _restore_data(swapped)
            self._attach()

    def _fx_arg(self, a: Any) -> _FxSpec:
        """How a replay rebuilds an argument of a declared call: ``("tensor", ref)``
        (a new tensor around the slot's array), ``("array", ref)``, ``("item",
        ref)``, ``("obj", value)`` (the object itself, live), ``("seq", type,
        specs)`` or ``("dict", keys, specs)``."""
        if isinstance(a, Tensor):
            src = self._slot(a)
            if src is not None:
                return ("tensor", src)
            if isinstance(a.data, _Traced):  # a tensor wrapped around the step's values
                self._untraced(a.data)
            return ("obj", a)  # a parameter, a buffer: the object itself, live
        if isinstance(a, np.ndarray):
            src = self._slot(a)
            if src is not None:
                return ("array", src)
            if id(a) not in self.data_owner:  # not a parameter's own array
                self._untraced(a)
            return ("obj", a)
        if isinstance(a, (_TracedFloat, _TracedInt)):
            if a._src is None:
                raise _Refuse("a Python number computed from the step's data would be frozen "
                              "into the replay")
            return ("item", a._src)
        if isinstance(a, (tuple, list)):
            return ("seq", type(a), tuple(self._fx_arg(e) for e in a))
        if isinstance(a, dict):
            return ("dict", tuple(a), tuple(self._fx_arg(e) for e in a.values()))
        return ("obj", a)

    def backward(self, walk: Callable[..., Any], roots: Sequence[Tensor], seeds: Sequence[Any],
                 retain_graph: bool | None, create_graph: bool,
                 inputs: Sequence[Tensor] | None, observer: Any) -> Any:
        """run_backward: checked, planned, then run eagerly."""
        if self.error is not None:
            return self._plain_call(walk, (roots, seeds, retain_graph, create_graph, inputs,
                                           observer), {})
        line = _frame_line()
        tape = self.tape
        why = None
        root = -1
        if tape.root >= 0:
            why = "backward() is called more than once"
        elif create_graph or inputs is not None or observer is not None:
            why = "backward(create_graph=True), cr.grad/cr.vjp or an observer (cr.explain)"
        elif len(roots) != 1 or seeds[0] is not None:
            why = "backward() with an explicit seed or several outputs"
        else:
            src = self._slot(roots[0]) if isinstance(roots[0], Tensor) else None
            if src is None or src[0] != _OP or self.by_id.get(id(roots[0])) is None:
                why = "backward() on a tensor not computed inside the step"
            elif not tape.recorded[src[1]]:  # eager mode raises: let it say why
                why = "backward() on a tensor that does not require grad"
            else:
                root = src[1]
        where = f"backward() at {_fmt_line(line)}"
        if why is None:
            self._boundary(where)
        else:
            self.refuse(f"{why} ({_fmt_line(line)})")
        if self.error is None:
            tape.root = root
            self._plan()
        if self.error is not None:
            return self._plain_call(walk, (roots, seeds, retain_graph, create_graph, inputs,
                                           observer), {})
        tape.instrs.append((_I_BACKWARD,))
        tape.lines.append(line)
        res = self._plain_call(walk, (roots, seeds, retain_graph, create_graph, inputs,
                                      observer), {})
        self._baseline(where)
        return res

    def _plan(self) -> None:
        """Which ops the backward pass reaches (and no hooks or retain_grad there)."""
        tape = self.tape
        reached = [False] * tape.n_ops
        reached[tape.root] = True
        hooked: list[Tensor] = []
        for j in range(tape.root, -1, -1):
            if not reached[j]:
                continue
            node = self.nodes[j]
            if _node_hooked(node):
                self.refuse(f"gradient hooks or retain_grad() on the output of "
                            f"'{tape.rules[j].name}' (computed at "
                            f"{_fmt_line(tape.lines[self._op_instr(j)])}); a replay "
                            "would not run them")
                return
            tape.order.append(j)
            for (kind, ref), need in zip(tape.bwd_refs[j], tape.needs[j]):
                if not need:
                    continue
                if kind == _OP:
                    reached[ref] = True
                elif kind == _LEAF:
                    if ref._hooks:
                        self.refuse("a gradient hook (register_hook) on a parameter: a "
                                    "replay would not run it")
                        return
                    if ref._post_hooks and all(h is not ref for h in hooked):
                        hooked.append(ref)
                elif kind == _ARG:
                    self.refuse("an argument of the step requires grad")
                    return
        tape.post_hooks = hooked

    def _op_instr(self, j: int) -> int:
        for i, ins in enumerate(self.tape.instrs):
            if ins[0] == _I_OP and ins[1] == j:
                return i
        return 0

    # ----- state the step changes outside declared calls ---------------------

    def _boundary(self, where: str) -> None:
        """Nothing the step can reach may have changed outside its declared calls.

        The cheap check compares the state at the end of the step with the state
        at its start, except what the declared calls touch (a failed verification
        finds a change there that a replay would not repeat). When it finds
        something, the capture refuses and the next one (``locate``) checks
        before and after every declared call, to say where the change happens.
        """
        if self.error is not None or self.reach is None:
            return
        end = where == "the end of the step"
        if not (self.locate or end):
            return
        reach = _Reach(self.roots)
        now = reach.fingerprints()
        # what ops read may change inside them (batch norm's running statistics);
        # what declared calls touch is compared by the verification
        allowed = self._allowed(calls=not self.locate)
        what = reach.changed({i: f for i, f in self.fp.items() if i not in allowed}, now)
        if what is not None:
            between = f" between {self.since} and {where}" if self.locate else ""
            self.refuse(
                f"the step changes {what}{between}, outside chainrule's declared calls; a "
                "replay would not repeat it (make the change with an optimizer, scheduler or "
                "in-place tensor method, or outside the step)",
                retry=True,
            )

    def _allowed(self, calls: bool = True) -> set[int]:
        """Objects the ops, backward() and (``calls``) the declared calls may change,
        and all they hold."""
        roots = [("", t) for t in self.tape.leaves]
        if calls:
            for kind, v in self.tape.touched:
                roots.append(("", self.flat[v] if kind == _ARG else v))
        return set(_Reach(roots).paths)

    def _baseline(self, where: str) -> None:
        """After a declared call: what it changed is the new starting point."""
        if self.error is not None or not self.locate:
            return
        self.reach = _Reach(self.roots)
        self.fp = self.reach.fingerprints()
        self.since = where

    # ----- the end of the capture -----------------------------------------------

    def finish(self, result: Any) -> _Tape | None:
        tape = self.tape
        if self.error is None and tape.root < 0:
            self.refuse("the step never calls backward()")
        if self.error is None:
            try:
                tape.ret = self._ret(result)
            except _Refuse as exc:
                self.refuse(str(exc))
        if self.error is None:
            for _v, _src, how, line, consumed in self.conversions:
                if not consumed:
                    self.refuse(
                        f"{how} at {_fmt_line(line)} turns a value of the step's data into a "
                        "plain Python number that the step does not return; a replay would "
                        "freeze whatever uses it (return the tensor or its .item() instead)")
                    break
        if self.error is not None:
            return None
        after = tape.instrs[[i[0] for i in tape.instrs].index(_I_BACKWARD) + 1:]
        keep: set[int] = set()
        for ins in after:
            if ins[0] == _I_OP:
                keep.update(_op_refs(ins[3]))
                if ins[5]:
                    keep.update(_op_refs(r for _, r in ins[5]))
            elif ins[0] == _I_ITEM:
                keep.update(_op_refs([ins[2]]))
            elif ins[0] == _I_FX:
                keep.update(_op_refs(_fx_refs(ins[3]) + _fx_refs(tuple(ins[4].values()))))
        keep.update(_op_refs(_ret_refs(tape.ret)))
        tape.keep = keep
        tape.guard = _Guard(self._guard_entries())
        return tape

    def _guard_entries(self) -> list[_GuardEntry]:
        """The start-of-step state the step's Python reads: everything it reaches,
        except what its declared calls manage (read live by them)."""
        keep = _Reach(self.roots, stop=self.owned, live=True, names=self.names)
        ok = {id(o) for o in keep.objs}
        entries = [e for e in self.guard_entries if id(_entry_owner(e)) in ok]
        seen = set(keep.paths)
        for m in self.called:  # modules reached only through the call
            if id(m) not in seen and id(m) not in self.owned:
                extra = _Reach([(f"the module {type(m).__name__}", m)],
                               stop=self.owned | set(seen), live=True, names=self.names)
                entries += extra.guard_entries()
                seen.update(extra.paths)
        for t in self.tape.leaves:
            name = t.name or f"a tensor of shape {t.data.shape}"
            entries.append(["attr", t, "_requires_grad", t._requires_grad,
                            f"{name}.requires_grad", t])
            entries.append(["attr", t, "data", t.data, f"{name}.data", t])
            entries.append(["attr", t, "_hooks", t._hooks, f"{name} (gradient hooks)", t])
            hooks = t._post_hooks
            entries.append(["attr", t, "_post_hooks", hooks, f"{name} (post-accumulate hooks)",
                            t])
            if hooks is not None:
                entries.append(["len", hooks, None, len(hooks),
                                f"{name} (post-accumulate hooks)", t])
                entries += [["item", hooks, i, h, f"{name} (post-accumulate hook {i})", t]
                            for i, h in enumerate(hooks)]
        # one check per fact: three Linear layers reach Linear.forward three times
        unique: dict[tuple[str, int, Any], _GuardEntry] = {}
        for e in entries:
            unique.setdefault((e[0], id(e[1]), e[2]), e)
        return list(unique.values())

    def _ret(self, v: Any) -> _RetSpec:
        """How to rebuild the step's return value from a replay: ``(_CONST, None)``,
        ``("tensor", ref)`` (an op's result, as eager mode returns it),
        ``("detached", ref)``, ``("array", ref)``, ``("number", ref)``, ``("seq",
        type, specs)`` or ``("dict", keys, specs)``."""
        if v is None:
            return (_CONST, None)
        if isinstance(v, Tensor):
            src = self.by_id.get(id(v))
            if src is not None and src[0] == _OP:
                return ("tensor", src)
            if src is not None and src[0] in (_FX, _ARG):
                return ("detached", src)
            src = self._slot(v.data)
            if src is not None and src[0] in _SLOT_KINDS and not v._requires_grad:
                return ("detached", src)  # loss.detach(): the value, no graph
            raise _Refuse("the step returns a Tensor it did not compute")
        if isinstance(v, np.ndarray):
            src = self._slot(v)
            if src is None or src[0] not in _SLOT_KINDS:
                raise _Refuse("the step returns an array it did not compute")
            return ("array", src)  # out.data
        if isinstance(v, (_TracedFloat, _TracedInt)):
            if v._src is None:
                raise _Refuse("the step returns a number computed in Python from its data "
                              "(e.g. loss.item() * 2); return the tensor instead")
            return ("number", v._src)
        if isinstance(v, (float, int)) and not isinstance(v, bool):
            for conv in reversed(self.conversions):
                if not conv[4] and conv[1] is not None and type(conv[0]) is type(v) and (
                        _atom(conv[0]) == _atom(v)):
                    conv[4] = True
                    return ("number", conv[1])
            raise _Refuse("the step returns a number not read from a tensor it computed "
                          f"({v!r})")
        if isinstance(v, (tuple, list)):
            return ("seq", type(v), tuple(self._ret(e) for e in v))
        if isinstance(v, dict):
            return ("dict", tuple(v), tuple(self._ret(e) for e in v.values()))
        raise _Refuse(
            f"the step returns a {type(v).__name__}; a replay can only return Tensors the "
            "step computed (or their .detach(), .data, .item()), None, and tuples/lists/"
            "dicts of these"
        )


# Attributes where modules keep forward hooks (PyTorch's names)
_MODULE_HOOK_ATTRS = ("_forward_hooks", "_forward_pre_hooks")


def _entry_owner(e: _GuardEntry) -> Any:
    """The object an entry belongs to (the function, for closure cells and globals)."""
    return e[5]


def _op_refs(refs: Iterable[_Ref]) -> list[int]:
    out: list[int] = []
    for kind, ref in refs:
        if kind == _OP:
            out.append(ref)
        elif kind == _SEQ:
            out.extend(_op_refs(ref[1]))
    return out


def _fx_refs(specs: Iterable[_FxSpec]) -> list[_Ref]:
    out: list[_Ref] = []
    for s in specs:
        if s[0] in ("tensor", "array", "item"):
            out.append(s[1])
        elif s[0] in ("seq", "dict"):
            out += _fx_refs(s[2])
    return out


def _ret_refs(ret: _RetSpec) -> list[_Ref]:
    kind = ret[0]
    if kind in ("tensor", "detached", "array", "number"):
        return [ret[1]]
    if kind in ("seq", "dict"):
        return [r for e in ret[2] for r in _ret_refs(e)]
    return []


# ---------------------------------------------------------------------------
# Two captures of the same signature must record the same program
# ---------------------------------------------------------------------------


def _same_const(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, (np.ndarray, Tensor)) or isinstance(b, (np.ndarray, Tensor)):
        return False  # arrays made anew on every call: made from the data, or from Python state
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_const(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_const(a[k], b[k]) for k in a)
    if isinstance(a, (_ATOMS, np.generic)):
        return _atom(a) == _atom(b)
    if isinstance(a, (slice, np.dtype, type)):
        return a == b
    return False


def _const_desc(a: Any, b: Any) -> str:
    if isinstance(b, np.ndarray):
        return ("an array made inside the step (with NumPy, or from Python state) is used "
                "as a constant and would be frozen into the replay; make it with chainrule "
                "ops from the step's arguments, or once, outside the step")
    if isinstance(b, Tensor):
        return ("a tensor made inside the step from values the capture cannot follow is used "
                "and would be frozen into the replay; make it with chainrule ops from the "
                "step's arguments, or once, outside the step")
    return (f"a constant differs between two calls ({_short(a)} then {_short(b)}): it comes "
            "from the step's data or from Python state, and a replay would freeze it")


def _diff_refs(a: _Ref, b: _Ref) -> str | None:
    if a[0] != b[0]:
        return "an operand comes from somewhere else"
    kind = a[0]
    if kind == _CONST:
        return None if _same_const(a[1], b[1]) else _const_desc(a[1], b[1])
    if kind == _LEAF:
        return None if a[1] is b[1] else _const_desc(a[1], b[1])
    if kind == _SEQ:
        if a[1][0] is not b[1][0] or len(a[1][1]) != len(b[1][1]):
            return "an operand comes from somewhere else"
        for x, y in zip(a[1][1], b[1][1]):
            d = _diff_refs(x, y)
            if d is not None:
                return d
        return None
    return None if a[1] == b[1] else "an operand comes from somewhere else"


def _diff_fx(a: _FxSpec, b: _FxSpec) -> str | None:
    if a[0] != b[0]:
        return "an argument comes from somewhere else"
    if a[0] == "obj":
        return None if _same_const(a[1], b[1]) or (
            isinstance(a[1], list) and isinstance(b[1], list) and len(a[1]) == len(b[1])
            and all(x is y or _same_const(x, y) for x, y in zip(a[1], b[1]))
        ) else _const_desc(a[1], b[1])
    if a[0] in ("seq", "dict"):
        if a[1] != b[1] or len(a[2]) != len(b[2]):
            return "an argument comes from somewhere else"
        for x, y in zip(a[2], b[2]):
            d = _diff_fx(x, y)
            if d is not None:
                return d
        return None
    return None if a[1] == b[1] else "an argument comes from somewhere else"


def _diff_tapes(a: _Tape, b: _Tape) -> str | None:
    """Why two captures of one signature differ (None: they record the same program)."""
    for i in range(max(len(a.instrs), len(b.instrs))):
        if i >= len(a.instrs) or i >= len(b.instrs):
            line = b.lines[i] if i < len(b.lines) else a.lines[i]
            return f"the two calls did a different number of things (from {_fmt_line(line)} on)"
        x, y = a.instrs[i], b.instrs[i]
        where = _fmt_line(b.lines[i])
        if x[0] != y[0]:
            return f"the two calls did different things at {where}"
        why = None
        if x[0] == _I_OP:
            if x[2] is not y[2] or x[6] != y[6]:
                why = f"the first ran '{x[2].name}', the second '{y[2].name}'"
            elif len(x[3]) != len(y[3]) or x[4].keys() != y[4].keys() or (
                    (x[5] is None) != (y[5] is None)):
                why = "the op was called differently"
            else:
                for r1, r2 in zip(x[3], y[3]):
                    why = why or _diff_refs(r1, r2)
                for k in x[4]:
                    if why is None and not _same_const(x[4][k], y[4][k]):
                        why = f"its setting {k}=: " + _const_desc(x[4][k], y[4][k])
                if why is None and x[5] is not None:
                    if [k for k, _ in x[5]] != [k for k, _ in y[5]]:
                        why = "the op was called differently"
                    for (_, r1), (_, r2) in zip(x[5], y[5]):
                        why = why or _diff_refs(r1, r2)
            if why is not None:
                return f"op '{y[2].name}' at {where}: {why}"
        elif x[0] == _I_FX:
            if x[2] is not y[2] or (x[1] is None) != (y[1] is None):
                return f"the two calls made different declared calls at {where}"
            for s1, s2 in zip(x[3] + tuple(x[4].values()), y[3] + tuple(y[4].values())):
                why = why or _diff_fx(s1, s2)
            if why is None and (len(x[3]) != len(y[3]) or x[4].keys() != y[4].keys()):
                why = "it was called differently"
            if why is not None:
                return f"{y[2].name}() at {where}: {why}"
        elif x[0] == _I_ITEM and x[2] != y[2]:
            return f"the two calls read different values at {where}"
    if a.order != b.order or a.root != b.root:
        return "the two calls' backward passes reached different ops"
    if len(a.leaves) != len(b.leaves) or any(p is not q for p, q in zip(a.leaves, b.leaves)):
        return "the two calls read different tensors made outside the step"
    if not _same_ret(a.ret, b.ret):
        return "the two calls return different things"
    return None


def _same_ret(a: _RetSpec, b: _RetSpec) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] in ("seq", "dict"):
        return a[1] == b[1] and len(a[2]) == len(b[2]) and all(
            _same_ret(x, y) for x, y in zip(a[2], b[2]))
    if a[0] == _CONST:
        return a[1] is b[1]
    return a[1] == b[1]


# ---------------------------------------------------------------------------
# Lowering a tape to a program: one Python function, generated
# ---------------------------------------------------------------------------


class _VjpNode:
    """What ``vjp_step`` reads of a node, for one op of a replay."""

    __slots__ = ("op", "out", "ctx", "needs", "inputs")
    op: Rule
    out: np.ndarray | None
    ctx: Any  # rule-specific, as on a Node
    needs: tuple[bool, ...]
    inputs: tuple[Any, ...] | None  # the operands' arrays while its VJP runs


# An op of a replay's backward pass: (node, operand slots, output slot, op index,
# dests, free, keep_out, kernel) -- see _Program
_BwdStep = tuple[_VjpNode, tuple[int, ...], int, int, tuple[tuple[int, int, bool], ...], bool,
                 bool, "Kernel | None"]


class _Program:
    """A tape lowered to numbered slots, and the Python function that replays it.

    Slots hold, in this order: the step's array arguments, each op's output,
    each array a declared call returned, each number read with ``.item()``, the
    parameters' arrays (read afresh at every replay, as optimizers may replace
    them) and the constants. ``steps``, one per tape instruction:

    * ``(_I_OP, rule, operand slots, settings, dyn, out, j, recorded, kernel)``:
      ``dyn`` is None or ``((name, spec), ...)``, settings rebuilt from slots
      (``("slot", s)`` or ``("seq", type, specs)``); the context of a
      ``recorded`` op is kept for op ``j``'s VJP; ``kernel``: the rule's
      :class:`~chainrule.ops.Kernel` for the captured shapes, or None;
    * ``(_I_FX, fn, args, kwargs, out)``: ``fn`` called with its arguments
      rebuilt (``_FxSpec`` with slot numbers for refs); the array it returns goes
      to slot ``out`` (None: not kept). A plain SGD step is ``(_I_FX, plan, (),
      {}, None)``;
    * ``(_I_ITEM, src, dst)``: slot ``dst`` is ``slot src .item()``;
    * ``(_I_BACKWARD,)``.

    ``bwd``, the ops backward visits, in order: ``(node, operand slots, out, j,
    dests, free, keep_out, kernel)``: ``dests`` are ``(operand, slot, is a
    parameter)`` for the operands that need a gradient; ``free``: the output's
    slot can be let go once the VJP has it; ``keep_out``: the VJP reads the
    output.

    :func:`_generate` writes these out as one straight-line function, ``run``:
    what the replay of a step costs is then the arithmetic, not the walking
    of a program.
    """

    __slots__ = ("nargs", "consts", "leaf_slots", "steps", "bwd", "root", "n_ops", "ret", "tape",
                 "guard", "verified", "post_hooks", "fused", "kernels", "run",
                 "source")
    # the slots, for the type checker (annotations alone make no class attribute)
    nargs: int
    consts: dict[int, Any]  # slot -> constant
    leaf_slots: list[tuple[int, Tensor]]
    steps: list[_Step]
    bwd: list[_BwdStep]
    root: int  # the slot backward() starts from
    n_ops: int
    ret: _RetSpec  # with slot numbers for refs
    tape: _Tape
    guard: _Guard  # the tape's guards
    verified: bool
    post_hooks: set[int]  # slots of parameters with post-accumulate-grad hooks
    fused: dict[int, _LinearUpdate]  # see _fusable
    kernels: list[Kernel]
    run: Callable[[list[Any], bool], Any]  # run(flat, fuse): one replay
    source: str

    def release(self) -> None:
        """Let go of the arrays the kernels keep between replays."""
        for k in self.kernels:
            k.release()


def _lower(tape: _Tape, fused_update: bool = False) -> _Program:
    if tape.guard is None:
        raise AssertionError("a tape is lowered only once finish() gave it its guards")
    prog = _Program()
    prog.tape = tape
    prog.guard = tape.guard
    prog.verified = False
    prog.fused = _fusable(tape) if fused_update else {}
    nargs = prog.nargs = tape.nargs
    prog.n_ops = tape.n_ops
    op0 = nargs
    fx0 = op0 + tape.n_ops
    it0 = fx0 + tape.n_fx
    n_slots = [it0 + tape.n_items]
    leaf_slot: dict[int, int] = {}
    const_slot: dict[int, int] = {}
    consts: dict[int, Any] = {}
    leaf_slots: list[tuple[int, Tensor]] = []

    def slot(ref: _Ref) -> int:
        kind, v = ref
        if kind == _ARG:
            return v
        if kind == _OP:
            return op0 + v
        if kind == _FX:
            return fx0 + v
        if kind == _ITM:
            return it0 + v
        if kind == _LEAF:
            s = leaf_slot.get(id(v))
            if s is None:
                s = leaf_slot[id(v)] = n_slots[0]
                n_slots[0] += 1
                leaf_slots.append((s, v))
            return s
        if kind == _CONST:
            s = const_slot.get(id(v))
            if s is None:
                s = const_slot[id(v)] = n_slots[0]
                n_slots[0] += 1
                consts[s] = v
            return s
        raise AssertionError(kind)

    def nested(ref: _Ref) -> tuple[Any, ...]:
        """A setting that holds operands (an index tuple with arrays)."""
        if ref[0] == _SEQ:
            typ, refs = ref[1]
            return ("seq", typ, tuple(nested(r) for r in refs))
        return ("slot", slot(ref))

    def fx_arg(spec: _FxSpec) -> _FxSpec:
        kind = spec[0]
        if kind in ("tensor", "array", "item"):
            return (kind, slot(spec[1]))
        if kind in ("seq", "dict"):
            return (kind, spec[1], tuple(fx_arg(e) for e in spec[2]))
        return spec

    kernels: dict[int, Kernel] = {}
    steps: list[_Step] = []
    for ins in tape.instrs:
        kind = ins[0]
        if kind == _I_OP:
            _, j, rule, refs, settings, dyn, recorded = ins
            dyn_slots = None if dyn is None else tuple((key, nested(r)) for key, r in dyn)
            kernel = None
            if rule.kernel is not None:
                given = dict(settings)
                given.update((key, DYNAMIC) for key, _ in dyn or ())
                kernel = rule.kernel(tape.metas[j], given, tape.needs[j])
                if kernel is not None:
                    kernels[j] = kernel
            steps.append((_I_OP, rule, tuple(slot(r) for r in refs), settings, dyn_slots,
                          op0 + j, j, recorded, kernel))
        elif kind == _I_FX:
            _, k, spec, aspec, kspec = ins
            plan = _update_plan(tape, ins)
            if plan is not None:  # optimizer.step() as a precompiled update
                steps.append((_I_FX, plan, (), {}, None))
                continue
            steps.append((_I_FX, spec.fn, tuple(fx_arg(a) for a in aspec),
                          {key: fx_arg(a) for key, a in kspec.items()},
                          None if k is None else fx0 + k))
        elif kind == _I_ITEM:
            steps.append((_I_ITEM, slot(ins[2]), it0 + ins[1]))
        else:
            steps.append(ins)
    bwd: list[_BwdStep] = []
    keep = {op0 + j for j in tape.keep}
    for j in tape.order:
        refs = tape.bwd_refs[j]
        slots = tuple(slot(r) for r in refs)
        dests = tuple(
            (i, slots[i], refs[i][0] == _LEAF)
            for i, need in enumerate(tape.needs[j]) if need
        )
        out = op0 + j
        rule = tape.rules[j]
        node = _VjpNode()  # what vjp_step reads, filled in for each replay (calls are serial)
        node.op = rule
        node.needs = tape.needs[j]
        bwd.append((node, slots, out, j, dests, out not in keep, rule.plan(tape.needs[j])[1],
                    kernels.get(j)))
    prog.consts = consts
    prog.leaf_slots = leaf_slots
    prog.post_hooks = {leaf_slot[id(t)] for t in tape.post_hooks}
    prog.steps = steps
    prog.bwd = bwd
    prog.root = op0 + tape.root
    prog.ret = _lower_ret(tape.ret, slot, tape)
    prog.kernels = list(kernels.values())
    _generate(prog)
    return prog


def _lower_ret(ret: _RetSpec, slot: Callable[[_Ref], int], tape: _Tape) -> _RetSpec:
    kind = ret[0]
    if kind in ("seq", "dict"):
        return (kind, ret[1], tuple(_lower_ret(e, slot, tape) for e in ret[2]))
    if kind == "tensor":
        j = ret[1][1]
        return (kind, slot(ret[1]), tape.rules[j] if tape.recorded[j] else None)
    if kind in ("detached", "array", "number"):
        return (kind, slot(ret[1]))
    return ret


# ---------------------------------------------------------------------------
# Replaying: the program as straight-line Python
# ---------------------------------------------------------------------------


class _Source:
    """Python source being written, and the objects it names (its globals)."""

    def __init__(self, ns: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.ns = ns
        self.named: dict[int, str] = {}

    def name(self, obj: Any, prefix: str = "k") -> str:
        """A global name for ``obj`` (the same name for the same object)."""
        found = self.named.get(id(obj))
        if found is None:
            # an underscore: locals never start with one
            found = self.named[id(obj)] = f"_{prefix}{len(self.ns)}"
            self.ns[found] = obj
        return found

    def add(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)


def _generate(prog: _Program) -> None:
    """Write ``prog.run(flat, fuse)``: the replay as one straight-line function.

    Every slot is a local variable (``s7``), every constant, rule, kernel and
    parameter a global of the function, and every decision that depends only
    on the program's structure is taken here, once: which ops have a kernel,
    where a gradient arrives for the first time (no test for an empty table
    entry), which outputs are let go during backward. What runs is the same
    arithmetic, in the same order, as the eager step: each op's forward (or
    its kernel), the declared calls, and the backward pass of ``run_backward``
    (``vjp_step``, the same accumulation rule and dtype checks, leaves stored
    as eager mode stores them).
    """
    ns: dict[str, Any] = {
        "Tensor": Tensor, "ndarray": np.ndarray, "asarray": np.asarray, "add": np.add,
        "unit": unit_seed, "quiet": _quiet, "loud": _loud, "op_error": _op_error,
        "vjp_step": vjp_step, "conform": conform_grad, "store": _store_grad,
        "grad_lock": _GRAD_LOCK, "add_grad": _add_grad, "new": object.__new__,
        "released": _released_result, "fused_vjp": _fused_vjp,
        "const": Tensor._const, "prog": prog,
    }
    src = _Source(ns)
    add = src.add

    def var(s: int) -> str:
        return src.name(prog.consts[s], "c") if s in prog.consts else f"s{s}"

    def seq(typ: type, items: list[str]) -> str:
        body = ", ".join(items) + ("," if len(items) == 1 else "")
        if typ is tuple:
            return f"({body})"
        if typ is list:
            return f"[{body}]"
        return f"{src.name(typ, 't')}(({body}))"

    def setting(v: tuple[Any, ...]) -> str:
        if v[0] == "slot":
            return var(v[1])
        return seq(v[1], [setting(e) for e in v[2]])

    def fx_value(spec: _FxSpec) -> str:
        kind = spec[0]
        if kind == "obj":
            return src.name(spec[1], "o")
        if kind == "tensor":
            return f"const({var(spec[1])})"
        if kind in ("array", "item"):
            return var(spec[1])
        if kind == "seq":
            return seq(spec[1], [fx_value(e) for e in spec[2]])
        return "{" + ", ".join(f"{src.name(k, 'o')}: {fx_value(e)}"
                               for k, e in zip(spec[1], spec[2])) + "}"

    def build(ret: _RetSpec) -> str:
        kind = ret[0]
        if kind == "tensor":
            if ret[2] is None:
                return f"const({var(ret[1])})"
            return f"released({var(ret[1])}, {src.name(ret[2], 'r')})"
        if kind == "detached":
            return f"const({var(ret[1])})"
        if kind in ("number", "array"):
            return var(ret[1])
        if kind == "seq":
            return seq(ret[1], [build(e) for e in ret[2]])
        if kind == "dict":
            return "{" + ", ".join(f"{src.name(k, 'o')}: {build(e)}"
                                   for k, e in zip(ret[1], ret[2])) + "}"
        return src.name(ret[1], "o")

    needed_ctx = {b[3] for b in prog.bwd}
    # operands an op's kernel must see with the captured shape and dtype, tested
    # before each call (where they differ, the rule's own functions run): those
    # computed in the step, unless by a kernel that runs unconditionally (its
    # output has the captured shape); arguments are fixed by the signature,
    # parameters by the guards
    checked: dict[int, list[tuple[int, tuple[int, ...], np.dtype]]] = {}
    fixed: set[int] = set()  # outputs of kernels that always run
    op0, end = prog.nargs, prog.nargs + prog.n_ops + prog.tape.n_fx
    for st in prog.steps:
        if st[0] == _I_OP and st[8] is not None:
            metas = prog.tape.metas[st[6]]
            tests = checked[st[6]] = [(s, *m) for s, m in zip(st[2], metas)
                                      if op0 <= s < end and s not in fixed and m is not None]
            if not tests:
                fixed.add(st[5])

    add(0, "def replay(flat, fuse):")
    if prog.nargs:
        add(1, ", ".join(f"s{i}" for i in range(prog.nargs)) + ", = flat")
        for i in range(prog.nargs):
            add(1, f"if isinstance(s{i}, Tensor): s{i} = s{i}.data")
    for s, t in prog.leaf_slots:
        add(1, f"s{s} = {src.name(t, 'p')}.data")
    for st in prog.steps:
        kind = st[0]
        if kind == _I_OP:
            _, rule, slots, settings, dyn, out, j, recorded, kernel = st
            args = ", ".join(var(s) for s in slots)
            r = src.name(rule, "r")
            # the settings, each as a keyword argument of its own (a call spreading a
            # dict, **{**fixed, 'target': s1}, costs about 0.25 us more); a computed
            # one (dyn) replaces the fixed value of its name
            named = {k: src.name(v, "v") for k, v in settings.items()}
            named.update((k, setting(v)) for k, v in dyn or ())
            if all(k.isidentifier() and not keyword.iskeyword(k) for k in named):
                kw = "".join(f", {k}={e}" for k, e in named.items())
                sdict = "{" + ", ".join(f"{k!r}: {e}" for k, e in named.items()) + "}"
            elif dyn is None:
                kw = f", **{src.name(settings, 'k')}" if settings else ""
                sdict = src.name(settings, "k")
            else:
                items = [f"{k!r}: {setting(v)}" for k, v in dyn]
                if settings:
                    items.insert(0, f"**{src.name(settings, 'k')}")
                sdict = "{" + ", ".join(items) + "}"
                kw = f", **{sdict}"
            ctx = f"c{j}" if recorded and j in needed_ctx else "_"
            generic = f"s{out}, {ctx} = {r}.forward({args}{kw})"
            add(1, f"# op {j}: {rule.name}")
            add(1, "try:")
            if kernel is None:
                add(2, generic)
            else:
                fast = f"s{out}, {ctx} = {src.name(kernel.forward, 'kf')}({args}{kw})"
                tests = checked[j]
                if not tests:
                    add(2, fast)
                else:
                    cond = " and ".join(f"s{s}.shape == {src.name(shape, 'h')} and "
                                        f"s{s}.dtype == {src.name(dt, 'd')}"
                                        for s, shape, dt in tests)
                    add(2, f"k{j} = {cond}")
                    add(2, f"if k{j}:")
                    add(3, fast)
                    add(2, "else:")
                    add(3, generic)
            add(1, "except (ValueError, TypeError, IndexError) as exc:")
            add(2, f"raise op_error({r}, [{args}], {sdict}, exc) from exc")
            if kernel is None or checked[j]:  # a kernel's output is an array it keeps
                add(1, f"if type(s{out}) is not ndarray: s{out} = asarray(s{out})")
        elif kind == _I_FX:
            _, fn, fargs, fkwargs, out = st
            call = ", ".join([fx_value(a) for a in fargs] + (
                ["**{" + ", ".join(f"{k!r}: {fx_value(a)}" for k, a in fkwargs.items()) + "}"]
                if fkwargs else []))
            f = src.name(fn, "f")
            if out is None:
                add(1, f"{f}({call})")
            else:
                add(1, f"s{out} = {f}({call})")
                add(1, f"if isinstance(s{out}, Tensor): s{out} = s{out}.data")
        elif kind == _I_ITEM:
            add(1, f"s{st[2]} = {var(st[1])}.item()")
        else:
            add(1, "quiet_state = quiet()  # division, invalid, overflow: no warnings")
            add(1, "try:")
            _generate_backward(prog, src, var, checked)
            add(1, "finally:")
            add(2, "loud(quiet_state)")
    add(1, f"return {build(prog.ret)}")
    prog.source = "\n".join(src.lines) + "\n"
    filename = f"<cr.compile replay {id(prog):x}>"
    # the source is kept where tracebacks and debuggers look for it
    linecache.cache[filename] = (len(prog.source), None, prog.source.splitlines(True), filename)
    exec(builtins.compile(prog.source, filename, "exec"), ns)  # noqa: S102  (our own code)
    prog.run = ns["replay"]


def _generate_backward(prog: _Program, src: _Source, var: Callable[[int], str],
                       checked: dict[int, list[Any]]) -> None:
    """The backward pass of a program (see :func:`_generate`), in :func:`_quiet`'s state."""
    add = src.add
    root = prog.root
    if prog.fused:
        # which fused updates apply in this replay (see _LinearUpdate.ready)
        for j in sorted(prog.fused):
            add(2, f"u{j} = {src.name(prog.fused[j], 'u')} if fuse and "
                   f"{src.name(prog.fused[j], 'u')}.ready() else None")
    # the seed dL/dL = 1, shared (not ours to overwrite: o is False)
    add(2, f"g{root} = unit(s{root})")
    add(2, f"o{root} = False")
    # how many contributions each table entry can receive: an entry with one
    # needs no test for whether it is empty
    arrivals: dict[int, int] = {}
    for *_, dests, _free, _keep, _k in prog.bwd:
        for _i, d, _leaf in dests:
            arrivals[d] = arrivals.get(d, 0) + 1
    leaves = {d for *_, dests, _free, _keep, _k in prog.bwd for _i, d, leaf in dests if leaf}
    for d in arrivals:
        if d != root:
            add(2, f"g{d} = None" + (f"; o{d} = False" if d in leaves else ""))
    hooked = bool(prog.post_hooks)
    if hooked:
        add(2, "first = []")
    seen: set[int] = set()
    order: list[int] = []  # parameters in the order their gradients first arrive
    for node, slots, out, j, dests, free, keep_out, kernel in prog.bwd:
        rule = node.op
        n = src.name(node, "n")
        r = src.name(rule, "r")
        operands = ", ".join(var(s) for s in slots)
        add(2, f"# backward of op {j}: {rule.name}")
        add(2, f"g = g{out}")
        depth = 2
        if out != root:
            add(2, "if g is not None:")
            depth = 3
        add(depth, f"g{out} = None")
        fused = j in prog.fused
        generic: list[tuple[int, str]] = [
            (0, f"{n}.inputs = ({operands},)"),
            (0, f"{n}.out = s{out}" if keep_out else f"{n}.out = None"),
        ]
        if free:
            generic.append((0, f"s{out} = None"))
        generic.append((0, f"{n}.ctx = c{j}"))
        generic.append((0, f"c{j} = None"))
        if fused:
            generic += [(0, f"if u{j} is not None:"),
                        (1, f"pgs = fused_vjp({n}, {n}.inputs, g, o{out}, u{j})"),
                        (0, "else:"),
                        (1, f"pgs = vjp_step({n}, g, o{out}, True)")]
        else:
            generic.append((0, f"pgs = vjp_step({n}, g, o{out}, True)"))
        generic.append((0, f"{n}.inputs = {n}.out = {n}.ctx = None"))
        fast: list[tuple[int, str]] = []
        if kernel is not None:
            kv = src.name(kernel.vjp, "kv")
            if fused:
                ku = src.name(kernel.vjp_update, "ku")  # type: ignore[attr-defined]
                fast += [(0, f"if u{j} is not None:"),
                         (1, f"pgs = {ku}(g, o{out}, c{j}, u{j}, {operands})"),
                         (0, "else:"),
                         (1, f"pgs = {kv}(g, o{out}, c{j}, {operands})")]
            else:
                fast.append((0, f"pgs = {kv}(g, o{out}, c{j}, {operands})"))
            fast.append((0, f"c{j} = None"))
            if free:
                fast.append((0, f"s{out} = None"))
        if kernel is None:
            for k, line in generic:
                add(depth + k, line)
        elif not checked[j]:
            for k, line in fast:
                add(depth + k, line)
        else:
            add(depth, f"if k{j}:")
            for k, line in fast:
                add(depth + 1 + k, line)
            add(depth, "else:")
            for k, line in generic:
                add(depth + 1 + k, line)
        for i, d, leaf in dests:
            add(depth, f"pg = pgs[{i}]")
            add(depth, "if pg is not None:")
            inner = depth + 1
            # a kernel's gradients have the operand's shape and dtype by construction
            if kernel is None:
                add(inner, f"pg = conform({r}, pg, {var(slots[i])})")
            elif checked[j]:
                add(inner, f"if not k{j}: pg = conform({r}, pg, {var(slots[i])})")
            if leaf and d not in seen:
                seen.add(d)
                order.append(d)
            if arrivals[d] > 1:
                add(inner, f"if g{d} is None:")
                inner += 1
            add(inner, f"g{d} = pg")
            if kernel is not None and not checked[j]:
                # a kernel's gradients are arrays it keeps (or made anew): never g
                # nor a view, the replay's own
                add(inner, f"o{d} = True")
            else:
                add(inner, f"o{d} = pg is not g and pg.base is None")
            if hooked and leaf:
                add(inner, f"first.append({d})")
            if arrivals[d] > 1:
                add(inner - 1, f"elif o{d}:")
                add(inner, f"add(g{d}, pg, out=g{d})")
                add(inner - 1, "else:")
                add(inner, f"t = g{d} + pg")
                add(inner, f"g{d} = t if type(t) is ndarray else asarray(t)")
                add(inner, f"o{d} = True")
    leaf_of = dict(prog.leaf_slots)
    if not hooked:  # the order of stores matters only to post-accumulate hooks
        if order:
            # _store_grad written out, under one lock: a first gradient the replay
            # owns becomes .grad as it is (Tensor._const inline), anything else goes
            # through _add_grad (accumulation, or a copy of an array not ours)
            # (acquire and release: half the cost of a with statement)
            add(2, "grad_lock.acquire()")
            add(2, "try:")
            for d in order:
                p = src.name(leaf_of[d], "p")
                add(3, f"if g{d} is not None:")
                add(4, f"if o{d} and {p}._grad is None:")
                add(5, f"t = new(Tensor); t.data = g{d}; t._requires_grad = False; "
                       f"t._node = None; {p}._grad = t")
                add(4, "else:")
                add(5, f"add_grad({p}, g{d}, o{d})")
            add(2, "finally:")
            add(3, "grad_lock.release()")
        return
    # leaves stored in the order their first gradient arrived, each followed by its hooks
    table = ", ".join(f"{d}: ({src.name(leaf_of[d], 'p')}, g{d}, o{d})" for d in order)
    add(2, f"table = {{{table}}}")
    add(2, "for d in first:")
    add(3, "param, pg, mine = table[d]")
    add(3, "store(param, pg, mine, False)")
    add(3, f"if d in {src.name(prog.post_hooks, 'k')} and param._post_hooks:")
    add(4, "for hook in list(param._post_hooks):")
    add(5, "hook(param)")


# ---------------------------------------------------------------------------
# The optimizer's step as a precompiled update
# ---------------------------------------------------------------------------


def _update_plan(tape: _Tape, ins: _Instr) -> _SGDPlan | None:
    """A plan for an ``SGD.step()`` instruction of the tape, or None (replayed as is)."""
    from .optim.sgd import SGD

    _, k, spec, aspec, kspec = ins
    if spec.fn is not _OPT_STEP or kspec or len(aspec) != 1 or aspec[0][0] != "obj":
        return None
    opt = aspec[0][1]
    if type(opt) is not SGD or k is not None:
        return None
    # zeroed before this step in the same program: no gradient can be stale
    zeroed = False
    for other in tape.instrs:
        if other is ins:
            break
        if other[0] == _I_FX and other[2].fn is _OPT_ZERO and other[3][:1] == (("obj", opt),):
            zeroed = True
    return _SGDPlan(opt, check=not zeroed)


class _SGDPlan:
    """``SGD.step()`` in a replay: the same arithmetic as ``SGD._update``, in the same
    order, with what does not change from step to step worked out once (which
    parameters take BLAS, with the call's arguments prepared; their scratch
    buffers; -lr as an array), and the settings read live at every replay. A
    group with momentum, weight decay or maximize runs the optimizer's own
    update. The stale-gradient check is skipped when the step zeroes this
    optimizer's gradients before (nothing can be stale then); the step marks
    and version bumps of ``Optimizer.step`` are kept, in its order."""

    __slots__ = ("opt", "check", "cache")

    def __init__(self, opt: SGD, check: bool) -> None:
        self.opt = opt
        self.check = check
        # id(param) -> [its array, group fused, prepared BLAS axpy (None: NumPy's two
        # passes), scratch buffer, the lr last read, -lr as a 0-d array of its dtype,
        # the key its memory is versioned under, the strides of a C-ordered array
        # of its shape, a weak reference to the gradient array last updated from,
        # that array's address (for the axpy) and the key of its memory's version]
        # (see _record)
        self.cache: dict[int, list[Any]] = {}

    def __call__(self) -> None:
        opt = self.opt
        if self.check and opt.warn_unzeroed_grad and not opt._warned:
            opt._check_stale_grads()
        for group in opt.param_groups:
            if group["momentum"] != 0 or group["weight_decay"] != 0 or group["maximize"]:
                opt._step_group(group)
            else:
                self._plain(group)

    def _plain(self, group: dict[str, Any]) -> None:
        """``p -= lr * g`` as ``SGD._update`` does it for a plain group: one BLAS axpy
        (``fused``, a large enough array) or NumPy's two passes through a scratch
        buffer, with -lr as a 0-d array of the parameter's dtype (the same
        number NumPy makes of the Python float, converted faster). Each
        parameter's version bump and step mark follow its update (eager mode
        makes them after all updates: the same ticks, as an update ticks none)."""
        cache = self.cache
        versions = _VERSIONS
        lr = group["lr"]
        neg = -lr
        fused = group["fused"]
        for p in group["params"]:
            gt = p._grad
            if gt is None:
                continue
            w = p.data
            c = cache.get(id(p))
            if c is None or c[0] is not w or c[1] is not fused:
                c = cache[id(p)] = self._record(w, fused)
            g = gt.data
            ax = c[2]
            if g.strides == c[7] and g.dtype is w.dtype and g.shape == w.shape:
                # the gradient as the backward pass leaves it: C order, the
                # parameter's shape and dtype
                ref = c[8]
                if ref is None or ref() is not g:
                    # a gradient array not seen before (a kernel writes the same one
                    # at every replay): its address and the key of its memory, kept
                    # while it lives (a weak reference: holding it would make the
                    # kernel write a new array at every replay)
                    c[8] = weakref.ref(g)
                    c[9] = None if ax is None else _blas.address(g)
                    c[10] = id(_storage(g))
                if ax is None:
                    if c[4] is not lr:  # the same object: the same number, to a zero's sign
                        c[4], c[5] = lr, _scalar_array(neg, w.dtype)
                    t = c[3]
                    np.multiply(g, c[5], out=t)
                    np.add(w, t, out=w)
                else:
                    ax.at(neg, c[9])
                _bump_key(c[6])
                gt.__dict__[STEP_MARK] = versions.get(c[10], 0)  # (Tensor._version)
                continue
            if g.shape != w.shape:
                self.opt._grad(p, False)  # raises the optimizer's error
            elif ax is None:  # -lr as the Python float: another dtype of g computes in its own
                np.multiply(g, neg, out=c[3])
                np.add(w, c[3], out=w)
            else:
                _blas.axpy(neg, g, w)  # any layout or dtype: converted first
            _bump_key(c[6])  # graphs recorded with the old values must not backpropagate
            gt.__dict__[STEP_MARK] = gt._version

    def _record(self, w: np.ndarray, fused: bool) -> list[Any]:
        """What :meth:`_plain` keeps for a parameter's array ``w``."""
        blas = fused and _blas.supports(w)
        c_strides = np.empty(w.shape, w.dtype).strides  # of a C-ordered array of its shape
        return [w, fused, _blas.Axpy(w) if blas else None,
                None if blas else self.opt._buf(w, 3), None, None, _storage_key(w), c_strides,
                None, None, None]


# ---------------------------------------------------------------------------
# The opt-in fused update: W -= lr * delta^T a as one BLAS product
# ---------------------------------------------------------------------------

_FUSABLE_RULES = ("linear", "linear_relu", "linear_nobias")


def _fusable(tape: _Tape) -> dict[int, _LinearUpdate]:
    """The Linear ops whose parameters a plain SGD step updates right after backward:
    ``{op index: its update}``.

    Conditions, checked on the tape: the step calls an ``SGD`` optimizer's
    ``step()`` after ``backward()`` with nothing in between that reads or changes
    parameters (no op on them, no declared call); the weight and bias are that
    optimizer's, each reached by this op alone in backward, with no gradient
    hooks. At each replay :meth:`_LinearUpdate.ready` checks what can change: the group's
    settings (no momentum, no weight decay, not maximize), gradients not already
    accumulated, and array layouts BLAS takes.
    """
    from .optim.sgd import SGD

    kinds = [ins[0] for ins in tape.instrs]
    if _I_BACKWARD not in kinds:
        return {}
    after = tape.instrs[kinds.index(_I_BACKWARD) + 1:]
    opt = None
    for ins in after:
        if ins[0] == _I_FX:
            a = ins[3]
            if (ins[2].fn is _OPT_STEP and len(a) == 1 and not ins[4] and a[0][0] == "obj"
                    and type(a[0][1]) is SGD):
                opt = a[0][1]
            break
        if ins[0] == _I_OP and any(r[0] == _LEAF for r in ins[3]):
            return {}  # an op reads a parameter between backward and the update
    if opt is None:
        return {}
    ours = {id(p) for g in opt.param_groups for p in g["params"]}
    uses: dict[int, int] = {}
    for j in tape.order:
        for (kind, ref), need in zip(tape.bwd_refs[j], tape.needs[j]):
            if need and kind == _LEAF:
                uses[id(ref)] = uses.get(id(ref), 0) + 1
    hooked = {id(t) for t in tape.post_hooks}
    out = {}
    for j in tape.order:
        if tape.rules[j].name not in _FUSABLE_RULES:
            continue
        refs, needs = tape.bwd_refs[j], tape.needs[j]
        params = [r[1] for r in refs[1:]]
        if not all(r[0] == _LEAF for r in refs[1:]) or not all(needs[1:]):
            continue
        if any(id(p) not in ours or uses.get(id(p)) != 1 or id(p) in hooked for p in params):
            continue
        out[j] = _LinearUpdate(params[0], params[1] if len(params) > 1 else None, opt)
    return out


def _group_of(opt: Optimizer, p: Tensor) -> dict[str, Any] | None:
    for g in opt.param_groups:
        if any(q is p for q in g["params"]):
            return g
    return None


class _LinearUpdate:
    """``update(delta, x)``: a Linear layer's SGD step from its delta, in place:
    ``W += -lr * delta^T x`` (one GEMM, beta = 1) and ``b += -lr * delta^T 1``
    (one GEMV). False, with nothing done, where BLAS cannot take the layouts.
    :meth:`ready` says, before each replay, whether it applies this time."""

    __slots__ = ("w", "b", "opt", "groups", "group", "lr", "arrays", "blas")

    def __init__(self, w: Tensor, b: Tensor | None, opt: SGD) -> None:
        self.w, self.b, self.opt = w, b, opt
        self.groups: Any = None  # the optimizer's param_groups when the group was found
        self.group: dict[str, Any] | None = None
        self.lr = 0.0
        # (w array, b array, BLAS takes them, the keys their memory is versioned under)
        self.arrays: tuple[Any, ...] = (None, None, False, None, None)
        # the products with their arguments prepared, for (delta shape, its strides,
        # x shape, its strides)
        self.blas: tuple[Any, Any, Any, Any, _blas.LayerUpdate] | None = None

    def ready(self) -> bool:
        """Whether the update can be fused in this replay (reads the lr)."""
        w, b, opt = self.w, self.b, self.opt
        if opt.param_groups is not self.groups:  # a list made anew: find the group again
            self.groups = opt.param_groups
            g = _group_of(opt, w)
            self.group = None if g is None or (
                b is not None and all(q is not b for q in g["params"])) else g
        g = self.group
        if g is None or g["momentum"] != 0 or g["weight_decay"] != 0 or g["maximize"]:
            return False
        if w._grad is not None or (b is not None and b._grad is not None):
            return False  # gradients accumulate across calls: the update needs them whole
        wd, bd = w.data, None if b is None else b.data
        arrays = self.arrays
        if arrays[0] is not wd or arrays[1] is not bd:  # checked again for new arrays only
            ok = _blas.fits(wd) and (bd is None or _blas.fits(bd) and bd.dtype == wd.dtype)
            # (kept: while they are, the keys their memory is versioned under stay valid)
            arrays = self.arrays = (wd, bd, ok, _storage_key(wd),
                                    None if bd is None else _storage_key(bd))
        if not arrays[2]:
            return False  # a dtype or layout BLAS does not take
        self.lr = g["lr"]
        return True

    def __call__(self, delta: np.ndarray, x: np.ndarray) -> bool:
        """Apply the update (the arrays :meth:`ready` checked), or say False."""
        wd, bd = self.arrays[0], self.arrays[1]
        dt = wd.dtype
        prepared = self.blas
        # the layouts the products were prepared for: C-ordered delta and x of the
        # shapes and strides seen before, and the parameters' dtype
        if prepared is None or delta.strides != prepared[1] or x.strides != prepared[3] \
                or delta.shape != prepared[0] or x.shape != prepared[2] \
                or delta.dtype is not dt or x.dtype is not dt:
            if not (x.ndim == 2 and delta.ndim == 2 and delta.dtype is dt and x.dtype is dt
                    and delta.flags.c_contiguous and x.flags.c_contiguous):
                return False
            (k, m), n = delta.shape, x.shape[1]
            if x.shape[0] != k or wd.shape != (m, n) or (bd is not None and bd.shape != (m,)):
                return False  # not a Linear layer's shapes: BLAS must not see them
            prepared = self.blas = (delta.shape, delta.strides, x.shape, x.strides,
                                    _blas.LayerUpdate(dt, k, m, n))
        prepared[4](-self.lr, delta, x, wd, bd)
        _bump_key(self.arrays[3])
        if bd is not None:
            _bump_key(self.arrays[4])
        return True


def _fused_vjp(node: _VjpNode, ins: tuple[Any, ...], g: np.ndarray, inplace: bool,
               update: _LinearUpdate) -> Sequence[Any]:
    """Linear's VJP with the weight and bias updated in place by ``update`` instead
    of returning their gradients, after ``delta @ W`` has used the old weight.
    ``ins`` are the operands (``node.inputs``). The kernel's version is
    ``_LinearKernel.vjp_update``."""
    rule = node.op
    if rule.split is not None:  # linear_relu: delta = g * relu' first, as eager mode does
        step, _ = rule.split
        g = step(g, None, node.ctx, inplace)
        node.ctx = None
    gx = g @ ins[1] if node.needs[0] else None
    if update(g, ins[0]):
        return (gx, None, None) if len(ins) == 3 else (gx, None)
    # a layout BLAS refused: the parameters' gradients as an unfused VJP gives them
    plain = _linear_node(node, ins)
    plain.needs = (False,) + node.needs[1:]
    return (gx, *vjp_step(plain, g, False, True)[1:])


def _linear_node(node: _VjpNode, ins: tuple[Any, ...]) -> _VjpNode:
    """The node of linear's VJP for a delta already formed (a layout BLAS refused)."""
    from .ops import RULES

    n = object.__new__(_VjpNode)
    n.op = RULES["linear"] if len(ins) == 3 else RULES["linear_nobias"]
    n.out = n.ctx = None
    n.needs = node.needs
    n.inputs = ins
    return n


def _build(ret: _RetSpec, env: list[Any]) -> Any:
    kind = ret[0]
    if kind == "tensor":  # what eager mode returns: a tensor whose graph backward() freed
        rule = ret[2]
        return Tensor._const(env[ret[1]]) if rule is None else _released_result(env[ret[1]], rule)
    if kind == "number":
        return env[ret[1]]
    if kind == "detached":
        return Tensor._const(env[ret[1]])
    if kind == "array":
        return env[ret[1]]
    if kind == "seq":
        return ret[1](_build(e, env) for e in ret[2])
    if kind == "dict":
        return {k: _build(e, env) for k, e in zip(ret[1], ret[2])}
    return ret[1]


# ---------------------------------------------------------------------------
# Verification: the state a step changes, saved, restored and compared
# ---------------------------------------------------------------------------


def _save(v: Any, depth: int = 0) -> tuple:
    """(kind, the object, a copy of its contents) -- restorable in place."""
    if isinstance(v, np.ndarray):
        return ("a", v, v.copy())
    if depth < 6 and isinstance(v, dict):
        return ("d", v, [(k, _save(x, depth + 1)) for k, x in v.items()])
    if depth < 6 and isinstance(v, list):
        return ("l", v, [_save(x, depth + 1) for x in v])
    if isinstance(v, set):
        return ("s", v, set(v))
    return ("v", v, None)  # immutable, or an object restored on its own (a Tensor)


def _load(s: tuple) -> Any:
    kind, orig, saved = s
    if kind == "a":
        if orig.flags.writeable:
            orig[...] = saved
            return orig
        return saved.copy()
    if kind == "d":
        items = [(k, _load(x)) for k, x in saved]
        orig.clear()
        orig.update(items)
        return orig
    if kind == "l":
        orig[:] = [_load(x) for x in saved]
        return orig
    if kind == "s":
        orig.clear()
        orig.update(saved)
        return orig
    return orig


def _matches(s: tuple, now: Any) -> bool:
    """Whether ``now`` has the contents saved in ``s``."""
    kind, orig, saved = s
    if kind == "a":
        return isinstance(now, np.ndarray) and _same_array(now, saved)
    if kind == "d":
        return (isinstance(now, dict) and len(now) == len(saved)
                and all(k in now and _matches(x, now[k]) for k, x in saved))
    if kind == "l":
        return (isinstance(now, list) and len(now) == len(saved)
                and all(_matches(x, y) for x, y in zip(saved, now)))
    if kind == "s":
        return now == saved
    return _same_value(orig, now)


class _Snapshot:
    """Copies of everything a step may change, to put back or to compare."""

    def __init__(self, tape: _Tape, flat: list) -> None:
        objs: list[Any] = list(tape.leaves)
        for kind, v in tape.touched:
            if kind == _ARG:
                a = flat[v]
                objs.append(a.data if isinstance(a, Tensor) else a)
            else:
                objs.append(v)
        seen: set[int] = set()
        self.items: list[tuple] = []
        for o in objs:
            if id(o) in seen:
                continue
            seen.add(id(o))
            if isinstance(o, Tensor):
                g = o._grad
                self.items.append(("t", o, o.data, o.data.copy(), g,
                                   None if g is None else (g.data, g.data.copy(),
                                                           dict(g.__dict__)),
                                   o._requires_grad))
            elif isinstance(o, np.ndarray):
                self.items.append(("a", o, o.copy()))
            elif isinstance(o, np.random.Generator):
                self.items.append(("g", o, copy.deepcopy(o.bit_generator.state)))
            elif isinstance(getattr(o, "__dict__", None), dict):
                self.items.append(("o", o, _save(vars(o))))

    def restore(self) -> None:
        for it in self.items:
            kind, o = it[0], it[1]
            if kind == "t":
                _, t, data, saved, g, gsaved, rg = it
                if data.flags.writeable:
                    data[...] = saved
                t.data = data
                t._grad = g
                if g is not None:
                    g.data = gsaved[0]
                    g.data[...] = gsaved[1]
                    g.__dict__.clear()
                    g.__dict__.update(gsaved[2])
                t._requires_grad = rg
            elif kind == "a":
                o[...] = it[2]
            elif kind == "g":
                o.bit_generator.state = it[2]
            else:
                _load(it[2])

    def differs_from_now(self) -> str | None:
        """What differs between this snapshot and the current state (None: nothing)."""
        for it in self.items:
            kind, o = it[0], it[1]
            if kind == "t":
                _, t, _, saved, _, gsaved, rg = it
                name = t.name or f"a tensor of shape {t.shape}"
                if not _same_array(t.data, saved):
                    return f"the values of {name}"
                g = t._grad
                if (g is None) != (gsaved is None) or (
                        g is not None and not _same_array(g.data, gsaved[1])):
                    return f"the gradient of {name}"
                if t._requires_grad != rg:
                    return f"{name}.requires_grad"
            elif kind == "a":
                if not _same_array(o, it[2]):
                    return f"the values of an argument of shape {o.shape}"
            elif kind == "g":
                if o.bit_generator.state != it[2]:
                    return "the state of a random generator"
            else:
                saved = it[2][2]
                now = vars(o)
                for k, x in saved:
                    if k not in now or not _matches(x, now[k]):
                        return f"{type(o).__name__}.{k}"
                if len(now) != len(saved):
                    return f"the attributes of a {type(o).__name__}"
        return None


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _same_value(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and _same_array(a, b))
    if isinstance(a, (Tensor, Module, Optimizer)) or isinstance(b, (Tensor, Module, Optimizer)):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return _same_float(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(_same_value(x, y) for x, y in zip(a, b)))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001  (objects without a plain ==)
        return False


def _same_float(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _same_result(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a._requires_grad == b._requires_grad and _same_array(a.data, b.data)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return _same_array(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_result(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_result(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return _same_float(a, b)
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return a is b


def _plain_result(v: Any) -> Any:
    """The capture's return value without the capture's traced types."""
    if isinstance(v, Tensor):
        if isinstance(v.data, _Traced):
            v.data = v.data.view(np.ndarray)
        return v
    if isinstance(v, _Traced):
        return v.view(np.ndarray)
    if isinstance(v, (_TracedFloat, _TracedInt)):
        return _plain_number(v)
    if isinstance(v, (tuple, list)):
        return type(v)(_plain_result(e) for e in v)
    if isinstance(v, dict):
        return {k: _plain_result(e) for k, e in v.items()}
    return v


# ---------------------------------------------------------------------------
# The compiled step
# ---------------------------------------------------------------------------


def _key_of(v: Any, key: list, flat: list, others: list) -> None:
    """Append ``v``'s part of the signature: array shapes and dtypes, the exact
    values of numbers and strings, the identity of any other object."""
    t = type(v)
    # a dtype stands for itself (its hash is kept; .str makes a new string, 0.14 us)
    if t is Tensor or isinstance(v, Tensor):
        flat.append(v)
        a = v.data
        key.append(("T", a.shape, a.dtype, v._requires_grad))
    elif isinstance(v, np.ndarray):
        flat.append(v)
        key.append(("A", v.shape, v.dtype))
    elif t is float:
        key.append((float, struct.pack("<d", v)))  # exact bits: -0.0 and NaN are values too
    elif t in _ATOMS:
        key.append((t, v))
    elif isinstance(v, np.generic):
        key.append((t, v.tobytes()))
    elif t in (tuple, list):
        key.append((t, len(v)))
        for e in v:
            _key_of(e, key, flat, others)
    elif t is dict:
        key.append((dict, tuple(v)))
        for e in v.values():
            _key_of(e, key, flat, others)
    else:
        key.append(("id", id(v)))  # kept alive by the entry, so the id stays unique
        others.append(v)


def _signature(args: tuple, kwargs: dict) -> tuple[tuple, list, list]:
    key: list = []
    flat: list = []
    others: list = []
    for a in args:
        _key_of(a, key, flat, others)
    for k, v in kwargs.items():
        key.append(k)
        _key_of(v, key, flat, others)
    return tuple(key), flat, others


class _Entry:
    """One signature: its programs (each with its guards), or why it stays eager."""

    __slots__ = ("progs", "captures", "eager_only", "why", "others", "retried")

    def __init__(self, others: list) -> None:
        self.progs: list[_Program] = []
        self.retried = False  # a refusal that may not repeat (one-time set-up) was retried
        self.captures = 0
        self.eager_only = False
        self.why: str | None = None
        self.others = others  # objects in the signature by identity


class CompiledStep:
    """A training step that is captured once and replayed (see the module docs).

    Attributes
    ----------
    stats : dict
        How calls ran: ``"eager"`` (not replayable, or refused), ``"captured"``,
        ``"verified"`` (run eagerly, then checked against a replay) and
        ``"replayed"``.
    unsupported : str or None
        Why the step (or one of its signatures) runs eagerly, once it does.
    last_refusal : str or None
        The last reason a capture was refused (a refusal that may not repeat, such
        as a one-time set-up inside the step, is tried once more).
    last_guard_failure : str or None
        What changed the last time a guard sent a call back to capture.
    strict : bool
        Raise :class:`CompileError` instead of running a call eagerly.
    fused_update : bool
        Replay plain-SGD steps of Linear layers as one BLAS product per layer
        (see :func:`compile`).
    """

    @property
    def fused_params(self) -> list[Tensor]:
        """The parameters the fused update applies to (in the programs captured so far)."""
        out: list[Tensor] = []
        for entry in self._entries.values():
            for prog in entry.progs:
                for u in prog.fused.values():
                    out += [p for p in (u.w, u.b) if p is not None and all(p is not q for q in out)]
        return out

    def __init__(self, fn: Callable[..., Any], strict: bool = False,
                 fused_update: bool = False) -> None:
        if fused_update:
            if not _blas.matrix_available():
                _blas.require("cr.compile(fused_update=True)")
                raise RuntimeError(
                    "cr.compile(fused_update=True): this NumPy's OpenBLAS has no gemm/gemv "
                    "chainrule can call"
                )
        self.fn = fn
        self.strict = strict
        self.fused_update = fused_update
        self._entries: dict[tuple, _Entry] = {}
        self.stats = {"eager": 0, "captured": 0, "verified": 0, "replayed": 0}
        self.unsupported: str | None = None
        self.last_guard_failure: str | None = None
        self.last_refusal: str | None = None
        self._locate = False  # check state around every declared call (after a refusal)
        self._gave_up = False
        self._lock = threading.RLock()
        self._hot: _Program | None = None  # the program whose kernels hold their arrays
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _mode.tracer is not None:
            return self._eager("it is called inside another compiled step", args, kwargs,
                               lasting=False)
        if _mode.anomaly:
            return self._eager("detect_anomaly() is on", args, kwargs, lasting=False)
        if not _mode.grad:
            return self._eager("gradients are off (no_grad)", args, kwargs, lasting=False)
        with self._lock:
            if self._gave_up:
                return self._eager(self.unsupported, args, kwargs)
            key, flat, others = _signature(args, kwargs)
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= _MAX_SIGNATURES:
                    # every call brings new shapes or values: capturing costs, never pays
                    self._gave_up = True
                    self._entries.clear()
                    self.unsupported = (
                        f"more than {_MAX_SIGNATURES} different argument signatures (shapes, "
                        "dtypes or Python values of the arguments); the step runs eagerly"
                    )
                    return self._eager(self.unsupported, args, kwargs)
                entry = self._entries[key] = _Entry(others)
            if entry.eager_only:
                return self._eager(entry.why, args, kwargs)
            first = None  # what failed in the newest variant
            for prog in entry.progs:
                why = prog.guard.check()
                if why is None:
                    if prog.verified:
                        self.stats["replayed"] += 1
                        if prog is not self._hot:
                            self._heat(prog)
                        return prog.run(flat, self.fused_update)
                    return self._verify(entry, prog, args, kwargs, flat)
                first = first or why
            if first is not None:
                self.last_guard_failure = first
            if entry.captures >= _MAX_CAPTURES:
                entry.eager_only = True
                entry.why = self.unsupported = (
                    f"the step was captured {_MAX_CAPTURES} times for the same argument shapes "
                    f"and its guards keep failing (last: {self.last_guard_failure}); it runs "
                    "eagerly"
                )
                return self._eager(entry.why, args, kwargs)
            return self._capture(entry, args, kwargs, flat)

    # ----- the ways a call runs ---------------------------------------------------

    def _heat(self, prog: _Program) -> None:
        """``prog`` replays next: the program that replayed before lets go of the
        arrays its kernels keep (only one program at a time holds them; a step
        that alternates between two batch shapes allocates them again)."""
        if self._hot is not None:
            self._hot.release()
        self._hot = prog

    def _eager(self, why: str | None, args: tuple, kwargs: dict, lasting: bool = True) -> Any:
        if self.strict:
            raise CompileError(f"cr.compile(strict=True): cannot replay {self._name()}: {why}")
        self.stats["eager"] += 1
        return self.fn(*args, **kwargs)

    def _name(self) -> str:
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    def _refused(self, entry: _Entry, why: str, retry: bool) -> None:
        """A capture or verification found the step not replayable."""
        self.last_refusal = why
        entry.captures += 1
        if not retry or entry.retried or entry.captures >= _MAX_CAPTURES:
            entry.eager_only = True
            entry.why = self.unsupported = why
        else:  # it may not happen again (a one-time set-up): capture once more, checking
            self._locate = True  # around every declared call, to say where if it does
        entry.retried = True
        if self.strict:
            raise CompileError(
                f"cr.compile(strict=True): cannot replay {self._name()}: {why} (this call ran "
                "eagerly; its effects took place)"
            )

    def _roots(self, args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
        roots: list[tuple[str, Any]] = [(f"the step function {self._name()}", self.fn)]
        roots += [(f"argument {i}", a) for i, a in enumerate(args)]
        roots += [(f"argument {k!r}", v) for k, v in kwargs.items()]
        roots.append(("chainrule's global generator", default_generator()))
        roots.append(("NumPy's global generator (np.random.*)", np.random.mtrand._rand))
        return roots

    def _trace(self, args: tuple, kwargs: dict, flat: list,
               locate: bool = False) -> tuple[_Recorder, Any]:
        rec = _Recorder(self.fn, flat, self._roots(args, kwargs), locate)
        try:
            out = rec.run(args, kwargs)
            if rec.error is None:
                rec.finish(out)
        finally:
            rec.untaint()
        return rec, _plain_result(out)

    def _capture(self, entry: _Entry, args: tuple, kwargs: dict, flat: list) -> Any:
        self.stats["captured"] += 1
        rec, out = self._trace(args, kwargs, flat, locate=self._locate)
        if rec.error is not None:
            self._refused(entry, rec.error, rec.retry)
        else:
            entry.captures += 1
            entry.progs.insert(0, _lower(rec.tape, self.fused_update))
            del entry.progs[_MAX_VARIANTS:]
        return out

    def _verify(self, entry: _Entry, prog: _Program, args: tuple, kwargs: dict,
                flat: list) -> Any:
        """Run eagerly (recording again), then replay from the same starting state:
        both must record the same program and end in the same state, bit for bit."""
        self.stats["verified"] += 1
        before = _Snapshot(prog.tape, flat)
        rec, out = self._trace(args, kwargs, flat, locate=self._locate)
        why = rec.error
        retry = rec.retry
        if why is None:
            why = _diff_tapes(prog.tape, rec.tape)
            if why is not None:
                why = (f"two calls with the same argument shapes recorded different programs: "
                       f"{why}")
        if why is None:
            after = _Snapshot(prog.tape, flat)
            before.restore()
            self._heat(prog)
            try:
                replayed = prog.run(flat, False)  # verified unfused, bit for bit
            except Exception as exc:  # noqa: BLE001  (eager succeeded, so the tape is wrong)
                why = f"the replay failed ({type(exc).__name__}: {exc})"
            else:
                what = after.differs_from_now()
                if what is not None:
                    why = f"a replay changed {what} differently from the eager step"
                elif not _same_result(out, replayed):
                    why = "a replay returned a different value from the eager step"
            if why is not None:
                after.restore()  # keep exactly what the eager step did
                why += (": the step depends on something the capture cannot see; it runs "
                        "eagerly")
                retry = False
        if why is not None:
            entry.progs.remove(prog)
            self._refused(entry, why, retry)
        else:
            prog.verified = True
        return out


def compile(fn: Callable[..., Any], *, strict: bool = False,  # noqa: A001
            fused_update: bool = False) -> CompiledStep:
    """Capture a training step once and replay it on later batches of the same shape.

    Parameters
    ----------
    fn : callable
        ``fn(*batch)`` does zero_grad, forward, loss, ``backward()`` and the
        optimizer step, and returns the loss (or other tensors it computed, their
        ``.item()``, tuples/lists/dicts of these).
    strict : bool
        Raise :class:`CompileError` whenever a call cannot be replayed, instead of
        running it eagerly (capture and verification calls still run eagerly:
        that is how a step is captured).
    fused_update : bool
        Opt in to a faster replay that is **not bit-identical** to eager mode: a
        Linear layer whose weight and bias a plain SGD step (no momentum, no
        weight decay) updates right after ``backward()`` is updated inside the
        backward pass, ``W -= lr * delta^T a`` as one BLAS matrix product with
        beta = 1 and the bias by a matrix-vector product, instead of writing the
        gradient and then reading it again. The results agree with eager mode to
        rounding; those parameters' ``.grad`` stay empty (None); the
        verification call still checks the unfused replay bit for bit.
        ``step.fused_params`` lists the parameters it applies to.

    Returns
    -------
    CompiledStep
        Called like ``fn``; returns the same values, and leaves the same
        parameters, as ``fn`` would, bit for bit -- or runs ``fn`` itself and says
        why in ``step.unsupported``. See ``docs/compile.md`` for what is guarded
        and what is refused.

    >>> step = cr.compile(step_fn)
    >>> loss = step(xb, yb)
    """
    return CompiledStep(fn, strict=strict, fused_update=fused_update)
