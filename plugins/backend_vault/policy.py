"""The per-user Vault policy, rendered from the same settings the backend uses.

``claude-auth-sync policy USER`` prints it; the provisioner applies it. Paths are exact (no globs:
``.../alice*`` would also match ``alice2``) and the user name is checked against a strict pattern
before it goes into a path. The policy grants create/read/update on the user's KV v2 data path,
read on its metadata path, and the token self-service the agent needs (renew-self, lookup-self);
nothing else: no delete, destroy, list or metadata write, nothing on any other user's path.
"""

from __future__ import annotations

import re

from claude_auth_sync.errors import ConfigurationError

from .settings import VaultSettings

__all__ = ["USERNAME_PATTERN", "check_username", "policy_name", "secret_paths", "render_policy", "expected_policies"]

USERNAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
POLICY_PREFIX = "claude-auth-sync-"


def check_username(user: str) -> str:
    """Return ``user`` if it is a safe POSIX-style login name, else raise ConfigurationError."""
    if not USERNAME_PATTERN.fullmatch(user):
        raise ConfigurationError(
            f"{user!r} is not a valid user name for a Vault path (allowed: {USERNAME_PATTERN.pattern})",
            reason="invalid_user_name",
        )
    return user


def policy_name(user: str) -> str:
    return POLICY_PREFIX + check_username(user)


def expected_policies(user: str) -> frozenset[str]:
    """The exact policy set of the user's token (minted with no_default_policy)."""
    return frozenset({policy_name(user)})


def secret_paths(user: str, settings: VaultSettings) -> tuple[str, str, str]:
    """(path under the mount, API data path, API metadata path) for ``user``."""
    relative = f"{settings.path_prefix}/{check_username(user)}"
    return relative, f"{settings.mount}/data/{relative}", f"{settings.mount}/metadata/{relative}"


def render_policy(user: str, settings: VaultSettings) -> str:
    """The HCL policy ``claude-auth-sync-<user>``."""
    relative, data, metadata = secret_paths(user, settings)
    return (
        f"# {policy_name(user)}: the claude-auth-sync agent of OS user {user}\n"
        f"# KV v2 secret {settings.mount}/{relative}: the claudeAiOauth object only.\n"
        f'path "{data}" {{\n  capabilities = ["create", "read", "update"]\n}}\n\n'
        f'path "{metadata}" {{\n  capabilities = ["read"]\n}}\n\n'
        '# The token keeps itself alive and can describe itself; nothing else.\n'
        'path "auth/token/renew-self" {\n  capabilities = ["update"]\n}\n\n'
        'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}\n'
    )
