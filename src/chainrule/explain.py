"""``cr.explain``: the backward pass written out, one row per node.

The notes (seed 000, section 1.3) compute the gradient of the output ``L``
with respect to a node ``x`` whose successors are ``y_1 .. y_n`` as

    dL/dx = sum_j  dL/dy_j  x  dy_j/dx
                   (backpropagated gradient)  (local gradient)

:func:`explain` runs the engine's own backward walk (``run_backward`` with an
observer, so the numbers are the ones ``backward()`` computes) and prints,
in reverse topological order, every node with its value, each term of that
sum and the sum itself. Nothing the user owns changes: no ``.grad`` is
written and the graph is kept.

>>> w = cr.tensor(5.0, dtype=np.float64, requires_grad=True, name="w")
>>> J = ((w * 1.0 + 1.0) - 2.0) ** 2
>>> print(cr.explain(J))            # doctest: +SKIP
>>> cr.explain(J).grad("w")         # 8.0
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .tensor import Tensor
from .viz import (
    ValuesNotKept,
    _trace_backward,
    format_value,
    is_released,
    local_grads,
    node_names,
    walk,
)

__all__ = ["explain", "Explanation", "Row", "Term", "ELEMENTWISE_OPS"]

# Ops whose output element i depends only on input element i (after
# broadcasting): their local gradient is a diagonal, shown as an array, and a
# broadcast input gets its term summed back over the broadcast axes.
ELEMENTWISE_OPS = frozenset(
    {
        "add", "sub", "mul", "div", "pow", "neg", "abs", "exp", "log", "sqrt", "sin",
        "cos", "tanh", "sigmoid", "relu", "leaky_relu", "softplus", "maximum",
        "minimum", "where", "clip", "astype", "clone",
    }
)


@dataclass
class Term:
    """One term dL/ds x ds/dnode of the sum over the successors s of a node."""

    successor: str
    op: str
    upstream: np.ndarray  # dL/ds, the backpropagated gradient of the successor
    local: np.ndarray | None  # ds/dnode (elementwise ops and scalars); None: shown as a VJP
    value: np.ndarray  # the term itself, in the node's shape
    unreduced: np.ndarray | None = None  # before summing over broadcast axes
    axes: tuple[int, ...] | None = None  # the broadcast axes summed over


@dataclass
class Row:
    """One node of the graph with its value, dL/dnode and how it was obtained."""

    index: int
    name: str
    op: str  # the op that produced it, or "leaf"
    value: np.ndarray
    grad: np.ndarray | None  # dL/dnode; None when no gradient reaches it
    terms: list[Term] = field(default_factory=list)
    is_root: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape


def _broadcast_axes(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes of ``out_shape`` that broadcasting added or stretched for ``shape``."""
    lead = len(out_shape) - len(shape)
    return tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and out_shape[lead + i] != 1
    )


