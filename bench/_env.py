"""Thread control, timing and machine facts shared by the benchmarks.

Call :func:`pin_threads` before anything imports NumPy, PyTorch or JAX: the
BLAS libraries read their thread counts once, when they are loaded.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def pin_threads(n: int) -> None:
    """Give every library the same ``n`` threads (set before their import)."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    # XLA's CPU client sizes its pool from the visible cores; say it explicitly.
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} "
        f"intra_op_parallelism_threads={n}",
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Frameworks take turns in one process (round-robin). OpenMP workers that
    # spin-wait after a parallel region (PyTorch's, OpenBLAS built with
    # OpenMP) would keep both cores busy while the next framework runs, and
    # every framework would be timed against the previous one's idle spinners.
    # Passive waiting makes threads sleep between regions.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")


def threads_report() -> str:
    """What the loaded BLAS pools actually use (threadpoolctl), in one line."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    seen = []
    for info in threadpool_info():
        seen.append(f"{info.get('internal_api')}={info.get('num_threads')}")
    return ", ".join(sorted(set(seen))) or "no BLAS pool found"


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


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, inner: int = 1, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin.

    Each repetition times every function once (``inner`` calls in a row), in
    turn, so a burst of load from elsewhere on the machine hits all of them
    alike instead of whichever happened to be running.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    clock = time.perf_counter
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = clock()
            for _ in range(inner):
                fn()
            out[name].append((clock() - t0) / inner)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)
