"""``diagnose --all`` sees each user's Vault settings as that user's unit does (real users, real mTLS OpenBao).

The defect: the fleet view gathered every user's facts with root's own environment, so root's
``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY`` (an absolute path under a directory only root can read)
reached every user's privilege-dropped child, which could not read it: every Vault row showed a
client-certificate error the agent itself (run by the unit, which reads
``/etc/default/claude-auth-sync`` and not root's shell) never has.

Set-up: a real OpenBao with a TLS listener that requires client certificates
(:mod:`tests.support.vault_tls`), tokens minted by the real provisioner for two real OS users,
the unit's environment file naming the *relative* ``vault-client.crt``/``vault-client.key`` (each
user's own files under ``~/.config/claude-auth-sync``), and root's own absolute pair in root's
environment. Alice holds a certificate the listener accepts; bob holds none (his row must show his
own missing file: proof that the listener really asks and that the path is his).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_auth_sync.admin import fleet
from claude_auth_sync.plugin_manager import get_plugin_manager
from tests.integration.test_provisioning import Sandbox as ProvisionSandbox
from tests.integration.test_provisioning import bao, make_users  # noqa: F401 - fixtures
from tests.support.openbao import OpenBaoServer
from tests.support.vault_tls import Pki
from tests.support.vault_tls import mtls, pki  # noqa: F401 - fixtures

pytestmark = pytest.mark.real




@pytest.fixture(scope="module")
def public_ca(pki: Pki) -> Iterator[Path]:
    """The CA bundle where every user can read it (as /usr/local/share/ca-certificates would be)."""
    directory = Path(tempfile.mkdtemp(prefix="cas-fleet-ca-", dir="/tmp"))
    directory.chmod(0o755)
    shutil.copy(pki.ca_crt, directory / "ca.crt")
    (directory / "ca.crt").chmod(0o644)
    yield directory / "ca.crt"
    shutil.rmtree(directory, ignore_errors=True)


def give_client_pair(user: str, pki: Pki) -> None:
    """The client certificate and key in the user's own config dir, owned by them, key 0600."""
    directory = Path(f"/home/{user}/.config/claude-auth-sync")
    for source, name in ((pki.client_crt, "vault-client.crt"), (pki.client_key, "vault-client.key")):
        subprocess.run(["runuser", "-u", user, "--", "sh", "-c", f"umask 077; cat > '{directory / name}'"],
                       input=source.read_bytes(), check=True)


def provisioned(tmp_path: Path, server: OpenBaoServer, users: list[str]) -> ProvisionSandbox:
    """``users`` provisioned by the real provisioner through the dev listener (plain http)."""
    prov = ProvisionSandbox(tmp_path, server)
    prov.write_roster(users)
    minted = prov.run("--apply-policies", admin=True)
    assert minted.rc in (0, 1), minted.stderr
    return prov


def unit_environment_file(path: Path, ca: Path) -> Path:
    """The site's /etc/default/claude-auth-sync as the shipped example suggests (root, 0644)."""
    path.write_text("# site settings for the claude-auth-sync units\n"
                    "VAULT_CLIENT_CERT=vault-client.crt\n"
                    "VAULT_CLIENT_KEY=vault-client.key\n"
                    f"VAULT_CACERT={ca}\n")
    path.chmod(0o644)
    return path


ROOT_SPELLINGS = {
    "standard": ("VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY"),
    "prefixed": ("CLAUDE_AUTH_SYNC_VAULT__CLIENT_CERT", "CLAUDE_AUTH_SYNC_VAULT__CLIENT_KEY"),
    "lower-case prefixed": ("claude_auth_sync_vault__client_cert", "claude_auth_sync_vault__client_key"),
}


