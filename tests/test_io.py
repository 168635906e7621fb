"""Checkpoints: round trips, resume, and refusing every kind of bad file."""

from __future__ import annotations

import json
import os
import pickletools
import re
import struct
import time
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import chainrule as cr
from chainrule import io as crio
from chainrule import nn
from chainrule.io import CheckpointError


def _mlp(seed: int = 0) -> nn.Module:
    cr.random.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _has_optim(name: str) -> bool:
    try:
        from chainrule import optim
    except ImportError:
        return False
    return hasattr(optim, name)


needs_adam = pytest.mark.skipif(not _has_optim("Adam"), reason="chainrule.optim.Adam not built yet")


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


def test_state_dict_round_trip_keeps_dtypes_shapes_order_and_bits(tmp_path):
    rng = np.random.default_rng(0)
    state = OrderedDict(
        [
            ("z.f64", rng.standard_normal((3, 2))),
            ("a.f32", rng.standard_normal(5).astype(np.float32)),
            ("m.f16", rng.standard_normal((2, 2)).astype(np.float16)),
            ("i8", np.array([-128, 0, 127], dtype=np.int8)),
            ("i64", np.array([2**62, -(2**62)], dtype=np.int64)),
            ("u8", np.arange(4, dtype=np.uint8)),
            ("mask", np.array([True, False, True])),
            ("scalar", np.array(3.25)),
            ("empty", np.zeros((0, 4), dtype=np.float32)),
            ("strided", np.arange(12.0).reshape(3, 4)[:, ::2]),  # not contiguous
            ("tensor", cr.tensor(np.ones((2, 2)))),
        ]
    )
    path = cr.save(state, tmp_path / "s.safetensors")
    ckpt = cr.load(path)
    assert list(ckpt.state_dict) == list(state)  # saved order, not the file's
    for name, value in state.items():
        expected = np.asarray(value)
        got = ckpt.state_dict[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.tobytes() == np.ascontiguousarray(expected).tobytes(), name
        assert got.flags.writeable
    assert ckpt.config is None and ckpt.optimizer_state is None
    assert ckpt.format_version == crio.FORMAT_VERSION
    assert ckpt.chainrule_version == cr.__version__


def test_file_is_plain_safetensors_readable_by_the_library(tmp_path):
    from safetensors import safe_open

    model = _mlp()
    path = cr.save(model, tmp_path / "m.cr", metadata={"note": "hi"})
    with safe_open(str(path), framework="np") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["chainrule"])
    assert keys == set(model.state_dict())
    assert meta["format"] == "chainrule.checkpoint" and meta["metadata"] == {"note": "hi"}


def test_model_round_trip_reproduces_predictions_exactly(tmp_path):
    model = _mlp(1)
    x = cr.tensor(np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32))
    before = model(x).data.copy()
    path = cr.save(model, tmp_path / "m.cr", metadata={"epoch": 7, "tags": ["a", "b"]})

    ckpt = cr.load(path)
    assert ckpt.metadata == {"epoch": 7, "tags": ["a", "b"]}
    assert ckpt.model_class == "Sequential"
    assert ckpt.config == model.get_config()
    rebuilt = ckpt.model()
    np.testing.assert_array_equal(rebuilt(x).data, before)
    np.testing.assert_array_equal(cr.load_model(path)(x).data, before)

    other = _mlp(2)  # different initial weights
    assert not np.array_equal(other(x).data, before)
    ckpt.load_into(other)
    np.testing.assert_array_equal(other(x).data, before)


def test_custom_module_saves_weights_without_architecture(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    net = Net()
    ckpt = cr.load(cr.save(net, tmp_path / "n.cr"))
    assert ckpt.config is None and ckpt.model_class == "Net"
    with pytest.raises(CheckpointError, match="no architecture"):
        ckpt.model()
    fresh = Net()
    ckpt.load_into(fresh)
    np.testing.assert_array_equal(fresh.fc.weight.data, net.fc.weight.data)


def test_plain_safetensors_from_another_tool_loads_as_state_dict(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": np.ones((2, 2), np.float32)}, str(path), metadata={"format": "pt"})
    ckpt = cr.load(path)
    assert list(ckpt.state_dict) == ["w"] and ckpt.format_version is None
    with pytest.raises(CheckpointError):
        ckpt.model()


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        cr.save(_mlp(), tmp_path / "m.cr", metadata={"x": object()})
    with pytest.raises(TypeError):
        cr.save(_mlp(), tmp_path / "m.cr", metadata={1: "int key"})
    assert not (tmp_path / "m.cr").exists()


def test_unsaveable_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="dtype"):
        cr.save({"s": np.array(["a", "b"])}, tmp_path / "x.cr")
    with pytest.raises(TypeError):
        cr.save(42, tmp_path / "x.cr")
    with pytest.raises(ValueError, match="reserved"):
        cr.save({"optimizer.state.0.x": np.zeros(1)}, tmp_path / "x.cr")


# --------------------------------------------------------------------------
# Optimizer state and resuming
# --------------------------------------------------------------------------


def _batches(n_steps: int):
    rng = np.random.default_rng(5)
    return [
        (rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16))
        for _ in range(n_steps)
    ]


