"""The backward walk, the notes' worked examples, dtype rules and the engine's errors."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

import chainrule as cr
from chainrule import GraphReleasedError, Tensor

# --------------------------------------------------------------------------
# The notes, number for number
# --------------------------------------------------------------------------


def test_seed000_examples_5_and_6_linear_regression_graph():
    # w = 5, x = 1 gives u = 5, y_hat = 6 and J = 16 (so b = 1, y = 2, e = 4)
    w = cr.tensor(5.0, requires_grad=True, name="w")
    b = cr.tensor(1.0, requires_grad=True, name="b")
    x, y = cr.tensor(1.0), cr.tensor(2.0)
    u = (w * x).retain_grad()
    y_hat = (u + b).retain_grad()
    e = (y_hat - y).retain_grad()
    J = e**2
    assert (u.item(), y_hat.item(), e.item(), J.item()) == (5.0, 6.0, 4.0, 16.0)
    J.backward()
    # dJ/de = 2e = 8, and every local gradient on the way down is 1 (x = 1)
    assert e.grad.item() == 8.0
    assert y_hat.grad.item() == 8.0
    assert u.grad.item() == 8.0
    assert w.grad.item() == 8.0 and b.grad.item() == 8.0


def test_seed000_example_7_fan_out_sums_over_successors():
    # b has two successors, x = a + b and y = b + c; f = x * y.
    # df/db = df/dx * dx/db + df/dy * dy/db = y * 1 + x * 1 = 7 + 2 = 9
    a = cr.tensor(-1.0, requires_grad=True)
    b = cr.tensor(3.0, requires_grad=True)
    c = cr.tensor(4.0, requires_grad=True)
    x, y = a + b, b + c
    f = x * y
    f.backward()
    assert (x.item(), y.item()) == (2.0, 7.0)
    assert b.grad.item() == 9.0
    assert a.grad.item() == 7.0 and c.grad.item() == 2.0


def test_seed000_example_1_chain_rule_by_hand():
    w, x, b, y = 0.5, 1.0, 0.0, 1.0
    wt = cr.tensor(w, dtype=np.float64, requires_grad=True)
    bt = cr.tensor(b, dtype=np.float64, requires_grad=True)
    C = 0.5 * (cr.sigmoid(wt * x + bt) - y) ** 2
    C.backward()
    a = 1 / (1 + np.exp(-(w * x + b)))
    dC_dz = (a - y) * a * (1 - a)  # dC/da * sigma'(z)
    assert np.isclose(wt.grad.item(), dC_dz * x, rtol=1e-12)
    assert np.isclose(bt.grad.item(), dC_dz, rtol=1e-12)


def test_seed001_sigmoid_cross_entropy_gives_a_minus_y():
    z = cr.tensor(np.array([-2.0, 0.3, 1.7]), requires_grad=True)
    y = np.array([0.0, 1.0, 1.0])
    a = cr.sigmoid(z)
    C = -(y * cr.log(a) + (1 - y) * cr.log(1 - a)).sum()
    C.backward()
    np.testing.assert_allclose(z.grad.numpy(), a.numpy() - y, rtol=1e-12)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_seed000_section2_delta_recursion_three_layer_sigmoid_mlp():
    """delta^L = (a^L - y) (.) sigma'(z^L); delta^l = (W^(l+1))^T delta^(l+1) (.) sigma'(z^l);
    dC/dW^l = delta^l (a^(l-1))^T — by hand in NumPy (column vectors, as in the notes)
    against the engine, with delta^l read through retain_grad() on z^l."""
    rng = np.random.default_rng(0)
    sizes = [4, 5, 3, 2]
    Ws = [rng.standard_normal((m, n)) for n, m in zip(sizes[:-1], sizes[1:])]
    bs = [rng.standard_normal((m, 1)) for m in sizes[1:]]
    x = rng.standard_normal((4, 1))
    y = np.array([[0.0], [1.0]])

    # by hand
    a, zs, acts = x, [], [x]
    for W, b in zip(Ws, bs):
        z = W @ a + b
        a = _sigmoid(z)
        zs.append(z)
        acts.append(a)
    deltas = [None] * len(Ws)
    deltas[-1] = (acts[-1] - y) * _sigmoid(zs[-1]) * (1 - _sigmoid(zs[-1]))
    for l in range(len(Ws) - 2, -1, -1):
        deltas[l] = (Ws[l + 1].T @ deltas[l + 1]) * _sigmoid(zs[l]) * (1 - _sigmoid(zs[l]))
    dWs = [d @ a_prev.T for d, a_prev in zip(deltas, acts[:-1])]

    # the engine, with C = 1/2 ||a^L - y||^2
    Wt = [cr.tensor(W, requires_grad=True) for W in Ws]
    bt = [cr.tensor(b, requires_grad=True) for b in bs]
    a = cr.tensor(x)
    zt = []
    for W, b in zip(Wt, bt):
        z = (W @ a + b).retain_grad()
        zt.append(z)
        a = cr.sigmoid(z)
    C = 0.5 * ((a - y) ** 2).sum()
    C.backward()
    for l in range(len(Ws)):
        np.testing.assert_allclose(zt[l].grad.numpy(), deltas[l], rtol=1e-12)
        np.testing.assert_allclose(Wt[l].grad.numpy(), dWs[l], rtol=1e-12)
        np.testing.assert_allclose(bt[l].grad.numpy(), deltas[l], rtol=1e-12)


# --------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------


def test_diamond():
    a = cr.tensor(3.0, requires_grad=True)
    b = a + a
    c = b + b
    c.backward()
    assert a.grad.item() == 4.0


def test_chain_of_a_million_ops_backpropagates():
    x = cr.tensor([1.0], requires_grad=True)
    y = x
    gc.disable()  # the walk is what is tested here, not the cyclic collector
    try:
        for _ in range(1_000_000):
            y = y * 1.0
        y.backward(np.ones(1, np.float32))
    finally:
        gc.enable()
    assert x.grad.numpy().tolist() == [1.0]


def test_order_is_deterministic_and_topological():
    from chainrule.tensor import run_backward

    def visits():
        a = cr.tensor(np.arange(3.0), requires_grad=True)
        outs = [a * k for k in range(1, 6)]
        s = outs[0]
        for o in outs[1:]:
            s = s + o * s
        order = []

        class Obs:
            def visit(self, node, g):
                pass

            def term(self, node, slot, p, c):
                order.append(node)

        run_backward((s.sum(),), (None,), retain_graph=True, observer=Obs())
        return [t.op for t in dict.fromkeys(order)], order

    first, order = visits()
    assert first == visits()[0] == visits()[0]
    # a node's own terms are sent only after every successor has sent its term to it
    sent = {}
    for i, node in enumerate(order):
        sent.setdefault(id(node), i)
    checked = 0
    for node in order:
        for p in node.parents:
            if id(p) in sent:
                assert sent[id(p)] > sent[id(node)]
                checked += 1
    assert checked > 10


def test_gradients_accumulate_across_calls_and_over_successors():
    x = cr.tensor(2.0, requires_grad=True)
    for _ in range(3):
        (x * x).backward()
    assert x.grad.item() == 12.0
    x.grad = None
    (x * 3.0 + x * 4.0).backward()
    assert x.grad.item() == 7.0


def test_shared_passthrough_gradients_are_not_aliased():
    a = cr.tensor([1.0, 2.0], requires_grad=True)
    b = cr.tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()
    a.grad.numpy()[0] = 100.0
    assert b.grad.numpy().tolist() == [1.0, 1.0]


def test_user_seed_is_copied():
    x = cr.tensor([1.0, 2.0], requires_grad=True)
    seed = np.array([1.0, 1.0], np.float32)
    (x + 0.0).backward(seed)
    x.grad.numpy()[:] = 7.0
    assert seed.tolist() == [1.0, 1.0]


def test_graph_is_released_and_second_backward_explains():
    x = cr.tensor(2.0, requires_grad=True)
    y = cr.exp(x) * 3.0
    y.backward()
    with pytest.raises(GraphReleasedError, match=r"retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = cr.tensor(2.0, requires_grad=True)
    y = x**3
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.item() == 24.0


def test_backward_frees_saved_values():
    x = cr.tensor(np.ones(1000), requires_grad=True)
    h = cr.exp(x)
    ref = weakref.ref(h)
    loss = (h * 2.0).sum()
    del h
    loss.backward()
    gc.collect()
    assert ref() is None  # the intermediate is no longer held by the graph


def _probe_rule(saves, seen):
    """y = 3x, recording at its VJP whether it got its output and its input
    and whether its output array is still alive."""
    probe = cr.ops.Rule("probe", lambda x: (x * 3.0, None), saves=saves)

    @probe.defvjp
    def _(g, out, ctx, needs, xp, x):
        seen.append((out is not None, type(x) is np.ndarray, seen_ref[0]() is not None))
        return (g * 3.0,)

    seen_ref = [None]
    return probe, seen_ref


def test_a_node_keeps_exactly_what_its_rule_declares():
    # an output no VJP reads is freed as soon as the user lets go of it, before
    # backward; one the rule keeps stays until its VJP has run
    cases = [
        (cr.ops.SAVES_NOTHING, (False, False, False)),
        (cr.ops.SAVES_OUT, (True, False, True)),
        (cr.ops.SAVES_INPUTS, (False, True, False)),
    ]
    for saves, expected in cases:
        seen = []
        probe, ref = _probe_rule(saves, seen)
        x = cr.tensor(np.ones(1000), requires_grad=True)
        y = cr.apply(probe, x)
        ref[0] = weakref.ref(y.data)
        loss = (y * 2.0).sum()
        del y
        assert (ref[0]() is not None) == expected[2]
        loss.backward()
        assert seen == [expected]
        np.testing.assert_array_equal(x.grad.numpy(), 6.0)
    # a value the user still holds stays, and retain_graph keeps what was saved
    seen = []
    probe, ref = _probe_rule(cr.ops.SAVES_OUT, seen)
    x = cr.tensor(np.ones(3), requires_grad=True)
    y = cr.apply(probe, x)
    ref[0] = weakref.ref(y.data)
    loss = (y * 2.0).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    assert seen == [(True, False, True), (True, False, True)]
    np.testing.assert_array_equal(x.grad.numpy(), 12.0)
    np.testing.assert_array_equal(y.numpy(), 3.0)


def test_a_chain_of_scalings_keeps_no_intermediate_alive():
    # y * 0.999 keeps only the 0-d constant, + 0.001 nothing: the chain's
    # intermediate arrays die as the forward pass moves on (issue 17's chain)
    x = cr.tensor(np.ones((64, 64), np.float32), requires_grad=True)
    refs = []
    y = x
    for _ in range(50):
        y = y * 0.999
        refs.append(weakref.ref(y.data))
        y = y + 0.001
        refs.append(weakref.ref(y.data))
    loss = y.sum()
    alive = sum(r() is not None for r in refs)
    assert alive == 1  # the last y, which this test still holds
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 0.999 ** 50, rtol=1e-5)


def test_keep_values_keeps_every_value_and_operand():
    x = cr.tensor(np.ones(4), requires_grad=True)
    c = cr.tensor(np.full(4, 2.0), name="c")
    with cr.keep_values():
        assert cr.is_keeping_values()
        y = x + c
    assert not cr.is_keeping_values()
    assert y._node.kept[1][1] is c and y._node.value is y.data
    z = x + c
    assert z._node.kept is None and z._node.value is None


def _mask_spy(monkeypatch):
    """Weak references to every mask linear_relu's forward keeps, and, at each
    call of linear's VJP, how many of them are still alive."""
    masks, alive = [], []
    fwd, vjp = cr.RULES["linear_relu"].forward, cr.RULES["linear"].vjp

    def forward(*args):
        out, mask = fwd(*args)
        masks.append(weakref.ref(mask))
        return out, mask

    def linear_vjp(*args):
        alive.append(sum(r() is not None for r in masks[-2:]))
        return vjp(*args)

    monkeypatch.setattr(cr.RULES["linear_relu"], "forward", forward)
    monkeypatch.setattr(cr.RULES["linear"], "vjp", linear_vjp)
    return alive


