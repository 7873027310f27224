"""The provisioner's admin Vault client never sends a token through an environment proxy to a
plain-http loopback Vault (a hostile tester's finding: the agent was fixed, the admin client not)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_provisioning import Sandbox, bao, make_users, sandbox  # noqa: F401 - fixtures
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real


class ProxyTrap(http.server.ThreadingHTTPServer):
    """A 'proxy' on 127.0.0.2 that records every request (and whether it carried a Vault token)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.hits: list[tuple[str, bool]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.hits.append((self.command, bool(self.headers.get("X-Vault-Token"))))
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_LIST = do_DELETE = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def trap() -> Iterator[ProxyTrap]:
    server = ProxyTrap()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("variable", ["http_proxy", "HTTP_PROXY", "all_proxy"])
def test_the_admin_token_never_goes_through_an_environment_proxy(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, trap: ProxyTrap, variable: str  # noqa: F811
) -> None:
    (user,) = make_users("prox")
    sandbox.write_roster([user])
    result = sandbox.run("--apply-policies", admin=True, extra_env={variable: trap.url})
    assert result.rc == 0, result.stderr[-2000:]
    assert result.user(user)["token"] == "minted"
    assert trap.hits == []  # neither the admin token nor the minted one crossed the proxy
