"""The provisioner's admin Vault client never sends a token through an environment proxy to a
plain-http loopback Vault (a hostile tester's finding: the agent was fixed, the admin client not)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_provisioning import Sandbox, bao, make_users, sandbox  # noqa: F401 - fixtures
from tests.support.openbao import OpenBaoServer
from tests.support.vault_user import LoopbackTrap, loopback_trap

pytestmark = pytest.mark.real


@pytest.fixture
def trap() -> Iterator[LoopbackTrap]:
    with loopback_trap(502) as server:
        yield server


@pytest.mark.parametrize("variable", ["http_proxy", "HTTP_PROXY", "all_proxy"])
def test_the_admin_token_never_goes_through_an_environment_proxy(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, trap: LoopbackTrap, variable: str  # noqa: F811
) -> None:
    (user,) = make_users("prox")
    sandbox.write_roster([user])
    result = sandbox.run("--apply-policies", admin=True, extra_env={variable: trap.url})
    assert result.rc == 0, result.stderr[-2000:]
    assert result.user(user)["token"] == "minted"
    assert trap.hits == []  # neither the admin token nor the minted one crossed the proxy
