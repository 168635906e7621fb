"""Methods with PyTorch's names mean what they mean in PyTorch.

The parity cases run one expression on a chainrule tensor and on a PyTorch
tensor (the two APIs are meant to be the same) and compare the values and the
gradients; they need PyTorch (the CI installs it from a local wheel) and skip
without it. The checks below them state the same facts against NumPy or by
hand, so they run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

import chainrule as cr

# --------------------------------------------------------------------------
# Parity with PyTorch: one expression, two libraries
# --------------------------------------------------------------------------

MASK = np.array([[True, False, True, False],
                 [False, False, True, True],
                 [True, True, False, False]])

# (id, input shape, expression); the expression is written once and run on both
PARITY = [
    ("transpose 2-D", (3, 4), lambda x: x.transpose(0, 1)),
    ("transpose 3-D", (2, 3, 4), lambda x: x.transpose(0, 2)),
    ("transpose negative", (2, 3, 4), lambda x: x.transpose(-1, 1)),
    ("transpose dims=", (3, 4), lambda x: x.transpose(dim0=1, dim1=0)),
    ("transpose same dim", (3, 4), lambda x: x.transpose(1, 1)),
    ("swapaxes", (2, 3, 4), lambda x: x.swapaxes(0, 1)),
    ("permute", (2, 3, 4), lambda x: x.permute(2, 0, 1)),
    ("permute tuple", (2, 3, 4), lambda x: x.permute((1, 2, 0))),
    ("t", (3, 4), lambda x: x.t()),
    ("var", (3, 4), lambda x: x.var()),
    ("var dim", (3, 4), lambda x: x.var(1)),
    ("var dim keepdim", (3, 4), lambda x: x.var(0, keepdim=True)),
    ("var unbiased=False", (3, 4), lambda x: x.var(1, unbiased=False)),
    ("var correction=2", (3, 4), lambda x: x.var(dim=1, correction=2)),
    ("var positional unbiased", (3, 4), lambda x: x.var(0, False)),
    ("std", (3, 4), lambda x: x.std()),
    ("std dim", (3, 4), lambda x: x.std(dim=0)),
    ("std correction=0", (3, 4), lambda x: x.std(1, correction=0, keepdim=True)),
    ("squeeze non-1 dim", (3, 4), lambda x: x.squeeze(0)),
    ("squeeze size-1 dim", (3, 1, 4), lambda x: x.squeeze(1)),
    ("squeeze tuple", (1, 3, 1), lambda x: x.squeeze((0, 1))),
    ("squeeze all", (1, 3, 1), lambda x: x.squeeze()),
    ("unsqueeze", (3, 4), lambda x: x.unsqueeze(-1)),
    ("expand", (3, 1), lambda x: x.expand(3, 4)),
    ("expand -1 and new dim", (3, 1), lambda x: x.expand(2, -1, 5)),
    ("expand_as", (1, 4), lambda x: x.expand_as(x.expand(3, 4))),
    ("masked_fill", (3, 4), lambda x: x.masked_fill(_mask(x), -1.5)),
    ("masked_fill broadcast", (3, 4), lambda x: x.masked_fill(_mask(x)[0], 0.0)),
    ("maximum", (3, 4), lambda x: x.maximum(x.flip_rows())),
    ("minimum", (3, 4), lambda x: x.minimum(x * 0.5)),
    ("neg", (3, 4), lambda x: x.neg()),
    ("pow", (3, 4), lambda x: x.abs().pow(1.5)),
    ("pow tensor exponent", (3, 4), lambda x: x.abs().pow(x)),
    ("add alpha", (3, 4), lambda x: x.add(x * x, alpha=0.5)),
    ("sub", (3, 4), lambda x: x.sub(2.0)),
    ("sub alpha", (3, 4), lambda x: x.sub(x.exp(), alpha=2)),
    ("mul", (3, 4), lambda x: x.mul(x)),
    ("div", (3, 4), lambda x: x.div(x.abs() + 1)),
    ("square", (3, 4), lambda x: x.square()),
    ("matmul", (3, 4), lambda x: x.matmul(x.t())),
    ("clamp", (3, 4), lambda x: x.clamp(min=-0.5, max=0.5)),
    ("clamp min only", (3, 4), lambda x: x.clamp(min=0.1)),
    ("where", (3, 4), lambda x: x.where(_mask(x), x * 2)),
    ("sum dim", (2, 3, 4), lambda x: x.sum(dim=(0, 2))),
    ("sum keepdim", (2, 3, 4), lambda x: x.sum(1, keepdim=True)),
    ("mean dim", (2, 3, 4), lambda x: x.mean(-1)),
    ("max all", (3, 4), lambda x: x.max()),
    ("max dim values", (3, 4), lambda x: x.max(1)[0]),
    ("max dim .values keepdim", (3, 4), lambda x: x.max(dim=0, keepdim=True).values),
    ("min dim values", (3, 4), lambda x: x.min(1).values),
    ("amax", (2, 3, 4), lambda x: x.amax(dim=(0, 2))),
    ("amin", (3, 4), lambda x: x.amin(0)),
    ("logsumexp", (3, 4), lambda x: x.logsumexp(1)),
    ("softmax", (3, 4), lambda x: x.softmax(0)),
    ("log_softmax", (3, 4), lambda x: x.log_softmax(dim=1)),
    ("flatten", (2, 3, 4), lambda x: x.flatten()),
    ("flatten start/end", (2, 3, 4, 1), lambda x: x.flatten(1, 2)),
    ("reshape_as", (3, 4), lambda x: x.reshape_as(x.t())),
    ("0-d sum dim=0", (), lambda x: x.sum(dim=0)),
    ("0-d sum dim=-1", (), lambda x: x.sum(-1)),
    ("0-d mean dim=0 keepdim", (), lambda x: x.mean(0, keepdim=True)),
    ("0-d softmax", (), lambda x: x.softmax(0)),
    ("0-d log_softmax", (), lambda x: x.log_softmax(-1)),
    ("0-d max dim", (), lambda x: x.max(0)[0] * 3),
    ("0-d logsumexp", (), lambda x: x.logsumexp(0)),
    ("0-d amax", (), lambda x: x.amax(-1)),
    ("0-d squeeze", (), lambda x: x.squeeze(0)),
    ("0-d unsqueeze", (), lambda x: x.unsqueeze(0)),
    ("0-d transpose", (), lambda x: x.transpose(0, -1)),
    ("0-d flatten", (), lambda x: x.flatten()),
    ("0-d var correction=0", (), lambda x: x.var(0, correction=0) + x),
    ("0-d std correction=0", (), lambda x: x.std(correction=0) + x),
]


def _mask(x):
    """MASK, as the kind of tensor ``x`` is."""
    if isinstance(x, cr.Tensor):
        return cr.tensor(MASK)
    import torch

    return torch.tensor(MASK)


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    # the cases use x.flip_rows(): give both libraries the same helper
    if not hasattr(torch.Tensor, "flip_rows"):
        torch.Tensor.flip_rows = lambda t: t.flip(0)
    return torch


cr.Tensor.flip_rows = lambda t: t[::-1]  # test-only helper (see the fixture above)


@pytest.mark.parametrize("shape, expr", [p[1:] for p in PARITY], ids=[p[0] for p in PARITY])
def test_same_values_and_gradients_as_pytorch(torch, shape, expr):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    if MASK.shape == shape:
        x = x.round(1) + 0.05 * np.arange(x.size).reshape(shape)  # no ties in max/min
    ours = cr.tensor(x, requires_grad=True)
    theirs = torch.tensor(x, requires_grad=True)
    out, ref = expr(ours), expr(theirs)
    assert out.shape == tuple(ref.shape)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    w = rng.standard_normal(out.shape)
    (out * w).sum().backward()
    (ref * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


DTYPES = [
    ("int64 * 0.5", lambda m, a: m.tensor(a) * 0.5),
    ("int64 / int", lambda m, a: m.tensor(a) / 2),
    ("int64 / int64", lambda m, a: m.tensor(a) / m.tensor(a + 1)),
    ("sqrt(int64)", lambda m, a: m.tensor(a).sqrt()),
    ("exp(int64)", lambda m, a: m.tensor(a).exp()),
    ("sigmoid(int64)", lambda m, a: m.tensor(a).sigmoid()),
    ("sqrt(uint8)", lambda m, a: m.tensor(a.astype(np.uint8)).sqrt()),
    ("sqrt(int8)", lambda m, a: m.tensor(a.astype(np.int8)).sqrt()),
    ("int64 * float32", lambda m, a: m.tensor(a) * m.tensor(a.astype(np.float32))),
    ("float32 * int64", lambda m, a: m.tensor(a.astype(np.float32)) * m.tensor(a)),
    ("int64 + float64", lambda m, a: m.tensor(a) + m.tensor(a.astype(np.float64))),
    ("where int/float32", lambda m, a: m.where(m.tensor(a > 1), m.tensor(a),
                                                 m.tensor(a.astype(np.float32)))),
    ("maximum int/float32", lambda m, a: m.maximum(m.tensor(a), m.tensor(a * 0.5).float())),
    ("int64 * int64 stays int", lambda m, a: m.tensor(a) * m.tensor(a)),
    ("sum int stays int", lambda m, a: m.tensor(a).sum()),
    ("float32 * python float", lambda m, a: m.tensor(a.astype(np.float32)) * 0.1),
    ("float64 * float32", lambda m, a: m.tensor(a.astype(np.float64))
     * m.tensor(a.astype(np.float32))),
    ("softmax(int64)", lambda m, a: m.tensor(a).float().softmax(0)),
    ("cat int/float32", lambda m, a: m.cat([m.tensor(a), m.tensor(a.astype(np.float32))])),
]


@pytest.mark.parametrize("expr", [d[1] for d in DTYPES], ids=[d[0] for d in DTYPES])
def test_result_dtypes_are_pytorchs(torch, expr):
    a = np.array([1, 2, 3])
    ours, ref = expr(cr, a), expr(torch, a)
    assert str(ours.dtype) == str(ref.dtype).replace("torch.", "")
    np.testing.assert_allclose(ours.numpy().astype(np.float64),
                               ref.numpy().astype(np.float64), rtol=1e-6)


# --------------------------------------------------------------------------
# The same facts without PyTorch
# --------------------------------------------------------------------------


def test_transpose_swaps_two_dims_even_on_2d():
    # NumPy's a.transpose(0, 1) is the identity permutation; PyTorch's swaps
    a = np.arange(6.0).reshape(2, 3)
    x = cr.tensor(a, requires_grad=True)
    y = x.transpose(0, 1)
    np.testing.assert_array_equal(y.numpy(), a.T)
    np.testing.assert_array_equal(cr.transpose(x, 0, 1).numpy(), a.T)
    (y * np.arange(6.0).reshape(3, 2)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(6.0).reshape(3, 2).T)
    b = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(cr.tensor(b).transpose(0, 2).numpy(), np.swapaxes(b, 0, 2))
    # the NumPy permutation forms stay available, unambiguously
    np.testing.assert_array_equal(cr.tensor(b).transpose((2, 0, 1)).numpy(),
                                  np.transpose(b, (2, 0, 1)))
    np.testing.assert_array_equal(cr.transpose(cr.tensor(b)).numpy(), b.T)
    with pytest.raises(TypeError, match="two dims to swap"):
        cr.tensor(b).transpose(1)
    with pytest.raises(ValueError, match="permute: .* not a permutation"):
        cr.tensor(b).permute(0, 1)


def test_var_and_std_are_unbiased_by_default():
    a = np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 9.0]])
    x = cr.tensor(a)
    assert x.var().item() == pytest.approx(np.var(a, ddof=1))
    assert x.std().item() == pytest.approx(np.std(a, ddof=1))
    np.testing.assert_allclose(cr.var(x, 1).numpy(), np.var(a, axis=1, ddof=1))
    np.testing.assert_allclose(x.var(1, unbiased=False).numpy(), np.var(a, axis=1))
    np.testing.assert_allclose(x.std(axis=0, ddof=0).numpy(), np.std(a, axis=0))
    np.testing.assert_allclose(x.var(dim=0, correction=0, keepdim=True).numpy(),
                               np.var(a, axis=0, keepdims=True))
    with pytest.raises(TypeError, match="ddof=0 and correction=1|correction=1 and ddof=0"):
        x.var(correction=1, ddof=0)
    with pytest.raises(ValueError, match=r"var: 1 element\(s\) with correction=1"):
        cr.tensor([2.0]).var()
    assert cr.tensor([2.0]).var(correction=0).item() == 0.0


def test_std_of_a_constant_has_gradient_zero_not_nan():
    for values in ([2.0, 2.0], [0.1, 0.1, 0.1], [[5.0, 5.0], [1.0, 3.0]]):
        x = cr.tensor(np.array(values), requires_grad=True)
        y = x.std(-1) if x.ndim == 2 else x.std()
        y.sum().backward()
        assert np.isfinite(x.grad.numpy()).all()
        if x.ndim == 1:
            assert y.item() == 0.0
            np.testing.assert_array_equal(x.grad.numpy(), 0.0)
        else:  # the constant row gets 0, the other row the ordinary derivative
            np.testing.assert_array_equal(x.grad.numpy()[0], 0.0)
            np.testing.assert_allclose(x.grad.numpy()[1], [-1 / np.sqrt(2), 1 / np.sqrt(2)])
    one = cr.tensor([3.0], requires_grad=True)
    s = one.std(correction=0)
    s.backward()
    assert s.item() == 0.0 and one.grad.item() == 0.0
    # second order stays finite at a constant too
    g = cr.grad(lambda t: cr.grad(lambda u: u.std())(t).sum())(np.array([1.0, 1.0, 1.0]))
    assert np.isfinite(g).all()


def test_squeeze_of_a_non_1_dim_is_a_no_op():
    x = cr.ones(2, 1, 3)
    assert x.squeeze(0).shape == (2, 1, 3)
    assert x.squeeze(1).shape == (2, 3)
    assert x.squeeze((0, 1)).shape == (2, 3)
    assert cr.squeeze(x, axis=-1).shape == (2, 1, 3)
    with pytest.raises(ValueError, match="squeeze: axis 3 is out of range"):
        x.squeeze(3)


def test_zero_d_tensors_take_dim_0_and_minus_1():
    x = cr.tensor(2.5, requires_grad=True)
    for d in (0, -1):
        assert x.sum(dim=d).shape == () and x.sum(d).item() == 2.5
        assert x.mean(axis=d, keepdims=True).shape == ()
        assert x.amax(d).item() == 2.5
        assert x.softmax(d).item() == 1.0
        values, index = x.max(d)
        assert values.item() == 2.5 and index.item() == 0
        assert x.size(d) == 1
    with pytest.raises(ValueError, match="out of range"):
        x.sum(1)
    (x.logsumexp(0) * 2).backward()
    assert x.grad.item() == 2.0


def test_integer_tensors_become_float32():
    i = cr.tensor(np.array([1, 2, 3]))
    assert i.dtype == np.int64
    assert (i * 0.5).dtype == np.float32
    assert (i / 2).dtype == np.float32
    assert i.sqrt().dtype == np.float32
    assert cr.mean(i).dtype == np.float32
    assert i.float().var().dtype == np.float32
    assert i.std().dtype == np.float32
    assert cr.tensor(np.array([1, 4], np.int8)).sqrt().dtype == np.float32  # NumPy: float16
    # a float32 model stays float32 next to integer data
    w = cr.tensor(np.ones(3, np.float32), requires_grad=True)
    y = w * i
    assert y.dtype == np.float32
    y.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [1, 2, 3])
    assert w.grad.dtype == np.float32
    assert (w * np.float64(2.0)).dtype == np.float32  # a NumPy scalar does not widen
    layer = cr.nn.Linear(3, 2)
    assert layer(cr.tensor(np.array([[1, 2, 3]]))).dtype == np.float32
    # float64 stays float64, integers stay integers
    assert (cr.tensor(np.ones(2)) * i[:2]).dtype == np.float64
    assert (i * i).dtype == np.int64 and i.sum().dtype == np.int64


def test_max_with_dim_returns_values_and_indices():
    a = np.array([[1.0, 7.0, 7.0], [4.0, 2.0, 0.5]])
    x = cr.tensor(a, requires_grad=True)
    values, indices = x.max(1)
    np.testing.assert_array_equal(values.numpy(), [7.0, 4.0])
    np.testing.assert_array_equal(indices.numpy(), [1, 0])  # the first maximum at ties
    assert indices.dtype == np.int64
    values.sum().backward()
    # the gradient goes to the element at the index (PyTorch's max(dim))
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [1, 0, 0]])
    r = x.min(dim=0, keepdim=True)
    assert r.values.shape == (1, 3) and r.indices.shape == (1, 3)
    np.testing.assert_array_equal(r.indices.numpy(), [[0, 1, 1]])
    # the full reduction and NumPy's axis= give values; ties split the gradient
    x.grad = None
    x.max().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0.5, 0.5], [0, 0, 0]])
    np.testing.assert_array_equal(x.max(axis=1).numpy(), [7.0, 4.0])
    np.testing.assert_array_equal(cr.max(x, x * 0 + 3).numpy(), np.maximum(a, 3))
    with pytest.raises(TypeError, match="one dimension"):
        x.max(dim=(0, 1))
    np.testing.assert_array_equal(x.argmax(dim=1).numpy(), [1, 0])
    with pytest.raises(TypeError, match="argmax: dim must be one int"):
        x.argmax(dim=(0, 1))
    np.testing.assert_array_equal(x.argmin(axis=0, keepdims=True).numpy(), [[0, 1, 1]])


def test_size_is_the_count_and_callable_for_the_shape():
    x = cr.ones(2, 3)
    assert x.size == 6 and x.numel() == 6 and x.dim() == 2
    assert x.size() == (2, 3) and x.size(-1) == 3
    with pytest.raises(IndexError):
        x.size(2)


REDUCTIONS = ["sum", "mean", "amax", "amin", "logsumexp", "var", "std", "argmax", "argmin"]


@pytest.mark.parametrize("name", REDUCTIONS)
def test_reductions_take_dim_and_axis_spellings(name):
    a = np.random.default_rng(0).standard_normal((2, 3, 4))
    x = cr.tensor(a)
    method = getattr(x, name)
    function = getattr(cr, name)
    axis = 1 if name.startswith("arg") else (0, 2)
    ref = method(axis=axis, keepdims=True).numpy()
    for got in (method(dim=axis, keepdim=True), method(axis, True) if name not in ("var", "std")
                else method(axis, None, True), function(x, dim=axis, keepdim=True),
                function(x, axis=axis, keepdims=True), method(dim=axis, keepdims=True)):
        np.testing.assert_array_equal(got.numpy(), ref)
    with pytest.raises(TypeError, match="same setting"):
        method(dim=0, axis=1)


def test_shape_functions_take_both_spellings():
    x = cr.ones(2, 1, 3)
    assert cr.squeeze(x, dim=1).shape == cr.squeeze(x, axis=1).shape == (2, 3)
    assert cr.unsqueeze(x, dim=0).shape == cr.expand_dims(x, axis=0).shape == (1, 2, 1, 3)
    assert x.unsqueeze(axis=1).shape == x.expand_dims(dim=1).shape == (2, 1, 1, 3)
    assert x.swapdims(dim0=0, dim1=2).shape == x.swapaxes(axis0=0, axis1=2).shape == (3, 1, 2)
    assert cr.cat([x, x], dim=2).shape == cr.concatenate([x, x], axis=2).shape == (2, 1, 6)
    assert cr.stack([x, x], dim=-1).shape == cr.stack([x, x], axis=-1).shape == (2, 1, 3, 2)
    assert cr.softmax(x, dim=0).shape == cr.softmax(x, axis=0).shape
    assert x.flatten(start_dim=1).shape == x.flatten(start_axis=1).shape == (2, 3)
    with pytest.raises(TypeError, match="same setting"):
        cr.cat([x, x], dim=0, axis=1)


def test_masked_fill_and_expand_check_their_arguments():
    x = cr.ones(2, 3)
    with pytest.raises(TypeError, match="masked_fill: the mask must be boolean"):
        x.masked_fill(np.ones((2, 3)), 0.0)
    with pytest.raises(ValueError, match=r"masked_fill: mask of shape \(3, 3\)"):
        x.masked_fill(np.ones((3, 3), bool), 0.0)
    with pytest.raises(ValueError, match="expand: dimension 1 of shape"):
        x.expand(2, 4)
    fill = cr.tensor(2.0, requires_grad=True)
    y = x.masked_fill(np.array([True, False, True]), fill)
    np.testing.assert_array_equal(y.numpy(), [[2, 1, 2], [2, 1, 2]])
    y.sum().backward()
    assert fill.grad.item() == 4.0  # the sum over the filled places
