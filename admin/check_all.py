"""``claude-auth-sync check --all``: one monitoring-plugin check for every roster user (NRPE, Icinga).

Runs as root; the state of each user is read **as that user**, exactly as the fleet view
(:mod:`claude_auth_sync.admin.fleet`) does it: in a privilege-dropped child
(:func:`claude_auth_sync.admin.as_user.run_as_user`), which reads their credentials file through
the configured restorer and their private log with :func:`claude_auth_sync.check.read_log` (never
through a symlink, never blocking on a FIFO, bounded). Root never opens a path inside a home, and
no token leaves the child: only the numbers and findings of :class:`claude_auth_sync.check.Measured`.
The settings are root's only (the trusted system file and root's environment without the per-user
path variables), as for the fleet view.

Guarantees:

* each user is judged with the same thresholds and rules as ``check`` (:func:`claude_auth_sync.check.build_check`);
  the worst state wins (CRITICAL above UNKNOWN), the status line names the users per state and
  the perfdata is per user (``alice_last_ok_age=...``; a label that is not a plain word, such as
  ``john.doe_last_ok_age``, is quoted by nagiosplugin as the guidelines say);
* ``-t SECONDS`` bounds the whole plugin: each child gets at most half of it (and never more than
  is left), so one user whose home hangs is UNKNOWN for that user without hiding the others; when
  the time is spent the plugin ends UNKNOWN with a timeout message (exit 3);
* a roster user without an OS account or whose state could not be read is UNKNOWN for that user;
* anything that stops the check as a whole (not root, untrusted settings, a bad roster, a bad
  option) is one UNKNOWN line, exit 3.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from claude_auth_sync.check import (
    UNKNOWN, Finding, Measured, UsageError, build_check, measure_runtime, parse_thresholds, render, unknown_line,
)
from claude_auth_sync.errors import CasError
from claude_auth_sync.model import UserIdentity
from claude_auth_sync.plugin_manager import Plugins
from claude_auth_sync.runner import Runtime
from claude_auth_sync.settings import load_settings

__all__ = ["DEFAULT_TIMEOUT_S", "command_check_all", "measure_roster"]

DEFAULT_TIMEOUT_S = 30


class _OutOfTime(Exception):
    """The plugin's own timeout (-t) was spent before every user was read."""


def _job(plugins: Plugins, environ: Mapping[str, str], now: float) -> Any:
    """The child's job: as the user, measure their state with root's settings and their paths."""
    from .fleet import NO_USER_FILE
    from .unit_environ import enter_unit_environ

    def job(account: Any, _payload: bytes) -> dict[str, Any]:
        identity = UserIdentity(name=account.name, uid=account.uid, gid=account.gid, home=Path(account.home))
        enter_unit_environ(environ)
        try:
            settings = load_settings(plugins.settings_sections(), identity, user_file=NO_USER_FILE, environ=environ)
        except CasError as err:
            return {"ok": True, "measured": Measured(account.name, {}, (Finding(UNKNOWN, err.message),)).to_json()}
        runtime = Runtime(plugins=plugins, user=identity, environ={}, settings=settings)
        return {"ok": True, "measured": measure_runtime(runtime, now).to_json()}

    return job


def _measure_user(name: str, plugins: Plugins, environ: Mapping[str, str], deadline: float, share: float) -> Measured:
    from .as_user import Account, ChildFailed, run_as_user

    left = deadline - time.monotonic()
    if left <= 0:
        raise _OutOfTime(name)
    account = Account.lookup(name)
    if account is None:
        return Measured(name, {}, (Finding(UNKNOWN, "no OS account on this host"),))
    limit = min(left, share)
    try:
        answer = run_as_user(account, _job(plugins, environ, time.time()), timeout=limit)
    except ChildFailed as err:
        if err.kind == "timeout":
            if limit < share:
                raise _OutOfTime(name) from None
            text = f"state not read within {limit:g}s (a hung home or file system?)"
        else:
            text = f"cannot inspect: {err}"
        return Measured(name, {}, (Finding(UNKNOWN, text),))
    measured = Measured.from_json(answer.get("measured") or {})
    return Measured(name, measured.metrics, measured.findings)  # the roster's name, not the child's word


def measure_roster(roster_path: Path, plugins: Plugins, timeout: float, deadline: float) -> list[Measured]:
    """Every roster user's :class:`Measured`, read as that user before ``deadline`` (monotonic),
    each child within half of ``timeout`` at most.

    Raises ``_OutOfTime`` when the time is spent, CasError for a missing or invalid roster."""
    from .fleet import fleet_environ
    from .roster import load_roster

    roster = load_roster(roster_path)
    environ = fleet_environ(plugins).environ
    return [_measure_user(entry.os_user, plugins, environ, deadline, max(1.0, timeout / 2)) for entry in roster]


def command_check_all(*, roster: Path, warning: Sequence[str] = (), critical: Sequence[str] = (),
                      timeout: float | None = None, verbose: int = 0) -> int:
    """The host-wide plugin: prints its output, returns 0..3."""
    from claude_auth_sync.runner import build_runtime
    from claude_auth_sync.settings import SYSTEM_CONFIG_FILE

    from .trusted_file import check_trusted

    seconds = DEFAULT_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + seconds
    try:
        thresholds = parse_thresholds(warning, critical)
        if not 0 < seconds <= 3600:
            raise UsageError(f"-t {seconds:g}: not between 0 and 3600 seconds")
        if os.geteuid() != 0:
            raise UsageError("check --all reads every roster user's state: run it as root "
                             "(sudo claude-auth-sync check --all)")
        check_trusted(SYSTEM_CONFIG_FILE)  # the settings every user's state is read with
        runtime = build_runtime(user=UserIdentity.current())
        measured = measure_roster(roster, runtime.plugins, seconds, deadline)
    except (UsageError, CasError) as err:
        sys.stdout.write(unknown_line(err.message if isinstance(err, CasError) else str(err)))
        return UNKNOWN
    except _OutOfTime as err:
        sys.stdout.write(unknown_line(f"timeout: check --all aborted after {seconds:g}s (still reading {err}'s "
                                      "state: a hung home? raise -t if the roster is only long)"))
        return UNKNOWN
    check = build_check(measured, thresholds, fleet=True)
    sys.stdout.write(render(check, verbose))
    sys.stdout.flush()
    return int(check.exitcode)
