"""``t3-provision-users --offboard USER`` against real components (issue 14, item 4).

Real OpenBao, real OS accounts (``useradd``/``userdel -r``), real ``systemctl --root`` for the
unit symlinks, the provisioner run as a subprocess exactly as root runs it (the Sandbox of
test_provisioning.py). Under a booted systemd (stopping units, the README's exact commands) it is
run again by tests/integration/test_setup_real_systemd.py.

Tokens never appear in assertion operands: validity is a boolean, identity a fingerprint.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest

from tests.integration.test_provisioning import (  # noqa: F401 - fixtures used by name
    KV,
    REPO,
    TOKEN_REL,
    Sandbox,
    as_user,
    home,
    make_users,
    read_token,
    sandbox,
    scratch_etc,
    snapshot,
    token_is_valid,
)
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

STATE_REL = Path(".local/state/claude-auth-sync")
CREDENTIALS = '{"claudeAiOauth": {"accessToken": "sk-ant-oat01-offboard"}, "mcpOAuth": {}}\n'


def provisioned(sandbox: Sandbox, bao: OpenBaoServer, user: str, *others: str) -> str:
    """Provision ``user`` (and ``others``) with an admin run; give them a login, a log and a secret.
    Returns the user's token (never asserted on)."""
    sandbox.write_roster([user, *others])
    result = sandbox.run("--apply-policies", admin=True)
    assert result.rc == 0, result.stdout + result.stderr
    as_user(user, "mkdir", "-p", str(home(user) / ".claude"), str(home(user) / STATE_REL / "sub"))
    as_user(user, "sh", "-c", f"printf '%s' '{CREDENTIALS}' > {home(user)}/.claude/.credentials.json")
    as_user(user, "sh", "-c", f"echo 'OK reason=healthy' > {home(user) / STATE_REL}/sync.log; "
                              f"echo x > {home(user) / STATE_REL}/sub/last-check.json")
    bao.client().secrets.kv.v2.create_or_update_secret(path=f"{KV}/{user}", secret={"claudeAiOauth": {"a": 1}},
                                                      mount_point="secret")
    return read_token(user)


def offboard(sandbox: Sandbox, user: str, *args: str, admin: bool = False) -> Any:
    return sandbox.run("--offboard", user, *args, admin=admin)


def secret_exists(bao: OpenBaoServer, user: str) -> bool:
    try:
        bao.client().secrets.kv.v2.read_secret_metadata(path=f"{KV}/{user}", mount_point="secret")
    except hvac.exceptions.InvalidPath:
        return False
    return True


def steps(result: Any) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in result.data["steps"]}


