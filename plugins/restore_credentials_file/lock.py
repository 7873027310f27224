"""Claude Code compatible credential locks (the npm ``proper-lockfile`` protocol).

Claude Code serialises every rewrite of ``$CLAUDE_CONFIG_DIR/.credentials.json``
with ``proper-lockfile`` locks, and so must we.  The protocol, as implemented by
proper-lockfile 4.1.2 (``lib/lockfile.js``):

* A lock is a DIRECTORY, taken with a plain ``mkdir`` (default mode, i.e.
  ``0o777 & ~umask``); ``EEXIST`` means "held".  Nothing is ever written inside.
* The holder keeps the directory's mtime fresh (``utimes``) every ``update`` ms
  (Claude Code: 5 s).  On taking it, proper-lockfile sets the mtime to the next
  whole second + 5 ms, i.e. slightly in the future.
* An acquirer that finds the directory with ``mtime < now - stale`` treats it as
  abandoned: ``rmdir`` it, then ``mkdir`` again once.  Claude Code's stale time
  was 10 s in older releases and is 60 s in recent ones.
* Release is ``rmdir``.

Claude Code takes two locks, in this order, and so do we (:func:`lock_paths`).
As read from the 2.1.332 bundle, both with ``stale: 60000, update: 5000``:

1. ``<config dir>/.oauth_refresh.lock`` (``lockfilePath`` = ``join(dir, ...)``,
   ``realpath: false``: symlinks are not resolved);
2. ``<realpath(config dir)>.lock``, e.g. ``~/.claude.lock`` (falls back to the
   unresolved path if realpath fails).  ``ELOCKED`` here makes Claude Code
   release the first lock and retry later.

Recent Claude Code also writes a regular file ``<config dir>/.oauth_refresh.lock.owner``
(pid, lock birthtimes) and may take over a lock early when that record matches
the lock's birthtime and its pid is provably dead.  Our directories never match
such a record, so Claude Code breaks our locks only by staleness; we never
touch that file.  Claude Code also judges a holder alive when the lock's mtime
changes between two samples 7.5 s apart: another reason to refresh every <= 5 s.

Guarantees of :func:`claude_credentials_lock`:

* Never creates a regular file at a lock path, and never deletes anything that
  is not an (empty) directory; a regular file or symlink at a lock path raises
  :class:`LockError` and is left untouched.
* A FOREIGN lock is broken only when its mtime is older than ``stale_after_s``
  (at least 60 s, Claude Code's value).  A live holder makes us poll every
  ``poll_s`` until ``wait_timeout_s`` (one deadline for both locks), then raise
  :class:`LockBusy` with the path and how long we waited.
* While held, a daemon thread refreshes both mtimes every ``refresh_every_s``
  (at most 5 s, so even a 10 s-stale peer never sees our lock as stale).
  Refreshes go through a directory fd opened right after ``mkdir``, so we only
  ever touch our own inode; the open fd also pins the inode, so its number
  cannot be reused by a replacement and ``st_dev``/``st_ino`` identify it.
* If our directory disappears or is replaced, the lock is *compromised*:
  :meth:`HeldLocks.check` raises :class:`LockCompromised`.  Call it right before
  the ``rename`` that publishes the new credentials and abort if it raises.
* Release (normal exit, exception, or ``SystemExit``) removes a lock directory
  only if the path still has our ``st_dev``/``st_ino``; a replacement is left
  alone.  If taking the second lock fails, the first is released.
* SIGTERM: Python's default action would kill the process without running
  ``finally``.  The CLI therefore wraps its work in
  :func:`claude_auth_sync.signals.sigterm_raises_systemexit`, which turns SIGTERM into ``SystemExit(143)``
  so the lock's ``finally`` runs.  While that handler is installed, a SIGTERM
  that arrives in the middle of taking or releasing a lock is deferred until
  that step is complete, so it cannot leave a directory behind.  SIGKILL cannot
  be handled: the directories then stay until they are 60 s stale, when Claude
  Code (or we) reclaim them.
* The locks are not re-entrant.  Exceptions carry only paths and durations,
  never credential contents.

Residual race, shared with proper-lockfile itself: two acquirers that both judge
the same abandoned lock stale may interleave ``rmdir``/``mkdir``; we re-check
the inode and age immediately before ``rmdir`` to keep that window tiny.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from claude_auth_sync.signals import critical

__all__ = [
    "CLAUDE_STALE_S",
    "HeldLocks",
    "LockBusy",
    "LockCompromised",
    "LockError",
    "claude_credentials_lock",
    "lock_paths",
]

CLAUDE_STALE_S = 60.0
"""Claude Code's stale time for both credential locks (recent releases)."""
MAX_REFRESH_EVERY_S = 5.0
"""Our refresh period must not exceed this (older Claude Code breaks at 10 s)."""


