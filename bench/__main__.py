"""``python -m bench [--quick] [--batch 32,128,1024] [--threads 2] [--out docs/benchmarks.md]``

Times chainrule (eager and compiled) against every peer that is installed, on
the same MLP training step, the same data and the same thread count,
interleaved round-robin in one process; prints the tables and writes them,
with the machine and versions, to a Markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no torch.compile")
    ap.add_argument("--batch", default="32,128,1024", help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=2, help="threads for every library")
    ap.add_argument("--reps", type=int, default=None, help="round-robin repetitions")
    ap.add_argument("--no-scaling", action="store_true", help="skip the scaling sweep")
    ap.add_argument("--out", default=None, help="write the report here (Markdown)")
    ap.add_argument("--settle", type=float, default=0.25,
                    help="seconds of untimed calls before each timed sample")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set an environment variable for the run, before any library loads "
                         "(an empty VALUE removes it); e.g. OPENBLAS_CORETYPE= lets OpenBLAS "
                         "choose its kernels for this CPU. Repeatable")
    args = ap.parse_args(argv)
    extra_env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--env expects NAME=VALUE, got {item!r}")
        extra_env[key] = value

    # Before anything loads NumPy/BLAS: every library gets the same threads,
    # and the worker processes inherit this environment.
    from ._env import pin_threads

    pin_threads(args.threads, extra_env)
    from . import mlp_step, overhead, scaling
    from ._env import blas_settings, in_process, machine

    batches = tuple(int(b) for b in args.batch.split(","))
    reps = args.reps or (5 if args.quick else 15)
    sections: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        sections.append(text)

    # ---- per-op overhead --------------------------------------------------
    emit("## Per-op overhead\n\nA chain of 1,000 elementwise ops (`y * 0.999`, `+ 0.001`) "
         "then `sum()`, forward + backward, µs per op (median).\n")
    emit(overhead.table(overhead.measure(reps=max(reps, 10), settle=args.settle)))
    emit("\nThe same chain's memory, each figure from a fresh process: minor page faults "
         "per op over 20 runs (the allocator touching memory it gave back to the system), "
         "and the peak bytes allocated during one run beyond what was live before it.\n")
    emit(overhead.memory_table(overhead.memory()))

    # ---- MLP step ----------------------------------------------------------
    results, skipped = mlp_step.measure(batches, reps, include_torch_compile=not args.quick,
                                        settle=args.settle)
    emit("\n## MLP training step (784-256-256-10, ReLU, float32, cross-entropy, SGD)\n")
    emit(_step_table(results))
    emit("\n" + _ratio_table(results))
    guards = {b: in_process((mlp_step.__name__, "guard_cost", (b,))) for b in batches}
    emit("\nGuards of the compiled step (the argument signature and every guard, checked "
         "before each replay), per call, timed in one process against the whole replay: "
         + ", ".join(f"B={b}: {g['guards'] * 1e6:.1f} us of {g['replay'] * 1e6:,.0f} us "
                     f"({g['guards'] / g['replay']:.1%})" for b, g in guards.items()) + ".")
    targets = _targets_table(results, guards)
    if targets:
        emit("\n`cr.compile`'s speed targets, in this run; the floor column is the same "
             "calls without chainrule (see the notes below).\n")
        emit(targets)
    if skipped:
        emit("\nSkipped: " + ", ".join(f"{k} ({why})" for k, why in skipped.items()) + ".")

    # ---- memory --------------------------------------------------------------
    emit("\n## Peak memory per step\n\nBytes allocated during one step beyond what was "
         "live before it: `tracemalloc` for NumPy-based code (NumPy reports its buffers to "
         "it); PyTorch's profiler memory events (every CPU allocation and free, summed "
         "in order) for PyTorch. JAX is not measured (XLA owns its buffers).\n")
    emit(_memory_table({b: in_process((mlp_step.__name__, "peak_memory", (b,)))
                        for b in batches}))

    # ---- scaling -------------------------------------------------------------
    if not args.no_scaling:
        rows = scaling.measure(reps=max(3, reps // 3), settle=args.settle)
        emit("\n## Scaling\n\nBatch size sweep at width 256, then width sweep at batch 128 "
             "(784-w-w-10). Steps/s (median) and peak memory per step.\n")
        emit(_scaling_table(rows))
        out_dir = os.path.dirname(args.out) if args.out else "docs"
        png = scaling.plot(rows, os.path.join(out_dir, "img", "bench-scaling.png")
                           if os.path.isdir(os.path.join(out_dir, "img")) else "bench-scaling.png")
        if png:
            rel = os.path.relpath(png, out_dir) if args.out else png
            emit(f"\n![steps/s vs batch and width]({rel})")

    sections.append(NOTES)
    threads = in_process(("bench._env", "threads_report", ()))
    header = _header(args, argv, machine(), threads, blas_settings(), reps)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + "\n" + "\n".join(sections) + "\n")
        print(f"\nwrote {args.out}")


NOTES = """
## Reading the results

