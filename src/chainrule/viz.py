"""Draw the computation graph: DOT text with no dependency, SVG/PNG via Graphviz.

``cr.viz.graph(t)`` walks the graph recorded behind ``t`` and writes it in
the DOT language. Each tensor is one node showing its name (or op), shape,
value and, once gradients are known, dL/dnode; for graphs of scalars each
edge also carries the *local gradient* d(successor)/d(node) of the notes.

>>> w = cr.tensor(5.0, requires_grad=True, name="w")
>>> J = ((w * 1.0 + 1.0) - 2.0) ** 2
>>> g = cr.viz.graph(J, grads=True)
>>> print(g.source)            # plain DOT text, always available
>>> g.render("graph.svg")      # needs Graphviz's ``dot`` program

Rendering shells out to ``dot``; when it is missing, ``render`` raises
:class:`GraphvizNotFoundError` saying how to install it, and ``_repr_svg_``
(Jupyter) shows a note instead of the picture.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .ops import NUMPY_NS
from .tensor import _RELEASED, Node, Tensor, run_backward

__all__ = [
    "Graph",
    "graph",
    "trace_modules",
    "ModuleTrace",
    "GraphvizNotFoundError",
    "have_dot",
    "format_value",
]

INSTALL_HINT = (
    "Graphviz's `dot` program was not found on PATH. Install Graphviz to render "
    "graphs: `sudo apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` "
    "(macOS) or `conda install -c conda-forge graphviz`. Without it, Graph.source "
    "still holds the DOT text (Graph.save('g.dot') writes it)."
)


class GraphvizNotFoundError(RuntimeError):
    """Rendering needs Graphviz's ``dot`` program, which is not installed."""


def have_dot() -> bool:
    """True when Graphviz's ``dot`` program is on PATH."""
    return shutil.which("dot") is not None


# --------------------------------------------------------------------------
# Walking the graph and naming its nodes (shared with cr.explain)
# --------------------------------------------------------------------------


class ValuesNotKept(RuntimeError):
    """A view needs values that the forward pass did not keep (see ``cr.keep_values``)."""


class GraphVertex:
    """One vertex of a recorded graph as the views see it: an op's node, a
    leaf, or a constant operand, with its value.

    The engine keeps only what backward needs (saved tensors); the values
    shown here come from a forward pass recorded inside ``cr.keep_values()``
    (every node then keeps its output and operands). ``_op``, ``_parents``,
    ``_ctx``, ``_needs``, ``params``, ``_meta``, ``data``, ``name`` mirror the
    node; ``vertex`` is what the backward walk reports (a Node or a leaf).
    """

    __slots__ = ("vertex", "data", "name", "_op", "_parents", "_ctx", "_needs", "params",
                 "_requires_grad", "_grad", "_meta", "__dict__")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def tensor(self) -> Tensor:
        """A Tensor whose graph vertex is this one (to ask the engine for dL/dit)."""
        v = self.vertex
        return v if isinstance(v, Tensor) else Tensor._of(self.data, v)


def _not_kept(node: Node) -> ValuesNotKept:
    return ValuesNotKept(
        f"the value of '{node.op.name}' (shape {node.shape}) was not kept: chainrule keeps "
        "only what the backward pass needs. Record the forward pass inside "
        "`with cr.keep_values():` (or call cr.set_keep_values(True) once, e.g. at the top "
        "of a notebook) to show every value."
    )