class LockError(Exception):
    """A lock could not be taken or kept.  Carries the lock path only."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class LockBusy(LockError):
    """A live holder kept the lock for longer than we were willing to wait."""

    def __init__(self, path: Path, waited_s: float, holder_age_s: float) -> None:
        super().__init__(
            path,
            f"held by another process (mtime {holder_age_s:.1f}s old, not stale); "
            f"gave up after waiting {waited_s:.1f}s",
        )
        self.waited_s = waited_s
        self.holder_age_s = holder_age_s  # may be < 0: proper-lockfile sets mtimes ahead


class LockCompromised(LockError):
    """Our lock directory vanished or was replaced while we held it."""


# --- paths ---------------------------------------------------------------------


def lock_paths(config_dir: Path) -> tuple[Path, Path]:
    """The two lock directories Claude Code takes for ``config_dir``, in order."""
    oauth = Path(os.path.abspath(config_dir)) / ".oauth_refresh.lock"
    legacy = Path(os.path.realpath(config_dir) + ".lock")
    return oauth, legacy


# --- one owned lock directory -------------------------------------------------


class _OwnedLock:
    """A lock directory we created; ``fd`` pins its inode."""

    def __init__(self, path: Path, fd: int) -> None:
        st = os.fstat(fd)
        self.path = path
        self.fd = fd
        self.ident = (st.st_dev, st.st_ino)
        self.problem: str | None = None  # set once compromised
        self.last_refresh = time.monotonic()

    def verify(self) -> str | None:
        """Return why the lock is compromised, or None if the path is still ours."""
        if self.problem:
            return self.problem
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return "lock directory disappeared while held"
        except OSError as exc:
            return f"cannot stat lock directory ({exc.strerror})"
        if (st.st_dev, st.st_ino) != self.ident:
            return "lock directory was replaced by another one while held"
        return None

    def refresh(self, stale_after_s: float) -> None:
        if self.problem:
            return
        problem = self.verify()
        if problem:
            self.problem = problem
            return
        try:
            os.utime(self.fd)  # our own inode, whatever the path now holds
            self.last_refresh = time.monotonic()
        except OSError:
            if time.monotonic() - self.last_refresh > stale_after_s:
                self.problem = "could not refresh the lock within the stale time"

    def release(self) -> None:
        try:
            if self.verify() is None:
                os.rmdir(self.path)
        except OSError:
            pass  # not ours any more, or not empty: leave it alone
        finally:
            os.close(self.fd)


class HeldLocks:
    """Both locks, held.  Call :meth:`check` right before publishing a write."""

    def __init__(self, locks: list[_OwnedLock]) -> None:
        self._locks = locks

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(lock.path for lock in self._locks)

    @property
    def compromised(self) -> bool:
        return any(lock.verify() for lock in self._locks)

    def check(self) -> None:
        """Raise :class:`LockCompromised` unless every lock directory is still ours."""
        for lock in self._locks:
            problem = lock.verify()
            if problem:
                raise LockCompromised(lock.path, problem)


# --- acquisition ---------------------------------------------------------------


def _try_mkdir(path: Path, owned: list[_OwnedLock]) -> bool:
    """One mkdir attempt; on success the lock is appended to ``owned``.

    Recording ownership happens inside the same critical section as the mkdir,
    so a deferred SIGTERM cannot leave a directory that nobody will remove.
    """
    with critical():
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise LockError(path, f"cannot create lock directory ({exc.strerror})") from None
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            os.rmdir(path)  # just created by us, still empty
            raise LockError(path, f"cannot open our lock directory ({exc.strerror})") from None
        owned.append(_OwnedLock(path, fd))
        return True


def _foreign_state(path: Path) -> os.stat_result | None:
    """lstat a lock somebody else holds; None if it vanished meanwhile."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(path, f"cannot stat existing lock ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise LockError(path, "exists but is not a directory; refusing to touch it")
    return st


