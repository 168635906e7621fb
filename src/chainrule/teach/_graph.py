"""The one place where the teaching views touch the engine's graph internals.

Everything in :mod:`chainrule.teach` (and ``cr.check_graph``) reads the
recorded graph through this module: :func:`walk` turns the engine's nodes
into :class:`GraphVertex` views (an op's node, a leaf, or a constant
operand, each with its value when it was kept), and the functions below ask
them what the views need: the rule, the operands, the value, whether
backward freed it, the rule's local gradient, one observed backward pass.

The engine keeps only what each rule's backward pass reads (saved tensors):
an intermediate value nobody holds is freed as soon as the forward moves on.
Inside ``cr.keep_values()`` every node keeps its output and its operands,
and the views can show every value. Outside it they show what was kept and
say, in one sentence, how to see the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..ops import NUMPY_NS, Rule
from ..tensor import _RELEASED, Meta, Node, Tensor, keep_values, run_backward

__all__ = [
    "GraphVertex",
    "ValuesNotKept",
    "ValueNotKeptError",
    "walk",
    "key",
    "tensor_key",
    "vertex_key",
    "value_or_none",
    "root_items",
    "rule_of",
    "inputs_of",
    "is_leaf",
    "requires_grad",
    "is_freed",
    "value_of",
    "shape_of",
    "dtype_of",
    "user_name",
    "set_name",
    "is_tensor",
    "leaf_tensor",
    "local_gradients",
    "local_jacobian",
    "observed_backward",
    "has_grad_hooks",
    "keep_values",
    "tag_outputs",
    "tags_of",
]


class ValuesNotKept(RuntimeError):
    """A view needs a value that the forward pass did not keep (see ``cr.keep_values``)."""


ValueNotKeptError = ValuesNotKept


def _not_kept(what: str, name: str) -> ValuesNotKept:
    return ValuesNotKept(
        f"{what}: the value of {name!r} was not kept (chainrule keeps only what the backward "
        "pass needs), so record the forward pass inside `with cr.keep_values():` or call "
        "cr.set_keep_values(True) once"
    )


class GraphVertex:
    """One vertex of a recorded graph as the views see it.

    ``vertex`` is what the engine's backward walk reports for it (a
    :class:`~chainrule.tensor.Node`, or the leaf Tensor itself; None for a
    constant operand). ``data`` is its value, or None where it was not kept;
    ``_op``, ``_parents`` (vertices, in operand-slot order), ``_ctx``,
    ``_needs``, ``params``, ``_meta`` and ``name`` mirror the node.
    ``shape`` and ``dtype`` are always known.
    """

    __slots__ = ("vertex", "data", "name", "_op", "_parents", "_ctx", "_needs", "params",
                 "_requires_grad", "_grad", "_meta", "shape", "dtype", "saved", "__dict__")
    vertex: Node | Tensor | None
    data: np.ndarray | None
    name: str | None
    _op: Rule | None
    _parents: tuple[GraphVertex, ...]
    _ctx: Any
    _needs: tuple[bool, ...]
    params: dict[str, Any]
    _requires_grad: bool
    _grad: Tensor | None
    _meta: Any
    shape: tuple[int, ...]
    dtype: np.dtype
    saved: tuple[np.ndarray | None, tuple[Any, ...]] | None  # (out, inputs) for the VJP

    @property
    def tensor(self) -> Tensor:
        """A Tensor whose graph vertex is this one (to ask the engine for dL/dit)."""
        v = self.vertex
        if isinstance(v, Tensor):
            return v
        if v is None:
            raise ValueError("GraphVertex.tensor: a constant operand is not part of the graph "
                             "(it takes no gradient)")
        if self.data is None:
            raise _not_kept("GraphVertex.tensor", self.name or v.op.name)
        return Tensor._of(self.data, v)


def _vertex(vertex: Any, data: Any, name: str | None, node: Node | None, requires_grad: bool,
            shape: tuple, dtype: Any) -> GraphVertex:
    v = GraphVertex.__new__(GraphVertex)
    v.vertex = vertex
    v.data = None if data is None else np.asarray(data)
    v.name = name
    v._op = None if node is None else node.op
    v._parents = ()
    v._ctx = None if node is None else node.ctx
    v._needs = () if node is None else node.needs
    v.params = {} if node is None else node.params
    v._requires_grad = requires_grad
    v._grad = None
    v._meta = None if node is None else node.meta
    v.shape = tuple(shape)
    v.dtype = np.dtype(dtype)
    v.saved = None  # (out, inputs) as the node's VJP reads them
    return v


def walk(roots: Sequence[Tensor], *, need_values: bool = True,
         what: str = "explain") -> list[GraphVertex]:
    """Every vertex reachable from ``roots`` (constants included), operands first.

    Depth-first with an explicit stack (graphs thousands of nodes deep do not
    overflow), operands in slot order, so the result is the order in which
    the forward pass computed the values. With ``need_values`` a value that
    was not kept raises :class:`ValuesNotKept` (one sentence naming
    ``cr.keep_values``); without it the vertex's ``data`` is None.
    """
    views: dict[int, GraphVertex] = {}

    def leaf(t: Tensor) -> GraphVertex:
        v = views.get(id(t))
        if v is None:
            v = views[id(t)] = _vertex(t, t.data, t.name, None, t._requires_grad,
                                       t.data.shape, t.data.dtype)
            v._grad = t._grad
        return v

    def const(given: Any, stand_in: Any, dtype: Any) -> GraphVertex:
        if isinstance(given, Tensor):
            if given._node is None:
                return leaf(given)
            given = given.data
        if given is not None:
            arr = given if isinstance(given, np.ndarray) else np.asarray(given, dtype=dtype)
            return _vertex(None, arr, None, None, False, arr.shape, arr.dtype)
        if isinstance(stand_in, np.ndarray):  # kept for the VJP
            return _vertex(None, stand_in, None, None, False, stand_in.shape, stand_in.dtype)
        return _vertex(None, None, None, None, False, stand_in.shape, stand_in.dtype)

    def of_node(n: Node, data: Any) -> GraphVertex:
        v = views.get(id(n))
        if v is None:
            if data is None and n.ctx is not _RELEASED:
                data = n.value
                if data is None and need_values:
                    raise _not_kept(what, n.name or n.op.name)
            v = views[id(n)] = _vertex(n, data, n.name, n, True, n.shape, n.dtype)
            v.saved = (n.out, n.inputs)
        return v

    order: list[GraphVertex] = []
    done: set[int] = set()
    stack: list[tuple[GraphVertex, bool]] = []
    for r in reversed(list(roots)):
        stack.append((of_node(r._node, r.data) if r._node is not None else leaf(r), False))
    while stack:
        v, expanded = stack.pop()
        if expanded:
            order.append(v)
            continue
        if id(v) in done:
            continue
        done.add(id(v))
        stack.append((v, True))
        n = v.vertex
        if not isinstance(n, Node) or n.ctx is _RELEASED:
            continue
        given = n.kept[1] if n.kept is not None else (None,) * len(n.parents)
        parents: list[GraphVertex] = []
        for p, a, s in zip(n.parents, given, n.inputs):
            if isinstance(p, Node):
                parents.append(of_node(p, a.data if isinstance(a, Tensor) else None))
            elif p is not None:
                parents.append(leaf(p))
            else:
                if a is None and need_values and not isinstance(s, np.ndarray):
                    raise _not_kept(what, f"an operand of {n.name or n.op.name}")
                parents.append(const(a, s, n.dtype))
        v._parents = tuple(parents)
        for pv in reversed(parents):
            if id(pv) not in done:
                stack.append((pv, False))
    return order


def root_items(order: Sequence[GraphVertex], roots: Sequence[Tensor]) -> list[GraphVertex]:
    """The vertices of ``order`` that stand for the tensors ``roots``."""
    by_vertex = {id(v.vertex): v for v in order if v.vertex is not None}
    return [by_vertex[id(r._node if r._node is not None else r)] for r in roots]


def tensor_key(t: Tensor) -> int:
    """A key for the graph vertex of tensor ``t`` (its node; itself for a leaf)."""
    return id(t._node if t._node is not None else t)


def vertex_key(item: GraphVertex) -> int:
    """The same key as :func:`tensor_key`, for a vertex of a walk (0 for a constant)."""
    return id(item.vertex) if item.vertex is not None else 0


def value_or_none(item: Any) -> np.ndarray | None:
    """The value of a vertex (or a Tensor), None where it was not kept."""
    return item.data


def key(item: GraphVertex) -> int:
    """A key that identifies the vertex within one walk."""
    return id(item)


def rule_of(item: GraphVertex) -> Rule | None:
    """The rule that computed the vertex; None for a leaf or a constant."""
    return item._op


def inputs_of(item: GraphVertex) -> tuple[GraphVertex, ...]:
    """The operands, in operand-slot order (constants included)."""
    return item._parents


def is_leaf(item: GraphVertex) -> bool:
    return item._op is None


def requires_grad(item: Any) -> bool:
    return bool(item._requires_grad)


def is_freed(item: Any) -> bool:
    """True when an earlier ``backward()`` freed what this node saved (a vertex or a Tensor)."""
    node = item._node if isinstance(item, Tensor) else item.vertex
    return isinstance(node, Node) and node.ctx is _RELEASED


def value_of(item: GraphVertex, what: str = "explain") -> np.ndarray:
    """The vertex's value; :class:`ValuesNotKept` (one sentence) when it was not kept."""
    if item.data is None:
        raise _not_kept(what, item.name or (item._op.name if item._op else "a constant"))
    return item.data


