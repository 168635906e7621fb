"""Threads: grad mode is per thread, and concurrent training is deterministic.

Two models trained in two threads at the same time must end bit-identical to
the same two trainings run one after the other (no shared state in the engine,
the optimizers, the data loaders or ``cr.fit``).
"""

from __future__ import annotations

import threading

import numpy as np

import chainrule as cr

from .profile import pick, record

ROUNDS = pick(2, 20)


def test_no_grad_in_one_thread_does_not_affect_another():
    x = cr.tensor(np.ones(3), requires_grad=True)
    inside = threading.Event()
    checked = threading.Event()
    seen = {}

    def quiet():
        with cr.no_grad():
            inside.set()
            checked.wait(5)
            seen["quiet"] = ((x * 2).requires_grad, cr.is_grad_enabled())

    def busy():
        inside.wait(5)
        y = (x * 2).sum()
        seen["busy"] = (y.requires_grad, cr.is_grad_enabled())
        y.backward()
        seen["grad"] = x.grad.numpy().copy()
        checked.set()

    threads = [threading.Thread(target=quiet), threading.Thread(target=busy)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["quiet"] == (False, False)
    assert seen["busy"] == (True, True)
    np.testing.assert_array_equal(seen["grad"], [2.0, 2.0, 2.0])
    assert cr.is_grad_enabled()  # the main thread never changed


def test_set_grad_enabled_is_restored_per_thread():
    results = []

    def worker(flag):
        with cr.set_grad_enabled(flag):
            results.append((flag, cr.is_grad_enabled()))
        results.append(("after", cr.is_grad_enabled()))

    with cr.no_grad():
        t = threading.Thread(target=worker, args=(True,))
        t.start()
        t.join()
        assert not cr.is_grad_enabled()
    assert results == [(True, True), ("after", True)]


def _task(k):
    rng = np.random.default_rng(100 + k)
    X = rng.standard_normal((128, 12)).astype(np.float32)
    y = (X[:, k % 12] > 0).astype(np.int64) + (X[:, (k + 1) % 12] > 0.5).astype(np.int64)
    gen = np.random.default_rng(k)
    model = cr.nn.Sequential(cr.nn.Linear(12, 24, generator=gen), cr.nn.Tanh(),
                             cr.nn.Linear(24, 3, generator=gen))
    opt = (cr.optim.Adam if k % 2 else cr.optim.SGD)(model.parameters(), lr=0.02)
    loader = cr.data.DataLoader((X, y), batch_size=16, seed=k)
    return model, opt, loader


def _train(k, out):
    model, opt, loader = _task(k)
    hist = cr.fit(model, cr.nn.functional.cross_entropy, opt, loader, epochs=4,
                  progress=False)
    out[k] = ({n: np.array(v) for n, v in model.state_dict().items()},
              list(hist.history["loss"]))


def test_two_threads_training_match_sequential_runs():
    sequential = {}
    for k in (0, 1):
        _train(k, sequential)
    for _ in range(ROUNDS):
        concurrent = {}
        threads = [threading.Thread(target=_train, args=(k, concurrent)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for k in (0, 1):
            params, losses = concurrent[k]
            want_params, want_losses = sequential[k]
            assert losses == want_losses, f"model {k}: loss history differs"
            for name in want_params:
                assert np.array_equal(params[name], want_params[name]), f"model {k}: {name}"
    record("concurrency", rounds=ROUNDS, threads=2)
