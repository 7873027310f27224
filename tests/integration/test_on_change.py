"""Issue 13, items 2 and 7, through the installed agent and a real OpenBao: a run after a rewrite
that changed nothing makes no inference and no Vault request; a Vault outage still probes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.testing import oauth_object
from tests.support.cli import Sandbox, current_user, fp
from tests.support.vault_user import vault_box as provisioned
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

GOOD = oauth_object("sk-ant-oat01-ONCHANGE-good", "sk-ant-ort01-ONCHANGE-good")


def vault_box(bao: OpenBaoServer, tmp_path: Path) -> tuple[Sandbox, dict[str, str]]:
    box, env = provisioned(bao, tmp_path)
    return box, {**env, "STUB_CLAUDE_ACCEPT": fp(GOOD["accessToken"])}


def event_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def test_a_rewrite_that_changed_nothing_costs_no_inference_and_no_vault_request(bao: OpenBaoServer, tmp_path: Path) -> None:
    box, env = vault_box(bao, tmp_path)
    box.write_credentials({"claudeAiOauth": GOOD, "mcpOAuth": {"s": {"accessToken": "mcp-x"}}})
    first = event_of(box.run("run", "--json", **env))
    assert (first["status"], first["action"]) == ("OK", "backup")

    box.credentials.write_text(json.dumps({"mcpOAuth": {"s": {"accessToken": "mcp-x"}}, "claudeAiOauth": GOOD}, indent=2))
    mark = bao.audit_mark()
    second = box.run("run", "--json", TRIGGER_UNIT=f"claude-auth-sync@{current_user()}.path", **env)
    event = event_of(second)
    assert (second.returncode, event["status"], event["reason"]) == (0, "OK", "unchanged_since_last_check")
    assert "probe" not in event["timings_ms"] and "renew" not in event["timings_ms"]
    assert bao.requests_since(mark) == []
    line = box.log_file.read_text().splitlines()[-1]
    assert "reason=unchanged_since_last_check" in line
    record = (box.log_file.parent / "last-check.json").read_text()
    assert GOOD["accessToken"] not in record and GOOD["refreshToken"] not in record

    forced = event_of(box.run("run", "--json", "--if-changed", CLAUDE_AUTH_SYNC_UNCHANGED_WINDOW="0", **env))
    assert "probe" in forced["timings_ms"]  # the window can be switched off
    timer = event_of(box.run("run", "--json", TRIGGER_UNIT=f"claude-auth-sync@{current_user()}.timer", **env))
    assert "probe" in timer["timings_ms"]  # a timer (or a person) always gets a real inference


def test_a_vault_outage_still_probes_and_says_so(tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    box.write_credentials({"claudeAiOauth": GOOD})
    token_file = box.root / "config" / "claude-auth-sync" / "vault-token"
    token_file.parent.mkdir(mode=0o700, parents=True)
    token_file.write_text("hvs.FAKE-outage-token\n")
    os.chmod(token_file, 0o600)
    result = box.run("run", "--json", CLAUDE_AUTH_SYNC_BACKEND="vault", CLAUDE_AUTH_SYNC_VAULT__ADDR="http://127.0.0.1:9",
                     STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]))
    event = event_of(result)
    assert (result.returncode, event["status"], event["reason"]) == (75, "WARN", "vault_unreachable")
    assert event["details"]["probe_outcome"] == "authenticated"
    assert "probe_outcome=authenticated" in box.log_file.read_text()
