"""``claude-auth-sync diagnose``: a read-only report of what is wrong and the command that fixes it.

Checks are plain functions returning :class:`~claude_auth_sync.model.DiagnosticRow` rows (plugins add
theirs about the backend, probe and restorer they provided through ``cas_diagnose``); each runs in isolation with a time
bound, so one failing or hanging check never hides the others. Rows carry no secret: tokens are
shown as fingerprints, other credential keys by name only. The same rows render as a compact rich
table for people (``--verbose``: every row and the settings) and as JSON for machines; both, and the
JSON schema (version 1), are in :mod:`.diagnose_output`. A row's facts are in its ``values`` as
numbers and ISO-8601 UTC times; relative times ("in 3h") exist only in the table.
"""

from __future__ import annotations

import json
import os
import shlex
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
from .diagnose_output import (JSON_SCHEMA, SCHEMA_VERSION, epoch_of_iso, iso_utc, next_steps, relative_time, render_table,
                              summary, time_values)
from .errors import CasError
from .fingerprint import fingerprint, oauth_fingerprints
from .oauth import same_oauth
from .model import LOGIN_VARIABLES, REFRESH_WARN_S, ExitCode, RELOGIN_COMMAND, DiagnosticRow, DiagnosticState, LoginState, ProbeOutcome, UserIdentity
from .runner import Runtime, build_runtime
from .settings import ResolvedPaths, XdgChoice, settings_provenance, xdg_choices

__all__ = ["SCHEMA_VERSION", "JSON_SCHEMA", "collect", "command_diagnose", "render_table", "relative_time", "report"]

CHECK_TIMEOUT_S = 15.0


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
        rows.extend(_token_rows(g, login.oauth, login.expires_at_ms))
    if login.other_keys:
        rows.append(DiagnosticRow(g, "other keys", "info", ", ".join(login.other_keys) + " (kept untouched)",
                                  values={"keys": ",".join(login.other_keys)}))
    return rows


def _token_rows(g: str, oauth: Any, expires_at_ms: int | None) -> list[DiagnosticRow]:
    """Access token (fingerprint, expiry), refresh token (fingerprint) and its expiry when known."""
    now = time.time()
    fps = oauth_fingerprints(oauth)
    rows = []
    if expires_at_ms is not None:
        expired = expires_at_ms / 1000 <= now
        note = " (normal: the CLI refreshes it on next use)" if expired else ""
        rows.append(DiagnosticRow(g, "access token", "info" if expired else "ok", f"fp {fps['access']}{note}",
                                  values={"fingerprint": fps["access"], **time_values("expires", expires_at_ms / 1000, now)}))
    rows.append(DiagnosticRow(g, "refresh token", "ok", f"present, fp {fps['refresh']}", values={"fingerprint": fps["refresh"]}))
    refresh_expiry = refresh_expiry_ms(oauth)
    if refresh_expiry is not None:
        delta = refresh_expiry / 1000 - now
        state: DiagnosticState = "ok" if delta > REFRESH_WARN_S else ("warn" if delta > 0 else "fail")
        rows.append(DiagnosticRow(g, "refresh token expiry", state, "", None if state == "ok" else RELOGIN_COMMAND,
                                  values=time_values("expires", refresh_expiry / 1000, now)))
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
    rows.append(DiagnosticRow(g, "CLAUDE_CONFIG_DIR", "info", config_dir or f"unset (using {rt.settings.claude_config_dir})",
                              values={"claude_config_dir": str(rt.settings.claude_config_dir)}))
    return rows


def check_paths(rt: Runtime) -> list[DiagnosticRow]:
    """Whether this process and a run started by the unit (which has no XDG variables) use the same
    configuration and state directories (:func:`~claude_auth_sync.settings.xdg_choice`): a row in
    ``paths`` for each XDG variable that points elsewhere than the default, a quiet one otherwise."""
    rows = []
    for choice in xdg_choices(rt.user, rt.environ):
        values = {"variable": choice.variable, "value": choice.value, "used_dir": str(choice.chosen),
                  "default_dir": str(choice.default_dir), "rule": choice.rule}
        if choice.rule == "default":
            rows.append(DiagnosticRow("environment", choice.variable, "info",
                                      f"{'unset' if choice.value is None else choice.value} (using {choice.chosen})", values=values))
        else:
            rows.append(_xdg_row(choice, {**values, "xdg_dir": str(choice.xdg_dir)}))
    return rows


