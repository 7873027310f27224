"""The health cycle: the runbook's "Automatic recovery", as a small state machine.

It knows nothing about Vault, journald or the ``claude`` CLI: it talks to a
:class:`~claude_auth_sync.model.CredentialStore`, a :class:`~claude_auth_sync.model.Probe` and a
:class:`~claude_auth_sync.model.LocalCredentials`, and returns one :class:`StatusEvent`.

1. Renew the store's own credential (the per-user Vault token).
2. Probe: a minimal real inference.
3. Authenticated: back up the local OAuth object if it differs from the latest stored copy. OK.
4. Unavailable (API unreachable, 429, 5xx, timeout): do nothing. WARN.
5. Authentication failed: read the latest stored copy; merge it into the credentials file; probe
   once more. Authenticated: back up the refreshed object, OK. Still failing: put the file back
   as it was and FAIL, so a person logs in again.

Guarantees: an OAuth object is backed up only right after it passed the probe and only if both of
its tokens are present; only the latest stored version is ever restored; a restore that does not
help is rolled back; no restore is attempted when the API is merely unavailable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import CasError, ConcurrentChange
from .fingerprint import oauth_fingerprints
from .model import (
    Action,
    CredentialStore,
    ExitCode,
    LocalCredentials,
    LocalLogin,
    Probe,
    ProbeOutcome,
    ProbeResult,
    RestoreSnapshot,
    Status,
    StatusEvent,
    StoredCopy,
    status_for,
)

__all__ = ["HealthCycle", "Verdict", "failure_event", "refresh_expiry_ms", "utc_timestamp"]

STORE_TTL_WARN_S = 7 * 86400  # a Vault token this close to expiry despite renewal needs a person
REFRESH_WARN_S = 3 * 86400  # a refresh token this close to expiry needs a fresh login soon


def refresh_expiry_ms(oauth: Any) -> int | None:
    """The refresh token's expiry (epoch ms) when the credentials file carries one."""
    if not isinstance(oauth, dict):
        return None
    for key in ("refreshTokenExpiresAt", "refreshExpiresAt"):
        value = oauth.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def utc_timestamp(now: datetime | None = None) -> str:
    """ISO-8601 UTC with seconds and a ``Z``: ``2026-11-28T20:10:45Z``."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verdict:
    """How a cycle ended, before it becomes a StatusEvent."""

    exit_code: ExitCode
    action: Action
    reason: str | None = None

    @property
    def status(self) -> Status:
        return status_for(self.exit_code)


def _ok(action: Action, reason: str | None = None) -> Verdict:
    return Verdict(ExitCode.OK, action, reason)


def _verdict_for_probe(result: ProbeResult, action: Action) -> Verdict:
    """Unavailable -> WARN 75; broken (CLI missing or crashing) -> FAIL 78."""
    if result.outcome == ProbeOutcome.UNAVAILABLE:
        return Verdict(ExitCode.TEMPFAIL, action, result.reason)
    return Verdict(ExitCode.CONFIG, action, result.reason)


@dataclass
class HealthCycle:
    """One health cycle for one user. Call :meth:`run` once; it never raises a CasError."""

    user: str
    store: CredentialStore
    probe: Probe
    local: LocalCredentials
    clock: Callable[[], float] = time.monotonic
    timings_ms: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str | None] | None = None

    def run(self) -> StatusEvent:
        started = self.clock()
        try:
            verdict = self._cycle()
        except CasError as err:
            verdict = Verdict(err.exit_code, Action.NONE, err.reason)
            self.details["error"] = err.message
        self.timings_ms["total"] = round((self.clock() - started) * 1000)
        return self._event(verdict)

    # -- the runbook, step by step -------------------------------------------------------

    def _cycle(self) -> Verdict:
        with self._timed("renew"):
            health = self.store.renew()
        if health.ttl_s is not None:
            self.details["store_ttl_s"] = health.ttl_s

        first = self._probe("probe")
        if first.outcome == ProbeOutcome.AUTHENTICATED:
            return self._early_warning(_ok(self._back_up_if_changed(latest=None)), health.ttl_s)
        if first.outcome != ProbeOutcome.AUTH_FAILED:
            return _verdict_for_probe(first, Action.NONE)
        return self._recover()

    def _recover(self) -> Verdict:
        """Authentication failed: restore the latest stored copy, retry once, roll back if no help."""
        latest = self.store.read_latest()
        if latest is None:
            return Verdict(ExitCode.FAIL, Action.NONE, "auth_failed_no_backup")
        stored = latest.oauth
        if not _has_both_tokens(stored):
            return Verdict(ExitCode.FAIL, Action.NONE, "auth_failed_backup_unusable")
        before = self.local.read()
        if before.oauth is not None and dict(before.oauth) == dict(stored):
            return Verdict(ExitCode.FAIL, Action.NONE, "auth_failed_backup_is_local_copy")

        try:
            with self._timed("restore"):
                snapshot = self.local.restore(stored, expected=before.oauth)
        except ConcurrentChange:
            return self._after_concurrent_change()
        if snapshot.kept_copy is not None:
            self.details["kept_file"] = str(snapshot.kept_copy)

        retry = self._probe("retry")
        if retry.outcome == ProbeOutcome.AUTHENTICATED:
            try:
                self._back_up_if_changed(latest=latest)
            except CasError as err:  # the restored login works and stays; only the backup failed
                self.details["error"] = err.message
                return Verdict(err.exit_code, Action.RESTORE, err.reason)
            return _ok(Action.RESTORE, "restored_latest_backup")
        if retry.outcome == ProbeOutcome.UNAVAILABLE:
            # The local copy is known bad; the restored one is untested. Keep it: next run decides.
            return Verdict(ExitCode.TEMPFAIL, Action.RESTORE, f"retry_{retry.reason}")
        self._roll_back(snapshot)
        if retry.outcome == ProbeOutcome.AUTH_FAILED:
            return Verdict(ExitCode.FAIL, Action.ROLLBACK, "auth_failed_after_restore")
        return _verdict_for_probe(retry, Action.ROLLBACK)

    def _early_warning(self, verdict: Verdict, store_ttl_s: int | None) -> Verdict:
        """Healthy now, but heading for trouble renewal cannot fix: WARN so a person acts in time."""
        if store_ttl_s is not None and store_ttl_s < STORE_TTL_WARN_S:
            return Verdict(ExitCode.TEMPFAIL, verdict.action, "vault_token_expires_soon")
        refresh_expiry = self.details.get("refresh_expires_at_ms")
        if isinstance(refresh_expiry, int) and refresh_expiry / 1000 - time.time() < REFRESH_WARN_S:
            return Verdict(ExitCode.TEMPFAIL, verdict.action, "refresh_token_expires_soon")
        return verdict

    def _after_concurrent_change(self) -> Verdict:
        """Claude Code rewrote the login while we were about to restore: probe it, don't overwrite."""
        again = self._probe("retry")
        if again.outcome == ProbeOutcome.AUTHENTICATED:
            return _ok(self._back_up_if_changed(latest=None), ConcurrentChange.default_reason)
        return Verdict(ExitCode.TEMPFAIL, Action.NONE, ConcurrentChange.default_reason)

    def _back_up_if_changed(self, latest: StoredCopy | None) -> Action:
        """Back up the just-authenticated local object unless the latest stored copy equals it.

        The CLI may have refreshed the file during the probe, so it is read again here.
        ``latest`` avoids a second store read when the recovery path already has it.
        """
        login = self.local.read()
        self._note_local(login)
        if not login.backupable or login.oauth is None:
            raise _NotBackupable(login)
        if latest is None:
            latest = self.store.read_latest()
        if latest is not None and dict(latest.oauth) == dict(login.oauth):
            return Action.NONE
        with self._timed("backup"):
            version = self.store.write(login.oauth, expected_version=latest.version if latest else None)
        if version is not None:
            self.details["backup_version"] = version
        return Action.BACKUP

    def _roll_back(self, snapshot: RestoreSnapshot) -> None:
        with self._timed("rollback"):
            self.local.rollback(snapshot)

    # -- helpers ---------------------------------------------------------------------------

    def _probe(self, label: str) -> ProbeResult:
        with self._timed(label):
            result = self.probe.run()
        self.details[f"{label}_outcome"] = str(result.outcome)
        if result.http_status is not None:
            self.details[f"{label}_http"] = result.http_status
        if result.cli_version:
            self.details["cli_version"] = result.cli_version
        if result.warnings:
            self.details["warnings"] = ",".join(result.warnings)
        return result

    def _note_local(self, login: LocalLogin) -> None:
        self.fingerprints = oauth_fingerprints(login.oauth)
        if login.expires_at_ms:
            self.details["access_expires_at_ms"] = login.expires_at_ms
        refresh_expiry = refresh_expiry_ms(login.oauth)
        if refresh_expiry is not None:
            self.details["refresh_expires_at_ms"] = refresh_expiry

    @contextmanager
    def _timed(self, label: str) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        finally:
            self.timings_ms[label] = round((self.clock() - started) * 1000)

    def _event(self, verdict: Verdict) -> StatusEvent:
        if self.fingerprints is None:
            try:
                self._note_local(self.local.read())
            except CasError:
                self.fingerprints = {}
        fingerprints = self.fingerprints or {}
        return StatusEvent(
            timestamp=utc_timestamp(),
            status=verdict.status,
            exit_code=verdict.exit_code,
            user=self.user,
            action=verdict.action,
            reason=verdict.reason,
            timings_ms=dict(self.timings_ms),
            fingerprints=fingerprints,
            details=dict(self.details),
        )


def failure_event(user: str, err: CasError) -> StatusEvent:
    """The status event for a cycle that could not start (settings, plugins, store token)."""
    verdict = Verdict(err.exit_code, Action.NONE, err.reason)
    return StatusEvent(
        timestamp=utc_timestamp(), status=verdict.status, exit_code=verdict.exit_code, user=user,
        action=Action.NONE, reason=err.reason, details={"error": err.message},
    )


class _NotBackupable(CasError):
    """The probe passed but the file's OAuth object lacks a token: never back it up."""

    exit_code = ExitCode.TEMPFAIL

    def __init__(self, login: LocalLogin) -> None:
        super().__init__(
            f"the credentials file {login.path} is {login.state}: not backed up",
            reason=f"local_{login.state}_not_backed_up",
            remedy="claude auth login --claudeai --sso --email <enterprise-email>",
        )


def _has_both_tokens(oauth: Any) -> bool:
    return (
        isinstance(oauth, dict)
        and isinstance(oauth.get("accessToken"), str)
        and bool(oauth.get("accessToken"))
        and isinstance(oauth.get("refreshToken"), str)
        and bool(oauth.get("refreshToken"))
    )
