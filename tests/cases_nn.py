"""Gradient-check cases for the loss rules registered by ``chainrule.nn.functional``.

``CASES[rule_name]`` is a list of ``(case_id, make_inputs(rng), fn)``:
``make_inputs`` returns the float64 arrays that are differentiated, ``fn``
maps Tensors of them to the rule's output. ``tests/test_registry.py``
gradient-checks every one (first and second order).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import chainrule.nn.functional as F
from chainrule.tensor import Tensor

Case = tuple[str, Callable[[np.random.Generator], list[np.ndarray]], Callable[..., Tensor]]

LABELS = np.array([0, 2, 1, 2])
CLASS_WEIGHT = np.array([0.5, 2.0, 1.0])


def _probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # away from 0 and 1 so that finite differences stay inside the domain
    return rng.uniform(0.1, 0.9, shape)


def _rows(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    p = rng.uniform(0.1, 1.0, shape)
    return p / p.sum(axis=1, keepdims=True)


CASES: dict[str, list[Case]] = {
    "cross_entropy": [
        ("labels-mean", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS)),
        ("labels-sum", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS, reduction="sum")),
        ("labels-none", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS, reduction="none")),
        ("smoothing", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS, label_smoothing=0.2)),
        ("smoothing-none", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS, reduction="none", label_smoothing=0.1)),
        ("large-logits", lambda rng: [30 * rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS)),
    ],
    "cross_entropy_probs": [
        ("probs", lambda rng: [rng.standard_normal((4, 3)), _rows(rng, (4, 3))],
         lambda x, y: F.cross_entropy(x, y)),
        ("unnormalised-targets", lambda rng: [rng.standard_normal((3, 5)),
                                              rng.uniform(0, 2, (3, 5))],
         lambda x, y: F.cross_entropy(x, y, reduction="sum")),
        ("none-smoothing", lambda rng: [rng.standard_normal((4, 3)), _rows(rng, (4, 3))],
         lambda x, y: F.cross_entropy(x, y, reduction="none", label_smoothing=0.3)),
    ],
    "nll_loss": [
        ("mean", lambda rng: [rng.standard_normal((4, 3))], lambda x: F.nll_loss(x, LABELS)),
        ("sum", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.nll_loss(x, LABELS, reduction="sum")),
        ("none", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.nll_loss(x, LABELS, reduction="none")),
        ("after-log-softmax", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.nll_loss(F.log_softmax(x, dim=1), LABELS)),
    ],
    "binary_cross_entropy_with_logits": [
        ("mean", lambda rng: [rng.standard_normal((3, 4)), rng.uniform(0, 1, (3, 4))],
         lambda x, y: F.binary_cross_entropy_with_logits(x, y)),
        ("sum", lambda rng: [rng.standard_normal(5), rng.uniform(0, 1, 5)],
         lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="sum")),
        ("none", lambda rng: [rng.standard_normal((2, 3)), rng.uniform(0, 1, (2, 3))],
         lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none")),
    ],
    "binary_cross_entropy": [
        ("mean", lambda rng: [_probs(rng, (3, 4)), rng.uniform(0, 1, (3, 4))],
         lambda p, y: F.binary_cross_entropy(p, y)),
        ("sum", lambda rng: [_probs(rng, 5), rng.uniform(0, 1, 5)],
         lambda p, y: F.binary_cross_entropy(p, y, reduction="sum")),
        ("none", lambda rng: [_probs(rng, (2, 3)), rng.uniform(0, 1, (2, 3))],
         lambda p, y: F.binary_cross_entropy(p, y, reduction="none")),
    ],
    "mse_loss": [
        ("mean", lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))],
         lambda x, y: F.mse_loss(x, y)),
        ("sum", lambda rng: [rng.standard_normal(5), rng.standard_normal(5)],
         lambda x, y: F.mse_loss(x, y, reduction="sum")),
        ("none", lambda rng: [rng.standard_normal((2, 3)), rng.standard_normal((2, 3))],
         lambda x, y: F.mse_loss(x, y, reduction="none")),
    ],
    "cross_entropy_weighted": [
        ("mean", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS, weight=CLASS_WEIGHT)),
        ("sum", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS, reduction="sum", weight=CLASS_WEIGHT)),
        ("none-smoothing", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS, reduction="none", weight=CLASS_WEIGHT,
                                   label_smoothing=0.2)),
        ("mean-smoothing", lambda rng: [rng.standard_normal((4, 3))],
         lambda x: F.cross_entropy(x, LABELS, weight=CLASS_WEIGHT, label_smoothing=0.1)),
    ],
    "l1_loss": [
        ("mean", lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))],
         lambda x, y: F.l1_loss(x, y)),
        ("sum", lambda rng: [rng.standard_normal(5), rng.standard_normal(5)],
         lambda x, y: F.l1_loss(x, y, reduction="sum")),
        ("none", lambda rng: [rng.standard_normal((2, 3)), rng.standard_normal((2, 3))],
         lambda x, y: F.l1_loss(x, y, reduction="none")),
    ],
    "huber_loss": [
        ("mean", lambda rng: [2 * rng.standard_normal((3, 4)), rng.standard_normal((3, 4))],
         lambda x, y: F.huber_loss(x, y)),
        ("sum-delta", lambda rng: [2 * rng.standard_normal(6), rng.standard_normal(6)],
         lambda x, y: F.huber_loss(x, y, reduction="sum", delta=0.5)),
        ("none", lambda rng: [2 * rng.standard_normal((2, 3)), rng.standard_normal((2, 3))],
         lambda x, y: F.huber_loss(x, y, reduction="none", delta=1.5)),
        ("smooth-l1", lambda rng: [2 * rng.standard_normal((3, 4)), rng.standard_normal((3, 4))],
         lambda x, y: F.smooth_l1_loss(x, y, beta=0.7)),
    ],
    "normalize": [
        ("layer-norm", lambda rng: [rng.standard_normal((3, 5))],
         lambda x: F.layer_norm(x, 5)),
        ("layer-norm-2d-affine", lambda rng: [rng.standard_normal((2, 3, 4)),
                                              rng.standard_normal((3, 4)),
                                              rng.standard_normal((3, 4))],
         lambda x, w, b: F.layer_norm(x, (3, 4), w, b)),
        ("batch-norm", lambda rng: [rng.standard_normal((6, 3)), rng.standard_normal(3),
                                    rng.standard_normal(3)],
         lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)),
        ("batch-norm-3d", lambda rng: [rng.standard_normal((4, 2, 3))],
         lambda x: F.batch_norm(x, None, None, training=True)),
    ],
}
