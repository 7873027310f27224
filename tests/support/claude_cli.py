"""Helpers for running the real Claude Code CLI (2.1.332) as a health probe in tests.

Findings these helpers encode (verified by experiment against
:class:`tests.support.fake_anthropic.FakeMessagesAPI`):

* Credentials: ``$CLAUDE_CONFIG_DIR/.credentials.json`` with a ``claudeAiOauth`` object.
  The CLI only uses it when ``accessToken`` is present **and** ``scopes`` contains
  ``"user:inference"``; otherwise it answers ``Not logged in · Please run /login``.
  ``refreshToken``/``expiresAt``/``subscriptionType`` are optional; a ``.claude.json`` or
  onboarding state is not needed (the CLI creates ``.claude.json`` itself).
  With ``"user:profile"`` in the scopes it also GETs ``https://api.anthropic.com/api/oauth/profile``
  (outside the base URL; fails fast here, harmless), so the tests use ``["user:inference"]``.
* An expired ``expiresAt`` makes the CLI try a refresh at ``platform.claude.com`` (not the base
  URL); when that fails it still sends the old token.  Keep ``expiresAt`` in the future.
* ``CLAUDE_CODE_OAUTH_TOKEN``, ``ANTHROPIC_AUTH_TOKEN`` and ``ANTHROPIC_API_KEY`` in the
  environment all override the file's token, and a user ``settings.json`` ``env`` block overrides
  the process environment (even ``ANTHROPIC_BASE_URL``) unless ``--setting-sources ""`` is given.
* ``CLAUDE_CODE_MAX_RETRIES=0`` turns off retries of 429/5xx/529/connection errors (the default
  is 10 retries, about 3 minutes).  A 401 still costs one refresh attempt plus one resend.
* ``API_TIMEOUT_MS`` bounds a single request (the message then says "Request timed out").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from tests.support.home import private_home_env

__all__ = [
    "AUTH_OVERRIDE_VARS",
    "CLAUDE_BIN",
    "CliRun",
    "PROBE_ARGV",
    "QUIET_ENV",
    "claude_path",
    "cli_env",
    "run_cli",
    "write_credentials",
]

#: The CLI binary the tests run.
CLAUDE_BIN = "claude"

#: argv after the binary for the probe: print mode, haiku, no session file, no tools, no MCP
#: servers, no user/project/local settings files, one JSON result, a one-word prompt.
#: Keep the prompt last: ``--tools`` is variadic and would swallow a following positional.
PROBE_ARGV: list[str] = [
    "-p",
    "--model",
    "haiku",
    "--no-session-persistence",
    "--tools",
    "",
    "--strict-mcp-config",
    "--setting-sources",
    "",
    "--output-format",
    "json",
    "ok",
]

#: Environment that keeps the CLI to the one inference call and makes failures fast.
QUIET_ENV: dict[str, str] = {
    # No telemetry, no /api/hello reachability check, no bootstrap/MCP-registry fetches.
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    # One attempt only on 429/500/529/connection errors (default: 10 retries, ~3 min).
    "CLAUDE_CODE_MAX_RETRIES": "0",
}

#: Variables that would make the CLI use some other credential than the credentials file,
#: or talk to somewhere else; cli_env removes them from ``base_env``.
AUTH_OVERRIDE_VARS: frozenset[str] = frozenset(
    {
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR",
        "CLAUDE_CODE_OAUTH_REFRESH_TOKEN",
        "CLAUDE_CODE_OAUTH_SCOPES",
        "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_UNIX_SOCKET",
        "ANTHROPIC_CUSTOM_HEADERS",
        "CLAUDE_CODE_USE_BEDROCK",
        "CLAUDE_CODE_USE_VERTEX",
        "CLAUDE_CODE_USE_FOUNDRY",
        "CLAUDE_CODE_CUSTOM_OAUTH_URL",
        "CLAUDE_CONFIG_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    }
)


def write_credentials(
    config_dir: Path,
    access_token: str,
    refresh_token: str,
    *,
    expires_in_s: int = 3600 * 24,
    extra_top_level: dict[str, Any] | None = None,
    scopes: list[str] | None = None,
    subscription_type: str | None = "max",
) -> Path:
    """Write ``config_dir/.credentials.json`` the way Claude Code stores an OAuth login.

    ``config_dir`` is created (mode 0700) if needed; the file is written with mode 0600.
    ``expiresAt`` is now + ``expires_in_s`` in epoch milliseconds (negative = already expired).
    ``scopes`` defaults to ``["user:inference"]`` -- the one scope the CLI requires.
    ``extra_top_level`` is merged into the top-level object (e.g. ``{"mcpOAuth": {...}}``).
    Returns the path of the credentials file.
    """
    config_dir = Path(config_dir)
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(config_dir, 0o700)
    oauth: dict[str, Any] = {
        "accessToken": access_token,
        "refreshToken": refresh_token,
        "expiresAt": int((time.time() + expires_in_s) * 1000),
        "scopes": list(scopes) if scopes is not None else ["user:inference"],
    }
    if subscription_type is not None:
        oauth["subscriptionType"] = subscription_type
    document: dict[str, Any] = {"claudeAiOauth": oauth}
    if extra_top_level:
        document.update(extra_top_level)
    path = config_dir / ".credentials.json"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def cli_env(config_dir: Path, base_url: str, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for running the real CLI against a fake API at ``base_url``.

    Starts from ``base_env`` (default: only ``PATH``, ``LANG`` and ``TZ`` of this process),
    drops every ``CLAUDE_*``/``ANTHROPIC_*`` variable and the other variables in
    :data:`AUTH_OVERRIDE_VARS`, then sets ``CLAUDE_CONFIG_DIR``, ``ANTHROPIC_BASE_URL``,
    :data:`QUIET_ENV` and a private ``HOME`` (``<config_dir>-home``, mode 0700, plus
    ``XDG_*`` dirs inside it) so nothing of the invoking user's home leaks in.
    ``NO_PROXY`` covers loopback.  A test that wants to show an override (e.g.
    ``CLAUDE_CODE_OAUTH_TOKEN``) adds it to the returned dict.
    """
    config_dir = Path(config_dir)
    if base_env is None:
        base_env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
        base_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {
        k: v
        for k, v in base_env.items()
        if k not in AUTH_OVERRIDE_VARS and not k.startswith(("CLAUDE_", "ANTHROPIC_"))
    }
    env.update(private_home_env(config_dir.with_name(config_dir.name + "-home")))
    env.update(
        {
            "CLAUDE_CONFIG_DIR": str(config_dir),
            "ANTHROPIC_BASE_URL": base_url,
            "NO_PROXY": "127.0.0.1,localhost,::1",
            "no_proxy": "127.0.0.1,localhost,::1",
        }
    )
    env.update(QUIET_ENV)
    return env


