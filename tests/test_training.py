"""fit, History and callbacks: real networks learn, and the loop keeps its promises."""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest

import chainrule as cr
from chainrule import nn
from chainrule.data import load_digits, train_test_split
from chainrule.training import Accuracy, History, Trainer, evaluate

F = nn.functional
XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([[0], [1], [1], [0]], dtype=np.float32)


def _init_uniform(model: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Set every parameter from NumPy directly, so the test does not depend on nn.init."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = rng.uniform(-scale, scale, p.shape)
    return model


def _blobs(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = (rng.standard_normal((n, 4)) + 2.0 * np.eye(3, 4)[y]).astype(np.float32)
    return X, y


def _small_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    cr.manual_seed(seed)
    layers = [nn.Linear(4, 16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(16, 3))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].tobytes() == sb[k].tobytes() for k in sa)


# --------------------------------------------------------------------------
# Real networks learn
# --------------------------------------------------------------------------


def test_xor_full_batch_gd_stops_by_the_weight_change_rule():
    """The notes' algorithm: w <- w - eta grad L(w) until ||w^{k+1} - w^k|| < eps."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1), nn.Sigmoid())
    _init_uniform(model, seed=3)
    tol = 1e-3
    rule = cr.callbacks.WeightChangeStopping(tol=tol)
    params = list(model.parameters())

    def flat() -> np.ndarray:
        return np.concatenate([p.data.ravel() for p in params]).astype(np.float64)

    weights = [flat()]  # w^0, w^1, ...: one entry per optimizer step
    record = cr.callbacks.LambdaCallback(on_batch_end=lambda t, logs: weights.append(flat()))
    history = cr.fit(
        model, F.mse_loss, cr.optim.SGD(model.parameters(), lr=4.0), (XOR_X, XOR_Y),
        epochs=20_000, batch_size=None, callbacks=[rule, record], metrics=["accuracy"],
        progress=False,
    )
    # stopped by the rule, long before the iteration limit
    assert history.stopped_early and len(history) < 20_000
    assert "||w^{k+1} - w^k||_2" in history.stop_reason
    # full batch: one step per epoch, and the rule fired at the last one
    assert rule.stopped_step == len(history) == history[-1]["steps"]
    changes = np.linalg.norm(np.diff(np.array(weights), axis=0), axis=1)
    assert len(changes) == len(history)
    assert changes[-1] < tol and np.all(changes[:-1] >= tol)
    assert math.isclose(rule.last_change, changes[-1], rel_tol=1e-9)
    # and the network computes XOR
    with cr.no_grad():
        out = model(cr.tensor(XOR_X)).data
    np.testing.assert_array_equal(out > 0.5, XOR_Y > 0.5)
    assert history[-1]["accuracy"] == 1.0
    assert history[-1]["loss"] < history[0]["loss"] / 10


def test_encoder_8_3_8_learns_a_compressed_code():
    """Rumelhart, Hinton & Williams (1986): 8 one-hot patterns through 3 hidden units."""
    X, y = np.eye(8, dtype=np.float32), np.arange(8)
    model = _init_uniform(nn.Sequential(nn.Linear(8, 3), nn.Sigmoid(), nn.Linear(3, 8)), seed=0)
    history = cr.fit(
        model, F.cross_entropy, cr.optim.Adam(model.parameters(), lr=0.1), (X, y),
        epochs=400, batch_size=None, progress=False,
    )
    assert history[-1]["accuracy"] == 1.0 and history[-1]["loss"] < 0.05
    with cr.no_grad():
        out = model(cr.tensor(X)).data
        hidden = F.sigmoid(model[0](cr.tensor(X))).data
    np.testing.assert_array_equal(out.argmax(axis=1), y)
    # every pattern gets its own point in the 3-unit hidden layer
    dists = np.linalg.norm(hidden[:, None] - hidden[None], axis=-1)
    assert dists[~np.eye(8, dtype=bool)].min() > 0.2


def test_digits_with_adam_reaches_95_percent_test_accuracy_quickly():
    X, y = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, seed=0, stratify=y)
    cr.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    t0 = time.perf_counter()
    history = cr.fit(
        model, F.cross_entropy, cr.optim.Adam(model.parameters(), lr=3e-3), (X_tr, y_tr),
        epochs=15, batch_size=32, val=(X_te, y_te), seed=0, progress=False,
    )
    elapsed = time.perf_counter() - t0
    assert history[-1]["val_accuracy"] >= 0.95
    assert evaluate(model, F.cross_entropy, (X_te, y_te))["accuracy"] >= 0.95
    assert elapsed < 20.0  # a few seconds on a laptop; generous for slow CI
    assert set(history.history) >= {
        "epoch", "steps", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
        "seconds", "samples_per_s",
    }
    assert history["steps"][-1] == 15 * math.ceil(len(X_tr) / 32)
    assert all(r["samples_per_s"] > 0 for r in history)


# --------------------------------------------------------------------------
# Early stopping, checkpoints, schedules
# --------------------------------------------------------------------------


def _overfitting_setup():
    """A big model on 24 noisy points: val_loss falls, then rises."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((24, 4)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    Xv = rng.standard_normal((60, 4)).astype(np.float32)
    yv = rng.integers(0, 3, 60)
    cr.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 3))
    return model, (X, y), (Xv, yv)


