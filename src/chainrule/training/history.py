"""History: what :func:`chainrule.fit` measured, one record per epoch."""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..io import atomic_write

__all__ = ["History", "TIMING_KEYS"]

# Columns that come first, in this order, in tables and CSV files.
_FIRST = (
    "epoch",
    "steps",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "samples_per_s",
)
#: Wall-clock fields: they differ between otherwise identical runs.
TIMING_KEYS = ("seconds", "samples_per_s")
_INT_KEYS = ("epoch", "steps", "samples")


class History:
    """Per-epoch records of a training run.

    Each record is a dict with ``epoch`` (1-based), ``steps`` (optimizer
    steps so far), ``loss`` (mean training loss over the epoch), the
    training metrics (``accuracy``), ``val_loss`` / ``val_accuracy`` when a
    validation set was given, ``lr`` (the first param group's learning rate
    during the epoch), ``seconds`` and ``samples_per_s``.

    Attributes
    ----------
    records : list of dict
    stopped_early : bool
        True when a callback (or ``max_steps``) ended training before ``epochs``.
    stop_reason : str or None
        Why, in words (e.g. the stopping rule's ``||w^{k+1} - w^k|| < tol``).
    monitor, mode : str
        The quantity and direction used by :attr:`best_epoch` (set by
        ``EarlyStopping`` / ``ModelCheckpoint``; default ``val_loss`` when
        present, else ``loss``, minimised).

    Examples
    --------
    >>> history = cr.fit(model, loss_fn, opt, (X, y), epochs=5, progress=False)
    >>> history.history["loss"]          # Keras-style dict of lists
    [0.91, 0.52, 0.40, 0.35, 0.31]
    >>> history.best_epoch
    5
    >>> history.to_csv("history.csv"); history.plot("loss.png")
    """

    def __init__(self, records: Iterable[dict[str, Any]] = ()) -> None:
        self.records: list[dict[str, Any]] = [dict(r) for r in records]
        self.stopped_early = False
        self.stop_reason: str | None = None
        self.monitor: str | None = None
        self.mode: str = "min"

    # ----- access ---------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        """Add an epoch's record (kept as is: callbacks may add fields to it)."""
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, key: str | int) -> Any:
        """``history["loss"]`` is a column (list); ``history[0]`` is a record."""
        if isinstance(key, str):
            return self.history[key]
        return self.records[key]

    @property
    def keys(self) -> list[str]:
        """Column names, the usual ones first."""
        seen: dict[str, None] = {}
        for r in self.records:
            for k in r:
                seen.setdefault(k, None)
        first = [k for k in _FIRST if k in seen]
        return first + [k for k in seen if k not in _FIRST]

    @property
    def history(self) -> dict[str, list[Any]]:
        """Keras-style ``{"loss": [...], "val_loss": [...], ...}`` (a fresh dict)."""
        return {k: [r.get(k) for r in self.records] for k in self.keys}

    @property
    def epochs(self) -> int:
        return len(self.records)

    def _monitor(self) -> str:
        if self.monitor is not None:
            return self.monitor
        return "val_loss" if any("val_loss" in r for r in self.records) else "loss"

    @property
    def best_epoch(self) -> int | None:
        """The epoch (1-based) with the best monitored value; ties go to the earliest."""
        key = self._monitor()
        best, best_epoch = None, None
        for r in self.records:
            v = r.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            better = best is None or (v < best if self.mode == "min" else v > best)
            if better:
                best, best_epoch = v, r.get("epoch")
        return best_epoch

    def without_timing(self) -> list[dict[str, Any]]:
        """The records minus wall-clock fields, for comparing runs."""
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in self.records]

    def __repr__(self) -> str:
        last = self.records[-1] if self.records else {}
        shown = ", ".join(
            f"{k}={last[k]:.4g}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
            if isinstance(last.get(k), float)
        )
        extra = f", stopped: {self.stop_reason}" if self.stopped_early else ""
        return f"History({len(self.records)} epochs{', ' if shown else ''}{shown}{extra})"

    # ----- files ----------------------------------------------------------

    def _summary(self) -> dict[str, Any]:
        return {
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "monitor": self.monitor,
            "mode": self.mode,
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the records and the stop information as JSON (atomically).

        Floats are written with ``repr`` precision, so :meth:`from_json` gives
        back the same values. Non-finite values are written as ``NaN`` /
        ``Infinity`` (Python's JSON dialect).
        """
        doc = {"format": "chainrule.history", "version": 1, **self._summary(),
               "records": self.records}
        return atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> History:
        """Read a file written by :meth:`to_json`."""
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != "chainrule.history":
            raise ValueError(f"{path}: not a chainrule history JSON file")
        h = cls(doc.get("records", []))
        h.stopped_early = bool(doc.get("stopped_early", False))
        h.stop_reason = doc.get("stop_reason")
        h.monitor = doc.get("monitor")
        h.mode = doc.get("mode", "min")
        return h

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per epoch (atomically); missing values are empty cells."""
        buf = _stdio.StringIO()
        keys = self.keys
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(keys)
        for r in self.records:
            # repr() keeps every bit of a float, so the CSV round-trips exactly
            writer.writerow(["" if r.get(k) is None else repr(r[k]) for k in keys])
        return atomic_write(path, buf.getvalue().encode("utf-8"))

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> History:
        """Read a file written by :meth:`to_csv` (stop information is not in CSV)."""
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            return cls()
        keys, records = rows[0], []
        for row in rows[1:]:
            rec: dict[str, Any] = {}
            for k, cell in zip(keys, row):
                if cell == "":
                    continue
                rec[k] = int(cell) if k in _INT_KEYS else _parse_number(cell)
            records.append(rec)
        return cls(records)

    def plot(self, path: str | os.PathLike, metrics: Iterable[str] | None = None) -> Path:
        """Save loss curves (and the metric's, if any) as a PNG; return the path.

        Needs matplotlib (``pip install "chainrule[plot]"``); pyplot is not
        used, so no window or GUI backend is involved.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError(
                'History.plot needs matplotlib: pip install "chainrule[plot]"'
            ) from None
        keys = self.keys
        if metrics is None:
            metrics = [k for k in keys if k not in _FIRST and not k.startswith("val_")]
            metrics = (["accuracy"] if "accuracy" in keys else []) + metrics
        metrics = [m for m in metrics if m in keys]
        panels = ["loss"] + metrics
        fig = Figure(figsize=(5.0 * len(panels), 3.6), dpi=100)
        epochs = [float("nan") if r.get("epoch") is None else r["epoch"] for r in self.records]
        for i, name in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for key, style in ((name, "-o"), (f"val_{name}", "--s")):
                if key in keys:
                    ys = [float("nan") if v is None else v for v in self.history[key]]
                    ax.plot(epochs, ys, style, markersize=3, label=key)
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        best = self.best_epoch
        if best is not None:
            fig.axes[0].axvline(best, color="grey", lw=0.8, ls=":")
        fig.tight_layout()
        buf = _stdio.BytesIO()
        fig.savefig(buf, format="png")
        return atomic_write(path, buf.getvalue())


def _parse_number(cell: str) -> Any:
    low = cell.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)  # also reads nan / inf
    except ValueError:
        return cell.strip("'\"")
