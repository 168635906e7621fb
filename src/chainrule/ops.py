"""Every differentiable operation, each written as one rule.

A rule is a forward function on NumPy arrays and, right under it, its
vector-Jacobian product (VJP): given the backpropagated gradient ``g`` =
dL/d(out), return dL/d(input) = g x d(out)/d(input) for each input, i.e.
*backpropagated gradient x local gradient* in the notes' words.

The VJP signature is ``vjp(g, out, ctx, needs, xp, *inputs)``:

* ``out`` is the op's output value and ``inputs`` its operands;
* ``ctx`` is whatever the forward kept (axes, masks, indices), never a value
  that would need differentiating;
* ``needs[i]`` says whether input ``i`` wants a gradient; skip the others;
* ``xp`` is the array namespace: plain NumPy for a normal backward pass, or
  the differentiable ops of this file for ``backward(create_graph=True)``, in
  which case ``g``, ``out`` and ``inputs`` are Tensors and the VJP itself is
  recorded, giving gradients of gradients. VJPs therefore use operators,
  ``.sum/.reshape`` methods and ``xp.<fn>`` only.

A few rules also give ``vjp_inplace``, the same VJP allowed to overwrite
``g`` instead of allocating its result. The engine calls it only when it owns
``g`` outright (a fresh array that no other table entry, ``.grad``, hook or
observer can see), so the saving is invisible; see :meth:`Rule.defvjp_inplace`.
A fused rule may give its VJP in two steps (an elementwise step, then another
rule's VJP) so that what the first step reads is freed before the second
allocates; see :meth:`Rule.defsplit`.

Broadcasting is undone in exactly one place, :func:`sum_to_shape`.
All rules live in :data:`RULES`, which the tests enumerate.
"""

from __future__ import annotations

import builtins
import functools
import sys
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from .tensor import (
    Meta,
    Node,
    Tensor,
    _as_array,
    _mode,
    _tick,
    aligned_empty,
    check_forward_anomaly,
)

__all__ = [
    "Rule", "RULES", "rule", "apply", "sum_to_shape", "value", "Saves",
    "SAVES_ALL", "SAVES_NOTHING", "SAVES_INPUTS", "SAVES_OUT",
    "add", "sub", "mul", "div", "pow", "square", "matmul", "neg", "abs", "exp", "log", "sqrt",
    "tanh", "sigmoid", "relu", "leaky_relu", "softplus", "sin", "cos", "ndtr", "gelu",
    "silu", "elu",
    "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "var", "std",
    "logsumexp", "softmax", "log_softmax", "ValuesIndices",
    "reshape", "flatten", "transpose", "permute", "t", "swapaxes", "squeeze", "expand_dims",
    "unsqueeze", "broadcast_to", "expand", "getitem", "concatenate", "cat", "stack", "where",
    "masked_fill", "maximum", "minimum", "clip", "clamp", "astype", "clone", "linear",
    "linear_relu",
]


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------


class Saves:
    """What a rule's VJP reads, declared next to the rule (PyTorch's saved tensors).

    A recorded node keeps exactly what is declared here and nothing else, so
    an intermediate value that no VJP reads is freed as soon as the forward
    pass moves on. Each entry says when a value is kept:

    * ``True``: whenever the op is recorded; ``False``: never;
    * a tuple of operand slots: only when one of those operands needs a
      gradient (``mul`` keeps ``b`` only to compute ``a``'s gradient, and
      ``a`` only for ``b``'s: ``Saves(inputs=((1,), (0,)))``).

    ``inputs`` gives one entry per operand slot; ``rest`` applies to the
    slots after them (variadic rules such as ``concatenate``); ``out`` is for
    the op's own value (rules whose derivative is a function of the output:
    exp, tanh, sigmoid, softmax). An operand that is not kept reaches the VJP
    as a stand-in with only ``.shape``, ``.dtype`` and ``.ndim``.

    A rule that declares nothing keeps every operand and its output: a
    missing declaration costs memory, never a wrong number.
    """

    __slots__ = ("inputs", "rest", "out")

    def __init__(self, inputs: Sequence[Any] = (), out: Any = False, rest: Any = False) -> None:
        self.inputs = tuple(inputs)
        self.rest = rest
        self.out = out

    @staticmethod
    def _when(entry: Any, needs: tuple[bool, ...]) -> bool:
        if entry is True or entry is False:
            return entry
        return builtins.any(needs[j] for j in entry if j < len(needs))

    def plan(self, needs: tuple[bool, ...]) -> tuple[tuple[bool, ...], bool]:
        """(keep operand i?, keep the output?) for operands whose needs are ``needs``."""
        entries = self.inputs + (self.rest,) * builtins.max(0, len(needs) - len(self.inputs))
        keep = tuple(self._when(e, needs) for e in entries[:len(needs)])
        return keep, self._when(self.out, needs)

    def describe(self) -> str:
        """In words, e.g. ``"operand 0 (when operand 1 needs a gradient); output"``."""

        def when(entry: Any, what: str) -> str | None:
            if entry is False:
                return None
            if entry is True:
                return what
            return f"{what} (when {' or '.join(f'operand {j}' for j in entry)} needs a gradient)"

        parts = [when(e, f"operand {i}") for i, e in enumerate(self.inputs)]
        if self.rest is not False:
            parts.append(when(self.rest, "every further operand" if self.inputs
                              else "every operand"))
        parts.append(when(self.out, "output"))
        return "; ".join(p for p in parts if p) or "nothing"

    def __repr__(self) -> str:
        return f"Saves(inputs={self.inputs!r}, out={self.out!r}, rest={self.rest!r})"


SAVES_ALL = Saves(out=True, rest=True)
SAVES_NOTHING = Saves()
SAVES_INPUTS = Saves(rest=True)
SAVES_OUT = Saves(out=True)


# ``vjp(g, out, ctx, needs, xp, *inputs) -> one gradient (or None) per input``;
# the arguments are NumPy arrays, Tensors (create_graph) or shape-only
# stand-ins, so they are untyped by design
VJP = Callable[..., Sequence[Any]]
# ``check(arrays, params, exc) -> message or None`` (see Rule)
Check = Callable[[Sequence[Any], dict[str, Any], Exception], "str | None"]