def walk(roots: Sequence[Tensor]) -> list[GraphVertex]:
    """Every vertex reachable from ``roots`` (constants included), parents first.

    An explicit stack, no recursion: deep graphs do not overflow. Raises
    :class:`ValuesNotKept` when an op's value is needed but was not kept,
    unless the graph was freed by backward (``is_released`` then says so).
    """
    views: dict[int, GraphVertex] = {}

    def leaf(t: Tensor) -> GraphVertex:
        v = views.get(id(t))
        if v is None:
            v = views[id(t)] = _new_vertex(t, t.data, t.name, None, t._requires_grad)
            v._grad = t._grad
        return v

    def const(a: Any, dtype: Any) -> GraphVertex:
        if isinstance(a, Tensor):
            if a._node is None:
                return leaf(a)
            a = a.data
        arr = a if isinstance(a, np.ndarray) else np.asarray(a, dtype=dtype)
        return _new_vertex(None, arr, None, None, False)

    def of_node(n: Node, data: Any) -> GraphVertex:
        v = views.get(id(n))
        if v is None:
            if data is None and n.ctx is not _RELEASED:
                data = n.value
                if data is None:
                    raise _not_kept(n)
            v = views[id(n)] = _new_vertex(n, data, n.name, n, True)
        return v

    order: list[GraphVertex] = []
    done: set[int] = set()
    stack: list[tuple[Any, bool]] = []
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
        n = v._op and v.vertex
        if not isinstance(n, Node) or n.ctx is _RELEASED:
            continue
        if n.kept is None:
            raise _not_kept(n)
        parents = []
        for p, a in zip(n.parents, n.kept[1]):
            if type(p) is Node:
                parents.append(of_node(p, None))
            elif p is not None:
                parents.append(leaf(p))
            else:
                parents.append(const(a, n.dtype))
        v._parents = tuple(parents)
        for p in reversed(parents):
            if id(p) not in done:
                stack.append((p, False))
    return order


def _new_vertex(vertex: Any, data: Any, name: str | None, node: Node | None,
                requires_grad: bool) -> GraphVertex:
    v = GraphVertex.__new__(GraphVertex)
    v.vertex = vertex
    v.data = np.asarray(data) if data is not None else None
    v.name = name
    v._op = None if node is None else node.op
    v._parents = ()
    v._ctx = None if node is None else node.ctx
    v._needs = () if node is None else node.needs
    v.params = {} if node is None else node.params
    v._requires_grad = requires_grad
    v._grad = None
    v._meta = None if node is None else node.meta
    return v


def node_names(order: Sequence[Tensor]) -> dict[int, str]:
    """A readable, unique label per node: its ``name``, else ``op#k``.

    Unnamed leaves that require grad are ``leaf#k``; constants are shown by
    their value when they are one number, else ``const#k``.
    """
    counts: Counter[str] = Counter()
    names: dict[int, str] = {}
    for t in order:
        if t.name:
            names[id(t)] = t.name
            continue
        if t._op is not None:
            kind = t._op.name
        elif t._requires_grad:
            kind = "leaf"
        elif t.data.size == 1:
            names[id(t)] = format_value(t.data, 4)
            continue
        else:
            kind = "const"
        counts[kind] += 1
        names[id(t)] = f"{kind}#{counts[kind]}"
    return names


def format_value(a: Any, precision: int = 4, full: bool = False, max_items: int = 6) -> str:
    """A short text form of an array: the number itself, the small array, or a summary.

    Large arrays show their shape, norm and first entries; ``full=True``
    prints every entry at full (repr) precision.
    """
    if a is None:
        return "-"
    a = np.asarray(a)
    if full:
        with np.printoptions(precision=17, threshold=np.inf, floatmode="unique"):
            return np.array2string(a, separator=", ").replace("\n", "")
    if a.size == 1:
        v = a.reshape(()).item()
        if isinstance(v, float):
            return f"{v:.{precision}g}"
        return str(v)
    if a.size <= max_items:
        with np.printoptions(precision=precision, suppress=True):
            return np.array2string(a, separator=", ").replace("\n", "")
    flat = a.reshape(-1)
    first = ", ".join(f"{float(x):.{precision}g}" for x in flat[:3])
    if np.issubdtype(a.dtype, np.number):
        norm = f"{float(np.linalg.norm(flat.astype(np.float64))):.{precision}g}"
    else:
        norm = "-"
    return f"shape {a.shape}, norm {norm}, [{first}, ...]"


def is_released(t: Any) -> bool:
    """True when an earlier backward() freed the graph behind ``t`` (a vertex or a Tensor)."""
    node = t._node if isinstance(t, Tensor) else t.vertex
    return isinstance(node, Node) and node.ctx is _RELEASED