def test_early_stopping_restores_the_best_epochs_weights():
    model, train, val = _overfitting_setup()
    snapshots: dict[int, dict] = {}
    keep = cr.callbacks.LambdaCallback(
        on_epoch_end=lambda t, logs: snapshots.__setitem__(logs["epoch"], t.model.state_dict())
    )
    es = cr.callbacks.EarlyStopping(monitor="val_loss", patience=3)
    history = cr.fit(
        model, F.cross_entropy, cr.optim.Adam(model.parameters(), lr=0.05), train,
        epochs=200, val=val, batch_size=None, callbacks=[keep, es], progress=False,
    )
    val_losses = history["val_loss"]
    best = int(np.argmin(val_losses)) + 1
    assert history.stopped_early and "EarlyStopping" in history.stop_reason
    assert es.best_epoch == history.best_epoch == best
    assert len(history) == best + 3  # stopped at the 3rd epoch without improvement
    assert len(history) > best  # the final weights are not the best ones...
    final = model.state_dict()
    for k, v in snapshots[best].items():  # ...but they were put back
        assert final[k].tobytes() == v.tobytes(), k
    assert not np.array_equal(snapshots[len(history)]["0.weight"], final["0.weight"])


@pytest.mark.parametrize("patience, values, stop", [
    (3, [1.0, 0.9, 0.95, 0.95, 0.95, 0.8], 5),  # 3 epochs in a row without improvement
    (3, [1.0, 0.9, 0.95, 0.85, 0.95, 0.95, 0.95], 7),  # an improvement resets the count
    (1, [1.0, 1.0], 2),
    (0, [1.0, 1.0], 2),  # as Keras: 0 stops at the first epoch without improvement
    (2, [3.0, 2.0, 1.0, 0.5], None),
])
def test_early_stopping_patience_counts_epochs_without_improvement(patience, values, stop):
    from types import SimpleNamespace

    es = cr.callbacks.EarlyStopping(monitor="val_loss", patience=patience)
    trainer = SimpleNamespace(has_val=True, model=_small_model(),
                              history=SimpleNamespace(monitor=None, mode=None))
    es.on_train_begin(trainer, {})
    stopped = None
    for epoch, v in enumerate(values, start=1):
        if es.on_epoch_end(trainer, {"epoch": epoch, "val_loss": v}):
            stopped = epoch
            break
    assert stopped == stop
    assert es.stopped_epoch == stop


def test_early_stopping_needs_a_validation_set_for_val_metrics():
    model = _small_model()
    with pytest.raises(ValueError, match="validation"):
        cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
               epochs=2, callbacks=[cr.callbacks.EarlyStopping()], progress=False)


def test_model_checkpoint_keeps_the_best_epoch(tmp_path):
    model, train, val = _overfitting_setup()
    preds: dict[int, np.ndarray] = {}
    Xv = cr.tensor(val[0])

    def remember(trainer, logs):
        with cr.no_grad():
            preds[logs["epoch"]] = trainer.model(Xv).data.copy()

    path = tmp_path / "best.cr"
    history = cr.fit(
        model, F.cross_entropy, cr.optim.Adam(model.parameters(), lr=0.05), train,
        epochs=25, val=val, batch_size=None, progress=False,
        callbacks=[cr.callbacks.LambdaCallback(on_epoch_end=remember),
                   cr.callbacks.ModelCheckpoint(path, monitor="val_loss")],
    )
    ckpt = cr.load(path)
    best = history.best_epoch
    assert ckpt.metadata["epoch"] == best
    assert ckpt.metadata["val_loss"] == min(history["val_loss"])
    assert ckpt.optimizer_class == "Adam"
    with cr.no_grad():
        np.testing.assert_array_equal(ckpt.model()(Xv).data, preds[best])

    every = tmp_path / "e{epoch:02d}.cr"
    cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.01), train, epochs=3,
           callbacks=[cr.callbacks.ModelCheckpoint(every, save_best_only=False)], progress=False)
    assert sorted(p.name for p in tmp_path.glob("e*.cr")) == ["e01.cr", "e02.cr", "e03.cr"]