class _NoVJP:
    """The VJP of a rule that has none yet: backward through it says so.

    A stand-in rather than None, so that the backward walk calls ``rule.vjp``
    without a check per node, and a rule registered without ``defvjp`` fails
    with a message instead of "'NoneType' object is not callable".
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> Sequence[Any]:
        raise NotImplementedError(
            f"backward through {self.name!r}: the rule has no VJP; attach one with the "
            "rule's defvjp decorator (see cr.rule)"
        )


class Rule:
    """One differentiable operation: ``forward`` and its ``vjp``, side by side.

    ``forward(*arrays, **params) -> (out, ctx)``; ``vjp`` as in the module
    docstring. ``saves`` (a :class:`Saves`) declares which operands and
    whether the output the VJP reads: the node keeps those and nothing else.
    ``check(arrays, params, exc)`` may turn a NumPy error into a message
    that names the op and the shapes. ``vjp_inplace`` (optional) is ``vjp``
    allowed to overwrite ``g``. ``split`` (optional, set by :meth:`defsplit`)
    is the VJP in two steps, so that ``ctx`` can be freed between them.
    ``weak_scalars``: Python int/float operands may be passed to the forward
    as a cached 0-d array of the other operand's dtype (the same values, bit
    for bit, for + - * /; NumPy converts such an array faster than a Python
    float). Until ``defvjp`` runs, ``vjp`` is a stand-in that raises
    ``NotImplementedError`` naming the rule (``has_vjp`` is False).

    What the op *is*, for the views that explain a graph (``cr.explain``,
    drawings, the MLP view), is declared here too, never guessed elsewhere:

    * ``elementwise``: output element i depends only on input element i
      (after broadcasting), so the local gradient d(out)/d(input) is a
      diagonal, shown as an array of the output's shape;
    * ``show``: how the op reads in a formula, with ``{0}``, ``{1}`` ... for
      the operands' names (``"{0} + {1}"``; default ``"name({0}, ...)"``);
    * ``role``: ``"activation"``, ``"affine"`` (a layer's z = W a + b) or
      ``"loss"``; ``activation`` names the activation the op is or applies
      (``"sigmoid"``; ``"relu"`` for the fused ``linear_relu``; ``"softmax"``
      for ``cross_entropy``, which applies it to its logits);
    * ``grads``: the VJP of each operand as a short formula in ``{g}`` (the
      backpropagated gradient), ``{out}`` and the operands ``{0}``, ``{1}``
      ... (the last entry serves any further operands), for ops whose local
      gradient is not a diagonal.
    """

    __slots__ = ("name", "forward", "vjp", "vjp_inplace", "check", "doc", "saves", "split",
                 "plans", "weak_scalars", "elementwise", "show", "role", "activation", "grads",
                 "kernel")

    def __init__(self, name: str, forward: Callable, saves: Saves | None = None,
                 weak_scalars: bool = False, *, elementwise: bool = False,
                 show: str | None = None, role: str | None = None,
                 activation: str | None = None, grads: tuple[str, ...] = ()) -> None:
        if role not in (None, "activation", "affine", "loss"):
            raise ValueError(f"rule {name!r}: role must be activation, affine or loss, "
                             f"not {role!r}")
        self.name = name
        self.forward = forward
        self.saves = SAVES_ALL if saves is None else saves
        self.plans: dict[tuple[bool, ...], tuple[tuple[bool, ...], bool]] = {}
        self.weak_scalars = weak_scalars
        self.elementwise = elementwise
        self.show = show
        self.role = role
        self.activation = activation
        self.grads = tuple(grads)
        self.vjp: VJP = _NoVJP(name)
        self.vjp_inplace: VJP | None = None
        self.check: Check | None = None
        self.split: tuple[Callable, Rule] | None = None
        # (operands, settings, needs) -> Kernel or None; see defkernel
        self.kernel: Callable[..., Kernel | None] | None = None
        self.doc = forward.__doc__

    @property
    def has_vjp(self) -> bool:
        """Whether a VJP was attached (``defvjp``/``defsplit``)."""
        return not isinstance(self.vjp, _NoVJP)

    def plan(self, needs: tuple[bool, ...]) -> tuple[tuple[bool, ...], bool]:
        """What a node of this rule keeps, for operands whose needs are ``needs`` (cached)."""
        p = self.plans.get(needs)
        if p is None:
            p = self.plans[needs] = self.saves.plan(needs)
        return p

    def defvjp(self, fn: VJP) -> VJP:
        self.vjp = fn
        return fn

    def defvjp_inplace(self, fn: VJP) -> VJP:
        """A second VJP, on NumPy arrays only, that may write into ``g``.

        The backward walk calls it instead of ``vjp`` when the gradient table
        holds the only reference to ``g`` (see ``run_backward``), so a rule
        like relu can zero ``g`` where it was flat rather than allocate a new
        array of the same size: less memory traffic, and a lower peak. It must
        return the same values as ``vjp`` bit for bit (the tests check).
        """
        self.vjp_inplace = fn
        return fn

    def defsplit(self, inner: Rule) -> Callable[[Callable], Callable]:
        """Give the VJP as an elementwise step followed by ``inner``'s VJP.

        ``step(g, out, ctx, inplace) -> delta`` turns dL/d(out) into the
        gradient that ``inner``'s VJP takes on the same inputs (linear_relu:
        delta = g * relu', then linear's VJP); with ``inplace=True`` it may
        write into ``g``. ``inner`` must read neither ``out`` nor ``ctx``.

        Why split: a plain backward pass (eager or compiled) then lets go of
        ``ctx`` between the two steps, so a mask the first step read is freed
        before the second allocates its results (a weight gradient). ``vjp``
        and ``vjp_inplace`` are set to the composition, for every other caller
        (``create_graph``, an observer, detect_anomaly).
        """
        if inner.saves.out is not False or not inner.has_vjp:
            raise ValueError(f"defsplit: {inner.name!r} must have a VJP that does not read out")

        def register(step: Callable) -> Callable:
            def vjp(g, out, ctx, needs, xp, *ins):
                return inner.vjp(step(g, out, ctx, False), None, None, needs, xp, *ins)

            def vjp_inplace(g, out, ctx, needs, xp, *ins):
                return inner.vjp(step(g, out, ctx, True), None, None, needs, xp, *ins)

            self.split = (step, inner)
            self.vjp, self.vjp_inplace = vjp, vjp_inplace
            return step

        return register

    def defcheck(self, fn: Check) -> Check:
        self.check = fn
        return fn

    def defkernel(self, make: Callable[..., Kernel | None]) -> Callable[..., Kernel | None]:
        """Give the rule a :class:`Kernel` for operands of fixed shapes.

        ``make(operands, settings, needs)`` is called once per op when
        ``cr.compile`` turns a captured step into a program: ``operands`` holds
        ``(shape, dtype)`` for each array operand (None for anything else), as
        the capture saw them, ``settings`` the op's keyword settings (those the
        step computes, such as labels, as :data:`DYNAMIC`: they reach the
        kernel's ``forward`` with the call), ``needs`` which operands want a
        gradient. It returns a kernel for exactly these, or None where the
        rule's own functions must run. The program checks that the operands
        have these shapes and dtypes before it calls the kernel.
        """
        self.kernel = make
        return make

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


RULES: dict[str, Rule] = {}


def rule(name: str, *, saves: Saves | None = None, weak_scalars: bool = False,
         elementwise: bool = False, show: str | None = None, role: str | None = None,
         activation: str | None = None, grads: tuple[str, ...] = ()) -> Callable[[Callable], Rule]:
    """Register a forward function as a rule; attach its VJP with ``@R.defvjp``.

    ``saves``: what the VJP reads (see :class:`Saves`; default: everything).
    ``elementwise``, ``show``, ``role``, ``activation`` and ``grads`` say
    what the op is, for the teaching views (see :class:`Rule`).

    >>> @rule("cube", saves=SAVES_INPUTS)
    ... def CUBE(x):
    ...     return x ** 3, None
    >>> @CUBE.defvjp
    ... def _(g, out, ctx, needs, xp, x):
    ...     return (g * 3 * x * x,)
    """

    def register(fwd: Callable) -> Rule:
        if name in RULES:
            raise ValueError(f"rule: an op named {name!r} is already registered")
        r = Rule(name, fwd, saves, weak_scalars, elementwise=elementwise, show=show, role=role,
                 activation=activation, grads=grads)
        RULES[name] = r
        return r

    return register


class Kernel:
    """A rule's forward and VJP for one set of operand shapes and dtypes, writing
    its results into arrays it keeps from one call to the next.

    ``cr.compile`` replays a captured training step as a fixed program: every
    shape is known before it runs, so an op can write into the arrays it
    wrote last time instead of allocating new ones, and decisions that depend
    only on shapes are made once. A kernel computes exactly what its rule's
    ``forward`` and ``vjp`` compute, bit for bit (the same NumPy calls on the
    same operands, with ``out=``); the tests check every kernel against its
    rule.

    ``forward(*operands) -> (out, ctx)`` and ``vjp(g, inplace, ctx, *operands)
    -> one gradient (or None) per operand`` take plain arrays of the shapes the
    kernel was made for; ``inplace`` says that the caller owns ``g`` outright
    (as ``Rule.vjp_inplace`` would be allowed to use it).

    An array the kernel kept is written again only when nothing else refers to
    it: an output that the step returned, or a gradient stored in ``.grad``,
    that the caller still holds (or any view of it) keeps its values, and the
    kernel makes a new array for that call instead (an array that never leaves
    the kernel's own calls is simply reused: :meth:`scratch`). :meth:`take` decides, from
    the array's reference count compared with the count of an array nothing
    else holds, measured through :meth:`take` itself when this module loads
    (interpreters count references differently: 3.14 borrows some, so a fixed
    number would be wrong on some version, and a wrong guess here would
    overwrite values a caller holds).
    """

    __slots__ = ("bufs", "specs")

    def __init__(self, specs: Sequence[tuple[tuple[int, ...], Any]]) -> None:
        self.specs = list(specs)  # (shape, dtype) of each array kept
        # the arrays (None until made); Any: a kernel tests each before use
        self.bufs: list[Any] = [None] * len(self.specs)

    def fresh(self, i: int) -> np.ndarray:
        """A new array ``i`` (see :func:`aligned_empty`), kept from now on in
        place of the old one."""
        shape, dtype = self.specs[i]
        a = self.bufs[i] = aligned_empty(shape, dtype)
        return a

    def take(self, i: int) -> np.ndarray:
        """Kept array ``i`` to write into, or a new one (kept from now on) where
        anything besides this kernel refers to it or to its memory (or none was
        made yet). A view of the array refers to the buffer that owns the
        memory (``a.base``; NumPy points every view at the owner), so both
        counts are looked at."""
        a = self.bufs[i]
        # None, before the first call, counts as held
        if _refcount(a) > _UNSHARED or _refcount(a.base) > _BASE_UNSHARED:
            a = self.fresh(i)
        return a

    def scratch(self, i: int) -> np.ndarray:
        """Kept array ``i`` for a value that never leaves this kernel's own calls
        (a product in its turned form, relu's mask between the forward call and
        the VJP of the same replay, a delta formed inside the VJP): written again
        at every call without the reference counts :meth:`take` looks at."""
        a = self.bufs[i]
        return self.fresh(i) if a is None else a

    def release(self) -> None:
        """Let go of every array kept (the next call allocates them again)."""
        self.bufs = [None] * len(self.bufs)

    def forward(self, *operands: Any, **settings: Any) -> tuple[Any, Any]:
        """The rule's ``forward`` (same arguments, same result)."""
        raise NotImplementedError

    def vjp(self, g: np.ndarray, inplace: bool, ctx: Any, *operands: Any) -> Sequence[Any]:
        """The rule's VJP: one gradient (or None) per operand."""
        raise NotImplementedError


_refcount = sys.getrefcount
# see _calibrate_take: until then every take() makes a new array
_UNSHARED = -1
_BASE_UNSHARED = -1


def _calibrate_take() -> tuple[int, int]:
    """The reference counts that :meth:`Kernel.take` sees for a kept array and
    for its buffer when nothing else holds either, found by calling it; -1
    (never reuse) if holding the array or a view of it does not raise the
    count it sees."""
    global _UNSHARED, _BASE_UNSHARED
    probe = Kernel([((1,), np.dtype(np.float64))])
    found = []
    for which in range(2):
        for count in range(1, 16):
            if which == 0:
                _UNSHARED, _BASE_UNSHARED = count, 1 << 30
            else:
                _BASE_UNSHARED = count
            probe.bufs[0] = aligned_empty((1,), np.float64)
            ident = id(probe.bufs[0])
            reused = id(probe.take(0)) == ident  # the result is not kept: no holder
            if reused:
                found.append(count)
                break
        else:
            return -1, -1
    held = probe.bufs[0]
    if probe.take(0) is held:  # a holder must make take() give a new array
        return -1, -1
    view = probe.take(0)[:]
    if probe.take(0).base is view.base:  # so must a view's
        return -1, -1
    return found[0], found[1]


_UNSHARED, _BASE_UNSHARED = _calibrate_take()

#: A keyword setting of an op that the step computes (see :meth:`Rule.defkernel`)
DYNAMIC: Any = type("Dynamic", (), {"__repr__": lambda self: "DYNAMIC"})()


_SCALARS = (int, float, bool, np.number, np.bool_)


def value(x: Any) -> Any:
    """The plain array behind a Tensor (anything else is returned unchanged)."""
    return x.data if isinstance(x, Tensor) else x


def _operand(x: Any) -> Any:
    if isinstance(x, _SCALARS):
        return x  # keep Python scalars "weak": float32 * 2.0 stays float32
    if isinstance(x, np.ndarray):
        return x
    return _as_array(x)


# Python scalars as 0-d arrays of a given dtype, shared between ops: ``x * 0.5``
# in a loop would otherwise convert the same number on every call (NumPy
# converts a 0-d array of the right dtype about twice as fast as a Python
# float), and a VJP gets them as arrays. Read-only, so sharing is safe. Zeros
# are left out (0.0 and -0.0 are equal keys but differ in sign), and NaN never
# matches itself.
_SCALAR_ARRAYS: dict[np.dtype, dict[Any, np.ndarray]] = {}


def _scalar_array(v: Any, dtype: np.dtype) -> np.ndarray:
    """``v`` (a Python or NumPy scalar) as a read-only 0-d array of ``dtype``."""
    cache = _SCALAR_ARRAYS.get(dtype)
    if cache is None:
        cache = _SCALAR_ARRAYS[dtype] = {}
    elif type(v) is not bool:  # True == 1 == 1.0 as keys: harmless, same cast value
        arr = cache.get(v)
        if arr is not None:
            return arr
    arr = np.asarray(v, dtype=dtype)
    if v and v == v and type(v) in (int, float):
        if len(cache) >= 4096:
            cache.clear()
        arr.flags.writeable = False
        cache[v] = arr
    return arr


def _standin(a: Any, parent: Any, out: np.ndarray) -> Any:
    """What a VJP gets for an operand the rule does not keep: its shape and dtype."""
    if parent is not None:
        return parent  # its node, or the leaf tensor: both know shape and dtype
    if isinstance(a, np.ndarray):
        return a if a.ndim == 0 else Meta(a)
    return _scalar_array(a, out.dtype)  # a scalar: a 0-d array, as if it were kept


def _kept(a: Any, out: np.ndarray, given: Any = None) -> Any:
    """An operand as a kept array (scalars become 0-d arrays of the output's dtype).

    ``given`` is the operand as the caller passed it. A plain NumPy array (not
    a Tensor) that the node keeps is copied: the caller may refill that
    buffer (a batch, a target, a mask) before backward(), which must not
    change the gradient of the op already recorded, and a raw NumPy write
    has no version counter to catch it. A Tensor's memory is versioned (its
    in-place methods bump it, and backward refuses a changed value), so it is
    kept as it is, as is a read-only array that owns its memory.
    """
    if isinstance(a, np.ndarray):
        if (given is a and a.ndim and (a.flags.writeable or a.base is not None)):
            return a.copy()
        return a
    return _scalar_array(a, out.dtype)


def _record(out: np.ndarray, rule: Rule, args: Sequence[Any], arrays: Sequence[Any],
            needs: tuple[bool, ...], ctx: Any, params: dict) -> Tensor:
    """Make the node of one op and the Tensor that carries its value."""
    parents = tuple([
        (a._node if a._node is not None else a) if n else None for a, n in zip(args, needs)
    ])
    node = _new(Node)
    node.op = rule
    node.parents = parents
    node.ctx = ctx
    node.needs = needs
    node.stamp = _tick()
    node.shape = out.shape
    node.dtype = out.dtype
    node.params = params
    if _mode.keep or _mode.anomaly:  # views asked for every value: keep everything
        node.inputs = tuple(_kept(a, out, g) for a, g in zip(arrays, args))
        node.out = out
        node.kept = (out, tuple(args))
        if _mode.anomaly:
            node.meta = check_forward_anomaly(rule.name, out, arrays)
    else:
        plan = rule.plans.get(needs)
        keep, keep_out = plan if plan is not None else rule.plan(needs)
        node.inputs = tuple([
            _kept(a, out, g) if k else _standin(a, p, out)
            for a, g, p, k in zip(arrays, args, parents, keep)
        ])
        node.out = out if keep_out else None
    return _of(out, node)


def apply(rule: Rule, *args: Any, **params: Any) -> Tensor:
    """Run ``rule`` forward on ``args`` and, if needed, record it in the graph.

    Tensors and array-likes are operands; ``params`` are settings (axis, ...).
    An op is recorded only when grad mode is on and some operand requires grad.
    """
    if _mode.tracer is not None:  # cr.compile is capturing a step: it runs and records the op
        return _mode.tracer.op(apply, rule, args, params)
    arrays = []
    needs = []
    for a in args:
        if isinstance(a, Tensor):
            arrays.append(a.data)
            needs.append(a._requires_grad)
        else:
            arrays.append(_operand(a))
            needs.append(False)
    try:
        out, ctx = rule.forward(*arrays, **params)
    except (ValueError, TypeError, IndexError) as exc:
        raise _op_error(rule, arrays, params, exc) from exc
    if type(out) is not np.ndarray:
        out = np.asarray(out)
    if True in needs and _mode.grad and out.dtype.kind in "fc":
        t = _record(out, rule, args, arrays, tuple(needs), ctx, params)
    else:
        t = _const(out)
    return t


# The two hot paths, apply() unrolled for one and two operands.


def _unary(rule: Rule, x: Any, **params: Any) -> Tensor:
    if not isinstance(x, Tensor) or _mode.tracer is not None:
        return apply(rule, x, **params)
    xd = x.data
    try:
        out, ctx = rule.forward(xd, **params)
    except (ValueError, TypeError, IndexError) as exc:
        raise _op_error(rule, [xd], params, exc) from exc
    if type(out) is not np.ndarray:
        out = np.asarray(out)
    if x._requires_grad and _mode.grad and out.dtype.kind in "fc":
        if _mode.keep or _mode.anomaly:
            t = _record(out, rule, (x,), (xd,), _NEEDS1, ctx, params)
        else:
            node = _new(Node)
            node.op = rule
            p = x._node
            node.parents = (x,) if p is None else (p,)
            node.ctx = ctx
            node.needs = _NEEDS1
            node.stamp = _tick()
            node.shape = out.shape
            node.dtype = out.dtype
            node.params = params
            keep, keep_out = rule.plan(_NEEDS1)
            node.inputs = (xd,) if keep[0] else node.parents
            node.out = out if keep_out else None
            t = _of(out, node)
    else:
        t = _const(out)
    return t


def _binary(rule: Rule, a: Any, b: Any) -> Tensor:
    if _mode.tracer is not None:
        return apply(rule, a, b)
    ad: Any  # an array, or a Python/NumPy scalar kept as it is
    bd: Any
    if isinstance(a, Tensor):
        ad = a.data
        ra = a._requires_grad
    else:
        ad = a if isinstance(a, _SCALARS) else _operand(a)
        ra = False
    if isinstance(b, Tensor):
        bd = b.data
        rb = b._requires_grad
    else:
        bd = b if isinstance(b, _SCALARS) else _operand(b)
        rb = False
    # a Python number beside a floating array: pass NumPy a cached 0-d array
    # of the array's dtype instead (same values; see _scalar_array)
    tb = type(bd)
    if (tb is float or tb is int) and rule.weak_scalars and type(ad) is np.ndarray \
            and ad.dtype.kind == "f":
        cache = _SCALAR_ARRAYS.get(ad.dtype)
        c = None if cache is None else cache.get(bd)
        bd = _scalar_array(bd, ad.dtype) if c is None else c
    else:
        ta = type(ad)
        if (ta is float or ta is int) and rule.weak_scalars and tb is np.ndarray \
                and bd.dtype.kind == "f":
            ad = _scalar_array(ad, bd.dtype)
    try:
        out, ctx = rule.forward(ad, bd)
    except (ValueError, TypeError, IndexError) as exc:
        raise _op_error(rule, [ad, bd], {}, exc) from exc
    if type(out) is not np.ndarray:
        out = np.asarray(out)
    if (ra or rb) and _mode.grad and out.dtype.kind in "fc":
        needs = _NEEDS2[ra][rb]  # shared tuples: a node per op, but no tuple per op
        if _mode.keep or _mode.anomaly:
            t = _record(out, rule, (a, b), (ad, bd), needs, ctx, _NO_PARAMS)
        else:
            node = _new(Node)
            node.op = rule
            pa = ((a if a._node is None else a._node) if ra else None)
            pb = ((b if b._node is None else b._node) if rb else None)
            node.parents = (pa, pb)
            node.ctx = ctx
            node.needs = needs
            node.stamp = _tick()
            node.shape = out.shape
            node.dtype = out.dtype
            node.params = _NO_PARAMS
            plan = rule.plans.get(needs)
            if plan is None:
                plan = rule.plan(needs)
            keep, keep_out = plan
            if type(ad) is not np.ndarray:
                ad = _scalar_array(ad, out.dtype)
            elif keep[0] and a is ad:
                ad = _kept(ad, out, a)  # a caller's plain array: a copy (see _kept)
            if type(bd) is not np.ndarray:
                bd = _scalar_array(bd, out.dtype)
            elif keep[1] and b is bd:
                bd = _kept(bd, out, b)
            node.inputs = (
                ad if keep[0] or pa is None and ad.ndim == 0 else
                (pa if pa is not None else Meta(ad)),
                bd if keep[1] or pb is None and bd.ndim == 0 else
                (pb if pb is not None else Meta(bd)),
            )
            node.out = out if keep_out else None
            t = _of(out, node)
    else:
        t = _const(out)
    return t


_NEEDS1 = (True,)
_NEEDS2 = (((False, False), (False, True)), ((True, False), (True, True)))
_NO_PARAMS: dict[str, Any] = {}
_const = Tensor._const
_of = Tensor._of
_new = object.__new__


# --------------------------------------------------------------------------
# Error messages that name the op and the shapes
# --------------------------------------------------------------------------


class ShapeError(ValueError):
    """Operands whose shapes do not fit the op."""


def _fmt(shapes: Sequence[tuple]) -> str:
    shapes = [tuple(s) for s in shapes]
    if len(shapes) == 2:
        return f"{shapes[0]} and {shapes[1]}"
    return ", ".join(str(s) for s in shapes)


def _broadcast_detail(shapes: Sequence[tuple]) -> str:
    """Which dimension breaks NumPy's broadcasting (aligned from the right)."""
    ndim = builtins.max(len(s) for s in shapes)
    for k in range(1, ndim + 1):
        sizes = {s[-k] for s in shapes if len(s) >= k and s[-k] != 1}
        if len(sizes) > 1:
            a, b = sorted(sizes)[:2]
            return (
                f"dimension {-k} (counting from the right) is {a} in one and {b} in the "
                "other; sizes must match or be 1"
            )
    return "they are not broadcast-compatible"


def _op_error(rule: Rule, arrays: Sequence[Any], params: dict, exc: Exception) -> Exception:
    shapes = [np.shape(a) for a in arrays]
    if rule.check is not None:
        msg = rule.check(arrays, params, exc)
        if msg:
            return ShapeError(f"{rule.name}: {msg}")
    text = str(exc)
    if "broadcast" in text and len(shapes) >= 2:
        return ShapeError(
            f"{rule.name}: shapes {_fmt(shapes)} cannot be broadcast together: "
            f"{_broadcast_detail(shapes)}"
        )
    kinds = [np.asarray(a).dtype for a in arrays]
    if isinstance(exc, TypeError) and builtins.any(k.kind not in "biufc" for k in kinds):
        return TypeError(
            f"{rule.name}: unsupported operand dtype(s) {', '.join(map(str, kinds))}; "
            "chainrule ops work on numeric arrays"
        )
    detail = f" (operand shapes {_fmt(shapes)})" if shapes else ""
    if text.startswith(f"{rule.name}: "):  # our own message already names the op
        text = text[len(rule.name) + 2:]
    return type(exc)(f"{rule.name}: {text}{detail}")


# --------------------------------------------------------------------------
# Helpers shared by the VJPs
# --------------------------------------------------------------------------


def sum_to_shape(g: Any, shape: tuple[int, ...]) -> Any:
    """Undo NumPy broadcasting: sum ``g`` down to ``shape``.

    The only place where broadcasting is reversed. When ``x`` of shape
    ``shape`` was broadcast to ``g.shape`` in the forward pass, each element
    of ``x`` fed several outputs, so its gradient is the sum over them (the
    notes' sum over successors, inside one op).
    """
    gshape = g.shape
    if gshape == shape:
        return g
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gshape[lead + i] != 1
    )
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if lead:
        g = g.reshape(shape)
    return g