def _train(model, opt, batches):
    for xb, yb in batches:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(cr.tensor(xb)), cr.tensor(yb))
        loss.backward()
        opt.step()


@needs_adam
@pytest.mark.parametrize("opt_name", ["Adam", "SGD", "AdamW", "RMSprop"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, opt_name):
    if not _has_optim(opt_name):
        pytest.skip(f"optim.{opt_name} missing")
    make = getattr(cr.optim, opt_name)
    kwargs = {"lr": 0.01, "momentum": 0.9} if opt_name in ("SGD", "RMSprop") else {"lr": 0.01}
    batches = _batches(12)

    model = _mlp(3)
    opt = make(model.parameters(), **kwargs)
    _train(model, opt, batches)  # uninterrupted: 12 steps
    expected = model.state_dict()

    model = _mlp(3)
    opt = make(model.parameters(), **kwargs)
    _train(model, opt, batches[:5])
    path = cr.save(model, tmp_path / "resume.cr", optimizer=opt, metadata={"step": 5})
    del model, opt

    ckpt = cr.load(path)
    assert ckpt.optimizer_class == opt_name
    model = _mlp(99)  # different init: everything must come from the file
    opt = make(model.parameters(), **kwargs)
    ckpt.load_into(model, opt)
    _train(model, opt, batches[5:])
    got = model.state_dict()
    for k in expected:
        assert got[k].tobytes() == expected[k].tobytes(), k


@needs_adam
def test_optimizer_state_round_trips_in_pytorch_structure(tmp_path):
    model = _mlp()
    opt = cr.optim.Adam(model.parameters(), lr=0.003, betas=(0.8, 0.95))
    _train(model, opt, _batches(2))
    sd = opt.state_dict()
    ckpt = cr.load(cr.save(model, tmp_path / "o.cr", optimizer=opt))
    got = ckpt.optimizer_state
    assert set(got) == {"state", "param_groups"}
    assert got["param_groups"][0]["betas"] == (0.8, 0.95)
    assert got["param_groups"][0]["params"] == sd["param_groups"][0]["params"]
    assert set(got["state"]) == set(sd["state"])
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            saved = got["state"][idx][name]
            assert type(saved) is type(value) or isinstance(value, np.ndarray), (idx, name)
            np.testing.assert_array_equal(np.asarray(saved), np.asarray(value))
    with pytest.raises(CheckpointError, match="Adam"):
        ckpt.load_into(_mlp(), cr.optim.SGD(_mlp().parameters(), lr=0.1))


# --------------------------------------------------------------------------
# Refusing bad files
# --------------------------------------------------------------------------


def _small_checkpoint(tmp_path) -> bytes:
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float64)}
    return cr.save(state, tmp_path / "small.cr", metadata={"k": "v"}).read_bytes()


def test_truncated_at_every_cut_point_is_refused(tmp_path):
    blob = _small_checkpoint(tmp_path)
    path = tmp_path / "cut.cr"
    for cut in range(len(blob)):
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError) as info:
            cr.load(path)
        assert str(path) in str(info.value)


def test_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "long.cr"
    path.write_bytes(_small_checkpoint(tmp_path) + b"\x00")
    with pytest.raises(CheckpointError, match="trailing"):
        cr.load(path)


@pytest.mark.parametrize("seed", range(20))
def test_random_garbage_is_refused(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "garbage.cr"
    path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError):
        cr.load(path)


def _marker_pickle(marker: str) -> bytes:
    """A pickle whose loading would call builtins.open(marker, "w"), creating a file.

    Written opcode by opcode (no pickle module involved)."""
    arg = marker.encode()
    mode = b"w"
    return (
        b"\x80\x04"  # PROTO 4
        + b"cbuiltins\nopen\n"  # GLOBAL builtins.open
        + b"("  # MARK
        + b"X" + struct.pack("<I", len(arg)) + arg  # BINUNICODE marker path
        + b"X" + struct.pack("<I", len(mode)) + mode
        + b"t"  # TUPLE
        + b"R"  # REDUCE: call open(marker, "w")
        + b"."  # STOP
    )


