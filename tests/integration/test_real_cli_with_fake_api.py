"""Pin what the real Claude Code CLI (2.1.332) does against a loopback Messages API.

The probe classifier relies on these observations:

* every outcome below prints ONE JSON object on stdout with ``"type": "result"``; stderr is
  empty; ``subtype`` is ``"success"`` even for API errors -- ``is_error`` is what tells;
* exit code 0 <=> authenticated reply; API/auth/connection errors exit 1;
* ``api_error_status`` / ``api_error_type`` carry the HTTP status / Anthropic error type,
  and are ``null`` for connection failures, timeouts and "not logged in";
* with ``CLAUDE_CODE_MAX_RETRIES=0`` nothing is retried except a 401, which costs one
  (failing, off-loopback) token refresh attempt and one resend.

No test here reaches anything but 127.0.0.1.  Tokens are fake.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.claude_cli import (
    PROBE_ARGV,
    CliRun,
    claude_path,
    cli_env,
    run_cli,
    write_credentials,
)
from tests.support.fake_anthropic import FakeMessagesAPI, token_fingerprint

GOOD = "sk-ant-oat01-test-good"
API_ACCEPTED_TOKENS = {GOOD}  # what the fake Messages API (the `api` fixture) accepts
OTHER = "sk-ant-oat01-test-other"
ENV_TOKEN = "sk-ant-oat01-test-env"
REFRESH = "sk-ant-ort01-test-refresh"

#: Upper bound for one probe with retries disabled (observed: 0.4-1.3 s).
FAST_S = 20.0

def _require_cli() -> None:
    assert claude_path() is not None, "the real claude CLI is required (scripts/dev/test.sh installs it)"


needs_cli = pytest.mark.usefixtures("require_cli")


@pytest.fixture
def require_cli() -> None:
    _require_cli()


@pytest.fixture
def config_dir(config_dir: Path) -> Path:
    """The shared empty config dir (tests/conftest.py), logged in with ``GOOD``."""
    write_credentials(config_dir, GOOD, REFRESH)
    return config_dir


def _summary(run: CliRun) -> dict[str, object]:
    assert run.result is not None, f"stdout is not JSON: {run.stdout[:300]!r} stderr={run.stderr[:300]!r}"
    return {k: run.result.get(k) for k in ("type", "subtype", "is_error", "api_error_status", "api_error_type", "result")}


def _assert_api_error(run: CliRun, status: int, err_type: str) -> str:
    summary = _summary(run)
    assert run.returncode == 1, summary
    assert summary["type"] == "result"
    assert summary["subtype"] == "success"  # sic: the CLI says "success" for API errors
    assert summary["is_error"] is True
    assert summary["api_error_status"] == status
    assert summary["api_error_type"] == err_type
    assert run.result is not None and run.result.get("terminal_reason") == "api_error"
    assert run.stderr == ""
    assert run.wall_s < FAST_S
    return str(summary["result"])


def _assert_unreachable(run: CliRun) -> str:
    summary = _summary(run)
    assert run.returncode == 1, summary
    assert summary["type"] == "result"
    assert summary["is_error"] is True
    assert summary["api_error_status"] is None
    assert run.result is not None and run.result.get("terminal_reason") == "api_error"
    assert run.wall_s < FAST_S
    return str(summary["result"])


# --------------------------------------------------------------------------------------
# The fake itself (no CLI involved)
# --------------------------------------------------------------------------------------


def _post(url: str, body: dict[str, object], token: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class TestFakeItself:
    def test_plain_json_answer_and_fingerprint_only(self, api: FakeMessagesAPI) -> None:
        status, _, body = _post(api.url + "/v1/messages", {"model": "claude-x", "max_tokens": 5}, GOOD)
        assert status == 200
        msg = json.loads(body)
        assert msg["type"] == "message" and msg["content"][0]["text"] == "ok" and msg["model"] == "claude-x"
        (rec,) = api.requests
        assert rec.token_fingerprint == token_fingerprint(GOOD) and rec.auth_scheme == "bearer"
        assert rec.model == "claude-x" and rec.stream is None
        assert GOOD not in repr(api.requests)

    def test_sse_answer(self, api: FakeMessagesAPI) -> None:
        status, headers, body = _post(api.url + "/v1/messages", {"model": "m", "stream": True}, GOOD)
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        events = [line.split(": ", 1)[1] for line in body.decode().splitlines() if line.startswith("event: ")]
        assert events == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]

    def test_unaccepted_token_and_forced_errors(self, api: FakeMessagesAPI) -> None:
        status, _, body = _post(api.url + "/v1/messages", {"model": "m"}, OTHER)
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
        for mode, err_type in [("403", "permission_error"), ("429", "rate_limit_error"), ("500", "api_error"), ("529", "overloaded_error")]:
            api.mode = mode
            status, headers, body = _post(api.url + "/v1/messages", {"model": "m"}, GOOD)
            assert status == int(mode)
            assert json.loads(body)["type"] == "error" and json.loads(body)["error"]["type"] == err_type
            if mode == "429":
                assert headers.get("retry-after") == "1"
        api.mode = "ok"
        status, _, body = _post(api.url + "/v1/other", {}, GOOD)
        assert status == 404
        with pytest.raises(ValueError):
            api.mode = "bogus"

    def test_drop_and_slow(self, api: FakeMessagesAPI) -> None:
        api.mode = "drop"
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            _post(api.url + "/v1/messages", {"model": "m"}, GOOD)
        api.mode = "slow"
        api.slow_seconds = 0.5
        started = time.monotonic()
        status, _, _ = _post(api.url + "/v1/messages", {"model": "m"}, GOOD)
        assert status == 200 and time.monotonic() - started >= 0.5


# --------------------------------------------------------------------------------------
# The real CLI
# --------------------------------------------------------------------------------------

@pytest.mark.real
@needs_cli
class TestRealCli:
    def test_success(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        run = run_cli(cli_env(config_dir, api.url))
        summary = _summary(run)
        assert run.returncode == 0, summary
        assert summary == {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "api_error_status": None,
            "api_error_type": None,
            "result": "ok",
        }
        assert run.stderr == ""
        assert run.wall_s < FAST_S
        # Exactly one call, and only through the base URL: POST /v1/messages?beta=true, SSE,
        # OAuth bearer with the oauth beta flag, "haiku" resolved to a full haiku model id.
        (req,) = api.requests
        assert req.method == "POST" and req.path == "/v1/messages?beta=true"
        assert req.stream is True
        assert req.auth_scheme == "bearer"
        assert req.token_fingerprint == token_fingerprint(GOOD)
        assert req.anthropic_beta is not None and "oauth-2025-04-20" in req.anthropic_beta.split(",")
        assert req.model is not None and "haiku" in req.model

    def test_probe_argv_shape(self) -> None:
        assert PROBE_ARGV[0] == "-p" and PROBE_ARGV[-1] == "ok"
        assert PROBE_ARGV[PROBE_ARGV.index("--output-format") + 1] == "json"
        assert PROBE_ARGV[PROBE_ARGV.index("--model") + 1] == "haiku"

    def test_rejected_token_gives_401(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        api.accepted_tokens = {OTHER}
        text = _assert_api_error(run_cli(cli_env(config_dir, api.url)), 401, "authentication_error")
        assert text == "Failed to authenticate. API Error: 401 Invalid bearer token"
        # one refresh attempt (to platform.claude.com, fails offline) then one resend
        assert len(api.messages_requests) == 2

    def test_forced_401(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        api.mode = "401"
        text = _assert_api_error(run_cli(cli_env(config_dir, api.url)), 401, "authentication_error")
        assert text.startswith("Failed to authenticate")

    def test_401_leaves_credentials_file_alone(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        creds = config_dir / ".credentials.json"
        before = creds.read_bytes()
        api.mode = "401"
        run_cli(cli_env(config_dir, api.url))
        assert creds.read_bytes() == before

    def test_forced_403(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        api.mode = "403"
        text = _assert_api_error(run_cli(cli_env(config_dir, api.url)), 403, "permission_error")
        assert text == "Failed to authenticate. API Error: 403 Request not allowed"
        assert len(api.messages_requests) == 1

    @pytest.mark.parametrize(
        ("mode", "err_type", "prefix"),
        [
            ("429", "rate_limit_error", "API Error: Server is temporarily limiting requests"),
            ("500", "api_error", "API Error: 500 Internal server error."),
            ("529", "overloaded_error", "API Error: 529 Overloaded."),
        ],
    )
    def test_unavailable_statuses_not_retried(
        self, api: FakeMessagesAPI, config_dir: Path, mode: str, err_type: str, prefix: str
    ) -> None:
        api.mode = mode
        text = _assert_api_error(run_cli(cli_env(config_dir, api.url)), int(mode), err_type)
        assert text.startswith(prefix)
        assert len(api.messages_requests) == 1  # CLAUDE_CODE_MAX_RETRIES=0

    def test_connection_dropped(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        api.mode = "drop"
        text = _assert_unreachable(run_cli(cli_env(config_dir, api.url)))
        assert "ECONNRESET" in text
        assert len(api.messages_requests) == 1

    def test_connection_refused(self, tmp_path: Path, config_dir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        text = _assert_unreachable(run_cli(cli_env(config_dir, f"http://127.0.0.1:{port}")))
        assert "ECONNREFUSED" in text

    def test_slow_answer_hits_api_timeout(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        api.mode = "slow"
        api.slow_seconds = 15
        env = cli_env(config_dir, api.url)
        env["API_TIMEOUT_MS"] = "2000"
        run = run_cli(env)
        text = _assert_unreachable(run)
        assert text.startswith("Request timed out.")
        assert run.wall_s < 10

    def test_slow_answer_killed_by_caller_timeout(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        api.mode = "slow"
        api.slow_seconds = 15
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            run_cli(cli_env(config_dir, api.url), timeout=3)
        assert time.monotonic() - started < 10

    @staticmethod
    def _interrupt_slow_probe(api: FakeMessagesAPI, config_dir: Path, sig: signal.Signals) -> tuple[int, bytes]:
        """Start the probe against a slow API, send ``sig`` once the request is in; (exit code, stdout)."""
        api.mode = "slow"
        api.slow_seconds = 15
        env = cli_env(config_dir, api.url)
        proc = subprocess.Popen(
            [claude_path() or "claude", *PROBE_ARGV],
            env=env,
            cwd=env["HOME"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert api.wait_for_requests(1, timeout=15)
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode, out

    def test_sigterm_gives_143_and_no_json(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        returncode, out = self._interrupt_slow_probe(api, config_dir, signal.SIGTERM)
        assert returncode == 143
        assert out == b""

    def test_sigint_exits_0_but_is_error(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        """Surprise worth pinning: an interrupted probe exits 0; only is_error tells."""
        returncode, out = self._interrupt_slow_probe(api, config_dir, signal.SIGINT)
        result = json.loads(out)
        assert returncode == 0
        assert result["type"] == "result"
        assert result["subtype"] == "error_during_execution"
        assert result["is_error"] is True
        assert result.get("api_error_status") is None  # key absent here

    def test_no_credentials_is_not_logged_in(self, api: FakeMessagesAPI, tmp_path: Path) -> None:
        cfg = tmp_path / "empty-config"
        cfg.mkdir(mode=0o700)
        run = run_cli(cli_env(cfg, api.url))
        summary = _summary(run)
        assert run.returncode == 1
        assert summary["is_error"] is True
        assert summary["api_error_status"] is None
        assert summary["result"] == "Not logged in · Please run /login"
        assert api.requests == []  # never reaches the API
        assert run.wall_s < FAST_S

    @pytest.mark.parametrize(
        "document",
        [
            {"claudeAiOauth": {"accessToken": GOOD, "refreshToken": REFRESH, "expiresAt": 4102444800000}},
            {"claudeAiOauth": {"accessToken": GOOD, "scopes": ["user:profile"]}},
            "{not json",
        ],
        ids=["no-scopes", "no-inference-scope", "malformed"],
    )
    def test_unusable_credentials_are_not_logged_in(
        self, api: FakeMessagesAPI, tmp_path: Path, document: object
    ) -> None:
        cfg = tmp_path / "cfg"
        cfg.mkdir(mode=0o700)
        text = document if isinstance(document, str) else json.dumps(document)
        (cfg / ".credentials.json").write_text(text)
        os.chmod(cfg / ".credentials.json", 0o600)
        run = run_cli(cli_env(cfg, api.url))
        assert run.returncode == 1
        assert _summary(run)["result"] == "Not logged in · Please run /login"
        assert api.requests == []

    def test_minimal_credentials_are_enough(self, api: FakeMessagesAPI, tmp_path: Path) -> None:
        cfg = tmp_path / "cfg"
        cfg.mkdir(mode=0o700)
        (cfg / ".credentials.json").write_text(json.dumps({"claudeAiOauth": {"accessToken": GOOD, "scopes": ["user:inference"]}}))
        run = run_cli(cli_env(cfg, api.url))
        assert run.returncode == 0 and _summary(run)["result"] == "ok"

    def test_mcp_oauth_section_is_tolerated(self, api: FakeMessagesAPI, tmp_path: Path) -> None:
        cfg = tmp_path / "cfg"
        write_credentials(
            cfg, GOOD, REFRESH, extra_top_level={"mcpOAuth": {"srv|0123": {"serverName": "srv", "accessToken": "x"}}}
        )
        run = run_cli(cli_env(cfg, api.url))
        assert run.returncode == 0 and _summary(run)["result"] == "ok"

    def test_expired_token_is_still_sent_when_refresh_fails(self, api: FakeMessagesAPI, tmp_path: Path) -> None:
        cfg = tmp_path / "cfg"
        write_credentials(cfg, GOOD, REFRESH, expires_in_s=-3600)
        run = run_cli(cli_env(cfg, api.url))
        assert run.returncode == 0 and _summary(run)["result"] == "ok"
        assert [r.token_fingerprint for r in api.messages_requests] == [token_fingerprint(GOOD)]

    def test_env_oauth_token_overrides_the_file(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        env = cli_env(config_dir, api.url)
        env["CLAUDE_CODE_OAUTH_TOKEN"] = ENV_TOKEN
        text = _assert_api_error(run_cli(env), 401, "authentication_error")
        assert text.startswith("Failed to authenticate")
        assert {r.token_fingerprint for r in api.messages_requests} == {token_fingerprint(ENV_TOKEN)}

    def test_env_api_key_overrides_the_file(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        env = cli_env(config_dir, api.url)
        env["ANTHROPIC_API_KEY"] = "sk-ant-api03-test-key"
        run_cli(env)
        assert {(r.auth_scheme, r.token_fingerprint) for r in api.messages_requests} == {
            ("x-api-key", token_fingerprint("sk-ant-api03-test-key"))
        }

    def test_cli_env_strips_inherited_overrides(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        polluted = dict(os.environ)
        polluted.update(
            CLAUDE_CODE_OAUTH_TOKEN=ENV_TOKEN,
            ANTHROPIC_API_KEY="sk-ant-api03-test-key",
            ANTHROPIC_BASE_URL="http://127.0.0.1:9",
        )
        run = run_cli(cli_env(config_dir, api.url, base_env=polluted))
        assert run.returncode == 0 and _summary(run)["result"] == "ok"
        assert {r.token_fingerprint for r in api.messages_requests} == {token_fingerprint(GOOD)}

    def test_user_settings_cannot_redirect_the_probe(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        """A settings.json ``env`` beats the process env; ``--setting-sources ""`` ignores it."""
        (config_dir / "settings.json").write_text(
            json.dumps({"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "CLAUDE_CODE_OAUTH_TOKEN": ENV_TOKEN}})
        )
        env = cli_env(config_dir, api.url)
        run = run_cli(env)
        assert run.returncode == 0 and _summary(run)["result"] == "ok"
        assert {r.token_fingerprint for r in api.messages_requests} == {token_fingerprint(GOOD)}
        # Without --setting-sources "" the settings win (the request goes to port 9: refused).
        argv = [a for i, a in enumerate(PROBE_ARGV) if a != "--setting-sources" and PROBE_ARGV[i - 1] != "--setting-sources"]
        api.requests.clear()
        run = run_cli(env, argv)
        assert run.returncode == 1
        assert "ECONNREFUSED" in str(_summary(run)["result"])
        assert api.requests == []

    def test_repeated_probes_are_fast(self, api: FakeMessagesAPI, config_dir: Path) -> None:
        env = cli_env(config_dir, api.url)
        walls = []
        for _ in range(3):
            run = run_cli(env)
            assert run.returncode == 0
            walls.append(run.wall_s)
        assert sorted(walls)[1] < 10
        assert len(api.messages_requests) == 3