def _norm_axes(axis: Any, ndim: int, op: str) -> tuple[int, ...]:
    """``axis`` (None, int, negative int or tuple) as a sorted tuple of non-negative ints.

    A 0-d tensor takes ``axis=0`` or ``-1`` as PyTorch does (it behaves as
    if it had one dimension of size 1): there is nothing to reduce, so the
    result is ``()``.
    """
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        axes: tuple = (axis,)
    else:
        try:
            axes = tuple(axis)
        except TypeError:
            raise TypeError(f"{op}: axis must be an int or a tuple of ints, got {axis!r}") from None
    out = []
    span = builtins.max(ndim, 1)
    for a in axes:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            raise TypeError(f"{op}: axis must be an int or a tuple of ints, got {axis!r}")
        if not -span <= a < span:
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(int(a) % span)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    return tuple(sorted(out)) if ndim else ()


def _expand_reduced(g: Any, axes: tuple[int, ...], keepdims: bool, shape: tuple) -> Any:
    """Bring a reduction's gradient back to the input's shape (as a broadcast view)."""
    if not keepdims and axes:
        kd = list(shape)
        for a in axes:
            kd[a] = 1
        g = g.reshape(tuple(kd))
    return g


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-|x|) never overflows: sigmoid = 1/(1+e) for x >= 0, e/(1+e) otherwise
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def _np_scatter_add(g: np.ndarray, index: Any, shape: tuple, dtype: Any) -> np.ndarray:
    out = np.zeros(shape, dtype=dtype)
    if _is_basic(index):
        out[index] = g  # basic indices never repeat an element
    else:
        np.add.at(out, index, g)  # repeated indices accumulate
    return out


