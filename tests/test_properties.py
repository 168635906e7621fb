"""Property tests: random expression DAGs against finite differences.

Graphs reuse nodes (fan-out), broadcast across shapes, reduce along axes with
and without keepdims, and chain matmuls; gradients of every input must match
central differences in float64. ``CHAINRULE_LONG=1`` runs 100x more examples.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chainrule as cr

LONG = os.environ.get("CHAINRULE_LONG") == "1"
EXAMPLES = 3000 if LONG else 30

# shapes that broadcast with (3, 4)
SHAPES = [(3, 4), (1, 4), (3, 1), (4,), ()]

UNARY = {
    "tanh": cr.tanh,
    "sigmoid": cr.sigmoid,
    "sin": cr.sin,
    "softplus": cr.softplus,
    "square": lambda x: x * x,
    "exp_small": lambda x: cr.exp(cr.tanh(x)),
    "log_pos": lambda x: cr.log(x * x + 1.0),
    "sqrt_pos": lambda x: cr.sqrt(x * x + 0.5),
    "neg": lambda x: -x,
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 1.0),
}


@st.composite
def programs(draw):
    n_inputs = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(n_inputs)]
    steps = []
    n_nodes = n_inputs
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "matmul"]))
        i = draw(st.integers(0, n_nodes - 1))  # any earlier node: reuse is common
        if kind == "unary":
            steps.append(("unary", draw(st.sampled_from(sorted(UNARY))), i))
        elif kind == "binary":
            j = draw(st.integers(0, n_nodes - 1))
            steps.append(("binary", draw(st.sampled_from(sorted(BINARY))), i, j))
        elif kind == "reduce":
            op = draw(st.sampled_from(["sum", "mean", "logsumexp"]))
            axis = draw(st.sampled_from([0, -1]))
            steps.append(("reduce", op, i, axis))  # keepdims so shapes stay broadcastable
        else:
            steps.append(("matmul", i))
        n_nodes += 1
    seed = draw(st.integers(0, 2**32 - 1))
    return shapes, steps, seed


def run(steps, inputs):
    nodes = list(inputs)
    for step in steps:
        if step[0] == "unary":
            nodes.append(UNARY[step[1]](nodes[step[2]]))
        elif step[0] == "binary":
            nodes.append(BINARY[step[1]](nodes[step[2]], nodes[step[3]]))
        elif step[0] == "reduce":
            _, op, i, axis = step
            x = nodes[i]
            if x.ndim == 0:
                nodes.append(x * 1.0)
            elif op == "logsumexp":
                nodes.append(cr.logsumexp(x, axis=axis, keepdims=True))
            else:
                nodes.append(getattr(x, op)(axis=axis, keepdims=True))
        else:
            x = nodes[step[1]]
            m = np.linspace(-1.0, 1.0, 16).reshape(4, 4)
            nodes.append(cr.tanh(x @ m) if x.ndim >= 1 and x.shape[-1] == 4 else x * 0.5)
    # every node contributes, so unused branches are exercised too
    total = None
    for k, node in enumerate(nodes[len(inputs):], start=1):
        term = (node * (0.1 * k)).sum()
        total = term if total is None else total + term
    return total


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_graphs_match_finite_differences(program):
    shapes, steps, seed = program
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-1.5, 1.5, s) for s in shapes]
    assert cr.gradcheck(lambda *ts: run(steps, ts), xs, atol=1e-6, rtol=1e-4)
