"""Gradient-check cases for every rule in ``chainrule.ops``.

``CASES[rule_name]`` is a list of ``(case_id, make_inputs, fn)``:
``make_inputs(rng)`` returns the float64 arrays that are differentiated and
``fn(*tensors)`` builds the graph. ``tests/test_registry.py`` checks every
registered rule against central finite differences with these cases, so a new
rule without cases fails the suite.
"""

from __future__ import annotations

import numpy as np

import chainrule as cr
from chainrule import ops

Case = tuple

SHAPES = [(), (4,), (3, 4), (2, 3, 4)]
PAIRS = [
    ((), ()),
    ((4,), (4,)),
    ((3, 1), (1, 4)),
    ((5,), (2, 5)),
    ((2, 3, 4), (3, 1)),
    ((3, 4), ()),
]
AXES = [(None, False), (0, False), (-1, True), ((0, 2), False), ((0, 2), True)]


def normal(shape):
    return lambda rng: rng.standard_normal(shape)


def positive(shape, lo=0.5, hi=2.0):
    return lambda rng: rng.uniform(lo, hi, shape)


def away_from_zero(shape):
    # keeps finite differences off the kink of abs/relu
    def make(rng):
        x = rng.uniform(0.2, 2.0, shape)
        return x * rng.choice([-1.0, 1.0], size=shape)

    return make


def distinct(shape):
    # no ties, with gaps wider than eps, for max/min/maximum
    def make(rng):
        n = int(np.prod(shape)) if shape else 1
        return (rng.permutation(n).reshape(shape) * 0.37 + 0.1).astype(np.float64)

    return make


def ins(*makers):
    return lambda rng: [m(rng) for m in makers]


def unary_cases(fn, maker=normal, shapes=SHAPES):
    return [(f"shape{s}", ins(maker(s)), fn) for s in shapes]


def binary_cases(fn, make_a=normal, make_b=normal, pairs=PAIRS):
    return [(f"{a}x{b}", ins(make_a(a), make_b(b)), fn) for a, b in pairs]


def reduction_cases(fn, maker=normal, shape=(2, 3, 4)):
    cases = [
        (f"axis={ax},keepdims={kd}", ins(maker(shape)), lambda x, ax=ax, kd=kd: fn(x, ax, kd))
        for ax, kd in AXES
    ]
    cases.append(("vector", ins(maker((5,))), lambda x: fn(x, None, False)))
    cases.append(("scalar", ins(maker(())), lambda x: fn(x, None, False)))
    return cases


def _pow_base_positive(shape):
    return positive(shape, 0.5, 2.0)