def _raw_index(index: Any) -> Any:
    """An index with Tensors replaced by their arrays (index tensors are data, not operands)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _owned(x: Any) -> Any:
    """What a forward keeps in ctx from a caller's setting: arrays are copied.

    The VJP reads ctx at backward time; a caller who refills the array (a
    label or index buffer, a mask) in between must not change the gradient
    of the op already recorded. The copy is made in the forward, not in the
    public function, so that cr.compile still sees the caller's own array
    (it recognises a step's arguments by identity) and copies on every replay.
    """
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, tuple):
        return tuple(i.copy() if isinstance(i, np.ndarray) else i for i in x)
    return x


def _is_basic(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return builtins.all(
        i is None or i is Ellipsis or isinstance(i, (slice, int, np.integer)) for i in parts
    )


_F32 = np.dtype(np.float32)


def _float_dtype(out: np.ndarray, *operands: Any, redo: Callable | None = None) -> np.ndarray:
    """``out`` in PyTorch's floating dtype where NumPy's differs.

    NumPy makes a floating result from integers float64 (``int64 / 2``,
    ``sqrt(int64)``, ``int64 * 0.5``), float16 (``sqrt(int8)``), and promotes
    ``int64 * float32`` to float64. PyTorch keeps the floating operands' dtype,
    and makes float32 (its default dtype) when no operand is floating; a
    float32 model then stays float32 next to integer labels or masks. Python
    and NumPy scalars never widen a tensor's floating dtype (PyTorch's rule).

    A wider result is rounded down to that dtype (at least as exact as
    computing in it); a narrower one (float16 from 8-bit integers) would have
    lost digits, so ``redo`` computes it again on the operands cast up.

    The forwards call this only when the result is not float32 (the common
    case costs one identity test); a floating operand whose dtype equals the
    result's settles it at once.
    """
    dt = out.dtype
    if dt.kind != "f":
        return out
    floats = []
    for o in operands:
        if type(o) is np.ndarray and o.dtype.kind == "f":
            if o.dtype is dt or o.dtype == dt:
                return out
            floats.append(o.dtype)
    want = np.result_type(*floats) if floats else _F32
    if want == dt:
        return out
    if want.itemsize > dt.itemsize and redo is not None:
        return np.asarray(redo(*[
            o.astype(want) if type(o) is np.ndarray and o.dtype.kind in "biu" else o
            for o in operands
        ]))
    return out.astype(want)


# ==========================================================================
# Elementwise arithmetic
# ==========================================================================


@rule("add", saves=SAVES_NOTHING, weak_scalars=True, elementwise=True, show="{0} + {1}")
def ADD(a, b):
    out = a + b
    if out.dtype is not _F32:
        out = _float_dtype(out, a, b)
    return out, None


@ADD.defvjp
def _(g, out, ctx, needs, xp, a, b):
    return (
        sum_to_shape(g, a.shape) if needs[0] else None,
        sum_to_shape(g, b.shape) if needs[1] else None,
    )


@rule("sub", saves=SAVES_NOTHING, weak_scalars=True, elementwise=True, show="{0} - {1}")
def SUB(a, b):
    out = a - b
    if out.dtype is not _F32:
        out = _float_dtype(out, a, b)
    return out, None


@SUB.defvjp
def _(g, out, ctx, needs, xp, a, b):
    return (
        sum_to_shape(g, a.shape) if needs[0] else None,
        sum_to_shape(-g, b.shape) if needs[1] else None,
    )


@rule(
    "mul",
    saves=Saves(inputs=((1,), (0,))),
    weak_scalars=True,
    elementwise=True,
    show="{0} * {1}",
)
def MUL(a, b):
    out = a * b
    if out.dtype is not _F32:
        out = _float_dtype(out, a, b)
    return out, None


@MUL.defvjp
def _(g, out, ctx, needs, xp, a, b):
    return (
        sum_to_shape(g * b, a.shape) if needs[0] else None,
        sum_to_shape(g * a, b.shape) if needs[1] else None,
    )


@rule(
    "div",
    saves=Saves(inputs=(False, True), out=(1,)),
    weak_scalars=True,
    elementwise=True,
    show="{0} / {1}",
)
def DIV(a, b):
    out = a / b
    if out.dtype is not _F32:
        out = _float_dtype(out, a, b)
    return out, None


@DIV.defvjp
def _(g, out, ctx, needs, xp, a, b):
    # d(a/b)/da = 1/b ; d(a/b)/db = -a/b^2 = -out/b
    return (
        sum_to_shape(g / b, a.shape) if needs[0] else None,
        sum_to_shape(-g * out / b, b.shape) if needs[1] else None,
    )


@rule("pow", saves=Saves(inputs=((0, 1), (0, 1)), out=(1,)), elementwise=True,
      show="{0} ** {1}")
def POW(a, b):
    out = a**b
    if out.dtype is not _F32:
        out = _float_dtype(out, a, b)
    return out, None


@POW.defvjp
def _(g, out, ctx, needs, xp, a, b):
    ga = gb = None
    bv = value(b)
    if needs[0]:
        # d(a^b)/da = b a^(b-1). Where b == 0 it is 0 (a^0 = 1 is constant),
        # but the formula gives 0 * 0^-1 = NaN at a = 0: polynomial features
        # x^0 would poison every gradient. So a^(b-1) is evaluated at a = 1
        # where b == 0 (the factor b makes the term 0 there), which also keeps
        # the second derivative finite (PyTorch's is NaN at that point).
        zero = bv == 0
        base = xp.where(zero, 1.0, a) if zero.any() else a
        ga = sum_to_shape(g * b * base ** (b - 1), a.shape)
    if needs[1]:
        # d(a^b)/db = a^b log a for a > 0. Elsewhere PyTorch's values: 0 at
        # a = 0 with b >= 0, else a^b log a as it comes out (+-inf at a = 0
        # with b < 0, NaN for a < 0, where a^b has no derivative in b). log
        # is taken of a safe base in the differentiated branch, so that no
        # NaN leaks into a second derivative through the unused one.
        av = value(a)
        pos = av > 0
        gb = g * out * xp.log(xp.where(pos, a, 1.0))
        if not pos.all():
            with np.errstate(divide="ignore", invalid="ignore"):
                edge = np.where((av == 0) & (bv >= 0), 0.0, value(out) * np.log(av))
            gb = xp.where(pos, gb, g * edge.astype(value(gb).dtype))
        gb = sum_to_shape(gb, b.shape)
    return ga, gb


@rule("neg", saves=SAVES_NOTHING, elementwise=True, show="-{0}")
def NEG(a):
    return -a, None


@NEG.defvjp
def _(g, out, ctx, needs, xp, a):
    return (-g,)


@rule("maximum", saves=SAVES_INPUTS, elementwise=True)
def MAXIMUM(a, b):
    """Elementwise maximum; at ties the gradient is split evenly between a and b."""
    out = np.maximum(a, b)
    if out.dtype is not _F32:
        out = _float_dtype(out, a, b)
    return out, None


def _pick_weights(av: Any, bv: Any, a_loses: Any, b_loses: Any) -> tuple[Any, Any]:
    # 1 to the winner, 0 to the loser, 1/2 each at a tie; where a NaN makes
    # the comparison false, both get the whole gradient (PyTorch's rule)
    tie = 0.5 * (av == bv)
    return 1.0 - a_loses - tie, 1.0 - b_loses - tie


@MAXIMUM.defvjp
def _(g, out, ctx, needs, xp, a, b):
    av, bv = value(a), value(b)
    wa, wb = _pick_weights(av, bv, av < bv, av > bv)
    return (
        sum_to_shape(g * wa, a.shape) if needs[0] else None,
        sum_to_shape(g * wb, b.shape) if needs[1] else None,
    )


@rule("minimum", saves=SAVES_INPUTS, elementwise=True)
def MINIMUM(a, b):
    """Elementwise minimum; at ties the gradient is split evenly between a and b."""
    out = np.minimum(a, b)
    if out.dtype is not _F32:
        out = _float_dtype(out, a, b)
    return out, None


@MINIMUM.defvjp
def _(g, out, ctx, needs, xp, a, b):
    av, bv = value(a), value(b)
    wa, wb = _pick_weights(av, bv, av > bv, av < bv)
    return (
        sum_to_shape(g * wa, a.shape) if needs[0] else None,
        sum_to_shape(g * wb, b.shape) if needs[1] else None,
    )


@rule("where", saves=SAVES_NOTHING, elementwise=True, show="where(cond, {0}, {1})")
def WHERE(a, b, *, cond):
    out = np.where(cond, a, b)
    if out.dtype is not _F32:
        out = _float_dtype(out, a, b)
    return out, _owned(cond)


@WHERE.defcheck
def _(arrays, params, exc):
    shapes = [np.shape(params["cond"])] + [np.shape(a) for a in arrays]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        return (
            f"condition shape {shapes[0]} and operand shapes {shapes[1]} and {shapes[2]} "
            f"cannot be broadcast together: {_broadcast_detail(shapes)}"
        )
    return None


@WHERE.defvjp
def _(g, out, ctx, needs, xp, a, b):
    return (
        sum_to_shape(xp.where(ctx, g, 0), a.shape) if needs[0] else None,
        sum_to_shape(xp.where(ctx, 0, g), b.shape) if needs[1] else None,
    )


# ==========================================================================
# Elementwise functions (the activations of the notes among them)
# ==========================================================================


@rule("abs", saves=SAVES_INPUTS, elementwise=True)
def ABS(x):
    """|x|; the gradient at 0 is taken as 0."""
    return np.abs(x), None


@ABS.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * np.sign(value(x)),)


@rule("exp", saves=SAVES_OUT, elementwise=True)
def EXP(x):
    out = np.exp(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=np.exp)
    return out, None


@EXP.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * out,)  # d e^x / dx = e^x: reuse the output


@rule("log", saves=SAVES_INPUTS, elementwise=True)
def LOG(x):
    out = np.log(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=np.log)
    return out, None


@LOG.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g / x,)


@rule("sqrt", saves=SAVES_OUT, elementwise=True)
def SQRT(x):
    out = np.sqrt(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=np.sqrt)
    return out, None


@SQRT.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * 0.5 / out,)


@rule("sin", saves=SAVES_INPUTS, elementwise=True)
def SIN(x):
    out = np.sin(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=np.sin)
    return out, None


@SIN.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * xp.cos(x),)


@rule("cos", saves=SAVES_INPUTS, elementwise=True)
def COS(x):
    out = np.cos(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=np.cos)
    return out, None


@COS.defvjp
def _(g, out, ctx, needs, xp, x):
    return (-g * xp.sin(x),)


@rule("tanh", saves=SAVES_OUT, elementwise=True, role="activation", activation="tanh")
def TANH(x):
    out = np.tanh(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=np.tanh)
    return out, None


@TANH.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * (1 - out * out),)  # tanh' = 1 - tanh^2: reuse the output


@rule("sigmoid", saves=SAVES_OUT, elementwise=True, role="activation", activation="sigmoid")
def SIGMOID(x):
    """sigma(x) = 1 / (1 + e^-x), computed without overflow for any x."""
    out = _np_sigmoid(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=_np_sigmoid)
    return out, None


@SIGMOID.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * out * (1 - out),)  # sigma' = sigma (1 - sigma): reuse the output


def _np_relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """max(x, 0) elementwise, into ``out`` if given.

    Compared against a row of zeros rather than the scalar 0: NumPy 2 runs
    ``maximum`` with SIMD only when both operands are arrays, and the scalar
    form is about 3x slower on a (1024, 256) float32 batch. Same values.
    """
    if x.ndim and x.dtype.kind == "f":
        return np.maximum(x, np.zeros(x.shape[-1], x.dtype), out=out)
    return np.maximum(x, 0, out=out)


@rule("relu", saves=SAVES_OUT, elementwise=True, role="activation", activation="relu")
def RELU(x):
    """max(x, 0); the gradient at 0 is taken as 0 (as in PyTorch)."""
    return _np_relu(x), None


@RELU.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * (value(out) > 0),)


@RELU.defvjp_inplace
def _(g, out, ctx, needs, xp, x):
    np.multiply(g, out > 0, out=g)  # g is ours: zero it where relu was flat
    return (g,)


@rule(
    "leaky_relu",
    saves=SAVES_INPUTS,
    elementwise=True,
    role="activation",
    activation="leaky_relu",
)
def LEAKY_RELU(x, *, negative_slope):
    """x for x > 0, negative_slope * x otherwise (slope used at 0)."""
    out = np.where(x > 0, x, x * negative_slope)
    if out.dtype is not _F32:
        out = _float_dtype(out, x)
    return out, negative_slope


@LEAKY_RELU.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * np.where(value(x) > 0, 1.0, ctx).astype(value(x).dtype),)


@rule("softplus", saves=SAVES_INPUTS, elementwise=True, role="activation", activation="softplus")
def SOFTPLUS(x):
    """log(1 + e^x), written as max(x, 0) + log1p(e^-|x|) so it never overflows."""
    out = _np_softplus(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=_np_softplus)
    return out, None


def _np_softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@SOFTPLUS.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * xp.sigmoid(x),)


def _np_ndtr(x: np.ndarray) -> np.ndarray:
    """Phi(x), the standard normal CDF, to about 1e-13 relative accuracy (float64 inside).

    NumPy has no erf, so it is computed here: with a = |x| / sqrt(2),

    * a < 2: erf(a) from the series 2/sqrt(pi) e^(-a^2) sum_n 2^n a^(2n+1) / (2n+1)!!,
      whose terms are all positive (no cancellation);
    * a >= 2: erfc(a) from its continued fraction
      e^(-a^2)/sqrt(pi) / (a + (1/2)/(a + 1/(a + (3/2)/(a + ...)))), evaluated
      backwards from 80 terms, which keeps the far left tail's relative accuracy
      (Phi(-30) ~ 5e-198 is not rounded to 0 by a subtraction).
    """
    xf = np.asarray(x, dtype=np.float64)
    a = np.abs(xf) * _SQRT_HALF
    half_erfc = np.empty_like(a)
    near = a < 2.0
    s = a[near]
    term = s.copy()
    total = s.copy()
    two_a2 = 2.0 * s * s
    for n in range(1, 50):
        term *= two_a2 / (2 * n + 1)
        total += term
    half_erfc[near] = 0.5 - _INV_SQRT_PI * np.exp(-s * s) * total
    z = a[~near]
    with np.errstate(over="ignore", invalid="ignore"):
        t = z.copy()
        for k in range(80, 0, -1):
            t = z + (0.5 * k) / t
        half_erfc[~near] = 0.5 * _INV_SQRT_PI * np.exp(-z * z) / t
    out = np.where(xf >= 0, 1.0 - half_erfc, half_erfc)
    out[np.isnan(xf)] = np.nan
    return out.astype(x.dtype, copy=False) if x.dtype.kind == "f" else out


_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_PI = float(1.0 / np.sqrt(np.pi))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))
_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


@rule("ndtr", saves=SAVES_INPUTS, elementwise=True)
def NDTR(x):
    """Phi(x) = P(N(0, 1) <= x), the standard normal CDF (``torch.special.ndtr``)."""
    out = _np_ndtr(x)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, redo=_np_ndtr)
    return out, None


@NDTR.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g * xp.exp(x * x * -0.5) * _INV_SQRT_2PI,)  # Phi' = the normal density


@rule("gelu", saves=SAVES_INPUTS, elementwise=True, role="activation", activation="gelu")
def GELU(x, *, approximate):
    """x Phi(x) (``approximate='none'``), or PyTorch's tanh approximation
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (``approximate='tanh'``)."""
    if approximate == "tanh":
        x = _as_float(x)  # integers: float32, as in PyTorch
        inner = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        return 0.5 * x * (1 + inner), inner
    x = _as_float(x)
    return x * _np_ndtr(x), None


@GELU.defvjp
def _(g, out, ctx, needs, xp, x):
    if isinstance(x, Tensor) or ctx is None:
        if ctx is None:  # exact: d/dx x Phi(x) = Phi(x) + x phi(x)
            return (g * (xp.ndtr(x) + x * xp.exp(x * x * -0.5) * _INV_SQRT_2PI),)
        t = xp.tanh((x + x * x * x * 0.044715) * _SQRT_2_OVER_PI)
    else:
        t = ctx  # tanh(u), saved by the forward pass
    du = (1 + x * x * (3 * 0.044715)) * _SQRT_2_OVER_PI
    return (g * ((1 + t) * 0.5 + x * 0.5 * (1 - t * t) * du),)


@rule("silu", saves=SAVES_INPUTS, elementwise=True, role="activation", activation="silu")
def SILU(x):
    """x sigmoid(x) (also called swish)."""
    x = _as_float(x)  # integers: float32, as in PyTorch
    return x * _np_sigmoid(x), None


@SILU.defvjp
def _(g, out, ctx, needs, xp, x):
    s = xp.sigmoid(x)
    return (g * (s * (1 + x * (1 - s))),)  # s + x s (1 - s)


@rule("elu", saves=SAVES_OUT, elementwise=True, role="activation", activation="elu")
def ELU(x, *, alpha):
    """x for x > 0, alpha (e^x - 1) otherwise."""
    x = _as_float(x)  # integers: float32, as in PyTorch
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))), alpha


@ELU.defvjp
def _(g, out, ctx, needs, xp, x):
    # for x <= 0 the slope alpha e^x is out + alpha: the output alone says it all
    # (out > 0 exactly where x > 0), so the node keeps only the output
    pos = value(out) > 0
    return (xp.where(pos, g, g * (out + ctx)),)


@rule("clip", saves=SAVES_INPUTS, elementwise=True)
def CLIP(x, *, lo, hi):
    """Clamp to [lo, hi]; gradient 1 inside (bounds included), 0 outside."""
    out = np.clip(x, lo, hi)
    if out.dtype is not _F32:
        out = _float_dtype(out, x)
    return out, (_owned(lo), _owned(hi))


@CLIP.defvjp
def _(g, out, ctx, needs, xp, x):
    lo, hi = ctx
    xv = value(x)
    inside = np.ones(xv.shape, dtype=bool)
    if lo is not None:
        inside &= xv >= lo
    if hi is not None:
        inside &= xv <= hi
    return (g * inside,)


@rule("astype", saves=SAVES_NOTHING, elementwise=True)
def ASTYPE(x, *, dtype):
    return x.astype(dtype), None


@ASTYPE.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g.astype(x.dtype),)


@rule("clone", saves=SAVES_NOTHING, elementwise=True)
def CLONE(x):
    return x.copy(), None


@CLONE.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g,)


# ==========================================================================
# Reductions
# ==========================================================================


@rule("sum", saves=SAVES_NOTHING, grads=("{g} copied to every entry of {0} that was summed",))
def SUM(x, *, axis, keepdims):
    axes = _norm_axes(axis, x.ndim, "sum")
    return np.sum(x, axis=axes, keepdims=keepdims), (axes, keepdims)


@SUM.defvjp
def _(g, out, ctx, needs, xp, x):
    axes, keepdims = ctx
    return (xp.broadcast_to(_expand_reduced(g, axes, keepdims, x.shape), x.shape),)


def _count(shape: tuple, axes: tuple[int, ...]) -> int:
    """How many elements each reduction over ``axes`` combines."""
    n = 1
    for a in axes:
        n *= shape[a]
    return n


@rule(
    "mean",
    saves=SAVES_NOTHING,
    grads=("{g} / n copied to every entry of {0} that was averaged",),
)
def MEAN(x, *, axis, keepdims):
    axes = _norm_axes(axis, x.ndim, "mean")
    if x.size == 0:
        raise ValueError(f"mean of an empty tensor of shape {x.shape} is undefined")
    out = np.mean(x, axis=axes, keepdims=keepdims)
    if out.dtype is not _F32:
        out = _float_dtype(np.asarray(out), x)
    return out, (axes, keepdims)


@MEAN.defvjp
def _(g, out, ctx, needs, xp, x):
    axes, keepdims = ctx
    n = _count(x.shape, axes)
    return (xp.broadcast_to(_expand_reduced(g / n, axes, keepdims, x.shape), x.shape),)


def _extremum_vjp(g, out, ctx, needs, xp, x):
    # the gradient goes to the elements equal to the extremum, split evenly
    # between ties (so it still sums to g)
    axes, keepdims = ctx
    outk = _expand_reduced(value(out), axes, keepdims, x.shape)
    xv = value(x)
    hit = xv == outk
    if np.isnan(outk).any():  # a NaN is the extremum: it gets the gradient (as in PyTorch)
        hit |= np.isnan(xv) & np.isnan(outk)
    share = hit / hit.sum(axis=axes, keepdims=True)
    return (_expand_reduced(g, axes, keepdims, x.shape) * share.astype(value(x).dtype),)


@rule(
    "max",
    saves=SAVES_ALL,
    grads=("{g} at the maxima of {0} (split evenly between ties), 0 elsewhere",),
)
def MAX(x, *, axis, keepdims):
    """Maximum over ``axis``; at ties the gradient is split evenly between the maxima."""
    axes = _norm_axes(axis, x.ndim, "max")
    if x.size == 0:
        raise ValueError(f"max of an empty tensor of shape {x.shape} has no value")
    return np.max(x, axis=axes, keepdims=keepdims), (axes, keepdims)


MAX.defvjp(_extremum_vjp)


@rule(
    "min",
    saves=SAVES_ALL,
    grads=("{g} at the minima of {0} (split evenly between ties), 0 elsewhere",),
)
def MIN(x, *, axis, keepdims):
    """Minimum over ``axis``; at ties the gradient is split evenly between the minima."""
    axes = _norm_axes(axis, x.ndim, "min")
    if x.size == 0:
        raise ValueError(f"min of an empty tensor of shape {x.shape} has no value")
    return np.min(x, axis=axes, keepdims=keepdims), (axes, keepdims)


MIN.defvjp(_extremum_vjp)


def _centred(x: Any, axes: tuple[int, ...]) -> Any:
    """``x - mean(x)`` over ``axes``, exactly 0 where the values are all equal.

    NumPy's mean of n equal values v can miss v by an ulp (0.1 three times
    sums to 0.30000000000000004), which would give a constant a tiny nonzero
    variance, and std() a gradient of order 1 instead of 0. In a slice whose
    values are all equal that residue is subtracted as a constant, so the
    value becomes exactly 0 while the derivative stays that of x - mean(x)
    (a second derivative of var still sees it).
    """
    xv = value(x)
    if not axes or xv.size == 0:
        return x - x  # every element is its own mean (zero, and so is its derivative)
    c = x - x.mean(axis=axes, keepdims=True)
    first = xv[tuple(slice(0, 1) if i in axes else slice(None) for i in range(xv.ndim))]
    flat = (xv == first).all(axis=axes, keepdims=True)
    if flat.any():
        c = c - np.where(flat, value(c), 0)
    return c


def _variance(x: np.ndarray, axes: tuple[int, ...], keepdims: bool, dof: int) -> np.ndarray:
    # integers are centred in float64: int8 values -100 and 100 differ by 200,
    # which int8 arithmetic would wrap around
    c = _centred(x if x.dtype.kind in "fc" else x.astype(np.float64), axes)
    out = np.sum(c * c, axis=axes, keepdims=keepdims) / dof
    if out.dtype is not _F32:
        out = _float_dtype(np.asarray(out), x)
    return np.asarray(out)


def _dof(x: np.ndarray, axes: tuple[int, ...], correction: Any, op: str) -> int:
    n = _count(x.shape, axes)
    if n - correction <= 0:
        raise ValueError(
            f"{op}: {n} element(s) with correction={correction} (ddof={correction}) leave "
            f"{n - correction} degrees of freedom (input shape {x.shape}, axes {axes}); "
            "reduce over more elements, or pass correction=0 (unbiased=False, ddof=0) "
            f"for the population {op}"
        )
    return n - correction


@rule("var", saves=SAVES_INPUTS, grads=("{g} * 2 ({0} - mean) / (n - correction)",))
def VAR(x, *, axis, keepdims, correction):
    """Variance over ``axis``: sum((x - mean)^2) / (n - correction)."""
    axes = _norm_axes(axis, x.ndim, "var")
    dof = _dof(x, axes, correction, "var")
    return _variance(x, axes, keepdims, dof), (axes, keepdims, dof)


@VAR.defvjp
def _(g, out, ctx, needs, xp, x):
    axes, keepdims, dof = ctx
    return (_expand_reduced(g, axes, keepdims, x.shape) * _centred(x, axes) * (2.0 / dof),)


@rule("std", saves=SAVES_ALL,
      grads=("{g} ({0} - mean) / ((n - correction) {out}), 0 where {out} is 0",))
def STD(x, *, axis, keepdims, correction):
    """Standard deviation over ``axis``: sqrt(var); its gradient is 0 where it is 0."""
    axes = _norm_axes(axis, x.ndim, "std")
    dof = _dof(x, axes, correction, "std")
    return np.sqrt(_variance(x, axes, keepdims, dof)), (axes, keepdims, dof)


@STD.defvjp
def _(g, out, ctx, needs, xp, x):
    # d std / dx = (x - mean) / (dof * std). Where std = 0 (a constant slice)
    # x - mean is exactly 0 (see _centred) and the derivative is taken as 0,
    # as PyTorch does, instead of 0/0 = NaN; the divisor is made 1 there so
    # that a second derivative stays finite too.
    axes, keepdims, dof = ctx
    outk = _expand_reduced(out, axes, keepdims, x.shape)
    flat = value(outk) == 0
    if flat.any():
        outk = xp.where(flat, 1.0, outk)
    gk = _expand_reduced(g, axes, keepdims, x.shape)
    return (gk * _centred(x, axes) / (outk * dof),)


@rule("logsumexp", saves=SAVES_ALL, grads=("{g} * softmax({0})",))
def LOGSUMEXP(x, *, axis, keepdims):
    """log(sum(exp(x))) over ``axis``, shifted by the maximum so nothing overflows."""
    axes = _norm_axes(axis, x.ndim, "logsumexp")
    x = _as_float(x)  # exp of int8 would be float16 in NumPy
    m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)  # -inf over an empty axis
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    if not keepdims:
        out = np.squeeze(out, axis=axes)
    if out.dtype is not _F32:
        out = _float_dtype(out, x)
    return out, (axes, keepdims)


@LOGSUMEXP.defvjp
def _(g, out, ctx, needs, xp, x):
    axes, keepdims = ctx
    outk = _expand_reduced(out, axes, keepdims, x.shape)
    return (_expand_reduced(g, axes, keepdims, x.shape) * xp.exp(x - outk),)  # = softmax(x)


def _softmax_axes(x: np.ndarray, axis: Any, op: str) -> tuple[int, ...]:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{op}: axis (dim) must be one int, got {axis!r}")
    return _norm_axes(axis, x.ndim, op)


def _as_float(x: np.ndarray) -> np.ndarray:
    """Integer input to a floating op: float32, as in PyTorch (see _float_dtype)."""
    return x if x.dtype.kind in "fc" else x.astype(_F32)


@rule(
    "softmax",
    saves=SAVES_OUT,
    role="activation",
    activation="softmax",
    grads=("{out} * ({g} - sum({g} * {out}))",),
)
def SOFTMAX(x, *, axis):
    """exp(x) / sum(exp(x)) along ``axis`` (shifted by the max: no overflow)."""
    axes = _softmax_axes(x, axis, "softmax")
    x = _as_float(x)
    e = np.exp(x - np.max(x, axis=axes, keepdims=True, initial=-np.inf))
    e /= np.sum(e, axis=axes, keepdims=True)
    return e, axes


@SOFTMAX.defvjp
def _(g, out, ctx, needs, xp, x):
    # J^T g for J = diag(s) - s s^T, without building J: s * (g - <g, s>)
    return (out * (g - (g * out).sum(axis=ctx, keepdims=True)),)


@rule("log_softmax", saves=SAVES_OUT, grads=("{g} - softmax({0}) * sum({g})",))
def LOG_SOFTMAX(x, *, axis):
    """x - logsumexp(x) along ``axis``."""
    axes = _softmax_axes(x, axis, "log_softmax")
    x = _as_float(x)
    shifted = x - np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axes, keepdims=True)), axes


@LOG_SOFTMAX.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g - xp.exp(out) * g.sum(axis=ctx, keepdims=True),)


# ==========================================================================
# Linear algebra
# ==========================================================================


@rule(
    "matmul",
    saves=Saves(inputs=((1,), (0,))),
    show="{0} @ {1}",
    grads=("{g} @ {1}ᵀ", "{0}ᵀ @ {g}"),
)
def MATMUL(a, b):
    """Matrix product with NumPy's rules: 1-D operands are promoted, batch dims broadcast."""
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        raise ValueError("matmul does not take 0-d operands")
    out = np.matmul(a, b)
    if out.dtype is not _F32:
        out = _float_dtype(np.asarray(out), a, b)
    return out, None


