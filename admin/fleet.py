"""``claude-auth-sync diagnose --all``: the administrator's one screen, one row per roster user.

Runs as root, but every fact about a user is gathered **as that user**, in a privilege-dropped
child (:func:`claude_auth_sync.admin.as_user.run_as_user`): their private log's last status, their
access-token expiry, and their Vault token's TTL looked up with **their own** token. Root never
opens a path inside a home, and no token leaves the child (only TTLs and fingerprints do).

The log is read with :func:`claude_auth_sync.fileio.read_tail`: never through a symlink, never
blocking on a FIFO, at most its last :data:`LOG_TAIL_BYTES`. Everything a user wrote (the log's
fields) or Vault returned is shown through :mod:`claude_auth_sync.terminal_text`: no rich
markup is interpreted and no control character reaches root's terminal. Before anything is
gathered the system settings file must pass :func:`claude_auth_sync.admin.trusted_file.check_trusted`
(its Vault address is where every user's token is sent).

**Whose settings.** Each child resolves the settings the way that user's unit does: the system
file (never the user's own file: the address a user's token is sent to is never one the user
chose) and the environment :func:`claude_auth_sync.admin.unit_environ.unit_environ` builds, i.e.
the settings variables of ``/etc/default/claude-auth-sync`` (the unit's ``EnvironmentFile=``;
it must pass the same trusted-file check, else exit 78), with root's own *site-wide* settings
variables on top (``VAULT_ADDR``, ``VAULT_CACERT``, ``VAULT_NAMESPACE``... given explicitly, e.g.
``sudo --preserve-env=VAULT_ADDR``: a deliberate choice of the administrator, kept as before and
named on stderr because the rows then differ from the units) and **never** root's per-user
variables (``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY``, ``CLAUDE_AUTH_SYNC_VAULT__CLIENT_CERT``/``_KEY``,
the token file, the XDG and state/config directories: root's value names root's files, which the
user's child cannot read and the unit never uses; also named on stderr). The child's whole process
environment is replaced by that environment before anything is resolved (the settings also read
``CLAUDE_AUTH_SYNC_*`` straight from the process environment), so nothing else of root's settings
reaches it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from claude_auth_sync.status_line import parse_log_line
from claude_auth_sync.model import STORE_TTL_WARN_S, TIMER_PERIOD_S
from claude_auth_sync.errors import CasError, ConfigurationError
from claude_auth_sync.model import PROVISION_COMMAND, RELOGIN_COMMAND, UserIdentity
from claude_auth_sync.plugin_manager import Plugins
from claude_auth_sync.runner import Runtime
from claude_auth_sync.settings import load_settings
from claude_auth_sync.terminal_text import plain, safe_text

from .unit_environ import ENVIRONMENT_FILE, UnitEnviron, enter_unit_environ, unit_environ

__all__ = ["ENVIRONMENT_FILE", "fleet_rows", "fleet_environ", "command_fleet"]

LOG_REL = ".local/state/claude-auth-sync/sync.log"
NO_USER_FILE = Path("/nonexistent/claude-auth-sync/config.toml")  # the fleet view trusts the system file only
LOG_TAIL_BYTES = 64 * 1024
RELOGIN_AS_USER = "as {user}: " + RELOGIN_COMMAND.replace("<enterprise-email>", "{email}")


def fleet_environ(plugins: Plugins, environ: Mapping[str, str] | None = None) -> UnitEnviron:
    """The environment every user's child runs with (see the module docstring), for the fleet
    view and ``check --all`` alike: :data:`ENVIRONMENT_FILE` (trusted, else exit 78) plus root's
    site-wide settings variables from ``environ`` (default: root's process environment)."""
    return unit_environ(plugins.settings_sections(), os.environ if environ is None else environ, ENVIRONMENT_FILE)


def _user_facts(plugins: Plugins, environ: Mapping[str, str]) -> Any:
    """The child job: runs as the user, returns facts (never a token).

    The local login is read through the configured restorer and the Vault token looked up through
    the configured backend, with the settings the user's unit has (the system file and ``environ``,
    which replaces the child's whole process environment first) and the user's own paths.
    """

    def job(account: Any, _payload: bytes) -> dict[str, Any]:
        enter_unit_environ(environ)
        home = Path(account.home)
        facts: dict[str, Any] = {"ok": True}
        lines, facts["log_error"] = _log_tail(home / LOG_REL)
        record = parse_log_line(lines[-1]) if lines else None
        if record is not None:
            facts["last"] = {"status": record.status, "at": record.when.timestamp(),
                             "reason": safe_text(record.fields.get("reason") or "", 100) or None}
        identity = UserIdentity(name=account.name, uid=account.uid, gid=account.gid, home=home)
        runtime = Runtime(plugins=plugins, user=identity, environ={}, settings=load_settings(
            plugins.settings_sections(), identity, user_file=NO_USER_FILE, environ=environ))
        try:
            login = runtime.restorer().read()
            facts["login"] = {"state": str(login.state), "expires_at_ms": login.expires_at_ms}
        except CasError as err:
            facts["login"] = {"state": "unsafe", "error": err.message}
        facts["vault"] = _vault_facts(runtime)
        return facts

    return job


def _vault_facts(runtime: Runtime) -> dict[str, Any] | None:
    """The Vault token's TTL and drift, looked up with the user's own token (None: not Vault)."""
    if runtime.settings.backend != "vault" or not runtime.settings.section("vault").addr:
        return None
    try:
        described = runtime.backend().describe()  # its path is the one policy.locate() gives the agent
    except CasError as err:
        return {"error": err.message, "reason": err.reason}
    token = described.get("token") or {}
    return {"path": described.get("path"), **{k: token.get(k) for k in ("ttl_s", "drifted", "error", "reason")}}


def _log_tail(path: Path) -> tuple[list[str], str | None]:
    """The last lines of the user's log (bounded, no symlink, no FIFO), or why it was not read."""
    from claude_auth_sync.fileio import read_tail

    try:
        data = read_tail(path, max_bytes=LOG_TAIL_BYTES)
    except ConfigurationError:
        return [], f"~/{LOG_REL} is not a regular file (a symlink, FIFO or device): not read"
    except OSError as err:
        return [], f"~/{LOG_REL} cannot be read: {os.strerror(err.errno or 0)}"
    return (data or b"").decode("utf-8", errors="replace").splitlines(), None


def _row(user: str, email: str, facts: dict[str, Any] | None, units: tuple[bool, bool], now: float,
         error: str | None) -> dict[str, Any]:
    from .timers import service_unit, timer_unit

    timer, path = units
    row: dict[str, Any] = {"user": user, "timer_enabled": timer, "path_enabled": path, "last_status": None,
                           "last_age_s": None, "vault_ttl_s": None, "access_expires_in_s": None, "needs": []}
    needs: list[str] = row["needs"]
    if error is not None:
        needs.append(error)
        return row
    assert facts is not None
    last = facts.get("last")
    if last:
        row["last_status"] = last["status"]
        row["last_age_s"] = int(now - last["at"])
        if last["status"] == "FAIL":
            reason = last.get("reason") or ""
            if reason.startswith(("vault_", "store_")):
                needs.append(f"admin: {PROVISION_COMMAND}")
            elif reason.startswith("auth_failed") or reason.startswith("local_"):
                needs.append(RELOGIN_AS_USER.format(user=user, email=email))
            else:
                needs.append(f"as {user}: claude-auth-sync diagnose ({reason})")
        if row["last_age_s"] > 2 * TIMER_PERIOD_S:
            needs.append(f"no run for {row['last_age_s'] // 3600}h: systemctl status {timer_unit(user)}")
    elif facts.get("log_error"):
        needs.append(f"as {user}: {facts['log_error']}; move it aside, then systemctl start {service_unit(user)}")
    else:
        needs.append(f"never ran: systemctl start {service_unit(user)}")
    login = facts.get("login") or {}
    if login.get("state") in ("missing", "not_json", "no_oauth", "invalid", "blanked", "unsafe"):
        needs.append(RELOGIN_AS_USER.format(user=user, email=email))
    if login.get("expires_at_ms"):
        row["access_expires_in_s"] = int(login["expires_at_ms"] / 1000 - now)
    vault = facts.get("vault")
    if vault is not None:
        row["vault_ttl_s"] = vault.get("ttl_s")
        row["vault_path"] = vault.get("path")
        if vault.get("error"):
            row["vault_error"] = safe_text(str(vault["error"]), 300)
            row["vault_reason"] = vault.get("reason")
        if vault.get("error") or vault.get("drifted") or (vault.get("ttl_s") or 0) < STORE_TTL_WARN_S:
            needs.append(f"admin: {PROVISION_COMMAND}")
    if not (timer and path):
        missing = " and ".join(u for u, on in (("timer", timer), ("path unit", path)) if not on)
        needs.append(f"admin: {PROVISION_COMMAND} (enables the {missing} with the drop-ins naming the home)")
    row["needs"] = list(dict.fromkeys(needs))
    return row


def fleet_rows(roster_path: Path, plugins: Plugins, systemd_root: Path = Path("/"), *,
               environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per roster user, each gathered as that user with ``environ`` (default:
    :func:`fleet_environ` of root's environment) as the child's whole environment."""
    from .as_user import Account, ChildFailed, run_as_user
    from .timers import PATHS_WANTS, WANTS, path_unit, timer_unit
    from .roster import load_roster

    # Import before forking: the child runs as the user, who may not be able to read this venv.
    import hvac  # noqa: F401

    from claude_auth_sync.plugins.backend_vault.store import VaultBackend  # noqa: F401

    if os.geteuid() != 0:
        raise ConfigurationError("diagnose --all reads every roster user's state: run it as root",
                                 reason="not_root", remedy="sudo claude-auth-sync diagnose --all")
    roster = load_roster(roster_path)
    child_environ = dict(fleet_environ(plugins).environ if environ is None else environ)
    now = time.time()
    rows = []
    for entry in roster:
        timer = (systemd_root / WANTS / timer_unit(entry.os_user)).is_symlink()
        units = (timer, (systemd_root / PATHS_WANTS / path_unit(entry.os_user)).is_symlink())
        account = Account.lookup(entry.os_user)
        if account is None:
            rows.append(_row(entry.os_user, entry.email, None, units, now, "no OS account on this host"))
            continue
        try:
            facts = run_as_user(account, _user_facts(plugins, child_environ))
        except ChildFailed as err:
            rows.append(_row(entry.os_user, entry.email, None, units, now, f"cannot inspect: {err}"))
            continue
        rows.append(_row(entry.os_user, entry.email, facts, units, now, None))
    return rows


def command_fleet(*, roster: Path, json_output: bool, systemd_root: Path = Path("/")) -> int:
    from claude_auth_sync.runner import build_runtime

    from claude_auth_sync.settings import SYSTEM_CONFIG_FILE
    from .trusted_file import check_trusted

    check_trusted(SYSTEM_CONFIG_FILE)  # its vault.addr receives every user's token
    runtime = build_runtime(user=UserIdentity.current())  # validates the settings and the plugins
    unit = fleet_environ(runtime.plugins)  # the file trusted, else 78
    _explain_environ(unit)
    rows = fleet_rows(roster, runtime.plugins, systemd_root, environ=unit.environ)
    if json_output:
        print(json.dumps({"schema_version": 1, "users": rows}, sort_keys=True))
    else:
        render_fleet(rows)
    return 1 if any(row["needs"] for row in rows) else 0


def _explain_environ(unit: UnitEnviron) -> None:
    """Say on stderr (names only, never values) where the rows' settings differ from root's shell
    or from the units, and which lines of the environment file were ignored."""
    where = ENVIRONMENT_FILE
    if unit.overrides:
        print(f"claude-auth-sync: root's {', '.join(unit.overrides)} used for every row (the units use "
              f"{where} and the system config only)", file=sys.stderr)
    if unit.dropped:
        print(f"claude-auth-sync: root's {', '.join(unit.dropped)} not used: each row uses what the user's "
              f"unit uses ({where}, the system config)", file=sys.stderr)
    for problem in unit.problems:
        print(f"claude-auth-sync: {where}: {safe_text(problem, 200)}", file=sys.stderr)


def _cells(row: dict[str, Any]) -> list[Any]:
    from rich.text import Text

    from claude_auth_sync.diagnose import relative_time

    colour = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}
    status = row["last_status"]
    return [
        plain(row["user"]),
        plain(status or "-", style=colour.get(status, "dim")),
        plain(relative_time(-row["last_age_s"]) if row["last_age_s"] is not None else "-"),
        _units_cell(row),
        plain(relative_time(row["vault_ttl_s"]) if row["vault_ttl_s"] is not None else "-"),
        plain(relative_time(row["access_expires_in_s"]) if row["access_expires_in_s"] is not None else "-"),
        Text("\n").join(plain(need) for need in row["needs"]) if row["needs"] else plain("nothing", style="green"),
    ]


def _units_cell(row: dict[str, Any]) -> Any:
    if row["timer_enabled"] and row.get("path_enabled"):
        return plain("timer+path")
    on = [u for u, key in (("timer", "timer_enabled"), ("path", "path_enabled")) if row.get(key)]
    return plain(" ".join(on) + " only" if on else "disabled", style="yellow")


def render_fleet(rows: list[dict[str, Any]]) -> None:
    """The fleet table on stdout; every cell is inert text (no markup, no control characters)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="claude-auth-sync fleet")
    for column in ("user", "last status", "age", "units", "Vault TTL", "access token", "needs a person"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*_cells(row))
    Console(file=sys.stdout, emoji=False, highlight=False).print(table)
