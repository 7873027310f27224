"""Issue 14 item 5 under a real systemd: the shipped service reads ``/etc/default/claude-auth-sync``
(``EnvironmentFile=-``), and what the shipped example documents works as written.

A throw-away container (``tests/support/nspawn.py``) gets the agent installed as in
``test_units_real_systemd.py``; ``/etc/default/claude-auth-sync`` is the shipped
``deploy/default/claude-auth-sync`` with its ``HTTPS_PROXY``, ``VAULT_NAMESPACE`` and
``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY`` lines uncommented and pointed at this test's servers.
The OpenBao listener requires client certificates, the user's token lives in a namespace, and a
recording CONNECT proxy on loopback stands between them: ``systemctl start claude-auth-sync@<user>``
backs up through the proxy, with the user's own certificate (relative paths, resolved in the
user's config dir), into the namespace. Without the file the same service fails with 78.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest

from claude_auth_sync.plugins.backend_vault.policy import policy_name, render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from tests.integration.test_units_real_systemd import GOOD, GOOD_REFRESH, UnitUser, install_agent, oauth
from tests.support.nspawn import Container
from tests.support.openbao import OpenBaoServer, find_bao_binary
from tests.support.vault_tls import Pki, RecordingProxy, recording_proxy
from tests.support.vault_tls import mtls, pki  # noqa: F401 - fixtures

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "default" / "claude-auth-sync"
CA_IN_CONTAINER = "/etc/claude-auth-sync/vault-ca.crt"




@pytest.fixture(scope="module")
def namespace(mtls: tuple[OpenBaoServer, str]) -> str:
    bao, _addr = mtls
    name = f"site-{secrets.token_hex(3)}"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(bao.workdir / "home"), "BAO_ADDR": bao.addr, "BAO_TOKEN": bao.root_token}
    for argv in (["namespace", "create", name], ["secrets", "enable", f"-namespace={name}", "-path=secret", "kv-v2"]):
        subprocess.run([find_bao_binary(), *argv], env=env, check=True, capture_output=True, timeout=30)
    return name


@pytest.fixture(scope="module")
def container(mtls: tuple[OpenBaoServer, str], pki: Pki) -> Iterator[Container]:
    bao, addr = mtls
    with Container() as box:
        install_agent(box, bao)
        box.write(CA_IN_CONTAINER, pki.ca_crt.read_text())
        box.write("/etc/claude-auth-sync/config.toml",
                  f'backend = "vault"\n\n[vault]\naddr = "{addr}"\ncacert = "{CA_IN_CONTAINER}"\n')
        yield box


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    with recording_proxy() as server:
        yield server


def environment_file(proxy: RecordingProxy, namespace: str) -> str:
    """The shipped example with its proxy, namespace and client certificate lines switched on."""
    values = {"HTTPS_PROXY": proxy.url, "VAULT_NAMESPACE": namespace,
              "VAULT_CLIENT_CERT": "vault-client.crt", "VAULT_CLIENT_KEY": "vault-client.key"}
    text = EXAMPLE.read_text()
    for name, value in values.items():
        text, count = re.subn(rf"^#{name}=\S*$", f"{name}={value}", text, flags=re.MULTILINE)
        assert count == 1, f"the example no longer documents {name}"
    return text


@pytest.fixture
def ns_user(container: Container, mtls: tuple[OpenBaoServer, str], namespace: str, pki: Pki) -> Iterator[UnitUser]:
    """A user inside the container whose policy and token live in the namespace, with a client
    certificate and key of its own in ~/.config/claude-auth-sync/ (0600)."""
    bao, _addr = mtls
    user = UnitUser(container, bao, f"casn{secrets.token_hex(3)}")
    try:
        container.useradd(user.name)
        client = bao.client()
        client.adapter.namespace = namespace
        client.sys.create_or_update_policy(name=policy_name(user.name), policy=render_policy(user.name, VaultSettings()))
        token = client.auth.token.create_orphan(policies=[policy_name(user.name)], period="768h", renewable=True,
                                                no_default_policy=True)["auth"]["client_token"]
        config = f"{user.home}/.config/claude-auth-sync"
        container.write(f"{config}/vault-token", token + "\n", mode=0o600, owner=user.name, dir_mode=0o700)
        container.write(f"{config}/vault-client.crt", pki.client_crt.read_text(), owner=user.name, dir_mode=0o700)
        container.write(f"{config}/vault-client.key", pki.client_key.read_text(), mode=0o600, owner=user.name,
                        dir_mode=0o700)
        user.use_stub_cli(GOOD)
        user.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
        yield user
    finally:
        container.run(["rm", "-f", "/etc/default/claude-auth-sync"], check=False)
        user.remove()


def copy_in(bao: OpenBaoServer, namespace: str | None, user: str) -> dict[str, Any] | None:
    client = bao.client()
    client.adapter.namespace = namespace
    try:
        return client.secrets.kv.v2.read_secret_version(path=f"workstation/claude-users/{user}", mount_point="secret",
                                                        raise_on_deleted_version=True)["data"]["data"]
    except hvac.exceptions.InvalidPath:
        return None


def test_the_service_reads_the_environment_file_proxy_namespace_and_client_certificate(
    container: Container, mtls: tuple[OpenBaoServer, str], namespace: str, proxy: RecordingProxy, ns_user: UnitUser
) -> None:
    bao, addr = mtls
    rc, _ = ns_user.start()
    assert rc != 0, ns_user.explain()  # no environment file yet: the listener wants a certificate
    assert container.unit_property(ns_user.service, "ExecMainStatus") == "78"
    journal = " ".join(str(entry.get("MESSAGE")) for entry in container.journal("claude-auth-sync", unit=ns_user.service))
    assert "reason=vault_client_cert_required" in journal and "/etc/default/claude-auth-sync" in journal

    container.write("/etc/default/claude-auth-sync", environment_file(proxy, namespace))
    rc, _ = ns_user.start()
    assert rc == 0, ns_user.explain()
    copy = copy_in(bao, namespace, ns_user.name)
    assert copy is not None and copy["claudeAiOauth"]["accessToken"] == GOOD
    assert copy_in(bao, None, ns_user.name) is None  # nothing outside the namespace
    target = addr.removeprefix("https://")
    assert proxy.tunnels and set(proxy.tunnels) == {target}
    token = container.read(f"{ns_user.home}/.config/claude-auth-sync/vault-token").strip()
    for head in proxy.heads:
        assert head.startswith(f"CONNECT {target} ".encode())
        assert token not in head and GOOD.encode() not in head
