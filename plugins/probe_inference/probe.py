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

from claude_auth_sync.model import LOGIN_VARIABLES, ProbeOutcome, ProbeResult

from . import InferenceSettings

__all__ = ["LOGIN_VARIABLES", "InferenceProbe", "classify_output", "cli_version", "is_passed_to_probe", "scrub_environment"]

# Keep the probe minimal: no telemetry, no updater, a bounded number of the CLI's own retries
# (each defaults only: an operator's explicit value wins).
QUIET = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_MAX_RETRIES": "2",
}

# Only used when the JSON carries no HTTP status (the CLI's own checks, transport errors).
_NOT_LOGGED_IN = re.compile(r"not logged in|please run /login|oauth token (revoked|has expired)|log in again", re.IGNORECASE)
_TRANSPORT = re.compile(
    r"connection|econnrefused|econnreset|etimedout|enotfound|eai_again|socket hang up|timed out|timeout|network|fetch failed",
    re.IGNORECASE,
)
_AUTH_TYPES = {"authentication_error", "permission_error"}
_UNAVAILABLE_TYPES = {"rate_limit_error", "overloaded_error", "api_error", "timeout_error"}


# The probe's environment is an allow-list: what the CLI needs to find its home, speak the locale,
# reach the API (proxies, CA bundles, the base URL) and behave quietly. Nothing else is passed.
_PASSED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "LANG", "LANGUAGE", "TZ",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "NODE_EXTRA_CA_CERTS", "NODE_USE_SYSTEM_CA", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "ANTHROPIC_BASE_URL",
    "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR",
    "XDG_CONFIG_DIRS", "XDG_DATA_DIRS",
    "CLAUDE_CODE_MAX_RETRIES", "API_TIMEOUT_MS",
})
# Locale categories and the CLI's off-switches (DISABLE_TELEMETRY, CLAUDE_CODE_DISABLE_...): flags, not secrets.
_PASSED_PREFIXES = ("LC_", "DISABLE_", "CLAUDE_CODE_DISABLE_")
# A name holding one of these is never passed, whatever list or prefix it matches.
_CREDENTIAL_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH", "COOKIE", "SESSION")


def is_passed_to_probe(name: str) -> bool:
    """True for a variable on the allow-list (an exact name or a flag prefix) that names no credential."""
    upper = name.upper()
    if any(word in upper for word in _CREDENTIAL_WORDS):
        return False
    return name in _PASSED_NAMES or name.startswith(_PASSED_PREFIXES)


def scrub_environment(environ: Mapping[str, str], config_dir: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """The CLI's environment and the login-replacing variables that were found (names only).

    Guarantees: only allow-listed variables (:func:`is_passed_to_probe`) are passed, so no token,
    key, password or other credential-like variable (``BAO_TOKEN``, ``VAULT_*``, the CLI's own
    session/file-descriptor token variables, a provider switch such as ``CLAUDE_CODE_USE_BEDROCK``)
    reaches the CLI; ``CLAUDE_CONFIG_DIR`` is always the probed directory; the quiet defaults
    apply only where the operator set no value. The contract's login variables that are set are
    returned by name, never by value.
    """
    found = tuple(name for name in LOGIN_VARIABLES if environ.get(name))
    env = {name: value for name, value in environ.items() if is_passed_to_probe(name)}
    env["CLAUDE_CONFIG_DIR"] = str(config_dir)
    for key, value in QUIET.items():
        env.setdefault(key, value)
    return env, found


def classify_output(returncode: int, stdout: str) -> tuple[ProbeOutcome, str, int | None]:
    """Classify the CLI's JSON result and exit code: (outcome, short reason, HTTP status).

    The decision rests on ``is_error``, ``api_error_status`` and ``api_error_type`` (the result
    text depends on the server's message); the text is consulted only when there is no status.
    CLI 2.1.x reports ``subtype: "success"`` even for API errors, and exits 0 when interrupted.
    """
    result = _last_json_object(stdout)
    if result is None:
        if returncode == 0:
            return ProbeOutcome.BROKEN, "cli_output_unparseable", None
        return ProbeOutcome.BROKEN, f"cli_exit_{returncode}", None
    raw_status = result.get("api_error_status")
    status = int(raw_status) if isinstance(raw_status, int) or (isinstance(raw_status, str) and raw_status.isdigit()) else None
    error_type = str(result.get("api_error_type") or "")
    if not result.get("is_error") and result.get("subtype") in (None, "success") and returncode == 0:
        return ProbeOutcome.AUTHENTICATED, "ok", None
    if status in (401, 403) or error_type in _AUTH_TYPES:
        return ProbeOutcome.AUTH_FAILED, f"http_{status}" if status else error_type, status
    if (status is not None and (status == 429 or status >= 500)) or error_type in _UNAVAILABLE_TYPES:
        return ProbeOutcome.UNAVAILABLE, f"http_{status}" if status else error_type, status
    if status is not None:  # 400/404: e.g. an unknown model: configuration
        return ProbeOutcome.BROKEN, f"http_{status}", status
    text = str(result.get("result") or "")
    if _NOT_LOGGED_IN.search(text):
        return ProbeOutcome.AUTH_FAILED, "not_logged_in", None
    if _TRANSPORT.search(text):
        return ProbeOutcome.UNAVAILABLE, "api_unreachable", None
    if result.get("subtype") == "error_during_execution":
        return ProbeOutcome.UNAVAILABLE, "cli_interrupted", None
    return ProbeOutcome.BROKEN, f"cli_error_exit_{returncode}", None


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
        # --tools takes several values, so the prompt comes last. --setting-sources "" keeps the
        # env block of a settings.json from replacing the login or the base URL behind our back.
        return [
            binary, "-p", "--model", self.settings.model, "--no-session-persistence",
            "--tools", "", "--strict-mcp-config", "--setting-sources", "",
            "--output-format", "json", self.settings.prompt,
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
