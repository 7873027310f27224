"""Issue 15 items 1-2 and issue 14 item 7: per-host paths, fleet-safe pruning, one Vault's records.

Real OpenBao (two dev servers where two Vaults are needed), real OS accounts, the provisioner and
the agent run as root runs them (subprocesses). A "host" is a UTS namespace (``unshare --uts``)
with its own host name, so the kernel's host name is what the code reads, as on a workstation.
Tokens never go into an assertion's operands: fingerprints or booleans only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest

from claude_auth_sync.plugins.backend_vault.policy import locate, render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.testing import oauth_object
from tests.integration.test_provisioning import (  # noqa: F401 - fixtures
    Result, Sandbox, bao, home, lookup, make_users, passthrough_env, read_token, sandbox, token_is_valid,
)
from tests.support.cli import Sandbox as AgentBox
from tests.support.cli import console_script, current_user, fp
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

HOSTED = "workstation/claude-hosts/{host}/{user}"
PER_USER = "workstation/claude-users"
GOOD = oauth_object("sk-ant-oat01-HOSTS-good-access", "sk-ant-ort01-HOSTS-good-refresh")
BAD = oauth_object("sk-ant-oat01-HOSTS-bad-access", "sk-ant-ort01-HOSTS-bad-refresh")
OLD = oauth_object("sk-ant-oat01-HOSTS-old-access", "sk-ant-ort01-HOSTS-old-refresh")
SECRETS = [t for o in (GOOD, BAD, OLD) for t in (o["accessToken"], o["refreshToken"])]
HOSTED_ENV = {"CLAUDE_AUTH_SYNC_VAULT__PATH_TEMPLATE": HOSTED}


def on_host(host: str, argv: list[str]) -> list[str]:
    """``argv`` run in a UTS namespace whose host name is ``host``, written to the kernel as is
    (``hostname(1)`` would refuse the odd ones this file tries)."""
    return ["unshare", "--uts", "--", "sh", "-c", 'printf %s "$0" > /proc/sys/kernel/hostname && exec "$@"', host, *argv]


def provision(sb: Sandbox, host: str, *args: str, state: Path | None = None, admin: bool = True,
              addr: str | None = None, template: str | None = HOSTED, json_output: bool = True) -> Result:
    """t3-provision-users on ``host`` (with its own state directory), as Sandbox.run runs it."""
    argv = [sys.executable, "-m", "claude_auth_sync.admin.provision", "--roster", str(sb.roster),
            "--systemd-root", str(sb.sysroot), "--state-dir", str(state or sb.state), "--config", str(sb.config),
            *(["--json"] if json_output else []), *args]
    env = passthrough_env({"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8",
                           "VAULT_ADDR": addr or sb.bao.addr})
    if template:
        env["CLAUDE_AUTH_SYNC_VAULT__PATH_TEMPLATE"] = template
    if admin:
        env["VAULT_TOKEN"] = sb.bao.root_token
    proc = subprocess.run(on_host(host, argv), env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert sb.bao.root_token not in proc.stdout + proc.stderr
    data = json.loads(proc.stdout) if json_output and proc.stdout.strip() else {}
    return Result(proc.returncode, proc.stdout, proc.stderr, data)


def kv_latest(bao: OpenBaoServer, path: str) -> tuple[dict[str, Any], int] | None:
    try:
        answer = bao.client().secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                                raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        return None
    return answer["data"]["data"]["claudeAiOauth"], answer["data"]["metadata"]["version"]


def kv_put(bao: OpenBaoServer, path: str, oauth: dict[str, Any]) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"claudeAiOauth": oauth}, mount_point="secret")


def policies(bao: OpenBaoServer) -> set[str]:
    return set(bao.client().sys.list_acl_policies()["data"]["keys"])


def no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# ----------------------------------------------------------------------------- the agent


@pytest.fixture
def agent(bao: OpenBaoServer, tmp_path: Path) -> Iterator[tuple[AgentBox, dict[str, str]]]:
    """The current user's sandbox with a token for the host-path policy of ``ws-a``."""
    me = current_user()
    where = locate(me, VaultSettings(path_template=HOSTED), "ws-a")
    bao.write_policy(where.policy, render_policy(me, VaultSettings(path_template=HOSTED), "ws-a"))
    token = bao.create_periodic_token([where.policy], display_name=where.policy, no_default_policy=True)
    box = AgentBox(tmp_path / "box")
    token_file = box.root / "config" / "claude-auth-sync" / "vault-token"
    token_file.parent.mkdir(mode=0o700, parents=True)
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    yield box, {"CLAUDE_AUTH_SYNC_BACKEND": "vault", "CLAUDE_AUTH_SYNC_VAULT__ADDR": bao.addr, **HOSTED_ENV}


