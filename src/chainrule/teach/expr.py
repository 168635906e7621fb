"""A safe arithmetic-expression language for ``chainrule explain``.

A program is one expression, or a few assignments separated by ``;`` (or
new lines) whose last one is the output, as the notes write a computation
with intermediate variables:

    u = w*x; y_hat = u + b; e = y_hat - y; J = e**2

It is parsed with :mod:`ast` and only a whitelist of node kinds is accepted:
numbers, names, ``+ - * / **``, unary ``-`` and ``+``, calls of a few
engine functions, and ``NAME = expression`` statements. Nothing is ever
passed to ``eval`` or ``exec``; anything else is refused with an error that
quotes the offending piece. Evaluation walks the tree with an explicit
stack, so an expression of thousands of terms does not hit Python's
recursion limit.

>>> expr = parse("0.5*(sigmoid(w*x+b)-y)**2")
>>> expr.names
('w', 'x', 'b', 'y')
>>> out, leaves = evaluate("u = w*x; J = u + b", {"w": 5, "x": 1, "b": 1})
>>> out.item(), out.name
(6.0, 'J')
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from .. import ops
from ..tensor import Tensor
from . import _graph as G

__all__ = ["FUNCTIONS", "ExprError", "Expr", "parse", "evaluate", "parse_assignment"]

# The engine functions an expression may call, each with one argument (the
# elementwise ones, and the reductions and softmax a worked example needs).
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
    "sum": ops.sum,
    "mean": ops.mean,
    "softmax": ops.softmax,
    "log_softmax": ops.log_softmax,
    "logsumexp": ops.logsumexp,
}

_BINARY: dict[type, Callable[[Any, Any], Tensor]] = {
    ast.Add: ops.add,
    ast.Sub: ops.sub,
    ast.Mult: ops.mul,
    ast.Div: ops.div,
    ast.Pow: ops.pow,
}

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
    ast.AugAssign: "augmented assignment",
    ast.Import: "import",
    ast.ImportFrom: "import",
}

MAX_LENGTH = 200_000  # characters; longer input is refused before parsing


class ExprError(ValueError):
    """The expression uses something outside the allowed arithmetic."""


@dataclass(frozen=True)
class Expr:
    """A checked program: its source, its statements and its input variables.

    ``statements`` is a list of (name or None, expression AST); the last one
    is the output. ``names`` are the variables the caller must bind, in
    reading order; ``assigned`` the intermediate names, in order.
    """

    source: str
    tree: ast.AST
    names: tuple[str, ...]
    statements: tuple[tuple[str | None, ast.expr], ...] = ()
    assigned: tuple[str, ...] = ()

    def __call__(self, _record: dict[int, str] | None = None, **values: Any) -> Tensor:
        """Evaluate with the engine; ``values`` maps each name to a Tensor or number.

        ``_record``, if given, is filled with id(node) -> the piece of the
        source that computed it (used to print the forward pass). Tensors
        computed by an assignment are named after it.
        """
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ExprError(
                f"expression {self.source!r}: no value for {', '.join(missing)}; "
                f"give one as NAME=VALUE, e.g. {missing[0]}=1.0"
            )
        env = dict(values)
        out: Any = None
        given = {id(v) for v in values.values()}
        for name, node in self.statements:
            out = _eval(node, env, self.source, _record)
            if name is not None:
                if isinstance(out, Tensor) and id(out) not in given and out.name is None:
                    out.name = name  # a new node: the assignment names it
                env[name] = out
                given.add(id(out))
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
    src = source.strip()
    if len(src) > MAX_LENGTH:
        raise ExprError(f"expression: {len(src):,} characters is too long "
                        f"(at most {MAX_LENGTH:,})")
    try:
        tree = ast.parse(src, mode="exec")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ExprError(f"expression {_short(src)!r}: syntax error{where}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExprError(
            f"expression: nested too deeply for Python's parser ({len(src):,} characters); "
            "split it into assignments: a = ...; b = ...; L = a + b"
        ) from None
    if not tree.body:
        raise ExprError("expression: empty expression")
    statements: list[tuple[str | None, ast.expr]] = []
    assigned: list[str] = []
    inputs: list[ast.Name] = []
    for i, stmt in enumerate(tree.body):
        last = i == len(tree.body) - 1
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                raise ExprError(f"expression {_short(src)!r}: assign to one name: "
                                f"{_piece(src, stmt)}")
            target = stmt.targets[0].id
            if target in FUNCTIONS:
                raise ExprError(f"expression {_short(src)!r}: {target} is a function name; "
                                "pick another name")
            value, name = stmt.value, target
        elif isinstance(stmt, ast.Expr) and last:
            value, name = stmt.value, None
        elif isinstance(stmt, ast.Expr):
            raise ExprError(
                f"expression {_short(src)!r}: only the last statement may be a bare "
                f"expression; name this one: NAME = {_piece(src, stmt)}"
            )
        else:
            what = _WHAT.get(type(stmt), type(stmt).__name__)
            raise ExprError(f"expression {_short(src)!r}: {what} is not allowed: "
                            f"{_piece(src, stmt)}")
        names: list[ast.Name] = []
        for node in ast.walk(value):
            _check(node, src, names)
        for n in names:
            if n.id not in assigned and n.id in _all_targets(tree):
                raise ExprError(f"expression {_short(src)!r}: {n.id} is used before it is "
                                "assigned")
            if n.id not in assigned:
                inputs.append(n)
        if name is not None:
            if name in assigned:
                raise ExprError(f"expression {_short(src)!r}: {name} is assigned twice")
            assigned.append(name)
        statements.append((name, value))
    inputs.sort(key=lambda n: (n.lineno, n.col_offset))  # in reading order, not walk order
    return Expr(src, tree, tuple(dict.fromkeys(n.id for n in inputs)), tuple(statements),
                tuple(assigned))


def _all_targets(tree: ast.Module) -> set[str]:
    return {s.targets[0].id for s in tree.body
            if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name)}


def _short(src: str) -> str:
    return src if len(src) <= 80 else src[:38] + " … " + src[-38:]


def _check(node: ast.AST, src: str, names: list[ast.Name]) -> None:
    if isinstance(node, (ast.Load, ast.operator, ast.unaryop)):
        if isinstance(node, ast.operator) and type(node) not in _BINARY:
            raise ExprError(
                f"expression {_short(src)!r}: operator {type(node).__name__} is not allowed; "
                "use + - * / ** and unary -"
            )
        if isinstance(node, ast.unaryop) and not isinstance(node, (ast.USub, ast.UAdd)):
            raise ExprError(f"expression {_short(src)!r}: unary {type(node).__name__} is not "
                            "allowed")
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExprError(
                f"expression {_short(src)!r}: only numbers are allowed as constants, "
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
                f"expression {_short(src)!r}: only calls of {', '.join(FUNCTIONS)} are "
                f"allowed, not {_piece(src, fn)}(...)"
            )
        if fn.id not in FUNCTIONS:
            raise ExprError(
                f"expression {_short(src)!r}: unknown function {fn.id!r} in "
                f"{_piece(src, node)}; allowed: {', '.join(FUNCTIONS)}"
            )
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise ExprError(
                f"expression {_short(src)!r}: {fn.id}() takes exactly one argument: "
                f"{_piece(src, node)}"
            )
        return
    what = _WHAT.get(type(node), type(node).__name__)
    raise ExprError(f"expression {_short(src)!r}: {what} is not allowed: {_piece(src, node)}")


def _children(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.Call):
        return [node.args[0]]
    return []


def _eval(node: ast.AST, env: Mapping[str, Any], src: str = "",
          record: dict[int, str] | None = None) -> Any:
    """Evaluate one checked expression tree, children first, with an explicit stack."""
    results: dict[int, Any] = {}
    stack: list[tuple[ast.AST, bool]] = [(node, False)]
    while stack:
        n, ready = stack.pop()
        if not ready:
            stack.append((n, True))
            stack.extend((c, False) for c in reversed(_children(n)))
            continue
        args = [results.pop(id(c)) for c in _children(n)]
        out = _apply(n, args, env)
        if record is not None and isinstance(out, Tensor) and not isinstance(n, ast.Name):
            # keyed by the graph node (what the views walk); a leaf by itself
            record.setdefault(G.tensor_key(out), _piece(src, n))
        results[id(n)] = out
    return results[id(node)]


def _apply(node: ast.AST, args: list[Any], env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return float(cast(float, node.value))  # _check let only int/float constants through
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise ExprError(f"expression: {node.id} is a function; call it: {node.id}(...)")
        return env[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](*args)
    if isinstance(node, ast.UnaryOp):
        return ops.neg(args[0]) if isinstance(node.op, ast.USub) else args[0]
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](args[0])  # type: ignore[attr-defined]  # _check: a Name
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
    constants: Sequence[str] = (),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Evaluate an expression; every variable becomes a named float64 leaf.

    Returns the output tensor and the leaves by name (so their gradients can
    be read after ``backward()``). Variables listed in ``constants`` do not
    require grad (inputs such as x and y in the notes).

    >>> out, leaves = evaluate("x**2", {"x": 3})
    >>> out.backward(); leaves["x"].grad.item()
    6.0
    """
    expr = source if isinstance(source, Expr) else parse(source)
    computed = [n for n in values if n in expr.assigned]
    if computed:
        raise ExprError(
            f"expression {_short(expr.source)!r} computes {', '.join(computed)} itself; "
            "give values only for its variables "
            f"({', '.join(expr.names) or 'it has none'})"
        )
    unused = [n for n in values if n not in expr.names]
    if unused:
        raise ExprError(
            f"expression {_short(expr.source)!r} does not use {', '.join(unused)} "
            f"(its variables: {', '.join(expr.names) or 'none'})"
        )
    leaves = {
        n: Tensor(np.asarray(values[n], dtype=np.float64),
                  requires_grad=requires_grad and n not in constants, name=n)
        for n in expr.names
        if n in values
    }
    return expr(record, **leaves), leaves
