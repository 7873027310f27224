"""Pure units of the ``vault`` backend: policy rendering, user names, addresses, the token file.

Nothing here talks to a server (see ``tests/integration/test_vault_backend.py`` for that).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_auth_sync.errors import ConfigurationError, BackendRefused
from claude_auth_sync.model import ExitCode, UserIdentity
from claude_auth_sync.plugins import backend_vault
from claude_auth_sync.plugins.backend_vault.policy import (
    check_username,
    expected_policies,
    policy_name,
    render_policy,
    secret_paths,
)
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.plugins.backend_vault.store import VaultBackend, check_address
from claude_auth_sync.plugins.backend_vault.token_file import read_token_file, token_file_facts
from claude_auth_sync.settings import load_settings
from claude_auth_sync.testing import oauth_object

TOKEN = "s.unit-test-token-9f3c1a"
UID = os.getuid()

ALICE_POLICY = '''\
# claude-auth-sync-alice: the claude-auth-sync agent of OS user alice
# KV v2 secret secret/workstation/claude-users/alice: the claudeAiOauth object only.
path "secret/data/workstation/claude-users/alice" {
  capabilities = ["create", "read", "update"]
}

path "secret/metadata/workstation/claude-users/alice" {
  capabilities = ["read"]
}

# The token keeps itself alive and can describe itself; nothing else.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
'''


# ----------------------------------------------------------------------------- policy


def test_render_policy_for_alice_is_pinned() -> None:
    assert render_policy("alice", VaultSettings()) == ALICE_POLICY
    assert policy_name("alice") == "claude-auth-sync-alice"
    assert expected_policies("alice") == frozenset({"claude-auth-sync-alice"})


def test_render_policy_follows_mount_and_prefix() -> None:
    settings = VaultSettings(mount="kv", path_prefix="team/agents")
    hcl = render_policy("bob", settings)
    assert secret_paths("bob", settings) == ("team/agents/bob", "kv/data/team/agents/bob", "kv/metadata/team/agents/bob")
    assert 'path "kv/data/team/agents/bob" {' in hcl and 'path "kv/metadata/team/agents/bob" {' in hcl
    assert "secret/" not in hcl


valid_names = st.from_regex(r"\A[a-z_][a-z0-9_-]{0,15}(\.[a-z0-9_-]{1,7})?\Z", fullmatch=True)


@given(valid_names)
def test_policy_paths_are_exact_and_grant_nothing_more(user: str) -> None:
    hcl = render_policy(user, VaultSettings())
    paths = re.findall(r'^path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]\n\}', hcl, re.M)
    assert paths == [
        (f"secret/data/workstation/claude-users/{user}", '"create", "read", "update"'),
        (f"secret/metadata/workstation/claude-users/{user}", '"read"'),
        ("auth/token/renew-self", '"update"'),
        ("auth/token/lookup-self", '"read"'),
    ]
    assert hcl.count("path ") == 4
    for word in ("*", "+", "delete", "destroy", "list", "sudo", "deny", "patch"):
        body = "\n".join(line for line in hcl.splitlines() if not line.startswith("#"))
        assert word not in body


@pytest.mark.parametrize(
    "name",
    ["", "Alice", "alice*", "alice+", "../bob", "alice/bob", "-alice", "1alice", "a b", 'a"b', "alice\n",
     "a" * 33, "ålice", "alice..bob", "alice.", ".alice", "alice@host", "alice$", "root}\npath"],
)
def test_bad_user_names_never_reach_a_path(name: str) -> None:
    for call in (check_username, policy_name, lambda n: render_policy(n, VaultSettings())):
        with pytest.raises(ConfigurationError) as err:
            call(name)
        assert err.value.reason == "invalid_user_name" and err.value.exit_code == ExitCode.CONFIG
    with pytest.raises(ConfigurationError):
        VaultBackend(VaultSettings(addr="https://vault.example"), name, UID, Path("/nonexistent"))


@given(valid_names)
def test_good_user_names_pass(user: str) -> None:
    assert check_username(user) == user


@pytest.mark.parametrize("prefix", ["a/../b", "./x", "x/.", "..", "/abs", "x//y", "x/", "x y"])
def test_path_prefix_cannot_escape(prefix: str) -> None:
    with pytest.raises(ValueError):
        VaultSettings(path_prefix=prefix)


@pytest.mark.parametrize("mount", ["", "../sys", "se cret", "sys/x", "-x"])
def test_mount_is_one_plain_segment(mount: str) -> None:
    with pytest.raises(ValueError):
        VaultSettings(mount=mount)


def test_settings_forbid_unknown_keys() -> None:
    with pytest.raises(ValueError):
        VaultSettings(token="s.nope")  # type: ignore[call-arg]


# ----------------------------------------------------------------------------- address


@pytest.mark.parametrize(
    "addr",
    ["https://vault.example.com", "https://vault.example.com:8200", "https://10.0.0.5:8200", "http://127.0.0.1:8200",
     "http://127.9.9.9", "http://localhost:8200", "http://[::1]:8200", "https://[2001:db8::1]:8200"],
)
def test_check_address_accepts(addr: str) -> None:
    assert check_address(addr, allow_insecure_http=False) == addr


@pytest.mark.parametrize(
    "addr",
    ["http://vault.example.com:8200", "http://10.0.0.5:8200", "http://[2001:db8::1]:8200",
     "http://127.0.0.1.evil.example", "http://localhost.evil.example"],
)
def test_check_address_refuses_plain_http_off_loopback(addr: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        check_address(addr, allow_insecure_http=False)
    assert err.value.reason == "vault_insecure_http" and err.value.exit_code == ExitCode.CONFIG
    assert err.value.remedy and "https" in err.value.remedy
    assert check_address(addr, allow_insecure_http=True) == addr


@pytest.mark.parametrize("addr", ["vault.example.com:8200", "ftp://vault", "https://", "unix:///run/vault.sock",
                                  "https://vault:notaport", "https://vault:99999"])
def test_check_address_refuses_nonsense(addr: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        check_address(addr, allow_insecure_http=True)
    assert err.value.reason == "vault_addr_invalid"


@pytest.mark.parametrize("addr", [None, ""])
def test_check_address_requires_an_address(addr: str | None) -> None:
    with pytest.raises(ConfigurationError) as err:
        check_address(addr, allow_insecure_http=False)
    assert err.value.reason == "vault_addr_missing"


# ----------------------------------------------------------------------------- token file


def _write(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def _refused(path: Path, reason: str, uid: int = UID) -> BackendRefused:
    with pytest.raises(BackendRefused) as err:
        read_token_file(path, uid)
    refused = err.value
    assert (refused.reason, refused.exit_code) == (reason, ExitCode.CONFIG)
    assert refused.remedy
    leaked = TOKEN in str(refused) or TOKEN in repr(refused.args)
    assert not leaked
    return refused


def test_good_token_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "vault-token", TOKEN.encode() + b"\n")
    same = read_token_file(path, UID) == TOKEN
    assert same


def test_missing_token_file(tmp_path: Path) -> None:
    refused = _refused(tmp_path / "vault-token", "vault_token_missing")
    assert "rerun the root provisioner" in (refused.remedy or "")
    _refused(tmp_path / "no-such-dir" / "vault-token", "vault_token_missing")


@pytest.mark.parametrize("content", [b"", b"\n", b"  \t\n"])
def test_empty_token_file(tmp_path: Path, content: bytes) -> None:
    _refused(_write(tmp_path / "vault-token", content), "vault_token_missing")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o610, 0o601, 0o777])
def test_group_or_world_accessible_token_file(tmp_path: Path, mode: int) -> None:
    refused = _refused(_write(tmp_path / "vault-token", TOKEN.encode(), mode), "vault_token_mode")
    assert f"{mode:04o}" in refused.message
    assert refused.remedy == f"chmod 600 {tmp_path / 'vault-token'}"


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_modes_are_fine(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "vault-token", TOKEN.encode(), mode)
    same = read_token_file(path, UID) == TOKEN
    assert same


def test_symlinked_token_file(tmp_path: Path) -> None:
    target = _write(tmp_path / "real-token", TOKEN.encode())
    link = tmp_path / "vault-token"
    link.symlink_to(target)
    refused = _refused(link, "vault_token_unsafe")
    assert "symlink" in refused.message
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    _refused(dangling, "vault_token_unsafe")


def test_token_file_owned_by_someone_else(tmp_path: Path) -> None:
    path = _write(tmp_path / "vault-token", TOKEN.encode())
    if UID == 0:
        os.chown(path, 65534, 65534)  # a file planted by someone else
        refused = _refused(path, "vault_token_unsafe", uid=0)
        assert "owned by uid 65534" in refused.message
    else:  # the file is ours; claim to be someone else instead
        _refused(path, "vault_token_unsafe", uid=UID + 1)


def test_token_file_that_is_not_a_regular_file(tmp_path: Path) -> None:
    directory = tmp_path / "vault-token"
    directory.mkdir(mode=0o700)
    _refused(directory, "vault_token_unsafe")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    _refused(fifo, "vault_token_unsafe")  # and it did not block


@pytest.mark.parametrize(
    "content", [TOKEN.encode() + b" second", b"s.two\ns.lines", "s.tökén".encode(), b"s.\x00nul", b"x" * 5000],
    ids=["two-words", "two-lines", "non-ascii", "nul", "too-large"],
)
def test_token_file_with_a_non_token(tmp_path: Path, content: bytes) -> None:
    _refused(_write(tmp_path / "vault-token", content), "vault_token_unreadable")


def test_token_file_facts_never_read_the_content(tmp_path: Path) -> None:
    assert token_file_facts(tmp_path / "missing") == {"exists": False}
    path = _write(tmp_path / "vault-token", TOKEN.encode(), 0o644)
    facts = token_file_facts(path)
    assert facts == {"exists": True, "symlink": False, "mode": "0644", "uid": UID, "size": len(TOKEN)}


# ----------------------------------------------------------------------------- store, no server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_missing_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    token_file = _write(tmp_path / "vault-token", TOKEN.encode())
    store = VaultBackend(VaultSettings(addr=f"https://127.0.0.1:{_closed_port()}", cacert=tmp_path / "ca.pem"),
                       "alice", UID, token_file)
    with pytest.raises(ConfigurationError) as err:
        store.renew()
    assert (err.value.reason, err.value.exit_code) == ("vault_cacert_missing", ExitCode.CONFIG)


def test_store_refuses_to_write_anything_but_a_complete_oauth_object(tmp_path: Path) -> None:
    token_file = _write(tmp_path / "vault-token", TOKEN.encode())
    store = VaultBackend(VaultSettings(addr=f"http://127.0.0.1:{_closed_port()}"), "alice", UID, token_file)
    for bad in ({"claudeAiOauth": oauth_object("a", "r")}, {**oauth_object("a", "r"), "mcpOAuth": {}},
                oauth_object("", "r"), oauth_object("a", ""), {"accessToken": "a"}):
        with pytest.raises(BackendRefused) as err:
            store.write(bad, expected_version=None)  # refused before any connection is tried
        assert err.value.reason == "vault_payload_refused"


def test_describe_without_a_token_file_reports_instead_of_raising(tmp_path: Path) -> None:
    store = VaultBackend(VaultSettings(addr=f"http://127.0.0.1:{_closed_port()}"), "alice", UID, tmp_path / "vault-token")
    facts = store.describe()
    assert facts["token"]["reason"] == "vault_token_missing"
    assert facts["token_file"] == {"path": str(tmp_path / "vault-token"), "exists": False}


def test_settings_loader_maps_vault_addr_and_cacert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("CLAUDE_AUTH_SYNC_")]:
        monkeypatch.delenv(name)
    user = UserIdentity(name="alice", uid=UID, gid=os.getgid(), home=tmp_path)
    settings = load_settings(backend_vault.cas_settings_sections(), user, system_file=tmp_path / "none.toml",
                             environ={"VAULT_ADDR": "https://vault.example:8200", "VAULT_CACERT": "/etc/ssl/ca.pem"})
    vault = settings.section("vault")
    assert (vault.addr, vault.cacert) == ("https://vault.example:8200", Path("/etc/ssl/ca.pem"))
    assert vault.token_file is None and settings.config_dir == tmp_path / ".config" / "claude-auth-sync"
    # CLAUDE_AUTH_SYNC_VAULT__* wins over the neighbouring tool's variable.
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_VAULT__ADDR", "https://other.example")
    settings = load_settings(backend_vault.cas_settings_sections(), user, system_file=tmp_path / "none.toml",
                             environ={"VAULT_ADDR": "https://vault.example:8200"})
    assert settings.section("vault").addr == "https://other.example"