def test_offboarding_revokes_disables_cleans_and_is_idempotent(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    alice, bob = make_users("alice", "bob")
    token = provisioned(sandbox, bao, alice, bob)
    bob_token = read_token(bob)
    credentials = home(alice) / ".claude/.credentials.json"
    before_credentials = credentials.read_bytes()

    # Still in the roster: refused, one line, nothing changed.
    watched = (sandbox.sysroot, sandbox.state, home(alice))
    before = snapshot(*watched)
    refused = offboard(sandbox, alice, admin=True)
    assert refused.rc == 78 and "still in the roster" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert snapshot(*watched) == before and token_is_valid(bao, token)

    sandbox.write_roster([bob])
    # --dry-run: the plan, and not one byte changed anywhere.
    before = snapshot(*watched)
    plan = offboard(sandbox, alice, "--destroy-secret", "--dry-run", admin=True)
    assert plan.rc == 0, plan.stdout + plan.stderr
    assert {s["step"]: s["state"] for s in plan.data["steps"]} == {
        "roster": "nothing to do", "units": "would", "token": "would", "home": "would", "secret": "would"}
    assert snapshot(*watched) == before and token_is_valid(bao, token) and secret_exists(bao, alice)

    # --destroy-secret without an admin token: refused before anything changes.
    no_admin = offboard(sandbox, alice, "--destroy-secret")
    assert no_admin.rc == 78 and "--destroy-secret needs an admin token" in no_admin.stderr
    assert snapshot(*watched) == before

    # Without an admin token: units off and the state dir gone, but the token (and its file) stays.
    pending = offboard(sandbox, alice)
    assert pending.rc == 1, pending.stdout + pending.stderr
    assert steps(pending)["token"]["state"] == "pending" and pending.data["next_steps"]
    assert not os.path.lexists(sandbox.timer_link(alice))
    assert not (sandbox.sysroot / f"etc/systemd/system/claude-auth-sync@{alice}.path.d").exists()
    assert (home(alice) / TOKEN_REL).exists() and token_is_valid(bao, token)
    assert not (home(alice) / STATE_REL).exists()

    # With the admin token: revoked by accessor, the token file goes, the state entry too.
    done = offboard(sandbox, alice, admin=True)
    assert done.rc == 0, done.stdout + done.stderr
    assert steps(done)["token"]["state"] == "done" and not token_is_valid(bao, token)
    assert not (home(alice) / TOKEN_REL).exists() and not (home(alice) / ".config/claude-auth-sync").exists()
    assert credentials.read_bytes() == before_credentials  # never the credentials file
    assert alice not in json.loads((sandbox.state / "tokens.json").read_text())["users"]
    assert secret_exists(bao, alice)  # kept without --destroy-secret
    # Bob is untouched.
    assert token_is_valid(bao, bob_token) and os.path.lexists(sandbox.timer_link(bob))

    again = offboard(sandbox, alice, admin=True)
    assert again.rc == 0 and again.data["nothing_to_do"] is True, again.stdout

    destroyed = offboard(sandbox, alice, "--destroy-secret", admin=True)
    assert destroyed.rc == 0 and steps(destroyed)["secret"]["state"] == "done"
    assert not secret_exists(bao, alice)
    last = sandbox.run("--offboard", alice, "--destroy-secret", admin=True, json_output=False)
    assert last.rc == 0 and f"offboarding {alice}: nothing to do" in last.stdout
    # Only a forgotten record is a change too: the state file changes, so not "nothing to do".
    state_path = sandbox.state / "tokens.json"
    state = json.loads(state_path.read_text())
    state["users"][alice] = {"accessor": "bogus-old-accessor"}  # recorded before Vaults were kept
    state_path.write_text(json.dumps(state))
    forgot = offboard(sandbox, alice, admin=True)
    assert forgot.rc == 0 and forgot.data["nothing_to_do"] is False, forgot.stdout
    assert steps(forgot)["token"]["state"] == "done" and alice not in json.loads(state_path.read_text())["users"]
    # The hourly provisioner agrees: nothing left to do for anyone.
    hourly = sandbox.run()
    assert hourly.rc == 0, hourly.stdout + hourly.stderr


def test_offboarding_a_token_minted_elsewhere_and_a_deleted_account(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """The token file's token is revoked even when the state file does not record it; a user whose
    account is already gone still gets their recorded token revoked and their units disabled."""
    carol, dave = make_users("carol", "dave")
    carol_token = provisioned(sandbox, bao, carol, dave)
    dave_token = read_token(dave)
    state = json.loads((sandbox.state / "tokens.json").read_text())
    del state["users"][carol]
    (sandbox.state / "tokens.json").write_text(json.dumps(state))
    sandbox.write_roster(["casnoaccount"])  # nobody of this test left
    done = offboard(sandbox, carol, admin=True)
    assert done.rc == 0, done.stdout + done.stderr
    assert not token_is_valid(bao, carol_token) and not (home(carol) / TOKEN_REL).exists()

    import subprocess

    subprocess.run(["userdel", "--remove", dave], check=True, capture_output=True)
    gone = offboard(sandbox, dave, admin=True)
    assert gone.rc == 0, gone.stdout + gone.stderr
    assert not token_is_valid(bao, dave_token) and not os.path.lexists(sandbox.timer_link(dave))
    assert "no account" in " ".join(steps(gone)["home"]["details"])


def test_offboarding_never_follows_links_planted_in_the_home(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, scratch_etc: Path) -> None:
    erin, = make_users("erin")
    provisioned(sandbox, bao, erin)
    sandbox.write_roster(["casnoaccount"])  # nobody of this test left
    state_dir = home(erin) / STATE_REL
    # Links in the state directory to root's files and directories, and a token file that is a
    # link to a root file: removed as links, their targets untouched.
    as_user(erin, "ln", "-s", str(scratch_etc / "shadow"), str(state_dir / "sync.log.1"))
    as_user(erin, "ln", "-s", str(scratch_etc), str(state_dir / "etc"))
    as_user(erin, "rm", "-f", str(home(erin) / TOKEN_REL))
    as_user(erin, "ln", "-s", str(scratch_etc / "passwd"), str(home(erin) / TOKEN_REL))
    before = snapshot(scratch_etc)
    done = offboard(sandbox, erin, admin=True)
    assert done.rc == 0, done.stdout + done.stderr
    assert snapshot(scratch_etc) == before
    assert not os.path.lexists(state_dir) and not os.path.lexists(home(erin) / TOKEN_REL)

    # ~/.local/state itself a link to a root directory: refused (78), nothing there removed.
    frank, = make_users("frank")
    provisioned(sandbox, bao, frank)
    sandbox.write_roster(["casnoaccount"])  # nobody of this test left
    victim = scratch_etc / "claude-auth-sync"
    victim.mkdir()
    (victim / "keep").write_text("root's\n")
    os.chown(victim, pwd.getpwnam(frank).pw_uid, -1)  # even a directory the user owns is not followed
    as_user(frank, "rm", "-rf", str(home(frank) / ".local/state"))
    as_user(frank, "ln", "-s", str(scratch_etc), str(home(frank) / ".local/state"))
    before = snapshot(scratch_etc)
    refused = offboard(sandbox, frank, admin=True)
    assert refused.rc == 78, refused.stdout + refused.stderr
    assert "symlink" in " ".join(steps(refused)["home"]["details"])
    # The token file could not be read (the child refused the walk): kept, never removed unread,
    # and the report says so, beside the refusal.
    assert (home(frank) / TOKEN_REL).exists()
    assert any(d.startswith("kept ~/.config/claude-auth-sync/vault-token") for d in steps(refused)["home"]["details"]), \
        refused.stdout
    assert snapshot(scratch_etc) == before and stat.S_ISREG(os.lstat(victim / "keep").st_mode)


@pytest.mark.parametrize("name", ["../root", "alice\nbob", "-rf", "x" * 300, "\x1b[31mred"])
def test_hostile_user_names_are_refused_with_one_line(sandbox: Sandbox, name: str) -> None:
    sandbox.write_roster(["casnoaccount"])  # nobody of this test left
    result = sandbox.run(f"--offboard={name}", admin=True)
    assert result.rc == 78, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "\x1b" not in result.stderr
    assert not (sandbox.state / "tokens.json").exists()


@pytest.mark.parametrize("flag", ["--destroy-secret", "--force"])
def test_offboarding_flags_without_offboard_are_refused(sandbox: Sandbox, flag: str) -> None:
    sandbox.write_roster(["casnoaccount"])
    result = sandbox.run(flag, admin=True)
    assert result.rc == 78 and "go with --offboard USER" in result.stderr, result.stdout + result.stderr
    assert not (sandbox.state / "tokens.json").exists()  # no provisioning run happened


def test_offboarding_revokes_only_at_the_vault_that_minted(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """Issue 14, item 7: an accessor the state file records at another Vault is never revoked here
    (kept, 78, the command for its Vault); an old record without a Vault is revoked once this Vault
    knows it (lookup-accessor), and forgotten when it does not."""
    gail, = make_users("gail")
    token = provisioned(sandbox, bao, gail)
    other = bao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]
    legacy = bao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]
    state_path = sandbox.state / "tokens.json"
    state = json.loads(state_path.read_text())
    state["users"][gail]["superseded"] = sorted([other["accessor"], legacy["accessor"], "bogus-accessor"])
    state["accessor_vaults"][other["accessor"]] = {"addr": "https://vault.other.example:8200", "namespace": ""}
    state_path.write_text(json.dumps(state))
    sandbox.write_roster(["casnoaccount"])

    done = offboard(sandbox, gail, admin=True)
    assert done.rc == 78, done.stdout + done.stderr
    assert steps(done)["token"]["state"] == "failed", done.stdout  # not "done" beside exit 78
    assert not token_is_valid(bao, token) and not token_is_valid(bao, legacy["client_token"])
    assert token_is_valid(bao, other["client_token"])  # minted "elsewhere": never revoked here
    assert any("VAULT_ADDR=https://vault.other.example:8200" in s for s in done.data["next_steps"])
    kept = json.loads(state_path.read_text())["users"][gail]
    assert [kept["accessor"], *kept.get("superseded", [])] == [other["accessor"]]
    assert not (home(gail) / TOKEN_REL).exists()


def test_an_old_record_vault_cannot_place_is_kept_never_forgotten(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """An old record (no Vault recorded) is forgotten only when this Vault answers that it does not
    know the accessor (400 "invalid accessor"). When it cannot tell (here: an admin token whose
    policy lacks lookup-accessor, 403; the same holds for a Vault that does not answer), the record
    stays in the state file, the run ends 75 and says to rerun: a live token is never lost track of.
    (Found in review: the record was forgotten whatever the lookup's failure.)"""
    ivan, = make_users("ivan")
    token = provisioned(sandbox, bao, ivan)
    legacy = bao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]
    state_path = sandbox.state / "tokens.json"
    state = json.loads(state_path.read_text())
    state["users"][ivan]["superseded"] = sorted([legacy["accessor"], "bogus-accessor"])
    state_path.write_text(json.dumps(state))
    hcl = (REPO / "deploy/vault/t3-provisioner-admin.hcl").read_text()
    blind_hcl = hcl.replace('path "auth/token/lookup-accessor"', 'path "auth/token/lookup-accessor-not-granted"')
    assert blind_hcl != hcl
    bao.write_policy("t3-admin-blind", blind_hcl)
    blind = bao.create_periodic_token(["t3-admin-blind"], period="1h", display_name="t3-blind")
    sandbox.write_roster(["casnoaccount"])

    # The dry run foretells it: the same 75 and the same sentence (it said "would revoke", 0).
    plan = offboard(sandbox, ivan, "--dry-run", admin=blind)
    assert plan.rc == 75, plan.stdout + plan.stderr
    assert any("could not tell" in d for d in steps(plan)["token"]["details"]), plan.stdout
    assert steps(plan)["token"]["state"] == "failed" and token_is_valid(bao, token)

    done = offboard(sandbox, ivan, admin=blind)
    assert done.rc == 75, done.stdout + done.stderr
    assert steps(done)["token"]["state"] == "failed", done.stdout
    assert not token_is_valid(bao, token)  # the token file's own token: proved by itself, revoked
    assert token_is_valid(bao, legacy["client_token"])  # not revocable with this admin token
    kept = json.loads(state_path.read_text())["users"][ivan]
    assert sorted([kept["accessor"], *kept.get("superseded", [])]) == sorted([legacy["accessor"], "bogus-accessor"])
    assert any("could not tell" in d for d in steps(done)["token"]["details"]), done.stdout
    assert any(f"--offboard {ivan}" in s for s in done.data["next_steps"]), done.data["next_steps"]

    # With an admin token that may look accessors up: the legacy one is revoked, the bogus one
    # (Vault: invalid accessor) forgotten, the user's entry gone.
    again = offboard(sandbox, ivan, admin=True)
    assert again.rc == 0, again.stdout + again.stderr
    assert any("forgot 1 old record" in d for d in steps(again)["token"]["details"]), again.stdout
    assert not token_is_valid(bao, legacy["client_token"])
    assert ivan not in json.loads(state_path.read_text())["users"]


def test_destroy_secret_is_refused_when_the_tokens_were_minted_at_another_vault(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """--destroy-secret deletes at the Vault VAULT_ADDR names; when every token the state file
    records for the user was minted at another Vault, the agent's copy is there, and the secret
    here (if any) is not the agent's: refused (78) with the command for that Vault, nothing deleted
    (review finding: it deleted at whatever Vault it was pointed at)."""
    judy, = make_users("judy")
    provisioned(sandbox, bao, judy)
    as_user(judy, "rm", "-f", str(home(judy) / TOKEN_REL))  # no token file: only the records speak
    state_path = sandbox.state / "tokens.json"
    state = json.loads(state_path.read_text())
    for accessor in [state["users"][judy]["accessor"], *state["users"][judy].get("superseded", [])]:
        state["accessor_vaults"][accessor] = {"addr": "https://vault.other.example:8200", "namespace": ""}
    state_path.write_text(json.dumps(state))
    sandbox.write_roster(["casnoaccount"])

    done = offboard(sandbox, judy, "--destroy-secret", admin=True)
    assert done.rc == 78, done.stdout + done.stderr
    assert secret_exists(bao, judy)
    assert steps(done)["secret"]["state"] != "done", done.stdout
    assert any("another Vault (https://vault.other.example:8200)" in d for d in steps(done)["secret"]["details"])
    assert any(s.startswith("VAULT_ADDR=https://vault.other.example:8200 ") and s.endswith("--destroy-secret")
               for s in done.data["next_steps"]), done.data["next_steps"]


@pytest.mark.parametrize("template", [None, "workstation/claude-hosts/{host}/{user}"])
def test_destroy_secret_works_with_the_least_privilege_admin_policy(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, template: str | None) -> None:
    """deploy/vault/t3-provisioner-admin.hcl is enough for ``--offboard USER --destroy-secret`` with
    the default template and the per-host one (metadata read and delete on the users' paths)."""
    from claude_auth_sync.plugins.backend_vault.paths import short_host_name

    alice, bob = make_users("alice", "bob")
    env = {"CLAUDE_AUTH_SYNC_VAULT__PATH_TEMPLATE": template} if template else {}
    bao.write_policy("t3-provisioner-admin", (REPO / "deploy/vault/t3-provisioner-admin.hcl").read_text())
    admin = bao.create_periodic_token(["t3-provisioner-admin"], period="1h", display_name="t3-admin")
    sandbox.write_roster([alice, bob])
    first = sandbox.run("--apply-policies", admin=admin, extra_env=env)
    assert first.rc == 0, first.stdout[-3000:] + first.stderr[-2000:]
    token = read_token(alice)
    path = f"workstation/claude-hosts/{short_host_name()}/{alice}" if template else f"{KV}/{alice}"
    bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"claudeAiOauth": {"a": 1}},
                                                      mount_point="secret")
    sandbox.write_roster([bob])
    done = sandbox.run("--offboard", alice, "--destroy-secret", admin=admin, extra_env=env)
    assert done.rc == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert steps(done)["secret"]["state"] == "done" and steps(done)["token"]["state"] == "done", done.stdout
    # The report says when the copy destroyed was every workstation's (the per-user template).
    shared = any("every workstation" in d for d in steps(done)["secret"]["details"])
    assert shared == (template is None), done.stdout
    assert not token_is_valid(bao, token)
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.client().secrets.kv.v2.read_secret_metadata(path=path, mount_point="secret")


