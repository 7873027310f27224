"""Regression tests for the cycle defects of issue 11 (items 2-6, 9), on the in-memory fakes.

Each test failed on the cycle before the fix; the real-service versions are in
``tests/integration/test_hardening_agent.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from claude_auth_sync.cycle import HealthCycle
from claude_auth_sync.errors import CredentialsBusy
from claude_auth_sync.model import Action, ExitCode, LocalLogin, ProbeOutcome, ProbeResult, Status
from claude_auth_sync.testing import FakeProbe, MemoryRestorer, MemoryBackend, oauth_object

GOOD = oauth_object("sk-ant-oat01-good-access", "sk-ant-ort01-good-refresh")
BAD = oauth_object("sk-ant-oat01-bad-access", "sk-ant-ort01-bad-refresh")
FRESH = oauth_object("sk-ant-oat01-fresh-login", "sk-ant-ort01-fresh-login")
REJECTED = oauth_object("sk-ant-oat01-rejected", "sk-ant-ort01-rejected")
MCP = {"github": {"accessToken": "mcp-secret-token"}}
A, F = ProbeOutcome.AUTHENTICATED, ProbeOutcome.AUTH_FAILED


def local_with(oauth: dict | None, **others: object) -> MemoryRestorer:
    document: dict = {"mcpOAuth": MCP, **others}
    if oauth is not None:
        document["claudeAiOauth"] = oauth
    return MemoryRestorer.with_document(document)


def write(local: MemoryRestorer, oauth: dict) -> None:
    document = local.document()
    document["claudeAiOauth"] = oauth
    local.raw = json.dumps(document).encode()


def token_in(*accepted: dict) -> Callable[[LocalLogin], bool]:
    tokens = {o["accessToken"] for o in accepted}
    return lambda login: login.oauth is not None and login.oauth.get("accessToken") in tokens


@dataclass
class WriterAfterProbe:
    """A probe whose answer is decided first; then another process rewrites the file."""

    inner: FakeProbe
    after: Callable[[int], None]

    def run(self) -> ProbeResult:
        index = self.inner.runs
        result = self.inner.run()
        self.after(index)
        return result

    def describe(self) -> dict:
        return {}


def run_cycle(store: MemoryBackend, local: MemoryRestorer, probe: object) -> object:
    return HealthCycle(user="alice", backend=store, probe=probe, restorer=local).run()  # type: ignore[arg-type]


# -- item 2: a rollback never overwrites a login written after the restore ---------------------


def test_rollback_keeps_a_login_written_during_the_retry_and_backs_it_up() -> None:
    store = MemoryBackend(versions=[REJECTED])
    local = local_with(BAD)
    fake = FakeProbe([F, F, A])
    probe = WriterAfterProbe(fake, lambda i: write(local, FRESH) if i == 1 else None)  # lands during the retry
    event = run_cycle(store, local, probe)
    assert local.document()["claudeAiOauth"] == FRESH  # not rolled back over
    assert local.document()["mcpOAuth"] == MCP
    assert (event.status, event.action, event.reason) == (Status.OK, Action.BACKUP, "credentials_changed_concurrently")
    assert store.versions == [REJECTED, FRESH]


def test_rollback_still_happens_over_our_copy_blanked_by_the_cli() -> None:
    store = MemoryBackend(versions=[REJECTED])
    local = local_with(BAD)
    before = local.raw
    blank = oauth_object("", "", expires_at_ms=0)
    probe = WriterAfterProbe(FakeProbe([F, F]), lambda i: write(local, blank) if i == 1 else None)  # invalid_grant
    event = run_cycle(store, local, probe)
    assert (event.exit_code, event.action, event.reason) == (ExitCode.FAIL, Action.ROLLBACK, "auth_failed_after_restore")
    assert local.raw == before


# -- item 3: only an object a successful probe ran against is stored ---------------------------


def test_a_login_changed_after_a_passing_probe_is_probed_again_not_stored_blindly() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(GOOD)
    fake = FakeProbe(accept=token_in(GOOD), restorer=local)
    probe = WriterAfterProbe(fake, lambda i: write(local, REJECTED) if i == 0 else None)
    event = run_cycle(store, local, probe)
    assert REJECTED not in store.versions
    assert fake.runs >= 2  # the changed object was probed itself
    assert event.status == Status.OK and local.document()["claudeAiOauth"] == GOOD  # restored, then it worked


def test_the_cli_refreshing_during_the_probe_costs_one_more_probe_and_stores_the_refreshed_login() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(GOOD)
    fake = FakeProbe(accept=token_in(GOOD, FRESH), restorer=local)
    probe = WriterAfterProbe(fake, lambda i: write(local, FRESH) if i == 0 else None)
    event = run_cycle(store, local, probe)
    assert (event.status, event.action) == (Status.OK, Action.BACKUP)
    assert store.versions == [GOOD, FRESH] and fake.runs == 2


def test_a_file_that_never_settles_is_not_backed_up() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(GOOD)
    logins = [oauth_object(f"sk-ant-oat01-n{i}", f"sk-ant-ort01-n{i}") for i in range(10)]
    fake = FakeProbe([A])
    probe = WriterAfterProbe(fake, lambda i: write(local, logins[i]))
    event = run_cycle(store, local, probe)
    assert store.versions == [GOOD]
    assert (event.status, event.reason) == (Status.WARN, "credentials_kept_changing")
    assert fake.runs == 3


# -- item 4: a failed rollback is reported as what is on disk and finished next run ------------


def test_a_rollback_that_cannot_be_done_is_reported_and_finished_by_the_next_run() -> None:
    store = MemoryBackend(versions=[REJECTED])
    local = local_with(BAD)
    before = local.raw
    local.fail_rollback = CredentialsBusy("Claude Code holds its credentials lock")
    event = run_cycle(store, local, FakeProbe([F, F]))
    assert (event.status, event.exit_code, event.action) == (Status.FAIL, ExitCode.FAIL, Action.RESTORE)
    assert event.reason == "auth_failed_after_restore_rollback_pending"
    assert local.document()["claudeAiOauth"] == REJECTED  # what is on disk, and the report says so

    local.fail_rollback = None
    second = run_cycle(store, local, FakeProbe([F, F]))
    assert second.details["pending_restore"] == "rolled_back_failed_restore"
    assert second.action == Action.ROLLBACK and local.raw == before


# -- item 5: a logged-out user stays logged out ------------------------------------------------


def test_missing_credentials_file_is_not_logged_in_and_nothing_is_restored(cas_restorer: MemoryRestorer) -> None:
    store = MemoryBackend(versions=[GOOD])
    local = cas_restorer  # no credentials file at all
    probe = FakeProbe([F])
    event = run_cycle(store, local, probe)
    assert (event.status, event.exit_code, event.action, event.reason) == (
        Status.WARN, ExitCode.TEMPFAIL, Action.NONE, "not_logged_in")
    assert local.raw is None and probe.runs == 0 and store.calls == ["renew"]


def test_file_without_claude_ai_oauth_is_not_logged_in() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(None)
    before = local.raw
    event = run_cycle(store, local, FakeProbe([F]))
    assert (event.exit_code, event.reason) == (ExitCode.TEMPFAIL, "not_logged_in")
    assert local.raw == before


def test_logout_during_the_probe_is_respected() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(BAD)
    probe = WriterAfterProbe(FakeProbe([F]), lambda i: setattr(local, "raw", None))
    event = run_cycle(store, local, probe)
    assert (event.exit_code, event.reason) == (ExitCode.TEMPFAIL, "not_logged_in")
    assert local.raw is None


def test_blanked_login_is_still_restored() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(oauth_object("", "", expires_at_ms=0))
    event = run_cycle(store, local, FakeProbe(accept=token_in(GOOD), restorer=local))
    assert (event.status, event.action) == (Status.OK, Action.RESTORE)
    assert local.document()["claudeAiOauth"] == GOOD


# -- item 6: verdicts rest on what was probed --------------------------------------------------


def test_a_restore_by_another_process_during_the_probe_is_not_a_fail() -> None:
    store = MemoryBackend(versions=[GOOD])
    local = local_with(BAD)
    fake = FakeProbe([F, A])
    probe = WriterAfterProbe(fake, lambda i: write(local, GOOD) if i == 0 else None)  # the other run restored
    event = run_cycle(store, local, probe)
    assert event.status == Status.OK, event.reason
    assert event.reason != "auth_failed_backup_is_local_copy"


# -- item 9: the stored copy passes the local file's own check before it is restored ----------


def test_a_wrongly_typed_stored_copy_is_never_restored() -> None:
    store = MemoryBackend(versions=[{**GOOD, "scopes": "user:inference"}])
    local = local_with(BAD)
    before = local.raw
    event = run_cycle(store, local, FakeProbe([F, A]))
    assert (event.exit_code, event.reason) == (ExitCode.FAIL, "auth_failed_backup_unusable")
    assert "scopes" in event.details["backup_problem"]
    assert local.raw == before


def test_a_huge_stored_token_is_a_bad_backup_not_a_configuration_problem() -> None:
    store = MemoryBackend(versions=[oauth_object("sk-ant-oat01-" + "x" * 5_000_000, "sk-ant-ort01-r")])
    local = local_with(BAD)
    before = local.raw
    event = run_cycle(store, local, FakeProbe([F, A]))
    assert (event.exit_code, event.reason) == (ExitCode.FAIL, "auth_failed_backup_unusable")
    assert local.raw == before
    assert "x" * 100 not in json.dumps(event.to_json())


def test_a_stored_copy_that_is_not_an_object_is_never_restored() -> None:
    for stored in (None, "sk-ant-oat01-string", ["list"], 5):
        store = MemoryBackend(versions=[stored])  # type: ignore[list-item]
        local = local_with(BAD)
        event = run_cycle(store, local, FakeProbe([F, A]))
        assert (event.exit_code, event.reason) == (ExitCode.FAIL, "auth_failed_backup_unusable"), stored


def test_an_interrupted_restore_that_works_is_kept_not_rolled_back() -> None:
    """A hostile tester's finding: the next run put back the known-broken login before checking the
    restored one, and with Vault down the person stayed logged out."""
    from claude_auth_sync.errors import BackendUnavailable

    backend = MemoryBackend(versions=[GOOD])
    local = local_with(BAD)
    restored = run_cycle(backend, local, WriterAfterProbe(FakeProbe([F, F]), lambda i: None))
    assert restored.action == Action.ROLLBACK  # baseline: a failing copy is rolled back
    local = local_with(BAD)
    local.restore(GOOD, expected=BAD)  # a run restored GOOD and was killed before its retry
    backend.fail_with = BackendUnavailable("down", reason="vault_unreachable")
    event = run_cycle(backend, local, FakeProbe(accept=token_in(GOOD), restorer=local))
    assert event.details["pending_restore"] == "kept_working_restore"
    assert local.document()["claudeAiOauth"] == GOOD and local.pending is None
