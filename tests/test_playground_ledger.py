"""The step-through's adapter: the page's numbers are the ledger's, copied, never recomputed."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from chainrule.playground.ledger_view import StepThroughUnavailable, view


def small_ledger() -> dict:
    """A contract-shaped ledger of a 2-2-1 network on two examples, numbers by hand.

    Layer 2 (output): delta = [[0.25], [-0.5]]; W2 = [[0.5, -1.0]].
    Layer 1: delta_j = sigma'(z_j) * delta^2 * W2[0, j].
    """
    d2 = [0.25, -0.5]
    W2 = [[0.5, -1.0]]
    sp = [[0.75, 0.5], [1.0, 0.25]]  # sigma'(z^1), rows = examples
    neurons1 = []
    for j in range(2):
        prod = [d2[b] * W2[0][j] for b in range(2)]
        neurons1.append({"unit": j, "sigma_prime": [sp[0][j], sp[1][j]],
                         "terms": [{"unit": 0, "delta_next": d2, "weight": W2[0][j],
                                    "product": prod}],
                         "sum": prod, "delta": [sp[b][j] * prod[b] for b in range(2)]})
    return {
        "schema": "chainrule.ledger", "version": 1, "root": 7, "root_name": "L",
        "nodes": [
            {"id": 7, "name": "L", "op": "add", "kind": "op", "shape": [], "dtype": "float32",
             "value": 0.6931471805599453, "grad": 1.0, "visit": 1, "terms": []},
            {"id": 3, "name": "0.weight", "op": None, "kind": "leaf", "shape": [2, 2],
             "dtype": "float32", "value": [[1.0, 2.0], [3.0, 4.0]],
             "grad": [[0.1, 0.2], [0.3, 0.4]], "visit": 9,
             "terms": [{"successor": 5, "successor_name": "linear#1", "op": "linear",
                        "upstream": [[0.0]], "local": None,
                        "product": [[0.05, 0.1], [0.15, 0.2]], "slots": [1],
                        "broadcast_axes": None},
                       {"successor": 6, "successor_name": "mul#1", "op": "mul",
                        "upstream": 1.0, "local": None,
                        "product": [[0.05, 0.1], [0.15, 0.2]], "slots": [0],
                        "broadcast_axes": None}]},
        ],
        "layers": [
            {"index": 2, "module": "2", "activation": "identity",
             "W": {"name": "2.weight", "value": W2}, "b": {"name": "2.bias", "value": [0.1]},
             "z": [[0.3], ["nan"]], "a": [[0.3], ["inf"]], "delta": [[0.25], [-0.5]],
             "dW": [[0.2, -0.1]], "db": [-0.25],
             "neurons": [{"unit": 0, "sigma_prime": [1.0, 1.0], "terms": [], "sum": [0.25, -0.5],
                          "delta": [0.25, -0.5]}]},
            {"index": 1, "module": "0", "activation": "tanh",
             "W": {"name": "0.weight", "value": [[1.0, 2.0], [3.0, 4.0]]},
             "b": {"name": "0.bias", "value": [0.0, 0.0]},
             "z": [[0.1, 0.2], [0.3, 0.4]], "a": [[0.1, 0.2], [0.3, 0.4]],
             "delta": [[n["delta"][b] for n in neurons1] for b in range(2)],
             "dW": [[0.1, 0.2], [0.3, 0.4]], "db": [0.0, 0.0], "neurons": neurons1},
        ],
    }


X = np.array([[0.5, -0.5], [1.0, 2.0]], np.float32)


def test_the_view_copies_the_ledgers_numbers():
    led = small_ledger()
    v = view(led, X, input_names=["x₁", "x₂"])
    assert v["loss"] == float(str(np.float32(0.6931471805599453)))  # float32 digits
    assert v["batch"] == 2 and v["inputs"]["a0"] == [[0.5, -0.5], [1.0, 2.0]]
    assert [layer["index"] for layer in v["layers"]] == [1, 2]  # input to output
    l1, l2 = v["layers"]
    assert l1["activation"] == "tanh" and l1["W_name"] == "0.weight"
    assert l1["neurons"][1]["terms"][0] == {"unit": 0, "delta_next": [0.25, -0.5],
                                           "weight": -1.0, "product": [-0.25, 0.5]}
    assert l1["neurons"][0]["delta"] == [0.09375, -0.25]
    assert l2["z"] == [[0.3], ["nan"]] and l2["a"][1] == ["inf"]  # the contract's strings
    # with regularisation W has two successors: the engine's total and both terms
    assert l1["W_grad"] == [[0.1, 0.2], [0.3, 0.4]]
    assert [t["op"] for t in l1["W_terms"]] == ["linear", "mul"]
    assert l2["W_grad"] is None and l2["W_terms"] == []


def test_float32_values_are_written_with_the_digits_that_identify_them():
    led = small_ledger()
    w = float(np.float32(0.1))  # 0.10000000149011612 as a float64
    led["layers"][0]["dW"][0][0] = w
    v = view(led, X, input_names=["a", "b"])
    shown = v["layers"][1]["dW"][0][0]
    assert shown == 0.1 and np.float32(shown) == np.float32(w)  # the same float32, 3 chars
    v64 = view(led, X, input_names=["a", "b"], float32=False)
    assert v64["layers"][1]["dW"][0][0] == w


@pytest.mark.parametrize("damage,words", [
    (lambda d: d.update(schema="other"), "expected a 'chainrule.ledger' ledger"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.update(layers=[]), "no per-layer records"),
    (lambda d: d.pop("layers"), "no 'layers'"),
    (lambda d: d["layers"][1].pop("delta"), "layer 1 has no 'delta'"),
    (lambda d: d["layers"][1]["neurons"][0].pop("sigma_prime"),
     "layer 1, neuron 0 has no 'sigma_prime'"),
    (lambda d: d["layers"][1]["neurons"].pop(), "1 neuron records for 2 units"),
    (lambda d: d["layers"][1]["W"].update(value=[[1.0, 2.0, 3.0]]), "shape (1, 3)"),
    (lambda d: d.update(root=99), "root node"),
])
def test_a_ledger_that_lacks_what_the_page_shows_is_refused_by_name(damage, words):
    led = copy.deepcopy(small_ledger())
    damage(led)
    with pytest.raises(StepThroughUnavailable, match=None) as e:
        view(led, X, input_names=["a", "b"])
    assert words in str(e.value)


# --------------------------------------------------------------------------
# the real ledger, through the server's session, against the notes in NumPy
# --------------------------------------------------------------------------

LEDGER_CASES = [
    ({"dataset": "spiral", "hidden": "8,8", "loss": "ce"}, "ce"),
    ({"dataset": "xor", "hidden": "5,3", "act": "relu", "loss": "bce"}, "bce"),
    ({"dataset": "gauss", "classes": "3", "hidden": "4", "act": "sigmoid", "loss": "mse"},
     "mse-sigmoid"),
    ({"dataset": "reg-plane", "hidden": "3", "act": "identity"}, "mse"),
    ({"dataset": "circle", "hidden": "4", "reg": "l2", "rrate": "0.1"}, "bce"),
]


@pytest.mark.parametrize("params,loss", LEDGER_CASES)
def test_the_served_step_through_is_the_notes_recursion(params, loss):
    from chainrule.playground.config import Config
    from chainrule.playground.datasets import make_data
    from chainrule.playground.session import Session
    from playground_helpers import notes_recursion

    cfg = Config.from_params({**params, "batch": "6", "samples": "60"})
    s = Session("t", cfg, make_data(cfg))
    s.train(epochs=2)
    v = s.stepthrough("batch")
    rows = np.asarray(v["rows"])
    assert v["batch"] == 6 and rows.tolist() == s.next_batch().tolist()
    W = [(m.weight.numpy(), m.bias.numpy()) for m in s.linears]
    rec = notes_recursion(W, s.data.X_train[rows], s.data.y_train[rows], cfg.act, loss)
    close = dict(rtol=2e-4, atol=1e-6)
    assert len(v["layers"]) == len(rec)
    for layer, want, (Wl, _) in zip(v["layers"], rec, W):
        np.testing.assert_allclose(np.array(layer["z"], float), want["z"], **close)
        np.testing.assert_allclose(np.array(layer["delta"], float), want["delta"], **close)
        np.testing.assert_allclose(np.array(layer["dW"], float), want["dW"], **close)
        np.testing.assert_allclose(np.array(layer["db"], float), want["db"], **close)
        for j, n in enumerate(layer["neurons"]):
            np.testing.assert_allclose(n["delta"], want["delta"][:, j], **close)
            if n["terms"]:
                prods = np.array([t["product"] for t in n["terms"]])
                np.testing.assert_allclose(n["sum"], prods.sum(axis=0), **close)
                np.testing.assert_allclose(n["delta"], np.multiply(n["sigma_prime"], n["sum"]),
                                           **close)
                for t in n["terms"]:
                    np.testing.assert_allclose(t["product"],
                                               np.multiply(t["delta_next"], t["weight"]), **close)
        if cfg.reg == "l2":  # the engine's dL/dW: the layer's term plus the penalty's
            np.testing.assert_allclose(np.array(layer["W_grad"], float),
                                       want["dW"] + cfg.rrate * Wl, **close)
            assert len(layer["W_terms"]) == 2
