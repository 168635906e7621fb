"""``cr.compile``: capture one training step, then replay it as a flat program.

A training step builds the same graph every time it runs on a batch of the
same shape: the same ops, wired the same way, reaching the same parameters.
Only the numbers change. ``compile`` records that structure once, as a
*tape*, and from then on runs the tape instead of the step's Python: no
Tensors, no graph nodes, no topological sort, no gradient-table hashing, no
argument checking already done. What is left is the arithmetic: each rule's
forward function and its VJP, called on plain NumPy arrays in the order eager
mode calls them, so the results are identical to eager mode bit for bit. This
is the CPU counterpart of CUDA graphs and tinygrad's ``TinyJit``.

What the tape holds
-------------------
In the order the step did them:

* every op (its rule, its settings, and where each operand comes from: an
  argument of the step, an earlier op of the tape, a parameter, a random draw
  or a constant), whether or not it was recorded for backward;
* the ``backward()`` call, turned into a fixed program: which ops it visits,
  in which order, and where each gradient goes;
* the calls that change state outside the graph: ``optimizer.zero_grad()`` /
  ``module.zero_grad()``, ``optimizer.step()``, ``clip_grad_norm_`` /
  ``clip_grad_value_`` and ``scheduler.step()``. These are *called again* on
  every replay, so learning-rate changes, momentum buffers and Adam's step
  counts stay live;
* random draws (Dropout masks): drawn afresh from the same generator on every
  replay, so masks differ from step to step exactly as in eager mode.

How a compiled step runs
------------------------
Per input signature (the shapes and dtypes of the array arguments):

1. **first call: capture.** The step runs eagerly while the tape is recorded.
2. **second call: verify.** The step runs eagerly; then the state it started
   from (parameters, gradients, optimizer and scheduler state, generators) is
   put back, the tape is replayed on the same batch, and everything is
   compared bit for bit. Any difference (a value the recorder could not see,
   Python state the step keeps) means this step cannot be replayed: eager
   mode's results are restored and the signature stays eager for good
   (``unsupported`` says why).
3. **later calls: replay.** Guards are checked first (every module the step
   called is still in the same train/eval mode, parameters still require grad
   and have no hooks); if one fails, the call runs eagerly and is captured
   again.

A new shape (the short last batch of an epoch) is a new signature, captured
on its own. Steps the tape cannot express run eagerly: several ``backward()``
calls, an explicit seed, ``create_graph``, gradient hooks or ``retain_grad``,
``optimizer.step(closure)``, a graph reaching non-leaf tensors made outside
the step, list/tuple/dict arguments, or a return value other than Tensors
computed by the step (their ``.detach()``, ``.data`` or ``.item()``),
``None``, and tuples, lists and dicts of those.

The contract (as with CUDA graphs and ``TinyJit``)
-------------------------------------------------
After capture, **the step's Python does not run**. The step must do the same
thing on every call of the same signature: no branches on the *values* of the
data or on counters, no Python side effects that must happen every step
(appending to a list, printing). Put those outside the step, or don't compile
it. ``fit`` and the CLI compile only steps made of chainrule's own modules
and losses, which keep this contract.

>>> step = cr.compile(step_fn)      # step_fn(xb, yb) -> loss
>>> for xb, yb in loader:
...     loss = step(xb, yb)         # same value and same parameters as step_fn
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import numpy as np

from .nn.module import STRUCTURE
from .ops import NUMPY_NS, _op_error, _scalar_array
from .optim.optimizer import Optimizer
from .random import _resolve
from .tensor import (
    _RELEASED,
    Node,
    Tensor,
    _mode,
    _store_grad,
    _tick,
    conform_grad,
)

__all__ = ["compile", "CompiledStep"]

# Where an operand comes from, at replay time:
#   (_ARG, i)    array argument i of the step (a Tensor argument's .data)
#   (_OP, j)     the output of tape op j
#   (_LEAF, t)   t.data of a leaf Tensor made outside the step (a parameter)
#   (_GEN, k)    random draw k of this step
#   (_CONST, v)  v itself (Python scalars, arrays made once)
#   (_SEQ, (type, refs))  a tuple or list of the above (indices in settings)
_ARG, _OP, _LEAF, _GEN, _CONST, _SEQ = range(6)

# Tape instructions
_I_OP, _I_GEN, _I_CALL, _I_BACKWARD = range(4)

_MAX_RECAPTURES = 3
_MAX_SIGNATURES = 64


class _Unsupported(Exception):
    """The step did something the tape cannot express: it runs eagerly."""


# ---------------------------------------------------------------------------
# The tape
# ---------------------------------------------------------------------------


class _Tape:
    """One step, recorded."""

    __slots__ = ("instrs", "n_ops", "n_gen", "rules", "recorded", "needs", "bwd_refs", "order",
                 "root", "keep", "ret", "modules", "leaves", "frozen", "state",
                 "generators", "structure")

    def __init__(self) -> None:
        self.instrs: list[tuple] = []
        self.n_ops = 0
        self.n_gen = 0  # random draws
        self.rules: list[Any] = []
        self.recorded: list[bool] = []
        self.needs: list[tuple] = []
        self.bwd_refs: list[tuple] = []  # per op: operand refs the VJP sees
        self.order: list[int] = []  # the ops backward visits, last recorded first
        self.root = -1
        self.keep: set[int] = set()  # outputs still needed after backward
        self.ret: Any = None  # how to build the return value
        self.modules: list[tuple[Any, bool]] = []  # (module, training) guards
        self.leaves: list[Tensor] = []  # leaf operands: requires_grad / hooks guards
        self.frozen: list[bool] = []
        self.state: list[Any] = []  # objects whose state the step changes
        self.generators: list[Any] = []
        self.structure = -1  # nn.module.STRUCTURE when the step called its modules


class _Recorder:
    """The tracer during a capture: turns what the step does into a tape."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.tape = _Tape()
        self.error: str | None = None
        self.keepalive: list[Any] = []  # objects whose id() is a key below
        self.by_id: dict[int, tuple] = {}  # id(Tensor or array) -> source
        self.nodes: list[Tensor] = []  # op results, by op index
        self.leaf_ids: set[int] = set()
        for i, a in enumerate(_flat_args(args, kwargs)):
            if isinstance(a, Tensor):
                if a._requires_grad:
                    self.error = "an argument of the step requires grad"
                self._note(a, (_ARG, i))
                self._note(a.data, (_ARG, i))
            elif isinstance(a, np.ndarray):
                self._note(a, (_ARG, i))

    def _note(self, obj: Any, src: tuple) -> None:
        self.keepalive.append(obj)
        self.by_id[id(obj)] = src

    def unsupported(self, why: str) -> None:
        if self.error is None:
            self.error = why

    # ----- where operands come from ----------------------------------------

    def _source(self, v: Any) -> tuple:
        if isinstance(v, Tensor):
            src = self.by_id.get(id(v))
            if src is not None:
                return src
            if v._op is not None:
                raise _Unsupported("the graph reaches a non-leaf tensor computed outside the step")
            src = self.by_id.get(id(v.data))
            if src is not None:  # a Tensor wrapped around an argument or a draw
                return src
            return self._leaf(v)
        if isinstance(v, np.ndarray):
            src = self.by_id.get(id(v))
            return src if src is not None else (_CONST, v)
        if isinstance(v, (tuple, list)):
            refs = tuple(self._source(e) for e in v)
            if all(r[0] == _CONST for r in refs):
                return (_CONST, v)
            return (_SEQ, (type(v), refs))
        return (_CONST, v)

    def _leaf(self, t: Tensor) -> tuple:
        if id(t) not in self.leaf_ids:
            self.leaf_ids.add(id(t))
            self.keepalive.append(t)
            self.tape.leaves.append(t)
            self.tape.frozen.append(t._requires_grad)
        return (_LEAF, t)

    # ----- the tracer protocol -----------------------------------------------

    def op(self, rule: Any, args: tuple, arrays: Any, params: dict, result: Tensor) -> None:
        if self.error is not None:
            return
        tape = self.tape
        try:
            fwd = tuple(
                self._source(a) if isinstance(a, Tensor) else self._source(x)
                for a, x in zip(args, arrays)
            )
            dynamic = {k: self._source(v) for k, v in params.items()}
        except _Unsupported as exc:
            self.error = str(exc)
            return
        if all(r[0] == _CONST for r in dynamic.values()):
            settings: Any = params  # the same dict every replay
            dyn = None
        else:
            settings = {k: v for k, v in params.items() if dynamic[k][0] == _CONST}
            dyn = tuple((k, r) for k, r in dynamic.items() if r[0] != _CONST)
        j = tape.n_ops
        tape.n_ops += 1
        node = result._node
        recorded = node is not None
        tape.rules.append(rule)
        tape.recorded.append(recorded)
        if recorded:
            tape.needs.append(node.needs)
            # The VJP sees each operand as an array: for a Python-scalar operand
            # that is the 0-d array of the output's dtype the node keeps.
            tape.bwd_refs.append(tuple(
                r if r[0] != _CONST or isinstance(r[1], np.ndarray)
                else (_CONST, _scalar_array(r[1], result.data.dtype))
                for r in fwd
            ))
        else:
            tape.needs.append(())
            tape.bwd_refs.append(())
        tape.instrs.append((_I_OP, j, rule, fwd, settings, dyn, recorded))
        self.nodes.append(result)
        self._note(result, (_OP, j))
        self._note(result.data, (_OP, j))

    def produced(self, arr: np.ndarray, fn: Callable, args: tuple) -> None:
        """A random draw: replays call ``fn(*args)`` again for a fresh one."""
        self.tape.instrs.append((_I_GEN, fn, args))
        self._note(arr, (_GEN, self.tape.n_gen))
        self.tape.n_gen += 1
        gen = _resolve(args[0])
        if all(g is not gen for g in self.tape.generators):
            self.tape.generators.append(gen)

    def call(self, fn: Callable, args: tuple, kwargs: dict | None = None,
             state: Any = None) -> None:
        """A state-changing call outside the graph (optimizer step, zero_grad...)."""
        self.tape.instrs.append((_I_CALL, fn, args, kwargs or {}))
        if state is not None:
            self.tape.state.append(state)

    def module(self, m: Any) -> None:
        if self.error is None and m.has_forward_hooks():
            self.error = "forward hooks on a module (a replay would skip them)"
        self.tape.modules.append((m, m.training))
        self.tape.structure = STRUCTURE[0]

    def backward(self, roots, seeds, retain_graph, create_graph, inputs, observer) -> bool:
        tape = self.tape
        if self.error is None:
            if tape.root >= 0:
                self.error = "backward() is called more than once"
            elif create_graph or inputs is not None or observer is not None:
                self.error = "backward(create_graph=True) / inputs= / observers"
            elif len(roots) != 1 or seeds[0] is not None:
                self.error = "backward() with an explicit seed or several outputs"
            else:
                src = self.by_id.get(id(roots[0]))
                if src is None or src[0] != _OP:
                    self.error = "backward() on a tensor not computed inside the step"
                else:
                    tape.root = src[1]
                    tape.instrs.append((_I_BACKWARD,))
                    self._plan()
        return False  # the capture call itself runs the eager walk

    def _plan(self) -> None:
        """Which ops the backward pass reaches (and no hooks or retain_grad there)."""
        tape = self.tape
        reached = [False] * tape.n_ops
        reached[tape.root] = True
        for j in range(tape.root, -1, -1):
            if not reached[j]:
                continue
            node = self.nodes[j]._node
            if node._hooks or node._retain is not None:
                self.error = "gradient hooks or retain_grad() inside the step"
                return
            tape.order.append(j)
            for (kind, ref), need in zip(tape.bwd_refs[j], tape.needs[j]):
                if not need:
                    continue
                if kind == _OP:
                    reached[ref] = True
                elif kind == _LEAF:
                    if ref._hooks:
                        self.error = "gradient hooks on a parameter"
                        return
                elif kind == _ARG:
                    self.error = "an argument of the step requires grad"
                    return

    # ----- the end of the capture ----------------------------------------------

    def finish(self, result: Any) -> _Tape | None:
        tape = self.tape
        if self.error is None and tape.root < 0:
            self.error = "the step never calls backward()"
        if self.error is None:
            try:
                tape.ret = self._ret(result)
            except _Unsupported as exc:
                self.error = str(exc)
        if self.error is not None:
            return None
        after = tape.instrs[[i[0] for i in tape.instrs].index(_I_BACKWARD) + 1:]
        keep: set[int] = set()
        for ins in after:
            if ins[0] == _I_OP:
                keep.update(_op_refs(ins[3]))
                if ins[5]:
                    keep.update(_op_refs(r for _, r in ins[5]))
        keep.update(_op_refs(_ret_refs(tape.ret)))
        tape.keep = keep
        return tape

    def _ret(self, v: Any) -> tuple:
        """How to rebuild the step's return value from a replay."""
        if v is None:
            return (_CONST, None)
        if isinstance(v, Tensor):
            src = self.by_id.get(id(v))
            if src is not None and src[0] == _OP:
                return ("tensor", src[1])
            src = self.by_id.get(id(v.data))
            if src is not None and src[0] == _OP and not v._requires_grad:
                return ("detached", src[1])  # loss.detach(): the value, no graph
            raise _Unsupported("the step returns a Tensor it did not compute")
        if isinstance(v, np.ndarray):
            src = self.by_id.get(id(v))
            if src is None or src[0] != _OP:
                raise _Unsupported("the step returns an array it did not compute")
            return ("array", src[1])  # out.data
        if isinstance(v, float):
            # loss.item(): find the one-element op output it came from (the
            # verification call checks the choice)
            for j in range(len(self.nodes) - 1, -1, -1):
                d = self.nodes[j].data
                if d.size == 1 and _same_float(d.item(), v):
                    return ("item", j)
            raise _Unsupported("the step returns a float not taken from a tensor it computed")
        if isinstance(v, (tuple, list)):
            return ("seq", type(v), tuple(self._ret(e) for e in v))
        if isinstance(v, dict):
            return ("dict", tuple(v), tuple(self._ret(e) for e in v.values()))
        raise _Unsupported(
            f"the step returns a {type(v).__name__}; a replay can only return Tensors the "
            "step computed (or their .detach(), .data, .item()), None, and tuples/lists/"
            "dicts of these"
        )


