"""Checkpoints: save and load weights (and optimizer state) without pickle.

A chainrule checkpoint is a plain `safetensors <https://github.com/huggingface/safetensors>`_
file. Any safetensors reader can open it; chainrule adds one JSON string in the
header's ``__metadata__`` (key ``"chainrule"``) with the format version, the
model architecture (when it can be rebuilt), the optimizer's class and
hyperparameters and the user's own metadata.

Layout of the file (all integers little-endian)::

    [8 bytes: header length N][N bytes: UTF-8 JSON header][raw tensor bytes]

Tensors stored:

* the model's ``state_dict()`` under its own names (``"0.weight"``, ...);
* the optimizer's array state under ``"optimizer.state.<param index>.<name>"``
  (its plain numbers go into the JSON, so they round-trip exactly).

Safety: :func:`load` never executes code and never unpickles. It reads the
file once, checks the header against the file's real size *before* anything
is allocated from it (so a hostile header cannot make it allocate terabytes),
and raises :class:`CheckpointError` naming the file and the problem for
anything that is not a well-formed safetensors file (truncated, garbage, a
PyTorch zip/pickle, HDF5, an empty file).

>>> cr.save(model, "model.cr", optimizer=opt, metadata={"epoch": 3})
>>> ckpt = cr.load("model.cr")
>>> model2 = ckpt.model()             # rebuilt from the stored config
>>> ckpt.load_into(model, opt)        # or restore into existing objects
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._files import create_temp, keep_mode
from .tensor import Tensor

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save",
    "load",
    "load_model",
    "atomic_write",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

FORMAT_NAME = "chainrule.checkpoint"
FORMAT_VERSION = 1
_META_KEY = "chainrule"
_OPT_PREFIX = "optimizer.state."
# The safetensors library itself refuses headers above 100 MB; so do we, and
# we say so before reading them.
_MAX_HEADER = 100_000_000

# safetensors dtype code -> (numpy dtype, bytes per element). Only plain
# numeric types: nothing here can make NumPy build Python objects.
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
}
_SAVEABLE = {dt for dt in _DTYPES.values()}


class CheckpointError(ValueError):
    """A file is not a valid chainrule / safetensors checkpoint.

    The message names the file and what is wrong with it.
    """


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` is never partial.

    The bytes go to a temporary file in the same directory (``os.replace`` is
    only atomic within one file system), are flushed and fsynced, and the
    temporary file is then renamed over ``path``; finally the directory is
    fsynced so the rename itself survives a power cut. If anything fails, the
    temporary file is removed and an existing ``path`` is left untouched.
    The file gets the permissions a plain ``open(path, "w")`` would: the
    umask decides for a new file, and an overwritten file keeps its mode.

    >>> atomic_write("notes.txt", b"hello")
    PosixPath('notes.txt')
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = create_temp(directory, path.name, ".tmp")
    except FileNotFoundError:
        # name the file the user asked for, not our temporary one
        raise FileNotFoundError(
            f"cannot write {path}: the directory {directory} does not exist"
        ) from None
    try:
        # permissions as a plain open() would give: the umask for a new file,
        # the old file's mode when replacing one
        keep_mode(fd, path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return path


def _fsync_dir(directory: Path) -> None:
    # Directories cannot be opened for fsync on Windows; there the rename is
    # as durable as the OS makes it.
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------


def _to_array(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value.data if isinstance(value, Tensor) else value)
    if arr.dtype not in _SAVEABLE:
        raise TypeError(
            f"save: {what} has dtype {arr.dtype}; checkpoints hold only "
            f"bool, (u)int8-64 and float16/32/64 arrays"
        )
    # safetensors reads the raw buffer, so it must be C-contiguous and little-endian
    # (np.ascontiguousarray would turn a 0-d array into shape (1,))
    arr = np.asarray(arr, order="C")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def _json_checked(value: Any, what: str) -> Any:
    try:
        text = json.dumps(value, allow_nan=True, sort_keys=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: {what} must be JSON-serialisable: {e}") from None
    return json.loads(text)


def _model_config(model: Any) -> dict | None:
    """The architecture, when the model can describe itself (Sequential of built-ins)."""
    get_config = getattr(model, "get_config", None)
    if get_config is None:
        return None
    try:
        config = get_config()
    except (NotImplementedError, TypeError, ValueError, AttributeError, KeyError):
        return None  # a custom layer: the weights are still saved
    try:
        return _json_checked(config, "model.get_config()")
    except TypeError:
        return None


def _group_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save(
    obj: Any,
    path: str | os.PathLike,
    optimizer: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save a model (or a state dict) and optionally its optimizer to ``path``.

    Parameters
    ----------
    obj : nn.Module or mapping of name -> array/Tensor
        What to save. For a ``Sequential`` of built-in layers the architecture
        (``model.get_config()``) is stored too, so :func:`load_model` can
        rebuild it.
    path : str or path-like
        Destination. Any extension works; ``.cr`` or ``.safetensors`` is the
        convention. The write is atomic: ``path`` is either the old file or
        the complete new one, never a partial file.
    optimizer : optim.Optimizer, optional
        Its ``state_dict()`` is stored (hyperparameters as JSON, moment
        buffers as tensors) so training can resume exactly.
    metadata : dict, optional
        Your own JSON-serialisable information (epoch, metrics, notes).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> cr.save(model, "digits.cr", optimizer=opt, metadata={"epoch": 10})
    PosixPath('digits.cr')
    >>> cr.save(model.state_dict(), "weights.safetensors")
    PosixPath('weights.safetensors')
    """
    from . import __version__

    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        state = obj.state_dict()
        config = _model_config(obj)
        model_class = type(obj).__name__
    elif isinstance(obj, Mapping):
        state, config, model_class = obj, None, None
    else:
        raise TypeError(
            f"save: expected an nn.Module or a state dict (name -> array), got {type(obj).__name__}"
        )

    tensors: dict[str, np.ndarray] = {}
    keys: list[str] = []
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"save: state dict keys must be str, got {name!r}")
        if name.startswith(_OPT_PREFIX):
            raise ValueError(f"save: the name {name!r} is reserved for optimizer state")
        tensors[name] = _to_array(value, f"state[{name!r}]")
        keys.append(name)

    opt_meta = None
    if optimizer is not None:
        opt_meta = _pack_optimizer(optimizer, tensors)

    user = None
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            raise TypeError("save: metadata must be a dict with str keys")
        user = _json_checked(dict(metadata), "metadata")

    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "chainrule_version": __version__,
        "model": {"class": model_class, "keys": keys, "config": config},
        "optimizer": opt_meta,
        "metadata": user,
    }
    from safetensors.numpy import save as st_save

    blob = st_save(tensors, metadata={_META_KEY: json.dumps(header)})
    return atomic_write(path, blob)


