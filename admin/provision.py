"""``t3-provision-users``: the root provisioner (runbook steps 1-2 and the hourly run).

For every roster user with an OS account on this host (one without is reported and skipped):

* ``~/.config/claude-auth-sync`` and ``~/.local/state/claude-auth-sync`` exist, 0700, owned by
  the user;
* the user's Vault token (``~/.config/claude-auth-sync/vault-token``) is checked *with that
  token* (``lookup-self``): valid, policies exactly ``{claude-auth-sync-<user>}``, period 768h,
  orphan, TTL not about to run out;
* ``claude-auth-sync@<user>.timer`` is enabled (the ``timers.target.wants`` symlink).

With an admin token (``VAULT_TOKEN``; the address from ``VAULT_ADDR`` or the settings) it also
confirms each user's policy exists and is exactly what :func:`render_policy` renders (refusing
otherwise: "apply the Vault stack first"), mints a periodic orphan token for users whose token is
missing, unreadable, expired, expiring or drifted, writes it to the user's token file and revokes
the token it replaces. ``--apply-policies`` writes the policies of every roster user (read,
compare, write only what differs); with ``--prune`` it also deletes ``claude-auth-sync-*``
policies of users no longer in the roster and revokes their tokens.

Without an admin token (the hourly timer) it never mints: users needing an admin run are reported
and the exit status is non-zero. A run with nothing to do changes nothing.

Security design
---------------

* Root never touches a path inside a user's home. Every read and write there happens in a forked
  child that first drops to the user (``setgroups``/``setresgid``/``setresuid``, verified, then
  ``PR_SET_DUMPABLE=0`` on top of the kernel's own non-dumpable marking), and inside that child
  every component below the home is opened with ``openat(O_NOFOLLOW)``: a symlink or a directory
  owned by someone else is refused, never followed. A planted ``vault-token -> /etc/shadow`` (or a
  hard link to a root file) is replaced by an atomic rename in the user's own directory, so its
  target is never opened, let alone written.
* Tokens travel only through pipes: the minted token goes from root to the child on a pipe; the
  existing token comes back from the child on a pipe. Never argv, never the environment (the admin
  token is removed from ``os.environ`` at start so no child process inherits it), never output:
  at most a fingerprint (first 8 hex digits of SHA-256).
* Deprovisioning bookkeeping: the accessor of every token this provisioner minted is kept in the
  root-only state file ``/var/lib/claude-auth-sync/tokens.json`` (0600 in a 0700 directory; no
  token, only accessors and fingerprints). A re-mint revokes the previous token by accessor even
  when the user destroyed or replaced their token file; an accessor whose revocation failed, or
  that a valid hand-made token superseded, stays listed as ``superseded`` until an admin run
  revokes it. A user removed from the roster gets their timer disabled (every run) and, with an
  admin token and ``--prune``, their token revoked by accessor; their KV secret is kept. (Scanning
  ``auth/token/accessors`` instead would need a sudo LIST plus one lookup per token in the whole
  Vault, every run.)
* The admin token is only ever sent with admin requests, user tokens only with ``lookup-self``;
  ``deploy/vault/t3-provisioner-admin.hcl`` is the least a non-root admin token needs.

Exit status: 0 nothing left to do; 1 some user needs an admin run (or a removed user's token still
needs ``--prune``); 75 Vault unreachable or a child timed out; 77 not root; 78 something a person
must fix (invalid roster or settings, invalid admin token, missing/drifted policy without
``--apply-policies``, an unsafe home, ``systemctl`` failing).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import pwd
import re
import secrets
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import environ_block
from .accounts import refusals
from claude_auth_sync.errors import CasError, ConfigurationError
from claude_auth_sync.fingerprint import fingerprint
from claude_auth_sync.model import ExitCode
from claude_auth_sync.plugins.backend_vault.token_file import MalformedToken, token_from_bytes
from .roster import DEFAULT_ROSTER, Roster, load_roster
from claude_auth_sync.terminal_text import safe_text
from .trusted_file import check_trusted

__all__ = ["main", "build_parser", "Provisioner", "Options", "Account", "run_as_user"]

EXIT_OK = 0
EXIT_NEEDS_ADMIN = 1
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_CONFIG = 78

PERIOD = "768h"
PERIOD_S = 768 * 3600
EXPIRING_S = 7 * 24 * 3600  # the agent renews every 6 h: a week left means it has not run for 25 days
CHILD_TIMEOUT_S = 30.0
RUN_DEADLINE_S = 240.0  # all children of one run together (the hourly unit must not pile up)
LOCK_WAIT_S = 120.0

CONFIG_PARTS = (".config", "claude-auth-sync")
STATE_PARTS = (".local", "state", "claude-auth-sync")
TOKEN_NAME = "vault-token"
TIMER_TEMPLATE = "claude-auth-sync@.timer"
WANTS = Path("etc/systemd/system/timers.target.wants")
DEFAULT_STATE_DIR = Path("/var/lib/claude-auth-sync")
STATE_FILE = "tokens.json"
DEFAULT_CONFIG = Path("/etc/claude-auth-sync/config.toml")
TIMER_RE = re.compile(r"^claude-auth-sync@([a-z_][a-z0-9_-]{0,31})\.timer$")
ADMIN_RUN = "sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN /usr/local/bin/t3-provision-users"

SEVERITY_ORDER = (EXIT_CONFIG, EXIT_TEMPFAIL, EXIT_NEEDS_ADMIN)


def timer_unit(user: str) -> str:
    return f"claude-auth-sync@{user}.timer"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Running code as the user


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> Account | None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return cls(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir,
                   groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)))


class ChildFailed(Exception):
    """The privilege-dropped child could not do its job; ``kind`` is unsafe, error or timeout."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - non-glibc
        return None


_PRCTL = _load_prctl()
_PR_SET_DUMPABLE = 4


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_all(fd: int, limit: int = 1 << 20) -> bytes:
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


