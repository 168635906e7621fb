"""The course notes' worked examples, term for term, through cr.explain and `chainrule explain`.

Each test compares the printed terms (backpropagated · local = product) and
their sums with the notes' hand-worked numbers, not only the totals.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import chainrule as cr
from chainrule.cli import main as cli_main

F64 = np.float64


@pytest.fixture(autouse=True)
def _teaching_mode():
    """The notes show every value: record each example's graph with every value kept
    (``cr.keep_values``), as a teaching notebook does with ``cr.set_keep_values(True)``."""
    cr.set_keep_values(True)
    yield
    cr.set_keep_values(False)


def leaf(value, name, grad=True):
    return cr.tensor(value, dtype=F64, requires_grad=grad, name=name)


def lines_of(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def block(text: str, head: str) -> list[str]:
    """The lines of one node's block of the text view, from its head line on."""
    lines = lines_of(text)
    start = next(i for i, line in enumerate(lines) if line.split("] ", 1)[-1].startswith(head))
    out = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        out.append(line)
    return out


def run_cli(capsys, *args: str) -> str:
    assert cli_main(["explain", *args, "--no-graph"]) == 0
    return capsys.readouterr().out


# --------------------------------------------------------------------------
# Note 000, Examples 5-6: the linear-regression graph, J = 16, every gradient 8
# --------------------------------------------------------------------------

EX56 = [
    "[1] J = e ** 2 = 16",
    "    ∂J/∂J = 1  (the seed)",
    "[2] e = y_hat - y = 4",
    "    via J:  seed · ∂J/∂e = 1 · 8 = 8",
    "    ∂J/∂e = 8",
    "[3] y_hat = u + b = 6",
    "    via e:  ∂J/∂e · ∂e/∂y_hat = 8 · 1 = 8",
    "    ∂J/∂y_hat = 8",
    "[4] u = w * x = 5",
    "    via y_hat:  ∂J/∂y_hat · ∂y_hat/∂u = 8 · 1 = 8",
    "    ∂J/∂u = 8",
    "[5] b = 1  (leaf)",
    "    via y_hat:  ∂J/∂y_hat · ∂y_hat/∂b = 8 · 1 = 8",
    "    ∂J/∂b = 8",
    "[6] w = 5  (leaf)",
    "    via u:  ∂J/∂u · ∂u/∂w = 8 · 1 = 8",
    "    ∂J/∂w = 8",
]


def regression():
    w, b = leaf(5.0, "w"), leaf(1.0, "b")
    x, y = leaf(1.0, "x", False), leaf(2.0, "y", False)
    u = (w * x).named("u")
    y_hat = (u + b).named("y_hat")
    e = (y_hat - y).named("e")
    return (e**2).named("J")


def test_examples_5_6_by_explain_term_for_term():
    ledger = cr.explain(regression())
    text = ledger.to_text()
    lines = lines_of(text)
    start = lines.index(EX56[0])
    assert lines[start:start + len(EX56)] == EX56
    # the notes compute ∂J/∂J, ∂J/∂e, ∂J/∂y_hat, ∂J/∂u in this order
    assert [n.name for n in ledger.nodes[:4]] == ["J", "e", "y_hat", "u"]
    assert text.count("Backward pass of J = 16") == 1


def test_examples_5_6_by_the_command_line(capsys):
    out = run_cli(capsys, "u = w*x; y_hat = u + b; e = y_hat - y; J = e**2",
                  "w=5", "x=1", "b=1", "y=2", "--const", "x,y")
    lines = lines_of(out)
    start = lines.index(EX56[0])
    assert lines[start:start + len(EX56)] == EX56
    assert "  u = w*x = 5" in lines and "  J = e**2 = 16" in lines  # the forward pass
    assert lines[-2:] == ["  ∂J/∂w = 8", "  ∂J/∂b = 8"]
    # the form: unnamed intermediates named by their piece
    out = run_cli(capsys, "u = w*x; J = (u + b - y)**2", "w=5", "x=1", "b=1", "y=2")
    assert block(out, "(u + b - y) = ") == [
        "[2] (u + b - y) = (u + b) - y = 4",
        "    via J:  seed · ∂J/∂(u + b - y) = 1 · 8 = 8",
        "    ∂J/∂(u + b - y) = 8",
    ]
    assert "  ∂J/∂w = 8" in out and "  ∂J/∂x = 40" in out and "  ∂J/∂y = -8" in out


