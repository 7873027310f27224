"""The health cycle: the runbook's "Automatic recovery", as a small state machine.

It knows nothing about Vault, journald or the ``claude`` CLI: it talks to a
:class:`~claude_auth_sync.model.Backend`, a :class:`~claude_auth_sync.model.Probe` and a
:class:`~claude_auth_sync.model.Restorer`, and returns one :class:`StatusEvent`.

0. Settle a restore an earlier run could not keep or roll back (killed, lock busy, disk full):
   probe it; keep it if it works, put the file back if it fails.
   The login is exactly the one verified and found backed up within the last hours (a rewrite by
   Claude Code that changed nothing, seen by the path unit): OK at once, nothing probed or sent.
1. Renew the backend's own credential (the per-user Vault token). Unreachable: still probe, so
   the status says whether the login works, and end WARN.
2. No login at all (no file, no ``claudeAiOauth``): nothing is probed or restored. WARN
   ``awaiting_first_login`` when the user has never logged in, as far as the agent's own state
   knows (:class:`~claude_auth_sync.last_check.LoginHistoryFile` states the rule; no Vault request
   decides it), with ``awaiting_first_login_since`` (epoch seconds) in the details; WARN
   ``not_logged_in`` after a ``claude auth logout`` (a login was seen before) or when the cycle
   has no state directory to ask.
3. Probe: a minimal real inference.
4. Authenticated: back up the OAuth object the probe ran against if it differs from the latest
   stored copy. OK.
5. Unavailable (API unreachable, 429, 5xx, timeout): do nothing. WARN.
6. Authentication failed: read the latest stored copy; merge it into the credentials file; probe
   once more. Authenticated: back up the refreshed object, OK. Still failing: put the file back
   as it was and FAIL, so a person logs in again.

Guarantees: an OAuth object is backed up only if a successful probe ran against exactly that
object (the file is re-read after the probe; a change means another probe) and both its tokens
are present; only the latest stored version is ever restored, and only if it passes the same
check as the local file; a restore that does not help is rolled back, but never over a login
written after the restore; no restore is attempted when the API is merely unavailable or the
user is logged out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import BackendUnavailable, CasError, ConcurrentChange
from .fingerprint import oauth_fingerprints
from .last_check import LastCheckFile, oauth_digest
from .oauth import MAX_TIMESTAMP_MS, has_both_tokens, oauth_problem, same_oauth
from .model import (
    REFRESH_WARN_S,
    RELOGIN_COMMAND,
    STORE_TTL_WARN_S,
    Action,
    Backend,
    ExitCode,
    Restorer,
    LocalLogin,
    LoginState,
    Probe,
    ProbeOutcome,
    ProbeResult,
    RestoreSnapshot,
    Status,
    StatusEvent,
    StoredCopy,
    status_for,
)

__all__ = ["AWAITING_FIRST_LOGIN", "NOT_LOGGED_IN", "HealthCycle", "Verdict", "failure_event", "refresh_expiry_ms",
           "utc_timestamp"]

MAX_PROBES = 3  # inferences per check while the file keeps changing under the probe
LOGGED_OUT = (LoginState.MISSING, LoginState.NO_OAUTH)
UNUSABLE = (LoginState.BLANKED, LoginState.INVALID, LoginState.NOT_JSON)
A_LOGIN = (LoginState.HEALTHY, LoginState.EXPIRED, LoginState.BLANKED, LoginState.INVALID)  # a claudeAiOauth object
NOT_LOGGED_IN = "not_logged_in"  # logged out: a login was seen before
AWAITING_FIRST_LOGIN = "awaiting_first_login"  # never logged in, as far as the agent knows


def refresh_expiry_ms(oauth: Any) -> int | None:
    """The refresh token's expiry (epoch ms) when the credentials file carries one."""
    if not isinstance(oauth, dict):
        return None
    for key in ("refreshTokenExpiresAt", "refreshExpiresAt"):
        value = oauth.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TIMESTAMP_MS:
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
    backend: Backend
    probe: Probe
    restorer: Restorer
    clock: Callable[[], float] = time.monotonic
    timings_ms: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str | None] | None = None
    last_check: LastCheckFile | None = None  # where the last verified login's digest is kept
    unchanged_window_s: float = 0.0  # an unchanged login verified this recently needs no new run
    wall_clock: Callable[[], float] = time.time

    def run(self) -> StatusEvent:
        started = self.clock()
        try:
            verdict = self._cycle()
        except CasError as err:
            verdict = Verdict(err.exit_code, Action.NONE, err.reason)
            self._note_error(err)
        self.timings_ms["total"] = round((self.clock() - started) * 1000)
        return self._event(verdict)

    # -- the runbook, step by step -------------------------------------------------------

    def _cycle(self) -> Verdict:
        self._settle_pending_restore()
        login = self.restorer.read()
        if self._verified_recently(login):
            return _ok(Action.NONE, "unchanged_since_last_check")
        self._note_login_seen(login)
        try:
            with self._timed("renew"):
                health = self.backend.renew()
        except BackendUnavailable as err:
            return self._backend_down(err, login)
        if health.ttl_s is not None:
            self.details["store_ttl_s"] = health.ttl_s

        if login.state in LOGGED_OUT:
            return self._logged_out()
        first, probed, now = self._probe_tested("probe", login)
        if first.outcome == ProbeOutcome.AUTHENTICATED:
            return self._early_warning(_ok(self._back_up(probed, latest=None)), health.ttl_s)
        if first.outcome != ProbeOutcome.AUTH_FAILED:
            return _verdict_for_probe(first, Action.NONE)
        if now.state in LOGGED_OUT:
            return self._logged_out()
        if not _same_login(now, probed) and now.state not in UNUSABLE:
            return self._after_concurrent_change()  # a new login arrived during the probe: test that one
        return self._recover(probed, now)

    def _verified_recently(self, login: LocalLogin) -> bool:
        """The file holds exactly the login last verified and found backed up, within the window:
        a rewrite that changed nothing (Claude Code does that) costs no inference and no request."""
        if self.last_check is None or self.unchanged_window_s <= 0 or not login.backupable:
            return False
        last = self.last_check.read()
        age = self.wall_clock() - last.at if last is not None else None
        return last is not None and age is not None and 0 <= age < self.unchanged_window_s \
            and last.digest == oauth_digest(login.oauth)

    def _backend_down(self, err: BackendUnavailable, login: LocalLogin) -> Verdict:
        """The backend cannot be reached: nothing can be backed up or restored, but the probe still
        says whether the login works (``probe_outcome=``). WARN either way: the next run retries."""
        self._note_error(err)
        if login.state not in LOGGED_OUT:
            self._probe("probe")
            self._note_local(login)
        else:
            self._awaiting_first_login()  # the state outlasts the outage: keep it in the event
        return Verdict(ExitCode.TEMPFAIL, Action.NONE, err.reason)

    def _note_login_seen(self, login: LocalLogin) -> None:
        """The file holds a ``claudeAiOauth`` object (whatever its state): the user has logged in."""
        if self.last_check is not None and login.state in A_LOGIN:
            self.last_check.login_history().note_login(self.wall_clock())

    def _awaiting_first_login(self) -> bool:
        """No login now: is this a user who never logged in? Notes since when in the details."""
        if self.last_check is None:
            return False
        since = self.last_check.login_history().awaiting_since(self.wall_clock())
        if since is None:
            return False
        self.details["awaiting_first_login_since"] = int(since)
        return True

    def _logged_out(self) -> Verdict:
        """No login at all: not broken, never restored. WARN either way; the reason tells a user who
        never logged in (``awaiting_first_login``) from one who logged out (``not_logged_in``)."""
        reason = AWAITING_FIRST_LOGIN if self._awaiting_first_login() else NOT_LOGGED_IN
        return Verdict(ExitCode.TEMPFAIL, Action.NONE, reason)

    def _recover(self, probed: LocalLogin, now: LocalLogin) -> Verdict:
        """Authentication failed: restore the latest stored copy, retry once, roll back if no help.

        ``probed`` is the login the failed probe ran against; ``now`` the file as it is (the CLI
        may have blanked it after an ``invalid_grant``).
        """
        latest = self.backend.read_latest()
        if latest is None:
            return Verdict(ExitCode.FAIL, Action.NONE, "auth_failed_no_backup")
        problem = oauth_problem(latest.oauth) or (None if has_both_tokens(latest.oauth) else "a token is empty")
        if problem is not None:
            self.details["backup_problem"] = problem
            return Verdict(ExitCode.FAIL, Action.NONE, "auth_failed_backup_unusable")
        if probed.oauth is not None and same_oauth(probed.oauth, latest.oauth):
            return Verdict(ExitCode.FAIL, Action.NONE, "auth_failed_backup_is_local_copy")

        try:
            with self._timed("restore"):
                snapshot = self.restorer.restore(latest.oauth, expected=now.oauth)
        except ConcurrentChange:
            return self._after_concurrent_change()
        if snapshot.kept_copy is not None:
            self.details["kept_file"] = str(snapshot.kept_copy)

        retry, tested, _ = self._probe_tested("retry", self.restorer.read())
        if retry.outcome == ProbeOutcome.AUTHENTICATED:
            self.restorer.keep(snapshot)
            try:
                self._back_up(tested, latest=latest)
            except CasError as err:  # the restored login works and stays; only the backup failed
                self._note_error(err)
                return Verdict(err.exit_code, Action.RESTORE, err.reason)
            return _ok(Action.RESTORE, "restored_latest_backup")
        if retry.outcome == ProbeOutcome.UNAVAILABLE:
            # The local copy is known bad; the restored one is untested. Keep it: next run decides.
            self.restorer.keep(snapshot)
            return Verdict(ExitCode.TEMPFAIL, Action.RESTORE, f"retry_{retry.reason}")
        return self._roll_back(snapshot, retry)

    def _roll_back(self, snapshot: RestoreSnapshot, retry: ProbeResult) -> Verdict:
        """The restored copy did not help: put the file back, unless a newer login replaced it.

        A rollback that cannot be done now (lock busy, disk full) is reported as what is on disk
        (``action=restore``) and settled by the next run (:meth:`_settle_pending_restore`).
        """
        failed = _verdict_for_probe(retry, Action.ROLLBACK)
        if retry.outcome == ProbeOutcome.AUTH_FAILED:
            failed = Verdict(ExitCode.FAIL, Action.ROLLBACK, "auth_failed_after_restore")
        try:
            with self._timed("rollback"):
                self.restorer.rollback(snapshot)
        except ConcurrentChange:
            return self._after_concurrent_change()
        except CasError as err:
            self._note_error(err)
            if snapshot.previous_copy is not None:
                self.details["pre_restore_file"] = str(snapshot.previous_copy)
            return Verdict(failed.exit_code, Action.RESTORE, f"{failed.reason}_rollback_pending")
        return failed

    def _settle_pending_restore(self) -> None:
        """An earlier run restored, then could not keep or roll back its copy (killed, lock busy,
        disk full). Probe that copy first: it works, keep it; it fails, put the file back as it was
        before that restore (the runbook's rule); unknown (API unreachable), leave it for later.
        Never puts back a login known to fail over one that may work."""
        snapshot = self.restorer.pending_restore()
        if snapshot is None:
            return
        result = self._probe("pending")
        if result.outcome == ProbeOutcome.AUTHENTICATED:
            self.restorer.keep(snapshot)
            self.details["pending_restore"] = "kept_working_restore"
        elif result.outcome == ProbeOutcome.AUTH_FAILED:
            try:
                self.restorer.rollback(snapshot)
                self.details["pending_restore"] = "rolled_back_failed_restore"
            except ConcurrentChange:
                self.details["pending_restore"] = "newer_login_kept"
        else:
            self.details["pending_restore"] = "untested"

    def _early_warning(self, verdict: Verdict, store_ttl_s: int | None) -> Verdict:
        """Healthy now, but heading for trouble renewal cannot fix: WARN so a person acts in time."""
        if store_ttl_s is not None and store_ttl_s < STORE_TTL_WARN_S:
            return Verdict(ExitCode.TEMPFAIL, verdict.action, "vault_token_expires_soon")
        refresh_expiry = self.details.get("refresh_expires_at_ms")
        if isinstance(refresh_expiry, int) and refresh_expiry / 1000 - time.time() < REFRESH_WARN_S:
            return Verdict(ExitCode.TEMPFAIL, verdict.action, "refresh_token_expires_soon")
        return verdict

    def _after_concurrent_change(self) -> Verdict:
        """Someone (Claude Code, a new login) rewrote the file meanwhile: probe that, never overwrite it."""
        login = self.restorer.read()
        if login.state in LOGGED_OUT:
            return self._logged_out()
        again, tested, _ = self._probe_tested("recheck", login)
        if again.outcome == ProbeOutcome.AUTHENTICATED:
            return _ok(self._back_up(tested, latest=None), ConcurrentChange.default_reason)
        return Verdict(ExitCode.TEMPFAIL, Action.NONE, ConcurrentChange.default_reason)

    def _back_up(self, tested: LocalLogin, latest: StoredCopy | None) -> Action:
        """Back up ``tested`` (the object a successful probe ran against) unless the latest stored
        copy equals it. ``latest`` avoids a second backend read when the recovery path has it."""
        self._note_local(tested)
        if not tested.backupable or tested.oauth is None:
            raise _NotBackupable(tested)
        if latest is None:
            latest = self.backend.read_latest()
        if latest is not None and same_oauth(latest.oauth, tested.oauth):
            self._remember(tested)
            return Action.NONE
        with self._timed("backup"):
            version = self.backend.write(tested.oauth, expected_version=latest.version if latest else None)
        if version is not None:
            self.details["backup_version"] = version
        self._remember(tested)
        return Action.BACKUP

    def _remember(self, tested: LocalLogin) -> None:
        """Keep the digest of the login a passing probe ran against and the backend now holds."""
        if self.last_check is not None:
            try:
                self.last_check.record(tested.oauth, self.wall_clock())
            except (CasError, OSError):
                pass  # only an optimisation is lost: the next run is a full one

    def _probe_tested(self, label: str, before: LocalLogin) -> tuple[ProbeResult, LocalLogin, LocalLogin]:
        """Probe, and return (result, the login it ran against, the file as it is now).

        When the probe passed but the file changed meanwhile (the CLI's own refresh, or another
        writer), probe again: a passing result always belongs to exactly the returned login, so
        only an object a successful probe ran against is ever backed up. At most
        :data:`MAX_PROBES` inferences; a file that keeps changing ends WARN.
        """
        for attempt in range(1, MAX_PROBES + 1):
            result = self._probe(label if attempt == 1 else f"{label}{attempt}")
            after = self.restorer.read()
            if result.outcome != ProbeOutcome.AUTHENTICATED or _same_login(after, before):
                return result, before, after
            before = after
        return ProbeResult(ProbeOutcome.UNAVAILABLE, "credentials_kept_changing"), before, before

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

    def _note_error(self, err: CasError) -> None:
        """The error's message and its fix in the event (never a secret: CasError messages carry none)."""
        self.details["error"] = err.message
        if err.remedy:
            self.details["next_step"] = err.remedy

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
                self._note_local(self.restorer.read())
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
    """The status event for a cycle that could not start (settings, plugins, backend token)."""
    verdict = Verdict(err.exit_code, Action.NONE, err.reason)
    return StatusEvent(
        timestamp=utc_timestamp(), status=verdict.status, exit_code=verdict.exit_code, user=user,
        action=Action.NONE, reason=err.reason,
        details={"error": err.message, **({"next_step": err.remedy} if err.remedy else {})},
    )


class _NotBackupable(CasError):
    """The probe passed but the file's OAuth object lacks a token: never back it up."""

    exit_code = ExitCode.TEMPFAIL

    def __init__(self, login: LocalLogin) -> None:
        super().__init__(
            f"the credentials file {login.path} is {login.state}: not backed up",
            reason=f"local_{login.state}_not_backed_up",
            remedy=RELOGIN_COMMAND,
        )


def _same_login(a: LocalLogin, b: LocalLogin) -> bool:
    return a.state == b.state and same_oauth(a.oauth, b.oauth)
