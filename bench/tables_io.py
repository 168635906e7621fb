"""Tables at scale: CSV loading speed, a 2 GB CSV trained in bounded memory, ONNX latency.

    python -m bench.tables_io load   [--rows 200000 --cols 31 --reps 5]
    python -m bench.tables_io stream [--size-gb 2 --chunk-rows 65536]
    python -m bench.tables_io onnx   [--reps 200]

* ``load``: a generated ``rows x cols`` numeric CSV (about 51 MB at the
  defaults) read by ``chainrule.data.load_csv`` against ``pandas.read_csv``
  on the same file, timed alternately; the target is a ratio within 2x.
* ``stream``: a generated CSV of ``--size-gb`` (31 columns, a binary label),
  one epoch of a 30-64-2 MLP through :class:`chainrule.data.CSVStream`
  (statistics pass, then training, then a validation pass), run in a child
  process whose peak resident memory (``ru_maxrss``) is reported; the
  target is under 1 GB. Also a ``.npy`` memory map of the same size class
  batched by a DataLoader.
* ``onnx``: inference latency of a 64-128-64-10 digits MLP, chainrule
  (``no_grad``, eval mode) against onnxruntime (one session, one thread and
  the default), at batch 1 and 1,797; medians.

Generated files live in a temporary directory that is removed afterwards.
Timings are on a shared, noisy host: compare the ratios, which are measured
in one run. The command line ``--env OPENBLAS_CORETYPE=`` unsets a variable
for the run (see bench/_env.py), and the report names OpenBLAS's kernel.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _kernel() -> str:
    try:
        from threadpoolctl import threadpool_info

        info = [f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, "
                f"{d.get('num_threads')} threads)" for d in threadpool_info()
                if d.get("user_api") == "blas"]
        return "; ".join(info) or "no BLAS found"
    except ImportError:
        return "threadpoolctl not installed"


def _write_numeric_csv(path: Path, rows: int, cols: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    header = ",".join([f"x{i}" for i in range(cols - 1)] + ["label"])
    with open(path, "w") as f:
        f.write(header + "\n")
        for start in range(0, rows, 50_000):
            n = min(50_000, rows - start)
            X = rng.standard_normal((n, cols - 1))
            y = (X[:, 0] + X[:, 1] > 0).astype(int)
            block = np.column_stack([X, y])
            np.savetxt(f, block, delimiter=",", fmt=["%.6f"] * (cols - 1) + ["%d"])


def bench_load(rows: int, cols: int, reps: int) -> None:
    import pandas as pd

    from chainrule.data import load_csv

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        _write_numeric_csv(path, rows, cols)
        size = path.stat().st_size / 1e6
        ours, theirs = [], []
        load_csv(path, target="label")  # warm the page cache and imports once
        pd.read_csv(path)
        for _ in range(reps):
            t = time.perf_counter()
            d = load_csv(path, target="label")
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            pd.read_csv(path)
            theirs.append(time.perf_counter() - t)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"file: {rows:,} rows x {cols} columns, {size:.1f} MB; X {d.X.shape} {d.X.dtype}")
        print(f"chainrule.data.load_csv: {a:.3f} s   pandas.read_csv: {b:.3f} s   "
              f"ratio {a / b:.2f}x (target: within 2x)   medians of {reps}")


_STREAM_CHILD = r"""
import resource, sys, time
import numpy as np
import chainrule as cr
import chainrule.nn.functional as F
from chainrule.data import CSVStream
path, chunk = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
train = CSVStream(path, target="label", batch_size=512, chunk_rows=chunk, seed=0).fit()
t1 = time.perf_counter()
cr.manual_seed(0)
model = cr.nn.Sequential(cr.nn.Linear(len(train.features), 64), cr.nn.ReLU(),
                         cr.nn.Linear(64, 2))
opt = cr.optim.Adam(model.parameters(), lr=1e-3)
h = cr.fit(model, F.cross_entropy, opt, train, val=train.validation(), epochs=1,
           progress=False)
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"statistics pass {t1 - t0:.1f} s; one epoch + validation {t2 - t1:.1f} s; "
      f"val_accuracy {h.history['val_accuracy'][-1]:.4f}; peak RSS {rss:.0f} MiB")
"""

_NPY_CHILD = r"""
import resource, sys, threading, time
import numpy as np

peak_anon = [0]


def sample():  # anonymous memory (what the process allocated), not the mapped file's pages
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak_anon[0] = max(peak_anon[0], int(line.split()[1]) // 1024)
        time.sleep(0.2)


threading.Thread(target=sample, daemon=True).start()
import chainrule as cr
import chainrule.nn.functional as F
from chainrule.data import DataLoader
X = np.load(sys.argv[1], mmap_mode="r")
y = np.load(sys.argv[2], mmap_mode="r")
cr.manual_seed(0)
model = cr.nn.Sequential(cr.nn.Linear(X.shape[1], 64), cr.nn.ReLU(), cr.nn.Linear(64, 2))
opt = cr.optim.Adam(model.parameters(), lr=1e-3)
t = time.perf_counter()
steps = int(sys.argv[3])
h = cr.fit(model, F.cross_entropy, opt, DataLoader((X, y), batch_size=512, seed=0),
           epochs=1, progress=False, max_steps=steps or None)
time.sleep(0.5)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f".npy memory map {X.nbytes / 2**30:.2f} GiB: {h.history['steps'][-1]} steps of 512 rows "
      f"in {time.perf_counter() - t:.1f} s; accuracy {h.history['accuracy'][-1]:.4f}; peak RSS "
      f"{rss:.0f} MiB (it counts the mapped file's pages, which the kernel can drop); peak "
      f"anonymous memory {peak_anon[0]} MiB")
