"""The whole write path of ``.credentials.json``: read, classify, merge, atomic write, rollback.

The file I/O of the built-in ``credentials_file`` restorer (hook ``cas_restorers``, in the package
``__init__``); what a login is and how it is merged are :mod:`claude_auth_sync.login`. Guarantees:

* **Only ``claudeAiOauth`` changes.** Every other top-level key (``mcpOAuth``, ...) is carried over
  with its exact JSON content and in its original order.
* **Atomic.** A temporary file is created in the same directory with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600, written, ``fsync``-ed, renamed over the target, and
  the directory is ``fsync``-ed. A crash at any point leaves either the old or the new file,
  complete; a temporary file left by a crash is private (0600) and removed by the next write.
* **Never through a symlink, never someone else's file.** The credentials file must be a regular
  file owned by the running user; the config directory (after resolving a symlink) must be owned
  by the running user. Anything else raises :class:`CredentialsUnsafe` and nothing is touched.
* **Under Claude Code's own lock.** Both ``proper-lockfile`` directories are held only around
  read-merge-rename (see :mod:`.lock`); the file is re-read under the lock, and if
  its OAuth object is no longer the one the caller saw, :class:`ConcurrentChange` is raised and
  nothing is written.
* **Reversible.** :meth:`CredentialsFile.restore` returns the exact previous bytes; before it writes
  it also leaves a 0600 copy beside the file (``.credentials.json.pre-restore``), so even a crash
  between restore and rollback loses nothing. :meth:`CredentialsFile.rollback` puts the previous
  bytes back atomically (or removes the file if there was none).
* **Unparseable files are kept**: copied to ``.credentials.json.corrupt-<UTC timestamp>`` (0600)
  before being replaced; the path is reported in the status event.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from claude_auth_sync.errors import (
    CasError,
    ConcurrentChange,
    CredentialsBusy,
    CredentialsError,
    CredentialsUnsafe,
    CredentialsUnsupported,
)
from claude_auth_sync.fileio import (
    DirectorySyncFailed,
    NotARegularFile,
    read_regular,
    remove_stale_temps,
    write_atomically,
)
from claude_auth_sync.login import classify, merge_oauth
from claude_auth_sync.oauth import same_oauth
from claude_auth_sync.model import RELOGIN_COMMAND, ExitCode, LocalLogin, LoginState, OAuth, RestoreSnapshot

from .lock import LockBusy, LockCompromised, LockError, claude_credentials_lock

__all__ = [
    "CREDENTIALS_NAME",
    "CredentialsFile",
    "CredentialsWriteFailed",
    "classify",
    "merge_oauth",
    "atomic_write",
]

CREDENTIALS_NAME = ".credentials.json"
TEMP_MARK = ".tmp-"  # write_atomically names its temp files "<name>.tmp-<pid>-<random>"
# Ours only: the temp files of every file this module writes beside the credentials file.
STALE_TEMP_PATTERN = re.compile(re.escape(CREDENTIALS_NAME) + ".*" + re.escape(TEMP_MARK) + ".*", re.DOTALL)
PRE_RESTORE_SUFFIX = ".pre-restore"
JOURNAL_NAME = CREDENTIALS_NAME + ".restore-journal"


class CredentialsWriteFailed(CredentialsError):
    """The disk refused the write (EIO, ENOSPC, ...). The old file is intact (exit 75)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "credentials_write_failed"


def _open_dir(directory: Path, uid: int) -> int:
    """Open the (resolved) config directory, refusing one owned by someone else."""
    real = directory.resolve()
    try:
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CredentialsUnsafe(
            f"the Claude config directory {directory} does not exist", reason="config_dir_missing", remedy=RELOGIN_COMMAND
        ) from None
    st = os.fstat(fd)
    if st.st_uid != uid:
        os.close(fd)
        via = f" (a symlink to {real})" if real != directory.absolute() else ""
        raise CredentialsUnsafe(
            f"the Claude config directory {directory}{via} is owned by uid {st.st_uid}, not by you (uid {uid}); refusing to touch it",
            remedy=f"make {directory} a directory you own (check for a planted symlink)",
        )
    if stat.S_IMODE(st.st_mode) & 0o022:
        os.close(fd)
        raise CredentialsUnsafe(
            f"the Claude config directory {directory} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
            "anyone could replace your login; refusing to touch it",
            reason="config_dir_writable_by_others",
            remedy=f"chmod 700 {real} (and check its files for anything you did not put there)",
        )
    return fd