def _trace_backward(
    root: Tensor, seed: Any, order: Sequence[GraphVertex]
) -> tuple[dict[int, np.ndarray], list[tuple[Any, np.ndarray, Any, np.ndarray, int]]]:
    """dL/dvertex for every vertex that requires grad, plus every term of every sum.

    Keys and terms use the views in ``order`` (by ``id``). Uses
    ``run_backward(inputs=...)`` so that no ``.grad`` is touched and the
    graph is retained. Hooks are switched off for the walk: they may have
    side effects (counters, logging) that a look at the graph must not
    trigger.
    """
    views = [v for v in order if v._requires_grad]
    by_vertex = {id(v.vertex): v for v in views}
    terms: list[tuple[Any, np.ndarray, Any, np.ndarray, int]] = []

    class _Observe:
        g: Any = None

        def visit(self, node: Any, g: Any) -> None:
            # a copy: the engine may add later terms into the same buffer in place
            self.g = np.array(g, copy=True)

        def term(self, node: Any, slot: int, parent: Any, contribution: Any) -> None:
            terms.append((by_vertex[id(node)], self.g, by_vertex[id(parent)],
                          np.array(contribution, copy=True), slot))

    observe = _Observe()
    vertices = [v.vertex for v in views]
    saved_hooks = {id(x): x._hooks for x in vertices if x._hooks}
    for x in vertices:
        if x._hooks:
            x._hooks = None
    try:
        got = run_backward((root,), (seed,), retain_graph=True,
                           inputs=[v.tensor for v in views], observer=observe)
    finally:
        for x in vertices:
            if id(x) in saved_hooks:
                x._hooks = saved_hooks[id(x)]
    grads = {id(v): np.asarray(g) for v, g in zip(views, got or []) if g is not None}
    return grads, terms


def local_grads(node: Tensor, broadcast: bool = False) -> list[np.ndarray | None]:
    """d(node)/d(parent) for each parent, for elementwise and scalar ops.

    Computed as the op's VJP with a cotangent of ones: for an op whose output
    element depends only on the matching input element this is exactly the
    diagonal of the Jacobian (for scalars: the derivative). With
    ``broadcast=True`` the parents are first broadcast to the output's shape,
    so the result is the un-reduced local gradient (before the sum over
    broadcast axes). Returns ``None`` entries where it cannot be computed.
    """
    if node._op is None or node._ctx is _RELEASED or node._op.vjp is None:
        return [None] * len(node._parents)
    out = node.data
    arrays = [p.data for p in node._parents]
    if broadcast:
        try:
            arrays = [np.broadcast_to(a, out.shape) for a in arrays]
        except ValueError:
            return [None] * len(arrays)
    needs = tuple(True for _ in arrays)
    try:
        with np.errstate(all="ignore"):
            pgs = node._op.vjp(np.ones_like(out), out, node._ctx, needs, NUMPY_NS, *arrays)
    except Exception:  # a rule that cannot run on these operands: no local gradient shown
        return [None] * len(arrays)
    return [None if g is None else np.asarray(g) for g in pgs]


# --------------------------------------------------------------------------
# Module tracing (to draw a layer as one box)
# --------------------------------------------------------------------------


def _module_names(model: Any) -> dict[int, tuple[str, Any]]:
    """id(module) -> (dotted path, module) for ``model`` and everything inside it."""
    names: dict[int, tuple[str, Any]] = {}
    named = getattr(model, "named_modules", None)
    if callable(named):
        try:
            for path, m in named():
                names.setdefault(id(m), (path or type(m).__name__, m))
            if names:
                return names
        except Exception:  # noqa: S110 - fall back to walking attributes ourselves
            names.clear()

    from .nn import Module

    stack: list[tuple[str, Any]] = [("", model)]
    while stack:
        path, m = stack.pop()
        if id(m) in names:
            continue
        names[id(m)] = (path or type(m).__name__, m)
        for key, val in vars(m).items():
            items: list[tuple[str, Any]] = []
            if isinstance(val, Module):
                items = [(key, val)]
            elif isinstance(val, (list, tuple)):
                items = [(f"{key}.{i}", v) for i, v in enumerate(val) if isinstance(v, Module)]
            elif isinstance(val, dict):
                items = [(f"{key}.{k}", v) for k, v in val.items() if isinstance(v, Module)]
            for sub, v in items:
                if key in ("_modules", "_layers", "layers") and sub.startswith(key + "."):
                    sub = sub[len(key) + 1 :]  # Sequential children read as 0, 1, ...
                stack.append((f"{path}.{sub}" if path else sub, v))
    return names


