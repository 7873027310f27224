"""A simulated fleet: workstations (nspawn containers with host names of their own) against one
three-node OpenBao Raft cluster (issue 15 item 5).

    with RaftCluster(tmp) as cluster, fleet_of(cluster, {"ws-a": node2, "ws-b": node3}) as hosts:
        ws_a = hosts["ws-a"]
        ws_a.provision(["alice", "dave"])          # the real t3-provision-users, inside ws-a
        alice = ws_a.user("alice")
        alice.login(alice.token_n(0))
        assert alice.start() == 0

Each :class:`Workstation` is one booted container (``tests/support/nspawn.py``) with the agent
installed as ``setup-devvm.sh`` does (the shipped units, the venv's console script, the stub
``claude`` at :data:`STUB_IN_CONTAINER`) and ``/etc/claude-auth-sync/config.toml`` naming one node
of the cluster and the per-host :data:`TEMPLATE`. Its users are created *inside* the container
(host's account database untouched) and provisioned by the real ``t3-provision-users`` run as
root inside, with the cluster's root token on stdin (never in an argv), so each host has its
own state file in its own ``/var/lib/claude-auth-sync``.

Every user's stub ``claude`` accepts the logins :meth:`FleetUser.token_n` names (fingerprints in a
drop-in, never tokens): the API accepts any valid login, whichever host holds it. Tokens embed
the host and the user, so a restore from the wrong host is visible in the credentials file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import hvac

from tests.support.cli import fp
from tests.support.nspawn import Container
from tests.support.openbao_raft import RaftCluster, RaftNode

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
STUB_CLAUDE = REPO / "tests" / "support" / "stub_claude.py"
STUB_IN_CONTAINER = "/usr/local/libexec/cas-stub-claude"  # PrivateTmp hides a checkout under /tmp
VENV = Path("/opt/claude-auth-sync-test/venv")
PROVISIONER = VENV / "bin" / "t3-provision-users"
ROSTER = "/etc/claude-auth-sync/roster.yaml"
CONFIG = "/etc/claude-auth-sync/config.toml"
STATE_DIR = "/var/lib/claude-auth-sync"
#: The per-host template the fleet uses (vault.path_template).
TEMPLATE = "workstation/claude-hosts/{host}/{user}"  # as the README recommends
#: Logins per user the stub accepts (token_n(0) .. token_n(ROTATIONS - 1)).
ROTATIONS = 8

__all__ = ["TEMPLATE", "FleetUser", "Workstation", "fleet_of", "oauth"]


def oauth(access: str, refresh: str) -> dict[str, Any]:
    return {"accessToken": access, "refreshToken": refresh, "expiresAt": 4102444800000,
            "scopes": ["user:inference"], "subscriptionType": "enterprise"}


BLANKED = {"accessToken": "", "refreshToken": "", "expiresAt": 0, "scopes": ["user:inference"],
           "subscriptionType": "enterprise"}


class Workstation:
    """One container of the fleet: host name, agent installed, the node its config names."""

    def __init__(self, box: Container, cluster: RaftCluster, node: RaftNode) -> None:
        assert box.hostname, "a fleet workstation needs a host name"
        self.box, self.cluster, self.node = box, cluster, node
        self.host: str = box.hostname
        self.users: dict[str, FleetUser] = {}

    def install_agent(self) -> None:
        """As setup-devvm.sh: units, console script, stub claude, config (addr, per-host template)."""
        assert (VENV / "bin" / "claude-auth-sync").exists(), f"{VENV} is missing (scripts/dev/test.sh builds it)"
        for unit in sorted(UNITS.glob("claude-auth-sync@.*")):
            self.box.write(f"/etc/systemd/system/{unit.name}", unit.read_text())
        self.box.run(["ln", "-sfn", "--", str(VENV / "bin" / "claude-auth-sync"), "/usr/local/bin/claude-auth-sync"])
        self.box.write(STUB_IN_CONTAINER, STUB_CLAUDE.read_text(), mode=0o755)
        self.box.write(CONFIG, f'backend = "vault"\n\n[vault]\naddr = "{self.node.addr}"\n'
                               f'path_template = "{TEMPLATE}"\n', mode=0o644)
        # Container users get uids above the host's UID_MAX (Container.useradd); the provisioner
        # refuses accounts outside UID_MIN..UID_MAX, so the container's own login.defs admits them.
        self.box.run(["sed", "-i", "-E", r"s/^UID_MAX[[:space:]].*/UID_MAX\t\t\t299999/", "/etc/login.defs"])
        self.box.systemctl("daemon-reload")

    def add_user(self, name: str) -> FleetUser:
        """Create the OS user inside this container (no token yet) with the stub CLI's drop-in."""
        user = FleetUser(self, name)
        self.box.useradd(name)
        user.stub_accepts()
        self.users[name] = user
        return user

    def user(self, name: str) -> FleetUser:
        return self.users[name]

    def write_roster(self, roster: list[str]) -> None:
        self.box.write(ROSTER, "users:\n" + "".join(f"  - os_user: {u}\n    email: {u}@example.com\n" for u in roster)
                       if roster else "users: []\n")

    def provision(self, roster: list[str], *extra: str, admin: bool = True) -> dict[str, Any]:
        """``t3-provision-users --json [--apply-policies] [extra]`` as root inside, the roster naming
        ``roster``; with ``admin`` the admin (root) token on stdin and ``--apply-policies``, without
        it the hourly run's check. Its JSON report with ``rc`` and ``stderr``."""
        self.write_roster(roster)
        script = 'IFS= read -r VAULT_TOKEN; [ -n "$VAULT_TOKEN" ] && export VAULT_TOKEN; exec "$@"'
        apply = ["--apply-policies"] if admin else []
        result = self.box.run(["sh", "-c", script, "t3-provision-users", str(PROVISIONER), "--json", *apply,
                               *extra, "--roster", ROSTER, "--config", CONFIG, "--state-dir", STATE_DIR],
                              input=(self.cluster.root_token if admin else "") + "\n", check=False, timeout=1800)
        assert self.cluster.root_token not in result.stdout + result.stderr
        try:
            report: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError as err:
            raise AssertionError(f"t3-provision-users on {self.host} exited {result.returncode} without JSON:\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}") from err
        report["rc"] = result.returncode
        report["stderr"] = result.stderr
        return report

    def running(self) -> list[str]:
        """The users whose service is running right now (one ``systemctl`` call)."""
        out = self.box.systemctl("list-units", "--no-legend", "--plain", "--state=activating,active",
                                 "claude-auth-sync@*.service", check=False).stdout
        return [line.split()[0].removeprefix("claude-auth-sync@").removesuffix(".service")
                for line in out.splitlines() if line.strip()]

    def state_file(self) -> dict[str, Any]:
        """The provisioner's bookkeeping on this host (accessors, policies: never a token)."""
        data: dict[str, Any] = json.loads(self.box.read(f"{STATE_DIR}/tokens.json"))
        return data


