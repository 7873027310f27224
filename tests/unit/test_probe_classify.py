"""The probe's classifier, fed the real CLI 2.1.332 outputs recorded against the loopback fake API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