def test_malicious_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    payload = _marker_pickle(str(marker))
    pickletools.dis(payload, out=open(os.devnull, "w"))  # a well-formed pickle; not executed
    path = tmp_path / "evil.pt"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="never unpickles"):
        cr.load(path)
    assert not marker.exists()

    # the modern torch.save layout: a zip archive holding data.pkl
    zpath = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("archive/data.pkl", payload)
    with pytest.raises(CheckpointError, match="PyTorch") as info:
        cr.load(zpath)
    assert "never unpickles" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty"),
        (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
        (b"\x93NUMPY\x01\x00" + bytes(100), ".npy"),
        (b"abc", "fewer than the 8-byte"),
    ],
)
def test_foreign_files_are_named(tmp_path, content, words):
    path = tmp_path / "foreign.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words.replace(".", r"\.")):
        cr.load(path)


def _craft(tmp_path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def test_huge_claims_are_refused_quickly_without_allocating(tmp_path):
    cases = [
        # a tensor claiming 4 TB, backed by 16 bytes
        ({"w": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]}}, bytes(16)),
        # shape whose size overflows 64-bit arithmetic, offsets small
        ({"w": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)),
    ]
    t0 = time.perf_counter()
    for header, data in cases:
        with pytest.raises(CheckpointError):
            cr.load(_craft(tmp_path, header, data))
    # a header length field of 2**63 on a 30-byte file
    with pytest.raises(CheckpointError, match="claims"):
        cr.load(_craft(tmp_path, b"{}" + bytes(20), length=2**63))
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(
    "header, data, words",
    [
        ({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, bytes(2), "dtype"),
        ({"w": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, bytes(8), "dtype"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "shape"),
        ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4), "shape"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4), "needs 8"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, bytes(4), "offsets"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            bytes(8),
            "overlaps",
        ),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "gap"),
        ({"w": {"dtype": "F32", "shape": [1]}}, bytes(4), "exactly"),
        ({"__metadata__": {"a": 1}}, b"", "strings"),
        ({"__metadata__": {"chainrule": "{not json"}}, b"", "chainrule metadata"),
        ({"__metadata__": {"chainrule": json.dumps({"format": "chainrule.checkpoint",
                                                     "format_version": 99})}}, b"", "version"),
        ([1, 2], b"", "not an object"),
    ],
)
def test_malformed_headers_are_refused_with_the_reason(tmp_path, header, data, words):
    with pytest.raises(CheckpointError, match=words):
        cr.load(_craft(tmp_path, header, data))


def test_non_utf8_and_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="UTF-8"):
        cr.load(_craft(tmp_path, b"{\xff\xfe}"))
    dup = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, ' \
          b'"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    with pytest.raises(CheckpointError, match="duplicate"):
        cr.load(_craft(tmp_path, dup, b"\x00"))


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        cr.load(tmp_path / "nope.cr")


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("fail_at", ["replace", "fsync", "write"])
def test_failed_write_leaves_old_file_intact_and_no_temp_file(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "model.cr"
    old_model = _mlp(0)
    cr.save(old_model, path)
    old_bytes = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    if fail_at == "replace":
        monkeypatch.setattr(crio.os, "replace", boom)
    elif fail_at == "fsync":
        monkeypatch.setattr(crio.os, "fsync", boom)
    else:
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])  # a partial write, then a crash
                raise OSError("disk full")

        monkeypatch.setattr(crio.os, "fdopen", lambda *a, **k: HalfWriter(real_fdopen(*a, **k)))

    with pytest.raises(OSError):
        cr.save(_mlp(1), path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert _leftovers(tmp_path) == []
    ckpt = cr.load(path)
    for k, v in old_model.state_dict().items():
        np.testing.assert_array_equal(ckpt.state_dict[k], v)


def test_atomic_write_to_a_new_file_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crio.atomic_write("plain.bin", b"abc")
    assert (tmp_path / "plain.bin").read_bytes() == b"abc"
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------
# cr.load where PyTorch users put torch.load (issue 16)
# --------------------------------------------------------------------------


def test_load_is_a_mapping_of_tensors_for_load_state_dict(tmp_path):
    model = _mlp(1)
    opt = cr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(cr.tensor(np.ones((2, 4), np.float32))).sum().backward()
    opt.step()
    path = cr.save(model, tmp_path / "m.cr", optimizer=opt, metadata={"epoch": 4})
    ckpt = cr.load(path)
    assert list(ckpt.keys()) == list(model.state_dict().keys())
    assert len(ckpt) == 4 and "0.weight" in ckpt and "momentum_buffer" not in ckpt
    assert isinstance(ckpt["2.bias"], cr.Tensor)
    np.testing.assert_array_equal(ckpt["2.bias"].numpy(), model.state_dict()["2.bias"])
    assert dict(ckpt.items()).keys() == model.state_dict().keys()
    twin = _mlp(2)
    twin.load_state_dict(cr.load(path))  # the PyTorch idiom
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(twin.state_dict()[k], v)
    # metadata and optimizer state are still on it
    assert ckpt.metadata == {"epoch": 4} and ckpt.optimizer_class == "SGD"
    assert ckpt.optimizer_state["state"][0]["momentum_buffer"].shape == (8, 4)
    ckpt.load_into(twin, cr.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9))
    assert ckpt == ckpt and ckpt != cr.load(path) and hash(ckpt) == hash(ckpt)
    # a plain safetensors file from another tool too
    plain = cr.save({"w": np.ones(3)}, tmp_path / "p.safetensors")
    assert dict(cr.load(plain)).keys() == {"w"}