# --------------------------------------------------------------------------
# Note 000, Example 7: a node with two successors, 7 + 2 = 9
# --------------------------------------------------------------------------

EX7_B = [
    "[4] b = 3  (leaf)",
    "    via x:  ∂f/∂x · ∂x/∂b = 7 · 1 = 7",
    "    via y:  ∂f/∂y · ∂y/∂b = 2 · 1 = 2",
    "    ∂f/∂b = 7 + 2 = 9",
]


def test_example_7_by_explain_and_the_command_line(capsys):
    a, b, c = leaf(-1.0, "a"), leaf(3.0, "b"), leaf(4.0, "c")
    f = ((a + b).named("x") * (b + c).named("y")).named("f")
    ledger = cr.explain(f)
    assert block(ledger.to_text(), "b = 3") == EX7_B
    # the notes' order of the backpropagated gradients: f, then x and y, then a, b, c
    assert [n.name for n in ledger.nodes[:1]] == ["f"]
    assert {n.name for n in ledger.nodes[1:3]} == {"x", "y"}
    out = run_cli(capsys, "x = a + b; y = b + c; f = x*y", "a=-1", "b=3", "c=4")
    assert block(out, "b = 3") == EX7_B


EX7_BB = [
    "[5] b = 1  (leaf)",
    "    via x:  ∂f/∂x · ∂x/∂b = 3.5 · 2 = 7",
    "        (b fills operand slots 0, 1 of x = b * b; their local gradients add up: "
    "∂x/∂b = 1 + 1 = 2)",
]


def test_example_7_written_as_b_times_b():
    # x = b*b, y = 2b + 1.5 at b = 1: df/db = 3.5 * 2 + 1 * 2 = 7 + 2 = 9, ONE term via x
    b = leaf(1.0, "b")
    x = (b * b).named("x")
    t = (2 * b).named("t")
    y = (t + 1.5).named("y")
    f = (x * y).named("f")
    ledger = cr.explain(f)
    got = block(ledger.to_text(), "b = 1")
    assert got[:3] == EX7_BB
    assert got[3:] == ["    via t:  ∂f/∂t · ∂t/∂b = 1 · 2 = 2", "    ∂f/∂b = 7 + 2 = 9"]
    (via_x, via_t) = ledger["b"].terms
    assert via_x.slots == [0, 1] and float(via_x.local) == 2.0
    assert [float(v) for v in via_x.slot_locals] == [1.0, 1.0]


def test_example_7_b_times_b_on_the_command_line(capsys):
    out = run_cli(capsys, "x = b*b; y = 2*b + 1.5; f = x*y", "b=1")
    got = block(out, "b = 1")
    assert got[:3] == EX7_BB
    assert got[3:] == ["    via (2*b):  ∂f/∂(2*b) · ∂(2*b)/∂b = 1 · 2 = 2", "    ∂f/∂b = 7 + 2 = 9"]


# --------------------------------------------------------------------------
# Note 000, Examples 1-2: C = 1/2 (sigma(wx + b) - y)^2
# --------------------------------------------------------------------------


