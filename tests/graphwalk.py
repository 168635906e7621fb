"""Walking a recorded graph in tests: its nodes, their ops, what they keep."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from chainrule.tensor import Node, Tensor


def nodes(*roots: Tensor) -> Iterator[Node]:
    """Every node reachable from ``roots`` (each once, no recursion)."""
    stack: list[Any] = [r._node for r in roots if r._node is not None]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        stack.extend(p for p in n.parents if type(p) is Node)


def ops(*roots: Tensor) -> list[str]:
    """The op names of those nodes, sorted."""
    return sorted(n.op.name for n in nodes(*roots))


def kept_arrays(node: Node) -> list[np.ndarray]:
    """The arrays a node holds for backward: kept operands, its output, its ctx."""
    out = [a for a in node.inputs if type(a) is np.ndarray]
    if node.out is not None:
        out.append(node.out)
    ctx = node.ctx
    out.extend(c for c in (ctx if isinstance(ctx, tuple) else (ctx,)) if type(c) is np.ndarray)
    return out
