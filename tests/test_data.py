"""Tests for chainrule.data: loaders, splits, shipped digits, IDX, CSV, generators."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr
from chainrule.data import (
    DataFormatError,
    DataLoader,
    Dataset,
    DownloadError,
    TensorDataset,
    load_csv,
    load_digits,
    load_mnist,
    make_encoder,
    make_moons,
    make_spirals,
    make_xor,
    one_hot,
    random_split,
    read_idx,
    standardize,
    train_test_split,
)
from chainrule.data import mnist as mnist_mod

# --------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------


def _xy(n: int = 10, d: int = 3):
    X = np.arange(n * d, dtype=np.float32).reshape(n, d)
    y = np.arange(n, dtype=np.int64)
    return X, y


@pytest.mark.parametrize(
    "n, bs, drop_last, sizes",
    [
        (10, 4, False, [4, 4, 2]),
        (10, 4, True, [4, 4]),
        (8, 4, True, [4, 4]),
        (10, 32, False, [10]),
        (10, 32, True, []),
        (10, None, False, [10]),
        (10, None, True, [10]),
    ],
)
def test_loader_batch_sizes_and_len(n, bs, drop_last, sizes):
    X, y = _xy(n)
    loader = DataLoader((X, y), batch_size=bs, shuffle=False, drop_last=drop_last)
    got = [(xb.shape, yb.shape) for xb, yb in loader]
    assert [s[0][0] for s in got] == sizes
    assert all(xs[1:] == (3,) and ys == (xs[0],) for xs, ys in got)
    assert len(loader) == len(sizes)


def test_loader_yields_tensors_and_keeps_dtypes():
    X32, y = _xy()
    xb, yb = next(iter(DataLoader((X32, y), batch_size=4, seed=0)))
    assert isinstance(xb, cr.Tensor) and isinstance(yb, cr.Tensor)
    assert xb.dtype == np.float32 and yb.dtype == np.int64
    assert not xb.requires_grad
    # ndarrays keep their dtype: float64 stays float64.
    xb64, _ = next(iter(DataLoader((X32.astype(np.float64), y), batch_size=4)))
    assert xb64.dtype == np.float64
    # Tensors are accepted as input too.
    xb_t, yb_t = next(iter(DataLoader((cr.tensor(X32), cr.tensor(y)), batch_size=4)))
    assert xb_t.dtype == np.float32 and yb_t.dtype == np.int64


def test_loader_no_shuffle_is_in_order():
    X, y = _xy(10)
    ys = np.concatenate([yb.data for _, yb in DataLoader((X, y), batch_size=3, shuffle=False)])
    np.testing.assert_array_equal(ys, np.arange(10))


def test_loader_full_batch_is_the_dataset():
    X, y = _xy(7)
    (xb, yb), = list(DataLoader((X, y), batch_size=None, shuffle=False))
    np.testing.assert_array_equal(xb.data, X)
    np.testing.assert_array_equal(yb.data, y)


def _epoch_order(loader):
    return np.concatenate([yb.data for _, yb in loader])


def test_loader_every_sample_once_per_epoch_and_rows_aligned():
    X, y = _xy(103)
    loader = DataLoader((X, y), batch_size=10, seed=3)
    for _ in range(3):
        seen_y, seen_x = [], []
        for xb, yb in loader:
            seen_y.append(yb.data)
            seen_x.append(xb.data)
        order = np.concatenate(seen_y)
        assert sorted(order.tolist()) == list(range(103))
        # Features travel with their labels (row i of X is 3i, 3i+1, 3i+2).
        np.testing.assert_array_equal(np.concatenate(seen_x)[:, 0], order * 3)


def test_loader_seed_determinism_and_new_order_each_epoch():
    X, y = _xy(50)
    a = DataLoader((X, y), batch_size=8, seed=123)
    b = DataLoader((X, y), batch_size=8, seed=123)
    a1, a2 = _epoch_order(a), _epoch_order(a)
    b1, b2 = _epoch_order(b), _epoch_order(b)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)  # a different permutation in epoch 2
    assert not np.array_equal(a1, np.arange(50))
    c1 = _epoch_order(DataLoader((X, y), batch_size=8, seed=124))
    assert not np.array_equal(a1, c1)
    # set_epoch replays a given epoch's order.
    a.set_epoch(1)
    np.testing.assert_array_equal(_epoch_order(a), a2)


def test_loader_generator_seed_advances():
    X, y = _xy(30)
    loader = DataLoader((X, y), batch_size=30, seed=np.random.default_rng(0))
    e1, e2 = _epoch_order(loader), _epoch_order(loader)
    ref = np.random.default_rng(0)
    np.testing.assert_array_equal(e1, y[ref.permutation(30)])
    np.testing.assert_array_equal(e2, y[ref.permutation(30)])


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_loader_rejects_bad_batch_size(bad):
    X, y = _xy()
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader((X, y), batch_size=bad)


def test_loader_rejects_bad_seed_and_data():
    X, y = _xy()
    with pytest.raises(TypeError, match="seed"):
        DataLoader((X, y), seed=1.5)
    with pytest.raises(TypeError, match="Dataset or a tuple"):
        DataLoader(42)


def test_tensor_dataset_checks_first_dimension():
    with pytest.raises(ValueError, match=r"same first dimension.*\(5, 2\).*\(4,\)"):
        TensorDataset(np.zeros((5, 2)), np.zeros(4))
    ds = TensorDataset(np.zeros((5, 2), np.float32), np.arange(5))
    assert len(ds) == 5 and ds[3][1] == 3


class _Squares(Dataset):
    """A generic dataset without array storage: forces per-sample collation."""

    def __len__(self):
        return 9

    def __getitem__(self, i):
        return np.array([i, i], dtype=np.float64), i * i


def test_loader_generic_dataset_collates():
    loader = DataLoader(_Squares(), batch_size=4, seed=0)
    assert len(loader) == 3
    xs, ys = [], []
    for xb, yb in loader:
        assert xb.dtype == np.float64 and yb.dtype == np.int64 and xb.shape[1] == 2
        xs.append(xb.data)
        ys.append(yb.data)
    x, yv = np.concatenate(xs), np.concatenate(ys)
    np.testing.assert_array_equal(x[:, 0] ** 2, yv)
    assert sorted(x[:, 0].tolist()) == list(range(9))


def test_random_split_counts_and_fractions():
    X, y = _xy(10)
    ds = TensorDataset(X, y)
    a, b = random_split(ds, [7, 3], seed=0)
    assert (len(a), len(b)) == (7, 3)
    ids = sorted([int(a[i][1]) for i in range(7)] + [int(b[i][1]) for i in range(3)])
    assert ids == list(range(10))
    parts = random_split(ds, [0.5, 0.3, 0.2], seed=1)
    assert [len(p) for p in parts] == [5, 3, 2]
    assert [len(p) for p in random_split(TensorDataset(np.arange(11)), [0.5, 0.5])] == [6, 5]
    # Subsets of array datasets still batch through the fast path.
    (xb, yb), = list(DataLoader(a, batch_size=None, shuffle=False))
    np.testing.assert_array_equal(xb.data[:, 0], yb.data * 3)
    with pytest.raises(ValueError, match="sum to"):
        random_split(ds, [5, 6])
    with pytest.raises(ValueError, match="sum to 1"):
        random_split(ds, [0.5, 0.6])


# --------------------------------------------------------------------------
# Splits and helpers
# --------------------------------------------------------------------------


def test_train_test_split_sizes_and_disjoint():
    X, y = _xy(20)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, seed=0)
    assert X_tr.shape == (15, 3) and X_te.shape == (5, 3)
    assert sorted(np.concatenate([y_tr, y_te]).tolist()) == list(range(20))
    np.testing.assert_array_equal(X_tr[:, 0], y_tr * 3)
    again = train_test_split(X, y, test_size=0.25, seed=0)
    np.testing.assert_array_equal(again[3], y_te)
    assert train_test_split(X, y, test_size=3, seed=0)[1].shape[0] == 3
    # A fractional size rounds the test share up, as scikit-learn does.
    assert train_test_split(X, y, test_size=0.11, seed=0)[1].shape[0] == 3
    with pytest.raises(ValueError):
        train_test_split(X, y, test_size=1.5)
    with pytest.raises(ValueError, match="first dimensions"):
        train_test_split(X, y[:5])


def test_train_test_split_stratified_keeps_proportions():
    y = np.repeat(np.arange(3), [60, 30, 10])
    X = np.arange(100, dtype=np.float32)[:, None]
    _, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=5, stratify=y)
    assert np.bincount(y_te).tolist() == [12, 6, 2]
    assert np.bincount(y_tr).tolist() == [48, 24, 8]
    np.testing.assert_array_equal(y[X_te[:, 0].astype(int)], y_te)
    lonely = np.array([0] * 9 + [1])  # class 1 has a single member
    with pytest.raises(ValueError, match="class 1 has only 1 sample"):
        train_test_split(X[:10], lonely, stratify=lonely)


def test_one_hot_and_standardize():
    np.testing.assert_array_equal(one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])
    assert one_hot(np.array([1, 0])).dtype == np.float32
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        one_hot([3], 3)
    Xtr = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    Xte = np.array([[5.0, 7.0]], dtype=np.float32)
    a, b = standardize(Xtr, Xte)
    np.testing.assert_allclose(a, [[-1, 0], [1, 0]])
    np.testing.assert_allclose(b, [[3, 2]])  # train statistics, not test ones
    assert a.dtype == np.float32 and standardize(np.array([[1], [2]])).dtype == np.float32


# --------------------------------------------------------------------------
# Shipped digits
# --------------------------------------------------------------------------

_DIGITS_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def test_digits_shape_dtype_and_classes():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    raw, _ = load_digits(scale=False)
    np.testing.assert_array_equal(raw / 16, X)
    assert raw.max() == 16 and np.all(raw == np.round(raw))
    images, _ = load_digits(return_images=True)
    assert images.shape == (1797, 8, 8)
    np.testing.assert_array_equal(images.reshape(1797, 64), X)
    # Callers get their own copies.
    X[:] = -1
    assert load_digits()[0].min() == 0.0


def test_digits_content_digest():
    raw, y = load_digits(scale=False, return_images=True)
    data = raw.astype(np.uint8).tobytes() + y.astype(np.uint8).tobytes()
    assert hashlib.sha256(data).hexdigest() == _DIGITS_SHA256


def test_digits_file_loads_without_pickle():
    path = Path(cr.data.__file__).with_name("digits.npz")
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["images", "target"]
        assert z["images"].dtype == np.uint8


def test_digits_equal_the_raw_csv():
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-learn not installed (only needed for this cross-check)")
    csv_gz = Path(list(spec.submodule_search_locations)[0]) / "datasets/data/digits.csv.gz"
    if not csv_gz.is_file():
        pytest.skip("scikit-learn's digits.csv.gz not found")
    table = np.loadtxt(csv_gz, delimiter=",", dtype=np.int64)
    raw, y = load_digits(scale=False)
    np.testing.assert_array_equal(raw, table[:, :64])
    np.testing.assert_array_equal(y, table[:, 64])


# --------------------------------------------------------------------------
# IDX / MNIST
# --------------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _mnist_dir(tmp_path: Path, n=5, gz=True, prefix="train", n_labels=None):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_labels or n, dtype=np.uint8)
    _write(tmp_path / f"{prefix}-images-idx3-ubyte", _idx_bytes(images, 0x08), gz)
    _write(tmp_path / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels, 0x08), gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("kind, prefix", [("train", "train"), ("test", "t10k")])
def test_mnist_round_trip(tmp_path, gz, kind, prefix):
    images, labels = _mnist_dir(tmp_path, gz=gz, prefix=prefix)
    X, y = load_mnist(tmp_path, kind=kind)
    assert X.shape == (5, 784) and X.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_allclose(X, images.reshape(5, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    assert 0.0 <= X.min() and X.max() <= 1.0


@pytest.mark.parametrize("code, dtype", [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                         (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_other_types_big_endian(tmp_path, code, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    p = _write(tmp_path / "a.idx", _idx_bytes(arr, code), gz=False)
    out = read_idx(p)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_mnist_errors_name_file_and_mismatch(tmp_path):
    _mnist_dir(tmp_path, n=5, n_labels=4)
    with pytest.raises(DataFormatError, match=r"5 images.*4 labels"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        load_mnist(tmp_path, kind="validation")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, kind="test")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_and_corrupt(tmp_path, gz):
    good = _idx_bytes(np.zeros((3, 28, 28), np.uint8), 0x08)
    p = _write(tmp_path / "trunc", good[:-10], gz)
    with pytest.raises(DataFormatError, match=r"trunc.*\(3, 28, 28\)"):
        read_idx(p)
    p = _write(tmp_path / "extra", good + b"\0", gz)
    with pytest.raises(DataFormatError, match="extra"):
        read_idx(p)
    p = _write(tmp_path / "magic", b"\x12\x34" + good[2:], gz)
    with pytest.raises(DataFormatError, match="two zero bytes"):
        read_idx(p)
    p = _write(tmp_path / "type", good[:2] + b"\x07" + good[3:], gz)
    with pytest.raises(DataFormatError, match="element type 0x07"):
        read_idx(p)
    p = _write(tmp_path / "short", good[:6], gz)
    with pytest.raises(DataFormatError, match="header"):
        read_idx(p)


def test_idx_corrupt_gzip_stream(tmp_path):
    data = gzip.compress(_idx_bytes(np.zeros((50, 28, 28), np.uint8), 0x08))
    p = tmp_path / "bad.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="bad.gz"):
        read_idx(p)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_huge_header_fails_fast_without_allocating(tmp_path, gz):
    # Claims 10^6 x 10^6 uint8 = 10^12 bytes; the file holds about 1 KB.
    head = struct.pack(">BBBBII", 0, 0, 0x08, 2, 10**6, 10**6)
    p = _write(tmp_path / "huge", head + bytes(1000), gz)
    t0 = time.perf_counter()
    with pytest.raises(DataFormatError, match="1000000"):
        read_idx(p)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("ndim", [65, 255])
def test_idx_with_more_dimensions_than_numpy_allows(tmp_path, gz, ndim):
    # was: a raw NumPy ValueError from reshape ("maximum supported dimension")
    head = struct.pack(">BBBB", 0, 0, 0x08, ndim) + struct.pack(f">{ndim}I", *([1] * ndim))
    p = _write(tmp_path / "deep", head + b"\x07", gz)
    with pytest.raises(DataFormatError, match=rf"deep.*declares {ndim} dimensions"):
        read_idx(p)


@pytest.mark.parametrize("shape", [(0, 28, 28), (3, 0, 28)])
def test_mnist_without_images_names_the_file(tmp_path, shape):
    # was: a raw NumPy ValueError from reshape(0, -1)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(np.zeros(shape, np.uint8), 0x08),
           False)
    _write(tmp_path / "train-labels-idx1-ubyte",
           _idx_bytes(np.zeros(shape[0], np.uint8), 0x08), False)
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte: holds no images"):
        load_mnist(tmp_path)


def test_mnist_offline_download_message(tmp_path, monkeypatch):
    # Port 9 on localhost refuses connections at once: no real network is used.
    monkeypatch.setitem(mnist_mod._MIRRORS, "mnist", ["http://127.0.0.1:9/nothing/"])
    with pytest.raises(DownloadError) as err:
        load_mnist(tmp_path / "cache", download=True)
    msg = str(err.value)
    assert "by hand" in msg and str(tmp_path / "cache") in msg
    for name in mnist_mod._FILES["mnist"]:
        assert name in msg
    # No partial files are left behind.
    assert list((tmp_path / "cache").iterdir()) == []


def test_mnist_download_checks_md5(tmp_path, monkeypatch):
    # A local "mirror" (file:// URL) serving a file with the right size but wrong bytes.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, (_, size) in mnist_mod._FILES["mnist"].items():
        (mirror / name).write_bytes(b"x" * size)
    monkeypatch.setitem(mnist_mod._MIRRORS, "mnist", [mirror.as_uri() + "/"])
    with pytest.raises(DownloadError, match="MD5"):
        mnist_mod.download_mnist("mnist", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_mnist_download_verified_file_lands_atomically(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = {}
    for k, name in enumerate(mnist_mod._FILES["mnist"]):
        payload = bytes([k]) * (100 + k)
        (mirror / name).write_bytes(payload)
        files[name] = (hashlib.md5(payload).hexdigest(), len(payload))
    monkeypatch.setitem(mnist_mod._FILES, "mnist", files)
    monkeypatch.setitem(mnist_mod._MIRRORS, "mnist",
                        ["http://127.0.0.1:9/", mirror.as_uri() + "/"])  # first one fails
    out = mnist_mod.download_mnist("mnist", tmp_path / "dest")
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    for name, (_, size) in files.items():
        assert (out / name).stat().st_size == size


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------


def test_csv_happy_path_with_label_mapping(tmp_path):
    p = tmp_path / "flowers.csv"
    p.write_text(
        "\ufeffsepal,petal,\"kind\"\n1.0,2.5,\"virginica\"\n3,4,setosa\n"
        "5e-1, 6 ,virginica\n\n\n",
        encoding="utf-8",
    )
    d = load_csv(p, target="kind")
    assert d.X.dtype == np.float32 and d.X.shape == (3, 2)
    np.testing.assert_allclose(d.X, [[1, 2.5], [3, 4], [0.5, 6]])
    assert d.feature_names == ["sepal", "petal"] and d.target_name == "kind"
    assert d.classes == ["setosa", "virginica"]
    assert d.class_to_index == {"setosa": 0, "virginica": 1}
    assert d.y.dtype == np.int64 and d.y.tolist() == [1, 0, 1]
    assert d.decode(d.y) == ["virginica", "setosa", "virginica"]
    X, y = d
    assert X is d.X and y is d.y
    # Same table by index, negative allowed.
    assert load_csv(p, target=-1).y.tolist() == [1, 0, 1]


def test_csv_numeric_target_regression_or_classes(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a;b;c\n1;2;10\n3;4;9\n5;6;10\n")
    d = load_csv(p, target=0, delimiter=";")
    assert d.classes is None and d.y.dtype == np.float32 and d.y.tolist() == [1, 3, 5]
    assert d.feature_names == ["b", "c"]
    c = load_csv(p, target="c", delimiter=";", classification=True)
    assert c.classes == [9, 10] and c.y.tolist() == [1, 0, 1]  # numeric sort, not "10" < "9"


def test_csv_without_header_auto(tmp_path):
    p = tmp_path / "nh.csv"
    p.write_text("1,2,0\n3,4,1\n")
    d = load_csv(p)
    assert d.X.shape == (2, 2) and d.feature_names == ["column_0", "column_1"]
    d = load_csv(p, header=False, classification=True)
    assert d.classes == [0, 1]


def test_csv_bad_rows_name_line_column_and_text(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("x,y,label\n1,2,a\n3,oops,b\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv, line 3, column 2 \('y'\).*'oops'"):
        load_csv(p, target="label")
    p.write_text("x,y,label\n1,2,a\n3,4\n")
    with pytest.raises(DataFormatError, match=r"line 3: expected 3 columns, found 2"):
        load_csv(p, target="label")
    p.write_text("x,y,label\n1,,a\n")
    with pytest.raises(DataFormatError, match=r"line 2, column 2.*empty cell"):
        load_csv(p, target="label")
    p.write_text("x,y,label\n1,nan,a\n")
    with pytest.raises(DataFormatError, match="is not a finite"):
        load_csv(p, target="label")
    p.write_text("x,y,label\n1,2,a\n")
    with pytest.raises(DataFormatError, match="not a number"):
        load_csv(p, target="label", classification=False)
    with pytest.raises(ValueError, match="no column named 'z'"):
        load_csv(p, target="z")


def test_csv_empty_and_header_only(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        load_csv(p)
    p.write_text("a,b,c\n\n")
    with pytest.raises(DataFormatError, match="only a header"):
        load_csv(p)


# --------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------


def test_xor_and_encoder():
    X, y = make_xor()
    assert X.dtype == np.float32 and X.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert y.tolist() == [0, 1, 1, 0]
    Xn, yn = make_xor(repeat=5, noise=0.1, seed=0)
    assert Xn.shape == (20, 2) and yn.shape == (20,)
    np.testing.assert_array_equal(Xn, make_xor(repeat=5, noise=0.1, seed=0)[0])
    assert np.abs(Xn - np.tile(X, (5, 1))).max() < 0.6
    E, T = make_encoder(8)
    assert E.shape == T.shape == (8, 8) and E.dtype == np.float32
    np.testing.assert_array_equal(E, np.eye(8))
    np.testing.assert_array_equal(T, E)


@pytest.mark.parametrize("make, kw, n, k", [
    (make_moons, {"n_samples": 101, "noise": 0.1}, 101, 2),
    (make_spirals, {"n_samples": 301, "n_classes": 3, "noise": 0.2}, 301, 3),
])
def test_toy_generators_shapes_and_determinism(make, kw, n, k):
    X, y = make(**kw, seed=0)
    assert X.shape == (n, 2) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(y.tolist()) == set(range(k))
    assert abs(np.bincount(y).max() - np.bincount(y).min()) <= 1
    X2, y2 = make(**kw, seed=0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, make(**kw, seed=1)[0])


def test_moons_are_not_linearly_separable_but_noise_free_moons_are_on_arcs():
    X, y = make_moons(50, noise=0.0, seed=0)
    upper = X[y == 0]
    np.testing.assert_allclose(np.hypot(upper[:, 0], upper[:, 1]), 1.0, atol=1e-6)
    lower = X[y == 1]
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1, lower[:, 1] - 0.5), 1.0, atol=1e-6)


def test_loader_seed_none_follows_chainrule_random():
    crr = pytest.importorskip("chainrule.random")
    X, y = _xy(40)
    crr.manual_seed(7)
    first = _epoch_order(DataLoader((X, y), batch_size=8))
    crr.manual_seed(7)
    again = _epoch_order(DataLoader((X, y), batch_size=8))
    np.testing.assert_array_equal(first, again)