def claude_path() -> str | None:
    """Absolute path of the ``claude`` binary on ``PATH``, or ``None``."""
    return shutil.which(CLAUDE_BIN)


@dataclass(frozen=True)
class CliRun:
    """Outcome of one CLI run.  ``result`` is the parsed stdout JSON (``None`` if not JSON)."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    result: dict[str, Any] | None


def run_cli(
    env: Mapping[str, str],
    argv: Sequence[str] = PROBE_ARGV,
    *,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> CliRun:
    """Run ``claude *argv`` with exactly ``env`` (stdin closed) and parse its JSON stdout.

    ``cwd`` defaults to ``$HOME`` of ``env`` so no project files of the caller are seen.
    Raises :class:`subprocess.TimeoutExpired` (after killing the CLI) past ``timeout``.
    """
    binary = claude_path() or CLAUDE_BIN
    workdir = cwd if cwd is not None else Path(env.get("HOME", "/"))
    started = time.monotonic()
    proc = subprocess.run(
        [binary, *argv],
        env=dict(env),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.monotonic() - started
    parsed: dict[str, Any] | None = None
    try:
        value = json.loads(proc.stdout) if proc.stdout.strip() else None
        if isinstance(value, dict):
            parsed = value
    except ValueError:
        parsed = None
    return CliRun(proc.returncode, proc.stdout, proc.stderr, wall, parsed)
