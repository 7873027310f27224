"""``claude-auth-sync check``: the Monitoring Plugins range rules, run through the real CLI against
state files, plus the states, findings and output format of the plugin."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime

import pytest

from claude_auth_sync.check import (
    CRITICAL, DEFAULT_THRESHOLDS, OK, UNKNOWN, WARNING, Measured, build_check, measure, parse_thresholds, render,
)
from claude_auth_sync.model import LoginState
from claude_auth_sync.status_line import parse_log_line
from claude_auth_sync.testing import oauth_object
from tests.support.cli import Sandbox

NOW = time.time()
OAUTH = oauth_object("a", "r", expires_at_ms=int((NOW + 3600) * 1000))
LINE = re.compile(r"^CLAUDE-AUTH-SYNC (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+( \| [^\n]+)?\n$")
PERF_ITEM = re.compile(r"^'?([A-Za-z0-9_.-]+)'?=(-?\d+)s(?:;([^;]*))?(?:;([^;]*))?$")
STATE_CODES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def line(status: str, age_s: float, **fields: str) -> str:
    rest = " ".join(f"{k}={v}" for k, v in {"user": "alice", "action": "none", **fields}.items())
    return f"{stamp(NOW - age_s)} {status} {rest}"


def records(*lines: str):
    return [parse_log_line(item) for item in lines]


def perfdata(stdout: str) -> dict[str, tuple[int, str, str]]:
    """``{label: (value, warn, crit)}`` of the plugin's output (first line or -v's last lines)."""
    text = stdout.split("|", 1)[1] if "|" in stdout else ""
    out = {}
    for item in text.split():
        match = PERF_ITEM.match(item)
        assert match, f"malformed perfdata item {item!r} in {stdout!r}"
        out[match[1]] = (int(match[2]), match[3] or "", match[4] or "")
    return out


def alerts(value: float, spec: str) -> bool:
    """The Monitoring Plugins development guidelines, written out independently of nagiosplugin:
    ``[@][start:][end]``; start defaults to 0, ``~`` is -inf, an empty end is +inf; the value
    alerts when it is outside start..end (inclusive), or inside it with ``@``."""
    if spec == "":
        return False
    inside_alerts = spec.startswith("@")
    body = spec[1:] if inside_alerts else spec
    start_text, _, end_text = body.rpartition(":") if ":" in body else ("0", "", body)
    start = -math.inf if start_text == "~" else float(start_text or 0)
    end = math.inf if end_text == "" else float(end_text)
    inside = start <= value <= end
    return inside if inside_alerts else not inside


# ---- the real CLI against state files ---------------------------------------------------------

AGE_S = 60  # the last run's least age in the CLI cases: exact when the run starts in the same second


def run_with_vault_ttl(box: Sandbox, vault_ttl: int, *args: str) -> tuple[str, int, dict[str, tuple[int, str, str]]]:
    """Run ``claude-auth-sync check ARGS`` when the last OK run (AGE_S old) left a Vault TTL giving
    ``vault_ttl`` now; retried until the measured value is exact (a run crossing a second)."""
    box.write_credentials({"claudeAiOauth": OAUTH})
    box.log_file.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(8):
        while time.time() % 1 > 0.2:  # start at the top of a second: the CLI reads the clock within it
            time.sleep(0.02)
        now = math.floor(time.time())
        age = AGE_S + max(0, -vault_ttl)  # a negative TTL: the token was issued for less than its age
        box.log_file.write_text(f"{stamp(now - age)} OK user=alice action=none store_ttl_s={vault_ttl + age}\n")
        result = box.run("check", *args)
        assert LINE.match(result.stdout.splitlines()[0] + "\n"), result.stdout + result.stderr
        perf = perfdata(result.stdout)
        if perf["vault_ttl"][0] == vault_ttl and perf["last_run_age"][0] == age:
            return result.stdout, result.returncode, perf
    pytest.fail("the check never ran within the second its state was written")


GUIDELINES_TABLE = [  # (range, value, alerts) — the guidelines' examples and their boundaries
    ("10", -1, True), ("10", 0, False), ("10", 10, False), ("10", 11, True),
    ("10:", 9, True), ("10:", 10, False), ("10:", 10**9, False),
    ("~:10", -5000, False), ("~:10", 10, False), ("~:10", 11, True),
    ("10:20", 9, True), ("10:20", 10, False), ("10:20", 20, False), ("10:20", 21, True),
    ("@10:20", 9, False), ("@10:20", 10, True), ("@10:20", 20, True), ("@10:20", 21, False),
    ("-10:-5", -11, True), ("-10:-5", -10, False), ("-5:5", 0, False), ("-10:-5", -4, True),
    ("~:-5", -5, False), ("~:-5", -4, True), ("0:", -1, True), ("0:", 0, False), ("@~:0", 0, True),
]


@pytest.mark.parametrize(("spec", "value", "alerting"), GUIDELINES_TABLE)
def test_warning_range_rules_of_the_guidelines(box: Sandbox, spec: str, value: int, alerting: bool) -> None:
    assert alerts(value, spec) is alerting  # the oracle agrees with the table
    stdout, code, perf = run_with_vault_ttl(box, value, "-w", f"vault_ttl={spec}", "-c", "vault_ttl=")
    assert code == (WARNING if alerting else OK), stdout
    assert perf["vault_ttl"] == (value, spec, ""), "the perfdata must carry the range that was applied"


@pytest.mark.parametrize(("spec", "value", "alerting"), [
    ("10", 11, True), ("10", 10, False), ("10:", 9, True), ("~:10", 11, True), ("@10:20", 15, True), ("0:", -1, True),
    ("0:", 0, False),
])
def test_critical_range_rules_of_the_guidelines(box: Sandbox, spec: str, value: int, alerting: bool) -> None:
    stdout, code, perf = run_with_vault_ttl(box, value, "--critical", f"vault_ttl={spec}", "--warning", "vault_ttl=")
    assert code == (CRITICAL if alerting else OK), stdout
    assert perf["vault_ttl"] == (value, "", spec)


def test_critical_wins_over_warning_and_both_ranges_are_printed(box: Sandbox) -> None:
    stdout, code, perf = run_with_vault_ttl(box, 5, "-w", "vault_ttl=10:", "-c", "vault_ttl=6:")
    assert code == CRITICAL and perf["vault_ttl"] == (5, "10:", "6:"), stdout
    stdout, code, _ = run_with_vault_ttl(box, 8, "-w", "vault_ttl=10:", "-c", "vault_ttl=6:")
    assert code == WARNING and "Vault token expires in 8s" in stdout


@pytest.mark.parametrize(("value", "expected"), [(31 * 86400, OK), (5 * 86400, WARNING), (0, WARNING), (-10, CRITICAL)])
def test_default_vault_ttl_thresholds_low_is_bad(box: Sandbox, value: int, expected: int) -> None:
    """Issue 14: ``vault_ttl=...;604800;0;;`` alerted on a healthy 31-day TTL."""
    stdout, code, perf = run_with_vault_ttl(box, value)
    assert code == expected, stdout
    assert perf["vault_ttl"][1:] == ("604800:", "0:")
    assert perf["last_run_age"][1:] == ("", "43200") and perf["access_ttl"][1:] == ("", "")
    monitored = CRITICAL if alerts(value, "0:") else WARNING if alerts(value, "604800:") else OK
    assert monitored == expected, "a monitoring system applying the printed ranges must agree"


def test_every_metric_honours_its_own_thresholds(box: Sandbox) -> None:
    """-w/-c for each metric reach the state, and the defaults of the other metrics stay."""
    oauth = {**OAUTH, "refreshTokenExpiresAt": int((time.time() + 10 * 86400) * 1000)}
    box.write_credentials({"claudeAiOauth": oauth})
    box.log_file.parent.mkdir(parents=True, exist_ok=True)
    box.log_file.write_text(f"{stamp(time.time() - 600)} OK user=alice action=none store_ttl_s=9999999\n")
    base = box.run("check")
    assert base.returncode == OK, base.stdout
    for metric, value_range in (("access_ttl", "7200:"), ("refresh_ttl", "30d"), ("vault_ttl", "99999999:"),
                                ("last_ok_age", "300"), ("last_run_age", "300")):
        spec = "2592000:" if value_range == "30d" else value_range
        crit = box.run("check", "-c", f"{metric}={spec}")
        assert crit.returncode == CRITICAL, (metric, crit.stdout)
        assert perfdata(crit.stdout)[metric][2] == spec
        warn = box.run("check", "-w", f"{metric}={spec}")
        assert warn.returncode == WARNING and perfdata(warn.stdout)[metric][1] == spec, (metric, warn.stdout)
    comma = box.run("check", "-w", "last_ok_age=300,last_run_age=300", "-c", "last_ok_age=", "-c", "last_ok_age=500")
    perf = perfdata(comma.stdout)
    assert comma.returncode == CRITICAL and perf["last_ok_age"][1:] == ("300", "500") and perf["last_run_age"][1] == "300"


@pytest.mark.parametrize("args", [
    ["-w", "nosuchmetric=10"], ["-w", "vault_ttl"], ["-c", "vault_ttl=abc"], ["-c", "vault_ttl=20:10"],
    ["-w", "vault_ttl=1:2:3"], ["-w", "vault_ttl=10", "-t", "-1"], ["-t", "soon"], ["-t"], ["--no-such-option"],
    ["-w", "vault_ttl=1", "extra-word"],
])
def test_bad_options_are_unknown_on_stdout(box: Sandbox, args: list[str]) -> None:
    result = box.run("check", *args)
    assert result.returncode == UNKNOWN, (result.stdout, result.stderr)
    assert result.stdout.startswith("CLAUDE-AUTH-SYNC UNKNOWN - ") and len(result.stdout.splitlines()) == 1


def test_version_and_help_document_the_thresholds(box: Sandbox) -> None:
    version = box.run("check", "-V")
    assert version.returncode == 0 and re.fullmatch(r"claude-auth-sync check \d+\.\d+\.\d+\S*\n", version.stdout)
    text = box.run("check", "--help").stdout
    for metric, (warn, crit) in DEFAULT_THRESHOLDS.items():
        row = next(r for r in text.splitlines() if r.strip().startswith(metric))
        assert (f"-w {warn}" in row if warn else True) and (f"-c {crit}" in row if crit else True), row
    assert "command[claude_auth_sync]=" in text and "@10:20" in text and "~:10" in text


def test_verbose_lists_every_problem_and_moves_the_perfdata(box: Sandbox) -> None:
    oauth = {**OAUTH, "refreshTokenExpiresAt": int((time.time() + 86400) * 1000)}
    box.write_credentials({"claudeAiOauth": oauth})
    box.log_file.parent.mkdir(parents=True, exist_ok=True)
    box.log_file.write_text(f"{stamp(time.time() - 60)} FAIL user=alice action=none reason=auth_failed\n")
    short = box.run("check")
    assert short.returncode == CRITICAL and len(short.stdout.splitlines()) == 1
    verbose = box.run("check", "-v")
    lines = verbose.stdout.splitlines()
    assert lines[0] == short.stdout.split(" | ")[0]
    assert any(x.startswith("CRITICAL ") and "last run FAIL (auth_failed)" in x for x in lines)
    assert any(x.startswith("WARNING ") and "refresh token expires in 23h" in x for x in lines)
    assert any(x.startswith("| ") for x in lines[1:])


HOSTILE = '"x|y=1;2;3 \x1b]0;pwned\x07\x1b[2J [red]z[/red] \u202e\\nnext|line=9s;;"'


def test_hostile_log_text_never_breaks_the_line_or_the_perfdata(box: Sandbox) -> None:
    box.write_credentials({"claudeAiOauth": OAUTH})
    box.log_file.parent.mkdir(parents=True, exist_ok=True)
    box.log_file.write_text(f"{stamp(time.time() - 60)} OK user=alice action=none store_ttl_s=9999999\n"
                            f"{stamp(time.time() - 30)} WARN user=alice action=none reason={HOSTILE} "
                            "store_ttl_s=\u00b2\u00b3 extra=|a=1s\n")
    for args in ([], ["-v"]):
        result = box.run("check", *args)
        assert result.returncode == WARNING, result.stdout
        out = result.stdout
        assert out.count("|") == 1, out  # only the perfdata separator
        assert not any(c in out for c in ("\x1b", "\x07", "\u202e")), out
        assert set(perfdata(out)) == {"access_ttl", "last_ok_age", "last_run_age"}, out  # no vault_ttl from "²³"
        assert "x/y=1;2;3" in out


# ---- states and findings (the evaluation, without the CLI) ------------------------------------

def evaluate(lines: list[str], login: LoginState | None, oauth=OAUTH, **thresholds: tuple[str, str]):
    measured = measure("alice", records(*lines), login, oauth, NOW)
    check = build_check([measured], {**parse_thresholds(), **thresholds})
    return check.exitcode, render(check)


@pytest.mark.parametrize(
    ("lines", "login", "expected", "words"),
    [
        ([line("OK", 60), line("WARN", 30, reason="http_529")], LoginState.HEALTHY, WARNING, "WARN (http_529)"),
        ([line("OK", 60), line("WARN", 30, reason="awaiting_first_login")], LoginState.MISSING, WARNING,
         "WARN (awaiting_first_login)"),
        ([line("OK", 60), line("FAIL", 30, reason="auth_failed_after_restore")], LoginState.HEALTHY, CRITICAL, "FAIL"),
        ([line("OK", 13 * 3600)], LoginState.HEALTHY, CRITICAL, "no run for 13h"),
        ([line("OK", 60, store_ttl_s=str(5 * 86400))], LoginState.HEALTHY, WARNING, "Vault token expires in 4d 23h"),
        ([line("OK", 60)], LoginState.BLANKED, CRITICAL, "local login blanked"),
        ([], LoginState.HEALTHY, UNKNOWN, "no run recorded"),
        ([], LoginState.MISSING, UNKNOWN, "not logged in"),
        ([], LoginState.BLANKED, CRITICAL, "no run recorded"),  # CRITICAL is never hidden behind UNKNOWN
        ([line("WARN", 60, reason="not_logged_in")], LoginState.NO_OAUTH, WARNING, "not logged in"),
        ([line("OK", 25 * 3600), line("WARN", 60)], LoginState.HEALTHY, CRITICAL, "no OK for 1d 1h"),
        ([line("OK", 13 * 3600), line("WARN", 60)], LoginState.HEALTHY, WARNING, "no OK for 13h"),
        ([line("OK", -3600)], LoginState.HEALTHY, OK, "last run OK"),  # stamped in the future: a clock set back
    ],
)
def test_states(lines, login, expected, words) -> None:
    code, out = evaluate(lines, login)
    assert code == expected, out
    assert words in out and LINE.match(out), out


def test_ok_with_all_perfdata() -> None:
    oauth = {**OAUTH, "refreshTokenExpiresAt": int((NOW + 30 * 86400) * 1000)}
    code, out = evaluate([line("OK", 600, store_ttl_s="2764800")], LoginState.HEALTHY, oauth)
    assert (code, out.split(" | ")[0]) == (OK, "CLAUDE-AUTH-SYNC OK - alice: last run OK")
    perf = perfdata(out)
    assert set(perf) == set(DEFAULT_THRESHOLDS)
    assert 3590 <= perf["access_ttl"][0] <= 3600 and 600 <= perf["last_ok_age"][0] <= 602
    assert perf["last_ok_age"][1:] == ("43200", "86400") and perf["refresh_ttl"][1:] == ("259200:", "0:")


def test_no_threshold_never_alerts_even_on_a_negative_value() -> None:
    """nagiosplugin reads an empty range as 0..inf; 'no threshold' must not alert on an expired access token."""
    oauth = {**OAUTH, "expiresAt": int((NOW - 7200) * 1000)}
    code, out = evaluate([line("OK", 60)], LoginState.HEALTHY, oauth)
    assert code == OK and perfdata(out)["access_ttl"] == (-7200, "", ""), out


def test_hostile_credentials_numbers_are_ignored_not_crashing() -> None:
    for expires in (10**400, True, -5, "123"):
        code, out = evaluate([line("OK", 60)], LoginState.HEALTHY, {**OAUTH, "expiresAt": expires})
        assert code == OK and "access_ttl" not in out, out


def test_fleet_summary_names_users_per_state_and_prefixes_the_perfdata() -> None:
    def user(name: str, *lines: str) -> Measured:
        return measure(name, records(*lines), LoginState.HEALTHY, OAUTH, NOW)

    check = build_check([user("alice", line("OK", 60)), user("bob", line("FAIL", 60, reason="x")),
                         user("john.doe", line("WARN", 60, reason="y")), user("carol", line("OK", 60))],
                        parse_thresholds(), fleet=True)
    out = render(check)
    assert check.exitcode == CRITICAL
    assert out.split(" | ")[0] == ("CLAUDE-AUTH-SYNC CRITICAL - critical: bob (last run FAIL (x)); "
                                   "warning: john.doe (last run WARN (y)); ok: alice, carol")
    perf = perfdata(out)
    assert "alice_last_ok_age" in perf and "john.doe_last_run_age" in perf
    assert "'john.doe_last_run_age'=60s;;43200" in out  # quoted: not a plain word
    assert json.loads(json.dumps(Measured.from_json(user("x", line("OK", 5)).to_json()).to_json()))["user"] == "x"


@pytest.mark.parametrize("answer", [None, [], {"metrics": [1]}, {"findings": "x"}, {"findings": [[1], [9, "x"], [True, "y"]]},
                                    {"metrics": {"vault_ttl": "5", "nope": 1, "last_ok_age": True}}])
def test_a_malformed_answer_from_the_users_child_is_never_a_crash(answer) -> None:
    measured = Measured.from_json(answer)
    assert measured.metrics == {} and all(f.state == UNKNOWN for f in measured.findings)
    assert build_check([measured], parse_thresholds()).exitcode in (OK, UNKNOWN)


def test_a_user_awaiting_the_first_login_is_a_warning_never_critical(box: Sandbox) -> None:
    """The agent's own WARN reason (issue 14 item 2), written by a real run, read by the real check."""
    run = box.run("run")
    assert run.returncode == 75 and "reason=awaiting_first_login" in box.log_file.read_text(), run.stderr
    result = box.run("check")
    assert result.returncode == WARNING, result.stdout
    assert "last run WARN (awaiting_first_login)" in result.stdout and "CRITICAL" not in result.stdout