@pytest.mark.parametrize("compiled", [False, True])
def test_a_split_vjp_frees_its_mask_before_the_weight_gradient_is_allocated(
        monkeypatch, compiled):
    # linear_relu's VJP is delta = g * mask, then linear's VJP: the mask must be
    # gone by the time linear's VJP allocates dW, eager and compiled alike
    rng = np.random.default_rng(0)
    model = cr.nn.Sequential(cr.nn.Linear(5, 8), cr.nn.ReLU(), cr.nn.Linear(8, 8),
                             cr.nn.ReLU(), cr.nn.Linear(8, 3))
    x, y = rng.standard_normal((4, 5)), np.array([0, 1, 2, 0])

    def step(xb, yb):
        model.zero_grad()
        loss = cr.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        return loss

    run = cr.compile(step) if compiled else step
    for _ in range(2):
        run(x, y)  # compiled: record, then replay
    alive = _mask_spy(monkeypatch)
    run(x, y)
    # the last Linear (both masks alive), then layer 2 (its own mask freed),
    # then layer 1 (both freed)
    assert alive == [2, 1, 0]
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    monkeypatch.undo()
    run(x, y)
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_array_equal(g, p.grad.numpy())


def test_retain_graph_keeps_a_split_vjps_mask_for_the_second_pass(monkeypatch):
    rng = np.random.default_rng(1)
    ts = [cr.tensor(rng.standard_normal(s), requires_grad=True) for s in [(6, 3), (4, 3), (4,)]]
    alive = _mask_spy(monkeypatch)
    loss = (cr.ops.linear_relu(*ts) * 2.0).sum()
    loss.backward(retain_graph=True)
    first = [t.grad.numpy().copy() for t in ts]
    loss.backward()
    assert alive == [1, 0]  # kept for the second pass, which frees it
    for f, t in zip(first, ts):
        np.testing.assert_array_equal(2 * f, t.grad.numpy())


