"""What each rank runs in the MPI tests (tests/test_distributed.py launches it).

``mpiexec -n N python tests/mpi_worker.py SCENARIO OUTDIR [ARGS]``: every rank
runs the scenario and writes ``OUTDIR/rank<r>.json``; the test reads them.
Each check computes its own reference in the same process (one process
training on the whole batch), so a rank's file says how far it was off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import chainrule as cr
import chainrule.nn.functional as F
from chainrule import distributed as dist
from chainrule import nn


def _mlp(dtype=np.float64, seed=0, sizes=(5, 16, 16, 3)):
    cr.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.state_dict().values(),
                                                          b.state_dict().values()))


def _digest(model) -> str:
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def _same_everywhere(text: str) -> bool:
    world = dist.init()
    every = world.all_gather_bytes(text.encode())
    return all(e == every[0] for e in every)


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def equivalence(out: dict) -> None:
    """N ranks x batch B/N == one process x batch B, 20 steps, float64."""
    r, n = dist.rank(), dist.world_size()
    rng = np.random.default_rng(1)
    B = 12 * n  # divisible for every N the tests use
    X = rng.normal(size=(20, B, 5))
    Y = rng.integers(0, 3, size=(20, B))
    results = {}
    for name, make in (
        ("sgd_momentum", lambda ps: cr.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                                 weight_decay=1e-3)),
        ("adam", lambda ps: cr.optim.Adam(ps, lr=1e-2)),
    ):
        # rank r starts from a different initialisation: DDP must copy rank 0's
        model = _mlp(seed=r)
        ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.0005)  # several buckets
        ref = _mlp(seed=0)
        opt, ref_opt = make(ddp.parameters()), make(ref.parameters())
        b = B // n
        for k in range(20):
            xs, ys = X[k, r * b:(r + 1) * b], Y[k, r * b:(r + 1) * b]
            opt.zero_grad()
            F.cross_entropy(ddp(cr.tensor(xs)), cr.tensor(ys)).backward()
            opt.step()
            ref_opt.zero_grad()
            F.cross_entropy(ref(cr.tensor(X[k])), cr.tensor(Y[k])).backward()
            ref_opt.step()
        results[name] = {"max_diff": _max_diff(model, ref),
                         "replicas_identical": _same_everywhere(_digest(model)),
                         "buckets": len(ddp.buckets)}
    out["equivalence"] = results


def accumulate(out: dict) -> None:
    """no_sync: two micro-batches accumulated, then one average == one big batch."""
    r, n = dist.rank(), dist.world_size()
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(4 * n, 5)), rng.integers(0, 3, size=4 * n)
    model = _mlp()
    ddp = dist.DistributedDataParallel(model)
    mine = np.arange(r * 4, (r + 1) * 4)
    with ddp.no_sync():
        F.cross_entropy(ddp(cr.tensor(X[mine[:2]])), cr.tensor(Y[mine[:2]])).backward()
    local_after_no_sync = [p.grad.data.copy() for p in model.parameters()]
    F.cross_entropy(ddp(cr.tensor(X[mine[2:]])), cr.tensor(Y[mine[2:]])).backward()
    ref = _mlp()
    for half in (slice(0, 2), slice(2, 4)):
        for q in range(n):
            idx = np.arange(q * 4, (q + 1) * 4)[half]
            (F.cross_entropy(ref(cr.tensor(X[idx])), cr.tensor(Y[idx])) / n).backward()
    solo = _mlp()
    F.cross_entropy(solo(cr.tensor(X[mine[:2]])), cr.tensor(Y[mine[:2]])).backward()
    out["accumulate"] = {
        "no_sync_is_local": max(float(np.abs(a - p.grad.data).max())
                                for a, p in zip(local_after_no_sync, solo.parameters())),
        "max_diff": max(float(np.abs(p.grad.data - q.grad.data).max())
                        for p, q in zip(model.parameters(), ref.parameters())),
    }


def compiled(out: dict) -> None:
    """A cr.compile'd DDP step replays the reduction: same weights as the eager DDP step."""
    r, n = dist.rank(), dist.world_size()
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(8, 6 * n, 5)), rng.integers(0, 3, size=(8, 6 * n))
    runs = {}
    for mode in ("eager", "compiled"):
        model = _mlp()
        ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.0005)
        opt = cr.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)

        def step(xb, yb, ddp=ddp, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(ddp(xb), yb)
            loss.backward()
            opt.step()
            return loss

        run = cr.compile(step) if mode == "compiled" else step
        for k in range(8):
            run(cr.tensor(X[k, r * 6:(r + 1) * 6]), cr.tensor(Y[k, r * 6:(r + 1) * 6]))
        runs[mode] = (model, getattr(run, "stats", None))
    ref = _mlp()
    ref_opt = cr.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for k in range(8):
        ref_opt.zero_grad()
        F.cross_entropy(ref(cr.tensor(X[k])), cr.tensor(Y[k])).backward()
        ref_opt.step()
    out["compiled"] = {
        "compiled_vs_eager_identical": _digest(runs["compiled"][0]) == _digest(runs["eager"][0]),
        "max_diff_vs_single": _max_diff(runs["compiled"][0], ref),
        "stats": runs["compiled"][1],
        "replicas_identical": _same_everywhere(_digest(runs["compiled"][0])),
    }


def collectives(out: dict) -> None:
    r, n = dist.rank(), dist.world_size()
    x = np.arange(4.0) + r
    dist.all_reduce(x)
    t = cr.tensor(np.full(3, float(r + 1)))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    a = np.full(2, float(r + 1))
    dist.all_reduce(a, op="avg")
    i = np.array([r + 1], dtype=np.int32)
    dist.all_reduce(i, op="prod")
    b = np.arange(3.0) if r == n - 1 else np.zeros(3)
    dist.broadcast(b, src=n - 1)
    view = np.zeros((4, 4))[:, 1]  # not contiguous: copied there and back
    view += r
    dist.all_reduce(view)
    dist.barrier()
    out["collectives"] = {"sum": x.tolist(), "max": t.data.tolist(), "avg": a.tolist(),
                          "prod": int(i[0]), "broadcast": b.tolist(), "strided": view.tolist()}


def unused(out: dict) -> None:
    """A parameter the outputs do not depend on: refused by default, averaged when asked."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x, which="a"):
            return self.a(x) if which == "a" else self.b(x)

    def cast(m):
        for p in m.parameters():
            p.data = p.data.astype(np.float64)
        return m

    r = dist.rank()
    x = cr.tensor(np.ones((2, 3)) * (r + 1))
    cr.manual_seed(0)
    try:
        ddp = dist.DistributedDataParallel(cast(TwoHeads()))
        ddp(x)
        refused = None
    except RuntimeError as exc:
        refused = str(exc)
    cr.manual_seed(0)
    model = cast(TwoHeads())
    ddp = dist.DistributedDataParallel(model, find_unused_parameters=True)
    # rank 0 uses head a, the others head b: each head is used somewhere
    which = "a" if r == 0 else "b"
    ddp(x, which).sum().backward()
    out["unused"] = {"refused": refused,
                     "a_grad": model.a.weight.grad.data.tolist(),
                     "b_grad": model.b.weight.grad.data.tolist()}


def mismatch(out: dict) -> None:
    r = dist.rank()
    model = nn.Sequential(nn.Linear(4, 8 if r == 0 else 9), nn.ReLU(), nn.Linear(8 if r == 0
                                                                                else 9, 2))
    try:
        dist.DistributedDataParallel(model)
        out["mismatch"] = None
    except ValueError as exc:
        out["mismatch"] = str(exc)


def fit_equivalence(out: dict) -> None:
    """fit(distributed=True) == fit in one process: history, weights, one checkpoint."""
    ckpt_dir = Path(sys.argv[2]) / "ckpt"
    rng = np.random.default_rng(4)
    X = rng.normal(size=(203, 5))  # 203: no batch size divides it evenly
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    Xv = rng.normal(size=(61, 5))
    yv = (Xv[:, 0] + Xv[:, 1] > 0).astype(np.int64) + (Xv[:, 2] > 1)
    import chainrule.io

    writes = []
    real_save = chainrule.io.save

    def counting_save(*args, **kwargs):
        writes.append(str(args[1]))
        return real_save(*args, **kwargs)

    chainrule.io.save = counting_save
    results = {}
    for batch in (24, 25, None):
        model = _mlp(seed=dist.rank())
        opt = cr.optim.Adam(model.parameters(), lr=1e-2)
        ck = cr.callbacks.ModelCheckpoint(ckpt_dir / f"best-{batch}.cr",
                                          monitor="val_accuracy")
        es = cr.callbacks.EarlyStopping(monitor="val_accuracy", patience=1)
        h = cr.fit(model, F.cross_entropy, opt, (X, y), epochs=12, val=(Xv, yv),
                   batch_size=batch, seed=7, progress=dist.rank() == 0, distributed=True,
                   callbacks=[ck, es])
        ref = _mlp(seed=0)
        ref_opt = cr.optim.Adam(ref.parameters(), lr=1e-2)
        es_ref = cr.callbacks.EarlyStopping(monitor="val_accuracy", patience=1)
        h_ref = cr.fit(ref, F.cross_entropy, ref_opt, (X, y), epochs=12, val=(Xv, yv),
                       batch_size=batch, seed=7, progress=False, callbacks=[es_ref])
        keys = ("loss", "accuracy", "val_loss", "val_accuracy")
        results[str(batch)] = {
            "max_diff": _max_diff(model, ref),
            "history_diff": max(abs(a - b) for k in keys
                                for a, b in zip(h.history[k], h_ref.history[k])),
            "epochs": [len(h), len(h_ref)],
            "saved": ck.saved,
            "replicas_identical": _same_everywhere(_digest(model)),
        }
        if dist.rank() == 0:  # the model keeps its best epoch's weights, as the file does
            np.save(ckpt_dir / f"pred-{batch}.npy", model(cr.tensor(Xv)).data)
            np.save(ckpt_dir / "Xv.npy", Xv)
    chainrule.io.save = real_save
    out["fit"] = results
    out["writes"] = writes


def raises(out: dict) -> None:
    """Rank 1 raises after the first step; the others are inside the next allreduce."""
    r = dist.rank()
    model = _mlp()
    ddp = dist.DistributedDataParallel(model)
    for k in range(1000):
        if r == 1 and k == 1:
            raise ValueError("rank 1 fails on purpose")
        ddp(cr.tensor(np.ones((2, 5)))).sum().backward()


def killed(out: dict) -> None:
    r = dist.rank()
    dist.barrier()
    if r == 1:
        os.kill(os.getpid(), 9)
    x = np.ones(3)
    for _ in range(1000):
        dist.all_reduce(x)
        time.sleep(0.01)


def hang(out: dict) -> None:
    """Rank 1 skips a collective: the watchdog stops the others after the timeout."""
    dist.init(timeout=float(sys.argv[3]))
    if dist.rank() != 1:
        dist.all_reduce(np.ones(3))
    time.sleep(60)


def no_init(out: dict) -> None:
    """Rank 1 never starts MPI: the others must not wait in MPI_Init forever."""
    if os.environ.get("PMI_RANK") == "1":
        sys.exit(0)
    dist.init(timeout=float(sys.argv[3]))
    dist.barrier()


SCENARIOS = {f.__name__: f for f in (equivalence, accumulate, compiled, collectives, unused,
                                     mismatch, fit_equivalence, raises, killed, hang, no_init)}


def main() -> None:
    names, outdir = sys.argv[1].split(","), Path(sys.argv[2])
    if names[0] not in ("hang", "no_init"):
        dist.init(timeout=60)
    out: dict = {"rank": dist.rank(), "size": dist.world_size()}
    for name in names:
        SCENARIOS[name](out)
    (outdir / f"rank{dist.rank()}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
