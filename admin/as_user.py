"""Running a piece of code as another OS user: fork, irreversible privilege drop, pipes.

Guarantees of :func:`run_as_user`:

* the job runs in a forked child that first becomes the user for good (``setgroups``,
  ``setresgid``, ``setresuid``, verified, a way back to root refused), is non-dumpable
  (``PR_SET_DUMPABLE=0`` on top of the kernel's own marking), has umask 077 and cwd ``/``, and
  holds no inherited descriptor but stdio and its two pipes;
* data goes in and comes back only on pipes (a token travels there, never in argv, the
  environment or output); the child's answer is one JSON object of at most 1 MiB;
* the child is killed after ``timeout`` seconds (a user can SIGSTOP their own process), and is
  always reaped; any failure in it comes back as :class:`ChildFailed`, never as a crash of root.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from claude_auth_sync.model import ExitCode

__all__ = ["Account", "ChildFailed", "Job", "run_as_user", "write_all", "CHILD_TIMEOUT_S"]

CHILD_TIMEOUT_S = 30.0
MAX_PAYLOAD = 65536
MAX_ANSWER = 1 << 20
_PR_SET_DUMPABLE = 4
_CHILD_CRASHED = 70  # sysexits EX_SOFTWARE: the child could not even report


@dataclass(frozen=True)
class Account:
    """An OS account as the password database gives it (with its supplementary groups)."""

    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> Account | None:
        """The account called ``name``, or None when this host has none."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return cls(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir,
                   groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)))


Job = Callable[[Account, bytes], dict[str, Any]]
"""What a child runs: ``job(account, payload)`` returns a JSON-able dict with ``"ok": True``."""


class ChildFailed(Exception):
    """The privilege-dropped child could not do its job; ``kind`` is unsafe, error or timeout."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def exit_code(self) -> ExitCode:
        """75 for a timeout (the next run retries), 78 otherwise (a person must look)."""
        return ExitCode.TEMPFAIL if self.kind == "timeout" else ExitCode.CONFIG


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - non-glibc
        return None


_PRCTL = _load_prctl()


def _drop_privileges(account: Account) -> None:
    """Become ``account`` for good (real, effective and saved ids), or die trying."""
    os.setgroups(list(account.groups))
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise ChildFailed("privilege drop did not take effect")
    if account.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise ChildFailed("privilege drop is reversible; refusing to continue")
    # The kernel already marks a process that changed its ids non-dumpable (no ptrace, no
    # /proc/<pid>/mem or environ for the user); make sure of it: this process still holds a copy of
    # root's memory.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.umask(0o077)
    os.chdir("/")


def _close_inherited(keep: Iterable[int]) -> None:
    keep_set = set(keep) | {0, 1, 2}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep_set:
                with contextlib.suppress(OSError):
                    os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a pipe may take it in pieces)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise ChildFailed("child output too large")
        chunks.append(chunk)


def _child(account: Account, job: Job, pipes: tuple[int, int, int, int]) -> NoReturn:  # pragma: no cover - child
    """The forked child: drop to ``account``, run ``job`` on the payload, write its answer, _exit.

    ``pipes`` is ``(payload_r, payload_w, answer_r, answer_w)``; it never returns, whatever fails."""
    payload_r, payload_w, answer_r, answer_w = pipes
    status = 0
    try:
        os.close(payload_w)
        os.close(answer_r)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        _close_inherited((payload_r, answer_w))
        _drop_privileges(account)
        data = _read_all(payload_r, limit=MAX_PAYLOAD)
        os.close(payload_r)
        try:
            result = job(account, data)
        except ChildFailed as err:
            result = {"ok": False, "kind": err.kind, "error": str(err)}
        except OSError as err:
            result = {"ok": False, "kind": "error", "error": os.strerror(err.errno or 0)}
        write_all(answer_w, json.dumps(result).encode("utf-8"))
    except BaseException as err:  # noqa: BLE001 - the child must always reach _exit
        status = _CHILD_CRASHED
        with contextlib.suppress(BaseException):
            msg = str(err) if isinstance(err, ChildFailed) else type(err).__name__
            write_all(answer_w, json.dumps({"ok": False, "kind": "error", "error": msg}).encode())
    finally:
        os._exit(status)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _collect(pid: int, answer_r: int, account: Account, timeout: float) -> bytes:
    """The child's whole answer; kills it (ChildFailed) past ``timeout`` or :data:`MAX_ANSWER`."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(pid)
            raise ChildFailed(f"the child working as {account.name} did not finish in {timeout:.0f}s", "timeout")
        ready, _, _ = select.select([answer_r], [], [], left)
        if not ready:
            continue
        chunk = os.read(answer_r, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if sum(map(len, chunks)) > MAX_ANSWER:
            _kill(pid)
            raise ChildFailed("child output too large")


def _decode(out: bytes, wait_status: int, account: Account) -> dict[str, Any]:
    """The child's answer as a dict with ``ok`` true, or ChildFailed with its error."""
    try:
        result = json.loads(out) if out else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        code = os.waitstatus_to_exitcode(wait_status)
        raise ChildFailed(f"the child working as {account.name} died (status {code})")
    if not result.get("ok"):
        raise ChildFailed(str(result.get("error")), str(result.get("kind") or "error"))
    return result


def run_as_user(account: Account, job: Job, payload: bytes = b"", timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``job(account, payload)`` in a forked child that has become ``account``.

    ``payload`` (e.g. a token) is sent on a pipe; the JSON-able result comes back on another.
    The child is killed after ``timeout`` seconds (a user can SIGSTOP their own process).
    Raises :class:`ChildFailed` with the child's error.
    """
    payload_r, payload_w = os.pipe()
    answer_r, answer_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child (its effects are asserted by the integration tests)
        _child(account, job, (payload_r, payload_w, answer_r, answer_w))
    os.close(payload_r)
    os.close(answer_w)
    try:
        try:
            write_all(payload_w, payload)
        except BrokenPipeError:
            pass
        finally:
            os.close(payload_w)
        out = _collect(pid, answer_r, account, timeout)
    finally:
        os.close(answer_r)
        _, wait_status = os.waitpid(pid, 0)
    return _decode(out, wait_status, account)
