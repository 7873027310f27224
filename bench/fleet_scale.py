#!/usr/bin/env python3
"""Benchmark for the fleet's scale on paper (issue 15, README "Many workstations"): what one
workstation costs a Vault/OpenBao Raft cluster, measured here, to be scaled by the README.

    sudo /opt/claude-auth-sync-test/venv/bin/python bench/fleet_scale.py [--users 500] [--repeat 5]

Everything runs against a real three-node OpenBao Raft cluster on loopback
(tests/support/openbao_raft.py) with its one file audit device, and inside one throw-away nspawn
container (``ws-bench``, tests/support/fleet.py) under a real systemd, with the per-host
``vault.path_template``. Nothing is created on the host: the accounts live in the container's
overlay and vanish at power-off.

1. Requests per cycle of one user's agent (median of ``--repeat``), counted from the audit log,
   with the audit bytes they wrote and how many are Raft writes (every audited non-read request:
   a token renewal writes its lease, a backup a KV version; through a standby one renewal is
   audited twice, so that row over-counts by one):
   timer run with the login unchanged; timer run after a login change (backup); restore after a
   blanked login; the path unit's run for an unchanged rewrite and for a changed login; the
   unchanged timer run once more with the agent talking to a standby instead of the leader.
2. ``t3-provision-users`` over ``--users`` real OS accounts (useradd inside the container): the
   first admin run (policies written, tokens minted, 2 units per user enabled with a real
   systemctl), the hourly run without an admin token, a steady-state admin run.
3. The fleet view (``claude-auth-sync fleet --json``, i.e. ``diagnose --all``) over those users.
4. The cluster's KV v2 write throughput here (``--writers`` threads writing versions of their own
   secrets through the leader for ``--seconds``): what bounds backups and renewals, on this
   machine (loopback, shared cores, the nodes' data on this file system), so a floor.

Prints the numbers; exits 0 unless something failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.fleet import BLANKED, ROSTER, Workstation, fleet_of
from tests.support.openbao_raft import RaftCluster

READS = {"read", "list"}


def audit_window(cluster: RaftCluster, action: Callable[[], object]) -> dict[str, Any]:
    """Run ``action`` and describe the audit entries written meanwhile (the bench sends nothing else)."""
    mark = cluster.audit_log.stat().st_size
    action()
    time.sleep(0.3)  # the response entry follows the request's return by a moment
    with open(cluster.audit_log, "rb") as handle:
        handle.seek(mark)
        lines = [line for line in handle.read().split(b"\n") if line.strip()]
    requests, size = [], 0
    for line in lines:
        entry = json.loads(line)
        size += len(line) + 1
        if entry.get("type") == "request":
            requests.append(entry["request"])
    writes = sum(1 for r in requests if r.get("operation") not in READS)
    paths = Counter(f"{r.get('operation')} {_shape(r.get('path', ''))}" for r in requests)
    return {"requests": len(requests), "raft_writes": writes, "audit_bytes": size, "paths": paths}


def _shape(path: str) -> str:
    """A request's path without the user's name (secret paths end with it)."""
    return path.rsplit("/", 1)[0] + "/<user>" if path.startswith("secret/") else path


def median_of(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"requests": statistics.median(s["requests"] for s in samples),
            "raft_writes": statistics.median(s["raft_writes"] for s in samples),
            "audit_bytes": statistics.median(s["audit_bytes"] for s in samples),
            "paths": samples[-1]["paths"], "n": len(samples)}


def show(label: str, result: dict[str, Any]) -> None:
    paths = ", ".join(f"{p} x{n}" for p, n in sorted(result["paths"].items()))
    print(f"  {label:<46} {result['requests']:>4} requests, {result['raft_writes']:>3} Raft writes, "
          f"{result['audit_bytes']:>6.0f} audit bytes   [{paths or 'none'}]")


def cycle_costs(cluster: RaftCluster, station: Workstation, repeat: int) -> dict[str, dict[str, Any]]:
    """Part 1: one user's agent, each kind of run ``repeat`` times."""
    user = station.add_user("benchu")
    user.login(0)
    report = station.provision(["benchu"])
    assert report["rc"] == 0, report
    station.box.systemctl("disable", "--now", f"claude-auth-sync@{user.name}.path")  # runs only when started here
    expect(user.run_once(), "OK", "backup")
    kinds: dict[str, list[dict[str, Any]]] = {}
    n = 0

    def sample(kind: str, prepare: Callable[[], None], status: str, action: str, run: Callable[[], Any]) -> None:
        prepare()
        before = len(user.entries())
        kinds.setdefault(kind, []).append(audit_window(cluster, run))
        entries = user.settle()[before:]
        assert entries and (entries[-1]["CAS_STATUS"], entries[-1]["CAS_ACTION"]) == (status, action), \
            (kind, [(e["CAS_STATUS"], e["CAS_ACTION"], e.get("CAS_REASON")) for e in entries])

    for _ in range(repeat):
        n += 1
        sample("timer run, login unchanged (OK none)", lambda: None, "OK", "none", user.start)
        sample("timer run, login changed (OK backup)", lambda n=n: user.login(n % 8), "OK", "backup", user.start)
        sample("restore after a blanked login (OK restore)",
               lambda: user.write_credentials({"claudeAiOauth": BLANKED}), "OK", "restore", user.start)
    station.box.systemctl("enable", "--now", f"claude-auth-sync@{user.name}.path")
    for _ in range(repeat):
        n += 1
        current = json.loads(station.box.read(user.credentials))
        sample("path unit, unchanged rewrite (OK none)", lambda: None, "OK", "none",
               lambda current=current: (user.write_credentials(current), user.settle()))
        sample("path unit, login changed (OK backup)", lambda: None, "OK", "backup",
               lambda n=n: (user.login(n % 8), user.settle()))
    station.box.systemctl("disable", "--now", f"claude-auth-sync@{user.name}.path")
    standby = next(node for node in cluster.nodes if node is not cluster.leader())
    user.point_at(standby)
    for _ in range(repeat):
        sample("timer run via a standby node (OK none)", lambda: None, "OK", "none", user.start)
    return {kind: median_of(samples) for kind, samples in kinds.items()}


