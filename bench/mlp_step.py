"""One training step of a 784-256-256-10 ReLU MLP, in every framework installed.

The step: forward, softmax cross-entropy (mean over the batch), backward,
plain SGD (lr 0.01) -- float32 everywhere, the same initial weights and the
same batch for every framework. chainrule and PyTorch run their SGD with
``fused=True`` (one multiply-add pass per parameter; chainrule's needs the
OpenBLAS of NumPy's wheel and falls back to ``fused=False`` without it); JAX
fuses the update inside ``jit`` by itself. NumPy baselines frame the
results:

* ``NumPy hand-written``: backprop written out by hand with reused buffers
  and NumPy's two-pass SGD update, what a NumPy user would write;
* ``NumPy floor``: the compiled step's own NumPy and BLAS calls and nothing
  else (:func:`numpy_floor`), with the default and the fused update: what
  ``cr.compile`` would reach if its Python cost nothing;
* ``NumPy GEMM-only``: just the 8 matrix products a step needs (3 forward,
  3 weight gradients, 2 input gradients), the roofline on this BLAS, on
  arrays as NumPy allocates them (16-byte aligned); ``NumPy GEMM-only,
  64-byte aligned``: the same products on arrays aligned as chainrule
  allocates its parameters and its compiled kernels' arrays (the floors
  allocate as chainrule does).

Every runner is a zero-argument callable doing one step, built by
:func:`make_runner` inside a worker process of its own; :func:`measure` times
them round-robin (see ``_env.interleaved``).
"""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import Callable

SIZES = (784, 256, 256, 10)
LR = 0.01


