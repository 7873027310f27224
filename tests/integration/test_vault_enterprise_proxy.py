"""Issue 14 item 5: proxies honoured the way ``requests`` does, against a real TLS OpenBao.

A real forward proxy on loopback (:class:`tests.support.vault_tls.RecordingProxy`: it tunnels
``CONNECT`` and records every request head it reads) stands between the installed agent (and the
root provisioner) and an https OpenBao listener. With ``HTTPS_PROXY`` (or ``https_proxy``,
``ALL_PROXY``) set, the Vault traffic goes through the proxy, and the proxy sees only the
``CONNECT host:port`` head: no Vault token, no OAuth token, no secret path (they travel inside
TLS). With ``NO_PROXY`` naming the Vault host, the proxy sees nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.testing import oauth_object
from tests.integration.test_provisioning import Sandbox as ProvisionSandbox
from tests.integration.test_provisioning import make_users, read_token  # noqa: F401 - fixture
from tests.support.cli import Sandbox, current_user, fp
from tests.support.diagnose_rows import rows_named
from tests.support.openbao import OpenBaoServer
from tests.support.vault_tls import Pki, RecordingProxy, recording_proxy, tls_openbao
from tests.support.vault_tls import pki  # noqa: F401 - fixtures
from tests.support.vault_user import provision_token_file

pytestmark = pytest.mark.real

GOOD = oauth_object("sk-ant-oat01-proxy-good-access", "sk-ant-ort01-proxy-good-refresh")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy")



@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[OpenBaoServer, str]]:
    with tls_openbao(tmp_path_factory.mktemp("bao-tls"), pki, require_client_cert=False) as pair:
        yield pair


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    with recording_proxy() as server:
        yield server


def proxy_env(**chosen: str) -> dict[str, str]:
    """``chosen``, and every other proxy variable empty (none inherited from the test runner).

    Not even the other spelling of a chosen one is set empty: like curl, urllib (which requests
    asks) lets an empty ``https_proxy`` cancel ``HTTPS_PROXY``."""
    picked = {name.lower() for name in chosen}
    return {**{name: "" for name in PROXY_VARIABLES if name.lower() not in picked}, **chosen}


def agent_run(bao: OpenBaoServer, addr: str, pki: Pki, tmp_path: Path, **proxies: str) -> tuple[Sandbox, Any]:
    box = Sandbox(tmp_path)
    provision_token_file(bao, box)
    box.write_credentials({"claudeAiOauth": GOOD})
    result = box.run("run", "--json", CLAUDE_AUTH_SYNC_BACKEND="vault", VAULT_ADDR=addr, VAULT_CACERT=str(pki.ca_crt),
                     STUB_CLAUDE_ACCEPT=fp(GOOD["accessToken"]), **proxy_env(**proxies))
    return box, result


def secrets_of(box: Sandbox) -> list[bytes]:
    token = (box.root / "config" / "claude-auth-sync" / "vault-token").read_text().strip()
    return [token.encode(), GOOD["accessToken"].encode(), GOOD["refreshToken"].encode(), current_user().encode()]


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_the_agents_vault_traffic_goes_through_the_proxy_and_the_proxy_sees_no_secret(
    tls_bao: tuple[OpenBaoServer, str], pki: Pki, proxy: RecordingProxy, tmp_path: Path, variable: str
) -> None:
    bao, addr = tls_bao
    box, result = agent_run(bao, addr, pki, tmp_path, **{variable: proxy.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "OK"
    target = addr.removeprefix("https://")
    assert proxy.tunnels and set(proxy.tunnels) == {target}
    assert all(head.startswith(f"CONNECT {target} HTTP/1.".encode()) for head in proxy.heads), proxy.heads
    for head in proxy.heads:
        assert b"x-vault" not in head.lower() and b"authorization" not in head.lower()
        leaked = [s for s in secrets_of(box) if s in head]
        assert leaked == [], "a secret or the user's path reached the proxy in clear"
    stored = bao.client().secrets.kv.v2.read_secret_version(path=f"workstation/claude-users/{current_user()}",
                                                           mount_point="secret", raise_on_deleted_version=True)
    assert stored["data"]["data"]["claudeAiOauth"]["accessToken"] == GOOD["accessToken"]


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "127.0.0.0/8", "*"])
def test_no_proxy_naming_the_vault_host_bypasses_the_proxy(
    tls_bao: tuple[OpenBaoServer, str], pki: Pki, proxy: RecordingProxy, tmp_path: Path, no_proxy: str
) -> None:
    bao, addr = tls_bao
    _box, result = agent_run(bao, addr, pki, tmp_path, HTTPS_PROXY=proxy.url, NO_PROXY=no_proxy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert proxy.heads == []


def test_a_proxy_that_is_down_is_a_retry_later_not_a_configuration_error(
    tls_bao: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path
) -> None:
    bao, addr = tls_bao
    with recording_proxy() as gone:
        url = gone.url
    _box, result = agent_run(bao, addr, pki, tmp_path, HTTPS_PROXY=url)
    event = json.loads(result.stdout)
    assert (result.returncode, event["status"]) == (75, "WARN"), result.stdout + result.stderr


def test_the_provisioner_goes_through_the_proxy_with_no_token_in_clear(
    tls_bao: tuple[OpenBaoServer, str], pki: Pki, proxy: RecordingProxy, tmp_path: Path, make_users: Any  # noqa: F811
) -> None:
    bao, addr = tls_bao
    box = ProvisionSandbox(tmp_path / "prov", bao)
    (user,) = make_users("pxy")
    box.write_roster([user])
    result = box.run("--apply-policies", admin=True,
                     extra_env={"VAULT_ADDR": addr, "VAULT_CACERT": str(pki.ca_crt), **proxy_env(HTTPS_PROXY=proxy.url)})
    assert result.rc == 0, result.stdout + result.stderr
    assert result.user(user)["token"] == "minted"
    assert proxy.tunnels and set(proxy.tunnels) == {addr.removeprefix("https://")}
    minted = read_token(user).encode()
    for head in proxy.heads:
        assert head.startswith(b"CONNECT ")
        assert bao.root_token.encode() not in head and minted not in head and user.encode() not in head


def test_diagnose_names_the_proxy_in_use_without_its_password(
    tls_bao: tuple[OpenBaoServer, str], pki: Pki, proxy: RecordingProxy, tmp_path: Path
) -> None:
    bao, addr = tls_bao
    box, result = agent_run(bao, addr, pki, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    password = "Proxy-PW-3f9a"
    env = {"CLAUDE_AUTH_SYNC_BACKEND": "vault", "VAULT_ADDR": addr, "VAULT_CACERT": str(pki.ca_crt),
           "STUB_CLAUDE_ACCEPT": fp(GOOD["accessToken"])}
    proxied = box.run("diagnose", "--json", **env, **proxy_env(HTTPS_PROXY=f"http://agent:{password}@127.0.0.1:{proxy.port}"))
    rows = rows_named(json.loads(proxied.stdout), "proxy")
    assert [row["detail"].split(" (")[0] for row in rows] == [f"via http://127.0.0.1:{proxy.port}"], proxied.stdout
    assert password not in proxied.stdout + proxied.stderr
    assert any(b"Proxy-Authorization" in head for head in proxy.heads)  # the proxy's own credential went to it only
    bypassed = box.run("diagnose", "--json", **env, **proxy_env(HTTPS_PROXY=proxy.url, NO_PROXY="127.0.0.1"))
    assert rows_named(json.loads(bypassed.stdout), "proxy") == []
