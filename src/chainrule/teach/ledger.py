"""The ledger: one backward pass, written down the way the notes teach it.

The notes compute the gradient of the output L with respect to a node n
whose successors (the nodes computed from n) are s_1 .. s_k as

    ∂L/∂n = Σ_j  ∂L/∂s_j · ∂s_j/∂n
                 (backpropagated gradient) · (local gradient)

A :class:`Ledger` holds exactly that, per node, in the order the engine's
backward walk visits the nodes: the node's name, op and value, its
backpropagated gradient ∂L/∂n, and one :class:`TermRecord` per successor
(∂L/∂s, ∂s/∂n summed over the operand slots where s uses n, their product,
and the sum over broadcast axes when there was one). For a model it also
holds one :class:`LayerRecord` per layer (z^l, a^l, δ^l, ∂C/∂W^l; see
:mod:`chainrule.teach.layers`).

Every view reads the ledger and nothing else: ``to_text``, ``to_markdown``,
``to_html`` (what Jupyter shows), ``graph`` (the drawing) and ``to_json``
(the web playground). So they all show the same numbers, and those numbers
are the engine's: the ledger is filled by the engine's own backward walk
(``run_backward`` with an observer), once, with no ``.grad`` written, the
graph kept and gradient hooks not run.

>>> b = cr.tensor(1.0, dtype=np.float64, requires_grad=True, name="b")
>>> x = (b * b).named("x")
>>> y = (2 * b + 1.5).named("y")
>>> f = (x * y).named("f")
>>> ledger = cr.explain(f)
>>> [float(t.product) for t in ledger["b"].terms]     # via x, via 2*b
[7.0, 2.0]
>>> ledger.grad("b")
array(9.)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _graph as G
from ._format import format_value

__all__ = ["Ledger", "NodeRecord", "TermRecord", "LayerRecord", "build_ledger", "explain",
           "SCHEMA", "VERSION", "ExplainError"]

SCHEMA = "chainrule.ledger"
VERSION = 1

# Show a local gradient that is not a diagonal (softmax) as its full Jacobian
# when it has at most this many entries: the small vectors of worked examples.
JACOBIAN_LIMIT = 256


class ExplainError(RuntimeError):
    """``cr.explain`` cannot record this graph (one sentence saying what to do).

    A RuntimeError, like the errors ``backward()`` raises for the same causes.
    """


@dataclass
class TermRecord:
    """One term ∂L/∂s · ∂s/∂n of a node n's sum over its successors s.

    ``local`` is ∂s/∂n summed over ``slots`` (the operand slots of s that
    are n: ``[0, 1]`` for ``b * b``) when it is a diagonal (elementwise ops)
    or a number (graphs of scalars); then ``upstream * local`` is the term,
    in s's shape, and ``product`` is that summed over ``broadcast_axes`` to
    n's shape. Otherwise ``local`` is None, ``formula`` says what the VJP
    does, and ``jacobian`` holds ∂s/∂n in full when it is small.
    ``product`` is always what the engine added into ∂L/∂n.
    """

    successor: int
    successor_name: str
    op: str
    upstream: np.ndarray
    local: np.ndarray | None
    product: np.ndarray
    slots: list[int]
    broadcast_axes: list[int] | None = None
    unreduced: np.ndarray | None = None
    slot_locals: list[np.ndarray] | None = None
    jacobian: np.ndarray | None = None
    formula: str | None = None
    seed: bool = False  # the successor is the output: upstream is the seed

    @property
    def value(self) -> np.ndarray:
        """The term (same as ``product``)."""
        return self.product

    @property
    def axes(self) -> tuple[int, ...] | None:
        return None if self.broadcast_axes is None else tuple(self.broadcast_axes)


@dataclass
class NodeRecord:
    """One node: its name, op, value, ∂L/∂node and the terms of that sum."""

    id: int
    name: str
    op: str | None
    kind: str  # "op", "leaf" (a leaf that requires grad) or "const"
    shape: tuple[int, ...]
    dtype: str
    value: np.ndarray | None
    grad: np.ndarray | None
    visit: int  # 1-based position in the backward walk; 0: the walk never reached it
    terms: list[TermRecord] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)  # operand ids, in slot order
    expr: str | None = None  # "u + b": the op applied to its operands' names
    role: str | None = None
    activation: str | None = None
    is_root: bool = False

    @property
    def index(self) -> int:
        """Position in the backward walk (same as ``visit``)."""
        return self.visit


from .layers import LayerRecord, build_layers  # noqa: E402  (layers uses the records above)


class Ledger:
    """The record of one backward pass (see the module docstring).

    ``nodes`` are in the order the backward walk visited them, the output
    first; then the nodes it never reached, then constants. ``ledger["w"]``
    is the record of the node named ``w``, ``ledger.grad("w")`` its ∂L/∂w.
    ``layers`` holds the per-layer records of a model (else it is empty).
    ``print(ledger)`` prints the text view.
    """

    def __init__(
        self,
        nodes: list[NodeRecord],
        root: int,
        root_name: str,
        layers: list[LayerRecord] | None = None,
        notes: list[str] | None = None,
        *,
        precision: int = 4,
        full: bool = False,
        grads: bool = True,
    ) -> None:
        self.nodes = nodes
        self.root = root
        self.root_name = root_name
        self.layers = layers or []
        self.notes = notes or []
        self.precision = precision
        self.full = full
        self.has_grads = grads  # False: a drawing of the structure only (no backward pass)
        self._by_id = {n.id: n for n in nodes}

    # ----- lookup ----------------------------------------------------------

    def __getitem__(self, name: str) -> NodeRecord:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes if n.kind != "const")
        raise KeyError(f"explain: no node named {name!r}; the nodes are: {known}")

    def node(self, node_id: int) -> NodeRecord:
        """The record with id ``node_id``."""
        return self._by_id[node_id]

    def __iter__(self):  # noqa: ANN204
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def rows(self) -> list[NodeRecord]:
        """The nodes that can carry a gradient (constants left out), in walk order."""
        return [n for n in self.nodes if n.kind != "const"]

    def grad(self, name: str) -> np.ndarray | None:
        """∂L/∂node for the node called ``name``."""
        return self[name].grad

    def block(self, name: str) -> str:
        """The text view's block for one node: its value, its terms, their sum.

        >>> print(ledger.block("b"))          # doctest: +SKIP
        [4] b = 3  (leaf)
            via x:  ∂f/∂x · ∂x/∂b = 7 · 1 = 7
            via y:  ∂f/∂y · ∂y/∂b = 2 · 1 = 2
            ∂f/∂b = 7 + 2 = 9
        """
        from .views import node_lines

        return "\n".join(node_lines(self, self[name]))

    def layer(self, index: int) -> LayerRecord:
        """The record of layer ``index`` (1 = the first hidden layer, as in note 001)."""
        for rec in self.layers:
            if rec.index == index:
                return rec
        raise KeyError(f"explain: no layer {index}; the layers are 1..{len(self.layers)}")

    # ----- views -------------------------------------------------------------

    def to_text(self) -> str:
        """The plain-text trace: one block per node, output first, then the layers."""
        from .views import ledger_text

        return ledger_text(self)

    __str__ = to_text

    def __repr__(self) -> str:
        extra = f", {len(self.layers)} layers" if self.layers else ""
        return f"<Ledger of ∂{self.root_name}: {len(self.rows)} nodes{extra}; print() it>"

    def to_markdown(self) -> str:
        """Markdown tables: the nodes with their terms, then the layers."""
        from .views import ledger_markdown

        return ledger_markdown(self)

    def to_html(self) -> str:
        """HTML tables (what Jupyter shows)."""
        from .views import ledger_html

        return ledger_html(self)

    def _repr_html_(self) -> str:
        return self.to_html()

    def graph(self, view: str = "nodes", **kwargs: Any) -> Any:
        """The drawing (a :class:`chainrule.teach.draw.Graph`); see ``cr.viz.graph``.

        ``view="layers"``: one box per layer with z^l, a^l, δ^l and the δ
        recursion on the edges (needs layer records).
        """
        from .draw import draw_layers, draw_ledger

        if view == "layers":
            return draw_layers(self, **kwargs)
        if view != "nodes":
            raise ValueError(f"graph: view must be 'nodes' or 'layers', not {view!r}")
        return draw_ledger(self, **kwargs)

    # ----- JSON --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data in the documented schema (docs/ledger.md)."""
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "root": self.root,
            "root_name": self.root_name,
            "has_grads": self.has_grads,
            "nodes": [_node_dict(n) for n in self.nodes],
            "layers": [rec.to_dict() for rec in self.layers],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = None) -> str:
        """``to_dict()`` as a JSON string (strict JSON: non-finite numbers are strings)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        """Rebuild a ledger from ``to_dict()`` output (to re-render a saved one)."""
        if data.get("schema") != SCHEMA:
            raise ExplainError(f"from_dict: not a chainrule ledger (schema {data.get('schema')!r})")
        if data.get("version") != VERSION:
            raise ExplainError(
                f"from_dict: ledger version {data.get('version')!r}; this chainrule reads "
                f"version {VERSION}"
            )
        nodes = [_node_from(d) for d in data["nodes"]]
        layers = [LayerRecord.from_dict(d) for d in data.get("layers", [])]
        return cls(nodes, data["root"], data["root_name"], layers, data.get("notes", []),
                   grads=data.get("has_grads", True))

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------
# Arrays in JSON: nested lists, full precision, non-finite values as strings
# --------------------------------------------------------------------------


def encode(a: Any) -> Any:
    """An array as nested lists (a 0-d array as a bare number); NaN/Inf as strings."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype.kind == "c":
        return {"real": encode(a.real), "imag": encode(a.imag)}
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        obj = a.astype(object)
        obj[np.isnan(a)] = "nan"
        obj[np.isposinf(a)] = "inf"
        obj[np.isneginf(a)] = "-inf"
        finite = np.isfinite(a)
        obj[finite] = [float(v) for v in a[finite]]
        return obj.tolist()
    if a.dtype.kind == "f":
        return a.astype(np.float64).tolist()
    return a.tolist()


