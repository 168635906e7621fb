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


if __name__ == "__main__":
    if not __package__:  # `python bench/overhead.py`: make `bench` importable
        import os

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        __package__ = "bench"  # noqa: A001
        import bench  # noqa: F401
    main()
