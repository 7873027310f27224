"""Every branch of the health cycle, with the memory store, a fake probe and in-memory credentials."""

from __future__ import annotations

import json

import pytest

from claude_auth_sync.cycle import HealthCycle
from claude_auth_sync.errors import BackendRefused, BackendUnavailable
from claude_auth_sync.model import Action, ExitCode, LocalLogin, ProbeOutcome, Status
from claude_auth_sync.testing import FakeProbe, MemoryRestorer, MemoryBackend, oauth_object

GOOD = oauth_object("sk-ant-oat01-good-access", "sk-ant-ort01-good-refresh")
BAD = oauth_object("sk-ant-oat01-bad-access", "sk-ant-ort01-bad-refresh")
MCP = {"github": {"accessToken": "mcp-secret-token", "nested": [1, {"a": None}]}}

A, F, U, B = ProbeOutcome.AUTHENTICATED, ProbeOutcome.AUTH_FAILED, ProbeOutcome.UNAVAILABLE, ProbeOutcome.BROKEN


def local_with(oauth: dict) -> MemoryRestorer:
    return MemoryRestorer.with_document({"claudeAiOauth": oauth, "mcpOAuth": MCP})


def accepts(token: str):
    def check(login: LocalLogin) -> bool:
        return login.oauth is not None and login.oauth.get("accessToken") == token

    return check


def cycle(store: MemoryBackend, local: MemoryRestorer, probe: FakeProbe) -> HealthCycle:
    probe.restorer = local
    return HealthCycle(user="alice", backend=store, probe=probe, restorer=local)


def test_healthy_and_unchanged_writes_nothing() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(GOOD)
    event = cycle(store, local, FakeProbe([A])).run()
    assert (event.status, event.exit_code, event.action, event.reason) == (Status.OK, ExitCode.OK, Action.NONE, None)
    assert len(store.versions) == 1
    assert store.calls == ["renew", "read_latest"]
    assert local.writes == 0


def test_healthy_and_changed_writes_once() -> None:
    store = MemoryBackend(versions=[BAD])
    local = local_with(GOOD)
    event = cycle(store, local, FakeProbe([A])).run()
    assert (event.status, event.action) == (Status.OK, Action.BACKUP)
    assert store.versions == [BAD, GOOD]
    assert store.calls == ["renew", "read_latest", "write"]
    assert event.details["backup_version"] == 2


def test_first_backup_creates_version_one(cas_backend: MemoryBackend) -> None:
    event = cycle(cas_backend, local_with(GOOD), FakeProbe([A])).run()
    assert event.action == Action.BACKUP and cas_backend.versions == [GOOD]


def test_auth_failure_with_good_stored_copy_restores_retries_and_backs_up() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(BAD)
    refreshed = oauth_object("sk-ant-oat01-refreshed", "sk-ant-ort01-refreshed")

    def cli_refreshes_on_retry(run: int) -> None:
        if run == 1:  # the retry: the CLI refreshed the restored token and rewrote the file
            local.raw = json.dumps({"claudeAiOauth": refreshed, "mcpOAuth": MCP}).encode()

    probe = FakeProbe(accept=lambda login: login.oauth is not None and login.oauth["accessToken"] != BAD["accessToken"],
                      on_run=cli_refreshes_on_retry)
    event = cycle(store, local, probe).run()
    assert (event.status, event.exit_code, event.action) == (Status.OK, ExitCode.OK, Action.RESTORE)
    assert store.versions == [GOOD, refreshed]
    assert local.document()["mcpOAuth"] == MCP
    assert store.calls == ["renew", "read_latest", "write"]  # the latest copy is read once