- **Threads and isolation.** Every library gets the same thread count
  (`--threads`), set before import, and otherwise keeps its own defaults,
  including how its idle threads wait: what its users get. Frameworks do not
  share a process: each runs in a worker of its own, and only one works at a
  time. Each timed sample follows `--settle` seconds of untimed calls of the
  same step, which outlasts the previous worker's spinning threads (OpenBLAS
  spins about 0.1 s after its last call) and wakes the worker's own threads
  after its idle wait. Earlier versions of this suite ran every framework in
  one process with `OMP_WAIT_POLICY=PASSIVE` and `OPENBLAS_THREAD_TIMEOUT=1`
  to stop idle threads from spinning; that made PyTorch's OpenMP workers sleep
  and wake around every op, and PyTorch ran its B = 32 step about 3x slower
  than it does on its own: its figures from those runs are not comparable.
  Compare figures within one table, never across runs.
- **OpenBLAS kernels.** NumPy's matrix products run OpenBLAS kernels chosen
  when NumPy loads, or forced by `OPENBLAS_CORETYPE` (the header lists the
  environment's setting and the kernels in use). JAX and PyTorch bring their
  own. `--env OPENBLAS_CORETYPE=` removes the variable for a run, so that
  OpenBLAS picks the kernels for this CPU; the roofline and the hand-written
  NumPy step move with it, so read chainrule against those in the same run.
- **Spinning BLAS threads and the work between products.** After each
  matrix product OpenBLAS keeps its worker threads spinning for about 0.1 s
  (its default `OPENBLAS_THREAD_TIMEOUT`), ready for the next one. On this
  shared two-vCPU machine that helps or hurts depending on the host's load.
  Measured standalone, one framework per process, the compiled step with
  `OPENBLAS_THREAD_TIMEOUT=1` (threads sleep at once; read when NumPy
  loads) went from 1,678 / 818 / 149 to 2,216 / 990 / 168 steps/s at
  B = 32 / 128 / 1024 on a busy spell, before SGD(fused=True) (the spinning
  slowed the elementwise work between products, e.g. the SGD update from 55
  to 130 us at B = 128), and from 3,494-3,517 / 1,291-1,298 / 190-197 to 2,279-2,387 / 1,058-1,091 /
  185 on a quiet one (every product then pays for waking the threads). The
  tables here keep OpenBLAS's default, as a user gets it; try both on your
  machine (`--env OPENBLAS_THREAD_TIMEOUT=1`).
- **What `chainrule compiled` does.** `cr.compile(step)` records the whole
  step once as a tape (every op, the backward program, the zero_grad and
  optimizer-step calls, random draws), checks one replay against an eager run
  bit for bit, and from then on checks its guards and replays the tape: each
  rule's forward and VJP on plain arrays, the SGD step as a precompiled
  update, no Tensors, no graph, no step Python (see `docs/compile.md`). The
  Linear layers and the loss run as kernels that write into arrays kept from
  one replay to the next, which is why its peak memory per step is tens of
  KiB where eager mode allocates every output and gradient anew. What
  remains is NumPy's own work, so at large batches it converges on eager mode
  and on the hand-written NumPy step. `chainrule compiled, fused update` is
  `cr.compile(step, fused_update=True)`: each Linear layer is updated inside
  the backward pass by one GEMM with beta = 1 (the bias by a GEMV), so the
  weight gradient is never written and read again; not bit-identical to
  eager mode, and `.grad` stays empty.
- **Targets.** `cr.compile` was rebuilt (guards, kernels, the generated
  replay) against four targets, checked in every run: the default compiled
  step at 75% of the same-run roofline at B = 32 and 88% at B = 1024, the
  fused update at 85% at B = 32, and the guards at no more than 3% of a
  B = 32 replay. Read the B = 32 figures with the floors beside them: a
  target above the floor cannot be met by trimming chainrule's Python, and
  the host's drift moves both by a few points between runs.
- **Alignment.** chainrule allocates every `nn.Parameter`'s data and the
  arrays its compiled kernels keep 64-byte aligned (a cache line), as
  PyTorch aligns its tensors; NumPy aligns a new array to 16 bytes only, so
  the roofline's and the hand-written step's arrays start wherever malloc
  puts them, and an array off a cache line makes each vector load or store
  of an elementwise loop, an `axpy` or a product's output touch two lines.
  The floors allocate as chainrule does. `NumPy GEMM-only, 64-byte aligned`
  is the roofline on aligned arrays: the targets are set against the
  roofline as NumPy allocates (as they were defined), and the targets table
  shows each result against the aligned row too.
- **The NumPy floors.** `NumPy floor (compiled's calls)` makes exactly the
  NumPy and BLAS calls of the compiled replay (its kernels' layouts and
  `out=` arrays, its loss, its SGD update) and nothing else: no guards, no
  tape, no Tensors, no gradient store; `NumPy floor (fused update's calls)`
  does the same for `fused_update=True`. A test checks that each computes
  chainrule's numbers bit for bit. They are what the compiled step would
  reach if its own Python cost nothing: the distance from a floor to the
  roofline is NumPy's elementwise work (bias, ReLU and its mask, delta, the
  loss, the SGD update, one call of about a microsecond each at small
  batches), the distance from chainrule's row to its floor is chainrule's
  Python (guards, the replay function, kernels, the gradient store).