def test_fleet_summary_stays_short_for_a_large_roster() -> None:
    fine = [measure(f"u{i:03d}", records(line("OK", 60)), LoginState.HEALTHY, OAUTH, NOW) for i in range(300)]
    bad = [measure(f"w{i}", records(line("WARN", 60, reason="http_529")), LoginState.HEALTHY, OAUTH, NOW)
           for i in range(7)]
    check = build_check(bad + fine, parse_thresholds(), fleet=True)
    status = render(check).split(" | ")[0]
    assert check.exitcode == WARNING and len(status) < 400, status
    assert "warning: 7 users: w0, w1, w2, w3, w4, w5, w6; ok: 300 users: u000," in status
    assert status.endswith("u019 and 280 more")
    verbose = render(check, verbose=1).splitlines()
    assert sum(x.startswith("WARNING w") for x in verbose) == 7


class _BrokenPlugins:
    def commands(self) -> dict[str, object]:
        return {}  # the administrator's package (check-all) is not registered


@pytest.mark.parametrize("argv", [["check"], ["check", "-t", "5"], ["check", "--all"]])
def test_check_is_unknown_never_78_when_plugins_cannot_load_or_check_all_is_missing(
        argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A monitoring plugin's exit code is 0-3 on every path (78 reads as CRITICAL to some)."""
    import claude_auth_sync.plugin_manager as plugin_manager
    from claude_auth_sync import cli

    if argv == ["check", "--all"]:
        monkeypatch.setattr(plugin_manager, "get_plugin_manager", lambda: _BrokenPlugins())
    else:
        def broken() -> None:
            raise RuntimeError("entry point exploded")

        monkeypatch.setattr(plugin_manager, "get_plugin_manager", broken)
    assert cli.main(argv) == 3
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and " UNKNOWN - " in out
    assert "exploded" not in out


def test_run_keeps_the_contracts_78_when_plugins_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import claude_auth_sync.plugin_manager as plugin_manager
    from claude_auth_sync import cli

    def broken() -> None:
        raise RuntimeError("entry point exploded")

    monkeypatch.setattr(plugin_manager, "get_plugin_manager", broken)
    assert cli.main(["run"]) == 78


@pytest.mark.parametrize("command", ["check", "check-all"])
@pytest.mark.parametrize("timeout", ["nan", "-5", "0", "inf"])
def test_check_and_check_all_share_one_timeout_rule(command: str, timeout: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """check-all took any float (nan, negative) for -t; both now parse it the same way: UNKNOWN."""
    from claude_auth_sync import cli

    with pytest.raises(SystemExit) as stop:
        cli.main([command, "-t", timeout])
    assert stop.value.code == 3
    assert "is not" in capsys.readouterr().out