_WORDS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def decode(x: Any, dtype: Any = np.float64) -> np.ndarray | None:
    """What :func:`encode` wrote, as an array (None stays None)."""
    return None if x is None else decode_array(x, dtype, "array")


def decode_array(x: Any, dtype: Any = np.float64, what: str = "array") -> np.ndarray:
    """Like :func:`decode`, for an entry that must hold an array (``what`` names it)."""
    if x is None:  # np.asarray(None, float) would be a NaN, not an error
        raise ExplainError(f"from_dict: {what} is null; a saved ledger always has it")
    if isinstance(x, dict) and "real" in x:
        return decode_array(x["real"], np.float64, what) + 1j * decode_array(
            x["imag"], np.float64, what)

    def fix(v: Any) -> Any:
        if isinstance(v, list):
            return [fix(u) for u in v]
        return _WORDS.get(v, v) if isinstance(v, str) else v

    return np.asarray(fix(x), dtype=dtype)


def _term_dict(t: TermRecord) -> dict[str, Any]:
    return {
        "successor": t.successor,
        "successor_name": t.successor_name,
        "op": t.op,
        "upstream": encode(t.upstream),
        "local": encode(t.local),
        "product": encode(t.product),
        "slots": list(t.slots),
        "broadcast_axes": None if t.broadcast_axes is None else list(t.broadcast_axes),
        "unreduced": encode(t.unreduced),
        "slot_locals": None if t.slot_locals is None else [encode(a) for a in t.slot_locals],
        "jacobian": encode(t.jacobian),
        "formula": t.formula,
        "seed": t.seed,
    }