def _xdg_row(choice: XdgChoice, values: dict[str, Any]) -> DiagnosticRow:
    var, xdg, default = choice.variable, choice.xdg_dir, choice.default_dir
    unit = f"runs started by the unit (which has no {var}) use {default}"
    if choice.rule == "fallback":
        return DiagnosticRow("paths", var, "info", f"using {default} (the unit's and the provisioner's): "
                                                    f"{xdg} is absent or empty", values=values)
    if choice.rule == "both":
        q_xdg, q_default = shlex.quote(str(xdg)), shlex.quote(str(default))
        if var == "XDG_CONFIG_HOME":  # the default's files (the provisioner's token) win over same-named ones
            fix, what = f"mv -n {q_xdg}/* {q_default}/ && rm -r {q_xdg}", "two places for the token and settings"
        else:  # the state is the agent's own: the shell's copy holds only the shell's runs
            fix, what = f"rm -r {q_xdg}", f"two logs (the shell's copy holds only its own runs; the unit's is in {default})"
        return DiagnosticRow("paths", var, "warn", f"{var}={choice.value}: this shell uses {xdg}, but {unit}: {what}",
                             fix, values=values)
    nothing = " (nothing there yet)" if choice.rule == "neither" else ""
    return DiagnosticRow("paths", var, "info", f"using {xdg}{nothing}; {unit}", values=values)


def check_cli(rt: Runtime) -> list[DiagnosticRow]:
    info = rt.probe().describe()
    binary = info.get("binary")
    if not binary:
        return [DiagnosticRow("claude CLI", "binary", "fail", "claude not found", "npm install -g @anthropic-ai/claude-code",
                              values={"binary": None})]
    version = info.get("version")
    return [
        DiagnosticRow("claude CLI", "binary", "ok", str(binary), values={"binary": str(binary)}),
        DiagnosticRow("claude CLI", "version", "ok" if version else "warn", str(version or "unknown"),
                      values={"version": str(version) if version else None}),
    ]


def check_backend(rt: Runtime) -> list[DiagnosticRow]:
    """The selected backend: the plugin's own rows (``cas_diagnose``), then whether the latest stored
    copy matches the local login (fingerprints only)."""
    g = "backend"
    origin = rt.plugins.origin("backend", rt.settings.backend)
    rows = [DiagnosticRow(g, "backend", "ok", f"{rt.settings.backend} (plugin {origin})",
                          values={"backend": rt.settings.backend, "plugin": origin})]
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
                                  f"stored fp {stored_fp}" + ("" if same else " (differs: the next healthy run backs up)"),
                                  values={"stored_fingerprint": stored_fp, "matches": same}))
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
                  None if state == "enabled" else f"sudo systemctl enable --now {unit}", values={"unit": unit, "unit_state": state or None})]
    if Path("/run/systemd/system").is_dir() and state == "enabled":
        listed = subprocess.run([systemctl, "list-timers", "--all", "--no-pager", "--output=json", unit],
                                capture_output=True, text=True, timeout=10)
        rows.append(_schedule_row(listed.stdout, unit))
    else:
        rows.append(DiagnosticRow(g, "schedule", "info", "systemd is not running here: no last/next run"))
    return rows


def _schedule_row(listed: str, unit: str) -> DiagnosticRow:
    """The timer's last and next run from ``systemctl list-timers --output=json`` (microseconds
    since the epoch; ``systemctl show`` prints them only as local-time text in systemd 252)."""
    now = time.time()
    try:
        timers = json.loads(listed)
    except ValueError:
        timers = []
    entry = next((t for t in timers if isinstance(t, dict) and t.get("unit") == unit), {}) if isinstance(timers, list) else {}
    values: dict[str, Any] = {}
    for key, prefix in (("last", "last_run"), ("next", "next_run")):
        usec = entry.get(key)
        values.update(time_values(prefix, usec / 1e6 if isinstance(usec, int) and usec > 0 else None, now))
    detail = "" if entry else "systemctl list-timers does not list it"
    return DiagnosticRow("timer", "schedule", "info", detail, values=values)


def check_log(rt: Runtime) -> list[DiagnosticRow]:
    """The last five status lines: read with read_tail (no symlink, no FIFO, at most 64 KiB)."""
    from .fileio import read_tail

    path = ResolvedPaths.of(rt.settings).log_file
    start = f"systemctl start claude-auth-sync@{rt.user.name}.service"
    try:
        data = read_tail(path)
    except CasError as err:
        return [DiagnosticRow("private log", "last run", "fail", err.message, f"move {path} aside, then {start}",
                              values={"path": str(path)})]
    if data is None:
        return [DiagnosticRow("private log", "last run", "warn", f"no run recorded yet in {path}", start, values={"path": str(path)})]
    lines = data.decode("utf-8", errors="replace").splitlines()[-5:]
    rows = []
    now = time.time()
    for index, line in enumerate(lines):
        detail, values = _condensed(line, now)
        state: DiagnosticState = {"OK": "ok", "WARN": "warn", "FAIL": "fail"}.get(str(values["status"]), "info")
        last = index == len(lines) - 1
        fix = None
        if last and state == "fail":
            fix = RELOGIN_COMMAND if values.get("reason") == "auth_failed" else "claude-auth-sync diagnose --probe"
        rows.append(DiagnosticRow("private log", "last run" if last else "earlier run", state if last else "info", detail, fix,
                                  values=values))
    return rows


