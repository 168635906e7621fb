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
from chainrule.tensor import Tensor, run_backward

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
    assert all(r.vjp is not None for r in cr.RULES.values())


def _nodes(out):
    """Every tensor in the graph of ``out``."""
    seen, stack = set(), [out]
    while stack:
        t = stack.pop()
        if id(t) not in seen:
            seen.add(id(t))
            stack.extend(t._parents)
            yield t


def _uses_rule(fn, xs, name):
    """The graph built by fn contains the rule under test (cases can't drift)."""
    out = fn(*[Tensor(x, requires_grad=True) for x in xs])
    return any(t.op == name for t in _nodes(out))


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
    for t in _nodes(out):
        if t.op == name and name != "astype" and all(
            p.dtype == np.float32 for p in t._parents if p.dtype.kind == "f"
        ):
            assert t.dtype == np.float32, f"{name} turned float32 into {t.dtype}"
    out.backward(np.ones(out.shape, out.dtype))
    for t in ts:
        assert t.grad is None or t.grad.dtype == np.float32


def _own_node(fn, xs, name):
    """The rule's node in the graph fn builds, with the arrays its VJP receives."""
    out = fn(*[Tensor(x, requires_grad=True) for x in xs])
    node = next(t for t in _nodes(out) if t.op == name)
    return node, [p.data for p in node._parents]


SHORTCUT_PARAMS = [
    p for p in PARAMS
    if cr.RULES[p.values[0]].vjp_inplace is not None or not cr.RULES[p.values[0]].uses_out
]


@pytest.mark.parametrize("name, cid, make, fn", SHORTCUT_PARAMS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vjp_shortcuts_give_the_plain_vjps_values_bit_for_bit(name, cid, make, fn, dtype):
    """``vjp_inplace`` (may overwrite g) and ``uses_out=False`` (gets out=None)
    are what a plain backward pass calls: they must agree with ``vjp`` exactly."""
    rule = cr.RULES[name]
    rng = np.random.default_rng(3)
    node, arrays = _own_node(fn, [x.astype(dtype) for x in make(rng)], name)
    g = rng.standard_normal(node.shape).astype(node.dtype)
    needs = node._needs
    ns = cr.ops.NUMPY_NS
    expected = rule.vjp(g.copy(), node.data, node._ctx, needs, ns, *arrays)
    out = node.data if rule.uses_out else None
    variants = {"out=None": rule.vjp}
    if rule.vjp_inplace is not None:
        variants["vjp_inplace"] = rule.vjp_inplace
    for label, vjp in variants.items():
        got = vjp(g.copy(), out, node._ctx, needs, ns, *arrays)
        for i, (e, r) in enumerate(zip(expected, got)):
            assert (e is None) == (r is None), (label, i)
            if e is not None:
                np.testing.assert_array_equal(np.asarray(r), np.asarray(e), err_msg=f"{label} {i}")
                assert np.asarray(r).dtype == np.asarray(e).dtype


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
