"""Issue 11, the agent as the user runs it: each defect against the installed ``claude-auth-sync``.

Real components: the console script in its own process, the real ``claude`` CLI against a loopback
Messages API where the item is about what Claude Code can parse or does, real OpenBao for the
Vault copy, real files, FIFOs and Claude Code's own lock protocol. The stub CLI stands in where the
item is about the agent's own decisions (it answers like the real CLI and can act as "another
process" at a precise moment).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.testing import oauth_object
from tests.support.cli import Sandbox, current_user, fp
from tests.support.vault_user import vault_box
from tests.support.fake_anthropic import FakeMessagesAPI
from tests.support.home import child_env
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

GOOD = oauth_object("sk-ant-oat01-HARD-good-access", "sk-ant-ort01-HARD-good-refresh")
API_ACCEPTED_TOKENS = [GOOD["accessToken"]]  # what the fake Messages API (the `api` fixture) accepts
BAD = oauth_object("sk-ant-oat01-HARD-bad-access", "sk-ant-ort01-HARD-bad-refresh")
REJECTED = oauth_object("sk-ant-oat01-HARD-rejected", "sk-ant-ort01-HARD-rejected")
FRESH = ("sk-ant-oat01-HARD-fresh-login", "sk-ant-ort01-HARD-fresh-login")
MCP = {"srv": {"accessToken": "mcp-HARD-secret"}}
SECRETS = [t for o in (GOOD, BAD, REJECTED) for t in (o["accessToken"], o["refreshToken"])] + [*FRESH, "mcp-HARD-secret"]
STATUS_LINE = re.compile(r"^(OK|WARN|FAIL) user=\S+ action=\w+ reason=\S+", re.MULTILINE)


def accept(*oauths: dict[str, Any]) -> dict[str, str]:
    return {"STUB_CLAUDE_ACCEPT": ",".join(fp(o["accessToken"]) for o in oauths)}


def event_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def backed_up(box: Sandbox, oauth: dict[str, Any]) -> None:
    """A healthy run backs ``oauth`` up to the file backend; then the test breaks the local login."""
    box.write_credentials({"claudeAiOauth": oauth, "mcpOAuth": MCP})
    assert box.run("run", **accept(oauth)).returncode == 0


# -- item 2: a rollback never overwrites a login written after the restore ---------------------


def test_login_written_during_the_retry_survives_and_is_backed_up(box: Sandbox) -> None:
    backed_up(box, REJECTED)
    box.write_credentials({"claudeAiOauth": BAD, "mcpOAuth": MCP})
    fresh = oauth_object(*FRESH)
    result = box.run("run", "--json", STUB_CLAUDE_ACCEPT=fp(FRESH[0]), STUB_CLAUDE_TRIGGER_FP=fp(REJECTED["accessToken"]),
                     STUB_CLAUDE_ON_TRIGGER=f"login:{FRESH[0]}:{FRESH[1]}")
    event = event_of(result)
    local = json.loads(box.credentials.read_text())
    assert local["claudeAiOauth"]["accessToken"] == FRESH[0], event
    assert local["mcpOAuth"] == MCP
    assert (event["status"], event["reason"]) == ("OK", "credentials_changed_concurrently")
    stored = json.loads(box.backup_file.read_text())
    assert stored["data"]["claudeAiOauth"]["accessToken"] == fresh["accessToken"]
    no_secret(result.stdout, result.stderr, box.log_file.read_text())


# -- item 4: a rollback that cannot be done now is reported truthfully and finished next run ---


def test_rollback_blocked_by_claude_codes_lock_is_reported_and_finished_by_the_next_run(box: Sandbox) -> None:
    backed_up(box, REJECTED)
    box.write_credentials({"claudeAiOauth": BAD, "mcpOAuth": MCP})
    before = box.credentials.read_bytes()
    lock = box.claude_dir / ".oauth_refresh.lock"
    result = box.run("run", "--json", CLAUDE_AUTH_SYNC_LOCK_WAIT_TIMEOUT="1", STUB_CLAUDE_TRIGGER_FP=fp(REJECTED["accessToken"]),
                     STUB_CLAUDE_ON_TRIGGER="lock")
    event = event_of(result)
    assert (event["status"], event["action"], event["reason"]) == ("FAIL", "restore", "auth_failed_after_restore_rollback_pending")
    assert result.returncode == 1
    assert json.loads(box.credentials.read_text())["claudeAiOauth"] == REJECTED  # what is on disk, as reported
    kept = Path(event["details"]["pre_restore_file"])
    assert kept.read_bytes() == before and stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert "action=restore" in box.log_file.read_text().splitlines()[-1]

    lock.rmdir()  # Claude Code let go of its lock
    second = event_of(box.run("run", "--json"))
    assert second["details"]["pending_restore"] == "rolled_back_failed_restore"  # probed first: it fails
    assert second["action"] == "rollback" and box.credentials.read_bytes() == before


# -- item 5: `claude auth logout` is respected -------------------------------------------------


def real_cli_env(box: Sandbox, api: FakeMessagesAPI) -> dict[str, str]:
    assert shutil.which("claude"), "the real claude CLI is required (scripts/dev/test.sh installs it)"
    return {"CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": "", "ANTHROPIC_BASE_URL": api.url,
            "CLAUDE_CODE_MAX_RETRIES": "0", "NO_PROXY": "127.0.0.1,localhost"}


@pytest.mark.parametrize("logout", ["file removed", "claudeAiOauth removed", "claudeAiOauth null"])
def test_a_logged_out_user_stays_logged_out_with_the_real_cli(box: Sandbox, api: FakeMessagesAPI, logout: str) -> None:
    env = real_cli_env(box, api)
    box.write_credentials({"claudeAiOauth": GOOD, "mcpOAuth": MCP})
    assert box.run("run", **env).returncode == 0  # backed up
    if logout == "file removed":
        box.credentials.unlink()
    else:
        box.write_credentials({"mcpOAuth": MCP, **({"claudeAiOauth": None} if logout.endswith("null") else {})})
    before = box.credentials.read_bytes() if box.credentials.exists() else None
    calls = len(api.messages_requests)
    result = box.run("run", "--json", **env)
    event = event_of(result)
    assert (result.returncode, event["status"], event["action"], event["reason"]) == (75, "WARN", "none", "not_logged_in")
    assert (box.credentials.read_bytes() if box.credentials.exists() else None) == before
    assert len(api.messages_requests) == calls  # not even an inference
    assert "log in" in box.run("run", **env).stderr
    check = box.run("check")
    assert check.returncode == 1 and "not logged in" in check.stdout


# -- item 6: overlapping runs --------------------------------------------------------------------


def test_a_second_run_waits_for_the_first_then_ends_warn(box: Sandbox) -> None:
    import fcntl

    backed_up(box, GOOD)
    state = box.log_file.parent
    fd = os.open(state / "run.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        result = box.run("run", "--json", CLAUDE_AUTH_SYNC_RUN_LOCK_WAIT="1", **accept(GOOD))
        assert time.monotonic() - started < 15
    finally:
        os.close(fd)
    event = event_of(result)
    assert (result.returncode, event["status"], event["reason"]) == (75, "WARN", "another_run_in_progress")


def test_overlapping_recoveries_never_report_a_spurious_fail(box: Sandbox) -> None:
    backed_up(box, GOOD)
    for _ in range(4):
        box.write_credentials({"claudeAiOauth": BAD, "mcpOAuth": MCP})
        results: list[subprocess.CompletedProcess[str]] = []
        threads = [threading.Thread(target=lambda: results.append(box.run("run", "--json", **accept(GOOD))))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        events = [event_of(r) for r in results]
        assert sorted(e["status"] for e in events) == ["OK", "OK"], [(e["status"], e["reason"]) for e in events]
        assert sorted(e["action"] for e in events) == ["none", "restore"]
        assert json.loads(box.credentials.read_text())["claudeAiOauth"] == GOOD


# -- item 7: hostile or odd local files ----------------------------------------------------------


def test_numbers_and_surrogates_in_other_keys_survive_a_restore_that_the_real_cli_then_uses(
    box: Sandbox, api: FakeMessagesAPI
) -> None:
    env = real_cli_env(box, api)
    backed_up_real = {"claudeAiOauth": GOOD, "mcpOAuth": MCP}
    box.write_credentials(backed_up_real)
    assert box.run("run", **env).returncode == 0
    odd = ('{"claudeAiOauth": %s, "mcpOAuth": {"srv": {"accessToken": "mcp-HARD-secret"}}, '
           '"huge": 1e400, "exact": 0.1000000000000000055511151231257827, "big": %s, "lone": "\\ud800x", '
           '"name": "J\\u00f6rg \\ud83d\\ude00"}') % (json.dumps(BAD), "9" * 2000)
    box.credentials.write_text(odd)
    os.chmod(box.credentials, 0o600)
    result = box.run("run", "--json", **env)
    event = event_of(result)
    assert (result.returncode, event["action"], event["details"]["retry_outcome"]) == (0, "restore", "authenticated")
    raw = box.credentials.read_bytes()
    parse = lambda data: json.loads(data, parse_float=Decimal, parse_constant=lambda c: pytest.fail(c))  # noqa: E731
    merged, original = parse(raw), parse(odd.encode())
    for key in ("mcpOAuth", "huge", "exact", "big", "lone", "name"):
        assert merged[key] == original[key], key
    node = subprocess.run(["node", "-e", "const d = JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8'));"
                           "process.stdout.write(String(d.huge) + ' ' + d.lone.length)", str(box.credentials)],
                          env=child_env(box.home), capture_output=True, text=True, check=True)
    assert node.stdout == "Infinity 2"  # what Claude Code itself reads: the same as from the original file


def test_absurdly_nested_json_is_refused_without_a_change_or_a_crash(box: Sandbox) -> None:
    backed_up(box, GOOD)
    deep = b'{"claudeAiOauth": ' + json.dumps(BAD).encode() + b', "mcpOAuth": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    box.credentials.write_bytes(deep)
    started = time.monotonic()
    result = box.run("run", "--json", **accept(GOOD))
    event = event_of(result)
    assert time.monotonic() - started < 20
    assert (result.returncode, event["reason"]) == (78, "credentials_unsupported")
    assert box.credentials.read_bytes() == deep


@pytest.mark.parametrize("where", ["credentials", "sync.log", "backup"])
def test_a_fifo_never_hangs_a_run_or_a_check(box: Sandbox, where: str) -> None:
    backed_up(box, GOOD)
    target = {"credentials": box.credentials, "sync.log": box.log_file, "backup": box.backup_file}[where]
    target.unlink()
    os.mkfifo(target, 0o600)
    started = time.monotonic()
    run = box.run("run", "--json", timeout=60, **accept(GOOD))
    check = box.run("check", timeout=60)
    assert time.monotonic() - started < 30
    assert stat.S_ISFIFO(os.lstat(target).st_mode)  # nothing replaced it
    if where == "sync.log":
        assert run.returncode == 0 and "sink 'file' failed" in run.stderr
        assert check.returncode == 3 and "not a regular file" in check.stdout
    else:
        assert run.returncode == 78 and "not a regular file" in event_of(run)["details"]["error"]


def test_a_relative_claude_config_dir_is_refused(box: Sandbox) -> None:
    backed_up(box, GOOD)
    before = box.credentials.read_bytes()
    result = box.run("run", "--json", CLAUDE_CONFIG_DIR="claude", **accept(GOOD))
    assert result.returncode == 78 and event_of(result)["reason"] == "invalid_settings"
    assert "absolute" in event_of(result)["details"]["error"]
    assert box.credentials.read_bytes() == before


def test_a_config_directory_others_can_write_is_refused(box: Sandbox) -> None:
    backed_up(box, GOOD)
    box.write_credentials({"claudeAiOauth": BAD, "mcpOAuth": MCP})
    before = box.credentials.read_bytes()
    os.chmod(box.claude_dir, 0o777)
    result = box.run("run", "--json", **accept(GOOD))
    assert (result.returncode, event_of(result)["reason"]) == (78, "config_dir_writable_by_others")
    assert box.credentials.read_bytes() == before


# -- item 8: settings files that cannot be read --------------------------------------------------


@pytest.mark.parametrize("kind", ["latin-1", "directory", "fifo", "world-writable"])
def test_a_bad_settings_file_is_exit_78_with_a_status_line_and_check_unknown(box: Sandbox, kind: str) -> None:
    backed_up(box, GOOD)
    config = box.root / "config" / "claude-auth-sync" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    if kind == "latin-1":
        config.write_bytes('backend = "fil\xe9"\n'.encode("latin-1"))
    elif kind == "directory":
        config.mkdir()
    elif kind == "fifo":
        os.mkfifo(config)
    else:
        config.write_text('backend = "file"\n')
        os.chmod(config, 0o666)
    run = box.run("run", timeout=30)
    assert run.returncode == 78, run.stderr
    assert STATUS_LINE.search(run.stderr) and "Traceback" not in run.stderr
    assert str(config) in run.stderr
    check = box.run("check", timeout=30)
    assert check.returncode == 3 and check.stdout.startswith("CLAUDE-AUTH-SYNC UNKNOWN")
    diagnose = box.run("diagnose", timeout=30)
    assert diagnose.returncode == 78 and "Traceback" not in diagnose.stderr and len(diagnose.stderr.splitlines()) == 1


# -- item 9: the Vault copy is checked with the local file's own model before a restore ----------


@pytest.mark.parametrize("stored", ["scopes a string", "5 MB token", "token with CRLF", "not an object"])
def test_an_unusable_vault_copy_is_never_restored(bao: OpenBaoServer, tmp_path: Path, stored: str) -> None:
    box, env = vault_box(bao, tmp_path)
    copy: Any = {
        "scopes a string": {**GOOD, "scopes": "user:inference"},
        "5 MB token": {**GOOD, "accessToken": "sk-ant-oat01-" + "x" * 5_000_000},
        "token with CRLF": {**GOOD, "accessToken": "sk-ant-oat01-a\r\nX-Injected: 1"},
        "not an object": "sk-ant-oat01-just-a-string",
    }[stored]
    bao.client().secrets.kv.v2.create_or_update_secret(
        mount_point="secret", path=f"workstation/claude-users/{current_user()}", secret={"claudeAiOauth": copy})
    box.write_credentials({"claudeAiOauth": BAD, "mcpOAuth": MCP})
    before = box.credentials.read_bytes()
    result = box.run("run", "--json", **env, **accept(GOOD))
    event = event_of(result)
    assert (result.returncode, event["reason"]) == (1, "auth_failed_backup_unusable"), event
    assert box.credentials.read_bytes() == before
    assert "x" * 64 not in result.stdout + result.stderr + box.log_file.read_text()


@pytest.mark.parametrize("damage", ["null", '"a string"', "[1, 2]", '{"accessToken": 5}'])
def test_a_damaged_file_backup_does_not_crash_a_healthy_run(box: Sandbox, damage: str) -> None:
    backed_up(box, GOOD)
    box.backup_file.write_text('{"version": 1, "data": {"claudeAiOauth": %s}}' % damage)
    result = box.run("run", "--json", **accept(GOOD))
    event = event_of(result)
    assert event["reason"] != "internal_error"
    assert result.returncode in (0, 78)
    if result.returncode == 78:
        assert event["reason"] == "store_damaged" and "move" in event["details"]["next_step"]
