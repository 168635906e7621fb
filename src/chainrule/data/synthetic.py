"""Small teaching problems, all seeded, features float32, labels int64.

Each one shows something a linear model cannot do, so that a hidden layer
has to earn its keep.
"""

from __future__ import annotations

import numpy as np

from ._common import SeedLike, make_rng

__all__ = ["make_xor", "make_moons", "make_spirals", "make_encoder"]


def make_xor(repeat: int = 1, noise: float = 0.0, seed: SeedLike = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The XOR problem: inputs (0,0), (0,1), (1,0), (1,1), target a XOR b.

    Parameters
    ----------
    repeat : copies of the four points (``repeat=1``: exactly the truth table).
    noise : standard deviation of Gaussian noise added to the inputs.

    Returns
    -------
    X : float32 (4 * repeat, 2); y : int64 (4 * repeat,)

    >>> X, y = make_xor()
    >>> y.tolist()
    [0, 1, 1, 0]
    """
    if repeat < 1:
        raise ValueError(f"make_xor: repeat must be >= 1, got {repeat}")
    if noise < 0:
        raise ValueError(f"make_xor: noise must be >= 0, got {noise}")
    base = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    X = np.tile(base, (repeat, 1))
    y = np.tile(np.array([0, 1, 1, 0], dtype=np.int64), repeat)
    if noise > 0:
        X = X + make_rng(seed, "make_xor").normal(0.0, noise, X.shape).astype(np.float32)
    return X, y


def make_moons(n_samples: int = 200, noise: float = 0.1, seed: SeedLike = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles, classes 0 (upper) and 1 (lower).

    The first ``ceil(n/2)`` points are class 0; pass the result through a
    shuffling DataLoader or :func:`train_test_split` before training.

    Returns
    -------
    X : float32 (n_samples, 2); y : int64 (n_samples,)

    >>> X, y = make_moons(100, noise=0.05, seed=0)
    """
    if n_samples < 2:
        raise ValueError(f"make_moons: n_samples must be >= 2, got {n_samples}")
    rng = make_rng(seed, "make_moons")
    n0 = n_samples - n_samples // 2
    n1 = n_samples // 2
    a = np.linspace(0.0, np.pi, n0)
    b = np.linspace(0.0, np.pi, n1)
    upper = np.stack([np.cos(a), np.sin(a)], axis=1)
    lower = np.stack([1.0 - np.cos(b), 0.5 - np.sin(b)], axis=1)
    X = np.concatenate([upper, lower])
    if noise > 0:
        X = X + rng.normal(0.0, noise, X.shape)
    y = np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])
    return X.astype(np.float32), y


def make_spirals(n_samples: int = 300, n_classes: int = 3, noise: float = 0.2,
                 seed: SeedLike = None) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spiral arms, one per class (the classic hard 2-D toy).

    Each arm turns through a bit more than one revolution from the origin
    outwards; ``noise`` is added to the angle, so large values blur the arms.
    Points are grouped by class (``n_samples // n_classes`` each, the
    remainder to the first classes).

    Returns
    -------
    X : float32 (n_samples, 2) with radius <= 1; y : int64 (n_samples,)

    >>> X, y = make_spirals(300, n_classes=3, seed=0)
    """
    if n_classes < 2:
        raise ValueError(f"make_spirals: n_classes must be >= 2, got {n_classes}")
    if n_samples < n_classes:
        raise ValueError(f"make_spirals: n_samples ({n_samples}) < n_classes ({n_classes})")
    rng = make_rng(seed, "make_spirals")
    sizes = [n_samples // n_classes + (k < n_samples % n_classes) for k in range(n_classes)]
    xs, ys = [], []
    for k, m in enumerate(sizes):
        r = np.linspace(0.0, 1.0, m)
        theta = 2 * np.pi * k / n_classes + 1.25 * 2 * np.pi * r + rng.normal(0.0, noise, m)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(m, k, dtype=np.int64))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def make_encoder(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The n-log2(n)-n encoder problem (Rumelhart, Hinton & Williams, 1986).

    Inputs are the n one-hot patterns and the targets are the same patterns:
    a network squeezed through a hidden layer of about log2(n) units must
    invent a binary-like code to reproduce them (8-3-8 for the default).

    Returns
    -------
    X : float32 (n, n) identity; y : float32 (n, n), equal to X (a copy)

    >>> X, Y = make_encoder(8)
    """
    if n < 2:
        raise ValueError(f"make_encoder: n must be >= 2, got {n}")
    X = np.eye(n, dtype=np.float32)
    return X, X.copy()
