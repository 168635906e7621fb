"""``chainrule explain EXPR NAME=VALUE ...``: backpropagation on one expression, printed.

Prints the forward values, the ledger's backward trace (each node's gradient
as the sum over its successors of backpropagated · local gradient) and the
gradient with respect to every variable, and draws the graph to ``--out``
(SVG by default; DOT text when Graphviz is missing). Intermediate results
are named by their assignments (``u = w*x; J = (u + b - y)**2``) or, if
unnamed, by their piece of the expression.

    chainrule explain "u = w*x; J = (u + b - y)**2" w=5 x=1 b=1 y=2

The main CLI registers it with ``add_parser(subparsers)``; it also runs on
its own: ``python -m chainrule.cli_explain "x**2" x=3``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..tensor import Tensor, keep_values
from . import _graph as G
from ._format import format_value, shorten
from .draw import INSTALL_HINT, draw_ledger, have_dot
from .expr import FUNCTIONS, ExprError, evaluate, parse, parse_assignment
from .ledger import build_ledger

__all__ = ["add_parser", "configure", "run", "main", "protect_expression"]

DESCRIPTION = """\
Backpropagate through one arithmetic expression and show every step: the
forward values, then for each node (output first) one term per successor,
backpropagated gradient · local gradient, and their sum, as in the course
notes.

The expression may name its intermediate results, separated by ';':
"u = w*x; J = (u + b - y)**2". The last one is the output.