def test_auth_failure_with_bad_stored_copy_rolls_back_and_fails() -> None:
    other_bad = oauth_object("sk-ant-oat01-also-bad", "sk-ant-ort01-also-bad")
    store = MemoryBackend(versions=[other_bad])
    local = local_with(BAD)
    before = local.raw
    event = cycle(store, local, FakeProbe([F, F])).run()
    assert (event.status, event.exit_code, event.action, event.reason) == (
        Status.FAIL, ExitCode.FAIL, Action.ROLLBACK, "auth_failed_after_restore")
    assert local.raw == before  # exact previous bytes
    assert store.versions == [other_bad]


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        pytest.param([], "auth_failed_no_backup", id="no-backup"),
        pytest.param([BAD], "auth_failed_backup_is_local_copy", id="backup-equals-local-copy"),
        pytest.param([oauth_object("", "", expires_at_ms=0)], "auth_failed_backup_unusable", id="blanked-backup"),
    ],
)
def test_auth_failure_without_a_usable_other_copy_fails_without_touching_anything(
    cas_backend: MemoryBackend, stored: list[dict], reason: str
) -> None:
    """No backup, the backup is the failing login itself, or a blanked one: nothing is restored."""
    cas_backend.versions.extend(stored)
    local = local_with(BAD)
    before = local.raw
    event = cycle(cas_backend, local, FakeProbe([F])).run()
    assert (event.status, event.exit_code, event.action, event.reason) == (Status.FAIL, ExitCode.FAIL, Action.NONE, reason)
    assert (local.writes, local.raw) == (0, before)
    assert cas_backend.versions == stored


def test_unavailable_reports_warn_and_writes_nothing() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(BAD)
    event = cycle(store, local, FakeProbe([U])).run()
    assert (event.status, event.exit_code, event.action) == (Status.WARN, ExitCode.TEMPFAIL, Action.NONE)
    assert store.calls == ["renew"] and local.writes == 0


def test_retry_unavailable_keeps_the_restored_copy_and_warns() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(BAD)
    event = cycle(store, local, FakeProbe([F, U])).run()
    assert (event.status, event.action) == (Status.WARN, Action.RESTORE)
    assert local.document()["claudeAiOauth"] == GOOD
    assert store.versions == [GOOD]


def test_broken_probe_is_a_configuration_failure(cas_backend: MemoryBackend) -> None:
    event = cycle(cas_backend, local_with(GOOD), FakeProbe([B])).run()
    assert (event.status, event.exit_code, event.reason) == (Status.FAIL, ExitCode.CONFIG, "cli_missing")


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (BackendRefused("token file mode 0644", reason="vault_token_mode"), ExitCode.CONFIG, Status.FAIL),
        (BackendRefused("drift", reason="vault_token_drift"), ExitCode.CONFIG, Status.FAIL),
        (BackendUnavailable("sealed"), ExitCode.TEMPFAIL, Status.WARN),
    ],
)
def test_token_problems_stop_before_the_probe_but_an_outage_still_probes(error, code, status) -> None:
    """A refused token is a configuration problem: nothing is probed. An unreachable backend
    (issue 13, item 7) still gets a probe, so the status says whether the login works."""
    store = MemoryBackend(versions=[GOOD], fail_with=error)
    probe = FakeProbe([A])
    event = cycle(store, local_with(GOOD), probe).run()
    assert (event.exit_code, event.status, event.reason) == (code, status, error.reason)
    if code == ExitCode.TEMPFAIL:
        assert probe.runs == 1 and event.details["probe_outcome"] == "authenticated"
    else:
        assert probe.runs == 0


def test_blanked_local_object_passing_the_probe_is_never_backed_up(cas_backend: MemoryBackend) -> None:
    local = local_with(oauth_object("", "", expires_at_ms=0))
    event = cycle(cas_backend, local, FakeProbe([A])).run()
    assert event.exit_code == ExitCode.TEMPFAIL and event.reason == "local_blanked_not_backed_up"
    assert cas_backend.versions == []


def test_event_carries_fingerprints_not_tokens(cas_backend: MemoryBackend) -> None:
    event = cycle(cas_backend, local_with(GOOD), FakeProbe([A])).run()
    text = json.dumps(event.to_json())
    assert GOOD["accessToken"] not in text and GOOD["refreshToken"] not in text
    assert event.fingerprints["access"] is not None and len(event.fingerprints["access"]) == 8


