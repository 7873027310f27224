"""This machine's own root, booted under a real systemd as a throw-away container.

systemd is not PID 1 on the test machines, so units cannot be started on the host. But
``systemd-nspawn`` (Debian's ``systemd-container``) can boot the host's root filesystem when it
is presented as an overlay with a throw-away upper layer::

    with Container() as box:
        box.useradd("alice")
        box.write("/etc/systemd/system/foo.service", "...")
        box.run(["systemctl", "daemon-reload"])
        box.run(["systemctl", "start", "foo.service"])
        entries = box.journal("foo")

How it is built, and why it leaves nothing behind:

* Everything happens in a *private mount namespace* (``unshare --mount --propagation private``):
  the tmpfs upper layer, the overlay (``lowerdir=/``) and the tmpfs on ``/run/systemd/nspawn``
  (where nspawn keeps its propagation directory) are mounted there and never appear in the
  host's mount table. When the last process of that namespace exits, the kernel drops every
  mount of it, even after ``kill -9`` of the whole test run; the only host-side trace is an
  empty temporary directory holding the console log, removed by :meth:`Container.close`.
* The overlay's lower layer is the host's root file system as it is (only that file system, not
  the mounts below it: ``/proc``, ``/sys``, ``/dev`` come from nspawn). Every change (users
  created inside, units, files) goes to the tmpfs and is gone at power-off: create test users
  *inside* the container (:meth:`Container.useradd`, uids no host user has), and nothing needs
  removing on the host.
* ``systemd-nspawn --boot --register=no --keep-unit --console=pipe`` with
  ``systemd.unit=basic.target``: the container's systemd is PID 1 of its own PID namespace (the
  child of the nspawn process) with its own journald and D-Bus, but the host's daemons (sshd,
  cron, ...) stay down. The network namespace is the host's, so servers on 127.0.0.1 (OpenBao,
  the fake Messages API) are reachable from units inside.
* Commands run inside through ``nsenter -t <container PID 1> -a`` (all namespaces, the
  container's root) with a minimal environment; as a user in a transient unit
  (``systemd-run --uid``, see :meth:`Container.run` for why not ``runuser``).
* :meth:`close`: ``systemctl poweroff`` inside, then SIGKILL to the container's PID 1 and to
  nspawn after a timeout; then it checks that no process of the container's PID namespace or of
  the private mount namespace is left and that the host's mount table never mentions the
  temporary directory (:class:`ContainerError` otherwise).

A missing ``systemd-nspawn`` is an error (:class:`ContainerError`), never a skip:
``scripts/dev/test.sh`` installs ``systemd-container``. Root is required (mounts, nsenter).

Observed on Debian 12 (systemd 252, cgroup v1 hybrid host without systemd as PID 1): the
container reaches ``running`` 3-6 s after nspawn starts. The console prints "Host and machine
ids are equal: refusing to link journals", which is harmless (the container's journal is its
own; read it with :meth:`journal`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["Container", "ContainerError", "require_nspawn"]

#: The environment commands inside get (nothing of the test process leaks in).
_INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

_MOUNT_SCRIPT = r"""
set -eu
d=$1; shift
# A cgroup of its own (see _CGROUP_HIERARCHIES): nspawn puts the container's tree below the cgroup
# it is started in, so two containers started from one cgroup would share payload/system.slice.
for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    if [ -d "$h" ] && [ -w "$h" ]; then
        mkdir "$h/cas-nspawn-${d##*/}"
        echo $$ > "$h/cas-nspawn-${d##*/}/cgroup.procs"
    fi
