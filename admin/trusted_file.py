"""System-wide files root trusts: the roster and ``/etc/claude-auth-sync/config.toml``.

Root acts on what these files say (which users get tokens, which address their tokens are sent
to), so a file another account could have written is refused, never read. :func:`open_trusted`
guarantees, before anything is read:

* the path names a regular file (a FIFO, device, socket or directory is refused without
  blocking: the open uses ``O_NONBLOCK``); the checks are made on the opened descriptor;
* the file is owned by root (or by the account running the check, which cannot gain from
  deceiving itself) and is not group- or world-writable;
* a symlink is followed only if the link itself is owned by such an account; the directory
  holding the path and the directory holding its target are owned by such an account and are
  not group- or world-writable (a sticky directory such as ``/tmp`` is accepted: others cannot
  replace a file there that they do not own).

Every refusal is an :class:`UntrustedFile` (a ConfigurationError: exit 78) whose message is one
line and whose remedy is the command that repairs it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.fileio import NotARegularFile

__all__ = ["UntrustedFile", "open_trusted", "check_trusted", "read_trusted"]

MAX_BYTES = 1 << 20


class UntrustedFile(ConfigurationError):
    """A system-wide file is writable by, or owned by, someone other than root (exit 78)."""

    default_reason = "untrusted_file"


def _trusted_uids() -> set[int]:
    return {0, os.geteuid()}


def _refuse(path: Path, problem: str, remedy: str) -> UntrustedFile:
    return UntrustedFile(f"{path} {problem}; refusing to trust it", remedy=remedy)


def _check_directory(directory: Path) -> None:
    st = os.stat(directory)
    fix = f"chown root:root {directory} && chmod 0755 {directory}"
    if st.st_uid not in _trusted_uids():
        raise _refuse(directory, f"(a directory holding a system file) is owned by uid {st.st_uid}", fix)
    if stat.S_IMODE(st.st_mode) & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise _refuse(directory, f"(a directory holding a system file) has mode {stat.S_IMODE(st.st_mode):04o}", fix)


def _check_stat(path: Path, st: os.stat_result) -> None:
    fix = f"chown root:root {path} && chmod 0644 {path} (setup-devvm.sh does this)"
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(f"{path} is not a regular file (a FIFO, device, socket or directory)",
                              remedy=f"replace {path} with a regular file owned by root")
    if st.st_uid not in _trusted_uids():
        raise _refuse(path, f"is owned by uid {st.st_uid}, not root", fix)
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise _refuse(path, f"is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})", fix)


def _check_link_and_directories(path: Path) -> None:
    absolute = Path(os.path.abspath(path))
    link = os.lstat(absolute)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in _trusted_uids():
        raise _refuse(absolute, f"is a symlink owned by uid {link.st_uid}",
                      f"replace the symlink {absolute} with a root-owned file")
    _check_directory(absolute.parent)
    target_dir = Path(os.path.realpath(absolute)).parent
    if target_dir != absolute.parent:
        _check_directory(target_dir)


def open_trusted(path: Path | str) -> int:
    """An open read-only descriptor (blocking mode restored) on a file that passed every check.

    Raises FileNotFoundError if the path does not exist, :class:`UntrustedFile` or
    :class:`~claude_auth_sync.fileio.NotARegularFile` (both exit 78) otherwise.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        _check_stat(path, os.fstat(fd))
        _check_link_and_directories(path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_trusted(path: Path | str) -> bool:
    """True if ``path`` exists and passed every check, False if it does not exist; raises else."""
    try:
        os.close(open_trusted(path))
    except FileNotFoundError:
        return False
    return True


def read_trusted(path: Path | str, max_bytes: int = MAX_BYTES) -> bytes:
    """The content (at most ``max_bytes``, else ConfigurationError) of a file that passed the checks."""
    with os.fdopen(open_trusted(path), "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigurationError(f"{path} is larger than {max_bytes} bytes", reason="file_too_large",
                                 remedy=f"check what wrote {path}")
    return data