def test_defsplit_needs_an_inner_vjp_that_reads_no_output():
    r = cr.ops.Rule("probe_split", lambda x: (x, None))
    with pytest.raises(ValueError, match="'exp' must have a VJP that does not read out"):
        r.defsplit(cr.RULES["exp"])


def test_an_inplace_vjp_never_writes_into_a_gradient_someone_else_sees():
    x = cr.tensor(np.array([[-1.0, 2.0]]), requires_grad=True)
    w = cr.tensor(np.eye(2), requires_grad=True)
    b = cr.tensor(np.zeros(2), requires_grad=True)
    # y = clone(h) passes its gradient through unchanged: h's entry is y's array,
    # which y.grad also holds, so linear_relu's VJP must not zero it in place
    h = cr.ops.linear_relu(x, w, b)
    y = h.clone().retain_grad()
    y.sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), [[1.0, 1.0]])
    np.testing.assert_array_equal(x.grad.numpy(), [[0.0, 1.0]])
    # a hook may keep the gradient it was shown
    kept = []
    h = cr.relu(x * 1.0)
    h.register_hook(lambda g: kept.append(g))
    (h * 1.0).sum().backward()
    np.testing.assert_array_equal(kept[0].numpy(), [[1.0, 1.0]])
    # the same graph, once with the in-place VJP and once without, agree exactly
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32) for s in [(6, 3), (4, 3), (4,)]]
    grads = []
    for inplace in (True, False):
        saved = cr.RULES["linear_relu"].vjp_inplace
        if not inplace:
            cr.RULES["linear_relu"].vjp_inplace = None
        try:
            ts = [cr.tensor(a, requires_grad=True) for a in xs]
            (cr.ops.linear_relu(*ts) * 1.5).sum().backward()
            grads.append([t.grad.numpy() for t in ts])
        finally:
            cr.RULES["linear_relu"].vjp_inplace = saved
    for a, b_ in zip(*grads):
        np.testing.assert_array_equal(a, b_)


