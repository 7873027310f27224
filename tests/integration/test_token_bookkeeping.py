"""The provisioner's books never lose a token that is still valid (review of the root offboarding
and token bookkeeping): real OpenBao, real OS users, the provisioner run as root runs it.

Tokens never appear in assertion operands: accessors (not secrets) and booleans only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_provisioning import (  # noqa: F401 - fixtures used by name
    REPO,
    TOKEN_REL,
    Sandbox,
    as_user,
    bao,
    home,
    make_users,
    sandbox,
)
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real


def live_accessors_with_policy(bao: OpenBaoServer, policy: str) -> set[str]:
    """Every accessor of a valid token carrying ``policy`` (listed and looked up with root)."""
    client = bao.client()
    accessors = client.adapter.list("/v1/auth/token/accessors")["data"]["keys"]
    found = set()
    for accessor in accessors:
        try:
            data = client.auth.token.lookup_accessor(accessor)["data"]
        except Exception:  # revoked meanwhile
            continue
        if policy in (data.get("policies") or []):
            found.add(accessor)
    return found


def recorded(sandbox: Sandbox, user: str) -> set[str]:
    path = sandbox.state / "tokens.json"
    entry = json.loads(path.read_text())["users"].get(user) or {} if path.exists() else {}
    return {a for a in [entry.get("accessor"), *entry.get("superseded", [])] if a}


def test_a_minted_token_whose_file_cannot_be_written_nor_revoked_stays_in_the_books(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """Review finding: the user makes ``vault-token`` a directory, so the new token cannot be written;
    its revocation then fails too (here an admin token without revoke-accessor; a Vault failing
    between the two calls does the same). The minted token, valid for 768 h with the user's policy,
    was recorded nowhere: no later run or --offboard could revoke it. Now its accessor is in the
    state file (written before the token leaves the provisioner), so the next admin run and
    --offboard revoke it."""
    (olga,) = make_users("olga")
    hcl = (REPO / "deploy/vault/t3-provisioner-admin.hcl").read_text()
    no_revoke = hcl.replace('path "auth/token/revoke-accessor"', 'path "auth/token/revoke-accessor-not-granted"')
    assert no_revoke != hcl
    bao.write_policy("t3-admin-no-revoke", no_revoke)
    admin = bao.create_periodic_token(["t3-admin-no-revoke"], period="1h", display_name="t3-no-revoke")
    sandbox.write_roster([olga])
    as_user(olga, "mkdir", "-p", str(home(olga) / TOKEN_REL))  # the token file is a directory

    first = sandbox.run("--apply-policies", admin=admin)
    assert first.rc != 0, first.stdout + first.stderr  # the write failed, and so did the revocation
    live = live_accessors_with_policy(bao, f"claude-auth-sync-{olga}")
    assert live, "no token was minted: the test did not reach the defect"
    assert live <= recorded(sandbox, olga), "a valid token of the user is in no record"

    # With an admin token that may revoke, offboarding revokes every one of them.
    as_user(olga, "rmdir", str(home(olga) / TOKEN_REL))
    sandbox.write_roster(["casnoaccount"])
    done = sandbox.run("--offboard", olga, admin=True)
    assert done.rc == 0, done.stdout + done.stderr
    assert not live_accessors_with_policy(bao, f"claude-auth-sync-{olga}")
    assert not recorded(sandbox, olga)


@pytest.fixture
def silent_vault() -> Any:
    """A loopback address that accepts connections and never answers (a hung Vault or proxy)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_offboarding_against_a_vault_that_never_answers_keeps_every_record_and_the_token_file(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, silent_vault: str) -> None:
    """A Vault that accepts and never answers: nothing is forgotten, the token file (the handle) is
    kept, the run ends 75 and says to rerun; the rerun against the real Vault finishes the job."""
    (pia,) = make_users("pia")
    sandbox.write_roster([pia])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    token = (home(pia) / TOKEN_REL).read_text().strip()
    legacy = bao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]
    path = sandbox.state / "tokens.json"
    state = json.loads(path.read_text())
    state["users"][pia]["superseded"] = [legacy["accessor"]]  # an old record: no Vault recorded
    minted_at = dict(state["accessor_vaults"])
    for vault in state["accessor_vaults"].values():  # the Vault that minted now hangs at its address
        vault["addr"] = silent_vault
    path.write_text(json.dumps(state))
    before = recorded(sandbox, pia)
    sandbox.write_roster(["casnoaccount"])

    hung = sandbox.run("--offboard", pia, admin=True,
                       extra_env={"VAULT_ADDR": silent_vault, "CLAUDE_AUTH_SYNC_VAULT__TIMEOUT": "1"})
    assert hung.rc == 75, hung.stdout + hung.stderr
    assert recorded(sandbox, pia) == before and (home(pia) / TOKEN_REL).exists()
    assert hung.data["next_steps"], hung.stdout
    leaked = token in hung.stdout + hung.stderr
    assert not leaked

    state = json.loads(path.read_text())
    state["accessor_vaults"].update(minted_at)  # it answers again (here: at the test server's address)
    path.write_text(json.dumps(state))
    done = sandbox.run("--offboard", pia, admin=True)
    assert done.rc == 0, done.stdout + done.stderr
    assert not recorded(sandbox, pia) and not (home(pia) / TOKEN_REL).exists()
    assert not live_accessors_with_policy(bao, f"claude-auth-sync-{pia}")