done
mount -t tmpfs -o mode=0755 cas-nspawn-upper "$d/upper"
mkdir "$d/upper/u" "$d/upper/w"
mount -t overlay cas-nspawn-root -o "lowerdir=/,upperdir=$d/upper/u,workdir=$d/upper/w" "$d/merged"
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755 cas-nspawn-run /run/systemd/nspawn
exec "$@"
"""


#: Where each container gets a cgroup of its own, ``<hierarchy>/cas-nspawn-<temp dir name>``. On a
#: host without systemd as PID 1 every process sits in the root cgroup, and ``nspawn --keep-unit``
#: builds the container's tree (``payload/``, ``supervisor/``) below the cgroup it runs in: two
#: containers started from one cgroup shared ``payload/system.slice``, so a second nspawn exited
#: 255 while the first ran, and two booted together had one cgroup per unit name between them (a
#: unit of one container failed with 219/CGROUP when the other's same-named unit ended: seen in the
#: fleet simulation, where both hosts run ``claude-auth-sync@alice.service``). Removed by
#: :meth:`Container.close`, deepest first, once empty.
_CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))


class ContainerError(RuntimeError):
    """The container could not be booted, driven or torn down cleanly."""


def require_nspawn() -> str:
    """The path of ``systemd-nspawn``; :class:`ContainerError` (a failure, not a skip) without it."""
    found = shutil.which("systemd-nspawn")
    if not found:
        raise ContainerError("systemd-nspawn is missing: apt-get install systemd-container "
                             "(scripts/dev/test.sh does it)")
    for tool in ("unshare", "nsenter", "mount"):
        if not shutil.which(tool):
            raise ContainerError(f"{tool} is missing (util-linux / mount)")
    if os.geteuid() != 0:
        raise ContainerError("booting a container needs root")
    return found


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _ns(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _uid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _remove_cgroups(name: str) -> list[str]:
    """Remove the container's own cgroups (:data:`_CGROUP_HIERARCHIES`), deepest first; problems."""
    problems = []
    for hierarchy in _CGROUP_HIERARCHIES:
        top = hierarchy / f"cas-nspawn-{name}"
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        try:
            top.rmdir()
        except OSError as err:
            problems.append(f"cgroup {top} left behind: {err.strerror}")
    return problems


