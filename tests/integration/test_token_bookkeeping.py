"""The provisioner's books never lose a token that is still valid (review of the root offboarding
and token bookkeeping): real OpenBao, real OS users, the provisioner run as root runs it.

Tokens never appear in assertion operands: accessors (not secrets) and booleans only.
"""

from __future__ import annotations

import json
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
