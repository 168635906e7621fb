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
    elif opt_name == "fused sgd":
        opt = cr.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, fused=True)
    else:
        opt = cr.optim.Adam(model.parameters(), lr=0.01)
    return model, _training_step(model, opt, F.cross_entropy)


def _eager_and_compiled(opt_name, **kw):
    """Two identical models: one with its eager step, one with the compiled step."""
    m1, s1 = _twin(opt_name, **kw)
    m2, s2 = _twin(opt_name, **kw)
    return m1, s1, m2, cr.compile(s2)


def _training_step(model, opt, loss_fn):
    def step(xb, yb):
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    return step


def _run(step, batches, seed=123):
    cr.manual_seed(seed)  # Dropout draws from the global generator
    return [step(xb, yb).item() for xb, yb in batches]


def _assert_same_params(m1, m2):
    for (n, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert a.data.dtype == b.data.dtype
        assert np.array_equal(a.data, b.data), f"parameter {n} differs"


@pytest.mark.parametrize("opt_name", ["sgd", "fused sgd", "adam"])
@pytest.mark.parametrize("bs", [8, 32])
def test_bit_identical_to_eager_over_20_steps(opt_name, bs):
    if opt_name == "fused sgd":
        from chainrule.optim import _blas

        if not _blas.available():
            pytest.skip("this NumPy carries no OpenBLAS chainrule can call")
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
    assert step.stats["replayed"] == 2
    assert isinstance(out, cr.Tensor) and out.shape == ()
    assert out.dtype == np.float32 and out.requires_grad
    with pytest.raises(cr.GraphReleasedError, match="already freed"):
        out.backward()  # as after an eager step: backward() freed the graph


def test_capture_verify_replay_per_shape():
    x, y = _data()
    _, s = _twin("sgd")
    step = cr.compile(s)
    for _ in range(4):
        step(x[:16], y[:16])
    assert step.stats == {"eager": 0, "captured": 1, "verified": 1, "replayed": 2}
    step(x[:5], y[:5])  # the last short batch: a new signature, captured on its own
    assert step.stats["captured"] == 2
    for _ in range(3):
        step(x[:5], y[:5])
    assert step.stats == {"eager": 0, "captured": 2, "verified": 2, "replayed": 4}


def test_the_steps_python_does_not_run_after_capture(capsys):
    """Capture and verification run the step's Python, replays don't: a print happens twice."""
    x, y = _data()
    model, _ = _twin("sgd")
    opt = cr.optim.SGD(model.parameters(), lr=0.05)

    def step_fn(xb, yb):
        print("step")
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    step = cr.compile(step_fn)
    for _ in range(10):
        step(x[:8], y[:8])
    assert capsys.readouterr().out.count("step") == 2 and step.stats["replayed"] == 8


def test_python_state_the_step_changes_is_refused_by_name():
    """A counter kept by the step would stop counting in a replay: refused, and named."""
    x, y = _data()
    model, _ = _twin("sgd")
    opt = cr.optim.SGD(model.parameters(), lr=0.05)
    calls = [0]

    def step_fn(xb, yb):
        calls[0] += 1
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    step = cr.compile(step_fn)
    for _ in range(10):
        step(x[:8], y[:8])
    assert calls[0] == 10 and step.stats["replayed"] == 0
    assert "calls[0]" in step.unsupported and "Optimizer.zero_grad" in step.unsupported


def test_dropout_gets_fresh_masks_and_matches_eager():
    x, y = _data()
    batches = [(x[:16], y[:16])] * 12  # same batch: only the masks change the loss
    m_eager, s_eager = _twin("sgd", dropout=0.5)
    m_comp, s_comp = _twin("sgd", dropout=0.5)
    step = cr.compile(s_comp)
    eager, comp = _run(s_eager, batches), _run(step, batches)
    assert eager == comp
    _assert_same_params(m_eager, m_comp)
    assert step.stats["replayed"] >= 9
    # fresh masks every step: the same batch never gives the same loss twice
    assert len(set(comp)) == len(comp)


def test_eval_mode_is_a_guard():
    """Dropout is active only in train mode: switching modes must not replay the wrong tape."""
    x, y = _data()
    m1, s1, m2, step = _eager_and_compiled("sgd", dropout=0.5)
    cr.manual_seed(5)
    modes = [True] * 4 + [False] * 4 + [True] * 4
    ref = []
    for training in modes:
        m1.train(training)
        ref.append(s1(x[:16], y[:16]).item())
    cr.manual_seed(5)
    got = []
    for training in modes:
        m2.train(training)
        got.append(step(x[:16], y[:16]).item())
    assert got == ref
    _assert_same_params(m1, m2)
    assert step.stats["captured"] >= 2 and step.stats["replayed"] >= 5


def test_frozen_parameter_is_a_guard():
    x, y = _data()
    m1, s1, m2, step = _eager_and_compiled("sgd")
    for i in range(10):
        if i == 5:  # freeze the first layer's weight halfway
            m1[0].weight.requires_grad = False
            m2[0].weight.requires_grad = False
        assert s1(x[:16], y[:16]).item() == step(x[:16], y[:16]).item()
    _assert_same_params(m1, m2)
    assert step.stats["captured"] == 2


def test_a_value_the_tape_cannot_see_is_caught_by_verification():
    """A constant computed with plain NumPy from the batch is frozen into the tape;
    the verification call sees the replay differ and keeps the step eager."""
    x, y = _data()

    def make():
        model, _ = _twin("sgd")
        opt = cr.optim.SGD(model.parameters(), lr=0.05)

        def step(xb, yb):
            opt.zero_grad()
            scale = np.float32(np.abs(xb).mean())  # NumPy, outside chainrule's ops
            loss = F.cross_entropy(model(xb) * scale, yb)
            loss.backward()
            opt.step()
            return loss

        return model, step

    m1, s1 = make()
    m2, s2 = make()
    step = cr.compile(s2)
    batches = _batches(x, y, 16, 8)
    assert _run(s1, batches) == _run(step, batches)
    _assert_same_params(m1, m2)
    assert step.stats["replayed"] == 0
    assert "a constant differs between two calls" in step.unsupported
    assert "model(xb) * scale" in step.unsupported  # the line that uses it


@pytest.mark.parametrize(
    "kind", ["retain_grad", "hook", "two_backward", "closure", "returns_numpy"]
)
def test_unsupported_steps_run_eagerly(kind):
    x, y = _data()
    model, _ = _twin("sgd")
    opt = cr.optim.SGD(model.parameters(), lr=0.05)

    def step_fn(xb, yb):
        opt.zero_grad()
        h = model(xb)
        if kind == "retain_grad":
            h.retain_grad()
        if kind == "hook":
            h.register_hook(lambda g: g * 2)
        loss = F.cross_entropy(h, yb)
        if kind == "two_backward":
            (loss * 0.5).backward(retain_graph=True)
        loss.backward()
        if kind == "closure":
            opt.step(lambda: loss)
        else:
            opt.step()
        return h.data.argmax(1) if kind == "returns_numpy" else loss

    step = cr.compile(step_fn)
    for _ in range(4):
        step(x[:8], y[:8])
    assert step.unsupported is not None and step.stats["replayed"] == 0
    assert step.stats["eager"] == 3


def test_clipping_and_scheduler_inside_the_step_replay():
    x, y = _data()

    def make():
        model, _ = _twin("adam")
        opt = cr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = cr.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)

        def step(xb, yb):
            model.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            cr.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
            opt.step()
            sched.step()  # per-batch schedule
            return loss.item()

        return model, opt, step

    m1, o1, s1 = make()
    m2, o2, s2 = make()
    step = cr.compile(s2)
    batches = _batches(x, y, 16, 12)
    assert [s1(*b) for b in batches] == [step(*b) for b in batches]
    _assert_same_params(m1, m2)
    assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"] < 0.1 * 0.9**10
    assert step.stats["replayed"] > 0, step.unsupported


