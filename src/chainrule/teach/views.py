"""Text, Markdown and HTML views of a ledger: they format its numbers, never compute them.

Notation (the notes'): for a node n with successors s, the term of s is
``∂L/∂s · ∂s/∂n`` (backpropagated gradient · local gradient). When s is the
output itself its backpropagated gradient is the seed (1 for a scalar), and
the term is written ``seed · ∂L/∂n``. Products of arrays are elementwise
(``⊙``); a local gradient that is not a diagonal is written as the VJP's
formula (``xᵀ @ ∂L/∂h``) or, when small, as the Jacobian matrix.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from ._format import format_sum, format_value, superscript

if TYPE_CHECKING:
    from .layers import LayerRecord
    from .ledger import Ledger, NodeRecord, TermRecord

__all__ = ["ledger_text", "ledger_markdown", "ledger_html", "node_lines", "term_lines", "sum_line",
           "legend"]


def _fmt(ledger: Ledger, a: Any, max_items: int = 6) -> str:
    return format_value(a, ledger.precision, ledger.full, max_items=max_items)


def legend(ledger: Ledger) -> list[str]:
    L = ledger.root_name
    return [
        "Each node's gradient sums one term per successor (the nodes computed from it):",
        f"  ∂{L}/∂node = Σ over its successors of  ∂{L}/∂successor · ∂successor/∂node",
        "                                          (backpropagated)    (local)",
        "Nodes in the order the backward walk visits them (reverse topological order).",
    ]


def _head(ledger: Ledger, n: NodeRecord) -> str:
    value = "(value not kept)" if n.value is None else _fmt(ledger, n.value)
    shape = f"  shape {tuple(n.shape)}" if len(n.shape) and not value.startswith("shape") else ""
    if n.kind == "op" and _same(n.name, n.expr):  # named after its own expression
        return f"[{n.visit or '-'}] {n.name} = {value}{shape}"
    if n.kind == "op":
        return f"[{n.visit or '-'}] {n.name} = {n.expr} = {value}{shape}"
    return f"[{n.visit or '-'}] {n.name} = {value}  (leaf){shape}"


def _same(name: str, expr: str | None) -> bool:
    squash = lambda text: text.replace(" ", "").strip("()")  # noqa: E731
    return expr is not None and squash(name) == squash(expr)


def term_lines(ledger: Ledger, n: NodeRecord, t: TermRecord) -> list[str]:
    """The lines of one term ∂L/∂s · ∂s/∂n of node ``n``'s sum."""
    L, s, v = ledger.root_name, t.successor_name, lambda a: _fmt(ledger, a)
    up = "seed" if t.seed else f"∂{L}/∂{s}"
    loc = f"∂{s}/∂{n.name}"
    lead = f"via {s}:  "
    if t.local is not None:
        scalars = t.upstream.size == 1 and t.local.size == 1
        dot = "·" if t.upstream.size == 1 or t.local.size == 1 else "⊙"
        whole = t.product if t.unreduced is None else t.unreduced
        factor = _factor(ledger, t.local) if scalars else v(t.local)
        lines = [f"{lead}{up} {dot} {loc} = {v(t.upstream)} {dot} {factor} = {v(whole)}"]
        if t.unreduced is not None:
            lines[0] += f"  (shape {tuple(t.unreduced.shape)})"
            lines.append(f"    summed over the broadcast axes {t.axes} -> "
                         f"shape {tuple(n.shape)}: {v(t.product)}")
        if t.formula and ledger.node(t.successor).role == "loss":
            lines.append(f"    ({t.op} computes it as {t.formula})")
        if t.slot_locals is not None:
            parts = " + ".join(v(x) for x in t.slot_locals) + f" = {v(t.local)}"
            succ = ledger.node(t.successor)
            lines.append(f"    ({n.name} fills operand slots {', '.join(map(str, t.slots))} of "
                         f"{s} = {succ.expr}; their local gradients add up: {loc} = {parts})")
        return lines
    if t.jacobian is not None:
        jac = _fmt(ledger, t.jacobian, max_items=64)
        lines = [f"{lead}{up} · {loc} = {v(t.upstream)} · {jac} = {v(t.product)}",
                 f"    ({loc} is a Jacobian of shape {tuple(t.jacobian.shape)}, since {t.op} is "
                 "not elementwise)"]
        if t.formula:
            lines.append(f"    (the VJP computes it as {t.formula})")
        return lines
    if t.formula:
        return [f"via {s} ({t.op}):  {t.formula} = {v(t.product)}"]
    return [f"via {s} ({t.op}):  the VJP of {t.op} applied to {up} = {v(t.product)}"]


def _factor(ledger: Ledger, a: Any) -> str:
    """A number as the second factor of a product: negative ones in parentheses."""
    text = _fmt(ledger, a)
    return f"({text})" if text.startswith("-") else text