def expect(entry: dict[str, Any], status: str, action: str) -> None:
    assert (entry["CAS_STATUS"], entry["CAS_ACTION"]) == (status, action), entry


def many_users(station: Workstation, count: int) -> list[str]:
    """``count`` accounts inside the container (one shell loop; uids above the host's range)."""
    taken = {int(line.split(":")[2]) for line in Path("/etc/passwd").read_text().splitlines() if line.count(":") >= 6}
    base = 300000
    assert not any(base <= uid < base + count for uid in taken)
    names = [f"casf{i:04d}" for i in range(count)]
    script = ('i=0; for name in "$@"; do useradd --create-home --shell /bin/sh --uid $((' + str(base) +
              ' + i)) --user-group "$name" || exit 1; i=$((i + 1)); done')
    station.box.run(["sed", "-i", "-E", r"s/^UID_MAX[[:space:]].*/UID_MAX\t\t\t399999/", "/etc/login.defs"])
    began = time.monotonic()
    station.box.run(["sh", "-c", script, "useradd-loop", *names], timeout=1800)
    print(f"  created {count} accounts inside the container in {time.monotonic() - began:.1f} s")
    return names


def provisioner_costs(cluster: RaftCluster, station: Workstation, names: list[str]) -> dict[str, Any]:
    """Part 2: the provisioner over ``names``."""
    results: dict[str, Any] = {}
    for label, admin in (("first admin run (mint all)", True), ("hourly run, no admin token", False),
                         ("steady-state admin run", True)):
        holder: dict[str, Any] = {}
        began = time.monotonic()
        window = audit_window(cluster, lambda admin=admin, holder=holder: holder.update(station.provision(names, admin=admin)))
        wall = time.monotonic() - began
        report = holder
        tokens = Counter(u["token"] for u in report["users"])
        results[label] = {"wall_s": wall, "rc": report["rc"], "tokens": dict(tokens), **window}
        if report["rc"] != 0:
            print(f"  ({label}: exit {report['rc']}: {report.get('errors')} {report.get('next_steps')})"[:600])
        print(f"  {label:<30} exit {report['rc']}, {wall:6.1f} s = {wall / len(names) * 1000:5.1f} ms/user, "
              f"{window['requests']} requests ({window['requests'] / len(names):.2f}/user), "
              f"{window['raft_writes']} Raft writes, tokens {dict(tokens)}")
    return results


