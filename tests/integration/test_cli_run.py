"""``claude-auth-sync run`` end to end: the installed CLI, the file backend, a stub ``claude``.

The exit codes and the log line are the contract's; no secret appears in any output.
"""

from __future__ import annotations

import json
import re
import stat

import pytest

from claude_auth_sync.testing import oauth_object
from tests.support.cli import Sandbox, current_user, fp

GOOD = oauth_object("sk-ant-oat01-GOOD-secret-access", "sk-ant-ort01-GOOD-secret-refresh")
BAD = oauth_object("sk-ant-oat01-BAD-secret-access", "sk-ant-ort01-BAD-secret-refresh")
REFRESHED = ("sk-ant-oat01-REFRESHED-secret-access", "sk-ant-ort01-REFRESHED-secret-refresh")
MCP = {"linear": {"accessToken": "mcp-SECRET-linear-token", "refreshToken": "mcp-SECRET-linear-refresh"}}
SECRETS = [GOOD["accessToken"], GOOD["refreshToken"], BAD["accessToken"], BAD["refreshToken"], *REFRESHED,
           "mcp-SECRET-linear-token", "mcp-SECRET-linear-refresh"]
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (OK|WARN|FAIL) user=(\S+) action=(none|backup|restore|rollback)( .*)?$")

pytestmark = pytest.mark.real