def make_problem(batch: int, sizes: tuple[int, ...] = SIZES, seed: int = 0):
    """Initial weights (PyTorch layout: W is (out, in)) and one batch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        b = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
        params += [w, b]
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    return params, x, y


# ---------------------------------------------------------------------------
# NumPy baselines
# ---------------------------------------------------------------------------


def numpy_hand(params, x, y) -> Callable[[], float]:
    """Backprop by hand: the delta recursion of the notes, buffers reused."""
    import numpy as np

    ps = [p.copy() for p in params]
    n = len(ps) // 2
    rows = np.arange(len(x))

    def step() -> float:
        acts = [x]
        for i in range(n):
            w, b = ps[2 * i], ps[2 * i + 1]
            z = acts[-1] @ w.T
            z += b
            if i < n - 1:
                np.maximum(z, 0, out=z)
            acts.append(z)
        z = acts[-1]
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)  # z is now softmax(logits)
        loss = -np.log(z[rows, y]).mean()
        d = z
        d[rows, y] -= 1.0
        d /= len(x)  # dL/dlogits = (softmax - onehot) / B
        for i in reversed(range(n)):
            w, b = ps[2 * i], ps[2 * i + 1]
            gw = d.T @ acts[i]
            gb = d.sum(axis=0)
            if i > 0:
                d = d @ w
                d *= acts[i] > 0  # ReLU' from the forward output
            w -= LR * gw
            b -= LR * gb
        return float(loss)

    return step


def numpy_gemm_only(params, x, y, aligned: bool = False) -> Callable[[], None]:
    """Only the 8 matrix products of a step, into preallocated outputs.

    A forward product is computed in whichever orientation BLAS runs faster:
    ``x @ w.T`` with B rows, or ``w @ x.T`` (its transpose, out rows) when the
    batch is the shorter side. Written straight into a transposed buffer, the
    second form costs nothing more here, so unlike chainrule's ``linear``
    (which must turn the result into C order) it is used at any such batch.

    The arrays are NumPy's own (16-byte aligned, wherever malloc puts them);
    ``aligned``: the weights, the batch and every output 64-byte aligned, as
    chainrule allocates its parameters and the arrays its compiled kernels keep.
    """
    import numpy as np

    if aligned:
        from chainrule.tensor import aligned_copy, aligned_empty

        ws = [aligned_copy(p) for p in params[0::2]]
        x = aligned_copy(x)
        empty = aligned_empty
    else:
        ws = [p for p in params[0::2]]
        empty = np.empty
    bsz = len(x)
    acts = [x]
    for w in ws:
        if bsz < w.shape[0]:  # written as (out, B); acts holds its (B, out) view
            acts.append(empty((w.shape[0], bsz), np.float32).T)
        else:
            acts.append(empty((bsz, w.shape[0]), np.float32))
    deltas = [empty((bsz, w.shape[1]), np.float32) for w in ws]
    gws = [empty(w.shape, np.float32) for w in ws]

    def step() -> None:
        for i, w in enumerate(ws):
            if acts[i + 1].flags.c_contiguous:
                np.matmul(acts[i], w.T, out=acts[i + 1])
            else:
                np.matmul(w, acts[i].T, out=acts[i + 1].T)
        for i in reversed(range(len(ws))):
            np.matmul(acts[i + 1].T, acts[i], out=gws[i])
            if i > 0:
                np.matmul(acts[i + 1], ws[i], out=deltas[i])

    step.acts = acts  # type: ignore[attr-defined]  (the tests check the products)
    return step


def numpy_floor(params, x, y, fused_update: bool = False) -> Callable[[], object]:
    """chainrule's compiled step with the framework taken out: exactly the NumPy
    and BLAS calls its replay makes (its kernels' layouts and ``out=`` arrays,
    its loss, its SGD update), on arrays made once, and nothing else: no
    guards, no tape, no Tensors, no gradient store. What ``cr.compile`` would
    reach if its own Python cost nothing; ``fused_update``: the calls of
    ``cr.compile(step, fused_update=True)`` (every layer updated by one GEMM
    and one GEMV inside the backward pass). The tests check that it computes
    chainrule's numbers bit for bit."""
    import numpy as np

    from chainrule.nn.functional import _check_label_range as check_labels
    from chainrule.nn.functional import _softmax_rows as softmax_rows
    from chainrule.ops import _SMALL_BATCH
    from chainrule.optim import _blas
    from chainrule.tensor import aligned_copy, aligned_empty

    f32 = np.dtype(np.float32)
    # the parameters as nn.Parameter keeps them, and below the arrays the kernels
    # keep, allocated as they are (64-byte aligned)
    ws = [aligned_copy(p) for p in params[0::2]]
    bs = [aligned_copy(p) for p in params[1::2]]
    n, depth = len(x), len(ws)
    x = np.ascontiguousarray(x, f32)
    turn = [n <= _SMALL_BATCH and n < w.shape[0] for w in ws]  # as ops._affine decides
    empty = aligned_empty
    zt = [empty((w.shape[0], n), f32) for w in ws]
    acts = [empty((n, w.shape[0]), f32) for w in ws]
    masks = [empty((n, w.shape[0]), np.bool_) for w in ws]
    zeros = [np.zeros((n, w.shape[0]), f32) for w in ws]  # relu's, the output's shape
    gxs = [empty((n, w.shape[1]), f32) for w in ws]
    gws = [empty(w.shape, f32) for w in ws]
    gbs = [empty(b.shape, f32) for b in bs]
    ones = np.ones(n, f32)
    c = ws[-1].shape[0]
    offsets = np.arange(0, n * c, c)  # each row's start in the flattened logits
    flat = empty((n,), np.intp)
    p = empty((n, c), f32)
    unit = np.ones((), f32)  # the seed dL/dL
    blas = _blas.available()
    neg = -LR
    if fused_update:
        layer_updates = [_blas.LayerUpdate(f32, n, w.shape[0], w.shape[1]) for w in ws]
    # SGD(fused=True) as the compiled step's plan runs it: one BLAS axpy for a
    # large array, NumPy's two passes through a scratch array for a small one
    axpy = _blas._table()[f32.str][0] if blas else None
    updates = []
    for w, g in zip(ws + bs, gws + gbs):
        if blas and _blas.supports(w):
            updates.append((w.size, _blas.address(g), _blas.address(w), None))
        else:
            updates.append((w, g, np.empty_like(w), np.asarray(np.float32(neg))))

    def step() -> object:
        h = x
        for i in range(depth):
            out = acts[i]
            if turn[i]:
                np.matmul(ws[i], h.T, out=zt[i])
                np.add(zt[i].T, bs[i], out=out)
            else:
                np.matmul(h, ws[i].T, out=out)
                np.add(out, bs[i], out=out)
            if i < depth - 1:
                np.maximum(out, zeros[i], out=out)
                np.greater(out, 0, out=masks[i])
            h = out
        # cross-entropy with integer labels, mean over the batch (the loss's own
        # helpers: the label check, and the softmax with its log-sum-exp)
        check_labels(y, c, "cross_entropy")
        _, lse = softmax_rows(h, p)
        np.add(offsets, y, out=flat, dtype=np.intp)  # the target entries' positions
        per_row = lse[:, 0] - h.reshape(-1)[flat]
        loss = np.asarray(np.add.reduce(per_row, axis=None) / per_row.size)
        # backward
        scale = unit / n
        np.multiply(p, scale, out=p)
        p.reshape(-1)[flat] -= scale * 1.0
        g = p
        for i in reversed(range(depth)):
            if i < depth - 1:
                np.multiply(g, masks[i], out=g)
            prev = x if i == 0 else acts[i - 1]
            gx = np.matmul(g, ws[i], out=gxs[i]) if i > 0 else None
            if fused_update:
                layer_updates[i](neg, g, prev, ws[i], bs[i])
            else:
                np.matmul(g.T, prev, out=gws[i])
                np.matmul(ones, g, out=gbs[i])
            g = gx
        if not fused_update:
            for u in updates:
                if u[3] is None:
                    axpy(u[0], neg, u[1], 1, u[2], 1)
                else:
                    w, gw, t, lr = u
                    np.multiply(gw, lr, out=t)
                    np.add(w, t, out=w)
        return loss

    step.params = [a for pair in zip(ws, bs) for a in pair]  # type: ignore[attr-defined]
    return step