CASES: dict[str, list[Case]] = {
    "add": binary_cases(lambda a, b: a + b),
    "sub": binary_cases(lambda a, b: a - b),
    "mul": binary_cases(lambda a, b: a * b),
    "div": binary_cases(lambda a, b: a / b, normal, positive),
    "pow": binary_cases(lambda a, b: a**b, _pow_base_positive, normal)
    + [
        ("square", ins(normal((3, 4))), lambda a: a**2),
        ("cube", ins(normal((4,))), lambda a: a**3.0),
        ("rpow", ins(normal((4,))), lambda b: 2.0**b),
    ],
    "neg": unary_cases(lambda x: -x),
    "abs": unary_cases(lambda x: abs(x), away_from_zero),
    "exp": unary_cases(cr.exp),
    "log": unary_cases(cr.log, positive),
    "sqrt": unary_cases(cr.sqrt, positive),
    "sin": unary_cases(cr.sin),
    "cos": unary_cases(cr.cos),
    "tanh": unary_cases(cr.tanh),
    "sigmoid": unary_cases(cr.sigmoid)
    + [("large", lambda rng: [rng.uniform(-30, 30, (6,))], cr.sigmoid)],
    "relu": unary_cases(cr.relu, away_from_zero),
    "leaky_relu": unary_cases(lambda x: cr.leaky_relu(x, 0.1), away_from_zero),
    "softplus": unary_cases(cr.softplus)
    + [("large", lambda rng: [rng.uniform(-30, 30, (6,))], cr.softplus)],
    "ndtr": unary_cases(ops.ndtr)
    + [("tails", lambda rng: [np.array([-8.0, -3.0, -1.9, 2.1, 5.0])], ops.ndtr)],
    "gelu": unary_cases(ops.gelu)
    + unary_cases(lambda x: ops.gelu(x, approximate="tanh"), shapes=[(3, 4)])
    + [("tails", lambda rng: [np.array([-6.0, -2.5, 2.5, 6.0])], ops.gelu)],
    "silu": unary_cases(ops.silu)
    + [("large", lambda rng: [rng.uniform(-30, 30, (6,))], ops.silu)],
    "elu": unary_cases(ops.elu, away_from_zero)
    + unary_cases(lambda x: ops.elu(x, alpha=0.5), away_from_zero, shapes=[(3, 4)]),
    "clip": [
        ("both", lambda rng: [np.array([-2.0, -0.5, 0.3, 0.7, 1.5])], lambda x: cr.clip(x, -1, 1)),
        ("min only", ins(away_from_zero((3, 4))), lambda x: cr.clip(x, min=0.0)),
        ("max only", ins(away_from_zero((3, 4))), lambda x: x.clip(max=0.0)),
    ],
    "astype": [("float64", ins(normal((3, 4))), lambda x: x.astype(np.float64) * 2.0)],
    "clone": unary_cases(lambda x: x.clone() * 3.0),
    "maximum": binary_cases(cr.maximum, distinct, lambda s: lambda rng: distinct(s)(rng) + 0.05),
    "minimum": binary_cases(cr.minimum, distinct, lambda s: lambda rng: distinct(s)(rng) + 0.05),
    "where": [
        ("masked_fill", ins(normal((3, 4))),
         lambda x: x.masked_fill(np.arange(12).reshape(3, 4) % 3 == 0, -2.0) ** 2),
        ("masked_fill, tensor value", ins(normal((3, 4)), normal(())),
         lambda x, v: x.masked_fill(np.array([True, False, False, True]), v) * np.arange(4.0)),
    ]
    + [
        (
            f"{a}x{b}",
            ins(normal(a), normal(b)),
            lambda x, y, a=a, b=b: cr.where(
                np.arange(int(np.prod(np.broadcast_shapes(a, b)))).reshape(
                    np.broadcast_shapes(a, b)
                )
                % 3
                == 0,
                x,
                y,
            ),
        )
        for a, b in PAIRS
    ],
    "sum": reduction_cases(lambda x, ax, kd: cr.sum(x, ax, kd)),
    "mean": reduction_cases(lambda x, ax, kd: x.mean(ax, kd)),
    "max": reduction_cases(lambda x, ax, kd: x.max(axis=ax, keepdims=kd), distinct)
    + [
        # PyTorch's max(dim): values gathered at the indices (a getitem node)
        # next to the full reduction (this rule), in one graph
        ("dim and full", ins(distinct((3, 4))), lambda x: x.max(1).values * x.max()),
        ("amax", ins(distinct((2, 3, 4))), lambda x: x.amax(dim=(0, 2), keepdim=True)),
    ],
    "min": reduction_cases(lambda x, ax, kd: cr.min(x, axis=ax, keepdims=kd), distinct)
    + [("amin", ins(distinct((3, 4))), lambda x: cr.amin(x, -1))],
    "var": reduction_cases(lambda x, ax, kd: x.var(ax, keepdim=kd, correction=0))
    + [
        ("unbiased default", ins(normal((4, 3))), lambda x: cr.var(x, 0)),
        ("ddof=2", ins(normal((4, 3))), lambda x: cr.var(x, axis=0, ddof=2)),
        ("unbiased=False", ins(normal((2, 5))), lambda x: x.var(dim=1, unbiased=False)),
    ],
    "std": reduction_cases(lambda x, ax, kd: x.std(axis=ax, keepdims=kd, correction=0))
    + [
        ("unbiased default", ins(normal((4, 3))), lambda x: cr.std(x, 0) * np.arange(3.0)),
        ("correction=2", ins(normal((5, 2))), lambda x: x.std(dim=0, correction=2)),
    ],
    "logsumexp": reduction_cases(lambda x, ax, kd: cr.logsumexp(x, ax, kd))
    + [("large", lambda rng: [rng.uniform(-500, 500, (3, 4))], lambda x: cr.logsumexp(x, 1))],
    "softmax": [
        (f"axis={ax}", ins(normal((2, 3, 4))), lambda x, ax=ax: cr.softmax(x, ax) * np.arange(4.0))
        for ax in (-1, 0, 1)
    ]
    + [("vector", ins(normal((5,))), lambda x: cr.softmax(x) ** 2)],
    "log_softmax": [
        (f"axis={ax}", ins(normal((2, 3, 4))), lambda x, ax=ax: cr.log_softmax(x, ax))
        for ax in (-1, 0, 1)
    ]
    + [("large", lambda rng: [rng.uniform(-300, 300, (3, 4))], lambda x: cr.log_softmax(x))],
    "matmul": [
        (f"{a}@{b}", ins(normal(a), normal(b)), lambda x, y: x @ y)
        for a, b in [
            ((3, 4), (4, 2)),
            ((4,), (4, 2)),
            ((3, 4), (4,)),
            ((4,), (4,)),
            ((2, 3, 4), (4, 5)),
            ((2, 3, 4), (2, 4, 5)),
            ((1, 3, 4), (2, 4, 5)),
            ((2, 1, 3, 4), (3, 4, 2)),
            ((4,), (2, 4, 3)),
            ((2, 3, 4), (4,)),
        ]
    ],
    "linear": [
        ("2-D", ins(normal((5, 3)), normal((4, 3)), normal((4,))), cr.linear),
        # fewer rows than outputs: the product runs as (w @ x.T).T (ops._affine)
        ("2-D, batch < out", ins(normal((2, 3)), normal((4, 3)), normal((4,))), cr.linear),
        ("3-D input", ins(normal((2, 5, 3)), normal((4, 3)), normal((4,))), cr.linear),
        ("1-D input", ins(normal((3,)), normal((4, 3)), normal((4,))), cr.linear),
    ],
    "linear_nobias": [
        ("2-D", ins(normal((5, 3)), normal((4, 3))), cr.linear),
        ("3-D input", ins(normal((2, 5, 3)), normal((4, 3))), cr.linear),
    ],
    # relu's kink: with the seeds test_registry.py uses (0, 1, 2) every
    # pre-activation x w^T + b is at least 3e-3 away from 0
    "linear_relu": [
        ("2-D", ins(normal((5, 3)), normal((4, 3)), normal((4,))), ops.linear_relu),
        ("2-D, batch < out", ins(normal((2, 3)), normal((4, 3)), normal((4,))), ops.linear_relu),
        ("3-D input", ins(normal((2, 5, 3)), normal((4, 3)), normal((4,))), ops.linear_relu),
        ("1-D input", ins(normal((3,)), normal((4, 3)), normal((4,))), ops.linear_relu),
    ],
    "reshape": [
        ("flat", ins(normal((3, 4))), lambda x: x.reshape(12) * np.arange(12.0)),
        ("-1", ins(normal((2, 3, 4))), lambda x: x.reshape(4, -1) * np.arange(6.0)),
        ("squeeze", ins(normal((3, 1, 4))), lambda x: x.squeeze(1) * np.arange(4.0)),
        ("expand", ins(normal((3, 4))), lambda x: x.expand_dims(0) * np.arange(4.0)),
        ("flatten", ins(normal((2, 3, 4))), lambda x: x.flatten(1) * np.arange(12.0)),
    ],
    "transpose": [
        ("T", ins(normal((3, 4))), lambda x: x.T * np.arange(3.0)),
        ("perm", ins(normal((2, 3, 4))), lambda x: x.permute(1, 2, 0) * np.arange(2.0)),
        ("negative", ins(normal((2, 3, 4))), lambda x: cr.permute(x, (-1, 0, 1)) * 1.5),
        ("swapaxes", ins(normal((2, 3, 4))), lambda x: x.swapaxes(0, -1) * np.arange(2.0)),
        ("swap 2-D", ins(normal((3, 4))), lambda x: x.transpose(0, 1) * np.arange(3.0)),
        ("swap 3-D", ins(normal((2, 3, 4))), lambda x: cr.transpose(x, 0, 2) * np.arange(2.0)),
        ("numpy axes", ins(normal((2, 3, 4))), lambda x: cr.transpose(x, axes=(2, 0, 1)) ** 2),
    ],
    "broadcast_to": [
        (
            "row",
            ins(normal((1, 4))),
            lambda x: x.broadcast_to((3, 4)) * np.arange(12.0).reshape(3, 4),
        ),
        ("new axes", ins(normal((4,))), lambda x: cr.broadcast_to(x, (2, 3, 4)) ** 2),
        ("expand", ins(normal((3, 1))), lambda x: x.expand(2, -1, 4) * np.arange(4.0)),
    ],
    "getitem": [
        ("int", ins(normal((3, 4))), lambda x: x[1] * 2.0),
        ("slice", ins(normal((5, 4))), lambda x: x[1:4, ::2]),
        ("negative step", ins(normal((6,))), lambda x: x[::-2] ** 2),
        ("ellipsis/None", ins(normal((2, 3, 4))), lambda x: x[..., None, 1]),
        ("int array repeats", ins(normal((5,))), lambda x: x[np.array([0, 2, 2, 4, 0])] ** 2),
        ("rows", ins(normal((4, 3))), lambda x: x[[3, 1, 3]] * np.arange(3.0)),
        ("pairs", ins(normal((4, 3))), lambda x: x[np.arange(4), np.array([0, 2, 1, 2])]),
        ("bool mask", ins(normal((3, 4))), lambda x: x[np.arange(12).reshape(3, 4) % 2 == 0] ** 2),
        ("tensor index", ins(normal((4,))), lambda x: x[cr.tensor(np.array([1, 1, 3]))] * 3.0),
    ],
    "scatter_add": [
        (
            "repeats",
            ins(normal((4,))),
            lambda g: ops.scatter_add(g, np.array([0, 2, 2, 1]), (3,)) ** 2,
        ),
        ("slice", ins(normal((2, 4))), lambda g: ops.scatter_add(g, slice(1, 3), (4, 4)) * 2.0),
    ],
    "concatenate": [
        ("axis0", ins(normal((2, 3)), normal((4, 3))), lambda a, b: cr.concatenate([a, b]) ** 2),
        (
            "axis-1",
            ins(normal((2, 3)), normal((2, 1)), normal((2, 2))),
            lambda a, b, c: cr.cat([a, b, c], axis=-1) * np.arange(6.0),
        ),
    ],
    "stack": [
        ("axis0", ins(normal((3,)), normal((3,))), lambda a, b: cr.stack([a, b]) ** 2),
        (
            "axis-1",
            ins(normal((2, 3)), normal((2, 3)), normal((2, 3))),
            lambda a, b, c: cr.stack([a, b, c], axis=-1) * np.arange(3.0),
        ),
    ],
}
