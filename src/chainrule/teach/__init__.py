"""Seeing backpropagation: one ledger, several views.

The notes teach the backward pass as a sum over successors: the gradient of
the output L with respect to a node n is Σ_s ∂L/∂s · ∂s/∂n (backpropagated
gradient times local gradient), computed node by node in reverse
topological order; for a network, layer by layer through the δ recursion.
This package writes that down and shows it:

* :mod:`.ledger` -- the data: :func:`explain` runs one observed backward
  pass and returns a :class:`Ledger` (per node: name, op, value, ∂L/∂node
  and one term per successor; per layer: z^l, a^l, δ^l, ∂C/∂W^l), which
  serialises to JSON (``to_json``, schema in docs/ledger.md);
* :mod:`.layers` -- the per-layer records, read off the ledger;
* views, which only format what the ledger holds: :mod:`.views` (text,
  Markdown, HTML), :mod:`.draw` (Graphviz drawing, ``cr.viz``),
  :mod:`.mlp` (the δ recursion by hand next to the engine; gradient norms
  during training), :mod:`.cli` (``chainrule explain``, with the
  expression language of :mod:`.expr`);
* :mod:`._graph` -- the only module that reads the engine's graph
  internals.

>>> import chainrule as cr
>>> w = cr.tensor(5.0, requires_grad=True, name="w")
>>> J = ((w * 1.0 + 1.0) - 2.0) ** 2
>>> print(cr.explain(J))             # doctest: +SKIP
"""

from __future__ import annotations

from .draw import Graph, graph, trace_modules
from .ledger import ExplainError, LayerRecord, Ledger, NodeRecord, TermRecord, explain
from .mlp import GradientNormRecorder, mlp_backprop, plot_gradient_norms

__all__ = [
    "explain",
    "Ledger",
    "NodeRecord",
    "TermRecord",
    "LayerRecord",
    "ExplainError",
    "graph",
    "Graph",
    "trace_modules",
    "mlp_backprop",
    "GradientNormRecorder",
    "plot_gradient_norms",
]
