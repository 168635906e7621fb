"""cr.compile: a captured step gives the eager step's results bit for bit."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import chainrule as cr
import chainrule.nn.functional as F

N_FEATURES, N_CLASSES = 12, 4


def _data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    y = rng.integers(0, N_CLASSES, n)
    return x, y


def _batches(x, y, bs, steps):
    """``steps`` batches cycling through the data, the last one of each pass short."""
    out = []
    while len(out) < steps:
        for i in range(0, len(x), bs):
            out.append((x[i:i + bs], y[i:i + bs]))
    return out[:steps]


def _twin(opt_name, dropout=0.0, seed=0):
    """A model, its optimizer and a step function, built identically every call."""
    cr.manual_seed(seed)
    layers = [cr.nn.Linear(N_FEATURES, 16), cr.nn.ReLU()]
    if dropout:
        layers.append(cr.nn.Dropout(dropout))
    layers += [cr.nn.Linear(16, 16), cr.nn.Tanh(), cr.nn.Linear(16, N_CLASSES)]
    model = cr.nn.Sequential(*layers)
    if opt_name == "sgd":
        opt = cr.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = cr.optim.Adam(model.parameters(), lr=0.01)

    def step(xb, yb):
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    return model, step


def _run(step, batches, seed=123):
    cr.manual_seed(seed)  # Dropout draws from the global generator
    return [step(xb, yb).item() for xb, yb in batches]


def _assert_same_params(m1, m2):
    for (n, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert a.data.dtype == b.data.dtype
        assert np.array_equal(a.data, b.data), f"parameter {n} differs"


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("bs", [8, 32])
def test_bit_identical_to_eager_over_20_steps(opt_name, bs):
    x, y = _data()
    batches = _batches(x, y, bs, 20)  # includes short last batches: a shape change
    m_eager, s_eager = _twin(opt_name)
    m_comp, s_comp = _twin(opt_name)
    step = cr.compile(s_comp)
    assert _run(s_eager, batches) == _run(step, batches)
    _assert_same_params(m_eager, m_comp)
    assert step.stats["replayed"] > 0, step.stats
    assert step.unsupported is None


def test_returns_what_eager_returns():
    x, y = _data()
    _, s = _twin("sgd")
    step = cr.compile(s)
    for _ in range(4):
        out = step(x[:8], y[:8])
    assert isinstance(out, cr.Tensor) and out.shape == ()
    assert out.dtype == np.float32


def test_shape_change_falls_back_to_eager_and_captures_again():
    x, y = _data()
    _, s = _twin("sgd")
    step = cr.compile(s)
    for _ in range(4):
        step(x[:16], y[:16])
    assert step.stats == {"eager": 1, "captured": 1, "replayed": 2, "diverged": 0}
    step(x[:5], y[:5])  # the last short batch: a new signature, eager
    assert step.stats["eager"] == 2
    for _ in range(3):
        step(x[:5], y[:5])
    assert step.stats["captured"] == 2 and step.stats["replayed"] == 4


def test_dropout_gets_fresh_masks_and_matches_eager():
    x, y = _data()
    batches = [(x[:16], y[:16])] * 12  # same batch: only the masks change the loss
    m_eager, s_eager = _twin("sgd", dropout=0.5)
    m_comp, s_comp = _twin("sgd", dropout=0.5)
    step = cr.compile(s_comp)
    eager, comp = _run(s_eager, batches), _run(step, batches)
    assert eager == comp
    _assert_same_params(m_eager, m_comp)
    assert step.stats["replayed"] >= 8
    # fresh masks every step: the same batch never gives the same loss twice
    assert len(set(comp)) == len(comp)


def test_data_dependent_branch_diverges_but_stays_exact():
    x, y = _data()

    def make():
        model, _ = _twin("sgd")
        opt = cr.optim.SGD(model.parameters(), lr=0.05)
        calls = [0]

        def step(xb, yb):
            calls[0] += 1
            opt.zero_grad()
            out = model(xb)
            if calls[0] % 3 == 0:  # Python control flow the recorder cannot see
                out = out * 2.0
            loss = F.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            return loss

        return model, step

    m1, s1 = make()
    m2, s2 = make()
    step = cr.compile(s2)
    batches = [(x[:16], y[:16])] * 12
    assert _run(s1, batches) == _run(step, batches)
    _assert_same_params(m1, m2)
    assert step.stats["diverged"] > 0


def test_unsupported_steps_run_eagerly():
    x, y = _data()
    model, _ = _twin("sgd")
    opt = cr.optim.SGD(model.parameters(), lr=0.05)

    def step_retain(xb, yb):
        opt.zero_grad()
        h = model(xb)
        h.retain_grad()
        loss = F.cross_entropy(h, yb)
        loss.backward()
        opt.step()
        return loss

    step = cr.compile(step_retain)
    for _ in range(4):
        step(x[:8], y[:8])
    assert step.unsupported is not None and step.stats["replayed"] == 0


def test_no_graph_or_memory_kept_across_many_steps():
    x, y = _data()
    _, s = _twin("adam")
    step = cr.compile(s)
    losses = [step(x[:16], y[:16]) for _ in range(5)]
    ref = weakref.ref(losses[-1])
    del losses
    gc.collect()
    assert ref() is None  # the compiled step holds no node of a past step
    import tracemalloc

    for _ in range(20):
        step(x[:16], y[:16])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(300):
        step(x[:16], y[:16])
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 300 steps"
    assert step.stats["replayed"] >= 300