def _same_float(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _op_refs(refs: Any) -> list[int]:
    out = []
    for kind, ref in refs:
        if kind == _OP:
            out.append(ref)
        elif kind == _SEQ:
            out.extend(_op_refs(ref[1]))
    return out


_RET_VALUES = ("tensor", "item", "detached", "array")


def _ret_refs(ret: tuple) -> list[tuple]:
    kind = ret[0]
    if kind in _RET_VALUES:
        return [(_OP, ret[1])]
    if kind == "seq":
        return [r for e in ret[2] for r in _ret_refs(e)]
    if kind == "dict":
        return [r for e in ret[2] for r in _ret_refs(e)]
    return []


def _flat_args(args: tuple, kwargs: dict) -> list[Any]:
    return [*args, *kwargs.values()]


# ---------------------------------------------------------------------------
# Lowering a tape to a flat program over numbered slots
# ---------------------------------------------------------------------------


class _Program:
    """A tape with every operand turned into a slot number of one list, ``env``.

    Slots hold, in this order: the step's array arguments, each op's output,
    each random draw, the parameters' arrays (read afresh at every replay, as
    optimizers may replace them) and the constants (filled in once). Reading
    an op's operands is then one ``itemgetter`` call.
    """

    __slots__ = ("nargs", "template", "leaf_slots", "leaf_of", "steps", "bwd", "root", "n_ops",
                 "ret", "tape")


def _lower(tape: _Tape, nargs: int) -> _Program:
    prog = _Program()
    prog.tape = tape
    prog.nargs = nargs
    prog.n_ops = tape.n_ops
    op0, gen0 = nargs, nargs + tape.n_ops
    template: list[Any] = [None] * (gen0 + tape.n_gen)
    leaf_slot: dict[int, int] = {}
    const_slot: dict[int, int] = {}
    leaf_slots: list[tuple[int, Tensor]] = []

    def slot(ref: tuple) -> Any:
        kind, v = ref
        if kind == _ARG:
            return v
        if kind == _OP:
            return op0 + v
        if kind == _GEN:
            return gen0 + v
        if kind == _LEAF:
            s = leaf_slot.get(id(v))
            if s is None:
                s = leaf_slot[id(v)] = len(template)
                template.append(None)
                leaf_slots.append((s, v))
            return s
        if kind == _CONST:
            s = const_slot.get(id(v))
            if s is None:
                s = const_slot[id(v)] = len(template)
                template.append(v)
            return s
        raise AssertionError(kind)

    def nested(ref: tuple) -> Any:
        """A setting that holds operands (an index tuple with arrays)."""
        if ref[0] == _SEQ:
            typ, refs = ref[1]
            return ("seq", typ, tuple(nested(r) for r in refs))
        return ("slot", slot(ref))

    def getter(slots: list[int]) -> tuple[Any, bool]:
        if not slots:
            return (lambda env: ()), False
        return itemgetter(*slots), len(slots) == 1

    steps: list[tuple] = []
    k = 0
    for ins in tape.instrs:
        kind = ins[0]
        if kind == _I_OP:
            _, j, rule, refs, settings, dyn, recorded = ins
            get, single = getter([slot(r) for r in refs])
            dyn_slots = None if dyn is None else tuple((key, nested(r)) for key, r in dyn)
            steps.append((_I_OP, rule, get, single, settings, dyn_slots, op0 + j, j, recorded))
        elif kind == _I_GEN:
            steps.append((_I_GEN, ins[1], ins[2], gen0 + k))
            k += 1
        else:
            steps.append(ins)
    bwd = []
    keep = {op0 + j for j in tape.keep}
    for j in tape.order:
        refs = tape.bwd_refs[j]
        slots = [slot(r) for r in refs]
        get, single = getter(slots)
        dests = tuple(
            (i, slots[i], refs[i][0] == _LEAF)
            for i, need in enumerate(tape.needs[j]) if need
        )
        out = op0 + j
        bwd.append((tape.rules[j], get, single, out, j, tape.needs[j], dests, out not in keep))
    prog.template = template
    prog.leaf_slots = leaf_slots
    prog.leaf_of = dict(leaf_slots)  # slot -> parameter, for storing gradients
    prog.steps = steps
    prog.bwd = bwd
    prog.root = op0 + tape.root
    prog.ret = _lower_ret(tape.ret, op0)
    return prog


def _lower_ret(ret: tuple, op0: int) -> tuple:
    kind = ret[0]
    if kind in _RET_VALUES:
        return (kind, op0 + ret[1], ret[1])
    if kind == "seq":
        return ("seq", ret[1], tuple(_lower_ret(e, op0) for e in ret[2]))
    if kind == "dict":
        return ("dict", ret[1], tuple(_lower_ret(e, op0) for e in ret[2]))
    return ret


# ---------------------------------------------------------------------------
# Replaying
# ---------------------------------------------------------------------------


def _setting(v: tuple, env: list) -> Any:
    if v[0] == "slot":
        return env[v[1]]
    return v[1](_setting(e, env) for e in v[2])


def _replay(prog: _Program, args: tuple, kwargs: dict) -> Any:
    """Run the program on new arguments; returns what the step returns."""
    env = prog.template.copy()
    for i, a in enumerate(_flat_args(args, kwargs)):
        env[i] = a.data if isinstance(a, Tensor) else a
    for s, t in prog.leaf_slots:
        env[s] = t.data
    ctxs: list[Any] = [None] * prog.n_ops
    for st in prog.steps:
        kind = st[0]
        if kind == _I_OP:
            _, rule, get, single, settings, dyn, out_slot, j, recorded = st
            ins = get(env)
            if dyn is not None:
                settings = dict(settings)
                for key, v in dyn:
                    settings[key] = _setting(v, env)
            try:
                out, ctx = rule.forward(ins, **settings) if single else rule.forward(*ins,
                                                                                    **settings)
            except (ValueError, TypeError, IndexError) as exc:
                ops = [ins] if single else list(ins)
                raise _op_error(rule, ops, settings, exc) from exc
            env[out_slot] = out if type(out) is np.ndarray else np.asarray(out)
            if recorded:
                ctxs[j] = ctx
        elif kind == _I_GEN:
            env[st[3]] = st[1](*st[2])
        elif kind == _I_CALL:
            st[1](*st[2], **st[3])
        else:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                _backward(prog, env, ctxs)
    return _build(prog.ret, prog, env)


def _backward(prog: _Program, env: list, ctxs: list) -> None:
    """``run_backward`` with every structural decision made in advance.

    Mirrors the eager walk step for step (the same VJP calls in the same
    order, the same in-place accumulation rule, the same dtype casts, leaves
    stored in the order their first gradient arrived), so gradients are
    bit-identical to eager mode.
    """
    n = len(env)
    table: list[Any] = [None] * n  # dL/d(slot), for op outputs and parameters
    owned = [False] * n  # whether table[s] is ours to add into in place
    first: list[int] = []  # parameter slots in the order their gradients arrived
    root = prog.root
    table[root] = np.ones_like(env[root])
    owned[root] = True
    xp = NUMPY_NS
    for rule, get, single, out, j, needs, dests, free in prog.bwd:
        g = table[out]
        if g is None:
            continue
        table[out] = None
        ins = get(env)
        # the same choices as run_backward: an in-place VJP when g is ours
        # alone; the output dropped before the VJP when the rule never reads it
        inplace = owned[out] and rule.vjp_inplace is not None
        value = env[out] if rule.plan(needs)[1] else None
        if free:
            env[out] = None  # as in eager mode, let the value go once nothing needs it
        ctx = ctxs[j]
        ctxs[j] = None
        if rule.split is not None:  # as in eager mode: ctx is freed between the steps
            step, inner = rule.split
            g = step(g, value, ctx, inplace)
            ctx = value = None
            vjp = inner.vjp
        else:
            vjp = rule.vjp_inplace if inplace else rule.vjp
        if single:
            pgs = vjp(g, value, ctx, needs, xp, ins)
            ins = (ins,)
        else:
            pgs = vjp(g, value, ctx, needs, xp, *ins)
        value = ctx = None
        for i, d, leaf in dests:
            pg = pgs[i]
            if pg is None:
                continue
            pg = conform_grad(rule, pg, ins[i])
            old = table[d]
            if old is None:
                table[d] = pg
                owned[d] = pg is not g and pg.base is None
                if leaf:
                    first.append(d)
            elif owned[d]:
                np.add(old, pg, out=old)
            else:
                total = old + pg
                table[d] = total if type(total) is np.ndarray else np.asarray(total)
                owned[d] = True
    for d in first:
        _store_grad(prog.leaf_of[d], table[d], owned[d], False)


def _build(ret: tuple, prog: _Program, env: list) -> Any:
    kind = ret[0]
    if kind == "tensor":
        return _result_tensor(env[ret[1]], prog.tape, ret[2])
    if kind == "item":
        return env[ret[1]].item()
    if kind == "detached":
        return Tensor._const(env[ret[1]])
    if kind == "array":
        return env[ret[1]]
    if kind == "seq":
        return ret[1](_build(e, prog, env) for e in ret[2])
    if kind == "dict":
        return {k: _build(e, prog, env) for k, e in zip(ret[1], ret[2])}
    return ret[1]


def _result_tensor(data: np.ndarray, tape: _Tape, j: int) -> Tensor:
    """What eager mode returns: a tensor whose graph backward() already freed."""
    if not tape.recorded[j]:
        return Tensor._const(data)
    node = object.__new__(Node)
    node.op = tape.rules[j]
    node.parents = node.inputs = node.needs = ()
    node.out = None
    node.ctx = _RELEASED
    node.stamp = _tick()
    node.shape = data.shape
    node.dtype = data.dtype
    node.params = {}
    return Tensor._of(data, node)


# ---------------------------------------------------------------------------
# Verification: the state a step changes, saved, restored and compared
# ---------------------------------------------------------------------------


def _tensors_in(tape: _Tape) -> list[Tensor]:
    """Every tensor whose data or gradient the step may change."""
    seen: dict[int, Tensor] = {}
    for t in tape.leaves:
        seen.setdefault(id(t), t)
    for obj in tape.state:
        params: Any = ()
        if isinstance(obj, list):
            params = obj
        elif isinstance(obj, Optimizer):
            params = [p for g in obj.param_groups for p in g["params"]]
        for p in params:
            if isinstance(p, Tensor):
                seen.setdefault(id(p), p)
    return list(seen.values())


class _Snapshot:
    """Copies of everything a step may change, to put back or compare."""

    def __init__(self, tape: _Tape) -> None:
        self.tensors = []
        for t in _tensors_in(tape):
            g = t._grad
            self.tensors.append((t, t.data, t.data.copy(), g,
                                 None if g is None else (g.data, g.data.copy())))
        self.objects = []
        for obj in tape.state:
            if isinstance(obj, list):
                continue
            if isinstance(obj, Optimizer):
                state = {p: {k: (v, v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v))
                             for k, v in s.items()} for p, s in obj.state.items()}
                groups = [{k: v for k, v in g.items() if k != "params"} for g in obj.param_groups]
                self.objects.append(("opt", obj, state, copy.deepcopy(groups)))
            else:  # a scheduler (its optimizer's groups are saved through it)
                saved = {k: copy.copy(v) for k, v in vars(obj).items() if k != "optimizer"}
                self.objects.append(("obj", obj, saved, None))
        self.generators = [(g, copy.deepcopy(g.bit_generator.state)) for g in tape.generators]

    def restore(self) -> None:
        for t, data, saved, g, gsaved in self.tensors:
            data[...] = saved
            t.data = data
            t._grad = g
            if g is not None:
                g.data = gsaved[0]
                g.data[...] = gsaved[1]
        for kind, obj, saved, groups in self.objects:
            if kind == "opt":
                new = {}
                for p, s in saved.items():
                    entry = {}
                    for k, (orig, val) in s.items():
                        if isinstance(orig, np.ndarray) and orig.shape == val.shape:
                            orig[...] = val
                            entry[k] = orig
                        else:
                            entry[k] = copy.deepcopy(val)
                    new[p] = entry
                obj.state.clear()
                obj.state.update(new)
                for g, s in zip(obj.param_groups, groups):
                    g.update(copy.deepcopy(s))
            else:
                vars(obj).update({k: copy.copy(v) for k, v in saved.items()})
        for gen, state in self.generators:
            gen.bit_generator.state = state

    def differs_from_now(self) -> str | None:
        """What differs between this snapshot and the current state (None: nothing)."""
        for t, _, saved, _, gsaved in self.tensors:
            name = t.name or f"tensor of shape {t.shape}"
            if not _same_array(t.data, saved):
                return f"the values of {name}"
            g = t._grad
            if (g is None) != (gsaved is None) or (g is not None and not _same_array(g.data,
                                                                                      gsaved[1])):
                return f"the gradient of {name}"
        for kind, obj, saved, _groups in self.objects:
            if kind == "opt":
                if set(obj.state) != set(saved):
                    return f"which parameters have {type(obj).__name__} state"
                for p, s in saved.items():
                    now = obj.state[p]
                    if set(now) != set(s):
                        return f"{type(obj).__name__} state keys"
                    for k, (_, val) in s.items():
                        if not _same_value(now[k], val):
                            return f"{type(obj).__name__} state {k!r}"
            else:
                for k, v in saved.items():
                    if not _same_value(vars(obj).get(k), v):
                        return f"{type(obj).__name__}.{k}"
        for gen, state in self.generators:
            if gen.bit_generator.state != state:
                return "the random generator's state"
        return None


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and _same_array(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return _same_float(a, b)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001  (objects without a plain ==)
        return False


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
    return a is b


# ---------------------------------------------------------------------------
# The compiled step
# ---------------------------------------------------------------------------


_PLAIN = (int, float, str, bool, type(None))


def _signature(args: tuple, kwargs: dict) -> tuple | None:
    """What a tape is valid for: shapes and dtypes of array arguments, the value of
    Python numbers and strings, the identity of other objects. None when an
    argument is a container (a list of labels, a tuple of arrays): its contents
    would be frozen into the tape, so such steps are not replayed."""
    sig = []
    for a in _flat_args(args, kwargs):
        if isinstance(a, Tensor):
            sig.append(("T", a.data.shape, a.data.dtype.str, a._requires_grad))
        elif isinstance(a, np.ndarray):
            sig.append(("A", a.shape, a.dtype.str))
        elif isinstance(a, _PLAIN):
            sig.append((type(a), a))
        elif isinstance(a, (list, tuple, dict, set)):
            return None
        else:
            sig.append((type(a), id(a)))
    return (tuple(sig), tuple(kwargs))


class _Entry:
    __slots__ = ("prog", "verified", "surprises", "eager_only")

    def __init__(self) -> None:
        self.prog: _Program | None = None
        self.verified = False
        self.surprises = 0
        self.eager_only = False


class CompiledStep:
    """A training step that is captured once and replayed (see the module docs).

    ``stats`` counts how calls ran: ``"eager"`` (not replayable, or the
    guards failed), ``"captured"``, ``"verified"`` (eager, then checked
    against a replay) and ``"replayed"``; ``unsupported`` says why a step
    could not be replayed, if it could not.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._entries: dict[tuple, _Entry] = {}
        self.stats = {"eager": 0, "captured": 0, "verified": 0, "replayed": 0}
        self.unsupported: str | None = None
        self._gave_up = False
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _mode.tracer is not None or _mode.anomaly or not _mode.grad:
            # nested in another compiled step, debugging NaNs, or under no_grad
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        if self._gave_up:
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        key = _signature(args, kwargs)
        if key is None:
            self.unsupported = (
                "an argument is a list, tuple, dict or set; pass arrays or Tensors (a "
                "replay would reuse the captured contents)"
            )
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
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
                self.stats["eager"] += 1
                return self.fn(*args, **kwargs)
            entry = self._entries[key] = _Entry()
        if entry.eager_only:
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        prog = entry.prog
        if prog is None:
            return self._capture(entry, args, kwargs)
        if not _guards_hold(prog.tape):
            entry.prog = None
            entry.surprises += 1
            if entry.surprises > _MAX_RECAPTURES:
                entry.eager_only = True
                self.stats["eager"] += 1
                return self.fn(*args, **kwargs)
            return self._capture(entry, args, kwargs)
        if not entry.verified:
            return self._verify(entry, args, kwargs)
        self.stats["replayed"] += 1
        return _replay(prog, args, kwargs)

    def _capture(self, entry: _Entry, args: tuple, kwargs: dict) -> Any:
        rec = _Recorder(args, kwargs)
        _mode.tracer = rec
        try:
            out = self.fn(*args, **kwargs)
        finally:
            _mode.tracer = None
        self.stats["captured"] += 1
        tape = rec.finish(out)
        if tape is None:
            self.unsupported = rec.error
            entry.eager_only = True
        else:
            entry.prog = _lower(tape, len(args) + len(kwargs))
            entry.verified = False
        return out

    def _verify(self, entry: _Entry, args: tuple, kwargs: dict) -> Any:
        """Run eagerly, then replay from the same starting state: both must agree."""
        prog = entry.prog
        assert prog is not None
        self.stats["verified"] += 1
        before = _Snapshot(prog.tape)
        out = self.fn(*args, **kwargs)
        after = _Snapshot(prog.tape)
        before.restore()
        why = None
        try:
            replayed = _replay(prog, args, kwargs)
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
            self.unsupported = (
                f"{why}: the step does something the tape cannot see (Python state, "
                "values computed outside chainrule's ops); it runs eagerly"
            )
            entry.eager_only = True
            entry.prog = None
        else:
            entry.verified = True
        return out


def _guards_hold(tape: _Tape) -> bool:
    if tape.modules and tape.structure != STRUCTURE[0]:
        return False  # a layer or parameter was added, removed or replaced
    for m, training in tape.modules:
        if m.training is not training:
            return False
    for t, rg in zip(tape.leaves, tape.frozen):
        if t._requires_grad is not rg or t._hooks:
            return False
    return True


def compile(fn: Callable[..., Any]) -> CompiledStep:  # noqa: A001  (cr.compile, like torch.compile)
    """Capture a training step once and replay it on later batches of the same shape.

    ``fn(*batch)`` must do zero_grad, forward, loss, ``backward()`` and the
    optimizer step, and return the loss (or other tensors it computed); the
    compiled step returns the same thing, with bit-identical values and
    parameters. After capture the step's Python no longer runs: see the
    module documentation for the contract.

    >>> step = cr.compile(step_fn)
    >>> loss = step(xb, yb)
    """
    return CompiledStep(fn)