def shape_of(item: Any) -> tuple[int, ...]:
    return tuple(item.shape)


def dtype_of(item: Any) -> np.dtype:
    return np.dtype(item.dtype)


def user_name(item: GraphVertex) -> str | None:
    """The name the user (or a module, for its parameters) gave the value."""
    return item.name


def set_name(item: GraphVertex, name: str) -> None:
    """Name the vertex, in this walk and on the engine's node (later walks see it)."""
    item.name = name
    if isinstance(item.vertex, Node):
        item.vertex.name = name


def is_tensor(x: Any) -> bool:
    return isinstance(x, Tensor)


def leaf_tensor(item: GraphVertex) -> Tensor | None:
    """The Tensor of a leaf vertex (a parameter, an input); None for others."""
    return item.vertex if isinstance(item.vertex, Tensor) else None


# --------------------------------------------------------------------------
# Local gradients: the rule's own VJP, on what its node kept
# --------------------------------------------------------------------------


def _stand_in(shape: tuple, dtype: Any) -> Meta:
    """The engine's stand-in for an operand a VJP does not read, with a broadcast shape."""
    m = Meta.__new__(Meta)
    m.shape = tuple(shape)
    m.dtype = dtype
    return m


def _operands(item: GraphVertex) -> tuple[Any, list[Any]] | None:
    """(out, operands) for the rule's VJP: kept values, else what the node saved."""
    out = item.data
    arrays = [p.data for p in item._parents]
    if item.saved is not None:
        saved_out, saved_in = item.saved
        if out is None:
            out = saved_out
        arrays = [a if a is not None else s for a, s in zip(arrays, saved_in)]
    if item._ctx is _RELEASED:
        return None
    return out, arrays


