"""Vanishing gradients: an 8-hidden-layer sigmoid network against the same with ReLU.

sigma'(z) <= 1/4, so each sigmoid layer multiplies delta^l by at most a
quarter (times the weights): by the recursion
delta^l = ((W^(l+1))^T delta^(l+1)) (.) sigma'(z^l), the layers near the
input get gradients orders of magnitude smaller than the last ones. ReLU's
derivative is 1 where the unit is active, so the gradient keeps its size.

Trains both with ``cr.fit`` and a :class:`GradientNormRecorder`; with
``--figures`` (or CHAINRULE_FIGURES=1) saves docs/img/vanishing-gradients.png.

Run ``python examples/vanishing_gradients.py [--figures]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

import chainrule as cr
from chainrule.mlp_view import GradientNormRecorder, plot_gradient_norms

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def deep_net(activation: str, depth: int = 8, width: int = 32, d_in: int = 10) -> cr.nn.Module:
    layers: list[cr.nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [cr.nn.Linear(d, width), getattr(cr.nn, activation)()]
        d = width
    layers.append(cr.nn.Linear(d, 1))
    return cr.nn.Sequential(*layers)


def main(figures: bool | None = None, epochs: int = 3) -> dict[str, float]:
    """Train both nets; return the ratio ||dC/dW^1|| / ||dC/dW^9|| for each (early training)."""
    if figures is None:
        figures = os.environ.get("CHAINRULE_FIGURES") == "1"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 10)).astype(np.float32)
    y = (X[:, :1] * X[:, 1:2] > 0).astype(np.float32)  # an XOR-like sign pattern
    recorders = {}
    out: dict[str, float] = {}
    for act in ("Sigmoid", "ReLU"):
        cr.manual_seed(0)
        model = deep_net(act)
        rec = GradientNormRecorder()
        cr.fit(model, cr.nn.BCEWithLogitsLoss(), cr.optim.SGD(model.parameters(), lr=0.1),
               (X, y), epochs=epochs, batch_size=64, callbacks=[rec], progress=False,
               compile=False, seed=0)
        W = rec.weight_norms()
        first, last = float(W[0, 0]), float(W[0, -1])
        out[f"{act.lower()}_first_layer"] = first
        out[f"{act.lower()}_last_layer"] = last
        out[f"{act.lower()}_ratio"] = first / last
        recorders[act.lower()] = rec
    for k, v in out.items():
        print(f"{k:>20} = {v:.3g}")
    if figures:
        path = IMG / "vanishing-gradients.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_gradient_norms(recorders, path, title="8 hidden layers of 32 units: sigmoid vs ReLU")
        print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main(figures="--figures" in sys.argv[1:] or None)
