"""The provisioner's root-only bookkeeping and its run lock.

Guarantees:

* :class:`StateFile` keeps, per user, the accessor and fingerprint of the token this provisioner
  minted (and accessors still to revoke): never a token. It lives in a 0700 directory owned by
  root; a file not owned by root or that does not parse is refused (exit 78), never repaired.
* :meth:`StateFile.save` writes only when something changed, atomically
  (:func:`claude_auth_sync.fileio.write_atomically`: 0600 temporary file, fsync, rename, fsync of
  the directory), so a crash leaves the old or the new bookkeeping, whole.
* :func:`provision_lock` lets one provisioner run at a time (the hourly timer and an admin run):
  an ``flock`` on ``provision.lock``, waited for at most ``wait`` seconds, then :class:`Busy` (75).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from claude_auth_sync.errors import CasError, ConfigurationError
from claude_auth_sync.fileio import flock_until, write_atomically
from claude_auth_sync.model import ExitCode

__all__ = ["Busy", "DEFAULT_STATE_DIR", "StateFile", "provision_lock"]

DEFAULT_STATE_DIR = Path("/var/lib/claude-auth-sync")
STATE_FILE = "tokens.json"
LOCK_NAME = "provision.lock"
LOCK_WAIT_S = 120.0


class StateFile:
    """``<directory>/tokens.json``: ``{"version": 1, "users": {user: entry}}``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self.users: dict[str, dict[str, Any]] = {}
        self._loaded: str = ""

    def load(self) -> None:
        """Read the file (nothing to do when absent); ConfigurationError when foreign or damaged."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_uid != 0 and os.geteuid() == 0:
                raise ConfigurationError(f"{self.path} is not owned by root", remedy=f"inspect and remove {self.path}")
            raw = handle.read()
        try:
            data = json.loads(raw)
            users = data["users"]
            assert isinstance(users, dict)
        except (ValueError, KeyError, AssertionError, TypeError):
            raise ConfigurationError(f"{self.path} is damaged", remedy="inspect it; remove it to start over "
                                     "(tokens minted before can then only be revoked by hand)") from None
        self.users = {str(k): dict(v) for k, v in users.items() if isinstance(v, dict)}
        self._loaded = self._dump()

    def _dump(self) -> str:
        return json.dumps({"version": 1, "users": self.users}, indent=2, sort_keys=True) + "\n"

    @property
    def changed(self) -> bool:
        """True when :attr:`users` differs from what was loaded (or last saved)."""
        return self._dump() != self._loaded

    def ensure_dir(self) -> None:
        """Create the directory 0700; refuse one that is not a directory owned by this (root) user."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigurationError(f"{self.directory} is not a directory owned by root")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)

    def save(self) -> None:
        """Replace the file atomically with :attr:`users`, if they changed."""
        if not self.changed:
            return
        self.ensure_dir()
        text = self._dump()
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            write_atomically(dir_fd, STATE_FILE, text.encode("utf-8"), mode=0o600,
                             temp_name=f".{STATE_FILE}.{secrets.token_hex(6)}")
        finally:
            os.close(dir_fd)
        self._loaded = text


class Busy(CasError):
    """Another provisioner run holds the lock (exit 75)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "busy"


@contextlib.contextmanager
def provision_lock(directory: Path, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """One provisioner at a time (the hourly timer and an admin run must not race)."""
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if not flock_until(fd, time.monotonic() + wait, poll_s=0.2):
            raise Busy(f"another t3-provision-users holds {path}", remedy="wait for it to finish")
        yield
    finally:
        os.close(fd)
