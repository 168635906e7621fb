"""Seed 003: gradient descent on L(w) = (x1 w - y1)^2 with a stopping rule.

The slides' loop::

    for k in range(max_iteration):
        w^(k+1) = w^k - eta * grad L(w^k)
        if ||w^(k+1) - w^k|| < eps: break

with one training pair (x1, y1) and the model h(x; w) = x w, then the same
with the loss summed over four samples. Each gradient comes from the
engine's backward pass. With ``--figures`` (or CHAINRULE_FIGURES=1) the
slides' picture is saved to docs/img/note003-gradient-descent.png: the loss
curve, and the fitted line at epochs 0, 10 and 100.

Run ``python examples/note003_gradient_descent.py [--figures]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

import chainrule as cr

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def gradient_descent(
    xs: np.ndarray, ys: np.ndarray, w0: float = 0.0, eta: float = 0.01,
    eps: float = 1e-6, max_iteration: int = 10_000,
) -> dict:
    """Minimise L(w) = sum_i (x_i w - y_i)^2; one epoch = one step on all samples."""
    w = cr.tensor(w0, dtype=np.float64, requires_grad=True, name="w")
    x, y = cr.tensor(xs, dtype=np.float64), cr.tensor(ys, dtype=np.float64)
    ws, losses = [w0], []
    stopped = "max_iteration"
    for _k in range(max_iteration):
        loss = ((x * w - y) ** 2).sum()
        losses.append(loss.item())
        w.grad = None
        loss.backward()
        old = w.item()
        with cr.no_grad():
            w.sub_(eta * w.grad.numpy())  # w^(k+1) = w^k - eta grad L(w^k)
        ws.append(w.item())
        if abs(w.item() - old) < eps:  # the stopping criterion
            stopped = "||w^(k+1) - w^k|| < eps"
            break
    return {"w": ws, "loss": losses, "epochs": len(losses), "stopped_by": stopped}


def plot(run: dict, xs: np.ndarray, ys: np.ndarray, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(run["loss"])
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("L(w)")
    ax1.set_title(f"loss; stopped after {run['epochs']} epochs ({run['stopped_by']})")
    grid = np.linspace(0, max(xs) * 1.2, 50)
    ax2.scatter(xs, ys, color="black", zorder=3, label="training data")
    for epoch in (0, 10, 100):
        if epoch < len(run["w"]):
            w = run["w"][epoch]
            ax2.plot(grid, w * grid, label=f"epoch {epoch}: h(x) = {w:.3f} x")
    ax2.set_xlabel("x")
    ax2.set_ylabel("h(x; w) = x w")
    ax2.set_title("the model during training")
    ax2.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(figures: bool | None = None) -> dict:
    """Run both problems; return w at epochs 0/10/100, the final w and the epoch count."""
    if figures is None:
        figures = os.environ.get("CHAINRULE_FIGURES") == "1"
    x1, y1 = np.array([1.5]), np.array([3.0])  # one pair; the minimiser is w = y1/x1 = 2
    one = gradient_descent(x1, y1)
    xs4 = np.array([0.5, 1.0, 1.5, 2.0])
    ys4 = np.array([1.1, 1.9, 3.2, 3.9])
    four = gradient_descent(xs4, ys4, eta=0.02)
    w_ls = float(xs4 @ ys4 / (xs4 @ xs4))  # least squares, for comparison
    out = {
        "w_epoch_0": one["w"][0],
        "w_epoch_10": one["w"][10],
        "w_epoch_100": one["w"][100],
        "w_final": one["w"][-1],
        "epochs": one["epochs"],
        "stopped_by": one["stopped_by"],
        "loss_first": one["loss"][0],
        "loss_last": one["loss"][-1],
        "four_samples_w": four["w"][-1],
        "four_samples_least_squares_w": w_ls,
        "four_samples_epochs": four["epochs"],
    }
    for k, v in out.items():
        print(f"{k:>29} = {v}")
    if figures:
        print(f"wrote {plot(one, x1, y1, IMG / 'note003-gradient-descent.png')}")
    return out


if __name__ == "__main__":
    main(figures="--figures" in sys.argv[1:] or None)
