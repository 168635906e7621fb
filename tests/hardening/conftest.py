"""Profile switch for the hardening tests (see ``profile.py``).

In the long profile (``CHAINRULE_LONG=1``) tests marked ``slow`` run too;
in the CI profile they are skipped with a reason that says how to run them.
"""

from __future__ import annotations

import pytest

from .profile import LONG, NAME


def pytest_report_header(config):
    return f"chainrule hardening profile: {NAME} (set CHAINRULE_LONG=1 for the long one)"


def pytest_collection_modifyitems(config, items):
    if LONG:
        return
    skip = pytest.mark.skip(reason="long profile only: run with CHAINRULE_LONG=1")
    for item in items:
        if "hardening" in str(item.fspath) and item.get_closest_marker("slow"):
            item.add_marker(skip)