def test_schedulers_step_per_epoch_and_plateau_gets_the_metric():
    model = _small_model()
    opt = cr.optim.SGD(model.parameters(), lr=0.8)
    sched = cr.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    history = cr.fit(model, F.cross_entropy, opt, _blobs(), epochs=5, scheduler=sched,
                     progress=False)
    assert history["lr"] == [0.8, 0.8, 0.4, 0.4, 0.2]

    seen = []

    class Spy(cr.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics):
            seen.append(metrics)
            super().step(metrics)

    opt = cr.optim.SGD(model.parameters(), lr=0.1)
    cb = cr.callbacks.LRSchedulerCallback(Spy(opt, patience=0))
    history = cr.fit(model, F.cross_entropy, opt, _blobs(), val=_blobs(30, seed=9), epochs=3,
                     callbacks=[cb], progress=False)
    assert seen == history["val_loss"]


# --------------------------------------------------------------------------
# The loop's contract
# --------------------------------------------------------------------------


def test_same_seed_same_history_and_weights_bit_for_bit():
    X, y = _blobs(200)

    def run(seed: int):
        model = _small_model(seed=0, dropout=0.2)  # dropout: the global generator matters
        h = cr.fit(model, F.cross_entropy, cr.optim.Adam(model.parameters(), lr=0.01), (X, y),
                   epochs=4, batch_size=16, val=_blobs(40, seed=5), seed=seed, progress=False)
        return h, model

    h1, m1 = run(7)
    h2, m2 = run(7)
    h3, m3 = run(8)
    assert h1.without_timing() == h2.without_timing()
    assert _same_weights(m1, m2)
    assert h1.without_timing() != h3.without_timing()
    assert not _same_weights(m1, m3)


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    X, y = _blobs(150)

    def setup():
        model = _small_model(seed=4, dropout=0.3)  # the masks must line up too
        return model, cr.optim.Adam(model.parameters(), lr=0.01)

    model, opt = setup()
    full = cr.fit(model, F.cross_entropy, opt, (X, y), epochs=6, batch_size=20, seed=3,
                  progress=False)

    part_model, part_opt = setup()
    cr.fit(part_model, F.cross_entropy, part_opt, (X, y), epochs=3, batch_size=20, seed=3,
           progress=False)
    cr.save(part_model, tmp_path / "mid.cr", optimizer=part_opt, metadata={"epoch": 3})

    ckpt = cr.load(tmp_path / "mid.cr")
    resumed = ckpt.model()
    resumed_opt = cr.optim.Adam(resumed.parameters(), lr=0.01)
    ckpt.load_into(resumed, resumed_opt)
    rest = cr.fit(resumed, F.cross_entropy, resumed_opt, (X, y), epochs=6, batch_size=20, seed=3,
                  initial_epoch=ckpt.metadata["epoch"], progress=False)
    assert [r["epoch"] for r in rest] == [4, 5, 6]
    assert [r["loss"] for r in rest] == full["loss"][3:]
    assert _same_weights(resumed, model)


def test_callback_hooks_run_in_order_and_logs_hold_no_tensors():
    events = []

    class Spy(cr.callbacks.Callback):
        def on_train_begin(self, trainer, logs):
            assert isinstance(trainer, Trainer)
            events.append("train_begin")

        def on_epoch_begin(self, trainer, logs):
            events.append(f"epoch_begin {logs['epoch']}")

        def on_batch_begin(self, trainer, logs):
            events.append(f"batch_begin {logs['batch']}")

        def on_batch_end(self, trainer, logs):
            assert all(isinstance(v, (int, float)) for v in logs.values()), logs
            events.append(f"batch_end {logs['batch']}")

        def on_epoch_end(self, trainer, logs):
            assert trainer.history.records[-1] is logs
            events.append(f"epoch_end {logs['epoch']}")

        def on_train_end(self, trainer, logs):
            events.append("train_end")

    X, y = _blobs(10)
    model = _small_model()
    cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), (X, y), epochs=2,
           batch_size=5, callbacks=[Spy()], progress=False)
    assert events == [
        "train_begin",
        "epoch_begin 1", "batch_begin 0", "batch_end 0", "batch_begin 1", "batch_end 1",
        "epoch_end 1",
        "epoch_begin 2", "batch_begin 0", "batch_end 0", "batch_begin 1", "batch_end 1",
        "epoch_end 2",
        "train_end",
    ]


