"""The documentation runs: every fenced ```python block of README.md and docs/*.md.

Each page's python blocks run in order, in one namespace, in a fresh
temporary directory, after seeding chainrule's, NumPy's and Python's
generators with 0 -- the way a reader would paste them into one session. A
block cannot rely on anything the page does not define or generate.

Conventions a page follows (checked here):

* every fence names its language (```python, ```bash, ```console, ```text,
  ```json, ...); only ``python`` blocks run;
* a python block opts out only with a marker every reader sees, its first
  line ``# not run by the docs tests: <the reason>``, and the reason is
  required;
* a block fenced ```text output right after a python block is that block's
  printed output: it must match what the block prints (numbers to the digits
  shown; a line ``...`` stands for any lines), so a transcript cannot drift
  from the code; a ```console output block is a transcript of ``$ chainrule``
  commands (or a ```console command is followed by its ```text output), which
  are run and compared the same way;
* a count written ``<!--count:NAME-->47<!--/count-->`` is generated from the
  code (``COUNTS``); ``CHAINRULE_WRITE_DOCS=1 pytest tests/test_docs.py -k
  counts`` rewrites them;
* the pages never point at files a user of the package does not have.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
SKIP = re.compile(r"^#\s*not run by the docs tests\b:?\s*(?P<reason>.*?)\s*$")
COUNT = re.compile(r"<!--count:(?P<name>[a-z_]+)-->(?P<value>[^<]*)<!--/count-->")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    words: tuple[str, ...]  # the rest of the info string
    code: str
    skip: str | None  # the reason given by a skip marker, or None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), m.group("indent")
        info = m.group("info").split()
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            j += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in
                lines[i + 1:j]]
        marker = SKIP.match(body[0]) if body else None
        out.append(Block(page, i + 1, info[0] if info else "", tuple(info[1:]),
                         "\n".join(body) + "\n", marker.group("reason") if marker else None))
        i = j + 1
    return out


ALL = [b for page in PAGES for b in blocks(page)]
RUNNABLE = [p for p in PAGES if any(b.lang == "python" for b in blocks(p))]


def test_there_is_documentation_to_run():
    assert len(RUNNABLE) >= 6 and sum(b.lang == "python" for b in ALL) >= 20


def test_every_fence_names_its_language():
    bare = [b.where for b in ALL if not b.lang]
    assert not bare, f"fences without a language (```python, ```text, ...): {bare}"


def test_skip_markers_give_a_reason():
    for b in ALL:
        if b.skip is not None:
            assert b.lang == "python", f"{b.where}: a skip marker above a {b.lang} block"
            assert re.search(r"\w{3}", b.skip), f"{b.where}: the skip marker gives no reason"


def test_output_blocks_belong_to_a_python_block():
    for page in PAGES:
        bs = blocks(page)
        for prev, b in zip([None, *bs], bs):
            if "output" in b.words and b.lang != "console":
                assert prev is not None and prev.skip is None and (
                    prev.lang == "python" or (prev.lang == "console" and "output" not in
                                              prev.words)), (
                    f"{b.where}: an output block must follow the python block (or the "
                    "console command) it shows")


def test_pages_stand_on_their_own():
    # users of the package have neither the project's shared folder nor this machine
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for bad in ("shared/seeds", "/work/", "shared/API.md", "shared/STYLE.md"):
            assert bad not in text, f"{page.relative_to(ROOT)} points at {bad!r}"


# --------------------------------------------------------------------------
# Running the pages
# --------------------------------------------------------------------------

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _same_line(a: str, b: str) -> bool:
    """Equal text, with numbers equal to the digits shown in ``b`` (one unit in the last place)."""
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        if x == y:
            continue
        if "." not in y and "e" not in y.lower():
            return False  # integers (counts, steps, node numbers) must be exact
        decimals = len(re.split("[eE]", y.split(".")[1])[0]) if "." in y else 0
        exp = int(re.split("[eE]", y)[1]) if re.search("[eE]", y) else 0
        if abs(float(x) - float(y)) > 1.01 * 10.0 ** (exp - decimals):
            return False
    return True


def _same_output(got: str, want: str) -> bool:
    """``got`` printed what ``want`` shows; a line ``...`` in ``want`` stands for any lines."""
    g = [ln.rstrip() for ln in got.strip("\n").splitlines()]
    w = [ln.rstrip() for ln in want.strip("\n").splitlines()]

    def match(i: int, j: int) -> bool:
        if j == len(w):
            return i == len(g)
        if w[j].strip() == "...":
            return any(match(k, j + 1) for k in range(i, len(g) + 1))
        return i < len(g) and _same_line(g[i], w[j]) and match(i + 1, j + 1)

    return match(0, 0)


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_page_runs_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if "matplotlib" in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    monkeypatch.setattr(sys, "argv", ["docs"])
    cr.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  (a reader's session may use the legacy global too)
    random.seed(0)
    namespace: dict = {"__name__": "__main__"}
    bs = blocks(page)
    for i, b in enumerate(bs):
        if b.lang != "python" or b.skip is not None:
            continue
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                exec(compile(b.code, b.where, "exec"), namespace)  # noqa: S102
        except Exception as exc:
            raise AssertionError(
                f"{b.where}: the block fails: {type(exc).__name__}: {exc}") from exc
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")
        nxt = bs[i + 1] if i + 1 < len(bs) else None
        if nxt is not None and "output" in nxt.words and nxt.lang != "console":
            assert _same_output(out.getvalue(), nxt.code), (
                f"{nxt.where}: the output shown is not what {b.where} prints.\n"
                f"--- printed ---\n{out.getvalue()}--- shown ---\n{nxt.code}")


def test_output_comparison_is_strict_where_it_should_be():
    assert _same_output("a\nb\nc\nd\n", "a\n...\nd")
    assert _same_output("a\nd\n", "a\n...\nd")
    assert not _same_output("a\nb\nc\n", "a\n...\nd")
    assert _same_output("loss 0.1235\n", "loss 0.1234")  # the last digit shown
    assert not _same_output("loss 0.1246\n", "loss 0.1234")
    assert not _same_output("after step 1941\n", "after step 1942")
    assert not _same_output("a 1\nb 2\n", "a 1")
    assert _same_output("x 2.5e-03\n", "x 2.6e-03")
    assert not _same_output("[1] J\n", "[2] J")


def _transcripts() -> list[Block]:
    """```console output blocks, and ```console commands followed by ```text output."""
    out = []
    for page in PAGES:
        bs = blocks(page)
        for b, nxt in zip(bs, [*bs[1:], None]):
            if b.lang != "console":
                continue
            if "output" in b.words:
                out.append(b)
            elif nxt is not None and nxt.lang == "text" and "output" in nxt.words:
                out.append(Block(b.page, b.line, b.lang, b.words, b.code + nxt.code, None))
    return out


@pytest.mark.parametrize("block", _transcripts(), ids=lambda b: b.where)
def test_console_transcript_is_what_the_command_prints(block, tmp_path, monkeypatch):
    """A ```console output block (or a ```console command followed by a ```text
    output block): each ``$ chainrule ...`` command runs, and what it prints
    must be what the page shows (``...`` lines stand for any lines)."""
    import shlex

    from chainrule.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    lines = block.code.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("$ ")]
    assert starts and starts[0] == 0, f"{block.where}: a transcript starts with a $ command"
    for k, i in enumerate(starts):
        argv = shlex.split(lines[i][2:])
        assert argv[0] == "chainrule", f"{block.where}: only chainrule commands are run"
        shown = "\n".join(lines[i + 1:starts[k + 1] if k + 1 < len(starts) else len(lines)])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(argv[1:])
        assert code in (0, None), f"{block.where}: {lines[i]} exited with {code}"
        assert _same_output(out.getvalue(), shown), (
            f"{block.where}: the transcript is not what `{lines[i][2:]}` prints.\n"
            f"--- printed ---\n{out.getvalue()}--- shown ---\n{shown}")


# --------------------------------------------------------------------------
# Counts on pages are generated
# --------------------------------------------------------------------------


def _registry_cases() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from cases_nn import CASES as nn_cases
        from cases_ops import CASES as ops_cases
    finally:
        sys.path.pop(0)
    return sum(len(c) for c in {**ops_cases, **nn_cases}.values())


def _bad_input_rows() -> int:
    from hardening.badinputs import ROWS

    return len(ROWS)


def counts() -> dict[str, str]:
    """Every count a page may quote, computed from the code."""
    import chainrule.nn  # noqa: F401  (registers the loss rules)

    cases = _registry_cases()
    return {
        "rules": str(len(cr.RULES)),
        "registry_cases": str(cases),
        "registry_checks": f"{3 * cases:,}",  # first order, second order, float32
        "bad_input_rows": str(_bad_input_rows()),
    }


def test_counts_on_pages_are_current():
    want = counts()
    stale = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in COUNT.finditer(text):
            name = m.group("name")
            assert name in want, f"{page.relative_to(ROOT)}: unknown count {name!r}"
            if m.group("value") != want[name]:
                stale.append(f"{page.relative_to(ROOT)}: {name} is {m.group('value')}, "
                             f"the code says {want[name]}")
        if os.environ.get("CHAINRULE_WRITE_DOCS") == "1":
            new = COUNT.sub(lambda m: f"<!--count:{m.group('name')}-->"
                            f"{want[m.group('name')]}<!--/count-->", text)
            if new != text:
                page.write_text(new, encoding="utf-8")
    if os.environ.get("CHAINRULE_WRITE_DOCS") != "1":
        assert not stale, ("stale counts (CHAINRULE_WRITE_DOCS=1 pytest tests/test_docs.py "
                           "-k counts rewrites them):\n" + "\n".join(stale))
