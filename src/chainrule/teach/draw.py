"""The drawing view: a ledger as a Graphviz picture (DOT text, SVG/PNG via ``dot``).

``cr.viz.graph(t)`` records the ledger of ``t`` and draws it: one box per
node with its name, shape, value and (once gradients are shown) ∂L/∂node;
one edge per (node, successor) pair, however many operand slots the
successor uses the node in. For graphs of scalars each edge carries the
term's local gradient ∂s/∂n (``direction="forward"``) or the term itself,
backpropagated · local = product (``direction="backward"``): the same
numbers as ``print(cr.explain(t))``.

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
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _graph as G
from ._format import format_value
from .ledger import Ledger, build_ledger

__all__ = [
    "Graph",
    "graph",
    "draw_ledger",
    "draw_layers",
    "trace_modules",
    "ModuleTrace",
    "GraphvizNotFoundError",
    "GraphFreedWarning",
    "have_dot",
    "INSTALL_HINT",
]

INSTALL_HINT = (
    "Graphviz's `dot` program was not found on PATH. Install Graphviz to render "
    "graphs: `sudo apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` "
    "(macOS) or `conda install -c conda-forge graphviz`. Without it, Graph.source "
    "still holds the DOT text (Graph.save('g.dot') writes it)."
)

FREED = (
    "part of this graph was freed by backward(); call backward(retain_graph=True) "
    "to draw it afterwards, or draw before backward()"
)


class GraphvizNotFoundError(RuntimeError):
    """Rendering needs Graphviz's ``dot`` program, which is not installed."""


class GraphFreedWarning(UserWarning):
    """The graph being drawn was (partly) freed by ``backward()``."""


def have_dot() -> bool:
    """True when Graphviz's ``dot`` program is on PATH."""
    return shutil.which("dot") is not None


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
        data = self.pipe(fmt)
        _write_atomic(path, data)
        return path

    def save(self, path: str | Path) -> Path:
        """Write the DOT text to ``path``."""
        path = Path(path)
        _write_atomic(path, self.source.encode("utf-8"))
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


def _write_atomic(path: Path, data: bytes) -> None:
    from ..io import atomic_write  # files we write are written atomically

    atomic_write(path, data)


_STYLE = {
    "leaf": 'shape=ellipse, style=filled, fillcolor="#d6e4ff"',
    "const": 'shape=plaintext, fontcolor="#555555"',
    "op": 'shape=box, style="rounded,filled", fillcolor="#f4f4f4"',
    "root": 'shape=box, style="rounded,filled", fillcolor="#ffe1b3", penwidth=2',
    "group": 'shape=box3d, style=filled, fillcolor="#e3f4e3"',
    "note": 'shape=note, style=filled, fillcolor="#fff8c4"',
}


# --------------------------------------------------------------------------
# Which module produced which node: forward hooks
# --------------------------------------------------------------------------


class ModuleTrace:
    """What :func:`trace_modules` recorded: which module produced which node.

    ``modules`` maps id(module) to (path, module); ``calls`` counts the
    module calls seen.
    """

    def __init__(self, names: dict[int, tuple[str, Any]]) -> None:
        self.modules = names
        self.calls = 0

    def path(self, module: Any) -> str:
        return self.modules.get(id(module), (type(module).__name__, module))[0]


@contextlib.contextmanager
def trace_modules(model: Any) -> Iterator[ModuleTrace]:
    """Record which module of ``model`` produced each node, to draw layers as boxes.

    >>> with cr.viz.trace_modules(model):
    ...     loss = loss_fn(model(x), y)
    >>> cr.viz.graph(loss, collapse_modules=True).render("model.svg")

    A forward hook (``register_forward_hook``) on every module of ``model``
    for the duration of the block; the hooks are removed at its end.
    """
    if not hasattr(model, "named_modules"):
        raise TypeError(f"trace_modules: expected an nn.Module, got {type(model).__name__}")
    names = {id(m): (path or type(m).__name__, m) for path, m in model.named_modules()}
    trace = ModuleTrace(names)

    def hook(module: Any, args: Any, kwargs: Any, out: Any) -> None:
        trace.calls += 1
        G.tag_outputs(out, (args, kwargs), names[id(module)][0], module)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for _, m in names.values()]
    try:
        yield trace
    finally:
        for h in handles:
            h.remove()


