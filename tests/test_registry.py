"""Every rule in the registry, gradient-checked in float64.

Driven by ``chainrule.ops.RULES``: a rule that has no cases in
``cases_ops.py`` (or ``cases_nn.py`` for the loss rules) fails
``test_every_rule_has_cases``, so no op can skip the check.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import chainrule as cr
from cases_ops import CASES as OPS_CASES
from chainrule.functional import GradcheckError
from chainrule.ops import Saves
from chainrule.tensor import Meta, Node, Tensor, run_backward

ALL_CASES = dict(OPS_CASES)
if importlib.util.find_spec("chainrule.nn") is not None:
    import chainrule.nn  # noqa: F401  (registers the loss rules)

    if importlib.util.find_spec("cases_nn") is not None:
        from cases_nn import CASES as NN_CASES

        ALL_CASES.update(NN_CASES)

PARAMS = [
    pytest.param(name, cid, make, fn, id=f"{name}[{cid}]")
    for name, cases in sorted(ALL_CASES.items())
    for cid, make, fn in cases
]


def test_every_rule_has_cases():
    missing = sorted(set(cr.RULES) - set(ALL_CASES))
    assert not missing, f"rules without gradient-check cases: {missing}"
    unknown = sorted(set(ALL_CASES) - set(cr.RULES))
    assert not unknown, f"cases for rules that do not exist: {unknown}"


def test_every_rule_has_a_vjp():
    assert all(r.has_vjp for r in cr.RULES.values())


def test_backward_through_a_rule_without_vjp_names_it():
    # a rule made without defvjp records fine; backward says which rule lacks
    # a VJP (it used to die with "'NoneType' object is not callable")
    from chainrule.ops import Rule, apply

    cube = Rule("cube_without_vjp", lambda x: (x**3, None))  # not registered in RULES
    assert not cube.has_vjp
    x = cr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = apply(cube, x)
    np.testing.assert_array_equal(y.data, [1.0, 8.0])
    for loss in (y.sum(), apply(cube, x * 2.0).sum()):  # last node, and one inside the graph
        with pytest.raises(NotImplementedError, match="cube_without_vjp.*defvjp"):
            loss.backward()
    assert x.grad is None
    cube.defvjp(lambda g, out, ctx, needs, xp, x: (g * 3 * x * x,))
    assert cube.has_vjp
    apply(cube, x).sum().backward()
    np.testing.assert_allclose(x.grad.data, [3.0, 12.0])


def _nodes(out):
    """Every node in the graph of ``out``."""
    seen, stack = set(), [out._node]
    while stack:
        n = stack.pop()
        if id(n) not in seen:
            seen.add(id(n))
            stack.extend(p for p in n.parents if type(p) is Node)
            yield n


def _uses_rule(fn, xs, name):
    """The graph built by fn contains the rule under test (cases can't drift)."""
    out = fn(*[Tensor(x, requires_grad=True) for x in xs])
    return any(n.op.name == name for n in _nodes(out))


@pytest.mark.parametrize("name, cid, make, fn", PARAMS)
def test_first_order(name, cid, make, fn):
    xs = make(np.random.default_rng(0))
    assert _uses_rule(fn, xs, name)
    assert cr.gradcheck(fn, xs)


@pytest.mark.parametrize("name, cid, make, fn", PARAMS)
def test_second_order(name, cid, make, fn):
    """Hessian-vector products through create_graph vs differences of gradients."""
    rng = np.random.default_rng(1)
    xs = make(rng)
    probe = fn(*[Tensor(x) for x in xs])
    r = rng.standard_normal(probe.shape)
    vs = [rng.standard_normal(x.shape) for x in xs]

    def gradient(vals, create):
        ts = [Tensor(v, requires_grad=True) for v in vals]
        loss = (fn(*ts) * r).sum()
        gs = run_backward((loss,), (None,), create_graph=create, inputs=ts)
        return ts, gs

    ts, gs = gradient(xs, True)
    # d/de <grad f(x + e v), w> for w = v gives v^T H v; use the sum over inputs
    total = None
    for g, v in zip(gs, vs):
        if g is None or not isinstance(g, Tensor) or not g.requires_grad:
            continue
        term = (g * v).sum()
        total = term if total is None else total + term
    eps = 1e-5
    plus = gradient([x + eps * v for x, v in zip(xs, vs)], False)[1]
    minus = gradient([x - eps * v for x, v in zip(xs, vs)], False)[1]
    numeric = [
        (np.zeros_like(x) if p is None else (p - m) / (2 * eps))
        for x, p, m in zip(xs, plus, minus)
    ]
    if total is None:  # gradient does not depend on the inputs: Hessian is zero
        for n in numeric:
            np.testing.assert_allclose(n, 0, atol=1e-5)
        return
    hv = run_backward((total,), (None,), inputs=ts)
    for i, (a, n) in enumerate(zip(hv, numeric)):
        a = np.zeros_like(n) if a is None else np.asarray(a)
        np.testing.assert_allclose(a, n, atol=1e-5, rtol=1e-3, err_msg=f"input {i}")


@pytest.mark.parametrize("name, cid, make, fn", PARAMS)
def test_float32_stays_float32(name, cid, make, fn):
    xs = [x.astype(np.float32) for x in make(np.random.default_rng(2))]
    ts = [Tensor(x, requires_grad=True) for x in xs]
    out = fn(*ts)
    # the rule's own nodes: float32 in -> float32 out (cases may mix in float64 on purpose)
    for n in _nodes(out):
        if n.op.name == name and name != "astype" and all(
            a.dtype == np.float32 for a in n.inputs if a.dtype.kind == "f"
        ):
            assert n.dtype == np.float32, f"{name} turned float32 into {n.dtype}"
    out.backward(np.ones(out.shape, out.dtype))
    for t in ts:
        assert t.grad is None or t.grad.dtype == np.float32


def _own_node(fn, xs, name):
    """The rule's node in the graph fn builds, recorded with every value kept."""
    with cr.keep_values():
        out = fn(*[Tensor(x, requires_grad=True) for x in xs])
    return next(n for n in _nodes(out) if n.op.name == name)


def _minimal(rule, node, needs):
    """What a plain backward pass hands the VJP for these needs: the kept
    operands, stand-ins (shape and dtype only) for the others, and the
    output only if the rule keeps it."""
    keep, keep_out = rule.plan(needs)
    args = [a if k or a.ndim == 0 else Meta(a) for a, k in zip(node.inputs, keep)]
    return args, (node.out if keep_out else None)


@pytest.mark.parametrize("name, cid, make, fn", PARAMS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vjp_from_what_the_node_keeps_gives_the_full_vjps_values_bit_for_bit(
        name, cid, make, fn, dtype):
    """A plain backward pass calls the VJP with only what the rule declared it
    keeps (``Saves``), and the in-place variant where the rule has one: for
    every pattern of which operands need a gradient, both must agree with the
    VJP given every value, bit for bit. A declaration that leaves out
    something the VJP reads fails here (a stand-in has no values)."""
    rule = cr.RULES[name]
    rng = np.random.default_rng(3)
    node = _own_node(fn, [x.astype(dtype) for x in make(rng)], name)
    g = rng.standard_normal(node.shape).astype(node.dtype)
    ns = cr.ops.NUMPY_NS
    full = list(node.inputs)
    slots = [i for i, n in enumerate(node.needs) if n]
    patterns = [tuple(node.needs)] + [
        tuple(i == j for i in range(len(full))) for j in slots if len(slots) > 1]
    for needs in patterns:
        expected = rule.vjp(g.copy(), node.out, node.ctx, needs, ns, *full)
        args, out = _minimal(rule, node, needs)
        variants = {"kept values": rule.vjp}
        if rule.vjp_inplace is not None:
            variants["vjp_inplace"] = rule.vjp_inplace
        for label, vjp in variants.items():
            got = vjp(g.copy(), out, node.ctx, needs, ns, *args)
            for i, (e, r) in enumerate(zip(expected, got)):
                if not needs[i]:
                    continue
                assert (e is None) == (r is None), (label, needs, i)
                if e is not None:
                    np.testing.assert_array_equal(np.asarray(r), np.asarray(e),
                                                  err_msg=f"{label} {needs} {i}")
                    assert np.asarray(r).dtype == np.asarray(e).dtype


# What each rule's node keeps for backward when every operand needs a
# gradient: (operand slots kept, output kept). Written out here, apart from
# the declarations in ops.py, so that a rule that starts keeping more (its
# output "just in case") fails this test and the change is a decision.
_IN = "inputs"  # every operand slot
EXPECTED_SAVES = {
    "add": ((), False), "sub": ((), False), "neg": ((), False),
    "mul": ((0, 1), False), "div": ((1,), True), "pow": ((0, 1), True),
    "maximum": ((0, 1), False), "minimum": ((0, 1), False), "where": ((), False),
    "abs": ((0,), False), "exp": ((), True), "log": ((0,), False), "sqrt": ((), True),
    "sin": ((0,), False), "cos": ((0,), False), "tanh": ((), True), "sigmoid": ((), True),
    "relu": ((), True), "leaky_relu": ((0,), False), "softplus": ((0,), False),
    "clip": ((0,), False), "astype": ((), False), "clone": ((), False),
    "sum": ((), False), "mean": ((), False), "max": ((0,), True), "min": ((0,), True),
    "var": ((0,), False), "std": ((0,), True), "logsumexp": ((0,), True), "softmax": ((), True),
    "log_softmax": ((), True), "matmul": ((0, 1), False), "linear": ((0, 1), False),
    "linear_nobias": ((0, 1), False), "linear_relu": ((0, 1), False),
    "reshape": ((), False), "transpose": ((), False), "broadcast_to": ((), False),
    "getitem": ((), False), "scatter_add": ((), False), "concatenate": ((), False),
    "stack": ((), False),
    "cross_entropy": ((0,), False), "cross_entropy_probs": ((0, 1), False),
    "nll_loss": ((), False), "binary_cross_entropy_with_logits": ((0, 1), False),
    "binary_cross_entropy": ((0, 1), False), "mse_loss": ((0, 1), False),
    "ndtr": ((0,), False), "gelu": ((0,), False), "silu": ((0,), False), "elu": ((), True),
    "normalize": ((0,), True), "cross_entropy_weighted": ((0,), False),
    "l1_loss": ((0, 1), False), "huber_loss": ((0, 1), False),
}


def test_every_rule_declares_what_it_saves():
    undeclared = sorted(set(cr.RULES) - set(EXPECTED_SAVES))
    assert not undeclared, f"add these rules to EXPECTED_SAVES: {undeclared}"
    for name, (slots, out) in EXPECTED_SAVES.items():
        rule = cr.RULES[name]
        n = 1 + max((*slots, 0, 1 if name in ("add", "sub", "mul", "div", "pow", "where",
                                               "maximum", "minimum", "matmul", "mse_loss",
                                               "l1_loss", "huber_loss",
                                               "linear_nobias", "cross_entropy_probs",
                                               "binary_cross_entropy",
                                               "binary_cross_entropy_with_logits") else 0,
                     2 if name.startswith("linear") and name != "linear_nobias" else 0))
        keep, keep_out = rule.plan((True,) * n)
        assert tuple(i for i, k in enumerate(keep) if k) == slots, name
        assert keep_out == out, name


@pytest.mark.parametrize("name, cid, make, fn", PARAMS)
def test_nodes_keep_exactly_what_their_rule_declares(name, cid, make, fn):
    """The engine side of the declarations: a recorded node holds arrays
    exactly where its rule keeps them, stand-ins elsewhere (0-d constants
    aside, which are kept whole: a scalar costs nothing)."""
    out = fn(*[Tensor(x, requires_grad=True) for x in make(np.random.default_rng(4))])
    for node in _nodes(out):
        if node.op.name != name:
            continue
        keep, keep_out = node.op.plan(node.needs)
        for i, (a, k) in enumerate(zip(node.inputs, keep)):
            if k:
                assert type(a) is np.ndarray, (name, i)
            elif not (type(a) is np.ndarray and a.ndim == 0):
                assert isinstance(a, (Node, Tensor, Meta)), (name, i, type(a))
        assert (node.out is not None) == keep_out, name


def test_an_undeclared_rule_keeps_everything():
    r = cr.ops.Rule("undeclared_square", lambda x: (x * x, None))
    assert r.saves.plan((True,)) == ((True,), True)
    assert Saves(inputs=((1,), (0,))).plan((True, False)) == ((False, True), False)
    assert Saves(rest=True).plan((False, True, False)) == ((True, True, True), False)


def test_gradcheck_reports_input_element_and_values():
    bad = cr.ops.Rule("bad_square", lambda x: (x * x, None))
    bad.defvjp(lambda g, out, ctx, needs, xp, x: (g * 3 * x,))  # wrong: should be 2x

    def f(x):
        return cr.apply(bad, x).sum()

    with pytest.raises(GradcheckError) as info:
        cr.gradcheck(f, [np.array([1.0, 2.0])])
    msg = str(info.value)
    assert "input 0" in msg and "element (1,)" in msg
    assert "analytic 6.0" in msg and "numeric 4.0" in msg


def test_saved_tensors_page_matches_the_rules():
    """docs/saved-tensors.md lists what every rule keeps; it must say what the code does."""
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "saved-tensors.md").read_text()
    rows = dict(
        line.strip("| ").split(" | ", 1)
        for line in page.splitlines()
        if line.startswith("| `")
    )
    documented = {k.strip("`"): v.rstrip(" |") for k, v in rows.items()}
    actual = {name: r.saves.describe() for name, r in cr.RULES.items()}
    assert documented == actual, sorted(set(documented.items()) ^ set(actual.items()))
