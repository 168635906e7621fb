"""Every rule's value and derivative at its edge points, against PyTorch.

Edge points: 0 (and -0), +-inf, NaN, very large values, ties, constant and
one-element reductions, empty arrays. For each rule in ``cr.RULES`` the cases
below run the same expression in chainrule and in PyTorch (float64) and
compare the forward value and the gradient, NaN for NaN and inf for inf.

Where chainrule deliberately differs, the case is listed in ``DIFFERENCES``
with the reason, and docs/edge-cases.md has a row for it (the last test checks
that the page and this table agree). Everything else must match exactly.

Without PyTorch these tests skip; the regressions that matter most (``x**0``
at 0, ``std`` of a constant) are also checked by hand in test_semantics.py.
"""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr
import chainrule.nn.functional as F
import graphwalk

torch = pytest.importorskip("torch")
TF = torch.nn.functional

INF = np.inf
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, INF, -INF, 1e300, -1e300, 1e-300, -1e-300]
PAIRS = [(a, b) for a, b in itertools.product([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, INF, -INF, np.nan],
                                              repeat=2)]


def _both(fn_cr, fn_torch=None):
    return fn_cr, fn_torch or fn_cr


# name -> list of (case id, [input arrays], chainrule fn, torch fn)
CASES: dict[str, list] = {}


def case(rule, cid, inputs, fn_cr, fn_torch=None):
    CASES.setdefault(rule, []).append((cid, [np.asarray(i, np.float64) for i in inputs],
                                       fn_cr, fn_torch or fn_cr))


for name, ours, theirs in [
    ("neg", lambda x: -x, None),
    ("abs", lambda x: x.abs(), None),
    ("exp", lambda x: x.exp(), None),
    ("log", lambda x: x.log(), None),
    ("sqrt", lambda x: x.sqrt(), None),
    ("sin", lambda x: x.sin(), None),
    ("cos", lambda x: x.cos(), None),
    ("tanh", lambda x: x.tanh(), None),
    ("sigmoid", lambda x: x.sigmoid(), None),
    ("relu", lambda x: x.relu(), None),
    ("leaky_relu", lambda x: cr.leaky_relu(x, 0.1), lambda x: TF.leaky_relu(x, 0.1)),
    ("softplus", lambda x: x.softplus(), lambda x: TF.softplus(x)),
    ("clone", lambda x: x.clone() * 2, None),
    ("ndtr", lambda x: cr.ops.ndtr(x), lambda x: torch.special.ndtr(x)),
    ("gelu", lambda x: F.gelu(x), lambda x: TF.gelu(x)),
    ("silu", lambda x: F.silu(x), lambda x: TF.silu(x)),
    ("elu", lambda x: F.elu(x, 0.7), lambda x: TF.elu(x, 0.7)),
    ("astype", lambda x: x.astype(np.float32).astype(np.float64),
     lambda x: x.float().double()),
]:
    case(name, "special values", [SPECIAL], ours, theirs)
    case(name, "NaN input", [[np.nan, 1.0]], ours, theirs)

case("gelu", "tanh approximation", [SPECIAL], lambda x: F.gelu(x, approximate="tanh"),
     lambda x: TF.gelu(x, approximate="tanh"))
case("clip", "at and beyond the bounds", [[-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, INF, -INF, np.nan]],
     lambda x: x.clamp(-1.0, 1.0))
case("clip", "min only", [[-INF, 0.0, 0.1, INF]], lambda x: x.clamp(min=0.0))

for name, op in [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b),
                 ("mul", lambda a, b: a * b), ("div", lambda a, b: a / b),
                 ("pow", lambda a, b: a ** b),
                 ("maximum", lambda a, b: a.maximum(b)), ("minimum", lambda a, b: a.minimum(b))]:
    a, b = np.array(PAIRS).T
    case(name, "special pairs", [a, b], op)
case("pow", "x**0 at 0 (polynomial features)", [[0.0, 0.0, 1.0]], lambda x: x ** 0.0)
case("pow", "x**2 at 0", [[0.0, -0.0]], lambda x: x ** 2)
case("pow", "2**x", [[-INF, 0.0, 3.0, INF]], lambda x: 2.0 ** x)
case("pow", "0**x", [[-1.0, 0.0, 0.5, 2.0]], lambda x: 0.0 ** x)

