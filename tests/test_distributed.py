"""chainrule.distributed: data-parallel training over MPI.

Most checks launch real MPI jobs (``mpiexec -n 2`` and ``-n 3`` running
``tests/mpi_worker.py``) and read what each rank wrote; every launch has a
timeout, so a hang fails the test instead of stalling the suite. The sampler,
the bucket rule, the launcher environment and the import guard are checked
in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, in this venv
    if beside.exists():
        return str(beside)
    return shutil.which("mpiexec")


def _have_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None or not _have_mpi4py(),
                               reason='needs mpi4py and mpiexec: pip install "chainrule[mpi]"')


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("CHAINRULE_DIST_TIMEOUT", None)
    env.update(extra)
    return env


def mpirun(n: int, args: list[str], timeout: float = 120, cwd: Path | None = None,
           **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``mpiexec -n n ARGS``; (result, seconds). A hang fails the test."""
    t0 = time.perf_counter()
    try:
        res = subprocess.run([MPIEXEC, "-n", str(n), *args], capture_output=True, text=True,
                             timeout=timeout, env=_env(**env), cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpiexec -n {n} {' '.join(args)} did not finish within {timeout} s "
                    f"(hang)\n{exc.stdout}\n{exc.stderr}")
    return res, time.perf_counter() - t0


def run_worker(n: int, scenarios: str, out: Path, *extra: str, timeout: float = 120
               ) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    res, _ = mpirun(n, [sys.executable, str(WORKER), scenarios, str(out), *extra],
                    timeout=timeout)
    assert res.returncode == 0, f"workers failed:\n{res.stdout}\n{res.stderr}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


# ---------------------------------------------------------------------------
# MPI jobs: DistributedDataParallel
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[2, 3], ids=["n2", "n3"])
def ddp_ranks(request, tmp_path_factory) -> list[dict]:
    if MPIEXEC is None or not _have_mpi4py():
        pytest.skip('needs mpi4py and mpiexec: pip install "chainrule[mpi]"')
    out = tmp_path_factory.mktemp(f"ddp{request.param}")
    return run_worker(request.param, "equivalence,accumulate,compiled,collectives,unused,"
                      "mismatch", out)


def test_n_ranks_equal_one_process_sgd_momentum_and_adam_float64(ddp_ranks):
    for rank in ddp_ranks:
        for opt in ("sgd_momentum", "adam"):
            r = rank["equivalence"][opt]
            # 20 steps; the sum orders differ (see ddp.py), so rounding, not bits
            assert r["max_diff"] < 1e-12, (rank["rank"], opt, r)
            assert r["replicas_identical"], (rank["rank"], opt)
            assert r["buckets"] == 3  # several buckets, each started from a hook


def test_no_sync_accumulates_locally_then_averages_the_sum(ddp_ranks):
    for rank in ddp_ranks:
        r = rank["accumulate"]
        assert r["no_sync_is_local"] == 0.0
        assert r["max_diff"] < 1e-14


def test_compiled_ddp_step_replays_the_reduction(ddp_ranks):
    for rank in ddp_ranks:
        r = rank["compiled"]
        assert r["stats"]["replayed"] >= 5, r["stats"]  # replayed, not run eagerly
        assert r["compiled_vs_eager_identical"]
        assert r["max_diff_vs_single"] < 1e-12
        assert r["replicas_identical"]


def test_collectives(ddp_ranks):
    n = len(ddp_ranks)
    for rank in ddp_ranks:
        c = rank["collectives"]
        assert c["sum"] == [n * k + n * (n - 1) / 2 for k in range(4)]
        assert c["max"] == [float(n)] * 3
        assert c["avg"] == [(n + 1) / 2] * 2
        assert c["prod"] == int(np.prod(np.arange(1, n + 1)))
        assert c["broadcast"] == [0.0, 1.0, 2.0]
        assert c["strided"] == [n * (n - 1) / 2] * 4


