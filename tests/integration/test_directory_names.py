"""Issue 14 item 3 on the host: a directory-style user (a dotted name, ``cas.d<hex>``, with its
home under /srv from the password database) provisioned end to end by the real
``t3-provision-users`` with the documented least-privilege admin token against real OpenBao;
the agent, running as that user, uses the token; the fleet view names the user's units; a
roster removal disables the units and revokes and deletes what was minted. Real OS accounts
(``useradd``/``userdel``), ``systemctl --root`` on a copy of the shipped units."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_provisioning import (  # noqa: F401 - fixtures
    AGENT_CHECK,
    KV,
    PERIOD_S,
    REPO,
    Sandbox,
    assert_private_token_file,
    bao,
    lookup,
    make_users,
    read_token,
    require_tool,
    sandbox,
    token_is_valid,
    user_venv,
)
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real


@pytest.fixture
def dotted_user() -> Iterator[tuple[str, Path]]:
    """A real account named like an SSSD/AD user (``cas.d<hex>``) whose home is under /srv."""
    name = f"cas.d{secrets.token_hex(3)}"
    home = Path(f"/srv/cas-dir-{secrets.token_hex(3)}/{name}")
    home.parent.mkdir(parents=True, mode=0o755)
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name], check=True,
                   capture_output=True)
    try:
        yield name, home
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        shutil.rmtree(home.parent, ignore_errors=True)


def unit_state(box: Sandbox, user: str) -> dict[str, Any]:
    system = box.sysroot / "etc/systemd/system"
    watch = system / f"claude-auth-sync@{user}.path.d/home.conf"
    bind = system / f"claude-auth-sync@{user}.service.d/home.conf"
    return {
        "timer": (system / "timers.target.wants" / f"claude-auth-sync@{user}.timer").is_symlink(),
        "path": (system / "paths.target.wants" / f"claude-auth-sync@{user}.path").is_symlink(),
        "watch": watch.read_text() if watch.exists() else None,
        "bind": bind.read_text() if bind.exists() else None,
    }


def test_a_dotted_user_with_a_home_under_srv_is_provisioned_end_to_end(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, dotted_user: tuple[str, Path],  # noqa: F811
        user_venv: Path) -> None:  # noqa: F811
    name, home = dotted_user
    (other,) = make_users("plain")
    assert pwd.getpwnam(name).pw_dir == str(home)
    bao.write_policy("t3-provisioner-admin", (REPO / "deploy/vault/t3-provisioner-admin.hcl").read_text())
    admin = bao.create_periodic_token(["t3-provisioner-admin"], period="1h", display_name="t3-admin")
    sandbox.write_roster([name, other])

    first = sandbox.run("--apply-policies", admin=admin)

    assert first.rc == 0, first.stdout[-3000:] + first.stderr[-2000:]
    entry = first.user(name)
    assert (entry["token"], entry["timer"], entry["policy"]) == ("minted", "enabled", "applied"), entry
    policy = f"claude-auth-sync-{name}"
    assert policy in bao.client().sys.list_policies()["data"]["policies"]
    hcl = bao.client().sys.read_policy(policy)["data"]["rules"]
    assert f'path "secret/data/{KV}/{name}" {{' in hcl and "*" not in hcl.split("\n", 2)[2]  # exact, no glob
    assert_private_token_file(name)
    token = read_token(name)
    data = lookup(bao, token)
    assert set(data["policies"]) == {policy} and data["meta"]["os_user"] == name and data["period"] == PERIOD_S
    units = unit_state(sandbox, name)
    assert units["timer"] and units["path"], units
    assert f"PathChanged={home}/.claude/.credentials.json\n" in units["watch"]
    assert units["bind"].endswith(f"[Service]\nBindPaths=\nBindPaths={home}\n")

    again = sandbox.run()
    assert again.rc == 0 and not again.user(name)["changes"], again.user(name)  # idempotent

    # The agent, as the dotted user, writes and reads its own path and is refused the other user's.
    proc = subprocess.run([require_tool("runuser", "util-linux"), "-u", name, "--", str(user_venv / "bin/python"), "-c", AGENT_CHECK, bao.addr,
                           other], capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    agent = json.loads(proc.stdout)
    assert agent["version"] == 1 and agent["read_back"] is True and agent["other"] == "vault_forbidden", agent
    stored = bao.client().secrets.kv.v2.read_secret_version(path=f"{KV}/{name}", mount_point="secret",
                                                            raise_on_deleted_version=True)
    assert stored["data"]["data"] == {"claudeAiOauth": {"accessToken": "a", "refreshToken": "r"}}

    # The fleet view names the dotted user's units verbatim.
    cli = str(user_venv / "bin/claude-auth-sync")
    env = {"PATH": os.environ["PATH"], "VAULT_ADDR": bao.addr, "HOME": str(sandbox.path)}
    fleet = subprocess.run([cli, "diagnose", "--all", "--json", "--roster", str(sandbox.roster), "--systemd-root",
                            str(sandbox.sysroot)], env=env, capture_output=True, text=True, timeout=120)
    assert fleet.returncode == 1, fleet.stderr[-2000:]  # nobody has run yet
    row = {r["user"]: r for r in json.loads(fleet.stdout)["users"]}[name]
    assert row["timer_enabled"] and row["path_enabled"], row
    assert f"never ran: systemctl start claude-auth-sync@{name}.service" in row["needs"], row
    assert PERIOD_S - 600 < row["vault_ttl_s"] <= PERIOD_S, row  # looked up with the user's own token

    sandbox.write_roster([other])
    gone = sandbox.run("--apply-policies", "--prune", admin=admin)
    assert gone.rc == 0, gone.stdout[-3000:]
    assert (gone.user(name)["token"], gone.user(name)["policy"]) == ("revoked", "deleted"), gone.user(name)
    assert not token_is_valid(bao, token)
    assert policy not in bao.client().sys.list_policies()["data"]["policies"]
    assert unit_state(sandbox, name) == {"timer": False, "path": False, "watch": None, "bind": None}
    assert unit_state(sandbox, other)["timer"]
    for secret in (token, bao.root_token, admin):
        assert secret not in first.stdout + first.stderr + gone.stdout + gone.stderr + fleet.stdout + fleet.stderr


def test_a_fully_qualified_roster_name_is_refused_before_anything_is_touched(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:  # noqa: F811
    """``name@domain`` (SSSD's fully-qualified names) and a look-alike Cyrillic name: exit 78 with
    the reason and the line; no policy written, no unit enabled."""
    (ok,) = make_users("fq")
    sandbox.write_roster([ok], extra="  - os_user: john.doe@corp.example\n    email: jd@example.com\n"
                                     "  - os_user: j\u043ehn.doe\n    email: jd2@example.com\n")
    before = set(bao.client().sys.list_policies()["data"]["policies"])

    result = sandbox.run("--apply-policies", admin=True, json_output=False)

    assert result.rc == 78, result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "use_fully_qualified_names" in text and "printable ASCII" in text, text
    assert ":4:" in text and ":6:" in text and ":5:" not in text, text  # the roster lines of both names
    assert set(bao.client().sys.list_policies()["data"]["policies"]) == before
    assert not unit_state(sandbox, ok)["timer"]


def test_vault_folds_policy_names_to_lowercase_which_is_why_uppercase_is_refused(bao: OpenBaoServer) -> None:  # noqa: F811
    """The reason given for refusing uppercase names, observed: OpenBao stores ``Cas.Up<hex>``'s
    policy as ``cas.up<hex>``'s, so two names differing in case would share one policy."""
    suffix = secrets.token_hex(3)
    bao.write_policy(f"claude-auth-sync-Cas.Up{suffix}", 'path "secret/data/x" {\n  capabilities = ["read"]\n}\n')
    listed = bao.client().sys.list_policies()["data"]["policies"]
    assert f"claude-auth-sync-cas.up{suffix}" in listed and f"claude-auth-sync-Cas.Up{suffix}" not in listed
    bao.client().sys.delete_policy(f"claude-auth-sync-cas.up{suffix}")


def test_a_roster_name_that_is_not_its_uids_name_is_refused(
        sandbox: Sandbox, bao: OpenBaoServer, dotted_user: tuple[str, Path]) -> None:  # noqa: F811
    """An alias account (``useradd -o``: a second passwd line for the dotted user's uid), alone in
    the roster: the agent would run as the uid's first name, so the alias is refused (78) with
    both names, and no token is minted and no unit enabled for it (its roster name's policy is
    applied like any roster user's); the uid's own name still provisions."""
    name, _home = dotted_user
    alias = f"cas.a{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-o", "-u", str(pwd.getpwnam(name).pw_uid), "-g", str(pwd.getpwnam(name).pw_gid),
                    "-M", "-d", str(_home), "--shell", "/bin/sh", alias], check=True, capture_output=True)
    try:
        sandbox.write_roster([alias])
        refused_run = sandbox.run("--apply-policies", admin=True)
        assert refused_run.rc == 78, refused_run.stdout[-2000:]
        entry = refused_run.user(alias)
        assert entry["account"] == "refused", entry
        assert any(f"names uid {pwd.getpwnam(name).pw_uid} {name!r}, not {alias!r}" in n for n in entry["notes"]), entry
        assert not unit_state(sandbox, alias)["timer"]
        assert (entry["token"], entry["timer"]) == ("-", "-"), entry
        assert not (_home / ".config/claude-auth-sync/vault-token").exists()

        sandbox.write_roster([name])
        fine = sandbox.run("--apply-policies", admin=True)
        assert fine.rc == 0 and fine.user(name)["token"] == "minted", fine.stdout[-2000:]
    finally:
        subprocess.run(["userdel", alias], capture_output=True)
