"""The users' units, as the provisioner sees and changes them: ``claude-auth-sync@<user>.timer``
(every 6 h), ``claude-auth-sync@<user>.path`` (a change of the credentials file) and the two
per-instance drop-ins that name the user's real home (from the password database: homes are not
always ``/home/<user>``): the path to watch and the service's ``BindPaths=``.

Instance names: the user name itself, checked by :func:`claude_auth_sync.usernames.check_username`
before it goes into any unit name (:func:`instance`). Every name that check accepts (``john.doe``,
``j_doe-2``) is valid verbatim in a unit name and comes back unchanged through ``User=%i``, so no
``systemd-escape`` is applied (it would write ``-`` as ``\x2d``, which ``%i`` keeps literally);
see :mod:`claude_auth_sync.usernames` for what systemd does with dots, ``-`` and ``@``.

Guarantees: whether a unit is enabled is read from the ``*.target.wants`` symlink only (no
systemd call); drop-ins are written atomically (0644, root) and only for a home made of safe
characters (a home with spaces or unit-file specials is refused, never half-quoted); ``systemctl``
runs with a fixed ``PATH`` and locale, no pager, no password prompt, ``--root`` below a test root
and ``--now``, ``start``, ``reset-failed``, ``show`` and ``daemon-reload`` only on a booted systemd
(never with ``--root``), within 120 s, and its output comes back as one line of at most 400
characters. Whether units are running is read for any number of units in one ``systemctl show``
(:meth:`SystemdTimers.states`).

Reloads: a drop-in written or removed is followed by a ``daemon-reload`` (booted systemd only);
inside :meth:`SystemdTimers.deferred_reload` the reloads asked for are merged into one, run when
the block ends. :meth:`SystemdTimers.enable` only links (``--no-reload``: no reload of its own),
so the provisioner's first run over many users writes every drop-in and link, reloads systemd
once, then starts every unit in one ``systemctl start`` (a reload costs time in proportion to the
units loaded: one per user made the first run over 500 users take minutes).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from claude_auth_sync.fileio import write_atomically
from claude_auth_sync.usernames import USERNAME_PATTERN, check_username

__all__ = ["INOTIFY_FIX", "PATHS_WANTS", "SystemdTimers", "TIMER_RE", "WANTS", "dropins", "inotify_exhausted",
           "instance", "path_unit", "safe_home", "service_unit", "timer_unit"]

TIMER_TEMPLATE = "claude-auth-sync@.timer"
UNIT_DIR = Path("etc/systemd/system")
WANTS = UNIT_DIR / "timers.target.wants"
PATHS_WANTS = UNIT_DIR / "paths.target.wants"
PATH_TEMPLATE = "claude-auth-sync@.path"
SAFE_HOME = re.compile(r"^/[A-Za-z0-9._/+-]+$")
TIMER_RE = re.compile(r"\Aclaude-auth-sync@(.+)\.timer\Z", re.DOTALL)  # the instance is checked on its own
INOTIFY_HINT = "most likely fs.inotify.max_user_instances (128 by default) is used up, one per path unit"
INOTIFY_FIX = ("raise the inotify instance limit (one per path unit): echo fs.inotify.max_user_instances=1024 "
               "> /etc/sysctl.d/60-claude-auth-sync.conf && sysctl --system; then rerun t3-provision-users")
SYSTEMCTL_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}


def inotify_exhausted(why: str) -> bool:
    """True for a reason of :meth:`SystemdTimers.not_active` that names the inotify instance limit."""
    return INOTIFY_HINT in why


def instance(user: str) -> str:
    """``user`` as the instance name of its units: the name itself, after the user-name check
    (ConfigurationError, exit 78, for a name that may not go into a unit name)."""
    return check_username(user)


def service_unit(user: str) -> str:
    """The agent's service unit of ``user``."""
    return f"claude-auth-sync@{instance(user)}.service"


def timer_unit(user: str) -> str:
    """The agent's timer unit of ``user``."""
    return f"claude-auth-sync@{instance(user)}.timer"


def path_unit(user: str) -> str:
    """The agent's path unit of ``user`` (starts the service on a change of the credentials file)."""
    return f"claude-auth-sync@{instance(user)}.path"