@pytest.fixture
def other_cluster_behind_a_proxy(tmp_path: Any) -> Any:
    """A second real OpenBao (another cluster) behind a loopback proxy that forwards every request
    but ``sys/health`` (500, not JSON: a load balancer that does not pass it, or one timing out):
    a run through it learns no cluster_id. Yields (proxy address, that OpenBao)."""
    import http.server
    import threading

    import requests

    with OpenBaoServer(tmp_path / "other-cluster") as other:
        session = requests.Session()
        session.trust_env = False

        class Forward(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if self.path.startswith("/v1/sys/health"):
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"upstream timed out")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-vault-")}
                answer = session.request(self.command, other.addr + self.path, data=body or None,
                                         headers=headers, timeout=10, allow_redirects=False)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _forward  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_port}", other
        finally:
            server.shutdown()
            server.server_close()


def test_another_cluster_at_the_recorded_address_never_makes_a_token_count_as_revoked(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, other_cluster_behind_a_proxy: Any) -> None:
    """Review finding: the state file records the user's token at its cluster (cluster_id) and
    address; now another cluster answers at that address and this run's sys/health fails (no
    cluster_id learnt). The record matched by address alone, revoke-accessor at the other cluster
    answered 200 ("No token found with this accessor"), --offboard said "revoked", exited 0 and
    forgot the token, still valid at its own cluster. Now the address-only match is confirmed with
    lookup-accessor first: not known there, the record is kept and the run ends 75."""
    proxy, other = other_cluster_behind_a_proxy
    (quinn,) = make_users("quinn")
    sandbox.write_roster([quinn])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    token = (home(quinn) / TOKEN_REL).read_text().strip()
    path = sandbox.state / "tokens.json"
    state = json.loads(path.read_text())
    accessor = state["users"][quinn]["accessor"]
    assert state["accessor_vaults"][accessor].get("cluster_id")  # recorded with its cluster
    state["accessor_vaults"][accessor]["addr"] = proxy  # the address that cluster had then
    path.write_text(json.dumps(state))
    sandbox.write_roster(["casnoaccount"])

    moved = sandbox.run("--offboard", quinn, admin=other.root_token, extra_env={"VAULT_ADDR": proxy})
    leaked = other.root_token in moved.stdout + moved.stderr or token in moved.stdout + moved.stderr
    assert not leaked
    assert token_valid_at(bao, token)  # the other cluster cannot revoke it ...
    assert accessor in recorded(sandbox, quinn), moved.stdout  # ... so it must stay in the books
    assert moved.rc == 75, moved.stdout + moved.stderr
    token_step = next(step for step in moved.data["steps"] if step["step"] == "token")
    assert not any(detail.startswith("revoked") for detail in token_step["details"]), token_step


def token_valid_at(bao: OpenBaoServer, token: str) -> bool:
    import hvac.exceptions

    try:
        bao.client(token).auth.token.lookup_self()
    except hvac.exceptions.Forbidden:
        return False
    return True


def test_a_token_file_this_vault_does_not_know_and_nothing_records_is_kept(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, other_cluster_behind_a_proxy: Any) -> None:
    """Review finding: --offboard took a token file whose token this Vault answers 403 for as
    "dead already" and removed it. When the state file does not record that token (another
    workstation sharing the home minted it, or the state file was started over) and it was minted
    at another Vault, the file was the only handle on a token still valid there. Now such a file is
    kept and said to be; one whose token the state file records (so a rerun or the other Vault
    deals with it) still goes."""
    _proxy, other = other_cluster_behind_a_proxy
    rosa, sam = make_users("rosa", "sam")
    sandbox.write_roster([rosa, sam])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    foreign = other.create_periodic_token(["default"], display_name="rosa-elsewhere", no_default_policy=False)
    token_file = home(rosa) / TOKEN_REL
    token_file.write_text(foreign + "\n")  # never on a command line
    import pwd

    account = pwd.getpwnam(rosa)
    import os

    os.chown(token_file, account.pw_uid, account.pw_gid)
    path = sandbox.state / "tokens.json"
    state = json.loads(path.read_text())
    del state["users"][rosa]  # nothing records the token in the file
    path.write_text(json.dumps(state))
    sandbox.write_roster([sam])

    done = sandbox.run("--offboard", rosa, admin=True)
    leaked = foreign in done.stdout + done.stderr
    assert not leaked
    assert done.rc == 0, done.stdout + done.stderr
    still_valid = token_valid_at(other, foreign)  # a boolean: pytest would print the operands
    assert still_valid and token_file.exists(), done.stdout
    assert "does not know" in json.dumps(done.data["steps"]), done.stdout

    # sam's token file holds the token the state file records, expired meanwhile: the file goes.
    sam_token = (home(sam) / TOKEN_REL).read_text().strip()
    bao.client().auth.token.revoke_accessor(json.loads(path.read_text())["users"][sam]["accessor"])
    sandbox.write_roster(["casnoaccount"])
    gone = sandbox.run("--offboard", sam, admin=True)
    assert gone.rc == 0, gone.stdout + gone.stderr
    revoked = not token_valid_at(bao, sam_token)
    assert revoked and not (home(sam) / TOKEN_REL).exists(), gone.stdout