def _tensors_in(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_in(o)]
    return []


class ModuleTrace:
    """What :func:`trace_modules` recorded: which module produced which node.

    ``modules`` maps id(module) to (path, module); each recorded node carries
    the list of modules that produced it, outermost first.
    """

    def __init__(self, names: dict[int, tuple[str, Any]]) -> None:
        self.modules = names
        self.calls = 0

    def path(self, module: Any) -> str:
        return self.modules.get(id(module), (type(module).__name__, module))[0]


_TAG = "_cr_modules"  # attribute set on traced nodes: [(path, module), ...] outermost first


def _tag(out: Any, module: Any, path: str, args: Any) -> None:
    stop = {id(t._node) for t in _tensors_in(args) if t._node is not None}
    stack: list[Any] = [t._node for t in _tensors_in(out) if t._node is not None]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen or id(n) in stop or type(n) is not Node:
            continue
        seen.add(id(n))
        tags = n.__dict__.setdefault(_TAG, [])
        if not any(m is module for _, m in tags):
            tags.insert(0, (path, module))  # outer modules finish later: prepend
        stack.extend(n.parents)


@contextlib.contextmanager
def trace_modules(model: Any) -> Iterator[ModuleTrace]:
    """Record which module of ``model`` produced each node, to draw layers as boxes.

    >>> with cr.viz.trace_modules(model):
    ...     loss = loss_fn(model(x), y)
    >>> cr.viz.graph(loss, collapse_modules=True).render("model.svg")

    ``Module.__call__`` is wrapped for the duration of the block only.
    """
    from .nn import Module

    names = _module_names(model)
    trace = ModuleTrace(names)
    original = Module.__call__

    def traced_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        entry = names.get(id(self))
        if entry is not None:
            trace.calls += 1
            _tag(out, self, entry[0], (args, kwargs))
        return out

    Module.__call__ = traced_call  # type: ignore[method-assign]
    try:
        yield trace
    finally:
        Module.__call__ = original  # type: ignore[method-assign]


# --------------------------------------------------------------------------
# DOT output
# --------------------------------------------------------------------------


