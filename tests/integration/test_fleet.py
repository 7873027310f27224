"""``claude-auth-sync diagnose --all``: the fleet view over real OS users, real token files, real OpenBao."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.testing import oauth_object
from tests.support.home import child_env
from tests.integration.test_provisioning import Sandbox as ProvisionSandbox
from tests.integration.test_provisioning import bao, make_users  # noqa: F401 - fixtures

pytestmark = pytest.mark.real


def write_as(user: str, path: Path, text: str) -> None:
    """Create ``path`` (and parents below the home) owned by ``user``, mode 0600 / dirs 0700."""
    subprocess.run(["runuser", "-u", user, "--", "mkdir", "-p", "-m", "700", str(path.parent)], check=True)
    subprocess.run(["runuser", "-u", user, "--", "sh", "-c", f"umask 077; cat > '{path}'"], input=text.encode(), check=True)


def stamp(age_s: float) -> str:
    return datetime.fromtimestamp(time.time() - age_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_fleet_view_one_row_per_user_with_what_needs_a_person(tmp_path, bao, make_users) -> None:  # noqa: F811
    alice, bob = make_users("alice", "bob")
    prov = ProvisionSandbox(tmp_path, bao)
    prov.write_roster([alice, bob, "casghost"])  # casghost has no OS account here
    minted = prov.run("--apply-policies", admin=True)
    assert minted.rc in (0, 1), minted.stderr

    secrets = ["sk-ant-oat01-FLEET-alice", "sk-ant-ort01-FLEET-alice", "sk-ant-ort01-FLEET-bob"]
    write_as(alice, Path(f"/home/{alice}/.claude/.credentials.json"),
             json.dumps({"claudeAiOauth": oauth_object(secrets[0], secrets[1], expires_at_ms=int((time.time() + 7200) * 1000))}))
    write_as(alice, Path(f"/home/{alice}/.local/state/claude-auth-sync/sync.log"),
             f"{stamp(600)} OK user={alice} action=none\n")
    write_as(bob, Path(f"/home/{bob}/.claude/.credentials.json"),
             json.dumps({"claudeAiOauth": oauth_object("", secrets[2], expires_at_ms=0)}))
    write_as(bob, Path(f"/home/{bob}/.local/state/claude-auth-sync/sync.log"),
             f"{stamp(60)} FAIL user={bob} action=rollback reason=auth_failed_after_restore\n")

    # The children run as the users: use the interpreter they can reach (a venv under /opt).
    cli = str(Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv")) / "bin/claude-auth-sync")
    env = {"PATH": os.environ["PATH"], "VAULT_ADDR": bao.addr, "HOME": str(tmp_path)}
    argv = [cli, "diagnose", "--all", "--roster", str(prov.roster), "--systemd-root", str(prov.sysroot)]
    result = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # somebody needs a person
    rows = {row["user"]: row for row in json.loads(result.stdout)["users"]}

    a = rows[alice]
    assert (a["last_status"], a["timer_enabled"], a["path_enabled"], a["needs"]) == ("OK", True, True, [])
    assert 600 <= a["last_age_s"] < 700
    assert 768 * 3600 - 300 < a["vault_ttl_s"] <= 768 * 3600  # looked up with alice's own token
    assert 7000 < a["access_expires_in_s"] <= 7200

    b = rows[bob]
    assert b["last_status"] == "FAIL"
    assert f"as {bob}: claude auth login --claudeai --sso --email {bob}@example.com" in b["needs"]
    assert rows["casghost"]["needs"] == ["no OS account on this host"]

    table = subprocess.run(argv, env={**env, "COLUMNS": "160"}, capture_output=True, text=True, timeout=120)
    assert alice in table.stdout and "claude auth login" in table.stdout and "nothing" in table.stdout
    for secret in secrets + [bao.root_token]:
        assert secret not in result.stdout + result.stderr + table.stdout + table.stderr


def test_fleet_view_refuses_a_non_root_caller(tmp_path, make_users) -> None:  # noqa: F811
    (user,) = make_users("fleetnr")
    venv = Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv"))
    # The user's own home and XDG directories (the session's private home is root's: unreadable to them).
    env = child_env(Path(pwd.getpwnam(user).pw_dir))
    result = subprocess.run(["runuser", "-u", user, "--", str(venv / "bin/claude-auth-sync"), "diagnose", "--all"],
                            capture_output=True, text=True, timeout=60, cwd="/", env=env)
    assert result.returncode == 78
    assert "run it as root" in result.stderr


def _fleet_cli(tmp_path: Path, bao: Any, roster: Path, sysroot: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    cli = str(Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv")) / "bin/claude-auth-sync")
    env = {"PATH": os.environ["PATH"], "VAULT_ADDR": bao.addr, "HOME": str(tmp_path), "COLUMNS": "200"}
    if os.environ.get("PYTHONPATH"):  # to run these tests against another tree
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    began = time.monotonic()
    result = subprocess.run([cli, "diagnose", "--all", "--roster", str(roster), "--systemd-root", str(sysroot), *extra],
                            env=env, capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - began


HOSTILE_REASON = "[/bold][red]x\x1b]0;pwned\x07\x1b[2J\x1b]8;;http://evil.example\x1b\\link\x9b31m:skull:"


def test_fleet_view_shows_hostile_log_text_inert_and_never_follows_or_blocks_on_the_log(
        tmp_path, bao, make_users) -> None:  # noqa: F811
    """Issue 11, items 12 and 13: markup and escape sequences from sync.log; symlinked and FIFO logs."""
    marked, linked, piped = make_users("mark", "link", "pipe")
    prov = ProvisionSandbox(tmp_path, bao)
    prov.write_roster([marked, linked, piped])
    log = ".local/state/claude-auth-sync/sync.log"
    write_as(marked, Path(f"/home/{marked}/{log}"), f"{stamp(60)} FAIL user={marked} action=none reason={HOSTILE_REASON}\n")
    # A symlink to a file the user may read but did not write: it must not be followed.
    decoy = tmp_path / "decoy.log"
    decoy.write_text(f"{stamp(60)} OK user={linked} action=none\n")
    decoy.chmod(0o644)
    tmp_path.chmod(0o755)
    write_as(linked, Path(f"/home/{linked}/{log}"), "")
    subprocess.run(["runuser", "-u", linked, "--", "ln", "-sf", str(decoy), f"/home/{linked}/{log}"], check=True)
    subprocess.run(["runuser", "-u", piped, "--", "mkdir", "-p", f"/home/{piped}/{Path(log).parent}"], check=True)
    subprocess.run(["runuser", "-u", piped, "--", "mkfifo", f"/home/{piped}/{log}"], check=True)

    result, elapsed = _fleet_cli(tmp_path, bao, prov.roster, prov.sysroot, "--json")
    assert elapsed < 25, f"took {elapsed:.0f}s: a FIFO log stalls its child"
    assert result.returncode == 1, result.stderr[-2000:]
    rows = {row["user"]: row for row in json.loads(result.stdout)["users"]}
    for user in (linked, piped):
        assert rows[user]["last_status"] is None, rows[user]
        assert any("is not a regular file" in need for need in rows[user]["needs"]), rows[user]
    assert rows[marked]["last_status"] == "FAIL"

    table, _ = _fleet_cli(tmp_path, bao, prov.roster, prov.sysroot)
    assert table.returncode == 1 and "Traceback" not in table.stderr, table.stderr[-2000:]
    assert marked in table.stdout and "[/bold][red]x" in table.stdout  # shown literally
    assert not any(c in table.stdout + table.stderr for c in ("\x1b", "\x07", "\x9b")), "escape sequences reached the terminal"
    assert "\U0001f480" not in table.stdout


def test_fleet_view_reads_only_the_tail_of_a_devzero_log(tmp_path, bao, make_users) -> None:  # noqa: F811
    """Issue 11, item 13: sync.log -> /dev/zero (not run against the old code: it reads GBs)."""
    (zero,) = make_users("zero")
    prov = ProvisionSandbox(tmp_path, bao)
    prov.write_roster([zero])
    log = Path(f"/home/{zero}/.local/state/claude-auth-sync/sync.log")
    subprocess.run(["runuser", "-u", zero, "--", "mkdir", "-p", str(log.parent)], check=True)
    subprocess.run(["runuser", "-u", zero, "--", "ln", "-s", "/dev/zero", str(log)], check=True)
    result, elapsed = _fleet_cli(tmp_path, bao, prov.roster, prov.sysroot, "--json")
    assert elapsed < 25 and result.returncode == 1, result.stderr[-2000:]
    row = json.loads(result.stdout)["users"][0]
    assert any("is not a regular file" in need for need in row["needs"]), row
