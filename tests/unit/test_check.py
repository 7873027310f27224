"""``claude-auth-sync check``: states, exit codes and the perfdata format of the monitoring plugin."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from claude_auth_sync.check import NagiosState, evaluate
from claude_auth_sync.status_line import parse_log_line
from claude_auth_sync.model import LoginState
from claude_auth_sync.testing import oauth_object

NOW = time.time()
PERF = re.compile(r"^([a-z_]+=-?\d+s;[@~\d:]*;[@~\d:]*;;)( [a-z_]+=-?\d+s;[@~\d:]*;[@~\d:]*;;)*$")  # ranges


def line(status: str, age_s: float, **fields: str) -> str:
    stamp = datetime.fromtimestamp(NOW - age_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rest = " ".join(f"{k}={v}" for k, v in {"user": "alice", "action": "none", **fields}.items())
    return f"{stamp} {status} {rest}"


def records(*lines: str):
    return [parse_log_line(item) for item in lines]


OAUTH = oauth_object("a", "r", expires_at_ms=int((NOW + 3600) * 1000))


def test_ok_with_all_perfdata() -> None:
    oauth = {**OAUTH, "refreshTokenExpiresAt": int((NOW + 30 * 86400) * 1000)}
    state, summary, perf = evaluate(records(line("OK", 600, store_ttl_s="2764800")), LoginState.HEALTHY, oauth, NOW)
    assert (state, summary) == (NagiosState.OK, "last run OK")
    assert PERF.match(perf), perf
    values = dict(re.findall(r"([a-z_]+)=(-?\d+)s", perf))
    assert set(values) == {"access_ttl", "refresh_ttl", "vault_ttl", "last_ok_age"}
    assert 3590 <= int(values["access_ttl"]) <= 3600
    assert 600 <= int(values["last_ok_age"]) <= 602
    assert 2764800 - 602 <= int(values["vault_ttl"]) <= 2764800 - 600


@pytest.mark.parametrize(
    ("lines", "login", "expected", "words"),
    [
        ([line("OK", 60), line("WARN", 30, reason="http_529")], LoginState.HEALTHY, NagiosState.WARNING, "WARN (http_529)"),
        ([line("OK", 60), line("FAIL", 30, reason="auth_failed_after_restore")], LoginState.HEALTHY, NagiosState.CRITICAL, "FAIL"),
        ([line("OK", 13 * 3600)], LoginState.HEALTHY, NagiosState.CRITICAL, "no run for 13h"),
        ([line("OK", 60, store_ttl_s=str(5 * 86400))], LoginState.HEALTHY, NagiosState.WARNING, "Vault token expires soon"),
        ([line("OK", 60)], LoginState.BLANKED, NagiosState.CRITICAL, "local login blanked"),
        ([], LoginState.HEALTHY, NagiosState.UNKNOWN, "no run recorded"),
        ([], LoginState.MISSING, NagiosState.UNKNOWN, "not logged in"),
        ([line("WARN", 60, reason="not_logged_in")], LoginState.NO_OAUTH, NagiosState.WARNING, "not logged in"),
    ],
)
def test_states(lines, login, expected, words) -> None:
    state, summary, perf = evaluate(records(*lines), login, OAUTH, NOW)
    assert state == expected
    assert words in summary
    assert perf == "" or PERF.match(perf)


def test_refresh_token_expiring_within_3_days_is_a_warning() -> None:
    oauth = {**OAUTH, "refreshTokenExpiresAt": int((NOW + 86400) * 1000)}
    state, summary, _ = evaluate(records(line("OK", 60)), LoginState.HEALTHY, oauth, NOW)
    assert state == NagiosState.WARNING and "refresh token" in summary


def test_log_lines_with_quoted_values_parse() -> None:
    record = parse_log_line('2026-11-28T20:18:48Z FAIL user=bob action=none reason=x error="a b=c"')
    assert record is not None and record.fields["error"] == "a b=c" and record.status == "FAIL"
    assert parse_log_line("garbage") is None


def _in_range(value: float, spec: str) -> bool:
    """The Monitoring Plugins range rule: alert when the value is OUTSIDE the range.
    ``N`` = 0..N, ``N:`` = N..inf, ``~:N`` = -inf..N, ``M:N`` = M..N, ``@`` inverts."""
    inside_alerts = spec.startswith("@")
    spec = spec.lstrip("@")
    low, _, high = spec.partition(":") if ":" in spec else ("0", ":", spec)
    lo = float("-inf") if low == "~" else float(low or 0)
    hi = float("inf") if high == "" else float(high)
    inside = lo <= value <= hi
    return not inside if not inside_alerts else inside


@pytest.mark.parametrize(("label", "value", "expect"), [
    ("vault_ttl", 31 * 86400, "ok"), ("vault_ttl", 5 * 86400, "warning"), ("vault_ttl", -10, "critical"),
    ("refresh_ttl", 10 * 86400, "ok"), ("refresh_ttl", 86400, "warning"), ("refresh_ttl", -1, "critical"),
    ("last_ok_age", 3600, "ok"), ("last_ok_age", 13 * 3600, "warning"), ("last_ok_age", 25 * 3600, "critical"),
])
def test_perfdata_thresholds_follow_the_monitoring_plugins_range_rules(label, value, expect) -> None:
    """Issue 14: ``vault_ttl=...;604800;0;;`` alerted when the TTL was HIGH. A monitoring system
    applying the printed ranges must reach the same state the plugin reports."""
    oauth = dict(OAUTH)
    if label == "refresh_ttl":
        oauth["refreshTokenExpiresAt"] = int((NOW + value) * 1000)
    kwargs = {"store_ttl_s": str(int(value) + 60)} if label == "vault_ttl" else {}
    age = value if label == "last_ok_age" else 60
    state, _summary, perf = evaluate(records(line("OK", age, **kwargs)), LoginState.HEALTHY, oauth, NOW)
    fields = dict(item.split("=", 1) for item in perf.split())
    measured, warn, crit, *_ = fields[label].split(";")
    number = float(measured.rstrip("s"))
    by_ranges = "critical" if _in_range(number, crit) else "warning" if _in_range(number, warn) else "ok"
    assert by_ranges == expect
    assert state >= {"ok": NagiosState.OK, "warning": NagiosState.WARNING, "critical": NagiosState.CRITICAL}[expect]
