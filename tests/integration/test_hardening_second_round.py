"""Defects a hostile tester found in the issue-11 fixes, each reproduced first (installed CLI, real
files, the stub CLI or the real ``claude`` against a loopback API, real OpenBao)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.testing import oauth_object
from tests.support.cli import Sandbox, current_user, fp
from tests.support.vault_user import provision_token_file
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

GOOD = oauth_object("sk-ant-oat01-ROUND2-good", "sk-ant-ort01-ROUND2-good")
BAD = oauth_object("sk-ant-oat01-ROUND2-bad", "sk-ant-ort01-ROUND2-bad")


def accept(*oauths: dict[str, Any]) -> dict[str, str]:
    return {"STUB_CLAUDE_ACCEPT": ",".join(fp(o["accessToken"]) for o in oauths)}


def event_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def backed_up(box: Sandbox, oauth: dict[str, Any]) -> None:
    box.write_credentials({"claudeAiOauth": oauth})
    assert box.run("run", **accept(oauth)).returncode == 0


@pytest.mark.parametrize("key", ["expiresAt", "refreshTokenExpiresAt"])
def test_an_absurd_expiry_never_crashes_run_check_or_diagnose(box: Sandbox, key: str) -> None:
    """``1`` followed by 400 zeros: Claude Code reads Infinity; the agent once died of OverflowError."""
    backed_up(box, GOOD)
    huge = "1" + "0" * 400
    box.credentials.write_text(json.dumps({"claudeAiOauth": GOOD}).replace(
        '"expiresAt": 4102444800000', f'"expiresAt": 4102444800000, "{key}": {huge}' if key != "expiresAt"
        else f'"expiresAt": {huge}'))
    run = box.run("run", "--json", **accept(GOOD))
    assert event_of(run)["reason"] != "internal_error", run.stdout
    assert run.returncode in (0, 75)
    check = box.run("check")
    assert check.returncode in (0, 1, 2, 3) and check.stdout.startswith("CLAUDE-AUTH-SYNC")
    diagnose = box.run("diagnose", "--json")
    assert "OverflowError" not in diagnose.stdout + diagnose.stderr


def test_a_compact_file_stays_compact_and_readable_after_a_restore(box: Sandbox) -> None:
    """A compact 700 KB file once grew past the 1 MiB the agent reads back: stuck at 78, no rollback."""
    backed_up(box, GOOD)
    filler = [0] * 350_000
    box.credentials.write_text(json.dumps({"claudeAiOauth": BAD, "other": filler}, separators=(",", ":")))
    os.chmod(box.credentials, 0o600)
    run = box.run("run", "--json", **accept(GOOD))
    event = event_of(run)
    assert (run.returncode, event["action"]) == (0, "restore"), event
    raw = box.credentials.read_bytes()
    assert b"\n" not in raw and json.loads(raw)["other"] == filler
    assert box.run("check").returncode == 0


def test_a_merge_that_would_outgrow_the_limit_changes_nothing(box: Sandbox) -> None:
    backed_up(box, GOOD)
    pretty = json.dumps({"claudeAiOauth": BAD, "other": ["x"] * 150_000}, indent=2)  # ~1 MB, pretty
    box.credentials.write_text(pretty)
    os.chmod(box.credentials, 0o600)
    run = box.run("run", "--json", **accept(GOOD))
    if run.returncode != 0:
        assert event_of(run)["reason"] == "credentials_unsupported"
        assert box.credentials.read_text() == pretty
    else:
        assert len(box.credentials.read_bytes()) <= 1 << 20


def test_a_stray_latin1_byte_in_another_key_is_read_as_claude_code_reads_it(box: Sandbox) -> None:
    """Node decodes invalid UTF-8 as U+FFFD and authenticates; the agent once called it not_json and,
    on a restore, moved mcpOAuth into a .corrupt copy."""
    backed_up(box, GOOD)
    raw = b'{"claudeAiOauth": ' + json.dumps(BAD).encode() + b', "mcpOAuth": {"srv": {"note": "caf\xe9"}}}'
    box.credentials.write_bytes(raw)
    run = box.run("run", "--json", **accept(GOOD))
    assert (run.returncode, event_of(run)["action"]) == (0, "restore"), run.stdout
    document = json.loads(box.credentials.read_bytes())
    assert document["mcpOAuth"] == {"srv": {"note": "caf\ufffd"}}
    assert not list(box.claude_dir.glob(".credentials.json.corrupt-*"))


def test_runs_with_different_state_directories_are_serialised_on_the_config_dir(box: Sandbox) -> None:
    """The unit's run and a shell's run with its own XDG_STATE_HOME: one credentials file, one run."""
    backed_up(box, GOOD)
    import fcntl

    fd = os.open(box.claude_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a run holding the other state dir's lock would
        other_state = box.root / "other-state"
        result = box.run("run", "--json", XDG_STATE_HOME=str(other_state), CLAUDE_AUTH_SYNC_RUN_LOCK_WAIT="1",
                         **accept(GOOD))
    finally:
        os.close(fd)
    assert (result.returncode, event_of(result)["reason"]) == (75, "another_run_in_progress")


def test_overlapping_runs_with_two_state_dirs_never_fail_a_good_backup(box: Sandbox) -> None:
    backed_up(box, GOOD)
    for _ in range(3):
        box.write_credentials({"claudeAiOauth": BAD})
        results: list[subprocess.CompletedProcess[str]] = []
        shared_backup = {"CLAUDE_AUTH_SYNC_FILE__DIRECTORY": str(box.backup_file.parent)}
        envs = [{"XDG_STATE_HOME": str(box.root / "state")}, {"XDG_STATE_HOME": str(box.root / "state-b")}]
        threads = [threading.Thread(target=lambda e=e: results.append(
            box.run("run", "--json", **e, **shared_backup, **accept(GOOD)))) for e in envs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(event_of(r)["status"] != "FAIL" for r in results), [event_of(r)["reason"] for r in results]
        assert json.loads(box.credentials.read_text())["claudeAiOauth"] == GOOD


def test_diagnose_json_prints_one_object_even_when_settings_do_not_load(box: Sandbox) -> None:
    result = box.run("diagnose", "--json", CLAUDE_AUTH_SYNC_LOCK_WAIT_TIMEOUT="-5")
    assert result.returncode == 78
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["checks"][0]["group"] == "settings"
    assert "lock_wait_timeout" in data["checks"][0]["detail"]


def test_a_vault_copy_nested_thousands_deep_is_a_clean_refusal(bao: OpenBaoServer, tmp_path: Path) -> None:
    user = current_user()
    box = Sandbox(tmp_path)
    provision_token_file(bao, box)
    deep: Any = []
    for _ in range(3000):
        deep = [deep]
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        bao.client().secrets.kv.v2.create_or_update_secret(
            mount_point="secret", path=f"workstation/claude-users/{user}", secret={"claudeAiOauth": {"x": deep}})
    finally:
        sys.setrecursionlimit(limit)
    box.write_credentials({"claudeAiOauth": GOOD})
    started = time.monotonic()
    run = box.run("run", "--json", CLAUDE_AUTH_SYNC_BACKEND="vault", CLAUDE_AUTH_SYNC_VAULT__ADDR=bao.addr, **accept(GOOD))
    event = event_of(run)
    assert time.monotonic() - started < 30
    assert event["reason"] == "vault_answer_unreadable" and run.returncode == 78, event
    assert "next_step" in event["details"]