@pytest.mark.parametrize("spelling", sorted(ROOT_SPELLINGS))
def test_roots_own_client_certificate_never_reaches_a_users_row(
    tmp_path: Path, mtls: tuple[OpenBaoServer, str], pki: Pki, public_ca: Path, make_users,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, spelling: str,
) -> None:
    server, https_addr = mtls
    alice, bob = make_users("mtlsa", "mtlsb")
    prov = provisioned(tmp_path, server, [alice, bob])
    give_client_pair(alice, pki)

    # Root's shell: the admin chose the mTLS address explicitly; root's own certificate is set too.
    cert_var, key_var = ROOT_SPELLINGS[spelling]
    for name in [v for pair in ROOT_SPELLINGS.values() for v in pair] + ["VAULT_CACERT", "VAULT_TOKEN"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_ADDR", https_addr)
    monkeypatch.setenv(cert_var, str(pki.client_crt))
    monkeypatch.setenv(key_var, str(pki.client_key))
    monkeypatch.setattr(fleet, "ENVIRONMENT_FILE", unit_environment_file(tmp_path / "default", public_ca),
                        raising=False)

    rows = {row["user"]: row for row in fleet.fleet_rows(prov.roster, get_plugin_manager(), prov.sysroot)}

    a = rows[alice]
    assert a["vault_ttl_s"] is not None and a["vault_ttl_s"] > 3600, a  # her own token, through mTLS
    assert not any(need.startswith("admin:") for need in a["needs"]), a
    b = rows[bob]  # his own (missing) file is what his unit would trip over, never root's
    assert b["vault_ttl_s"] is None and any(need.startswith("admin: ") for need in b["needs"]), b
    assert f"/home/{bob}/.config/claude-auth-sync/vault-client" in (b.get("vault_error") or ""), b
    assert str(pki.root) not in str(rows), "root's certificate path reached a row"


def test_the_environment_file_is_the_units_not_roots_shell(
    tmp_path: Path, mtls: tuple[OpenBaoServer, str], pki: Pki, public_ca: Path, make_users,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the unit's file, root's variables alone no longer name a certificate for the users:
    the rows show the listener's demand (what the unit would show), not root's unreadable file."""
    server, https_addr = mtls
    (alice,) = make_users("mtlsc")
    prov = provisioned(tmp_path, server, [alice])
    give_client_pair(alice, pki)
    monkeypatch.setenv("VAULT_ADDR", https_addr)
    monkeypatch.setenv("VAULT_CACERT", str(public_ca))
    monkeypatch.setenv("VAULT_CLIENT_CERT", str(pki.client_crt))
    monkeypatch.setenv("VAULT_CLIENT_KEY", str(pki.client_key))
    monkeypatch.setattr(fleet, "ENVIRONMENT_FILE", tmp_path / "absent", raising=False)

    (row,) = fleet.fleet_rows(prov.roster, get_plugin_manager(), prov.sysroot)
    assert row["vault_ttl_s"] is None, row
    assert row.get("vault_reason") == "vault_client_cert_required", row
    assert str(pki.root) not in str(row), "root's certificate path reached the row"


def test_the_command_leaves_roots_certificate_out_and_says_so(tmp_path: Path, bao, make_users) -> None:  # noqa: F811
    """The real ``claude-auth-sync diagnose --all`` run by root whose shell names root's own client
    certificate (a path under /root): the user's row is looked up with the user's settings, and
    stderr names the variables (never their values) that were left out or used for every row."""
    (alice,) = make_users("rootcert")
    prov = ProvisionSandbox(tmp_path, bao)
    prov.write_roster([alice])
    assert prov.run("--apply-policies", admin=True).rc in (0, 1)
    cli = str(Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv")) / "bin/claude-auth-sync")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "VAULT_ADDR": bao.addr,
           "VAULT_CLIENT_CERT": "/root/.config/claude-auth-sync/root-only.crt",
           "VAULT_CLIENT_KEY": "/root/.config/claude-auth-sync/root-only.key"}
    result = subprocess.run([cli, "diagnose", "--all", "--json", "--roster", str(prov.roster),
                             "--systemd-root", str(prov.sysroot)], env=env, capture_output=True, text=True, timeout=120)
    (row,) = json.loads(result.stdout)["users"]
    assert row["vault_ttl_s"] is not None and row["vault_ttl_s"] > 3600, (row, result.stderr[-2000:])
    assert "root's VAULT_CLIENT_CERT, VAULT_CLIENT_KEY not used" in result.stderr, result.stderr
    assert "root's VAULT_ADDR used for every row" in result.stderr, result.stderr
    assert "root-only" not in result.stdout + result.stderr

