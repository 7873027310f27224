#!/usr/bin/env python3
"""Benchmark t3-provision-users over many real OS accounts against a local OpenBao.

    sudo python3 bench/provision.py [--users 500] [--remint 50]

Creates N real accounts (``useradd``, names ``casb<hex>``), a roster of them, a private systemd
root and state dir, and a dev OpenBao with a file audit device; then times, with the provisioner
run as a subprocess exactly as root runs it:

1. the first admin run (``--apply-policies``): every policy written, every token minted;
2. the hourly run without admin token over N up-to-date users (target < 10 s, <= 1 request/user);
3. an admin re-mint of ``--remint`` users whose tokens were revoked behind its back
   (lookup-self, policy check, mint, revoke of the replaced accessor: target <= 4 requests/user);
4. a steady-state admin run (nothing to mint).

Vault requests are counted from the audit log (every request, whatever token it carried).
All accounts are removed afterwards (``userdel -r``), also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.openbao import OpenBaoServer  # noqa: E402


def run(sandbox: dict[str, Path], bao: OpenBaoServer, *args: str, admin: bool) -> tuple[float, dict, list]:
    argv = [sys.executable, "-m", "claude_auth_sync.admin.provision", "--json", "--roster", str(sandbox["roster"]),
            "--systemd-root", str(sandbox["root"]), "--state-dir", str(sandbox["state"]),
            "--config", str(sandbox["config"]), *args]
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "VAULT_ADDR": bao.addr}
    if admin:
        env["VAULT_TOKEN"] = bao.root_token
    mark = bao.audit_mark()
    began = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - began
    if not proc.stdout.strip():
        raise SystemExit(f"provisioner failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    report["_rc"] = proc.returncode
    return wall, report, bao.requests_since(mark)


def summarize(label: str, wall: float, report: dict, requests: list, users: int, per: int | None = None) -> None:
    by_path = Counter(r["path"].split("/claude-auth-sync-")[0] for r in requests)
    per = per or users
    print(f"{label}:")
    print(f"  exit {report['_rc']}, wall {wall:.2f} s ({report['seconds']:.2f} s inside), "
          f"{wall / users * 1000:.1f} ms per roster user")
    print(f"  Vault requests: {len(requests)} total = {len(requests) / per:.2f} per {'user' if per == users else 'minted user'}"
          f" (admin token {report['vault_requests']['admin']}, user tokens {report['vault_requests']['user']})")
    print("  by path: " + ", ".join(f"{p} {n}" for p, n in by_path.most_common()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--remint", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (it creates OS accounts)", file=sys.stderr)
        return 77
    tag = secrets.token_hex(2)
    names = [f"casb{tag}{i:04d}" for i in range(args.users)]
    work = Path(tempfile.mkdtemp(prefix="cas-bench-"))
    created: list[str] = []
    try:
        began = time.monotonic()
        for name in names:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
            created.append(name)
        print(f"created {len(created)} OS accounts in {time.monotonic() - began:.1f} s")
        unit_dir = work / "root/etc/systemd/system"
        unit_dir.mkdir(parents=True)
        for unit in (REPO / "deploy/systemd").iterdir():
            shutil.copy(unit, unit_dir / unit.name)
        sandbox = {"root": work / "root", "state": work / "state", "roster": work / "roster.yaml",
                   "config": work / "none.toml"}
        sandbox["roster"].write_text("users:\n" + "".join(f"  - os_user: {n}\n    email: {n}@example.com\n" for n in names))
        with OpenBaoServer(work / "bao") as bao:
            n = len(names)
            wall, report, requests = run(sandbox, bao, "--apply-policies", admin=True)
            minted = sum(1 for u in report["users"] if u["token"] == "minted")
            summarize(f"1. first admin run (--apply-policies), {minted} tokens minted", wall, report, requests, n, minted)
            print(f"     per minted user, without the two per-run checks: {(len(requests) - 2) / max(minted, 1):.2f} "
                  "(policy read + policy write + mint)")

            wall, report, requests = run(sandbox, bao, admin=False)
            summarize(f"2. hourly run, no admin token, {n} up-to-date users", wall, report, requests, n)
            ok = sum(1 for u in report["users"] if u["token"] == "ok")
            print(f"     users ok: {ok}/{n}; target < 10 s and <= 1 request/user: "
                  f"{'MET' if wall < 10 and len(requests) <= n else 'MISSED'}")

            victims = names[: args.remint]
            client = bao.client()
            state = json.loads((sandbox["state"] / "tokens.json").read_text())
            for name in victims:
                client.auth.token.revoke_accessor(state["users"][name]["accessor"])
            wall, report, requests = run(sandbox, bao, admin=True)
            reminted = sum(1 for u in report["users"] if u["token"] == "minted")
            per_minted = (len(requests) - 1 - (n - reminted) * 2) / max(reminted, 1)
            summarize(f"3. admin run re-minting {reminted} revoked tokens among {n} users", wall, report, requests, n)
            print(f"     per re-minted user (lookup-self, policy read, mint, revoke): {per_minted:.2f}; "
                  f"per up-to-date user: 2 (lookup-self, policy read); target <= 4: {'MET' if per_minted <= 4 else 'MISSED'}")

            wall, report, requests = run(sandbox, bao, admin=True)
            summarize(f"4. steady-state admin run, {n} users, nothing to mint", wall, report, requests, n)
    finally:
        began = time.monotonic()
        for name in created:
            subprocess.run(["userdel", "--remove", name], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        print(f"removed {len(created)} OS accounts in {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