def _groups(order: Sequence[Any], ids: dict[int, int], collapse: Sequence[Any] | None,
            collapse_modules: bool) -> dict[int, tuple[int, str, Any]]:
    """node id -> (id(module), path, module) for nodes drawn inside a module box."""
    if not collapse and not collapse_modules:
        return {}
    wanted = {id(m) for m in (collapse or [])}
    group: dict[int, tuple[int, str, Any]] = {}
    untraced = True
    for n in order:
        tags = G.tags_of(n)
        if not tags:
            continue
        untraced = False
        choice = None
        if collapse:
            choice = next(((p, m) for p, m in tags if id(m) in wanted), None)
        elif collapse_modules:
            choice = tags[1] if len(tags) > 1 else tags[0]
        if choice is not None:
            group[ids[G.key(n)]] = (id(choice[1]), choice[0], choice[1])
    if untraced:
        raise ValueError(
            "graph: collapse needs to know which module produced each node; run the "
            "forward pass inside `with cr.viz.trace_modules(model): ...`"
        )
    # parameters used only inside one box are drawn inside it (inputs stay outside)
    users: dict[int, set] = {}
    for n in order:
        for p in G.inputs_of(n):
            users.setdefault(ids[G.key(p)], set()).add(group.get(ids[G.key(n)], (None,))[0])
    for n in order:
        nid = ids[G.key(n)]
        if G.is_leaf(n) and G.requires_grad(n) and nid not in group:
            u = users.get(nid, set())
            if len(u) == 1 and None not in u:
                key = next(iter(u))
                group[nid] = next(v for v in group.values() if v[0] == key)
    return group


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------


