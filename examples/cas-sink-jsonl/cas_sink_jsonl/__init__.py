"""A worked example of a third-party claude-auth-sync plugin: the ``jsonl`` sink.

Enable it with ``CLAUDE_AUTH_SYNC_SINKS='["file","journald","jsonl"]'`` and choose the file with
``CLAUDE_AUTH_SYNC_JSONL__PATH=/var/tmp/cas-events.jsonl`` (or ``[jsonl] path = ...`` in TOML).
It shows the two hooks most plugins need: a settings section and a provider record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from claude_auth_sync.hookspecs import PluginContext, SettingsSection, SinkSpec, hookimpl
from claude_auth_sync.model import StatusEvent


class JsonlSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path | None = None  # default: <state dir>/events.jsonl


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, event: StatusEvent) -> None:
        # The event holds fingerprints, never tokens: it is safe to write as it is.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(json.dumps(event.to_json(), sort_keys=True) + "\n")


@hookimpl
def cas_settings_sections() -> list[SettingsSection]:
    return [SettingsSection("jsonl", JsonlSettings)]


@hookimpl
def cas_sinks() -> list[SinkSpec]:
    def build(ctx: PluginContext) -> JsonlSink:
        settings: JsonlSettings = ctx.settings.section("jsonl")
        return JsonlSink(settings.path or Path(str(ctx.settings.state_dir)) / "events.jsonl")

    return [SinkSpec("jsonl", build, "each status event as one JSON line (example plugin)")]
