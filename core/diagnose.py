"""``claude-auth-sync diagnose``: a read-only report of what is wrong and the command that fixes it.

Checks are plain functions returning :class:`~claude_auth_sync.model.DiagnosticRow` rows (plugins add
theirs about the backend, probe and restorer they provided through ``cas_diagnose``); each runs in isolation with a time
bound, so one failing or hanging check never hides the others. Rows carry no secret: tokens are
shown as fingerprints, other credential keys by name only. The same rows render as a rich table
for people and as JSON (``schema_version``) for machines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cycle import refresh_expiry_ms
from .errors import CasError
from .fingerprint import fingerprint, oauth_fingerprints
from .oauth import same_oauth
from .model import LOGIN_VARIABLES, REFRESH_WARN_S, ExitCode, RELOGIN_COMMAND, DiagnosticRow, DiagnosticState, LoginState, ProbeOutcome, UserIdentity
from .runner import Runtime, build_runtime
from .settings import ResolvedPaths, settings_provenance

__all__ = ["SCHEMA_VERSION", "JSON_SCHEMA", "collect", "command_diagnose", "render_table", "relative_time"]

SCHEMA_VERSION = 1
CHECK_TIMEOUT_S = 15.0


JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "claude-auth-sync diagnose --json",
    "type": "object",
    "required": ["schema_version", "user", "ok", "checks", "settings"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "user": {"type": "string"},
        "ok": {"type": "boolean"},
        "checks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["group", "name", "state", "detail", "next_step"],
                "additionalProperties": False,
                "properties": {
                    "group": {"type": "string"},
                    "name": {"type": "string"},
                    "state": {"enum": ["ok", "warn", "fail", "info"]},
                    "detail": {"type": "string"},
                    "next_step": {"type": ["string", "null"]},
                },
            },
        },
        "settings": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "required": ["value", "source"], "additionalProperties": False,
                "properties": {"value": {}, "source": {"type": "string"}},
            },
        },
    },
}


def relative_time(seconds: float) -> str:
    """``in 3h 12m`` / ``5m ago`` style, to the two largest units."""
    future = seconds >= 0
    s = int(abs(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    text = " ".join(parts)
    return f"in {text}" if future else f"{text} ago"


# -- checks ---------------------------------------------------------------------------------


def check_local_login(rt: Runtime) -> list[DiagnosticRow]:
    """The local login as the selected restorer reads it, after the restorer plugin's own rows
    (for the built-in one: the file's owner, mode, symlink)."""
    g = "local login"
    restorer = rt.restorer()
    origin = rt.plugins.origin("restorer", rt.settings.restorer)
    rows = rt.plugins.diagnose(origin, rt.context, restorer) if origin else []
    if any(row.state == "fail" for row in rows):
        return rows
    login = restorer.read()
    state_rows = {
        LoginState.NOT_JSON: DiagnosticRow(g, "parse", "fail", login.detail, f"the next run restores the backup; or {RELOGIN_COMMAND}"),
        LoginState.NO_OAUTH: DiagnosticRow(g, "claudeAiOauth", "warn", login.detail, f"not logged in; to be: {RELOGIN_COMMAND}"),
        LoginState.INVALID: DiagnosticRow(g, "claudeAiOauth", "fail", login.detail, f"the next run restores the backup; or {RELOGIN_COMMAND}"),
        LoginState.BLANKED: DiagnosticRow(g, "tokens", "fail", login.detail, RELOGIN_COMMAND),
        LoginState.MISSING: DiagnosticRow(g, "credentials file", "warn", "does not exist (not logged in)", RELOGIN_COMMAND),
    }
    if login.state in state_rows:
        rows.append(state_rows[login.state])
    else:
        rows.append(DiagnosticRow(g, "parse", "ok", "valid JSON with claudeAiOauth"))
        fps = oauth_fingerprints(login.oauth)
        if login.expires_at_ms is not None:
            delta = login.expires_at_ms / 1000 - time.time()
            state: DiagnosticState = "ok" if delta > 0 else "info"
            note = "" if delta > 0 else " (normal: the CLI refreshes it on next use)"
            rows.append(DiagnosticRow(g, "access token", state, f"fp {fps['access']}, expires {relative_time(delta)}{note}"))
        rows.append(DiagnosticRow(g, "refresh token", "ok", f"present, fp {fps['refresh']}"))
        refresh_expiry = refresh_expiry_ms(login.oauth)
        if refresh_expiry is not None:
            delta = refresh_expiry / 1000 - time.time()
            state = "ok" if delta > REFRESH_WARN_S else ("warn" if delta > 0 else "fail")
            rows.append(DiagnosticRow(g, "refresh token expiry", state, relative_time(delta), None if state == "ok" else RELOGIN_COMMAND))
    if login.other_keys:
        rows.append(DiagnosticRow(g, "other keys", "info", ", ".join(login.other_keys) + " (kept untouched)"))
    return rows


def check_environment(rt: Runtime) -> list[DiagnosticRow]:
    g = "environment"
    rows = []
    found = [name for name in LOGIN_VARIABLES if rt.environ.get(name)]
    if found:
        rows.append(DiagnosticRow(g, "login variables", "warn", f"{', '.join(found)} set (never passed to claude by the agent)",
                          f"unset {' '.join(found)} (environment credentials outrank the per-user login)"))
    else:
        rows.append(DiagnosticRow(g, "login variables", "ok", "none of " + ", ".join(LOGIN_VARIABLES)))
    config_dir = rt.environ.get("CLAUDE_CONFIG_DIR")
    rows.append(DiagnosticRow(g, "CLAUDE_CONFIG_DIR", "info", config_dir or f"unset (using {rt.settings.claude_config_dir})"))
    return rows


def check_cli(rt: Runtime) -> list[DiagnosticRow]:
    info = rt.probe().describe()
    binary = info.get("binary")
    if not binary:
        return [DiagnosticRow("claude CLI", "binary", "fail", "claude not found", "npm install -g @anthropic-ai/claude-code")]
    return [
        DiagnosticRow("claude CLI", "binary", "ok", str(binary)),
        DiagnosticRow("claude CLI", "version", "ok" if info.get("version") else "warn", str(info.get("version") or "unknown")),
    ]


def check_backend(rt: Runtime) -> list[DiagnosticRow]:
    """The selected backend: the plugin's own rows (``cas_diagnose``), then whether the latest stored
    copy matches the local login (fingerprints only)."""
    g = "backend"
    origin = rt.plugins.origin("backend", rt.settings.backend)
    rows = [DiagnosticRow(g, "backend", "ok", f"{rt.settings.backend} (plugin {origin})")]
    try:
        backend = rt.backend()
        rows.extend(rt.plugins.diagnose(origin or "", rt.context, backend) if origin else [])
        latest = backend.read_latest()
        local = rt.restorer().read()
    except CasError as err:
        state: DiagnosticState = "warn" if err.exit_code == ExitCode.TEMPFAIL else "fail"
        return [*rows, DiagnosticRow(g, "reachable", state, err.message, err.remedy)]
    if latest is None:
        rows.append(DiagnosticRow(g, "backup", "warn", "no backup yet", f"systemctl start claude-auth-sync@{rt.user.name}.service"))
    elif local.oauth is not None:
        same = same_oauth(latest.oauth, local.oauth)
        stored_fp = fingerprint(latest.oauth.get("accessToken")) if isinstance(latest.oauth, Mapping) else None
        rows.append(DiagnosticRow(g, "matches local", "ok" if same else "info",
                                  f"stored fp {stored_fp}" + ("" if same else " (differs: the next healthy run backs up)")))
    return rows


def check_timer(rt: Runtime) -> list[DiagnosticRow]:
    g = "timer"
    unit = f"claude-auth-sync@{rt.user.name}.timer"
    systemctl = shutil.which("systemctl", path=rt.environ.get("PATH", os.defpath))
    if systemctl is None:
        return [DiagnosticRow(g, unit, "info", "systemctl not found (not a systemd host)")]
    enabled = subprocess.run([systemctl, "is-enabled", unit], capture_output=True, text=True, timeout=10)
    state = enabled.stdout.strip() or enabled.stderr.strip()
    rows = [DiagnosticRow(g, "enabled", "ok" if state == "enabled" else "warn", state or "unknown",
                  None if state == "enabled" else f"sudo systemctl enable --now {unit}")]
    if Path("/run/systemd/system").is_dir() and state == "enabled":
        show = subprocess.run([systemctl, "show", unit, "-p", "LastTriggerUSec", "-p", "NextElapseUSecRealtime"],
                              capture_output=True, text=True, timeout=10)
        rows.append(DiagnosticRow(g, "schedule", "info", " ".join(show.stdout.split()) or "unknown"))
    else:
        rows.append(DiagnosticRow(g, "schedule", "info", "systemd is not running here: no last/next run"))
    return rows


def check_log(rt: Runtime) -> list[DiagnosticRow]:
    """The last five status lines: read with read_tail (no symlink, no FIFO, at most 64 KiB)."""
    from .fileio import read_tail

    path = ResolvedPaths.of(rt.settings).log_file
    start = f"systemctl start claude-auth-sync@{rt.user.name}.service"
    try:
        data = read_tail(path)
    except CasError as err:
        return [DiagnosticRow("private log", str(path), "fail", err.message, f"move {path} aside, then {start}")]
    if data is None:
        return [DiagnosticRow("private log", str(path), "warn", "no run recorded yet", start)]
    lines = data.decode("utf-8", errors="replace").splitlines()[-5:]
    rows = []
    for index, line in enumerate(lines):
        word = line.split(" ", 2)[1] if line.count(" ") >= 1 else "?"
        state: DiagnosticState = {"OK": "ok", "WARN": "warn", "FAIL": "fail"}.get(word, "info")
        last = index == len(lines) - 1
        rows.append(DiagnosticRow("private log", "last run" if last else "earlier run", state if last else "info", _condensed(line)))
    if rows and rows[-1].state == "fail":
        last = rows[-1]
        fix = RELOGIN_COMMAND if "reason=auth_failed" in last.detail else "claude-auth-sync diagnose --probe"
        rows[-1] = DiagnosticRow(last.group, last.name, last.state, last.detail, fix)
    return rows


def _condensed(line: str) -> str:
    """``<time> <STATUS> action=.. reason=..`` of a status line (the rest is in the log itself)."""
    parts = line.split(" ")
    keep = [p for p in parts[2:] if p.split("=", 1)[0] in ("action", "reason")]
    return " ".join(parts[:2] + keep)


def check_probe(rt: Runtime) -> list[DiagnosticRow]:
    result = rt.probe().run()
    state: DiagnosticState = {"authenticated": "ok", "unavailable": "warn"}.get(str(result.outcome), "fail")
    fix = {ProbeOutcome.AUTH_FAILED: f"systemctl start claude-auth-sync@{rt.user.name}.service (restores the backup); else {RELOGIN_COMMAND}",
           ProbeOutcome.BROKEN: "npm install -g @anthropic-ai/claude-code"}.get(result.outcome)
    detail = f"{result.outcome} ({result.reason}) in {result.duration_s:.1f}s"
    return [DiagnosticRow("probe", "inference", state, detail, fix)]


CHECKS: list[tuple[str, Callable[[Runtime], list[DiagnosticRow]]]] = [
    ("local login", check_local_login),
    ("environment", check_environment),
    ("claude CLI", check_cli),
    ("backend", check_backend),
    ("timer", check_timer),
    ("private log", check_log),
]


def _isolated(group: str, check: Callable[[Runtime], list[DiagnosticRow]], rt: Runtime, timeout_s: float) -> list[DiagnosticRow]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["rows"] = check(rt)
        except CasError as err:
            box["rows"] = [DiagnosticRow(group, "check", "fail", err.message, err.remedy)]
        except Exception as err:  # isolate: report, never hide the other checks
            box["rows"] = [DiagnosticRow(group, "check", "fail", f"check failed: {type(err).__name__}")]

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return [DiagnosticRow(group, "check", "fail", f"no answer within {timeout_s:.0f}s", "claude-auth-sync diagnose (again), then check the network")]
    return box.get("rows", [])


def collect(rt: Runtime, *, probe: bool = False, timeout_s: float = CHECK_TIMEOUT_S) -> list[DiagnosticRow]:
    checks = list(CHECKS) + ([("probe", check_probe)] if probe else [])
    rows: list[DiagnosticRow] = []
    for group, check in checks:
        limit = max(timeout_s, rt.settings.section("inference").timeout + 5) if group == "probe" else timeout_s
        rows.extend(_isolated(group, check, rt, limit))
    return rows


def report(rt: Runtime, rows: list[DiagnosticRow]) -> dict[str, Any]:
    provenance = settings_provenance(rt.settings)
    settings = json.loads(rt.settings.model_dump_json())
    flat = {}
    for key, source in provenance.items():
        value: Any = settings
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        flat[key] = {"value": value, "source": source}
    return {
        "schema_version": SCHEMA_VERSION,
        "user": rt.user.name,
        "ok": not any(r.state == "fail" for r in rows),
        "checks": [asdict(r) for r in rows],
        "settings": flat,
    }


STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "info": "cyan"}