def _pack_optimizer(optimizer: Any, tensors: dict[str, np.ndarray]) -> dict:
    sd = optimizer.state_dict()
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: _group_value(v) for k, v in g.items()})
    groups = _json_checked(groups, "optimizer param_groups")
    scalars: dict[str, dict[str, Any]] = {}
    arrays: dict[str, list[str]] = {}
    numpy_scalars: dict[str, list[str]] = {}
    for idx, entry in sd["state"].items():
        sidx = str(int(idx))
        for name, value in entry.items():
            if isinstance(value, (bool, int, float)) or value is None:
                # plain numbers go in the JSON: exact for ints, repr-exact for floats
                scalars.setdefault(sidx, {})[name] = value
                continue
            if isinstance(value, np.generic):
                # keep the NumPy scalar's dtype: store it as a 0-d tensor
                numpy_scalars.setdefault(sidx, []).append(name)
            tensors[f"{_OPT_PREFIX}{sidx}.{name}"] = _to_array(
                value, f"optimizer state[{idx}][{name!r}]"
            )
            arrays.setdefault(sidx, []).append(name)
    return {
        "class": type(optimizer).__name__,
        "module": type(optimizer).__module__,
        "param_groups": groups,
        "state_scalars": _json_checked(scalars, "optimizer state"),
        "state_arrays": arrays,
        "state_numpy_scalars": numpy_scalars,
    }


# --------------------------------------------------------------------------
# Validation (before safetensors ever sees the bytes)
# --------------------------------------------------------------------------


