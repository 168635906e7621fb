"""MNIST and Fashion-MNIST from IDX files, with an optional verified download.

The IDX format (LeCun et al.) is a tiny header followed by raw big-endian
values::

    bytes 0-1   zero
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    then        d sizes, each a big-endian uint32
    then        the values, row-major

:func:`read_idx` checks the size the header declares against the bytes that
are really there *before* allocating for them, so a corrupt or hostile header
cannot make it reserve gigabytes.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import struct
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._files import create_temp
from ._common import DataFormatError

__all__ = ["load_mnist", "read_idx", "download_mnist", "DownloadError", "default_cache_dir"]

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# NumPy's limit on the number of dimensions of an array (32 before NumPy 2)
_MAX_DIMS = 64 if int(np.__version__.split(".")[0]) >= 2 else 32
# Deflate cannot expand data by more than about 1032:1, so a gzip file of c
# bytes can never hold more than this many times c bytes of payload.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A dataset file could not be fetched, or did not match its checksum."""


# --------------------------------------------------------------------------
# IDX parsing
# --------------------------------------------------------------------------


def _read_exact(f: io.BufferedIOBase, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DataFormatError(
            f"{path}: file ends inside the IDX header ({what}): expected {n} bytes, "
            f"found {len(data)}"
        )
    return data


def _parse_header(f: io.BufferedIOBase, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read the header; return (dtype, dims, header length in bytes)."""
    zero0, zero1, code, ndim = _read_exact(f, 4, path, "magic number")
    if zero0 or zero1:
        raise DataFormatError(
            f"{path}: not an IDX file: the magic number must start with two zero bytes, "
            f"found 0x{zero0:02x}{zero1:02x}"
        )
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise DataFormatError(
            f"{path}: unknown IDX element type 0x{code:02X} (expected one of {known})"
        )
    if ndim == 0:
        raise DataFormatError(f"{path}: IDX header declares 0 dimensions (expected >= 1)")
    if ndim > _MAX_DIMS:
        raise DataFormatError(
            f"{path}: IDX header declares {ndim} dimensions; arrays have at most "
            f"{_MAX_DIMS} (a damaged header, or not an IDX file)"
        )
    dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, "dimension sizes"))
    return _IDX_TYPES[code], tuple(int(d) for d in dims), 4 + 4 * ndim


def _declared(dtype: np.dtype, dims: tuple[int, ...]) -> int:
    n = dtype.itemsize
    for d in dims:  # Python ints: no overflow, however large the claim
        n *= d
    return n


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed, detected from its content).

    Returns an array of the shape the header declares, in native byte order.
    Raises :class:`DataFormatError` naming the file when the header is invalid
    or the declared size does not match the data found.

    >>> images = read_idx("mnist/train-images-idx3-ubyte.gz")   # (60000, 28, 28) uint8
    """
    path = Path(path)
    with open(path, "rb") as f:
        compressed = f.read(2) == _GZIP_MAGIC
    if compressed:
        buf, dtype, dims = _read_gzip(path)
    else:
        buf, dtype, dims = _read_raw(path)
    arr = np.frombuffer(buf, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _read_raw(path: Path) -> tuple[bytearray, np.dtype, tuple[int, ...]]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        dtype, dims, head = _parse_header(f, path)
        nbytes = _declared(dtype, dims)
        if head + nbytes != size:
            raise DataFormatError(
                f"{path}: IDX header declares shape {dims} of {dtype.name} "
                f"({head + nbytes} bytes with the header), but the file has {size} bytes"
            )
        buf = bytearray(nbytes)  # safe now: the file really holds this much
        if f.readinto(buf) != nbytes:
            raise DataFormatError(f"{path}: file shrank while being read")
    return buf, dtype, dims


def _read_gzip(path: Path) -> tuple[bytearray, np.dtype, tuple[int, ...]]:
    csize = path.stat().st_size
    try:
        with gzip.open(path, "rb") as f:
            dtype, dims, head = _parse_header(f, path)
            nbytes = _declared(dtype, dims)
            if nbytes > _MAX_DEFLATE_RATIO * csize + 1024:
                raise DataFormatError(
                    f"{path}: IDX header declares shape {dims} of {dtype.name} "
                    f"({nbytes} bytes), which a {csize}-byte gzip file cannot contain"
                )
            # Grow the buffer with the data actually decompressed (never by the
            # header's claim), reading one byte past the end to detect extra data.
            buf = bytearray()
            while len(buf) <= nbytes:
                chunk = f.read(min(_CHUNK, nbytes + 1 - len(buf)))
                if not chunk:
                    break
                buf += chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(f"{path}: corrupt gzip data ({exc})") from exc
    if len(buf) != nbytes:
        found = f"{len(buf)}" if len(buf) <= nbytes else "more than that"
        raise DataFormatError(
            f"{path}: IDX header declares shape {dims} of {dtype.name} ({nbytes} bytes of "
            f"data after the {head}-byte header), but the decompressed data has {found}"
        )
    return buf, dtype, dims


# --------------------------------------------------------------------------
# Finding and downloading the files
# --------------------------------------------------------------------------

# Published MD5 digests and sizes of the gzip files (as listed by the dataset
# authors and used by torchvision). We do not hard-code SHA-256 digests
# because we could not confirm them from an authoritative source.
_FILES: dict[str, dict[str, tuple[str, int]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
        "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", 28881),
        "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", 1648877),
        "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", 4542),
    },
    "fashion": {
        "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
        "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", 29515),
        "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", 4422102),
        "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", 5148),
    },
}

_MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion": [
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

_KINDS = {"train": "train", "test": "t10k"}


def default_cache_dir() -> Path:
    """``$CHAINRULE_DATA`` if set, else ``$XDG_CACHE_HOME/chainrule`` or ``~/.cache/chainrule``."""
    env = os.environ.get("CHAINRULE_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "chainrule"


def _check_variant(variant: str) -> None:
    if variant not in _FILES:
        raise ValueError(f"variant must be 'mnist' or 'fashion', got {variant!r}")


def _candidates(directory: Path, stem: str) -> list[Path]:
    # The official names, and the dotted spelling some redistributions use
    # ("train-images.idx3-ubyte"); each raw or gzip-compressed.
    names = [stem, stem.replace("-idx", ".idx")]
    return [directory / (n + ext) for n in names for ext in ("", ".gz")]


def _find(directory: Path, stem: str) -> Path | None:
    for p in _candidates(directory, stem):
        if p.is_file():
            return p
    return None


def _manual_hint(variant: str, directory: Path) -> str:
    names = "\n".join(f"    {n}" for n in _FILES[variant])
    mirrors = "\n".join(f"    {m}" for m in _MIRRORS[variant])
    return (
        f"Download these four files by hand:\n{names}\nfrom one of\n{mirrors}\n"
        f"into {directory} (gzip or uncompressed, both work), then call "
        f"load_mnist({str(directory)!r}, variant={variant!r})."
    )


def _fetch(url: str, dest: Path, md5: str, size: int, timeout: float) -> None:
    """Download ``url`` to ``dest`` atomically, checking its size and MD5."""
    fd, tmp_name = create_temp(dest.parent, dest.name, ".part")  # umask-respecting mode
    try:
        digest = hashlib.md5(usedforsecurity=False)  # an integrity check, not security
        total = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(_CHUNK):
                total += len(chunk)
                if total > size:
                    raise DownloadError(f"{url}: more than the published {size} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())  # data on disk before the rename makes it visible
        if total != size:
            raise DownloadError(f"{url}: got {total} bytes, expected {size}")
        if digest.hexdigest() != md5:
            raise DownloadError(f"{url}: MD5 {digest.hexdigest()} does not match {md5}")
        os.replace(tmp_name, dest)  # atomic: readers see no file or the whole file
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def download_mnist(
    variant: str = "mnist",
    directory: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch the four gzip files of ``variant`` into ``directory``; return it.

    ``directory`` defaults to ``default_cache_dir() / variant``. Files already
    there are kept. Each download is checked against the published size and
    MD5 digest (not SHA-256: see the note in the source) and written
    atomically (temporary file, fsync, rename). Mirrors are tried in order.
    Raises :class:`DownloadError` telling how to fetch the files by hand when
    no mirror works (for example, offline).
    """
    _check_variant(variant)
    target = Path(directory) if directory is not None else default_cache_dir() / variant
    target.mkdir(parents=True, exist_ok=True)
    bases = list(mirrors) if mirrors is not None else _MIRRORS[variant]
    for name, (md5, size) in _FILES[variant].items():
        if _find(target, name[: -len(".gz")]) is not None:
            continue
        failures = []
        for base in bases:
            url = base.rstrip("/") + "/" + name
            try:
                _fetch(url, target / name, md5, size, timeout)
                break
            except (OSError, ValueError, http.client.HTTPException) as exc:
                failures.append(f"    {url}: {getattr(exc, 'reason', exc)}")
        else:
            tried = "\n".join(failures)
            raise DownloadError(
                f"Could not download {name} for {variant} (are you offline?). Tried:\n"
                f"{tried}\n{_manual_hint(variant, target)}"
            )
    return target


# --------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------


def load_mnist(
    path: str | os.PathLike[str] | None = None,
    kind: str = "train",
    variant: str = "mnist",
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    scale: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST or Fashion-MNIST from the IDX files in a directory.

    Parameters
    ----------
    path : directory or None
        Holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or
        with ``.gz``. ``None`` means ``cache_dir / variant`` (``cache_dir``
        defaults to :func:`default_cache_dir`).
    kind : "train" or "test"
        The 60,000 training or the 10,000 test images.
    variant : "mnist" or "fashion"
        Only used to choose download mirrors, checksums and the cache folder.
    download : bool
        Fetch missing files into that directory (see :func:`download_mnist`).
    scale : bool
        Divide pixel values by 255 so that X lies in [0, 1].

    Returns
    -------
    X : float32 ndarray of shape (n, rows * cols), (n, 784) for MNIST
    y : int64 ndarray of shape (n,)

    >>> X, y = load_mnist("~/data/mnist", kind="test")
    >>> X.shape, y.shape
    ((10000, 784), (10000,))
    """
    if kind not in _KINDS:
        raise ValueError(f"load_mnist: kind must be 'train' or 'test', got {kind!r}")
    _check_variant(variant)
    if path is not None:
        directory = Path(path).expanduser()
    else:
        base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        directory = base / variant
    prefix = _KINDS[kind]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    found = [_find(directory, s) for s in stems]
    if None in found and download:
        download_mnist(variant, directory)
        found = [_find(directory, s) for s in stems]
    for stem, p in zip(stems, found):
        if p is None:
            looked = ", ".join(c.name for c in _candidates(directory, stem))
            raise FileNotFoundError(
                f"load_mnist: no {stem} in {directory} (looked for {looked}). "
                f"Pass download=True to fetch it, or:\n{_manual_hint(variant, directory)}"
            )
    img_path, lab_path = found
    assert img_path is not None and lab_path is not None
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFormatError(
            f"{img_path}: expected uint8 images of shape (n, rows, cols), found "
            f"{images.dtype} of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataFormatError(
            f"{lab_path}: expected uint8 labels of shape (n,), found {labels.dtype} of "
            f"shape {labels.shape}"
        )
    if images.shape[0] == 0 or images.shape[1] * images.shape[2] == 0:
        raise DataFormatError(
            f"{img_path}: holds no images (shape {images.shape}); a {kind} set needs at least "
            "one image of at least one pixel"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{img_path.name} holds {images.shape[0]} images but {lab_path.name} holds "
            f"{labels.shape[0]} labels (in {directory}); the files do not belong together"
        )
    X = images.reshape(images.shape[0], -1).astype(np.float32)
    if scale:
        X /= 255.0
    return X, labels.astype(np.int64)
