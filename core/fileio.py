"""Small, safe file helpers shared by the file backend and the file sink.

Guarantees: directories are created 0700 and files 0600 by the running user; nothing is ever
opened through a symlink (``O_NOFOLLOW``); replacements are atomic (temp + fsync + rename).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["flock_until", "DirectorySyncFailed", "NotARegularFile", "write_atomically", "ensure_private_dir", "append_private",
           "replace_private", "read_private", "read_regular", "read_tail", "open_regular", "stale_temps",
           "remove_stale_temps"]

MAX_READ_BYTES = 1 << 20  # no file this tool reads is legitimately larger than 1 MiB


class NotARegularFile(ConfigurationError):
    """A path that must be a regular file is a FIFO, device, socket, directory or symlink (exit 78)."""

    default_reason = "not_a_regular_file"


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


def stale_temps(dir_fd: int, pattern: re.Pattern[str], uid: int) -> list[str]:
    """The names in the directory ``dir_fd`` that ``pattern`` fully matches and that are regular
    files owned by ``uid`` (temporary files a killed writer left), sorted. Each entry is judged by
    ``lstat``: a symlink, directory, FIFO or someone else's file is never listed."""
    found = []
    for name in sorted(os.listdir(dir_fd)):
        if not pattern.fullmatch(name):
            continue
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
            found.append(name)
    return found


def remove_stale_temps(dir_fd: int, pattern: re.Pattern[str], uid: int) -> list[str]:
    """Unlink every :func:`stale_temps` entry (the link itself: nothing is followed); returns the
    names removed. An entry that vanished or cannot be removed is skipped, never an error."""
    removed = []
    for name in stale_temps(dir_fd, pattern, uid):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            continue
        removed.append(name)
    return removed


def flock_until(fd: int, deadline: float, *, poll_s: float = 0.1) -> bool:
    """Take an exclusive ``flock`` on ``fd``, polling until ``deadline`` (``time.monotonic()``).
    True once held; False when the deadline passed with another holder still on it."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)


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


def open_regular(path: Path | str, flags: int, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
    """Open ``path`` without following a symlink and without blocking, and insist on a regular file.

    ``O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`` are added to ``flags``: a symlink fails with ELOOP, a FIFO
    or device never blocks the open. The open descriptor is then checked with ``fstat`` (no race
    between check and use) and ``O_NONBLOCK`` is cleared again. Raises :class:`NotARegularFile`
    for anything that is not a regular file (a symlink included), FileNotFoundError if absent.
    """
    shown = str(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise NotARegularFile(
                f"{shown} is not a regular file ({os.strerror(err.errno)}); refusing to use it",
                remedy=f"move {shown} aside (check who planted it); the next run recreates it",
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotARegularFile(
            f"{shown} is not a regular file (a FIFO, device, socket or directory); refusing to use it",
            remedy=f"move {shown} aside (check who planted it); the next run recreates it",
        )
    os.set_blocking(fd, True)
    return fd


def read_regular(path: Path | str, *, max_bytes: int = MAX_READ_BYTES, dir_fd: int | None = None) -> bytes | None:
    """The whole content of a regular file, or None if it does not exist.

    Never follows a symlink, never blocks on a FIFO (:func:`open_regular`), and refuses a file
    larger than ``max_bytes`` (:class:`ConfigurationError`, reason ``file_too_large``).
    """
    try:
        fd = open_regular(path, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigurationError(
            f"{path} is larger than {max_bytes} bytes; refusing to read it", reason="file_too_large",
            remedy=f"move {path} aside and check what wrote it",
        )
    return data


def read_tail(path: Path | str, *, max_bytes: int = 64 * 1024) -> bytes | None:
    """At most the last ``max_bytes`` of a regular file (cut at a line start), or None if absent.

    For logs that may be large or hostile: no symlink, no FIFO or device, bounded memory.
    """
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            handle.seek(size - max_bytes)
            data = handle.read(max_bytes)
            newline = data.find(b"\n")
            return data[newline + 1 :] if newline >= 0 else b""
        return handle.read(max_bytes)


def append_private(path: Path, line: str) -> None:
    """Append one line to a 0600 regular file (created if needed): never through a symlink,
    never blocking on a FIFO planted at ``path`` (:class:`NotARegularFile`)."""
    ensure_private_dir(path.parent)
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
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
    """Read a regular file without following a symlink or blocking on a FIFO; None when absent."""
    return read_regular(path)