def run_as_user(account: Account, job: Callable[[Account, bytes], dict[str, Any]], payload: bytes = b"",
                timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``job(account, payload)`` in a forked child that has become ``account``.

    ``payload`` (e.g. a token) is sent on a pipe; the JSON-able result comes back on another.
    The child is killed after ``timeout`` seconds (a user can SIGSTOP their own process).
    Raises :class:`ChildFailed` with the child's error.
    """
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child (its effects are asserted by the integration tests)
        status = 0
        try:
            os.close(to_child_w)
            os.close(from_child_r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            _close_inherited((to_child_r, from_child_w))
            _drop_privileges(account)
            data = _read_all(to_child_r, limit=65536)
            os.close(to_child_r)
            try:
                result = job(account, data)
            except ChildFailed as err:
                result = {"ok": False, "kind": err.kind, "error": str(err)}
            except OSError as err:
                result = {"ok": False, "kind": "error", "error": os.strerror(err.errno or 0)}
            _write_all(from_child_w, json.dumps(result).encode("utf-8"))
        except BaseException as err:  # noqa: BLE001 - the child must always reach _exit
            status = 70
            with contextlib.suppress(BaseException):
                msg = str(err) if isinstance(err, ChildFailed) else type(err).__name__
                _write_all(from_child_w, json.dumps({"ok": False, "kind": "error", "error": msg}).encode())
        finally:
            os._exit(status)
    # parent
    os.close(to_child_r)
    os.close(from_child_w)
    out = b""
    try:
        try:
            _write_all(to_child_w, payload)
        except BrokenPipeError:
            pass
        finally:
            os.close(to_child_w)
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise ChildFailed(f"the child working as {account.name} did not finish in {timeout:.0f}s", "timeout")
            ready, _, _ = select.select([from_child_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(from_child_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            if sum(map(len, chunks)) > 1 << 20:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise ChildFailed("child output too large")
        out = b"".join(chunks)
    finally:
        os.close(from_child_r)
        _, wait_status = os.waitpid(pid, 0)
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


# ---------------------------------------------------------------------------------------------
# What the child does (as the user, never following a symlink below the home)


def _rel(parts: Sequence[str]) -> str:
    return "~/" + "/".join(parts)


def _open_home(account: Account) -> int:
    try:
        fd = os.open(account.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ChildFailed(f"home directory {account.home} does not exist", "unsafe") from None
    except OSError as err:
        raise ChildFailed(f"cannot open home directory {account.home}: {os.strerror(err.errno or 0)}", "unsafe") from None
    st = os.fstat(fd)
    if st.st_uid != account.uid:
        os.close(fd)
        raise ChildFailed(f"home directory {account.home} is owned by uid {st.st_uid}, not {account.name}", "unsafe")
    return fd


def _open_subdir(parent: int, name: str, rel: str, account: Account) -> int | None:
    """openat(O_NOFOLLOW|O_DIRECTORY); None if missing; refuses symlinks and foreign owners."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                st = os.lstat(name, dir_fd=parent)
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            except OSError:
                what = "not a directory"
            raise ChildFailed(f"{rel} is {what}; refusing to follow it (make it a plain directory)", "unsafe") from None
        raise ChildFailed(f"cannot open {rel}: {os.strerror(err.errno or 0)}", "unsafe") from None
    st = os.fstat(fd)
    if st.st_uid != account.uid:
        os.close(fd)
        raise ChildFailed(f"{rel} is owned by uid {st.st_uid}, not by {account.name}", "unsafe")
    return fd


def _walk(home_fd: int, parts: Sequence[str], account: Account, create: bool, changes: list[str]) -> int | None:
    """Open (creating 0700 when ``create``) ``home/parts...``; the last one is forced to 0700.

    Returns the last directory's fd, or None when something is missing and ``create`` is false
    (then ``changes`` says what would be created).
    """
    fd = os.dup(home_fd)
    try:
        for depth, name in enumerate(parts):
            rel = _rel(parts[: depth + 1])
            child = _open_subdir(fd, name, rel, account)
            if child is None:
                if not create:
                    changes.append(f"create {_rel(parts)}")
                    return None
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as err:
                    raise ChildFailed(f"cannot create {rel}: {os.strerror(err.errno or 0)}", "unsafe") from None
                changes.append(f"created {rel}")
                child = _open_subdir(fd, name, rel, account)
                if child is None:
                    raise ChildFailed(f"{rel} vanished while it was being created", "unsafe")
            os.close(fd)
            fd = child
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode != 0o700:
            if create:
                os.fchmod(fd, 0o700)
                changes.append(f"chmod 0700 {_rel(parts)} (was {mode:04o})")
            else:
                changes.append(f"chmod 0700 {_rel(parts)} (is {mode:04o})")
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _read_token(dir_fd: int, account: Account) -> dict[str, Any]:
    rel = _rel(CONFIG_PARTS + (TOKEN_NAME,))
    try:
        fd = os.open(TOKEN_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return {"token_state": "missing"}
    except OSError as err:
        why = "is a symlink" if err.errno == errno.ELOOP else f"cannot be read: {os.strerror(err.errno or 0)}"
        return {"token_state": "unsafe", "why": f"{rel} {why}"}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {"token_state": "unsafe", "why": f"{rel} is not a regular file"}
        if st.st_uid != account.uid:
            return {"token_state": "unsafe", "why": f"{rel} is owned by uid {st.st_uid}"}
        if st.st_nlink != 1:
            return {"token_state": "unsafe", "why": f"{rel} has {st.st_nlink} hard links"}
        if stat.S_IMODE(st.st_mode) & 0o077:
            return {"token_state": "unsafe", "why": f"{rel} has mode {stat.S_IMODE(st.st_mode):04o} (must be 0600)"}
        data = os.read(fd, 4097)
    finally:
        os.close(fd)
    try:
        token = token_from_bytes(data)  # the agent's own check: one word of printable ASCII
    except MalformedToken as err:
        state = "missing" if err.kind == "empty" else "unsafe"
        return {"token_state": state, "why": f"{rel} {err}"}
    return {"token_state": "present", "token": token}


STALE_TEMP_RE = re.compile(r"^\.vault-token\.[0-9a-f]{16}$")


def _remove_stale_temps(dir_fd: int, create: bool, changes: list[str]) -> None:
    """Remove ``.vault-token.<hex>`` files a killed write child left (unlinked, never followed)."""
    for name in sorted(os.listdir(dir_fd)):
        if not STALE_TEMP_RE.fullmatch(name):
            continue
        rel = _rel(CONFIG_PARTS + (name,))
        if not create:
            changes.append(f"remove {rel} (left by an interrupted run)")
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
            changes.append(f"removed {rel} (left by an interrupted run)")


def job_inspect(create: bool) -> Callable[[Account, bytes], dict[str, Any]]:
    """Child job: ensure (or, in a dry run, only check) the directories; read the token file."""

    def job(account: Account, _payload: bytes) -> dict[str, Any]:
        changes: list[str] = []
        home = _open_home(account)
        try:
            cfg = _walk(home, CONFIG_PARTS, account, create, changes)
            state = _walk(home, STATE_PARTS, account, create, changes)
            if state is not None:
                os.close(state)
            token = {"token_state": "missing"} if cfg is None else _read_token(cfg, account)
            if cfg is not None:
                try:
                    _remove_stale_temps(cfg, create, changes)
                finally:
                    os.close(cfg)
        finally:
            os.close(home)
        return {"ok": True, "changes": changes, **token}

    return job


def job_write_token(account: Account, payload: bytes) -> dict[str, Any]:
    """Child job: atomically replace ``vault-token`` with ``payload`` (0600, never via a link)."""
    token = payload.decode("ascii").strip()
    if not token or any(c.isspace() for c in token):
        raise ChildFailed("refusing to write an empty or malformed token")
    changes: list[str] = []
    home = _open_home(account)
    try:
        cfg = _walk(home, CONFIG_PARTS, account, True, changes)
    finally:
        os.close(home)
    assert cfg is not None
    tmp = f".{TOKEN_NAME}.{secrets.token_hex(8)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=cfg)
        try:
            _write_all(fd, (token + "\n").encode("ascii"))
            os.fchmod(fd, 0o600)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if st.st_uid != account.uid or stat.S_IMODE(st.st_mode) != 0o600 or st.st_nlink != 1:
            raise ChildFailed("the new token file came out with the wrong owner or mode")
        try:
            os.rename(tmp, TOKEN_NAME, src_dir_fd=cfg, dst_dir_fd=cfg)
        except OSError as err:
            raise ChildFailed(f"cannot replace {_rel(CONFIG_PARTS + (TOKEN_NAME,))}: {os.strerror(err.errno or 0)}",
                              "unsafe") from None
        tmp = ""
        os.fsync(cfg)
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=cfg)
        os.close(cfg)
    return {"ok": True, "changes": changes + [f"wrote {_rel(CONFIG_PARTS + (TOKEN_NAME,))}"]}


# ---------------------------------------------------------------------------------------------
# Vault


class VaultFailure(Exception):
    """``kind``: unavailable (75), forbidden (invalid/expired token), not_found, invalid."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Vault:
    """Raw Vault API calls on one keep-alive session; the token is passed per call, never stored."""

    def __init__(self, addr: str, cacert: Path | None, timeout: float) -> None:
        import requests

        self.addr = addr.rstrip("/")
        self.verify: bool | str = str(cacert) if cacert else True
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no netrc, no REQUESTS_CA_BUNDLE; proxies are taken explicitly
        self.proxies = requests.utils.get_environ_proxies(self.addr)
        # hvac's adapter prefers the session's verify/proxies over its own arguments: set them here.
        self.session.verify = self.verify
        self.session.proxies = self.proxies
        self.requests = {"user": 0, "admin": 0}

    def call(self, who: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import hvac.adapters
        import hvac.exceptions
        import requests

        adapter = hvac.adapters.JSONAdapter(
            base_uri=self.addr, token=token, verify=self.verify, timeout=self.timeout, proxies=self.proxies,
            allow_redirects=False, session=self.session,
        )
        self.requests[who] += 1
        where = f"{method.upper()} {path}"
        try:
            answer = adapter.request(method, f"/v1/{path}", json=body)
        except hvac.exceptions.InvalidPath:
            raise VaultFailure(f"{where}: not found", "not_found") from None
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            raise VaultFailure(f"{where}: permission denied (invalid, expired or under-privileged token)",
                               "forbidden") from None
        except hvac.exceptions.InvalidRequest:
            raise VaultFailure(f"{where}: invalid request (400)", "invalid") from None
        except hvac.exceptions.VaultError as err:
            raise VaultFailure(f"{where}: Vault answered {type(err).__name__}", "unavailable") from None
        except requests.exceptions.SSLError:
            raise VaultFailure(f"{where}: TLS verification failed (set VAULT_CACERT)", "invalid") from None
        except requests.exceptions.RequestException as err:
            raise VaultFailure(f"{where}: cannot reach {self.addr} ({type(err).__name__})", "unavailable") from None
        except (UnicodeError, ValueError) as err:  # a token no HTTP header can carry: never sent
            raise VaultFailure(f"{where}: the token cannot be sent ({type(err).__name__})", "invalid") from None
        if isinstance(answer, dict):
            return answer
        status = getattr(answer, "status_code", 0)
        if status in (200, 204):
            return {}
        if 300 <= status < 400:
            raise VaultFailure(f"{where}: refusing to follow a redirect ({status})", "invalid")
        raise VaultFailure(f"{where}: unexpected HTTP {status}", "unavailable")


# ---------------------------------------------------------------------------------------------
# State file (root only): accessors of the tokens this provisioner minted


class StateFile:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self.users: dict[str, dict[str, Any]] = {}
        self._loaded: str = ""

    def load(self) -> None:
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
        return self._dump() != self._loaded

    def ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigurationError(f"{self.directory} is not a directory owned by root")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)

    def save(self) -> None:
        if not self.changed:
            return
        self.ensure_dir()
        text = self._dump()
        tmp = self.directory / f".{STATE_FILE}.{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._loaded = text


class Busy(CasError):
    """Another provisioner run holds the lock (exit 75)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "busy"


@contextlib.contextmanager
def _provision_lock(directory: Path, wait: float = LOCK_WAIT_S):
    """One provisioner at a time (the hourly timer and an admin run must not race)."""
    fd = os.open(directory / "provision.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Busy(f"another t3-provision-users holds {directory / 'provision.lock'}",
                               remedy="wait for it to finish") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    roster: Path = DEFAULT_ROSTER
    dry_run: bool = False
    json: bool = False
    apply_policies: bool = False
    prune: bool = False
    systemd_root: Path | None = None
    systemctl: str = "systemctl"
    state_dir: Path = DEFAULT_STATE_DIR
    config: Path = DEFAULT_CONFIG
    deadline_s: float = RUN_DEADLINE_S


@dataclass
class UserReport:
    user: str
    email: str | None = None
    in_roster: bool = True
    account: str = "ok"  # ok | missing | refused
    token: str = "-"  # ok | missing | unsafe | expired | drifted | expiring | unknown | minted | revoked ...
    ttl_s: int | None = None
    timer: str = "-"
    policy: str = "-"
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    severity: int = EXIT_OK
    fingerprint: str | None = None
    next_steps: list[str] = field(default_factory=list)

    def flag(self, severity: int, note: str, next_step: str | None = None) -> None:
        if note not in self.notes:
            self.notes.append(note)
        if next_step and next_step not in self.next_steps:
            self.next_steps.append(next_step)
        if severity and (self.severity == EXIT_OK or SEVERITY_ORDER.index(severity) < SEVERITY_ORDER.index(self.severity)):
            self.severity = severity

    def as_json(self) -> dict[str, Any]:
        return {
            "user": self.user, "in_roster": self.in_roster, "account": self.account, "token": self.token,
            "ttl_s": self.ttl_s, "timer": self.timer, "policy": self.policy, "actions": self.actions,
            "notes": self.notes, "changes": self.changes, "severity": self.severity, "fingerprint": self.fingerprint,
            "next_steps": self.next_steps,
        }


@dataclass
class _Work:
    """Per-user working data that never leaves the process (it holds tokens)."""

    report: UserReport
    account: Account | None = None
    token: str | None = None
    accessor: str | None = None
    needs_mint: str | None = None  # why


class Provisioner:
    def __init__(self, options: Options, *, admin_token: str | None, environ: dict[str, str] | None = None) -> None:
        self.o = options
        self.admin_token = admin_token or None
        self.environ = dict(os.environ if environ is None else environ)
        self.host = socket.gethostname()
        self.errors: list[tuple[int, str]] = []
        self.policies_applied: list[str] = []
        self.policies_pruned: list[str] = []
        self.work: dict[str, _Work] = {}
        self.removed: dict[str, UserReport] = {}
        self.state = StateFile(options.state_dir)
        self.vault: Vault | None = None
        self.settings: Any = None
        self.roster: Roster | None = None
        self.started = time.monotonic()
        self.deadline = self.started + options.deadline_s

    # -- helpers ---------------------------------------------------------------------------

    def _as_user(self, account: Account, job: Callable[[Account, bytes], dict[str, Any]], payload: bytes = b"") -> dict[str, Any]:
        """:func:`run_as_user` within the run's deadline: every child together gets ``deadline_s``.

        A child gets at most :data:`CHILD_TIMEOUT_S` and never more than what is left of the run;
        once the deadline has passed no child is started (ChildFailed, kind ``timeout``).
        """
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ChildFailed(f"skipped {account.name}: the run's deadline ({self.o.deadline_s:.0f}s) has passed "
                              "(another user's children stalled); the next run retries", "timeout")
        return run_as_user(account, job, payload, timeout=min(CHILD_TIMEOUT_S, left))

    def _each(self, works: Iterable[_Work], step: Callable[[_Work], None]) -> None:
        """Run ``step`` for every user; an unexpected error is that user's problem, never the run's."""
        for work in works:
            try:
                step(work)
            except Exception as err:  # noqa: BLE001 - isolate users; the type only (no secret in it)
                work.report.flag(EXIT_CONFIG, f"internal error while working on {work.report.user} "
                                              f"({type(err).__name__}); the other users were not affected")

    @property
    def wants_dir(self) -> Path:
        return (self.o.systemd_root or Path("/")) / WANTS

    def _systemd_booted(self) -> bool:
        return self.o.systemd_root is None and Path("/run/systemd/system").is_dir()

    def timer_enabled(self, user: str) -> bool:
        link = self.wants_dir / timer_unit(user)
        try:
            target = os.readlink(link)
        except OSError:
            return False
        return os.path.basename(target) in (TIMER_TEMPLATE, timer_unit(user))

    def _systemctl(self, verb: str, units: list[str]) -> tuple[bool, str]:
        argv = [self.o.systemctl, "--quiet", "--no-ask-password"]
        if self.o.systemd_root is not None:
            argv.append(f"--root={self.o.systemd_root}")
        argv.append(verb)
        if self._systemd_booted():
            argv.append("--now")
        argv.extend(units)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            return False, f"{self.o.systemctl} {verb}: {err}"
        text = " ".join((proc.stderr + proc.stdout).split())[:400]
        return proc.returncode == 0, text

    def _load_settings(self) -> Any:
        from claude_auth_sync.model import UserIdentity
        from claude_auth_sync.plugin_manager import get_plugin_manager
        from claude_auth_sync.settings import load_settings

        plugins = get_plugin_manager()
        settings = load_settings(plugins.settings_sections(), UserIdentity.current(), system_file=self.o.config,
                                 user_file=Path("/nonexistent/claude-auth-sync/config.toml"), environ=self.environ)
        return settings.section("vault")

    # -- phases ----------------------------------------------------------------------------

    def run(self) -> int:
        self.roster = load_roster(self.o.roster)
        # The settings decide where every user's token is sent: only a file root controls counts.
        check_trusted(self.o.config)
        vault_settings = self._load_settings()
        self.settings = vault_settings
        from claude_auth_sync.plugins.backend_vault.store import check_address

        addr = check_address(vault_settings.addr, vault_settings.allow_insecure_http)
        self.vault = Vault(addr, vault_settings.cacert, vault_settings.timeout)
        if self.o.apply_policies and not self.admin_token:
            raise ConfigurationError("--apply-policies needs an admin token in VAULT_TOKEN",
                                     remedy=f"export VAULT_TOKEN=<admin token>; {ADMIN_RUN} --apply-policies")
        if self.o.dry_run:
            if self.o.state_dir.is_dir():
                self.state.load()
            return self._run_locked()
        self.state.ensure_dir()
        with _provision_lock(self.o.state_dir):
            self.state.load()
            try:
                return self._run_locked()
            finally:
                self.state.save()

    def _run_locked(self) -> int:
        assert self.roster is not None
        if self.admin_token and not self._check_admin():
            return self.exit_code()
        local = self._accounts()
        if self.o.apply_policies:
            self._apply_policies()
        elif self.admin_token:
            self._check_policies(local)
        self._each(local, self._inspect)
        self._lookup_tokens(local)
        self._timers(local)
        if self.admin_token:
            self._each([w for w in local if w.needs_mint], self._mint)
        else:
            for work in local:
                if work.needs_mint:
                    work.report.actions.append("needs admin run")
                    work.report.flag(EXIT_NEEDS_ADMIN, f"token {work.needs_mint}", f"admin run: {ADMIN_RUN}")
        self._superseded(local)
        self._deprovision()
        return self.exit_code()

    def _accounts(self) -> list[_Work]:
        """One _Work per roster user; those with a usable OS account (see :mod:`.accounts`) returned."""
        assert self.roster is not None
        found: dict[str, Account] = {}
        for entry in self.roster:
            work = self.work[entry.os_user] = _Work(report=UserReport(user=entry.os_user, email=entry.email))
            account = Account.lookup(entry.os_user)
            if account is None:
                work.report.account = "missing"
                work.report.notes.append("no OS account on this host: skipped")
            else:
                found[entry.os_user] = account
        refused = refusals(found)
        local: list[_Work] = []
        for name, account in found.items():
            work = self.work[name]
            if name in refused:
                work.report.account = "refused"
                work.report.flag(EXIT_CONFIG, refused[name], f"fix the roster or the account of {name}")
                continue
            work.account = account
            local.append(work)
        return local

    def _check_admin(self) -> bool:
        assert self.vault and self.admin_token
        try:
            data = self.vault.call("admin", self.admin_token, "get", "auth/token/lookup-self").get("data") or {}
        except VaultFailure as err:
            code = EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG
            self.errors.append((code, f"the admin token in VAULT_TOKEN was refused: {err}" if err.kind == "forbidden"
                                else f"cannot check the admin token: {err}"))
            return False
        if not data:
            self.errors.append((EXIT_CONFIG, "the admin token in VAULT_TOKEN could not describe itself"))
            return False
        from claude_auth_sync.plugins.backend_vault.policy import POLICY_PREFIX

        policies = {*(data.get("policies") or []), *(data.get("identity_policies") or [])} - {"default"}
        if "root" not in policies and (not policies or all(p.startswith(POLICY_PREFIX) for p in policies)):
            self.errors.append((EXIT_CONFIG, "VAULT_TOKEN is not an admin token (it carries only "
                                f"{', '.join(sorted(policies)) or 'no'} polic{'y' if len(policies) == 1 else 'ies'}: "
                                "a user's claude-auth-sync token?); export the admin token "
                                "(deploy/vault/t3-provisioner-admin.hcl) and rerun"))
            return False
        return True

    # policies

    def _policy_name(self, user: str) -> str:
        from claude_auth_sync.plugins.backend_vault.policy import policy_name

        return policy_name(user)

    def _rendered(self, user: str) -> str:
        from claude_auth_sync.plugins.backend_vault.policy import render_policy

        return render_policy(user, self.settings)

    def _read_policy(self, user: str) -> str | None:
        assert self.vault and self.admin_token
        try:
            answer = self.vault.call("admin", self.admin_token, "get", f"sys/policies/acl/{self._policy_name(user)}")
        except VaultFailure as err:
            if err.kind == "not_found":
                return None
            raise
        return str((answer.get("data") or {}).get("policy") or "")

    def _policy_state(self, user: str) -> str:
        current = self._read_policy(user)
        if current is None:
            return "missing"
        return "ok" if current.strip() == self._rendered(user).strip() else "drifted"

    def _check_policies(self, local: list[_Work]) -> None:
        for work in local:
            try:
                work.report.policy = self._policy_state(work.report.user)
                if work.report.policy != "ok":
                    work.report.flag(EXIT_CONFIG, f"policy {self._policy_name(work.report.user)} is {work.report.policy}",
                                     f"apply the Vault stack first: {ADMIN_RUN} --apply-policies")
            except VaultFailure as err:
                work.report.policy = "unknown"
                work.report.flag(EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, str(err))

    def _apply_policies(self) -> None:
        assert self.vault and self.admin_token and self.roster
        try:
            mount = self.vault.call("admin", self.admin_token, "get", f"sys/mounts/{self.settings.mount}")
            data = mount.get("data") or mount
            if data.get("type") != "kv" or str((data.get("options") or {}).get("version")) != "2":
                self.errors.append((EXIT_CONFIG, f"the mount {self.settings.mount}/ is not a KV version 2 engine: "
                                    f"enable it first (vault secrets enable -path={self.settings.mount} kv-v2)"))
                return
        except VaultFailure as err:
            if err.kind == "not_found":
                self.errors.append((EXIT_CONFIG, f"no secrets engine at {self.settings.mount}/: "
                                    f"vault secrets enable -path={self.settings.mount} kv-v2"))
            else:
                self.errors.append((EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, str(err)))
            return
        for entry in self.roster:
            report = self.work[entry.os_user].report
            try:
                state = self._policy_state(entry.os_user)
                if state == "ok":
                    report.policy = "ok"
                    continue
                if self.o.dry_run:
                    report.policy = f"{state} (would apply)"
                    report.actions.append("apply policy")
                    continue
                self.vault.call("admin", self.admin_token, "put", f"sys/policies/acl/{self._policy_name(entry.os_user)}",
                                {"policy": self._rendered(entry.os_user)})
                report.policy = "applied"
                report.actions.append(f"applied policy ({state})")
                report.changes.append(f"policy {self._policy_name(entry.os_user)} written (was {state})")
                self.policies_applied.append(self._policy_name(entry.os_user))
            except VaultFailure as err:
                report.policy = "unknown"
                report.flag(EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, str(err))
        if self.o.prune:
            self._prune_policies()

    def _prune_policies(self) -> None:
        assert self.vault and self.admin_token and self.roster
        from claude_auth_sync.plugins.backend_vault.policy import POLICY_PREFIX, USERNAME_PATTERN

        try:
            answer = self.vault.call("admin", self.admin_token, "list", "sys/policies/acl")
        except VaultFailure as err:
            self.errors.append((EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, str(err)))
            return
        keep = {self._policy_name(u) for u in self.roster.names()}
        for name in sorted((answer.get("data") or {}).get("keys") or []):
            if not name.startswith(POLICY_PREFIX) or name in keep:
                continue
            if not USERNAME_PATTERN.fullmatch(name[len(POLICY_PREFIX):]):
                continue
            user = name[len(POLICY_PREFIX):]
            report = self._removed_report(user)
            if self.o.dry_run:
                report.actions.append("delete policy")
                report.policy = "would delete"
                continue
            try:
                self.vault.call("admin", self.admin_token, "delete", f"sys/policies/acl/{name}")
            except VaultFailure as err:
                report.flag(EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, str(err))
                continue
            report.policy = "deleted"
            report.actions.append("deleted policy")
            report.changes.append(f"policy {name} deleted")
            self.policies_pruned.append(name)

    # home and token

    def _inspect(self, work: _Work) -> None:
        report, account = work.report, work.account
        assert account is not None
        try:
            result = self._as_user(account, job_inspect(create=not self.o.dry_run))
        except ChildFailed as err:
            report.token = "unknown"
            report.flag(EXIT_TEMPFAIL if err.kind == "timeout" else EXIT_CONFIG, str(err))
            report.actions.append("fix the home directory")
            return
        changes = [str(c) for c in result.get("changes") or []]
        if self.o.dry_run:
            report.actions.extend(f"would {c}" for c in changes)
        else:
            report.changes.extend(changes)
        state = result.get("token_state")
        if state == "present":
            work.token = str(result["token"])
            report.fingerprint = fingerprint(work.token)
        elif state == "unsafe":
            report.token = "unsafe"
            report.notes.append(str(result.get("why")))
            work.needs_mint = f"unsafe ({result.get('why')})"
        else:
            report.token = "missing"
            work.needs_mint = "missing"

    def _lookup_tokens(self, local: list[_Work]) -> None:
        self._each([w for w in local if w.token is not None], self._lookup_token)

    def _lookup_token(self, work: _Work) -> None:
        """Check one user's token with that token (lookup-self); decide whether it needs a re-mint."""
        assert self.vault and work.token is not None
        report = work.report
        try:
            data = self.vault.call("user", work.token, "get", "auth/token/lookup-self").get("data") or {}
        except VaultFailure as err:
            if err.kind == "forbidden":
                report.token = "expired"
                work.needs_mint = "invalid or expired"
            else:
                report.token = "unknown"
                report.flag(EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, str(err))
            return
        work.accessor = data.get("accessor") or None
        ttl = data.get("ttl")
        report.ttl_s = int(ttl) if isinstance(ttl, int) else None
        drift = _drift(report.user, data)
        if drift:
            report.token = "drifted"
            report.notes.append("; ".join(drift))
            work.needs_mint = "drifted (" + "; ".join(drift) + ")"
        elif report.ttl_s is not None and report.ttl_s < EXPIRING_S:
            report.token = "expiring"
            work.needs_mint = f"expiring (TTL {_duration(report.ttl_s)}: is the agent's timer running?)"
        else:
            report.token = "ok"
            self._adopt(work)

    def _adopt(self, work: _Work) -> None:
        """Adopt a valid token minted elsewhere (by hand, by another host sharing the home, or before
        the state file existed); the one recorded before is kept as superseded, and revoked by the
        next admin run."""
        report = work.report
        known = self.state.users.get(report.user) or {}
        if work.accessor and known.get("accessor") != work.accessor and not self.o.dry_run:
            assert work.account is not None
            self.state.users[report.user] = self._entry(
                work.accessor, report.fingerprint, work.account, minted_at=None,
                superseded=[*known.get("superseded", []), *([known["accessor"]] if known.get("accessor") else [])],
            )

    def _timers(self, local: list[_Work]) -> None:
        missing = []
        for work in local:
            if self.timer_enabled(work.report.user):
                work.report.timer = "enabled"
            else:
                missing.append(work)
        if not missing:
            return
        if self.o.dry_run:
            for work in missing:
                work.report.timer = "disabled"
                work.report.actions.append("would enable timer")
            return
        ok, text = self._systemctl("enable", [timer_unit(w.report.user) for w in missing])
        for work in missing:
            if self.timer_enabled(work.report.user):
                work.report.timer = "enabled"
                work.report.actions.append("enabled timer")
                work.report.changes.append(f"enabled {timer_unit(work.report.user)}")
            else:
                work.report.timer = "disabled"
                work.report.flag(EXIT_CONFIG, f"systemctl enable {timer_unit(work.report.user)} failed "
                                              f"(exit {'0' if ok else 'non-zero'}): {text or 'no symlink created'}")

    # minting

    def _mint(self, work: _Work) -> None:
        assert self.vault and self.admin_token and work.account
        report = work.report
        if report.policy not in ("ok", "applied"):
            if report.policy == "-":
                try:
                    report.policy = self._policy_state(report.user)
                except VaultFailure as err:
                    report.flag(EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, str(err))
                    return
            if report.policy not in ("ok", "applied"):
                if self.o.dry_run and report.policy.endswith("(would apply)"):
                    report.actions.append(f"would mint token ({work.needs_mint})")
                    return
                if report.policy == "unknown":  # the policy could not be read: flagged with the reason
                    report.actions.append("refused to mint: the admin token could not read the policy")
                    return
                report.actions.append("refused to mint: apply the Vault stack first")
                report.flag(EXIT_CONFIG, f"policy {self._policy_name(report.user)} is {report.policy}",
                            f"apply the Vault stack first: {ADMIN_RUN} --apply-policies")
                return
        if self.o.dry_run:
            report.actions.append(f"would mint token ({work.needs_mint})")
            return
        body = {
            "policies": [self._policy_name(report.user)],
            "period": PERIOD,
            "display_name": f"claude-auth-sync-{report.user}",
            "no_default_policy": True,
            "renewable": True,
            "meta": {"os_user": report.user, "host": self.host, "provisioner": "t3-provision-users"},
        }
        try:
            auth = self.vault.call("admin", self.admin_token, "post", "auth/token/create-orphan", body).get("auth") or {}
        except VaultFailure as err:
            report.flag(EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, f"cannot mint: {err}")
            return
        token, accessor = auth.get("client_token"), auth.get("accessor")
        if not token or not accessor:
            report.flag(EXIT_CONFIG, "Vault returned no token")
            return
        try:
            result = self._as_user(work.account, job_write_token, token.encode("ascii"))
        except ChildFailed as err:
            report.flag(EXIT_TEMPFAIL if err.kind == "timeout" else EXIT_CONFIG, f"cannot write the token file: {err}")
            self._revoke(accessor, report, "the unusable new token")
            return
        report.changes.extend(str(c) for c in result.get("changes") or [])
        previous = self.state.users.get(report.user) or {}
        old = [work.accessor, previous.get("accessor"), *previous.get("superseded", [])]
        # Recorded before revoking: an accessor whose revocation fails stays in the books.
        entry = self._entry(accessor, fingerprint(token), work.account, minted_at=_now(),
                            superseded=sorted({a for a in old if a and a != accessor}))
        self.state.users[report.user] = entry
        revoked = self._revoke_superseded(entry, report, "the replaced token")
        report.fingerprint = fingerprint(token)
        report.token = "minted"
        report.ttl_s = int(auth.get("lease_duration") or PERIOD_S)
        report.actions.append(f"minted token ({work.needs_mint})" + (f", revoked {revoked} old" if revoked else ""))

    def _entry(self, accessor: str, fp: str | None, account: Account, *, minted_at: str | None,
               superseded: list[str]) -> dict[str, Any]:
        entry: dict[str, Any] = {"accessor": accessor, "fingerprint": fp, "uid": account.uid, "host": self.host,
                                 "minted_at": minted_at, "recorded_at": _now()}
        if superseded:
            entry["superseded"] = sorted(set(superseded))
        return entry

    def _revoke_superseded(self, entry: dict[str, Any], report: UserReport, what: str) -> int:
        """Revoke every superseded accessor of ``entry``; those that fail stay recorded."""
        left = [a for a in entry.get("superseded", []) if not self._revoke(a, report, what)]
        revoked = len(entry.get("superseded", [])) - len(left)
        if left:
            entry["superseded"] = left
        else:
            entry.pop("superseded", None)
        return revoked

    def _superseded(self, local: list[_Work]) -> None:
        """Tokens this host minted earlier and no longer uses: revoke them (admin), or say so."""
        for work in local:
            entry = self.state.users.get(work.report.user)
            if not entry or not entry.get("superseded") or work.needs_mint:
                continue
            if not self.admin_token:
                work.report.actions.append("needs admin run")
                work.report.flag(EXIT_NEEDS_ADMIN, f"{len(entry['superseded'])} replaced token(s) may still be valid",
                                 f"admin run: {ADMIN_RUN}")
            elif self.o.dry_run:
                work.report.actions.append("would revoke replaced token(s)")
            else:
                revoked = self._revoke_superseded(entry, work.report, "a replaced token")
                work.report.actions.append(f"revoked {revoked} replaced token(s)")

    def _revoke(self, accessor: str, report: UserReport, what: str) -> bool:
        assert self.vault and self.admin_token
        try:
            self.vault.call("admin", self.admin_token, "post", "auth/token/revoke-accessor", {"accessor": accessor})
        except VaultFailure as err:
            report.flag(EXIT_TEMPFAIL if err.kind == "unavailable" else EXIT_CONFIG, f"cannot revoke {what}: {err}")
            return False
        report.changes.append(f"revoked {what}")
        return True

    # deprovisioning

    def _removed_report(self, user: str) -> UserReport:
        if user not in self.removed:
            self.removed[user] = UserReport(user=user, in_roster=False, account="-", token="-", timer="-")
        return self.removed[user]

    def _enabled_timer_users(self) -> set[str]:
        try:
            names = os.listdir(self.wants_dir)
        except OSError:
            return set()
        found = set()
        for name in names:
            match = TIMER_RE.fullmatch(name)
            if match and self.timer_enabled(match.group(1)):
                found.add(match.group(1))
        return found

    def _deprovision(self) -> None:
        assert self.roster is not None
        in_roster = set(self.roster.names())
        no_account = {u for u, w in self.work.items() if w.report.account == "missing"}
        timers = self._enabled_timer_users()
        gone = (timers | set(self.state.users)) - in_roster
        to_disable = sorted((timers - in_roster) | (timers & no_account))
        for user in sorted(gone):
            self._removed_report(user).notes.append("not in the roster")
        if to_disable:
            if self.o.dry_run:
                for user in to_disable:
                    self._report_for(user).actions.append("would disable timer")
            else:
                ok, text = self._systemctl("disable", [timer_unit(u) for u in to_disable])
                for user in to_disable:
                    report = self._report_for(user)
                    if self.timer_enabled(user):
                        report.timer = "enabled"
                        report.flag(EXIT_CONFIG, f"systemctl disable {timer_unit(user)} failed: {text}")
                    else:
                        report.timer = "disabled"
                        report.actions.append("disabled timer")
                        report.changes.append(f"disabled {timer_unit(user)}")
        for user in sorted(gone):
            report = self._removed_report(user)
            if report.timer == "-":
                report.timer = "disabled"
            entry = self.state.users.get(user)
            if not entry or not entry.get("accessor"):
                continue
            if not (self.admin_token and self.o.prune):
                report.token = "revoke pending"
                report.actions.append("needs admin run with --prune")
                report.flag(EXIT_NEEDS_ADMIN, "removed from the roster; their token is not revoked yet",
                            f"revoke removed users' tokens: {ADMIN_RUN} --prune")
                continue
            if self.o.dry_run:
                report.token = "would revoke"
                report.actions.append("would revoke token")
                continue
            entry.setdefault("superseded", [])
            entry["superseded"] = sorted({*entry["superseded"], str(entry["accessor"])})
            self._revoke_superseded(entry, report, "the removed user's token")
            if entry.get("superseded"):
                continue  # a revocation failed (flagged); the next admin --prune run retries
            report.token = "revoked"
            report.actions.append("revoked token (secret kept)")
            del self.state.users[user]

    def _report_for(self, user: str) -> UserReport:
        work = self.work.get(user)
        return work.report if work is not None else self._removed_report(user)

    # results

    def exit_code(self) -> int:
        severities = [code for code, _ in self.errors]
        severities += [w.report.severity for w in self.work.values()]
        severities += [r.severity for r in self.removed.values()]
        for code in SEVERITY_ORDER:
            if code in severities:
                return code
        return EXIT_OK

    def reports(self) -> list[UserReport]:
        return [w.report for w in self.work.values()] + list(self.removed.values())

    def next_steps(self) -> list[str]:
        steps: list[str] = []
        for report in self.reports():
            steps.extend(s for s in report.next_steps if s not in steps)
        return steps

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "roster": str(self.o.roster),
            "admin": bool(self.admin_token),
            "dry_run": self.o.dry_run,
            "exit_code": self.exit_code(),
            "errors": [msg for _, msg in self.errors],
            "users": [w.report.as_json() for w in self.work.values()],
            "removed": [r.as_json() for r in self.removed.values()],
            "policies": {"applied": self.policies_applied, "pruned": self.policies_pruned},
            "next_steps": self.next_steps(),
            "vault_requests": dict(self.vault.requests) if self.vault else {"user": 0, "admin": 0},
            "seconds": round(time.monotonic() - self.started, 3),
        }

    def render(self, stream: Any) -> None:
        """The human-readable report (user and Vault text made inert: :mod:`.provision_render`)."""
        from .provision_render import render_report

        render_report(self, stream, _duration)