def log_lines(box: Sandbox) -> list[str]:
    return box.log_file.read_text().splitlines()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_healthy_first_run_backs_up_then_second_run_writes_nothing(box: Sandbox) -> None:
    box.write_credentials({"claudeAiOauth": GOOD, "mcpOAuth": MCP})
    first = box.run("run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]))
    assert first.returncode == 0, first.stderr
    event = json.loads(first.stdout)
    assert (event["status"], event["action"], event["user"]) == ("OK", "backup", current_user())
    backup = json.loads(box.backup_file.read_text())
    assert backup["data"] == {"claudeAiOauth": GOOD} and backup["version"] == 1
    assert stat.S_IMODE(box.backup_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(box.backup_file.parent.stat().st_mode) == 0o700

    second = box.run("run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]))
    assert second.returncode == 0 and json.loads(second.stdout)["action"] == "none"
    assert json.loads(box.backup_file.read_text())["version"] == 1

    lines = log_lines(box)
    assert [LINE.match(line).group(1, 3) for line in lines] == [("OK", "backup"), ("OK", "none")]
    assert stat.S_IMODE(box.log_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(box.log_file.parent.stat().st_mode) == 0o700
    assert_no_secret(first.stdout, first.stderr, second.stdout, second.stderr, box.log_file.read_text())


def test_auth_failure_restores_backup_retries_and_stores_refreshed_copy(box: Sandbox) -> None:
    box.write_credentials({"claudeAiOauth": GOOD})
    assert box.run("run", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"])).returncode == 0  # backup GOOD
    box.write_credentials({"claudeAiOauth": BAD, "mcpOAuth": MCP})  # the local login went bad
    result = box.run("run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]), STUB_CLAUDE_REFRESH_TO=":".join(REFRESHED))
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout)
    assert (event["status"], event["action"], event["reason"]) == ("OK", "restore", "restored_latest_backup")
    local = json.loads(box.credentials.read_text())
    assert local["mcpOAuth"] == MCP
    assert local["claudeAiOauth"]["accessToken"] == REFRESHED[0]
    stored = json.loads(box.backup_file.read_text())
    assert stored["data"]["claudeAiOauth"]["accessToken"] == REFRESHED[0] and stored["version"] == 2
    assert LINE.match(log_lines(box)[-1]).group(1, 3) == ("OK", "restore")
    assert_no_secret(result.stdout, result.stderr, box.log_file.read_text())


def test_both_copies_rejected_rolls_back_exactly_and_exits_1(box: Sandbox) -> None:
    box.write_credentials({"claudeAiOauth": GOOD})
    assert box.run("run", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"])).returncode == 0
    before = box.write_credentials({"claudeAiOauth": BAD, "mcpOAuth": MCP})
    result = box.run("run", STUB_CLAUDE_ACCEPT="")  # nothing is accepted any more
    assert result.returncode == 1
    assert box.credentials.read_bytes() == before
    line = log_lines(box)[-1]
    assert LINE.match(line).group(1, 3) == ("FAIL", "rollback")
    assert "reason=auth_failed_after_restore" in line
    assert "claude auth login" in result.stderr
    assert_no_secret(result.stdout, result.stderr, box.log_file.read_text())


@pytest.mark.parametrize("mode", ["429", "500", "529"])
def test_unavailable_api_warns_75_and_writes_nothing(box: Sandbox, mode: str) -> None:
    before = box.write_credentials({"claudeAiOauth": BAD, "mcpOAuth": MCP})
    result = box.run("run", STUB_CLAUDE_MODE=mode)
    assert result.returncode == 75
    assert box.credentials.read_bytes() == before and not box.backup_file.exists()
    line = log_lines(box)[-1]
    assert LINE.match(line).group(1) == "WARN" and f"reason=http_{mode}" in line


@pytest.mark.parametrize(
    ("env", "code", "reason"),
    [
        pytest.param({"STUB_CLAUDE_MODE": "hang", "CLAUDE_AUTH_SYNC_INFERENCE__TIMEOUT": "1"}, 75, "timeout",
                     id="hanging-cli-killed-at-the-timeout-warns"),
        pytest.param({"CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": "{root}/no-such-claude"}, 78, "cli_missing",
                     id="missing-cli-is-a-configuration-failure"),
        pytest.param({"STUB_CLAUDE_MODE": "crash"}, 78, "cli_exit_139", id="crashing-cli-is-a-configuration-failure"),
    ],
)
def test_a_cli_that_cannot_answer_leaves_the_login_alone(box: Sandbox, env: dict[str, str], code: int,
                                                         reason: str) -> None:
    before = box.write_credentials({"claudeAiOauth": GOOD})
    result = box.run("run", **{k: v.format(root=box.root) for k, v in env.items()})
    assert result.returncode == code, result.stderr
    assert f"reason={reason} " in log_lines(box)[-1] + " "
    assert box.credentials.read_bytes() == before


def test_invalid_settings_exit_78_with_a_clear_message(box: Sandbox) -> None:
    result = box.run("run", CLAUDE_AUTH_SYNC_INFERENCE__TIMEOUT="soon")
    assert result.returncode == 78
    assert "inference.timeout" in result.stderr and "FAIL" in result.stderr


def test_vault_backend_without_token_file_is_78_never_a_silent_fallback(box: Sandbox) -> None:
    box.write_credentials({"claudeAiOauth": GOOD})
    result = box.run("run", "--json", CLAUDE_AUTH_SYNC_BACKEND="vault", VAULT_ADDR="http://127.0.0.1:9",
                     STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]))
    assert result.returncode == 78
    assert json.loads(result.stdout)["reason"] == "vault_token_missing"
    assert not box.backup_file.exists()


def test_corrupt_credentials_file_is_kept_and_restored_from_backup(box: Sandbox) -> None:
    box.write_credentials({"claudeAiOauth": GOOD})
    assert box.run("run", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"])).returncode == 0
    box.credentials.write_bytes(b'{"claudeAiOauth": {"accessToken": "sk-ant-oat01-BAD-secret-access", ')
    result = box.run("run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]))
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout)
    kept = event["details"]["kept_file"]
    assert kept.startswith(str(box.claude_dir / ".credentials.json.corrupt-"))
    from pathlib import Path

    assert Path(kept).read_bytes().startswith(b'{"claudeAiOauth"')
    assert stat.S_IMODE(Path(kept).stat().st_mode) == 0o600
    assert json.loads(box.credentials.read_text())["claudeAiOauth"] == GOOD
    assert "kept_file=" in log_lines(box)[-1]


def test_check_reports_the_last_run_in_monitoring_plugin_form(box: Sandbox) -> None:
    box.write_credentials({"claudeAiOauth": GOOD})
    box.run("run", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]))
    ok = box.run("check")
    assert ok.returncode == 0 and ok.stdout.startswith("CLAUDE-AUTH-SYNC OK - ")
    assert re.search(r"\| access_ttl=\d+s last_ok_age=\d+s;43200;86400 last_run_age=\d+s;;43200$", ok.stdout.strip())
    box.run("run", STUB_CLAUDE_MODE="529")
    warn = box.run("check")
    assert warn.returncode == 1 and "WARNING" in warn.stdout
    box.run("run", STUB_CLAUDE_ACCEPT="")
    crit = box.run("check")
    assert crit.returncode == 2 and "CRITICAL" in crit.stdout
    assert_no_secret(ok.stdout, warn.stdout, crit.stdout)


def test_sigterm_during_the_probe_kills_the_cli_group_and_leaves_no_lock(box: Sandbox) -> None:
    """systemd stops a hung run with SIGTERM: the agent exits at once, its claude child goes too."""
    import os
    import signal
    import subprocess
    import time

    from tests.support.cli import console_script

    box.write_credentials({"claudeAiOauth": GOOD})
    proc = subprocess.Popen([console_script(), "run"], env=box.env(STUB_CLAUDE_MODE="hang"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    stub_pids: list[int] = []
    while time.monotonic() < deadline and not stub_pids:
        out = subprocess.run(["pgrep", "-f", "stub_claude.py"], capture_output=True, text=True).stdout
        stub_pids = [int(p) for p in out.split() if int(p) != proc.pid]
        time.sleep(0.1)
    assert stub_pids, "the stub claude never started"
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)
    assert proc.returncode in (143, -signal.SIGTERM)
    time.sleep(0.5)
    for pid in stub_pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError("the claude child survived the agent's SIGTERM")
    assert not list(box.claude_dir.parent.glob("*.lock")) and not list(box.claude_dir.glob("*.lock"))
    assert json.loads(box.credentials.read_text())["claudeAiOauth"] == GOOD
    last = box.log_file.read_text().splitlines()[-1]  # the stop is on record, not silence
    assert " WARN " in last and "reason=interrupted" in last
