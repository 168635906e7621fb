"""Per-op overhead: a chain of 1,000 elementwise ops, forward + backward.

``y = x; repeat 500 times: y = y * 0.999; y = y + 0.001``; then ``y.sum()``
and a backward pass. The time divided by 1,000 is the cost of one recorded op
(its forward, its node, its VJP and its step of the walk). On shape (1,) the
arithmetic is free, so this is the framework's own overhead; on (64, 64) the
NumPy work starts to show.

Run standalone: ``python -m bench.overhead [--reps 30] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

N_OPS = 1000
SHAPES = ((1,), (64, 64))


def _chain(y):  # works for chainrule, torch and autograd values alike
    for _ in range(N_OPS // 2):
        y = y * 0.999
        y = y + 0.001
    return y.sum()


NAMES = ("chainrule", "PyTorch eager", "HIPS autograd", "pure-Python scalars")


def _tape_runner(x):
    """The chain, forward + backward, for a framework whose tensors have .grad
    and .backward() (chainrule and PyTorch alike)."""

    def run() -> None:
        x.grad = None
        _chain(x).backward()

    return run


def make_runner(name: str, shape: tuple[int, ...]):
    """A zero-argument callable running the chain forward + backward in one
    framework, or None when that framework is not installed (or, for the
    pure-Python engine, when the shape is not a single scalar)."""
    import numpy as np

    if name == "chainrule":
        import chainrule as cr

        return _tape_runner(cr.tensor(np.ones(shape, dtype=np.float32), requires_grad=True))
    if name == "PyTorch eager":
        try:
            import torch
        except ImportError:
            return None
        return _tape_runner(torch.ones(shape, dtype=torch.float32, requires_grad=True))
    if name == "HIPS autograd":
        try:
            import autograd
        except ImportError:
            return None
        xa = np.ones(shape, dtype=np.float32)
        grad_fn = autograd.grad(_chain)
        return lambda: grad_fn(xa)
    if name == "pure-Python scalars":
        if shape != (1,):
            return None
        return lambda: _chain_scalar(Scalar(1.0)).backward()
    raise ValueError(f"unknown framework {name!r}")


# ---------------------------------------------------------------------------
# A micrograd-style engine on Python floats: the floor for "a node per op in
# pure Python". Written here so the suite needs nothing extra installed.
# ---------------------------------------------------------------------------


class Scalar:
    __slots__ = ("v", "g", "parents", "local")

    def __init__(self, v: float, parents: tuple = (), local: tuple = ()) -> None:
        self.v = v
        self.g = 0.0
        self.parents = parents  # the inputs
        self.local = local  # d(self)/d(input) for each input

    def __mul__(self, c: float) -> Scalar:
        return Scalar(self.v * c, (self,), (c,))

    def __add__(self, c: float) -> Scalar:
        return Scalar(self.v + c, (self,), (1.0,))

    def backward(self) -> None:
        order, seen, stack = [], set(), [(self, False)]
        while stack:  # iterative post-order: no recursion limit
            node, done = stack.pop()
            if done:
                order.append(node)
            elif id(node) not in seen:
                seen.add(id(node))
                stack.append((node, True))
                stack.extend((p, False) for p in node.parents)
        self.g = 1.0
        for node in reversed(order):
            for p, d in zip(node.parents, node.local):
                p.g += node.g * d


def _chain_scalar(y: Scalar) -> Scalar:
    for _ in range(N_OPS // 2):
        y = y * 0.999
        y = y + 0.001
    return y


def measure(reps: int = 30, settle: float = 0.25) -> dict[tuple[int, ...], dict[str, float]]:
    """Median microseconds per op, per shape and framework, timed round-robin."""
    from ._env import interleaved, median

    results: dict[tuple[int, ...], dict[str, float]] = {}
    for shape in SHAPES:
        makers = {n: (__name__, "make_runner", (n, shape)) for n in NAMES}
        times, _ = interleaved(makers, reps=reps, settle=settle)
        # N_OPS chained ops plus the final sum
        results[shape] = {k: median(v) / (N_OPS + 1) * 1e6 for k, v in times.items()}
    return results


def faults_per_op(name: str, shape: tuple[int, ...], runs: int = 20) -> float | None:
    """Minor page faults per op of the chain, forward + backward, in this process.

    Run it in a fresh process (``_env.in_process``): the count depends on what
    the allocator did before. A fault per op means the allocator handed memory
    back to the system after one run and touches it again in the next: glibc
    trims the top of its heap when a backward pass frees many arrays at once.
    """
    import resource

    run = make_runner(name, shape)
    if run is None:
        return None
    run()  # warm up: first-call imports, caches
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(runs):
        run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return (after - before) / (runs * (N_OPS + 1))


_NUMPY_DOMAIN = 389047  # the tracemalloc domain NumPy reports its data buffers in


def chain_memory(name: str, shape: tuple[int, ...]) -> tuple[float, float] | None:
    """(bytes of arrays the recorded graph holds after the forward pass, peak
    bytes of one forward + backward run), beyond what was live before it.

    chainrule: ``tracemalloc``; the first figure counts NumPy's data buffers
    only (its own tracemalloc domain), the peak counts everything, Python
    objects included (each recorded op is a node, a few hundred bytes).
    PyTorch: the profiler's memory events, which see tensor storage only
    (not its C++ graph nodes), summed in order.
    """
    import gc
    import tracemalloc

    if name == "PyTorch eager":
        try:
            import torch
            from torch.profiler import ProfilerActivity, profile
        except ImportError:
            return None
        x = torch.ones(shape, dtype=torch.float32, requires_grad=True)
        for _ in range(3):
            _chain(x).backward()
        x.grad = None
        with _quiet_profiler(), profile(activities=[ProfilerActivity.CPU],
                                        profile_memory=True) as prof:
            y = _chain(x)
            mark = torch.ones(1)  # a marker allocation between forward and backward
            del mark
            y.backward()
        events = sorted((e for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]"), key=lambda e: e.start_ns())
        total = peak = after_forward = 0
        marker_seen = 0
        for e in events:
            total += e.nbytes()
            peak = max(peak, total)
            if e.nbytes() == 4 and not marker_seen:  # the 1-float marker
                marker_seen = 1
                after_forward = total - 4
        return float(after_forward), float(peak)
    run = make_runner(name, shape)
    if run is None:
        return None
    import chainrule as cr

    x = cr.tensor(np.ones(shape, np.float32), requires_grad=True)
    for _ in range(3):
        _chain(x).backward()
    x.grad = None
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, _NUMPY_DOMAIN)])
    base = tracemalloc.get_traced_memory()[0]
    y = _chain(x)
    after = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, _NUMPY_DOMAIN)])
    y.backward()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    held = sum(st.size_diff for st in after.compare_to(before, "filename"))
    return float(held), float(peak)


class _quiet_profiler:
    """The torch profiler prints start/stop lines on stderr; keep reports clean."""

    def __enter__(self):
        import os

        self._null = open(os.devnull, "w")  # noqa: SIM115
        self._fd = os.dup(2)
        os.dup2(self._null.fileno(), 2)

    def __exit__(self, *exc):
        import os

        os.dup2(self._fd, 2)
        os.close(self._fd)
        self._null.close()


def memory(shapes: tuple[tuple[int, ...], ...] = SHAPES,
           names: tuple[str, ...] = ("chainrule", "PyTorch eager")) -> dict:
    """Page faults per op and the chain's memory, each framework and shape
    measured in fresh processes of their own."""
    from ._env import in_process

    out: dict = {}
    for shape in shapes:
        for n in names:
            f = in_process((__name__, "faults_per_op", (n, shape)))
            m = in_process((__name__, "chain_memory", (n, shape)))
            if f is not None or m is not None:
                out[(shape, n)] = (f, m)
    return out


def memory_table(rows: dict) -> str:
    lines = ["| shape | framework | page faults per op | arrays held after forward (bytes) "
             "| peak, forward + backward (KiB) |", "|---|---|---:|---:|---:|"]
    for (shape, n), (f, m) in rows.items():
        ref = rows.get((shape, "PyTorch eager"), (None, None))[1]
        cells = []
        for k, unit in ((0, 1), (1, 1024)):
            if m is None:
                cells.append("n/a")
                continue
            v = m[k] / unit
            r = ref[k] / unit if ref else None
            cells.append((f"{v:,.0f}" if unit == 1 else f"{v:,.1f}")
                         + (f" ({v / r:.2f}x torch)" if r and n != "PyTorch eager" else ""))
        lines.append(f"| {shape} | {n} | {'n/a' if f is None else f'{f:.3f}'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: dict[tuple[int, ...], dict[str, float]]) -> str:
    names: list[str] = []
    for r in results.values():
        names += [n for n in r if n not in names]
    head = "| framework | " + " | ".join(f"shape {s}: µs/op" for s in results) + " |"
    lines = [head, "|---|" + "---:|" * len(results)]
    for n in names:
        cells = []
        for r in results.values():
            v = r.get(n)
            if v is None:
                cells.append("n/a")
                continue
            rel = r.get("PyTorch eager")
            cells.append(f"{v:.2f}" + (f" ({v / rel:.2f}x torch)" if rel else ""))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from ._env import pin_threads

    pin_threads(args.threads)
    print(table(measure(args.reps)))
    print()
    print(memory_table(memory()))


if __name__ == "__main__":
    if not __package__:  # `python bench/overhead.py`: make `bench` importable
        import os

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        __package__ = "bench"  # noqa: A001
        import bench  # noqa: F401
    main()
