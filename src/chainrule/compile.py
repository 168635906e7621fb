"""``cr.compile``: capture one training step's graph, replay its backward pass.

A training step builds the same graph every time it runs on a batch of the
same shape: the same ops, wired the same way, reaching the same parameters.
Only the numbers change. ``compile`` records that structure once and, on later
calls, checks each op against the record and runs ``backward()`` as a flat
program over it: no topological walk, no gradient-table hashing, no decisions
that were already made last time. The arithmetic is the same NumPy calls in
the same order as eager mode, so results are identical bit for bit.

How a compiled step runs
------------------------
Per input signature (shapes and dtypes of the array arguments):

1. **first call**: eager (optimizers create their state, layers initialise);
2. **second call**: eager, while a recorder notes every recorded op (its rule,
   which inputs need gradients, where each operand came from: an earlier op of
   this step, a parameter, or a constant) and the ``backward()`` call;
3. **later calls**: the Python of the step still runs -- ``zero_grad()``,
   Dropout drawing a fresh mask, ``optimizer.step()``, the caller's own
   bookkeeping -- but each op is checked against the record as it is made,
   and ``loss.backward()`` runs the recorded program.

Why keep running the step's Python instead of replaying arrays alone (as CUDA
graphs or tinygrad's TinyJit do)? Because here it costs little (the NumPy work
dominates) and it keeps every side effect of the step right: fresh random
masks, optimizer state, learning-rate schedules, values the step stores for
metrics. Nothing the step does is silently skipped.

The contract (as with ``torch.compile`` / TinyJit)
-------------------------------------------------
For inputs of the same shapes and dtypes the step must record the same ops in
the same order. If it does not (data-dependent Python branches), the check
notices at the first differing op, that step finishes eagerly (its graph is
intact, so results are still exact) and the step is captured again; after
three such surprises the signature stays eager. A new input shape (the last
short batch of an epoch) is simply a new signature. Steps the recorder cannot
express run eagerly: several ``backward()`` calls, explicit seeds,
``create_graph``, gradient hooks, ``retain_grad``, ``detect_anomaly``, or a
graph that reaches non-leaf tensors made outside the step.

>>> step = cr.compile(step_fn)      # step_fn(xb, yb) -> loss
>>> for xb, yb in loader:
...     loss = step(xb, yb)         # same value and same parameters as step_fn
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from .ops import NUMPY_NS
from .tensor import (
    _CLOCK,
    _RELEASED,
    Tensor,
    _check_versions,
    _mode,
    _released_error,
    _seed,
    _store_grad,
    conform_grad,
)

__all__ = ["compile", "CompiledStep"]

# How an operand of a recorded op is reached, per parent: the output of op j
# of this step, a leaf that requires grad (a parameter), or a constant.
_FROM_OP, _FROM_LEAF, _CONST = 0, 1, 2

_MAX_RECAPTURES = 3


class _Unsupported(Exception):
    """The step did something the recorder cannot express: run it eagerly."""


class _Program:
    """The recorded structure of one step."""

    __slots__ = ("rules", "needs", "refs", "root", "n_before_backward", "order", "leaves",
                 "keep")

    def __init__(self) -> None:
        self.rules: list[Any] = []
        self.needs: list[tuple] = []
        self.refs: list[tuple] = []  # per op: ((kind, j_or_leaf), ...) per parent
        self.root = -1  # index of the op whose output backward() was called on
        self.n_before_backward = 0
        self.order: list[int] = []  # ops the backward pass visits, last recorded first
        self.leaves: list[Tensor] = []
        self.keep: set[int] = set()  # outputs that ops after backward() take as operands


class _Recorder:
    """Sees nodes and backward() calls (through ``_mode.tracer``) during a capture."""

    def __init__(self) -> None:
        self.prog = _Program()
        self.index: dict[int, int] = {}  # id(node) -> op index
        self.nodes: list[Tensor] = []  # keeps ids valid while recording
        self.error: str | None = None

    def node(self, t: Tensor) -> None:
        if self.error is not None:
            return
        prog = self.prog
        refs = []
        for p in t._parents:
            j = self.index.get(id(p))
            if j is not None:
                refs.append((_FROM_OP, j))
            elif p._requires_grad and p._op is None:
                refs.append((_FROM_LEAF, p))
            elif p._requires_grad:
                self.error = "the graph reaches a non-leaf tensor computed outside the step"
                return
            else:
                refs.append((_CONST, None))
        self.index[id(t)] = len(self.nodes)
        self.nodes.append(t)
        prog.rules.append(t._op)
        prog.needs.append(t._needs)
        prog.refs.append(tuple(refs))

    def backward(self, roots, seeds, retain_graph, create_graph, inputs, observer) -> bool:
        prog = self.prog
        if self.error is None:
            if prog.root >= 0:
                self.error = "backward() is called more than once"
            elif create_graph or inputs is not None or observer is not None:
                self.error = "backward(create_graph=True) / inputs= / observers"
            elif len(roots) != 1 or seeds[0] is not None:
                self.error = "backward() with an explicit seed or several outputs"
            elif id(roots[0]) not in self.index:
                self.error = "backward() on a tensor not computed inside the step"
            else:
                prog.root = self.index[id(roots[0])]
                prog.n_before_backward = len(self.nodes)
                self._plan()
        return False  # the capture call itself runs the eager walk

    def _plan(self) -> None:
        """Which ops the backward pass reaches, and check for hooks/retain_grad."""
        prog = self.prog
        reached = [False] * len(self.nodes)
        reached[prog.root] = True
        leaves: dict[int, Tensor] = {}
        for i in range(prog.root, -1, -1):
            if not reached[i]:
                continue
            node = self.nodes[i]
            if node._hooks or node._retains:
                self.error = "gradient hooks or retain_grad() inside the step"
                return
            prog.order.append(i)
            for (kind, ref), need in zip(prog.refs[i], prog.needs[i]):
                if not need:
                    continue
                if kind == _FROM_OP:
                    reached[ref] = True
                elif kind == _FROM_LEAF:
                    if ref._hooks:
                        self.error = "gradient hooks on a parameter"
                        return
                    leaves[id(ref)] = ref
        prog.leaves = list(leaves.values())


class _Replayer:
    """Checks each node against the program; runs the program on backward()."""

    def __init__(self, prog: _Program) -> None:
        self.prog = prog
        self.nodes: list[Tensor] = []
        self.diverged = False
        self.ran_backward = False

    def _diverge(self) -> None:
        # From here on the step runs eagerly; its graph is intact, so the
        # results are still exact. Stop watching.
        self.diverged = True
        _mode.tracer = None

    def node(self, t: Tensor) -> None:
        prog = self.prog
        i = len(self.nodes)
        if i >= len(prog.rules) or prog.rules[i] is not t._op or prog.needs[i] != t._needs:
            self._diverge()
            return
        nodes = self.nodes
        for p, (kind, ref) in zip(t._parents, prog.refs[i]):
            if kind == _FROM_OP:
                if p is not nodes[ref]:
                    self._diverge()
                    return
            elif kind == _FROM_LEAF:
                if p is not ref:
                    self._diverge()
                    return
            elif p._requires_grad:
                self._diverge()
                return
        nodes.append(t)

    def backward(self, roots, seeds, retain_graph, create_graph, inputs, observer) -> bool:
        prog = self.prog
        nodes = self.nodes
        if (
            self.ran_backward
            or len(nodes) != prog.n_before_backward
            or len(roots) != 1
            or roots[0] is not nodes[prog.root]
            or seeds[0] is not None
            or create_graph
            or inputs is not None
            or observer is not None
        ):
            self._diverge()
            return False
        self.ran_backward = True
        prev = _mode.grad
        _mode.grad = False
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                _run_program(prog, nodes, retain_graph)
        finally:
            _mode.grad = prev
        return True


def _run_program(prog: _Program, nodes: list[Tensor], retain_graph: bool) -> None:
    """The backward walk of ``run_backward`` with every structural decision made.

    Mirrors ``tensor.run_backward`` step for step (the same VJP calls, the same
    in-place accumulation rule, the same dtype casts, leaves stored in the
    order their first gradient arrived), so the gradients are bit-identical.
    """
    n = len(nodes)
    table: list[Any] = [None] * n
    owned = [False] * n
    leaf_g: dict[int, Any] = {}
    leaf_owned: dict[int, bool] = {}
    leaf_order: list[Tensor] = []
    root = nodes[prog.root]
    table[prog.root] = _seed(root, None)
    owned[prog.root] = True
    xp = NUMPY_NS
    refs_of = prog.refs
    keep = prog.keep
    for i in prog.order:
        g = table[i]
        if g is None:
            continue
        table[i] = None
        node = nodes[i]
        op = node._op
        ctx = node._ctx
        if ctx is _RELEASED:
            raise _released_error(node)
        parents = node._parents
        if _CLOCK[0] > node._stamp:
            _check_versions(node)
        pgs = op.vjp(g, node.data, ctx, node._needs, xp, *[p.data for p in parents])
        if not retain_graph:
            node._ctx = _RELEASED
            node._parents = ()
        if i not in keep:
            nodes[i] = None  # as in eager mode, let its value go once its VJP ran
        for p, pg, (kind, ref) in zip(parents, pgs, refs_of[i]):
            if pg is None or not p._requires_grad:
                continue
            pg = conform_grad(op, pg, p.data)
            fresh = pg is not g and pg.base is None
            if kind == _FROM_OP:
                old = table[ref]
                if old is None:
                    table[ref] = pg
                    owned[ref] = fresh
                elif owned[ref]:
                    np.add(old, pg, out=old)
                else:
                    table[ref] = old + pg
                    owned[ref] = True
            else:  # a parameter
                key = id(ref)
                old = leaf_g.get(key)
                if old is None:
                    leaf_g[key] = pg
                    leaf_owned[key] = fresh
                    leaf_order.append(ref)
                elif leaf_owned[key]:
                    np.add(old, pg, out=old)
                else:
                    leaf_g[key] = old + pg
                    leaf_owned[key] = True
    for leaf in leaf_order:
        key = id(leaf)
        _store_grad(leaf, leaf_g[key], leaf_owned[key], False)


def _signature(args: tuple, kwargs: dict) -> tuple:
    """Shapes and dtypes of array arguments; the type of everything else."""
    sig = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            sig.append(("T", a.data.shape, a.data.dtype.str, a._requires_grad))
        elif isinstance(a, np.ndarray):
            sig.append(("A", a.shape, a.dtype.str))
        else:
            sig.append(type(a))
    return (tuple(sig), tuple(kwargs))


class _Entry:
    __slots__ = ("calls", "prog", "surprises")

    def __init__(self) -> None:
        self.calls = 0
        self.prog: _Program | None = None
        self.surprises = 0


class CompiledStep:
    """A training step that replays its recorded backward pass (see the module docs).

    ``stats`` counts how calls ran: ``"eager"``, ``"captured"``, ``"replayed"``
    and ``"diverged"`` (a replay that met a different op and finished eagerly);
    ``unsupported`` says why a step could not be captured, if it could not.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._entries: dict[tuple, _Entry] = {}
        self.stats = {"eager": 0, "captured": 0, "replayed": 0, "diverged": 0}
        self.unsupported: str | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _mode.tracer is not None or _mode.anomaly or not _mode.grad:
            # nested in another compiled step, debugging NaNs, or under no_grad
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        key = _signature(args, kwargs)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= 64:  # ever-changing shapes: forget old ones
                self._entries.clear()
            entry = self._entries[key] = _Entry()
        entry.calls += 1
        if entry.prog is not None:
            return self._replay(entry, args, kwargs)
        if entry.calls == 1 or entry.surprises > _MAX_RECAPTURES:
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        return self._capture(entry, args, kwargs)

    def _capture(self, entry: _Entry, args: tuple, kwargs: dict) -> Any:
        rec = _Recorder()
        _mode.tracer = rec
        try:
            out = self.fn(*args, **kwargs)
        finally:
            _mode.tracer = None
        self.stats["captured"] += 1
        if rec.error is None and rec.prog.root < 0:
            rec.error = "the step never calls backward()"
        if rec.error is not None:
            self.unsupported = rec.error
            entry.surprises = _MAX_RECAPTURES + 1  # stay eager for this signature
        else:
            prog = rec.prog
            prog.keep = {
                j
                for refs in prog.refs[prog.n_before_backward:]
                for kind, j in refs
                if kind == _FROM_OP
            }
            entry.prog = prog
        return out

    def _replay(self, entry: _Entry, args: tuple, kwargs: dict) -> Any:
        rep = _Replayer(entry.prog)
        _mode.tracer = rep
        try:
            out = self.fn(*args, **kwargs)
        finally:
            _mode.tracer = None
        if rep.diverged or not rep.ran_backward or len(rep.nodes) != len(entry.prog.rules):
            # the step took another path: finished eagerly; capture it afresh
            self.stats["diverged"] += 1
            entry.prog = None
            entry.surprises += 1
        else:
            self.stats["replayed"] += 1
        rep.nodes.clear()  # hold no graph between steps
        return out


def compile(fn: Callable[..., Any]) -> CompiledStep:  # noqa: A001  (cr.compile, like torch.compile)
    """Wrap a training step so that its backward pass is recorded once and replayed.

    ``fn(*batch)`` must do zero_grad, forward, loss, ``backward()`` and the
    optimizer step, and return what it likes (usually the loss); the wrapped
    step returns the same thing, with bit-identical values and parameters.
    See the module documentation for the contract.

    >>> step = cr.compile(step_fn)
    >>> loss = step(xb, yb)
    """
    return CompiledStep(fn)
