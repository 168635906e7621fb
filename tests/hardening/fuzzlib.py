"""Byte-level mutation of valid files, and the oracle every fuzzed input must pass.

``mutants(seed, fields)`` is a hypothesis strategy of byte strings derived from a
valid file: bit flips, byte sets, truncations, insertions and deletions of junk,
splices (a chunk of the file copied elsewhere), edits of integer header fields
(``fields``: offsets, widths and byte orders of the format's length/size fields,
set to boundary values such as 0, 2**31 or 10**12), text tokens (NaN, Inf,
quotes, NUL, BOM, huge numbers), or plain random junk.

``Oracle`` runs a loader on one input under a wall-clock alarm and tracemalloc,
and accepts only success or the documented exception type with a message that
names the file.
"""

from __future__ import annotations

import contextlib
import signal
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

BOUNDARY_INTS = [0, 1, 2, 7, 8, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                 10**9, 10**12, 2**53, 2**63 - 1, 2**63, 2**64 - 1]
TOKENS = [b"nan", b"NaN", b"inf", b"-inf", b"1e39", b"-1e309", b"1e-50", b'"', b'""', b",",
          b",,", b"\n", b"\r\n", b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\xc3", b" ",
          b"0x10", b"1_000", b"\xe2\x80\xa8", b"{", b"}", b"[", b"]", b"null", b"true",
          b"-0", b"9" * 400, b"[" * 200]


@dataclass(frozen=True)
class Field:
    """An integer field of a header: where it is and how it is written."""

    offset: int
    width: int  # bytes
    order: str  # "little" or "big"


def _apply(data: bytes, muts: Sequence[tuple], fields: Sequence[Field]) -> bytes:
    b = bytearray(data)
    for m in muts:
        kind = m[0]
        n = len(b)
        if kind == "flip" and n:
            pos = m[1] % n
            b[pos] ^= 1 << m[2]
        elif kind == "set" and n:
            b[m[1] % n] = m[2]
        elif kind == "truncate":
            del b[m[1] % (n + 1):]
        elif kind == "insert":
            pos = m[1] % (n + 1)
            b[pos:pos] = m[2]
        elif kind == "delete" and n:
            pos = m[1] % n
            del b[pos:pos + m[2]]
        elif kind == "splice" and n:
            src = m[2] % n
            chunk = bytes(b[src:src + m[3]])
            pos = m[1] % (n + 1)
            if m[4]:
                b[pos:pos + len(chunk)] = chunk  # overwrite
            else:
                b[pos:pos] = chunk  # insert
        elif kind == "field" and fields:
            f = fields[m[1] % len(fields)]
            value = m[2] % (1 << (8 * f.width))
            raw = value.to_bytes(f.width, f.order)
            if f.offset + f.width <= n:
                b[f.offset:f.offset + f.width] = raw
        elif kind == "token":
            pos = m[1] % (n + 1)
            if m[3]:
                b[pos:pos] = m[2]
            else:
                b[pos:pos + len(m[2])] = m[2]
    return bytes(b)


_pos = st.integers(0, 2**20)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(0, 7)),
    st.tuples(st.just("set"), _pos, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), _pos, st.integers(1, 64)),
    st.tuples(st.just("splice"), _pos, _pos, st.integers(1, 128), st.booleans()),
    st.tuples(st.just("field"), st.integers(0, 64), st.sampled_from(BOUNDARY_INTS)
              | st.integers(0, 2**64 - 1)),
    st.tuples(st.just("token"), _pos, st.sampled_from(TOKENS), st.booleans()),
)


def mutants(seeds: Sequence[bytes], fields: Sequence[Field] = ()) -> st.SearchStrategy[bytes]:
    """Byte strings derived from ``seeds`` (valid files) plus pure junk."""

    @st.composite
    def mutated(draw):
        seed = draw(st.sampled_from(list(seeds)))
        muts = draw(st.lists(MUTATION, min_size=1, max_size=5))
        return _apply(seed, muts, fields)

    return st.one_of(mutated(), mutated(), mutated(), st.binary(max_size=600))


