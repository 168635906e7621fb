"""A safe arithmetic-expression parser for ``chainrule explain``.

The expression is parsed with :mod:`ast` and only a whitelist of node kinds
is accepted: numbers, names bound by the caller, ``+ - * / **``, unary ``-``
and ``+``, and calls of a few engine functions. Nothing is ever passed to
``eval`` or ``exec``; anything else is refused with an error that quotes the
offending piece of the expression.

>>> expr = parse("0.5*(sigmoid(w*x+b)-y)**2")
>>> expr.names
('w', 'x', 'b', 'y')
>>> out, leaves = evaluate("w*x + b", {"w": 5, "x": 1, "b": 1})
>>> out.item()
6.0
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ops
from .tensor import Tensor

__all__ = ["FUNCTIONS", "ExprError", "Expr", "parse", "evaluate", "parse_assignment"]

# The engine functions an expression may call, each with one argument.
FUNCTIONS: dict[str, Callable[[Any], Tensor]] = {
    "exp": ops.exp,
    "log": ops.log,
    "sqrt": ops.sqrt,
    "tanh": ops.tanh,
    "sigmoid": ops.sigmoid,
    "relu": ops.relu,
    "softplus": ops.softplus,
    "sin": ops.sin,
    "cos": ops.cos,
    "abs": ops.abs,
}

_BINARY: dict[type, Callable[[Any, Any], Tensor]] = {
    ast.Add: ops.add,
    ast.Sub: ops.sub,
    ast.Mult: ops.mul,
    ast.Div: ops.div,
    ast.Pow: ops.pow,
}

_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}

_WHAT = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "lambda",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.ListComp: "comprehension",
    ast.GeneratorExp: "generator",
    ast.JoinedStr: "f-string",
    ast.NamedExpr: "assignment (:=)",
    ast.Starred: "starred argument",
}


class ExprError(ValueError):
    """The expression uses something outside the allowed arithmetic."""


@dataclass(frozen=True)
class Expr:
    """A checked expression: its source, AST and the variable names it uses (in order)."""

    source: str
    tree: ast.Expression
    names: tuple[str, ...]

    def __call__(self, _record: dict[int, str] | None = None, **values: Any) -> Tensor:
        """Evaluate with the engine; ``values`` maps each name to a Tensor or number.

        ``_record``, if given, is filled with id(tensor) -> the piece of the
        source that computed it (used to print the forward pass).
        """
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ExprError(
                f"expression {self.source!r}: no value for {', '.join(missing)}; "
                f"give one as NAME=VALUE, e.g. {missing[0]}=1.0"
            )
        out = _eval(self.tree.body, values, self.source, _record)
        if not isinstance(out, Tensor):  # a constant expression
            out = Tensor(np.asarray(out, dtype=np.float64))
        return out


def _piece(source: str, node: ast.AST) -> str:
    return ast.get_source_segment(source, node) or ast.dump(node)


def parse(source: str) -> Expr:
    """Check ``source`` against the whitelist and return an :class:`Expr`.

    Raises :class:`ExprError` naming the first construct that is not allowed.
    """
    if not isinstance(source, str) or not source.strip():
        raise ExprError("expression: empty expression")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ExprError(f"expression {source!r}: syntax error{where}: {exc.msg}") from None
    src = source.strip()
    names: list[ast.Name] = []
    for node in ast.walk(tree):
        _check(node, src, names)
    names.sort(key=lambda n: (n.lineno, n.col_offset))  # in reading order, not walk order
    return Expr(src, tree, tuple(dict.fromkeys(n.id for n in names)))


def _check(node: ast.AST, src: str, names: list[ast.Name]) -> None:
    if isinstance(node, (ast.Expression, ast.Load, ast.operator, ast.unaryop)):
        if isinstance(node, ast.operator) and type(node) not in _BINARY:
            raise ExprError(
                f"expression {src!r}: operator {type(node).__name__} is not allowed; "
                "use + - * / ** and unary -"
            )
        if isinstance(node, ast.unaryop) and not isinstance(node, (ast.USub, ast.UAdd)):
            raise ExprError(f"expression {src!r}: unary {type(node).__name__} is not allowed")
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExprError(
                f"expression {src!r}: only numbers are allowed as constants, "
                f"not {_piece(src, node)}"
            )
        return
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            return  # checked as the callee of a Call
        names.append(node)
        return
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        return
    if isinstance(node, ast.Call):
        fn = node.func
        if not isinstance(fn, ast.Name):
            raise ExprError(
                f"expression {src!r}: only calls of {', '.join(FUNCTIONS)} are allowed, "
                f"not {_piece(src, fn)}(...)"
            )
        if fn.id not in FUNCTIONS:
            raise ExprError(
                f"expression {src!r}: unknown function {fn.id!r} in {_piece(src, node)}; "
                f"allowed: {', '.join(FUNCTIONS)}"
            )
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise ExprError(
                f"expression {src!r}: {fn.id}() takes exactly one argument: {_piece(src, node)}"
            )
        return
    what = _WHAT.get(type(node), type(node).__name__)
    raise ExprError(f"expression {src!r}: {what} is not allowed: {_piece(src, node)}")


def _eval(
    node: ast.AST, env: Mapping[str, Any], src: str = "", record: dict[int, str] | None = None
) -> Any:
    out = _eval_node(node, env, src, record)
    if record is not None and isinstance(out, Tensor) and not isinstance(node, ast.Name):
        # keyed by the graph vertex (the op's node), which the views report
        record.setdefault(id(out._node if out._node is not None else out), _piece(src, node))
    return out


def _eval_node(
    node: ast.AST, env: Mapping[str, Any], src: str, record: dict[int, str] | None
) -> Any:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise ExprError(f"expression: {node.id} is a function; call it: {node.id}(...)")
        return env[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](
            _eval(node.left, env, src, record), _eval(node.right, env, src, record)
        )
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env, src, record)
        return ops.neg(v) if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Call):
        fn = FUNCTIONS[node.func.id]  # type: ignore[attr-defined]
        return fn(_eval(node.args[0], env, src, record))
    raise ExprError(f"expression: unexpected {type(node).__name__}")  # parse() prevents this


def parse_assignment(text: str) -> tuple[str, np.ndarray]:
    """``"w=0.5"`` -> ("w", array(0.5)); ``"x=1,2,3"`` gives a float64 vector."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ExprError(f"variable {text!r}: expected NAME=VALUE, e.g. w=0.5 or x=1,2,3")
    if name in FUNCTIONS:
        raise ExprError(f"variable {text!r}: {name} is a function name; pick another name")
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        raise ExprError(
            f"variable {text!r}: {value!r} is not a number (or comma-separated numbers)"
        ) from None
    arr = np.array(parts[0] if len(parts) == 1 else parts, dtype=np.float64)
    return name, arr


def evaluate(
    source: str | Expr,
    values: Mapping[str, Any],
    requires_grad: bool = True,
    record: dict[int, str] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Evaluate an expression; every variable becomes a named float64 leaf.

    Returns the output tensor and the leaves by name (so their gradients can
    be read after ``backward()``).

    >>> out, leaves = evaluate("x**2", {"x": 3})
    >>> out.backward(); leaves["x"].grad.item()
    6.0
    """
    expr = source if isinstance(source, Expr) else parse(source)
    unused = [n for n in values if n not in expr.names]
    if unused:
        raise ExprError(
            f"expression {expr.source!r} does not use {', '.join(unused)} "
            f"(its variables: {', '.join(expr.names) or 'none'})"
        )
    leaves = {
        n: Tensor(np.asarray(values[n], dtype=np.float64), requires_grad=requires_grad, name=n)
        for n in expr.names
        if n in values
    }
    return expr(record, **leaves), leaves
