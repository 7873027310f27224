"""The records and interfaces the core and the plugins exchange.

Everything here is plain data (frozen dataclasses, enums) or a :class:`typing.Protocol` that a
plugin object implements. No record ever holds a token except the OAuth mappings passed between
the store and the restorer; those never reach a sink, a log or the terminal (sinks receive a
:class:`StatusEvent`, which carries fingerprints only).
"""

from __future__ import annotations

import enum
import pwd
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "LOGIN_VARIABLES",
    "RELOGIN_COMMAND",
    "PROVISION_COMMAND",
    "STORE_TTL_WARN_S",
    "REFRESH_WARN_S",
    "TIMER_PERIOD_S",
    "status_for",
    "ExitCode",
    "Status",
    "Action",
    "ProbeOutcome",
    "ProbeResult",
    "StoredCopy",
    "BackendHealth",
    "LoginState",
    "LocalLogin",
    "RestoreSnapshot",
    "StatusEvent",
    "UserIdentity",
    "DiagnosticRow",
    "DiagnosticState",
    "Backend",
    "Probe",
    "Restorer",
    "Sink",
    "OAuth",
]

OAuth = Mapping[str, Any]
"""The ``claudeAiOauth`` JSON object, exactly as Claude Code wrote it."""

LOGIN_VARIABLES = ("CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_OAUTH_REFRESH_TOKEN", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
"""Environment variables that would replace the user's own login (never passed to ``claude``)."""

RELOGIN_COMMAND = "claude auth login --claudeai --sso --email <enterprise-email>"
"""The runbook's fix when both the local and the stored login fail."""

PROVISION_COMMAND = "sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN,VAULT_CACERT /usr/local/bin/t3-provision-users"
"""The runbook's fix for a missing, expired or drifted Vault token (an administrator runs it)."""


STORE_TTL_WARN_S = 7 * 86400
"""A backend credential (the Vault token) this close to expiry despite renewal needs a person: WARN."""

REFRESH_WARN_S = 3 * 86400
"""A refresh token this close to expiry needs a fresh login soon: WARN."""

TIMER_PERIOD_S = 6 * 3600
"""The timer's period (``claude-auth-sync@.timer``): no run for twice that is a problem."""


class ExitCode(enum.IntEnum):
    """Exit status of ``claude-auth-sync run`` (sysexits)."""

    OK = 0
    FAIL = 1  # a person must log in again
    TEMPFAIL = 75  # inconclusive or degraded: WARN
    CONFIG = 78  # configuration a person must fix: FAIL


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


def status_for(exit_code: int) -> Status:
    """The contract's status word for an exit code: 0 OK, 75 WARN, anything else FAIL."""
    if exit_code == ExitCode.OK:
        return Status.OK
    return Status.WARN if exit_code == ExitCode.TEMPFAIL else Status.FAIL


class Action(enum.StrEnum):
    NONE = "none"
    BACKUP = "backup"
    RESTORE = "restore"
    ROLLBACK = "rollback"


class ProbeOutcome(enum.StrEnum):
    AUTHENTICATED = "authenticated"
    AUTH_FAILED = "auth_failed"  # 401/403, expired or revoked token, not logged in
    UNAVAILABLE = "unavailable"  # connection, timeout, 429, 5xx, 529
    BROKEN = "broken"  # CLI missing or crashed


@dataclass(frozen=True)
class ProbeResult:
    """What one inference probe found. ``reason`` is a short token; never a secret."""

    outcome: ProbeOutcome
    reason: str
    duration_s: float = 0.0
    http_status: int | None = None
    cli_version: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredCopy:
    """The latest stored OAuth object and the version it was read at (for check-and-set)."""

    oauth: OAuth
    version: int | None = None
    updated: str | None = None


@dataclass(frozen=True)
class BackendHealth:
    """What renewing the store's own credential found (e.g. a Vault token's TTL)."""

    ttl_s: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


class LoginState(enum.StrEnum):
    MISSING = "missing"  # no credentials file
    NOT_JSON = "not_json"  # the file does not parse
    NO_OAUTH = "no_oauth"  # no claudeAiOauth object (logged out)
    INVALID = "invalid"  # a claudeAiOauth object Claude Code cannot use (wrong types, not a token)
    BLANKED = "blanked"  # empty/missing access or refresh token (Claude Code after invalid_grant)
    EXPIRED = "expired"  # access token expired: normal, the CLI refreshes it
    HEALTHY = "healthy"


@dataclass(frozen=True)
class LocalLogin:
    """The parsed state of the local credentials file. ``oauth`` is None unless it parsed."""

    state: LoginState
    path: Path
    oauth: OAuth | None = None
    other_keys: tuple[str, ...] = ()
    expires_at_ms: int | None = None
    detail: str = ""

    @property
    def backupable(self) -> bool:
        """True when the OAuth object carries both tokens (never back up a blanked object)."""
        return self.state in (LoginState.HEALTHY, LoginState.EXPIRED)


@dataclass(frozen=True)
class RestoreSnapshot:
    """What the credentials file was before a restore; enough to put it back exactly."""

    path: Path
    previous_bytes: bytes | None  # None: the file did not exist
    kept_copy: Path | None = None  # 0600 copy of an unparseable or pre-restore file
    written_digest: str | None = None  # SHA-256 of what the restore wrote: roll back only that
    previous_copy: Path | None = None  # where the pre-restore content is kept on disk (0600)


DiagnosticState = Literal["ok", "info", "warn", "fail"]


@dataclass(frozen=True)
class DiagnosticRow:
    """One row of ``diagnose``: a group (``local login``, ``backend``...), what was checked, its
    state, a detail for people (never a secret) and, for anything but ok/info, the next step.

    ``values`` carries the row's facts as numbers and stable strings for ``--json`` (seconds as
    ints, ``*_at`` ISO-8601 UTC with ``*_at_epoch`` beside it); ``detail`` never holds a relative
    time ("in 3h"): the table derives those from the ``*_at_epoch`` values."""

    group: str
    name: str
    state: DiagnosticState
    detail: str
    next_step: str | None = None
    values: Mapping[str, str | int | float | bool | None] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class UserIdentity:
    """The OS user the cycle runs for: always from the process uid, never from $USER."""

    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def current(cls) -> UserIdentity:
        import os

        entry = pwd.getpwuid(os.getuid())
        return cls(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=Path(entry.pw_dir))


@dataclass(frozen=True)
class StatusEvent:
    """One cycle's result, handed to every active sink. Holds no secret by construction:
    tokens appear only as fingerprints, and ``details`` values are short scalars."""

    timestamp: str  # ISO-8601 UTC, seconds, "Z"
    status: Status
    exit_code: ExitCode
    user: str
    action: Action
    reason: str | None
    timings_ms: Mapping[str, int] = field(default_factory=dict)
    fingerprints: Mapping[str, str | None] = field(default_factory=dict)
    details: Mapping[str, str | int | float | None] = field(default_factory=dict)

    def fields(self) -> dict[str, str]:
        """Flat ``key -> value`` pairs (status line order), empty values dropped."""
        out: dict[str, str] = {"user": self.user, "action": str(self.action)}
        if self.reason:
            out["reason"] = self.reason
        for key, value in self.timings_ms.items():
            out[f"{key}_ms"] = str(value)
        for key, value in self.fingerprints.items():
            if value:
                out[f"{key}_fp"] = value
        for key, value in self.details.items():
            if value is not None and value != "":
                out[key] = str(value)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "status": str(self.status),
            "exit_code": int(self.exit_code),
            "user": self.user,
            "action": str(self.action),
            "reason": self.reason,
            "timings_ms": dict(self.timings_ms),
            "fingerprints": dict(self.fingerprints),
            "details": dict(self.details),
        }