- **Per-op overhead** on shape (1,) is pure framework cost; on (64, 64) the
  NumPy arithmetic and allocation of each op start to show. Each recorded op
  keeps only what its backward reads (docs/saved-tensors.md): `y * 0.999`
  keeps the constant, `+ 0.001` nothing, so the chain's intermediate arrays
  die as the loop runs and the recorded graph holds no array at the end of
  the forward pass. Before that, every node kept its value: the chain held
  1,000 intermediate 16 KiB arrays until backward, glibc handed their pages
  back to the system when backward freed them, and every run faulted them in
  again (3.6 minor faults per op, 10-17 us per op in a fresh process). The
  page-fault column measures exactly that, and no allocator setting is
  needed (setting `MALLOC_TRIM_THRESHOLD_` alone switches off glibc's dynamic
  mmap threshold, and a compiled MLP step then took 197 faults per step).
  The peak column counts everything `tracemalloc` sees: for chainrule that
  is mostly Python objects, one node per recorded op (about 315 bytes); the
  torch profiler sees tensor storage only, not PyTorch's own C++ graph nodes.
- **Peak memory.** Bytes allocated during one step beyond what was live
  before it. `nn.Sequential` fuses each Linear + ReLU into one `linear_relu`
  node, so the pre-activation z never exists as a separate array; each node
  keeps only what its backward reads, so an activation is freed once the
  next layer's backward has used it; `linear_relu` forms delta = g * mask
  and frees the mask before it allocates the weight gradient. The peak comes
  as the first layer's weight gradient is allocated; the arrays alive then
  are PyTorch's too: every parameter's gradient and the first layer's delta
  (at B = 32, 1,052 + 32 KiB). What chainrule shows above PyTorch's figure at
  small batches, about 5.5 KiB, is Python objects (the backward walk's table
  and heap, the graph's nodes): `tracemalloc` counts them, the torch profiler
  counts only tensor storage (PyTorch's own graph nodes are C++ allocations
  it does not see). A `tracemalloc` snapshot at that moment, split by
  NumPy's tracemalloc domain, shows the two parts. The profiler's figure is
  itself unsteady: within one process it sometimes counts the previous
  step's gradients being freed and sometimes not (e.g. 1.21 or 0.41 MB at
  B = 128), and now and then it reports 0; treat a 0.00 as "not measured".
