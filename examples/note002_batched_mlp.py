"""Seed 002: the batched forward pass A_l = Z_(l-1) W_l and the backward "link" delta_l.

The note keeps data row-major, X in R^(n x d), one sample per row, and
weights W_l in R^(d_(l-1) x d_l) (the bias absorbed into W):

    Z_0 = X;   A_l = Z_(l-1) W_l;   Z_l = sigma_l(A_l)

Its backward pass carries the "link" delta_l = dL/dA_l:

    delta_L = dL/dZ_L (.) sigma_L'(A_L)
    dL/dW_l = Z_(l-1)^T delta_l
    delta_l = (delta_(l+1) W_(l+1)^T) (.) sigma_l'(A_l)

(the pseudocode's "W_l^T" in the last line is a typo: the weight that maps
layer l to layer l+1 is W_(l+1)). This script runs that by hand in NumPy and
compares each link with the engine's dL/dA_l (``retain_grad``), and shows
that chainrule's ``Linear`` (weight of shape (out, in), y = x W^T + b) is the
same map with W = W_l^T.

Run ``python examples/note002_batched_mlp.py``.
"""

from __future__ import annotations

import numpy as np

import chainrule as cr


def relu_prime(a: np.ndarray) -> np.ndarray:
    return (a > 0).astype(a.dtype)


def main(figures: bool | None = None, n: int = 8, seed: int = 0) -> dict[str, float]:
    """Batched forward/backward by hand vs the engine; returns shapes and differences."""
    rng = np.random.default_rng(seed)
    dims = [4, 5, 3, 1]  # d, d_1, d_2, d_L
    X = rng.normal(size=(n, dims[0]))
    y = rng.normal(size=(n, 1))
    Ws = [cr.tensor(rng.normal(size=(a, b)) / np.sqrt(a), requires_grad=True, name=f"W{i + 1}")
          for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]

    # ---- forward, exactly the note's procedure (ReLU hidden, identity output) ----
    Z = [cr.tensor(X)]
    A = []
    for l_, W in enumerate(Ws, start=1):
        A_l = Z[-1] @ W  # A_l = Z_(l-1) W_l
        A_l.retain_grad()  # to read the link dL/dA_l afterwards
        A.append(A_l)
        Z.append(A_l if l_ == len(Ws) else cr.relu(A_l))
    loss = ((Z[-1] - y) ** 2).mean()  # L = 1/n sum (h(x_i) - y_i)^2
    loss.backward()

    # ---- backward by hand: the links ----
    Zs = [z.numpy() for z in Z]
    As = [a.numpy() for a in A]
    Wn = [W.numpy() for W in Ws]
    L = len(Ws)
    delta = [None] * (L + 1)
    dW = [None] * (L + 1)
    delta[L] = 2 * (Zs[L] - y) / n * 1.0  # dL/dZ_L (.) sigma_L'(A_L), identity output
    for l_ in range(L, 0, -1):
        dW[l_] = Zs[l_ - 1].T @ delta[l_]
        if l_ > 1:
            delta[l_ - 1] = (delta[l_] @ Wn[l_ - 1].T) * relu_prime(As[l_ - 2])
    link_diff = max(float(abs(delta[l_] - A[l_ - 1].grad.numpy()).max()) for l_ in range(1, L + 1))
    dW_diff = max(float(abs(dW[l_] - Ws[l_ - 1].grad.numpy()).max()) for l_ in range(1, L + 1))

    # ---- the same first layer as a chainrule Linear: weight = W_1^T ----
    lin = cr.nn.Linear(dims[0], dims[1], bias=False, dtype=np.float64)
    with cr.no_grad():
        lin.weight.copy_(Wn[0].T)
    linear_diff = float(abs(lin(cr.tensor(X)).numpy() - As[0]).max())

    out = {
        "n": n,
        "A_1 shape": A[0].shape,
        "W_1 shape": Ws[0].shape,
        "loss": float(loss.item()),
        "max |link by hand - engine dL/dA_l|": link_diff,
        "max |dL/dW_l by hand - engine|": dW_diff,
        "max |Linear(W_1^T) - Z_0 W_1|": linear_diff,
    }
    for k, v in out.items():
        print(f"{k:>38} = {v}")
    return out


if __name__ == "__main__":
    main()
