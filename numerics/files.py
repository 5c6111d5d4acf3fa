"""One atomic file write for the whole package (reports, CSV tables, plots, generated code).

The content goes to a temporary file in the target's folder, is flushed to disk, gets the
mode of any file this process creates (0o666 less the umask; ``mkstemp`` makes 0600), and
replaces the target with ``os.replace``: a reader, or another process writing the same
file, sees the old file or the new one, never half of one; an interrupted write leaves the
old file and no temporary.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["atomic_write", "umask"]


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable, binary: bool = False, by_path: bool = False) -> str:
    """Replace ``path`` with what ``write(fh)`` writes to an open file (text, or bytes if ``binary``);
    ``by_path``: ``write(tmp)`` gets the temporary file's name instead (for writers that open files)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        if by_path:
            os.close(fd)
            write(tmp)
        else:
            with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
