#!/usr/bin/env python3
"""Benchmark the systemd part of t3-provision-users under a real systemd: the first run over many
users (two drop-ins and two units per user to enable and start) and the run after it.

    sudo /opt/claude-auth-sync-test/venv/bin/python bench/provision_systemd.py [--users 100]

One throw-away nspawn container (tests/support/nspawn.py) booted from this machine's root, the
agent installed as setup-devvm.sh does (tests/integration/test_units_real_systemd.install_agent),
``--users`` accounts created inside it (its overlay: nothing on the host), a dev OpenBao on the
host's loopback. The real ``t3-provision-users --json --apply-policies`` runs as root inside, the
admin token on its stdin. For each run it prints: the wall time (and per user), how many times
the container's systemd reloaded its units (PID 1's "Reloading" messages in the container's
journal: this counts the reloads ``systemctl enable`` asks for on its own too), how many users
ended with their timer and path unit enabled and active (one ``systemctl show`` over all units),
and the exit status. Runs: two with the admin token (the first run, then one with nothing to do),
two hourly runs (no token at all) with nothing to do, and with ``--stop N`` one more hourly run
after the timer and path unit of N users were stopped (it starts them again).

Each path unit holds one inotify instance of the container's PID 1, and the container shares the
host kernel's root user: with ``fs.inotify.max_user_instances`` at its default of 128, about 124
path units can run (the rest fail with Result=resources, which the provisioner reports per user).
``--inotify-instances N`` raises that (host-wide) limit for the bench and puts the old value back
afterwards.

Prints the numbers; exits 0 unless a run failed or a unit was left disabled or inactive.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.test_units_real_systemd import PROVISIONER, install_agent  # noqa: E402
from tests.support.nspawn import Container  # noqa: E402
from tests.support.openbao import OpenBaoServer  # noqa: E402

ROSTER = "/etc/claude-auth-sync/roster.yaml"
CONFIG = "/etc/claude-auth-sync/config.toml"
STATE_DIR = "/var/lib/claude-auth-sync"
UID_BASE = 310000  # above the host's accounts; the container's login.defs is raised to admit them


def reloads(box: Container) -> int:
    """How many times the container's systemd has reloaded since boot (its own journal lines)."""
    out = box.run(["journalctl", "--no-pager", "-o", "json", "_PID=1"], check=False, timeout=120).stdout
    count = 0
    for line in out.splitlines():
        message = json.loads(line).get("MESSAGE")
        if isinstance(message, str) and message.startswith("Reloading") and not message.startswith("Reloading finished"):
            count += 1
    return count


def create_users(box: Container, count: int) -> list[str]:
    """``count`` accounts inside the container (one shell loop)."""
    names = [f"caspv{i:04d}" for i in range(count)]
    box.run(["sed", "-i", "-E", r"s/^UID_MAX[[:space:]].*/UID_MAX\t\t\t399999/", "/etc/login.defs"])
    script = ('i=0; for name in "$@"; do useradd --create-home --shell /bin/sh --uid $((' + str(UID_BASE) +
              ' + i)) --user-group "$name" || exit 1; i=$((i + 1)); done')
    box.run(["sh", "-c", script, "useradd-loop", *names], timeout=1800)
    box.write(ROSTER, "users:\n" + "".join(f"  - os_user: {u}\n    email: {u}@example.com\n" for u in names))
    return names


def provision(box: Container, bao: OpenBaoServer, *, admin: bool = True) -> dict[str, Any]:
    """One run of the real provisioner: with the admin token (``--apply-policies``) or, as the
    hourly timer runs it, without any token."""
    if admin:
        script = 'IFS= read -r VAULT_TOKEN; export VAULT_TOKEN; exec "$@"'
        argv = ["sh", "-c", script, "t3-provision-users", str(PROVISIONER), "--json", "--apply-policies"]
    else:
        argv = ["env", "-u", "VAULT_TOKEN", str(PROVISIONER), "--json"]
    result = box.run([*argv, "--roster", ROSTER, "--config", CONFIG, "--state-dir", STATE_DIR],
                     input=bao.root_token + "\n" if admin else "", check=False, timeout=3600)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError as err:
        raise SystemExit(f"t3-provision-users exited {result.returncode} without JSON: {result.stderr[-2000:]}") from err
    report["rc"] = result.returncode
    return report