REDUCE_INPUTS = {
    "constant": [[2.0, 2.0, 2.0]],
    "ties": [[1.0, 3.0, 3.0, -1.0]],
    "inf": [[1.0, INF, 2.0]],
    "-inf": [[1.0, -INF, 2.0]],
    "all -inf": [[-INF, -INF]],
    "nan": [[1.0, np.nan, 2.0]],
    "one element": [[1.5]],
    "huge": [[1e300, -1e300, 1.0]],
}
for cid, x in REDUCE_INPUTS.items():
    case("sum", cid, x, lambda x: x.sum())
    case("mean", cid, x, lambda x: x.mean())
    case("max", cid, x, lambda x: x.max())
    case("min", cid, x, lambda x: x.min())
    case("logsumexp", cid, x, lambda x: x.logsumexp(0))
    case("softmax", cid, x, lambda x: x.softmax(0) * torch_or_np_arange(x))
    case("log_softmax", cid, x, lambda x: x.log_softmax(0) * torch_or_np_arange(x))
    if cid != "one element":
        case("var", cid, x, lambda x: x.var())
        case("std", cid, x, lambda x: x.std())
    case("var", cid + ", correction=0", x, lambda x: x.var(correction=0))
    case("std", cid + ", correction=0", x, lambda x: x.std(correction=0))