"""


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def _step_table(results: dict[int, dict[str, float]]) -> str:
    names: list[str] = []
    for r in results.values():
        names += [n for n in r if n not in names]
    roof = "NumPy GEMM-only (roofline)"
    lines = ["| steps/s (median) | " + " | ".join(f"B={b}" for b in results) + " |",
             "|---|" + "---:|" * len(results)]
    for n in names:
        cells = []
        for r in results.values():
            v = r.get(n)
            if v is None:
                cells.append("n/a")
            else:
                frac = f" ({v / r[roof]:.0%} of roofline)" if roof in r and n != roof else ""
                cells.append(_fmt(v) + frac)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_table(results: dict[int, dict[str, float]]) -> str:
    ours = ("chainrule eager", "chainrule compiled", "chainrule compiled, fused update")
    peers = ["PyTorch eager", "torch.compile", "JAX jit", "scikit-learn partial_fit",
             "NumPy hand-written"]
    floors = {"chainrule compiled": "NumPy floor (compiled's calls)",
              "chainrule compiled, fused update": "NumPy floor (fused update's calls)"}
    lines = ["| speed ratio (higher: chainrule faster) | "
             + " | ".join(f"B={b}" for b in results) + " |", "|---|" + "---:|" * len(results)]
    for o in ours:
        for p in peers:
            cells = [f"{r[o] / r[p]:.2f}x" if o in r and p in r else "n/a"
                     for r in results.values()]
            if any(c != "n/a" for c in cells):
                lines.append(f"| {o} / {p} | " + " | ".join(cells) + " |")
    for o, f in floors.items():  # each against the same calls without the framework
        cells = [f"{r[o] / r[f]:.0%}" if o in r and f in r else "n/a" for r in results.values()]
        if any(c != "n/a" for c in cells):
            lines.append(f"| {o} / {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# cr.compile's speed targets: (row, batch, at least this fraction of the roofline, its floor)
TARGETS = (
    ("chainrule compiled", 32, 0.75, "NumPy floor (compiled's calls)"),
    ("chainrule compiled", 1024, 0.88, "NumPy floor (compiled's calls)"),
    ("chainrule compiled, fused update", 32, 0.85, "NumPy floor (fused update's calls)"),
)
GUARD_TARGET = 0.03  # of a replay at B = 32
# the same products on 64-byte aligned arrays, as chainrule allocates its own (shown
# beside each target, which is set against the roofline as NumPy allocates)
ALIGNED = "NumPy GEMM-only, 64-byte aligned"


def _targets_table(results: dict[int, dict[str, float]], guards: dict[int, dict[str, float]]
                   ) -> str:
    """Each target of ``TARGETS`` (and the guards' cost) that this run measured:
    the fraction reached, its floor's, and whether it is met."""
    roof = "NumPy GEMM-only (roofline)"
    lines = ["| target | this run | floor | of the aligned GEMM-only row | |",
             "|---|---:|---:|---:|---|"]
    for name, b, want, floor in TARGETS:
        r = results.get(b, {})
        if name not in r or roof not in r:
            continue
        got = r[name] / r[roof]
        fl = f"{r[floor] / r[roof]:.1%}" if floor in r else "n/a"
        al = f"{r[name] / r[ALIGNED]:.1%}" if ALIGNED in r else "n/a"
        lines.append(f"| {name} >= {want:.0%} of the roofline at B={b} | {got:.1%} | {fl} | "
                     f"{al} | " + ("met" if got >= want else "**not met**") + " |")
    g = guards.get(32)
    if g:
        got = g["guards"] / g["replay"]
        lines.append(f"| guards <= {GUARD_TARGET:.0%} of a replay at B=32 | {got:.1%} | | | "
                     + ("met" if got <= GUARD_TARGET else "**not met**") + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _memory_table(mem: dict[int, dict[str, float]]) -> str:
    names: list[str] = []
    for r in mem.values():
        names += [n for n in r if n not in names]
    # KiB, not MiB: at small batches the differences are a few KiB
    lines = ["| peak KiB per step | " + " | ".join(f"B={b}" for b in mem) + " |",
             "|---|" + "---:|" * len(mem)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(
            f"{r[n] / 1024:,.1f}" if n in r else "n/a" for r in mem.values()) + " |")
    ours, peer = "chainrule eager", "PyTorch eager"
    if all(ours in r and r.get(peer) for r in mem.values()):
        lines.append(f"| {ours} / {peer} | " + " | ".join(
            f"{r[ours] / r[peer]:.3f}x" for r in mem.values()) + " |")
    return "\n".join(lines)


def _scaling_table(rows: list[dict]) -> str:
    names = [k for k in rows[0] if k not in ("batch", "width") and not k.startswith("mem ")]
    head = ("| batch | width | " + " | ".join(f"{n} steps/s" for n in names) + " | "
            + " | ".join(f"{n} MiB" for n in names) + " |")
    lines = [head, "|---:|---:|" + "---:|" * (2 * len(names))]
    for r in rows:
        cells = [_fmt(r[n]) if n in r else "n/a" for n in names]
        cells += [f"{r['mem ' + n] / 2**20:.2f}" if "mem " + n in r else "n/a" for n in names]
        lines.append(f"| {r['batch']} | {r['width']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _header(args, argv, machine: str, threads: str, blas: str, reps: int) -> str:
    import platform

    import numpy as np

    vers = [f"Python {platform.python_version()}", f"NumPy {np.__version__}"]
    for mod in ("torch", "jax", "sklearn", "autograd"):
        try:
            m = __import__(mod)
            v = getattr(m, "__version__", None)
            if v is None:
                from importlib.metadata import version

                v = version(mod)
            vers.append(f"{mod} {v}")
        except Exception:
            vers.append(f"{mod} not installed")
    import chainrule

    vers.insert(0, f"chainrule {chainrule.__version__}")
    cmd = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "# Benchmarks\n\n"
        f"- **Command**: `{cmd.strip()}` (from the repository root)\n"
        f"- **Date**: {now}\n"
        f"- **Machine**: {machine}\n"
        f"- **Versions**: {', '.join(vers)}\n"
        f"- **Threads**: {args.threads} for every library, set through OMP_NUM_THREADS, "
        f"OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and XLA_FLAGS before NumPy, PyTorch or JAX "
        f"load; each library's own spin/sleep defaults otherwise. Pools as loaded: {threads}\n"
        f"- **OpenBLAS settings in the environment**: {blas}\n"
        f"- **Method**: every framework runs the same step on the same batch, each in a "
        f"worker process of its own; one repetition asks each worker in turn for one timed "
        f"sample after {args.settle:g} s of untimed calls (round-robin, {reps} repetitions), "
        "so only one framework runs at a time and load from elsewhere on the machine hits "
        "all of them alike; figures are medians. Compare figures within one table only.\n"
    )


if __name__ == "__main__":
    main()
