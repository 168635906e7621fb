"""Seed 000 (Week 5: Backpropagation), its worked examples run by the engine.

* Examples 1-2: C = 1/2 (sigma(w x + b) - y)^2 and its derivatives through
  the intermediate variables z = w x + b, a = sigma(z).
* Examples 5-6: the linear-regression graph u = w x, y_hat = u + b,
  e = y_hat - y, J = e^2 with w = 5, x = 1, b = 1, y = 2 (J = 16, every
  backpropagated gradient 8).
* Example 7: fan-out; b feeds two successors, df/db = 7 + 2 = 9.
* Section 2: the MLP delta recursion by hand against the engine.

Run ``python examples/note000_computation_graph.py [--figures]``; with
``--figures`` (or CHAINRULE_FIGURES=1) the graphs are drawn into docs/img/.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

import chainrule as cr
from chainrule.mlp_view import mlp_backprop

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def scalar(value: float, name: str, grad: bool = True) -> cr.Tensor:
    # float64 so that the printed numbers are the exact ones of the notes
    return cr.tensor(value, dtype=np.float64, requires_grad=grad, name=name)


def named(t: cr.Tensor, name: str) -> cr.Tensor:
    t.name = name
    return t


def example_1_2() -> dict[str, float]:
    w, b = scalar(0.5, "w"), scalar(0.0, "b")
    x, y = scalar(1.0, "x", False), scalar(1.0, "y", False)
    z = named(w * x + b, "z")
    a = named(cr.sigmoid(z), "a")
    C = named(0.5 * (a - y) ** 2, "C")
    exp = cr.explain(C)
    # Example 2, by hand: dC/da = a - y, dC/dz = dC/da sigma'(z), dC/dw = dC/dz x, dC/db = dC/dz
    a_ = 1 / (1 + math.exp(-0.5))
    by_hand = {"dC/da": a_ - 1, "dC/dz": (a_ - 1) * a_ * (1 - a_)}
    by_hand["dC/dw"] = by_hand["dC/dz"] * 1.0
    by_hand["dC/db"] = by_hand["dC/dz"]
    C.backward()
    return {
        "C": C.item(),
        "a": a.item(),
        "dC/da": float(exp.grad("a")),
        "dC/dz": float(exp.grad("z")),
        "dC/dw": w.grad.item(),
        "dC/db": b.grad.item(),
        "max_diff_by_hand": max(
            abs(by_hand[k] - v)
            for k, v in [("dC/da", exp.grad("a")), ("dC/dz", exp.grad("z")),
                         ("dC/dw", w.grad.item()), ("dC/db", b.grad.item())]
        ),
    }


def regression_graph() -> tuple[cr.Tensor, dict[str, cr.Tensor]]:
    w, b = scalar(5.0, "w"), scalar(1.0, "b")
    x, y = scalar(1.0, "x", False), scalar(2.0, "y", False)
    u = named(w * x, "u")
    y_hat = named(u + b, "y_hat")
    e = named(y_hat - y, "e")
    J = named(e**2, "J")
    return J, {"w": w, "b": b, "u": u, "y_hat": y_hat, "e": e}


def example_5_6() -> dict[str, float]:
    J, t = regression_graph()
    exp = cr.explain(J)
    out = {k: t[k].item() for k in ("u", "y_hat", "e")}
    out["J"] = J.item()
    for k in ("e", "y_hat", "u", "w", "b"):
        out[f"dJ/d{k}"] = float(exp.grad(k))
    out["order"] = [r.name for r in exp.rows]
    return out


def fan_out() -> tuple[cr.Tensor, cr.Tensor]:
    a, b, c = scalar(-1.0, "a"), scalar(3.0, "b"), scalar(4.0, "c")
    x = named(a + b, "x")
    y = named(b + c, "y")
    return named(x * y, "f"), b


def example_7() -> dict[str, float]:
    f, b = fan_out()
    exp = cr.explain(f)
    terms = {t.successor_name: float(t.product) for t in exp["b"].terms}
    return {"f": f.item(), "via x": terms["x"], "via y": terms["y"], "df/db": float(exp.grad("b"))}


def mlp_section_2(seed: int = 0) -> dict[str, float]:
    """A 3-layer sigmoid MLP; the deltas by the notes' recursion equal the engine's."""
    cr.manual_seed(seed)
    nn = cr.nn
    model = nn.Sequential(
        nn.Linear(3, 4, dtype=np.float64), nn.Sigmoid(),
        nn.Linear(4, 4, dtype=np.float64), nn.Sigmoid(),
        nn.Linear(4, 2, dtype=np.float64), nn.Sigmoid(),
    )
    x = np.array([[0.5, -1.0, 2.0]])  # one sample, as in Algorithm 1
    y = np.array([[1.0, 0.0]])
    view = mlp_backprop(model, x, y, loss="half_sse")  # C = 1/2 sum_k (y_k - a_k)^2
    print(view.to_text())
    return {"layers": len(view.layers), "max_diff": view.max_diff, "C": view.loss}


def draw(figures: bool) -> list[Path]:
    if not figures:
        return []
    IMG.mkdir(parents=True, exist_ok=True)
    J, _ = regression_graph()
    f, _ = fan_out()
    graphs = {
        "note000-regression-forward": cr.viz.graph(J, grads=False, title="J = (w x + b - y)^2"),
        "note000-regression-backward": cr.viz.graph(J, direction="backward"),
        "note000-fanout-backward": cr.viz.graph(f, direction="backward", title="f = (a+b)(b+c)"),
    }
    written = []
    for name, g in graphs.items():
        if cr.viz.have_dot():
            written += [g.render(IMG / f"{name}.svg"), g.render(IMG / f"{name}.png")]
        else:
            written.append(g.save(IMG / f"{name}.dot"))
    return written


def main(figures: bool | None = None) -> dict[str, dict]:
    """Run every example; return their key numbers (figures only when asked)."""
    if figures is None:
        figures = os.environ.get("CHAINRULE_FIGURES") == "1"
    with cr.keep_values():  # every value is shown, so every node keeps it
        return _run(figures)


def _run(figures: bool) -> dict[str, dict]:
    results = {
        "example_1_2": example_1_2(),
        "example_5_6": example_5_6(),
        "example_7": example_7(),
        "mlp": mlp_section_2(),
    }
    J, _ = regression_graph()
    print(cr.explain(J))
    f, _ = fan_out()
    print(cr.explain(f))
    for key, numbers in results.items():
        print(f"{key}: " + ", ".join(f"{k} = {v}" for k, v in numbers.items() if k != "order"))
    for path in draw(figures):
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main(figures="--figures" in sys.argv[1:] or None)
