"""Issue 14 item 2: a roster user who never logged in is its own state (WARN 75
``awaiting_first_login``), told from a logout (``not_logged_in``) by the agent's own state only.

The rule is :class:`claude_auth_sync.last_check.LoginHistoryFile`'s; these tests run the real
cycle and the real state files in a temporary directory, with the in-memory backend and probe.
The real-CLI / real-journald version is tests/integration/test_first_login_real.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from claude_auth_sync.cli import _next_step
from claude_auth_sync.cycle import AWAITING_FIRST_LOGIN, NOT_LOGGED_IN, HealthCycle
from claude_auth_sync.errors import BackendUnavailable
from claude_auth_sync.last_check import LastCheckFile, LoginHistoryFile
from claude_auth_sync.model import RELOGIN_COMMAND, Action, ExitCode, ProbeOutcome, Status, StatusEvent
from claude_auth_sync.testing import FakeProbe, MemoryBackend, MemoryRestorer, oauth_object

GOOD = oauth_object("sk-ant-oat01-first-good", "sk-ant-ort01-first-good")
A, F = ProbeOutcome.AUTHENTICATED, ProbeOutcome.AUTH_FAILED
T0 = 1_800_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def run(state: Path, local: MemoryRestorer, probe: FakeProbe | None = None, clock: Clock | None = None,
        backend: MemoryBackend | None = None) -> StatusEvent:
    return HealthCycle(user="alice", backend=backend or MemoryBackend(), probe=probe or FakeProbe([]),
                       restorer=local, last_check=LastCheckFile(state / "last-check.json"),
                       wall_clock=clock or Clock()).run()


def history(state: Path) -> dict:
    return json.loads((state / "login-history.json").read_text())


def logged_out() -> MemoryRestorer:
    return MemoryRestorer()  # no credentials file


# -- the state itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("local", [MemoryRestorer(), MemoryRestorer.with_document({"mcpOAuth": {}})],
                         ids=["no file", "no claudeAiOauth"])
def test_a_user_who_never_logged_in_is_awaiting_the_first_login(tmp_path: Path, local: MemoryRestorer) -> None:
    clock, backend, probe = Clock(), MemoryBackend(ttl_s=30 * 86400), FakeProbe([F])
    event = run(tmp_path, local, probe, clock, backend)
    assert (event.status, event.exit_code, event.action, event.reason) == (
        Status.WARN, ExitCode.TEMPFAIL, Action.NONE, AWAITING_FIRST_LOGIN)
    assert event.details["awaiting_first_login_since"] == int(T0)
    assert probe.runs == 0 and backend.calls == ["renew"] and local.writes == 0  # the token is kept alive, nothing else
    assert history(tmp_path) == {"login_seen_at": None, "awaiting_since": T0}
    assert stat.S_IMODE((tmp_path / "login-history.json").stat().st_mode) == 0o600

    clock.now += 3 * DAY  # the waiting keeps its start
    again = run(tmp_path, local, FakeProbe([F]), clock)
    assert (again.reason, again.details["awaiting_first_login_since"]) == (AWAITING_FIRST_LOGIN, int(T0))


def test_the_first_login_ends_the_waiting_and_a_later_logout_is_a_logout(tmp_path: Path) -> None:
    clock = Clock()
    assert run(tmp_path, logged_out(), clock=clock).reason == AWAITING_FIRST_LOGIN
    clock.now += DAY
    local = MemoryRestorer.with_document({"claudeAiOauth": GOOD})
    ok = run(tmp_path, local, FakeProbe([A]), clock)
    assert (ok.status, ok.action) == (Status.OK, Action.BACKUP) and "awaiting_first_login_since" not in ok.details
    assert history(tmp_path) == {"login_seen_at": T0 + DAY, "awaiting_since": T0}

    clock.now += DAY
    local.raw = json.dumps({"mcpOAuth": {}}).encode()  # claude auth logout
    out = run(tmp_path, local, clock=clock)
    assert (out.exit_code, out.reason) == (ExitCode.TEMPFAIL, NOT_LOGGED_IN)
    assert "awaiting_first_login_since" not in out.details
    assert history(tmp_path)["login_seen_at"] == T0 + DAY  # written once, never moved


@pytest.mark.parametrize("oauth", [GOOD, oauth_object("", "", expires_at_ms=0), {"accessToken": 5}],
                         ids=["working", "blanked", "invalid"])
def test_a_login_that_never_worked_still_counts_as_a_login(tmp_path: Path, oauth: dict) -> None:
    local = MemoryRestorer.with_document({"claudeAiOauth": oauth})
    first = run(tmp_path, local, FakeProbe([F, F]))
    assert first.reason != AWAITING_FIRST_LOGIN  # never OK (no backup to restore): FAIL or WARN, not "never"
    local.raw = None
    assert run(tmp_path, local).reason == NOT_LOGGED_IN


def test_a_logout_during_the_probe_is_a_logout(tmp_path: Path) -> None:
    local = MemoryRestorer.with_document({"claudeAiOauth": GOOD})

    class LogsOut(FakeProbe):
        def run(self):  # type: ignore[no-untyped-def]
            local.raw = None
            return super().run()

    event = run(tmp_path, local, LogsOut([F]))
    assert (event.exit_code, event.reason) == (ExitCode.TEMPFAIL, NOT_LOGGED_IN)


def test_a_vault_outage_keeps_the_waiting_in_the_event(tmp_path: Path) -> None:
    backend = MemoryBackend(fail_with=BackendUnavailable("sealed", reason="vault_sealed"))
    event = run(tmp_path, logged_out(), backend=backend)
    assert (event.exit_code, event.reason) == (ExitCode.TEMPFAIL, "vault_sealed")
    assert event.details["awaiting_first_login_since"] == int(T0)


def test_without_a_state_directory_no_login_is_a_plain_not_logged_in() -> None:
    event = HealthCycle(user="alice", backend=MemoryBackend(), probe=FakeProbe([]), restorer=logged_out()).run()
    assert (event.exit_code, event.reason) == (ExitCode.TEMPFAIL, NOT_LOGGED_IN)


# -- evidence from an agent that ran before the history existed (upgrades) -------------------------


def test_a_last_check_record_is_evidence_of_a_login(tmp_path: Path) -> None:
    LastCheckFile(tmp_path / "last-check.json").record(GOOD, T0 - 10 * DAY)
    assert run(tmp_path, logged_out()).reason == NOT_LOGGED_IN
    assert history(tmp_path) == {"login_seen_at": T0 - 10 * DAY, "awaiting_since": None}


LINE_OK = "2026-11-28T20:10:45Z OK user=alice action=none probe_ms=812 access_fp=0123abcd\n"
LINE_FAIL_FP = "2026-11-28T20:10:45Z FAIL user=alice action=rollback reason=auth_failed_after_restore refresh_fp=0a1b2c3d\n"
LINE_WAIT = "2026-11-28T20:10:45Z WARN user=alice action=none reason=not_logged_in renew_ms=3\n"


@pytest.mark.parametrize(("name", "lines", "expected"), [
    ("sync.log", [LINE_WAIT, LINE_OK, LINE_WAIT], NOT_LOGGED_IN),
    ("sync.log.1", [LINE_OK], NOT_LOGGED_IN),  # rotated away from the current log, still found
    ("sync.log", [LINE_FAIL_FP], NOT_LOGGED_IN),  # a broken login is a login
    ("sync.log", [LINE_WAIT] * 50, AWAITING_FIRST_LOGIN),
    ("sync.log", ["OK user=alice\n", "2026-11-28T20:10:45Z WARN user=alice error=\"OK access_fp=\"\n"], AWAITING_FIRST_LOGIN),
    ("sync.log", ["\x1b[2J2026 OK\n", "garbage \xff\xfe\n"], AWAITING_FIRST_LOGIN),
])
def test_the_status_log_of_an_older_agent_is_evidence(tmp_path: Path, name: str, lines: list[str], expected: str) -> None:
    (tmp_path / name).write_text("".join(lines), encoding="utf-8", errors="surrogateescape")
    assert run(tmp_path, logged_out()).reason == expected
    (tmp_path / name).unlink()  # scanned once: what it showed is kept even when the log is gone
    assert run(tmp_path, logged_out()).reason == expected


def test_a_huge_log_is_read_in_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "sync.log"
    with log.open("w") as handle:
        handle.write(LINE_OK)  # only at the very beginning, beyond the scan bound
        handle.write(LINE_WAIT * ((6 << 20) // len(LINE_WAIT)))
    assert log.stat().st_size > 5 << 20
    assert run(tmp_path, logged_out()).reason == AWAITING_FIRST_LOGIN


# -- hostile state files --------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"not json", b"[]", b'{"login_seen_at": true}', b'{"login_seen_at": "yesterday"}', b'{"login_seen_at": NaN}',
    b'{"login_seen_at": -5}', b'{"login_seen_at": 4102444800}', b'{"awaiting_since": 1e400}', b"\xff\xfe\x1b[31m",
    b'{"login_seen_at": 1}' + b" " * 10000,
], ids=["text", "list", "bool", "string", "nan", "negative", "future", "inf", "bytes", "huge"])
def test_a_damaged_history_is_no_record(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "login-history.json").write_bytes(content)
    event = run(tmp_path, logged_out())
    assert (event.reason, event.details["awaiting_first_login_since"]) == (AWAITING_FIRST_LOGIN, int(T0))
    assert history(tmp_path) == {"login_seen_at": None, "awaiting_since": T0}  # replaced by a sound record


def test_a_symlinked_history_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"login_seen_at": 1.0}))
    (tmp_path / "login-history.json").symlink_to(target)
    assert run(tmp_path, logged_out()).reason == AWAITING_FIRST_LOGIN
    assert target.read_text() == json.dumps({"login_seen_at": 1.0})
    assert not (tmp_path / "login-history.json").is_symlink()


def test_a_fifo_history_never_blocks(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "login-history.json")
    assert run(tmp_path, logged_out()).reason == AWAITING_FIRST_LOGIN


def test_an_unwritable_state_still_gives_the_state_and_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    history_file = LoginHistoryFile(blocker / "login-history.json")
    assert history_file.awaiting_since(T0) == T0  # cannot be kept: each run waits from now
    history_file.note_login(T0)  # no exception either


def test_the_next_step_names_the_login_command() -> None:
    step = _next_step(AWAITING_FIRST_LOGIN, ExitCode.TEMPFAIL)
    assert "never logged in" in step and RELOGIN_COMMAND in step
    assert step != _next_step(NOT_LOGGED_IN, ExitCode.TEMPFAIL)