def _check_target(dir_fd: int, name: str, uid: int, shown: Path) -> os.stat_result | None:
    """lstat the file: None if absent; refuse a symlink, a non-regular file, a foreign owner."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise CredentialsUnsafe(
            f"{shown} is a symlink; refusing to read or write through it",
            remedy=f"replace the symlink {shown} with the real file (mv it after checking where it points)",
        )
    if not stat.S_ISREG(st.st_mode):
        raise CredentialsUnsafe(f"{shown} is not a regular file", remedy=f"move {shown} aside and log in again")
    if st.st_uid != uid:
        raise CredentialsUnsafe(
            f"{shown} is owned by uid {st.st_uid}, not by you (uid {uid})",
            remedy=f"remove {shown} and log in again as yourself: {RELOGIN_COMMAND}",
        )
    return st


def _read_at(dir_fd: int, name: str, shown: Path | None = None) -> bytes | None:
    """The file's bytes (None if absent): no symlink, never blocking on a FIFO, at most 1 MiB."""
    try:
        return read_regular(name, dir_fd=dir_fd)
    except NotARegularFile:
        raise CredentialsUnsafe(
            f"{shown or name} is not a regular file (a FIFO, device or symlink); refusing to use it",
            remedy=f"move {shown or name} aside and log in again: {RELOGIN_COMMAND}",
        ) from None
    except CasError as err:  # larger than 1 MiB
        raise CredentialsUnsupported(f"{shown or name}: {err.message}", remedy=err.remedy) from None


