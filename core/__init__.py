"""claude-auth-sync: keeps per-user Claude Code logins alive on shared Linux workstations.

The core (this package) knows the health cycle, the hook specifications, settings, the
credentials-file write path and the CLI. Everything that touches an outside service (the
``claude`` CLI, Vault, journald) lives in a plugin under ``claude_auth_sync.plugins``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("claude-auth-sync")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
