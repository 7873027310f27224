"""The ``journald`` sink: each status event as one native journal entry.

Sent as a datagram over the Native Journal Protocol (see :mod:`.journal_protocol`, our own small
sender: no libsystemd headers or binary wheels needed) to ``journald.socket`` (default
``/run/systemd/journal/socket``). Fields:

* ``MESSAGE``: the status word first, then the ``key=value`` fields (``OK user=alice action=none ...``);
* ``SYSLOG_IDENTIFIER=claude-auth-sync`` (so ``journalctl -t claude-auth-sync`` finds it);
* ``PRIORITY``: 6 for OK, 4 for WARN, 3 for FAIL;
* ``CAS_STATUS``, ``CAS_USER``, ``CAS_ACTION``, ``CAS_REASON`` and every other event field as
  ``CAS_<NAME>`` (timings, fingerprints, CLI version, ...). A user who never logged in has
  ``CAS_REASON=awaiting_first_login`` and ``CAS_AWAITING_FIRST_LOGIN_SINCE`` (epoch seconds: how
  long the waiting has lasted); a logout has ``CAS_REASON=not_logged_in`` and no such field.

No journal (a container, a laptop): the sink raises :class:`JournalUnavailable`, which the core
reports once on stderr; the cycle's outcome and exit code are unchanged.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from claude_auth_sync.hookspecs import PluginContext, SettingsSection, SinkSpec, hookimpl
from claude_auth_sync.model import Status, StatusEvent

from .journal_protocol import DEFAULT_SOCKET, JournalUnavailable, send_entry

__all__ = ["JournaldSettings", "JournaldSink", "JournalUnavailable", "journal_fields", "IDENTIFIER"]

IDENTIFIER = "claude-auth-sync"
PRIORITY = {Status.OK: "6", Status.WARN: "4", Status.FAIL: "3"}


class JournaldSettings(BaseModel):
    """Section ``journald`` (``CLAUDE_AUTH_SYNC_JOURNALD__SOCKET``)."""

    model_config = ConfigDict(extra="forbid")

    socket: str = Field(DEFAULT_SOCKET, description="the journal's native socket")


def journal_fields(event: StatusEvent) -> dict[str, str]:
    """The journal entry for ``event`` (contract field names)."""
    flat = event.fields()
    fields = {
        "MESSAGE": " ".join([str(event.status), *(f"{k}={v}" for k, v in flat.items())]),
        "PRIORITY": PRIORITY[event.status],
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "CAS_STATUS": str(event.status),
        "CAS_USER": event.user,
        "CAS_ACTION": str(event.action),
        "CAS_REASON": event.reason or "",
        "CAS_EXIT_CODE": str(int(event.exit_code)),
        "CAS_TIMESTAMP": event.timestamp,
    }
    for key, value in flat.items():
        # journald refuses names over 64 characters (the whole entry would be lost): truncate.
        name = ("CAS_" + re.sub(r"[^A-Z0-9_]", "_", key.upper()))[:64]
        fields.setdefault(name, value)
    return fields


class JournaldSink:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def emit(self, event: StatusEvent) -> None:
        send_entry(journal_fields(event), self.socket_path)


@hookimpl
def cas_settings_sections() -> list[SettingsSection]:
    return [SettingsSection("journald", JournaldSettings)]


@hookimpl
def cas_sinks() -> list[SinkSpec]:
    def build(ctx: PluginContext) -> JournaldSink:
        return JournaldSink(ctx.settings.section("journald").socket)

    return [SinkSpec("journald", build, "the systemd journal (native protocol)")]
