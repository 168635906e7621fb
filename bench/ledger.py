"""What the ledger costs: nothing when unused, and cr.explain on a real MLP.

On the 784-256-256-10 ReLU MLP at batch 128 (float32, softmax cross-entropy):

* ``step``: a training step's forward + backward (fused Linear+ReLU, as in
  training), the anchor. With ``--baseline-src PATH`` (a ``src`` directory
  of another chainrule, e.g. ``git archive main`` unpacked), the same step
  and forward run with that tree too, in the same round-robin: the ledger
  must not slow ``backward()`` or ``Module.__call__`` when it is not used.
* ``forward``: the forward pass alone (the cost of the module-call path,
  which checks for forward hooks); ``backward``: ``backward(retain_graph=True)``
  on one recorded graph, again and again (the walk alone).
* ``explain``: the forward pass inside ``cr.keep_values()`` and
  ``cr.explain(loss, model=model)`` with its layer records (the target is
  under 1 s); ``explain+neurons`` adds the per-neuron sums of the notes.

Run: ``python -m bench.ledger [--reps 15] [--threads 2] [--baseline-src PATH]``.
Times are medians of round-robin samples, each runner in its own process
(see ``bench._env.interleaved``); compare them within one run only. On a
busy host, ``--instructions`` counts instructions per ``backward()`` and per
forward pass under callgrind instead (load-independent; needs valgrind).
"""

from __future__ import annotations

import argparse
import sys

SIZES = (784, 256, 256, 10)
BATCH = 128


def make_runner(what: str, src: str | None = None, sizes: tuple = SIZES,
                batch: int = BATCH) -> object:
    """The zero-argument callable to time (built in the worker process)."""
    if src:
        sys.path.insert(0, src)  # this chainrule, not the installed one
    import numpy as np

    import chainrule as cr

    nn = cr.nn
    cr.manual_seed(0)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    rng = np.random.default_rng(0)
    x = cr.tensor(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = rng.integers(0, sizes[-1], size=batch)
    loss_fn = nn.CrossEntropyLoss()

    if what == "step":
        def run() -> None:
            model.zero_grad()
            loss_fn(model(x), y).backward()
    elif what == "forward":
        def run() -> None:
            loss_fn(model(x), y)
    elif what == "backward":
        loss = loss_fn(model(x), y)  # one graph, walked again and again: backward() alone

        def run() -> None:
            loss.backward(retain_graph=True)
    elif what in ("explain", "explain+neurons"):
        neurons = what == "explain+neurons"

        def run() -> None:
            with cr.keep_values():
                loss = loss_fn(model(x), y)
            cr.explain(loss, model=model, neurons=neurons)
    else:
        raise ValueError(f"make_runner: unknown runner {what!r}")
    return run


_COUNTED = """
import sys
src, what, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
if src != "-":
    sys.path.insert(0, src)
import numpy as np
import chainrule as cr
nn = cr.nn
cr.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
x = cr.tensor(np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32))
y = np.arange(16) % 10
loss_fn = nn.CrossEntropyLoss()
loss = loss_fn(model(x), y)
loss.backward(retain_graph=True)
for _ in range(k):
    if what == "backward":
        loss.backward(retain_graph=True)
    elif what == "step":
        model.zero_grad()
        loss_fn(model(x), y).backward()
    else:
        loss_fn(model(x), y)
"""


def instructions(src: str | None, what: str, k: int = 200) -> float:
    """Instructions per call of ``what`` under callgrind: "step" (zero_grad, forward,
    backward), "forward", or "backward" (again on one retained graph).

    A count, not a time: the same on a busy host as on a quiet one, so two
    source trees can be compared however loaded the machine is. A 64-32-32-10
    ReLU MLP at batch 16 (small, because callgrind runs ~50x slower); the
    count of a run with ``k`` calls minus that of a run with none, over ``k``.
    """
    import os
    import re
    import subprocess

    def count(n: int) -> int:
        env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             "-c", _COUNTED, src or "-", what, str(n)],
            capture_output=True, text=True, env=env, check=True)
        return int(re.search(r"Collected : (\d+)", proc.stderr).group(1))

    return (count(k) - count(0)) / k


def measure(reps: int = 15, settle: float = 0.25, baseline: str | None = None,
            neurons: bool = True) -> tuple[dict[str, float], dict[str, str]]:
    """Median seconds per call of each runner (and why any was skipped)."""
    from ._env import interleaved, median

    makers = {"step": ("bench.ledger", "make_runner", ("step", None)),
              "forward": ("bench.ledger", "make_runner", ("forward", None)),
              "backward": ("bench.ledger", "make_runner", ("backward", None)),
              "explain": ("bench.ledger", "make_runner", ("explain", None))}
    if neurons:
        makers["explain+neurons"] = ("bench.ledger", "make_runner", ("explain+neurons", None))
    if baseline:
        makers["step (baseline)"] = ("bench.ledger", "make_runner", ("step", baseline))
        makers["forward (baseline)"] = ("bench.ledger", "make_runner", ("forward", baseline))
        makers["backward (baseline)"] = ("bench.ledger", "make_runner", ("backward", baseline))
    samples, skipped = interleaved(makers, reps=reps, inner=3, settle=settle)
    return {k: median(v) for k, v in samples.items()}, skipped


def table(times: dict[str, float]) -> str:
    step = times["step"]
    lines = ["| runner | ms per call | ratio to this tree's step |", "|---|---:|---:|"]
    for name, t in times.items():
        lines.append(f"| {name} | {t * 1e3:.2f} | {t / step:.2f} |")
    if "step (baseline)" in times:
        lines.append("")
        for what in ("step", "forward", "backward"):
            if f"{what} (baseline)" in times:
                ratio = times[what] / times[f"{what} (baseline)"]
                lines.append(f"{what}: this tree / baseline = {ratio:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ledger",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settle", type=float, default=0.25)
    ap.add_argument("--baseline-src", default=None, metavar="PATH",
                    help="a chainrule src/ directory to time the step against")
    ap.add_argument("--instructions", action="store_true",
                    help="instead: count instructions per step, forward pass and backward() "
                    "under callgrind (needs valgrind; with --baseline-src, for both trees)")
    args = ap.parse_args(argv)
    if args.instructions:
        for what in ("step", "forward", "backward"):
            here = instructions(None, what)
            line = f"{what}: {here:,.0f} instructions per call"
            if args.baseline_src:
                base = instructions(args.baseline_src, what)
                line += f"; baseline {base:,.0f}; ratio {here / base:.4f}"
            print(line, flush=True)
        return
    from ._env import blas_settings, in_process, machine, pin_threads

    pin_threads(args.threads)
    times, skipped = measure(args.reps, args.settle, args.baseline_src)
    pools = in_process(("bench._env", "threads_report", ()))
    print(f"{machine()}\n{pools}\nOpenBLAS settings: {blas_settings()}")
    print(f"784-256-256-10 ReLU MLP, batch {BATCH}, float32, median of {args.reps} samples\n")
    print(table(times))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")


if __name__ == "__main__":
    main()
