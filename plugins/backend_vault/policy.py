"""The per-user (or per host and user) Vault policy, rendered from the same settings the backend uses.

``claude-auth-sync policy USER`` prints it; the provisioner applies it. :func:`locate` is the one
place that turns (settings, user, host) into the secret's paths and the policy's name: the agent's
backend, the ``policy`` command, the provisioner, the migration and the fleet view all call it.

Paths are exact (no globs: ``.../alice*`` would also match ``alice2``); the user name and the host
name are checked against strict patterns before they go into a path. The policy grants
create/read/update on the KV v2 data path, read on its metadata path, and the token self-service
the agent needs (renew-self, lookup-self); nothing else: no delete, destroy, list or metadata write,
nothing on any other user's or any other host's path.

Names: ``claude-auth-sync-<user>`` for a template without ``{host}`` (the runbook's), and
``claude-auth-sync-<user>@<host>`` with ``{host}``. ``@`` is in neither a user name nor a host name,
so no (user, host) pair shares a name with another, nor with a per-user policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from claude_auth_sync.usernames import USERNAME_PATTERN, check_username  # the one user-name check (dotted names too)

from .paths import check_host, render_template, short_host_name, template_has_host
from .settings import VaultSettings

__all__ = ["USERNAME_PATTERN", "POLICY_PREFIX", "SecretLocation", "check_username", "expected_policies", "locate",
           "policy_name", "render_policy", "secret_paths"]

POLICY_PREFIX = "claude-auth-sync-"
HOST_SEPARATOR = "@"


def policy_name(user: str, host: str | None = None) -> str:
    """``claude-auth-sync-<user>``, or ``claude-auth-sync-<user>@<host>`` for a per-host template."""
    name = POLICY_PREFIX + check_username(user)
    return name if host is None else name + HOST_SEPARATOR + check_host(host)


def expected_policies(user: str, host: str | None = None) -> frozenset[str]:
    """The exact policy set of the user's token (minted with no_default_policy)."""
    return frozenset({policy_name(user, host)})


@dataclass(frozen=True)
class SecretLocation:
    """Where one user's (on one host, for a ``{host}`` template) secret is, and its policy.

    ``host`` is None when the template has no ``{host}``: the path and policy are then shared by
    every host that runs the user."""

    user: str
    host: str | None
    mount: str
    relative: str

    @property
    def data(self) -> str:
        """The KV v2 data path (API, under the mount)."""
        return f"{self.mount}/data/{self.relative}"

    @property
    def metadata(self) -> str:
        """The KV v2 metadata path (API, under the mount)."""
        return f"{self.mount}/metadata/{self.relative}"

    @property
    def policy(self) -> str:
        """The policy's name (:func:`policy_name`)."""
        return policy_name(self.user, self.host)

    @property
    def policies(self) -> frozenset[str]:
        """The exact policy set of the token."""
        return frozenset({self.policy})


def locate(user: str, settings: VaultSettings, host: str | None = None) -> SecretLocation:
    """THE path of ``user``'s secret: ``settings.path_template`` with ``{user}`` and, when the
    template has it, ``{host}`` (``host``, default this machine's :func:`short_host_name`).

    ConfigurationError (78) for a user or host name that fails its pattern."""
    check_username(user)
    template = settings.path_template
    host_part = None
    if template_has_host(template):  # the machine's name is looked at only when the path needs it
        host_part = short_host_name() if host is None else check_host(host)
    return SecretLocation(user=user, host=host_part, mount=settings.mount,
                          relative=render_template(template, user, host_part))


def secret_paths(user: str, settings: VaultSettings, host: str | None = None) -> tuple[str, str, str]:
    """(path under the mount, API data path, API metadata path) for ``user`` (see :func:`locate`)."""
    location = locate(user, settings, host)
    return location.relative, location.data, location.metadata


def render_policy(user: str, settings: VaultSettings, host: str | None = None) -> str:
    """The HCL policy :attr:`SecretLocation.policy` for ``user`` (on ``host``, default this one)."""
    return render_location(locate(user, settings, host))


def render_location(location: SecretLocation) -> str:
    """The HCL policy of one :class:`SecretLocation`."""
    who = f"OS user {location.user}" + (f" on host {location.host}" if location.host else "")
    return (
        f"# {location.policy}: the claude-auth-sync agent of {who}\n"
        f"# KV v2 secret {location.mount}/{location.relative}: the claudeAiOauth object only.\n"
        f'path "{location.data}" {{\n  capabilities = ["create", "read", "update"]\n}}\n\n'
        f'path "{location.metadata}" {{\n  capabilities = ["read"]\n}}\n\n'
        '# The token keeps itself alive and can describe itself; nothing else.\n'
        'path "auth/token/renew-self" {\n  capabilities = ["update"]\n}\n\n'
        'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}\n'
    )