class Explanation:
    """The per-node trace of one backward pass (see :func:`explain`).

    ``rows`` are in reverse topological order (the output first), the order
    in which the engine's backward walk visited the nodes. ``exp["w"]`` is the row of the
    node named ``w``; ``exp.grad("w")`` its dL/dw.
    """

    def __init__(
        self, rows: list[Row], root_name: str, precision: int = 4, full: bool = False
    ) -> None:
        self.rows = rows
        self.root_name = root_name
        self.precision = precision
        self.full = full

    # ----- lookup ----------------------------------------------------------

    def __getitem__(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.rows)
        raise KeyError(f"explain: no node named {name!r}; the nodes are: {known}")

    def __iter__(self):  # noqa: ANN204
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def grad(self, name: str) -> np.ndarray | None:
        """dL/dnode for the node called ``name``."""
        return self[name].grad

    # ----- text ------------------------------------------------------------

    def _v(self, a: Any) -> str:
        return format_value(a, self.precision, self.full)

    def _d(self, name: str) -> str:
        return f"d{self.root_name}/d{name}"

    def _term_text(self, row: Row, t: Term) -> list[str]:
        lead = f"via {t.successor} ({t.op}):  {self._d(t.successor)} x d{t.successor}/d{row.name}"
        if t.local is None:
            return [f"{lead} = VJP of {t.op} applied to {self._v(t.upstream)} = {self._v(t.value)}"]
        times = "x" if t.upstream.size == 1 and t.local.size == 1 else "(.)"
        product = f"{lead} = {self._v(t.upstream)} {times} {self._v(t.local)} = "
        if t.unreduced is None:
            return [product + self._v(t.value)]
        return [
            product + f"{self._v(t.unreduced)}  (shape {t.unreduced.shape})",
            f"    summed over broadcast axes {t.axes} -> shape {t.value.shape}: {self._v(t.value)}",
        ]

    def _sum_text(self, row: Row) -> str:
        total = self._v(row.grad)
        if row.is_root:
            return f"{self._d(row.name)} = {total}  (the seed)"
        if len(row.terms) > 1 and all(t.value.size == 1 for t in row.terms):
            parts = " + ".join(self._v(t.value) for t in row.terms)
            return f"{self._d(row.name)} = {parts} = {total}"
        if len(row.terms) > 1:
            return f"{self._d(row.name)} = sum of the {len(row.terms)} terms = {total}"
        return f"{self._d(row.name)} = {total}"

    def to_text(self) -> str:
        """A plain-text trace, one block per node, output first."""
        root = self.rows[0]
        out = [
            f"Backward pass of {self.root_name} = {self._v(root.value)}, "
            "nodes in reverse topological order.",
            f"{self._d('x')} = sum over the successors s of x of "
            f"{self._d('s')} (backpropagated) x ds/dx (local)",
            "",
        ]
        for r in self.rows:
            head = f"[{r.index}] {r.name} ({r.op})"
            shape = f"  shape {r.shape}" if r.value.ndim else ""
            out.append(f"{head}{shape}  value {self._v(r.value)}")
            for t in r.terms:
                out.extend("    " + line for line in self._term_text(r, t))
            if r.grad is None:
                out.append(f"    no gradient reaches {r.name}")
            else:
                out.append("    " + self._sum_text(r))
        return "\n".join(out)

    __str__ = to_text

    def __repr__(self) -> str:
        return f"<Explanation of d{self.root_name}: {len(self.rows)} nodes; print() it>"

    def to_markdown(self) -> str:
        """A Markdown table: node, op, value, gradient and the terms of the sum."""
        lines = [
            f"| # | node | op | value | {self._d('node')} | sum over successors |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            how = "<br>".join(
                line.strip() for t in r.terms for line in self._term_text(r, t)
            ) or ("seed" if r.is_root else "")
            cells = [str(r.index), r.name, r.op, self._v(r.value), self._v(r.grad), how]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)

    def to_html(self) -> str:
        """An HTML table (what Jupyter shows)."""
        e = html.escape
        head = "".join(
            f"<th>{e(h)}</th>"
            for h in ("#", "node", "op", "value", self._d("node"), "sum over successors")
        )
        body = []
        for r in self.rows:
            how = "<br>".join(
                e(line.strip()) for t in r.terms for line in self._term_text(r, t)
            ) or ("seed" if r.is_root else "")
            cells = [str(r.index), e(r.name), e(r.op), e(self._v(r.value)), e(self._v(r.grad))]
            body.append(
                "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{how}</td></tr>"
            )
        return (
            f"<table><caption>Backward pass of {e(self.root_name)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()


def explain(
    t: Tensor, seed: Any = None, *, precision: int = 4, full: bool = False
) -> Explanation:
    """Run backward on ``t`` and explain every step, in the notes' terms.

    Parameters
    ----------
    t : Tensor
        The output L (a scalar, or pass ``seed`` = dL/dt).
    seed : array_like, optional
        dL/dt for a non-scalar ``t``.
    precision : int
        Significant digits in the text (``full=True``: every digit).

    Returns
    -------
    Explanation
        ``.rows`` (value, grad and terms per node), ``.to_text()``,
        ``.to_markdown()``, ``.to_html()``.

    The graph is retained and no ``.grad`` is modified: the walk asks the
    engine for the gradients with ``inputs=`` instead. Hooks are not run.

    Examples
    --------
    >>> a = cr.tensor(-1.0, dtype=np.float64, requires_grad=True, name="a")
    >>> b = cr.tensor(3.0, dtype=np.float64, requires_grad=True, name="b")
    >>> c = cr.tensor(4.0, dtype=np.float64, requires_grad=True, name="c")
    >>> f = (a + b) * (b + c)
    >>> cr.explain(f).grad("b")      # 7 + 2
    array(9.)
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"explain: expected a Tensor, got {type(t).__name__}")
    if not t.requires_grad:
        raise RuntimeError(
            "explain: this tensor does not require grad, so there is no backward pass to "
            "explain; create the inputs with requires_grad=True"
        )
    if is_released(t):
        raise RuntimeError(
            "explain: the graph behind this tensor was freed by an earlier backward(); "
            "call cr.explain before backward(), or use backward(retain_graph=True)"
        )
    try:
        order = walk([t])
    except ValuesNotKept as exc:
        raise ValuesNotKept(f"explain: {exc}") from None
    if any(is_released(n) for n in order):
        raise RuntimeError(
            "explain: the graph behind this tensor was freed by an earlier backward(); "
            "call cr.explain before backward(), or use backward(retain_graph=True)"
        )
    root = order[-1]  # walk lists parents first: the root comes last
    names = node_names(order)
    if not t.name and "L" not in names.values():
        names[id(root)] = "L"  # the notes' name for the output being differentiated
    grads, observed = _trace_backward(t, seed, order)

    terms_of: dict[int, list[Term]] = {}
    local_cache: dict[int, list[np.ndarray | None]] = {}
    for succ, g, parent, contribution, slot in observed:
        terms_of.setdefault(id(parent), []).append(
            _make_term(succ, slot, g, parent, contribution, names, local_cache)
        )

    # Rows in the order the engine visited the nodes: each visit reports its
    # terms together, so the successors' first appearances give the order of
    # the op nodes; leaves are visited last, in the order gradients reached them.
    visit: dict[int, Any] = {id(root): root}
    for succ, *_ in observed:
        visit.setdefault(id(succ), succ)
    for _, _, parent, _, _ in observed:
        if parent._op is None:
            visit.setdefault(id(parent), parent)
    for n in reversed(order):
        if n._requires_grad:
            visit.setdefault(id(n), n)  # nodes no gradient reached
    rows: list[Row] = []
    for node in visit.values():
        rows.append(
            Row(
                index=len(rows) + 1,
                name=names[id(node)],
                op=node._op.name if node._op is not None else "leaf",
                value=np.asarray(node.data),
                grad=grads.get(id(node)),
                terms=terms_of.get(id(node), []),
                is_root=node is root,
            )
        )
    return Explanation(rows, names[id(root)], precision, full)


def _make_term(
    succ: Tensor,
    slot: int,
    g: np.ndarray,
    parent: Tensor,
    contribution: np.ndarray,
    names: dict[int, str],
    cache: dict[int, list[np.ndarray | None]],
) -> Term:
    op = succ._op.name
    scalar = succ.data.size == 1 and parent.data.size == 1
    local = None
    unreduced = axes = None
    if op in ELEMENTWISE_OPS or scalar:
        if id(succ) not in cache:
            cache[id(succ)] = local_grads(succ, broadcast=op in ELEMENTWISE_OPS)
        local = cache[id(succ)][slot]
    if local is not None and op in ELEMENTWISE_OPS and parent.shape != succ.shape:
        # the VJP of a broadcast op computes g (.) local in the output's shape,
        # then sums it back to the input's shape: show both steps
        unreduced = g * local
        axes = _broadcast_axes(parent.shape, succ.shape)
    elif local is not None and local.shape != contribution.shape:
        local = None  # not a diagonal we can show: fall back to "VJP of op"
    return Term(
        successor=names[id(succ)],
        op=op,
        upstream=g,
        local=local,
        value=contribution,
        unreduced=unreduced,
        axes=axes,
    )

