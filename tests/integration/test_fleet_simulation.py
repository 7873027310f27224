"""Issue 15 item 5: a simulated fleet against one three-node OpenBao Raft cluster.

Three workstations, ``ws-a``, ``ws-b`` and ``ws-c``, are throw-away nspawn containers booting this machine's
root under a real systemd, each with its own host name (``socket.gethostname()`` inside is
``ws-a`` / ``ws-b`` / ``ws-c``), the shipped units and ``vault.path_template =
"workstation/claude-hosts/{host}/{user}"`` (the README's). They share the host's network, so both reach the
cluster (tests/support/openbao_raft.py) on loopback; ws-a's and ws-c's configs name one follower,
ws-b's the other, and one user of ws-a (carol) is sent to the leader by a drop-in. Every user is created
inside its container and provisioned by the real ``t3-provision-users --apply-policies`` run as
root there (each host its own state file). Runs are started by ``systemctl`` and by the path unit
(a login written into place), and read back from the containers' journals.

* alice exists on all three hosts with a different login on each; dave on ws-a and ws-b; bob on
  ws-b and ws-c; carol only on ws-a.
* Logins name their host and user (``sk-ant-oat01-ws-a-alice-0``), so any credentials file or
  journal fingerprint coming from the other host shows.

The module shares one cluster and one pair of containers (~30 s of set-up); the tests run in
file order and each starts from what the fixture established, the last one (pruning) changing
ws-a's roster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
import requests

from tests.support.cli import fp
from tests.support.fleet import (
    BLANKED,
    CONFIG,
    ROTATIONS,
    FleetUser,
    Workstation,
    fleet_of,
    summary,
)
from tests.support.openbao import OpenBaoError
from tests.support.openbao_raft import RaftCluster, RaftNode

SUFFIX = secrets.token_hex(2)
ALICE, BOB, CAROL, DAVE = (f"{name}{SUFFIX}" for name in ("alice", "bob", "carol", "dave"))
ROSTERS = {"ws-a": [ALICE, CAROL, DAVE], "ws-b": [ALICE, BOB, DAVE], "ws-c": [ALICE, BOB]}


@dataclass
class Fleet:
    cluster: RaftCluster
    hosts: dict[str, Workstation]
    first_leader: RaftNode

    @property
    def a(self) -> Workstation:
        return self.hosts["ws-a"]

    @property
    def b(self) -> Workstation:
        return self.hosts["ws-b"]

    @property
    def c(self) -> Workstation:
        return self.hosts["ws-c"]

    def users(self) -> list[FleetUser]:
        return [user for station in self.hosts.values() for user in station.users.values()]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The cluster, both workstations, every user provisioned and backed up once (login 0)."""
    began = time.monotonic()
    with RaftCluster(tmp_path_factory.mktemp("raft")) as cluster:
        leader = cluster.leader()
        followers = [node for node in cluster.nodes if node is not leader]
        nodes = {"ws-a": followers[0], "ws-b": followers[1], "ws-c": followers[0]}
        with fleet_of(cluster, nodes) as hosts:
            fleet = Fleet(cluster, hosts, leader)
            for host, roster in ROSTERS.items():
                for name in roster:
                    hosts[host].add_user(name).login(0)  # before the path unit watches: no run yet
            hosts["ws-a"].user(CAROL).point_at(leader)
            for host, roster in ROSTERS.items():
                report = hosts[host].provision(roster)
                assert report["rc"] == 0, json.dumps(report, indent=1)[-3000:]
            for user in fleet.users():
                entry = user.run_once()
                assert (entry["CAS_STATUS"], entry["CAS_ACTION"]) == ("OK", "backup"), (user, summary([entry]))
            print(f"\nfleet set-up: {time.monotonic() - began:.1f} s (cluster {cluster.startup_seconds:.1f} s)")
            yield fleet


def digest(document: Any) -> str:
    """A fingerprint of a whole JSON document: assertions compare these, so a failure prints no token."""
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]


def own_fingerprints(user: FleetUser) -> set[str]:
    return {fp(user.token_n(n)) for n in range(ROTATIONS)}


def assert_only_own_logins(fleet: Fleet) -> None:
    """Every journal entry of every user carries one of that (host, user)'s own logins, and every
    credentials file and Vault copy holds one: nothing ever came from the other host."""
    for user in fleet.users():
        foreign = [e for e in user.entries() if e.get("CAS_ACCESS_FP") and e["CAS_ACCESS_FP"] not in own_fingerprints(user)]
        assert foreign == [], (user, summary(foreign))
        assert user.access_fp() in own_fingerprints(user), user
        assert user.vault_fp() in own_fingerprints(user), user


