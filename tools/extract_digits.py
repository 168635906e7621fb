"""Build ``src/chainrule/data/digits.npz`` from scikit-learn's bundled digits CSV.

Run once, at development time, from the repository root::

    .venv/bin/python tools/extract_digits.py

The package never needs this script (nor scikit-learn) at run time: it only
reads the ``.npz`` file written here.

Source: scikit-learn ships the UCI "Optical Recognition of Handwritten Digits"
test set (Alpaydin & Kaynak, 1998; CC BY 4.0) as ``digits.csv.gz``: one row
per image, 64 pixel counts in 0..16 (an 8x8 grid, row-major) then the label.

The script parses that CSV with the standard library, checks it against
``sklearn.datasets.load_digits()`` value for value, and writes two uint8 arrays
(``images`` (1797, 8, 8) and ``target`` (1797,)) with ``np.savez_compressed``;
no object arrays, so the file loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "chainrule" / "data" / "digits.npz"


def find_csv() -> Path:
    import sklearn

    path = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        sys.exit(f"cannot find {path}; is scikit-learn installed in this environment?")
    return path


def parse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt", newline="") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f) if row]
    table = np.array(rows, dtype=np.int64)
    if table.shape != (1797, 65):
        sys.exit(f"{path}: expected 1797 rows of 65 integers, found shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    # Range checks before narrowing to uint8, so that a bad file cannot wrap around.
    if pixels.min() < 0 or pixels.max() > 16:
        sys.exit(f"{path}: pixel counts outside 0..16")
    if set(np.unique(labels).tolist()) != set(range(10)):
        sys.exit(f"{path}: labels are not exactly the digits 0..9")
    return pixels.reshape(-1, 8, 8).astype(np.uint8), labels.astype(np.uint8)


def verify_against_sklearn(images: np.ndarray, target: np.ndarray) -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert np.array_equal(ref.images, images.astype(np.float64)), "images differ from sklearn"
    assert np.array_equal(ref.data, images.reshape(-1, 64).astype(np.float64)), "data differ"
    assert np.array_equal(ref.target, target.astype(np.int64)), "targets differ from sklearn"


def main() -> None:
    src = find_csv()
    images, target = parse(src)
    verify_against_sklearn(images, target)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, images=images, target=target)

    # Read it back the way the package does and compare once more.
    with np.load(OUT, allow_pickle=False) as z:
        assert np.array_equal(z["images"], images) and np.array_equal(z["target"], target)
    digest = hashlib.sha256(images.tobytes() + target.tobytes()).hexdigest()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) from {src}")
    print(f"images {images.shape} {images.dtype}, target {target.shape} {target.dtype}")
    print(f"class counts {np.bincount(target).tolist()}")
    print(f"sha256 of the array bytes (images then target): {digest}")


if __name__ == "__main__":
    main()
