"""The provisioner's table for root's terminal.

Guarantee: every cell and message is a :class:`rich.text.Text` built with
:func:`claude_auth_sync.terminal_text.safe_text`, so nothing that came from a user (token file
notes, paths) or from Vault (token metadata, policy names, error text) is parsed as rich markup
or emoji code, and no control character or escape sequence reaches the terminal. Our own line
breaks between the actions and each note are kept; a note's own line breaks are not.
"""

from __future__ import annotations

from typing import Any, Protocol

from rich.text import Text

from claude_auth_sync.model import ExitCode
from claude_auth_sync.terminal_text import plain, safe_text

from .provision_report import NEEDS_ADMIN

__all__ = ["render_report"]

COLOUR = {ExitCode.OK: "", NEEDS_ADMIN: "yellow", ExitCode.TEMPFAIL: "yellow", ExitCode.CONFIG: "red"}
COLUMNS = ("user", "token", "TTL", "timer", "policy", "action")


class _Run(Protocol):
    """What :func:`render_report` needs of a :class:`~claude_auth_sync.admin.provision.Provisioner`."""

    admin_token: str | None
    errors: list[tuple[int, str]]
    policies_pruned: list[str]
    migration: dict[str, list[str]]
    vault: Any
    o: Any

    def reports(self) -> list[Any]: ...
    def next_steps(self) -> list[str]: ...
    def exit_code(self) -> int: ...


def _cells(report: Any, duration: Any) -> list[Any]:
    user = report.user if report.in_roster else f"{report.user} (removed)"
    if report.account == "missing":
        user += " (no account)"
    lines = [safe_text(", ".join(report.actions) or "none", 2000)]
    lines += [safe_text(note, 1000) for note in report.notes]
    ttl = duration(report.ttl_s) if report.ttl_s is not None else "-"
    return [plain(user), plain(report.token), plain(ttl), plain(report.timer), plain(report.policy),
            Text("\n").join(plain(line, 2000) for line in lines)]


def render_report(run: _Run, stream: Any, duration: Any) -> None:
    """Print the run's table, errors, next steps and request counts to ``stream``."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, highlight=False, soft_wrap=False, emoji=False,
                      width=None if stream.isatty() else 140)
    title = "t3-provision-users" + (" (dry run)" if run.o.dry_run else "") + (
        " with admin token" if run.admin_token else " (no admin token)")
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for report in run.reports():
        style = COLOUR.get(report.severity, "")
        table.add_row(*_cells(report, duration), style=style or None)
    console.print(table)
    for _, msg in run.errors:
        console.print(plain("error: ", style="red") + plain(msg, 2000))
    if run.policies_pruned:
        console.print(plain(f"pruned policies: {', '.join(run.policies_pruned)}", 4000))
    if run.o.migrate:
        counts = ", ".join(f"{what.replace('_', ' ')} {len(users)}" for what, users in run.migration.items())
        console.print(plain(f"migration to per-host paths: {counts}", 1000))
    for step in run.next_steps():
        console.print(plain(f"next step: {step}", 1000))
    req = run.vault.requests if run.vault else {"user": 0, "admin": 0}
    console.print(plain(f"Vault requests: {req['user']} with user tokens, {req['admin']} with the admin token; "
                        f"exit {run.exit_code()}"))
