"""The ``claude-auth-sync`` command line.

Kernel commands: ``run`` (one health cycle for the OS user running it), ``diagnose`` (read-only
report), ``plugins``, ``check`` (monitoring-plugin mode, exit 0/1/2/3), ``--version``. Plugins add
their own through ``cas_commands``: ``policy USER`` (the Vault backend), ``fleet`` (the
administrator's package, also reached as ``diagnose --all``). ``run`` and
``diagnose`` take ``--json``: one JSON object on stdout and nothing else there.

``run`` stays fast: rich and hvac are imported only by the commands and plugins that use them.
Exit codes of ``run`` are the contract's: 0 OK, 1 FAIL (log in again), 75 WARN, 78 FAIL (fix config).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import CasError, PluginError
from .hookspecs import CommandSpec

if TYPE_CHECKING:
    from .plugin_manager import Plugins
from .model import RELOGIN_COMMAND, ExitCode

__all__ = ["main", "build_parser"]

def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "backend", None):
        out["backend"] = args.backend
    if getattr(args, "sink", None):
        out["sinks"] = list(args.sink)
    return out


KERNEL_COMMANDS = ("run", "diagnose", "check", "plugins")

FILES_HELP = """\
files (for the OS user running it; XDG rule: README "Paths and XDG variables"):
  ~/.claude/.credentials.json                Claude Code's login ($CLAUDE_CONFIG_DIR honoured)
  ~/.config/claude-auth-sync/vault-token     the Vault token, 0600 (written by t3-provision-users)
  ~/.config/claude-auth-sync/config.toml     the user's settings (optional; $XDG_CONFIG_HOME)
  /etc/claude-auth-sync/config.toml          the site's settings (root's; VAULT_ADDR, cacert...)
  ~/.local/state/claude-auth-sync/sync.log   one status line per run ($XDG_STATE_HOME honoured)"""

TOP_EPILOG = f"""\
run is what the timer and the path unit start; diagnose says what is wrong and the fix; check is
the monitoring plugin. 'claude-auth-sync COMMAND --help' for each.

{FILES_HELP}

examples:
  claude-auth-sync diagnose                  what is wrong, and the command that fixes it
  claude-auth-sync run --json                one cycle now, its result as JSON
  systemctl start claude-auth-sync@$USER.service   the same cycle as the timer runs it

exit status of run: 0 OK, 1 FAIL (log in again), 75 WARN (transient: the next run retries),
78 FAIL (fix the configuration); diagnose: 0, 1, 78; check: 0/1/2/3 (Monitoring Plugins)."""

RUN_DESCRIPTION = """\
One health cycle for the OS user running it: a real Haiku inference through the claude CLI
proves the login works; a working login is backed up (Vault KV v2 by default), a broken one is
restored from the backup and probed again. One status line goes to the private log and the
journal; with --json, the same event is printed as one JSON object."""

RUN_EPILOG = f"""\
exit status:
  0   OK: the login works (backed up if it changed)
  1   FAIL: the login is broken and no backup works; log in again:
      {RELOGIN_COMMAND}
  75  WARN: transient (API or Vault unreachable, rate limited, another run busy): the next run
      retries
  78  FAIL: fix the configuration (settings, Vault token, plugins); stderr names the fix

{FILES_HELP}

examples:
  claude-auth-sync run                       one cycle, the status line on stdout
  claude-auth-sync run --json --backend file one cycle against the file backend, as JSON
  claude-auth-sync run --if-changed          the path unit's run: nothing if the login is unchanged"""

DIAGNOSE_DESCRIPTION = """\
Read-only report for the OS user running it: the local login, the environment and paths, the
claude CLI, the backend (Vault token, backup), the timer and the last runs, each with its state
and, for a problem, the command that fixes it. Compact by default; --verbose shows every row and
the settings in effect with where each came from. Changes nothing (--probe runs one inference)."""

DIAGNOSE_EPILOG = f"""\
exit status: 0 nothing fails, 1 a row fails, 78 the settings or plugins cannot load.

--json prints one object (schema_version 1, docs/diagnose.schema.json): ok, exit_code, generated_at,
summary, checks (group, name, state, detail, next_step, values with seconds as integers and times as
ISO-8601 UTC plus epoch), next_steps, settings. Keys are stable within a schema version.

{FILES_HELP}

examples:
  claude-auth-sync diagnose                  problems, key facts, next steps
  claude-auth-sync diagnose --verbose        every row, and the settings in effect
  claude-auth-sync diagnose --json | jq '.next_steps[].step'
  sudo claude-auth-sync diagnose --all       (root) one row per roster user"""