def _crafted_checkpoint(tmp_path, config, tensors=None):
    """A chainrule checkpoint whose metadata says what we want (no model behind it)."""
    from safetensors.numpy import save as st_save

    tensors = tensors or {}
    header = {"format": crio.FORMAT_NAME, "format_version": crio.FORMAT_VERSION,
              "chainrule_version": cr.__version__,
              "model": {"class": "Sequential", "keys": list(tensors), "config": config},
              "optimizer": None, "metadata": None}
    path = tmp_path / "crafted.cr"
    path.write_bytes(st_save(tensors, metadata={"chainrule": json.dumps(header)}))
    return path


@pytest.mark.parametrize("config", [
    [{"type": "Linear", "in_features": 0, "out_features": 10**12}],
    [{"type": "Linear", "in_features": 10**12, "out_features": 0, "bias": False}],
    [{"type": "Linear", "in_features": 60000, "out_features": 60000}],
    [{"type": "Linear", "in_features": 40000, "out_features": 1}] * 4,
    {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 1,
                                       "out_features": 10**9}]},
], ids=["empty weight, huge bias", "huge empty weight", "product", "sum over layers", "nested"])
def test_tiny_checkpoint_cannot_force_a_huge_allocation(tmp_path, config):
    import tracemalloc

    path = _crafted_checkpoint(tmp_path, config)
    assert path.stat().st_size < 600  # a few hundred bytes
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="crafted.cr: the stored architecture"):
            cr.load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused before anything was allocated


def test_config_with_an_unexpected_argument_is_a_checkpoint_error(tmp_path):
    w = {"0.weight": np.ones((2, 3), np.float32), "0.bias": np.zeros(2, np.float32)}
    good = [{"type": "Linear", "in_features": 3, "out_features": 2}]
    assert cr.load_model(_crafted_checkpoint(tmp_path, good, w))[0].out_features == 2
    for layer, says in [
        ({"generator": 5}, "cannot be rebuilt (AttributeError"),  # was a raw AttributeError
        ({"generator": None}, "never writes: config[0].generator"),
        ({"bogus": 1}, "unexpected keyword argument 'bogus'"),
    ]:
        cfg = [dict(good[0], **layer)]
        with pytest.raises(CheckpointError, match=re.escape(says)):
            cr.load_model(_crafted_checkpoint(tmp_path, cfg, w))
    with pytest.raises(CheckpointError, match=r"never writes: config\[1\].size"):
        cr.load_model(_crafted_checkpoint(tmp_path, good + [{"type": "Identity", "size": 3}], w))
    with pytest.raises(CheckpointError, match=r"never writes: config.fuse"):
        cr.load_model(_crafted_checkpoint(
            tmp_path, {"type": "Sequential", "layers": good, "fuse": False}, w))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask_and_keep_an_old_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = cr.save(_mlp(), tmp_path / "m.cr")
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        hist = cr.training.History()
        assert hist.to_json(tmp_path / "h.json").stat().st_mode & 0o777 == 0o666 & ~umask
        os.chmod(path, 0o640)
        cr.save(_mlp(), path)  # an overwrite keeps the file's mode
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
