"""Small, safe file helpers shared by the file backend and the file sink.

Guarantees: directories are created 0700 and files 0600 by the running user; nothing is ever
opened through a symlink (``O_NOFOLLOW``); replacements are atomic (temp + fsync + rename).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["DirectorySyncFailed", "write_atomically", "ensure_private_dir", "append_private", "replace_private",
           "read_private"]


class DirectorySyncFailed(OSError):
    """The new file was renamed into place, but fsync of its directory failed (durability unknown)."""


def write_atomically(dir_fd: int, name: str, data: bytes, *, mode: int = 0o600, temp_name: str | None = None) -> None:
    """Replace ``name`` in the directory ``dir_fd`` with ``data``, atomically.

    A temporary file (``temp_name``, default ``<name>.tmp-<pid>-<random>``) is created with
    ``O_CREAT|O_EXCL|O_NOFOLLOW`` and ``mode`` (set with fchmod, so the umask does not matter),
    written, fsync-ed and renamed over ``name``; then the directory is fsync-ed. A crash leaves the
    old or the new file, complete. Any error before the rename removes the temporary file and
    raises the OSError with the old file untouched; an error of the final directory fsync raises
    :class:`DirectorySyncFailed`.
    """
    temp = temp_name or f"{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    try:
        os.fsync(dir_fd)
    except OSError as err:
        raise DirectorySyncFailed(err.errno, err.strerror) from None


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
    ensure_private_dir(path.parent)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        write_atomically(dir_fd, path.name, data, mode=0o600)
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