def test_non_scalar_backward_needs_a_seed():
    y = cr.tensor(np.ones((3, 2)), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"shape \(3, 2\).*y.backward\(cr.ones_like\(y\)\)"):
        y.backward()
    with pytest.raises(
        ValueError, match=r"seed has shape \(2,\) but the output has shape \(3, 2\)"
    ):
        y.backward(np.ones(2))


def test_backward_on_constant_explains():
    with pytest.raises(RuntimeError, match="does not require grad"):
        cr.tensor(1.0).backward()


def test_create_graph_second_derivatives_closed_form():
    x = cr.tensor(np.array([0.3, -1.2]), requires_grad=True)
    y = (cr.sin(x) * x**2).sum()
    from chainrule.tensor import run_backward

    (g,) = run_backward((y,), (None,), create_graph=True, inputs=[x])
    xv = x.numpy()
    np.testing.assert_allclose(g.numpy(), np.cos(xv) * xv**2 + 2 * xv * np.sin(xv))
    g.sum().backward()
    h = -np.sin(xv) * xv**2 + 4 * xv * np.cos(xv) + 2 * np.sin(xv)
    np.testing.assert_allclose(x.grad.numpy(), h, rtol=1e-12)


def test_hessian_vector_product_via_backward_create_graph():
    A = np.array([[2.0, 1.0], [1.0, 3.0]])
    x = cr.tensor(np.array([1.0, -1.0]), requires_grad=True)
    f = 0.5 * (x @ (A @ x))
    f.backward(create_graph=True)
    v = np.array([0.5, 2.0])
    gx = x.grad
    x.grad = None
    (gx * v).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), A @ v)