def _condensed(line: str, now: float) -> tuple[str, dict[str, Any]]:
    """``<time> <STATUS> action=.. reason=..`` of a status line (the rest is in the log itself), and
    its facts: ``status``, ``action``, ``reason``, ``ran_at``/``ran_at_epoch``/``ran_in_s``."""
    parts = line.split(" ")
    fields = dict(p.split("=", 1) for p in parts[2:] if p.split("=", 1)[0] in ("action", "reason"))
    values: dict[str, Any] = {"status": parts[1] if len(parts) > 1 else None, "action": fields.get("action"),
                              "reason": fields.get("reason"), **time_values("ran", epoch_of_iso(parts[0]), now)}
    return " ".join(parts[:2] + [f"{k}={v}" for k, v in fields.items()]), values


def check_probe(rt: Runtime) -> list[DiagnosticRow]:
    result = rt.probe().run()
    state: DiagnosticState = {"authenticated": "ok", "unavailable": "warn"}.get(str(result.outcome), "fail")
    fix = {ProbeOutcome.AUTH_FAILED: f"systemctl start claude-auth-sync@{rt.user.name}.service (restores the backup); else {RELOGIN_COMMAND}",
           ProbeOutcome.BROKEN: "npm install -g @anthropic-ai/claude-code"}.get(result.outcome)
    detail = f"{result.outcome} ({result.reason}), {result.duration_s:.1f} s"
    return [DiagnosticRow("probe", "inference", state, detail, fix, values={
        "outcome": str(result.outcome), "reason": result.reason, "duration_ms": int(result.duration_s * 1000)})]


CHECKS: list[tuple[str, Callable[[Runtime], list[DiagnosticRow]]]] = [
    ("local login", check_local_login),
    ("environment", check_environment),
    ("paths", check_paths),
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
    """The JSON document of :mod:`.diagnose_output` (schema version 1)."""
    provenance = settings_provenance(rt.settings)
    settings = json.loads(rt.settings.model_dump_json())
    flat = {}
    for key, source in provenance.items():
        value: Any = settings
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        flat[key] = {"value": value, "source": source}
    return document(rt.user.name, rows, flat)


def document(user: str, rows: list[DiagnosticRow], settings: dict[str, Any], *, exit_code: int | None = None) -> dict[str, Any]:
    """The keys every ``--json`` answer has, whatever happened (``exit_code`` forces a failure's)."""
    checks = [{**asdict(r), "values": dict(r.values)} for r in rows]
    ok = not any(r.state == "fail" for r in rows)
    now = int(time.time())
    return {
        "schema_version": SCHEMA_VERSION,
        "user": user,
        "ok": ok and exit_code is None,
        "exit_code": exit_code if exit_code is not None else (0 if ok else 1),
        "generated_at": iso_utc(now),
        "generated_at_epoch": now,
        "summary": summary(checks),
        "checks": checks,
        "next_steps": next_steps(checks),
        "settings": settings,
    }


def command_diagnose(*, json_output: bool, probe: bool, overrides: Mapping[str, Any], verbose: bool = False) -> int:
    """Exit 0 when nothing fails, 1 when a row fails, 78 when settings or plugins cannot load
    (with ``--json``: still one JSON object on stdout, its one row saying why)."""
    try:
        rt = build_runtime(overrides)
    except CasError as err:
        if not json_output:
            raise
        row = DiagnosticRow("settings", "load", "fail", err.message, err.remedy, values={"reason": err.reason})
        print(json.dumps(document(UserIdentity.current().name, [row], {}, exit_code=int(err.exit_code)), sort_keys=True))
        return int(err.exit_code)
    rows = collect(rt, probe=probe)
    data = report(rt, rows)
    if json_output:
        print(json.dumps(data, sort_keys=True))
    else:
        from rich.console import Console

        render_table(data, Console(file=sys.stdout, emoji=False), verbose=verbose)
    return int(data["exit_code"])
