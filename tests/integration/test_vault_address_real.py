"""The installed agent against a real OpenBao, with a Vault address built to mislead (issue 11, item 1).

Each address names the real server to one URL parser and a loopback trap (127.0.0.2, a listener
that records every request and whether it carried a Vault token) or a password to the other. The
agent must refuse it before any connection: exit 78 at once, a FAIL status line, the trap and the
server untouched, and neither the password nor the address in stdout, stderr or ``sync.log``.
No traffic leaves loopback: the "other host" is always the trap.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.testing import oauth_object
from tests.support.cli import Sandbox, current_user, fp
from tests.support.openbao import OpenBaoServer
from tests.support.vault_user import LoopbackTrap, loopback_trap, provision_token_file

pytestmark = pytest.mark.real

SECRET = "Vault-Addr-PASSWORD-7c1e"
GOOD = oauth_object("sk-ant-oat01-addr-test-good", "sk-ant-ort01-addr-test-refresh")
STATUS = re.compile(r"(^|\n)(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ )?FAIL user=\S+ action=none reason=\S+")


@pytest.fixture
def trap() -> Iterator[LoopbackTrap]:
    with loopback_trap() as server:
        yield server


def provisioned_box(bao: OpenBaoServer, tmp_path: Path) -> Sandbox:
    """A sandbox whose user has a real, correctly provisioned token file and a healthy login."""
    box = Sandbox(tmp_path)
    provision_token_file(bao, box)
    box.write_credentials({"claudeAiOauth": GOOD})
    return box


def hostile_addresses(bao: OpenBaoServer, trap: LoopbackTrap) -> dict[str, str]:
    real = f"127.0.0.1:{bao.port}"
    return {
        "backslash": f"http://127.0.0.2:{trap.port}\\@{real}",  # urllib3 connects to the trap
        "userinfo": f"http://agent:{SECRET}@{real}",
        "fragment": f"http://{real}#@127.0.0.2:{trap.port}",
        "tab": f"http://127.0.0.1\t:{bao.port}",
        "percent-host": f"http://%31%32%37.0.0.2:{trap.port}",  # urllib3 decodes it to the trap
    }


@pytest.mark.parametrize("kind", ["backslash", "userinfo", "fragment", "tab", "percent-host"])
@pytest.mark.parametrize("variable", ["CLAUDE_AUTH_SYNC_VAULT__ADDR", "VAULT_ADDR"])
def test_agent_refuses_a_misleading_vault_address_before_connecting(
    bao: OpenBaoServer, trap: LoopbackTrap, tmp_path: Path, kind: str, variable: str
) -> None:
    box = provisioned_box(bao, tmp_path)
    addr = hostile_addresses(bao, trap)[kind]
    env = {"CLAUDE_AUTH_SYNC_BACKEND": "vault", variable: addr, "STUB_CLAUDE_ACCEPT": fp(GOOD["accessToken"])}
    mark = bao.audit_mark()
    started = time.monotonic()
    run = box.run("run", **env)
    as_json = box.run("run", "--json", **env)
    diagnose = box.run("diagnose", "--json", **env)
    assert time.monotonic() - started < 30
    assert (run.returncode, as_json.returncode) == (78, 78), run.stderr
    assert diagnose.returncode != 0
    log = box.log_file.read_text() if box.log_file.exists() else ""
    assert STATUS.search(run.stderr) or STATUS.search(log), run.stderr
    assert json.loads(as_json.stdout)["status"] == "FAIL"
    outputs = "\n".join([run.stdout, run.stderr, as_json.stdout, as_json.stderr, diagnose.stdout, diagnose.stderr, log])
    assert SECRET not in outputs and "agent:" not in outputs and addr not in outputs
    assert trap.hits == [] and bao.requests_since(mark) == []


def test_a_well_formed_address_still_works(bao: OpenBaoServer, tmp_path: Path) -> None:
    box = provisioned_box(bao, tmp_path)
    run = box.run("run", "--json", CLAUDE_AUTH_SYNC_BACKEND="vault", CLAUDE_AUTH_SYNC_VAULT__ADDR=bao.addr,
                  STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["action"] in ("backup", "none")


def test_plain_http_to_loopback_never_goes_through_a_proxy(
    bao: OpenBaoServer, trap: LoopbackTrap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain http is allowed only because the token stays on the machine: an ``HTTP_PROXY`` from the
    environment (the trap stands in for a corporate proxy) must not carry it off, neither for the
    configured address nor for a standby's redirect to another loopback address."""
    from claude_auth_sync.plugins.backend_vault.store import VaultBackend

    box = provisioned_box(bao, tmp_path)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.2:{trap.port}")
    token_file = box.root / "config" / "claude-auth-sync" / "vault-token"
    store = VaultBackend(VaultSettings(addr=bao.addr, timeout=5), current_user(), os.getuid(), token_file)
    assert store.renew().ttl_s
    standby = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _redirect_handler(bao.addr))
    threading.Thread(target=standby.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        via_standby = VaultBackend(VaultSettings(addr=f"http://127.0.0.1:{standby.server_address[1]}", timeout=5),
                                 current_user(), os.getuid(), token_file)
        assert via_standby.renew().ttl_s
    finally:
        standby.shutdown()
        standby.server_close()
    assert trap.hits == []


def _redirect_handler(target: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(307)
            self.send_header("Location", target + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _any  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def test_netrc_credentials_never_go_to_vault(tmp_path: Path, trap: LoopbackTrap) -> None:
    """A user's ~/.netrc entry for the Vault host is not sent along (requests adds it by default)."""
    box = Sandbox(tmp_path)
    home = tmp_path / "netrc-home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.2 login someone password NETRC-SECRET-9f3\n")
    netrc.chmod(0o600)
    token_file = box.root / "config" / "claude-auth-sync" / "vault-token"
    token_file.parent.mkdir(mode=0o700, parents=True)
    token_file.write_text("hvs.FAKE-netrc-test\n")
    token_file.chmod(0o600)
    box.write_credentials({"claudeAiOauth": GOOD})
    run = box.run("run", "--json", HOME=str(home), CLAUDE_AUTH_SYNC_BACKEND="vault",
                  CLAUDE_AUTH_SYNC_VAULT__ADDR=trap.url, STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]))
    assert run.returncode == 75, run.stdout + run.stderr
    assert trap.hits and trap.authorization == []
