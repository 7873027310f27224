"""The ``metrics`` sink's state start times (:mod:`claude_auth_sync.plugins.sink_metrics.state_since`):
how long a status word has lasted, since when a user is awaited to log in for the first time, and
when the Vault token expires. These are what the WARN-for-days, first-login, Vault-TTL and
mass-failure alerts read; the real sink writes them over several runs here, promtool lints them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from claude_auth_sync.model import Action, ExitCode, Status, StatusEvent
from claude_auth_sync.plugins.sink_metrics import MetricsSink, metric_names, render_metrics
from claude_auth_sync.plugins.sink_metrics.state_since import previous_state
from tests.unit.test_sink_metrics import CODES, T0_S, at, samples

USER = 'user="alice"'
CHANGE = ("claude_auth_sync_last_status_change_timestamp_seconds", USER)
AWAITING = ("claude_auth_sync_awaiting_first_login_since_timestamp_seconds", USER)
EXPIRY = ("claude_auth_sync_vault_token_expiry_timestamp_seconds", USER)


def event(status: Status, minutes: int, **details: object) -> StatusEvent:
    return StatusEvent(timestamp=at(minutes), status=status, exit_code=CODES[status], user="alice",
                       action=Action.NONE, reason=None if status == Status.OK else "r", details=details)


def emit_all(tmp_path: Path, *events: StatusEvent) -> dict[tuple[str, str], float]:
    sink = MetricsSink(tmp_path)
    for one in events:
        sink.emit(one)
    return samples((tmp_path / "claude_auth_sync_alice.prom").read_text())


def test_the_streak_starts_at_the_first_run_of_a_status_word_and_restarts_on_a_change(tmp_path: Path) -> None:
    got = emit_all(tmp_path, event(Status.OK, 0), event(Status.WARN, 360), event(Status.WARN, 720), event(Status.WARN, 1080))
    assert got[CHANGE] == T0_S + 360 * 60
    got = emit_all(tmp_path, event(Status.FAIL, 1440))
    assert got[CHANGE] == T0_S + 1440 * 60
    got = emit_all(tmp_path, event(Status.FAIL, 1800), event(Status.OK, 2160))
    assert got[CHANGE] == T0_S + 2160 * 60


def test_a_file_from_before_the_streak_metric_starts_the_streak_at_its_last_run(tmp_path: Path) -> None:
    old = "\n".join(line for line in render_metrics(event(Status.WARN, 0)).splitlines()
                    if "status_change" not in line) + "\n"
    (tmp_path / "claude_auth_sync_alice.prom").write_text(old)
    assert emit_all(tmp_path, event(Status.WARN, 600))[CHANGE] == T0_S
    (tmp_path / "claude_auth_sync_alice.prom").write_text(old)
    assert emit_all(tmp_path, event(Status.OK, 600))[CHANGE] == T0_S + 600 * 60


@pytest.mark.parametrize("previous", [
    "garbage\n",
    'claude_auth_sync_last_status{user="alice",status="WARN"} 1\nclaude_auth_sync_last_status_change_timestamp_seconds{user="alice"} NaN\n',
    'claude_auth_sync_last_status{user="alice",status="WARN"} 1\nclaude_auth_sync_last_status_change_timestamp_seconds{user="alice"} -5\n',
    # a start after this run (clock or hand edit): not trusted
    f'claude_auth_sync_last_status{{user="alice",status="WARN"}} 1\nclaude_auth_sync_last_status_change_timestamp_seconds{{user="alice"}} {T0_S + 10**9}\n',
    # two status words at 1: which one is unknown
    'claude_auth_sync_last_status{user="alice",status="WARN"} 1\nclaude_auth_sync_last_status{user="alice",status="OK"} 1\n'
    'claude_auth_sync_last_status_change_timestamp_seconds{user="alice"} 1\n',
    "\x1b[2J\xff" * 1000,
], ids=["garbage", "nan", "negative", "future", "two-statuses", "binary"])
def test_a_damaged_previous_file_starts_the_streak_now(tmp_path: Path, previous: str) -> None:
    (tmp_path / "claude_auth_sync_alice.prom").write_text(previous, errors="surrogateescape")
    assert emit_all(tmp_path, event(Status.WARN, 600))[CHANGE] == T0_S + 600 * 60


def test_awaiting_first_login_is_exported_only_in_that_state(tmp_path: Path) -> None:
    since = T0_S - 3 * 86400
    got = emit_all(tmp_path, event(Status.WARN, 0, awaiting_first_login_since=since))
    assert got[AWAITING] == since
    assert AWAITING not in emit_all(tmp_path, event(Status.OK, 360))  # logged in: gone at once
    for bad in (True, "soon", float("nan"), -1, T0_S + 10**6):
        assert AWAITING not in emit_all(tmp_path, event(Status.WARN, 720, awaiting_first_login_since=bad)), bad


def test_the_vault_expiry_is_the_renewal_plus_the_ttl_and_is_carried_by_runs_that_did_not_renew(tmp_path: Path) -> None:
    got = emit_all(tmp_path, event(Status.OK, 0, store_ttl_s=32 * 86400))
    assert got[EXPIRY] == T0_S + 32 * 86400
    got = emit_all(tmp_path, event(Status.OK, 10))  # an unchanged login seen by the path unit: no renewal
    assert got[EXPIRY] == T0_S + 32 * 86400
    assert ("claude_auth_sync_vault_token_ttl_seconds", USER) not in got  # the existing series is unchanged
    got = emit_all(tmp_path, event(Status.OK, 360, store_ttl_s=86400))
    assert got[EXPIRY] == T0_S + 360 * 60 + 86400


def test_previous_state_reads_only_numbers() -> None:
    state = previous_state(render_metrics(event(Status.WARN, 0, store_ttl_s=60)))
    assert (state.status, state.status_since_s, state.last_run_s, state.vault_expiry_s) == ("WARN", T0_S, T0_S, T0_S + 60)
    assert previous_state(None) == previous_state("") == previous_state("x 1\n")


def test_new_families_are_listed_and_pass_promtool_check_metrics() -> None:
    names = set(metric_names())
    assert {CHANGE[0], AWAITING[0], EXPIRY[0]} <= names
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    text = render_metrics(StatusEvent(timestamp=at(0), status=Status.WARN, exit_code=ExitCode.TEMPFAIL, user="alice",
                                      action=Action.NONE, reason="awaiting_first_login",
                                      details={"awaiting_first_login_since": T0_S - 60, "store_ttl_s": 3600}))
    for name in (CHANGE[0], AWAITING[0], EXPIRY[0]):
        assert f"\n{name}{{" in text
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (res.stdout, res.stderr)
