"""Losses: values and gradients vs hand-written NumPy, the notes' closed forms,
stability at |x| = 1000, validation messages, second order."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import chainrule as cr
import chainrule.nn.functional as F
from chainrule import nn

RNG = np.random.default_rng(0)


def _leaf(a):
    return cr.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def _np_log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


# ----- values vs NumPy oracles ------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_numpy_and_notes_gradient(reduction):
    z = RNG.standard_normal((6, 4))
    y = np.array([0, 3, 1, 1, 2, 0])
    x = _leaf(z)
    loss = F.cross_entropy(x, y, reduction=reduction)
    per = -_np_log_softmax(z)[np.arange(6), y]
    want = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    np.testing.assert_allclose(loss.data, want, rtol=1e-12)
    loss.sum().backward() if reduction == "none" else loss.backward()
    soft = np.exp(_np_log_softmax(z))
    onehot = np.eye(4)[y]
    scale = 1 / 6 if reduction == "mean" else 1.0
    np.testing.assert_allclose(x.grad.data, (soft - onehot) * scale, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.uint64, np.int16])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_of_transposed_logits_and_any_label_dtype(dtype, smoothing):
    # logits that are a transposed view (not C-ordered): the target entries are
    # read and the gradient written by their flat positions, which needs the
    # softmax the VJP works in to be C-ordered, whatever the input's layout
    z = RNG.standard_normal((4, 7))
    labels = np.array([0, 3, 1, 1, 2, 0, 3])
    buf = labels.astype(dtype)
    x = _leaf(z)
    logits = x.T
    assert not logits.data.flags.c_contiguous
    loss = F.cross_entropy(logits, buf, label_smoothing=smoothing)
    q = (1 - smoothing) * np.eye(4)[labels] + smoothing / 4
    want = -(q * _np_log_softmax(z.T)).sum(axis=1).mean()
    np.testing.assert_allclose(loss.item(), want, rtol=1e-12)
    buf[:] = 2  # the caller refills its label buffer before backward(): no effect
    loss.backward()
    np.testing.assert_allclose(x.grad.data, ((np.exp(_np_log_softmax(z.T)) - q) / 7).T,
                               atol=1e-15)


def test_cross_entropy_label_smoothing_matches_formula():
    z = RNG.standard_normal((5, 3))
    y = np.array([0, 1, 2, 1, 0])
    eps = 0.2
    q = (1 - eps) * np.eye(3)[y] + eps / 3
    want = -(q * _np_log_softmax(z)).sum(axis=1).mean()
    x = _leaf(z)
    loss = F.cross_entropy(x, y, label_smoothing=eps)
    np.testing.assert_allclose(loss.item(), want, rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(x.grad.data, (np.exp(_np_log_softmax(z)) - q) / 5, atol=1e-14)


def test_cross_entropy_probability_targets_equal_labels_for_onehot():
    z = RNG.standard_normal((4, 3))
    y = np.array([2, 0, 1, 1])
    a = F.cross_entropy(_leaf(z), y)
    b = F.cross_entropy(_leaf(z), np.eye(3)[y])
    assert b.op == "cross_entropy_probs"
    np.testing.assert_allclose(a.item(), b.item(), rtol=1e-12)


def test_nll_after_log_softmax_equals_cross_entropy():
    z = RNG.standard_normal((4, 5))
    y = np.array([4, 0, 1, 3])
    x1, x2 = _leaf(z), _leaf(z)
    a = F.cross_entropy(x1, y)
    b = F.nll_loss(F.log_softmax(x2, dim=1), y)
    np.testing.assert_allclose(a.item(), b.item(), rtol=1e-12)
    a.backward()
    b.backward()
    np.testing.assert_allclose(x1.grad.data, x2.grad.data, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_matches_numpy_and_notes_gradient(reduction):
    z = RNG.standard_normal((3, 4))
    y = RNG.uniform(0, 1, (3, 4))
    x = _leaf(z)
    loss = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    a = 1 / (1 + np.exp(-z))
    per = -(y * np.log(a) + (1 - y) * np.log(1 - a))
    want = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    np.testing.assert_allclose(loss.data, want, rtol=1e-10)
    loss.sum().backward() if reduction == "none" else loss.backward()
    scale = 1 / 12 if reduction == "mean" else 1.0
    np.testing.assert_allclose(x.grad.data, (a - y) * scale, rtol=1e-10)  # dC/dz = a - y


def test_sigmoid_then_bce_gives_a_minus_y_through_the_chain():
    z = RNG.standard_normal(6)
    y = (RNG.uniform(size=6) > 0.5).astype(np.float64)
    x = _leaf(z)
    F.binary_cross_entropy(cr.sigmoid(x), y, reduction="sum").backward()
    np.testing.assert_allclose(x.grad.data, 1 / (1 + np.exp(-z)) - y, rtol=1e-9)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_numpy(reduction):
    a, b = RNG.standard_normal((2, 3)), RNG.standard_normal((2, 3))
    x = _leaf(a)
    loss = F.mse_loss(x, b, reduction=reduction)
    per = (a - b) ** 2
    np.testing.assert_allclose(loss.data, {"mean": per.mean(), "sum": per.sum(),
                                           "none": per}[reduction], rtol=1e-12)
    loss.sum().backward()
    scale = 1 / 6 if reduction == "mean" else 1.0
    np.testing.assert_allclose(x.grad.data, 2 * (a - b) * scale, rtol=1e-12)


def test_bce_clamps_log_at_minus_100_like_pytorch():
    p = cr.tensor(np.array([0.0, 1.0, 0.0]), requires_grad=True)
    y = np.array([1.0, 0.0, 0.0])
    loss = F.binary_cross_entropy(p, y, reduction="none")
    np.testing.assert_array_equal(loss.data, [100.0, 100.0, 0.0])
    loss.sum().backward()
    assert np.isfinite(p.grad.data).all()


def test_float32_stays_float32():
    x = cr.tensor(RNG.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    loss = F.cross_entropy(x, np.array([0, 1, 2, 0]))
    loss.backward()
    assert loss.dtype == np.float32 and x.grad.dtype == np.float32


# ----- stability --------------------------------------------------------------


def test_stable_at_1000():
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = _leaf(z)
        ce = F.cross_entropy(x, np.array([1, 0]))
        ce.backward()
        assert np.isfinite(ce.item()) and np.isfinite(x.grad.data).all()
        want = -_np_log_softmax(z)[[0, 1], [1, 0]].mean()  # 2000 and 2000 + log(1 + 1/e)
        np.testing.assert_allclose(ce.item(), want, rtol=1e-12)
        x2 = _leaf(z)
        bce = F.binary_cross_entropy_with_logits(x2, np.ones_like(z), reduction="sum")
        bce.backward()
        assert np.isfinite(bce.item()) and np.isfinite(x2.grad.data).all()
        # -log sigmoid(z) = log(1 + e^-z), computed stably by logaddexp
        np.testing.assert_allclose(bce.item(), np.logaddexp(0, -z).sum(), rtol=1e-12)
        np.testing.assert_allclose(x2.grad.data, 1 / (1 + np.exp(-np.clip(z, -700, 700))) - 1)


# ----- validation ---------------------------------------------------------------


def test_label_out_of_range_message():
    x = cr.tensor(np.zeros((5, 10)))
    y = np.array([0, 1, 2, 12, 3])
    with pytest.raises(ValueError, match=r"cross_entropy: label 12 at position 3 is out of "
                                         r"range for 10 classes"):
        F.cross_entropy(x, y)
    with pytest.raises(ValueError, match=r"nll_loss: label -1 at position 0"):
        F.nll_loss(x, np.array([-1, 0, 0, 0, 0]))


def test_label_dtype_and_shape_errors():
    x = cr.tensor(np.zeros((3, 4)))
    with pytest.raises(TypeError, match=r"cross_entropy: class labels must have an integer "
                                        r"dtype, got float64"):
        F.cross_entropy(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\).*got shape \(4,\)"):
        F.cross_entropy(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"input must have shape \(N, C\)"):
        F.cross_entropy(cr.tensor(np.zeros(4)), np.array([0]))


@pytest.mark.parametrize("fn", [F.mse_loss, F.binary_cross_entropy,
                                F.binary_cross_entropy_with_logits])
def test_target_shape_must_match(fn):
    x = cr.tensor(np.full((4, 1), 0.5))
    with pytest.raises(ValueError, match=fn.__name__ + r": target shape \(4,\) does not match "
                                         r"input shape \(4, 1\)"):
        fn(x, np.full(4, 0.5))


def test_bce_rejects_values_outside_0_1_and_bad_reduction():
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input must hold probabilities"):
        F.binary_cross_entropy(cr.tensor(np.array([0.5, 1.5])), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"mse_loss: reduction must be"):
        F.mse_loss(cr.tensor([1.0]), np.array([1.0], dtype=np.float32), reduction="avg")


# ----- second order ---------------------------------------------------------------


@pytest.mark.parametrize("name,fn", [
    ("ce", lambda x: F.cross_entropy(x, np.array([1, 0, 2]))),
    ("bce_logits", lambda x: F.binary_cross_entropy_with_logits(x, np.full((3, 3), 0.3))),
    ("bce", lambda x: F.binary_cross_entropy(cr.sigmoid(x), np.full((3, 3), 0.3))),
    ("mse", lambda x: F.mse_loss(x * x, np.ones((3, 3)))),
])
def test_second_order_vs_finite_differences_of_the_gradient(name, fn):
    z = RNG.standard_normal((3, 3))
    v = RNG.standard_normal((3, 3))
    x = _leaf(z)
    (g,) = [cr.grad(fn)(x)]  # nested-ready: returns a Tensor when x requires grad
    hvp = cr.grad(lambda t: (cr.grad(fn)(t) * v).sum())(z)
    eps = 1e-6
    num = (cr.grad(fn)(z + eps * v) - cr.grad(fn)(z - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hvp, num, rtol=1e-5, atol=1e-8)
    assert np.abs(hvp).max() > 1e-3  # the Hessian is not trivially zero
    assert g.shape == z.shape


# ----- modules --------------------------------------------------------------------


def test_loss_modules_call_the_functions():
    z = RNG.standard_normal((4, 3))
    y = np.array([0, 1, 2, 1])
    assert nn.CrossEntropyLoss()(cr.tensor(z), y).item() == F.cross_entropy(cr.tensor(z), y).item()
    assert nn.NLLLoss(reduction="sum")(cr.tensor(z), y).item() == pytest.approx(
        -z[np.arange(4), y].sum())
    t = np.full((4, 3), 0.25)
    assert nn.MSELoss()(cr.tensor(z), t).item() == pytest.approx(((z - t) ** 2).mean())
    assert nn.BCEWithLogitsLoss()(cr.tensor(z), t).item() == pytest.approx(
        F.binary_cross_entropy(cr.sigmoid(cr.tensor(z)), t).item())
    assert nn.BCELoss(reduction="none")(cr.tensor(np.full((2, 2), 0.5)), np.ones((2, 2))).shape \
        == (2, 2)
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="avg")


def test_torch_parity_losses():
    torch = pytest.importorskip("torch")
    z = RNG.standard_normal((5, 4))
    y = np.array([0, 3, 2, 1, 1])
    for ls in (0.0, 0.1):
        x = _leaf(z)
        loss = F.cross_entropy(x, y, label_smoothing=ls)
        loss.backward()
        tz = torch.tensor(z, requires_grad=True)
        tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y), label_smoothing=ls)
        tl.backward()
        np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-12)
        np.testing.assert_allclose(x.grad.data, tz.grad.numpy(), atol=1e-14)
    p, t = RNG.uniform(0.05, 0.95, (3, 2)), RNG.uniform(0, 1, (3, 2))
    for ours, theirs in [(F.binary_cross_entropy, torch.nn.functional.binary_cross_entropy),
                         (F.binary_cross_entropy_with_logits,
                          torch.nn.functional.binary_cross_entropy_with_logits),
                         (F.mse_loss, torch.nn.functional.mse_loss)]:
        a, b = _leaf(p), _leaf(t)
        loss = ours(a, b)
        loss.backward()
        ta = torch.tensor(p, requires_grad=True)
        tb = torch.tensor(t, requires_grad=True)
        tl = theirs(ta, tb)
        tl.backward()
        np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-12)
        np.testing.assert_allclose(a.grad.data, ta.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(b.grad.data, tb.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("shape", [(5, 10), (300, 10), (300, 2), (300, 16), (300, 17), (1024, 1)])
def test_row_reductions_by_columns_equal_numpys_row_by_row_reductions(shape):
    # F._reduce_rows combines whole columns for many short rows (a speed-up for
    # the softmax of a batch of logits); the row maxima must be exact, the row
    # sums equal to rounding, and a NaN must still reach its row's result
    from chainrule.nn.functional import _reduce_rows

    rng = np.random.default_rng(shape[0] + shape[1])
    x = rng.standard_normal(shape).astype(np.float32)
    x[3, 0] = np.nan
    m = _reduce_rows(np.maximum, x)
    assert m.shape == (shape[0], 1)
    np.testing.assert_array_equal(m, np.maximum.reduce(x, axis=1, keepdims=True))
    s = _reduce_rows(np.add, x)
    np.testing.assert_allclose(s, np.add.reduce(x, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert np.isnan(m[3, 0]) and np.isnan(s[3, 0])
    assert not np.isnan(np.delete(m, 3, axis=0)).any()