def _pids_in_ns(kind: str, ident: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ns(int(entry), kind) == ident:
            found.append(int(entry))
    return found


class Container:
    """A booted throw-away overlay of ``/`` under a real systemd (see the module docstring).

    ``boot_timeout``: seconds to wait for ``systemctl is-system-running`` to say ``running`` or
    ``degraded``. ``unit``: the target booted (``basic.target``: no host daemons). ``hostname``:
    the name ``gethostname()`` returns inside (several containers = several workstations).
    """

    def __init__(self, *, boot_timeout: float = 60.0, unit: str = "basic.target", hostname: str | None = None) -> None:
        self.boot_timeout = boot_timeout
        self.unit = unit
        #: The container's host name (``--hostname``); by default nspawn uses the machine name.
        self.hostname = hostname
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.boot_seconds: float | None = None
        self._console: Any = None
        self._pid_ns: str | None = None
        self._mnt_ns: str | None = None

    # -- life cycle --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(check=exc_type is None)

    @property
    def console_log(self) -> Path:
        assert self.dir is not None
        return self.dir / "console.log"

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    def boot(self) -> None:
        nspawn = require_nspawn()
        self.dir = Path(tempfile.mkdtemp(prefix="cas-nspawn-"))
        for sub in ("upper", "merged"):
            (self.dir / sub).mkdir()
        self._console = open(self.console_log, "wb")  # noqa: SIM115 - closed in close()
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _MOUNT_SCRIPT, "cas-nspawn",
                str(self.dir),
                nspawn, f"--directory={self.dir / 'merged'}", "--boot", "--register=no", "--keep-unit",
                "--console=pipe", f"--machine=cas-{os.getpid()}-{secrets.token_hex(3)}",
                f"systemd.unit={self.unit}"]
        began = time.monotonic()
        # A session of its own, so a ^C to pytest does not reach the container directly.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._console,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={"PATH": _INSIDE_ENV["PATH"], "LANG": "C.UTF-8"})
        deadline = began + self.boot_timeout
        state = "(not asked)"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"systemd-nspawn exited with {self.proc.returncode} while booting")
            if self.init_pid is None:
                kids = _children(self.proc.pid)
                # nspawn's (only) child is the container's PID 1 once its exec of systemd is done.
                if kids and _ns(kids[0], "pid") != _ns(os.getpid(), "pid"):
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{kids[0]}/comm").read_text().strip() == "systemd":
                            self.init_pid = kids[0]
                            self._pid_ns = _ns(kids[0], "pid")
                            self._mnt_ns = _ns(self.proc.pid, "mnt")
            if self.init_pid is not None:
                result = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
                state = result.stdout.strip()
                if state in ("running", "degraded"):
                    self.boot_seconds = time.monotonic() - began
                    self._set_hostname()
                    return
            time.sleep(0.2)
        raise self._fail(f"the container did not finish booting within {self.boot_timeout:.0f} s "
                         f"(is-system-running: {state!r})")

    def _set_hostname(self) -> None:
        """The container's systemd sets the host name from the host's ``/etc/hostname`` at boot
        (overriding nspawn's ``--hostname``), so it is set afterwards, in the container's own UTS
        namespace and in its ``/etc/hostname``."""
        if self.hostname:
            self.write("/etc/hostname", self.hostname + "\n")
            self.run(["hostname", self.hostname])

    def _fail(self, message: str) -> ContainerError:
        return ContainerError(f"{message}\n--- console (last lines) ---\n{self.console_tail()}")

    def close(self, check: bool = True) -> None:
        """Power off, reap, and verify nothing is left (``check``: raise if something is)."""
        problems: list[str] = []
        if self.proc is not None:
            if self.proc.poll() is None and self.init_pid is not None:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self.run(["systemctl", "--no-block", "poweroff"], check=False, timeout=10)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    problems.append("the container did not power off within 30 s: killed")
            if self.proc.poll() is None:
                if self.init_pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)  # takes its whole PID namespace along
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            # Anything still alive in the container's PID namespace or our mount namespace?
            deadline = time.monotonic() + 10
            while True:
                left = []
                if self._pid_ns:
                    left += _pids_in_ns("pid", self._pid_ns)
                if self._mnt_ns:
                    left += _pids_in_ns("mnt", self._mnt_ns)
                if not left or time.monotonic() > deadline:
                    break
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            if left:
                problems.append(f"processes left behind: {sorted(set(left))}")
            self.proc = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if self.dir is not None:
            mounts = Path("/proc/self/mountinfo").read_text()
            if str(self.dir) in mounts:
                problems.append(f"mounts left behind on the host: {self.dir}")
            else:
                problems += _remove_cgroups(self.dir.name)
                tail = self.console_tail() if problems else ""
                shutil.rmtree(self.dir, ignore_errors=True)
                if self.dir.exists():
                    problems.append(f"{self.dir} could not be removed")
                if tail:
                    problems.append("--- console (last lines) ---\n" + tail)
            self.dir = None
        self.init_pid = None
        if problems and check:
            raise ContainerError("container teardown: " + "\n".join(problems))

    # -- driving it --------------------------------------------------------------------------------

    def _nsenter(self) -> list[str]:
        if self.init_pid is None:
            raise ContainerError("the container is not running")
        return ["nsenter", "-t", str(self.init_pid), "-a"]

    def run(self, argv: Sequence[str], *, user: str | None = None, check: bool = True, input: str | bytes | None = None,
            timeout: float = 60.0, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container as root, or (``user``) as that user in a transient
        service of its own (``systemd-run --uid``), the way a user's process lives in a unit of
        its own on a real host (a process entered with nsenter would sit in the container's root
        cgroup, outside any unit).

        The command gets a minimal environment (``PATH``, ``LANG``) plus ``env``; as a user also
        ``HOME``/``USER`` from ``User=``. ``check``: raise :class:`ContainerError` with
        stdout/stderr on a non-zero exit.
        """
        full_env = {**_INSIDE_ENV, **(env or {})}
        if user is None:
            command = [*self._nsenter(), "env", "-i", *[f"{k}={v}" for k, v in full_env.items()], *argv]
        else:
            command = [*self._nsenter(), "systemd-run", "--quiet", "--wait", "--pipe", "--collect",
                       f"--uid={user}", "--property=WorkingDirectory=~",
                       *[f"--setenv={k}={v}" for k, v in full_env.items()], "--", *argv]
        data = input.decode() if isinstance(input, bytes) else input
        result = subprocess.run(command, input=data if data is not None else "", capture_output=True, text=True,
                                timeout=timeout, env={"PATH": _INSIDE_ENV["PATH"]}, check=False)
        if check and result.returncode != 0:
            raise ContainerError(f"inside the container, {shlex.join(argv)} (user {user or 'root'}) exited "
                                 f"{result.returncode}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}")
        return result

    def useradd(self, name: str, *, home: str | None = None) -> int:
        """Create the OS user ``name`` (with a home) inside the container; its uid.

        ``home``: the home directory (default ``/home/<name>``); its parent is created (root,
        0755) if missing, as an administrator would for ``useradd -d /srv/<name>``.

        The uid is taken from 200000-299999 and checked free on the host and in the container:
        the container shares the host's kernel, so a host-side ``pkill -u <host user>`` of a
        concurrently running test kills every process of that numeric uid, including this
        container's (seen: SIGKILLed services while test_provisioning's users, created with the
        next free uid as these were, came and went on the host).
        """
        taken = {int(line.split(":")[2]) for line in self.read("/etc/passwd").decode().splitlines() if line.count(":") >= 6}
        with open("/etc/passwd") as host:
            taken |= {int(line.split(":")[2]) for line in host if line.count(":") >= 6}
        for _ in range(100):
            uid = 200000 + secrets.randbelow(100000)
            running = any(_uid_of(int(p)) == uid for p in os.listdir("/proc") if p.isdigit())
            if uid not in taken and not running:
                break
        else:
            raise ContainerError("no free uid found in 200000-299999")
        where: list[str] = []
        if home is not None:
            self.run(["install", "-d", "-m", "0755", "-o", "root", "-g", "root", "--", str(Path(home).parent)])
            where = ["--home-dir", home]
        self.run(["useradd", "--create-home", *where, "--shell", "/bin/sh", "--uid", str(uid), "--user-group", name])
        return uid

    def write(self, path: str, data: str | bytes, *, mode: int = 0o644, owner: str = "root",
              dir_mode: int = 0o755) -> None:
        """Write ``data`` to ``path`` inside the container (atomically: temp file, rename).

        Missing parent directories are created owned by ``owner`` with ``dir_mode``; the file
        gets ``mode`` and ``owner`` (a user name of the container, its primary group).
        """
        script = (
            "import os, pwd, sys\n"
            "path, mode, owner, dmode = sys.argv[1], int(sys.argv[2], 8), sys.argv[3], int(sys.argv[4], 8)\n"
            "pw = pwd.getpwnam(owner)\n"
            "missing = []\n"
            "d = os.path.dirname(path)\n"
            "while not os.path.isdir(d):\n"
            "    missing.append(d); d = os.path.dirname(d)\n"
            "for d in reversed(missing):\n"
            "    os.mkdir(d, dmode); os.chmod(d, dmode); os.chown(d, pw.pw_uid, pw.pw_gid)\n"
            "tmp = path + '.cas-nspawn-tmp'\n"
            "fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)\n"
            "data = sys.stdin.buffer.read()\n"
            "os.write(fd, data); os.fchown(fd, pw.pw_uid, pw.pw_gid); os.fchmod(fd, mode); os.fsync(fd); os.close(fd)\n"
            "os.rename(tmp, path)\n"
        )
        payload = data.encode() if isinstance(data, str) else data
        command = [*self._nsenter(), "env", "-i", f"PATH={_INSIDE_ENV['PATH']}", "/usr/bin/python3", "-c", script,
                   path, oct(mode)[2:], owner, oct(dir_mode)[2:]]
        result = subprocess.run(command, input=payload, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            raise ContainerError(f"writing {path} inside the container failed: {result.stderr.decode(errors='replace')}")

    def read(self, path: str) -> bytes:
        """The bytes of ``path`` inside the container (as root)."""
        command = [*self._nsenter(), "cat", "--", path]
        result = subprocess.run(command, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            raise ContainerError(f"reading {path} inside the container failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def journal(self, identifier: str | None = None, *, unit: str | None = None,
                matches: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The container's journal entries (``journalctl -o json``), filtered by
        ``SYSLOG_IDENTIFIER``, ``_SYSTEMD_UNIT`` and any other ``FIELD=value`` ``matches``
        (all must hold). To pick one run of a unit, match its ``_SYSTEMD_INVOCATION_ID``."""
        argv = ["journalctl", "--no-pager", "-o", "json", "--all"]
        if identifier:
            argv.append(f"SYSLOG_IDENTIFIER={identifier}")
        if unit:
            argv.append(f"_SYSTEMD_UNIT={unit}")
        argv += [f"{k}={v}" for k, v in (matches or {}).items()]
        result = self.run(argv, check=False)
        if result.returncode not in (0, 1):  # 1: no entries with some filters
            raise ContainerError(f"journalctl failed: {result.stderr}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def unit_property(self, unit: str, name: str) -> str:
        return self.systemctl("show", "-P", name, unit).stdout.strip()
