"""What the privilege-dropped child does in a user's home (jobs for :func:`.as_user.run_as_user`).

Guarantees (the child already is the user, see :mod:`.as_user`):

* every component below the home is opened with ``openat(O_NOFOLLOW|O_DIRECTORY)`` from the
  home's descriptor: a symlink or a directory owned by someone else is refused ("unsafe"), never
  followed; the home itself must be owned by the user;
* the token file is read only when it passes the agent's own checks (a regular file of the user
  with no group or world bits: :func:`~claude_auth_sync.plugins.backend_vault.token_file.token_file_problem`)
  and has one link, and its bytes pass the agent's own parse
  (:func:`~claude_auth_sync.plugins.backend_vault.token_file.token_from_bytes`);
* the token file is replaced atomically (:func:`claude_auth_sync.fileio.write_atomically`: a new
  0600 file in the user's own directory, fsync, rename, fsync of the directory), so a planted
  ``vault-token -> /etc/shadow`` or a hard link to a root file is replaced, its target never opened;
* temporary files a killed writer left (``.vault-token.<16 hex>``, regular files of the user
  only) are removed (:func:`claude_auth_sync.fileio.remove_stale_temps`);
* in a dry run (``create`` false) nothing is created, changed or removed: ``changes`` says what
  would be.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Sequence
from typing import Any

from claude_auth_sync.fileio import remove_stale_temps, stale_temps, write_atomically
from claude_auth_sync.plugins.backend_vault.token_file import (
    MAX_TOKEN_BYTES,
    MalformedToken,
    token_file_problem,
    token_from_bytes,
)

from .as_user import Account, ChildFailed, Job

__all__ = ["CONFIG_PARTS", "STATE_PARTS", "TOKEN_NAME", "job_inspect", "job_write_token"]

CONFIG_PARTS = (".config", "claude-auth-sync")
STATE_PARTS = (".local", "state", "claude-auth-sync")
TOKEN_NAME = "vault-token"
TOKEN_REL = "~/" + "/".join((*CONFIG_PARTS, TOKEN_NAME))
STALE_TEMP_PATTERN = re.compile(r"\.vault-token\.[0-9a-f]{16}")


def _rel(parts: Sequence[str]) -> str:
    return "~/" + "/".join(parts)


def _owned_by(fd: int, account: Account, shown: str) -> int:
    """``fd`` when the user owns what it is open on; otherwise it is closed and refused ("unsafe")."""
    uid = os.fstat(fd).st_uid
    if uid != account.uid:
        os.close(fd)
        raise ChildFailed(f"{shown} is owned by uid {uid}, not by {account.name}", "unsafe")
    return fd


def _open_home(account: Account) -> int:
    try:
        fd = os.open(account.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ChildFailed(f"home directory {account.home} does not exist", "unsafe") from None
    except OSError as err:
        raise ChildFailed(f"cannot open home directory {account.home}: {os.strerror(err.errno or 0)}", "unsafe") from None
    return _owned_by(fd, account, f"home directory {account.home}")


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
    return _owned_by(fd, account, rel)


def _make_subdir(parent: int, name: str, rel: str, account: Account) -> int:
    """Create ``name`` (0700) below ``parent`` if it is still missing, then open it as :func:`_open_subdir`."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass
    except OSError as err:
        raise ChildFailed(f"cannot create {rel}: {os.strerror(err.errno or 0)}", "unsafe") from None
    child = _open_subdir(parent, name, rel, account)
    if child is None:
        raise ChildFailed(f"{rel} vanished while it was being created", "unsafe")
    return child


def _force_private(fd: int, parts: Sequence[str], create: bool, changes: list[str]) -> None:
    """Make the directory ``fd`` 0700 (``create``), or only say that it is not."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode == 0o700:
        return
    if create:
        os.fchmod(fd, 0o700)
        changes.append(f"chmod 0700 {_rel(parts)} (was {mode:04o})")
    else:
        changes.append(f"chmod 0700 {_rel(parts)} (is {mode:04o})")


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
                child = _make_subdir(fd, name, rel, account)
                changes.append(f"created {rel}")
            os.close(fd)
            fd = child
        _force_private(fd, parts, create, changes)
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _token_file_problem(st: os.stat_result, account: Account) -> str | None:
    """Why the opened token file must not be used (None: it may): the agent's own checks
    (:func:`token_file_problem`), and one link only (never a hard link to someone else's file)."""
    problem = token_file_problem(st, account.uid)
    if problem == "not_regular":
        return "is not a regular file"
    if problem == "owner":
        return f"is owned by uid {st.st_uid}"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    if problem == "mode":
        return f"has mode {stat.S_IMODE(st.st_mode):04o} (must be 0600)"
    return None


def _read_token(dir_fd: int, account: Account) -> dict[str, Any]:
    """``token_state`` present (with ``token``), missing, or unsafe (with ``why``)."""
    try:
        fd = os.open(TOKEN_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return {"token_state": "missing"}
    except OSError as err:
        why = "is a symlink" if err.errno == errno.ELOOP else f"cannot be read: {os.strerror(err.errno or 0)}"
        return {"token_state": "unsafe", "why": f"{TOKEN_REL} {why}"}
    try:
        problem = _token_file_problem(os.fstat(fd), account)
        if problem:
            return {"token_state": "unsafe", "why": f"{TOKEN_REL} {problem}"}
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    try:
        token = token_from_bytes(data)  # the agent's own check: one word of printable ASCII
    except MalformedToken as err:
        state = "missing" if err.kind == "empty" else "unsafe"
        return {"token_state": state, "why": f"{TOKEN_REL} {err}"}
    return {"token_state": "present", "token": token}


def _clean_stale_temps(dir_fd: int, account: Account, create: bool, changes: list[str]) -> None:
    """Remove (``create``) or list the ``.vault-token.<hex>`` files a killed write child left."""
    if create:
        names = remove_stale_temps(dir_fd, STALE_TEMP_PATTERN, account.uid)
        changes.extend(f"removed {_rel((*CONFIG_PARTS, n))} (left by an interrupted run)" for n in names)
    else:
        names = stale_temps(dir_fd, STALE_TEMP_PATTERN, account.uid)
        changes.extend(f"remove {_rel((*CONFIG_PARTS, n))} (left by an interrupted run)" for n in names)


def job_inspect(create: bool) -> Job:
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
                    _clean_stale_temps(cfg, account, create, changes)
                finally:
                    os.close(cfg)
        finally:
            os.close(home)
        return {"ok": True, "changes": changes, **token}

    return job


def job_write_token(account: Account, payload: bytes) -> dict[str, Any]:
    """Child job: atomically replace ``vault-token`` with ``payload`` (0600, never via a link)."""
    try:
        token = token_from_bytes(payload)
    except MalformedToken:
        raise ChildFailed("refusing to write an empty or malformed token") from None
    changes: list[str] = []
    home = _open_home(account)
    try:
        cfg = _walk(home, CONFIG_PARTS, account, True, changes)
    finally:
        os.close(home)
    assert cfg is not None
    try:
        write_atomically(cfg, TOKEN_NAME, (token + "\n").encode("ascii"), mode=0o600,
                         temp_name=f".{TOKEN_NAME}.{secrets.token_hex(8)}")
    except OSError as err:
        raise ChildFailed(f"cannot replace {TOKEN_REL}: {os.strerror(err.errno or 0)}", "unsafe") from None
    finally:
        os.close(cfg)
    return {"ok": True, "changes": changes + [f"wrote {TOKEN_REL}"]}