class Hang(Exception):
    """A loader ran past its time limit."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise :class:`Hang` if the block runs longer than ``seconds`` (main thread, POSIX)."""
    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Oracle:
    """Run ``load(path)`` on fuzzed files and keep the tallies.

    ``allowed``: the documented exception types. Anything else, a message that
    does not name the file, a run over ``seconds``, or a traced allocation
    peak above ``mem_factor * file size + mem_slack`` bytes fails the input.
    """

    name: str
    load: Callable[[Path], object]
    allowed: tuple[type[BaseException], ...]
    seconds: float = 5.0
    mem_factor: float = 16.0
    mem_slack: int = 4 << 20
    names: Callable[[Path], Sequence[str]] = lambda p: (p.name,)
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "rejected": 0})
    worst_seconds: float = 0.0
    worst_peak_ratio: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    warm: bool = False  # one call made untraced: lazy imports and caches do not count

    def __call__(self, path: Path, size: int | None = None) -> str:
        size = path.stat().st_size if size is None else size
        if not self.warm:
            # the first load in a process imports what the loader imports lazily
            # (pandas: about 25 MB traced), which is no allocation for this file
            self.warm = True
            with contextlib.suppress(Exception), alarm(self.seconds):
                self.load(path)
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        try:
            with alarm(self.seconds):
                self.load(path)
            outcome = "ok"
        except self.allowed as exc:
            msg = str(exc)
            assert msg.strip(), f"{self.name}: {type(exc).__name__} with an empty message"
            assert any(n in msg for n in self.names(path)), (
                f"{self.name}: the message does not name the file {path.name!r}: {msg!r}"
            )
            key = type(exc).__name__
            self.errors[key] = self.errors.get(key, 0) + 1
            outcome = "rejected"
        finally:
            elapsed = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] - base
            if started:
                tracemalloc.stop()
        self.counts[outcome] += 1
        self.worst_seconds = max(self.worst_seconds, elapsed)
        limit = self.mem_factor * size + self.mem_slack
        self.worst_peak_ratio = max(self.worst_peak_ratio, peak / limit)
        assert peak <= limit, (
            f"{self.name}: allocated {peak} bytes (traced peak) for a {size}-byte file"
        )
        return outcome

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def random_mutation(r, fields: Sequence[Field] = ()) -> tuple:
    """One mutation drawn with ``random.Random`` (the bulk fuzz loop; same operators)."""
    pos = r.randrange(1 << 20)
    kind = r.choice(["flip", "flip", "set", "truncate", "insert", "delete", "splice",
                     "field", "field", "token"])
    if kind == "flip":
        return (kind, pos, r.randrange(8))
    if kind == "set":
        return (kind, pos, r.randrange(256))
    if kind == "truncate":
        return (kind, pos)
    if kind == "insert":
        return (kind, pos, r.randbytes(r.randint(1, 64)))
    if kind == "delete":
        return (kind, pos, r.randint(1, 64))
    if kind == "splice":
        return (kind, pos, r.randrange(1 << 20), r.randint(1, 128), r.random() < 0.5)
    if kind == "field":
        value = r.choice(BOUNDARY_INTS) if r.random() < 0.7 else r.randrange(1 << 64)
        return (kind, r.randrange(64), value)
    return (kind, pos, r.choice(TOKENS), r.random() < 0.5)


def random_input(r, seeds: Sequence[bytes], fields: Sequence[Field] = ()) -> tuple[bytes, list]:
    """A mutant of a random seed (or, one time in ten, random junk) and its recipe."""
    if r.random() < 0.1:
        return r.randbytes(r.randrange(600)), ["junk"]
    muts = [random_mutation(r, fields) for _ in range(r.randint(1, 5))]
    seed = r.randrange(len(seeds))
    return _apply(seeds[seed], muts, fields), [("seed", seed)] + muts
