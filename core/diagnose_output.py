"""What ``claude-auth-sync diagnose`` prints: the ``--json`` document (schema version 1) and the table.

JSON document (``schema_version`` 1; :data:`JSON_SCHEMA`, shipped as ``docs/diagnose.schema.json``).
Keys are stable: a new key may be added within a version, none is renamed, removed or retyped.

* ``schema_version`` (1), ``user``, ``ok`` (no row fails), ``exit_code`` (0, 1, or 78 when settings or plugins cannot load);
* ``generated_at`` (ISO-8601 UTC, ``Z``) and ``generated_at_epoch`` (int);
* ``summary``: the number of rows in each state (``ok``, ``info``, ``warn``, ``fail``);
* ``checks``: every row: ``group``, ``name``, ``state``, ``detail`` (text for people, never a
  relative time), ``next_step`` (a command, or null) and ``values``: the row's facts for machines.
  In ``values`` a key ending ``_s`` is whole seconds (negative: in the past), ``_ms`` whole
  milliseconds, ``_at`` an ISO-8601 UTC time and ``_at_epoch`` the same time in epoch seconds;
* ``next_steps``: each distinct next step once, worst first: ``step``, ``state`` (the worst of the
  rows it fixes) and ``checks`` (``"group: name"`` of those rows);
* ``settings``: every setting in effect, ``{"value": ..., "source": ...}`` by dotted key.

Table: compact by default (problems, the rows that say whether it works, the next steps);
``--verbose`` shows every row and the settings in effect. Relative times ("in 3h 12m") exist only
here, derived from the ``*_at_epoch`` values. Every cell is inert text (:mod:`.terminal_text`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["JSON_SCHEMA", "SCHEMA_VERSION", "KEY_ROWS", "display_detail", "epoch_of_iso", "iso_utc", "next_steps",
           "relative_time", "render_table", "summary", "time_values"]

SCHEMA_VERSION = 1
ISO_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
#: What the JSON never carries: a relative time for people ("in 31d 23h", "5m ago").
RELATIVE_PATTERN = r"(^|[^A-Za-z0-9_])(in \d+[dhms]( \d+[dhms])?|\d+[dhms]( \d+[dhms])? ago)([^A-Za-z0-9_]|$)"
STATES = ("ok", "info", "warn", "fail")
SEVERITY = {"fail": 3, "warn": 2, "info": 1, "ok": 0}

_TEXT = {"type": "string", "not": {"pattern": RELATIVE_PATTERN}}
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "claude-auth-sync diagnose --json",
    "description": "Schema version 1; see claude_auth_sync.diagnose_output for the meaning of each key.",
    "type": "object",
    "required": ["schema_version", "user", "ok", "exit_code", "generated_at", "generated_at_epoch", "summary",
                 "checks", "next_steps", "settings"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "user": {"type": "string"},
        "ok": {"type": "boolean"},
        "exit_code": {"enum": [0, 1, 75, 78]},
        "generated_at": {"type": "string", "pattern": ISO_PATTERN},
        "generated_at_epoch": {"type": "integer"},
        "summary": {
            "type": "object", "required": list(STATES), "additionalProperties": False,
            "properties": {state: {"type": "integer", "minimum": 0} for state in STATES},
        },
        "checks": {"type": "array", "items": {"$ref": "#/$defs/row"}},
        "next_steps": {
            "type": "array",
            "items": {
                "type": "object", "required": ["step", "state", "checks"], "additionalProperties": False,
                "properties": {"step": {"type": "string"}, "state": {"enum": list(STATES)},
                               "checks": {"type": "array", "items": {"type": "string"}}},
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
    "$defs": {
        "row": {
            "type": "object",
            "required": ["group", "name", "state", "detail", "next_step", "values"],
            "additionalProperties": False,
            "properties": {
                "group": {"type": "string"},
                "name": {"type": "string"},
                "state": {"enum": list(STATES)},
                "detail": _TEXT,
                "next_step": {"anyOf": [_TEXT, {"type": "null"}]},
                "values": {
                    "type": "object",
                    "patternProperties": {
                        "_at_epoch$": {"type": ["integer", "null"]},
                        "_(s|ms)$": {"type": ["integer", "null"]},
                        "_at$": {"type": ["string", "null"], "pattern": ISO_PATTERN},
                    },
                    "additionalProperties": {"anyOf": [_TEXT, {"type": ["integer", "number", "boolean", "null"]}]},
                },
            },
        },
    },
}

#: The rows the compact table shows even when they are fine: they say whether it works.
KEY_ROWS = frozenset({
    ("local login", "access token"), ("local login", "refresh token expiry"),
    ("backend", "backend"), ("backend", "backup"), ("backend", "backup file"), ("backend", "matches local"),
    ("backend", "token TTL"), ("timer", "enabled"), ("timer", "schedule"), ("private log", "last run"),
    ("probe", "inference"),
})


def relative_time(seconds: float) -> str:
    """``in 3h 12m`` / ``5m ago`` style, to the two largest units (for the table only); ``just now``
    within a second."""
    future = seconds >= 0
    s = int(abs(seconds))
    if s == 0:
        return "just now"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    text = " ".join(parts)
    return f"in {text}" if future else f"{text} ago"


def iso_utc(epoch: float) -> str:
    """``2026-12-02T18:00:00Z`` (seconds, UTC)."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of_iso(text: object) -> int | None:
    """Epoch seconds of an RFC 3339 time (Vault's nanoseconds and offsets included), else None."""
    if not isinstance(text, str):
        return None
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text.strip())
    if not match:
        return None
    offset = "+00:00" if match.group(3) == "Z" else match.group(3)
    try:
        return int(datetime.fromisoformat(match.group(1) + offset).timestamp())
    except ValueError:
        return None


