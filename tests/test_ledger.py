"""The ledger: its JSON schema (what the playground reads), its numbers against the engine,
one term per successor, names, bad input, and the views that read it."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import chainrule as cr
from chainrule.cli import main as cli_main
from chainrule.teach.ledger import SCHEMA, VERSION, ExplainError, Ledger

F64 = np.float64
nn = cr.nn

# The contract with the playground (LEDGER-CONTRACT.md): these keys, with
# these meanings, may gain company but never be renamed.
LEDGER_KEYS = {"schema", "version", "root", "root_name", "nodes", "layers"}
NODE_KEYS = {"id", "name", "op", "kind", "shape", "dtype", "value", "grad", "visit", "terms"}
TERM_KEYS = {"successor", "successor_name", "op", "upstream", "local", "product", "slots",
             "broadcast_axes"}
LAYER_KEYS = {"index", "module", "activation", "W", "b", "z", "a", "delta", "dW", "db",
              "neurons"}
NEURON_KEYS = {"unit", "sigma_prime", "terms", "sum", "delta"}
NEURON_TERM_KEYS = {"unit", "delta_next", "weight", "product"}


@pytest.fixture(autouse=True)
def _keep_values():
    """Most tests look at values: record with every value kept (the tests of what
    happens without it switch it off)."""
    cr.set_keep_values(True)
    yield
    cr.set_keep_values(False)


def leaf(value, name, grad=True):
    return cr.tensor(value, dtype=F64, requires_grad=grad, name=name)


def mlp(sizes=(3, 4, 4, 2), act=nn.Sigmoid, seed=0):
    cr.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b, dtype=F64))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def arr(x, dtype=F64):
    """Decode a JSON array (strings for non-finite values)."""
    def fix(v):
        if isinstance(v, list):
            return [fix(u) for u in v]
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(v, v)
    return np.asarray(fix(x), dtype=dtype)


# --------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------


def test_schema_keys_and_types_are_stable():
    model = mlp()
    x = np.random.default_rng(0).normal(size=(2, 3))
    with cr.keep_values():
        loss = nn.MSELoss()(model(cr.tensor(x)), np.zeros((2, 2)))
    d = json.loads(cr.explain(loss, model=model, neurons=True).to_json())
    assert LEDGER_KEYS <= set(d) and d["schema"] == SCHEMA == "chainrule.ledger"
    assert d["version"] == VERSION == 1
    root = d["nodes"][0]
    assert root["id"] == d["root"] and root["name"] == d["root_name"] and root["terms"] == []
    assert [n["visit"] for n in d["nodes"] if n["visit"]] == list(
        range(1, 1 + sum(1 for n in d["nodes"] if n["visit"])))
    ids = {n["id"] for n in d["nodes"]}
    for n in d["nodes"]:
        assert NODE_KEYS <= set(n), set(n) ^ NODE_KEYS
        assert n["kind"] in ("op", "leaf", "const") and isinstance(n["id"], int)
        assert (n["op"] is None) == (n["kind"] != "op")
        assert isinstance(n["shape"], list) and isinstance(n["dtype"], str)
        for t in n["terms"]:
            assert TERM_KEYS <= set(t)
            assert t["successor"] in ids and isinstance(t["slots"], list) and t["slots"]
            assert np.shape(arr(t["product"])) == tuple(n["shape"])
    assert [lay["index"] for lay in d["layers"]] == [1, 2, 3]
    for lay in d["layers"]:
        assert LAYER_KEYS <= set(lay)
        assert set(lay["W"]) >= {"name", "value"} and set(lay["b"]) >= {"name", "value"}
        assert np.shape(arr(lay["z"])) == np.shape(arr(lay["delta"])) == (2, lay["out_features"])
        for neuron in lay["neurons"]:
            assert NEURON_KEYS <= set(neuron)
            for t in neuron["terms"]:
                assert NEURON_TERM_KEYS <= set(t) and isinstance(t["weight"], float)
    assert d["layers"][-1]["neurons"][0]["terms"] == []  # the output layer: δ from the loss
    assert len(d["layers"][0]["neurons"][0]["terms"]) == 4  # layer 2 has 4 units


def test_json_numbers_are_full_precision_and_non_finite_values_are_strings():
    x = leaf(np.array([1.0 / 3.0, 0.0, -1.0]), "x")
    with np.errstate(divide="ignore", invalid="ignore"):
        y = (cr.log(x) * 2.0).sum()
    ledger = cr.explain(y)
    text = ledger.to_json()
    d = json.loads(text)  # strict JSON (no bare NaN or Infinity)
    node = next(n for n in d["nodes"] if n["name"] == "x")
    assert node["value"][0] == 1.0 / 3.0  # every digit
    log = next(n for n in d["nodes"] if n["op"] == "log")
    assert log["value"][1] == "-inf" and log["value"][2] == "nan"
    assert d["nodes"][0]["value"] == "nan"  # a 0-d array is a bare value
    back = Ledger.from_json(text)
    np.testing.assert_array_equal(back["x"].grad, ledger["x"].grad)
    assert back.to_text() == ledger.to_text()


def test_a_saved_ledger_with_a_required_array_nulled_is_refused():
    # a term's upstream and product, a layer's z and a^(l-1) are always
    # there; a hand-edited file with null there is an error naming the
    # entry, not a NaN (np.asarray(None, float) is nan) or a later crash
    model = mlp((2, 3, 1))
    x = cr.tensor(np.ones((1, 2)), dtype=F64)
    loss = (model(x) ** 2).sum()
    d = cr.explain(loss, model=model).to_dict()
    assert Ledger.from_dict(json.loads(json.dumps(d))).to_text()  # the untouched one loads

    bad = json.loads(json.dumps(d))
    node = next(n for n in bad["nodes"] if n["terms"])
    node["terms"][0]["product"] = None
    with pytest.raises(ExplainError, match=f"product of a term of '{node['name']}' is null"):
        Ledger.from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["layers"][0]["z"] = None
    with pytest.raises(ExplainError, match="z of layer 1 is null"):
        Ledger.from_dict(bad)


# --------------------------------------------------------------------------
# Every number equals the engine's
# --------------------------------------------------------------------------


def test_every_gradient_equals_the_engines_and_terms_sum_to_it():
    rng = np.random.default_rng(3)
    W = leaf(rng.normal(size=(3, 4)), "W")
    b = leaf(rng.normal(size=(4,)), "b")
    x = leaf(rng.normal(size=(5, 3)), "x")
    h = (x @ W + b).named("h")
    a = cr.tanh(h).named("a")
    s = (a * a + a).named("s")  # a used twice by one op, and by another
    L = (s.mean() + (W * W).sum() * 0.1).named("L")
    ledger = cr.explain(L)
    for t in (h, a, s):
        t.retain_grad()
    L.backward()
    for name, t in dict(W=W, b=b, x=x, h=h, a=a, s=s).items():
        rec = ledger[name]
        np.testing.assert_allclose(rec.grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)
        total = sum(term.product for term in rec.terms)
        np.testing.assert_allclose(total, rec.grad, rtol=1e-12, atol=1e-15)
        for term in rec.terms:
            if term.local is not None and term.unreduced is None:
                np.testing.assert_allclose(term.upstream * term.local, term.product,
                                           rtol=1e-12, atol=1e-15)
    # b is broadcast over the rows of h: the term is summed over axis 0
    (tb,) = ledger["b"].terms
    assert tb.broadcast_axes == [0] and tb.unreduced.shape == (5, 4)
    np.testing.assert_allclose(tb.unreduced.sum(axis=0), tb.product)
    # W has two successors (matmul, and W*W): two terms
    assert sorted(t.op for t in ledger["W"].terms) == ["matmul", "mul"]
    mm = next(t for t in ledger["W"].terms if t.op == "matmul")
    assert mm.local is None and mm.formula == "xᵀ @ ∂L/∂matmul#1"


def test_one_term_per_successor_whatever_the_operand_slots():
    x = leaf(np.array([[1.0, 2.0], [3.0, 4.0]]), "x")
    # x + x: one term, local 1 + 1
    ledger = cr.explain((x + x).sum())
    (t,) = ledger["x"].terms
    assert t.slots == [0, 1]
    np.testing.assert_array_equal(t.local, np.full((2, 2), 2.0))
    # x @ x: one term, not a diagonal; the product is the sum of both slots' VJPs
    ledger = cr.explain((x @ x).sum())
    (t,) = ledger["x"].terms
    assert t.slots == [0, 1] and t.local is None
    g = np.ones((2, 2))
    np.testing.assert_allclose(t.product, g @ x.data.T + x.data.T @ g)
    assert t.formula == "∂L/∂matmul#1 @ xᵀ + xᵀ @ ∂L/∂matmul#1"
    # x @ x.T: x reaches the matmul directly and through the transpose: two terms
    ledger = cr.explain((x @ x.T).sum())
    assert sorted(t.op for t in ledger["x"].terms) == ["matmul", "transpose"]
    # the drawing has one edge per successor, labelled with the summed local gradient
    b = leaf(1.0, "b")
    f = (b * b).named("f")
    src = cr.viz.graph(f).source
    edges = [line for line in src.splitlines() if "->" in line]
    assert len(edges) == 1 and 'label="∂f/∂b = 2"' in edges[0]


def test_layer_records_equal_retain_grad_and_weight_grads():
    model = mlp((4, 5, 3), act=nn.ReLU)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    with cr.keep_values():
        out = model(cr.tensor(x))
        loss = nn.MSELoss()(out, y)
    ledger = cr.explain(loss, model=model)
    # the engine, independently: a fresh forward with z^l kept by retain_grad
    h = cr.tensor(x)
    z1 = model[0](h)
    z1.retain_grad()
    z2 = model[2](model[1](z1))
    z2.retain_grad()
    nn.MSELoss()(z2, y).backward()
    one, two = ledger.layers
    assert (one.module, one.activation, two.activation) == ("0", "relu", "identity")
    np.testing.assert_allclose(one.delta, z1.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(two.delta, z2.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(one.dW, model[0].weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(two.db, model[2].bias.grad.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(one.sigma_prime, (one.z > 0).astype(F64))
    # hand-written NumPy: δ¹ = (δ² W²) ⊙ relu'(z¹), ∂C/∂W¹ = δ¹ᵀ x
    W2 = model[2].weight.numpy()
    d1 = (two.delta @ W2) * (one.z > 0)
    np.testing.assert_allclose(one.delta, d1, rtol=1e-12)
    np.testing.assert_allclose(one.dW, d1.T @ x, rtol=1e-12)
    assert one.feeds_next and not two.feeds_next
    # the model's parameters were not touched by explain
    model.zero_grad()
    cr.explain(loss, model=model)
    assert model[0].weight.grad is None


def test_a_layer_applied_twice_has_two_records():
    cr.manual_seed(0)
    lin = nn.Linear(3, 3, dtype=F64)
    x = cr.tensor(np.ones((2, 3)))
    loss = lin(cr.tanh(lin(x))).sum()
    ledger = cr.explain(loss, model=lin)
    assert [r.index for r in ledger.layers] == [1, 2]
    assert ledger.layers[0].W["node"] == ledger.layers[1].W["node"]
    total = ledger.layers[0].dW + ledger.layers[1].dW
    np.testing.assert_allclose(total, ledger[ledger.layers[0].W["name"]].grad)


def test_explain_touches_nothing_and_notes_hooks():
    w = leaf(2.0, "w")
    w.grad = np.array(100.0)
    calls = []
    y = (w * w).named("y")
    y.register_hook(lambda g: calls.append(1) or g * 10)
    ledger = cr.explain(y * 3.0)
    assert w.grad.item() == 100.0 and calls == []
    assert ledger.grad("w") == 12.0  # the chain rule alone, without the hook's x10
    assert any("hooks" in note for note in ledger.notes)
    assert "note: 1 node(s) have gradient hooks" in ledger.to_text()


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------


def test_names_parameters_from_the_state_dict_and_by_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(2, 3, dtype=F64)
            self.out = nn.Sequential(nn.Linear(3, 1, dtype=F64))

        def forward(self, x):
            return self.out(cr.sigmoid(self.hidden(x)))

    net = Net()
    assert net.hidden.weight.name == "hidden.weight"
    assert net.out[0].bias.name == "out.0.bias"
    assert [n for n, _ in net.named_parameters()] == [
        p.name for p in net.parameters()]
    net.hidden.bias.name = "my_bias"  # an explicit name wins
    assert net.hidden.bias.name == "my_bias"
    lone = nn.Parameter(np.zeros(2))
    assert lone.name is None
    x = cr.tensor(np.ones((1, 2)))
    with cr.keep_values():
        loss = net(x).sum()
    ledger = cr.explain(loss)  # no model given: layers and names found anyway
    assert {"hidden.weight", "my_bias", "out.0.weight", "x", "z¹", "a¹", "z²"} <= {
        n.name for n in ledger.nodes}
    by_layer = cr.explain(loss, model=net, param_names="layer")
    assert {"W¹", "b¹", "W²", "b²"} <= {n.name for n in by_layer.nodes}
    assert by_layer["z¹"].expr == "x @ W¹ᵀ + b¹"
    # the same root name in the text and the picture
    ledger = cr.explain(loss)
    src = ledger.graph().source
    assert 'label="L = sum' in src and ledger.root_name == "L"
    # named() returns the tensor
    t = cr.tensor(1.0, requires_grad=True)
    assert (t * 2).named("u").name == "u"
    with pytest.raises(TypeError, match="expected a string"):
        t.named(3)


def test_keep_values_stops_fusion_and_fusion_comes_back():
    cr.set_keep_values(False)
    model = mlp((3, 4, 2), act=nn.ReLU)
    x = cr.tensor(np.ones((2, 3)))

    def ops(t):
        return [n.op for n in cr.explain(t.sum(), layers=False).nodes if n.op]

    assert "linear_relu" in ops(model(x))
    with cr.keep_values():
        assert cr.is_keeping_values()
        inside = model(x)
    assert "linear_relu" not in ops(inside) and "relu" in ops(inside)
    assert "linear_relu" in ops(model(x)) and not cr.is_keeping_values()


# --------------------------------------------------------------------------
# Bad input: one clear sentence each
# --------------------------------------------------------------------------


def test_bad_input_gets_one_sentence():
    with pytest.raises(RuntimeError) as info:
        cr.explain(cr.tensor(1.0))
    assert str(info.value).startswith("explain: this tensor has no graph")
    assert str(info.value).count(". ") == 0
    x = leaf(np.ones(3), "x")
    with pytest.raises(RuntimeError, match=r"shape \(3,\), not a scalar.*pass seed="):
        cr.explain(x * 2.0)
    np.testing.assert_allclose(cr.explain(x * 2.0, seed=np.arange(3.0)).grad("x"), [0, 2, 4])
    s = (x * 2.0).sum()
    s.backward()
    with pytest.raises(RuntimeError, match="freed by an earlier backward"):
        cr.explain(s)
    with pytest.raises(TypeError, match="expected a Tensor"):
        cr.explain(np.ones(2))
    with pytest.raises(KeyError, match="no node named"):
        cr.explain((x * 2.0).sum())["nope"]
    # a model whose layers ran fused (outside keep_values)
    cr.set_keep_values(False)
    model = mlp((3, 4, 2), act=nn.ReLU)
    loss = model(cr.tensor(np.ones((2, 3)))).sum()
    with pytest.raises(RuntimeError, match=r"fused linear_relu.*cr\.keep_values\(\)"):
        cr.explain(loss, model=model)
    assert any("no layer records" in note for note in cr.explain(loss).notes)  # a note


def test_outside_keep_values_the_gradients_are_shown_and_missing_values_said():
    cr.set_keep_values(False)
    w = leaf(2.0, "w")
    h = (w * 3.0 + 1.0).named("h")  # add keeps nothing: h's value is freed
    y = cr.sin(h).named("y")
    ledger = cr.explain(y)
    assert ledger["h"].value is None and "h = mul#1 + 1 = (value not kept)" in ledger.to_text()
    np.testing.assert_allclose(ledger.grad("w"), 3.0 * np.cos(7.0))  # the numbers are there
    np.testing.assert_allclose(ledger["h"].terms[0].local, np.cos(7.0))  # from what sin saved
    assert any("cr.keep_values()" in note for note in ledger.notes)
    # the layer records need z^l: one sentence naming the fix
    model = mlp((3, 4, 2))
    loss = model(cr.tensor(np.ones((2, 3)))).sum()
    with pytest.raises(RuntimeError, match=r"was not kept.*`with cr\.keep_values\(\):`") as info:
        cr.explain(loss, model=model)
    assert str(info.value).count(". ") == 0


# --------------------------------------------------------------------------
# Views: text, Markdown, HTML, drawing show the same numbers
# --------------------------------------------------------------------------


def test_views_show_the_same_numbers():
    a, b = leaf(-1.0, "a"), leaf(3.0, "b")
    f = ((a + b).named("x") * (b - 4.741).named("y")).named("f")
    ledger = cr.explain(f)
    text, md, html = ledger.to_text(), ledger.to_markdown(), ledger.to_html()
    assert "∂f/∂b = -1.741 + 2 = 0.259" in text
    for view in (md, html):
        assert "∂f/∂b = -1.741 + 2 = 0.259" in view
    assert html.startswith("<table>") and ledger._repr_html_() == html
    src = cr.viz.graph(f, direction="backward").source
    assert 'label="1 · 2 = 2"' in src and 'label="1 · -1.741 = -1.741"' in src
    # no -0, and a sum is written with its signs as operators
    z = leaf(0.0, "z")
    g = (z * -1.0 + z * 0.0 - z * 1.741).named("g")
    text = cr.explain(g).to_text()
    assert "-0 " not in text and "+ -" not in text
    assert "∂g/∂z = -1 + 0 − 1.741 = -2.741" in text


def test_drawing_a_freed_graph_says_so_on_stderr(tmp_path):
    code = ("import chainrule as cr\n"
            "w = cr.tensor(2.0, requires_grad=True)\n"
            "y = (w * 3.0).exp()\n"
            "y.backward()\n"
            "g = cr.viz.graph(y)\n"
            "print('freed' in g.source)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "True"
    assert "GraphFreedWarning" in proc.stderr and "freed by backward()" in proc.stderr


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------


def run(capsys, *args):
    code = cli_main(["explain", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_heading_once_named_pieces_json_and_errors(capsys, tmp_path):
    code, out, _ = run(capsys, "u = w*x; J = (u + b - y)**2", "w=5", "x=1", "b=1", "y=2",
                       "--out", str(tmp_path / "g.dot"))
    assert code == 0
    assert out.count("Backward pass") == 1 and "[1] J = (u + b - y) ** 2 = 16" in out
    dot = (tmp_path / "g.dot").read_text()
    assert "J = pow" in dot and "u = mul" in dot  # the same names in the picture
    code, out, _ = run(capsys, "x*y", "x=2", "y=-0.5", "--json")
    d = json.loads(out)
    assert d["schema"] == "chainrule.ledger" and d["root_name"] == "L"
    code, _, err = run(capsys, "u = w*x; J = u", "w=1", "x=1", "u=3", "--no-graph")
    assert code == 2 and "computes u itself" in err
    code, _, err = run(capsys, "u = u + 1", "--no-graph")
    assert code == 2 and "u is used before it is assigned" in err
    code, _, err = run(capsys, "x", "x=1", "--const", "q", "--no-graph")
    assert code == 2 and "--const q: not a variable" in err


def test_cli_expression_starting_with_minus_and_options_anywhere(capsys, tmp_path):
    code, out, _ = run(capsys, "-x**2", "--precision", "3", "x=-3", "--no-graph")
    assert code == 0 and "∂L/∂x = 6" in out
    code, out, _ = run(capsys, "--no-graph", "-(y*log(a) + (1-y)*log(1-a))", "a=0.7", "y=1")
    assert code == 0 and "∂L/∂a = -1.429" in out


def test_cli_a_900_term_expression(capsys):
    expr = "+".join(["x*x"] * 900)
    code, out, _ = run(capsys, expr, "x=1", "--no-graph")
    assert code == 0 and "∂L/∂x = 1800" in out.splitlines()[-1]


def test_cli_into_head_prints_no_broken_pipe_error():
    cmd = (f'"{sys.executable}" -m chainrule.cli explain "x = a + b; y = b + c; f = x*y" '
           "a=-1 b=3 c=4 --no-graph | head -n 2")
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.stdout.splitlines()[0].startswith("Expression:")
    assert proc.stderr == ""