def agent_run(box: AgentBox, host: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(on_host(host, [console_script(), *args]), env=box.env(**env), capture_output=True,
                          text=True, timeout=60)


def test_agent_backs_up_and_restores_at_its_host_path_only(bao: OpenBaoServer, agent: Any) -> None:
    box, env = agent
    me = current_user()
    mine, other = f"workstation/claude-hosts/ws-a/{me}", f"workstation/claude-hosts/ws-b/{me}"
    box.write_credentials({"claudeAiOauth": GOOD})
    first = agent_run(box, "ws-a", "run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]), **env)
    assert first.returncode == 0, first.stderr
    assert kv_latest(bao, mine) == (GOOD, 1)
    assert kv_latest(bao, other) is None and kv_latest(bao, f"{PER_USER}/{me}") is None

    box.write_credentials({"claudeAiOauth": BAD})  # the local login breaks; the host's copy is restored
    second = agent_run(box, "ws-a", "run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]), **env)
    event = json.loads(second.stdout)
    assert (second.returncode, event["action"]) == (0, "restore"), second.stdout
    assert json.loads(box.credentials.read_text())["claudeAiOauth"] == GOOD
    no_secret(first.stdout, first.stderr, second.stdout, second.stderr)

    # The same token on another host is a drifted token there (its policy names ws-a): refused, 78.
    elsewhere = agent_run(box, "ws-b", "run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]), **env)
    assert elsewhere.returncode == 78 and json.loads(elsewhere.stdout)["reason"] == "vault_token_drift"
    assert kv_latest(bao, other) is None


def test_the_host_policy_denies_every_other_path_with_a_real_403(bao: OpenBaoServer, agent: Any) -> None:
    box, _ = agent
    me = current_user()
    client = bao.client((box.root / "config" / "claude-auth-sync" / "vault-token").read_text().strip())
    kv = client.secrets.kv.v2
    kv.create_or_update_secret(path=f"workstation/claude-hosts/ws-a/{me}", secret={"claudeAiOauth": GOOD},
                               mount_point="secret")
    kv_put(bao, f"workstation/claude-hosts/ws-b/{me}", OLD)
    for path in (f"workstation/claude-hosts/ws-b/{me}", f"{PER_USER}/{me}", f"workstation/claude-hosts/ws-a/{me}x"):
        with pytest.raises(hvac.exceptions.Forbidden):
            kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
        with pytest.raises(hvac.exceptions.Forbidden):
            kv.create_or_update_secret(path=path, secret={"claudeAiOauth": BAD}, mount_point="secret")
    with pytest.raises(hvac.exceptions.Forbidden):
        kv.list_secrets(path="workstation/claude-hosts/ws-a", mount_point="secret")
    assert kv_latest(bao, f"workstation/claude-hosts/ws-b/{me}") == (OLD, 1)


def test_policy_command_renders_this_hosts_or_the_named_hosts_policy(agent: Any) -> None:
    box, env = agent
    me = current_user()
    here = agent_run(box, "ws-a", "policy", me, **env)
    assert here.returncode == 0, here.stderr
    assert f'path "secret/data/workstation/claude-hosts/ws-a/{me}" {{' in here.stdout
    assert f"claude-auth-sync-{me}@ws-a" in here.stdout and "ws-b" not in here.stdout
    there = agent_run(box, "ws-a", "policy", me, "--host", "ws-b", **env)
    assert there.returncode == 0 and f"secret/data/workstation/claude-hosts/ws-b/{me}" in there.stdout
    plain = agent_run(box, "ws-a", "policy", me, CLAUDE_AUTH_SYNC_BACKEND="vault")
    assert f'path "secret/data/{PER_USER}/{me}" {{' in plain.stdout and "ws-a" not in plain.stdout
    for odd in ("ws_b", "ws-b/../x", "Ws\x1bb", "-x"):
        bad = agent_run(box, "ws-a", "policy", me, f"--host={odd}", **env)
        assert bad.returncode == 78 and "Traceback" not in bad.stderr and "\x1b" not in bad.stderr, bad.stderr


@pytest.mark.parametrize("template", ["workstation/../sys/{user}", "a/*/{user}", "a/{0}", "a/{user.__class__}",
                                      "a/{user!r}", "a/{user:>999}", "a/{user}{host}"])
def test_a_hostile_template_stops_the_agent_before_any_request(bao: OpenBaoServer, agent: Any, template: str) -> None:
    box, env = agent
    box.write_credentials({"claudeAiOauth": GOOD})
    mark = bao.audit_mark()
    result = agent_run(box, "ws-a", "run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]),
                       **{**env, "CLAUDE_AUTH_SYNC_VAULT__PATH_TEMPLATE": template})
    assert result.returncode == 78 and "Traceback" not in result.stderr, result.stderr
    assert bao.requests_since(mark) == []


@pytest.mark.parametrize("host", ["ws_a", "ws-a-", "ws a", "wsé", "ws\x1b[31m", "ws/../b", "ws*"])
def test_an_odd_host_name_stops_the_agent_before_any_request(bao: OpenBaoServer, agent: Any, host: str) -> None:
    box, env = agent
    box.write_credentials({"claudeAiOauth": GOOD})
    mark = bao.audit_mark()
    result = agent_run(box, host, "run", "--json", STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]), **env)
    assert result.returncode == 78, result.stdout + result.stderr
    assert json.loads(result.stdout)["reason"] == "invalid_host_name"
    assert bao.requests_since(mark) == []


# ----------------------------------------------------------------------------- provisioner


def test_each_host_gets_its_own_policy_and_token(sandbox: Sandbox, bao: OpenBaoServer, make_users: Any,
                                                 tmp_path: Path) -> None:
    (alice,) = make_users("alice")
    sandbox.write_roster([alice])
    result = provision(sandbox, "ws-a", "--apply-policies")
    assert result.rc == 0, result.stdout + result.stderr
    data = lookup(bao, read_token(alice))
    assert set(data["policies"]) == {f"claude-auth-sync-{alice}@ws-a"} and data["meta"]["os_user"] == alice
    assert bao.client().sys.read_acl_policy(f"claude-auth-sync-{alice}@ws-a")["data"]["policy"].strip() == \
        render_policy(alice, VaultSettings(path_template=HOSTED), "ws-a").strip()
    again = provision(sandbox, "ws-a")  # the hourly run: the token is exact for this host
    assert again.rc == 0 and again.user(alice)["token"] == "ok", again.stdout
    # Moved to another host name, the same token is drifted there and re-minted by an admin run.
    moved = provision(sandbox, "ws-b", "--apply-policies", state=tmp_path / "state-b")
    assert moved.rc == 0 and moved.user(alice)["token"] == "minted", moved.stdout
    assert set(lookup(bao, read_token(alice))["policies"]) == {f"claude-auth-sync-{alice}@ws-b"}


@pytest.mark.parametrize("template", [HOSTED, None])
def test_prune_on_one_host_leaves_the_other_hosts_users_working(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, tmp_path: Path, template: str | None) -> None:
    alice, bob, carol = make_users("alice", "bob", "carol")
    state_a = tmp_path / "state-a"
    host_b = Sandbox(tmp_path / "host-b", bao)  # its own roster, state file and units
    host_b.write_roster([carol])
    assert provision(host_b, "ws-b", "--apply-policies", template=template).rc == 0
    carol_token = read_token(carol)
    sandbox.write_roster([alice, bob])
    assert provision(sandbox, "ws-a", "--apply-policies", state=state_a, template=template).rc == 0
    bob_token = read_token(bob)
    suffix = "@ws-a" if template else ""
    carol_policy = f"claude-auth-sync-{carol}" + ("@ws-b" if template else "")

    sandbox.write_roster([alice])  # bob leaves host A
    pruned = provision(sandbox, "ws-a", "--apply-policies", "--prune", state=state_a, template=template)
    assert pruned.rc == 0, pruned.stdout
    assert pruned.data["policies"]["pruned"] == [f"claude-auth-sync-{bob}{suffix}"]
    assert not token_is_valid(bao, bob_token)
    # Host B's user: policy kept, token valid, still able to write their path.
    assert carol_policy in policies(bao) and token_is_valid(bao, carol_token)
    where = locate(carol, VaultSettings(path_template=template or f"{PER_USER}/{{user}}"), "ws-b")
    bao.client(carol_token).secrets.kv.v2.create_or_update_secret(
        path=where.relative, secret={"claudeAiOauth": GOOD}, mount_point="secret")
    assert carol not in pruned.stdout
    final = provision(host_b, "ws-b", template=template)
    assert final.rc == 0 and final.user(carol)["token"] == "ok", final.stdout


def test_a_policy_this_host_did_not_create_is_never_pruned(sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    alice, bob = make_users("alice", "bob")
    # bob's policy was written by someone else (another host, a person) before this host's first run.
    bob_policy = f"claude-auth-sync-{bob}@ws-a"
    bao.write_policy(bob_policy, render_policy(bob, VaultSettings(path_template=HOSTED), "ws-a"))
    sandbox.write_roster([alice, bob])
    assert provision(sandbox, "ws-a", "--apply-policies").rc == 0
    sandbox.write_roster([alice])
    pruned = provision(sandbox, "ws-a", "--apply-policies", "--prune")
    assert pruned.rc == 0 and pruned.data["policies"]["pruned"] == []
    assert bob_policy in policies(bao)
    assert pruned.user(bob)["token"] == "revoked"  # the token this host minted is revoked all the same


@pytest.mark.parametrize("args", [(), ("--dry-run",), ("--apply-policies", "--prune")])
def test_an_empty_roster_is_refused_unless_allowed(sandbox: Sandbox, bao: OpenBaoServer, make_users: Any,
                                                   args: tuple[str, ...]) -> None:
    (alice,) = make_users("alice")
    sandbox.write_roster([alice])
    assert provision(sandbox, "ws-a", "--apply-policies").rc == 0
    token = read_token(alice)
    sandbox.roster.write_text("users: []\n")
    refused = provision(sandbox, "ws-a", *args)
    assert refused.rc == 78 and "--allow-empty" in refused.stderr, refused.stdout + refused.stderr
    assert token_is_valid(bao, token) and sandbox.timer_link(alice).is_symlink()
    assert f"claude-auth-sync-{alice}@ws-a" in policies(bao)
    if args == ("--dry-run",):
        allowed = provision(sandbox, "ws-a", "--dry-run", "--allow-empty")
        assert allowed.rc == 1 and allowed.user(alice)["token"] == "revoke pending", allowed.stdout


# ----------------------------------------------------------------------------- migration


def test_migration_makes_the_latest_per_user_copy_the_host_paths_first_version(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    alice, bob, carol = make_users("alice", "bob", "carol")
    for oauth in (OLD, BAD, GOOD):  # three versions; the latest is the one that counts
        kv_put(bao, f"{PER_USER}/{alice}", oauth)
    kv_put(bao, f"{PER_USER}/{bob}", OLD)
    kv_put(bao, f"workstation/claude-hosts/ws-a/{bob}", GOOD)  # bob's host path exists: never overwritten
    sandbox.write_roster([alice, bob, carol])  # carol has no per-user copy at all

    mark = bao.audit_mark()
    dry = provision(sandbox, "ws-a", "--migrate-to-host-paths", "--apply-policies", "--dry-run")
    assert dry.rc == 0, dry.stdout + dry.stderr
    assert dry.data["migration"]["would_copy"] == [alice] and dry.data["migration"]["kept"] == [bob]
    assert not [r for r in bao.requests_since(mark) if r.get("operation") not in ("read", None)], "a dry run wrote"
    assert kv_latest(bao, f"workstation/claude-hosts/ws-a/{alice}") is None

    run = provision(sandbox, "ws-a", "--migrate-to-host-paths", "--apply-policies")
    assert run.rc == 0, run.stdout + run.stderr
    assert run.data["migration"] == {"copied": [alice], "would_copy": [], "kept": [bob], "nothing": [carol],
                                     "failed": []}
    assert kv_latest(bao, f"workstation/claude-hosts/ws-a/{alice}") == (GOOD, 1)
    assert kv_latest(bao, f"workstation/claude-hosts/ws-a/{bob}") == (GOOD, 1)
    assert kv_latest(bao, f"{PER_USER}/{alice}") == (GOOD, 3)  # the source is left as it was
    assert set(lookup(bao, read_token(alice))["policies"]) == {f"claude-auth-sync-{alice}@ws-a"}
    # alice's new token reads her migrated copy: the agent's first restore would find it.
    got = bao.client(read_token(alice)).secrets.kv.v2.read_secret_version(
        path=f"workstation/claude-hosts/ws-a/{alice}", mount_point="secret", raise_on_deleted_version=True)
    assert got["data"]["data"]["claudeAiOauth"] == GOOD
    no_secret(dry.stdout, dry.stderr, run.stdout, run.stderr)

    again = provision(sandbox, "ws-a", "--migrate-to-host-paths", "--apply-policies")  # idempotent
    assert again.rc == 0 and again.data["migration"]["copied"] == [] and again.data["migration"]["kept"] == [alice, bob]
    assert kv_latest(bao, f"workstation/claude-hosts/ws-a/{alice}") == (GOOD, 1)
    table = provision(sandbox, "ws-a", "--migrate-to-host-paths", "--dry-run", json_output=False)
    assert "migration to per-host paths: copied 0, would copy 0, kept 2, nothing 1, failed 0" in table.stdout
    no_secret(table.stdout, table.stderr)


def test_migration_refuses_without_a_host_template_or_an_admin_token(sandbox: Sandbox, make_users: Any) -> None:
    (alice,) = make_users("alice")
    sandbox.write_roster([alice])
    plain = provision(sandbox, "ws-a", "--migrate-to-host-paths", template=None)
    assert plain.rc == 78 and "{host}" in plain.stdout, plain.stdout
    no_admin = provision(sandbox, "ws-a", "--migrate-to-host-paths", admin=False)
    assert no_admin.rc == 78 and "admin token" in no_admin.stderr
    hostile = provision(sandbox, "ws-a", "--migrate-to-host-paths", "--migrate-from", "a/../{user}")
    assert hostile.rc == 78


# ----------------------------------------------------------------------------- two Vaults


@pytest.fixture
def bao2(tmp_path: Path) -> Iterator[OpenBaoServer]:
    with OpenBaoServer(tmp_path / "bao2") as server:
        yield server


def state_of(path: Path) -> dict[str, Any]:
    return json.loads((path / "tokens.json").read_text())


def test_a_run_against_another_vault_never_revokes_what_it_did_not_mint_there(
        sandbox: Sandbox, bao: OpenBaoServer, bao2: OpenBaoServer, make_users: Any) -> None:
    (alice,) = make_users("alice")
    sandbox.write_roster([alice])
    assert provision(sandbox, "ws-a", "--apply-policies").rc == 0
    token_1 = read_token(alice)
    other = Sandbox(sandbox.path / "v2", bao2)  # same roster and state, the second Vault's admin token
    other.roster, other.state, other.config = sandbox.roster, sandbox.state, sandbox.config
    other.sysroot = sandbox.sysroot
    second = provision(other, "ws-a", "--apply-policies", "--prune")
    # Something is left to do (Vault 1's token is still valid): 1, naming the Vault to run against.
    assert second.rc == 1, second.stdout + second.stderr
    assert second.user(alice)["token"] == "minted"
    assert token_is_valid(bao, token_1), "Vault 1's token was revoked by a run against Vault 2"
    recorded = state_of(sandbox.state)
    assert {v["addr"] for v in recorded["accessor_vaults"].values()} == {bao.addr, bao2.addr}
    assert any(f"another Vault ({bao.addr})" in n for n in second.user(alice)["notes"]), second.stdout
    assert any(f"VAULT_ADDR={bao.addr} " in n for n in second.user(alice)["next_steps"]), second.stdout
    # Back at Vault 1, its own old accessor is revoked there, and Vault 2's token is left alone.
    token_2 = read_token(alice)
    third = provision(sandbox, "ws-a", "--apply-policies")
    assert not token_is_valid(bao, token_1)
    assert third.rc == 1 and any(f"another Vault ({bao2.addr})" in n for n in third.user(alice)["notes"]), third.stdout
    assert lookup(bao2, token_2)["meta"]["os_user"] == alice


def test_an_old_state_file_without_addresses_is_revoked_only_where_proved(
        sandbox: Sandbox, bao: OpenBaoServer, bao2: OpenBaoServer, make_users: Any) -> None:
    alice, bob = make_users("alice", "bob")
    sandbox.write_roster([alice, bob])
    assert provision(sandbox, "ws-a", "--apply-policies").rc == 0
    bob_token = read_token(bob)
    # The state file as a version that kept no addresses wrote it.
    state = state_of(sandbox.state)
    (sandbox.state / "tokens.json").write_text(json.dumps({"version": 1, "users": state["users"]}))
    sandbox.write_roster([alice])
    other = Sandbox(sandbox.path / "v2", bao2)
    other.roster, other.state, other.config, other.sysroot = sandbox.roster, sandbox.state, sandbox.config, sandbox.sysroot
    at_2 = provision(other, "ws-a", "--prune")
    assert token_is_valid(bao, bob_token) and at_2.user(bob)["token"] != "revoked", at_2.stdout
    assert bob in state_of(sandbox.state)["users"]  # still in the books for the Vault that minted it
    at_1 = provision(sandbox, "ws-a", "--prune")
    assert at_1.user(bob)["token"] == "revoked", at_1.stdout
    assert not token_is_valid(bao, bob_token)
    assert bob not in state_of(sandbox.state)["users"]


@pytest.mark.parametrize("host", ["ws_a", "ws a", "ws\x1b[2J"])
def test_an_odd_host_name_stops_the_provisioner_before_any_request(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, host: str) -> None:
    (alice,) = make_users("alice")
    sandbox.write_roster([alice])
    mark = bao.audit_mark()
    result = provision(sandbox, host, "--apply-policies")
    assert result.rc == 78 and "host name" in result.stderr and "\x1b" not in result.stderr, result.stderr
    assert bao.requests_since(mark) == [] and not (home(alice) / ".config/claude-auth-sync").exists()


def test_the_fleet_view_looks_at_this_hosts_path_with_this_hosts_token(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, tmp_path: Path) -> None:
    (alice,) = make_users("alice")
    sandbox.write_roster([alice])
    assert provision(sandbox, "ws-a", "--apply-policies").rc == 0
    cli = str(Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv")) / "bin/claude-auth-sync")
    env = passthrough_env({"PATH": os.environ["PATH"], "VAULT_ADDR": bao.addr, "HOME": str(tmp_path), **HOSTED_ENV})
    argv = [cli, "diagnose", "--all", "--json", "--roster", str(sandbox.roster), "--systemd-root", str(sandbox.sysroot)]
    rows = {}
    for host in ("ws-a", "ws-b"):
        proc = subprocess.run(on_host(host, argv), env=env, capture_output=True, text=True, timeout=120)
        assert proc.stdout.strip(), proc.stderr
        rows[host] = json.loads(proc.stdout)["users"][0]
    assert rows["ws-a"]["vault_path"] == f"secret/workstation/claude-hosts/ws-a/{alice}"
    assert rows["ws-a"]["vault_ttl_s"] > 768 * 3600 - 600 and not any("t3-provision" in n for n in rows["ws-a"]["needs"])
    # On another host the same token is another host's: the view says an admin run is needed.
    assert rows["ws-b"]["vault_path"] == f"secret/workstation/claude-hosts/ws-b/{alice}"
    assert any("t3-provision-users" in need for need in rows["ws-b"]["needs"]), rows["ws-b"]