@runtime_checkable
class Backend(Protocol):
    """Where the OAuth object is backed up (Vault, a file, memory)."""

    def renew(self) -> BackendHealth:
        """Renew/verify the store's own credential. Raises BackendRefused / BackendUnavailable."""

    def read_latest(self) -> StoredCopy | None:
        """The latest stored copy, or None when nothing was stored yet. Never an older version."""

    def write(self, oauth: OAuth, *, expected_version: int | None) -> int | None:
        """Store a new version (check-and-set against ``expected_version``; None = must not exist)."""

    def describe(self) -> dict[str, Any]:
        """Metadata for diagnose (versions, TTLs, policies). Never a secret value."""


@runtime_checkable
class Probe(Protocol):
    """A real check that the local login works."""

    def run(self) -> ProbeResult: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class Restorer(Protocol):
    """Access to the local credentials file: read it, restore a stored copy into it, roll back."""

    def read(self) -> LocalLogin: ...

    def restore(self, oauth: OAuth, *, expected: OAuth | None) -> RestoreSnapshot:
        """Merge ``oauth`` in as ``claudeAiOauth``. Raises ConcurrentChange when the file's
        OAuth object is no longer ``expected``; CredentialsBusy when the lock stays held."""

    def rollback(self, snapshot: RestoreSnapshot) -> None:
        """Put the file back exactly as it was before ``restore``, but only if it still holds what
        ``restore`` wrote. Raises ConcurrentChange (nothing written) when a newer login replaced
        it meanwhile; CredentialsBusy / CredentialsWriteFailed when the rollback could not be done,
        in which case the next run finds it with :meth:`pending_restore`."""

    def keep(self, snapshot: RestoreSnapshot) -> None:
        """The restored login stays: forget how to undo ``snapshot`` (the pre-restore copy is kept)."""

    def pending_restore(self) -> RestoreSnapshot | None:
        """A restore an earlier run neither kept nor rolled back (killed, lock busy, disk full),
        while the file still holds it; the cycle probes it and calls keep() or rollback()."""


@runtime_checkable
class Sink(Protocol):
    """Receives every status event. Never receives a secret."""

    def emit(self, event: StatusEvent) -> None: ...