def _esc(text: str) -> str:
    """Escape for a double-quoted DOT string; ``\\n`` stays a line break."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Graph:
    """A drawn computation graph: DOT text plus ways to render it.

    Attributes
    ----------
    source : str
        The graph in the DOT language (no dependency needed to produce it).
    notes : list[str]
        What the drawing leaves out or could not show (omitted nodes, a
        graph freed by backward()).
    """

    def __init__(self, source: str, notes: Sequence[str] = ()) -> None:
        self.source = source
        self.notes = list(notes)

    def __str__(self) -> str:
        return self.source

    def __repr__(self) -> str:
        n = sum(1 for line in self.source.splitlines() if line.strip().startswith("n"))
        return f"<chainrule Graph: {n} DOT statements; .source has the text>"

    def pipe(self, format: str = "svg") -> bytes:  # noqa: A002
        """Run ``dot -T<format>`` and return its output."""
        exe = shutil.which("dot")
        if exe is None:
            raise GraphvizNotFoundError(INSTALL_HINT)
        proc = subprocess.run(
            [exe, f"-T{format}"], input=self.source.encode(), capture_output=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def render(self, path: str | Path, format: str | None = None) -> Path:  # noqa: A002
        """Write the picture to ``path`` (format from ``format`` or the suffix: svg, png, pdf).

        ``format="dot"`` (or a ``.dot``/``.gv`` suffix) writes the DOT text and
        needs nothing installed.
        """
        path = Path(path)
        fmt = (format or path.suffix.lstrip(".") or "svg").lower()
        if fmt in ("dot", "gv"):
            return self.save(path)
        path.write_bytes(self.pipe(fmt))
        return path

    def save(self, path: str | Path) -> Path:
        """Write the DOT text to ``path``."""
        path = Path(path)
        path.write_text(self.source, encoding="utf-8")
        return path

    def _repr_svg_(self) -> str:
        """Inline SVG for Jupyter; a note (as SVG text) when ``dot`` is missing."""
        if have_dot():
            return self.pipe("svg").decode()
        lines = ["Graphviz 'dot' not found: cannot draw this graph here.",
                 "Install it: apt-get install graphviz | brew install graphviz |",
                 "conda install -c conda-forge graphviz.  Graph.source has the DOT text."]
        body = "".join(
            f'<text x="10" y="{20 + 18 * i}" font-family="monospace" font-size="13">'
            f"{line}</text>"
            for i, line in enumerate(lines)
        )
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="70">{body}</svg>'


_STYLE = {
    "leaf": 'shape=ellipse, style=filled, fillcolor="#d6e4ff"',
    "const": 'shape=plaintext, fontcolor="#555555"',
    "op": 'shape=box, style="rounded,filled", fillcolor="#f4f4f4"',
    "root": 'shape=box, style="rounded,filled", fillcolor="#ffe1b3", penwidth=2',
    "group": 'shape=box3d, style=filled, fillcolor="#e3f4e3"',
    "note": 'shape=note, style=filled, fillcolor="#fff8c4"',
}


def graph(
    t: Tensor | Sequence[Tensor],
    *,
    direction: str = "forward",
    grads: bool | str = "auto",
    seed: Any = None,
    precision: int = 4,
    show_values: bool = True,
    collapse: Sequence[Any] | None = None,
    collapse_modules: bool = False,
    max_nodes: int = 200,
    title: str | None = None,
) -> Graph:
    """Draw the computation graph that produced ``t``.

    Parameters
    ----------
    t : Tensor or list of Tensors
        The output(s) whose history is drawn.
    direction : "forward" | "backward"
        ``forward``: edges point from inputs to the values computed from them
        (left to right), labelled with the local gradient d(successor)/d(node)
        when the graph is made of scalars. ``backward``: the same layout with
        the edges reversed, showing the gradient flowing from the output
        back, each edge labelled ``dL/dsucc x dsucc/dnode = term``.
    grads : "auto" | bool
        Show dL/dnode in each node. ``True`` computes them now (a backward
        pass with ``inputs=`` that leaves every ``.grad`` untouched);
        ``"auto"`` does so once a backward pass has been run (some leaf has
        a ``.grad``) or ``direction="backward"``.
    seed : array_like, optional
        dL/dt for a non-scalar ``t`` (default 1 for a scalar).
    collapse : list of modules, optional
        Draw each of these modules as one box. Needs the forward pass to have
        run inside :func:`trace_modules`.
    collapse_modules : bool
        Collapse every traced child module of the traced model (e.g. each
        Linear layer of a Sequential).
    max_nodes : int
        Draw at most this many boxes (those nearest the output); a note says
        how many and which ops were left out.

    Returns
    -------
    Graph
        ``.source`` (DOT), ``.render(path)``, ``_repr_svg_`` for Jupyter.

    Examples
    --------
    >>> x = cr.tensor(1.0, dtype=np.float64, requires_grad=True, name="x")
    >>> y = (x * 3.0).sigmoid()
    >>> print(cr.viz.graph(y, grads=True).source)   # doctest: +SKIP
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"graph: direction must be 'forward' or 'backward', got {direction!r}")
    roots = list(t) if isinstance(t, (list, tuple)) else [t]
    for r in roots:
        if not isinstance(r, Tensor):
            raise TypeError(f"graph: expected a Tensor, got {type(r).__name__}")
    order = walk(roots)
    names = node_names(order)
    notes: list[str] = []
    root_vertices = {id(r._node if r._node is not None else r) for r in roots}
    root_ids = {id(v) for v in order if id(v.vertex) in root_vertices}

    released = [n for n in order if is_released(n)] or [r for r in roots if is_released(r)]
    if released:
        notes.append(
            "part of this graph was freed by backward(); call backward(retain_graph=True) "
            "to draw it afterwards, or draw before backward()"
        )

    # ---- gradients: dL/dnode and the terms of each sum --------------------
    if grads == "auto":
        grads = direction == "backward" or any(
            n._op is None and n._grad is not None for n in order
        )
    gtable: dict[int, np.ndarray] = {}
    if grads and len(roots) == 1 and roots[0]._requires_grad and not released:
        root = roots[0]
        if seed is None and root.data.size != 1:
            notes.append(f"gradients not shown: the output has shape {root.shape}; pass seed=")
        else:
            gtable, _ = _trace_backward(root, seed, order)

    # ---- local gradients on edges (graphs of scalars) ---------------------
    scalar_graph = all(n.data.size == 1 for n in order)
    local: dict[tuple[int, int], float] = {}
    if scalar_graph:
        for n in order:
            if n._op is None:
                continue
            for i, lg in enumerate(local_grads(n)):
                if lg is not None:
                    local[(id(n), i)] = float(np.asarray(lg).reshape(-1)[0])

    # ---- module groups ----------------------------------------------------
    group_of = _groups(order, collapse, collapse_modules)

    # ---- units: a node, or a group of nodes drawn as one box -------------
    unit_of: dict[int, str] = {}
    units: list[str] = []  # forward order of first appearance
    members: dict[str, list[Tensor]] = {}
    for k, n in enumerate(order):
        key = group_of.get(id(n))
        uid = f"g{key[0]}" if key is not None else f"n{k}"
        unit_of[id(n)] = uid
        if uid not in members:
            members[uid] = []
            units.append(uid)
        members[uid].append(n)
    group_label = {f"g{v[0]}": v for v in group_of.values()}

    kept = units
    omitted: list[str] = []
    if max_nodes is not None and len(units) > max_nodes:
        # keep the boxes nearest the output: the tail of the forward order
        cut = len(units) - max_nodes
        omitted, kept = units[:cut], units[cut:]
        ops = Counter(
            (m._op.name if m._op is not None else ("leaf" if m._requires_grad else "const"))
            for u in omitted
            for m in members[u]
        )
        detail = ", ".join(f"{op} x{c}" for op, c in ops.most_common(6))
        notes.append(
            f"{len(omitted)} of {len(units)} boxes omitted (max_nodes={max_nodes}): {detail}"
        )
    kept_set = set(kept)

    # ---- write DOT --------------------------------------------------------
    lines = ["digraph chainrule {"]
    lines.append(f"  rankdir={'LR' if direction == 'forward' else 'RL'};")
    lines.append('  charset="UTF-8";')
    lines.append('  node [fontname="Helvetica", fontsize=11];')
    lines.append('  edge [fontname="Helvetica", fontsize=9];')
    graph_label = "\n".join(([title] if title else []) + notes)
    if graph_label:
        lines.append(f'  label="{_esc(graph_label)}"; labelloc=t; fontname="Helvetica";')

    for uid in kept:
        ms = members[uid]
        if uid in group_label:
            label, style = _group_label(group_label[uid], ms, precision), _STYLE["group"]
        else:
            n = ms[0]
            label = _node_label(n, names, gtable, precision, show_values)
            if id(n) in root_ids:
                style = _STYLE["root"]
            elif n._op is not None:
                style = _STYLE["op"]
            elif n._requires_grad:
                style = _STYLE["leaf"]
            else:
                style = _STYLE["const"]
        lines.append(f'  {uid} [label="{_esc(label)}", {style}];')

    if omitted:
        lines.append(f'  omitted [label="{_esc(notes[-1])}", {_STYLE["note"]}];')

    drawn: set[tuple[str, str]] = set()
    for n in order:
        nu = unit_of[id(n)]
        for i, p in enumerate(n._parents):
            pu = unit_of[id(p)]
            if pu == nu:
                continue
            if nu not in kept_set:
                continue
            src = pu if pu in kept_set else "omitted"
            attrs = []
            single = nu not in group_label and pu not in group_label and src != "omitted"
            if not p._requires_grad:
                # no gradient flows into a constant: a faint edge, no label
                attrs.append('style=dashed, color="#999999"')
                if direction == "backward":
                    attrs.append("arrowhead=none")
            elif single and (id(n), i) in local:
                lg = local[(id(n), i)]
                if direction == "forward":
                    text = f"∂{names[id(n)]}/∂{names[id(p)]} = {lg:.{precision}g}"
                elif id(n) in gtable:
                    up = float(gtable[id(n)].reshape(-1)[0])
                    text = f"{up:.{precision}g} × {lg:.{precision}g} = {up * lg:.{precision}g}"
                else:
                    text = f"× {lg:.{precision}g}"
                attrs.append(f'label="{_esc(text)}"')
            if (src, nu) in drawn and not attrs:
                continue
            drawn.add((src, nu))
            if direction == "backward":
                if p._requires_grad:
                    attrs.append('color="#b03a2e", fontcolor="#b03a2e"')
                lines.append(f"  {nu} -> {src} [{', '.join(attrs)}];")
            else:
                lines.append(f"  {src} -> {nu}" + (f" [{', '.join(attrs)}];" if attrs else ";"))
    lines.append("}")
    return Graph("\n".join(lines) + "\n", notes)


