"""Thread control, timing and machine facts shared by the benchmarks.

Call :func:`pin_threads` before anything imports NumPy, PyTorch or JAX: the
BLAS libraries read their thread counts once, when they are loaded, and the
worker processes of :func:`interleaved` inherit the environment it sets.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def pin_threads(n: int, env: dict[str, str] | None = None) -> None:
    """Give every library the same ``n`` threads (set before their import).

    Each framework then runs with its own threading defaults otherwise (spin
    and sleep policies included): that is what its users get. Frameworks are
    kept from disturbing each other by running each in a process of its own
    (:func:`interleaved`), not by changing how their threads wait.

    ``env`` sets further variables for the run (an empty value removes one),
    e.g. ``{"OPENBLAS_CORETYPE": ""}`` to let OpenBLAS pick the kernels for
    this CPU itself, or ``{"OPENBLAS_THREAD_TIMEOUT": "1"}``.
    """
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    # XLA's CPU client sizes its pool from the visible cores; say it explicitly.
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} "
        f"intra_op_parallelism_threads={n}",
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for key, value in (env or {}).items():
        if value:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)


def blas_settings() -> str:
    """The environment's OpenBLAS settings that change its speed, for the report."""
    keys = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")
    found = [f"{k}={os.environ[k]}" for k in keys if os.environ.get(k)]
    return ", ".join(found) or "none set"


def threads_report() -> str:
    """The BLAS/OpenMP pools NumPy and PyTorch load (threadpoolctl), in one line.

    Loads them, so call it in a worker (``in_process``), not in the parent.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    import numpy  # noqa: F401

    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    seen = []
    for info in threadpool_info():
        arch = f", {info['architecture']} kernels" if info.get("architecture") else ""
        seen.append(f"{info.get('internal_api')} {info.get('version') or ''} "
                    f"({os.path.basename(info.get('filepath', ''))}): "
                    f"{info.get('num_threads')} threads{arch}")
    return "; ".join(sorted(set(seen))) or "no BLAS pool found"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu_model()}, {os.cpu_count()} logical cores, {system}"


# A maker is ``(module, function, args)``: calling ``module.function(*args)`` in
# a fresh process returns the zero-argument callable to time, or None when its
# framework is not installed.
Maker = tuple[str, str, tuple]


def _serve(conn, maker: Maker) -> None:
    """Worker process: build one runner, then time it whenever the parent asks."""
    import warnings

    warnings.simplefilter("ignore")
    try:
        fn = _call(maker)
    except Exception as exc:  # a peer that fails to set up is skipped, not fatal
        conn.send(("skip", f"{type(exc).__name__}: {exc}"))
        return
    if fn is None:
        conn.send(("skip", "not installed"))
        return
    conn.send(("ready", None))
    clock = time.perf_counter
    while True:
        msg = conn.recv()
        if msg is None:
            return
        inner, settle = msg
        # Settle: run the step itself for a while first. This wakes this
        # process's threads and caches after its idle wait, and outlasts the
        # spin-wait of the previous worker's threads (OpenBLAS spins ~0.1 s
        # after its last call), so the timed calls run on a quiet machine.
        stop = clock() + settle
        fn()
        while clock() < stop:
            fn()
        t0 = clock()
        for _ in range(inner):
            fn()
        conn.send((clock() - t0) / inner)


def interleaved(
    makers: dict[str, Maker], reps: int, inner: int = 1, settle: float = 0.25
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Seconds per call of each runner, measured round-robin, each in its own process.

    Every runner lives in a worker process of its own (``spawn``: a fresh
    interpreter, so each framework loads its own thread pools with its own
    defaults, and no framework's idle threads share a process with another's
    work). Each repetition asks every worker in turn for one timed sample of
    ``inner`` calls, preceded by ``settle`` seconds of untimed calls; only one
    worker runs at a time, and a burst of outside load hits all of them alike.

    Returns the samples and ``{name: reason}`` for runners that were skipped.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    workers: dict[str, tuple] = {}
    skipped: dict[str, str] = {}
    try:
        for name, maker in makers.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, maker), daemon=True)
            proc.start()
            child.close()
            try:
                status, why = parent.recv()
            except EOFError:
                status, why = "skip", "worker exited while setting up"
            if status == "ready":
                workers[name] = (proc, parent)
            else:
                skipped[name] = why
                proc.join()
        out: dict[str, list[float]] = {k: [] for k in workers}
        for _ in range(reps):
            for name, (_proc, conn) in workers.items():
                conn.send((inner, settle))
                try:
                    out[name].append(conn.recv())
                except EOFError:
                    raise RuntimeError(f"the worker timing {name!r} died; its traceback "
                                       "is printed above") from None
        return out, skipped
    finally:
        for proc, conn in workers.values():
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def in_process(maker: Maker) -> object:
    """Call ``module.function(*args)`` in a fresh process and return its (picklable) result."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_call, maker).result()


def _call(maker: Maker) -> object:
    import importlib

    mod, func, args = maker
    return getattr(importlib.import_module(mod), func)(*args)


def median(xs: list[float]) -> float:
    return statistics.median(xs)
