"""The ``inference`` probe: one minimal real Haiku inference through the ``claude`` CLI.

``claude auth status`` can say "logged in" while every request returns HTTP 401, so the only
truthful check is a real request. The probe runs::

    claude -p --model haiku --no-session-persistence --tools "" --strict-mcp-config \\
           --setting-sources "" --output-format json ok

with the user's own login, a hard timeout that kills the whole process group, and an allow-listed
environment (locale, ``PATH``/``HOME``/``XDG_*``, proxies, CA bundles, ``ANTHROPIC_BASE_URL`` and
the CLI's off-switches; never a name containing TOKEN, KEY, SECRET, PASSWORD, CREDENTIAL or AUTH).
The variables that would replace the user's login (``CLAUDE_CODE_OAUTH_TOKEN``,
``CLAUDE_CODE_OAUTH_REFRESH_TOKEN``, ``ANTHROPIC_API_KEY``, ``ANTHROPIC_AUTH_TOKEN``) are reported
by name, never by value.

The outcome is classified from the CLI's JSON result (``is_error``, ``api_error_status``, the
message) and its exit code: authenticated / auth_failed / unavailable / broken. Neither the
response body nor stderr is kept: only a short reason token and the HTTP status.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from claude_auth_sync.hookspecs import PluginContext, ProbeSpec, SettingsSection, hookimpl

__all__ = ["InferenceSettings", "cas_settings_sections", "cas_probes"]


class InferenceSettings(BaseModel):
    """Section ``inference`` (``CLAUDE_AUTH_SYNC_INFERENCE__*``)."""

    model_config = ConfigDict(extra="forbid")

    claude_bin: str | None = Field(None, description="path to claude; default: claude found on PATH")
    model: str = Field("haiku", min_length=1, description="model alias for the probe")
    timeout: float = Field(120.0, gt=0, le=3600, description="seconds before the CLI's process group is killed")
    prompt: str = Field("ok", min_length=1, max_length=64, description="the one-word prompt")


@hookimpl
def cas_settings_sections() -> list[SettingsSection]:
    return [SettingsSection("inference", InferenceSettings)]


@hookimpl
def cas_probes() -> list[ProbeSpec]:
    def build(ctx: PluginContext):  # type: ignore[no-untyped-def]
        from .probe import InferenceProbe

        assert ctx.settings.claude_config_dir is not None
        return InferenceProbe(ctx.settings.section("inference"), Path(ctx.settings.claude_config_dir), ctx.environ)

    return [ProbeSpec("inference", build, "a minimal real inference through the claude CLI")]
