"""The benchmark suite's own machinery: isolated timing workers, and that every
framework's step computes the same training step (else the table compares
different work)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import chainrule as cr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `bench` lives at the repository root, beside `src`
    sys.path.insert(0, ROOT)

from bench import _env, mlp_step  # noqa: E402


def test_interleaved_times_each_runner_in_its_own_process_and_names_what_it_skipped():
    makers = {
        "scalars": ("bench.overhead", "make_runner", ("pure-Python scalars", (1,))),
        # the pure-Python engine has no (64, 64) version: its maker returns None
        "absent": ("bench.overhead", "make_runner", ("pure-Python scalars", (64, 64))),
        "broken": ("bench.overhead", "make_runner", ("no such framework", (1,))),
    }
    times, skipped = _env.interleaved(makers, reps=3, inner=2, settle=0.0)
    assert list(times) == ["scalars"]
    assert len(times["scalars"]) == 3 and all(0 < t < 1 for t in times["scalars"])
    assert skipped["absent"] == "not installed"
    assert "ValueError" in skipped["broken"] and "no such framework" in skipped["broken"]


def test_a_worker_that_dies_while_timing_is_named():
    # iter([]) builds fine but is not callable: the worker dies at its first call
    makers = {"not callable": ("builtins", "iter", ([],))}
    with pytest.raises(RuntimeError, match="'not callable' died"):
        _env.interleaved(makers, reps=1, settle=0.0)


def test_in_process_returns_the_result_of_a_call_in_a_fresh_interpreter():
    assert _env.in_process(("bench.mlp_step", "inner_calls", (32,))) == 64
    # the child sees the parent's environment (thread settings reach the workers)
    os.environ["CHAINRULE_BENCH_PROBE"] = "42"
    try:
        assert _env.in_process(("os", "getenv", ("CHAINRULE_BENCH_PROBE",))) == "42"
    finally:
        del os.environ["CHAINRULE_BENCH_PROBE"]


def test_pin_threads_sets_every_thread_variable_and_the_extra_environment(monkeypatch):
    for var in (*_env.THREAD_VARS, "OPENBLAS_CORETYPE", "OPENBLAS_THREAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    _env.pin_threads(3, {"OPENBLAS_CORETYPE": "SkylakeX", "OPENBLAS_THREAD_TIMEOUT": "1"})
    assert all(os.environ[v] == "3" for v in _env.THREAD_VARS)
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"
    assert "OPENBLAS_CORETYPE=SkylakeX" in _env.blas_settings()
    assert "OPENBLAS_THREAD_TIMEOUT=1" in _env.blas_settings()
    _env.pin_threads(3, {"OPENBLAS_CORETYPE": ""})  # an empty value removes the variable
    assert "OPENBLAS_CORETYPE" not in os.environ


def _loss(v) -> float:
    return float(v.item() if hasattr(v, "item") else v)


@pytest.mark.parametrize("batch", [8, 300])  # both orientations of the forward products
def test_every_framework_runs_the_same_training_step(batch):
    names = ["NumPy hand-written", "chainrule eager", "chainrule compiled", "PyTorch eager"]
    sizes = (20, 16, 16, 5)
    losses = {}
    for name in names:
        step = mlp_step.make_runner(name, batch, sizes)
        if step is None:  # PyTorch not installed
            continue
        losses[name] = [_loss(step()) for _ in range(4)]
    ref = losses["NumPy hand-written"]
    assert ref[-1] < ref[0]  # it trains
    for name, got in losses.items():
        np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("batch", [8, 300])  # turned products; rows reduced by columns
@pytest.mark.parametrize("fused", [False, True])
def test_numpy_floor_computes_the_compiled_steps_numbers_bit_for_bit(batch, fused):
    # the floor claims to make exactly the compiled replay's calls: the same
    # losses, step after step, and the same parameters at the end
    from chainrule.optim import _blas

    if not _blas.matrix_available():
        pytest.skip("no OpenBLAS to call in this NumPy")
    sizes = (20, 16, 16, 5)
    params, x, y = mlp_step.make_problem(batch, sizes)
    model = mlp_step.chainrule_model(params)
    opt = cr.optim.SGD(model.parameters(), lr=mlp_step.LR, fused=True)

    def step_fn(xb, yb):
        opt.zero_grad()
        loss = cr.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    step = cr.compile(step_fn, fused_update=fused)
    xt = cr.tensor(x)
    step(xt, y), step(xt, y)  # captured and verified: eager steps, not fused
    # the floor starts from where those two steps left the parameters
    floor = mlp_step.numpy_floor([p.data for p in model.parameters()], x, y,
                                 fused_update=fused)
    for _ in range(4):
        want = step(xt, y).item()
        assert floor().item() == want
    assert step.stats["replayed"] == 4
    if fused:
        assert len(step.fused_params) == 6
    for got, p in zip(floor.params, model.parameters()):
        np.testing.assert_array_equal(got, p.data)


@pytest.mark.parametrize("batch", [4, 64])
def test_gemm_roofline_computes_the_products_of_the_step(batch):
    # the roofline times only products, but they must be the step's products:
    # run it once and compare its forward activations with x @ w.T chained
    sizes = (12, 16, 16, 3)
    params, x, _ = mlp_step.make_problem(batch, sizes)
    step = mlp_step.numpy_gemm_only(params, x, None)
    step()
    a = x
    for w, got in zip(params[0::2], step.acts[1:]):
        a = a @ w.T
        np.testing.assert_allclose(got, a, rtol=1e-5, atol=1e-5)


def test_targets_table_says_what_each_run_meets():
    from bench.__main__ import ALIGNED, _targets_table

    roof = "NumPy GEMM-only (roofline)"
    results = {
        32: {roof: 1000.0, "chainrule compiled": 749.0, "NumPy floor (compiled's calls)": 760.0,
             "chainrule compiled, fused update": 850.0, ALIGNED: 1070.0},
        1024: {roof: 100.0, "chainrule compiled": 90.0},
    }
    guards = {32: {"guards": 4e-6, "replay": 400e-6}}
    table = _targets_table(results, guards)
    rows = table.splitlines()[2:]
    assert rows[0] == ("| chainrule compiled >= 75% of the roofline at B=32 | 74.9% | 76.0% | "
                       "70.0% | **not met** |")
    assert rows[1].startswith("| chainrule compiled >= 88% of the roofline at B=1024 | 90.0% | "
                              "n/a | n/a | met")
    assert rows[2].endswith("| 85.0% | n/a | 79.4% | met |")  # exactly the target
    assert rows[3] == "| guards <= 3% of a replay at B=32 | 1.0% | | | met |"
    assert _targets_table({128: {roof: 1.0}}, {}) == ""  # nothing a target names


def test_aligned_gemm_only_runner_computes_the_same_products_on_aligned_arrays():
    from chainrule.tensor import ALIGN

    params, x, y = mlp_step.make_problem(8, (12, 16, 16, 3))
    plain = mlp_step.numpy_gemm_only(params, x, y)
    aligned = mlp_step.numpy_gemm_only(params, x, y, aligned=True)
    plain()
    aligned()
    for a, b in zip(plain.acts, aligned.acts):
        np.testing.assert_array_equal(a, b)
    assert all(a.ctypes.data % ALIGN == 0 for a in aligned.acts)


def test_memory_table_reports_kib_and_the_ratio_to_pytorch():
    from bench.__main__ import _memory_table

    mem = {32: {"chainrule eager": 1088.5 * 1024, "PyTorch eager": 1084.0 * 1024},
           128: {"chainrule eager": 1184.5 * 1024, "PyTorch eager": 1180.0 * 1024}}
    lines = _memory_table(mem).splitlines()
    assert lines[0] == "| peak KiB per step | B=32 | B=128 |"
    assert lines[2] == "| chainrule eager | 1,088.5 | 1,184.5 |"
    assert lines[4] == "| chainrule eager / PyTorch eager | 1.004x | 1.004x |"
    # without PyTorch there is no ratio row
    assert len(_memory_table({32: {"chainrule eager": 1.0}}).splitlines()) == 3


def test_ledger_bench_runners_build_and_run():
    from bench import ledger

    for what in ("step", "forward", "backward", "explain", "explain+neurons"):
        ledger.make_runner(what, None, sizes=(6, 5, 4, 3), batch=4)()
    with pytest.raises(ValueError, match="unknown runner"):
        ledger.make_runner("nope", None, sizes=(2, 2), batch=1)
    text = ledger.table({"step": 0.01, "forward": 0.004, "explain": 0.02,
                         "step (baseline)": 0.0125, "forward (baseline)": 0.004})
    assert "| explain | 20.00 | 2.00 |" in text and "step: this tree / baseline = 0.800" in text