def _node_dict(n: NodeRecord) -> dict[str, Any]:
    return {
        "id": n.id,
        "name": n.name,
        "op": n.op,
        "kind": n.kind,
        "shape": list(n.shape),
        "dtype": n.dtype,
        "value": encode(n.value),
        "grad": encode(n.grad),
        "visit": n.visit,
        "terms": [_term_dict(t) for t in n.terms],
        "inputs": list(n.inputs),
        "expr": n.expr,
        "role": n.role,
        "activation": n.activation,
        "is_root": n.is_root,
    }


def _node_from(d: dict[str, Any]) -> NodeRecord:
    dt = np.dtype(d["dtype"]) if d["dtype"] else np.float64
    terms = [
        TermRecord(
            successor=t["successor"], successor_name=t["successor_name"], op=t["op"],
            upstream=decode_array(t["upstream"], dt, f"the upstream of a term of {d['name']!r}"),
            local=decode(t["local"], dt),
            product=decode_array(t["product"], dt, f"the product of a term of {d['name']!r}"),
            slots=list(t["slots"]),
            broadcast_axes=t.get("broadcast_axes"), unreduced=decode(t.get("unreduced"), dt),
            slot_locals=None if t.get("slot_locals") is None
            else [decode_array(a, dt, f"a slot local of {d['name']!r}")
                  for a in t["slot_locals"]],
            jacobian=decode(t.get("jacobian"), np.float64), formula=t.get("formula"),
            seed=bool(t.get("seed", False)),
        )
        for t in d["terms"]
    ]
    return NodeRecord(
        id=d["id"], name=d["name"], op=d["op"], kind=d["kind"], shape=tuple(d["shape"]),
        dtype=d["dtype"], value=decode(d["value"], dt), grad=decode(d["grad"], dt),
        visit=d["visit"], terms=terms, inputs=list(d.get("inputs", [])), expr=d.get("expr"),
        role=d.get("role"), activation=d.get("activation"), is_root=bool(d.get("is_root")),
    )


