"""``chainrule explain EXPR NAME=VALUE ...``: backpropagation on one expression, printed.

Prints the forward values, the backward trace of :func:`chainrule.explain`
(each node's gradient as the sum over its successors of backpropagated x
local gradient) and the gradient with respect to every variable, and draws
the graph to ``--out`` (SVG by default; DOT text when Graphviz is missing).

    chainrule explain "0.5*(sigmoid(w*x+b)-y)**2" w=0.5 x=1 b=0 y=1

The main CLI registers it with ``add_parser(subparsers)``; it also runs on
its own: ``python -m chainrule.cli_explain "x**2" x=3``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .explain import explain
from .expr import FUNCTIONS, ExprError, evaluate, parse, parse_assignment
from .tensor import keep_values
from .viz import INSTALL_HINT, format_value, graph, have_dot, node_names, walk

__all__ = ["add_parser", "configure", "run", "main"]

DESCRIPTION = """\
Backpropagate through one arithmetic expression and show every step: the
forward values, then for each node (output first) the terms
dL/dsuccessor x dsuccessor/dnode and their sum, as in the course notes.

Allowed: numbers, the variables you bind (NAME=VALUE, VALUE a number or
comma-separated numbers), + - * / **, unary -, and the functions
{functions}.
"""

EPILOG = """\
example (seed 000, Example 1):
  chainrule explain "0.5*(sigmoid(w*x+b)-y)**2" w=0.5 x=1 b=0 y=1
"""


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``explain`` arguments to ``parser``."""
    parser.add_argument("expression", help='the expression, quoted: "0.5*(sigmoid(w*x+b)-y)**2"')
    parser.add_argument(
        "variables", nargs="*", metavar="NAME=VALUE", help="a value for each variable: w=0.5"
    )
    parser.add_argument(
        "--out",
        default="explain.svg",
        help="where to draw the graph: .svg/.png/.pdf via Graphviz, .dot for the DOT text "
        "(default: explain.svg; DOT is written instead when Graphviz is missing)",
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
    parser.add_argument(
        "--markdown", action="store_true", help="print the backward trace as a Markdown table"
    )
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


def _forward_lines(order: list, pieces: dict[int, str], names: dict[int, str], fmt: Any) -> list:
    lines = []
    for n in order:
        if n._op is None and not n._requires_grad:
            continue  # constants are visible in the expressions that use them
        label = names[id(n)]
        if n._op is None:
            lines.append(f"  {label} = {fmt(n.data)}")
            continue
        piece = pieces.get(id(n.vertex))
        expr = f" = {piece}" if piece and piece != label else ""
        lines.append(f"  {label}{expr} = {fmt(n.data)}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run ``explain`` for parsed ``args``; returns the exit status (0 ok, 2 bad input)."""
    def fmt(a: Any) -> str:
        return format_value(a, args.precision, args.full)

    try:
        expr = parse(args.expression)
        values = dict(parse_assignment(v) for v in args.variables)
        pieces: dict[int, str] = {}
        with keep_values():  # the views show every value
            out, leaves = evaluate(expr, values, record=pieces)
    except ExprError as exc:
        print(f"chainrule explain: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, ArithmeticError) as exc:
        print(f"chainrule explain: error while evaluating: {exc}", file=sys.stderr)
        return 2

    seed = None
    if out.size != 1:
        print(
            f"note: the output has shape {out.shape}; explaining d(sum of its entries)",
            file=sys.stdout,
        )
        import numpy as np

        seed = np.ones(out.shape)

    print(f"Expression: {expr.source}")
    if leaves:
        print("Variables:  " + ", ".join(f"{n} = {fmt(t.data)}" for n, t in leaves.items()))
    print()
    if not out.requires_grad:
        print(f"Value: {fmt(out.data)} (no variables, nothing to differentiate)")
        return 0

    exp = explain(out, seed, precision=args.precision, full=args.full)
    order = walk([out])
    names = node_names(order)
    names[id(order[-1])] = exp.root_name
    print("Forward pass (values in the order they are computed):")
    print("\n".join(_forward_lines(order, pieces, names, fmt)))
    print()
    print("Backward pass:")
    print(exp.to_markdown() if args.markdown else exp.to_text())
    print()
    print("Gradients:")
    for n in leaves:
        print(f"  d{exp.root_name}/d{n} = {fmt(exp.grad(n))}")

    if not args.no_graph:
        g = graph(out, grads=True, seed=seed, direction=args.direction, precision=args.precision)
        path = Path(args.out)
        fmt_out = path.suffix.lstrip(".").lower() or "svg"
        if fmt_out not in ("dot", "gv") and not have_dot():
            path = path.with_suffix(".dot")
            print()
            print(f"note: {INSTALL_HINT}")
            g.save(path)
        else:
            g.render(path)
        print()
        print(f"Graph written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m chainrule.cli_explain``."""
    parser = argparse.ArgumentParser(
        prog="chainrule explain",
        description=DESCRIPTION.format(functions=", ".join(FUNCTIONS)),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
