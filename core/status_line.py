"""The status line of the private log: one format, written by the ``file`` sink, read by ``check``,
``diagnose`` and the fleet view.

``2026-11-28T20:10:45Z OK user=alice action=none probe_ms=812 ...``: an ISO-8601 UTC timestamp,
the status word, then ``key=value`` fields in the event's order. Values that are not plain
tokens are JSON-quoted (ASCII, so control characters are escaped), so a line is always one line
and :func:`parse_log_line` reads back exactly what :func:`format_status_line` wrote.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .model import StatusEvent

__all__ = ["LogRecord", "format_status_line", "parse_log_line", "rotated_log"]

_PLAIN = re.compile(r"^[A-Za-z0-9_.:/@+,-]+$")


def _value(text: str) -> str:
    return text if _PLAIN.match(text) else json.dumps(text, ensure_ascii=True)


def rotated_log(path: Path) -> Path:
    """Where the previous part of a rotated status log is kept (``sync.log`` -> ``sync.log.1``)."""
    return path.with_name(path.name + ".1")


def format_status_line(event: StatusEvent) -> str:
    """``2026-11-28T20:10:45Z OK user=alice action=none probe_ms=812 ...`` plus a newline."""
    parts = [event.timestamp, str(event.status)]
    parts += [f"{key}={_value(value)}" for key, value in event.fields().items()]
    return " ".join(parts) + "\n"


@dataclass(frozen=True)
class LogRecord:
    when: datetime
    status: str
    fields: Mapping[str, str]


def parse_log_line(line: str) -> LogRecord | None:
    """One ``sync.log`` line; None if it does not have the contract's shape."""
    try:
        parts = shlex.split(line)
    except ValueError:
        return None
    if len(parts) < 2 or parts[1] not in ("OK", "WARN", "FAIL"):
        return None
    try:
        when = datetime.strptime(parts[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    fields = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    return LogRecord(when, parts[1], fields)
