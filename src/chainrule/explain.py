"""``cr.explain``: kept at its old path; the code lives in :mod:`chainrule.teach.ledger`."""

from __future__ import annotations

from .ops import RULES
from .teach.ledger import ExplainError, Ledger, NodeRecord, TermRecord, explain

Explanation = Ledger  # the name before the ledger
Row = NodeRecord
Term = TermRecord

# The ops whose local gradient is a diagonal, as their rules declare it.
ELEMENTWISE_OPS = frozenset(name for name, r in RULES.items() if r.elementwise)

__all__ = ["explain", "Ledger", "Explanation", "Row", "Term", "NodeRecord", "TermRecord",
           "ExplainError", "ELEMENTWISE_OPS"]
