"""The CLI's defaults on scikit-learn's small tables, next to scikit-learn's MLP and a linear model.

    python -m bench.tables [--seeds 0,1,2] [--out docs/tables-results.md]

scikit-learn ships iris, wine, breast cancer and diabetes; this script writes
each to a CSV file in a temporary directory (iris with its string class
names), trains ``chainrule train FILE`` with its defaults (only ``--seed``
varies), and fits on the same training rows (the split is redrawn with
chainrule's own function) a scikit-learn ``MLPClassifier`` / ``MLPRegressor``
tuned by 5-fold grid search over width and ``alpha``, and a linear model
(``LogisticRegression`` / ``RidgeCV``), both after a ``StandardScaler``.
Reported: test accuracy (classification) or test R^2 (diabetes), the mean
over the seeds and the range.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import tempfile
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np


def write_tables(directory: Path) -> dict[str, tuple[Path, str]]:
    from sklearn import datasets

    out = {}
    for name, loader, target in [("iris", datasets.load_iris, "species"),
                                 ("wine", datasets.load_wine, "cultivar"),
                                 ("breast_cancer", datasets.load_breast_cancer, "diagnosis"),
                                 ("diabetes", datasets.load_diabetes, "progression")]:
        d = loader()
        cols = [re.sub(r"[^A-Za-z0-9_]+", "_", c).strip("_") for c in d.feature_names]
        y = d.target
        if name == "iris":
            y = np.asarray(d.target_names)[d.target]  # string labels
        path = directory / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*cols, target])
            for row, t in zip(d.data, y):
                w.writerow([*(f"{v:.6g}" for v in row), t])
        out[name] = (path, target)
    return out


def chainrule_score(path: Path, target: str, seed: int, workdir: Path) -> float:
    from chainrule.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["train", str(path), "--target", target, "--seed", str(seed), "--quiet",
                     "--out", str(workdir / f"{path.stem}-{seed}")])
    text = buf.getvalue()
    assert code == 0, text
    m = re.search(r"test accuracy: ([0-9.]+)", text) or re.search(r"test R\^2: (-?[0-9.]+)",
                                                                  text)
    return float(m.group(1))


def sklearn_scores(path: Path, target: str, seed: int) -> tuple[float, float]:
    import pandas as pd
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import GridSearchCV
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from chainrule.cli import _csv_target, _split_indices

    df = pd.read_csv(path)
    _, y, _, task = _csv_target(path, df, target, "auto")
    X = df.drop(columns=[target]).to_numpy(np.float64)
    tr, te = _split_indices(y, 0.25, seed, stratify=task == "classification")
    grid = {"mlp__hidden_layer_sizes": [(16,), (64,), (100,), (64, 32)],
            "mlp__alpha": [1e-4, 1e-2, 1.0]}
    if task == "classification":
        mlp = make_pipeline(StandardScaler(), MLPClassifier(max_iter=2000, random_state=seed))
        mlp.steps[-1] = ("mlp", mlp.steps[-1][1])
        lin = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    else:
        mlp = make_pipeline(StandardScaler(), MLPRegressor(max_iter=2000, random_state=seed))
        mlp.steps[-1] = ("mlp", mlp.steps[-1][1])
        lin = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GridSearchCV(mlp, grid, cv=5).fit(X[tr], y[tr])
        lin.fit(X[tr], y[tr])
    return float(search.score(X[te], y[te])), float(lin.score(X[te], y[te]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = ["| table | rows x features | metric | chainrule train (defaults) | "
             "scikit-learn MLP (grid-searched) | linear model |", "|---|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        tables = write_tables(Path(tmp))
        for name, (path, target) in tables.items():
            ours, mlp, lin = [], [], []
            for seed in seeds:
                ours.append(chainrule_score(path, target, seed, Path(tmp)))
                a, b = sklearn_scores(path, target, seed)
                mlp.append(a)
                lin.append(b)
            import pandas as pd

            shape = pd.read_csv(path).shape
            metric = "test R²" if name == "diabetes" else "test accuracy"

            def fmt(v: list[float]) -> str:
                return f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})"

            lines.append(f"| {name} | {shape[0]} x {shape[1] - 1} | {metric} | {fmt(ours)} | "
                         f"{fmt(mlp)} | {fmt(lin)} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + f"\n\nSeeds {', '.join(map(str, seeds))} (each: its own split " \
        "and initialisation); mean, and the range in brackets.\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
