"""The inference probe and the whole cycle with the REAL ``claude`` CLI against a loopback fake API.

Nothing leaves loopback: ``ANTHROPIC_BASE_URL`` points the CLI at :class:`FakeMessagesAPI`, which
accepts only the tokens a test names. Every classification of the contract is exercised.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from claude_auth_sync.model import ProbeOutcome
from claude_auth_sync.plugins.probe_inference import InferenceSettings
from claude_auth_sync.plugins.probe_inference.probe import InferenceProbe
from tests.support.claude_cli import cli_env, write_credentials
from tests.support.cli import Sandbox
from tests.support.fake_anthropic import FakeMessagesAPI, token_fingerprint

pytestmark = pytest.mark.real

GOOD = "sk-ant-oat01-realcli-GOOD-token"
API_ACCEPTED_TOKENS = [GOOD]  # what the fake Messages API (the `api` fixture) accepts
BAD = "sk-ant-oat01-realcli-BAD-token"
REFRESH = "sk-ant-ort01-realcli-refresh"
A, F, U, B = ProbeOutcome.AUTHENTICATED, ProbeOutcome.AUTH_FAILED, ProbeOutcome.UNAVAILABLE, ProbeOutcome.BROKEN


@pytest.fixture(scope="module")
def claude_bin() -> str:
    path = shutil.which("claude")
    assert path, "the real claude CLI is required (npm @anthropic-ai/claude-code; scripts/dev/test.sh installs it)"
    return path


def probe_for(tmp_path: Path, api: FakeMessagesAPI, token: str, *, timeout: float = 60, **env: str) -> InferenceProbe:
    config = tmp_path / "claude"
    write_credentials(config, token, REFRESH, extra_top_level={"mcpOAuth": {"srv": {"accessToken": "mcp-secret"}}})
    environ = {**cli_env(config, api.url), **env}
    return InferenceProbe(InferenceSettings(timeout=timeout), config, environ)


def test_accepted_token_is_authenticated(tmp_path, api, claude_bin) -> None:
    result = probe_for(tmp_path, api, GOOD).run()
    assert (result.outcome, result.reason) == (A, "ok")
    assert result.cli_version == "2.1.332"
    assert [r.token_fingerprint for r in api.messages_requests] == [token_fingerprint(GOOD)]


def test_rejected_token_is_authentication_failed(tmp_path, api, claude_bin) -> None:
    result = probe_for(tmp_path, api, BAD).run()
    assert (result.outcome, result.http_status) == (F, 401)


@pytest.mark.parametrize(("mode", "outcome", "reason"), [
    ("401", F, "http_401"), ("403", F, "http_403"),
    ("429", U, "http_429"), ("500", U, "http_500"), ("529", U, "http_529"),
    ("drop", U, "api_unreachable"),
])
def test_server_statuses_are_classified(tmp_path, api, claude_bin, mode, outcome, reason) -> None:
    api.mode = mode
    result = probe_for(tmp_path, api, GOOD).run()
    assert (result.outcome, result.reason) == (outcome, reason)


def test_slower_than_the_timeout_is_unavailable_and_killed(tmp_path, api, claude_bin) -> None:
    api.mode = "slow"
    api.slow_seconds = 30
    result = probe_for(tmp_path, api, GOOD, timeout=4).run()
    assert (result.outcome, result.reason) == (U, "timeout")
    assert result.duration_s < 15


def test_missing_binary_is_broken(tmp_path, api) -> None:
    probe = probe_for(tmp_path, api, GOOD)
    probe.environ["PATH"] = str(tmp_path / "empty")
    assert probe.run().outcome == B


def test_oauth_token_variable_cannot_rescue_a_rejected_file_token(tmp_path, api, claude_bin) -> None:
    """CLAUDE_CODE_OAUTH_TOKEN would outrank the file: the probe must strip it (and say so)."""
    result = probe_for(tmp_path, api, BAD, CLAUDE_CODE_OAUTH_TOKEN=GOOD, ANTHROPIC_AUTH_TOKEN=GOOD).run()
    assert result.outcome == F
    assert result.warnings == ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN")
    assert token_fingerprint(GOOD) not in {r.token_fingerprint for r in api.requests}


CREDENTIAL_LIKE = {
    "BAO_TOKEN": "hvs.probe-env-bao", "VAULT_TOKEN": "hvs.probe-env-vault",
    "CLAUDE_CODE_SESSION_ACCESS_TOKEN": "probe-env-session", "ANTHROPIC_IDENTITY_TOKEN": "probe-env-identity",
    "ANTHROPIC_FOUNDRY_API_KEY": "probe-env-foundry", "CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR": "0",
    "GITHUB_TOKEN": "probe-env-github", "AWS_SECRET_ACCESS_KEY": "probe-env-aws", "PGPASSWORD": "probe-env-pg",
    "ANTHROPIC_CUSTOM_HEADERS": "X-Probe-Env: probe-env-header", "NODE_TLS_REJECT_UNAUTHORIZED": "0",
}


def test_real_cli_process_gets_no_credential_like_variable(tmp_path, api, claude_bin) -> None:
    """The environment the real claude process starts with (seen by a wrapper that records the
    names, then execs the CLI unchanged) holds none of the credential-like variables, and the
    probe still authenticates through the allow-listed base URL, HOME and locale."""
    names_file = tmp_path / "claude-env-names"
    wrapper = tmp_path / "claude-wrapper"
    wrapper.write_text(f"#!/bin/sh\nenv -0 | tr '\\0\\n' '\\n ' | cut -d= -f1 > {names_file}\nexec {claude_bin} \"$@\"\n")
    wrapper.chmod(0o755)
    probe = probe_for(tmp_path, api, GOOD, **CREDENTIAL_LIKE)
    probe.settings = InferenceSettings(claude_bin=str(wrapper), timeout=60)
    result = probe.run()
    assert (result.outcome, result.reason) == (A, "ok")
    names = set(names_file.read_text().split())
    assert sorted(set(CREDENTIAL_LIKE) & names) == []
    assert {"ANTHROPIC_BASE_URL", "HOME", "PATH", "CLAUDE_CONFIG_DIR", "XDG_CONFIG_HOME"} <= names
    assert [r.token_fingerprint for r in api.messages_requests] == [token_fingerprint(GOOD)]


# -- the whole cycle through the installed CLI, with the real claude as the default probe ------


def run_env(box: Sandbox, api: FakeMessagesAPI) -> dict[str, str]:
    home = box.root / "home"
    home.mkdir(exist_ok=True)
    return {"CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": "", "ANTHROPIC_BASE_URL": api.url, "HOME": str(home),
            "CLAUDE_CODE_MAX_RETRIES": "0", "NO_PROXY": "127.0.0.1,localhost"}


def test_cycle_restores_the_backup_when_the_real_cli_gets_401(tmp_path, api, claude_bin) -> None:
    box = Sandbox(tmp_path)
    mcp = {"srv": {"accessToken": "mcp-secret-value"}}
    write_credentials(box.claude_dir, GOOD, REFRESH, extra_top_level={"mcpOAuth": mcp})
    env = run_env(box, api)
    first = box.run("run", "--json", **env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["action"] == "backup"
    assert json.loads(first.stdout)["details"]["cli_version"] == "2.1.332"

    write_credentials(box.claude_dir, BAD, "sk-ant-ort01-other", extra_top_level={"mcpOAuth": mcp})
    second = box.run("run", "--json", **env)
    assert second.returncode == 0, second.stderr
    event = json.loads(second.stdout)
    assert (event["action"], event["details"]["probe_outcome"], event["details"]["retry_outcome"]) == (
        "restore", "auth_failed", "authenticated")
    local = json.loads(box.credentials.read_text())
    assert local["claudeAiOauth"]["accessToken"] == GOOD and local["mcpOAuth"] == mcp
    for secret in (GOOD, BAD, REFRESH, "mcp-secret-value"):
        assert secret not in first.stdout + first.stderr + second.stdout + second.stderr + box.log_file.read_text()


def test_cycle_fails_1_and_rolls_back_when_both_copies_are_rejected(tmp_path, api, claude_bin) -> None:
    box = Sandbox(tmp_path)
    write_credentials(box.claude_dir, GOOD, REFRESH)
    env = run_env(box, api)
    assert box.run("run", **env).returncode == 0
    api.accepted_tokens.clear()  # the organisation revoked everything
    before = box.credentials.read_bytes()
    result = box.run("run", **env)
    assert result.returncode == 1
    assert box.credentials.read_bytes() == before
    assert "FAIL" in box.log_file.read_text().splitlines()[-1]


def test_cycle_warns_75_and_restores_nothing_when_the_api_is_overloaded(tmp_path, api, claude_bin) -> None:
    box = Sandbox(tmp_path)
    write_credentials(box.claude_dir, BAD, REFRESH)
    before = box.credentials.read_bytes()
    api.mode = "529"
    result = box.run("run", **run_env(box, api))
    assert result.returncode == 75
    assert box.credentials.read_bytes() == before