def test_examples_1_2_intermediate_variables(capsys):
    a_ = 1 / (1 + math.exp(-0.5))
    dC_da, sp = a_ - 1, a_ * (1 - a_)
    expected = [
        "[5] z = mul#1 + b = 0.5",
        f"    via a:  ∂C/∂a · ∂a/∂z = {dC_da:.4g} · {sp:.4g} = {dC_da * sp:.4g}",
        f"    ∂C/∂z = {dC_da * sp:.4g}",
    ]
    w, b = leaf(0.5, "w"), leaf(0.0, "b")
    x, y = leaf(1.0, "x", False), leaf(1.0, "y", False)
    z = (w * x + b).named("z")
    a = cr.sigmoid(z).named("a")
    C = (0.5 * (a - y) ** 2).named("C")
    assert block(cr.explain(C).to_text(), "z = ") == expected
    out = run_cli(capsys, "z = w*x + b; a = sigmoid(z); C = 0.5*(a - y)**2", "w=0.5", "x=1",
                  "b=0", "y=1", "--const", "x,y")
    assert block(out, "z = ")[1:] == expected[1:]


# --------------------------------------------------------------------------
# Note 000 section 2: the delta recursion on a 3-layer sigmoid network
# --------------------------------------------------------------------------


def sigmoid_mlp():
    nn = cr.nn
    cr.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4, dtype=F64), nn.Sigmoid(),
        nn.Linear(4, 4, dtype=F64), nn.Sigmoid(),
        nn.Linear(4, 2, dtype=F64), nn.Sigmoid(),
    )
    x = np.array([[0.5, -1.0, 2.0]])  # one sample, as in Algorithm 1
    y = np.array([[1.0, 0.0]])
    return model, x, y


def by_hand(model, x, y):
    """The notes' forward and backward equations, in NumPy, column vectors."""
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    Ws = [model[i].weight.data for i in (0, 2, 4)]
    bs = [model[i].bias.data for i in (0, 2, 4)]
    a = [x[0]]
    zs = []
    for W, b in zip(Ws, bs):
        zs.append(W @ a[-1] + b)
        a.append(sig(zs[-1]))
    sp = [sig(z) * (1 - sig(z)) for z in zs]
    deltas = [None, None, (a[-1] - y[0]) * sp[2]]  # ∇_a C ⊙ σ'(z^L), C = 1/2 |a - y|^2
    for l_ in (1, 0):
        deltas[l_] = (Ws[l_ + 1].T @ deltas[l_ + 1]) * sp[l_]
    dWs = [np.outer(deltas[i], a[i]) for i in range(3)]
    return zs, a, sp, deltas, dWs, Ws