def test_a_token_file_the_agent_would_refuse_is_kept_unless_it_is_a_link(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """Review finding: a token file the agent's checks refuse (mode 0644 after a careless chmod,
    a second hard link) was removed without its token being looked at: when the state file does
    not record that token (the state file started over, another workstation sharing the home),
    a valid token lost its only handle. Now it is kept and said to be (a symlink planted there is
    still removed as a link, test_offboard.py)."""
    (tess,) = make_users("tess")
    sandbox.write_roster([tess])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    token = (home(tess) / TOKEN_REL).read_text().strip()
    path = sandbox.state / "tokens.json"
    state = json.loads(path.read_text())
    del state["users"][tess]  # the state file started over: the file is the only handle
    path.write_text(json.dumps(state))
    (home(tess) / TOKEN_REL).chmod(0o644)
    sandbox.write_roster(["casnoaccount"])

    done = sandbox.run("--offboard", tess, admin=True)
    leaked = token in done.stdout + done.stderr
    assert not leaked
    still_valid = token_valid_at(bao, token)
    assert still_valid and (home(tess) / TOKEN_REL).exists(), done.stdout
    assert "mode 0644" in json.dumps(done.data["steps"]), done.stdout


@pytest.fixture
def system_account() -> Any:
    """A real system account (uid below UID_MIN) with a home, removed afterwards."""
    import secrets
    import subprocess

    name = f"cassys{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--create-home", "--home-dir", f"/var/tmp/{name}", "--shell",
                    "/usr/sbin/nologin", name], check=True, capture_output=True)
    yield name
    subprocess.run(["userdel", "--remove", name], capture_output=True)


def test_offboarding_a_system_account_never_touches_its_home(sandbox: Sandbox, system_account: str) -> None:
    """Review finding: --offboard ran its privilege-dropped child in any account's home (a system
    account, root itself: uid 0 keeps every privilege), removing files there, although the
    provisioner refuses such accounts (admin/accounts.py). Now the home of an account the
    provisioner would refuse is left alone, and the report says why."""
    import subprocess

    marker = Path(f"/var/tmp/{system_account}/.local/state/claude-auth-sync/keep")
    subprocess.run(["runuser", "-u", system_account, "--", "mkdir", "-p", str(marker.parent)], check=True)
    subprocess.run(["runuser", "-u", system_account, "--", "touch", str(marker)], check=True)
    sandbox.write_roster(["casnoaccount"])
    done = sandbox.run("--offboard", system_account, admin=True)
    assert done.rc == 0, done.stdout + done.stderr
    assert marker.exists(), done.stdout
    home_step = next(step for step in done.data["steps"] if step["step"] == "home")
    assert any("system account" in d for d in home_step["details"]), home_step


def test_a_prune_that_cannot_place_a_record_does_not_end_0(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """Review finding: ``--prune`` with an admin token that may not use lookup-accessor (or a Vault
    not answering it) kept a removed user's old record unrevoked, as it must, but only noted it and
    exited 0, as if every token of the removed user were revoked. Now it ends 75 (retry)."""
    uma, = make_users("uma")
    sandbox.write_roster([uma])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    legacy = bao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]
    path = sandbox.state / "tokens.json"
    state = json.loads(path.read_text())
    state["users"][uma]["superseded"] = [legacy["accessor"]]  # an old record: no Vault recorded
    path.write_text(json.dumps(state))
    hcl = (REPO / "deploy/vault/t3-provisioner-admin.hcl").read_text()
    bao.write_policy("t3-admin-blind", hcl.replace('path "auth/token/lookup-accessor"',
                                                   'path "auth/token/lookup-accessor-not-granted"'))
    blind = bao.create_periodic_token(["t3-admin-blind"], period="1h", display_name="t3-blind")
    sandbox.write_roster(["casnoaccount"])

    pruned = sandbox.run("--prune", admin=blind)
    still_valid = token_valid_at(bao, legacy["client_token"])
    assert still_valid and legacy["accessor"] in recorded(sandbox, uma), pruned.stdout
    assert pruned.rc == 75, pruned.stdout + pruned.stderr
