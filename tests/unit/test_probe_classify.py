"""The probe's classifier, fed the real CLI 2.1.332 outputs recorded against the loopback fake API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_auth_sync.model import ProbeOutcome
from claude_auth_sync.plugins.probe_inference import InferenceSettings
from claude_auth_sync.plugins.probe_inference.probe import InferenceProbe, classify_output, scrub_environment


def out(**fields) -> str:
    return json.dumps({"type": "result", "subtype": "success", **fields})


A, F, U, B = ProbeOutcome.AUTHENTICATED, ProbeOutcome.AUTH_FAILED, ProbeOutcome.UNAVAILABLE, ProbeOutcome.BROKEN


@pytest.mark.parametrize(
    ("code", "stdout", "expected"),
    [
        (0, out(is_error=False, api_error_status=None, result="ok"), (A, "ok", None)),
        (1, out(is_error=True, api_error_status=401, api_error_type="authentication_error",
                result="Failed to authenticate. API Error: 401 Invalid bearer token"), (F, "http_401", 401)),
        (1, out(is_error=True, api_error_status=401, result="Not logged in · Please run /login"), (F, "http_401", 401)),
        (1, out(is_error=True, api_error_status=403, api_error_type="permission_error",
                result="Failed to authenticate: OAuth token revoked. Please log in again"), (F, "http_403", 403)),
        (1, out(is_error=True, api_error_status=429, api_error_type="rate_limit_error", result="API Error: ..."), (U, "http_429", 429)),
        (1, out(is_error=True, api_error_status=500, api_error_type="api_error", result="API Error: 500"), (U, "http_500", 500)),
        (1, out(is_error=True, api_error_status=529, api_error_type="overloaded_error", result="API Error: 529"), (U, "http_529", 529)),
        (1, out(is_error=True, api_error_status=None, result="API Error: Connection dropped (ECONNRESET)."), (U, "api_unreachable", None)),
        (1, out(is_error=True, api_error_status=None, result="API Error: Connection refused (ECONNREFUSED)"), (U, "api_unreachable", None)),
        (1, out(is_error=True, api_error_status=None, result="Request timed out. set API_TIMEOUT_MS above 2000."), (U, "api_unreachable", None)),
        (0, json.dumps({"type": "result", "subtype": "error_during_execution", "is_error": True, "result": None}), (U, "cli_interrupted", None)),
        (1, out(is_error=True, api_error_status=None, result="Not logged in · Please run /login"), (F, "not_logged_in", None)),
        (1, out(is_error=True, api_error_status=404, api_error_type="not_found_error", result="model: haiku-9"), (B, "http_404", 404)),
        (1, "", (B, "cli_exit_1", None)),
        (0, "not json at all", (B, "cli_output_unparseable", None)),
        (139, "Segmentation fault", (B, "cli_exit_139", None)),
    ],
)
def test_classify(code, stdout, expected) -> None:
    assert classify_output(code, stdout) == expected


def test_scrub_strips_login_variables_and_vault_and_reports_names_only(tmp_path) -> None:
    env = {"PATH": "/bin", "CLAUDE_CODE_OAUTH_TOKEN": "sk-x", "ANTHROPIC_API_KEY": "sk-y", "VAULT_TOKEN": "hvs.z",
           "VAULT_ADDR": "https://v", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "HTTPS_PROXY": "http://proxy:3128",
           "CLAUDE_CODE_MAX_RETRIES": "0"}
    scrubbed, found = scrub_environment(env, tmp_path)
    assert found == ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY")
    assert not any(k.startswith("VAULT_") for k in scrubbed)
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in scrubbed and "ANTHROPIC_API_KEY" not in scrubbed
    assert scrubbed["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:1" and scrubbed["HTTPS_PROXY"] == "http://proxy:3128"
    assert scrubbed["CLAUDE_CONFIG_DIR"] == str(tmp_path)
    assert scrubbed["CLAUDE_CODE_MAX_RETRIES"] == "0"  # an explicit value wins over our default


# Credential-like variables seen on real workstations and in the CLI's own bundle: none may reach
# the probe, whatever its name looks like (allow-list, not deny-list).
HOSTILE_ENV = {
    "BAO_TOKEN": "hvs.bao-secret", "VAULT_TOKEN": "hvs.vault-secret", "CLAUDE_CODE_SESSION_ACCESS_TOKEN": "sess-secret",
    "ANTHROPIC_IDENTITY_TOKEN": "id-secret", "ANTHROPIC_FOUNDRY_API_KEY": "foundry-secret",
    "CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR": "3", "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat-secret",
    "CLAUDE_CODE_OAUTH_REFRESH_TOKEN": "sk-ant-ort-secret", "ANTHROPIC_API_KEY": "sk-ant-api-secret",
    "ANTHROPIC_AUTH_TOKEN": "auth-secret", "ANTHROPIC_CUSTOM_HEADERS": "Authorization: Bearer hdr-secret",
    "ANTHROPIC_AWS_API_KEY": "aws-api-secret", "AWS_SECRET_ACCESS_KEY": "aws-secret", "AWS_SESSION_TOKEN": "aws-sess",
    "GITHUB_TOKEN": "ghp_secret", "GH_TOKEN": "gho_secret", "OPENAI_API_KEY": "sk-openai", "PGPASSWORD": "pg-secret",
    "MYSQL_PWD": "mysql-secret", "DB_PASSWORD": "db-secret", "GOOGLE_APPLICATION_CREDENTIALS": "/home/u/key.json",
    "SSH_AUTH_SOCK": "/run/user/1000/ssh", "NPM_CONFIG__AUTH": "npm-secret", "DOCKER_AUTH_CONFIG": "{}",
    "CLAUDE_CODE_USE_BEDROCK": "1", "CLAUDE_CODE_USE_VERTEX": "1", "ANTHROPIC_UNIX_SOCKET": "/tmp/s",
    "NODE_OPTIONS": "--require /tmp/x.js", "NODE_TLS_REJECT_UNAUTHORIZED": "0", "XDG_SESSION_COOKIE": "cookie",
    "LC_SECRET_TOKEN": "lc-secret", "DISABLE_AUTH_CHECK_KEY": "1", "CLAUDE_CODE_DISABLE_X_API_KEY": "k",
    "CLAUDE_AUTH_SYNC_VAULT__ADDR": "https://vault", "SOME_RANDOM_VARIABLE": "x",
}
ALLOWED_ENV = {
    "PATH": "/usr/bin:/bin", "HOME": "/home/u", "USER": "u", "LOGNAME": "u", "SHELL": "/bin/bash",
    "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LANGUAGE": "en", "LC_ALL": "C.UTF-8", "LC_CTYPE": "C.UTF-8", "TZ": "UTC",
    "HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "127.0.0.1",
    "ALL_PROXY": "socks5://proxy:1080", "http_proxy": "http://proxy:3128", "https_proxy": "http://proxy:3128",
    "no_proxy": "127.0.0.1", "all_proxy": "socks5://proxy:1080",
    "NODE_EXTRA_CA_CERTS": "/etc/ssl/corp.pem", "NODE_USE_SYSTEM_CA": "1", "SSL_CERT_FILE": "/etc/ssl/ca.pem",
    "SSL_CERT_DIR": "/etc/ssl/certs", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
    "XDG_CONFIG_HOME": "/home/u/.config", "XDG_CACHE_HOME": "/home/u/.cache", "XDG_DATA_HOME": "/home/u/.local/share",
    "XDG_STATE_HOME": "/home/u/.local/state", "XDG_RUNTIME_DIR": "/run/user/1000",
    "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_RETRIES": "0", "API_TIMEOUT_MS": "5000",
}
CREDENTIAL_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH", "COOKIE")


def test_probe_environment_is_an_allow_list(tmp_path) -> None:
    scrubbed, found = scrub_environment({**HOSTILE_ENV, **ALLOWED_ENV}, tmp_path)
    leaked = sorted(name for name in HOSTILE_ENV if name in scrubbed)
    assert leaked == []
    assert not any(secret in "\n".join(scrubbed.values()) for secret in HOSTILE_ENV.values() if len(secret) > 3)
    assert {k: scrubbed.get(k) for k in ALLOWED_ENV} == ALLOWED_ENV
    assert scrubbed["CLAUDE_CONFIG_DIR"] == str(tmp_path)
    # The contract's login variables are still reported, by name only.
    assert found == ("CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_OAUTH_REFRESH_TOKEN", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")


@given(st.from_regex(r"\A[A-Z][A-Z0-9_]{0,12}(TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL|AUTH)[A-Z0-9_]{0,12}\Z"))
def test_no_credential_like_name_ever_reaches_the_probe(name: str) -> None:
    for prefix in ("", "LC_", "DISABLE_", "CLAUDE_CODE_DISABLE_", "XDG_", "ANTHROPIC_", "NODE_"):
        scrubbed, _ = scrub_environment({prefix + name: "value"}, Path("/tmp/cfg"))
        assert prefix + name not in scrubbed
    assert not any(word in key for key in scrub_environment(ALLOWED_ENV, Path("/c"))[0] for word in CREDENTIAL_WORDS)


def test_argv_is_print_mode_haiku_no_persistence_no_tools_json_prompt_last(tmp_path) -> None:
    probe = InferenceProbe(InferenceSettings(), tmp_path, {})
    argv = probe.argv("/usr/bin/claude")
    assert argv[:4] == ["/usr/bin/claude", "-p", "--model", "haiku"]
    assert "--no-session-persistence" in argv and argv[argv.index("--tools") + 1] == ""
    assert argv[argv.index("--output-format") + 1] == "json" and argv[-1] == "ok"


def test_missing_binary_is_broken(tmp_path) -> None:
    probe = InferenceProbe(InferenceSettings(claude_bin=str(tmp_path / "nope")), tmp_path, {"PATH": "/nonexistent"})
    result = probe.run()
    assert (result.outcome, result.reason) == (B, "cli_missing")
    assert InferenceProbe(InferenceSettings(), tmp_path, {"PATH": str(tmp_path)}).run().reason == "cli_missing"


def test_hanging_cli_whole_process_group_is_killed(tmp_path) -> None:
    script = tmp_path / "claude"
    pidfile = tmp_path / "child.pid"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    probe = InferenceProbe(InferenceSettings(claude_bin=str(script), timeout=1), tmp_path, {"PATH": "/usr/bin:/bin"})
    result = probe.run()
    assert (result.outcome, result.reason) == (U, "timeout")
    assert 0.9 < result.duration_s < 10
    import os
    import time

    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the CLI's child survived: the process group was not killed")


def test_cli_version_is_read_from_the_npm_package(tmp_path) -> None:
    from claude_auth_sync.plugins.probe_inference.probe import cli_version

    package = tmp_path / "node_modules" / "@anthropic-ai" / "claude-code"
    (package / "bin").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "@anthropic-ai/claude-code", "version": "9.9.9"}')
    binary = package / "bin" / "claude.exe"
    binary.write_text("")
    link = tmp_path / "claude"
    link.symlink_to(binary)
    assert cli_version(str(link)) == "9.9.9"
    assert cli_version(str(Path("/bin/sh"))) is None