def local_gradients(item: GraphVertex, broadcast: bool = True) -> list[np.ndarray | None]:
    """d(node)/d(input) for each operand slot of an elementwise (or scalar-output) node.

    The rule's own VJP with a cotangent of ones: for an op whose output
    element i depends only on input element i, that is exactly the diagonal
    of its Jacobian; for an op whose output is one number, its gradient.
    With ``broadcast`` the operands are first broadcast to the output's
    shape, so the result is the local gradient before the VJP sums it over
    broadcast axes. Entries are None for slots that take no gradient or
    where the rule cannot run (a value it reads was not kept).
    """
    rule = item._op
    parents = item._parents
    got = None if rule is None or not rule.has_vjp else _operands(item)
    if rule is None or got is None:
        return [None] * len(parents)
    out, arrays = got
    shape = tuple(item.shape)
    if broadcast:
        try:
            arrays = [np.broadcast_to(a, shape) if isinstance(a, np.ndarray)
                      else _stand_in(np.broadcast_shapes(tuple(a.shape), shape), a.dtype)
                      for a in arrays]
        except ValueError:
            return [None] * len(parents)
    needs = tuple(p._requires_grad for p in parents)
    try:
        with np.errstate(all="ignore"):
            pgs = rule.vjp(np.ones(shape, dtype=item.dtype), out, item._ctx, needs, NUMPY_NS,
                           *arrays)
    except Exception:  # noqa: BLE001 - a rule that cannot run on these operands
        return [None] * len(parents)
    return [None if g is None or not n else np.asarray(g) for g, n in zip(pgs, needs)]