def _drift(user: str, data: dict[str, Any]) -> list[str]:
    """How a user's token (its lookup-self data) differs from what the provisioner mints.

    Values that came from Vault are passed through :func:`safe_text` (they end up in root's terminal).
    """
    from claude_auth_sync.plugins.backend_vault.policy import expected_policies

    policies = {*(data.get("policies") or []), *(data.get("identity_policies") or [])}
    expected = set(expected_policies(user))
    meta = data.get("meta") or {}
    drift = []
    if "root" in policies:
        drift.append("carries the root policy")
    if policies != expected:
        drift.append(safe_text(f"policies {sorted(map(str, policies))} instead of {sorted(expected)}", 300))
    if data.get("period") != PERIOD_S:
        drift.append(safe_text(f"period {data.get('period')}s instead of {PERIOD_S}s", 100))
    if not data.get("orphan"):
        drift.append("not an orphan token")
    if isinstance(meta, dict) and meta.get("os_user") not in (None, user):
        drift.append(f"minted for {safe_text(repr(meta.get('os_user')), 80)}")
    return drift


def _duration(seconds: int) -> str:
    if seconds < 0:
        return "0s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d {hours}h"
    minutes = rest // 60
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


# ---------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t3-provision-users",
        description="Provision claude-auth-sync for every roster user (run as root). With an admin Vault token "
                    "in VAULT_TOKEN it mints missing, expired or drifted per-user tokens; without one it only "
                    "checks, and exits non-zero when an admin run is needed.",
    )
    parser.add_argument("--roster", type=Path, default=DEFAULT_ROSTER, help=f"roster file (default {DEFAULT_ROSTER})")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of a table")
    parser.add_argument("--apply-policies", action="store_true",
                        help="write every roster user's Vault policy (the Vault stack; admin token needed)")
    parser.add_argument("--prune", action="store_true",
                        help="with an admin token: revoke removed users' tokens; with --apply-policies also "
                             "delete their policies (their secrets are kept)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"system settings file (default {DEFAULT_CONFIG}); VAULT_ADDR overrides its vault.addr")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"root-only bookkeeping of minted token accessors (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--systemd-root", type=Path, default=None,
                        help="operate on the unit files below this root (systemctl --root), e.g. for tests")
    parser.add_argument("--systemctl", default="systemctl", help="systemctl binary (default: from PATH)")
    parser.add_argument("--deadline", type=float, default=RUN_DEADLINE_S, metavar="SECONDS",
                        help=f"time for all work done as the users together (default {RUN_DEADLINE_S:.0f}); "
                             "users left when it has passed are skipped (exit 75) and retried next run")
    return parser


def _take_admin_token() -> tuple[str | None, str | None]:
    """``(admin token, problem)`` from ``VAULT_TOKEN``, which is then gone from this process.

    Removed from ``os.environ`` *and* overwritten in the original environment block
    (:mod:`.environ_block`), so neither ``/proc/<pid>/environ`` of this process nor that of any
    child forked later shows it. A token that is not one word of printable ASCII is a problem.
    """
    environ_block.scrub("VAULT_TOKEN")
    raw = os.environ.pop("VAULT_TOKEN", None)
    if not raw:
        return None, None
    try:
        return token_from_bytes(os.fsencode(raw)), None
    except MalformedToken as err:
        return None, f"VAULT_TOKEN {err}"


def _options(args: argparse.Namespace) -> Options:
    return Options(
        roster=args.roster, dry_run=args.dry_run, json=args.json, apply_policies=args.apply_policies,
        prune=args.prune, systemd_root=args.systemd_root, systemctl=args.systemctl, state_dir=args.state_dir,
        config=args.config, deadline_s=args.deadline,
    )


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    """One line on stderr (and the JSON object with ``--json``); returns ``code``."""
    line = " ".join(safe_text(message, 2000).split())
    if args.json:
        print(json.dumps({"exit_code": code, "errors": [line]}))
    print(f"t3-provision-users: {line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The command. Never a traceback: an unexpected error is exit 78 with one line naming its type."""
    args = build_parser().parse_args(argv)
    admin_token, problem = _take_admin_token()  # first of all: no child may inherit it
    if problem:
        return _fail(args, EXIT_CONFIG, problem)
    if os.geteuid() != 0:
        return _fail(args, EXIT_NOPERM, "must run as root (it works as each roster user in turn)")
    provisioner = Provisioner(_options(args), admin_token=admin_token)
    try:
        code = provisioner.run()
        if args.json:
            print(json.dumps(provisioner.as_json(), indent=None, sort_keys=False))
        else:
            provisioner.render(sys.stdout)
        return code
    except CasError as err:
        return _fail(args, int(err.exit_code), str(err))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the contract: 78 and one line, never exit 1 and a traceback
        return _fail(args, EXIT_CONFIG, f"internal error ({type(err).__name__}); nothing more was done. "
                                        "Rerun with --dry-run to see the state, and report this")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
