"""The ``credentials_file`` restorer: Claude Code's ``.credentials.json``, written atomically under
Claude Code's own lock (:mod:`.credentials_file`, :mod:`.lock`).

This is the only code that writes a user's Claude Code login. The kernel reaches the local login
only through the selected restorer (``CLAUDE_AUTH_SYNC_RESTORER``, default ``credentials_file``).
"""

from __future__ import annotations

import os
import stat

from claude_auth_sync.hookspecs import PluginContext, RestorerSpec, hookimpl
from claude_auth_sync.model import DiagnosticRow

from .credentials_file import CredentialsFile

__all__ = ["CredentialsFile"]


@hookimpl
def cas_restorers() -> list[RestorerSpec]:
    def build(ctx: PluginContext) -> CredentialsFile:
        assert ctx.settings.claude_config_dir is not None
        return CredentialsFile(
            ctx.settings.claude_config_dir, uid=ctx.user.uid, lock_wait_timeout_s=ctx.settings.lock_wait_timeout
        )

    return [RestorerSpec("credentials_file", build, "Claude Code's .credentials.json (atomic, locked)")]


@hookimpl
def cas_diagnose(ctx: PluginContext, component: object) -> list[DiagnosticRow]:
    """The file itself: a symlink or another owner is a failure, a mode other than 0600 a warning."""
    if not isinstance(component, CredentialsFile):
        return []
    g, path, user = "local login", component.path, ctx.user
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []  # the kernel's row says "not logged in"
    if stat.S_ISLNK(st.st_mode):
        return [DiagnosticRow(g, "credentials file", "fail", f"{path} is a symlink", f"replace {path} with the real file")]
    rows = [DiagnosticRow(g, "owner", "ok", user.name) if st.st_uid == user.uid else
            DiagnosticRow(g, "owner", "fail", f"owned by uid {st.st_uid}, not {user.name}", f"sudo chown {user.name} {path}")]
    mode = stat.S_IMODE(st.st_mode)
    rows.append(DiagnosticRow(g, "mode", "ok" if mode == 0o600 else "warn", f"{mode:04o}",
                              None if mode == 0o600 else f"chmod 600 {path}"))
    return rows