@MATMUL.defcheck
def _(arrays, params, exc):
    a, b = (np.shape(x) for x in arrays)
    if len(a) == 0 or len(b) == 0:
        return f"shapes {a} and {b}: an operand is 0-d (a scalar); use * to scale"
    k_a = a[-1]
    k_b = b[0] if len(b) == 1 else b[-2]
    if k_a != k_b:
        return f"shapes {a} and {b} do not align: {k_a} != {k_b}"
    return f"shapes {a} and {b}: batch dimensions {a[:-2]} and {b[:-2]} cannot be broadcast"


@MATMUL.defvjp
def _(g, out, ctx, needs, xp, a, b):
    if a.ndim == 2 and b.ndim == 2:  # the common case, kept direct
        return (
            g @ b.T if needs[0] else None,
            a.T @ g if needs[1] else None,
        )
    a1, b1 = a.ndim == 1, b.ndim == 1
    if a1 and b1:
        g2 = g.reshape((1, 1))
    elif a1:
        g2 = g.reshape(g.shape[:-1] + (1, g.shape[-1]))
    elif b1:
        g2 = g.reshape(g.shape + (1,))
    else:
        g2 = g
    a2_shape = (1,) + a.shape if a1 else a.shape
    b2_shape = b.shape + (1,) if b1 else b.shape
    ga = gb = None
    if needs[0]:  # reads b (kept when a needs a gradient)
        b2 = b.reshape(b2_shape) if b1 else b
        ga = sum_to_shape(g2 @ xp.swapaxes(b2, -1, -2), a2_shape).reshape(a.shape)
    if needs[1]:  # reads a
        a2 = a.reshape(a2_shape) if a1 else a
        gb = sum_to_shape(xp.swapaxes(a2, -1, -2) @ g2, b2_shape).reshape(b.shape)
    return ga, gb


_SMALL_BATCH = 32


