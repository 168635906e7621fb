"""Seed 001 (AI Coffee Club): sigmoid output + cross-entropy gives dC/dz^L = a^L - y.

Equation (19) of the note: with a^L = sigma(z^L) and
C = -(y log a^L + (1 - y) log(1 - a^L)),

    dC/dz^L = dC/da^L * sigma'(z^L) = -(y/a - (1-y)/(1-a)) * a(1-a) = a^L - y.

This script checks it three ways on a small network: the engine through
the unfused formula (log of the sigmoid), the fused
``binary_cross_entropy_with_logits`` (which uses the shortcut directly), and
central finite differences. It then checks the four fundamental partial
derivatives (14) and takes one gradient-descent step W <- W - alpha dC/dW (8).

Run ``python examples/note001_sigmoid_cross_entropy.py``.
"""

from __future__ import annotations

import numpy as np

import chainrule as cr


def network(seed: int = 0) -> dict[str, cr.Tensor]:
    rng = np.random.default_rng(seed)
    p = {
        "W1": rng.normal(size=(3, 2)), "b1": rng.normal(size=3),
        "W2": rng.normal(size=(1, 3)), "b2": rng.normal(size=1),
    }
    return {k: cr.tensor(v, requires_grad=True, name=k) for k, v in p.items()}


def forward(p: dict[str, cr.Tensor], x: np.ndarray) -> tuple[cr.Tensor, cr.Tensor, cr.Tensor]:
    # column-vector notation of the note: z^l = W^l a^(l-1) + b^l
    z1 = p["W1"] @ x + p["b1"]
    a1 = cr.sigmoid(z1)
    zL = p["W2"] @ a1 + p["b2"]
    return a1, zL, cr.sigmoid(zL)


def cross_entropy(a: cr.Tensor, y: float) -> cr.Tensor:
    return -(y * cr.log(a) + (1 - y) * cr.log(1 - a)).sum()  # equation (7)


def main(figures: bool | None = None) -> dict[str, float]:
    """Check dC/dz^L = a^L - y; returns the largest differences found."""
    x = np.array([0.7, -1.2])
    y = 1.0
    p = network()
    a1, zL, aL = forward(p, x)
    zL.retain_grad()
    C = cross_entropy(aL, y)
    C.backward()
    engine = zL.grad.numpy().copy()
    shortcut = aL.numpy() - y  # equation (19)

    # the fused loss works on the logits and uses the shortcut by construction
    z_leaf = cr.tensor(zL.numpy(), requires_grad=True)
    bce = cr.nn.functional.binary_cross_entropy_with_logits
    bce(z_leaf, np.array([y]), reduction="sum").backward()
    fused = z_leaf.grad.numpy()

    # central finite differences of C as a function of z^L
    def C_of(z: float) -> float:
        a = 1 / (1 + np.exp(-z))
        return float(-(y * np.log(a) + (1 - y) * np.log(1 - a)))

    eps = 1e-6
    z0 = float(zL.numpy()[0])
    numeric = (C_of(z0 + eps) - C_of(z0 - eps)) / (2 * eps)

    # the fundamental partial derivatives (14): dC/dW^L = delta^L (a^(L-1))^T, and so on down
    delta = shortcut.reshape(-1, 1)
    dW2 = delta @ a1.numpy().reshape(1, -1)
    delta1 = (p["W2"].numpy().T @ delta).ravel() * a1.numpy() * (1 - a1.numpy())
    dW1 = np.outer(delta1, x)

    # one step of gradient descent, equations (8)-(9)
    alpha = 0.5
    with cr.no_grad():
        for t in p.values():
            t.sub_(alpha * t.grad.numpy())
    C_after = cross_entropy(forward(p, x)[2], y).item()

    out = {
        "a_L": float(aL.item()),
        "dC/dz_L engine": float(engine[0]),
        "a_L - y": float(shortcut[0]),
        "dC/dz_L numeric": numeric,
        "engine_vs_shortcut": float(abs(engine - shortcut).max()),
        "fused_vs_shortcut": float(abs(fused - shortcut).max()),
        "numeric_vs_shortcut": float(abs(numeric - shortcut[0])),
        "dW2_vs_engine": float(abs(dW2 - p["W2"].grad.numpy()).max()),
        "dW1_vs_engine": float(abs(dW1 - p["W1"].grad.numpy()).max()),
        "C_before": float(C.item()),
        "C_after_one_step": C_after,
    }
    for k, v in out.items():
        print(f"{k:>22} = {v:.6g}")
    return out


if __name__ == "__main__":
    main()