def test_bad_labels_in_a_replayed_batch_still_raise():
    x, y = _data()
    _, s = _twin("sgd")
    step = cr.compile(s)
    for _ in range(3):
        step(x[:8], y[:8])
    bad = y[:8].copy()
    bad[3] = N_CLASSES
    with pytest.raises(ValueError, match=r"cross_entropy: label 4 at position 3 is out of range"):
        step(x[:8], bad)
    bad[3] = -1
    with pytest.raises(ValueError, match=r"label -1 at position 3"):
        step(x[:8], bad)


def test_float64_and_mse_with_a_cast_target():
    """Regression targets of another dtype are cast by an op the tape replays."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 5))
    t = rng.standard_normal((64, 2))  # float64 targets, float32 model below

    def make(dtype):
        cr.manual_seed(0)
        model = cr.nn.Sequential(cr.nn.Linear(5, 8), cr.nn.Tanh(), cr.nn.Linear(8, 2))
        for p in model.parameters():
            p.data = p.data.astype(dtype)
        opt = cr.optim.Adam(model.parameters(), lr=0.01)
        return model, _training_step(model, opt, F.mse_loss)

    for dtype in (np.float32, np.float64):
        m1, s1 = make(dtype)
        m2, s2 = make(dtype)
        step = cr.compile(s2)
        xs = x.astype(dtype)
        got = [step(xs[i:i + 16], t[i:i + 16]).item() for i in range(0, 64, 16)]
        ref = [s1(xs[i:i + 16], t[i:i + 16]).item() for i in range(0, 64, 16)]
        assert got == ref
        _assert_same_params(m1, m2)
        assert step.stats["replayed"] == 2, step.unsupported


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


def test_fit_compiles_chainrule_models_by_default_and_matches_eager():
    X, y = _data(200)

    def train(compile):
        cr.manual_seed(0)
        model = cr.nn.Sequential(cr.nn.Linear(N_FEATURES, 32), cr.nn.ReLU(), cr.nn.Dropout(0.2),
                                 cr.nn.Linear(32, N_CLASSES))
        opt = cr.optim.Adam(model.parameters(), lr=0.01)
        seen = {}

        class Spy(cr.callbacks.Callback):
            def on_train_end(self, trainer, logs):
                seen["compiled"] = trainer.compiled

        hist = cr.fit(model, F.cross_entropy, opt, (X, y), epochs=4, batch_size=32, seed=3,
                      compile=compile, progress=False, callbacks=[Spy()])
        return model, hist, seen["compiled"]

    m1, h1, c1 = train(False)
    m2, h2, c2 = train("auto")
    assert c1 is None and c2 is not None
    assert c2.stats["replayed"] > 0 and c2.unsupported is None
    timing = ("seconds", "samples_per_s")
    same = [k for k in h1.history if k not in timing]
    assert "accuracy" in same and "loss" in same
    assert {k: h1.history[k] for k in same} == {k: h2.history[k] for k in same}
    _assert_same_params(m1, m2)


def test_fit_auto_keeps_user_defined_modules_eager():
    X, y = _data(64)

    class Mine(cr.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = cr.nn.Linear(N_FEATURES, N_CLASSES)

        def forward(self, x):
            return self.lin(x)

    seen = {}

    class Spy(cr.callbacks.Callback):
        def on_train_end(self, trainer, logs):
            seen["compiled"] = trainer.compiled

    model = Mine()
    cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), (X, y),
           epochs=1, progress=False, callbacks=[Spy()])
    assert seen["compiled"] is None
    model = cr.nn.Sequential(cr.nn.Linear(N_FEATURES, N_CLASSES))
    cr.fit(model, lambda out, t: F.cross_entropy(out, t), cr.optim.SGD(model.parameters(), lr=0.1),
           (X, y), epochs=1, progress=False, callbacks=[Spy()])
    assert seen["compiled"] is None  # a user-written loss function


def test_a_changed_model_is_captured_again():
    """Adding a layer after capture must not replay the old tape."""
    x, y = _data()
    m1, s1, m2, step = _eager_and_compiled("sgd")
    for i in range(8):
        if i == 4:
            for m in (m1, m2):
                cr.manual_seed(9)
                m.append(cr.nn.Tanh())
        assert s1(x[:16], y[:16]).item() == step(x[:16], y[:16]).item()
    _assert_same_params(m1, m2)
    assert step.stats["captured"] == 2 and step.stats["replayed"] >= 3


def test_ever_changing_arguments_stop_compiling():
    x, y = _data()
    _, s = _twin("sgd")

    def step_fn(xb, yb, k):
        return s(xb, yb)

    step = cr.compile(step_fn)
    for k in range(70):  # a Python int argument is part of the signature
        step(x[:8], y[:8], k)
    assert "more than 64" in step.unsupported
    assert step.stats["eager"] >= 6 and step.stats["replayed"] == 0


def test_return_values_a_replay_can_rebuild():
    x, y = _data()
    model, _ = _twin("sgd")
    opt = cr.optim.SGD(model.parameters(), lr=0.05)

    def step_fn(xb, yb):
        opt.zero_grad()
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "value": loss.item(), "logits": out.data, "none": None}

    step = cr.compile(step_fn)
    for _ in range(4):
        res = step(x[:8], y[:8])
    assert step.stats["replayed"] == 2, step.unsupported
    assert isinstance(res["loss"], cr.Tensor) and not res["loss"].requires_grad
    assert res["value"] == res["loss"].item() and res["none"] is None
    assert isinstance(res["logits"], np.ndarray) and res["logits"].shape == (8, N_CLASSES)


def test_list_arguments_are_part_of_the_signature():
    """Numbers in a list argument are part of the signature, by value; an array
    made from them inside the step is a new array on every call, which the
    verification refuses (it cannot tell it from one made from the batch)."""
    x, y = _data()
    m1, s1, m2, step = _eager_and_compiled("sgd")
    for i in range(8):
        labels = [int(v) for v in y[8 * (i % 2):8 * (i % 2) + 8]]
        assert s1(x[:8], labels).item() == step(x[:8], labels).item()
    _assert_same_params(m1, m2)
    assert step.stats["replayed"] == 0
    assert "target=: an array made inside the step" in step.unsupported
