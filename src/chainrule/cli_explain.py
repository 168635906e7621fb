"""``chainrule explain``, kept at its old path; the code lives in :mod:`chainrule.teach.cli`.

``python -m chainrule.cli_explain "x**2" x=3`` runs it on its own.
"""

from __future__ import annotations

import sys

from .teach.cli import add_parser, configure, main, protect_expression, quiet_broken_pipe, run

__all__ = ["add_parser", "configure", "run", "main", "protect_expression", "quiet_broken_pipe"]

if __name__ == "__main__":
    sys.exit(main())