def test_hessian_and_nested_grad():
    f = lambda x: (x**4).sum()  # noqa: E731
    assert cr.grad(cr.grad(lambda x: x**4))(np.array(2.0)) == pytest.approx(48.0)
    np.testing.assert_allclose(cr.hessian(f)(np.array([1.0, 2.0])), np.diag([12.0, 48.0]))


def test_retain_grad_and_non_leaf_grad_warning():
    x = cr.tensor(2.0, requires_grad=True)
    z = x * 3.0
    h = z * z
    z.retain_grad()
    h.backward()
    assert z.grad.item() == 12.0
    w = x * 5.0
    with pytest.warns(UserWarning, match=r"retain_grad\(\)"):
        assert w.grad is None


def test_hooks_can_read_and_replace_gradients():
    x = cr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    seen = []
    y = x * 2.0
    y.register_hook(lambda g: seen.append(g.numpy().copy()))
    remove = x.register_hook(lambda g: g * 10.0)
    y.sum().backward()
    assert seen[0].tolist() == [1.0, 1.0]
    assert x.grad.numpy().tolist() == [20.0, 20.0]
    remove()
    x.grad = None
    (x * 2.0).sum().backward()
    assert x.grad.numpy().tolist() == [2.0, 2.0]


def test_hook_handles_remove_with_remove_method():
    x = cr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    handle = x.register_hook(lambda g: g * 10.0)
    handle.remove()
    handle.remove()  # twice is harmless
    (x * 2.0).sum().backward()
    assert x.grad.numpy().tolist() == [2.0, 2.0]


def test_post_accumulate_grad_hook_sees_the_accumulated_grad_in_walk_order():
    # w1 is used after w2, so the walk reaches w2's gradient first... and each
    # hook runs right after its own accumulation, with the running .grad
    w1 = cr.tensor(np.array([1.0, 2.0]), requires_grad=True, name="w1")
    w2 = cr.tensor(np.array([3.0]), requires_grad=True, name="w2")
    seen = []
    h1 = w1.register_post_accumulate_grad_hook(
        lambda t: seen.append((t.name, t.grad.numpy().tolist())))
    w2.register_post_accumulate_grad_hook(
        lambda t: seen.append((t.name, t.grad.numpy().tolist())))
    ((w1 * 2.0).sum() * w2).sum().backward()
    assert sorted(seen) == [("w1", [6.0, 6.0]), ("w2", [6.0])]
    (w1 * 1.0).sum().backward()  # accumulates: the hook sees the sum
    assert seen[-1] == ("w1", [7.0, 7.0])
    h1.remove()
    n = len(seen)
    (w1 * 1.0).sum().backward()
    assert len(seen) == n
    cr.grad(lambda a: (a * a).sum())(np.array([1.0]))  # no accumulation, no hook
    with pytest.raises(RuntimeError, match="only leaf tensors"):
        (w1 * 2.0).register_post_accumulate_grad_hook(lambda t: None)