def render_table(data: dict[str, Any], console: Any) -> None:
    """Both tables; every cell is inert text (:mod:`.terminal_text`): a log line, a path or a
    setting value is never parsed as rich markup and carries no control character."""
    from rich.table import Table

    from .terminal_text import plain

    table = Table(title=f"claude-auth-sync diagnose: {data['user']}", show_lines=False, expand=False)
    for column in ("check", "state", "detail", "next step"):
        table.add_column(column, overflow="fold")
    group = None
    for row in data["checks"]:
        if row["group"] != group:
            group = row["group"]
            table.add_section()
            table.add_row(plain(group, style="bold"), "", "", "")
        state = row["state"]
        table.add_row(plain(f"  {row['name']}"), plain(state.upper(), style=STYLE[state]), plain(row["detail"], 2000),
                      plain(row["next_step"] or "", 2000))
    console.print(table)
    settings = Table(title="settings in effect", expand=False)
    for column in ("setting", "value", "source"):
        settings.add_column(column, overflow="fold")
    for key, item in sorted(data["settings"].items()):
        settings.add_row(plain(key), plain(json.dumps(item["value"]), 2000), plain(item["source"]))
    console.print(settings)


def command_diagnose(*, json_output: bool, probe: bool, overrides: Mapping[str, Any]) -> int:
    """Exit 0 when nothing fails, 1 when a row fails, 78 when settings or plugins cannot load
    (with ``--json``: still one JSON object on stdout, its one row saying why)."""
    try:
        rt = build_runtime(overrides)
    except CasError as err:
        if not json_output:
            raise
        row = DiagnosticRow("settings", "load", "fail", err.message, err.remedy)
        user = UserIdentity.current().name
        print(json.dumps({"schema_version": SCHEMA_VERSION, "user": user, "ok": False, "checks": [asdict(row)],
                          "settings": {}}, sort_keys=True))
        return int(err.exit_code)
    rows = collect(rt, probe=probe)
    data = report(rt, rows)
    if json_output:
        print(json.dumps(data, sort_keys=True))
    else:
        from rich.console import Console

        render_table(data, Console(file=sys.stdout, emoji=False))
    return 0 if data["ok"] else 1