# ---------------------------------------------------------------------------
# chainrule
# ---------------------------------------------------------------------------


def chainrule_model(params):
    import chainrule as cr

    nn = cr.nn
    layers = []
    n = len(params) // 2
    for i in range(n):
        w = params[2 * i]
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data[...] = w
        lin.bias.data[...] = params[2 * i + 1]
        layers.append(lin)
        if i < n - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def chainrule_step(params, x, y, compiled: bool = False, fused: bool | None = None,
                   fused_update: bool = False) -> Callable[[], object]:
    """chainrule's step, with SGD fused where NumPy's OpenBLAS allows (``fused=None``);
    ``fused_update``: compiled with ``cr.compile(step, fused_update=True)`` (the
    weights updated inside the backward pass by one GEMM each; not bit-identical)."""
    import chainrule as cr
    from chainrule.optim import _blas

    model = chainrule_model(params)
    opt = cr.optim.SGD(model.parameters(), lr=LR,
                       fused=_blas.available() if fused is None else fused)
    F = cr.nn.functional

    def step(xb, yb):
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    fn = cr.compile(step, fused_update=fused_update) if compiled else step
    # the batch as a Tensor, made once (what DataLoader yields; PyTorch's step
    # gets a torch tensor made once too): a node that keeps a plain NumPy
    # array keeps a copy of it (the caller may refill it), a Tensor it keeps as is
    xt = cr.tensor(x)
    return lambda: fn(xt, y)


def guard_cost(batch: int, sizes: tuple[int, ...] = SIZES, calls: int = 300) -> dict[str, float]:
    """What a replay of the compiled step spends before it runs the tape: the
    argument signature and the guards (seconds per call), against the whole
    replay, measured in one process, interleaved."""
    import time

    import chainrule as cr  # noqa: F401  (loads the package before its submodule)

    compile_mod = sys.modules["chainrule.compile"]
    params, x, y = make_problem(batch, sizes)
    run = chainrule_step(params, x, y, compiled=True)
    for _ in range(10):
        run()
    compiled = [c.cell_contents for c in run.__closure__
                if isinstance(c.cell_contents, compile_mod.CompiledStep)][0]
    (entry,) = compiled._entries.values()
    guard = entry.progs[0].tape.guard
    whole, checks = [], []
    for _ in range(15):
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        t1 = time.perf_counter()
        for _ in range(calls):
            compile_mod._signature((x, y), {})
            guard.check()
        t2 = time.perf_counter()
        whole.append((t1 - t0) / calls)
        checks.append((t2 - t1) / calls)
    whole.sort()
    checks.sort()
    return {"replay": whole[len(whole) // 2], "guards": checks[len(checks) // 2]}


# ---------------------------------------------------------------------------
# Peers (each returns None when its framework is not installed)
# ---------------------------------------------------------------------------


def torch_step(params, x, y, compiled: bool = False,
               fused: bool = True) -> Callable[[], object] | None:
    try:
        import torch
    except ImportError:
        return None
    layers = []
    n = len(params) // 2
    for i in range(n):
        w = params[2 * i]
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(params[2 * i + 1]))
        layers.append(lin)
        if i < n - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR, fused=fused)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        try:
            step = torch.compile(step)
            step()  # compile now, not inside the timed loop
        except Exception as exc:  # no C++ compiler, unsupported platform...
            warnings.warn(f"torch.compile unavailable: {exc}")
            return None
    return step


