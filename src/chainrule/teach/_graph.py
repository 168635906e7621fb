"""The one place where the teaching views touch the engine's graph internals.

Everything in :mod:`chainrule.teach` reads the recorded graph through these
few functions: which rule made a node, its inputs, its value, whether
backward freed it, the local gradient of its rule, and one observed backward
pass. When the engine's representation changes (the graph node moving out of
``Tensor`` into a Node object of its own), this file changes and nothing
else in ``teach/`` does.

A graph *item* is whatever the walk yields for a node: today the Tensor
itself. Views only ever hold items, ask this module about them and key their
records by :func:`key`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..ops import NUMPY_NS, Rule
from ..tensor import _RELEASED, Tensor, keep_values, run_backward

__all__ = [
    "ValueNotKeptError",
    "key",
    "rule_of",
    "inputs_of",
    "is_leaf",
    "requires_grad",
    "is_freed",
    "value_of",
    "user_name",
    "walk",
    "local_gradients",
    "local_jacobian",
    "observed_backward",
    "has_grad_hooks",
    "keep_values",
    "tag",
    "tags_of",
]

item_type = Tensor


class ValueNotKeptError(RuntimeError):
    """A view needs a node's value that the engine did not keep."""


def key(item: Any) -> int:
    """A key that identifies the node while the graph is alive."""
    return id(item)


def rule_of(item: Any) -> Rule | None:
    """The rule that computed the node; None for a leaf or a constant."""
    return item._op


def inputs_of(item: Any) -> tuple[Any, ...]:
    """The node's operands, in operand-slot order (constants included)."""
    return item._parents


def is_leaf(item: Any) -> bool:
    return item._op is None


def requires_grad(item: Any) -> bool:
    return bool(item._requires_grad)


def is_freed(item: Any) -> bool:
    """True when an earlier ``backward()`` freed what this node saved for its VJP."""
    return item._op is not None and item._ctx is _RELEASED


def value_of(item: Any, what: str = "") -> np.ndarray:
    """The node's output value (its array).

    Raises :class:`ValueNotKeptError` (one sentence naming ``cr.keep_values``)
    when the engine let go of it.
    """
    data = item.data
    if data is None:
        name = user_name(item) or (rule_of(item).name if rule_of(item) else "a leaf")
        raise ValueNotKeptError(
            f"{what or 'explain'}: the value of {name!r} was not kept after the forward pass; "
            "record the forward pass inside `with cr.keep_values():` so that every node "
            "keeps its value"
        )
    return data


def shape_of(item: Any) -> tuple[int, ...]:
    return tuple(item.data.shape)


def dtype_of(item: Any) -> np.dtype:
    return item.data.dtype


def user_name(item: Any) -> str | None:
    """The name the user (or a module, for its parameters) gave the tensor."""
    return item.name


def is_tensor(x: Any) -> bool:
    return isinstance(x, Tensor)


def walk(roots: Sequence[Any]) -> list[Any]:
    """Every node reachable from ``roots`` (constants included), inputs first.

    Depth-first with an explicit stack, so graphs thousands of nodes deep do
    not hit Python's recursion limit; operands are visited in slot order, so
    the result is the order in which the forward pass computed the nodes.
    """
    order: list[Any] = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(r, False) for r in reversed(list(roots))]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in reversed(node._parents):
            if id(p) not in seen:
                stack.append((p, False))
    return order


