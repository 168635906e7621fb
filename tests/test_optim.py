"""Optimizers vs their published update rules, PyTorch parity, state_dict resume,
schedulers, gradient clipping, and the forgotten-zero_grad warning."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import chainrule as cr
from chainrule import nn, optim
from chainrule.optim import lr_scheduler as lrs

RNG = np.random.default_rng(3)
W0 = RNG.standard_normal((3, 2))
GRADS = [RNG.standard_normal((3, 2)) for _ in range(20)]


def _run(opt_cls, steps, **kw):
    p = nn.Parameter(W0.copy())
    opt = opt_cls([p], **kw)
    out = []
    for g in GRADS[:steps]:
        p.grad = g.copy()
        opt.step()
        opt.zero_grad()
        out.append(p.data.copy())
    return out


# ----- hand-written reference rules (float64, from the papers / PyTorch docs) ----------


def _sgd_ref(steps, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False, w0=W0, grads=GRADS):
    w, b, out = w0.copy(), None, []
    for t in range(steps):
        g = -grads[t] if maximize else grads[t]
        g = g + weight_decay * w
        if momentum:
            b = g.copy() if b is None else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        w = w - lr * g
        out.append(w)
    return out


def _adam_ref(steps, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
              decoupled=False, maximize=False):
    w, m, v, vmax, out = W0.copy(), 0.0, 0.0, 0.0, []
    b1, b2 = betas
    for t in range(1, steps + 1):
        g = -GRADS[t - 1] if maximize else GRADS[t - 1]
        if decoupled:
            w = w * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        vhat = (vmax if amsgrad else v) / (1 - b2**t)
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(vhat) + eps)
        out.append(w)
    return out


def _rmsprop_ref(steps, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
    w, s, gbar, buf, out = W0.copy(), 0.0, 0.0, 0.0, []
    for t in range(steps):
        g = GRADS[t] + weight_decay * w
        s = alpha * s + (1 - alpha) * g * g
        if centered:
            gbar = alpha * gbar + (1 - alpha) * g
            avg = np.sqrt(s - gbar * gbar) + eps
        else:
            avg = np.sqrt(s) + eps
        if momentum:
            buf = momentum * buf + g / avg
            w = w - lr * buf
        else:
            w = w - lr * g / avg
        out.append(w)
    return out


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, weight_decay=0.1), dict(lr=0.1, momentum=0.9),
             dict(lr=0.1, momentum=0.9, dampening=0.5), dict(lr=0.05, momentum=0.8, nesterov=True),
             dict(lr=0.1, momentum=0.9, weight_decay=0.01, maximize=True)]
ADAM_CASES = [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, amsgrad=True),
              dict(lr=0.02, betas=(0.8, 0.9), eps=1e-6, maximize=True)]
RMS_CASES = [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, momentum=0.9),
             dict(lr=0.01, centered=True), dict(lr=0.01, centered=True, momentum=0.5)]


@pytest.mark.parametrize("kw", SGD_CASES, ids=str)
def test_sgd_first_steps_match_rule(kw):
    for got, want in zip(_run(optim.SGD, 3, **kw), _sgd_ref(3, **kw)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kw", ADAM_CASES, ids=str)
def test_adam_first_steps_match_rule(kw):
    for got, want in zip(_run(optim.Adam, 3, **kw), _adam_ref(3, **kw)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kw", [dict(lr=0.01), dict(lr=0.01, weight_decay=0.5, amsgrad=True)],
                         ids=str)
def test_adamw_first_steps_match_decoupled_rule(kw):
    ref = _adam_ref(3, decoupled=True, **{"weight_decay": 1e-2, **kw})
    for got, want in zip(_run(optim.AdamW, 3, **kw), ref):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kw", RMS_CASES, ids=str)
def test_rmsprop_first_steps_match_rule(kw):
    for got, want in zip(_run(optim.RMSprop, 3, **kw), _rmsprop_ref(3, **kw)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_adam_first_step_moves_each_weight_by_lr():
    # bias correction makes the first Adam step lr * sign(g) (up to eps)
    (w1,) = _run(optim.Adam, 1, lr=0.01)
    np.testing.assert_allclose(W0 - w1, 0.01 * np.sign(GRADS[0]), rtol=1e-6)


@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)),
])
def test_torch_parity_20_steps(name, kw):
    torch = pytest.importorskip("torch")
    p = nn.Parameter(W0.copy())
    tp = torch.tensor(W0.copy(), requires_grad=True)
    opt, topt = getattr(optim, name)([p], **kw), getattr(torch.optim, name)([tp], **kw)
    for g in GRADS:
        p.grad = g.copy()
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        p.grad = None
    # not bit-exact: PyTorch's CPU kernels fuse a*x + y into one FMA rounding
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


# ----- SGD(fused=True): BLAS axpy/scal from NumPy's own OpenBLAS ------------------------

def _need_blas():
    from chainrule.optim import _blas

    if not _blas.available():
        pytest.skip("this NumPy carries no OpenBLAS chainrule can call")


FUSED_CASES = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9, dampening=0.3),
               dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
               dict(lr=0.1, momentum=0.5, maximize=True)]


BIG_W0 = RNG.standard_normal((160, 120))  # above _blas.MIN_SIZE: the BLAS path runs
BIG_GRADS = [RNG.standard_normal((160, 120)) for _ in range(10)]


@pytest.mark.parametrize("kw", FUSED_CASES, ids=str)
def test_fused_sgd_follows_the_rule_to_rounding(kw, monkeypatch):
    _need_blas()
    from chainrule.optim import _blas

    calls = []
    real = _blas.axpy
    monkeypatch.setattr(_blas, "axpy", lambda *a: (calls.append(a[2].shape), real(*a)))
    p = nn.Parameter(BIG_W0.copy())
    opt = optim.SGD([p], fused=True, **kw)
    for g, want in zip(BIG_GRADS, _sgd_ref(len(BIG_GRADS), w0=BIG_W0, grads=BIG_GRADS, **kw)):
        p.grad = g.copy()
        opt.step()
        np.testing.assert_allclose(p.data, want, rtol=1e-12, atol=1e-13)
    assert calls and all(s == BIG_W0.shape for s in calls)  # BLAS did the updates
    # in float32, equal to the unfused update to rounding
    p32, q32 = (nn.Parameter(BIG_W0.astype(np.float32)) for _ in range(2))
    fused, plain = optim.SGD([p32], fused=True, **kw), optim.SGD([q32], **kw)
    for g in BIG_GRADS:
        p32.grad, q32.grad = g.astype(np.float32), g.astype(np.float32)
        fused.step()
        plain.step()
    assert p32.data.dtype == np.float32
    np.testing.assert_allclose(p32.data, q32.data, rtol=1e-4, atol=1e-5)


def test_fused_sgd_matches_torch_fused_sgd():
    _need_blas()
    torch = pytest.importorskip("torch")
    kw = dict(lr=0.1, momentum=0.9, dampening=0.1)
    p = nn.Parameter(BIG_W0.copy())
    tp = torch.tensor(BIG_W0.copy(), requires_grad=True)
    opt, topt = optim.SGD([p], fused=True, **kw), torch.optim.SGD([tp], fused=True, **kw)
    for g in BIG_GRADS:
        p.grad = g.copy()
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-13)


def test_fused_sgd_falls_back_where_blas_cannot_update_in_place():
    _need_blas()
    # float16 has no BLAS routine, an F-ordered array is not C-contiguous, a
    # small one is quicker in NumPy: all take the NumPy path and must still be
    # updated in place, exactly as unfused
    half = nn.Parameter(BIG_W0.astype(np.float16))
    base = np.asfortranarray(BIG_W0.copy())
    view = nn.Parameter(BIG_W0.copy())
    view.data = base  # same values, F-ordered storage
    small = nn.Parameter(W0.copy())
    refs = [nn.Parameter(BIG_W0.astype(np.float16)), nn.Parameter(BIG_W0.copy()),
            nn.Parameter(W0.copy())]
    mine = [half, view, small]
    fused = optim.SGD(mine, lr=0.1, momentum=0.9, fused=True)
    plain = optim.SGD(refs, lr=0.1, momentum=0.9)
    for g, gs in zip(BIG_GRADS[:5], GRADS):
        for p, q, grad in zip(mine, refs, (g.astype(np.float16), g, gs)):
            p.grad, q.grad = grad.copy(), grad.copy()
        fused.step()
        plain.step()
    assert half.data.dtype == np.float16
    for p, q in zip(mine, refs):
        np.testing.assert_array_equal(p.data, q.data)
    assert np.shares_memory(view.data, base)


def test_fused_sgd_without_a_callable_blas_says_so(monkeypatch):
    from chainrule.optim import _blas

    monkeypatch.setattr(_blas, "_FUNCS", {})  # as if no library had been found
    monkeypatch.setattr(_blas, "_WHY", "this NumPy does not carry OpenBLAS (test)")
    with pytest.raises(RuntimeError, match=r"SGD\(fused=True\).*does not carry OpenBLAS.*"
                                           r"fused=False"):
        optim.SGD([nn.Parameter(W0.copy())], lr=0.1, fused=True)
    optim.SGD([nn.Parameter(W0.copy())], lr=0.1)  # the default needs nothing


def test_the_bundled_blas_is_found_and_checked_against_numpy():
    from chainrule.optim import _blas

    _need_blas()
    for dtype in (np.float32, np.float64):
        y = np.arange(300_000, dtype=dtype).reshape(600, 500)
        x = np.ones_like(y)
        want = y + (-0.25) * x
        assert _blas.supports(y)
        _blas.axpy(-0.25, x, y)
        np.testing.assert_array_equal(y, want)  # exact: small integers and quarters
        _blas.scal(2.0, y)
        np.testing.assert_array_equal(y, 2 * want)
        _blas.axpy(1.0, x.T.copy().T, y)  # an F-ordered x is read in y's order
        np.testing.assert_array_equal(y, 2 * want + 1)
    n = _blas.MIN_SIZE
    assert not _blas.supports(np.ones(n, np.float16))
    assert not _blas.supports(np.ones((n, 4)).T)  # not C-contiguous
    assert not _blas.supports(np.ones(n - 1, np.float32))  # quicker in NumPy
    ro = np.ones(n)
    ro.flags.writeable = False
    assert not _blas.supports(ro)


def test_fused_is_a_group_setting_saved_with_the_state():
    _need_blas()
    p = nn.Parameter(W0.copy())
    opt = optim.SGD([p], lr=0.1, fused=True)
    assert opt.state_dict()["param_groups"][0]["fused"] is True
    other = optim.SGD([nn.Parameter(W0.copy())], lr=0.1)
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["fused"] is True


# ----- validation, groups, state -------------------------------------------------


def test_hyperparameter_validation():
    p = [nn.Parameter(W0.copy())]
    with pytest.raises(ValueError, match=r"SGD: invalid lr -0.1"):
        optim.SGD(p, lr=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"Adam: invalid beta2 \(betas\[1\]\) 1.0"):
        optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="RMSprop: invalid alpha"):
        optim.RMSprop(p, alpha=-1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(p[0], lr=0.1)
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([{"params": p}, {"params": p}], lr=0.1)


def test_param_groups_have_own_hyperparameters():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    a.grad = np.ones(2)
    b.grad = np.ones(2)
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.0)
    c = nn.Parameter(np.ones(2))
    opt.add_param_group({"params": [c], "momentum": 0.5})
    assert opt.param_groups[2]["lr"] == 0.1 and opt.param_groups[2]["momentum"] == 0.5


def test_params_without_grad_are_skipped_and_step_bumps_version():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    y = (a * b).sum()  # recorded before the step
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(b.data, 1.0)
    assert b not in opt.state and opt.state[a]["step"] == 1
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)),
                                     ("Adam", dict(lr=0.01, amsgrad=True)),
                                     ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5))])
def test_state_dict_round_trip_resumes_bit_exactly(name, kw):
    import json

    def make():
        cr.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        return model, getattr(optim, name)(model.parameters(), **kw)

    x = cr.tensor(RNG.standard_normal((8, 3)).astype(np.float32))
    y = np.arange(8) % 2

    def train(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    model, opt = make()
    train(model, opt, 5)
    # what a checkpoint stores: arrays apart, everything else through JSON
    sd = opt.state_dict()
    arrays = {(i, k): v for i, s in sd["state"].items() for k, v in s.items()
              if isinstance(v, np.ndarray)}
    rest = json.loads(json.dumps({
        "state": {i: {k: v for k, v in s.items() if not isinstance(v, np.ndarray)}
                  for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"]}))
    for (i, k), v in arrays.items():
        rest["state"][str(i)][k] = v
    weights = model.state_dict()
    train(model, opt, 5)

    model2, opt2 = make()
    model2.load_state_dict(weights)
    opt2.load_state_dict(rest)
    train(model2, opt2, 5)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_load_state_dict_checks_structure():
    opt = optim.SGD([nn.Parameter(np.ones(2))], lr=0.1, momentum=0.9)
    other = optim.SGD([nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="group 0 has 2 parameter"):
        opt.load_state_dict(other.state_dict())
    sd = {"state": {0: {"momentum_buffer": np.ones(3)}},
          "param_groups": [{**opt.param_groups[0], "params": [0]}]}
    with pytest.raises(ValueError, match=r"has shape \(3,\)"):
        opt.load_state_dict(sd)


# ----- the forgotten zero_grad ----------------------------------------------------


def _setup():
    w = nn.Parameter(np.ones(3))
    return w, optim.SGD([w], lr=0.1)


def test_warns_once_when_grads_are_never_zeroed():
    w, opt = _setup()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(4):
            (w * w).sum().backward()
            opt.step()
    hits = [r for r in rec if issubclass(r.category, optim.GradNotZeroedWarning)]
    assert len(hits) == 1
    msg = str(hits[0].message)
    assert "zero_grad()" in msg and "accumulat" in msg and "warn_unzeroed_grad" in msg


@pytest.mark.parametrize("how", ["opt", "opt-zeros", "model", "none"])
def test_no_warning_for_legit_accumulation(how):
    w, opt = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            if how == "opt":
                opt.zero_grad()
            elif how == "opt-zeros":
                opt.zero_grad(set_to_none=False)
            elif how == "model":
                m = nn.Module()
                m.w = w
                m.zero_grad()
            else:
                w.grad = None
            for _ in range(3):  # accumulate over micro-batches, then one step
                (w * w).sum().backward()
            opt.step()


def test_warning_can_be_silenced():
    w, opt = _setup()
    opt.warn_unzeroed_grad = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            (w * w).sum().backward()
            opt.step()


# ----- schedulers -------------------------------------------------------------------


def _opt(lr=1.0):
    return optim.SGD([nn.Parameter(np.ones(1))], lr=lr)


def _curve(sched, n=10):
    lrs = [sched.get_last_lr()[0]]
    for _ in range(n):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    return lrs


def test_step_multistep_exponential_lambda():
    np.testing.assert_allclose(_curve(lrs.StepLR(_opt(), step_size=3, gamma=0.5), 7),
                               [1, 1, 1, .5, .5, .5, .25, .25])
    np.testing.assert_allclose(_curve(lrs.MultiStepLR(_opt(), [2, 5, 5], gamma=0.1), 6),
                               [1, 1, .1, .1, .1, .001, .001])
    np.testing.assert_allclose(_curve(lrs.ExponentialLR(_opt(), gamma=0.9), 4),
                               [0.9**k for k in range(5)])
    np.testing.assert_allclose(_curve(lrs.LambdaLR(_opt(2.0), lambda e: 1 / (e + 1)), 3),
                               [2, 1, 2 / 3, 0.5])


def test_cosine_matches_closed_form_and_torch():
    got = _curve(lrs.CosineAnnealingLR(_opt(0.1), T_max=10, eta_min=0.01), 25)
    want = [0.01 + 0.09 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(26)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    torch = pytest.importorskip("torch")
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ts = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=10, eta_min=0.01)
    tl = [ts.get_last_lr()[0]]
    for _ in range(25):
        topt.step()
        ts.step()
        tl.append(ts.get_last_lr()[0])
    assert got == tl  # the same recursive formula gives the same floats


def test_reduce_on_plateau():
    opt = _opt(1.0)
    s = lrs.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1, min_lr=0.2)
    lrs_seen = []
    for metric in [5, 4, 4, 4, 4, 4, 4, 4, 4]:
        s.step(metric)
        lrs_seen.append(opt.param_groups[0]["lr"])
    assert lrs_seen == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    for _ in range(10):
        s.step(4)
    assert opt.param_groups[0]["lr"] == 0.2  # floored at min_lr
    m = lrs.ReduceLROnPlateau(_opt(), mode="max", patience=0)
    m.step(1.0)
    m.step(0.5)
    assert m.get_last_lr() == [0.1]


def test_scheduler_state_dict_resumes():
    import json

    a = lrs.CosineAnnealingLR(_opt(0.1), T_max=7)
    _curve(a, 3)
    sd = json.loads(json.dumps(a.state_dict()))
    opt_b = _opt(0.1)
    b = lrs.CosineAnnealingLR(opt_b, T_max=7)
    b.load_state_dict(sd)
    opt_b.param_groups[0]["lr"] = a.get_last_lr()[0]
    assert _curve(a, 6) == _curve(b, 6)


# ----- clipping -----------------------------------------------------------------------


def test_clip_grad_norm():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    a.grad = np.array([3.0, 0.0])
    b.grad = np.array([4.0])
    total = nn.utils.clip_grad_norm_([a, b], max_norm=1.0)
    assert total.item() == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a.grad.data, b.grad.data]),
                               np.array([3.0, 0, 4.0]) / (5.0 + 1e-6))
    assert nn.utils.clip_grad_norm_([a, b], max_norm=10.0).item() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(a.grad.data, [3 / (5 + 1e-6), 0])  # unchanged below the max
    a.grad = np.array([-7.0, 2.0])
    assert nn.utils.clip_grad_norm_([a], 1.0, norm_type=float("inf")).item() == 7.0
