"""Running and classifying the ``claude`` CLI probe (see the package docstring)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from claude_auth_sync.model import ProbeOutcome, ProbeResult

from . import InferenceSettings

__all__ = ["LOGIN_VARIABLES", "InferenceProbe", "classify_output", "scrub_environment", "cli_version"]

LOGIN_VARIABLES = ("CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_OAUTH_REFRESH_TOKEN", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
QUIET = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}

_AUTH_TEXT = re.compile(
    r"invalid (api key|bearer token|x-api-key)|authentication_error|oauth token (has expired|revoked|.*invalid)"
    r"|not logged in|please run /login|/login|permission_error|invalid_grant|token (expired|revoked)"
    r"|credit balance|401|403",
    re.IGNORECASE,
)
_UNAVAILABLE_TEXT = re.compile(
    r"overloaded|rate.?limit|connection|econnrefused|econnreset|etimedout|enotfound|socket hang up|timed? ?out"
    r"|fetch failed|network|api_error|internal server error|service unavailable|bad gateway|529|5\d\d|429",
    re.IGNORECASE,
)


def scrub_environment(environ: Mapping[str, str], config_dir: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """The CLI's environment and the login-replacing variables that were found (names only)."""
    found = tuple(name for name in LOGIN_VARIABLES if environ.get(name))
    env = {k: v for k, v in environ.items() if k not in LOGIN_VARIABLES and not k.startswith("VAULT_")}
    env["CLAUDE_CONFIG_DIR"] = str(config_dir)
    for key, value in QUIET.items():
        env.setdefault(key, value)
    return env, found


def classify_output(returncode: int, stdout: str) -> tuple[ProbeOutcome, str, int | None]:
    """Classify the CLI's JSON result and exit code: (outcome, short reason, HTTP status)."""
    result = _last_json_object(stdout)
    if result is None:
        if returncode == 0:
            return ProbeOutcome.BROKEN, "cli_output_unparseable", None
        return ProbeOutcome.BROKEN, f"cli_exit_{returncode}", None
    status = result.get("api_error_status")
    status = int(status) if isinstance(status, (int, str)) and str(status).isdigit() else None
    is_error = bool(result.get("is_error")) or result.get("subtype") not in (None, "success")
    if not is_error and returncode == 0:
        return ProbeOutcome.AUTHENTICATED, "ok", status
    if status in (401, 403):
        return ProbeOutcome.AUTH_FAILED, f"http_{status}", status
    if status is not None and (status == 429 or status >= 500):
        return ProbeOutcome.UNAVAILABLE, f"http_{status}", status
    text = str(result.get("result") or result.get("error") or "")
    if _AUTH_TEXT.search(text):
        return ProbeOutcome.AUTH_FAILED, "auth_error", status
    if _UNAVAILABLE_TEXT.search(text) or status is not None:
        return ProbeOutcome.UNAVAILABLE, f"http_{status}" if status else "api_unreachable", status
    return ProbeOutcome.BROKEN, f"cli_error_exit_{returncode}", status


def _last_json_object(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
        for line in reversed(text.splitlines()):
            try:
                value = json.loads(line)
                break
            except ValueError:
                continue
    if isinstance(value, list):  # stream/verbose form: the last "result" record
        value = next((v for v in reversed(value) if isinstance(v, dict) and v.get("type") == "result"), None)
    return value if isinstance(value, dict) else None


def cli_version(binary: str) -> str | None:
    """The CLI's version from its npm package.json (no process start), else None."""
    real = Path(binary).resolve()
    for parent in list(real.parents)[:4]:
        manifest = parent / "package.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                return None
            if data.get("name") == "@anthropic-ai/claude-code":
                return str(data.get("version"))
    return None


class InferenceProbe:
    """One real inference with the user's own login. ``run()`` never raises for CLI problems."""

    def __init__(self, settings: InferenceSettings, config_dir: Path, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.environ = dict(environ)

    def binary(self) -> str | None:
        configured = self.settings.claude_bin
        if configured:
            return configured if os.path.isfile(configured) and os.access(configured, os.X_OK) else None
        return shutil.which("claude", path=self.environ.get("PATH", os.defpath))

    def argv(self, binary: str) -> list[str]:
        return [
            binary, "-p", "--model", self.settings.model, "--no-session-persistence",
            "--tools", "", "--output-format", "json", self.settings.prompt,
        ]

    def run(self) -> ProbeResult:
        started = time.monotonic()
        env, found = scrub_environment(self.environ, self.config_dir)
        binary = self.binary()
        if binary is None:
            return ProbeResult(ProbeOutcome.BROKEN, "cli_missing", time.monotonic() - started, warnings=found)
        version = cli_version(binary)
        try:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self.argv(binary), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, cwd=self.config_dir if self.config_dir.is_dir() else "/", start_new_session=True, text=True,
            )
        except OSError:
            return ProbeResult(ProbeOutcome.BROKEN, "cli_not_executable", time.monotonic() - started, cli_version=version, warnings=found)
        try:
            stdout, _stderr = proc.communicate(timeout=self.settings.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return ProbeResult(ProbeOutcome.UNAVAILABLE, "timeout", time.monotonic() - started, cli_version=version, warnings=found)
        except BaseException:
            _kill_group(proc)
            raise
        outcome, reason, status = classify_output(proc.returncode, stdout)
        if proc.returncode < 0:
            outcome, reason = ProbeOutcome.BROKEN, f"cli_killed_by_signal_{-proc.returncode}"
        return ProbeResult(outcome, reason, time.monotonic() - started, http_status=status, cli_version=version, warnings=found)

    def describe(self) -> dict[str, Any]:
        binary = self.binary()
        return {"binary": binary, "version": cli_version(binary) if binary else None, "model": self.settings.model,
                "timeout_s": self.settings.timeout}


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the CLI's whole process group, then SIGKILL after 2 s; reap it."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        proc.communicate(timeout=1)
    except (subprocess.TimeoutExpired, ValueError):
        pass
