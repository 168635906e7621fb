"""The notes, runnable: each example script's key numbers (no figures, fast)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    monkeypatch.delenv("CHAINRULE_FIGURES", raising=False)


def test_note000_computation_graph(capsys):
    r = load("note000_computation_graph").main(figures=False)
    a = 1 / (1 + math.exp(-0.5))
    ex1 = r["example_1_2"]
    assert ex1["C"] == pytest.approx(0.5 * (a - 1) ** 2)
    assert ex1["dC/da"] == pytest.approx(a - 1)
    assert ex1["dC/dz"] == pytest.approx((a - 1) * a * (1 - a))
    assert ex1["dC/dw"] == ex1["dC/db"] == pytest.approx((a - 1) * a * (1 - a))
    assert ex1["max_diff_by_hand"] < 1e-15
    ex56 = r["example_5_6"]
    assert (ex56["u"], ex56["y_hat"], ex56["e"], ex56["J"]) == (5.0, 6.0, 4.0, 16.0)
    for k in ("e", "y_hat", "u", "w", "b"):
        assert ex56[f"dJ/d{k}"] == 8.0
    assert ex56["order"][:4] == ["J", "e", "y_hat", "u"]
    assert r["example_7"] == {"f": 14.0, "via x": 7.0, "via y": 2.0, "df/db": 9.0}
    assert r["mlp"]["layers"] == 3 and r["mlp"]["max_diff"] < 1e-12
    out = capsys.readouterr().out
    assert "∂J/∂y_hat · ∂y_hat/∂u = 8 · 1 = 8" in out


def test_note001_sigmoid_cross_entropy():
    r = load("note001_sigmoid_cross_entropy").main()
    assert r["engine_vs_shortcut"] < 1e-12
    assert r["fused_vs_shortcut"] < 1e-12
    assert r["numeric_vs_shortcut"] < 1e-6
    assert r["dW1_vs_engine"] < 1e-12 and r["dW2_vs_engine"] < 1e-12
    assert r["C_after_one_step"] < r["C_before"]


def test_note002_batched_mlp():
    r = load("note002_batched_mlp").main()
    assert r["A_1 shape"] == (8, 5) and r["W_1 shape"] == (4, 5)
    assert r["max |link by hand - engine dL/dA_l|"] < 1e-12
    assert r["max |dL/dW_l by hand - engine|"] < 1e-12
    assert r["max |Linear(W_1^T) - Z_0 W_1|"] < 1e-12


def test_note003_gradient_descent(tmp_path):
    m = load("note003_gradient_descent")
    r = m.main(figures=False)
    assert r["w_epoch_0"] == 0.0
    # w_k = 2 (1 - (1 - 2 eta x1^2)^k) with eta = 0.01, x1 = 1.5
    for k in (10, 100):
        assert r[f"w_epoch_{k}"] == pytest.approx(2 * (1 - 0.955**k))
    assert r["stopped_by"].startswith("||w^(k+1) - w^k|| < eps")
    assert r["w_final"] == pytest.approx(2.0, abs=1e-4)
    assert r["epochs"] < 10_000
    assert r["four_samples_w"] == pytest.approx(r["four_samples_least_squares_w"], abs=1e-4)
    path = m.plot(m.gradient_descent([1.5], [3.0]), [1.5], [3.0], tmp_path / "gd.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_vanishing_gradients():
    r = load("vanishing_gradients").main(figures=False, epochs=1)
    # the sigmoid net's first layer gets a far smaller share of the gradient
    assert r["sigmoid_ratio"] < 1e-4
    assert r["relu_ratio"] > 100 * r["sigmoid_ratio"]
