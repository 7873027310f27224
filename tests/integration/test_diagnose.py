"""``claude-auth-sync diagnose``: rows, next steps, JSON schema, snapshots, a real terminal (tmux)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from claude_auth_sync.diagnose import JSON_SCHEMA, render_table
from claude_auth_sync.testing import oauth_object
from tests.support.cli import Sandbox, console_script, fp
from tests.support.home import child_env

pytestmark = pytest.mark.real

SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"
ACCESS, REFRESH = "sk-ant-oat01-DIAG-secret-access", "sk-ant-ort01-DIAG-secret-refresh"
MCP_SECRET = "mcp-DIAG-secret"
SECRETS = (ACCESS, REFRESH, MCP_SECRET, "hvs.DIAG-vault-secret")


def fake_systemctl(root: Path, answer: str) -> str:
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "systemctl"
    script.write_text(f"#!/bin/sh\necho {answer}\n")
    script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def healthy(box: Sandbox) -> dict[str, str]:
    box.write_credentials({"claudeAiOauth": oauth_object(ACCESS, REFRESH), "mcpOAuth": {"s": {"accessToken": MCP_SECRET}}})
    env = {"STUB_CLAUDE_ACCEPT": fp(ACCESS), "PATH": fake_systemctl(box.root, "enabled")}
    assert box.run("run", **env).returncode == 0
    return env


def broken_login(box: Sandbox) -> dict[str, str]:
    env = healthy(box)
    box.write_credentials({"claudeAiOauth": oauth_object("", "", expires_at_ms=0), "mcpOAuth": {"s": {"accessToken": MCP_SECRET}}})
    box.run("run", STUB_CLAUDE_ACCEPT="", PATH=env["PATH"])
    return {**env, "STUB_CLAUDE_ACCEPT": ""}


def vault_outage(box: Sandbox) -> dict[str, str]:
    box.write_credentials({"claudeAiOauth": oauth_object(ACCESS, REFRESH)})
    token = box.root / "config" / "claude-auth-sync" / "vault-token"
    token.parent.mkdir(parents=True, mode=0o700)
    token.write_text("hvs.DIAG-vault-secret")
    token.chmod(0o600)
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"STUB_CLAUDE_ACCEPT": fp(ACCESS), "PATH": fake_systemctl(box.root, "enabled"),
            "CLAUDE_AUTH_SYNC_BACKEND": "vault", "VAULT_ADDR": f"http://127.0.0.1:{port}"}


SCENARIOS = {"healthy": healthy, "broken_login": broken_login, "vault_outage": vault_outage}


def diagnose_json(box: Sandbox, env: dict[str, str]) -> tuple[dict, subprocess.CompletedProcess[str]]:
    result = box.run("diagnose", "--json", **env)
    data = json.loads(result.stdout)
    jsonschema.validate(data, JSON_SCHEMA)
    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr
    return data, result


def rows(data: dict) -> dict[tuple[str, str], dict]:
    return {(r["group"], r["name"]): r for r in data["checks"]}


def normalise(data: dict, box: Sandbox) -> dict:
    text = json.dumps(data).replace(str(box.root), "<tmp>")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>", text)
    text = re.sub(r"(in |)\d+[dhms]( \d+[dhms])?( ago)?", "<rel>", text)
    text = re.sub(r"(_ms=|_s=|in )\d+(\.\d+)?", r"\1N", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    text = re.sub(r'"/[^"]*/tests/support/stub_claude\.py"', '"<repo>/tests/support/stub_claude.py"', text)
    return json.loads(text)


def render(data: dict) -> str:
    out = io.StringIO()
    render_table(data, Console(file=out, width=120, no_color=True, force_terminal=False, color_system=None))
    return out.getvalue()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_table_snapshot(tmp_path, scenario) -> None:
    box = Sandbox(tmp_path)
    env = SCENARIOS[scenario](box)
    data, _ = diagnose_json(box, env)
    text = render(normalise(data, box))
    snapshot = SNAPSHOTS / f"diagnose_{scenario}.txt"
    if os.environ.get("CAS_UPDATE_SNAPSHOTS") == "1":
        snapshot.write_text(text)
    assert text == snapshot.read_text(), f"diagnose output changed; CAS_UPDATE_SNAPSHOTS=1 rewrites {snapshot.name}"


def test_healthy_rows(tmp_path) -> None:
    box = Sandbox(tmp_path)
    data, result = diagnose_json(box, healthy(box))
    assert result.returncode == 0 and data["ok"] is True
    r = rows(data)
    assert r[("local login", "refresh token")]["detail"] == f"present, fp {fp(REFRESH)}"
    assert r[("local login", "other keys")]["detail"] == "mcpOAuth (kept untouched)"
    assert r[("backend", "matches local")]["state"] == "ok"
    assert r[("timer", "enabled")]["state"] == "ok"
    assert data["settings"]["backend"] == {"value": "file", "source": "environment"}


def test_broken_login_rows_carry_the_login_command(tmp_path) -> None:
    box = Sandbox(tmp_path)
    data, result = diagnose_json(box, broken_login(box))
    assert result.returncode == 1 and data["ok"] is False
    r = rows(data)
    assert r[("local login", "tokens")]["state"] == "fail"
    assert r[("local login", "tokens")]["next_step"] == "claude auth login --claudeai --sso --email <enterprise-email>"
    assert r[("private log", "last run")]["state"] == "fail"


def test_vault_outage_row_says_unreachable_and_other_checks_still_run(tmp_path) -> None:
    box = Sandbox(tmp_path)
    data, result = diagnose_json(box, vault_outage(box))
    r = rows(data)
    assert r[("backend", "backend")]["detail"] == "vault (plugin backend_vault)"
    reach = r[("backend", "reachable")]
    assert reach["state"] == "warn" and "cannot reach" in reach["detail"]
    assert "next run retries" in reach["next_step"]
    groups = {row["group"] for row in data["checks"]}
    assert {"local login", "environment", "claude CLI", "timer", "private log"} <= groups


def test_login_variables_are_named_never_valued(tmp_path) -> None:
    box = Sandbox(tmp_path)
    env = healthy(box)
    data, result = diagnose_json(box, {**env, "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-ENV-secret"})
    row = rows(data)[("environment", "login variables")]
    assert row["state"] == "warn" and "CLAUDE_CODE_OAUTH_TOKEN" in row["detail"]
    assert "ENV-secret" not in result.stdout


def test_a_real_terminal_shows_the_table_in_colour(tmp_path) -> None:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is required (Debian package tmux)"
    box = Sandbox(tmp_path)
    env = broken_login(box)
    session = f"cas-diag-{os.getpid()}"
    full_env = box.env(**env)
    script = tmp_path / "show.sh"
    exports = "".join(f"export {k}={json.dumps(v)}\n" for k, v in full_env.items() if k.isidentifier())
    script.write_text(f"{exports}{console_script()} diagnose\necho DIAGNOSE-DONE\nsleep 30\n")
    socket = str(tmp_path / "tmux.sock")
    subprocess.run([tmux, "-S", socket, "new-session", "-d", "-s", session, "-x", "150", "-y", "120",
                    f"bash {script}"], check=True,
                   env=child_env(box.home, base={"TERM": "xterm-256color", "PATH": os.environ["PATH"]}))
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "DIAGNOSE-DONE" not in screen:
            time.sleep(0.3)
            screen = subprocess.run([tmux, "-S", socket, "capture-pane", "-p", "-e", "-t", session, "-S", "-200"],
                                    capture_output=True, text=True).stdout
        assert "DIAGNOSE-DONE" in screen
        plain = re.sub(r"\x1b\[[0-9;]*m", "", screen)
        assert "claude-auth-sync diagnose" in plain
        assert "claude auth login --claudeai --sso" in plain
        assert re.search(r"\x1b\[[0-9;]*31m", screen) or re.search(r"\x1b\[[0-9;]*91m", screen), "FAIL is red"
        assert max(len(line) for line in plain.splitlines()) <= 150
        for secret in SECRETS:
            assert secret not in screen
    finally:
        subprocess.run([tmux, "-S", socket, "kill-server"], capture_output=True)