case("getitem", "max(dim) at ties", [[[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]],
     lambda x: x.max(1)[0])
case("max", "amax ties", [[[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]], lambda x: x.amax(1))
case("getitem", "min(dim) at ties and NaN", [[[1.0, 1.0, 3.0], [2.0, np.nan, np.nan]]],
     lambda x: x.min(1)[0])
case("sum", "empty", [np.zeros((0, 3))], lambda x: x.sum(0))
case("softmax", "empty rows", [np.zeros((0, 3))], lambda x: x.softmax(1))
case("logsumexp", "empty dim", [np.zeros((2, 0))], lambda x: x.logsumexp(1))


def torch_or_np_arange(x):
    """A fixed weight vector so the softmax gradient is not identically zero."""
    n = x.shape[0]
    return torch.arange(1.0, n + 1, dtype=torch.float64) if isinstance(x, torch.Tensor) \
        else np.arange(1.0, n + 1)


case("matmul", "inf and zero", [[[0.0, INF], [1.0, 2.0]], [[1.0, 0.0], [0.0, 1.0]]],
     lambda a, b: a @ b)
case("matmul", "empty inner dimension", [np.zeros((2, 0)), np.zeros((0, 3))],
     lambda a, b: a @ b)
case("linear", "inf input", [[[INF, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [0.0, 1.0]],
     lambda x, w, b: cr.linear(x, w, b), lambda x, w, b: TF.linear(x, w, b))
case("linear_nobias", "empty batch", [np.zeros((0, 2)), [[1.0, 2.0]]],
     lambda x, w: cr.linear(x, w), lambda x, w: TF.linear(x, w))
# z = x w^T + b exactly 0 in the first column: relu'(0) = 0 in both
case("linear_relu", "pre-activation exactly 0",
     [[[1.0, -1.0]], [[1.0, 1.0], [2.0, 1.0]], [0.0, 0.0]],
     lambda x, w, b: cr.ops.linear_relu(x, w, b), lambda x, w, b: TF.relu(TF.linear(x, w, b)))
case("reshape", "empty", [np.zeros((0, 4))], lambda x: x.reshape(2, 0, 2))
case("transpose", "empty", [np.zeros((0, 3))], lambda x: x.transpose(0, 1))
case("broadcast_to", "size-1 to 0", [np.zeros((1, 3))], lambda x: x.expand(0, 3))
case("getitem", "repeated indices", [[1.0, 2.0, 3.0]],
     lambda x: x[cr.tensor(np.array([0, 0, 2]))], lambda x: x[torch.tensor([0, 0, 2])])
case("getitem", "empty selection", [[1.0, 2.0]], lambda x: x[1:1])
case("scatter_add", "repeated indices", [[1.0, 2.0, 3.0]],
     lambda x: cr.ops.scatter_add(x, np.array([0, 0, 1]), (2,)),
     lambda x: torch.zeros(2, dtype=torch.float64).index_add(0, torch.tensor([0, 0, 1]), x))
case("concatenate", "with an empty part", [[1.0, 2.0], np.zeros(0)],
     lambda a, b: cr.cat([a, b]), lambda a, b: torch.cat([a, b]))
case("stack", "empty parts", [np.zeros(0), np.zeros(0)],
     lambda a, b: cr.stack([a, b], 1), lambda a, b: torch.stack([a, b], 1))
case("where", "inf in the unselected branch", [[INF, 1.0], [2.0, -INF]],
     lambda a, b: cr.where(np.array([False, True]), a, b),
     lambda a, b: torch.where(torch.tensor([False, True]), a, b))

LOGITS = [[0.0, INF, 1.0], [-INF, 0.0, 1.0], [1e300, -1e300, 0.0], [0.0, 0.0, 0.0]]
case("cross_entropy", "extreme logits", [LOGITS],
     lambda x: F.cross_entropy(x, np.array([1, 1, 2, 0])),
     lambda x: TF.cross_entropy(x, torch.tensor([1, 1, 2, 0])))
case("cross_entropy", "label at -inf", [[[0.0, -INF]]],
     lambda x: F.cross_entropy(x, np.array([1])),
     lambda x: TF.cross_entropy(x, torch.tensor([1])))
case("cross_entropy_probs", "zero probabilities", [[[0.0, -INF, 1.0]], [[0.5, 0.0, 0.5]]],
     lambda x, y: F.cross_entropy(x, y), lambda x, y: TF.cross_entropy(x, y))
case("nll_loss", "inf log-probabilities", [[[-INF, 0.0], [0.0, INF]]],
     lambda x: F.nll_loss(x, np.array([0, 1])),
     lambda x: TF.nll_loss(x, torch.tensor([0, 1])))
case("binary_cross_entropy_with_logits", "infinite logits",
     [[INF, -INF, 0.0, 1e300], [1.0, 0.0, 0.5, 1.0]],
     lambda x, y: F.binary_cross_entropy_with_logits(x, y),
     lambda x, y: TF.binary_cross_entropy_with_logits(x, y))
BCE_Y = np.array([0.0, 1.0, 1.0, 0.0, 0.5])
case("binary_cross_entropy", "p at 0 and 1", [[0.0, 1.0, 0.0, 1.0, 0.5]],
     lambda p: F.binary_cross_entropy(p, BCE_Y),
     lambda p: TF.binary_cross_entropy(p, torch.tensor(BCE_Y)))
case("binary_cross_entropy", "p at 0 and 1, gradient in the target",
     [[0.0, 1.0, 0.0, 1.0, 0.5], BCE_Y],
     lambda p, y: F.binary_cross_entropy(p, y), lambda p, y: TF.binary_cross_entropy(p, y))
case("mse_loss", "inf", [[INF, 0.0, np.nan], [INF, 1.0, 0.0]],
     lambda x, y: F.mse_loss(x, y), lambda x, y: TF.mse_loss(x, y))
case("l1_loss", "ties and inf", [[1.0, 0.0, INF, -INF], [1.0, 1.0, 0.0, 0.0]],
     lambda x, y: F.l1_loss(x, y), lambda x, y: TF.l1_loss(x, y))
case("huber_loss", "at delta, inf", [[1.0, -1.0, 0.0, INF, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]],
     lambda x, y: F.huber_loss(x, y), lambda x, y: TF.huber_loss(x, y))
CE_W = np.array([0.5, 2.0, 1.0])
case("cross_entropy_weighted", "extreme logits", [LOGITS],
     lambda x: F.cross_entropy(x, np.array([1, 1, 2, 0]), weight=CE_W),
     lambda x: TF.cross_entropy(x, torch.tensor([1, 1, 2, 0]), weight=torch.tensor(CE_W)))
case("normalize", "constant rows",
     [[[2.0, 2.0, 2.0], [0.1, 0.1, 0.1], [0.0, 1.0, 2.0]]],
     lambda x: F.layer_norm(x, (3,)) * np.arange(1.0, 4.0),
     lambda x: TF.layer_norm(x, (3,)) * torch.arange(1.0, 4.0, dtype=torch.float64))

# The deliberate differences: (rule, case id) -> (reason, chainrule's gradients).
# The value is still compared with PyTorch; the gradients with what is given
# here. docs/edge-cases.md lists each one (test_every_difference_is_documented).
DIFFERENCES: dict[tuple[str, str], tuple[str, list]] = {
    ("abs", "NaN input"): (
        "a NaN input gives a NaN gradient (PyTorch: 0)", [[np.nan, 1.0]]),
    ("elu", "NaN input"): (
        "a NaN input gives a NaN gradient (PyTorch: 1)", [[np.nan, 1.0]]),
    ("relu", "NaN input"): (
        "a NaN input gives gradient 0, like any input that is not > 0 (PyTorch: 1)",
        [[0.0, 1.0]]),
    ("binary_cross_entropy", "p at 0 and 1, gradient in the target"): (
        "the gradient in the target is that of the loss as computed, with log p and "
        "log(1 - p) clamped at -100 (PyTorch: +-inf)",
        [[0.0, 0.0, -2e11, 2e11, 0.0], [20.0, -20.0, 20.0, -20.0, 0.0]]),
}

# Edge inputs on which chainrule refuses (a clear error) where PyTorch returns
# NaN or inf: (rule, what, fn, input)
REFUSALS = [
    ("mean", "empty tensor", lambda x: x.mean(), np.zeros(0)),
    ("var", "one element, unbiased", lambda x: x.var(), np.ones(1)),
    ("std", "one element, unbiased", lambda x: x.std(), np.ones(1)),
    ("std", "empty tensor", lambda x: x.std(), np.zeros(0)),
]


PARAMS = [pytest.param(rule, cid, xs, f, g, id=f"{rule}[{cid}]")
          for rule, cases in sorted(CASES.items()) for cid, xs, f, g in cases]


def test_every_rule_has_edge_cases():
    missing = sorted(set(cr.RULES) - set(CASES))
    assert not missing, f"rules without edge cases: {missing}"


def _same(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, what
    nan_o, nan_t = np.isnan(ours), np.isnan(theirs)
    bad = nan_o != nan_t
    ok = ~nan_o & ~nan_t
    close = np.isclose(ours[ok], theirs[ok], rtol=1e-7, atol=1e-12)
    if bad.any() or not close.all():
        raise AssertionError(f"{what}:\n  chainrule {ours!r}\n  pytorch   {theirs!r}")


@pytest.mark.parametrize("rule, cid, xs, fn_cr, fn_torch", PARAMS)
def test_edge_value_and_gradient_match_pytorch(rule, cid, xs, fn_cr, fn_torch):
    ours = [cr.tensor(x, requires_grad=True) for x in xs]
    theirs = [torch.tensor(x, requires_grad=True) for x in xs]
    with np.errstate(all="ignore"):
        out = fn_cr(*ours)
    ref = fn_torch(*theirs)
    assert rule in _ops_in(out), f"the case does not exercise {rule}"
    _same(out.numpy(), ref.detach().numpy(), f"{rule}[{cid}] value")
    seed = np.ones(out.shape)
    with np.errstate(all="ignore"):
        out.backward(seed)
    ref.backward(torch.tensor(seed))
    expected = DIFFERENCES.get((rule, cid), (None, None))[1]
    differs = False
    for i, (o, t) in enumerate(zip(ours, theirs)):
        g = np.zeros(o.shape) if o.grad is None else o.grad.numpy()
        tg = np.zeros(o.shape) if t.grad is None else t.grad.numpy()
        if expected is not None:  # a documented difference: compare with it instead
            differs |= not np.allclose(tg, expected[i], rtol=1e-7, equal_nan=True)
            tg = np.asarray(expected[i])
        _same(g, tg, f"{rule}[{cid}] gradient of input {i}")
    assert expected is None or differs, "listed as a difference, but PyTorch agrees now"


def _ops_in(t):
    return set(graphwalk.ops(t))


@pytest.mark.parametrize("rule, what, fn, x", REFUSALS, ids=[f"{r[0]}[{r[1]}]" for r in REFUSALS])
def test_refusals_where_pytorch_returns_nan(rule, what, fn, x):
    with pytest.raises(ValueError, match=rule):
        fn(cr.tensor(x, requires_grad=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns about the degrees of freedom
        ref = fn(torch.tensor(x, requires_grad=True))
    assert not np.isfinite(ref.detach().numpy()).all()  # PyTorch: NaN or inf


@pytest.mark.parametrize("dtype, big", [(np.float64, 1e300), (np.float32, 1e30)])
def test_layer_norm_of_values_whose_square_overflows(dtype, big):
    # (x - mean)^2 overflows: the variance is inf and 1/std 0. PyTorch returns
    # NaN; chainrule scales the deviations first and gives the right values.
    x = np.array([[1.0, big, 0.0], [0.0, 1.0, 2.0]], dtype)
    out = F.layer_norm(cr.tensor(x), (3,)).numpy()
    np.testing.assert_allclose(out[0], [-1 / np.sqrt(2), np.sqrt(2), -1 / np.sqrt(2)], rtol=1e-5)
    np.testing.assert_allclose(out[1], [-1.2247, 0.0, 1.2247], atol=1e-4)
    ref = TF.layer_norm(torch.tensor(x), (3,)).numpy()
    assert np.isnan(ref[0]).all()


def test_pow_second_derivative_at_zero_is_finite():
    # PyTorch's is NaN at x = 0 for x**0 (0 * inf inside its formula); ours is 0
    def f(x, e):
        return (x ** e).sum()

    h = cr.grad(lambda x: cr.grad(f)(x, np.zeros(3)).sum())(np.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(h, 0.0)


DOC = Path(__file__).resolve().parent.parent / "docs" / "edge-cases.md"


def test_every_difference_is_documented():
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for (rule, cid), _ in DIFFERENCES.items():
        assert any(f"`{rule}`" in r and cid in r for r in rows), (rule, cid)
    for rule, what, _, _ in REFUSALS:
        assert any(f"`{rule}`" in r and what in r for r in rows), (rule, what)
    documented = {re.match(r"\| `([a-z_]+)`", r).group(1) for r in rows}
    known = {r for r, _ in DIFFERENCES} | {r[0] for r in REFUSALS} | {"pow", "normalize"}
    assert documented <= known | set(cr.RULES), documented - known
