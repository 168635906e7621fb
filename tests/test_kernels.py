"""Kernels (``Rule.defkernel``): cr.compile's fixed-shape versions of a rule give
the rule's forward and VJP bit for bit, and never write into an array that
anything outside the kernel still holds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import chainrule as cr
import chainrule.nn.functional as F
from chainrule import ops
from chainrule.tensor import ALIGN


def _meta(a):
    return (a.shape, a.dtype)


def _rule_vjp(rule, g, out, ctx, needs, *ins):
    from chainrule.tensor import _NUMPY_NS

    return rule.vjp(g.copy(), out, ctx, needs, _NUMPY_NS, *ins)


def _same(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b, strict=True)


LINEARS = [("linear", False, True), ("linear_relu", True, True), ("linear_nobias", False, False)]


@pytest.mark.parametrize("name,relu,bias", LINEARS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k,m", [(1, 5, 7), (8, 12, 40), (33, 20, 6), (300, 16, 64)])
def test_linear_kernels_match_their_rule_bit_for_bit(name, relu, bias, dtype, n, k, m):
    rule = ops.RULES[name]
    rng = np.random.default_rng(n * 100 + m)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    ins = (x, w, b) if bias else (x, w)
    for needs in itertools.product([False, True], repeat=len(ins)):
        if not any(needs):
            continue
        kernel = rule.kernel([_meta(a) for a in ins], {}, needs)
        assert kernel is not None
        want, wctx = rule.forward(*ins)
        g = rng.standard_normal(want.shape).astype(dtype)
        grads = _rule_vjp(rule, g, want, wctx, needs, *ins)
        for inplace in (False, True):
            for _ in range(2):  # the second call writes into the arrays kept by the first
                got, ctx = kernel.forward(*ins)
                _same(got, want)
                mine = g.copy()
                kgrads = kernel.vjp(mine, inplace, ctx, *ins)
                for i, need in enumerate(needs):
                    if need:
                        _same(kgrads[i], grads[i])
                    else:
                        assert kgrads[i] is None
                if not inplace:
                    np.testing.assert_array_equal(mine, g)  # g is not ours: untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,m", [(5, 7), (8, 40), (33, 100)])
def test_linear_relu_kernel_matches_its_rule_on_nan_inf_and_zeros(dtype, n, m):
    # the kernel's relu compares against a matrix of zeros, the rule's against a
    # row: the same bits for NaN, infinities and zeros
    rule = ops.RULES["linear_relu"]
    rng = np.random.default_rng(n + m)
    x = rng.standard_normal((n, 6)).astype(dtype)
    x[0] = 0.0
    x[1, 2] = np.inf
    x[2, 3] = -np.inf
    x[3, 1] = np.nan
    w = rng.standard_normal((m, 6)).astype(dtype)
    w[0] = -0.0
    b = rng.standard_normal(m).astype(dtype)
    b[:3] = [-0.0, 0.0, np.nan]
    ins = (x, w, b)
    kernel = rule.kernel([_meta(a) for a in ins], {}, (True, True, True))
    with np.errstate(invalid="ignore"):  # inf * 0 in the product
        want, wmask = rule.forward(*ins)
        got, mask = kernel.forward(*ins)
    bits = {np.float32: np.uint32, np.float64: np.uint64}[dtype]
    assert np.isnan(want).any() and (want == 0).any()
    np.testing.assert_array_equal(got.view(bits), want.view(bits))
    np.testing.assert_array_equal(mask, wmask)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ls", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_kernel_matches_its_rule_bit_for_bit(reduction, ls, dtype):
    rule = ops.RULES["cross_entropy"]
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((17, 5)) * 4).astype(dtype)
    target = rng.integers(0, 5, 17)
    settings = {"target": target, "reduction": reduction, "label_smoothing": ls}
    kernel = rule.kernel([_meta(x)], {"target": ops.DYNAMIC, "reduction": reduction,
                                      "label_smoothing": ls}, (True,))
    assert kernel is not None
    want, wctx = rule.forward(x, **settings)
    g = np.asarray(rng.standard_normal(want.shape), dtype=dtype)
    (grad,) = _rule_vjp(rule, g, want, wctx, (True,), x)
    for _ in range(3):
        got, ctx = kernel.forward(x, **settings)
        _same(np.asarray(got), np.asarray(want))
        (kgrad,) = kernel.vjp(g.copy(), True, ctx, x)
        _same(kgrad, grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_kernel_with_the_shared_seed_matches_its_rule_as_settings_change(dtype):
    # a replay seeds backward with ops.unit_seed, which the kernel recognises to
    # keep 1/N and the gradient's terms: a change of reduction or of label
    # smoothing between calls must not reuse what was kept for the old ones
    rule = ops.RULES["cross_entropy"]
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((9, 4)) * 3).astype(dtype)
    target = rng.integers(0, 4, 9)
    kernel = rule.kernel([_meta(x)], {"target": ops.DYNAMIC, "reduction": "mean",
                                      "label_smoothing": 0.0}, (True,))
    unit = ops.unit_seed(np.empty((), dtype))
    assert unit.shape == () and unit.dtype == dtype and unit == 1 and not unit.flags.writeable
    assert ops.unit_seed(np.empty((), dtype)) is unit  # shared
    assert kernel.unit is unit
    for reduction, ls in [("mean", 0.0), ("mean", 0.0), ("sum", 0.0), ("sum", 0.3), ("mean", 0.3),
                          ("mean", 0), ("mean", 0.0)]:
        settings = {"target": target, "reduction": reduction, "label_smoothing": ls}
        want, wctx = rule.forward(x, **settings)
        (grad,) = _rule_vjp(rule, np.ones((), dtype), want, wctx, (True,), x)
        got, ctx = kernel.forward(x, **settings)
        (kgrad,) = kernel.vjp(unit, False, ctx, x)
        _same(kgrad, grad)
        # any other seed of the same value is not taken for the shared one
        got, ctx = kernel.forward(x, **settings)
        (kgrad,) = kernel.vjp(np.full((), 2, dtype), False, ctx, x)
        (grad2,) = _rule_vjp(rule, np.full((), 2, dtype), want, wctx, (True,), x)
        _same(kgrad, grad2)
    assert unit == 1  # never written


def test_unit_seed_of_a_shaped_output_is_a_new_array():
    a = np.empty((1, 1), np.float32)
    s1, s2 = ops.unit_seed(a), ops.unit_seed(a)
    assert s1 is not s2 and s1.shape == (1, 1) and s1.dtype == np.float32 and (s1 == 1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_layer_update_matches_numpy(dtype):
    from chainrule.optim import _blas

    if not _blas.matrix_available():
        pytest.skip("no OpenBLAS gemm/gemv to call in this NumPy")
    rng = np.random.default_rng(2)
    k, m, n = 7, 5, 3
    up = _blas.LayerUpdate(np.dtype(dtype), k, m, n)
    for step in range(3):  # new arrays at every call: the addresses are set each time
        a = rng.standard_normal((k, m)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        c = rng.standard_normal((m, n)).astype(dtype)
        y = rng.standard_normal(m).astype(dtype)
        want_c = c + (-0.25 - step) * (a.T @ b)
        want_y = y + (-0.25 - step) * a.sum(axis=0)
        c0 = c.copy()
        up(-0.25 - step, a, b, c, None)  # the weight alone
        np.testing.assert_allclose(c, want_c, rtol=1e-5 if dtype == np.float32 else 1e-12)
        c[...] = c0
        up(-0.25 - step, a, b, c, y)
        np.testing.assert_allclose(c, want_c, rtol=1e-5 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(y, want_y, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_take_reuses_an_array_only_while_nothing_else_holds_it():
    assert ops._UNSHARED > 0  # calibrated for this interpreter
    kernel = ops.Kernel([((3,), np.dtype(np.float64))])
    first = kernel.take(0)  # none kept yet: a new one
    ident = id(first)
    del first
    assert id(kernel.take(0)) == ident  # nothing holds it: the same array again
    held = kernel.take(0)
    assert kernel.take(0) is not held  # held by the caller: a new one
    view = kernel.take(0)[1:]  # a view refers to the buffer that owns the memory
    assert not np.shares_memory(kernel.take(0), view)  # that holds the array too


def test_parameters_start_on_a_cache_line_and_keep_their_values():
    src = np.arange(12, dtype=np.float64).reshape(3, 4)
    for p in (cr.nn.Parameter(src), cr.nn.Parameter(cr.tensor(src), dtype=np.float32),
              *cr.nn.Linear(5, 3).parameters()):
        assert p.data.ctypes.data % ALIGN == 0 and p.data.flags.c_contiguous
        assert p.data.flags.writeable and p.requires_grad
    p = cr.nn.Parameter(src)
    np.testing.assert_array_equal(p.data, src, strict=True)
    assert not np.shares_memory(p.data, src)  # copied, as before
    # references cannot be laid over raw bytes: an object array stays NumPy's own
    odd = np.array([1, "a"], dtype=object)
    assert list(cr.nn.Parameter(odd, requires_grad=False).data) == [1, "a"]


def test_scratch_arrays_are_reused_whoever_holds_them():
    # for values that never leave the kernel's own calls: no reference counting
    kernel = ops.Kernel([((4,), np.dtype(np.float32))])
    held = kernel.scratch(0)
    assert kernel.scratch(0) is held
    assert kernel.take(0) is not held  # take() still counts the holder


def test_kept_arrays_start_on_a_cache_line():
    kernel = ops.Kernel([((3, 5), np.dtype(np.float32)), ((7,), np.dtype(np.float64)),
                         ((0, 4), np.dtype(np.float32)), ((), np.dtype(np.float64))])
    for i in range(4):
        a = kernel.take(i)
        shape, dtype = kernel.specs[i]
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.flags.writeable
        assert a.ctypes.data % ALIGN == 0 or not a.size  # (no memory: nothing to align)


def _model_and_step(batch):
    rng = np.random.default_rng(0)
    model = cr.nn.Sequential(cr.nn.Linear(6, 40), cr.nn.ReLU(), cr.nn.Linear(40, 3))
    opt = cr.optim.SGD(model.parameters(), lr=0.1)

    def step(xb, yb):
        opt.zero_grad()
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        opt.step()
        return out, loss

    x = rng.standard_normal((batch, 6)).astype(np.float32)
    y = rng.integers(0, 3, batch)
    return model, opt, cr.compile(step, strict=True), x, y


@pytest.mark.parametrize("batch", [4, 64])
def test_outputs_and_grads_a_caller_holds_keep_their_values_across_replays(batch):
    model, opt, step, x, y = _model_and_step(batch)
    held_out, held_grads, held_views = [], [], []
    for i in range(6):
        out, _loss = step(x * (1 + i), y)
        held_out.append((out, out.detach().numpy().copy()))
        grads = [p.grad for p in model.parameters()]
        held_grads.append([(g, g.numpy().copy()) for g in grads])
        held_views.append([(g.numpy()[..., :2], g.numpy()[..., :2].copy()) for g in grads])
    assert step.stats["replayed"] >= 4  # the kernels ran
    for out, copy in held_out:
        np.testing.assert_array_equal(out.detach().numpy(), copy)
    for grads in held_grads:
        for g, copy in grads:
            np.testing.assert_array_equal(g.numpy(), copy)
    for views in held_views:
        for v, copy in views:
            np.testing.assert_array_equal(v, copy)


def test_a_view_of_a_gradient_keeps_its_values_after_the_tensor_is_gone():
    # the caller keeps only a view of last step's .grad: zero_grad() lets go of
    # the tensor, so the kept array itself is held by the kernel alone, but its
    # memory is not free (the view refers to the buffer that owns it)
    model, opt, step, x, y = _model_and_step(8)
    views = []
    for i in range(5):
        step(x * (1 + i), y)
        g = model[0].weight.grad.numpy()
        views.append((g[:2], g[:2].copy()))
        del g
    assert step.stats["replayed"] >= 3
    for v, copy in views:
        np.testing.assert_array_equal(v, copy)