def build_parser(commands: Mapping[str, CommandSpec] | None = None) -> argparse.ArgumentParser:
    """The kernel's commands plus those the plugins contribute (``cas_commands``)."""
    parser = argparse.ArgumentParser(
        prog="claude-auth-sync",
        description="Keep this user's Claude Code login alive: probe, back up, restore.",
        epilog=TOP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"claude-auth-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="one health cycle for the OS user running it", description=RUN_DESCRIPTION,
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--json", action="store_true", help="print the status event as one JSON object")
    run.add_argument("--if-changed", action="store_true",
                     help="end at once when the login is the one verified last (set by the path unit's $TRIGGER_UNIT too)")
    run.add_argument("--backend", help="override CLAUDE_AUTH_SYNC_BACKEND for this run")
    run.add_argument("--sink", action="append", help="override CLAUDE_AUTH_SYNC_SINKS (repeatable)")

    diag = sub.add_parser("diagnose", help="read-only report of this user's login, backend and settings",
                          description=DIAGNOSE_DESCRIPTION, epilog=DIAGNOSE_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    diag.add_argument("--json", action="store_true", help="one JSON object instead of a table (every row, always)")
    diag.add_argument("-v", "--verbose", action="store_true", help="every row, and the settings in effect with their source")
    diag.add_argument("--probe", action="store_true", help="also run a real inference probe")
    diag.add_argument("--backend", help="override CLAUDE_AUTH_SYNC_BACKEND")
    diag.add_argument("--all", action="store_true", help="(root) one row per roster user: the fleet view")
    diag.add_argument("--roster", type=Path, default=Path("/etc/claude-auth-sync/roster.yaml"), help="roster for --all")
    diag.add_argument("--systemd-root", type=Path, default=Path("/"), help=argparse.SUPPRESS)

    plugins = sub.add_parser("plugins", help="registered plugins, their hooks, which are active")
    plugins.add_argument("--json", action="store_true")

    _add_check_parser(sub)

    for name, spec in sorted((commands or {}).items()):
        if name in KERNEL_COMMANDS:
            continue  # a plugin never replaces a kernel command
        spec.add_arguments(sub.add_parser(name, help=spec.help))
    return parser


CHECK_EPILOG = """\
thresholds are Monitoring Plugins ranges, one metric each: -w METRIC=RANGE / -c METRIC=RANGE,
repeatable or comma-separated; the value alerts when OUTSIDE the range: 10 = 0..10, 10: = at least
10, ~:10 = at most 10, 10:20, @10:20 = alert INSIDE 10..20; METRIC= switches that threshold off.
metrics (seconds) and defaults:
  access_ttl    -                -             (measured, not judged)
  refresh_ttl   -w 259200:       -c 0:         (low is bad)
  vault_ttl     -w 604800:       -c 0:
  last_ok_age   -w 43200         -c 86400      (high is bad)
  last_run_age  -                -c 43200
examples:
  claude-auth-sync check -w last_ok_age=21600 -c last_ok_age=43200 -t 5
  sudo claude-auth-sync check --all             (root: every roster user, perfdata alice_last_ok_age=...)
  NRPE: command[claude_auth_sync]=/usr/bin/sudo /usr/local/bin/claude-auth-sync check --all -t 30
exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for a bad option and a timeout)."""


def _check_usage_error(message: str) -> None:
    """A monitoring plugin's bad option is UNKNOWN (3) on stdout, not argparse's 2 on stderr."""
    print(f"CLAUDE-AUTH-SYNC UNKNOWN - usage: {message} (claude-auth-sync check --help)")
    sys.exit(3)


def unknown_on_usage_error(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` (a monitoring-plugin subcommand: ``check``, ``check-all``) end UNKNOWN (3)
    with one line on stdout for a bad or unknown option; argparse would exit 2 (CRITICAL)."""
    parser.error = _check_usage_error  # type: ignore[method-assign]
    parse_known = parser.parse_known_args

    def strict_parse(args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = parse_known(args, namespace)
        if extra:
            _check_usage_error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra

    parser.parse_known_args = strict_parse  # type: ignore[method-assign]


def _add_check_parser(sub: Any) -> None:
    check = sub.add_parser("check", help="monitoring-plugin check from state only (exit 0/1/2/3)",
                           epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("-V", "--version", action="version", version=f"claude-auth-sync check {__version__}")
    add_monitoring_arguments(check, timeout_default="10, 30 with --all")
    check.add_argument("--backend", help="override CLAUDE_AUTH_SYNC_BACKEND")
    check.add_argument("--all", action="store_true",
                       help="(root) every roster user in one check: worst state wins, perfdata per user")
    check.add_argument("--roster", type=Path, default=Path("/etc/claude-auth-sync/roster.yaml"), help="roster for --all")


def add_monitoring_arguments(parser: argparse.ArgumentParser, *, timeout_default: str) -> None:
    """The Monitoring Plugins options shared by ``check`` and ``check-all``: ``-w/-c METRIC=RANGE``
    (repeatable), ``-t SECONDS`` (0 < t <= 3600), ``-v``; a bad option ends UNKNOWN (3)."""
    unknown_on_usage_error(parser)
    parser.add_argument("-w", "--warning", action="append", default=[], metavar="METRIC=RANGE",
                        help="warning range of one metric (repeatable; see claude-auth-sync check --help)")
    parser.add_argument("-c", "--critical", action="append", default=[], metavar="METRIC=RANGE",
                        help="critical range of one metric (repeatable)")
    parser.add_argument("-t", "--timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                        help=f"plugin timeout: UNKNOWN after this many seconds (default {timeout_default})")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="also list every problem, one a line (perfdata on lines of their own)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 3600 seconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    monitoring = _is_monitoring_command(sys.argv[1:] if argv is None else argv)
    try:
        from .plugin_manager import get_plugin_manager

        plugins = get_plugin_manager()
        commands = plugins.commands()
    except CasError as err:
        return _failed(f"{err}", int(err.exit_code), monitoring)
    except Exception as err:  # never a traceback, never exit 1 ("log in again"), never the error's text
        return _failed(f"loading the plugins failed ({type(err).__name__}); "
                       "run 'claude-auth-sync plugins' to see which one is broken", int(ExitCode.CONFIG), monitoring)
    args = build_parser(commands).parse_args(argv)
    try:
        return _dispatch(args, plugins, commands)
    except CasError as err:
        return _failed(f"{err}", int(err.exit_code), monitoring)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug: one line, exit 78 (never 1, which means "log in again"), no data
        return _failed(f"internal error ({type(err).__name__}); run 'claude-auth-sync diagnose' "
                       "and report it with its output", int(ExitCode.CONFIG), monitoring)


def _is_monitoring_command(argv: Sequence[str]) -> bool:
    """``check`` and ``check-all`` speak the Monitoring Plugins exit codes (0-3) on every path."""
    first = next((arg for arg in argv if not arg.startswith("-")), "")
    return first in ("check", "check-all")


def _failed(message: str, code: int, monitoring: bool) -> int:
    """One line on stderr with the contract's exit code; for a monitoring command, the UNKNOWN
    line on stdout and exit 3 instead (78 would read as an unknown state to some and as
    CRITICAL to others)."""
    print(f"claude-auth-sync: {message}", file=sys.stderr)
    if not monitoring:
        return code
    from .check import unknown_line

    sys.stdout.write(unknown_line(message.splitlines()[0] if message else "error"))
    return 3


def _dispatch(args: argparse.Namespace, plugins: Plugins, commands: Mapping[str, CommandSpec]) -> int:
    if args.command == "run":
        return _cmd_run(args, plugins)
    if args.command == "diagnose" and args.all:
        return _plugin_command(commands, "fleet", "the fleet view (diagnose --all)").run(args)
    if args.command == "diagnose":
        from .diagnose import command_diagnose

        return command_diagnose(json_output=args.json, probe=args.probe, overrides=_overrides(args), verbose=args.verbose)
    if args.command == "check" and args.all:
        return _plugin_command(commands, "check-all", "the host-wide check (check --all)").run(args)
    if args.command == "check":
        from .check import command_check

        return command_check(_overrides(args), warning=args.warning, critical=args.critical,
                             timeout=args.timeout, verbose=args.verbose)
    if args.command == "plugins":
        return _cmd_plugins(args)
    code = commands[args.command].run(args)
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    print(f"claude-auth-sync: the command {args.command!r} returned no exit status", file=sys.stderr)
    return int(ExitCode.CONFIG)


def _plugin_command(commands: Mapping[str, CommandSpec], name: str, what: str) -> CommandSpec:
    try:
        return commands[name]
    except KeyError:
        raise PluginError(
            f"{what} is provided by the administrator's package, which is not registered",
            reason="plugin_missing", remedy="reinstall claude-auth-sync (its entry point 'admin' provides it)",
        ) from None


def _cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    from .cycle import failure_event
    from .errors import Interrupted
    from .signals import SIGTERM_EXIT_CODE, sigterm_raises_systemexit
    from .model import UserIdentity
    from .runner import build_runtime, emit_to_sinks, run_cycles

    user = UserIdentity.current()
    with sigterm_raises_systemexit():
        try:
            runtime = build_runtime(_overrides(args), user=user, plugins=plugins)
        except CasError as err:
            event = failure_event(user.name, err)
            # No settings means no sinks: stderr reaches the journal under SyslogIdentifier.
            print(f"{event.status} user={user.name} action=none reason={err.reason}: {err}", file=sys.stderr)
            _print_event(event, args.json)
            return int(err.exit_code)
        sinks = runtime.sinks_or_report()
        try:
            event, failed = run_cycles(runtime, on_change=_started_by_a_change(args),
                                       emit=lambda event: emit_to_sinks(sinks, event))
        except SystemExit as stop:  # systemd stopped the run (timeout, shutdown, systemctl stop)
            if stop.code == SIGTERM_EXIT_CODE:
                emit_to_sinks(sinks, failure_event(user.name, Interrupted(
                    "stopped by SIGTERM before the cycle ended; nothing half-written was left",
                    remedy="nothing: the next run (timer or path unit) checks again")))
            raise
    for warning in str(event.details.get("warnings") or "").split(","):
        if warning:
            print(f"claude-auth-sync: warning: {warning} is set in the environment and was not passed to claude", file=sys.stderr)
    if event.exit_code != ExitCode.OK and not args.json:
        next_step = event.details.get("next_step") or _next_step(event.reason or "", event.exit_code)
        print(f"claude-auth-sync: {event.status} reason={event.reason} ({next_step})", file=sys.stderr)
    _print_event(event, args.json, sink_failures=failed)
    return int(event.exit_code)


def _started_by_a_change(args: argparse.Namespace) -> bool:
    """``--if-changed``, or systemd started this run for a path unit (it sets ``$TRIGGER_UNIT``)."""
    import os

    return bool(args.if_changed) or os.environ.get("TRIGGER_UNIT", "").endswith(".path")


def _next_step(reason: str, code: int) -> str:
    if reason == "not_logged_in":
        return f"no Claude Code login to keep alive; to have one, log in: {RELOGIN_COMMAND}"
    if reason == "awaiting_first_login":
        return f"this user has never logged in; nothing is broken: the first login starts the backups: {RELOGIN_COMMAND}"
    if code == ExitCode.FAIL:
        return f"log in again: {RELOGIN_COMMAND}"
    if code == ExitCode.TEMPFAIL:
        return "nothing to do now: the next run retries"
    return "fix the configuration: claude-auth-sync diagnose"


def _print_event(event: Any, as_json: bool, sink_failures: list[str] | None = None) -> None:
    if as_json:
        payload = event.to_json()
        payload["sink_failures"] = sink_failures or []
        print(json.dumps(payload, sort_keys=True))
    elif sys.stdout.isatty():
        from .status_line import format_status_line

        sys.stdout.write(format_status_line(event))


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .plugin_manager import get_plugin_manager
    from .runner import build_runtime

    plugins = get_plugin_manager()
    runtime = build_runtime(plugins=plugins)
    s = runtime.settings
    active = {
        ("backend", s.backend), ("probe", s.probe), ("restorer", s.restorer), *(("sink", n) for n in s.sinks)
    }
    rows: list[dict[str, Any]] = []
    kinds = {
        "backend": plugins.backends(), "probe": plugins.probes(), "restorer": plugins.restorers(), "sink": plugins.sinks()
    }
    for kind, specs in kinds.items():
        for name, spec in sorted(specs.items()):
            rows.append({"kind": kind, "name": name, "active": (kind, name) in active, "description": spec.description})
    for name, command in sorted(plugins.commands().items()):
        origin = plugins.origins.get(("cas_commands", name), "?")
        rows.append({"kind": "command", "name": name, "active": True, "description": f"{command.help} ({origin})"})
    hooks = plugins.hooks_by_plugin()
    broken = [{"name": b.name, "error": b.error} for b in plugins.broken]
    if args.json:
        print(json.dumps({"provides": rows, "plugins": hooks, "broken": broken}, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="claude-auth-sync plugins")
    for column in ("kind", "name", "active", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["name"], "yes" if row["active"] else "", row["description"])
    console.print(table)
    hooks_table = Table(title="registered plugins and their hooks")
    hooks_table.add_column("plugin")
    hooks_table.add_column("hooks")
    for name, names in sorted(hooks.items()):
        hooks_table.add_row(name, ", ".join(names))
    for item in broken:
        hooks_table.add_row(f"[red]{item['name']} (broken)[/red]", item["error"])
    console.print(hooks_table)
    return 0
