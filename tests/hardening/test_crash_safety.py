"""Crash safety: SIGKILL a process while it saves, then look at the disk.

A forked child saves checkpoint after checkpoint over the same path; the parent
kills it at a random moment (uniform over a window a few saves long, so kills
land in every phase of the write: temp file creation, data, fsync, rename,
directory fsync). After every kill the file must load and be exactly one of the
versions the child wrote (never a mix, never corrupt), and versions never go
backwards. ``atomic_write`` cannot clean up after SIGKILL, so at most one
``.NAME.*.tmp`` file per interrupted save may be left behind; nothing else.

Resuming: training killed mid-run and resumed from its last epoch checkpoint
(``ModelCheckpoint`` + ``cr.load(...).load_into`` + ``fit(initial_epoch=...)``)
ends with parameters bit-identical to an uninterrupted run with the same seed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr
from chainrule import io as crio

from .profile import pick, record

KILLS = pick(15, 250)
FRESH_KILLS = pick(5, 50)
SHAPE = (256, 512)  # 512 KiB of float32: a save takes long enough to be hit mid-write


def _state(k: int) -> dict[str, np.ndarray]:
    return {"w": np.full(SHAPE, k, np.float32), "b": np.arange(64, dtype=np.int64) + k,
            "k": np.array(k, np.int64)}


def _version(path: Path) -> int:
    """Load ``path`` and check it is exactly one version; return that version."""
    ckpt = crio.load(path)
    k = int(ckpt.metadata["k"])
    want = _state(k)
    assert list(ckpt.state_dict) == list(want)
    for name, arr in want.items():
        got = ckpt.state_dict[name]
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert np.array_equal(got, arr), f"tensor {name!r} is not version {k}"
    return k


def _saver(path: Path, start: int, ready: int) -> None:
    """Child process: save versions start, start+1, ... until killed."""
    try:
        os.write(ready, b".")  # the parent's clock starts here, not at fork()
        k = start
        while True:
            crio.save(_state(k), path, metadata={"k": k})
            k += 1
    finally:
        os._exit(0)  # never return into pytest in the child


def _spawn_and_kill(path: Path, start: int, window: float, rng: random.Random) -> float:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _saver(path, start, w)
    os.close(w)
    # Wait for the child to start saving: on a loaded machine fork() and the
    # child's first steps can take longer than the whole window, and the kill
    # would land before any write began (safe, but it tests nothing).
    os.read(r, 1)
    os.close(r)
    delay = rng.uniform(0.0, window)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        "the saver exited before it was killed (it crashed?)"
    )
    return delay


def _strays(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name != name]


def _save_seconds(tmp: Path) -> float:
    t = time.perf_counter()
    for k in range(3):
        crio.save(_state(k), tmp / "timing.cr", metadata={"k": k})
    (tmp / "timing.cr").unlink()
    return (time.perf_counter() - t) / 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_save_leaves_old_or_new(tmp_path):
    rng = random.Random(1234)
    window = first_window = max(4 * _save_seconds(tmp_path), 0.01)
    d = tmp_path / "ckpt"
    d.mkdir()
    path = d / "model.cr"
    crio.save(_state(0), path, metadata={"k": 0})
    last = 0
    advanced = 0
    for kill in range(1, KILLS + 1):
        _spawn_and_kill(path, last + 1, window, rng)
        k = _version(path)
        assert k >= last, f"kill {kill}: the file went back from version {last} to {k}"
        advanced += k > last
        # Keep the kills spread over the phases of a save whatever the load:
        # a save measured on an idle moment can take several times longer
        # while other processes share the cores, and then every kill would
        # land inside the first write. Widen the window after a kill that
        # found no new version, narrow it a little after one that did, so
        # that about a half of the kills land after a completed save.
        window = min(window * 1.25, 50 * first_window) if k == last else \
            max(window * 0.9, first_window / 4)
        last = k
        strays = _strays(d, path.name)
        assert all(p.name.startswith(".model.cr.") and p.name.endswith(".tmp") for p in strays), (
            f"unexpected files: {[p.name for p in strays]}")
        assert len(strays) <= kill, f"{len(strays)} temp files after {kill} kills"
    strays = len(_strays(d, path.name))
    # kills must land in different places, not all before the first save
    assert advanced >= KILLS // 3, f"only {advanced} of {KILLS} kills came after a save"
    record("crash_safety", kills=KILLS, versions_advanced=advanced, last_version=last,
           stray_temp_files=strays, window_s=round(first_window, 4),
           final_window_s=round(window, 4))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_the_first_save(tmp_path):
    """No old file: after the kill there is no file or a complete one."""
    rng = random.Random(99)
    window = max(2 * _save_seconds(tmp_path), 0.005)
    complete = 0
    for n in range(FRESH_KILLS):
        d = tmp_path / f"run{n}"
        d.mkdir()
        path = d / "model.cr"
        _spawn_and_kill(path, 1, window, rng)
        if path.exists():
            assert _version(path) >= 1
            complete += 1
    record("crash_safety_first_save", kills=FRESH_KILLS, complete=complete)


# --------------------------------------------------------------------------
# Resume after a crash == never crashed
# --------------------------------------------------------------------------

EPOCHS = 6


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 8)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + (X[:, 3] > 1).astype(np.int64)
    return X, y


def _fresh(seed=0):
    cr.manual_seed(seed)
    model = cr.nn.Sequential(cr.nn.Linear(8, 16), cr.nn.Tanh(), cr.nn.Linear(16, 3))
    opt = cr.optim.Adam(model.parameters(), lr=0.01)
    return model, opt


def _fit(model, opt, epochs, initial_epoch=0, callbacks=()):
    return cr.fit(model, cr.nn.functional.cross_entropy, opt, _data(), epochs=epochs,
                  batch_size=16, seed=7, progress=False, initial_epoch=initial_epoch,
                  callbacks=list(callbacks))


def _params(model):
    return {k: np.array(v.data if hasattr(v, "data") else v) for k, v in
            model.state_dict().items()}


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    model, opt = _fresh()
    _fit(model, opt, EPOCHS)
    want = _params(model)

    model, opt = _fresh()
    cb = cr.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch}.cr"), save_best_only=False)
    _fit(model, opt, EPOCHS // 2, callbacks=[cb])
    del model, opt
    model, opt = _fresh(seed=123)  # different initial weights: all must come from the file
    ckpt = cr.load(tmp_path / f"e{EPOCHS // 2}.cr")
    ckpt.load_into(model, opt)
    _fit(model, opt, EPOCHS, initial_epoch=EPOCHS // 2)
    got = _params(model)
    for k in want:
        assert np.array_equal(got[k], want[k]), f"{k} differs after resuming"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    model, opt = _fresh()
    t = time.perf_counter()
    _fit(model, opt, EPOCHS)
    full = time.perf_counter() - t
    want = _params(model)

    rng = random.Random(5)
    resumed_from = []
    for trial in range(pick(3, 12)):
        d = tmp_path / f"t{trial}"
        d.mkdir()
        pid = os.fork()
        if pid == 0:
            try:
                m, o = _fresh()
                cb = cr.callbacks.ModelCheckpoint(str(d / "last.cr"), save_best_only=False)
                _fit(m, o, EPOCHS, callbacks=[cb])
            finally:
                os._exit(0)
        # kill at a random point of a random epoch: wait for the checkpoint of
        # epoch `target` (0: none yet), then up to one more epoch's time
        target = rng.randrange(EPOCHS)
        deadline = time.monotonic() + 60
        while target and time.monotonic() < deadline:
            try:
                if int(cr.load(d / "last.cr").metadata["epoch"]) >= target:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 1.0) * full / EPOCHS)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        model, opt = _fresh(seed=321)
        done = 0
        if (d / "last.cr").exists():
            ckpt = cr.load(d / "last.cr")
            ckpt.load_into(model, opt)
            done = int(ckpt.metadata["epoch"])
        else:
            model, opt = _fresh()  # killed before the first epoch ended: start over
        resumed_from.append(done)
        if done < EPOCHS:
            _fit(model, opt, EPOCHS, initial_epoch=done)
        got = _params(model)
        for k in want:
            assert np.array_equal(got[k], want[k]), f"trial {trial}: {k} differs (from {done})"
    record("resume_after_kill", trials=len(resumed_from), resumed_from_epochs=resumed_from)