def fleet_view_cost(cluster: RaftCluster, station: Workstation, names: list[str]) -> dict[str, Any]:
    """Part 3: ``claude-auth-sync fleet --json`` (``diagnose --all``) as root over the roster."""
    station.write_roster(names)
    holder: dict[str, Any] = {}

    def view() -> None:
        result = station.box.run(["claude-auth-sync", "fleet", "--json", "--roster", ROSTER], check=False, timeout=1800)
        holder["rc"] = result.returncode
        holder["rows"] = len(json.loads(result.stdout)["users"]) if result.stdout.strip() else 0
        holder["stderr"] = result.stderr[-500:]

    began = time.monotonic()
    window = audit_window(cluster, view)
    wall = time.monotonic() - began
    print(f"  fleet --json over {len(names)} users: exit {holder['rc']}, {holder['rows']} rows, {wall:.1f} s = "
          f"{wall / len(names) * 1000:.1f} ms/user, {window['requests']} requests "
          f"({window['requests'] / len(names):.2f}/user)")
    if holder["rows"] != len(names):
        print(f"  fleet view stderr: {holder['stderr']}")
    return {"wall_s": wall, **holder, **window}


def write_throughput(cluster: RaftCluster, writers: int, seconds: float) -> dict[str, Any]:
    """Part 4: KV v2 writes per second through the leader (each one a Raft log entry)."""
    leader = cluster.leader()
    done = [0] * writers
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    def writer(index: int) -> None:
        client = cluster.client(node=leader)
        payload = {"claudeAiOauth": {"accessToken": "x" * 108, "refreshToken": "y" * 108, "expiresAt": 4102444800000}}
        while time.monotonic() < stop_at:
            began = time.monotonic()
            client.secrets.kv.v2.create_or_update_secret(path=f"bench/throughput/{index}", secret=payload,
                                                         mount_point="secret")
            latencies.append(time.monotonic() - began)
            done[index] += 1

    began = time.monotonic()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(writer, range(writers)))
    wall = time.monotonic() - began
    rate = sum(done) / wall
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(f"  {sum(done)} KV writes by {writers} writers in {wall:.1f} s: {rate:.0f} writes/s "
          f"(latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms)")
    return {"writes": sum(done), "wall_s": wall, "writes_per_s": rate, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--skip-fleet", action="store_true", help="only part 4 (no container)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (containers, mounts)", file=sys.stderr)
        return 77
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cas-fleet-bench-") as work, RaftCluster(Path(work)) as cluster:
        print(f"4. KV v2 write throughput of the cluster ({args.writers} writers, {args.seconds:.0f} s)")
        out["throughput"] = write_throughput(cluster, args.writers, args.seconds)
        if args.skip_fleet:
            return 0
        with fleet_of(cluster, {"ws-bench": cluster.leader()}) as hosts:
            station = hosts["ws-bench"]
            print(f"1. requests per cycle (median of {args.repeat}; the agent talks to the leader unless said)")
            cycles = cycle_costs(cluster, station, args.repeat)
            for kind, result in cycles.items():
                show(kind, result)
            entry_sizes = [c["audit_bytes"] / c["requests"] for c in cycles.values() if c["requests"]]
            print(f"  audit bytes per request (request + response entry): {statistics.median(entry_sizes):.0f}")
            out["cycles"] = {k: {**v, "paths": dict(v["paths"])} for k, v in cycles.items()}
            print(f"2. t3-provision-users over {args.users} real OS accounts (inside the container)")
            names = ["benchu", *many_users(station, args.users)]  # benchu stays: no prune pending
            out["provisioner"] = provisioner_costs(cluster, station, names)
            print(f"3. the fleet view over {args.users} users")
            out["fleet_view"] = fleet_view_cost(cluster, station, names)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