def test_unused_parameters_refused_then_averaged_with_zeros(ddp_ranks):
    n = len(ddp_ranks)
    for rank in ddp_ranks:
        u = rank["unused"]
        assert "do not depend on parameter(s) 'b.weight', 'b.bias'" in u["refused"]
        assert "find_unused_parameters=True" in u["refused"]
        # head a: rank 0 alone, x = 1, 2 rows; head b: ranks 1.., x = r + 1
        assert np.allclose(u["a_grad"], 2.0 / n)
        assert np.allclose(u["b_grad"], sum(2.0 * (r + 1) for r in range(1, n)) / n)


def test_mismatched_models_named_at_wrap_time(ddp_ranks):
    for rank in ddp_ranks:
        assert rank["mismatch"] == (
            "DistributedDataParallel: the models differ across ranks: parameter '0.weight' "
            "has shape (8, 4) on rank 0 but (9, 4) on rank 1. Every rank must build the same "
            "model (same layers, sizes and dtypes) before wrapping it.")


# ---------------------------------------------------------------------------
# MPI jobs: fit(distributed=True)
# ---------------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_fit_distributed_equals_one_process_and_writes_one_checkpoint(n, tmp_path):
    import chainrule as cr

    ranks = run_worker(n, "fit_equivalence", tmp_path)
    for rank in ranks:
        for batch, r in rank["fit"].items():
            # 203 samples: short last steps with unequal shares (and none for
            # some ranks at batch 25, n 3), all weighted exactly
            assert r["max_diff"] < 1e-12, (rank["rank"], batch, r)
            assert r["history_diff"] < 1e-12, (rank["rank"], batch, r)
            assert r["epochs"][0] == r["epochs"][1]  # early stopping decided the same
            assert r["replicas_identical"]
    saved = ranks[0]["fit"]
    writes = [rank["writes"] for rank in ranks]
    assert writes[0] and all(not w for w in writes[1:])  # rank 0 alone writes
    files = sorted(p.name for p in (tmp_path / "ckpt").glob("*.cr"))
    assert files == ["best-24.cr", "best-25.cr", "best-None.cr"]
    Xv = np.load(tmp_path / "ckpt" / "Xv.npy")
    for batch in saved:
        model = cr.load_model(tmp_path / "ckpt" / f"best-{batch}.cr")  # one process
        pred = np.load(tmp_path / "ckpt" / f"pred-{batch}.npy")
        assert np.array_equal(model(cr.tensor(Xv)).data, pred)


def _test_line(stdout: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("test ")]
    assert len(lines) == 1, stdout  # rank 0 alone reports
    return lines[0]