def _sniff(head: bytes) -> str | None:
    """Name a foreign format from its first bytes, or None."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return (
            "a zip archive, most likely a PyTorch checkpoint (torch.save) or an .npz "
            "file. chainrule never unpickles; convert it with PyTorch itself: "
            "`from safetensors.torch import save_file; "
            "save_file(torch.load(src, weights_only=True), dst)`"
        )
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return (
            "a Python pickle (e.g. an old torch.save or joblib file). chainrule never "
            "unpickles (unpickling can run arbitrary code); convert it in the program "
            "that wrote it, with safetensors' save_file"
        )
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return (
            "an HDF5 file (e.g. a Keras .h5 model); chainrule reads safetensors only: "
            "export the weights as arrays and save them with cr.save or safetensors"
        )
    if head[:6] == b"\x93NUMPY":
        return "a NumPy .npy file; load it with np.load and save it with cr.save"
    return None


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid checkpoint: {problem}")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} in the header")
        out[k] = v
    return out


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _validate(path: Path, raw: bytes) -> tuple[dict, dict[str, str]]:
    """Check the safetensors framing of ``raw``; return (tensor entries, __metadata__)."""
    size = len(raw)
    if size == 0:
        raise _fail(path, "the file is empty (0 bytes)")
    foreign = _sniff(raw[:8])
    if foreign is not None:
        raise _fail(path, f"this is {foreign}")
    if size < 8:
        raise _fail(path, f"the file has {size} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > size - 8:
        raise _fail(
            path,
            f"the header claims {n} bytes but the file has only {size - 8} after the "
            "length field (truncated file, or not a safetensors file)",
        )
    if n > _MAX_HEADER:
        raise _fail(path, f"the header is {n} bytes, above the {_MAX_HEADER}-byte limit")
    if n < 2:
        raise _fail(path, f"the header is {n} bytes, too short for a JSON object")
    try:
        text = raw[8 : 8 + n].decode("utf-8")
        header = json.loads(text, object_pairs_hook=_unique_object)
    except UnicodeDecodeError:
        raise _fail(path, "the header is not UTF-8 text (garbage or another format)") from None
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise _fail(path, f"the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _fail(path, "the header is JSON but not an object")

    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _fail(path, "__metadata__ must map strings to strings")

    data_len = size - 8 - n
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(
                path, f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets"
            )
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _fail(
                path,
                f"tensor {name!r}: dtype {dtype!r} is not supported "
                f"(allowed: {', '.join(_DTYPES)})",
            )
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _fail(
                path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative ints"
            )
        offs = entry["data_offsets"]
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(_is_count(o) for o in offs)
            or offs[0] > offs[1]
        ):
            raise _fail(path, f"tensor {name!r}: data_offsets {offs!r} must be [begin, end]")
        begin, end = offs
        if end > data_len:
            raise _fail(
                path,
                f"tensor {name!r}: data_offsets [{begin}, {end}] run past the end of the "
                f"data ({data_len} bytes; truncated file?)",
            )
        # Python ints: no overflow however large the claimed shape
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if nbytes != end - begin:
            raise _fail(
                path,
                f"tensor {name!r}: {dtype} x {shape} needs {nbytes} bytes, "
                f"data_offsets give {end - begin}",
            )
        spans.append((begin, end, name))

    # Tensors must tile the data area exactly: no overlap, no hole, nothing after
    # (the same rule the safetensors library enforces).
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            kind = "overlaps the previous tensor" if begin < pos else "leaves a gap before it"
            raise _fail(path, f"tensor {name!r} at byte {begin} {kind} (expected {pos})")
        pos = end
    if pos != data_len:
        raise _fail(
            path,
            f"the tensors cover {pos} bytes but the file has {data_len} data bytes "
            "(trailing bytes or a damaged header)",
        )
    return header, meta


# --------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------


class Checkpoint(Mapping):
    """What :func:`load` returns: a mapping of weight name -> Tensor, plus the rest.

    As a mapping it holds the model's weights, in the order they were saved,
    so it goes where PyTorch users put a loaded state dict::

        model.load_state_dict(cr.load("model.cr"))
        cr.load("model.cr").keys()          # 'weight', 'bias', ...
        cr.load("model.cr")["0.weight"]     # a Tensor

    The architecture, the optimizer state and the metadata are attributes.

    Attributes
    ----------
    path : pathlib.Path
    state_dict : OrderedDict[str, np.ndarray]
        The model weights as arrays (writeable; the mapping's Tensors share
        their memory).
    config : dict or None
        ``model.get_config()`` at save time (None if the model could not
        describe itself, or for a plain safetensors file).
    model_class : str or None
    optimizer_class : str or None
    optimizer_state : dict or None
        In ``optimizer.state_dict()`` structure, ready for ``load_state_dict``.
    metadata : dict
        The user's metadata (``{}`` if none).
    format_version : int or None
        None for a plain safetensors file written by another tool.
    chainrule_version : str or None

    Examples
    --------
    >>> ckpt = cr.load("digits.cr")
    >>> model = ckpt.model()
    >>> ckpt.load_into(model, optimizer=opt)
    """

    def __init__(
        self,
        path: Path,
        state_dict: OrderedDict[str, np.ndarray],
        config: dict | None,
        model_class: str | None,
        optimizer_class: str | None,
        optimizer_state: dict | None,
        metadata: dict,
        format_version: int | None,
        chainrule_version: str | None,
    ) -> None:
        self.path = path
        self.state_dict = state_dict
        self.config = config
        self.model_class = model_class
        self.optimizer_class = optimizer_class
        self.optimizer_state = optimizer_state
        self.metadata = metadata
        self.format_version = format_version
        self.chainrule_version = chainrule_version
        self._tensors: dict[str, Tensor] = {}

    # ----- the mapping: weight name -> Tensor ------------------------------

    def __getitem__(self, name: str) -> Tensor:
        t = self._tensors.get(name)
        if t is None:
            t = self._tensors[name] = Tensor._const(self.state_dict[name])
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self.state_dict)

    def __len__(self) -> int:
        return len(self.state_dict)

    def __contains__(self, name: object) -> bool:
        return name in self.state_dict

    # a checkpoint is a file's contents, not a value: compared and hashed by identity
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        n = sum(int(a.size) for a in self.state_dict.values())
        return (
            f"Checkpoint({str(self.path)!r}, {len(self.state_dict)} tensors, {n} values, "
            f"model={self.model_class}, optimizer={self.optimizer_class})"
        )

    def model(self) -> Any:
        """Rebuild the model from the stored config and load the weights.

        Raises :class:`CheckpointError` when the checkpoint has no config
        (build the model yourself and use :meth:`load_into`).
        """
        if self.config is None:
            raise CheckpointError(
                f"{self.path}: this checkpoint stores weights but no architecture (the "
                "model was not a Sequential of built-in layers, or the file was written "
                "by another tool); build the model in code and call "
                "checkpoint.load_into(model)"
            )
        from . import nn

        # Building allocates what the config declares; refuse a config that
        # the weights in the file cannot back (a damaged or hostile header
        # declaring Linear(10**6, 10**6), or Linear(0, 10**12) whose weight is
        # empty but whose bias is not, must not allocate terabytes).
        stored = sum(int(a.size) for a in self.state_dict.values())
        try:
            _check_config_size(self.path, self.config, stored)
        except RecursionError:
            raise CheckpointError(
                f"{self.path}: the stored architecture is nested too deeply"
            ) from None
        try:
            model = nn.build(self.config)
        except Exception as e:  # noqa: BLE001
            # The config came from the file: whatever building it trips on (a
            # wrong type, an argument of the wrong kind that fails deep inside
            # a constructor), it is a damaged checkpoint.
            raise CheckpointError(
                f"{self.path}: the stored architecture cannot be rebuilt "
                f"({type(e).__name__}: {e})"
            ) from None
        try:
            extra = _unexpected_args(self.config, model.get_config())
        except (NotImplementedError, TypeError, ValueError, AttributeError, KeyError):
            extra = []
        if extra:
            raise CheckpointError(
                f"{self.path}: the stored architecture has arguments that chainrule never "
                f"writes: {', '.join(extra[:5])} (damaged or edited metadata)"
            )
        try:
            model.load_state_dict(self.state_dict)
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(
                f"{self.path}: the weights do not fit the stored architecture ({e})"
            ) from None
        return model

    def load_into(self, model: Any, optimizer: Any = None, strict: bool = True) -> Any:
        """Copy the weights into ``model`` (and the state into ``optimizer``); return ``model``."""
        model.load_state_dict(self.state_dict, strict=strict)
        if optimizer is not None:
            if self.optimizer_state is None:
                raise CheckpointError(f"{self.path}: this checkpoint holds no optimizer state")
            got = type(optimizer).__name__
            if self.optimizer_class is not None and got != self.optimizer_class:
                raise CheckpointError(
                    f"{self.path}: the checkpoint holds {self.optimizer_class} state, "
                    f"cannot load it into {got}"
                )
            optimizer.load_state_dict(self.optimizer_state)
        return model


# Slack for the small integer arguments of layers that own no weights (dims,
# axes, a pooling window): a real architecture's integers are bounded by its
# weight count plus this.
_CONFIG_SLACK = 65536


def _check_config_size(path: Path, config: Any, stored: int) -> None:
    """Refuse a config whose integer arguments could make building it allocate
    more than the file's weights back, before anything is built.

    Every integer argument (a dimension) must be at most ``stored + slack``,
    and so must the sum over layers of the product of each layer's nonzero
    integers (for Linear, in x out, about its weight count). Both bounds
    matter: Linear(0, 10**12) has an empty weight but a bias of 10**12.
    """
    limit = stored + _CONFIG_SLACK
    total = 0

    def ints(v: Any, where: str) -> Iterator[tuple[str, int]]:
        if isinstance(v, bool):
            return
        if isinstance(v, int):
            yield where, v
        elif isinstance(v, list):
            for i, e in enumerate(v):
                yield from ints(e, f"{where}[{i}]")

    def walk(c: Any, where: str) -> None:
        nonlocal total
        if isinstance(c, list):
            for i, e in enumerate(c):
                walk(e, f"{where}[{i}]")
            return
        if not isinstance(c, dict):
            return
        kind = c.get("type", "layer")
        product = 1
        for k, v in c.items():
            if k == "layers":
                walk(v, f"{where}.layers")
                continue
            for name, n in ints(v, k):
                if abs(n) > limit:
                    raise CheckpointError(
                        f"{path}: the stored architecture gives {kind} {name}={n}, but the "
                        f"file holds only {stored} weight values (damaged or hostile "
                        "metadata); nothing was built"
                    )
                product = min(product * max(abs(n), 1), limit + 1)
        total += product if product > 1 else 0
        if total > limit:
            raise CheckpointError(
                f"{path}: the stored architecture declares layers of more than {limit} values "
                f"in all (at {where}, {kind}), but the file holds only {stored} weight values "
                "(damaged or hostile metadata); nothing was built"
            )

    walk(config, "config")


def _unexpected_args(stored: Any, built: Any, where: str = "config") -> list[str]:
    """Keys of the stored config that the rebuilt model's own config lacks.

    A key the constructor accepted but chainrule never writes (an edited or
    damaged file) would otherwise be ignored silently. Keys the rebuilt
    config has and the file lacks are fine: defaults of an older file.
    """
    if isinstance(stored, dict) and stored.get("type") == "Sequential":
        extra = [f"{where}.{k}" for k in stored if k not in ("type", "layers")]
        return extra + _unexpected_args(stored.get("layers", []), built, f"{where}.layers")
    if isinstance(stored, list) and isinstance(built, list) and len(stored) == len(built):
        out: list[str] = []
        for i, (a, b) in enumerate(zip(stored, built)):
            out += _unexpected_args(a, b, f"{where}[{i}]")
        return out
    if isinstance(stored, dict) and isinstance(built, dict):
        return [f"{where}.{k}" for k in stored if k not in built]
    return []


def _unpack_optimizer(
    path: Path, opt: dict, tensors: dict[str, np.ndarray]
) -> dict:
    try:
        groups = []
        for g in opt["param_groups"]:
            # JSON turned tuples (Adam's betas) into lists; "params" is the one real list
            groups.append({k: (v if k == "params" or not isinstance(v, list) else tuple(v))
                           for k, v in g.items()})
        state: dict[int, dict[str, Any]] = {}
        for sidx, entry in opt.get("state_scalars", {}).items():
            state.setdefault(int(sidx), {}).update(entry)
        np_scalars = opt.get("state_numpy_scalars", {})
        for sidx, names in opt.get("state_arrays", {}).items():
            for name in names:
                arr = tensors.pop(f"{_OPT_PREFIX}{sidx}.{name}")
                if name in np_scalars.get(sidx, ()):
                    arr = arr[()]
                state.setdefault(int(sidx), {})[name] = arr
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _fail(path, f"the optimizer section of the metadata is damaged ({e!r})") from None
    # PyTorch orders state by parameter index; keep that for readers who print it
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def load(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save` (or any safetensors file).

    The file is validated before it is decoded; nothing in it is executed.

    Raises
    ------
    CheckpointError
        The file is truncated, damaged, or in another format (the message
        says which and what to do).
    FileNotFoundError
        ``path`` does not exist.

    Examples
    --------
    >>> ckpt = cr.load("digits.cr")
    >>> ckpt.metadata
    {'epoch': 10}
    >>> model = ckpt.model()
    """
    path = Path(path)
    # One read: validation and decoding see the same bytes, and the only
    # allocation is the file's real size.
    with open(path, "rb") as f:
        raw = f.read()
    header, meta = _validate(path, raw)

    info = None
    if _META_KEY in meta:
        try:
            info = json.loads(meta[_META_KEY])
        except (ValueError, RecursionError) as e:
            raise _fail(path, f"the chainrule metadata is not valid JSON ({e})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise _fail(path, "the chainrule metadata is not a chainrule checkpoint header")
        version = info.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise _fail(
                path,
                f"checkpoint format version {version!r}; this chainrule reads up to "
                f"{FORMAT_VERSION} (upgrade chainrule)",
            )

    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    try:
        decoded = st_load(raw)
    except (SafetensorError, ValueError, KeyError) as e:
        raise _fail(path, f"safetensors could not decode it ({e})") from None
    del raw
    # safetensors hands back read-only views; training needs writeable arrays.
    # Copy one at a time, dropping each view, so the peak stays near 2x the file.
    tensors = {}
    for k in list(decoded):
        tensors[k] = np.array(decoded.pop(k))
    del decoded

    if info is None:
        # a plain safetensors file: every tensor is a weight, in file order
        order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
        state = OrderedDict((k, tensors[k]) for k in order)
        return Checkpoint(path, state, None, None, None, None, {}, None, None)

    opt_state = None
    opt_class = None
    if info.get("optimizer") is not None:
        opt = info["optimizer"]
        opt_class = opt.get("class") if isinstance(opt, dict) else None
        opt_state = _unpack_optimizer(path, opt, tensors)
    model_info = info.get("model") or {}
    if not isinstance(model_info, dict):
        raise _fail(path, "the model section of the chainrule metadata is not an object")
    keys = model_info.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        keys = sorted(tensors)
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise _fail(path, f"the metadata lists weights more than once: {twice[:5]}")
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise _fail(path, f"the metadata lists weights that are not in the file: {missing[:5]}")
    state = OrderedDict((k, tensors.pop(k)) for k in keys)
    state.update(sorted(tensors.items()))  # anything extra, kept rather than dropped
    user = info.get("metadata")
    return Checkpoint(
        path,
        state,
        model_info.get("config"),
        model_info.get("class"),
        opt_class,
        opt_state,
        user if isinstance(user, dict) else {},
        info.get("format_version"),
        info.get("chainrule_version"),
    )


def load_model(path: str | os.PathLike) -> Any:
    """Rebuild a ``Sequential`` saved with :func:`save` and load its weights.

    >>> model = cr.load_model("digits.cr")
    >>> model(cr.tensor(X[:5])).shape
    (5, 10)
    """
    ckpt = load(path)
    spec = ckpt.metadata.get("spec") if isinstance(ckpt.metadata, dict) else None
    if spec is not None:  # written by chainrule train / an estimator: refuse newer specs
        from .spec import check_version

        check_version(spec, str(ckpt.path))
    return ckpt.model()