def units_up(box: Container, names: list[str]) -> int:
    """The users whose timer and path unit are both enabled and active (one ``systemctl show``)."""
    units = [f"claude-auth-sync@{n}.{kind}" for n in names for kind in ("timer", "path")]
    out = box.run(["systemctl", "show", "--property=Id,UnitFileState,ActiveState", *units], timeout=600).stdout
    up: set[str] = set()
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("UnitFileState") == "enabled" and props.get("ActiveState") == "active":
            up.add(props["Id"])
    return sum(1 for n in names if f"claude-auth-sync@{n}.timer" in up and f"claude-auth-sync@{n}.path" in up)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--stop", type=int, default=0, help="then stop the timer and path unit of this many "
                        "users and time one more hourly run (which starts them again)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--inotify-instances", type=int, help="raise fs.inotify.max_user_instances to this "
                        "for the bench (host-wide; restored afterwards)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (containers, mounts)", file=sys.stderr)
        return 77
    limit = Path("/proc/sys/fs/inotify/max_user_instances")
    old_limit = limit.read_text().strip()
    if args.inotify_instances and args.inotify_instances > int(old_limit):
        limit.write_text(f"{args.inotify_instances}\n")
        print(f"fs.inotify.max_user_instances {old_limit} -> {args.inotify_instances} for the bench")
    try:
        return bench(args)
    finally:
        if limit.read_text().strip() != old_limit:
            limit.write_text(f"{old_limit}\n")


def bench(args: argparse.Namespace) -> int:
    out: dict[str, Any] = {"users": args.users}
    failed = False
    with tempfile.TemporaryDirectory(prefix="cas-provsd-bench-") as work, OpenBaoServer(Path(work) / "bao") as bao:
        with Container() as box:
            install_agent(box, bao)
            began = time.monotonic()
            names = create_users(box, args.users)
            print(f"created {len(names)} accounts inside the container in {time.monotonic() - began:.1f} s")
            runs = [("first run", True), ("second run", True), ("hourly run", False), ("hourly run", False)]
            if args.stop:
                runs.append((f"hourly, {args.stop} down", False))
            for label, admin in runs:
                if label.endswith(" down"):  # stop the timer and path unit of the first --stop users
                    box.run(["systemctl", "stop", *(f"claude-auth-sync@{n}.{k}" for n in names[:args.stop]
                                                     for k in ("timer", "path"))], timeout=600)
                before = reloads(box)
                began = time.monotonic()
                report = provision(box, bao, admin=admin)
                wall = time.monotonic() - began
                reloaded = reloads(box) - before
                up = units_up(box, names)
                enabled_now = sum(1 for u in report["users"] if "enabled timer and path unit" in u["actions"])
                started = sum(1 for u in report["users"] for c in u["changes"] if c.startswith("started "))
                out.setdefault(label + "s", []).append({
                    "wall_s": round(wall, 2), "inside_s": report["seconds"], "rc": report["rc"], "reloads": reloaded,
                    "users_up": up, "enabled_by_run": enabled_now, "units_started": started})
                print(f"{label:<11} exit {report['rc']}, {wall:7.2f} s wall ({report['seconds']:.2f} s inside) = "
                      f"{wall / len(names) * 1000:6.1f} ms/user; systemd reloads {reloaded}; "
                      f"enabled by this run {enabled_now}; units started {started}; "
                      f"timer+path enabled and active {up}/{len(names)}")
                problems = Counter(note.replace(u["user"], "<user>") for u in report["users"] for note in u["notes"])
                for note, count in problems.most_common(5):
                    print(f"  {count} users: {note}"[:300])
                for error in report["errors"][:5]:
                    print(f"  run error: {error}"[:300])
                failed |= report["rc"] != 0 or up != len(names)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