def test_vault_token_ttl_under_7_days_despite_renewal_warns() -> None:
    store = MemoryBackend(versions=[GOOD], ttl_s=6 * 86400)
    event = cycle(store, local_with(GOOD), FakeProbe([A])).run()
    assert (event.status, event.exit_code, event.reason) == (Status.WARN, ExitCode.TEMPFAIL, "vault_token_expires_soon")
    assert event.details["store_ttl_s"] == 6 * 86400


def test_refresh_token_expiring_within_3_days_warns_but_still_backs_up() -> None:
    import time

    soon = int((time.time() + 2 * 86400) * 1000)
    oauth = {**GOOD, "refreshTokenExpiresAt": soon}
    store = MemoryBackend(ttl_s=32 * 86400)
    event = cycle(store, local_with(oauth), FakeProbe([A])).run()
    assert (event.status, event.action, event.reason) == (Status.WARN, Action.BACKUP, "refresh_token_expires_soon")
    assert store.versions == [oauth]


def test_healthy_event_carries_access_expiry_for_the_metrics() -> None:
    event = cycle(MemoryBackend(versions=[GOOD]), local_with(GOOD), FakeProbe([A])).run()
    assert event.details["access_expires_at_ms"] == GOOD["expiresAt"]


def test_claude_code_rewriting_the_login_during_restore_is_reprobed_not_overwritten() -> None:
    """The restorer re-reads under the lock; a changed OAuth object means: probe again, don't write."""
    store = MemoryBackend(versions=[GOOD])
    local = local_with(BAD)
    fresh = oauth_object("sk-ant-oat01-claude-code-fresh", "sk-ant-ort01-claude-code-fresh")
    original_restore = local.restore

    def restore_after_claude_code_wrote(oauth, *, expected):
        local.raw = json.dumps({"claudeAiOauth": fresh, "mcpOAuth": MCP}).encode()  # Claude Code won the race
        return original_restore(oauth, expected=expected)

    local.restore = restore_after_claude_code_wrote  # type: ignore[method-assign]
    probe = FakeProbe(accept=accepts(fresh["accessToken"]))
    event = cycle(store, local, probe).run()
    assert (event.status, event.reason) == (Status.OK, "credentials_changed_concurrently")
    assert local.document()["claudeAiOauth"] == fresh  # never overwritten with the stored copy
    assert store.versions == [GOOD, fresh]  # the fresh, just-probed login is backed up


def test_store_failing_after_a_successful_restore_keeps_the_login_and_says_restore() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(BAD)
    attempted_backups: list[tuple[dict, int | None]] = []

    def vault_goes_down(oauth, *, expected_version):
        attempted_backups.append((dict(oauth), expected_version))
        raise BackendUnavailable("Vault went away")

    store.write = vault_goes_down  # type: ignore[method-assign]
    refreshed = oauth_object("sk-ant-oat01-after", "sk-ant-ort01-after")

    def cli_refreshes(run: int) -> None:
        if run == 1:
            local.raw = json.dumps({"claudeAiOauth": refreshed, "mcpOAuth": MCP}).encode()

    probe = FakeProbe(accept=lambda login: login.oauth is not None and login.oauth["accessToken"] != BAD["accessToken"],
                      on_run=cli_refreshes)
    event = cycle(store, local, probe).run()
    assert (event.status, event.exit_code, event.action) == (Status.WARN, ExitCode.TEMPFAIL, Action.RESTORE)
    assert event.reason == "store_unavailable" and event.details["error"] == "Vault went away"
    assert local.document()["claudeAiOauth"] == refreshed  # the working login stays
    # The backup that failed was the one of the refreshed, just-probed login, on top of version 1,
    # and its failure left the stored copy as it was.
    assert attempted_backups == [(refreshed, 1)]
    assert store.versions == [GOOD]
