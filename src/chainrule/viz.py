"""``cr.viz``: drawing computation graphs; the code lives in :mod:`chainrule.teach.draw`."""

from __future__ import annotations

from .teach._format import format_value
from .teach._graph import GraphVertex, ValuesNotKept, walk
from .teach._graph import is_freed as is_released
from .teach.draw import (
    INSTALL_HINT,
    Graph,
    GraphFreedWarning,
    GraphvizNotFoundError,
    ModuleTrace,
    draw_ledger,
    graph,
    have_dot,
    trace_modules,
)

__all__ = [
    "Graph",
    "graph",
    "draw_ledger",
    "trace_modules",
    "ModuleTrace",
    "GraphvizNotFoundError",
    "GraphFreedWarning",
    "have_dot",
    "format_value",
    "walk",
    "GraphVertex",
    "ValuesNotKept",
    "is_released",
    "INSTALL_HINT",
]