def time_values(prefix: str, epoch: float | None, now: float) -> dict[str, str | int | None]:
    """``{prefix}_at``, ``{prefix}_at_epoch`` and ``{prefix}_in_s`` (negative: past) of one time, all
    three always present (null when the time is unknown; ``_at`` alone is null for a time no calendar
    can show, e.g. an absurd expiry). Never raises."""
    if epoch is None or not math.isfinite(epoch):
        return {f"{prefix}_at": None, f"{prefix}_at_epoch": None, f"{prefix}_in_s": None}
    try:
        at: str | None = iso_utc(epoch)
    except (OverflowError, ValueError, OSError):  # an absurd expiry: the numbers stay, the calendar date cannot
        at = None
    return {f"{prefix}_at": at, f"{prefix}_at_epoch": int(epoch), f"{prefix}_in_s": int(epoch - now)}


def display_detail(row: Mapping[str, Any], now: float) -> str:
    """The table's text of a row: its detail, then each ``*_at_epoch`` value as a relative time
    (``expires in 3h 12m``, ``expired 2h ago``, ``updated 5m ago``)."""
    parts = [str(row.get("detail") or "")]
    values = row.get("values") or {}
    for key in sorted(values):
        value = values[key]
        if not key.endswith("_at_epoch") or isinstance(value, bool) or not isinstance(value, int):
            continue
        label = key.removesuffix("_at_epoch").replace("_", " ")
        if label == "expires" and value < now:
            label = "expired"
        parts.append(f"{label} {relative_time(value - now)}".strip())
    return ", ".join(p for p in parts if p)


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {state: sum(1 for r in rows if r["state"] == state) for state in STATES}


def next_steps(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct next step once, with the rows it fixes, worst first (stable otherwise)."""
    steps: dict[str, dict[str, Any]] = {}
    for row in rows:
        step = row.get("next_step")
        if not step:
            continue
        entry = steps.setdefault(step, {"step": step, "state": row["state"], "checks": []})
        if f"{row['group']}: {row['name']}" not in entry["checks"]:
            entry["checks"].append(f"{row['group']}: {row['name']}")
        if SEVERITY[row["state"]] > SEVERITY[entry["state"]]:
            entry["state"] = row["state"]
    return sorted(steps.values(), key=lambda e: -SEVERITY[e["state"]])


STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "info": "cyan"}


def _shown(row: Mapping[str, Any]) -> bool:
    """Compact table: problems, the key rows, and a path this process took instead of its XDG variable."""
    fallback = row["group"] == "paths" and (row.get("values") or {}).get("rule") == "fallback"
    return row["state"] in ("warn", "fail") or (row["group"], row["name"]) in KEY_ROWS or fallback


def _verdict(counts: Mapping[str, int]) -> str:
    warnings = f"{counts['warn']} warning{'s' if counts['warn'] != 1 else ''}"
    if counts["fail"]:
        return f"{counts['fail']} failing" + (f", {warnings}" if counts["warn"] else "")
    return f"OK, {warnings}" if counts["warn"] else "OK"


def render_table(data: Mapping[str, Any], console: Any, *, verbose: bool = False) -> None:
    """The compact table (or, ``verbose``, every row and the settings), then the next steps.
    Every cell is inert text: a log line, a path or a setting value is never parsed as rich
    markup and carries no control character."""
    from rich import box
    from rich.table import Table

    from .terminal_text import plain

    now = data.get("generated_at_epoch") or time.time()
    checks = list(data.get("checks") or [])
    rows = checks if verbose else [r for r in checks if _shown(r)]
    counts = summary(checks)
    table = Table(title=plain(f"claude-auth-sync diagnose: {data.get('user', '?')}: {_verdict(counts)}"),
                  box=box.SIMPLE_HEAD, show_edge=False, expand=False, pad_edge=False)
    for column in ("area", "check", "state", "detail"):
        table.add_column(column, overflow="fold")
    group = None
    for row in rows:
        first = row["group"] != group
        group = row["group"]
        table.add_row(plain(group, style="bold") if first else "", plain(row["name"]),
                      plain(row["state"].upper(), style=STYLE.get(row["state"], "")), plain(display_detail(row, now), 2000))
    console.print(table)
    steps = data.get("next_steps")
    steps = next_steps(checks) if steps is None else steps
    if steps:
        console.print(plain("next steps:", style="bold"))
    for index, step in enumerate(steps, 1):
        line = plain(f"{index}. {step['step']}", 2000, style=STYLE.get(step["state"], ""))
        line.append(plain(f"  ({', '.join(step['checks'])})", 2000))
        console.print(line)
    if not verbose:
        console.print(plain(f"{len(checks) - len(rows)} more rows, and the settings: claude-auth-sync diagnose --verbose"))
        return
    _render_settings(data.get("settings") or {}, console)


def _render_settings(settings: Mapping[str, Any], console: Any) -> None:
    from rich import box
    from rich.table import Table

    from .terminal_text import plain

    table = Table(title="settings in effect", box=box.SIMPLE_HEAD, show_edge=False, expand=False, pad_edge=False)
    for column in ("setting", "value", "source"):
        table.add_column(column, overflow="fold")
    for key, item in sorted(settings.items()):
        table.add_row(plain(key), plain(json.dumps(item.get("value")), 2000), plain(item.get("source")))
    console.print(table)
