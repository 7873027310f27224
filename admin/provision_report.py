"""What one provisioner run found and did, per user: the records the phases fill in.

Guarantees: a :class:`UserReport` never holds a token (at most a fingerprint); its ``severity`` is
the worst exit status flagged for the user, in the order :data:`SEVERITY_ORDER` (78 before 75
before 1), and every note and next step is listed once. Tokens live only in :class:`Work`, which
never leaves the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from claude_auth_sync.model import ExitCode

from .as_user import Account

__all__ = ["NEEDS_ADMIN", "NOT_ROOT", "SEVERITY_ORDER", "UserReport", "Work", "duration", "worst"]

NEEDS_ADMIN = ExitCode.FAIL  # 1: a person must act: some user needs an admin run
NOT_ROOT = 77  # sysexits EX_NOPERM: the provisioner was not started as root
SEVERITY_ORDER = (ExitCode.CONFIG, ExitCode.TEMPFAIL, NEEDS_ADMIN)


def worst(severities: list[int]) -> int:
    """The exit status for these severities: the first of :data:`SEVERITY_ORDER` present, else 0."""
    for code in SEVERITY_ORDER:
        if code in severities:
            return int(code)
    return int(ExitCode.OK)


@dataclass
class UserReport:
    user: str
    email: str | None = None
    in_roster: bool = True
    account: str = "ok"  # ok | missing | refused
    token: str = "-"  # ok | missing | unsafe | expired | drifted | expiring | unknown | minted | revoked ...
    ttl_s: int | None = None
    timer: str = "-"
    policy: str = "-"
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    severity: int = int(ExitCode.OK)
    fingerprint: str | None = None
    next_steps: list[str] = field(default_factory=list)

    def flag(self, severity: int, note: str, next_step: str | None = None) -> None:
        """Record a problem: its note and next step once each, the severity if it is worse."""
        if note not in self.notes:
            self.notes.append(note)
        if next_step and next_step not in self.next_steps:
            self.next_steps.append(next_step)
        if severity and (self.severity == ExitCode.OK
                         or SEVERITY_ORDER.index(severity) < SEVERITY_ORDER.index(self.severity)):
            self.severity = int(severity)

    def as_json(self) -> dict[str, Any]:
        return {
            "user": self.user, "in_roster": self.in_roster, "account": self.account, "token": self.token,
            "ttl_s": self.ttl_s, "timer": self.timer, "policy": self.policy, "actions": self.actions,
            "notes": self.notes, "changes": self.changes, "severity": self.severity, "fingerprint": self.fingerprint,
            "next_steps": self.next_steps,
        }


@dataclass
class Work:
    """Per-user working data that never leaves the process (it holds tokens)."""

    report: UserReport
    account: Account | None = None
    token: str | None = None
    accessor: str | None = None
    needs_mint: str | None = None  # why


def duration(seconds: int) -> str:
    """``3d 4h``, ``5h 10m`` or ``12m`` (``0s`` for a negative duration)."""
    if seconds < 0:
        return "0s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d {hours}h"
    minutes = rest // 60
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"
