"""A hypothesis strategy for random expression graphs over the whole op registry.

Each rule in ``cr.RULES`` has a *builder* here (or an entry in ``EXCLUDED``
with the reason), and ``test_graph_properties.test_every_rule_is_generated``
fails when a new rule has neither, so the random graphs keep covering the
registry as it grows.

How a program is drawn: inputs are float64 arrays of a few small shapes; then,
step by step, an op is drawn uniformly from the builders and applied to earlier
nodes (any earlier node, so reuse / fan-out is common). Drawing happens on the
*concrete values* of the nodes, which lets a builder keep its op in a valid,
differentiable region, decided once and replayed unchanged while the finite
differences perturb the inputs:

* log / sqrt / pow bases / denominators get ``x*x + 0.5`` when the node is
  not already safely positive (or non-zero);
* ops with kinks (abs, relu, leaky_relu, clip, max/min, maximum/minimum) are
  refused where a value sits within ``KINK_GAP`` of the kink (exact ties and
  exact zeros are allowed: the engine splits ties evenly, which is exact there);
* a node whose values grow past ``BOUND`` is scaled down by a fixed constant,
  so nothing overflows and the differences stay accurate.

A program is a list of :class:`Step` (a description and a function of the
earlier nodes); :func:`run` replays it on Tensors and returns a scalar that
mixes every node with fixed random weights, so every branch is checked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import chainrule as cr
from chainrule import ops
from chainrule.tensor import Tensor

try:  # the loss rules live in chainrule.nn
    from chainrule.nn import functional as F
except ImportError:  # pragma: no cover - before nn lands
    F = None

KINK_GAP = 1e-3
BOUND = 4.0
INPUT_SHAPES = [(), (4,), (3, 4), (1, 4), (3, 1), (4, 3), (2, 3, 4), (2, 1, 4)]

# Rules that random graphs do not build directly, and why.
EXCLUDED: dict[str, str] = {}


@dataclass
class Step:
    desc: str
    fn: Callable[[list], Tensor]

    def __repr__(self) -> str:
        return self.desc


@dataclass
class Program:
    inputs: list[np.ndarray]
    steps: list[Step] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)

    def __repr__(self) -> str:
        shapes = [x.shape for x in self.inputs]
        body = "\n".join(f"  n{len(self.inputs) + k} = {s.desc}" for k, s in enumerate(self.steps))
        return f"Program(inputs {shapes}:\n{body})"

    def rules(self) -> set[str]:
        """The rules this program's graph records (for coverage counts)."""
        ts = [Tensor(x, requires_grad=True) for x in self.inputs]
        out = run(self, ts)
        from graphwalk import ops

        names = set(ops(out))
        return names


def run(program: Program, inputs) -> Tensor:
    """Replay ``program`` on ``inputs`` (Tensors); a scalar mixing every node."""
    nodes = list(inputs)
    for step in program.steps:
        nodes.append(step.fn(nodes))
    total = None
    for node, w in zip(nodes[len(inputs):], program.weights):
        term = (node * w).sum()
        total = term if total is None else total + term
    if total is None:
        total = sum((x * x).sum() for x in nodes)
    return total


# --------------------------------------------------------------------------
# Helpers used by the builders (all decide on concrete values, once)
# --------------------------------------------------------------------------


def _val(nodes, i) -> np.ndarray:
    return nodes[i].data


def positive(nodes, i, lo=0.2):
    """A function giving a safely positive version of node i, and its description."""
    if _val(nodes, i).size and _val(nodes, i).min() > lo:
        return (lambda ns: ns[i]), f"n{i}"
    return (lambda ns: ns[i] * ns[i] + 0.5), f"(n{i}*n{i}+0.5)"


def nonzero(nodes, i, lo=0.2):
    if _val(nodes, i).size and np.abs(_val(nodes, i)).min() > lo:
        return (lambda ns: ns[i]), f"n{i}"
    return (lambda ns: ns[i] * ns[i] + 0.5), f"(n{i}*n{i}+0.5)"