def local_jacobian(item: GraphVertex, slot: int) -> np.ndarray | None:
    """The full Jacobian d(node)/d(operand ``slot``), shape out.shape + in.shape.

    One VJP per output element (a unit cotangent each): for the small
    tensors of a worked example, where a local gradient that is not a
    diagonal (softmax) can then be shown as the matrix the notes multiply by.
    """
    rule = item._op
    got = None if rule is None or not rule.has_vjp else _operands(item)
    if rule is None or got is None:
        return None
    out, arrays = got
    shape = tuple(item.shape)
    needs = tuple(i == slot for i in range(len(arrays)))
    in_shape = tuple(item._parents[slot].shape)
    jac = np.zeros(shape + in_shape, dtype=np.result_type(item.dtype, np.float64))
    try:
        with np.errstate(all="ignore"):
            for idx in np.ndindex(*shape):
                e = np.zeros(shape, dtype=item.dtype)
                e[idx] = 1
                g = rule.vjp(e, out, item._ctx, needs, NUMPY_NS, *arrays)[slot]
                if g is None:
                    return None
                jac[idx] = np.asarray(g)
    except Exception:  # noqa: BLE001 - a rule that cannot run on unit cotangents
        return None
    return jac


# --------------------------------------------------------------------------
# One observed backward pass
# --------------------------------------------------------------------------


def has_grad_hooks(items: Sequence[GraphVertex]) -> int:
    """How many of ``items`` carry gradient hooks (``register_hook``)."""
    return sum(1 for v in items if v.vertex is not None and v.vertex._hooks)


@contextlib.contextmanager
def _hooks_suspended(items: Sequence[GraphVertex]) -> Iterator[None]:
    # A look at the graph must not trigger the user's hooks (counters,
    # logging, gradient edits): switch them off for the observed walk.
    saved = [(v.vertex, v.vertex._hooks) for v in items
             if v.vertex is not None and v.vertex._hooks]
    for x, _ in saved:
        x._hooks = None
    try:
        yield
    finally:
        for x, hooks in saved:
            x._hooks = hooks


class _Translate:
    """Reports the engine's vertices to ``observer`` as this walk's GraphVertex views."""

    def __init__(self, observer: Any, items: Sequence[GraphVertex]) -> None:
        self.observer = observer
        self.by_vertex = {id(v.vertex): v for v in items if v.vertex is not None}

    def visit(self, vertex: Any, g: Any) -> None:
        self.observer.visit(self.by_vertex[id(vertex)], g)

    def term(self, node: Any, slot: int, parent: Any, contribution: Any) -> None:
        by = self.by_vertex
        self.observer.term(by[id(node)], slot, by[id(parent)], contribution)


def observed_backward(root: Tensor, seed: Any, observer: Any,
                      items: Sequence[GraphVertex]) -> None:
    """One backward pass from ``root`` reported to ``observer``; nothing else changes.

    ``observer.visit(vertex, g)`` and ``observer.term(vertex, slot, parent,
    contribution)`` as in ``run_backward``, with this walk's vertices. No
    ``.grad`` is written (the walk returns its results instead), the graph
    is retained, and gradient hooks are not run.
    """
    with _hooks_suspended(items):
        run_backward((root,), (seed,), retain_graph=True, inputs=[root],
                     observer=_Translate(observer, items))


# --------------------------------------------------------------------------
# Tags: which module produced a node (cr.viz.trace_modules)
# --------------------------------------------------------------------------

_TAG = "_cr_modules"  # on a Node: [(path, module), ...] outermost first


def _tensors_in(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_in(o)]
    return []


def tag_outputs(out: Any, inputs: Any, path: str, module: Any) -> None:
    """Tag every node between a module call's inputs and its output as the module's."""
    stop = {id(t._node) for t in _tensors_in(inputs) if t._node is not None}
    stack = [t._node for t in _tensors_in(out) if t._node is not None]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen or id(n) in stop:
            continue
        seen.add(id(n))
        tags = n.__dict__.setdefault(_TAG, [])
        if not any(m is module for _, m in tags):
            tags.insert(0, (path, module))  # outer modules finish later: prepend
        stack.extend(p for p in n.parents if type(p) is Node)


def tags_of(item: GraphVertex) -> list[tuple[str, Any]]:
    n = item.vertex
    return n.__dict__.get(_TAG) or [] if isinstance(n, Node) else []


_ = keep_values  # re-exported for the views