def local_gradients(item: Any, broadcast: bool = True) -> list[np.ndarray | None]:
    """d(node)/d(input) for each operand slot of an elementwise (or all-scalar) node.

    The rule's own VJP with a cotangent of ones: for an op whose output
    element i depends only on input element i, that is exactly the diagonal
    of its Jacobian (for scalars: the derivative). With ``broadcast`` the
    operands are first broadcast to the output's shape, so the result is the
    local gradient before the VJP sums it over broadcast axes. Entries are
    None for slots that take no gradient or where the rule cannot run.
    """
    rule = rule_of(item)
    parents = inputs_of(item)
    if rule is None or rule.vjp is None or is_freed(item):
        return [None] * len(parents)
    out = value_of(item)
    try:
        arrays = [value_of(p) for p in parents]
        if broadcast:
            arrays = [np.broadcast_to(a, out.shape) for a in arrays]
    except ValueError:
        return [None] * len(parents)
    needs = tuple(requires_grad(p) for p in parents)
    try:
        with np.errstate(all="ignore"):
            pgs = rule.vjp(np.ones_like(out), out, item._ctx, needs, NUMPY_NS, *arrays)
    except Exception:  # a rule that cannot run on these operands: no local gradient shown
        return [None] * len(parents)
    return [None if g is None or not n else np.asarray(g) for g, n in zip(pgs, needs)]


def local_jacobian(item: Any, slot: int) -> np.ndarray | None:
    """The full Jacobian d(node)/d(operand ``slot``), shape out.shape + in.shape.

    One VJP per output element (a unit cotangent each): meant for the small
    tensors of a worked example, where a local gradient that is not a
    diagonal (softmax) can then be shown as the matrix the notes multiply by.
    """
    rule = rule_of(item)
    parents = inputs_of(item)
    if rule is None or rule.vjp is None or is_freed(item):
        return None
    out = value_of(item)
    arrays = [value_of(p) for p in parents]
    needs = tuple(i == slot for i in range(len(parents)))
    jac = np.zeros(out.shape + arrays[slot].shape, dtype=np.result_type(out.dtype, np.float64))
    try:
        with np.errstate(all="ignore"):
            for idx in np.ndindex(*out.shape):
                e = np.zeros_like(out)
                e[idx] = 1
                g = rule.vjp(e, out, item._ctx, needs, NUMPY_NS, *arrays)[slot]
                if g is None:
                    return None
                jac[idx] = np.asarray(g)
    except Exception:  # noqa: BLE001 - a rule that cannot run on unit cotangents
        return None
    return jac


def has_grad_hooks(items: Sequence[Any]) -> int:
    """How many of ``items`` carry gradient hooks (``register_hook``)."""
    return sum(1 for t in items if t._hooks)


@contextlib.contextmanager
def _hooks_suspended(items: Sequence[Any]) -> Iterator[None]:
    # A look at the graph must not trigger the user's hooks (counters,
    # logging, gradient edits): switch them off for the observed walk.
    saved = [(t, t._hooks) for t in items if t._hooks]
    for t, _ in saved:
        t._hooks = None
    try:
        yield
    finally:
        for t, hooks in saved:
            t._hooks = hooks


def observed_backward(root: Any, seed: Any, observer: Any, items: Sequence[Any]) -> None:
    """One backward pass from ``root`` reported to ``observer``; nothing else changes.

    ``observer.visit(item, g)`` and ``observer.term(item, slot, parent,
    contribution)`` as in ``run_backward``. No ``.grad`` is written (the walk
    returns its results instead), the graph is retained, and gradient hooks
    on ``items`` are not run.
    """
    with _hooks_suspended(items):
        run_backward((root,), (seed,), retain_graph=True, inputs=[root], observer=observer)


# --------------------------------------------------------------------------
# Tags: which module produced a node (cr.viz.trace_modules)
# --------------------------------------------------------------------------

_TAG = "_cr_modules"  # [(path, module), ...] outermost first


def tag(item: Any, path: str, module: Any) -> bool:
    """Note that ``module`` (at ``path``) produced ``item``; False if already noted."""
    tags = item.__dict__.setdefault(_TAG, [])
    if any(m is module for _, m in tags):
        return False
    tags.insert(0, (path, module))  # outer modules finish later: prepend
    return True


def tags_of(item: Any) -> list[tuple[str, Any]]:
    return item.__dict__.get(_TAG) or []


__all__ += ["shape_of", "dtype_of", "is_tensor", "item_type"]
_ = keep_values  # re-exported: the engine's context manager
