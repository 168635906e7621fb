"""``chainrule.data``: datasets, batching, splitting, and real data to train on.

* :class:`Dataset`, :class:`TensorDataset`, :class:`Subset`, :func:`random_split`
* :class:`DataLoader`: shuffled mini-batches (or one full batch) of Tensors
* :func:`train_test_split`, :func:`one_hot`, :func:`standardize`
* :func:`load_digits`: the UCI handwritten digits, shipped in the package
  (Alpaydin & Kaynak, 1998, https://doi.org/10.24432/C50P49, CC BY 4.0)
* :func:`load_mnist`: MNIST / Fashion-MNIST IDX files (optional verified download)
* :func:`load_csv`: a user's own numeric table (parsed by pandas)
* :func:`read_table`, :class:`TablePreprocessor`: raw tables with categorical
  columns and missing values; :class:`Standardizer`
* :class:`CSVStream`: train on a CSV file larger than memory
* :func:`make_xor`, :func:`make_moons`, :func:`make_spirals`, :func:`make_encoder`

>>> from chainrule.data import DataLoader, load_digits, train_test_split
>>> X, y = load_digits()
>>> X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0, stratify=y)
>>> for xb, yb in DataLoader((X_tr, y_tr), batch_size=64, seed=0):
...     pass                                 # xb: Tensor (64, 64) float32, yb: int64
"""

from ._common import DataFormatError
from .csvfile import CSVData, load_csv
from .dataset import Dataset, Subset, TensorDataset, random_split
from .digits import DIGITS_CITATION, load_digits
from .loader import DataLoader
from .mnist import DownloadError, default_cache_dir, download_mnist, load_mnist, read_idx
from .preprocessing import Standardizer, one_hot, standardize, train_test_split
from .stream import CSVStream
from .synthetic import make_encoder, make_moons, make_spirals, make_xor
from .tables import TablePreprocessor, read_table

__all__ = [
    "Dataset",
    "TensorDataset",
    "Subset",
    "random_split",
    "DataLoader",
    "train_test_split",
    "one_hot",
    "standardize",
    "Standardizer",
    "read_table",
    "TablePreprocessor",
    "CSVStream",
    "load_digits",
    "DIGITS_CITATION",
    "load_mnist",
    "read_idx",
    "download_mnist",
    "default_cache_dir",
    "DownloadError",
    "load_csv",
    "CSVData",
    "DataFormatError",
    "make_xor",
    "make_moons",
    "make_spirals",
    "make_encoder",
]