"""


def bench_stream(size_gb: float, chunk_rows: int, npy_steps: int = 0,
                 csv: bool = True) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        rows = int(size_gb * 1e9 / 286)  # about 286 bytes a row at 31 columns
        if csv:
            t = time.perf_counter()
            _write_numeric_csv(path, rows, 31)
            print(f"generated {path.stat().st_size / 1e9:.2f} GB ({rows:,} rows x 31) in "
                  f"{time.perf_counter() - t:.0f} s")
            out = subprocess.run([sys.executable, "-c", _STREAM_CHILD, str(path),
                                  str(chunk_rows)], capture_output=True, text=True)
            print(out.stdout.strip() or out.stderr[-2000:])
            path.unlink()
        # the same order of size as a memory-mapped .npy (float32)
        n = int(size_gb * 2**30 / (30 * 4))
        Xp, yp = Path(tmp) / "X.npy", Path(tmp) / "y.npy"
        X = np.lib.format.open_memmap(Xp, mode="w+", dtype=np.float32, shape=(n, 30))
        y = np.lib.format.open_memmap(yp, mode="w+", dtype=np.int64, shape=(n,))
        rng = np.random.default_rng(0)
        for s in range(0, n, 1_000_000):
            block = rng.standard_normal((min(1_000_000, n - s), 30)).astype(np.float32)
            X[s:s + len(block)] = block
            y[s:s + len(block)] = block[:, 0] + block[:, 1] > 0
        del X, y
        out = subprocess.run([sys.executable, "-c", _NPY_CHILD, str(Xp), str(yp),
                              str(npy_steps)],
                             capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr[-2000:])
    print("target: peak RSS under 1 GB (1024 MiB)")


def bench_onnx(reps: int) -> None:
    import onnxruntime as ort

    import chainrule as cr

    cr.manual_seed(0)
    model = cr.nn.Sequential(cr.nn.Linear(64, 128), cr.nn.ReLU(), cr.nn.Linear(128, 64),
                             cr.nn.ReLU(), cr.nn.Linear(64, 10))
    model.eval()
    X_all = cr.data.load_digits()[0]

    def median_us(fn: Any) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e6

    # Each runtime timed in a block of its own: onnxruntime's pool threads spin
    # after every run, and interleaved with NumPy's OpenBLAS threads on two
    # cores they slow each other down (the same effect as in docs/benchmarks.md).
    results: dict[int, dict[str, float]] = {1: {}, 1797: {}}
    for batch in results:
        X = np.ascontiguousarray(X_all[:batch])

        def ours(X: np.ndarray = X) -> None:
            with cr.no_grad():
                model(cr.tensor(X))

        results[batch]["chainrule no_grad"] = median_us(ours)
    with tempfile.TemporaryDirectory() as tmp:
        path = cr.onnx.export(model, Path(tmp) / "m.onnx", opset=17)
        for label, threads in (("onnxruntime (1 thread)", 1), ("onnxruntime (default)", 0)):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            for batch in results:
                X = np.ascontiguousarray(X_all[:batch])
                results[batch][label] = median_us(lambda s=sess, X=X: s.run(["output"],
                                                                             {"input": X}))
            del sess
    for batch, times in results.items():
        base = times["chainrule no_grad"]
        print(f"batch {batch}: " + "; ".join(
            f"{k} {v:,.1f} us ({base / v:.2f}x chainrule's speed)" for k, v in times.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("load", "stream", "onnx"))
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=31)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--chunk-rows", type=int, default=65536)
    ap.add_argument("--npy-steps", type=int, default=0,
                    help="stream: stop the .npy epoch after this many steps (0: a full epoch)")
    ap.add_argument("--no-csv", dest="csv", action="store_false",
                    help="stream: only the .npy memory map")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set (or with an empty value, unset) a variable for this run")
    args = ap.parse_args()
    for item in args.env:
        k, _, v = item.partition("=")
        if v:
            os.environ[k] = v
        else:
            os.environ.pop(k, None)
    print(f"OpenBLAS: {_kernel()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    if args.what == "load":
        bench_load(args.rows, args.cols, args.reps)
    elif args.what == "stream":
        bench_stream(args.size_gb, args.chunk_rows, args.npy_steps, args.csv)
    else:
        bench_onnx(args.reps if args.reps > 5 else 200)
    print(f"this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
          " MiB")


if __name__ == "__main__":
    main()