def test_offboarding_places_accessors_by_cluster_as_the_provisioner_does(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """--offboard uses the provisioner's rule (StateFile.placement): a record naming this cluster
    under another address (another node) is revoked here; one naming this address but another
    cluster (the cluster was rebuilt) is kept and flagged with that Vault's address."""
    import requests

    hank, = make_users("hank")
    token = provisioned(sandbox, bao, hank)
    cluster_id = requests.get(f"{bao.addr}/v1/sys/health", timeout=5).json()["cluster_id"]
    via_node = bao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]
    rebuilt = bao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]
    state_path = sandbox.state / "tokens.json"
    state = json.loads(state_path.read_text())
    assert state["accessor_vaults"][state["users"][hank]["accessor"]]["cluster_id"] == cluster_id
    state["users"][hank]["superseded"] = sorted([via_node["accessor"], rebuilt["accessor"]])
    state["accessor_vaults"][via_node["accessor"]] = {"addr": "https://node2.example:8200", "namespace": "",
                                                      "cluster_id": cluster_id}
    state["accessor_vaults"][rebuilt["accessor"]] = {"addr": "https://node9.example:8200", "namespace": "",
                                                     "cluster_id": "an-older-cluster"}
    state_path.write_text(json.dumps(state))
    sandbox.write_roster(["casnoaccount"])

    done = offboard(sandbox, hank, admin=True)
    assert done.rc == 78, done.stdout + done.stderr
    assert not token_is_valid(bao, token) and not token_is_valid(bao, via_node["client_token"])
    assert token_is_valid(bao, rebuilt["client_token"])  # another cluster's record: never revoked here
    assert any("another Vault (https://node9.example:8200)" in d for d in steps(done)["token"]["details"]), done.stdout
    assert any("VAULT_ADDR=https://node9.example:8200" in s for s in done.data["next_steps"])
    kept = json.loads(state_path.read_text())["users"][hank]
    assert [kept["accessor"], *kept.get("superseded", [])] == [rebuilt["accessor"]]


def test_a_token_file_holding_a_token_not_minted_for_the_agent_is_kept_even_when_the_recorded_one_is_revoked(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """Review finding: the person's own Vault token in the agent's token file ("not minted for the
    agent: not revoked, kept") was deleted anyway once the recorded accessor had been revoked."""
    alice, bob = make_users("alice", "bob")
    agent_token = provisioned(sandbox, bao, alice, bob)
    own = bao.create_periodic_token(["default"], display_name="alice-own", no_default_policy=False)
    token_file = home(alice) / TOKEN_REL
    token_file.write_text(own + "\n")  # no token on a command line
    account = pwd.getpwnam(alice)
    os.chown(token_file, account.pw_uid, account.pw_gid)
    os.chmod(token_file, 0o600)
    sandbox.write_roster([bob])
    done = offboard(sandbox, alice, admin=True)
    assert not token_is_valid(bao, agent_token)  # the recorded agent token is revoked
    assert token_is_valid(bao, own)  # the person's own token is not revoked ...
    assert token_file.exists()  # ... and its file is kept, as the step says
    assert "not minted for the agent" in json.dumps(steps(done)["token"])