@pytest.mark.parametrize("how", ["return_true", "return_reason", "flag", "request"])
def test_a_callback_can_stop_training(how):
    def on_batch_end(trainer, logs):
        if logs["step"] < 3:
            return None
        if how == "return_true":
            return True
        if how == "return_reason":
            return "enough"
        if how == "flag":
            trainer.stop_training = True
        else:
            trainer.request_stop("asked nicely")
        return None

    model = _small_model()
    h = cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
               epochs=50, batch_size=10, progress=False,
               callbacks=[cr.callbacks.LambdaCallback(on_batch_end=on_batch_end)])
    # the epoch is cut after the stopping batch and still recorded
    assert len(h) == 1 and h[0]["steps"] == 3 and h.stopped_early
    expected = {"return_true": "LambdaCallback", "return_reason": "enough",
                "flag": "LambdaCallback", "request": "asked nicely"}[how]
    assert expected in h.stop_reason


def test_a_stop_before_any_batch_runs_nothing(tmp_path):
    model = _small_model()
    before = model.state_dict()
    h = cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
               epochs=5, progress=False,
               callbacks=[cr.callbacks.LambdaCallback(on_train_begin=lambda t, logs: "no")])
    assert len(h) == 0 and h.stop_reason == "no"
    assert all(before[k].tobytes() == v.tobytes() for k, v in model.state_dict().items())


def test_model_checkpoint_creates_its_directory(tmp_path):
    model = _small_model()
    cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
           epochs=2, progress=False, callbacks=[cr.callbacks.ModelCheckpoint(
               tmp_path / "ckpt" / "e{epoch}-{loss:.2f}.cr", monitor="loss")])
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert len(names) >= 1 and names[0].startswith("e1-")


def test_max_steps_is_an_iteration_limit_not_an_early_stop():
    model = _small_model()
    h = cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
               epochs=50, batch_size=50, max_steps=7, progress=False)
    assert h[-1]["steps"] == 7 and len(h) == 3
    assert not h.stopped_early and "max_steps" in h.stop_reason


def test_weight_change_rule_per_epoch_and_in_the_max_norm():
    model = _small_model()
    rule = cr.callbacks.WeightChangeStopping(tol=1e9, norm="inf", every="epoch")
    h = cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
               epochs=5, batch_size=40, callbacks=[rule], progress=False)
    # any movement is below 1e9: it fires at the end of the first epoch, not after a batch
    assert len(h) == 1 and h[0]["steps"] == 3 and "_inf" in h.stop_reason
    with pytest.raises(ValueError):
        cr.callbacks.WeightChangeStopping(norm=3)


def test_metrics_auto_classification_regression_and_single_logit():
    model = _small_model()
    h = cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
               epochs=1, progress=False)
    assert "accuracy" in h[0]

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    reg = nn.Sequential(nn.Linear(3, 1))
    yr = X @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)
    h = cr.fit(reg, F.mse_loss, cr.optim.SGD(reg.parameters(), lr=0.1), (X, yr), epochs=2,
               val=(X, yr), progress=False)
    assert "accuracy" not in h[0] and "val_accuracy" not in h[0]
    assert set(h[0]) >= {"loss", "val_loss"}

    # one logit per sample: positive logit means class 1
    yb = (X[:, :1] > 0).astype(np.float32)
    clf = nn.Sequential(nn.Linear(3, 1))
    h = cr.fit(clf, F.binary_cross_entropy_with_logits, cr.optim.SGD(clf.parameters(), lr=0.5),
               (X, yb), epochs=30, batch_size=None, progress=False)
    with cr.no_grad():
        logits = clf(cr.tensor(X)).data
    assert h[-1]["accuracy"] > 0.9
    ev = evaluate(clf, F.binary_cross_entropy_with_logits, (X, yb))
    assert ev["accuracy"] == np.mean((logits > 0) == (yb > 0.5))

    acc = Accuracy()
    assert acc.counts(np.array([[0.2, 0.9], [0.8, 0.1]]), np.array([1, 1])) == (1.0, 2)
    onehot = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert acc.counts(np.array([[0.2, 0.9], [0.8, 0.1]]), onehot) == (2.0, 2)

    def mae(out, y):
        return float(np.mean(np.abs(out - y)))

    h = cr.fit(reg, F.mse_loss, cr.optim.SGD(reg.parameters(), lr=0.1), (X, yr), epochs=1,
               metrics=[mae], progress=False)
    assert "mae" in h[0]


