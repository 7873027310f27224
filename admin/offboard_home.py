"""What the privilege-dropped child removes from a user's home when the user is offboarded
(a job for :func:`.as_user.run_as_user`, used by :mod:`.offboard`).

Guarantees (the child already is the user, see :mod:`.as_user`; walks as :mod:`.user_home`):

* only the agent's own files go: ``~/.config/claude-auth-sync/vault-token`` (only when the caller
  says its token is dead or revoked), the temporary files an interrupted token write left, the
  directory itself when it is then empty (a ``config.toml`` the person wrote is kept, and said),
  and the whole state directory ``~/.local/state/claude-auth-sync`` (status log, rotated log,
  last check, locks). Never ``~/.claude/.credentials.json`` or anything else of Claude Code;
* every component is opened with ``openat(O_NOFOLLOW|O_DIRECTORY)`` from the home's descriptor
  and every removal is an ``unlinkat``/``rmdir`` relative to a directory descriptor: a symlink
  anywhere (``~/.local -> /etc``, ``state/claude-auth-sync/x -> /etc/passwd``) is removed as a
  link or refused, its target never touched; a directory owned by someone else is refused;
* the state directory is removed to at most :data:`MAX_DEPTH` levels and :data:`MAX_ENTRIES`
  entries (a hostile tree cannot keep root's child busy); beyond that it is refused ("unsafe");
* in a dry run nothing is removed: ``changes`` says what would be;
* a refusal in the state directory (``refused``) still reports what the token file's directory
  gave up (``changes``, ``kept``).
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from claude_auth_sync.fileio import remove_stale_temps, stale_temps

from .as_user import Account, ChildFailed
from .user_home import CONFIG_PARTS, STALE_TEMP_PATTERN, STATE_PARTS, TOKEN_NAME, _open_home, _open_subdir

__all__ = ["MAX_DEPTH", "MAX_ENTRIES", "job_offboard_home", "offboard_payload"]

MAX_DEPTH = 8
MAX_ENTRIES = 10000


def offboard_payload(*, dry_run: bool, remove_token: bool) -> bytes:
    """The child's instructions (no secret in them)."""
    return json.dumps({"dry_run": dry_run, "remove_token": remove_token}).encode()


def _rel(parts: tuple[str, ...] | list[str]) -> str:
    return "~/" + "/".join(parts)


def _open_path(home: int, parts: tuple[str, ...], account: Account) -> int | None:
    """The directory ``home/parts...`` opened without following links; None when a part is missing."""
    fd = os.dup(home)
    try:
        for depth, name in enumerate(parts):
            child = _open_subdir(fd, name, _rel(parts[: depth + 1]), account)
            os.close(fd)
            fd = -1
            if child is None:
                return None
            fd = child
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


class _Tree:
    """Counts what a recursive removal touched, to bound it."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.entries = 0

    def empty(self, dir_fd: int, rel: str, depth: int) -> None:
        """Remove everything inside ``dir_fd`` (not following any link); refuse a too deep or big tree."""
        if depth > MAX_DEPTH:
            raise ChildFailed(f"{rel} is nested deeper than {MAX_DEPTH} levels: refusing to remove it", "unsafe")
        for name in sorted(os.listdir(dir_fd)):
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                raise ChildFailed(f"{rel} holds more than {MAX_ENTRIES} entries: refusing to remove it", "unsafe")
            st = os.lstat(name, dir_fd=dir_fd)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    self.empty(sub, f"{rel}/{name}", depth + 1)
                finally:
                    os.close(sub)
                if not self.dry_run:
                    os.rmdir(name, dir_fd=dir_fd)
            elif not self.dry_run:
                os.unlink(name, dir_fd=dir_fd)  # a symlink is removed as a link, never followed


def _remove_state_dir(home: int, account: Account, dry_run: bool, changes: list[str]) -> None:
    parent = _open_path(home, STATE_PARTS[:-1], account)
    if parent is None:
        return
    try:
        state = _open_subdir(parent, STATE_PARTS[-1], _rel(STATE_PARTS), account)
        if state is None:
            return
        tree = _Tree(dry_run)
        try:
            tree.empty(state, _rel(STATE_PARTS), 1)
        finally:
            os.close(state)
        if not dry_run:
            os.rmdir(STATE_PARTS[-1], dir_fd=parent)
        verb = "remove" if dry_run else "removed"
        changes.append(f"{verb} {_rel(STATE_PARTS)} ({tree.entries} entries)")
    finally:
        os.close(parent)


def _remove_config(home: int, account: Account, dry_run: bool, remove_token: bool,
                   changes: list[str], kept: list[str]) -> None:
    config = _open_path(home, CONFIG_PARTS, account)
    if config is None:
        return
    try:
        verb = "remove" if dry_run else "removed"
        temps = stale_temps(config, STALE_TEMP_PATTERN, account.uid) if dry_run else \
            remove_stale_temps(config, STALE_TEMP_PATTERN, account.uid)
        changes.extend(f"{verb} {_rel((*CONFIG_PARTS, n))} (left by an interrupted run)" for n in temps)
        token_here = _exists(config, TOKEN_NAME)
        if token_here and remove_token:
            if not dry_run:
                os.unlink(TOKEN_NAME, dir_fd=config)  # a symlink planted there goes as a link
            changes.append(f"{verb} {_rel((*CONFIG_PARTS, TOKEN_NAME))}")
        elif token_here:
            kept.append(f"{_rel((*CONFIG_PARTS, TOKEN_NAME))} (its token is not known to be revoked)")
        left = [n for n in os.listdir(config) if not (dry_run and (n in temps or (n == TOKEN_NAME and remove_token)))]
    finally:
        os.close(config)
    if left:
        kept.extend(_rel((*CONFIG_PARTS, n)) for n in sorted(left) if n != TOKEN_NAME)
        return
    parent = _open_path(home, CONFIG_PARTS[:-1], account)
    if parent is None:
        return
    try:
        if not dry_run:
            os.rmdir(CONFIG_PARTS[-1], dir_fd=parent)
        changes.append(f"{verb} {_rel(CONFIG_PARTS)}")
    finally:
        os.close(parent)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def job_offboard_home(account: Account, payload: bytes) -> dict[str, Any]:
    """Child job: remove the agent's files (see the module docstring); ``changes`` and ``kept``."""
    try:
        order = json.loads(payload)
        dry_run, remove_token = bool(order["dry_run"]), bool(order["remove_token"])
    except (ValueError, KeyError, TypeError):
        raise ChildFailed("bad instructions") from None
    changes: list[str] = []
    kept: list[str] = []
    home = _open_home(account)
    try:
        _remove_config(home, account, dry_run, remove_token, changes, kept)
        try:
            _remove_state_dir(home, account, dry_run, changes)
        except ChildFailed as err:  # what was removed before is still said
            return {"ok": True, "changes": changes, "kept": kept, "refused": str(err), "refused_kind": err.kind}
    finally:
        os.close(home)
    return {"ok": True, "changes": changes, "kept": kept}