def test_backward_observer_sees_visits_and_one_term_per_operand_slot():
    b = cr.tensor(1.0, dtype=np.float64, requires_grad=True, name="b")
    x = b * b
    f = x * 3.0
    events = []

    class Obs:
        def visit(self, node, g):
            events.append(("visit", node, float(np.asarray(g))))

        def term(self, node, slot, parent, contribution):
            events.append(("term", node, slot, parent, float(np.asarray(contribution))))

    from chainrule.tensor import run_backward
    run_backward((f,), (None,), retain_graph=True, inputs=[b], observer=Obs())
    # the walk reports graph vertices: op nodes, and leaves themselves
    assert events[0] == ("visit", f._node, 1.0)
    assert events[1] == ("term", f._node, 0, x._node, 3.0)
    assert events[2] == ("visit", x._node, 3.0)
    assert events[3:5] == [("term", x._node, 0, b, 3.0), ("term", x._node, 1, b, 3.0)]
    assert events[5] == ("visit", b, 6.0)


def test_no_grad_detach_and_thread_locality():
    x = cr.tensor(1.0, requires_grad=True)
    with cr.no_grad():
        assert not (x * 2.0).requires_grad
        result = {}

        def other_thread():
            result["recorded"] = (x * 2.0).requires_grad

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert result["recorded"] is True  # no_grad in this thread did not leak
    assert (x * 2.0).requires_grad
    d = (x * 2.0).detach()
    assert d.is_leaf and not d.requires_grad

    @cr.no_grad()
    def f(t):
        return t * 3.0

    assert not f(x).requires_grad


def test_in_place_change_of_saved_input_is_detected():
    w = cr.tensor(np.array([1.0, 2.0]), requires_grad=True, name="w")
    y = (w * w).sum()
    with cr.no_grad():
        w.add_(1.0)
    with pytest.raises(RuntimeError, match=r"'w'.*modified in place"):
        y.backward()


@pytest.mark.parametrize("change", [
    "y.detach().mul_(10)", "y[0:2].mul_(10)", "y.reshape(3).mul_(10)",
    "x.detach().mul_(10)", "x[1:].add_(1)",
])
def test_in_place_change_through_any_alias_of_a_saved_value_is_detected(change):
    # exp keeps its output y; mul keeps both its operands (x and y): a change
    # to that memory through a view, a reshape, detach() or the ndarray behind
    # it would make the gradient 10x off, so backward refuses, naming the op
    x = cr.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = x.exp()
    loss = (y * x).sum()
    with cr.no_grad():
        eval(change, {"x": x, "y": y})
    with pytest.raises(RuntimeError, match=r"backward: '(mul|exp)' saved .*modified in place"):
        loss.backward()


def test_in_place_change_of_memory_no_node_kept_is_allowed():
    # add keeps nothing, so changing its operand later cannot make a gradient wrong
    x = cr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 1.0
    loss = (h + 1.0).sum()
    with cr.no_grad():
        h.detach().mul_(10)
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])


def test_in_place_on_recorded_tensor_is_refused():
    w = cr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"add_.*no_grad"):
        w.add_(1.0)
    h = w * 2.0
    with pytest.raises(RuntimeError, match="in-place"):
        h[0] = 5.0


def test_in_place_change_of_saved_output_is_detected():
    x = cr.tensor(np.array([0.5]), requires_grad=True)
    y = cr.exp(x)
    loss = (y * 1.0).sum()
    with cr.no_grad():
        y.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


# --------------------------------------------------------------------------
# Tensor basics and dtype rules
# --------------------------------------------------------------------------


def test_dtype_rules():
    assert cr.tensor(1.0).dtype == np.float32
    assert cr.tensor([[1.0, 2.0]]).dtype == np.float32
    assert cr.tensor(np.ones(2)).dtype == np.float64
    x64 = cr.tensor(np.ones(3), requires_grad=True)
    y = (cr.exp(x64) * 2.0 + 1.0).sum()
    y.backward()
    assert y.dtype == np.float64 and x64.grad.dtype == np.float64
    x32 = cr.tensor(np.ones(3, np.float32), requires_grad=True)
    assert (x32 * 2.5 - 1).dtype == np.float32
    assert cr.tensor([1, 2]).dtype.kind == "i"


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match=r"floating-point.*int64"):
        cr.tensor(np.array([1, 2]), requires_grad=True)