def sum_line(ledger: Ledger, n: NodeRecord) -> str:
    """``∂L/∂n = 7 + 2 = 9``: the node's gradient as the sum of its terms."""
    L, v = ledger.root_name, lambda a: _fmt(ledger, a)
    if n.is_root:
        return f"∂{L}/∂{L} = {v(n.grad)}  (the seed)"
    if n.grad is None:
        return f"no gradient reaches {n.name}"
    d = f"∂{L}/∂{n.name}"
    if len(n.terms) > 1 and all(t.product.size == 1 for t in n.terms):
        total = format_sum([t.product for t in n.terms], ledger.precision, ledger.full)
        return f"{d} = {total} = {v(n.grad)}"
    if len(n.terms) > 1:
        return f"{d} = sum of the {len(n.terms)} terms = {v(n.grad)}"
    return f"{d} = {v(n.grad)}"


def node_lines(ledger: Ledger, n: NodeRecord) -> list[str]:
    """One node's block: its head line, one line (or a few) per term, the sum."""
    out = [_head(ledger, n)]
    for t in n.terms:
        out.extend("    " + line for line in term_lines(ledger, n, t))
    out.append("    " + sum_line(ledger, n))
    return out


def ledger_text(ledger: Ledger) -> str:
    """The whole trace as text: the nodes (output first), then the layers, then notes."""
    root = ledger.node(ledger.root)
    if not ledger.has_grads:
        return f"Graph of {ledger.root_name} (no backward pass recorded)."
    out = [f"Backward pass of {ledger.root_name} = {_fmt(ledger, root.value)}", *legend(ledger), ""]
    for n in ledger.nodes:
        if n.kind != "const":
            out += node_lines(ledger, n)
    if ledger.layers:
        out += ["", *layers_text(ledger)]
    out += [f"note: {note}" for note in ledger.notes]
    return "\n".join(out)


# --------------------------------------------------------------------------
# Layers: the notes' δ recursion
# --------------------------------------------------------------------------


def _sym(name: str, layer: int) -> str:
    return f"{name}{superscript(layer)}"


def _shaped(ledger: Ledger, a: Any) -> str:
    text = _fmt(ledger, a)
    return text if text.startswith("shape") or a is None else f"{text}  shape {tuple(a.shape)}"


NEURON_LINES = 8  # per-neuron sums are printed for one sample and at most this many units


def layer_lines(ledger: Ledger, rec: LayerRecord) -> list[str]:
    """One layer's block in the notes' notation: z, a, δ by the recursion, ∂C/∂W, ∂C/∂b."""
    v = lambda a: _fmt(ledger, a)  # noqa: E731
    C, l_ = ledger.root_name, rec.index
    z, a, d = _sym("z", l_), _sym("a", l_), _sym("δ", l_)
    W, b, a_prev = _sym("W", l_), _sym("b", l_), _sym("a", l_ - 1)
    W_next, d_next = _sym("W", l_ + 1), _sym("δ", l_ + 1)
    where = f"module '{rec.module}', " if rec.module else ""
    act = rec.activation if rec.activation != "identity" else "no activation: a = z"
    lines = [f"layer {l_} ({where}{rec.in_features} -> {rec.out_features}, {act})"
             + (", the output layer" if rec.is_output else "")]
    lines.append(f"  {W} = {rec.W['name']}" + (f", {b} = {rec.b['name']}" if rec.b else ""))
    affine = f"{W} {a_prev} + {b}" if rec.b else f"{W} {a_prev}"
    lines.append(f"  {z} = {affine} = {_shaped(ledger, rec.z)}")
    if rec.activation != "identity":
        lines.append(f"  {a} = {rec.activation}({z}) = {v(rec.a)}")
    if rec.is_output and rec.loss_activation and rec.activation == "identity":
        # the loss applies the output activation itself (cross_entropy: softmax)
        lines.append(f"  {d} = ∂{C}/∂{z} = {v(rec.delta)}  ({rec.loss} applies "
                     f"{rec.loss_activation} to {z} itself; its term is in the trace above)")
    elif rec.sigma_prime is None:
        lines.append(f"  ∂{C}/∂{a} = {v(rec.dC_da)}")
        lines.append(f"  {d} = ∂{C}/∂{z} = {v(rec.delta)}  ({rec.activation} is not "
                     f"elementwise: ∂{a}/∂{z} is a Jacobian, not σ'({z}))")
    else:
        sp = f"σ'({z})"
        if rec.is_output:
            src = f"from the loss {rec.loss}" if rec.loss else "from the cost"
            lines.append(f"  ∂{C}/∂{a} = {v(rec.dC_da)}  ({src})")
            lines.append(f"  {sp} = {v(rec.sigma_prime)}")
            lines.append(f"  {d} = ∂{C}/∂{a} ⊙ {sp} = {v(rec.delta)}")
        elif rec.feeds_next:
            lines.append(f"  ({W_next})ᵀ {d_next} = {v(rec.dC_da)}  (= ∂{C}/∂{a}: the sum over "
                         f"the successors k of each unit j, Σ_k {d_next}_k {W_next}_kj)")
            lines += _neuron_lines(ledger, rec)
            lines.append(f"  {sp} = {v(rec.sigma_prime)}")
            lines.append(f"  {d} = (({W_next})ᵀ {d_next}) ⊙ {sp} = {v(rec.delta)}")
        else:
            lines.append(f"  ∂{C}/∂{a} = {v(rec.dC_da)}  (from all of {a}'s successors)")
            lines.append(f"  {sp} = {v(rec.sigma_prime)}")
            lines.append(f"  {d} = ∂{C}/∂{a} ⊙ {sp} = {v(rec.delta)}")
    batch = rec.z.shape[0] > 1
    if rec.dW is None:
        lines.append(f"  ∂{C}/∂{W}: no gradient reaches {W}")
    else:
        lines.append(f"  ∂{C}/∂{W} = {d} ({a_prev})ᵀ" + (", summed over the samples" if batch
                                                         else "") + f" = {_shaped(ledger, rec.dW)}")
    if rec.b is not None and rec.db is not None:
        lines.append(f"  ∂{C}/∂{b} = {d}" + (", summed over the samples" if batch else "")
                     + f" = {v(rec.db)}")
    return lines