# -------------------------------------------------------------------------------------- 1. per-host paths


def test_the_same_user_on_three_hosts_keeps_three_logins_at_three_paths_under_three_policies(fleet: Fleet) -> None:
    alice_a, alice_b = fleet.a.user(ALICE), fleet.b.user(ALICE)
    root = fleet.cluster.client()
    assert len({station.user(ALICE).secret_path for station in fleet.hosts.values()}) == 3
    assert len({station.user(ALICE).vault_fp() for station in fleet.hosts.values()}) == 3

    assert alice_a.secret_path == f"workstation/claude-hosts/ws-a/{ALICE}"
    assert digest(alice_a.vault_copy()["data"]) == digest({"claudeAiOauth": alice_a.oauth_n(0)})
    assert digest(alice_b.vault_copy()["data"]) == digest({"claudeAiOauth": alice_b.oauth_n(0)})
    with pytest.raises(hvac.exceptions.InvalidPath):  # the per-user path of the runbook is unused
        root.secrets.kv.v2.read_secret_version(path=f"workstation/claude-users/{ALICE}", mount_point="secret",
                                               raise_on_deleted_version=True)
    # A policy per (host, user); each token carries exactly its host's.
    policies = set(root.sys.list_policies()["data"]["policies"])
    for host, roster in ROSTERS.items():
        assert {f"claude-auth-sync-{name}@{host}" for name in roster} <= policies
    assert f"claude-auth-sync-{ALICE}" not in policies
    assert alice_a.client().auth.token.lookup_self()["data"]["policies"] == [f"claude-auth-sync-{ALICE}@ws-a"]
    assert alice_b.client().auth.token.lookup_self()["data"]["policies"] == [f"claude-auth-sync-{ALICE}@ws-b"]

    # ws-a's token reads its own path and is refused ws-b's: real 403s, in the audit log too.
    mark = fleet.cluster.audit_log.stat().st_size
    token_a = alice_a.client(fleet.cluster.leader())  # a standby may audit a forwarded request twice
    assert token_a.secrets.kv.v2.read_secret_version(path=alice_a.secret_path, mount_point="secret",
                                                     raise_on_deleted_version=True)["data"]["data"]
    with pytest.raises(hvac.exceptions.Forbidden):
        token_a.secrets.kv.v2.read_secret_version(path=alice_b.secret_path, mount_point="secret",
                                                  raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        token_a.secrets.kv.v2.create_or_update_secret(path=alice_b.secret_path, mount_point="secret",
                                                      secret={"claudeAiOauth": alice_a.oauth_n(0)})
    with pytest.raises(hvac.exceptions.Forbidden):
        token_a.secrets.kv.v2.read_secret_metadata(path=alice_b.secret_path, mount_point="secret")
    denied = [e for e in audit_entries(fleet.cluster, mark)
              if e["type"] == "response" and e["request"]["path"].endswith(alice_b.secret_path)]
    assert len(denied) == 3 and all("permission denied" in e.get("error", "") for e in denied), denied
    assert digest(alice_b.vault_copy()["data"]) == digest({"claudeAiOauth": alice_b.oauth_n(0)})  # refused

    # Each host's state file records only what that host created, under its own name.
    for station in fleet.hosts.values():
        state = station.state_file()
        assert set(state["users"]) == set(ROSTERS[station.host])
        assert {p["host"] for p in state["policies"].values()} == {station.host}
        assert set(state["policies"]) == {f"claude-auth-sync-{n}@{station.host}" for n in ROSTERS[station.host]}
    assert_only_own_logins(fleet)


# -------------------------------------------------------------------------------------- 2. restores


def test_a_restore_installs_this_hosts_copy_never_the_other_hosts(fleet: Fleet) -> None:
    """ws-b's and then ws-c's alice back up after ws-a's (with one shared path ws-c's would be the
    latest copy); then alice's login on ws-a is blanked: the path unit's run restores ws-a's own."""
    alice_a, alice_b, alice_c = (station.user(ALICE) for station in (fleet.a, fleet.b, fleet.c))
    for other in (alice_b, alice_c):
        other.login(1)
        other.settle()
        assert other.vault_fp() == other.fp_n(1)
    before = len(alice_a.entries())

    alice_a.write_credentials({"claudeAiOauth": BLANKED})  # the path unit starts the run
    entries = alice_a.settle()[before:]

    restores = [e for e in entries if e["CAS_ACTION"] == "restore"]
    assert [(e["CAS_STATUS"], e["CAS_ACCESS_FP"]) for e in restores] == [("OK", alice_a.fp_n(0))], \
        summary(entries)
    assert "FAIL" not in {e["CAS_STATUS"] for e in entries}
    assert alice_a.access_fp() == alice_a.fp_n(0) not in (alice_b.fp_n(1), alice_c.fp_n(1))
    for other in (alice_b, alice_c):  # the other hosts untouched
        assert other.access_fp() == other.vault_fp() == other.fp_n(1), other
    assert_only_own_logins(fleet)


# -------------------------------------------------------------------------------------- 3. a leader dies


def test_a_leader_killed_mid_fleet_changes_no_login(fleet: Fleet) -> None:
    """Every user rotates its login three times (the path unit runs the agent each time); the
    Raft leader is SIGKILLed while the first runs are in flight. ws-a (and ws-c) and ws-b talk to the two
    followers, carol (ws-a) to the leader itself. No run FAILs, none restores, every credentials
    file holds its last login; carol is WARN while her node is dead; after the re-election every
    other user's next run is OK with its last login backed up, and carol's once her node is back."""
    cluster, leader = fleet.cluster, fleet.first_leader
    assert cluster.leader() is leader
    users = fleet.users()
    carol = fleet.a.user(CAROL)
    before = {repr(u): len(u.entries()) for u in users}

    for user in users:
        user.login(2)
    in_flight = [user for station in fleet.hosts.values() for user in station.running()]
    leader.kill()
    killed_at = time.monotonic()
    time.sleep(1.0)
    for user in users:
        user.login(3)
    time.sleep(2.0)
    for user in users:
        user.login(4)
    new_leader = wait_for_leader(cluster, exclude=leader)
    elected_s = time.monotonic() - killed_at
    during = {repr(u): u.settle()[before[repr(u)]:] for u in users}

    for user in users:
        runs = during[repr(user)]
        assert runs, f"{user}: the path unit started no run"
        assert {e["CAS_STATUS"] for e in runs} <= {"OK", "WARN"}, (user, summary(runs))
        assert "restore" not in {e["CAS_ACTION"] for e in runs}, (user, summary(runs))
        assert user.access_fp() == user.fp_n(4), user  # unchanged: the last login written
    carol_runs = during[repr(carol)]
    assert carol_runs[-1]["CAS_STATUS"] == "WARN", summary(carol_runs)
    assert carol_runs[-1]["CAS_REASON"].startswith("vault"), summary(carol_runs)
    assert_only_own_logins(fleet)

    # After the re-election: OK, and the last login is what each (host, user) path holds.
    for user in users:
        if user is carol:
            continue
        entry = user.run_once()
        assert entry["CAS_STATUS"] == "OK", (user, summary([entry]))
        assert digest(user.vault_copy()["data"]["claudeAiOauth"]) == digest(user.oauth_n(4)), user
    assert carol.run_once()["CAS_STATUS"] == "WARN"  # her node is still down
    cluster.restart(leader)
    back_s = wait_for_service(cluster, leader)
    entry = carol.run_once()
    assert (entry["CAS_STATUS"], entry["CAS_ACTION"]) == ("OK", "backup"), json.dumps({k: v for k, v in entry.items() if k.startswith(("CAS_", "MESSAGE"))})
    assert digest(carol.vault_copy()["data"]["claudeAiOauth"]) == digest(carol.oauth_n(4))
    warned = sum(e["CAS_STATUS"] == "WARN" for runs in during.values() for e in runs)
    print(f"\nleader {leader.node_id} killed with {len(in_flight)} runs in flight ({sorted(in_flight)}); "
          f"{new_leader.node_id} active {elected_s:.1f} s later; "
          f"{sum(len(r) for r in during.values())} runs meanwhile, {warned} WARN, 0 FAIL, 0 restore; "
          f"the restarted node answered {back_s:.1f} s after rejoining as a voter")


def wait_for_service(cluster: RaftCluster, node: RaftNode, timeout: float = 30.0) -> float:
    """Seconds until ``node`` (restarted, a voter again) forwards a write to the active node.

    OpenBao 2.x standbys are "read-enabled": they answer reads (lookup-self, a KV read) from
    their own copy at once, but a write (renew-self, a backup) answers 500 "local node not active
    but active cluster node not found" until the node has learnt who is active."""
    began = time.monotonic()
    while True:
        try:
            cluster.client(node=node).secrets.kv.v2.create_or_update_secret(
                path="fleet-probe", secret={"node": node.node_id}, mount_point="secret")
            return time.monotonic() - began
        except (hvac.exceptions.VaultError, requests.RequestException):
            assert time.monotonic() - began < timeout, f"{node.node_id} serves no request {timeout:.0f} s after rejoining"
            time.sleep(0.25)


def wait_for_leader(cluster: RaftCluster, exclude: RaftNode, timeout: float = 30.0) -> RaftNode:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OpenBaoError):  # still electing
            node = cluster.leader()
            if node is not exclude:
                return node
        assert time.monotonic() < deadline, "no new Raft leader"
        time.sleep(0.25)


