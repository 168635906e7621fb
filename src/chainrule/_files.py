"""Temporary files for atomic writes, with the permissions a plain write would give.

``tempfile.mkstemp`` creates files readable by their owner only (0600), so a
file written through it and renamed into place ends up 0600 whatever the
user's umask, and overwriting a 0644 file silently makes it 0600. Here the
temporary file is created with mode 0666 and the kernel applies the umask,
exactly as for ``open(path, "w")``; when it replaces an existing file, it
takes that file's mode instead. Nothing else in chainrule is imported here,
so any layer can use it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = ["create_temp", "keep_mode"]


def create_temp(directory: Path, name: str, suffix: str) -> tuple[int, Path]:
    """Create and open a new, empty file next to ``name`` in ``directory``.

    Returns ``(fd, path)``; the name is ``.<name>.<random>.<suffix>`` so a
    half-written file is hidden and never mistaken for the real one. Raises
    ``FileNotFoundError`` when ``directory`` does not exist.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(
        os, "O_CLOEXEC", 0
    )
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(tmp, flags, 0o666), tmp  # the umask applies, as for open()
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


def keep_mode(fd: int, target: Path) -> None:
    """Give the open temporary file ``fd`` the permission bits of ``target``, if it exists.

    An overwrite then keeps the file's mode (a 0644 checkpoint stays 0644).
    """
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return  # a new file: the umask already decided
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