def test_progress_output(capsys):
    model = _small_model()
    opt = cr.optim.SGD(model.parameters(), lr=0.1)
    cr.fit(model, F.cross_entropy, opt, _blobs(), epochs=3, progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""

    # not a terminal (captured): one short line per epoch
    cr.fit(model, F.cross_entropy, opt, _blobs(), epochs=3, val=_blobs(20, 2), progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3") and "val_accuracy" in lines[0]
    assert "samples/s" in lines[0]


def test_progress_for_long_full_batch_runs_stays_short(capsys):
    model = _small_model()
    cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
           epochs=400, batch_size=None, max_steps=300, progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert 10 <= len(lines) <= 22
    assert lines[-2].startswith("epoch 300/400") and lines[-1].startswith("stopped")


def test_progress_bar_on_a_terminal(monkeypatch):
    import io

    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    fake = FakeTTY()
    monkeypatch.setattr(sys, "stdout", fake)
    model = _small_model()
    cr.fit(model, F.cross_entropy, cr.optim.SGD(model.parameters(), lr=0.1), _blobs(),
           epochs=2, progress=True)
    text = fake.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "samples/s" in text
    assert "accuracy" in text


def test_compiled_step_gives_the_same_history_as_eager():
    if not hasattr(cr, "compile"):
        pytest.skip("cr.compile not available")
    X, y = _blobs(96)

    def run(mode):
        model = _small_model(seed=2)
        h = cr.fit(model, F.cross_entropy, cr.optim.Adam(model.parameters(), lr=0.01), (X, y),
                   epochs=3, batch_size=32, seed=0, compile=mode, progress=False)
        return h, model

    h_eager, m_eager = run(False)
    h_comp, m_comp = run(True)
    assert h_eager.without_timing() == h_comp.without_timing()
    assert _same_weights(m_eager, m_comp)


# --------------------------------------------------------------------------
# History files
# --------------------------------------------------------------------------


def _history() -> History:
    model, train, val = _overfitting_setup()
    return cr.fit(model, F.cross_entropy, cr.optim.Adam(model.parameters(), lr=0.05), train,
                  epochs=6, val=val, batch_size=None, progress=False,
                  callbacks=[cr.callbacks.EarlyStopping(patience=1)])


def test_history_csv_and_json_round_trip(tmp_path):
    h = _history()
    back = History.from_json(h.to_json(tmp_path / "h.json"))
    assert back.records == h.records
    assert (back.stopped_early, back.stop_reason, back.best_epoch) == (
        h.stopped_early, h.stop_reason, h.best_epoch)

    back = History.from_csv(h.to_csv(tmp_path / "h.csv"))
    assert back.records == h.records  # repr() floats: bit-exact
    header = (tmp_path / "h.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,steps,loss,accuracy,val_loss,val_accuracy,lr")
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.tmp"))


def test_history_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = _history().plot(tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "chainrule\[plot\]"'):
        History([{"epoch": 1, "loss": 1.0}]).plot(tmp_path / "x.png")


def test_history_access():
    h = History([{"epoch": 1, "loss": 2.0, "val_loss": 3.0},
                 {"epoch": 2, "loss": 1.0, "val_loss": 4.0}])
    assert h["loss"] == [2.0, 1.0] and h[1]["epoch"] == 2 and len(h) == 2
    assert h.best_epoch == 1  # val_loss is monitored when present
    h.monitor = "loss"
    assert h.best_epoch == 2
    assert "2 epochs" in repr(h)


def test_progress_bar_is_drawn_on_a_terminal_without_a_size(monkeypatch):
    """A pseudo-terminal that reports 0 columns and 0 lines (`script`, some CI
    runners) must still show the bars, not blank lines."""
    import io
    import os

    from chainrule.training.loop import _Progress

    master, slave = os.openpty()  # a new pty has no window size: 0 x 0
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            monkeypatch.setattr("sys.stdout", tty)
            progress = _Progress(True, epochs=2, first_epoch=0)
            assert progress.tty
            assert progress._width() == {"ncols": 100, "nrows": 50}
    finally:
        os.close(master)
        os.close(slave)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert not _Progress(True, epochs=2, first_epoch=0).tty  # a log file: one line per epoch