def jax_step(params, x, y) -> Callable[[], object] | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None

    def loss_fn(ps, xb, yb):
        h = xb
        n = len(ps) // 2
        for i in range(n):
            h = h @ ps[2 * i].T + ps[2 * i + 1]
            if i < n - 1:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    @jax.jit
    def update(ps, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(ps, xb, yb)
        return [p - LR * g for p, g in zip(ps, grads)], loss

    state = [[jnp.asarray(p) for p in params]]
    xj, yj = jnp.asarray(x), jnp.asarray(y.astype("int32"))

    def step():
        state[0], loss = update(state[0], xj, yj)
        return loss.block_until_ready()

    return step


def sklearn_step(params, x, y) -> Callable[[], object] | None:
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    import numpy as np

    clf = MLPClassifier(
        hidden_layer_sizes=SIZES[1:-1], solver="sgd", learning_rate_init=LR, momentum=0.0,
        nesterovs_momentum=False, alpha=0.0, batch_size=len(x), shuffle=False,
    )
    classes = np.arange(SIZES[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.partial_fit(x, y, classes=classes)

    def step():
        clf.partial_fit(x, y)

    return step


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


NAMES = (
    "NumPy GEMM-only (roofline)", "NumPy GEMM-only, 64-byte aligned", "NumPy hand-written",
    "NumPy floor (compiled's calls)",
    "NumPy floor (fused update's calls)", "chainrule eager", "chainrule compiled",
    "chainrule compiled, fused update", "PyTorch eager", "torch.compile", "JAX jit",
    "scikit-learn partial_fit",
)


def make_runner(name: str, batch: int, sizes: tuple[int, ...] = SIZES):
    """The zero-argument step of one framework (None when it is not installed)."""
    params, x, y = make_problem(batch, sizes)
    make = {
        "NumPy GEMM-only (roofline)": numpy_gemm_only,
        "NumPy GEMM-only, 64-byte aligned": lambda *a: numpy_gemm_only(*a, aligned=True),
        "NumPy hand-written": numpy_hand,
        "NumPy floor (compiled's calls)": numpy_floor,
        "NumPy floor (fused update's calls)": lambda *a: numpy_floor(*a, fused_update=True),
        "chainrule eager": chainrule_step,
        "chainrule compiled": lambda *a: chainrule_step(*a, compiled=True),
        "chainrule compiled, fused update": lambda *a: chainrule_step(*a, compiled=True,
                                                                      fused_update=True),
        "PyTorch eager": torch_step,
        "torch.compile": lambda *a: torch_step(*a, compiled=True),
        "JAX jit": jax_step,
        "scikit-learn partial_fit": sklearn_step,
    }[name]
    return make(params, x, y)


def inner_calls(batch: int) -> int:
    """Calls per timed sample: ~5 ms or more, so timer resolution is not an issue."""
    return max(1, 2048 // batch) if batch < 1024 else 1


def measure(batches: tuple[int, ...], reps: int, include_torch_compile: bool = True,
            settle: float = 0.25):
    """``{batch: {name: steps per second (median)}}`` and ``{name: why skipped}``."""
    from ._env import interleaved, median

    results: dict[int, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    names = [n for n in NAMES if include_torch_compile or n != "torch.compile"]
    for b in batches:
        makers = {n: (__name__, "make_runner", (n, b)) for n in names}
        times, skipped = interleaved(makers, reps=reps, inner=inner_calls(b), settle=settle)
        results[b] = {k: 1.0 / median(v) for k, v in times.items()}
    return results, skipped


def numpy_peak(fn: Callable[[], object]) -> float:
    """Peak bytes ``tracemalloc`` sees during one call of ``fn``, beyond what was
    live before it (after a few warm-up calls: optimizer buffers, captures)."""
    import tracemalloc

    for _ in range(3):
        fn()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def peak_memory(batch: int, sizes: tuple[int, ...] = SIZES,
                names: tuple[str, ...] = ("NumPy hand-written", "chainrule eager",
                                          "chainrule compiled", "PyTorch eager"),
                ) -> dict[str, float]:
    """Peak bytes allocated during one step, beyond what existed before it.

    Run it in a fresh process (``_env.in_process``) to keep the timed
    workers' machine quiet.

    NumPy-based code: ``tracemalloc`` (NumPy reports its data buffers to it).
    PyTorch: the profiler's memory events (every CPU allocation and free, in
    order), summed to a running total whose maximum is the peak. JAX manages
    its own buffers in XLA and is not measured.
    """
    out: dict[str, float] = {}
    for name in names:
        fn = make_runner(name, batch, sizes)
        if fn is None:
            continue
        peak = _torch_peak(fn) if name.startswith("PyTorch") else numpy_peak(fn)
        if peak is not None:
            out[name] = peak
    return out


def _torch_peak(step: Callable[[], object]) -> float | None:
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    for _ in range(3):
        step()
    import contextlib
    import io
    import os

    # the profiler prints start/stop lines on stderr; keep the report clean
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(io.StringIO()):
        fd = os.dup(2)
        os.dup2(devnull.fileno(), 2)
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
        finally:
            os.dup2(fd, 2)
            os.close(fd)
    # kineto's raw events: each "[memory]" record is one allocation (nbytes > 0)
    # or free (< 0), timestamped; their running sum peaks at the step's peak
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        return None
    events.sort(key=lambda e: e.start_ns())
    total = peak = 0
    for e in events:
        total += e.nbytes()
        peak = max(peak, total)
    return float(peak)
