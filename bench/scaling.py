"""How steps/s and peak memory grow with batch size and layer width, vs PyTorch."""

from __future__ import annotations

import gc

from . import mlp_step

BATCHES = (32, 128, 512, 1024, 2048)
WIDTHS = (128, 256, 512, 1024)


def _fns(batch: int, width: int) -> dict:
    sizes = (784, width, width, 10)
    params, x, y = mlp_step.make_problem(batch, sizes)
    fns = {
        "chainrule eager": mlp_step.chainrule_step(params, x, y),
        "chainrule compiled": mlp_step.chainrule_step(params, x, y, compiled=True),
    }
    t = mlp_step.torch_step(params, x, y)
    if t is not None:
        fns["PyTorch eager"] = t
    return fns


def measure(reps: int) -> list[dict]:
    """Rows of {batch, width, name: steps/s, mem <name>: peak bytes}."""
    from ._env import interleaved, median

    rows = []
    points = [(b, 256) for b in BATCHES] + [(128, w) for w in WIDTHS if w != 256]
    for b, w in points:
        fns = _fns(b, w)
        gc.collect()
        times = interleaved(fns, reps=reps, inner=max(1, 512 // b), warmup=3)
        row: dict = {"batch": b, "width": w}
        row.update({k: 1.0 / median(v) for k, v in times.items()})
        row.update({f"mem {k}": v for k, v in _memory(b, w).items()})
        rows.append(row)
    return rows


def _memory(batch: int, width: int) -> dict[str, float]:
    fns = _fns(batch, width)
    out = {}
    for name, fn in fns.items():
        if name == "PyTorch eager":
            peak = mlp_step._torch_peak(fn)
            if peak is not None:
                out[name] = peak
            continue
        out[name] = mlp_step.numpy_peak(fn)
    return out


def plot(rows: list[dict], path: str) -> str | None:
    """Two panels (batch sweep, width sweep) of steps/s; returns the path or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [k for k in rows[0] if k not in ("batch", "width") and not k.startswith("mem ")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, fixed, sel in (
        (axes[0], "batch", "width 256", lambda r: r["width"] == 256),
        (axes[1], "width", "batch 128", lambda r: r["batch"] == 128),
    ):
        pts = sorted((r for r in rows if sel(r)), key=lambda r: r[key])
        for n in names:
            ax.plot([r[key] for r in pts], [r.get(n, float("nan")) for r in pts], "o-", label=n)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("training steps / s")
        ax.set_title(f"784-w-w-10 MLP, {fixed}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
