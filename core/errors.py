"""The error types of claude-auth-sync.

One root, :class:`CasError`, with a few subclasses. Every error carries the contract's exit
code, a short machine-readable ``reason`` (it becomes ``reason=`` in the status line) and a
``remedy``: one line a person can run or follow. Messages never contain a secret: only paths,
user names, HTTP statuses and fingerprints.
"""

from __future__ import annotations

from .model import ExitCode, Status, status_for

__all__ = [
    "CasError",
    "ConfigurationError",
    "PluginError",
    "BackendError",
    "BackendUnavailable",
    "BackendRefused",
    "BackendConflict",
    "CredentialsError",
    "CredentialsUnsafe",
    "CredentialsBusy",
    "CredentialsUnsupported",
    "ConcurrentChange",
    "Interrupted",
]


class CasError(Exception):
    """Root error. ``exit_code`` decides the status word: 78 and 1 are FAIL, 75 is WARN."""

    exit_code: ExitCode = ExitCode.CONFIG
    default_reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.remedy = remedy

    @property
    def status(self) -> Status:
        return status_for(self.exit_code)

    def __str__(self) -> str:
        return f"{self.message} (next step: {self.remedy})" if self.remedy else self.message


class ConfigurationError(CasError):
    """Settings a person must fix (exit 78)."""

    exit_code = ExitCode.CONFIG
    default_reason = "invalid_settings"


class PluginError(ConfigurationError):
    """A configured plugin is missing, duplicated or broken (exit 78)."""

    default_reason = "plugin_error"


class BackendError(CasError):
    """Base for credential-store (backend) failures."""


class BackendUnavailable(BackendError):
    """The store could not be reached, is sealed or answered 5xx (exit 75, WARN)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "store_unavailable"


class BackendRefused(BackendError):
    """The store refused us: token missing, unreadable, too open, expired, drifted, 403 (exit 78)."""

    exit_code = ExitCode.CONFIG
    default_reason = "store_refused"


class BackendConflict(BackendError):
    """A check-and-set write lost against a concurrent writer (exit 75, try again next run)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "store_conflict"


class CredentialsError(CasError):
    """Base for problems with the local ``.credentials.json``."""


class CredentialsUnsafe(CredentialsError):
    """The credentials file or its directory is a foreign symlink or owned by someone else (exit 78)."""

    exit_code = ExitCode.CONFIG
    default_reason = "credentials_unsafe"


class CredentialsUnsupported(CredentialsError):
    """Valid JSON the agent will not rewrite (absurdly deep or large): nothing touched (exit 78)."""

    exit_code = ExitCode.CONFIG
    default_reason = "credentials_unsupported"


class CredentialsBusy(CredentialsError):
    """Claude Code holds its lock longer than we wait: nothing was written (exit 75)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "lock_busy"


class ConcurrentChange(CredentialsError):
    """Claude Code changed the OAuth object between our read and our locked re-read (exit 75)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "credentials_changed_concurrently"


class Interrupted(CasError):
    """The run was stopped (SIGTERM) before its cycle ended: reported WARN, the next run checks (75)."""

    exit_code = ExitCode.TEMPFAIL
    default_reason = "interrupted"
