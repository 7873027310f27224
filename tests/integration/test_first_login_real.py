"""Issue 14 item 2, with real components: a roster user who never logged in is WARN 75
``awaiting_first_login`` (not ``not_logged_in``, not FAIL) from the installed CLI, the REAL ``claude``
CLI against the loopback Messages API, a REAL journald (private namespace), the metrics textfile
read by a REAL node_exporter, and a REAL OpenBao whose audit log shows what the waiting costs:
one token renewal, no read of the stored login. The first login ends the waiting; a later
``claude auth logout`` is ``not_logged_in``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.testing import oauth_object
from tests.integration.test_hardening_agent import event_of, real_cli_env
from tests.integration.test_sink_metrics_node_exporter import node_exporter, scrape, textfile_dir, value  # noqa: F401
from tests.support.cli import Sandbox, current_user
from tests.support.fake_anthropic import FakeMessagesAPI
from tests.support.journald import JournaldNamespace
from tests.support.openbao import OpenBaoServer
from tests.support.vault_user import vault_box

pytestmark = pytest.mark.real

GOOD = oauth_object("sk-ant-oat01-FIRST-good-access", "sk-ant-ort01-FIRST-good-refresh")
API_ACCEPTED_TOKENS = [GOOD["accessToken"]]
MCP = {"srv": {"accessToken": "mcp-FIRST-secret"}}
SECRETS = [GOOD["accessToken"], GOOD["refreshToken"], "mcp-FIRST-secret"]
AWAITING_METRIC = "claude_auth_sync_awaiting_first_login_since_timestamp_seconds"


def sinks_env(journald: JournaldNamespace, textfiles: Path) -> dict[str, str]:
    return {"CLAUDE_AUTH_SYNC_SINKS": '["file","journald","metrics"]',
            "CLAUDE_AUTH_SYNC_JOURNALD__SOCKET": journald.socket_path,
            "CLAUDE_AUTH_SYNC_METRICS__DIRECTORY": str(textfiles)}


def last_entry(journald: JournaldNamespace, count: int) -> dict[str, Any]:
    return journald.read(min_entries=count)[-1]


def no_secret(*texts: str) -> None:
    for text in texts:
        assert not any(secret in text for secret in SECRETS)


def test_never_logged_in_then_first_login_then_logout_with_the_real_cli_journal_and_node_exporter(
        box: Sandbox, api: FakeMessagesAPI, journald: JournaldNamespace, textfile_dir: Path,  # noqa: F811
        node_exporter: str) -> None:  # noqa: F811
    env = {**real_cli_env(box, api), **sinks_env(journald, textfile_dir)}
    user = current_user()
    started = int(time.time())

    # 1. A roster user's first runs: no credentials file at all.
    first = box.run("run", "--json", **env)
    event = event_of(first)
    assert (first.returncode, event["status"], event["action"], event["reason"]) == (75, "WARN", "none", "awaiting_first_login")
    since = event["details"]["awaiting_first_login_since"]
    assert started - 1 <= since <= time.time()
    assert api.messages_requests == []  # nothing probed: there is nothing to probe
    assert "never logged in" in box.run("run", **env).stderr  # the one-line next step says so (second run)
    entry = last_entry(journald, 2)
    assert (entry["PRIORITY"], entry["CAS_STATUS"], entry["CAS_REASON"], entry["CAS_EXIT_CODE"]) == (
        "4", "WARN", "awaiting_first_login", "75")
    assert entry["CAS_AWAITING_FIRST_LOGIN_SINCE"] == str(since)  # unchanged by the second run
    assert "reason=awaiting_first_login" in box.log_file.read_text().splitlines()[-1]
    series = scrape(node_exporter)
    assert value(series, "node_textfile_scrape_error") == 0
    assert value(series, AWAITING_METRIC, user=user) == since
    assert value(series, "claude_auth_sync_last_status", user=user, status="WARN") == 1

    # 2. The first login: probed with the real CLI, backed up, OK; the waiting is over.
    box.write_credentials({"claudeAiOauth": GOOD, "mcpOAuth": MCP})
    ok = box.run("run", "--json", **env)
    assert (ok.returncode, event_of(ok)["status"]) == (0, "OK"), ok.stderr
    assert "awaiting_first_login_since" not in event_of(ok)["details"]
    assert len(api.messages_requests) == 1
    assert value(scrape(node_exporter), AWAITING_METRIC, user=user) is None

    # 3. claude auth logout: a logout, not a user who never logged in.
    box.write_credentials({"mcpOAuth": MCP})
    out = box.run("run", "--json", **env)
    event = event_of(out)
    assert (out.returncode, event["status"], event["reason"]) == (75, "WARN", "not_logged_in")
    assert "awaiting_first_login_since" not in event["details"]
    assert last_entry(journald, 4)["CAS_REASON"] == "not_logged_in"
    assert value(scrape(node_exporter), AWAITING_METRIC, user=user) is None
    assert len(api.messages_requests) == 1  # a logout is never probed either

    state = box.root / "state" / "claude-auth-sync" / "login-history.json"
    record = json.loads(state.read_text())
    assert int(record["awaiting_since"]) == since and since <= record["login_seen_at"] <= time.time()
    no_secret(first.stdout, first.stderr, ok.stdout, out.stdout, box.log_file.read_text(), state.read_text(),
              json.dumps(journald.read(min_entries=4)),
              *(p.read_text() for p in textfile_dir.glob("*.prom")))


def test_waiting_for_the_first_login_costs_one_token_renewal_and_no_read_of_the_stored_login(
        bao: OpenBaoServer, tmp_path: Path) -> None:
    box, env = vault_box(bao, tmp_path)
    mark = bao.audit_mark()
    result = box.run("run", "--json", **env)
    event = event_of(result)
    assert (result.returncode, event["reason"]) == (75, "awaiting_first_login"), result.stderr
    assert isinstance(event["details"]["store_ttl_s"], int)  # the token was renewed, so it never expires unused
    paths = [(r["path"], r["operation"]) for r in bao.requests_since(mark)]
    assert paths == [("auth/token/renew-self", "update")], paths
    assert not any("claude-users" in path for path, _ in paths)