# -------------------------------------------------------------------------------------- 4. pruning


def test_pruning_on_one_host_leaves_the_other_hosts_users_working(fleet: Fleet) -> None:
    """ws-a drops dave from its roster and prunes: ws-a's dave loses his policy and token; ws-b's
    dave (same name), alice (same name) and bob (another name), and ws-c's alice and bob, keep
    theirs and back up OK."""
    root = fleet.cluster.client()
    dave_a_token = fleet.a.user(DAVE).vault_token()
    others = [user for station in (fleet.b, fleet.c) for user in station.users.values()]
    other_tokens = {repr(user): user.vault_token() for user in others}
    policies_before = set(root.sys.list_policies()["data"]["policies"])

    report = fleet.a.provision([ALICE, CAROL], "--prune")

    assert report["rc"] == 0, json.dumps(report, indent=1)[-3000:]
    assert report["policies"]["pruned"] == [f"claude-auth-sync-{DAVE}@ws-a"], report["policies"]
    policies_after = set(root.sys.list_policies()["data"]["policies"])
    assert policies_before - policies_after == {f"claude-auth-sync-{DAVE}@ws-a"}
    with pytest.raises(hvac.exceptions.Forbidden):  # ws-a's dave: revoked
        fleet.cluster.client(dave_a_token).auth.token.lookup_self()
    # (the tokens stay out of assertion expressions: pytest would print a call's arguments)
    other_policies = {who: fleet.cluster.client(token).auth.token.lookup_self()["data"]["policies"]
                      for who, token in other_tokens.items()}
    assert other_policies == {repr(u): [f"claude-auth-sync-{u.name}@{u.station.host}"] for u in others}
    for user in others:
        user.login(5)
        runs = user.settle()
        assert (runs[-1]["CAS_STATUS"], runs[-1]["CAS_ACTION"]) == ("OK", "backup"), (user, summary(runs[-3:]))
        assert digest(user.vault_copy()["data"]["claudeAiOauth"]) == digest(user.oauth_n(5)), user
    # ws-b's own provisioner still finds nothing to do (no re-mint: its tokens were never touched).
    again = fleet.b.provision(ROSTERS["ws-b"])
    assert again["rc"] == 0 and [u["token"] for u in again["users"]] == ["ok"] * 3, json.dumps(again)[-2000:]
    for name in (ALICE, CAROL):  # ws-a's remaining users are unaffected too
        assert fleet.a.user(name).run_once()["CAS_STATUS"] == "OK"