def _affine(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x @ w.T + b`` as a new C-ordered array; small batches take the product turned around.

    For a batch x of shape (B, in), the product can be computed as
    ``x @ w.T`` (B rows, the layout PyTorch writes) or as ``(w @ x.T).T``,
    the notes' z = W a with the batch as columns (out rows). Same products;
    but OpenBLAS runs the first form slowly when B is small: on this
    project's machine, for B = 32 and w of (256, 784), in 1.5x the second
    form's time with its AVX-512 kernels and 1.1x with its AVX2 ones (and 2x
    for a (1024, 1024) w at B = 16). The bias add writes the C-ordered result
    either way, but reading the (out, B) product across its rows costs more
    as B grows (27 us instead of 3 at B = 128), which is where the first form
    wins again: so the second form only for batches of at most 32 rows that
    are shorter than the output side.
    """
    if x.ndim == 2 and x.shape[0] <= _SMALL_BATCH and x.shape[0] < w.shape[0]:
        zt = w @ x.T
        out = np.empty(zt.shape[::-1], zt.dtype)
        return np.add(zt.T, b, out=out)  # the same casting as `out += b` below
    out = x @ w.T
    out += b
    return out


_UNITS: dict[np.dtype, np.ndarray] = {}


def unit_seed(out: np.ndarray) -> np.ndarray:
    """dL/dL = 1 for a backward pass from ``out``: ones of its shape and dtype.

    For a 0-d ``out`` (a loss) one read-only array per dtype, shared: a
    caller passes it to a VJP as not its own to overwrite (``inplace``
    False), and a kernel may recognise it by identity to reuse what it
    computed from it the last time (``cross_entropy``'s 1/N). Any other
    shape gets a new array."""
    if out.shape:
        return np.ones_like(out)
    u = _UNITS.get(out.dtype)
    if u is None:
        u = np.ones((), out.dtype)
        u.flags.writeable = False
        u = _UNITS.setdefault(out.dtype, u)
    return u


@functools.lru_cache(maxsize=32)
def _ones(n: int, dtype: str) -> np.ndarray:
    """A read-only vector of n ones, kept: making it costs as much as the
    matrix-vector product it serves on a small batch."""
    v = np.ones(n, dtype)
    v.flags.writeable = False
    return v


@rule(
    "linear",
    saves=Saves(inputs=((1,), (0,), False)),
    show="{0} @ {1}ᵀ + {2}",
    role="affine",
    grads=("{g} @ {1}", "{g}ᵀ @ {0}", "{g} summed over the rows"),
)
def LINEAR(x, w, b):
    """Fused affine map ``x @ w.T + b`` (PyTorch's layout: w is (out, in)).

    One node instead of three, and the bias gradient is a single sum.
    """
    out = _affine(x, w, b)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, w, b)
    return out, None


@LINEAR.defcheck
def _linear_check(arrays, params, exc):
    x, w, b = (np.shape(a) for a in arrays)
    if len(w) != 2:
        return f"weight must be 2-D (out_features, in_features), got shape {w}"
    if not x or x[-1] != w[1]:
        return f"input shape {x} does not fit weight shape {w}: last dim {x[-1:]} != {w[1]}"
    return f"bias shape {b} does not broadcast to the output (..., {w[0]})"


@LINEAR.defvjp
def _(g, out, ctx, needs, xp, x, w, b):
    folded = x.ndim != 2  # fold batch dimensions into one
    g2 = g.reshape((-1, g.shape[-1])) if folded else g
    gx = gw = gb = None
    if needs[0]:  # reads w (kept when x needs a gradient)
        gx = g @ w
    if needs[1]:  # reads x (kept when w needs a gradient)
        gw = g2.T @ (x.reshape((-1, x.shape[-1])) if folded else x)
    if needs[2]:
        if type(g2) is np.ndarray:
            # the column sums as a matrix-vector product: BLAS runs it about
            # 2.5x faster than g2.sum(axis=0) on a (1024, 256) float32 batch
            gb = sum_to_shape(_ones(g2.shape[0], g2.dtype.str) @ g2, b.shape)
        else:  # create_graph: a differentiable sum
            gb = sum_to_shape(g2.sum(axis=0), b.shape)
    return gx, gw, gb


@rule(
    "linear_nobias",
    saves=Saves(inputs=((1,), (0,))),
    show="{0} @ {1}ᵀ",
    role="affine",
    grads=("{g} @ {1}", "{g}ᵀ @ {0}"),
)
def LINEAR_NOBIAS(x, w):
    """``x @ w.T`` (a Linear layer without bias)."""
    out = x @ w.T
    if out.dtype is not _F32:
        out = _float_dtype(np.asarray(out), x, w)
    return out, None


LINEAR_NOBIAS.defcheck(lambda arrays, params, exc: _linear_check([*arrays, ()], params, exc))


@LINEAR_NOBIAS.defvjp
def _(g, out, ctx, needs, xp, x, w):
    gx = g @ w if needs[0] else None
    gw = None
    if needs[1]:
        if x.ndim != 2:
            x = x.reshape((-1, x.shape[-1]))
            g = g.reshape((-1, g.shape[-1]))
        gw = g.T @ x
    return gx, gw


@rule(
    "linear_relu",
    saves=Saves(inputs=((1,), (0,), False)),
    show="relu({0} @ {1}ᵀ + {2})",
    role="affine",
    activation="relu",
    grads=(
        "δ @ {1} with δ = {g} * relu'(z)",
        "δᵀ @ {0} with δ = {g} * relu'(z)",
        "δ summed over the rows, δ = {g} * relu'(z)",
    ),
)
def LINEAR_RELU(x, w, b):
    """``relu(x @ w.T + b)`` as one node: a Linear layer and the ReLU after it.

    Why fuse: relu's derivative is 1 where its output is positive and 0
    elsewhere, so the pre-activation z = x w^T + b is not needed for the
    backward pass. As two nodes, z is a node of its own and stays alive until
    backward reaches it; here relu is applied in place into the matmul's
    result, so z never exists as a separate array: one activation-sized array
    less per layer, and one pass over memory less.

    The VJP reads relu' from a boolean mask kept in ``ctx`` (a quarter of the
    output's size in float32), not from the output itself, so the node does
    not keep the output (it saves only x and w, see ``saves``): the output is
    freed as soon as the next layer's VJP is done with it, before this VJP
    allocates its gradients.
    The VJP is split (:meth:`Rule.defsplit`): delta = g * relu' first, then
    linear's VJP, with the mask freed in between, so neither the output nor
    the mask is alive when the weight gradient is allocated.
    ``nn.Sequential`` uses this rule for Linear + ReLU pairs.
    """
    out = _affine(x, w, b)
    if out.dtype is not _F32:
        out = _float_dtype(out, x, w, b)
    _np_relu(out, out=out)
    return out, out > 0  # relu' (0 at z = 0, as for relu)


LINEAR_RELU.defcheck(_linear_check)


@LINEAR_RELU.defsplit(LINEAR)
def _(g, out, ctx, inplace):
    # delta = dL/dz = g * relu'(z): the Linear VJP takes it as its
    # backpropagated gradient
    if inplace:
        return np.multiply(g, ctx, out=g)  # g is ours: turn it into delta in place
    return g * ctx


class _LinearKernel(Kernel):
    """``linear``, ``linear_relu`` and ``linear_nobias`` for a 2-D batch, into kept arrays.

    The same calls as the rules (:func:`_affine`'s choice of product, made once
    from the shapes; relu against zeros; the mask ``out > 0``; the
    bias gradient as ``ones @ delta``), each writing into an array of its own:
    0 the turned product (out, B), 1 the output, 2 the mask, 3 delta when ``g``
    is not ours to overwrite, 4-6 the gradients of x, w and b (0, 2 and 3 never
    leave the kernel's calls: see :meth:`Kernel.scratch`).
    """

    __slots__ = ("turn", "relu", "bias", "needs", "zeros", "ones")
    zeros: Any  # relu's zeros, the output's shape (None without relu)

    def __init__(self, xshape: tuple[int, ...], wshape: tuple[int, ...], dtype: np.dtype,
                 relu: bool, bias: bool, needs: tuple[bool, ...]) -> None:
        n, out = xshape[0], wshape[0]
        super().__init__([((out, n), dtype), ((n, out), dtype), ((n, out), np.bool_),
                          ((n, out), dtype), (xshape, dtype), (wshape, dtype), ((out,), dtype)])
        self.turn = bias and n <= _SMALL_BATCH and n < out  # as _affine decides
        self.relu = relu
        self.bias = bias
        self.needs = needs
        # relu against a matrix of zeros the output's shape: the same values as the
        # rule's row of zeros (_np_relu; NaN and -0.0 included), in half the time,
        # as NumPy runs one loop over the whole array instead of one per row (1.0
        # against 2.1 us at (32, 256), 27 against 41 us at (1024, 256))
        if relu:
            self.zeros = aligned_empty((n, out), dtype)
            self.zeros[...] = 0
            self.zeros.flags.writeable = False
        else:
            self.zeros = None
        self.ones = _ones(n, dtype.str)

    def forward(self, x: np.ndarray, w: np.ndarray, b: Any = None) -> tuple:
        out = self.take(1)
        if self.turn:
            zt = self.scratch(0)
            np.matmul(w, x.T, out=zt)
            np.add(zt.T, b, out=out)
        else:
            np.matmul(x, w.T, out=out)
            if b is not None:
                np.add(out, b, out=out)
        if not self.relu:
            return out, None
        mask = self.scratch(2)
        np.maximum(out, self.zeros, out=out)
        return out, np.greater(out, 0, out=mask)

    def vjp(self, g: np.ndarray, inplace: bool, ctx: Any, x: np.ndarray, w: np.ndarray,
            b: np.ndarray | None = None) -> tuple:
        if self.relu:  # delta = g * relu'(z), as linear_relu's split step forms it
            g = np.multiply(g, ctx, out=g if inplace else self.scratch(3))
        gx = np.matmul(g, w, out=self.take(4)) if self.needs[0] else None
        return self._param_grads(gx, g, x)

    def vjp_update(self, g: np.ndarray, inplace: bool, ctx: Any, update: Callable[..., bool],
                   x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> tuple:
        """The VJP with the weight and bias updated in place instead of returned,
        by ``update(delta, x)`` (cr.compile's fused update), after the gradient
        of x has used the old weight; where ``update`` says it cannot (False),
        the gradients are returned as :meth:`vjp` returns them."""
        if self.relu:
            g = np.multiply(g, ctx, out=g if inplace else self.scratch(3))
        gx = np.matmul(g, w, out=self.take(4)) if self.needs[0] else None
        if update(g, x):
            return (gx, None, None) if self.bias else (gx, None)
        return self._param_grads(gx, g, x)

    def _param_grads(self, gx: np.ndarray | None, g: np.ndarray, x: np.ndarray) -> tuple:
        """``(gx, dL/dw, dL/db)`` from delta ``g`` (those the op needs)."""
        needs = self.needs
        gw = np.matmul(g.T, x, out=self.take(5)) if needs[1] else None
        if not self.bias:
            return gx, gw
        return gx, gw, np.matmul(self.ones, g, out=self.take(6)) if needs[2] else None


def _linear_kernel(relu: bool, bias: bool) -> Callable[..., Kernel | None]:
    def make(operands: Sequence[Any], settings: dict, needs: tuple[bool, ...]) -> Kernel | None:
        if settings or None in operands or len(operands) != 2 + bias:
            return None
        (xs, dt), (ws, wdt) = operands[0], operands[1]
        if dt.char not in "fd" or wdt != dt or len(xs) != 2 or len(ws) != 2 or xs[1] != ws[1]:
            return None
        if bias and (operands[2][1] != dt or operands[2][0] != (ws[0],)):
            return None
        return _LinearKernel(xs, ws, dt, relu, bias, needs or (False,) * (2 + bias))

    return make


LINEAR.defkernel(_linear_kernel(relu=False, bias=True))
LINEAR_RELU.defkernel(_linear_kernel(relu=True, bias=True))
LINEAR_NOBIAS.defkernel(_linear_kernel(relu=False, bias=False))


# ==========================================================================
# Shape and indexing
# ==========================================================================


@rule("reshape", saves=SAVES_NOTHING, grads=("{g} reshaped back to the shape of {0}",))
def RESHAPE(x, *, shape):
    return np.reshape(x, shape), None


@RESHAPE.defvjp
def _(g, out, ctx, needs, xp, x):
    return (g.reshape(x.shape),)


@rule("transpose", saves=SAVES_NOTHING, grads=("{g} with the axes permuted back",))
def TRANSPOSE(x, *, axes):
    if axes is not None and sorted(a % builtins.max(x.ndim, 1) for a in axes) != list(
        range(x.ndim)
    ):
        raise ValueError(f"axes {tuple(axes)} are not a permutation of {x.ndim} dimensions")
    return np.transpose(x, axes), axes


@TRANSPOSE.defvjp
def _(g, out, ctx, needs, xp, x):
    inverse = None if ctx is None else tuple(np.argsort([a % x.ndim for a in ctx]))
    return (xp.transpose(g, inverse),)


@rule("broadcast_to", saves=SAVES_NOTHING, grads=("{g} summed over the broadcast axes",))
def BROADCAST_TO(x, *, shape):
    return np.broadcast_to(x, shape), None


@BROADCAST_TO.defvjp
def _(g, out, ctx, needs, xp, x):
    return (sum_to_shape(g, x.shape),)


@rule(
    "getitem",
    saves=SAVES_NOTHING,
    grads=("{g} added into zeros shaped like {0} at the indexed entries",),
)
def GETITEM(x, *, index):
    """``x[index]``: basic slices and integer/boolean arrays."""
    return x[index], _owned(index)


@GETITEM.defvjp
def _(g, out, ctx, needs, xp, x):
    # scatter the gradient back; repeated indices accumulate (sum over successors)
    return (xp.scatter_add(g, ctx, x.shape, x.dtype),)


@rule("scatter_add", saves=SAVES_NOTHING, grads=("{g} read at the index",))
def SCATTER_ADD(g, *, index, shape):
    """A zero array of ``shape`` with ``g`` added at ``index`` (getitem's VJP, differentiable)."""
    return _np_scatter_add(g, index, shape, g.dtype), index


@SCATTER_ADD.defvjp
def _(g, out, ctx, needs, xp, src):
    return (g[ctx],)


@rule("concatenate", saves=SAVES_NOTHING, grads=("the part of {g} that {0} filled",))
def CONCATENATE(*xs, axis):
    out = np.concatenate(xs, axis=axis)
    if out.dtype is not _F32:
        out = _float_dtype(out, *xs)
    ax = axis % out.ndim
    return out, (ax, np.cumsum([0] + [x.shape[ax] for x in xs]))


@CONCATENATE.defvjp
def _(g, out, ctx, needs, xp, *xs):
    ax, bounds = ctx
    lead = (slice(None),) * ax
    return tuple(
        g[lead + (slice(int(bounds[i]), int(bounds[i + 1])),)] if needs[i] else None
        for i in range(len(xs))
    )


@rule("stack", saves=SAVES_NOTHING, grads=("the slice of {g} that {0} filled",))
def STACK(*xs, axis):
    out = np.stack(xs, axis=axis)
    if out.dtype is not _F32:
        out = _float_dtype(out, *xs)
    return out, axis % out.ndim


@STACK.defvjp
def _(g, out, ctx, needs, xp, *xs):
    lead = (slice(None),) * ctx
    return tuple(g[lead + (i,)] if needs[i] else None for i in range(len(xs)))


# --------------------------------------------------------------------------
# Public functions: one call into the registry each
# --------------------------------------------------------------------------
#
# Names and meanings follow PyTorch (``transpose(x, 0, 1)`` swaps two dims,
# ``var``/``std`` are unbiased, ``max(x, dim)`` returns values and indices);
# keyword arguments take PyTorch's spelling (``dim=``, ``keepdim=``) and
# NumPy's (``axis=``, ``keepdims=``) alike. docs/pytorch-numpy.md lists
# where the two libraries differ and which meaning chainrule takes.


def _either(who: str, np_name: str, np_value: Any, pt_name: str, pt_value: Any,
            default: Any = None) -> Any:
    """One setting spelled the NumPy way (``axis``) or the PyTorch way (``dim``)."""
    if np_value is not None and pt_value is not None and not _same(np_value, pt_value):
        raise TypeError(
            f"{who}: got {pt_name}={pt_value!r} and {np_name}={np_value!r}; they are the "
            "same setting (PyTorch's and NumPy's spelling): give one"
        )
    if pt_value is not None:
        return pt_value
    return default if np_value is None else np_value


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _reduce_args(who: str, dim: Any, axis: Any, keepdim: Any, keepdims: Any) -> tuple[Any, bool]:
    return (_either(who, "axis", axis, "dim", dim),
            bool(_either(who, "keepdims", keepdims, "keepdim", keepdim, False)))


def add(a: Any, b: Any, *, alpha: Any = 1) -> Tensor:
    """a + alpha * b with NumPy broadcasting (``alpha`` as in ``torch.add``)."""
    return _binary(ADD, a, b if alpha == 1 else mul(b, alpha))


def sub(a: Any, b: Any, *, alpha: Any = 1) -> Tensor:
    """a - alpha * b with NumPy broadcasting (``alpha`` as in ``torch.sub``)."""
    return _binary(SUB, a, b if alpha == 1 else mul(b, alpha))


def mul(a: Any, b: Any) -> Tensor:
    """a * b (elementwise, the Hadamard product of the notes) with broadcasting."""
    return _binary(MUL, a, b)


def div(a: Any, b: Any) -> Tensor:
    """a / b with broadcasting (true division: integers give float32, as in PyTorch)."""
    return _binary(DIV, a, b)


def pow(a: Any, b: Any) -> Tensor:  # noqa: A001
    """a ** b; differentiable in both (in b where a > 0; PyTorch's values elsewhere)."""
    return _binary(POW, a, b)


def square(a: Any) -> Tensor:
    """a * a."""
    return _binary(POW, a, 2)


def neg(a: Any) -> Tensor:
    """-a."""
    return _unary(NEG, a)


def abs(a: Any) -> Tensor:  # noqa: A001
    """|a|; gradient sign(a), 0 at 0."""
    return _unary(ABS, a)


def exp(a: Any) -> Tensor:
    return _unary(EXP, a)


def log(a: Any) -> Tensor:
    return _unary(LOG, a)


def sqrt(a: Any) -> Tensor:
    return _unary(SQRT, a)


def sin(a: Any) -> Tensor:
    return _unary(SIN, a)


def cos(a: Any) -> Tensor:
    return _unary(COS, a)


def tanh(a: Any) -> Tensor:
    return _unary(TANH, a)


def sigmoid(a: Any) -> Tensor:
    """1 / (1 + exp(-a)), stable for any a (no overflow at |a| = 1000)."""
    return _unary(SIGMOID, a)


def relu(a: Any) -> Tensor:
    """max(a, 0); gradient 0 at a = 0."""
    return _unary(RELU, a)


def leaky_relu(a: Any, negative_slope: float = 0.01) -> Tensor:
    """a if a > 0 else negative_slope * a."""
    return _unary(LEAKY_RELU, a, negative_slope=negative_slope)


def softplus(a: Any) -> Tensor:
    """log(1 + exp(a)), stable for any a; its derivative is sigmoid(a)."""
    return _unary(SOFTPLUS, a)


def ndtr(a: Any) -> Tensor:
    """The standard normal CDF Phi(a) (``torch.special.ndtr``)."""
    return _unary(NDTR, a)


def gelu(a: Any, approximate: str = "none") -> Tensor:
    """a Phi(a), the Gaussian error linear unit; ``approximate='tanh'`` for PyTorch's
    tanh form."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _unary(GELU, a, approximate=approximate)


def silu(a: Any) -> Tensor:
    """a sigmoid(a) (swish)."""
    return _unary(SILU, a)


def elu(a: Any, alpha: float = 1.0) -> Tensor:
    """a if a > 0 else alpha (exp(a) - 1)."""
    return _unary(ELU, a, alpha=float(alpha))


def clip(a: Any, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
    """Clamp to [min, max] (either may be None)."""
    if min is None and max is None:
        raise ValueError("clip: give at least one of min and max")
    return apply(CLIP, a, lo=value(min), hi=value(max))


clamp = clip


def sum(a: Any, dim: Any = None, keepdim: bool | None = None, *,  # noqa: A001
        axis: Any = None, keepdims: bool | None = None) -> Tensor:
    """Sum over ``dim`` (None = all, int, negative int or tuple; ``axis=`` too).

    >>> cr.sum(cr.ones((2, 3)), dim=0).shape
    (3,)
    """
    axis, keep = _reduce_args("sum", dim, axis, keepdim, keepdims)
    return _unary(SUM, a, axis=axis, keepdims=keep)


def mean(a: Any, dim: Any = None, keepdim: bool | None = None, *,
         axis: Any = None, keepdims: bool | None = None) -> Tensor:
    """Mean over ``dim``/``axis`` (integer tensors give float32, as in PyTorch)."""
    axis, keep = _reduce_args("mean", dim, axis, keepdim, keepdims)
    return _unary(MEAN, a, axis=axis, keepdims=keep)


class ValuesIndices(tuple):
    """What ``max``/``min`` along one ``dim`` return, as in PyTorch: ``(values, indices)``.

    ``values, indices = x.max(dim=1)``, or ``.values`` / ``.indices``.
    """

    __slots__ = ()

    def __new__(cls, values: Tensor, indices: Tensor) -> ValuesIndices:
        return tuple.__new__(cls, (values, indices))

    @property
    def values(self) -> Tensor:
        return self[0]

    @property
    def indices(self) -> Tensor:
        return self[1]

    def __repr__(self) -> str:
        return f"ValuesIndices(values={self[0]!r}, indices={self[1]!r})"


def _extremum(a: Any, who: str, rule: Rule, pick: Callable, dim: Any, keepdim: Any,
              axis: Any, keepdims: Any) -> Any:
    if dim is not None and axis is not None:
        _either(who, "axis", axis, "dim", dim)
    keep = bool(_either(who, "keepdims", keepdims, "keepdim", keepdim, False))
    if dim is None:
        # NumPy's meaning (axis=...) and PyTorch's full reduction: the values;
        # at ties the gradient is split evenly (as torch.amax and x.max() do)
        return apply(rule, a, axis=axis, keepdims=keep)
    if isinstance(dim, (Tensor, np.ndarray)):  # torch.max(a, b): the elementwise maximum
        return (maximum if rule is MAX else minimum)(a, dim)
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(
            f"{who}: dim={dim!r}: with dim, {who} returns (values, indices) along one "
            f"dimension (PyTorch); to reduce over several use a{who}(dim=...) or axis=..."
        )
    return _along(a, who, pick, dim, keep)


def _along(a: Any, who: str, pick: Callable, dim: int | np.integer, keep: bool) -> ValuesIndices:
    """PyTorch's ``max(dim)``: the values and where they are (the first one at ties).

    The values are gathered at those indices, so the gradient goes to that
    one element, as in PyTorch (the full reduction splits it between ties).
    """
    x = value(a) if isinstance(a, Tensor) else np.asarray(a)
    axes = _norm_axes(dim, x.ndim, who)
    if not axes:  # a 0-d tensor: itself, at index 0
        return ValuesIndices(getitem(a, ()), Tensor._const(np.zeros((), np.int64)))
    ax = axes[0]
    if x.shape[ax] == 0:
        raise ValueError(f"{who}: dimension {dim} of shape {x.shape} is empty, there is no {who}")
    idx = pick(x, axis=ax, keepdims=True)
    index = tuple(
        idx if i == ax else np.arange(n).reshape([n if j == i else 1 for j in range(x.ndim)])
        for i, n in enumerate(x.shape)
    )
    vals = getitem(a, index)
    if not keep:
        vals = reshape(vals, x.shape[:ax] + x.shape[ax + 1:])
        idx = idx.reshape(x.shape[:ax] + x.shape[ax + 1:])
    return ValuesIndices(vals, Tensor._const(idx.astype(np.int64, copy=False)))


def max(a: Any, dim: Any = None, keepdim: bool | None = None, *,  # noqa: A001
        axis: Any = None, keepdims: bool | None = None) -> Any:
    """The maximum, PyTorch's way or NumPy's.

    * ``max(x)`` or ``max(x, axis=...)``: the maximum values (over all, an
      int or a tuple of axes); at ties the gradient is split evenly.
    * ``max(x, dim)`` (one int, as in PyTorch): ``(values, indices)`` along
      ``dim``; the gradient goes to the element at ``indices``.
    * ``max(x, y)`` with a tensor ``y``: the elementwise :func:`maximum`.
    """
    return _extremum(a, "max", MAX, np.argmax, dim, keepdim, axis, keepdims)


def min(a: Any, dim: Any = None, keepdim: bool | None = None, *,  # noqa: A001
        axis: Any = None, keepdims: bool | None = None) -> Any:
    """The minimum; the same forms as :func:`max`."""
    return _extremum(a, "min", MIN, np.argmin, dim, keepdim, axis, keepdims)


def amax(a: Any, dim: Any = None, keepdim: bool | None = None, *,
         axis: Any = None, keepdims: bool | None = None) -> Tensor:
    """Maximum values over ``dim`` (None, int or tuple); ties share the gradient evenly."""
    axis, keep = _reduce_args("amax", dim, axis, keepdim, keepdims)
    return apply(MAX, a, axis=axis, keepdims=keep)


def amin(a: Any, dim: Any = None, keepdim: bool | None = None, *,
         axis: Any = None, keepdims: bool | None = None) -> Tensor:
    """Minimum values over ``dim`` (None, int or tuple); ties share the gradient evenly."""
    axis, keep = _reduce_args("amin", dim, axis, keepdim, keepdims)
    return apply(MIN, a, axis=axis, keepdims=keep)


def argmax(a: Any, dim: Any = None, keepdim: bool | None = None, *,
           axis: Any = None, keepdims: bool | None = None) -> Tensor:
    """Index of the (first) maximum, over all elements or along ``dim``; not differentiable."""
    return _arg(a, "argmax", np.argmax, dim, keepdim, axis, keepdims)


def argmin(a: Any, dim: Any = None, keepdim: bool | None = None, *,
           axis: Any = None, keepdims: bool | None = None) -> Tensor:
    """Index of the (first) minimum, over all elements or along ``dim``; not differentiable."""
    return _arg(a, "argmin", np.argmin, dim, keepdim, axis, keepdims)


def _arg(a: Any, who: str, pick: Callable, dim: Any, keepdim: Any, axis: Any,
         keepdims: Any) -> Tensor:
    axis, keep = _reduce_args(who, dim, axis, keepdim, keepdims)
    x = value(a) if isinstance(a, Tensor) else np.asarray(a)
    if axis is not None:
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise TypeError(f"{who}: dim must be one int (or None for all elements), got {axis!r}")
        axes = _norm_axes(axis, x.ndim, who)
        axis = axes[0] if axes else None
    # an op (not differentiable), so that cr.compile recomputes it on every replay
    return _unary(_ARG_RULES[who], a, axis=axis, keepdims=keep)


def _correction(who: str, unbiased: Any, correction: Any, ddof: Any) -> Any:
    """PyTorch's ``correction``/``unbiased`` or NumPy's ``ddof``: what n is reduced by."""
    given = [(k, v) for k, v in (("unbiased", unbiased), ("correction", correction),
                                 ("ddof", ddof)) if v is not None]
    if len(given) > 1:
        names = " and ".join(f"{k}={v!r}" for k, v in given)
        raise TypeError(f"{who}: got {names}; give one of them (they set the same divisor)")
    if unbiased is not None:
        if not isinstance(unbiased, (bool, np.bool_)):
            raise TypeError(f"{who}: unbiased must be True or False, got {unbiased!r}")
        return 1 if unbiased else 0
    c = correction if correction is not None else ddof
    if c is None:
        return 1  # PyTorch's default: the unbiased (Bessel-corrected) estimate
    if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) or c < 0:
        raise ValueError(f"{who}: correction must be a non-negative number, got {c!r}")
    return c


def var(a: Any, dim: Any = None, unbiased: bool | None = None, keepdim: bool | None = None,
        *, correction: Any = None, axis: Any = None, keepdims: bool | None = None,
        ddof: Any = None) -> Tensor:
    """Variance over ``dim``/``axis``: sum((x - mean)^2) / (n - correction).

    Unbiased by default (``correction=1``), as in PyTorch. ``unbiased=False``,
    ``correction=0`` or NumPy's ``ddof=0`` give the population variance.
    """
    axis, keep = _reduce_args("var", dim, axis, keepdim, keepdims)
    c = _correction("var", unbiased, correction, ddof)
    return _unary(VAR, a, axis=axis, keepdims=keep, correction=c)


def std(a: Any, dim: Any = None, unbiased: bool | None = None, keepdim: bool | None = None,
        *, correction: Any = None, axis: Any = None, keepdims: bool | None = None,
        ddof: Any = None) -> Tensor:
    """Standard deviation, sqrt(:func:`var`): unbiased by default, as in PyTorch.

    Its gradient is 0 where it is 0 (a constant input), not NaN.
    """
    axis, keep = _reduce_args("std", dim, axis, keepdim, keepdims)
    c = _correction("std", unbiased, correction, ddof)
    return _unary(STD, a, axis=axis, keepdims=keep, correction=c)


def logsumexp(a: Any, dim: Any = None, keepdim: bool | None = None, *,
              axis: Any = None, keepdims: bool | None = None) -> Tensor:
    """log(sum(exp(a), dim)) without overflow."""
    axis, keep = _reduce_args("logsumexp", dim, axis, keepdim, keepdims)
    return apply(LOGSUMEXP, a, axis=axis, keepdims=keep)


def softmax(a: Any, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """exp(a) / sum(exp(a)) along ``dim`` (default: the last), stable for any input."""
    return apply(SOFTMAX, a, axis=_either("softmax", "axis", axis, "dim", dim, -1))


def log_softmax(a: Any, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """a - logsumexp(a) along ``dim`` (default: the last), stable for any input."""
    return apply(LOG_SOFTMAX, a, axis=_either("log_softmax", "axis", axis, "dim", dim, -1))


def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product (NumPy's ``@``): 1-D, 2-D and batched N-D operands.

    Shapes: (n, k) @ (k, m) -> (n, m); (k,) @ (k, m) -> (m,); (..., n, k) @ (..., k, m).
    """
    return _binary(MATMUL, a, b)


def linear(x: Any, weight: Any, bias: Any = None) -> Tensor:
    """``x @ weight.T + bias`` as one fused node. x: (..., in), weight: (out, in), bias: (out,)."""
    if bias is None:
        return apply(LINEAR_NOBIAS, x, weight)
    return apply(LINEAR, x, weight, bias)


def linear_relu(x: Any, weight: Any, bias: Any) -> Tensor:
    """``relu(x @ weight.T + bias)`` as one fused node (see :data:`LINEAR_RELU`).

    Same values and gradients as ``relu(linear(x, weight, bias))``, without
    keeping the pre-activation alive for the backward pass.
    """
    return apply(LINEAR_RELU, x, weight, bias)


def _shape_of(a: Any) -> tuple[int, ...]:
    return value(a).shape if isinstance(a, Tensor) else np.shape(a)


def reshape(a: Any, shape: Any) -> Tensor:
    """Same values, new shape (one dimension may be -1)."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    return _unary(RESHAPE, a, shape=tuple(shape))


def flatten(a: Any, start_dim: int | None = None, end_dim: int = -1, *,
            start_axis: int | None = None) -> Tensor:
    """Merge dimensions ``start_dim`` .. ``end_dim`` (inclusive) into one (``torch.flatten``)."""
    start = _either("flatten", "start_axis", start_axis, "start_dim", start_dim, 0)
    shape = _shape_of(a)
    nd = builtins.max(len(shape), 1)
    for d in (start, end_dim):
        if not -nd <= d < nd:
            raise ValueError(f"flatten: dim {d} is out of range for shape {shape}")
    s, e = start % nd, end_dim % nd
    if s > e:
        raise ValueError(f"flatten: start_dim {start} comes after end_dim {end_dim}")
    if not shape:
        return reshape(a, (1,))
    merged = 1
    for n in shape[s:e + 1]:
        merged *= n
    return reshape(a, tuple(shape[:s]) + (merged,) + tuple(shape[e + 1:]))


def _permutation(axes: Any, ndim: int, who: str) -> tuple[int, ...]:
    perm = tuple(axes)
    if len(perm) != ndim or not builtins.all(
        isinstance(d, (int, np.integer)) and -builtins.max(ndim, 1) <= d < builtins.max(ndim, 1)
        for d in perm
    ) or sorted(int(d) % builtins.max(ndim, 1) for d in perm) != list(range(ndim)):
        raise ValueError(f"{who}: {perm} is not a permutation of the {ndim} dimensions")
    return tuple(int(d) % builtins.max(ndim, 1) for d in perm)


def permute(a: Any, *dims: Any) -> Tensor:
    """Reorder the dimensions: output dimension i is input dimension ``dims[i]``.

    ``cr.permute(x, 2, 0, 1)`` or ``cr.permute(x, (2, 0, 1))``, as ``torch.permute``.
    """
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return _unary(TRANSPOSE, a, axes=_permutation(dims, len(_shape_of(a)), "permute"))


def transpose(a: Any, dim0: Any = None, dim1: Any = None, *, axes: Any = None) -> Tensor:
    """Swap two dimensions (PyTorch), or permute them (NumPy).

    * ``transpose(x, dim0, dim1)``: swap ``dim0`` and ``dim1`` (``torch.transpose``).
    * ``transpose(x)``: reverse all dimensions (``np.transpose``, ``x.T``).
    * ``transpose(x, (2, 0, 1))`` or ``axes=(2, 0, 1)``: a permutation
      (``np.transpose``); :func:`permute` says it more plainly.
    """
    if isinstance(dim0, (tuple, list)) and dim1 is None:
        dim0, axes = None, _either("transpose", "axes", axes, "axes", tuple(dim0))
    if axes is not None:
        if dim0 is not None or dim1 is not None:
            raise TypeError("transpose: give two dims to swap, or axes=, not both")
        return permute(a, tuple(axes))
    if dim0 is None and dim1 is None:
        return _unary(TRANSPOSE, a, axes=None)
    if dim0 is None or dim1 is None:
        raise TypeError(
            "transpose: give the two dims to swap, transpose(x, dim0, dim1) (PyTorch); "
            "for a full permutation use permute(x, dims)"
        )
    return swapaxes(a, dim0, dim1)


def t(a: Any) -> Tensor:
    """Transpose a tensor of at most 2 dimensions (``torch.t``)."""
    nd = len(_shape_of(a))
    if nd > 2:
        raise ValueError(f"t: expects a tensor of at most 2 dimensions, got {nd}; use transpose")
    return _unary(TRANSPOSE, a, axes=None)


def swapaxes(a: Any, axis0: int, axis1: int) -> Tensor:
    """Swap two dimensions (``np.swapaxes``, ``torch.transpose``)."""
    nd = len(_shape_of(a))
    span = builtins.max(nd, 1)
    for d in (axis0, axis1):
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool):
            raise TypeError(f"transpose: dims must be ints, got {d!r}")
        if not -span <= d < span:
            raise ValueError(f"transpose: dim {d} is out of range for {nd} dimensions")
    perm = list(range(nd))
    if nd:
        i, j = int(axis0) % nd, int(axis1) % nd
        perm[i], perm[j] = perm[j], perm[i]
    return _unary(TRANSPOSE, a, axes=tuple(perm))


def squeeze(a: Any, dim: Any = None, *, axis: Any = None) -> Tensor:
    """Drop dimensions of size 1: all of them, or those among ``dim`` (int or tuple).

    As in PyTorch, a ``dim`` whose size is not 1 is left as it is (NumPy
    raises there).
    """
    axis = _either("squeeze", "axis", axis, "dim", dim)
    shape = _shape_of(a)
    if axis is None:
        return reshape(a, tuple(n for n in shape if n != 1))
    axes = _norm_axes(axis, len(shape), "squeeze")
    return reshape(a, tuple(n for i, n in enumerate(shape) if not (i in axes and n == 1)))


def expand_dims(a: Any, axis: Any = None, *, dim: Any = None) -> Tensor:
    """Insert a size-1 dimension at ``axis`` (``unsqueeze``; int or tuple)."""
    axis = _either("unsqueeze", "axis", axis, "dim", dim)
    if axis is None:
        raise TypeError("unsqueeze: give the position of the new dimension (dim=...)")
    return reshape(a, np.expand_dims(np.empty(_shape_of(a), dtype=bool), axis).shape)


unsqueeze = expand_dims


def broadcast_to(a: Any, shape: Sequence[int]) -> Tensor:
    """Broadcast to ``shape`` (NumPy rules); the gradient sums back."""
    return apply(BROADCAST_TO, a, shape=tuple(shape))


def expand(a: Any, *sizes: Any) -> Tensor:
    """``torch.Tensor.expand``: repeat size-1 dimensions to ``sizes`` without copying.

    -1 keeps a dimension's size; new dimensions may be added in front. The
    gradient sums back over the repeated elements.
    """
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    shape = _shape_of(a)
    if len(sizes) < len(shape):
        raise ValueError(
            f"expand: {len(sizes)} sizes {tuple(sizes)} for a tensor of shape {shape}; "
            "give at least one size per dimension"
        )
    lead = len(sizes) - len(shape)
    target = []
    for i, n in enumerate(sizes):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            raise TypeError(f"expand: sizes must be ints, got {n!r}")
        old = shape[i - lead] if i >= lead else None
        if n == -1:
            if old is None:
                raise ValueError(f"expand: -1 is not allowed for the new leading dimension {i}")
            n = old
        if old is not None and old != n and old != 1:
            raise ValueError(
                f"expand: dimension {i - lead} of shape {shape} has size {old}, which cannot "
                f"be expanded to {n} (only size-1 dimensions expand)"
            )
        if n < 0:
            raise ValueError(f"expand: size {n} is negative")
        target.append(int(n))
    return broadcast_to(a, tuple(target))


def getitem(a: Any, index: Any) -> Tensor:
    """``a[index]``: ints, slices, None, Ellipsis, integer and boolean arrays."""
    return _unary(GETITEM, a, index=_raw_index(index))


def scatter_add(src: Any, index: Any, shape: Sequence[int], dtype: Any = None) -> Tensor:
    """Zeros of ``shape`` with ``src`` added at ``index`` (repeated indices accumulate)."""
    return apply(SCATTER_ADD, src, index=_raw_index(index), shape=tuple(shape))


def _operands(xs: Any, op: str) -> list:
    if isinstance(xs, (Tensor, np.ndarray)):
        raise TypeError(f"{op}: takes a sequence of tensors, got one {type(xs).__name__}")
    xs = list(xs)
    if not xs:
        raise ValueError(f"{op}: needs at least one tensor")
    return xs


def concatenate(xs: Sequence[Any], axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """Join tensors along an existing dimension (``dim``/``axis``, default 0)."""
    ax = _either("concatenate", "axis", axis, "dim", dim, 0)
    return apply(CONCATENATE, *_operands(xs, "concatenate"), axis=ax)


cat = concatenate


def stack(xs: Sequence[Any], axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """Join tensors along a new dimension (``dim``/``axis``, default 0)."""
    ax = _either("stack", "axis", axis, "dim", dim, 0)
    return apply(STACK, *_operands(xs, "stack"), axis=ax)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """``a`` where ``cond`` is true, else ``b`` (cond is not differentiated)."""
    c = value(cond)
    c = c if isinstance(c, np.ndarray) else np.asarray(c)
    if c.dtype != np.bool_:
        c = c.astype(bool)
    return apply(WHERE, a, b, cond=c)


# Comparisons and arg-max/min give values outside the graph (booleans, indices),
# but they are ops all the same, so that cr.compile recomputes a mask such as
# ``yb > -1`` on every replay instead of freezing it. Not differentiable, so
# they are kept out of RULES (the registry of differentiable rules).
def _comparison(name: str, ufunc: np.ufunc) -> Rule:
    return Rule(name, lambda a, b: (ufunc(a, b), None))


_COMPARISONS = {
    name: _comparison(name, f)
    for name, f in (("eq", np.equal), ("ne", np.not_equal), ("lt", np.less),
                    ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal))
}


def _arg_rule(name: str, pick: Callable) -> Rule:
    return Rule(name, lambda x, *, axis, keepdims: (
        np.asarray(pick(x, axis=axis, keepdims=keepdims), dtype=np.int64), None))


_ARG_RULES = {"argmax": _arg_rule("argmax", np.argmax), "argmin": _arg_rule("argmin", np.argmin)}


def compare(name: str, a: Any, b: Any) -> Tensor:
    """``a <name> b`` elementwise (eq, ne, lt, le, gt, ge): a boolean tensor, no graph."""
    if isinstance(b, (Tensor, np.ndarray, *_SCALARS)):
        return _binary(_COMPARISONS[name], a, b)
    return Tensor._const(_COMPARISONS[name].forward(value(a), value(b))[0])


def masked_fill(a: Any, mask: Any, fill: Any) -> Tensor:
    """``a`` with ``fill`` where ``mask`` is true (``torch.Tensor.masked_fill``).

    ``mask`` must broadcast to ``a``'s shape and the result has ``a``'s shape
    and dtype. The gradient to ``a`` is 0 at the filled places; a ``fill``
    tensor gets the sum of the gradient over them.
    """
    m = value(mask)
    m = m if isinstance(m, np.ndarray) else np.asarray(m)
    if m.dtype != np.bool_:
        raise TypeError(f"masked_fill: the mask must be boolean, got dtype {m.dtype}")
    shape = _shape_of(a)
    try:
        fits = np.broadcast_shapes(m.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"masked_fill: mask of shape {m.shape} does not broadcast to {shape}")
    if np.ndim(value(fill)) != 0:
        raise ValueError(
            f"masked_fill: the fill value must be a number or a 0-d tensor, got shape "
            f"{np.shape(value(fill))}"
        )
    if not isinstance(fill, Tensor):
        fill = np.asarray(fill, dtype=value(a).dtype if isinstance(a, Tensor) else None)
    out = where(m, fill, a)
    return out if out.shape == tuple(shape) else broadcast_to(out, shape)


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum; at ties the gradient is split evenly."""
    return _binary(MAXIMUM, a, b)


def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise minimum; at ties the gradient is split evenly."""
    return _binary(MINIMUM, a, b)


def astype(a: Any, dtype: Any) -> Tensor:
    """Cast; differentiable between floating dtypes."""
    return apply(ASTYPE, a, dtype=np.dtype(dtype))


def clone(a: Any) -> Tensor:
    """A copy that stays in the graph."""
    return _unary(CLONE, a)


def _ns_transpose(a: Any, axes: Any = None) -> Tensor:
    """``np.transpose(a, axes)`` for the VJPs' Tensor namespace."""
    return _unary(TRANSPOSE, a, axes=None if axes is None else tuple(int(i) for i in axes))


# --------------------------------------------------------------------------
# Array namespaces handed to the VJPs (see the module docstring)
# --------------------------------------------------------------------------

NUMPY_NS: SimpleNamespace = SimpleNamespace(
    where=np.where,
    exp=np.exp,
    log=np.log,
    cos=np.cos,
    sin=np.sin,
    sigmoid=_np_sigmoid,
    tanh=np.tanh,
    ndtr=_np_ndtr,
    broadcast_to=np.broadcast_to,
    transpose=np.transpose,
    swapaxes=np.swapaxes,
    scatter_add=_np_scatter_add,
)

TENSOR_NS: SimpleNamespace = SimpleNamespace(
    where=where,
    exp=exp,
    log=log,
    cos=cos,
    sin=sin,
    sigmoid=sigmoid,
    tanh=tanh,
    ndtr=ndtr,
    broadcast_to=broadcast_to,
    transpose=_ns_transpose,
    swapaxes=swapaxes,
    scatter_add=scatter_add,
)