def atomic_write(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to ``name`` in the directory ``dir_fd`` (0600): temp with
    ``O_EXCL|O_NOFOLLOW``, write, fsync, rename, fsync(dir) — see :func:`fileio.write_atomically`.
    On an error before the rename the temp file is removed and the old file is untouched; every
    error is raised as :class:`CredentialsWriteFailed`, without any file content in it."""
    try:
        write_atomically(dir_fd, name, data, mode=0o600)
    except DirectorySyncFailed as err:
        raise CredentialsWriteFailed(
            f"fsync of the directory after writing {name} failed ({os.strerror(err.errno or 0)})",
            remedy="check the disk (dmesg) and rerun",
        ) from None
    except OSError as err:
        raise CredentialsWriteFailed(
            f"writing {name} failed ({errno.errorcode.get(err.errno or 0, err.errno)}: {os.strerror(err.errno or 0)}); "
            "the previous file is intact",
            remedy="check the disk (df -h ~; dmesg) and rerun",
        ) from None


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


class CredentialsFile:
    """Read, restore into and roll back ``$CLAUDE_CONFIG_DIR/.credentials.json``."""

    def __init__(self, config_dir: Path, *, uid: int | None = None, lock_wait_timeout_s: float = 30.0) -> None:
        self.config_dir = config_dir
        self.path = config_dir / CREDENTIALS_NAME
        self.uid = os.getuid() if uid is None else uid
        self.lock_wait_timeout_s = lock_wait_timeout_s

    def read(self) -> LocalLogin:
        """The classified current state. Raises CredentialsUnsafe for a symlink or foreign file."""
        if not self.config_dir.exists():
            return classify(self.path, None)
        dir_fd = _open_dir(self.config_dir, self.uid)
        try:
            _check_target(dir_fd, CREDENTIALS_NAME, self.uid, self.path)
            return classify(self.path, _read_at(dir_fd, CREDENTIALS_NAME, self.path))
        finally:
            os.close(dir_fd)

    def restore(self, oauth: OAuth, *, expected: OAuth | None) -> RestoreSnapshot:
        """Merge ``oauth`` in, under the lock, if the file's OAuth object is still ``expected``.

        Order (each step atomic, so a kill between any two leaves a consistent state): the previous
        bytes are copied beside the file (``.pre-restore``, or ``.corrupt-<stamp>`` for a file
        that does not parse); a journal records the digests of the previous and the new content;
        then the new content replaces the file. Until :meth:`keep` or :meth:`rollback` removes the
        journal, the next run finds it (:meth:`pending_restore`), probes it, and keeps or undoes it.
        """
        with self._locked() as (dir_fd, held):
            remove_stale_temps(dir_fd, STALE_TEMP_PATTERN, self.uid)
            _check_target(dir_fd, CREDENTIALS_NAME, self.uid, self.path)
            raw = _read_at(dir_fd, CREDENTIALS_NAME, self.path)
            current = classify(self.path, raw)
            if not same_oauth(current.oauth, expected):
                raise ConcurrentChange(
                    f"{self.path} changed while the restore was prepared; not overwriting it",
                    remedy="nothing: the next run probes the new login",
                )
            data = merge_oauth(raw, oauth)
            kept: Path | None = None
            copy_name: str | None = None
            if raw is not None:
                if current.state == LoginState.NOT_JSON:
                    copy_name = f"{CREDENTIALS_NAME}.corrupt-{_utc_stamp()}"
                    kept = self.config_dir / copy_name
                else:
                    copy_name = CREDENTIALS_NAME + PRE_RESTORE_SUFFIX
                    _unlink_if_ours(dir_fd, copy_name, self.uid)
                atomic_write(dir_fd, copy_name, raw)
            journal = {"written_sha256": _digest(data), "previous_sha256": _digest(raw), "previous_copy": copy_name}
            atomic_write(dir_fd, JOURNAL_NAME, json.dumps(journal).encode())
            held.check()
            atomic_write(dir_fd, CREDENTIALS_NAME, data)
            return RestoreSnapshot(
                path=self.path, previous_bytes=raw, kept_copy=kept, written_digest=_digest(data),
                previous_copy=self.config_dir / copy_name if copy_name else None,
            )

    def rollback(self, snapshot: RestoreSnapshot) -> None:
        """Put back the exact bytes from before :meth:`restore` (remove the file if it was absent),
        only if the file still holds what the restore wrote.

        :raises ConcurrentChange: a newer login replaced the restored copy; it is kept, nothing written.
        :raises CredentialsBusy, CredentialsWriteFailed: the journal stays, so the next run finishes.
        """
        with self._locked() as (dir_fd, held):
            _check_target(dir_fd, CREDENTIALS_NAME, self.uid, self.path)
            current = _read_at(dir_fd, CREDENTIALS_NAME, self.path)
            if snapshot.written_digest is not None and not _still_ours(self.path, current, snapshot.written_digest):
                _unlink_if_ours(dir_fd, JOURNAL_NAME, self.uid)
                raise ConcurrentChange(
                    f"{self.path} was rewritten after the restore (a new login or refresh); keeping it, not rolling back",
                    remedy="nothing: the newer login is probed",
                )
            held.check()
            self._put_back(dir_fd, snapshot.previous_bytes)
            _unlink_if_ours(dir_fd, JOURNAL_NAME, self.uid)

    def keep(self, snapshot: RestoreSnapshot) -> None:
        """The restored login stays: drop the journal (the pre-restore copy remains, 0600)."""
        dir_fd = _open_dir(self.config_dir, self.uid)
        try:
            _unlink_if_ours(dir_fd, JOURNAL_NAME, self.uid)
        finally:
            os.close(dir_fd)

    def pending_restore(self) -> RestoreSnapshot | None:
        """The restore of an earlier run that was neither kept nor rolled back (killed, lock busy,
        disk full), as a snapshot :meth:`keep` or :meth:`rollback` accepts; None when there is none.

        Returned only while the file still holds what that restore wrote (or that copy blanked by
        Claude Code) and the kept pre-restore copy still has the digest the journal recorded;
        otherwise the journal is dropped (a newer login, or nothing to put back) and None returned.
        """
        if not self.config_dir.exists():
            return None
        dir_fd = _open_dir(self.config_dir, self.uid)
        try:
            journal = _read_journal(dir_fd)
            if journal is None:
                return None
            current = _read_at(dir_fd, CREDENTIALS_NAME, self.path)
            previous = _previous_bytes(dir_fd, journal)
            if not _still_ours(self.path, current, journal["written_sha256"]) or previous is False:
                _unlink_if_ours(dir_fd, JOURNAL_NAME, self.uid)
                return None
        finally:
            os.close(dir_fd)
        copy = journal.get("previous_copy")
        return RestoreSnapshot(path=self.path, previous_bytes=previous, written_digest=journal["written_sha256"],
                               previous_copy=self.config_dir / copy if isinstance(copy, str) else None)

    def _put_back(self, dir_fd: int, previous: bytes | None) -> None:
        if previous is None:
            _unlink_if_ours(dir_fd, CREDENTIALS_NAME, self.uid)
            os.fsync(dir_fd)
        else:
            atomic_write(dir_fd, CREDENTIALS_NAME, previous)

    def _locked(self) -> _Locked:
        return _Locked(self)


class _Locked:
    """Context manager: Claude Code's locks plus an fd on the resolved config directory."""

    def __init__(self, owner: CredentialsFile) -> None:
        self.owner = owner
        self._cm: Any = None
        self._dir_fd = -1

    def __enter__(self) -> tuple[int, Any]:
        owner = self.owner
        if not owner.config_dir.exists():
            owner.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir_fd = _open_dir(owner.config_dir, owner.uid)
        self._cm = claude_credentials_lock(owner.config_dir, wait_timeout_s=owner.lock_wait_timeout_s)
        try:
            held = self._cm.__enter__()
        except LockBusy as err:
            os.close(self._dir_fd)
            raise CredentialsBusy(
                f"Claude Code holds its credentials lock {err.path} (waited {err.waited_s:.0f}s); nothing was written",
                remedy="nothing: the next run tries again (a lock older than 60 s is treated as stale)",
            ) from None
        except LockError as err:
            os.close(self._dir_fd)
            raise CredentialsUnsafe(f"cannot take Claude Code's lock: {err}", remedy=f"inspect {err.path}") from None
        return self._dir_fd, held

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if isinstance(exc, LockCompromised):
                self._cm.__exit__(exc_type, exc, tb)
                raise CredentialsBusy(
                    f"Claude Code's lock was taken over while we held it ({exc.path}); nothing was written",
                    remedy="nothing: the next run tries again",
                ) from None
            self._cm.__exit__(exc_type, exc, tb)
        finally:
            os.close(self._dir_fd)


def _unlink_if_ours(dir_fd: int, name: str, uid: int) -> None:
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_uid == uid or stat.S_ISLNK(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _still_ours(path: Path, current: bytes | None, written_digest: str) -> bool:
    """The file holds what our restore wrote, or that login blanked by Claude Code after it failed
    (a blanked object is no login: rolling back over it loses nothing). Anything else is newer."""
    if _digest(current) == written_digest:
        return True
    try:
        return current is not None and classify(path, current).state == LoginState.BLANKED
    except CasError:
        return False


def _read_journal(dir_fd: int) -> dict[str, Any] | None:
    """The restore journal, or None when there is none (a damaged one is removed)."""
    try:
        raw = read_regular(JOURNAL_NAME, dir_fd=dir_fd, max_bytes=4096)
    except CasError:
        raw = b"damaged"
    if raw is None:
        return None
    try:
        journal = json.loads(raw)
        if isinstance(journal, dict) and isinstance(journal.get("written_sha256"), str):
            return journal
    except ValueError:
        pass
    try:
        os.unlink(JOURNAL_NAME, dir_fd=dir_fd)
    except OSError:
        pass
    return None


def _previous_bytes(dir_fd: int, journal: Mapping[str, Any]) -> bytes | None | Literal[False]:
    """The pre-restore content the journal points to: bytes, None (there was no file), or False
    when the kept copy is gone or does not match the recorded digest (then nothing is rolled back)."""
    if journal.get("previous_sha256") is None:
        return None
    name = journal.get("previous_copy")
    if not isinstance(name, str) or "/" in name or not name.startswith(CREDENTIALS_NAME + "."):
        return False
    try:
        data = read_regular(name, dir_fd=dir_fd)
    except CasError:
        return False
    return data if data is not None and _digest(data) == journal["previous_sha256"] else False


