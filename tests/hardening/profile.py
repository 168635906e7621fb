"""The profile switch: how much work each hardening test does.

``CHAINRULE_LONG=1`` selects the long profile (about 100x the CI work, run
once before a release; the figures are in ``docs/reliability.md``). Anything
else selects the CI profile, which keeps ``tests/hardening`` under ~90 s on
2 cores.

``CHAINRULE_FIGURES=path`` makes tests append what they measured (one JSON
object per line) to ``path``, which is how the figures page is filled.
"""

from __future__ import annotations

import json
import os
import threading

LONG = os.environ.get("CHAINRULE_LONG") == "1"
NAME = "long" if LONG else "ci"


def pick(ci: int, long: int) -> int:
    """``ci`` in the CI profile, ``long`` in the long one."""
    return long if LONG else ci


_lock = threading.Lock()


def record(test: str, **figures: object) -> None:
    """Append measured figures to ``$CHAINRULE_FIGURES`` (a no-op when unset)."""
    path = os.environ.get("CHAINRULE_FIGURES")
    if not path:
        return
    line = json.dumps({"test": test, "profile": NAME, **figures}, sort_keys=True)
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
