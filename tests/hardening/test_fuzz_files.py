"""Fuzzed files: mutated checkpoints, IDX (MNIST) files and CSV tables.

Every input must load or be refused with the loader's documented error
(``CheckpointError`` for ``cr.load`` / ``cr.load_model``, ``DataFormatError``
for ``load_mnist`` and ``load_csv``) whose message names the file; nothing may
hang (alarm per input) or allocate more than the file could back (tracemalloc
peak per input, and a subprocess under an address-space limit for headers that
declare terabytes). A pickle that would create a marker file is fed to every
loader and the marker must never appear.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chainrule as cr
from chainrule import io as crio

from .fuzzlib import Field, Oracle, mutants, random_input
from .profile import pick, record

try:
    from chainrule.data import load_csv, load_mnist
except ImportError:  # the data package's __init__ may not have landed yet
    from chainrule.data.csvfile import load_csv
    from chainrule.data.mnist import load_mnist
from chainrule.data._common import DataFormatError

# Hypothesis-driven (shrinks failures to a minimal input) ...
N_CKPT = pick(150, 3_000)
N_JSON = pick(60, 3_000)
N_IDX = pick(150, 3_000)
N_CSV = pick(150, 3_000)
# ... and a plain seeded loop with the same mutation operators, ~15x faster per
# input, for the bulk: 100,000+ inputs in all in the long profile.
N_BULK = pick(800, 30_000)
FUZZ = dict(deadline=None, database=None, derandomize=False,
            suppress_health_check=list(HealthCheck))

CheckpointError = crio.CheckpointError


# --------------------------------------------------------------------------
# Seed files (valid) and where their integer header fields are
# --------------------------------------------------------------------------


def _checkpoint_seeds(tmp: Path) -> list[bytes]:
    rng = np.random.default_rng(0)
    seeds = []
    state = {"w": rng.standard_normal((3, 4)).astype(np.float32),
             "b": np.zeros(3, np.float64), "steps": np.array(7, np.int64),
             "mask": np.array([True, False])}
    crio.save(state, tmp / "a.cr", metadata={"epoch": 3, "note": "seed"})
    seeds.append((tmp / "a.cr").read_bytes())
    model = cr.nn.Sequential(cr.nn.Linear(3, 4), cr.nn.ReLU(), cr.nn.Linear(4, 2))
    opt = None
    try:
        opt = cr.optim.Adam(model.parameters(), lr=0.01)
        loss = (model(cr.tensor(rng.standard_normal((5, 3)).astype(np.float32))) ** 2).mean()
        loss.backward()
        opt.step()
    except AttributeError:  # optim not there yet
        opt = None
    crio.save(model, tmp / "m.cr", optimizer=opt)
    seeds.append((tmp / "m.cr").read_bytes())
    from safetensors.numpy import save as st_save

    seeds.append(st_save({"x": np.arange(6, dtype=np.int32).reshape(2, 3)}))
    return seeds


CKPT_FIELDS = [Field(0, 8, "little"), Field(0, 4, "little"), Field(4, 4, "little")]


def _idx(arr: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.tobytes()


IMAGES = np.random.default_rng(1).integers(0, 256, (5, 4, 4), dtype=np.uint8)
LABELS = np.arange(5, dtype=np.uint8) % 3
IDX_SEEDS = [_idx(IMAGES, 0x08), _idx(LABELS, 0x08)]
IDX_FIELDS = [Field(2, 1, "big"), Field(3, 1, "big"), Field(4, 4, "big"), Field(8, 4, "big"),
              Field(12, 4, "big")]

CSV_SEEDS = [
    b"sepal,petal,width,species\n5.1,3.5,1.4,setosa\n4.9,3.0,1.4,setosa\n"
    b"6.3,3.3,6.0,virginica\n5.8,2.7,5.1,virginica\n7.0,3.2,4.7,versicolor\n",
    b"1.0,2.0,0.5\n2.0,1.0,1.5\n3.5,-1.0,2.5\n4.0,0.0,-3.25\n",
    b'"a","b c",y\n"1","2",x\n3,4,"y"\n\n5,6,x\n',
]


# --------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------


def _ckpt_oracle(name, fn):
    return Oracle(name, fn, (CheckpointError,))


def _load_model(path):
    ckpt = crio.load(path)
    if ckpt.config is not None:
        ckpt.model()
    return ckpt


ORACLES = {
    "cr.load": _ckpt_oracle("cr.load", crio.load),
    "cr.load + model()": _ckpt_oracle("cr.load + model()", _load_model),
    "load_mnist": Oracle(
        "load_mnist", lambda p: load_mnist(p.parent, kind="train"), (DataFormatError,),
        names=lambda p: (p.name, "train-images", "train-labels", str(p.parent))),
    "load_csv": Oracle("load_csv", load_csv, (DataFormatError,)),
}


@pytest.fixture(scope="module")
def ckpt_seeds(tmp_path_factory):
    return _checkpoint_seeds(tmp_path_factory.mktemp("seeds"))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------
# The fuzz tests
# --------------------------------------------------------------------------


def test_fuzz_checkpoints(ckpt_seeds, tmp_path):
    oracle, model_oracle = ORACLES["cr.load"], ORACLES["cr.load + model()"]

    @settings(max_examples=N_CKPT, **FUZZ)
    @given(mutants(ckpt_seeds, CKPT_FIELDS))
    def run(data):
        path = _write(tmp_path / "fuzz.cr", data)
        if oracle(path) == "ok":
            model_oracle(path)

    run()


def _json_values():
    leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.sampled_from([0, 1, -1, 2**31, 10**12, 1e308, float("nan")])
            | st.text(max_size=8))
    return st.recursive(leaf, lambda c: st.lists(c, max_size=3)
                        | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for k, v in enumerate(obj):
            yield from _paths(v, prefix + (k,))


def _replace(obj, path, value):
    if not path:
        return value
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


def _rebuild(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def test_fuzz_checkpoint_headers(ckpt_seeds, tmp_path):
    """Structure-aware: valid framing, random JSON values in the header and metadata."""
    oracle, model_oracle = ORACLES["cr.load"], ORACLES["cr.load + model()"]

    @settings(max_examples=N_JSON, **FUZZ)
    @given(st.sampled_from(ckpt_seeds[:2]), st.data(), _json_values(), st.booleans())
    def run(seed, data, value, inner):
        (n,) = struct.unpack("<Q", seed[:8])
        header = json.loads(seed[8:8 + n])
        body = seed[8 + n:]
        if inner:  # inside the chainrule metadata (itself JSON in a string)
            meta = json.loads(header["__metadata__"]["chainrule"])
            where = data.draw(st.sampled_from(list(_paths(meta))))
            meta = _replace(meta, where, value)
            header["__metadata__"]["chainrule"] = json.dumps(meta)
        else:
            where = data.draw(st.sampled_from(list(_paths(header))))
            header = _replace(header, where, value)
            if not isinstance(header, dict):
                header = {"x": header}
        path = _write(tmp_path / "fuzz.cr", _rebuild(header, body))
        if oracle(path) == "ok":
            model_oracle(path)

    run()


def test_fuzz_idx(tmp_path):
    oracle = ORACLES["load_mnist"]
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]

    @settings(max_examples=N_IDX, **FUZZ)
    @given(st.integers(0, 1), mutants(IDX_SEEDS, IDX_FIELDS), st.booleans())
    def run(which, data, compress):
        for p in tmp_path.iterdir():
            p.unlink()
        # the other file of the pair stays valid
        _write(tmp_path / names[1 - which], IDX_SEEDS[1 - which])
        if compress:
            target = _write(tmp_path / (names[which] + ".gz"), gzip.compress(data, mtime=0))
        else:
            target = _write(tmp_path / names[which], data)
        oracle(target)

    run()


def test_fuzz_idx_gzip_bytes(tmp_path):
    """Mutations of the compressed bytes themselves (CRC, lengths, deflate blocks)."""
    oracle = ORACLES["load_mnist"]
    seed = gzip.compress(IDX_SEEDS[0], mtime=0)

    @settings(max_examples=max(N_IDX // 5, 30), **FUZZ)
    @given(mutants([seed], [Field(4, 4, "little")]))
    def run(data):
        _write(tmp_path / "train-labels-idx1-ubyte", IDX_SEEDS[1])
        oracle(_write(tmp_path / "train-images-idx3-ubyte.gz", data))

    run()


def test_fuzz_csv(tmp_path):
    oracle = ORACLES["load_csv"]

    @settings(max_examples=N_CSV, **FUZZ)
    @given(mutants(CSV_SEEDS))
    def run(data):
        oracle(_write(tmp_path / "table.csv", data))

    run()


def _bulk(oracle, seeds, fields, write, n, seed):
    r = random.Random(seed)
    for k in range(n):
        data, recipe = random_input(r, seeds, fields)
        path = write(data)
        try:
            outcome = oracle(path)
        except BaseException:
            keep = path.with_name("FAILED-" + path.name)
            keep.write_bytes(data)
            print(f"input {k} of seed {seed} failed; recipe {recipe!r}; bytes kept in {keep}")
            raise
        if outcome == "ok" and oracle is ORACLES["cr.load"]:
            ORACLES["cr.load + model()"](path)


def test_bulk_fuzz_checkpoints(ckpt_seeds, tmp_path):
    _bulk(ORACLES["cr.load"], ckpt_seeds, CKPT_FIELDS,
          lambda b: _write(tmp_path / "fuzz.cr", b), N_BULK, seed=1)


def test_bulk_fuzz_idx(tmp_path):
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    r = random.Random(2)

    def write(data):
        for p in tmp_path.iterdir():
            p.unlink()
        which = r.randrange(2)
        _write(tmp_path / names[1 - which], IDX_SEEDS[1 - which])
        if r.random() < 0.3:
            return _write(tmp_path / (names[which] + ".gz"), gzip.compress(data, mtime=0))
        return _write(tmp_path / names[which], data)

    _bulk(ORACLES["load_mnist"], IDX_SEEDS, IDX_FIELDS, write, N_BULK, seed=3)


def test_bulk_fuzz_csv(tmp_path):
    _bulk(ORACLES["load_csv"], CSV_SEEDS, (), lambda b: _write(tmp_path / "t.csv", b),
          N_BULK, seed=4)


def test_zz_record_fuzz_figures():
    total = sum(o.total for o in ORACLES.values())
    if not total:
        pytest.skip("no fuzz test ran in this process")
    record("fuzz", total=total, **{
        name: {"inputs": o.total, **o.counts, "errors": o.errors,
               "worst_seconds": round(o.worst_seconds, 4),
               "worst_peak_vs_limit": round(o.worst_peak_ratio, 4)}
        for name, o in ORACLES.items()})


# --------------------------------------------------------------------------
# Headers that declare far more than the file holds
# --------------------------------------------------------------------------


def _huge_files(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, loader) for headers declaring ~10^12 bytes in tiny files."""
    files = {}
    (d / "ck").mkdir()
    p = d / "ck" / "len.cr"
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    files["checkpoint header length 10^12"] = (p, "cr.load")
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6],
                               "data_offsets": [0, 4 * 10**12]}}).encode()
    p = d / "ck" / "shape.cr"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    files["checkpoint tensor of 4*10^12 bytes"] = (p, "cr.load")
    for name, dims in {"idx 10^12 bytes": (10**4, 10**4, 10**4),
                       "idx zero dim, overflowing product": (0, 2**32 - 1, 2**32 - 1)}.items():
        for gz in (False, True):
            sub = d / f"idx{len(files)}"
            sub.mkdir()
            raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", *dims) + b"\1" * 16
            fname = "train-images-idx3-ubyte" + (".gz" if gz else "")
            (sub / fname).write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
            (sub / "train-labels-idx1-ubyte").write_bytes(IDX_SEEDS[1])
            files[name + (" (gzip)" if gz else "")] = (sub / fname, "load_mnist")
    return files


