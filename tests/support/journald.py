"""A real, private systemd-journald instance for tests (a journal *namespace*).

No systemd as PID 1 is needed. As root, with only Debian's ``systemd`` package
(which ships ``/lib/systemd/systemd-journald`` and ``journalctl``) and an
existing ``/etc/machine-id``, this is all it takes::

    # start (what JournaldNamespace.start() runs; NOTIFY_SOCKET is optional and
    # is only used here to wait for READY=1 instead of guessing)
    NOTIFY_SOCKET=/tmp/cas-journald-XXXX/notify \\
    SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_LEVEL=info \\
        /lib/systemd/systemd-journald <ns> </dev/null >journald.log 2>&1 &

    # journald binds its own sockets (no socket activation needed):
    #   /run/systemd/journal.<ns>/socket              native protocol (send here)
    #   /run/systemd/journal.<ns>/stdout, dev-log, io.systemd.journal (varlink)
    # and writes /var/log/journal/<machine-id>.<ns>/system.journal
    # (or /run/log/journal/<machine-id>.<ns>/ when /var/log/journal is absent).

    journalctl --namespace=<ns> --sync      # varlink: wait until queued datagrams are written
    journalctl --namespace=<ns> -t claude-auth-sync -o json --all -q --no-pager

    # stop + clean up (journald leaves its runtime dir behind on exit)
    kill -TERM <pid>
    rm -rf /run/systemd/journal.<ns> /var/log/journal/<machine-id>.<ns> \\
           /run/log/journal/<machine-id>.<ns>

Two journald quirks handled here:

* A namespaced journald exits by itself after 30 s without a varlink client or
  stdout stream (``server_is_idle``).  We keep one stdout-stream connection open
  (connect only, never send the stream header, so it logs nothing and is never
  handed to a service manager) for the lifetime of the instance.
* ``journalctl -o json`` prints fields above 4096 bytes as ``null`` unless
  ``--all`` is given; non-printable values come out as byte arrays, which
  ``read()`` turns back into ``str`` (or ``bytes`` if not UTF-8).

A missing binary, a missing machine-id or not being root raise
``JournaldError``: callers must let that *fail* the test, never skip.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

JOURNALD_BIN = Path("/lib/systemd/systemd-journald")
JOURNALCTL_BIN = Path("/usr/bin/journalctl")
MACHINE_ID_FILE = Path("/etc/machine-id")


class JournaldError(RuntimeError):
    """journald could not be started, or misbehaved."""


class JournaldNamespace:
    """Context manager running ``systemd-journald <namespace>`` for one fresh namespace.

    ``name`` is a prefix; a unique suffix is appended so runs never share a journal.
    """

    def __init__(self, name: str = "cas-test", *, start_timeout_s: float = 10.0) -> None:
        safe = "".join(c if c.isalnum() or c == "-" else "-" for c in name.lower())[:24] or "cas"
        self.namespace = f"{safe}-{os.getpid()}-{secrets.token_hex(4)}"
        self.start_timeout_s = start_timeout_s
        self.runtime_dir = Path(f"/run/systemd/journal.{self.namespace}")
        self.socket_path = str(self.runtime_dir / "socket")
        self.machine_id: str | None = None
        self.journal_dirs: list[Path] = []
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._keepalive: socket.socket | None = None
        self._created_parents: list[Path] = []

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> JournaldNamespace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for binary in (JOURNALD_BIN, JOURNALCTL_BIN):
            if not os.access(binary, os.X_OK):
                raise JournaldError(f"{binary} not found: install Debian package 'systemd'")
        if os.geteuid() != 0:
            raise JournaldError("a journald namespace instance needs root (it binds under /run/systemd)")
        try:
            self.machine_id = MACHINE_ID_FILE.read_text().strip()
        except OSError as exc:
            raise JournaldError(f"{MACHINE_ID_FILE} missing ({exc}); run systemd-machine-id-setup") from exc
        if len(self.machine_id) != 32:
            raise JournaldError(f"{MACHINE_ID_FILE} holds no valid machine id: {self.machine_id!r}")
        self.journal_dirs = [
            Path(f"/var/log/journal/{self.machine_id}.{self.namespace}"),
            Path(f"/run/log/journal/{self.machine_id}.{self.namespace}"),
        ]
        for path in (self.runtime_dir, *self.journal_dirs):
            if path.exists():
                raise JournaldError(f"{path} already exists; refusing to reuse a namespace")
        self._created_parents = [p for p in (Path("/run/log"), Path("/run/log/journal")) if not p.exists()]

        self._tmpdir = Path(tempfile.mkdtemp(prefix="cas-journald-"))
        self.log_path = self._tmpdir / "journald.log"
        notify_path = str(self._tmpdir / "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            notify.bind(notify_path)
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "SYSTEMD_"))}
            env.update(NOTIFY_SOCKET=notify_path, SYSTEMD_LOG_TARGET="console", SYSTEMD_LOG_LEVEL="info")
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    [str(JOURNALD_BIN), self.namespace],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, close_fds=True, start_new_session=True,
                )
            try:
                self._wait_ready(notify)
                self._keepalive = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                self._keepalive.connect(str(self.runtime_dir / "stdout"))
            except BaseException:
                self.stop()
                raise
        finally:
            notify.close()

    def _wait_ready(self, notify: socket.socket) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        ready = False
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise JournaldError(f"journald exited with {self._proc.returncode} during start\n{self.log_tail()}")
            notify.settimeout(0.1)
            try:
                ready = ready or b"READY=1" in notify.recv(4096).split(b"\n")
            except TimeoutError:
                pass
            if ready and Path(self.socket_path).is_socket():
                return
        raise JournaldError(
            f"journald for namespace {self.namespace} not ready within {self.start_timeout_s}s\n{self.log_tail()}")

    def stop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
            self._proc = None
        for path in (self.runtime_dir, *self.journal_dirs):
            shutil.rmtree(path, ignore_errors=True)
        for parent in reversed(self._created_parents):
            try:
                parent.rmdir()
            except OSError:
                pass
        self._created_parents = []
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return "(no journald log)"
        return "journald log:\n" + "\n".join(text.splitlines()[-lines:])

    # -- reading -------------------------------------------------------------------
    def journalctl(self, *args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run ``journalctl --namespace=<ns> ARGS`` (bounded)."""
        return subprocess.run(
            [str(JOURNALCTL_BIN), f"--namespace={self.namespace}", *args],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )

    def sync(self) -> None:
        """Ask journald (over varlink) to write everything it has received so far."""
        res = self.journalctl("--sync")
        if res.returncode != 0:
            raise JournaldError(f"journalctl --sync failed: {res.stderr.strip()}\n{self.log_tail()}")

    def read(self, identifier: str = "claude-auth-sync", *, min_entries: int = 1,
             timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Entries with SYSLOG_IDENTIFIER=identifier, oldest first.

        Retries (bounded by timeout_s) until at least min_entries are visible;
        raises TimeoutError otherwise. Pass min_entries=0 to read once.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise JournaldError(f"journald for {self.namespace} is not running\n{self.log_tail()}")
            self.sync()
            res = self.journalctl("-t", identifier, "-o", "json", "--all", "--quiet", "--no-pager")
            if res.returncode != 0:
                raise JournaldError(f"journalctl failed ({res.returncode}): {res.stderr.strip()}")
            entries = [_decode_entry(json.loads(line)) for line in res.stdout.splitlines() if line.strip()]
            if len(entries) >= min_entries:
                return entries
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"only {len(entries)} of {min_entries} entries for -t {identifier} in namespace "
                    f"{self.namespace} after {timeout_s}s")
            time.sleep(0.1)


def _decode_value(value: Any) -> Any:
    # journalctl -o json: binary / non-printable values are arrays of byte values,
    # repeated fields are arrays of values.
    if isinstance(value, list):
        if all(isinstance(b, int) for b in value):
            raw = bytes(value)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
        return [_decode_value(v) for v in value]
    return value


def _decode_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: _decode_value(v) for k, v in entry.items()}