# --------------------------------------------------------------------------
# Building a ledger: one walk for the structure, one observed backward pass
# --------------------------------------------------------------------------


class _Recorder:
    """Collects the engine's visit and term events (``run_backward(observer=...)``)."""

    def __init__(self) -> None:
        self.visited: list[Any] = []
        self.grads: dict[int, np.ndarray] = {}
        # (parent key, successor key) -> [slots, summed contribution]
        self.terms: dict[tuple[int, int], list[Any]] = {}

    def visit(self, node: Any, g: Any) -> None:
        self.visited.append(node)
        # a copy: the engine may later reuse the buffer
        self.grads[G.key(node)] = np.array(g, copy=True)

    def term(self, node: Any, slot: int, parent: Any, contribution: Any) -> None:
        pair = (G.key(parent), G.key(node))
        entry = self.terms.get(pair)
        if entry is None:
            # a copy: the engine adds later contributions into the first one in place
            self.terms[pair] = [[slot], np.array(contribution, copy=True)]
        else:  # the successor uses this node in another slot too: one term, summed
            entry[0].append(slot)
            entry[1] = entry[1] + contribution


def _broadcast_axes(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    """The axes of ``out_shape`` that broadcasting added or stretched for ``shape``."""
    lead = len(out_shape) - len(shape)
    return list(range(lead)) + [
        lead + i for i, n in enumerate(shape) if n == 1 and out_shape[lead + i] != 1
    ]


def _check_root(t: Any, seed: Any, what: str) -> None:
    if not G.is_tensor(t):
        raise TypeError(f"{what}: expected a Tensor, got {type(t).__name__}")
    if not G.requires_grad(t):
        raise ExplainError(
            f"{what}: this tensor has no graph, since nothing it was computed from requires "
            "grad (or it was computed under no_grad()); create the inputs with "
            "requires_grad=True"
        )
    if G.is_freed(t):
        raise ExplainError(
            f"{what}: the graph behind this tensor was freed by an earlier backward(); call "
            f"{what} before backward(), or call backward(retain_graph=True)"
        )
    if seed is None and G.value_of(t, what).size != 1:
        raise ExplainError(
            f"{what}: the output has shape {G.shape_of(t)}, not a scalar, and a backward pass "
            "starts from one number; pass seed= (the gradient of the output, same shape) or "
            "reduce it first (y.sum())"
        )


def _names(order: list[Any], roots: list[Any]) -> dict[int, str]:
    """A readable, unique name per node: the tensor's name, else ``op#k``.

    The output is ``L`` unless named; parameters are named from the state
    dict (``0.weight``) by ``Parameter.name``; unnamed leaves that require
    grad are ``leaf#k``; constants show their value when they are one number.
    """
    names: dict[int, str] = {}
    used: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    given = {G.user_name(t) for t in order}
    for t in order:
        k = G.key(t)
        name = G.user_name(t)
        if name is None and len(roots) == 1 and t is roots[0] and "L" not in given:
            name = "L"  # the notes' name for the output being differentiated
        if name is None:
            rule = G.rule_of(t)
            value = G.value_or_none(t)
            if rule is None and not G.requires_grad(t) and value is not None and value.size == 1:
                names[k] = format_value(value, 6)
                continue
            kind = rule.name if rule is not None else ("leaf" if G.requires_grad(t) else "const")
            counts[kind] += 1
            name = f"{kind}#{counts[kind]}"
        used[name] += 1
        names[k] = name if used[name] == 1 else f"{name}#{used[name]}"
    return names


def node_names(order: list[Any]) -> dict[int, str]:
    """The names the ledger gives the nodes of ``order`` (keyed by ``_graph.key``)."""
    return _names(order, [])


def _bare(name: str) -> str:
    """``(w*x+b)`` -> ``w*x+b`` when the parentheses enclose the whole name."""
    if not (name.startswith("(") and name.endswith(")")):
        return name
    depth = 0
    for i, ch in enumerate(name):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and i < len(name) - 1:
            return name
    return name[1:-1]


def _expr(rule: Any, args: list[str]) -> str:
    template = rule.show or f"{rule.name}(" + ", ".join(f"{{{i}}}" for i in range(len(args))) + ")"
    if not rule.show and len(args) == 1:
        args = [_bare(args[0])]  # sigmoid(w*x+b), not sigmoid((w*x+b))
    try:
        return template.format(*args)
    except (IndexError, KeyError):  # a template written for fewer operands
        return f"{rule.name}({', '.join(args)})"


def _formula(rule: Any, slots: list[int], names: list[str], out: str, g: str) -> str | None:
    if not rule.grads:
        return None
    parts = []
    for s in slots:
        # a transposed gradient reads (∂L/∂h)ᵀ, not ∂L/∂hᵀ
        text = rule.grads[min(s, len(rule.grads) - 1)].replace("{g}ᵀ", "({g})ᵀ")
        try:
            parts.append(text.format(*names, g=g, out=out))
        except (IndexError, KeyError):
            return None
    return " + ".join(parts)


def build_ledger(
    roots: Any,
    seed: Any = None,
    *,
    backward: bool = True,
    model: Any = None,
    layers: bool | str = "auto",
    neurons: bool = False,
    param_names: str = "state_dict",
    precision: int = 4,
    full: bool = False,
    what: str = "explain",
    order: list[Any] | None = None,
) -> Ledger:
    """Record the graph behind ``roots`` (and, with ``backward``, one backward pass).

    ``backward=False`` records the structure and values only (a drawing of
    several outputs, or of one that has no scalar gradient to show).
    ``order``: the caller's ``_graph.walk(roots)``, if it already has it.
    See :func:`explain` for the other arguments.
    """
    roots = list(roots) if isinstance(roots, (list, tuple)) else [roots]
    if param_names not in ("state_dict", "layer"):
        raise ExplainError(f"{what}: param_names must be 'state_dict' or 'layer', "
                           f"not {param_names!r}")
    for r in roots:
        if not G.is_tensor(r):
            raise TypeError(f"{what}: expected a Tensor, got {type(r).__name__}")
    if backward:
        _check_root(roots[0], seed, what)
    order = G.walk(roots, need_values=False, what=what) if order is None else order
    notes: list[str] = []
    missing = [t for t in order if G.value_or_none(t) is None]
    if missing:
        notes.append(
            f"{len(missing)} value(s) were not kept by the forward pass (chainrule keeps only "
            "what backward needs) and show as 'not kept'; record the forward pass inside "
            "`with cr.keep_values():` to see every value"
        )
    rec = _Recorder()
    if backward:
        root = roots[0]
        hooked = G.has_grad_hooks(order)
        if hooked:
            notes.append(f"{hooked} node(s) have gradient hooks (register_hook); they were not "
                         "run, so the gradients shown are the chain rule's alone")
        G.observed_backward(root, seed, rec, order)
    tops = G.root_items(order, roots)  # the roots as vertices of this walk
    names = _names(order, tops)
    fwd_pos = {G.key(t): i for i, t in enumerate(order)}
    ids = {G.key(t): i + 1 for i, t in enumerate(order)}  # ids: forward order, from 1
    root_keys = {G.key(r) for r in tops}
    item_of = {G.key(t): t for t in order}

    # ---- one term per (node, successor), locals computed once per successor ----
    locals_cache: dict[int, list[np.ndarray | None]] = {}
    terms_of: dict[int, list[tuple[int, TermRecord]]] = {}
    for (pk, sk), (slots, product) in rec.terms.items():
        term = _term(item_of[sk], item_of[pk], slots, rec.grads[sk], product, ids,
                     locals_cache, sk in root_keys)
        terms_of.setdefault(pk, []).append((fwd_pos[sk], term))

    visit = {G.key(t): i + 1 for i, t in enumerate(rec.visited)}
    records: dict[int, NodeRecord] = {}
    for t in order:
        k = G.key(t)
        rule = G.rule_of(t)
        kind = "op" if rule is not None else ("leaf" if G.requires_grad(t) else "const")
        records[k] = NodeRecord(
            id=ids[k],
            name=names[k],
            op=rule.name if rule is not None else None,
            kind=kind,
            shape=G.shape_of(t),
            dtype=str(G.dtype_of(t)),
            value=_safe_value(t),
            grad=rec.grads.get(k),
            visit=visit.get(k, 0),
            terms=[term for _, term in sorted(terms_of.get(k, []), key=lambda p: p[0])],
            inputs=[ids[G.key(p)] for p in G.inputs_of(t)],
            role=rule.role if rule is not None else None,
            activation=rule.activation if rule is not None else None,
            is_root=k in root_keys,
        )

    layer_recs: list[LayerRecord] = []
    if backward and layers:
        layer_recs = build_layers(order, records, ids, model=model, neurons=neurons,
                                  explicit=layers is True or model is not None, notes=notes,
                                  what=what)
        _layer_names(layer_recs, records, param_names)
    _display(records, item_of, ids, tops)

    # walk order first (the order the notes compute backpropagated gradients
    # in), then what the walk never reached, then constants, in forward order
    ordered = [records[G.key(t)] for t in rec.visited]
    ordered += [records[G.key(t)] for t in order
                if G.key(t) not in visit and records[G.key(t)].kind != "const"]
    ordered += [records[G.key(t)] for t in order if records[G.key(t)].kind == "const"]
    root_rec = records[G.key(tops[0])]
    return Ledger(ordered, root_rec.id, root_rec.name, layer_recs, notes,
                  precision=precision, full=full, grads=backward)


def _safe_value(t: Any) -> np.ndarray | None:
    value = G.value_or_none(t)
    return None if value is None else np.asarray(value)


def _term(succ: Any, parent: Any, slots: list[int], upstream: np.ndarray, product: np.ndarray,
          ids: dict[int, int], cache: dict[int, list], is_root: bool) -> TermRecord:
    rule = G.rule_of(succ)
    assert rule is not None  # a successor is an op
    sk = G.key(succ)
    s_shape, p_shape = G.shape_of(succ), G.shape_of(parent)
    # a successor that is one number (a loss, a sum) has a gradient for its
    # local gradient: ∂s/∂n, in n's shape (for softmax cross-entropy, (p - y)/N)
    scalar_out = int(np.prod(s_shape)) == 1
    local = unreduced = axes = slot_locals = jac = None
    if rule.elementwise or scalar_out:
        if sk not in cache:
            cache[sk] = G.local_gradients(succ, broadcast=rule.elementwise)
        per_slot = [x for x in (cache[sk][s] for s in slots) if x is not None]
        if len(per_slot) == len(slots):
            local = per_slot[0] if len(per_slot) == 1 else sum(per_slot[1:], per_slot[0])
            slot_locals = per_slot if len(per_slot) > 1 else None
            if rule.elementwise and p_shape != s_shape:
                # the VJP of a broadcast op computes g * local in the output's
                # shape, then sums it back to the input's shape: keep both steps
                unreduced = upstream * local
                axes = _broadcast_axes(p_shape, s_shape)
            elif np.shape(local) != p_shape:
                local = slot_locals = None  # not a diagonal this view can show
    if local is None and len(s_shape) <= 1 and len(p_shape) <= 1:
        # a vector-to-vector op that is not elementwise (softmax): small
        # Jacobians are shown whole, the matrix the notes multiply by
        size = int(np.prod(s_shape)) * int(np.prod(p_shape))
        if 1 < size <= JACOBIAN_LIMIT:
            parts = [p for p in (G.local_jacobian(succ, s) for s in slots) if p is not None]
            if len(parts) == len(slots):
                jac = sum(parts[1:], parts[0])
    return TermRecord(
        successor=ids[sk],
        successor_name="",  # set by _display, once every name is final
        op=rule.name,
        upstream=upstream,
        local=None if local is None else np.asarray(local),
        product=np.asarray(product),
        slots=sorted(slots),
        broadcast_axes=axes,
        unreduced=unreduced,
        slot_locals=slot_locals,
        jacobian=jac,
        seed=is_root,
    )


def _display(records: dict[int, NodeRecord], item_of: dict[int, Any], ids: dict[int, int],
             roots: list[Any]) -> None:
    """The texts built from names: each op's expression, each term's successor and formula."""
    by_id = {r.id: r for r in records.values()}
    key_of = {v: k for k, v in ids.items()}
    root_name = records[G.key(roots[0])].name
    for k, r in records.items():
        rule = G.rule_of(item_of[k])
        if rule is None:
            continue
        in_names = [by_id[i].name for i in r.inputs]
        r.expr = _expr(rule, in_names)
    for r in records.values():
        for t in r.terms:
            succ = by_id[t.successor]
            t.successor_name = succ.name
            rule = G.rule_of(item_of[key_of[succ.id]])
            assert rule is not None  # a successor is an op
            if rule.grads:  # what the rule's VJP computes, written out (matmul, losses)
                g = "seed" if t.seed else f"∂{root_name}/∂{succ.name}"
                t.formula = _formula(rule, t.slots, [by_id[i].name for i in succ.inputs],
                                     succ.name, g)


def _layer_names(layers: list[LayerRecord], records: dict[int, NodeRecord],
                 param_names: str) -> None:
    """The notes' names for what the ledger would call ``op#k``: the first layer's
    input x, each layer's z^l and a^l; with ``param_names="layer"`` also each
    layer's parameters W¹, b¹ ... (instead of their state-dict names)."""
    from ._format import superscript

    if not layers:
        return
    by_id = {r.id: r for r in records.values()}
    taken = {r.name for r in records.values()}

    def rename(node_id: int, new: str) -> None:
        node = by_id[node_id]
        if "#" in node.name and node.name.split("#")[0] in (node.op or node.kind, "leaf",
                                                             "const") and new not in taken:
            node.name = new  # only names the ledger made up (op#k), never the user's
            taken.add(new)

    rename(layers[0].input_node, "x")
    for rec in layers:
        rename(rec.z_node, f"z{superscript(rec.index)}")
        if rec.a_node != rec.z_node:
            rename(rec.a_node, f"a{superscript(rec.index)}")
    if param_names != "layer":
        return
    for rec in layers:
        for param, symbol in ((rec.W, "W"), (rec.b, "b")):
            if param is not None and param["node"] in by_id:
                new = f"{symbol}{superscript(rec.index)}"
                by_id[param["node"]].name = new
                param["name"] = new


def explain(
    t: Any,
    seed: Any = None,
    *,
    model: Any = None,
    neurons: bool = False,
    layers: bool | str = "auto",
    param_names: str = "state_dict",
    precision: int = 4,
    full: bool = False,
) -> Ledger:
    """Run one backward pass from ``t`` and write down every step, in the notes' terms.

    Parameters
    ----------
    t : Tensor
        The output L: one number, or give ``seed``.
    seed : array_like, optional
        ∂L/∂t, same shape as ``t``, for an output that is not one number.
    model : nn.Module, optional
        Adds one record per layer (z^l, a^l, δ^l, ∂C/∂W^l); found
        automatically when the graph's weights belong to a module. The
        forward pass must have kept z^l: record it inside
        ``with cr.keep_values():`` (which also stops ``nn.Sequential`` from
        fusing Linear + ReLU into one node).
    neurons : bool
        Also record, per layer and neuron j, the notes' sum over the
        successors k: δ_k^(l+1) · W_kj^(l+1) (large: for small networks).
    layers : "auto" | bool
        ``False`` skips the layer records.
    param_names : "state_dict" | "layer"
        Name module parameters ``0.weight`` (default) or ``W¹``, ``b¹``.
    precision : int
        Significant digits in the text views (``full=True``: every digit).

    Returns
    -------
    Ledger
        ``print()`` it, ``.to_markdown()``, ``.to_html()``, ``.graph()``,
        ``.to_json()``; ``ledger["w"].grad``, ``ledger["w"].terms``.

    Nothing the user owns changes: no ``.grad`` is written, the graph is
    kept, and gradient hooks are not run.

    Examples
    --------
    >>> a = cr.tensor(-1.0, dtype=np.float64, requires_grad=True, name="a")
    >>> b = cr.tensor(3.0, dtype=np.float64, requires_grad=True, name="b")
    >>> c = cr.tensor(4.0, dtype=np.float64, requires_grad=True, name="c")
    >>> f = ((a + b).named("x") * (b + c).named("y")).named("f")
    >>> cr.explain(f).grad("b")      # 7 + 2
    array(9.)
    """
    return build_ledger(t, seed, model=model, neurons=neurons, layers=layers,
                        param_names=param_names, precision=precision, full=full)
