"""Issue 14 item 5: the agent against a real OpenBao listener that requires client certificates.

The server is ``bao server -dev`` with a second listener declared in its config file
(``tls_require_and_verify_client_cert = true``, CA, server and client certificates made by the real
``openssl`` in :func:`tests.support.vault_tls.make_pki`). The installed ``claude-auth-sync`` runs in
a sandbox against the https listener: with the client certificate it backs up; without one it stops
with exit 78 naming ``vault.client_cert``; a key readable by others, a symlinked key, a key that is
not the certificate's and a certificate from another CA are refused, each with its own fix. No
token or secret value reaches the output.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.testing import oauth_object
from tests.integration.test_provisioning import Sandbox as ProvisionSandbox
from tests.integration.test_provisioning import make_users  # noqa: F401 - fixture
from tests.support.cli import Sandbox, current_user, fp
from tests.support.diagnose_rows import rows_named
from tests.support.openbao import OpenBaoServer
from tests.support.vault_tls import Pki
from tests.support.vault_tls import mtls, pki  # noqa: F401 - fixtures
from tests.support.vault_user import provision_token_file

pytestmark = pytest.mark.real

GOOD = oauth_object("sk-ant-oat01-mtls-good-access", "sk-ant-ort01-mtls-good-refresh")
SECRETS = (GOOD["accessToken"], GOOD["refreshToken"])




def box_with_token(bao: OpenBaoServer, tmp_path: Path) -> Sandbox:
    box = Sandbox(tmp_path)
    provision_token_file(bao, box)
    box.write_credentials({"claudeAiOauth": GOOD})
    return box


def install_client_files(box: Sandbox, cert: Path, key: Path, key_mode: int = 0o600) -> tuple[Path, Path]:
    """The client certificate and key copied into the sandbox user's config dir."""
    directory = box.root / "config" / "claude-auth-sync"
    shutil.copy(cert, directory / "vault-client.crt")
    shutil.copy(key, directory / "vault-client.key")
    os.chmod(directory / "vault-client.key", key_mode)
    return directory / "vault-client.crt", directory / "vault-client.key"


def env_for(addr: str, pki: Pki, **extra: str) -> dict[str, str]:
    return {"CLAUDE_AUTH_SYNC_BACKEND": "vault", "VAULT_ADDR": addr, "VAULT_CACERT": str(pki.ca_crt),
            "STUB_CLAUDE_ACCEPT": fp(GOOD["accessToken"]), **extra}


def run_json(box: Sandbox, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    """``run --json``: exit code, the event, and the event's text plus stderr (where the fix is)."""
    result = box.run("run", "--json", **env)
    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr
    token = (box.root / "config" / "claude-auth-sync" / "vault-token").read_text().strip()
    leaked = token in result.stdout or token in result.stderr
    assert not leaked, "the Vault token reached the output"
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}, result.stdout + result.stderr


def stored(bao: OpenBaoServer) -> dict[str, Any] | None:
    path = f"workstation/claude-users/{current_user()}"
    try:
        return bao.client().secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                              raise_on_deleted_version=True)["data"]["data"]
    except Exception:  # noqa: BLE001 - absent
        return None


def test_the_agent_backs_up_through_a_listener_that_requires_its_client_certificate(
    mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path
) -> None:
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    cert, key = install_client_files(box, pki.client_crt, pki.client_key)
    rc, event, stderr = run_json(box, env_for(addr, pki, VAULT_CLIENT_CERT=str(cert), VAULT_CLIENT_KEY=str(key)))
    assert rc == 0, stderr
    assert event["status"] == "OK"
    copy = stored(bao)
    assert copy is not None and copy["claudeAiOauth"]["accessToken"] == GOOD["accessToken"]


def test_relative_client_paths_are_under_the_users_config_dir(
    mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path
) -> None:
    """One system-wide setting (``client_cert = "vault-client.crt"``) names every user's own files."""
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    install_client_files(box, pki.client_crt, pki.client_key)
    env = env_for(addr, pki, CLAUDE_AUTH_SYNC_VAULT__CLIENT_CERT="vault-client.crt",
                  CLAUDE_AUTH_SYNC_VAULT__CLIENT_KEY="vault-client.key")
    rc, event, stderr = run_json(box, env)
    assert rc == 0 and event["status"] == "OK", stderr
    diagnose = box.run("diagnose", "--json", **env)
    assert "client cert" in diagnose.stdout and "vault-client.key" in diagnose.stdout, diagnose.stdout


