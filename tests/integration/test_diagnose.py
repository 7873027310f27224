"""``claude-auth-sync diagnose``: rows, next steps, the JSON schema (shipped in docs/), numeric JSON,
compact and verbose tables, snapshots, a real terminal (tmux)."""

from __future__ import annotations

import io
import json
import os
import pwd
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
from tests.support.openbao import OpenBaoServer
from tests.support.vault_user import vault_box

pytestmark = pytest.mark.real

SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"
SHIPPED_SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "diagnose.schema.json"
#: A relative time for people: never in --json.
RELATIVE = re.compile(r"\b(in \d+[dhms]|\d+[dhms] ago)\b")
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
    jsonschema.validate(data, json.loads(SHIPPED_SCHEMA.read_text()))
    assert not RELATIVE.search(result.stdout), "a display string in --json"
    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr
    return data, result


def rows(data: dict) -> dict[tuple[str, str], dict]:
    return {(r["group"], r["name"]): r for r in data["checks"]}


def normalise(data: dict, box: Sandbox) -> dict:
    """Paths, ports and times made stable: each ``*_at_epoch`` one hour after or before
    ``generated_at_epoch`` as it was after or not (the table says "in 1h", "1h ago"), then every
    absolute time replaced."""
    now = data["generated_at_epoch"]
    for row in data["checks"]:
        for key, value in row["values"].items():
            if key.endswith("_at_epoch") and isinstance(value, int):
                row["values"][key] = 1_800_000_000 + (3600 if value > now else -3600)
    data["generated_at_epoch"] = 1_800_000_000
    text = json.dumps(data).replace(str(box.root), "<tmp>").replace(pwd.getpwuid(os.getuid()).pw_dir + "/", "<account-home>/")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>", text)
    text = re.sub(r"(_ms=|_s=)\d+(\.\d+)?", r"\1N", text)
    text = re.sub(r"\d+\.\d s\b", "N s", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    text = re.sub(r'"/[^"]*/tests/support/stub_claude\.py"', '"<repo>/tests/support/stub_claude.py"', text)
    return json.loads(text)


def render(data: dict, *, width: int = 100, verbose: bool = False) -> str:
    out = io.StringIO()
    render_table(data, Console(file=out, width=width, no_color=True, force_terminal=False, color_system=None), verbose=verbose)
    return out.getvalue()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_table_snapshot(tmp_path, scenario) -> None:
    box = Sandbox(tmp_path)
    env = SCENARIOS[scenario](box)
    data, _ = diagnose_json(box, env)
    stable = normalise(data, box)
    for suffix, text in (("", render(stable)), ("_verbose", render(stable, verbose=True))):
        snapshot = SNAPSHOTS / f"diagnose_{scenario}{suffix}.txt"
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


def test_the_shipped_schema_is_the_one_the_code_documents() -> None:
    assert json.loads(SHIPPED_SCHEMA.read_text()) == JSON_SCHEMA
    jsonschema.Draft202012Validator.check_schema(JSON_SCHEMA)


def test_json_carries_numbers_and_utc_times_not_display_strings(tmp_path) -> None:
    box = Sandbox(tmp_path)
    before = int(time.time())
    data, _ = diagnose_json(box, healthy(box))
    after = int(time.time())
    assert set(data) == {"schema_version", "user", "ok", "exit_code", "generated_at", "generated_at_epoch", "summary",
                         "checks", "next_steps", "settings"}
    assert (data["schema_version"], data["exit_code"]) == (1, 0)
    assert before <= data["generated_at_epoch"] <= after
    assert data["generated_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(data["generated_at_epoch"]))
    r = rows(data)
    access = r[("local login", "access token")]["values"]
    assert access["fingerprint"] == fp(ACCESS) and isinstance(access["expires_in_s"], int) and access["expires_in_s"] > 0
    assert abs(access["expires_at_epoch"] - (data["generated_at_epoch"] + access["expires_in_s"])) <= 30  # at check time
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(access["expires_at_epoch"])) == access["expires_at"]
    last = r[("private log", "last run")]["values"]
    assert (last["status"], last["action"]) == ("OK", "backup") and -120 <= last["ran_in_s"] <= 0
    assert sum(data["summary"].values()) == len(data["checks"]) and data["summary"]["fail"] == 0
    by_name = {f"{row['group']}: {row['name']}": row for row in data["checks"]}
    for step in data["next_steps"]:
        assert all(by_name[name]["next_step"] == step["step"] for name in step["checks"])


def test_compact_table_by_default_verbose_adds_every_row_and_the_settings(tmp_path) -> None:
    """The real CLI at 100 columns: a healthy user's report fits a screen (issue 14: it was 93 lines)."""
    box = Sandbox(tmp_path)
    env = healthy(box)
    compact = box.run("diagnose", COLUMNS="100", LINES="50", **env)
    verbose = box.run("diagnose", "--verbose", COLUMNS="100", LINES="50", **env)
    assert compact.returncode == verbose.returncode == 0, compact.stderr[-2000:]
    lines = compact.stdout.splitlines()
    print(f"diagnose at 100 columns: {len(lines)} lines compact, {len(verbose.stdout.splitlines())} verbose")
    assert len(lines) <= 30 and max(len(line) for line in lines) <= 100
    assert "settings in effect" not in compact.stdout and "diagnose --verbose" in compact.stdout
    assert "access token" in compact.stdout and "expires in " in compact.stdout and "last run" in compact.stdout
    assert "login variables" not in compact.stdout  # fine and not a key fact: --verbose only
    assert "settings in effect" in verbose.stdout and "vault.mount" in verbose.stdout and "login variables" in verbose.stdout


def test_broken_login_table_lists_the_next_step_once(tmp_path) -> None:
    box = Sandbox(tmp_path)
    table = box.run("diagnose", COLUMNS="100", **broken_login(box))
    assert table.returncode == 1
    assert "FAIL" in table.stdout and "next steps:" in table.stdout
    assert table.stdout.count("1. claude auth login --claudeai --sso") == 1


def test_settings_that_do_not_load_still_answer_the_schema(tmp_path) -> None:
    box = Sandbox(tmp_path)
    data, result = diagnose_json(box, {"CLAUDE_AUTH_SYNC_LOCK_WAIT_TIMEOUT": "-1"})
    assert result.returncode == 78 and (data["ok"], data["exit_code"]) == (False, 78)
    assert [(c["group"], c["state"]) for c in data["checks"]] == [("settings", "fail")]
    assert data["next_steps"][0]["checks"] == ["settings: load"]


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


def test_vault_rows_carry_the_token_ttl_and_the_backup_time_as_numbers(tmp_path: Path, bao: OpenBaoServer) -> None:
    """Against the real OpenBao: the token TTL in whole seconds with its expiry time, the backup's
    version and update time; the compact table still fits a screen with the Vault rows."""
    box, vault_env = vault_box(bao, tmp_path)
    box.write_credentials({"claudeAiOauth": oauth_object(ACCESS, REFRESH)})
    env = {**vault_env, "STUB_CLAUDE_ACCEPT": fp(ACCESS), "PATH": fake_systemctl(box.root, "enabled")}
    assert box.run("run", **env).returncode == 0
    data, result = diagnose_json(box, env)
    assert result.returncode == 0, result.stdout[-2000:]
    r = rows(data)
    ttl = r[("backend", "token TTL")]["values"]
    assert isinstance(ttl["ttl_s"], int) and 768 * 3600 - 600 < ttl["ttl_s"] <= 768 * 3600
    assert abs(ttl["expires_at_epoch"] - data["generated_at_epoch"] - ttl["ttl_s"]) <= 30
    assert r[("backend", "token period")]["values"] == {"period_s": 768 * 3600, "renewable": True}
    backup = r[("backend", "backup")]["values"]
    assert backup["version"] == 1 and abs(backup["updated_at_epoch"] - data["generated_at_epoch"]) <= 120
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", backup["updated_at"])
    table = box.run("diagnose", COLUMNS="100", **env)
    lines = table.stdout.splitlines()
    print(f"diagnose (Vault backend) at 100 columns: {len(lines)} lines compact, "
          f"{len(box.run('diagnose', '--verbose', COLUMNS='100', **env).stdout.splitlines())} verbose")
    assert len(lines) <= 30 and "token TTL" in table.stdout and "expires in 3" in table.stdout, table.stdout
