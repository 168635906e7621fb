"""The ledger's documentation runs as written: every ```python block of its pages runs on
its own, and the ```text block right after one is exactly what it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# page -> the section to take blocks from (None: the whole page)
PAGES = {"docs/learn-backprop.md": None, "docs/ledger.md": None, "docs/notes-to-code.md": None,
         "README.md": "## Seeing backpropagation"}
BLOCK = re.compile(r"```python\n(.*?)```(?:\n\n```text\n(.*?)```)?", re.S)


def blocks():
    for page, section in PAGES.items():
        text = (ROOT / page).read_text(encoding="utf-8")
        if section is not None:
            text = text[text.index(section):]
            text = text[:text.index("\n## ", len(section))]
        for i, m in enumerate(BLOCK.finditer(text)):
            yield pytest.param(m.group(1), m.group(2), id=f"{page}#{i + 1}")


@pytest.mark.parametrize("code, shown", list(blocks()))
def test_block_runs_and_prints_what_the_page_shows(code, shown, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})
    if shown is not None:
        assert out.getvalue() == shown


def test_the_figure_script_draws_every_picture_the_learn_page_shows(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("learn_figures",
                                                  ROOT / "tools" / "learn_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = {p.stem for p in module.draw(tmp_path)}
    page = (ROOT / "docs/learn-backprop.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"\(img/(learn-[\w-]+)\.png\)", page))
    assert shown and shown <= written
    for name in shown:  # the committed pictures are there
        assert (ROOT / "docs" / "img" / f"{name}.png").exists()