def clear_of(v: np.ndarray, kinks) -> bool:
    """No value within KINK_GAP of a kink, unless exactly on it."""
    for k in kinks:
        d = np.abs(np.asarray(v, dtype=np.float64) - k)
        if ((d > 0) & (d < KINK_GAP)).any():
            return False
    return True


def clear_gap(v: np.ndarray, axes) -> bool:
    """For max/min over ``axes``: the top two distinct values differ by >= KINK_GAP."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0:
        return True
    axes = tuple(range(v.ndim)) if axes is None else tuple(a % v.ndim for a in axes)
    rest = [a for a in range(v.ndim) if a not in axes]
    rows = np.transpose(v, rest + list(axes)).reshape(int(np.prod([v.shape[a] for a in rest])),
                                                      -1)
    for row in rows:
        s = np.sort(row)
        d = np.diff(s)
        if ((d > 0) & (d < KINK_GAP)).any():
            return False
    return True


def draw_axis(draw, ndim: int, allow_tuple=True, allow_none=True):
    choices = []
    if allow_none:
        choices.append(None)
    choices += list(range(-ndim, ndim))
    if allow_tuple and ndim >= 2:
        choices += [tuple(c) for c in itertools.combinations(range(ndim), 2)]
        choices.append((-1, 0))
    if not choices:
        return None
    return draw(st.sampled_from(choices))


def broadcastable(a, b) -> bool:
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


def pick(draw, nodes, ok=lambda v: True):
    # empty nodes (an empty slice) stay in the graph but are not used as operands
    cands = [k for k, n in enumerate(nodes) if n.data.size and ok(n.data)]
    if not cands:
        return None
    return draw(st.sampled_from(cands))


def const(rng, shape, lo=-1.0, hi=1.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape)


# --------------------------------------------------------------------------
# Builders: name -> build(draw, nodes, rng) -> Step | None
# --------------------------------------------------------------------------

BUILDERS: dict[str, Callable] = {}


def builder(name):
    def register(fn):
        BUILDERS[name] = fn
        return fn

    return register


def _unary(name, fn, kinks=None, domain=None):
    @builder(name)
    def build(draw, nodes, rng):
        i = pick(draw, nodes)
        if domain is not None:
            arg, d = domain(nodes, i)
        else:
            arg, d = (lambda ns: ns[i]), f"n{i}"
        if kinks is not None and not clear_of(arg(nodes).data, kinks):
            return None
        return Step(f"{name}({d})", lambda ns: fn(arg(ns)))

    return build


_unary("neg", lambda x: -x)
_unary("abs", abs, kinks=[0.0])
_unary("exp", cr.exp)
_unary("log", cr.log, domain=positive)
_unary("sqrt", cr.sqrt, domain=positive)
_unary("sin", cr.sin)
_unary("cos", cr.cos)
_unary("tanh", cr.tanh)
_unary("sigmoid", cr.sigmoid)
_unary("softplus", cr.softplus)
_unary("relu", cr.relu, kinks=[0.0])
_unary("ndtr", cr.ops.ndtr)
_unary("gelu", cr.ops.gelu)
_unary("silu", cr.ops.silu)
_unary("elu", cr.ops.elu, kinks=[0.0])
_unary("astype", lambda x: x.astype(np.float64))
_unary("clone", lambda x: x.clone())


@builder("leaky_relu")
def _(draw, nodes, rng):
    i = pick(draw, nodes)
    slope = draw(st.sampled_from([0.01, 0.1, 0.3, -0.5]))
    if not clear_of(_val(nodes, i), [0.0]):
        return None
    return Step(f"leaky_relu(n{i}, {slope})", lambda ns: cr.leaky_relu(ns[i], slope))


@builder("clip")
def _(draw, nodes, rng):
    i = pick(draw, nodes)
    lo = draw(st.sampled_from([None, -1.0, -0.25, 0.0]))
    hi = draw(st.sampled_from([None, 1.0, 0.5]))
    if lo is None and hi is None:
        hi = 0.75
    kinks = [k for k in (lo, hi) if k is not None]
    if not clear_of(_val(nodes, i), kinks):
        return None
    return Step(f"clip(n{i}, {lo}, {hi})", lambda ns: cr.clip(ns[i], lo, hi))


def _binary(name, fn, kinks=False, right=None):
    @builder(name)
    def build(draw, nodes, rng):
        i = pick(draw, nodes)
        j = pick(draw, nodes, lambda v: broadcastable(v.shape, nodes[i].shape))
        if right is not None:
            b, db = right(nodes, j)
        else:
            b, db = (lambda ns: ns[j]), f"n{j}"
        if kinks:
            diff = np.asarray(_val(nodes, i)) - b(nodes).data
            if not clear_of(diff, [0.0]):
                return None
        swap = draw(st.booleans()) and right is None
        if swap:
            return Step(f"{name}(n{j}, n{i})", lambda ns: fn(b(ns), ns[i]))
        return Step(f"{name}(n{i}, {db})", lambda ns: fn(ns[i], b(ns)))

    return build


_binary("add", lambda a, b: a + b)
_binary("sub", lambda a, b: a - b)
_binary("mul", lambda a, b: a * b)
_binary("div", lambda a, b: a / b, right=nonzero)
_binary("maximum", cr.maximum, kinks=True)
_binary("minimum", cr.minimum, kinks=True)


@builder("pow")
def _(draw, nodes, rng):
    kind = draw(st.sampled_from(["node**node", "node**int", "const**node"]))
    i = pick(draw, nodes)
    if kind == "node**int":
        k = draw(st.sampled_from([2, 3, -1]))
        if k < 0:
            base, d = nonzero(nodes, i)
        else:
            base, d = (lambda ns: ns[i]), f"n{i}"
        return Step(f"{d}**{k}", lambda ns: base(ns) ** k)
    if kind == "const**node":
        c = draw(st.sampled_from([2.0, 0.5, math.e]))
        return Step(f"{c}**n{i}", lambda ns: c ** ns[i])
    j = pick(draw, nodes, lambda v: broadcastable(v.shape, nodes[i].shape))
    base, d = positive(nodes, i)
    return Step(f"{d}**n{j}", lambda ns: base(ns) ** ns[j])


@builder("where")
def _(draw, nodes, rng):
    i = pick(draw, nodes)
    other = draw(st.sampled_from(["node", "scalar"]))
    if other == "scalar":
        cond = rng.random(nodes[i].shape) < 0.5
        return Step(f"where(c, n{i}, 0.25)", lambda ns: cr.where(cond, ns[i], 0.25))
    j = pick(draw, nodes, lambda v: broadcastable(v.shape, nodes[i].shape))
    cond = rng.random(np.broadcast_shapes(nodes[i].shape, nodes[j].shape)) < 0.5
    return Step(f"where(c, n{i}, n{j})", lambda ns: cr.where(cond, ns[i], ns[j]))


def _reduction(name, fn, extremum=False, ddof=False):
    @builder(name)
    def build(draw, nodes, rng):
        i = pick(draw, nodes)
        nd = nodes[i].ndim
        axis = draw_axis(draw, nd)
        keepdims = draw(st.booleans())
        extra = {}
        if ddof:
            d = draw(st.sampled_from([0, 1]))
            axes = tuple(range(nd)) if axis is None else (
                (axis,) if isinstance(axis, int) else axis)
            n = int(np.prod([nodes[i].shape[a] for a in axes])) if nd else 1
            if n - d <= 0:
                d = 0
            extra["ddof"] = d
        if extremum and not clear_gap(_val(nodes, i), None if axis is None else (
                (axis,) if isinstance(axis, int) else axis)):
            return None
        dd = f", ddof={extra['ddof']}" if extra else ""
        return Step(
            f"{name}(n{i}, axis={axis}, keepdims={keepdims}{dd})",
            lambda ns: fn(ns[i], axis=axis, keepdims=keepdims, **extra),
        )

    return build


_reduction("sum", cr.sum)
_reduction("mean", cr.mean)
_reduction("max", cr.max, extremum=True)
_reduction("min", cr.min, extremum=True)
_reduction("var", cr.var, ddof=True)
_reduction("std", cr.std, ddof=True)
_reduction("logsumexp", cr.logsumexp)


def _softmaxlike(name, fn):
    @builder(name)
    def build(draw, nodes, rng):
        i = pick(draw, nodes, lambda v: v.ndim >= 1)
        if i is None:
            return None
        axis = draw(st.sampled_from(list(range(-nodes[i].ndim, nodes[i].ndim))))
        return Step(f"{name}(n{i}, axis={axis})", lambda ns: fn(ns[i], axis))

    return build


_softmaxlike("softmax", cr.softmax)
_softmaxlike("log_softmax", cr.log_softmax)


# ----- shapes and indexing ---------------------------------------------------


def _factor_shapes(size: int) -> list[tuple]:
    out = [(size,), (-1,), (1, size), (size, 1)]
    for a in range(2, size):
        if size % a == 0:
            out.append((a, size // a))
            out.append((a, -1))
            for b in range(2, size // a):
                if (size // a) % b == 0:
                    out.append((a, b, size // a // b))
    return out


@builder("reshape")
def _(draw, nodes, rng):
    i = pick(draw, nodes)
    size = nodes[i].size
    shape = draw(st.sampled_from(_factor_shapes(size) if size > 1 else [(), (1,), (1, 1)]))
    how = draw(st.sampled_from(["reshape", "flatten", "squeeze", "expand_dims"]))
    if how == "flatten" and nodes[i].ndim:
        return Step(f"flatten(n{i})", lambda ns: cr.flatten(ns[i]))
    if how == "squeeze" and 1 in nodes[i].shape:
        return Step(f"squeeze(n{i})", lambda ns: cr.squeeze(ns[i]))
    if how == "expand_dims":
        ax = draw(st.integers(-nodes[i].ndim - 1, nodes[i].ndim))
        return Step(f"expand_dims(n{i}, {ax})", lambda ns: cr.expand_dims(ns[i], ax))
    return Step(f"reshape(n{i}, {shape})", lambda ns: ns[i].reshape(shape))


@builder("transpose")
def _(draw, nodes, rng):
    i = pick(draw, nodes, lambda v: v.ndim >= 2)
    if i is None:
        return None
    nd = nodes[i].ndim
    how = draw(st.sampled_from(["T", "perm", "swapaxes"]))
    if how == "T":
        return Step(f"n{i}.T", lambda ns: ns[i].T)
    if how == "swapaxes":
        a, b = draw(st.integers(-nd, nd - 1)), draw(st.integers(-nd, nd - 1))
        return Step(f"swapaxes(n{i}, {a}, {b})", lambda ns: cr.swapaxes(ns[i], a, b))
    perm = draw(st.permutations(list(range(nd))))
    perm = [p - nd if draw(st.booleans()) else p for p in perm]  # negative axes too
    return Step(f"transpose(n{i}, {perm})", lambda ns: cr.transpose(ns[i], perm))


@builder("broadcast_to")
def _(draw, nodes, rng):
    i = pick(draw, nodes)
    shape = tuple(3 if n == 1 else n for n in nodes[i].shape)
    if draw(st.booleans()) or shape == nodes[i].shape:
        shape = (2,) + shape
    return Step(f"broadcast_to(n{i}, {shape})", lambda ns: cr.broadcast_to(ns[i], shape))


@builder("getitem")
def _(draw, nodes, rng):
    i = pick(draw, nodes, lambda v: v.ndim >= 1)
    if i is None:
        return None
    shape = nodes[i].shape
    n0 = shape[0]
    kind = draw(st.sampled_from(
        ["int", "slice", "int array", "repeats", "bool", "pairs", "none/ellipsis", "tensor"]))
    if kind == "int":
        k = draw(st.integers(-n0, n0 - 1))
        idx = k
    elif kind == "slice":
        start = draw(st.sampled_from([None, 0, 1, -2]))
        stop = draw(st.sampled_from([None, -1, 3]))
        step = draw(st.sampled_from([None, 1, 2, -1, -2]))
        idx = slice(start, stop, step)
    elif kind in ("int array", "repeats"):
        m = draw(st.integers(1, 6))
        idx = rng.integers(0, n0, m)
        if kind == "repeats":
            idx = np.concatenate([idx, idx[:1], idx[:1]])
    elif kind == "bool":
        idx = rng.random(shape) < 0.6
    elif kind == "pairs":
        if len(shape) < 2:
            return None
        m = draw(st.integers(1, 5))
        idx = (rng.integers(0, n0, m), rng.integers(0, shape[1], m))
    elif kind == "none/ellipsis":
        idx = (Ellipsis, None, draw(st.integers(-shape[-1], shape[-1] - 1)))
    else:
        idx = cr.tensor(np.concatenate([rng.integers(0, n0, 3), [0, 0]]))
    return Step(f"n{i}[{kind}: {idx!r}]".replace("\n", " "), lambda ns: ns[i][idx])


@builder("scatter_add")
def _(draw, nodes, rng):
    i = pick(draw, nodes, lambda v: v.ndim >= 1)
    if i is None:
        return None
    shape = nodes[i].shape
    m = draw(st.integers(1, 4))
    idx = rng.integers(0, m, shape[0])  # repeats whenever shape[0] > m
    target = (m,) + shape[1:]
    return Step(f"scatter_add(n{i}, {idx.tolist()}, {target})",
                lambda ns: ops.scatter_add(ns[i], idx, target))


@builder("concatenate")
def _(draw, nodes, rng):
    i = pick(draw, nodes, lambda v: v.ndim >= 1)
    if i is None:
        return None
    shape = nodes[i].shape
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    ax = axis % len(shape)

    def fits(v):
        return v.ndim == len(shape) and all(
            a == b for k, (a, b) in enumerate(zip(v.shape, shape)) if k != ax)

    parts = [i] + [pick(draw, nodes, fits) for _ in range(draw(st.integers(1, 2)))]
    return Step(f"concatenate({[f'n{p}' for p in parts]}, axis={axis})",
                lambda ns: cr.concatenate([ns[p] for p in parts], axis=axis))


@builder("stack")
def _(draw, nodes, rng):
    i = pick(draw, nodes)
    shape = nodes[i].shape
    parts = [i] + [pick(draw, nodes, lambda v: v.shape == shape)
                   for _ in range(draw(st.integers(1, 2)))]
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    return Step(f"stack({[f'n{p}' for p in parts]}, axis={axis})",
                lambda ns: cr.stack([ns[p] for p in parts], axis=axis))


# ----- linear algebra ----------------------------------------------------------


def _matmul_ok(a, b) -> bool:
    if not a or not b:
        return False
    try:
        np.matmul(np.zeros(a), np.zeros(b))
        return True
    except ValueError:
        return False


@builder("matmul")
def _(draw, nodes, rng):
    i = pick(draw, nodes, lambda v: v.ndim >= 1)
    if i is None:
        return None
    a = nodes[i].shape
    j = pick(draw, nodes, lambda v: _matmul_ok(a, v.shape))
    if j is not None and draw(st.booleans()):
        return Step(f"n{i} @ n{j}", lambda ns: ns[i] @ ns[j])
    # a matmul chain with constant matrices: (.., k) @ (k, m) @ (m, p)
    m = draw(st.integers(1, 4))
    w1 = const(rng, (a[-1], m))
    if draw(st.booleans()):
        w2 = const(rng, (m, draw(st.integers(1, 4))))
        return Step(f"n{i} @ W{w1.shape} @ W{w2.shape}", lambda ns: ns[i] @ w1 @ w2)
    if draw(st.booleans()):
        left = const(rng, (2, a[0])) if len(a) == 1 else None
        if left is not None:
            return Step(f"W{left.shape} @ n{i}", lambda ns: left @ ns[i])
    return Step(f"n{i} @ W{w1.shape}", lambda ns: ns[i] @ w1)


def _linear(name, with_bias, relu=False):
    @builder(name)
    def build(draw, nodes, rng):
        i = pick(draw, nodes, lambda v: v.ndim >= 1)
        if i is None:
            return None
        fan_in = nodes[i].shape[-1]
        w = pick(draw, nodes, lambda v: v.ndim == 2 and v.shape[1] == fan_in)
        out = nodes[w].shape[0] if w is not None else draw(st.integers(1, 4))
        wc = const(rng, (out, fan_in))
        b = pick(draw, nodes, lambda v: v.shape == (out,)) if with_bias else None
        bc = const(rng, (out,))

        def fn(ns):
            weight = ns[w] if w is not None else wc
            if not with_bias:
                return cr.linear(ns[i], weight)
            bias = ns[b] if b is not None else bc
            if relu:
                return ops.linear_relu(ns[i], weight, bias)
            return cr.linear(ns[i], weight, bias)

        if relu:  # keep the pre-activation off relu's kink
            z = cr.linear(nodes[i], nodes[w] if w is not None else wc,
                          nodes[b] if b is not None else bc)
            if not clear_of(z.data, [0.0]):
                return None
        wd = f"n{w}" if w is not None else f"W{wc.shape}"
        bd = (f", n{b}" if b is not None else f", b{bc.shape}") if with_bias else ""
        return Step(f"{name}(n{i}, {wd}{bd})", fn)

    return build


_linear("linear", True)
_linear("linear_nobias", False)
_linear("linear_relu", True, relu=True)


# ----- losses (chainrule.nn.functional) -----------------------------------------


def _loss_builders():
    if F is None:
        return

    def two_d(v):
        return v.ndim == 2 and v.shape[1] >= 2

    @builder("cross_entropy")
    def _(draw, nodes, rng):
        i = pick(draw, nodes, two_d)
        if i is None:
            return None
        n, c = nodes[i].shape
        labels = rng.integers(0, c, n)
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        ls = draw(st.sampled_from([0.0, 0.1]))
        return Step(f"cross_entropy(n{i}, {labels.tolist()}, {red}, ls={ls})",
                    lambda ns: F.cross_entropy(ns[i], labels, reduction=red, label_smoothing=ls))

    @builder("cross_entropy_probs")
    def _(draw, nodes, rng):
        i = pick(draw, nodes, two_d)
        if i is None:
            return None
        j = pick(draw, nodes, lambda v: v.shape == nodes[i].shape)
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        ls = draw(st.sampled_from([0.0, 0.2]))
        return Step(f"cross_entropy(n{i}, softmax(n{j}), {red}, ls={ls})",
                    lambda ns: F.cross_entropy(ns[i], cr.softmax(ns[j], -1), reduction=red,
                                               label_smoothing=ls))

    @builder("nll_loss")
    def _(draw, nodes, rng):
        i = pick(draw, nodes, two_d)
        if i is None:
            return None
        n, c = nodes[i].shape
        labels = rng.integers(0, c, n)
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        return Step(f"nll_loss(n{i}, {labels.tolist()}, {red})",
                    lambda ns: F.nll_loss(ns[i], labels, reduction=red))

    @builder("binary_cross_entropy_with_logits")
    def _(draw, nodes, rng):
        i = pick(draw, nodes)
        j = pick(draw, nodes, lambda v: v.shape == nodes[i].shape)
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        return Step(f"bce_with_logits(n{i}, sigmoid(n{j}), {red})",
                    lambda ns: F.binary_cross_entropy_with_logits(ns[i], cr.sigmoid(ns[j]),
                                                                  reduction=red))

    @builder("binary_cross_entropy")
    def _(draw, nodes, rng):
        i = pick(draw, nodes)
        j = pick(draw, nodes, lambda v: v.shape == nodes[i].shape)
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        return Step(f"bce(sigmoid(n{i}), sigmoid(n{j}), {red})",
                    lambda ns: F.binary_cross_entropy(cr.sigmoid(ns[i]), cr.sigmoid(ns[j]),
                                                      reduction=red))

    @builder("mse_loss")
    def _(draw, nodes, rng):
        i = pick(draw, nodes)
        j = pick(draw, nodes, lambda v: v.shape == nodes[i].shape)
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        return Step(f"mse_loss(n{i}, n{j}, {red})",
                    lambda ns: F.mse_loss(ns[i], ns[j], reduction=red))


    @builder("cross_entropy_weighted")
    def _(draw, nodes, rng):
        i = pick(draw, nodes, two_d)
        if i is None:
            return None
        n, c = nodes[i].shape
        labels = rng.integers(0, c, n)
        weight = rng.uniform(0.2, 2.0, c)
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        ls = draw(st.sampled_from([0.0, 0.1]))
        return Step(f"cross_entropy(n{i}, {labels.tolist()}, {red}, ls={ls}, weight)",
                    lambda ns: F.cross_entropy(ns[i], labels, reduction=red,
                                               label_smoothing=ls, weight=weight))

    @builder("l1_loss")
    def _(draw, nodes, rng):
        i = pick(draw, nodes)
        j = pick(draw, nodes, lambda v: v.shape == nodes[i].shape)
        if i == j or not clear_of((nodes[i] - nodes[j]).data, [0.0]):
            return None
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        return Step(f"l1_loss(n{i}, n{j}, {red})",
                    lambda ns: F.l1_loss(ns[i], ns[j], reduction=red))

    @builder("huber_loss")
    def _(draw, nodes, rng):
        i = pick(draw, nodes)
        j = pick(draw, nodes, lambda v: v.shape == nodes[i].shape)
        d = (nodes[i] - nodes[j]).data
        if not (clear_of(d, [1.0]) and clear_of(d, [-1.0])):
            return None
        red = draw(st.sampled_from(["mean", "sum", "none"]))
        return Step(f"huber_loss(n{i}, n{j}, {red})",
                    lambda ns: F.huber_loss(ns[i], ns[j], reduction=red))

    @builder("normalize")
    def _(draw, nodes, rng):
        i = pick(draw, nodes, lambda v: v.ndim == 2 and v.shape[0] >= 2 and v.shape[1] >= 2)
        if i is None or not (nodes[i].data.std(axis=1) > 0.05).all():
            return None
        return Step(f"layer_norm(n{i})",
                    lambda ns: F.layer_norm(ns[i], ns[i].shape[-1]))


_loss_builders()


# --------------------------------------------------------------------------
# The strategy
# --------------------------------------------------------------------------


def _settle(step: Step, nodes: list) -> Step | None:
    """Evaluate a new step on the concrete nodes; scale it down if it grew."""
    try:
        with cr.no_grad():
            out = step.fn(nodes)
    except (ValueError, TypeError, IndexError):
        return None  # e.g. a reshape the node's size does not allow
    v = out.data
    if v.dtype != np.float64 or not np.isfinite(v).all():
        return None
    big = float(np.abs(v).max()) if v.size else 0.0
    if big > BOUND:
        scale = BOUND / (2.0 ** math.ceil(math.log2(big)))  # a power of two: exact
        inner = step.fn
        return Step(f"({step.desc}) * {scale}", lambda ns: inner(ns) * scale)
    return step


@st.composite
def programs(draw, max_steps: int = 8, only: str | None = None):
    """Random expression graphs over every rule in ``BUILDERS``.

    ``only`` forces every step to use one rule (used by the coverage test).
    """
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_inputs = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(INPUT_SHAPES)) for _ in range(n_inputs)]
    inputs = [rng.uniform(-1.5, 1.5, s) for s in shapes]
    prog = Program(inputs)
    nodes = [Tensor(x) for x in inputs]
    names = sorted(BUILDERS)
    for _ in range(draw(st.integers(max(1, max_steps // 2), max_steps))):
        name = only or names[draw(st.integers(0, len(names) - 1))]
        step = BUILDERS[name](draw, nodes, rng)
        if step is None:
            continue
        step = _settle(step, nodes)
        if step is None:
            continue
        prog.steps.append(step)
        with cr.no_grad():
            nodes.append(step.fn(nodes))
    prog.weights = [rng.uniform(0.2, 1.0, n.shape) for n in nodes[n_inputs:]]
    return prog
