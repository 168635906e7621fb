"""How steps/s and peak memory grow with batch size and layer width, vs PyTorch."""

from __future__ import annotations

from . import mlp_step

BATCHES = (32, 128, 512, 1024, 2048)
WIDTHS = (128, 256, 512, 1024)


NAMES = ("chainrule eager", "chainrule compiled", "PyTorch eager")


def measure(reps: int, settle: float = 0.25) -> list[dict]:
    """Rows of {batch, width, name: steps/s, mem <name>: peak bytes}."""
    from ._env import in_process, interleaved, median

    rows = []
    points = [(b, 256) for b in BATCHES] + [(128, w) for w in WIDTHS if w != 256]
    for b, w in points:
        sizes = (784, w, w, 10)
        makers = {n: (mlp_step.__name__, "make_runner", (n, b, sizes)) for n in NAMES}
        times, _ = interleaved(makers, reps=reps, inner=max(1, 512 // b), settle=settle)
        row: dict = {"batch": b, "width": w}
        row.update({k: 1.0 / median(v) for k, v in times.items()})
        mem = in_process((mlp_step.__name__, "peak_memory", (b, sizes, NAMES)))
        row.update({f"mem {k}": v for k, v in mem.items()})
        rows.append(row)
    return rows


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
