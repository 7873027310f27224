"""A private home for every process a test starts, and a check that the tester's own is left alone.

A test must never depend on, read or change the state of the home of whoever runs it: a developer
who ran ``vault login`` has ``~/.vault-token`` (hvac falls back to it when a client is built without
a token), one who uses Claude Code has ``~/.claude/.credentials.json`` and a ``settings.json``
whose ``env`` block overrides the process environment of the real ``claude`` CLI.

* :func:`private_home_env` gives ``HOME`` and the XDG base directories inside a test-owned directory;
  :func:`child_env` is the caller's environment with those applied and the variables that carry a
  tester's logins (``VAULT_*``, ``BAO_*``, ``CLAUDE_CONFIG_DIR``, this tool's own settings) removed.
* :class:`HomeSnapshot` records (by ``lstat``, never reading them) ``~/.vault-token`` and ``~/.claude``
  of the real home so the session guard in ``tests/conftest.py`` can fail the run when a test
  changed them.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TESTER_STATE_PREFIXES", "XDG_BASE_DIRS", "HomeSnapshot", "child_env", "private_home_env", "real_homes"]

#: Environment variables through which a tester's own logins or settings would reach a process
#: under test. ``CLAUDE_AUTH_SYNC_TEST_*`` (e.g. ``CLAUDE_AUTH_SYNC_TEST_BAO``) are test-harness
#: knobs and stay.
TESTER_STATE_PREFIXES = ("VAULT_", "BAO_", "CLAUDE_AUTH_SYNC_", "CLAUDE_CONFIG_DIR")
_KEPT = ("CLAUDE_AUTH_SYNC_TEST_",)

#: The XDG base directories that default to places under ``HOME``.
XDG_BASE_DIRS = ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")


def private_home_env(home: Path) -> dict[str, str]:
    """``HOME`` and ``XDG_{CONFIG,CACHE,DATA,STATE}_HOME`` inside ``home`` (created 0700)."""
    home = Path(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
    }


def is_tester_state(name: str) -> bool:
    return name.startswith(TESTER_STATE_PREFIXES) and not name.startswith(_KEPT)


def child_env(home: Path, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) in a private home, without the tester's logins."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not is_tester_state(k)}
    env.update(private_home_env(home))
    env.update(extra)
    return env


def real_homes() -> list[Path]:
    """The tester's home: the account's (what ``pwd`` says) and ``$HOME`` if it points elsewhere."""
    homes = [Path(pwd.getpwuid(os.getuid()).pw_dir)]
    env_home = os.environ.get("HOME")
    if env_home and Path(env_home) not in homes:
        homes.append(Path(env_home))
    return homes


#: What the guard watches in each real home. Inside ``.claude`` the login and settings files are
#: compared by their ``lstat`` and the top-level entries by name; deeper session files
#: (``projects/``, ``todos/`` ...) are left out so a Claude Code session the tester runs at the same
#: time cannot trip the guard.
_WATCHED_FILES = (".vault-token", ".claude/.credentials.json", ".claude/settings.json", ".claude/settings.local.json")


def _describe(path: Path) -> dict[str, str]:
    """What the guard compares, from ``lstat`` alone (the guard never opens the tester's files):
    inode, type and mode, owner, size, mtime and ctime. Any write, replace, chmod or chown changes
    at least one of them (ctime even when the writer puts the mtime back)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return {"exists": "no"}
    seen = {"exists": "yes", "inode": str(st.st_ino), "mode": f"{st.st_mode:o}", "owner": f"{st.st_uid}:{st.st_gid}"}
    if not stat.S_ISDIR(st.st_mode):
        seen.update(size=str(st.st_size), mtime_ns=str(st.st_mtime_ns), ctime_ns=str(st.st_ctime_ns))
    return seen


@dataclass(frozen=True)
class HomeSnapshot:
    """The watched paths of the given homes, as :func:`_describe` sees them (no content)."""

    entries: dict[str, dict[str, str]]

    @classmethod
    def take(cls, homes: list[Path]) -> HomeSnapshot:
        entries: dict[str, dict[str, str]] = {}
        for home in homes:
            for rel in _WATCHED_FILES:
                entries[str(home / rel)] = _describe(home / rel)
            claude = home / ".claude"
            entries[str(claude)] = _describe(claude)
            if claude.is_dir() and not claude.is_symlink():
                for child in sorted(claude.iterdir()):
                    entries.setdefault(str(child), {"exists": "yes"})
        return cls(entries)

    def changes_since(self, before: HomeSnapshot) -> list[str]:
        """One line per watched path that differs: which of its attributes changed (no content)."""
        absent = {"exists": "no"}
        lines = []
        for path in sorted(set(before.entries) | set(self.entries)):
            old, new = before.entries.get(path, absent), self.entries.get(path, absent)
            if old == new:
                continue
            if old["exists"] != new["exists"]:
                lines.append(f"{path}: {'created' if new['exists'] == 'yes' else 'removed'}")
            else:
                changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
                lines.append(f"{path}: {', '.join(changed)} changed")
        return lines