class FleetUser:
    """One OS user on one workstation: its units, files, Vault path and journal."""

    def __init__(self, station: Workstation, name: str) -> None:
        self.station, self.name = station, name
        self.box = station.box
        self.home = f"/home/{name}"
        self.service = f"claude-auth-sync@{name}.service"
        self.credentials = f"{self.home}/.claude/.credentials.json"
        self.token_file = f"{self.home}/.config/claude-auth-sync/vault-token"
        self.secret_path = TEMPLATE.replace("{host}", station.host).replace("{user}", name)

    def __repr__(self) -> str:
        return f"{self.name}@{self.station.host}"

    def token_n(self, n: int) -> str:
        """This user's n-th login on this host (what the stub accepts; names host and user)."""
        return f"sk-ant-oat01-{self.station.host}-{self.name}-{n}"

    def oauth_n(self, n: int) -> dict[str, Any]:
        return oauth(self.token_n(n), f"sk-ant-ort01-{self.station.host}-{self.name}-{n}")

    def stub_accepts(self, extra: str = "") -> None:
        knobs = ",".join(fp(self.token_n(n)) for n in range(ROTATIONS))
        self.dropin("test.conf", f"[Service]\nEnvironment=CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN={STUB_IN_CONTAINER} "
                                 f"STUB_CLAUDE_ACCEPT={knobs}\n{extra}")

    def point_at(self, node: RaftNode) -> None:
        """Send this user's agent to ``node`` (a drop-in variable overrides the host's config)."""
        self.dropin("vault.conf", f"[Service]\nEnvironment=CLAUDE_AUTH_SYNC_VAULT__ADDR={node.addr}\n")

    def dropin(self, name: str, text: str) -> None:
        self.box.write(f"/etc/systemd/system/{self.service}.d/{name}", text)
        self.box.systemctl("daemon-reload")

    def login(self, n: int) -> None:
        """Write login ``n`` as Claude Code does (user, 0600, in a 0700 ~/.claude)."""
        self.write_credentials({"claudeAiOauth": self.oauth_n(n)})

    def write_credentials(self, document: dict[str, Any]) -> None:
        self.box.write(self.credentials, json.dumps(document), mode=0o600, owner=self.name, dir_mode=0o700)

    def access_token(self) -> str:
        document: dict[str, Any] = json.loads(self.box.read(self.credentials))
        return str(document["claudeAiOauth"]["accessToken"])

    def access_fp(self) -> str:
        """The fingerprint of the credentials file's access token (what assertions compare)."""
        return fp(self.access_token())

    def fp_n(self, n: int) -> str:
        return fp(self.token_n(n))

    def vault_fp(self) -> str:
        """The fingerprint of the access token at this user's per-host path."""
        return fp(str(self.vault_copy()["data"]["claudeAiOauth"]["accessToken"]))

    def vault_token(self) -> str:
        """The agent's Vault token from the container (in memory only; never print it)."""
        return self.box.read(self.token_file).decode().strip()

    def start(self, *, block: bool = True) -> int:
        """``systemctl start`` the service (waits for the oneshot unless ``block`` is False)."""
        args = ("start", self.service) if block else ("start", "--no-block", self.service)
        return self.box.systemctl(*args, check=False, timeout=300).returncode

    def idle(self) -> bool:
        return self.box.unit_property(self.service, "ActiveState") in ("inactive", "failed")

    def wait_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.idle():
            assert time.monotonic() < deadline, f"{self}: the service is still running after {timeout:.0f} s"
            time.sleep(0.2)

    def entries(self) -> list[dict[str, Any]]:
        """The journald sink's entries (CAS_* fields) of this user's service, oldest first."""
        return [e for e in self.box.journal("claude-auth-sync", unit=self.service) if "CAS_STATUS" in e]

    def wait_entries(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Once the service is idle and has logged ``count`` entries in all (journald is async)."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.entries()
            if (len(entries) >= count and self.idle()) or time.monotonic() > deadline:
                return entries
            time.sleep(0.2)

    def settle(self, quiet: float = 1.5, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until the service is idle and no new entry came for ``quiet`` seconds (a run the
        path unit starts after a restore rewrote the file included); the entries."""
        deadline = time.monotonic() + timeout
        seen, since = -1, time.monotonic()
        while True:
            entries = self.entries()
            if len(entries) != seen or not self.idle():
                seen, since = len(entries), time.monotonic()
            elif time.monotonic() - since >= quiet:
                return entries
            assert time.monotonic() < deadline, f"{self} did not settle within {timeout:.0f} s\n{self.explain()}"
            time.sleep(0.2)

    def run_once(self) -> dict[str, Any]:
        """Start the service, wait, and return the status entry that run logged."""
        before = len(self.entries())
        self.start()
        entries = self.wait_entries(before + 1)
        assert len(entries) > before, f"{self}: no status entry after a run\n{self.explain()}"
        return entries[-1]

    def vault_copy(self) -> dict[str, Any]:
        """The latest version at this user's per-host path (root token)."""
        answer = self.station.cluster.client().secrets.kv.v2.read_secret_version(
            path=self.secret_path, mount_point="secret", raise_on_deleted_version=True)
        data: dict[str, Any] = answer["data"]
        return data

    def client(self, node: RaftNode | None = None) -> hvac.Client:
        """An hvac client carrying this user's own Vault token."""
        return self.station.cluster.client(self.vault_token(), node)

    def explain(self) -> str:
        status = self.box.systemctl("status", "--no-pager", "-l", "--lines=20", self.service, check=False).stdout
        return f"{self}:\n{status[-3000:]}"


def summary(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(status, action, reason) of journal entries, for assertion messages."""
    return [(e["CAS_STATUS"], e["CAS_ACTION"], e.get("CAS_REASON", "")) for e in entries]


@contextmanager
def fleet_of(cluster: RaftCluster, nodes: Mapping[str, RaftNode]) -> Iterator[dict[str, Workstation]]:
    """Boot one container per host name (in parallel), each with the agent installed and its
    config naming the node given for it; powered off (and checked clean) on exit."""
    with ExitStack() as stack:
        boxes = {host: Container(hostname=host) for host in nodes}
        for box in boxes.values():
            stack.callback(box.close)
        with ThreadPoolExecutor(len(boxes)) as pool:
            list(pool.map(lambda box: box.boot(), boxes.values()))
        stations = {host: Workstation(box, cluster, nodes[host]) for host, box in boxes.items()}
        for station in stations.values():
            station.install_agent()
            assert station.box.run(["hostname"]).stdout.strip() == station.host
        yield stations
