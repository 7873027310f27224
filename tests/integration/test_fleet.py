"""``claude-auth-sync diagnose --all``: the fleet view over real OS users, real token files, real OpenBao."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from claude_auth_sync.testing import oauth_object
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
    assert (a["last_status"], a["timer_enabled"], a["needs"]) == ("OK", True, [])
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
    result = subprocess.run(["runuser", "-u", user, "--", str(venv / "bin/claude-auth-sync"), "diagnose", "--all"],
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 78
    assert "run it as root" in result.stderr
