"""The ``metrics`` sink: a node_exporter *textfile collector* file per user.

Every status event rewrites ``<directory>/claude_auth_sync_<user>.prom`` (section ``metrics``,
``CLAUDE_AUTH_SYNC_METRICS__DIRECTORY``, default ``/var/lib/prometheus/node-exporter``, the
directory Debian's ``prometheus-node-exporter`` reads with ``--collector.textfile.directory``).
All samples carry a ``user`` label; Prometheus adds ``instance``/``job`` when it scrapes.

======================================================  ================================================
metric                                                  value
======================================================  ================================================
``claude_auth_sync_last_run_timestamp_seconds``         Unix time of the last run (the event's timestamp)
``claude_auth_sync_last_status{status=OK|WARN|FAIL}``   1 for the last run's status word, 0 for the others
``claude_auth_sync_last_exit_code``                     0, 1, 75 or 78 (tells "log in again" from "fix config")
``claude_auth_sync_last_success_timestamp_seconds``     Unix time of the last OK run; carried over from the
                                                        previous file when this run is not OK; absent until
                                                        the first OK
``claude_auth_sync_access_token_expiry_seconds``        Unix time at which the Claude access token expires
                                                        (event detail ``access_expires_at_ms``); absent when
                                                        the event does not carry it
``claude_auth_sync_vault_token_ttl_seconds``            the Vault token's TTL right after this run's renewal
                                                        (event detail ``store_ttl_s``); absent when unknown
``claude_auth_sync_refresh_token_expiry_seconds``       Unix time at which the refresh token expires (event
                                                        detail ``refresh_expires_at_ms``); absent when the
                                                        credentials file does not say
``claude_auth_sync_last_run_info{status,action,reason}``  always 1; the last run's status, action and reason
                                                        (``reason=""`` when there is none; at most 100 chars)
``claude_auth_sync_runs_total{status}``                 counter: runs per status word (:mod:`.counters`)
``claude_auth_sync_actions_total{action}``              counter: runs per action (restores: ``action="restore"``)
``claude_auth_sync_last_status_change_timestamp_seconds``  first run of the current status word's streak (:mod:`.state_since`)
``claude_auth_sync_awaiting_first_login_since_timestamp_seconds``  since when the user is awaited to log in for the first time
``claude_auth_sync_vault_token_expiry_timestamp_seconds``  Unix time the Vault token expires unless renewed (carried over)
======================================================  ================================================

Why not :func:`claude_auth_sync.fileio.replace_private`: node_exporter runs as its own user
(``prometheus``), so the file must be world-readable (0644), while ``replace_private`` writes
0600 and also forces its directory to 0700 and to be owned by the running user, which would lock
node_exporter out of the whole textfile directory (root- or prometheus-owned). :func:`write_public`
below is the same temp + fsync + rename + fsync(dir) dance with mode 0644 and no directory change.
The temporary file is ``.<name>.tmp-*``: it does not end in ``.prom``, so the collector never
reads a half-written file.
"""

from __future__ import annotations

import errno
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from claude_auth_sync.fileio import stale_temps, write_atomically
from claude_auth_sync.hookspecs import PluginContext, SettingsSection, SinkSpec, hookimpl
from claude_auth_sync.model import Status, StatusEvent
from claude_auth_sync.plugins.sink_metrics.counters import COUNTER_HELP, CounterKey, counter_families, previous_counts
from claude_auth_sync.plugins.sink_metrics.state_since import (
    STATE_HELP,
    PreviousState,
    previous_state,
    previous_value,
    state_families,
)

__all__ = [
    "DEFAULT_DIRECTORY",
    "MetricsSettings",
    "MetricsSink",
    "MetricsUnavailable",
    "metric_names",
    "metrics_path",
    "render_metrics",
    "previous_success",
    "write_public",
]

DEFAULT_DIRECTORY = Path("/var/lib/prometheus/node-exporter")
PREFIX = "claude_auth_sync_"
FILE_MODE = 0o644
STALE_TEMP_S = 300
MAX_PREVIOUS_BYTES = 64 * 1024
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