def test_ndarray_on_the_left_gives_a_tensor():
    x = cr.tensor(np.ones(2), requires_grad=True)
    for y in (np.ones(2) * x, np.ones(2) + x, np.ones(2) - x, np.ones(2) / x, np.ones(2) @ x):
        assert isinstance(y, Tensor) and y.requires_grad


def test_array_protocol_hash_and_repr():
    t = cr.tensor([[1.0, 2.0]], requires_grad=True, name="x")
    assert np.asarray(t).dtype == np.float32
    assert {t: 1}[t] == 1 and hash(t) != hash(cr.tensor([[1.0, 2.0]]))
    assert (t == t).all()
    r = repr(t * 2.0)
    assert "grad_fn=<mul>" in r and "float32" in r
    assert "requires_grad=True" in repr(t) and "name='x'" in repr(t)
    assert t.shape == (1, 2) and t.ndim == 2 and t.size == 2 and len(t) == 1
    assert cr.tensor(3.0).item() == 3.0 and t.tolist() == [[1.0, 2.0]]
    assert (t * 2.0).grad_fn == "mul" and t.grad_fn is None and t.is_leaf


def test_factories():
    assert cr.zeros(2, 3).shape == (2, 3) and cr.ones((2,)).dtype == np.float32
    np.testing.assert_array_equal(cr.randn(3, seed=1).numpy(), cr.randn(3, seed=1).numpy())
    assert cr.arange(4).tolist() == [0, 1, 2, 3]
    assert cr.arange(0.0, 1.0, 0.5).dtype == np.float32


# --------------------------------------------------------------------------
# Errors name the op and the shapes
# --------------------------------------------------------------------------


def test_matmul_error_names_shapes():
    a, b = cr.ones(3, 4), cr.ones(5, 2)
    with pytest.raises(
        ValueError, match=r"matmul: shapes \(3, 4\) and \(5, 2\) do not align: 4 != 5"
    ):
        a @ b
    with pytest.raises(ValueError, match=r"matmul: .*0-d"):
        cr.matmul(cr.tensor(1.0), b)


def test_broadcast_error_names_op_shapes_and_dimension():
    with pytest.raises(ValueError, match=r"add: shapes \(3, 4\) and \(5,\) cannot be broadcast"):
        cr.ones(3, 4) + cr.ones(5)
    with pytest.raises(ValueError, match=r"mul: .*dimension -1.*4.*5"):
        cr.ones(3, 4) * np.ones(5)


def test_reduction_axis_errors():
    with pytest.raises(ValueError, match=r"sum: axis 3 is out of range for a tensor with 2"):
        cr.ones(2, 3).sum(axis=3)
    with pytest.raises(ValueError, match="repeated axis"):
        cr.ones(2, 3).mean(axis=(0, -2))
    with pytest.raises(ValueError, match=r"max of an empty tensor of shape \(0,\)"):
        cr.zeros(0).max()


def test_other_op_errors():
    with pytest.raises(ValueError, match=r"reshape: .*\(2, 3\)"):
        cr.ones(2, 3).reshape(4, 2)
    with pytest.raises(IndexError, match="getitem"):
        cr.ones(2, 3)[5]
    with pytest.raises(
        ValueError, match=r"linear: input shape \(2, 3\) does not fit weight shape \(4, 5\)"
    ):
        cr.linear(cr.ones(2, 3), cr.ones(4, 5), cr.ones(4))
    with pytest.raises(ValueError, match=r"squeeze: axis 2 is out of range"):
        cr.ones(2, 3).squeeze(2)


