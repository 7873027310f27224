"""The ``file`` credential store: one JSON file per user, the embedded default for a first run.

For a newcomer without Vault: ``CLAUDE_AUTH_SYNC_BACKEND=file`` keeps the latest OAuth object in
``<directory>/<user>.json`` (directory 0700, file 0600; default ``$XDG_STATE_HOME/claude-auth-sync/backup``).
The file holds ``{"version": N, "updated": "...", "data": {"claudeAiOauth": {...}}}``; only the
latest version is kept (it is a local convenience, not an audit trail). Writes are atomic and
check-and-set against ``version`` like the Vault backend. It never falls back to anything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from claude_auth_sync.cycle import utc_timestamp
from claude_auth_sync.errors import BackendConflict, BackendRefused
from claude_auth_sync.fileio import read_private, replace_private
from claude_auth_sync.hookspecs import PluginContext, SettingsSection, BackendSpec, hookimpl
from claude_auth_sync.model import BackendHealth, DiagnosticRow, OAuth, StoredCopy

__all__ = ["FileBackend", "FileBackendSettings"]


class FileBackendSettings(BaseModel):
    """Section ``file`` (``CLAUDE_AUTH_SYNC_FILE__DIRECTORY``)."""

    model_config = ConfigDict(extra="forbid")

    directory: Path | None = None


class FileBackend:
    """The latest OAuth object of one user in a private JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def renew(self) -> BackendHealth:
        return BackendHealth(ttl_s=None, details={"path": str(self.path)})

    def read_latest(self) -> StoredCopy | None:
        record = self._load()
        if record is None:
            return None
        return StoredCopy(oauth=record["data"]["claudeAiOauth"], version=record["version"], updated=record.get("updated"))

    def write(self, oauth: OAuth, *, expected_version: int | None) -> int:
        record = self._load()
        current = record["version"] if record else None
        if current != expected_version:
            raise BackendConflict(f"{self.path} changed meanwhile (version {current}, expected {expected_version})")
        version = (current or 0) + 1
        body = {"version": version, "updated": utc_timestamp(), "data": {"claudeAiOauth": dict(oauth)}}
        replace_private(self.path, json.dumps(body, indent=2).encode("utf-8"))
        return version

    def describe(self) -> dict[str, Any]:
        record = self._load()
        return {
            "backend": "file",
            "path": str(self.path),
            "current_version": record["version"] if record else None,
            "updated": record.get("updated") if record else None,
        }

    def _load(self) -> dict[str, Any] | None:
        raw = read_private(self.path)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            if not isinstance(record["data"]["claudeAiOauth"], dict):
                raise TypeError("claudeAiOauth is not an object")
            if not isinstance(record["version"], int) or isinstance(record["version"], bool) or record["version"] < 1:
                raise TypeError("version is not a positive integer")
        except (ValueError, KeyError, TypeError, RecursionError):
            raise BackendRefused(
                f"the backup file {self.path} is damaged", reason="store_damaged",
                remedy=f"move {self.path} aside; the next healthy run writes a new one",
            ) from None
        return record


@hookimpl
def cas_settings_sections() -> list[SettingsSection]:
    return [SettingsSection("file", FileBackendSettings)]


@hookimpl
def cas_backends() -> list[BackendSpec]:
    def build(ctx: PluginContext) -> FileBackend:
        section: FileBackendSettings = ctx.settings.section("file")
        assert ctx.settings.state_dir is not None
        directory = section.directory or ctx.settings.state_dir / "backup"
        return FileBackend(directory / f"{ctx.user.name}.json")

    return [BackendSpec("file", build, "one private JSON file per user (no Vault needed)")]


@hookimpl
def cas_diagnose(ctx: PluginContext, component: object) -> list[DiagnosticRow]:
    if not isinstance(component, FileBackend):
        return []
    facts = component.describe()
    if not facts["current_version"]:
        return [DiagnosticRow("backend", "backup file", "info", f"{facts['path']} (none yet)")]
    return [DiagnosticRow("backend", "backup file", "ok",
                          f"{facts['path']}: version {facts['current_version']}, updated {facts['updated']}")]