def _age_s(st: os.stat_result) -> float:
    return (time.time_ns() - st.st_mtime_ns) / 1e9


def _break_stale(path: Path, seen: os.stat_result, stale_after_s: float) -> bool:
    """rmdir an abandoned foreign lock if it is still the one judged stale.

    Returns True if the path is now free (removed by us or by someone else).
    """
    now = _foreign_state(path)
    if now is None:
        return True
    if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino) or _age_s(now) <= stale_after_s:
        return False
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise LockError(path, "stale lock directory is not empty; refusing to remove it") from None
        raise LockError(path, f"cannot remove stale lock ({exc.strerror})") from None
    return True


def _acquire(
    path: Path, owned: list[_OwnedLock], started: float, deadline: float, stale_after_s: float, poll_s: float
) -> None:
    while not _try_mkdir(path, owned):
        st = _foreign_state(path)
        age = _age_s(st) if st is not None else 0.0
        if st is None or (age > stale_after_s and _break_stale(path, st, stale_after_s)):
            continue  # the path was freed (released, or stale and removed): retry mkdir now
        now = time.monotonic()
        if now >= deadline:
            raise LockBusy(path, waited_s=now - started, holder_age_s=age)
        time.sleep(min(poll_s, deadline - now))


def _refresher(locks: list[_OwnedLock], stop: threading.Event, every_s: float, stale_after_s: float) -> None:
    while not stop.wait(every_s):
        for lock in locks:
            lock.refresh(stale_after_s)


@contextmanager
def claude_credentials_lock(
    config_dir: Path,
    *,
    wait_timeout_s: float = 30.0,
    stale_after_s: float = CLAUDE_STALE_S,
    refresh_every_s: float = MAX_REFRESH_EVERY_S,
    poll_s: float = 0.1,
) -> Iterator[HeldLocks]:
    """Hold Claude Code's two credential locks for ``config_dir`` around the block.

    Raises :class:`LockBusy` if a live holder outlasts ``wait_timeout_s`` (one
    deadline for both locks) and :class:`LockError` for anything else that
    prevents locking.  Keep the block short: read, merge, ``held.check()``,
    rename.
    """
    if stale_after_s < CLAUDE_STALE_S:
        raise ValueError(f"stale_after_s must be >= {CLAUDE_STALE_S} (Claude Code's stale time)")
    if not 0 < refresh_every_s <= MAX_REFRESH_EVERY_S:
        raise ValueError(f"refresh_every_s must be in (0, {MAX_REFRESH_EVERY_S}]")
    if wait_timeout_s < 0 or poll_s <= 0:
        raise ValueError("wait_timeout_s must be >= 0 and poll_s > 0")

    started = time.monotonic()
    deadline = started + wait_timeout_s
    owned: list[_OwnedLock] = []
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        for path in lock_paths(config_dir):
            _acquire(path, owned, started, deadline, stale_after_s, poll_s)
        thread = threading.Thread(
            target=_refresher,
            args=(owned, stop, refresh_every_s, stale_after_s),
            name="claude-credentials-lock-refresh",
            daemon=True,
        )
        thread.start()
        yield HeldLocks(owned)
    finally:
        with critical():
            stop.set()
            if thread is not None:
                thread.join()
            for lock in reversed(owned):
                lock.release()