# --------------------------------------------------------------------------
# Numerical stability at |x| = 1000
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [cr.sigmoid, cr.softplus, cr.softmax, cr.log_softmax, lambda x: cr.logsumexp(x, axis=-1)],
    ids=["sigmoid", "softplus", "softmax", "log_softmax", "logsumexp"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_at_plus_minus_1000(fn, dtype):
    x = cr.tensor(
        np.array([[-1000.0, 0.0, 1000.0], [1000.0, 999.0, -1000.0]], dtype), requires_grad=True
    )
    y = fn(x)  # RuntimeWarnings are errors in this suite
    assert np.isfinite(y.numpy()).all()
    (y * np.arange(y.size).reshape(y.shape).astype(dtype)).sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_max_splits_gradient_between_ties():
    x = cr.tensor(np.array([1.0, 3.0, 3.0, 2.0]), requires_grad=True)
    x.max().backward()
    assert x.grad.numpy().tolist() == [0.0, 0.5, 0.5, 0.0]
    y = cr.tensor(np.array([2.0, 2.0]), requires_grad=True)
    z = cr.tensor(np.array([2.0, 1.0]), requires_grad=True)
    cr.maximum(y, z).sum().backward()
    assert y.grad.numpy().tolist() == [0.5, 1.0] and z.grad.numpy().tolist() == [0.5, 0.0]


# --------------------------------------------------------------------------
# Functional transforms
# --------------------------------------------------------------------------


def test_value_and_grad_with_argnums_tuple():
    def f(w, x, b):
        return ((w * x + b - 1.0) ** 2).sum()

    w, x, b = np.array(2.0), np.array(3.0), np.array(0.5)
    val, (gw, gb) = cr.value_and_grad(f, argnums=(0, 2))(w, x, b)
    r = 2 * 3 + 0.5 - 1
    assert val == pytest.approx(r**2)
    assert gw == pytest.approx(2 * r * 3) and gb == pytest.approx(2 * r)
    assert cr.grad(f, 1)(w, x, b) == pytest.approx(2 * r * 2)


def test_grad_errors():
    with pytest.raises(ValueError, match="must return a scalar"):
        cr.grad(lambda x: x * 2.0)(np.ones(3))
    with pytest.raises(TypeError, match="only floating inputs"):
        cr.grad(lambda x: x.sum())(np.array([1, 2]))


def test_vjp_and_jacobian():
    A = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    out, back = cr.vjp(lambda x: cr.tanh(x @ A.T), np.array([0.1, 0.2, 0.3]))
    xv = np.array([0.1, 0.2, 0.3])
    J = (1 - np.tanh(A @ xv) ** 2)[:, None] * A
    np.testing.assert_allclose(out, np.tanh(A @ xv))
    np.testing.assert_allclose(back(np.array([1.0, 0.0]))[0], J[0])
    np.testing.assert_allclose(back(np.array([0.0, 2.0]))[0], 2 * J[1])  # callable twice
    np.testing.assert_allclose(cr.jacobian(lambda x: cr.tanh(x @ A.T))(xv), J)


def test_functional_leaves_grad_untouched():
    w = cr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    g = cr.grad(lambda x: (x * w).sum())(np.array([3.0, 4.0]))
    np.testing.assert_allclose(g, [1.0, 2.0])
    assert w._grad is None


def test_two_threads_accumulating_into_one_leaf_lose_no_update():
    # .grad accumulation is a read-modify-write: without the lock, two threads
    # running backward() on graphs that share a leaf lose updates
    import threading

    w = cr.tensor(np.zeros((512, 512)), requires_grad=True)
    x = np.ones((512, 512))
    n_threads, per_thread = 4, 40
    start = threading.Barrier(n_threads)

    def work():
        start.wait()
        for _ in range(per_thread):
            (w * x).sum().backward()

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(w.grad.numpy(), n_threads * per_thread)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_python_scalars_give_numpys_own_values_bit_for_bit(dtype, op):
    # a Python number beside a tensor reaches NumPy as a cached 0-d array of
    # the tensor's dtype (faster); the values must be NumPy's with the number
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(64) * 100).astype(dtype)
    scalars = [0.1, 1e-3, 2.5, -7, 3, 2 ** 24 + 1, 1e30, -0.0, 0.0, float("nan"), 1e-40]
    fn = {"+": lambda u, v: u + v, "-": lambda u, v: u - v,
          "*": lambda u, v: u * v, "/": lambda u, v: u / v}[op]
    with np.errstate(all="ignore"):
        for s in scalars:
            for t in (cr.tensor(a), cr.tensor(a, requires_grad=True)):
                got, want = fn(t, s).numpy(), fn(a, s)
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
                got, want = fn(s, t).numpy(), fn(s, a)
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
