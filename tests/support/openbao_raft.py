"""A real three-node OpenBao Raft (integrated storage) cluster on loopback, for fleet tests.

``RaftCluster`` starts ``bao server`` three times (not ``-dev``: integrated storage, each node
with its own data directory, API port and cluster port on 127.0.0.1), initialises the first
node with one unseal key share, unseals every node, lets the followers join through
``retry_join`` and waits until all three are voters with one leader, then enables KV v2 at
``secret/``. Start-up takes about 13 s.

Facts this module relies on (measured with OpenBao 2.7.2 on the test machines):

* ``performance_multiplier = 1`` (production timing; the default 5 is for slow machines) makes a
  SIGKILLed leader's successor take over in about 4 s instead of 20 s or more.
* A follower (standby) forwards every request to the leader, so a client may use any node's
  address; after a leader dies, writes through a surviving node
  succeed again as soon as one of the other two voters is elected.
* Followers join as non-voters and are promoted by autopilot after its server stabilisation
  time, checked every reconcile interval (10 s each by default; 1 s here, which cuts start-up
  from 23 s to 13 s); :meth:`start` waits for three voters so a leader kill leaves a quorum.
* Every node must declare the same audit device with the same options (a follower whose
  ``file_path`` differs from the leader's audit table never finishes its unseal), so the
  cluster has one audit log that whichever node is active appends to.
* The root token and the unseal key come from ``sys/init``'s JSON answer and stay in memory;
  they are never written to a file, a log or a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import hvac
import hvac.exceptions
import requests

from .openbao import (
    _PRCTL,
    OpenBaoError,
    _die_with_parent,
    _free_port_pair,
    _terminate,
    find_bao_binary,
)

__all__ = ["RaftCluster", "RaftNode"]

_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


class RaftNode:
    """One ``bao server`` of the cluster: its address, data directory and process."""

    def __init__(self, workdir: Path, node_id: str, audit_log: Path) -> None:
        self.node_id = node_id
        self.workdir = workdir
        self.port = _free_port_pair()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.audit_log = audit_log
        self.server_log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def config(self, peers: list[str]) -> str:
        """The node's HCL: Raft storage joining the other nodes, a plain-http loopback listener."""
        joins = "".join(f'  retry_join {{ leader_api_addr = "{addr}" }}\n' for addr in peers if addr != self.addr)
        audit_path = json.dumps(str(self.audit_log))
        return (
            'storage "raft" {\n'
            f'  path = {json.dumps(str(self.workdir / "data"))}\n'
            f'  node_id = "{self.node_id}"\n'
            '  performance_multiplier = 1\n'
            '  autopilot_reconcile_interval = "1s"\n'
            '  autopilot_update_interval = "1s"\n'
            f'{joins}}}\n'
            'listener "tcp" {\n'
            f'  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.port + 1}"\n'
            '  tls_disable = true\n}\n'
            f'api_addr = "{self.addr}"\n'
            f'cluster_addr = "http://127.0.0.1:{self.port + 1}"\n'
            'ui = false\n'
            f'audit "file" "test-file" {{\n  options {{\n    file_path = {audit_path}\n  }}\n}}\n'
        )

    def start(self, peers: list[str]) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        (self.workdir / "home").mkdir(mode=0o700, exist_ok=True)
        config = self.workdir / "node.hcl"
        config.write_text(self.config(peers), encoding="utf-8")
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env["HOME"] = str(self.workdir / "home")
        self._log = open(self.server_log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [find_bao_binary(), "server", f"-config={config}", "-log-level=info"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=self.workdir, close_fds=True, preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and wait; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _terminate(proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: the node dies without a clean leadership hand-over."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        try:
            answer = _session().get(f"{self.addr}/v1/sys/health", timeout=2)
            body: dict[str, Any] = answer.json()
            return body
        except (requests.RequestException, ValueError):
            return None


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies, no netrc
    return session


class RaftCluster:
    """Three Raft voters on loopback; use as a context manager. ``root_token``: never log it."""

    def __init__(self, workdir: Path, *, size: int = 3, start_timeout: float = 90.0) -> None:
        self.workdir = Path(workdir)
        #: One audit log for the cluster: every node must declare the same audit device (a follower
        #: whose ``file_path`` differs from the leader's table refuses to finish its unseal).
        self.audit_log = self.workdir / "audit.log"
        self.nodes = [RaftNode(self.workdir / f"node{i + 1}", f"node{i + 1}", self.audit_log) for i in range(size)]
        self.start_timeout = start_timeout
        self.root_token = ""
        self._unseal_key = ""
        self.startup_seconds = float("nan")

    @property
    def addrs(self) -> list[str]:
        return [node.addr for node in self.nodes]

    def __enter__(self) -> RaftCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        began = time.monotonic()
        for node in self.nodes:
            node.start(self.addrs)
        first = self.nodes[0]
        self._wait(lambda: first.health() is not None, "the first node to answer")
        answer = hvac.Client(url=first.addr, session=_session()).sys.initialize(secret_shares=1, secret_threshold=1)
        self.root_token = answer["root_token"]
        self._unseal_key = (answer.get("keys_base64") or answer["keys"])[0]
        self.unseal(first)
        self._wait(self._speed_up_autopilot, "the first node to accept the autopilot configuration")
        for node in self.nodes[1:]:
            self.unseal(node)
        self._wait(self._three_voters, "three Raft voters with one leader")
        self.client().sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        self._wait(self._kv_ready, "KV v2 at secret/ to finish its upgrade")
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def unseal(self, node: RaftNode) -> None:
        """Unseal ``node`` (after a restart), retrying while it is still coming up."""
        self._wait(lambda: self._try_unseal(node), f"{node.node_id} to join and unseal")

    def _try_unseal(self, node: RaftNode) -> bool:
        """A follower reports "not initialized" until ``retry_join`` has reached the leader."""
        try:
            answer = hvac.Client(url=node.addr, session=_session()).sys.submit_unseal_key(key=self._unseal_key)
        except (hvac.exceptions.VaultError, requests.RequestException):
            return False
        return not answer.get("sealed", True)

    def restart(self, node: RaftNode) -> None:
        node.start(self.addrs)
        self.unseal(node)
        self._wait(self._three_voters, f"{node.node_id} to rejoin as a voter")

    def client(self, token: str | None = None, node: RaftNode | None = None) -> hvac.Client:
        """An hvac client for ``node``; ``token`` default: root.

        The default node is the active one: OpenBao 2.x standbys answer reads from their own,
        possibly lagging, copy, so a read through a node that has just rejoined can miss a write
        the active node acknowledged a moment ago. Only while no node is active (an election)
        does the default fall back to any running node."""
        target = node or self._active_or_any()
        return hvac.Client(url=target.addr, token=token or self.root_token, session=_session(), timeout=10)

    def _active_or_any(self) -> RaftNode:
        try:
            return self.leader()
        except OpenBaoError:
            return next(n for n in self.nodes if n.running)

    def leader(self) -> RaftNode:
        """The node that says it is active (not a standby)."""
        for node in self.nodes:
            health = node.health() if node.running else None
            if health and health.get("initialized") and not health.get("sealed") and not health.get("standby"):
                return node
        raise OpenBaoError("no active node in the cluster")

    def peers(self) -> list[dict[str, Any]]:
        config = self.client().sys.read_raft_config()["data"]["config"]
        servers: list[dict[str, Any]] = config["servers"]
        return servers

    def _speed_up_autopilot(self) -> bool:
        """Followers become voters after 1 s of stability instead of autopilot's default 10 s."""
        try:
            self.client().adapter.post("/v1/sys/storage/raft/autopilot/configuration",
                                       json={"server_stabilization_time": "1s"})
        except Exception:  # noqa: BLE001 - not active yet
            return False
        return True

    def _three_voters(self) -> bool:
        try:
            self.leader()
            peers = self.peers()
        except Exception:  # noqa: BLE001 - still electing or joining
            return False
        return len(peers) == len(self.nodes) and all(p.get("voter") for p in peers)

    def _kv_ready(self) -> bool:
        try:
            self.client().secrets.kv.v2.read_configuration(mount_point="secret")
            self.client().secrets.kv.v2.create_or_update_secret("cluster-probe", {"ok": "1"}, mount_point="secret")
        except Exception:  # noqa: BLE001 - "waiting for the primary to upgrade"
            return False
        return True

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.25)
        tails = "\n".join(f"--- {n.node_id} ---\n{_tail(n.server_log)}" for n in self.nodes)
        raise OpenBaoError(f"timed out waiting for {what}\n{tails}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