HELP = {
    "last_run_timestamp_seconds": "Unix time of the last claude-auth-sync run.",
    "last_status": "Status word of the last run: 1 for the current one (OK, WARN or FAIL), 0 for the others.",
    "last_exit_code": "Exit code of the last run: 0 OK, 1 FAIL (log in again), 75 WARN, 78 FAIL (fix configuration).",
    "last_success_timestamp_seconds": "Unix time of the last OK run (kept from the previous file while runs are not OK).",
    "access_token_expiry_seconds": "Unix time at which the Claude OAuth access token expires, as read by the last run.",
    "vault_token_ttl_seconds": "TTL in seconds of the user's Vault token right after the last run renewed it.",
    "refresh_token_expiry_seconds": "Unix time at which the Claude OAuth refresh token expires, as read by the last run.",
    "last_run_info": "Always 1: the last run's status, action and reason (empty when none) as labels.",
    **COUNTER_HELP,
    **STATE_HELP,
}
MAX_REASON_CHARS = 100


class MetricsUnavailable(OSError):
    """The textfile directory is missing or not writable; the message says what to do."""


class MetricsSettings(BaseModel):
    """Section ``metrics`` (``CLAUDE_AUTH_SYNC_METRICS__DIRECTORY``)."""

    model_config = ConfigDict(extra="forbid")

    directory: Path = Field(DEFAULT_DIRECTORY, description="node_exporter's textfile collector directory")


def metrics_path(directory: Path, user: str) -> Path:
    """``<directory>/claude_auth_sync_<user>.prom``; ValueError for a user name unfit for a file name."""
    if not _USER_RE.fullmatch(user):
        raise ValueError(f"user name {user!r} is not usable in a metrics file name")
    return directory / f"{PREFIX}{user}.prom"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _epoch(timestamp: str) -> float:
    parsed = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _detail_number(details: Mapping[str, object], key: str) -> float | None:
    value = details.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def previous_success(text: str | None) -> float | None:
    """The ``last_success_timestamp_seconds`` value of a previous file, if it has a valid one
    (read by the same rule as the other carried-over values: :func:`.state_since.previous_value`)."""
    return previous_value(text, "last_success_timestamp_seconds") if text else None