def _node_label(
    n: Tensor, names: dict[int, str], gtable: dict[int, np.ndarray], precision: int, values: bool
) -> str:
    name = names[id(n)]
    if n._op is not None:
        head = name if name.startswith(n._op.name + "#") else f"{name} = {n._op.name}"
    else:
        head = name
    parts = [head]
    if n.data.ndim:
        parts.append(f"shape {n.shape}")
    is_const_scalar = n._op is None and not n._requires_grad and not n.name and n.data.size == 1
    if values and not is_const_scalar:
        parts.append(f"value {format_value(n.data, precision)}")
    if id(n) in gtable:
        parts.append(f"grad {format_value(gtable[id(n)], precision)}")
    elif n._op is None and n._grad is not None:
        parts.append(f"grad {format_value(n._grad.data, precision)}")
    return "\n".join(parts)


def _groups(
    order: Sequence[Tensor], collapse: Sequence[Any] | None, collapse_modules: bool
) -> dict[int, tuple[int, str, Any]]:
    """id(node) -> (id(module), path, module) for nodes drawn inside a module box."""
    if not collapse and not collapse_modules:
        return {}
    wanted = {id(m) for m in (collapse or [])}
    group: dict[int, tuple[int, str, Any]] = {}
    untraced = True
    for n in order:
        tags = n.vertex.__dict__.get(_TAG) if isinstance(n.vertex, Node) else None
        if not tags:
            continue
        untraced = False
        choice = None
        if collapse:
            choice = next(((p, m) for p, m in tags if id(m) in wanted), None)
        elif collapse_modules:
            choice = tags[1] if len(tags) > 1 else tags[0]
        if choice is not None:
            group[id(n)] = (id(choice[1]), choice[0], choice[1])
    if untraced:
        raise ValueError(
            "graph: collapse needs to know which module produced each node; run the "
            "forward pass inside `with cr.viz.trace_modules(model): ...`"
        )
    # parameters used only inside one box are drawn inside it (inputs stay outside)
    users: dict[int, set] = {}
    for n in order:
        for p in n._parents:
            users.setdefault(id(p), set()).add(group.get(id(n), (None,))[0])
    for n in order:
        if n._op is None and n._requires_grad and id(n) not in group:
            u = users.get(id(n), set())
            if len(u) == 1 and None not in u:
                key = next(iter(u))
                group[id(n)] = next(v for v in group.values() if v[0] == key)
    return group


def _group_label(key: tuple[int, str, Any], ms: Sequence[Tensor], precision: int) -> str:
    _, path, module = key
    text = repr(module).splitlines()[0] if module is not None else ""
    if len(text) > 60:
        text = text[:57] + "..."
    parts = [f"{path}: {text}" if text and not text.startswith(path) else (text or path)]
    params = [m for m in ms if m._op is None and m._requires_grad]
    if params:
        parts.append("params " + ", ".join(str(p.shape) for p in params))
    outs = [m for m in ms if m._op is not None]
    if outs:
        last = outs[-1]
        parts.append(f"{len(outs)} ops, output shape {last.shape}")
    return "\n".join(parts)
