"""The users' ``claude-auth-sync@<user>.timer`` units, as the provisioner sees and changes them.

Guarantees: whether a timer is enabled is read from the ``timers.target.wants`` symlink only (no
systemd call); ``systemctl`` runs with a fixed ``PATH`` and locale, no pager, no password prompt,
``--root`` below a test root and ``--now`` only on a booted systemd, within 120 s, and its
output comes back as one line of at most 400 characters.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

__all__ = ["SystemdTimers", "TIMER_RE", "WANTS", "timer_unit"]

TIMER_TEMPLATE = "claude-auth-sync@.timer"
WANTS = Path("etc/systemd/system/timers.target.wants")
TIMER_RE = re.compile(r"^claude-auth-sync@([a-z_][a-z0-9_-]{0,31})\.timer$")
SYSTEMCTL_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}


def timer_unit(user: str) -> str:
    """The agent's timer unit of ``user``."""
    return f"claude-auth-sync@{user}.timer"


class SystemdTimers:
    """The timers below ``root`` (None: this system), changed with the ``systemctl`` binary."""

    def __init__(self, root: Path | None, systemctl: str) -> None:
        self.root = root
        self.systemctl_bin = systemctl

    @property
    def wants_dir(self) -> Path:
        return (self.root or Path("/")) / WANTS

    def _booted(self) -> bool:
        return self.root is None and Path("/run/systemd/system").is_dir()

    def enabled(self, user: str) -> bool:
        """True when ``user``'s timer is linked into ``timers.target.wants`` (to the template or itself)."""
        link = self.wants_dir / timer_unit(user)
        try:
            target = os.readlink(link)
        except OSError:
            return False
        return os.path.basename(target) in (TIMER_TEMPLATE, timer_unit(user))

    def enabled_users(self) -> set[str]:
        """Every user whose timer is enabled (the user names the unit names carry)."""
        try:
            names = os.listdir(self.wants_dir)
        except OSError:
            return set()
        found = set()
        for name in names:
            match = TIMER_RE.fullmatch(name)
            if match and self.enabled(match.group(1)):
                found.add(match.group(1))
        return found

    def systemctl(self, verb: str, units: list[str]) -> tuple[bool, str]:
        """``systemctl <verb> [--now] units...``: (succeeded, its output on one line)."""
        argv = [self.systemctl_bin, "--quiet", "--no-ask-password"]
        if self.root is not None:
            argv.append(f"--root={self.root}")
        argv.append(verb)
        if self._booted():
            argv.append("--now")
        argv.extend(units)
        try:
            proc = subprocess.run(argv, env=SYSTEMCTL_ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            return False, f"{self.systemctl_bin} {verb}: {err}"
        text = " ".join((proc.stderr + proc.stdout).split())[:400]
        return proc.returncode == 0, text