def test_mlp_delta_recursion_term_for_term():
    model, x, y = sigmoid_mlp()
    with cr.keep_values():
        C = (0.5 * ((model(cr.tensor(x)) - y) ** 2).sum()).named("C")
    ledger = cr.explain(C, model=model, neurons=True)
    zs, a, sp, deltas, dWs, Ws = by_hand(model, x, y)
    assert [rec.index for rec in ledger.layers] == [1, 2, 3]
    for rec in ledger.layers:
        i = rec.index - 1
        np.testing.assert_allclose(rec.z[0], zs[i], rtol=1e-12)
        np.testing.assert_allclose(rec.sigma_prime[0], sp[i], rtol=1e-12)
        np.testing.assert_allclose(rec.delta[0], deltas[i], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(rec.dW, dWs[i], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(rec.db, deltas[i], rtol=1e-10, atol=1e-15)
    text = ledger.to_text()
    fmt = lambda arr: cr.viz.format_value(np.asarray(arr)[None, :])  # noqa: E731
    # the printed recursion, layer 2: (W³)ᵀ δ³, σ'(z²), δ² = ((W³)ᵀ δ³) ⊙ σ'(z²)
    assert f"  (W³)ᵀ δ³ = {fmt(Ws[2].T @ deltas[2])}  (= ∂C/∂a²" in text
    assert f"  σ'(z²) = {fmt(sp[1])}" in text
    assert f"  δ² = ((W³)ᵀ δ³) ⊙ σ'(z²) = {fmt(deltas[1])}" in text
    assert f"  δ³ = ∂C/∂a³ ⊙ σ'(z³) = {fmt(deltas[2])}" in text
    assert "  ∂C/∂W¹ = δ¹ (a⁰)ᵀ = shape (4, 3)" in text
    # the per-neuron sum over successors k, term by term: Σ_k δ³_k W³_kj for unit 1
    d3, W3 = deltas[2], Ws[2]
    terms = [d3[k] * W3[k, 0] for k in range(2)]
    v = cr.viz.format_value
    unit1 = (f"    unit 1: Σ_k δ³_k W³_k1 = {v(d3[0])}·{_factor(W3[0, 0])} + "
             f"{v(d3[1])}·{_factor(W3[1, 0])} = ")
    line = next(line for line in lines_of(text) if line.startswith("    unit 1: Σ_k δ³_k"))
    assert line.startswith(unit1.replace("+ -", "− ")), line
    assert line.endswith(f" = {v(sum(terms))}")
    # the node trace names z^l and a^l as the notes do
    assert ledger["z²"].grad is not None and ledger["a³"].value.shape == (1, 2)


def _factor(x: float) -> str:
    text = cr.viz.format_value(np.asarray(x))
    return f"({text})" if text.startswith("-") else text


def test_mlp_delta_recursion_one_unit_per_layer_on_the_command_line(capsys):
    # the same recursion with scalars: δ^l = σ'(z^l) · w^(l+1) δ^(l+1)
    prog = ("z1 = w1*x + b1; a1 = sigmoid(z1); z2 = w2*a1 + b2; a2 = sigmoid(z2); "
            "z3 = w3*a2 + b3; a3 = sigmoid(z3); C = 0.5*(a3 - y)**2")
    vals = dict(w1=0.5, b1=0.1, w2=-0.3, b2=0.2, w3=0.8, b3=-0.1, x=1.0, y=1.0)
    out = run_cli(capsys, prog, *[f"{k}={v}" for k, v in vals.items()], "--const", "x,y")
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    z1 = vals["w1"] * 1.0 + vals["b1"]
    a1 = sig(z1)
    z2 = vals["w2"] * a1 + vals["b2"]
    a2 = sig(z2)
    z3 = vals["w3"] * a2 + vals["b3"]
    a3 = sig(z3)
    d3 = (a3 - 1.0) * a3 * (1 - a3)
    dC_da2 = d3 * vals["w3"]
    d2 = dC_da2 * a2 * (1 - a2)
    v = lambda t: f"{t:.4g}"  # noqa: E731
    p = lambda t: f"({v(t)})" if t < 0 else v(t)  # noqa: E731
    # a2's successor is w3*a2, whose backpropagated gradient is δ3 (the + passes it on)
    assert f"  ∂C/∂z3 = {v(d3)}" in out and f"  ∂C/∂(w3*a2) = {v(d3)}" in out
    assert (f"    via (w3*a2):  ∂C/∂(w3*a2) · ∂(w3*a2)/∂a2 = {v(d3)} · {p(vals['w3'])} = "
            f"{v(dC_da2)}") in out
    assert f"    via a2:  ∂C/∂a2 · ∂a2/∂z2 = {v(dC_da2)} · {p(a2 * (1 - a2))} = {v(d2)}" in out


# --------------------------------------------------------------------------
# Note 001: sigmoid + cross-entropy, δ^L = a - y
# --------------------------------------------------------------------------


def test_note_001_sigmoid_cross_entropy_delta_is_a_minus_y(capsys):
    a_ = 1 / (1 + math.exp(-0.5))
    dC_da = -(1 / a_)  # -(y/a - (1-y)/(1-a)) with y = 1
    sp = a_ * (1 - a_)
    want = f"    via a:  ∂C/∂a · ∂a/∂z = {dC_da:.4g} · {sp:.4g} = {a_ - 1:.4g}"
    # (17)-(19): the cost written out, then BCE as one rule, then the fused rule
    w, b = leaf(0.5, "w"), leaf(0.0, "b")
    x, y = leaf(1.0, "x", False), leaf(1.0, "y", False)
    z = (w * x + b).named("z")
    a = cr.sigmoid(z).named("a")
    C = (-(y * cr.log(a) + (1 - y) * cr.log(1 - a))).named("C")
    assert want in block(cr.explain(C).to_text(), "z = ")
    C = cr.nn.functional.binary_cross_entropy(a, np.array(1.0)).named("C")
    ledger = cr.explain(C)
    assert want in block(ledger.to_text(), "z = ")
    C = cr.nn.functional.binary_cross_entropy_with_logits(z, np.array(1.0)).named("C")
    fused = block(cr.explain(C).to_text(), "z = ")
    assert fused[1] == f"    via C:  seed · ∂C/∂z = 1 · ({a_ - 1:.4g}) = {a_ - 1:.4g}"
    assert fused[2] == ("        (binary_cross_entropy_with_logits computes it as "
                        "(sigmoid(z) - 1) * seed / n)")
    # the command line, with the cost starting with '-' (not an option)
    out = run_cli(capsys, "a = sigmoid(z); C = -(y*log(a) + (1-y)*log(1-a))", "z=0.5", "y=1",
                  "--const", "y")
    assert f"    via a:  ∂C/∂a · ∂a/∂z = {dC_da:.4g} · {sp:.4g} = {a_ - 1:.4g}" in out
    out = run_cli(capsys, "-(y*log(a) + (1-y)*log(1-a))", "a=0.7", "y=1")
    assert "∂L/∂a = -1.429" in out


# --------------------------------------------------------------------------
# Softmax + cross-entropy, δ^L = p - y
# --------------------------------------------------------------------------


def test_softmax_cross_entropy_delta_is_p_minus_y(capsys):
    z_ = np.array([1.0, 2.0, 0.5])
    p_ = np.exp(z_) / np.exp(z_).sum()
    y_ = np.array([0.0, 1.0, 0.0])
    fmt = cr.viz.format_value
    # the fused rule (logits in, labels in): one term, its local gradient is (p - y)/N
    z = leaf(z_[None, :], "z")
    C = cr.nn.functional.cross_entropy(z, np.array([1])).named("C")
    got = block(cr.explain(C).to_text(), "z = ")
    delta = fmt((p_ - y_)[None])
    assert got[1] == f"    via C:  seed · ∂C/∂z = 1 · {delta} = {delta}"
    assert "(softmax(z) - onehot(target)) * seed / N" in got[2]
    # written out on the command line: ∂C/∂p times the softmax's Jacobian
    out = run_cli(capsys, "p = softmax(z); C = -sum(y*log(p))", "z=1,2,0.5", "y=0,1,0",
                  "--const", "y")
    jac = np.diag(p_) - np.outer(p_, p_)
    dC_dp = -y_ / p_
    assert (f"    via p:  ∂C/∂p · ∂p/∂z = {fmt(dC_dp)} · {cr.viz.format_value(jac, max_items=64)} "
            f"= {fmt(p_ - y_)}") in out
    assert f"  ∂C/∂z = {fmt(p_ - y_)}" in out


def test_softmax_cross_entropy_layer_record():
    nn = cr.nn
    cr.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4, dtype=F64), nn.Tanh(), nn.Linear(4, 3, dtype=F64))
    x = np.random.default_rng(0).normal(size=(5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    with cr.keep_values():
        logits = model(cr.tensor(x))
        C = nn.CrossEntropyLoss()(logits, labels)
    ledger = cr.explain(C, model=model)
    out = ledger.layer(2)
    assert out.is_output and out.loss == "cross_entropy" and out.loss_activation == "softmax"
    z = out.z
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(out.delta, (p - onehot) / 5, rtol=1e-12, atol=1e-16)
    assert "cross_entropy applies softmax to z² itself" in ledger.to_text()