def _neuron_lines(ledger: Ledger, rec: LayerRecord) -> list[str]:
    """For one sample and a few units: each unit's sum over its successors, term by term."""
    succ, dC_da = rec.successor_terms(), rec.dC_da
    if succ is None or dC_da is None or rec.z.shape[0] != 1 or rec.out_features > NEURON_LINES:
        return []
    products, next_delta, next_W = succ
    from ._format import format_sum, join_signed

    l_ = rec.index
    lines = []
    for j in range(rec.out_features):
        terms = products[0, j]
        parts = join_signed([
            f"{_fmt(ledger, next_delta[0, k])}·{_factor(ledger, next_W[k, j])}"
            for k in range(terms.shape[0])])
        lines.append(f"    unit {j + 1}: Σ_k δ{superscript(l_ + 1)}_k W{superscript(l_ + 1)}"
                     f"_k{j + 1} = {parts} = "
                     f"{format_sum(list(terms), ledger.precision)} = "
                     f"{_fmt(ledger, dC_da[0, j])}")
    return lines


def layers_text(ledger: Ledger) -> list[str]:
    out = [
        "Layers, from the output down (the notes' z^l = W^l a^(l-1) + b^l, a^l = σ(z^l); "
        "a⁰ is the input;",
        "rows are samples, so (W^(l+1))ᵀ δ^(l+1) is computed as δ^(l+1) W^(l+1) and "
        "∂C/∂W^l = δ^l (a^(l-1))ᵀ sums over the batch):",
    ]
    for rec in reversed(ledger.layers):
        out += layer_lines(ledger, rec)
    return out


# --------------------------------------------------------------------------
# Markdown and HTML
# --------------------------------------------------------------------------


def _rows(ledger: Ledger) -> list[list[str]]:
    rows = []
    for n in ledger.nodes:
        if n.kind == "const":
            continue
        terms = [line.strip() for t in n.terms for line in term_lines(ledger, n, t)]
        how = terms + [sum_line(ledger, n)] if n.terms else [sum_line(ledger, n)]
        rows.append([str(n.visit or "-"), n.name, n.expr or "leaf",
                     "-" if n.value is None else _fmt(ledger, n.value), _fmt(ledger, n.grad),
                     *[" <br> ".join(how)]])
    return rows


def _layer_rows(ledger: Ledger) -> list[list[str]]:
    v = lambda a: _fmt(ledger, a)  # noqa: E731
    return [[str(r.index), r.module, r.activation, v(r.z), v(r.a), v(r.delta), v(r.dW),
             v(r.db)] for r in reversed(ledger.layers)]


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def _heads(ledger: Ledger) -> tuple[list[str], list[str]]:
    L = ledger.root_name
    nodes = ["#", "node", "computed as", "value", f"∂{L}/∂node",
             "terms ∂L/∂successor · ∂successor/∂node, and their sum".replace("L", L, 1)]
    layers = ["l", "module", "activation", "z^l", "a^l", f"δ^l = ∂{L}/∂z^l", f"∂{L}/∂W^l",
              f"∂{L}/∂b^l"]
    return nodes, layers


def ledger_markdown(ledger: Ledger) -> str:
    """Markdown tables: one row per node (the terms in the last cell), one per layer."""
    nodes_head, layers_head = _heads(ledger)
    lines = _md_table(nodes_head, _rows(ledger))
    if ledger.layers:
        lines += ["", *_md_table(layers_head, _layer_rows(ledger))]
    lines += [f"\n> note: {note}" for note in ledger.notes]
    return "\n".join(lines)


def _html_table(caption: str, head: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{'<br>'.join(e(p) for p in c.split(' <br> '))}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    return (f"<table><caption>{e(caption)}</caption><thead><tr>{th}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def ledger_html(ledger: Ledger) -> str:
    """HTML tables (Jupyter's ``_repr_html_``): the same cells as the Markdown view."""
    nodes_head, layers_head = _heads(ledger)
    parts = [_html_table(f"Backward pass of {ledger.root_name}", nodes_head, _rows(ledger))]
    if ledger.layers:
        parts.append(_html_table("Layers (δ^l = ∂C/∂z^l)", layers_head, _layer_rows(ledger)))
    parts += [f"<p>note: {html.escape(note)}</p>" for note in ledger.notes]
    return "".join(parts)