def safe_home(home: str) -> bool:
    """An absolute path a unit file can carry unquoted (no space, ``%``, ``$``, quote or ``..``)."""
    return bool(SAFE_HOME.fullmatch(home)) and ".." not in home.split("/")


def dropins(user: str, home: str) -> dict[str, bytes]:
    """The drop-ins (relative to the unit directory) that point ``user``'s units at ``home``."""
    head = "# Written by t3-provision-users from the password database; rewritten on every change.\n"
    return {
        f"{path_unit(user)}.d/home.conf":
            f"{head}[Path]\nPathChanged={home}/.claude/.credentials.json\n".encode(),
        f"{service_unit(user)}.d/home.conf":
            f"{head}[Service]\nBindPaths=\nBindPaths={home}\n".encode(),
    }


class SystemdTimers:
    """The timers below ``root`` (None: this system), changed with the ``systemctl`` binary."""

    def __init__(self, root: Path | None, systemctl: str) -> None:
        self.root = root
        self.systemctl_bin = systemctl
        self._deferring = False
        self._reload_due = False

    @property
    def wants_dir(self) -> Path:
        return (self.root or Path("/")) / WANTS

    @property
    def unit_dir(self) -> Path:
        return (self.root or Path("/")) / UNIT_DIR

    def path_enabled(self, user: str) -> bool:
        """True when ``user``'s path unit is linked into ``paths.target.wants``."""
        return _links_to((self.root or Path("/")) / PATHS_WANTS / path_unit(user),
                         (PATH_TEMPLATE, path_unit(user)))

    def dropins_current(self, user: str, home: str) -> bool:
        """Both drop-ins exist with exactly the content :func:`dropins` gives for ``home``."""
        for name, data in dropins(user, home).items():
            try:
                if (self.unit_dir / name).read_bytes() != data:
                    return False
            except OSError:
                return False
        return True

    def write_dropins(self, user: str, home: str) -> None:
        """Write both drop-ins (0644, atomically); then :meth:`reload`."""
        for name, data in dropins(user, home).items():
            target = self.unit_dir / name
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                write_atomically(dir_fd, target.name, data, mode=0o644)
            finally:
                os.close(dir_fd)
        self.reload()

    def remove_dropins(self, user: str) -> None:
        """Remove both drop-ins (and their directories once empty); then :meth:`reload`."""
        for name in dropins(user, "/").keys():
            target = self.unit_dir / name
            try:
                target.unlink()
                target.parent.rmdir()
            except OSError:
                pass
        self.reload()

    def reload(self) -> tuple[bool, str]:
        """``daemon-reload`` on a booted systemd (nothing elsewhere); inside :meth:`deferred_reload`
        only noted, to be done once when the block ends. (succeeded or not needed, output)."""
        if self._deferring:
            self._reload_due = True
            return True, ""
        return self._daemon_reload()

    @contextlib.contextmanager
    def deferred_reload(self) -> Iterator[list[tuple[bool, str]]]:
        """A block in which every :meth:`reload` asked for is merged into one ``daemon-reload``, run
        when the block ends (also when it ends by an exception), and only if one was asked for.

        The list it gives receives that reload's result (succeeded, output) once it has run.
        Nested blocks merge into the outermost one.
        """
        outcome: list[tuple[bool, str]] = []
        if self._deferring:
            yield outcome
            return
        self._deferring, self._reload_due = True, False
        try:
            yield outcome
        finally:
            self._deferring = False
            if self._reload_due:
                self._reload_due = False
                outcome.append(self._daemon_reload())

    def _daemon_reload(self) -> tuple[bool, str]:
        if not self._booted():
            return True, ""
        return self._run(["daemon-reload"])

    def _booted(self) -> bool:
        return self.root is None and Path("/run/systemd/system").is_dir()

    def enabled(self, user: str) -> bool:
        """True when ``user``'s timer is linked into ``timers.target.wants`` (to the template or itself)."""
        return _links_to(self.wants_dir / timer_unit(user), (TIMER_TEMPLATE, timer_unit(user)))

    def enabled_users(self) -> set[str]:
        """Every user whose timer is enabled (the user names the unit names carry)."""
        try:
            names = os.listdir(self.wants_dir)
        except OSError:
            return set()
        found = set()
        for name in names:
            match = TIMER_RE.fullmatch(name)
            if match and USERNAME_PATTERN.fullmatch(match.group(1)) and self.enabled(match.group(1)):
                found.add(match.group(1))
        return found

    def systemctl(self, verb: str, units: list[str]) -> tuple[bool, str]:
        """``systemctl <verb> [--now] units...``: (succeeded, its output on one line)."""
        argv = [verb, *(["--now"] if self._booted() else []), *units]
        return self._run(argv)

    def enable(self, units: list[str]) -> tuple[bool, str]:
        """``systemctl enable units...``: the links only. On a booted systemd with ``--no-reload``
        (no reload, no start: the caller reloads once, in :meth:`deferred_reload`, then calls
        :meth:`start`). (succeeded, its output on one line)."""
        return self._run(["enable", *(["--no-reload"] if self._booted() else []), *units])

    def start(self, units: list[str]) -> tuple[bool, str]:
        """``systemctl start units...`` on a booted systemd (nothing elsewhere: ``(True, "")``)."""
        if not self._booted():
            return True, ""
        return self._run(["start", *units])

    def reset_failed(self, units: list[str]) -> tuple[bool, str]:
        """``systemctl reset-failed units...`` on a booted systemd (nothing elsewhere): a failed unit's
        state and its start-limit counter cleared, so a start is not refused for the limit."""
        if not self._booted() or not units:
            return True, ""
        return self._run(["reset-failed", *units])

    def states(self, units: list[str]) -> dict[str, tuple[str, str]]:
        """(ActiveState, Result) of each of ``units`` on a booted systemd, in one ``systemctl show``
        whatever their number ({} elsewhere, or when ``show`` fails)."""
        if not self._booted() or not units:
            return {}
        ok, out = self._call(["show", "--property=Id,ActiveState,Result", *units])
        if not ok:
            return {}
        found: dict[str, tuple[str, str]] = {}
        for block in out.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if props.get("Id", "") in units:
                found[props["Id"]] = (props.get("ActiveState", ""), props.get("Result", "?"))
        return found

    def down(self, units: list[str]) -> dict[str, tuple[str, str]]:
        """Those of ``units`` that are stopped or failed (ActiveState ``inactive`` or ``failed``) on a
        booted systemd, with (ActiveState, Result): one ``systemctl show`` (:meth:`states`)."""
        return {u: s for u, s in self.states(units).items() if s[0] in ("inactive", "failed")}

    def not_active(self, units: list[str]) -> dict[str, str]:
        """Why each of ``units`` that is not active is not, on a booted systemd (one ``systemctl
        show``): ``failed (Result: resources)``; for a path unit failing for resources, what most
        likely ran out (each path unit holds an inotify instance of PID 1; :func:`inotify_exhausted`
        tells such a reason, :data:`INOTIFY_FIX` is the fix)."""
        found: dict[str, str] = {}
        for unit, (state, result) in self.states(units).items():
            if state not in ("active", "activating", "reloading"):
                why = f"{state} (Result: {result})"
                if unit.endswith(".path") and result == "resources":
                    why += f": {INOTIFY_HINT}"
                found[unit] = why
        return found

    def _run(self, args: list[str]) -> tuple[bool, str]:
        """``systemctl args...``: (succeeded, its output on one line of at most 400 characters)."""
        ok, out = self._call(args)
        return ok, " ".join(out.split())[:400]

    def _call(self, args: list[str]) -> tuple[bool, str]:
        argv = [self.systemctl_bin, "--quiet", "--no-ask-password"]
        if self.root is not None:
            argv.append(f"--root={self.root}")
        argv.extend(args)
        try:
            proc = subprocess.run(argv, env=SYSTEMCTL_ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            return False, f"{self.systemctl_bin} {args[0]}: {err}"
        return proc.returncode == 0, proc.stderr + proc.stdout


def _links_to(link: Path, names: tuple[str, ...]) -> bool:
    try:
        target = os.readlink(link)
    except OSError:
        return False
    return os.path.basename(target) in names
