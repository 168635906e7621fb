"""The UCI handwritten digits, shipped inside the package.

1,797 grey-level images of handwritten digits, 8x8 pixels, each pixel a count
0..16 of "on" bits in a 4x4 block of the original 32x32 bitmap; ten classes
(about 180 images each). Small enough to train an MLP in seconds, real enough
to show overfitting, confusion between 3/8/9, and the value of a validation set.

Citation: Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten
Digits [Dataset]. UCI Machine Learning Repository.
https://doi.org/10.24432/C50P49. Licence: CC BY 4.0.

``digits.npz`` was produced once, at development time, by
``tools/extract_digits.py`` from the copy bundled with scikit-learn
(``sklearn/datasets/data/digits.csv.gz``, the UCI test split), checked value
for value against ``sklearn.datasets.load_digits()``. It holds two uint8 arrays
and is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

__all__ = ["load_digits", "DIGITS_CITATION"]

DIGITS_CITATION = (
    "Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten Digits "
    "[Dataset]. UCI Machine Learning Repository. https://doi.org/10.24432/C50P49 "
    "(CC BY 4.0)"
)


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    # Read once per process; callers get fresh converted copies, so the
    # cached uint8 arrays are never handed out (and are made read-only anyway).
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            images, target = z["images"], z["target"]
    images.flags.writeable = False
    target.flags.writeable = False
    return images, target


def load_digits(scale: bool = True, return_images: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """Load the handwritten digits as ``(X, y)``.

    Parameters
    ----------
    scale : bool, default True
        Divide pixel values by 16 so that X lies in [0, 1]; otherwise keep the
        raw counts 0..16 (as float32).
    return_images : bool, default False
        Return X as images of shape (1797, 8, 8) instead of flat rows.

    Returns
    -------
    X : float32 ndarray of shape (1797, 64), or (1797, 8, 8) with ``return_images``
    y : int64 ndarray of shape (1797,), the digit 0..9

    >>> X, y = load_digits()
    >>> X.shape, X.dtype, y.shape, y.dtype
    ((1797, 64), dtype('float32'), (1797,), dtype('int64'))
    """
    images, target = _raw()
    X = images.astype(np.float32)
    if scale:
        X /= 16.0
    if not return_images:
        X = X.reshape(len(X), 64)
    return X, target.astype(np.int64)
