"""Every row of the bad-input table (``badinputs.ROWS``) is a test, and the
table in ``docs/bad-inputs.md`` is generated from the same rows.

Regenerate the page after changing a row::

    CHAINRULE_WRITE_DOCS=1 .venv/bin/pytest tests/hardening/test_bad_inputs.py -k page
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from .badinputs import KINDS, ROWS, markdown

PAGE = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
BEGIN, END = "<!-- BEGIN GENERATED TABLE -->", "<!-- END GENERATED TABLE -->"


def _params():
    for r in ROWS:
        marks = [pytest.mark.xfail(strict=True, reason=f"known bug: {r.bug}")] if r.bug else []
        yield pytest.param(r, id=r.id, marks=marks)


@pytest.mark.parametrize("row", list(_params()))
def test_row(row, tmp_path, monkeypatch):
    env = SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch)
    if row.raises is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN rows: NumPy may warn
            result = row.call(env)
        assert row.check(result), f"{row.id}: unexpected result {result!r}"
        return
    if row.raises == "exit 2":
        code, err, _ = row.call(env)
        assert code == 2, f"exit status {code}, stderr: {err!r}"
        msg = err.strip().splitlines()[-1] if err.strip() else ""
        assert msg.startswith("chainrule: error:"), err
    else:
        with pytest.raises(row.raises) as info:
            row.call(env)
        msg = str(info.value)
    missing = [s for s in row.says if s not in msg]
    assert not missing, f"{row.id}: the message lacks {missing}: {msg!r}"


def test_rows_are_well_formed():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), "duplicate rows"
    assert all(r.kind in KINDS for r in ROWS)
    assert all(r.says or r.raises is None for r in ROWS), "an error row must say what it names"
    assert all(r.check is not None for r in ROWS if r.raises is None)
    covered = {r.kind for r in ROWS}
    assert covered == set(KINDS), f"classes without a row: {set(KINDS) - covered}"


def test_page_matches_the_table():
    table = markdown()
    if os.environ.get("CHAINRULE_WRITE_DOCS") == "1":
        text = PAGE.read_text() if PAGE.exists() else f"{BEGIN}\n{END}\n"
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        PAGE.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
    text = PAGE.read_text()
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert generated == table, (
        "docs/bad-inputs.md is out of date: CHAINRULE_WRITE_DOCS=1 "
        ".venv/bin/pytest tests/hardening/test_bad_inputs.py -k page"
    )