def render_metrics(event: StatusEvent, *, previous_success_s: float | None = None,
                   previous_counts: Mapping[CounterKey, int] | None = None,
                   previous: PreviousState | None = None) -> str:
    """The textfile content for ``event`` (text exposition format 0.0.4, HELP/TYPE per family);
    the counters continue from ``previous_counts`` (:func:`.counters.previous_counts`), the state
    start times from ``previous`` (:func:`.state_since.previous_state`)."""
    user = f'user="{_label(event.user)}"'
    run_s = _epoch(event.timestamp)
    success_s = run_s if event.status == Status.OK else previous_success_s
    families: list[tuple[str, list[tuple[str, float]]]] = [
        ("last_run_timestamp_seconds", [(user, run_s)]),
        ("last_status", [(f'{user},status="{s}"', 1 if event.status == s else 0) for s in Status]),
        ("last_exit_code", [(user, int(event.exit_code))]),
    ]
    if success_s is not None:
        families.append(("last_success_timestamp_seconds", [(user, success_s)]))
    expires_ms = _detail_number(event.details, "access_expires_at_ms")
    if expires_ms is not None:
        families.append(("access_token_expiry_seconds", [(user, expires_ms / 1000)]))
    ttl_s = _detail_number(event.details, "store_ttl_s")
    if ttl_s is not None:
        families.append(("vault_token_ttl_seconds", [(user, ttl_s)]))
    refresh_ms = _detail_number(event.details, "refresh_expires_at_ms")
    if refresh_ms is not None:
        families.append(("refresh_token_expiry_seconds", [(user, refresh_ms / 1000)]))
    reason = _label((event.reason or "")[:MAX_REASON_CHARS])
    families.append(("last_run_info", [(f'{user},status="{event.status}",action="{event.action}",reason="{reason}"', 1)]))
    families += counter_families(event, previous_counts or {}, user)
    families += state_families(event, previous or PreviousState(), user, run_s)
    lines: list[str] = []
    for short, samples in families:
        name = PREFIX + short
        kind = "counter" if short.endswith("_total") else "gauge"
        lines += [f"# HELP {name} {HELP[short]}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{labels}}} {_number(value)}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def _read_small(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # missing, a symlink, unreadable: no previous value
        return None
    try:
        info = os.fstat(fd)
        # The textfile directory is shared by the roster's users: a file another user planted
        # under this user's name is never taken as this user's previous values.
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        return os.read(fd, MAX_PREVIOUS_BYTES).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _remove_stale_temps(dir_fd: int, prefix: str, now: float) -> None:
    """Remove our own temp files a crashed run left (:func:`fileio.stale_temps`: our prefix, our
    uid, regular files, never followed), and only those older than 5 min: the directory is shared,
    and a younger one may be another run's write in progress."""
    try:
        names = stale_temps(dir_fd, re.compile(re.escape(prefix) + r".*"), os.getuid())
    except OSError:
        return
    for name in names:
        try:
            if now - os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime > STALE_TEMP_S:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass


def write_public(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Atomically replace ``path`` with ``data``, world-readable: a temp file in the same directory
    (``O_EXCL|O_NOFOLLOW``, mode set with fchmod so the umask does not matter), write, fsync,
    rename over ``path``, fsync the directory. On error the temp file is removed and the old file
    stays complete. The directory is never created or chmod-ed."""
    directory = path.parent
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MetricsUnavailable(
            f"metrics directory {directory} does not exist (install prometheus-node-exporter or set "
            "CLAUDE_AUTH_SYNC_METRICS__DIRECTORY)"
        ) from None
    except NotADirectoryError:
        raise MetricsUnavailable(f"metrics directory {directory} is not a directory") from None
    try:
        temp_prefix = f".{path.name}.tmp-"  # hidden: node_exporter never reads a half-written file
        _remove_stale_temps(dir_fd, temp_prefix, time.time())
        temp = f"{temp_prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            write_atomically(dir_fd, path.name, data, mode=mode, temp_name=temp)
        except PermissionError:
            raise MetricsUnavailable(
                f"metrics directory {directory} is not writable by uid {os.getuid()} (see Operations in the README)"
            ) from None
        except OSError as err:
            if err.errno != errno.EROFS:
                raise
            raise MetricsUnavailable(
                f"metrics directory {directory} is read-only here (a systemd unit with ProtectSystem=strict "
                f"needs ReadWritePaths=-{directory})"
            ) from None
    finally:
        os.close(dir_fd)


class MetricsSink:
    """Writes the textfile of the event's user into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_for(self, user: str) -> Path:
        return metrics_path(self.directory, user)

    def emit(self, event: StatusEvent) -> None:
        path = self.path_for(event.user)
        text = _read_small(path)
        previous = None if event.status == Status.OK else previous_success(text)
        rendered = render_metrics(event, previous_success_s=previous, previous_counts=previous_counts(text),
                                  previous=previous_state(text))
        write_public(path, rendered.encode("utf-8"))


def metric_names() -> Iterable[str]:
    """Every metric name this sink can write (used by the alert-rule tests)."""
    return [PREFIX + short for short in HELP]


@hookimpl
def cas_settings_sections() -> list[SettingsSection]:
    return [SettingsSection("metrics", MetricsSettings)]


@hookimpl
def cas_sinks() -> list[SinkSpec]:
    def build(ctx: PluginContext) -> MetricsSink:
        return MetricsSink(ctx.settings.section("metrics").directory)

    return [SinkSpec("metrics", build, "node_exporter textfile collector (claude_auth_sync_<user>.prom)")]