Allowed: numbers, the variables you bind (NAME=VALUE, VALUE a number or
comma-separated numbers), + - * / **, unary -, and the functions
{functions}.
"""

EPILOG = """\
examples (the course notes' worked examples):
  chainrule explain "u = w*x; y_hat = u + b; e = y_hat - y; J = e**2" w=5 x=1 b=1 y=2 \\
      --const x,y
  chainrule explain "x = a + b; y = b + c; f = x*y" a=-1 b=3 c=4
  chainrule explain "0.5*(sigmoid(w*x+b)-y)**2" w=0.5 x=1 b=0 y=1
  chainrule explain "-(y*log(a) + (1-y)*log(1-a))" a=0.7 y=1
"""

# Unnamed intermediates are named by their piece of the expression when it
# is at most this long (``∂L/∂(w*x+b)``); longer ones are op#k.
PIECE_NAME_WIDTH = 16


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``explain`` arguments to ``parser``."""
    parser.add_argument("expression",
                        help='the expression, quoted: "u = w*x; J = (u + b - y)**2"')
    parser.add_argument(
        "variables", nargs="*", metavar="NAME=VALUE", help="a value for each variable: w=0.5"
    )
    parser.add_argument(
        "--out",
        default="explain.svg",
        help="where to draw the graph: .svg/.png/.pdf via Graphviz, .dot for the DOT text "
        "(default: explain.svg; DOT is written instead when Graphviz is missing)",
    )
    parser.add_argument(
        "--const", default="", metavar="NAMES",
        help="comma-separated variables that are inputs, not differentiated (as the notes "
        "treat x and y): --const x,y",
    )
    parser.add_argument("--no-graph", action="store_true", help="do not draw the graph")
    parser.add_argument(
        "--direction",
        choices=("forward", "backward"),
        default="forward",
        help="edges of the drawing follow the forward computation or the backward flow",
    )
    parser.add_argument("--precision", type=int, default=4, help="significant digits (4)")
    parser.add_argument("--full", action="store_true", help="print every digit")
    view = parser.add_mutually_exclusive_group()
    view.add_argument(
        "--markdown", action="store_true", help="print the backward trace as a Markdown table"
    )
    view.add_argument("--json", action="store_true",
                      help="print the ledger as JSON (the documented schema) and nothing else")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``explain`` on the main CLI's ``subparsers``; returns the new parser."""
    parser = subparsers.add_parser(
        "explain",
        help="show backpropagation step by step on an expression",
        description=DESCRIPTION.format(functions=", ".join(FUNCTIONS)),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return configure(parser)


def protect_expression(argv: Sequence[str], subcommand: str | None = "explain") -> list[str]:
    """Keep an expression that starts with ``-`` from being read as an option.

    ``chainrule explain "-(y*log(a) + (1-y)*log(1-a))" ...``: argparse takes
    any argument starting with ``-`` for an option. An argument after the
    subcommand that starts with ``-`` but is none of explain's options gets a
    leading space, which argparse reads as a positional
    argument and the expression parser ignores. The options are also moved
    after the positional arguments, so ``EXPR --out g.dot x=1`` works too.
    ``subcommand=None``: ``argv`` holds explain's own arguments
    (``python -m chainrule.cli_explain``).
    """
    argv = list(argv)
    start = 0
    if subcommand is not None:
        if subcommand not in argv:
            return argv
        start = argv.index(subcommand) + 1
    takes_value = {"--out": 1, "--direction": 1, "--precision": 1, "--const": 1, "--no-graph": 0,
                   "--full": 0,
                   "--markdown": 0, "--json": 0, "-h": 0, "--help": 0, "--debug": 0}
    positional: list[str] = []
    options: list[str] = []
    i = start
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional += argv[i + 1:]
            break
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and name in takes_value:
            width = 1 + (takes_value[name] if "=" not in arg else 0)
            options += argv[i:i + width]
            i += width
            continue
        if arg.startswith("-") and len(arg) > 1:
            arg = " " + arg  # not an option: the expression (" -3" parses as -3 too)
        positional.append(arg)
        i += 1
    return argv[:start] + positional + options


def _piece_names(out: Tensor, order: list, pieces: dict[int, str]) -> None:
    """Name each unnamed intermediate after its piece of the expression."""
    root = order[-1]
    for node in order:
        if node is root or G.user_name(node) or G.is_leaf(node):
            continue
        piece = pieces.get(G.vertex_key(node))
        if piece is None or len(piece) > PIECE_NAME_WIDTH:
            continue
        atom = piece.replace("_", "").isalnum() or (piece.endswith(")") and "(" in piece
                                                    and piece.split("(")[0].isidentifier()
                                                    and _balanced(piece[piece.index("("):]))
        G.set_name(node, piece if atom else f"({piece})")


def _balanced(text: str) -> bool:
    """``(a)(b)`` is two groups: only one group spanning the whole text counts."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i != len(text) - 1:
            return False
    return depth == 0


def _forward_lines(ledger: Any, pieces: dict[int, str], order: list, fmt: Any) -> list[str]:
    lines = []
    by_visit = {n.id: n for n in ledger.nodes}
    for i, node in enumerate(order, start=1):
        rec = by_visit[i]
        if rec.kind == "const":
            continue  # constants are visible in the expressions that use them
        if rec.kind == "leaf":
            lines.append(f"  {rec.name} = {fmt(rec.value)}")
            continue
        piece = shorten(pieces.get(G.vertex_key(node), rec.expr or ""), 60)
        if rec.name in (piece, f"({piece})"):
            lines.append(f"  {rec.name} = {fmt(rec.value)}")
        else:
            lines.append(f"  {rec.name} = {piece} = {fmt(rec.value)}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run ``explain`` for parsed ``args``; returns the exit status (0 ok, 2 bad input)."""
    def fmt(a: Any) -> str:
        return format_value(a, args.precision, args.full)

    try:
        expr = parse(args.expression)
        values = dict(parse_assignment(v) for v in args.variables)
        const = [c.strip() for c in args.const.split(",") if c.strip()]
        unknown = [c for c in const if c not in expr.names]
        if unknown:
            raise ExprError(f"--const {', '.join(unknown)}: not a variable of the expression "
                            f"(its variables: {', '.join(expr.names) or 'none'})")
        pieces: dict[int, str] = {}
        with keep_values():  # the views read every node's value after the forward pass
            out, leaves = evaluate(expr, values, record=pieces, constants=const)
    except ExprError as exc:
        print(f"chainrule explain: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, ArithmeticError) as exc:
        print(f"chainrule explain: error while evaluating: {exc}", file=sys.stderr)
        return 2

    if not out.requires_grad:
        if not args.json:
            print(f"Expression: {shorten(expr.source, 200)}")
            print(f"Value: {fmt(out.data)} (no variables, nothing to differentiate)")
        return 0
    seed = None
    notes = []
    if out.size != 1:
        notes.append(f"note: the output has shape {out.shape}; explaining the sum of its "
                     "entries (seed = ones)")
        seed = np.ones(out.shape)
    # one walk serves the names, the ledger and the forward listing
    order = G.walk([out], what="chainrule explain")
    _piece_names(out, order, pieces)
    ledger = build_ledger(out, seed, precision=args.precision, full=args.full,
                          what="chainrule explain", order=order)
    if args.json:
        print(ledger.to_json(indent=1))
        return 0

    print(f"Expression: {shorten(expr.source, 200)}")
    if leaves:
        print("Variables:  " + ", ".join(f"{n} = {fmt(t.data)}" for n, t in leaves.items()))
    for note in notes:
        print(note)
    print()
    print("Forward pass (values in the order they are computed):")
    print("\n".join(_forward_lines(ledger, pieces, order, fmt)))
    print()
    print(ledger.to_markdown() if args.markdown else ledger.to_text())
    print()
    print("Gradients:")
    for n, t in leaves.items():
        if t.requires_grad:
            print(f"  ∂{ledger.root_name}/∂{n} = {fmt(ledger.grad(n))}")

    if not args.no_graph:
        g = draw_ledger(ledger, grads=True, direction=args.direction, precision=args.precision)
        path = Path(args.out)
        fmt_out = path.suffix.lstrip(".").lower() or "svg"
        print()
        if fmt_out not in ("dot", "gv") and not have_dot():
            path = path.with_suffix(".dot")
            print(f"note: {INSTALL_HINT}")
            g.save(path)
        else:
            g.render(path)
        print(f"Graph written to {path}")
    return 0


def quiet_broken_pipe() -> int:
    """After ``| head`` closed our stdout: no second error at exit, no traceback.

    Points stdout at /dev/null (Python flushes it again at exit) and returns
    the exit status of a process that a closed pipe stopped (128 + SIGPIPE).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests)
        pass
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m chainrule.cli_explain``."""
    parser = argparse.ArgumentParser(
        prog="chainrule explain",
        description=DESCRIPTION.format(functions=", ".join(FUNCTIONS)),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)
    args = parser.parse_args(protect_expression(sys.argv[1:] if argv is None else argv, None))
    try:
        return args.func(args)
    except BrokenPipeError:
        return quiet_broken_pipe()


if __name__ == "__main__":
    sys.exit(main())