def graph(
    t: Any,
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
        (left to right), labelled with the local gradient ∂s/∂n when the
        graph is made of scalars. ``backward``: the edges reversed, showing
        the gradient flowing from the output back, each edge labelled with
        its term ``backpropagated · local = product``.
    grads : "auto" | bool
        Show ∂L/∂node in each node. ``True`` computes them now (one backward
        pass that leaves every ``.grad`` untouched); ``"auto"`` does so once
        a backward pass has been run (some leaf has a ``.grad``) or
        ``direction="backward"``.
    seed : array_like, optional
        ∂L/∂t for a non-scalar ``t`` (default 1 for a scalar).
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

    A graph that ``backward()`` already freed is drawn as far as it remains,
    with a note in the picture and a :class:`GraphFreedWarning` (on stderr).

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
        if not G.is_tensor(r):
            raise TypeError(f"graph: expected a Tensor, got {type(r).__name__}")
    order = G.walk(roots, need_values=False, what="graph")
    notes: list[str] = []
    freed = any(G.is_freed(n) for n in order)
    if freed:
        notes.append(FREED)
        warnings.warn(f"graph: {FREED}", GraphFreedWarning, stacklevel=2)
    if grads == "auto":
        grads = direction == "backward" or any(
            G.is_leaf(n) and getattr(n, "_grad", None) is not None for n in order
        )
    root = roots[0]
    can = len(roots) == 1 and G.requires_grad(root) and not freed
    if can and seed is None and G.shape_of(root) and int(_size(root)) != 1:
        can = False
        if grads:
            notes.append(f"gradients not shown: the output has shape {G.shape_of(root)}; "
                         "pass seed=")
    ledger = build_ledger(roots, seed, backward=can, layers=False, precision=precision,
                          what="graph", order=order)
    ids = {G.key(n): i + 1 for i, n in enumerate(order)}
    group_of = _groups(order, ids, collapse, collapse_modules)
    return draw_ledger(ledger, direction=direction, grads=bool(grads), precision=precision,
                       show_values=show_values, max_nodes=max_nodes, title=title, notes=notes,
                       group_of=group_of)


def _size(t: Any) -> int:
    n = 1
    for d in G.shape_of(t):
        n *= d
    return n


def draw_ledger(
    ledger: Ledger,
    *,
    direction: str = "forward",
    grads: bool = True,
    precision: int | None = None,
    show_values: bool = True,
    max_nodes: int = 200,
    title: str | None = None,
    notes: Sequence[str] = (),
    group_of: dict[int, tuple[int, str, Any]] | None = None,
) -> Graph:
    """DOT for a ledger: the same names and numbers as its text view."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"graph: direction must be 'forward' or 'backward', got {direction!r}")
    precision = ledger.precision if precision is None else precision
    notes = list(notes)
    group_of = group_of or {}
    nodes = sorted(ledger.nodes, key=lambda n: n.id)  # forward order
    by_id = {n.id: n for n in nodes}
    v = lambda a: format_value(a, precision)  # noqa: E731
    scalar_graph = all(int(_prod(n.shape)) == 1 for n in nodes)
    show_grads = grads and ledger.has_grads

    # ---- units: a node, or a group of nodes drawn as one box -------------
    unit_of: dict[int, str] = {}
    units: list[str] = []
    members: dict[str, list[Any]] = {}
    for n in nodes:
        key = group_of.get(n.id)
        uid = f"g{key[0]}" if key is not None else f"n{n.id}"
        unit_of[n.id] = uid
        if uid not in members:
            members[uid] = []
            units.append(uid)
        members[uid].append(n)
    group_label = {f"g{val[0]}": val for val in group_of.values()}

    kept = units
    omitted: list[str] = []
    if max_nodes is not None and len(units) > max_nodes:
        # keep the boxes nearest the output: the tail of the forward order
        cut = len(units) - max_nodes
        omitted, kept = units[:cut], units[cut:]
        ops = Counter((m.op or m.kind) for u in omitted for m in members[u])
        detail = ", ".join(f"{op} x{c}" for op, c in ops.most_common(6))
        notes.append(
            f"{len(omitted)} of {len(units)} boxes omitted (max_nodes={max_nodes}): {detail}"
        )
    kept_set = set(kept)

    lines = ["digraph chainrule {", f"  rankdir={'LR' if direction == 'forward' else 'RL'};",
             '  charset="UTF-8";', '  node [fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9];']
    graph_label = "\n".join(([title] if title else []) + notes)
    if graph_label:
        lines.append(f'  label="{_esc(graph_label)}"; labelloc=t; fontname="Helvetica";')

    for uid in kept:
        ms = members[uid]
        if uid in group_label:
            label, style = _group_label(group_label[uid], ms), _STYLE["group"]
        else:
            n = ms[0]
            label = _node_label(n, v, show_grads, show_values)
            style = _STYLE["root" if n.is_root else n.kind]
        lines.append(f'  {uid} [label="{_esc(label)}", {style}];')
    if omitted:
        lines.append(f'  omitted [label="{_esc(notes[-1])}", {_STYLE["note"]}];')

    drawn: set[tuple[str, str]] = set()
    for n in nodes:
        nu = unit_of[n.id]
        if nu not in kept_set:
            continue
        for pid in dict.fromkeys(n.inputs):  # one edge per successor, whatever the slots
            p = by_id[pid]
            pu = unit_of[pid]
            if pu == nu:
                continue
            src = pu if pu in kept_set else "omitted"
            attrs = []
            single = nu not in group_label and pu not in group_label and src != "omitted"
            term = next((t for t in p.terms if t.successor == n.id), None)
            if p.kind == "const":
                # no gradient flows into a constant: a faint edge, no label
                attrs.append('style=dashed, color="#999999"')
                if direction == "backward":
                    attrs.append("arrowhead=none")
            elif single and scalar_graph and term is not None and term.local is not None:
                if direction == "forward":
                    text = f"∂{n.name}/∂{p.name} = {v(term.local)}"
                else:
                    text = f"{v(term.upstream)} · {v(term.local)} = {v(term.product)}"
                attrs.append(f'label="{_esc(text)}"')
            if (src, nu) in drawn and not attrs:
                continue
            drawn.add((src, nu))
            if direction == "backward":
                if p.kind != "const":
                    attrs.append('color="#b03a2e", fontcolor="#b03a2e"')
                lines.append(f"  {nu} -> {src} [{', '.join(attrs)}];")
            else:
                lines.append(f"  {src} -> {nu}" + (f" [{', '.join(attrs)}];" if attrs else ";"))
    lines.append("}")
    return Graph("\n".join(lines) + "\n", notes)


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _node_label(n: Any, v: Any, grads: bool, values: bool) -> str:
    if n.op is not None:
        head = n.name if n.name.startswith(n.op + "#") else f"{n.name} = {n.op}"
    else:
        head = n.name
    parts = [head]
    if len(n.shape):
        parts.append(f"shape {tuple(n.shape)}")
    unnamed_number = n.kind == "const" and _prod(n.shape) == 1 and n.value is not None and (
        n.name == format_value(n.value, 6))
    if values and not unnamed_number and n.value is not None:
        parts.append(f"value {v(n.value)}")
    if grads and n.grad is not None:
        parts.append(f"grad {v(n.grad)}")
    return "\n".join(parts)


def _group_label(key: tuple[int, str, Any], ms: Sequence[Any]) -> str:
    _, path, module = key
    text = repr(module).splitlines()[0] if module is not None else ""
    if len(text) > 60:
        text = text[:57] + "..."
    parts = [f"{path}: {text}" if text and not text.startswith(path) else (text or path)]
    params = [m for m in ms if m.kind == "leaf"]
    if params:
        parts.append("params " + ", ".join(str(tuple(p.shape)) for p in params))
    outs = [m for m in ms if m.kind == "op"]
    if outs:
        parts.append(f"{len(outs)} ops, output shape {tuple(outs[-1].shape)}")
    return "\n".join(parts)


def draw_layers(ledger: Ledger, *, precision: int | None = None,
                title: str | None = None) -> Graph:
    """The layer view: one box per layer with z^l, a^l and δ^l, the δ recursion on the edges.

    Forward edges carry a^(l-1) into layer l; the dashed red edges going back
    carry ∂C/∂a^l = (W^(l+1))ᵀ δ^(l+1), the sum over successors that the
    notes' recursion multiplies by σ'(z^l). Needs the ledger's layer records
    (``cr.explain(loss, model=model)`` on a forward pass recorded inside
    ``cr.keep_values()``).
    """
    from ._format import superscript

    if not ledger.layers:
        raise ValueError(
            "graph: this ledger has no layer records; use cr.explain(loss, model=model) on a "
            "forward pass recorded inside `with cr.keep_values():`"
        )
    precision = ledger.precision if precision is None else precision
    v = lambda a: format_value(a, precision)  # noqa: E731
    C = ledger.root_name
    first = ledger.layers[0]
    lines = ["digraph layers {", "  rankdir=BT;", '  charset="UTF-8";',
             '  node [fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9];']
    if title:
        lines.append(f'  label="{_esc(title)}"; labelloc=t; fontname="Helvetica";')
    lines.append(f'  in [label="{_esc(f"a⁰ = x  shape {tuple(first.a_prev.shape)}")}'
                 f'\\n{_esc(v(first.a_prev))}", {_STYLE["leaf"]}];')
    for rec in ledger.layers:
        s = superscript(rec.index)
        body = [f"layer {rec.index}" + (f" (module '{rec.module}')" if rec.module else ""),
                f"z{s} = W{s} a{superscript(rec.index - 1)} + b{s}: {v(rec.z)}",
                f"a{s} = {rec.activation}(z{s}): {v(rec.a)}" if rec.activation != "identity"
                else f"a{s} = z{s}",
                f"δ{s} = ∂{C}/∂z{s}: {v(rec.delta)}",
                f"∂{C}/∂W{s}: {v(rec.dW)}"]
        lines.append(f'  L{rec.index} [label="{_esc(chr(10).join(body))}", {_STYLE["op"]}];')
    root = ledger.node(ledger.root)
    lines.append(f'  out [label="{_esc(f"{C} = {v(root.value)}")}", {_STYLE["root"]}];')
    prev = "in"
    for rec in ledger.layers:
        shape = tuple(np.shape(rec.W["value"]))
        text = f"W{superscript(rec.index)} {shape}"
        lines.append(f'  {prev} -> L{rec.index} [label="{_esc(text)}"];')
        prev = f"L{rec.index}"
    lines.append(f"  {prev} -> out;")
    red = 'color="#b03a2e", fontcolor="#b03a2e", style=dashed, constraint=false'
    last = ledger.layers[-1]
    lines.append(f'  out -> L{last.index} [label="{_esc(f"∂{C}/∂a{superscript(last.index)}")}", '
                 f"{red}];")
    for here, after in zip(ledger.layers, ledger.layers[1:]):
        s1 = superscript(after.index)
        text = f"(W{s1})ᵀ δ{s1} = {v(here.dC_da)}"
        lines.append(f'  L{after.index} -> L{here.index} [label="{_esc(text)}", {red}];')
    lines.append("}")
    return Graph("\n".join(lines) + "\n", list(ledger.notes))