def test_without_a_client_certificate_the_agent_stops_with_78_naming_the_setting(
    mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path
) -> None:
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    rc, event, stderr = run_json(box, env_for(addr, pki))
    assert rc == 78, stderr
    assert event["status"] == "FAIL" and event["reason"] == "vault_client_cert_required", event
    assert "vault.client_cert" in stderr and "VAULT_CLIENT_CERT" in stderr, stderr
    assert "VAULT_CACERT" not in stderr  # not the advice for a server certificate problem
    diagnose = box.run("diagnose", "--json", **env_for(addr, pki))
    assert diagnose.returncode != 0 and "vault.client_cert" in diagnose.stdout, diagnose.stdout


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_client_key_readable_by_others_is_refused_before_any_connection(
    mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path, mode: int
) -> None:
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    cert, key = install_client_files(box, pki.client_crt, pki.client_key, key_mode=mode)
    mark = bao.audit_mark()
    rc, event, stderr = run_json(box, env_for(addr, pki, VAULT_CLIENT_CERT=str(cert), VAULT_CLIENT_KEY=str(key)))
    assert rc == 78 and event["reason"] == "vault_client_key_unsafe", stderr
    assert f"chmod 600 {key}" in stderr and f"{mode:04o}" in stderr
    assert bao.requests_since(mark) == []
    assert stored(bao) is None or stored(bao)["claudeAiOauth"]["accessToken"] == GOOD["accessToken"]
    diagnose = box.run("diagnose", "--json", **env_for(addr, pki, VAULT_CLIENT_CERT=str(cert), VAULT_CLIENT_KEY=str(key)))
    rows = rows_named(json.loads(diagnose.stdout), "client cert")
    assert [(r["state"], r["next_step"]) for r in rows] == [("fail", f"chmod 600 {key}")], diagnose.stdout


def test_a_client_key_owned_by_another_account_is_refused(
    mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path
) -> None:
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    cert, key = install_client_files(box, pki.client_crt, pki.client_key)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(key, nobody, -1)
    rc, event, text = run_json(box, env_for(addr, pki, VAULT_CLIENT_CERT=str(cert), VAULT_CLIENT_KEY=str(key)))
    assert rc == 78 and event["reason"] == "vault_client_key_unsafe", text
    assert f"owned by uid {nobody}" in text


def test_a_symlinked_client_key_is_refused(mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path) -> None:
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    cert, key = install_client_files(box, pki.client_crt, pki.client_key)
    link = key.with_name("linked.key")
    link.symlink_to(key)
    rc, event, stderr = run_json(box, env_for(addr, pki, VAULT_CLIENT_CERT=str(cert), VAULT_CLIENT_KEY=str(link)))
    assert rc == 78 and event["reason"] == "vault_client_key_unsafe" and "symlink" in stderr, stderr


def test_a_key_that_is_not_the_certificates_is_refused(mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path) -> None:
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    cert, key = install_client_files(box, pki.client_crt, pki.stranger_key)
    rc, event, stderr = run_json(box, env_for(addr, pki, VAULT_CLIENT_CERT=str(cert), VAULT_CLIENT_KEY=str(key)))
    assert rc == 78 and event["reason"] == "vault_client_cert_invalid", stderr
    assert "BEGIN" not in stderr  # no PEM content in the message


def test_a_certificate_from_another_ca_is_refused_by_vault_with_its_own_fix(
    mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path
) -> None:
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    cert, key = install_client_files(box, pki.stranger_crt, pki.stranger_key)
    rc, event, stderr = run_json(box, env_for(addr, pki, VAULT_CLIENT_CERT=str(cert), VAULT_CLIENT_KEY=str(key)))
    assert rc == 78 and event["reason"] == "vault_client_cert_refused", stderr
    assert "tls_client_ca_file" in stderr


def test_only_one_of_certificate_and_key_is_a_configuration_error(
    mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path
) -> None:
    bao, addr = mtls
    box = box_with_token(bao, tmp_path)
    cert, _key = install_client_files(box, pki.client_crt, pki.client_key)
    rc, event, stderr = run_json(box, env_for(addr, pki, VAULT_CLIENT_CERT=str(cert)))
    assert rc == 78 and event["reason"] == "vault_client_cert_incomplete", stderr
    assert "VAULT_CLIENT_KEY" in stderr


# -- the root provisioner's admin client through the same listener ------------------------------


def root_client_files(pki: Pki, directory: Path, key_mode: int = 0o600) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(pki.client_crt, directory / "admin.crt")
    shutil.copy(pki.client_key, directory / "admin.key")
    os.chmod(directory / "admin.key", key_mode)
    return {"VAULT_CLIENT_CERT": str(directory / "admin.crt"), "VAULT_CLIENT_KEY": str(directory / "admin.key")}


def test_the_provisioner_mints_through_the_listener_with_roots_client_certificate(
    mtls: tuple[OpenBaoServer, str], pki: Pki, tmp_path: Path, make_users: Any  # noqa: F811
) -> None:
    bao, addr = mtls
    box = ProvisionSandbox(tmp_path / "prov", bao)
    (user,) = make_users("mtl")
    box.write_roster([user])
    tls = {"VAULT_ADDR": addr, "VAULT_CACERT": str(pki.ca_crt)}

    without = box.run("--apply-policies", admin=True, extra_env=tls)
    assert without.rc == 78, without.stdout + without.stderr
    assert "vault.client_cert" in without.stdout + without.stderr

    unsafe = box.run("--apply-policies", admin=True, extra_env={**tls, **root_client_files(pki, tmp_path / "bad", 0o644)})
    assert unsafe.rc == 78 and "chmod 640" in unsafe.stdout + unsafe.stderr, unsafe.stdout + unsafe.stderr

    minted = box.run("--apply-policies", admin=True, extra_env={**tls, **root_client_files(pki, tmp_path / "good", 0o640)})
    assert minted.rc == 0, minted.stdout + minted.stderr
    assert minted.user(user)["token"] == "minted"