@pytest.mark.parametrize("case", ["checkpoint header length 10^12",
                                  "checkpoint tensor of 4*10^12 bytes", "idx 10^12 bytes",
                                  "idx 10^12 bytes (gzip)", "idx zero dim, overflowing product",
                                  "idx zero dim, overflowing product (gzip)"])
def test_huge_declared_sizes_fail_fast_without_allocating(case, tmp_path):
    path, loader = _huge_files(tmp_path)[case]
    oracle = ORACLES[loader]
    oracle.mem_slack = 1 << 20
    assert oracle(path) == "rejected"
    assert oracle.worst_seconds < 2.0


def test_huge_declared_sizes_under_an_address_space_limit(tmp_path):
    """The same files in a subprocess limited to 1 GiB of address space: no MemoryError."""
    files = _huge_files(tmp_path)
    script = textwrap.dedent(f"""
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from pathlib import Path
        from chainrule.io import load, CheckpointError
        try:
            from chainrule.data import load_mnist
        except ImportError:
            from chainrule.data.mnist import load_mnist
        from chainrule.data._common import DataFormatError
        for path, loader in {[(str(p), l) for p, l in files.values()]!r}:
            t = time.perf_counter()
            try:
                if loader == "cr.load":
                    load(path)
                else:
                    load_mnist(Path(path).parent)
                print("LOADED", path)
            except (CheckpointError, DataFormatError) as e:
                print("REFUSED", round(time.perf_counter() - t, 3), path)
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == len(files) and all(s.startswith("REFUSED") for s in lines), out.stdout
    assert all(float(s.split()[1]) < 2.0 for s in lines)


# --------------------------------------------------------------------------
# Pickles are never unpickled
# --------------------------------------------------------------------------


def _malicious_pickle(marker: Path) -> bytes:
    """A pickle whose loading would create ``marker`` (built, never loaded here)."""
    import pickle  # the only use of pickle in the test suite: the hostile fixture

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Evil(), protocol=2)


def _pickle_variants(marker: Path) -> dict[str, bytes]:
    blob = _malicious_pickle(marker)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:  # the layout of a torch.save file
        z.writestr("archive/data.pkl", blob)
        z.writestr("archive/version", "3\n")
    return {
        "raw pickle": blob,
        "torch-style zip": zbuf.getvalue(),
        "pickle behind a length field": struct.pack("<Q", len(blob)) + blob,
        "gzip pickle": gzip.compress(blob, mtime=0),
    }


@pytest.mark.parametrize("variant", ["raw pickle", "torch-style zip",
                                     "pickle behind a length field", "gzip pickle"])
def test_pickles_are_never_loaded(variant, tmp_path):
    marker = tmp_path / "PWNED"
    data = _pickle_variants(marker)[variant]
    outcomes = {}
    outcomes["cr.load"] = ORACLES["cr.load"](_write(tmp_path / "model.cr", data))
    d = tmp_path / "mnist"
    d.mkdir()
    _write(d / "train-labels-idx1-ubyte", IDX_SEEDS[1])
    outcomes["load_mnist"] = ORACLES["load_mnist"](_write(d / "train-images-idx3-ubyte", data))
    outcomes["load_csv"] = ORACLES["load_csv"](_write(tmp_path / "table.csv", data))
    assert not marker.exists(), f"unpickling happened ({variant})"
    assert set(outcomes.values()) == {"rejected"}, outcomes


def test_the_pickle_fixture_is_live(tmp_path):
    """Guard against a harmless fixture: the blob does create the marker when unpickled."""
    import pickle

    marker = tmp_path / "PWNED"
    blob = _malicious_pickle(marker)
    pickle.loads(blob).close()  # deliberate: proves the fixture is hostile
    assert marker.exists()
