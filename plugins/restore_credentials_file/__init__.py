"""The ``credentials_file`` restorer: Claude Code's ``.credentials.json``, written atomically under
Claude Code's own lock (:mod:`.credentials_file`, :mod:`.lock`).

This is the only code that writes a user's Claude Code login. The kernel reaches the local login
only through the selected restorer (``CLAUDE_AUTH_SYNC_RESTORER``, default ``credentials_file``).
"""

from __future__ import annotations

from claude_auth_sync.hookspecs import PluginContext, RestorerSpec, hookimpl

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