def audit_entries(cluster: RaftCluster, mark: int) -> list[dict[str, Any]]:
    """Audit log entries (requests and responses) written after byte offset ``mark``."""
    with open(Path(cluster.audit_log), "rb") as handle:
        handle.seek(mark)
        complete = handle.read().rpartition(b"\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def test_pruning_through_another_node_of_the_same_cluster_revokes_or_says_so(fleet: Fleet) -> None:
    """ws-a's config moves from one node to another of the same cluster (a node replaced, or the
    load balancer's name adopted), then carol leaves ws-a's roster: her token must be revoked, or
    the run must not end 0 while it is still valid."""
    station = fleet.a
    carol_token = station.user(CAROL).vault_token()
    other = next(node for node in fleet.cluster.nodes if node is not station.node and node.running)
    original = station.box.read(CONFIG).decode()
    station.box.write(CONFIG, original.replace(station.node.addr, other.addr), mode=0o644)
    try:
        report = station.provision([ALICE], "--prune")
    finally:
        station.box.write(CONFIG, original, mode=0o644)
    try:
        fleet.cluster.client(carol_token).auth.token.lookup_self()
        still_valid = True
    except hvac.exceptions.Forbidden:
        still_valid = False
    assert not still_valid or report["rc"] != 0, json.dumps(report["removed"])[-1500:]
    # The state file knows the cluster by its cluster_id: the other node is the same Vault, so the
    # token is revoked outright (not merely reported), and the run has nothing left to do.
    assert not still_valid and report["rc"] == 0, json.dumps(report["removed"])[-1500:]
    assert [u["token"] for u in report["removed"] if u["user"] == CAROL] == ["revoked"], report["removed"]
