"""The expression language of ``chainrule explain``; lives in :mod:`chainrule.teach.expr`."""

from __future__ import annotations

from .teach.expr import FUNCTIONS, Expr, ExprError, evaluate, parse, parse_assignment

__all__ = ["FUNCTIONS", "ExprError", "Expr", "parse", "evaluate", "parse_assignment"]
