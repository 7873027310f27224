"""The administrator's package as a plugin: the ``fleet`` command (``diagnose --all``) and the
``check-all`` command (``check --all``).

Imported on every ``claude-auth-sync`` start (entry points are loaded to build the command line),
so everything heavy is imported inside :func:`_run_fleet`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from claude_auth_sync.hookspecs import CommandSpec, hookimpl

__all__ = ["cas_commands"]

DEFAULT_ROSTER = Path("/etc/claude-auth-sync/roster.yaml")


def _add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.add_argument("--roster", type=Path, default=DEFAULT_ROSTER, help="the roster")
    parser.add_argument("--systemd-root", type=Path, default=Path("/"), help=argparse.SUPPRESS)


def _run_fleet(args: argparse.Namespace) -> int:
    from .fleet import command_fleet

    return command_fleet(roster=args.roster, json_output=args.json, systemd_root=args.systemd_root)


def _add_check_all_arguments(parser: argparse.ArgumentParser) -> None:
    from claude_auth_sync.cli import add_monitoring_arguments

    add_monitoring_arguments(parser, timeout_default="30")
    parser.add_argument("--roster", type=Path, default=DEFAULT_ROSTER, help="the roster")


def _run_check_all(args: argparse.Namespace) -> int:
    from .check_all import command_check_all

    return command_check_all(roster=args.roster, warning=args.warning, critical=args.critical,
                             timeout=args.timeout, verbose=args.verbose)


@hookimpl
def cas_commands() -> list[CommandSpec]:
    return [CommandSpec("fleet", "(root) one row per roster user, gathered as each user (= diagnose --all)",
                        _add_fleet_arguments, _run_fleet),
            CommandSpec("check-all", "(root) one monitoring-plugin check for every roster user (= check --all)",
                        _add_check_all_arguments, _run_check_all)]