@needs_mpi
def test_cli_distributed_matches_single_process_on_digits_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(301, 4))
    label = np.where(X[:, 0] + 0.5 * X[:, 1] > 0.2, "yes", "no")
    csv = tmp_path / "table.csv"
    csv.write_text("a,b,c,d,label\n" + "".join(
        f"{a:.4f},{b:.4f},{c:.4f},{d:.4f},{lab}\n" for (a, b, c, d), lab in zip(X, label)))
    cli = [sys.executable, "-m", "chainrule", "train"]
    for n, data, extra in ((2, "digits", []), (3, str(csv), ["--batch-size", "16"])):
        common = [data, "--epochs", "4", "--quiet", *extra]
        single = subprocess.run([*cli, *common, "--out", str(tmp_path / "one")],
                                capture_output=True, text=True, timeout=120, env=_env())
        assert single.returncode == 0, single.stderr
        res, _ = mpirun(n, [*cli, *common, "--distributed", "--out", str(tmp_path / "dist")],
                        cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert _test_line(res.stdout) == _test_line(single.stdout)
        assert (tmp_path / "dist" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------
# MPI jobs: faults end the job, with a message, in bounded time
# ---------------------------------------------------------------------------


@needs_mpi
def test_a_rank_that_raises_stops_the_job(tmp_path):
    res, seconds = mpirun(3, [sys.executable, str(WORKER), "raises", str(tmp_path)], timeout=60)
    assert res.returncode != 0
    assert "ValueError: rank 1 fails on purpose" in res.stderr
    assert "rank 1 of 3 stopped on an uncaught ValueError; aborting all 3 ranks" in res.stderr
    assert seconds < 30


@needs_mpi
def test_a_killed_rank_stops_the_job(tmp_path):
    res, seconds = mpirun(3, [sys.executable, str(WORKER), "killed", str(tmp_path)], timeout=60)
    assert res.returncode != 0
    assert "signal 9" in (res.stdout + res.stderr).lower() or "killed" in res.stderr.lower()
    assert seconds < 30


@needs_mpi
def test_a_rank_missing_from_a_collective_hits_the_deadline(tmp_path):
    res, seconds = mpirun(2, [sys.executable, str(WORKER), "hang", str(tmp_path), "1.5"],
                          timeout=60)
    assert res.returncode != 0
    assert ("rank 0 of 2 waited 2 s in all_reduce(op='sum') of shape (3,) without the other "
            "ranks joining (timeout 1.5 s)") in res.stderr
    assert seconds < 30


@needs_mpi
def test_a_rank_that_never_starts_mpi_does_not_hang_the_others(tmp_path):
    res, seconds = mpirun(2, [sys.executable, str(WORKER), "no_init", str(tmp_path), "2"],
                          timeout=60)
    assert res.returncode != 0
    assert "chainrule.distributed: rank 0" in res.stderr
    assert "never started MPI" in res.stderr
    assert seconds < 30


@needs_mpi
def test_cli_rank_started_without_distributed_stops_the_job(tmp_path):
    res, seconds = mpirun(2, [sys.executable, "-m", "chainrule", "train", "--quiet", "--out",
                              str(tmp_path)], timeout=60)
    assert res.returncode != 0
    assert "one of 2 ranks started by mpiexec, but without --distributed" in res.stderr
    assert not (tmp_path / "model.safetensors").exists()


@needs_mpi
def test_launcher_and_mpi_disagree_on_the_world_size():
    code = "from chainrule import distributed as d; d.init()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=_env(PMI_SIZE="2"))
    assert res.returncode != 0
    assert "the launcher started 2 ranks, but MPI sees a world of 1" in res.stderr


@needs_mpi
def test_not_launched_is_a_world_of_one_with_a_warning():
    code = (
        "import warnings, numpy as np, chainrule as cr\n"
        "from chainrule import distributed as d, nn\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    d.init()\n"
        "print(d.rank(), d.world_size(), 'not started by an MPI launcher' in str(w[0].message))\n"
        "m = nn.Linear(2, 1); ddp = d.DistributedDataParallel(m)\n"
        "ddp(cr.ones((3, 2))).sum().backward()\n"
        "print(m.weight.grad.data.tolist(), d.all_reduce(np.arange(2.0)).tolist())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["0 1 True", "[[3.0, 3.0]] [0.0, 1.0]"]


def test_import_without_mpi4py_names_the_pip_install():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "try:\n    import chainrule.distributed\n"
            "except ImportError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert 'pip install "chainrule[mpi]"' in res.stdout, res.stdout + res.stderr


@needs_mpi
def test_init_guard_stops_a_rank_stuck_in_mpi_start_up():
    code = ("import time\nfrom chainrule.distributed import comm\n"
            "g = comm._start_init_guard(0.5, 4)\ntime.sleep(30)\n")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert res.returncode == -9
    assert "MPI did not finish starting within 0.5 s" in res.stderr
    assert time.perf_counter() - t0 < 20
    code = ("from chainrule.distributed import comm\n"
            "g = comm._start_init_guard(0.5, 4)\ng.stdin.close(); print(g.wait())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert res.returncode == 0 and res.stdout.strip() == "0"


# ---------------------------------------------------------------------------
# In-process: the sampler, the bucket rule, the launcher's environment
# ---------------------------------------------------------------------------


if _have_mpi4py():
    from chainrule.distributed import sampler as sampler_mod
else:  # pragma: no cover
    sampler_mod = None


@pytest.mark.skipif(sampler_mod is None, reason="needs mpi4py")
@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 33])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_are_disjoint_and_cover_every_epoch_and_seed(n, drop_last):
    DistributedSampler = sampler_mod.DistributedSampler  # noqa: N806
    data = range(n)
    for replicas in (1, 2, 3, 4, 5):
        for seed in (0, 1, 12345):
            for epoch in (0, 1, 5):
                shards = []
                for r in range(replicas):
                    s = DistributedSampler(data, replicas, r, seed=seed, drop_last=drop_last)
                    s.set_epoch(epoch)
                    idx = list(s)
                    assert len(idx) == len(s)
                    shards.append(idx)
                assert len({len(x) for x in shards}) == 1  # same number of steps everywhere
                flat = [i for x in shards for i in x]
                if drop_last:
                    assert len(set(flat)) == len(flat) == (n // replicas) * replicas
                else:
                    assert set(flat) == set(range(n))  # covers
                    if n >= replicas or n == 0:
                        # disjoint apart from the padding (fewer than `replicas` repeats)
                        assert len(flat) - len(set(flat)) < replicas


@pytest.mark.skipif(sampler_mod is None, reason="needs mpi4py")
def test_sampler_pads_and_strides_like_pytorch():
    torch_data = pytest.importorskip("torch.utils.data")
    for n in (1, 2, 10, 11, 13):
        for replicas in (2, 3, 4, 6):
            for drop_last in (False, True):
                for r in range(replicas):
                    ours = sampler_mod.DistributedSampler(range(n), replicas, r, shuffle=False,
                                                          drop_last=drop_last)
                    theirs = torch_data.DistributedSampler(range(n), replicas, r, shuffle=False,
                                                           drop_last=drop_last)
                    assert list(ours) == list(theirs), (n, replicas, r, drop_last)


@pytest.mark.skipif(sampler_mod is None, reason="needs mpi4py")
def test_sampler_orders_like_the_single_process_loader_and_rejects_bad_ranks():
    from chainrule.data import DataLoader

    X = np.arange(40.0).reshape(20, 2)
    y = np.arange(20)
    one = DataLoader((X, y), batch_size=6, seed=3)
    one.set_epoch(2)
    order = np.concatenate([yb.data for _, yb in one])
    shards = []
    for r in range(2):
        s = sampler_mod.DistributedSampler(range(20), 2, r, seed=3)
        loader = DataLoader((X, y), batch_size=3, sampler=s)
        loader.set_epoch(2)  # passed on to the sampler
        shards.append([yb.data for _, yb in loader])
    together = [np.concatenate([shards[0][k], shards[1][k]]) for k in range(len(shards[0]))]
    for k, batch in enumerate(together):
        assert sorted(batch) == sorted(order[6 * k:6 * k + 6])  # same samples per step
    with pytest.raises(ValueError, match=r"invalid rank 2; it must be in \[0, 1\]"):
        sampler_mod.DistributedSampler(range(5), 2, 2)
    with pytest.raises(ValueError, match="sampler and shuffle=True cannot be combined"):
        DataLoader((X, y), sampler=sampler_mod.DistributedSampler(range(20), 2, 0),
                   shuffle=True)


@pytest.mark.skipif(sampler_mod is None, reason="needs mpi4py")
def test_buckets_reverse_order_small_first_bucket_and_split_by_dtype():
    from chainrule import tensor
    from chainrule.distributed.ddp import _MB, _assign_buckets

    def p(n, dt=np.float32):
        return tensor(np.zeros(n, dt), requires_grad=True)

    # sizes in bytes: 4 MB, 0.5 MB, 0.75 MB, 4 B (float32)
    params = [p(_MB), p(_MB // 8), p(3 * _MB // 16), p(1)]
    assert _assign_buckets(params, 2 * _MB, 1 * _MB) == [[3, 2, 1], [0]]
    # 2 MB: the first bucket closes at >= 1 MB, the next ones at >= the cap
    params = [p(_MB // 4)] * 4 + [p(_MB // 4, np.float64)]
    assert _assign_buckets(params, 2 * _MB, 1 * _MB) == [[4], [3, 2], [1, 0]]
    # one open bucket per dtype: float32 and float64 never share one
    params = [p(64), p(64, np.float64), p(64), p(64, np.float64)]
    assert _assign_buckets(params, 2 * _MB, 1 * _MB) == [[3, 1], [2, 0]]


def test_blas_threads_per_rank_from_the_launcher_environment():
    from chainrule import _rank_env

    cores = len(os.sched_getaffinity(0))
    env = {"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALNRANKS": "2"}
    assert _rank_env.default_blas_threads(env) == max(1, min(cores, (os.cpu_count() or 1) // 2))
    assert env["OPENBLAS_NUM_THREADS"] == str(max(1, min(cores, (os.cpu_count() or 1) // 2)))
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_SIZE": "64"}
    assert _rank_env.default_blas_threads(env) == 1  # never below one
    chosen = {"PMI_RANK": "0", "MPI_LOCALNRANKS": "2", "OMP_NUM_THREADS": "3"}
    assert _rank_env.default_blas_threads(chosen) is None  # the user's choice stands
    assert _rank_env.default_blas_threads({"MPI_LOCALNRANKS": "2"}) is None  # not launched
    assert _rank_env.default_blas_threads({"PMI_RANK": "0", "MPI_LOCALNRANKS": "1"}) is None
    assert _rank_env.local_ranks({"SLURM_PROCID": "0", "PMIX_RANK": "0",
                                  "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}) == 4
    assert _rank_env.launcher_world_size({"OMPI_COMM_WORLD_SIZE": "8"}) == 8


def test_mpi4py_is_imported_by_one_module_only():
    src = HERE.parent / "src" / "chainrule"
    importers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                       if "import mpi4py" in p.read_text() or "from mpi4py" in p.read_text())
    assert importers == ["distributed/comm.py"]


def test_bench_alpha_beta_fit_and_report():
    root = str(HERE.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import distributed as bd

    sizes = [1e3, 1e4, 1e5, 1e6, 1e8]
    a, b = bd._fit_line(sizes, [5e-6 + 1e-9 * m for m in sizes])
    assert a == pytest.approx(5e-6) and b == pytest.approx(1e-9)
    ar = {"rows": [{"bytes": m, "allreduce": 2 * (5e-6 + 1e-9 * m), "best": 5e-6 + 1e-9 * m,
                    "copy": 5e-10 * m} for m in (1024, 1 << 20)]}
    run = {"cap_mb": 25.0, "compiled": False, "buckets": 1, "step": 0.02, "local": 0.018,
           "allreduce_alone": 0.004, "best_step": 0.015, "best_local": 0.014,
           "best_alone": 0.002, "grad_bytes": 1_077_288}
    one = {"runs": [dict(run, cap_mb=None, step=0.03, best_step=0.025)],
           "fit": [{"batch": bt, "step": 1e-3 + 3e-5 * bt, "best": 1e-3 + 2.5e-5 * bt}
                   for bt in (128, 1024)], "blas": "test"}
    text = bd.report(ar, one, {"runs": [run]}, 2)
    # hidden = 1 - (0.015 - 0.014) / 0.002 = 50 %; efficiency 0.025 / (2 * 0.015)
    assert "| 2 | 25 MB | 1 | eager | 20.00 / 15.00 ms |" in text
    assert "50 %" not in text and "| 50% |" not in text and "0% / 50%" in text
    assert "1.00 / 0.83" not in text and "0.75 / 0.83" in text
    assert "t0 = 1.000 ms, c = 25.00 µs per sample" in text
    assert "**100 Gb/s**" in text and "| 64 |" in text


@pytest.mark.skipif(sampler_mod is None, reason="needs mpi4py")
def test_model_mismatch_messages_name_the_first_difference():
    from chainrule.distributed.ddp import _first_difference

    ref = ["parameter 0.weight (8, 4) float32 1", "parameter 0.bias (8,) float32 1"]
    assert _first_difference(ref, ["parameter 0.weight (8, 4) float64 1", ref[1]], 2) == (
        "parameter '0.weight' is '(8, 4) float32 1' on rank 0 but '(8, 4) float64 1' on "
        "rank 2 (shape dtype requires_grad)")
    assert _first_difference(ref, ["parameter 1.weight (8, 4) float32 1", ref[1]], 1) == (
        "rank 0 has parameter '0.weight' where rank 1 has parameter '1.weight'")
    assert _first_difference(ref, ref[:1], 1) == (
        "rank 0 has 1 more tensor(s), starting with parameter '0.bias'")
    assert _first_difference(ref[:1], ref, 3) == (
        "rank 3 has 1 more tensor(s), starting with parameter '0.bias'")
