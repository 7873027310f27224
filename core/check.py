"""``claude-auth-sync check``: the monitoring-plugins convention (Nagios, Icinga, Checkmk).

Reads state only — the credentials file and the private log — and never makes an inference or a
network call. Prints one line, ``CLAUDE-AUTH-SYNC <STATE> - <summary> | <perfdata>``, and exits
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Performance data (seconds): ``access_ttl``,
``refresh_ttl`` (when the credentials file carries that date), ``vault_ttl`` (the last run's
renewed TTL minus the time since), ``last_ok_age``.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cycle import refresh_expiry_ms
from .errors import CasError
from .status_line import LogRecord, parse_log_line, rotated_log
from .fileio import read_tail
from .model import REFRESH_WARN_S, STORE_TTL_WARN_S, TIMER_PERIOD_S, LoginState

__all__ = ["NagiosState", "LogRecord", "parse_log_line", "read_log", "evaluate", "command_check"]



class NagiosState(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


def read_log(path: Path, limit: int = 200) -> list[LogRecord]:
    """The last ``limit`` well-formed records of the private log (at most its last 64 KiB read, and
    of ``sync.log.1`` after a rotation; never through a symlink, never blocking on a FIFO: those
    raise a ConfigurationError)."""
    data = read_tail(path)
    if data is None:
        return []
    if data.count(b"\n") < limit:  # just rotated: the earlier lines are in sync.log.1
        data = (read_tail(rotated_log(path)) or b"") + data
    lines = data.decode("utf-8", errors="replace").splitlines()[-limit:]
    return [r for r in (parse_log_line(line) for line in lines) if r is not None]


LAST_OK_WARN_S = 2 * TIMER_PERIOD_S  # two timer runs without an OK
LAST_OK_CRIT_S = 4 * TIMER_PERIOD_S


def _perf(label: str, value: float | None, warn: float | str = "", crit: float | str = "") -> str | None:
    if value is None:
        return None
    return f"{label}={int(value)}s;{warn};{crit};;"


def evaluate(records: list[LogRecord], login_state: LoginState | None, oauth: Any, now: float) -> tuple[NagiosState, str, str]:
    """(state, summary, perfdata) from the log records and the local login."""
    problems: list[tuple[NagiosState, str]] = []
    access_ttl = refresh_ttl = vault_ttl = last_ok_age = None
    if isinstance(oauth, dict) and isinstance(oauth.get("expiresAt"), int):
        access_ttl = oauth["expiresAt"] / 1000 - now
    refresh_ms = refresh_expiry_ms(oauth)
    if refresh_ms is not None:
        refresh_ttl = refresh_ms / 1000 - now
        if refresh_ttl < REFRESH_WARN_S:
            problems.append((NagiosState.CRITICAL if refresh_ttl <= 0 else NagiosState.WARNING, "refresh token expires soon"))
    if login_state in (LoginState.MISSING, LoginState.NO_OAUTH):
        problems.append((NagiosState.WARNING, "not logged in (no Claude Code login to keep alive)"))
    elif login_state in (LoginState.NOT_JSON, LoginState.INVALID, LoginState.BLANKED):
        problems.append((NagiosState.CRITICAL, f"local login {login_state}"))
    if not records:
        problems.append((NagiosState.UNKNOWN, "no run recorded in the private log"))
    else:
        last = records[-1]
        age = now - last.when.timestamp()
        ttl = last.fields.get("store_ttl_s")
        if ttl and ttl.isdigit():
            vault_ttl = int(ttl) - age
            if vault_ttl < STORE_TTL_WARN_S:
                problems.append((NagiosState.WARNING if vault_ttl > 0 else NagiosState.CRITICAL, "Vault token expires soon"))
        oks = [r for r in records if r.status == "OK"]
        if oks:
            last_ok_age = now - oks[-1].when.timestamp()
            if last_ok_age > LAST_OK_CRIT_S:
                problems.append((NagiosState.CRITICAL, f"no OK for {int(last_ok_age // 3600)}h"))
            elif last_ok_age > LAST_OK_WARN_S:
                problems.append((NagiosState.WARNING, f"no OK for {int(last_ok_age // 3600)}h"))
        if last.status == "FAIL":
            problems.append((NagiosState.CRITICAL, f"last run FAIL ({last.fields.get('reason', '?')})"))
        elif last.status == "WARN":
            problems.append((NagiosState.WARNING, f"last run WARN ({last.fields.get('reason', '?')})"))
        if age > 2 * TIMER_PERIOD_S:
            problems.append((NagiosState.CRITICAL, f"no run for {int(age // 3600)}h (timer period 6h)"))
    state = max((p[0] for p in problems), default=NagiosState.OK)
    if state == NagiosState.UNKNOWN and any(p[0] == NagiosState.CRITICAL for p in problems):
        state = NagiosState.CRITICAL
    summary = "; ".join(p[1] for p in problems) or "last run OK"
    perf = " ".join(p for p in (
        _perf("access_ttl", access_ttl),
        # Monitoring Plugins ranges: "N:" alerts below N (low is bad), "N" alerts above N.
        _perf("refresh_ttl", refresh_ttl, f"{REFRESH_WARN_S}:", "0:"),
        _perf("vault_ttl", vault_ttl, f"{STORE_TTL_WARN_S}:", "0:"),
        _perf("last_ok_age", last_ok_age, LAST_OK_WARN_S, LAST_OK_CRIT_S),
    ) if p)
    return state, summary, perf


def command_check(overrides: Mapping[str, Any] | None = None) -> int:
    from .runner import build_runtime
    from .settings import ResolvedPaths

    try:
        rt = build_runtime(overrides)
        login = rt.restorer().read()
        records = read_log(ResolvedPaths.of(rt.settings).log_file)
    except CasError as err:
        print(f"CLAUDE-AUTH-SYNC UNKNOWN - {err.message}")
        return int(NagiosState.UNKNOWN)
    state, summary, perf = evaluate(records, login.state, login.oauth, time.time())
    line = f"CLAUDE-AUTH-SYNC {state.name} - {rt.user.name}: {summary}"
    print(f"{line} | {perf}" if perf else line)
    sys.stdout.flush()
    return int(state)
