"""Small, safe file helpers shared by the file backend and the file sink.

Guarantees: directories are created 0700 and files 0600 by the running user; nothing is ever
opened through a symlink (``O_NOFOLLOW``); replacements are atomic (temp + fsync + rename).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["ensure_private_dir", "append_private", "replace_private", "read_private"]


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700; refuse a symlink or a foreign owner."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"{path} is not a plain directory", remedy=f"remove {path} and rerun")
    if st.st_uid != os.getuid():
        raise ConfigurationError(f"{path} is owned by uid {st.st_uid}, not by you", remedy=f"fix the owner of {path}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


def append_private(path: Path, line: str) -> None:
    """Append one line to a 0600 file (created if needed), never through a symlink."""
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def replace_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (0600): temp, fsync, rename, fsync(dir)."""
    from .credentials_file import atomic_write  # the one implementation of the atomic write

    ensure_private_dir(path.parent)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        atomic_write(dir_fd, path.name, data)
    finally:
        os.close(dir_fd)


def read_private(path: Path) -> bytes | None:
    """Read a file without following a symlink; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()
