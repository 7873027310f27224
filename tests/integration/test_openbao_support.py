"""Pins the OpenBao / hvac behaviour the Vault backend relies on.

Every test talks to a real ``bao server -dev`` on loopback (see
``tests/support/openbao.py``). Token values are never printed: anything that
could contain one is scrubbed before it reaches an assertion, because pytest
shows operand values when an assertion fails.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests

from tests.support.openbao import OpenBaoServer, free_loopback_port

pytestmark = pytest.mark.real

ALICE_PATH = "workstation/claude-users/alice"
BOB_PATH = "workstation/claude-users/bob"
ALICE_POLICY = """
path "secret/data/workstation/claude-users/alice" { capabilities = ["create", "read", "update"] }
path "secret/metadata/workstation/claude-users/alice" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
"""
ACL_DENIED = "1 error occurred:\n\t* permission denied\n\n"
SEALED = "Vault is sealed"
CAS_MISMATCH = "check-and-set parameter did not match the current version"


def _scrub(obj: Any, *secrets: str) -> Any:
    """Deep copy of a JSON-able object with every secret string replaced."""
    text = json.dumps(obj)
    for secret in secrets:
        text = text.replace(secret, "<scrubbed>")
    return json.loads(text)


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBaoServer]:
    """A server of its own for each test (overrides the shared module-scoped one of tests/conftest.py):
    these tests pin behaviour from a clean state (alice's one path, check-and-set from nothing, seal)."""
    with OpenBaoServer(tmp_path / "bao") as server:
        yield server


@pytest.fixture
def alice_token(bao: OpenBaoServer) -> str:
    bao.write_policy("claude-user-alice", ALICE_POLICY)
    return bao.create_periodic_token(
        ["claude-user-alice"], period="1h", display_name="alice", meta={"user": "alice"}
    )


@pytest.fixture
def alice(bao: OpenBaoServer, alice_token: str) -> hvac.Client:
    return bao.client(alice_token)


def _read(client: hvac.Client, path: str) -> dict[str, Any]:
    resp: dict[str, Any] = client.secrets.kv.v2.read_secret_version(
        path, raise_on_deleted_version=True
    )
    return resp


# --------------------------------------------------------------- the helper


def test_free_loopback_port_is_bindable() -> None:
    port = free_loopback_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_is_fast_and_stop_leaves_no_process(tmp_path: Path) -> None:
    server = OpenBaoServer(tmp_path / "bao").start()
    pid = server.pid
    port = server.port
    assert pid is not None
    print(f"bao dev server ready in {server.startup_seconds:.3f}s")
    assert server.startup_seconds < 10
    assert server.client().sys.is_initialized()

    server.stop()
    server.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not even a zombie
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(tmp_path).encode() in cmdline:
                leftovers.append(proc.name)
    assert leftovers == []


def test_root_token_stays_out_of_argv_logs_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "caller-vault-token")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.setenv("BAO_ADDR", "http://127.0.0.1:1")
    monkeypatch.setenv("BAO_TOKEN", "caller-bao-token")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    caller_home = tmp_path / "caller-home"
    caller_home.mkdir()
    monkeypatch.setenv("HOME", str(caller_home))
    with OpenBaoServer(tmp_path / "bao") as server:
        proc = Path(f"/proc/{server.pid}")
        in_argv = server.root_token.encode() in (proc / "cmdline").read_bytes()
        assert not in_argv, "root token visible in the server's argv"
        env_keys = sorted(
            entry.split(b"=", 1)[0].decode()
            for entry in (proc / "environ").read_bytes().split(b"\0")
            if entry
        )
        assert "BAO_DEV_ROOT_TOKEN_ID" in env_keys
        leaked = [k for k in env_keys if k.startswith(("VAULT_", "BAO_", "HTTP"))]
        assert leaked == ["BAO_DEV_ROOT_TOKEN_ID"]
        # The env token really is the root token, and the caller's env does
        # not redirect or re-authenticate our client.
        assert server.client().lookup_token()["data"]["policies"] == ["root"]

    server_log = server.server_log.read_text()
    in_log = server.root_token in server_log
    assert not in_log, "root token written to the server log"
    assert "Root Token: <redacted-root-token>" in server_log
    assert "Unseal Key: <redacted-unseal-key>" in server_log
    in_audit = server.root_token in server.audit_log.read_text()
    assert not in_audit, "root token in the audit log"
    assert not list((tmp_path / "bao" / "home").iterdir())  # no ~/.vault-token
    assert not list(caller_home.iterdir())  # nor in the caller's home


def test_start_failure_reports_redacted_log_tail(tmp_path: Path) -> None:
    server = OpenBaoServer(tmp_path / "bao", start_timeout=5)
    (tmp_path / "bao").mkdir()
    (tmp_path / "bao" / "audit.log").mkdir()  # audit device cannot open it
    with pytest.raises(Exception) as info:
        server.start()
    message = str(info.value)
    assert "bao server log tail" in message
    leaked = server.root_token in message
    assert not leaked
    server.stop()


# ------------------------------------------------------------------ KV mount


def test_dev_server_mounts_kv_v2_at_secret(bao: OpenBaoServer) -> None:
    mounts = bao.client().sys.list_mounted_secrets_engines()["data"]
    assert mounts["secret/"]["type"] == "kv"
    assert mounts["secret/"]["options"] == {"version": "2"}


def test_kv_v2_can_be_mounted_explicitly_if_missing(bao: OpenBaoServer) -> None:
    root = bao.client()
    root.sys.enable_secrets_engine("kv", path="other-kv", options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret("x", {"k": "v"}, mount_point="other-kv")
    got = root.secrets.kv.v2.read_secret_version(
        "x", mount_point="other-kv", raise_on_deleted_version=True
    )
    assert got["data"]["data"] == {"k": "v"}


# ------------------------------------------------------------------- policy


def test_alice_token_shape(alice: hvac.Client, alice_token: str) -> None:
    data = _scrub(alice.auth.token.lookup_self()["data"], alice_token)
    assert data["id"] == "<scrubbed>"  # lookup-self echoes the token itself
    assert data["policies"] == ["claude-user-alice"]  # no "default"
    assert data["display_name"] == "token-alice"
    assert data["meta"] == {"user": "alice"}
    assert data["orphan"] is True
    assert data["renewable"] is True
    assert data["type"] == "service"
    assert data["period"] == 3600
    assert data["creation_ttl"] == 3600
    assert data["explicit_max_ttl"] == 0
    assert data["path"] == "auth/token/create-orphan"


@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version:DeprecationWarning")
def test_alice_can_use_her_own_secret(alice: hvac.Client) -> None:
    kv = alice.secrets.kv.v2
    kv.create_or_update_secret(ALICE_PATH, {"claudeAiOauth": {"x": 1}}, cas=0)
    assert _read(alice, ALICE_PATH)["data"]["data"] == {"claudeAiOauth": {"x": 1}}
    meta = kv.read_secret_metadata(ALICE_PATH)["data"]
    assert meta["current_version"] == 1
    assert meta["cas_required"] is False
    # hvac's kv.patch() is read + cas write, so "update" suffices for it ...
    kv.patch(ALICE_PATH, {"more": 2})
    assert _read(alice, ALICE_PATH)["data"]["metadata"]["version"] == 2


def test_alice_is_denied_everything_else(bao: OpenBaoServer, alice: hvac.Client) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(BOB_PATH, {"b": 1})
    kv = alice.secrets.kv.v2
    kv.create_or_update_secret(ALICE_PATH, {"a": 1}, cas=0)
    denied = {
        "bob data read": lambda: _read(alice, BOB_PATH),
        "bob data write": lambda: kv.create_or_update_secret(BOB_PATH, {"x": 1}),
        "bob metadata read": lambda: kv.read_secret_metadata(BOB_PATH),
        "delete latest": lambda: kv.delete_latest_version_of_secret(ALICE_PATH),
        "delete versions": lambda: kv.delete_secret_versions(ALICE_PATH, [1]),
        "destroy": lambda: kv.destroy_secret_versions(ALICE_PATH, [1]),
        "undelete": lambda: kv.undelete_secret_versions(ALICE_PATH, [1]),
        "list parent": lambda: kv.list_secrets("workstation/claude-users"),
        "list own": lambda: kv.list_secrets(ALICE_PATH),
        "metadata write": lambda: kv.update_metadata(ALICE_PATH, max_versions=1),
        "metadata delete": lambda: kv.delete_metadata_and_all_versions(ALICE_PATH),
        # ... but a real HTTP PATCH needs the "patch" capability.
        "http patch": lambda: alice.adapter.request(
            "PATCH",
            f"/v1/secret/data/{ALICE_PATH}",
            json={"data": {"x": 1}},
            headers={"Content-Type": "application/merge-patch+json"},
        ),
        "create token": lambda: alice.auth.token.create(policies=["claude-user-alice"]),
        "sys policy read": lambda: alice.sys.read_policy("claude-user-alice"),
    }
    outcomes = {}
    for name, call in denied.items():
        try:
            call()
            outcomes[name] = "allowed"
        except hvac.exceptions.Forbidden as exc:
            outcomes[name] = f"403 {exc.errors}"
    assert outcomes == {name: f"403 {[ACL_DENIED]}" for name in denied}
    assert _read(alice, ALICE_PATH)["data"]["metadata"]["version"] == 1


# ---------------------------------------------------------------- renewals


def test_renew_self_resets_ttl_to_period(alice: hvac.Client, alice_token: str) -> None:
    time.sleep(2.2)
    ttl_before = alice.auth.token.lookup_self()["data"]["ttl"]
    assert 3590 <= ttl_before <= 3598

    resp = _scrub(alice.auth.token.renew_self(), alice_token)
    assert resp["data"] is None
    assert resp["lease_duration"] == 0  # top-level; the token TTL is in auth
    auth = resp["auth"]
    assert sorted(auth) == sorted(
        [
            "client_token", "accessor", "policies", "token_policies", "metadata",
            "lease_duration", "renewable", "entity_id", "token_type", "orphan",
            "mfa_requirement", "num_uses",
        ]
    )
    assert auth["client_token"] == "<scrubbed>"  # the response echoes the token
    assert auth["lease_duration"] == 3600  # == period; no "ttl"/"period" keys
    assert auth["policies"] == ["claude-user-alice"]
    assert auth["token_policies"] == ["claude-user-alice"]
    assert auth["metadata"] == {"user": "alice"}
    assert auth["renewable"] is True
    assert auth["orphan"] is True
    assert auth["token_type"] == "service"

    data = alice.auth.token.lookup_self()["data"]
    assert data["ttl"] >= 3599
    assert data["period"] == 3600

    # For a periodic token a requested increment is ignored.
    inc = alice.auth.token.renew_self(increment="5s")["auth"]["lease_duration"]
    assert inc == 3600


def test_default_period_768h(bao: OpenBaoServer) -> None:
    bao.write_policy("claude-user-alice", ALICE_POLICY)
    token = bao.create_periodic_token(["claude-user-alice"], display_name="alice")
    client = bao.client(token)
    assert client.auth.token.lookup_self()["data"]["period"] == 768 * 3600
    assert client.auth.token.renew_self()["auth"]["lease_duration"] == 768 * 3600


# -------------------------------------------------------- check-and-set


def test_check_and_set(alice: hvac.Client) -> None:
    kv = alice.secrets.kv.v2
    first = kv.create_or_update_secret(ALICE_PATH, {"v": 1}, cas=0)["data"]
    assert first["version"] == 1

    with pytest.raises(hvac.exceptions.InvalidRequest) as info:  # HTTP 400
        kv.create_or_update_secret(ALICE_PATH, {"v": 2}, cas=0)
    assert info.value.errors == [CAS_MISMATCH]
    with pytest.raises(hvac.exceptions.InvalidRequest) as info:
        kv.create_or_update_secret(ALICE_PATH, {"v": 2}, cas=7)
    assert info.value.errors == [CAS_MISMATCH]

    current = kv.read_secret_metadata(ALICE_PATH)["data"]["current_version"]
    second = kv.create_or_update_secret(ALICE_PATH, {"v": 2}, cas=current)["data"]
    assert second["version"] == 2
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(ALICE_PATH, {"v": 3}, cas=1)  # stale
    # Without cas the write is unconditional (cas_required is off by default).
    assert kv.create_or_update_secret(ALICE_PATH, {"v": 3})["data"]["version"] == 3
    assert _read(alice, ALICE_PATH)["data"]["data"] == {"v": 3}


def test_cas_zero_on_an_existing_secret_fails_even_for_root(bao: OpenBaoServer) -> None:
    kv = bao.client().secrets.kv.v2
    kv.create_or_update_secret(ALICE_PATH, {"v": 1})
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(ALICE_PATH, {"v": 2}, cas=0)


# ------------------------------------------------------- exception mapping


def test_missing_secret_is_404_invalid_path(alice: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidPath) as info:
        _read(alice, ALICE_PATH)
    assert info.value.errors == []  # OpenBao sends no error text for a 404
    with pytest.raises(hvac.exceptions.InvalidPath):
        alice.secrets.kv.v2.read_secret_metadata(ALICE_PATH)


def test_acl_is_checked_before_existence(alice: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.Forbidden) as info:  # not 404
        _read(alice, BOB_PATH)
    assert info.value.errors == [ACL_DENIED]


def test_unknown_token_is_403_not_401(bao: OpenBaoServer) -> None:
    for token in ("not-a-real-token", ""):
        client = bao.client(token)
        with pytest.raises(hvac.exceptions.Forbidden) as info:
            client.auth.token.renew_self()
        assert info.value.errors == ["permission denied"]  # differs from ACL_DENIED
        with pytest.raises(hvac.exceptions.Forbidden):
            _read(client, ALICE_PATH)


def test_revoked_token_is_403(bao: OpenBaoServer, alice: hvac.Client, alice_token: str) -> None:
    bao.client().auth.token.revoke(alice_token)
    with pytest.raises(hvac.exceptions.Forbidden) as info:
        alice.auth.token.lookup_self()
    assert info.value.errors == ["permission denied"]


def test_sealed_server_is_503_vault_down(bao: OpenBaoServer, alice: hvac.Client) -> None:
    alice.secrets.kv.v2.create_or_update_secret(ALICE_PATH, {"v": 1}, cas=0)
    bao.seal()
    assert bao.client().sys.is_sealed() is True
    health = bao.client().sys.read_health_status(method="GET")
    assert health.status_code == 503  # hvac returns the Response, no raise
    for call in (lambda: _read(alice, ALICE_PATH), alice.auth.token.renew_self):
        with pytest.raises(hvac.exceptions.VaultDown) as info:
            call()
        assert info.value.errors == [SEALED]

    bao.unseal()
    assert _read(alice, ALICE_PATH)["data"]["data"] == {"v": 1}  # token survives


def test_connection_refused_is_requests_connection_error(tmp_path: Path) -> None:
    server = OpenBaoServer(tmp_path / "bao").start()
    client = server.client()
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        client.auth.token.lookup_self()
    assert not isinstance(info.value, hvac.exceptions.VaultError)

    port = free_loopback_port()
    never = hvac.Client(url=f"http://127.0.0.1:{port}", token="x", timeout=2)
    never.session.trust_env = False
    with pytest.raises(requests.exceptions.ConnectionError):
        never.sys.read_health_status(method="GET")


# ------------------------------------------------------------------ audit


def test_audit_log_counts_requests_exactly(bao: OpenBaoServer, alice: hvac.Client) -> None:
    alice.secrets.kv.v2.create_or_update_secret(ALICE_PATH, {"v": 1}, cas=0)

    mark = bao.audit_mark()
    alice.auth.token.renew_self()
    _read(alice, ALICE_PATH)
    seen = [(r["path"], r["operation"], r["display_name"]) for r in bao.requests_since(mark)]
    assert seen == [
        ("auth/token/renew-self", "update", "token-alice"),
        (f"secret/data/{ALICE_PATH}", "read", "token-alice"),
    ]

    mark = bao.audit_mark()
    with pytest.raises(hvac.exceptions.Forbidden):
        _read(alice, BOB_PATH)
    with pytest.raises(hvac.exceptions.Forbidden):
        bao.client("not-a-real-token").auth.token.renew_self()
    bao.client().sys.read_health_status(method="GET")  # unauthenticated: not audited
    entries = bao.requests_since(mark)
    assert [(r["path"], r["display_name"], r["error"]) for r in entries] == [
        (f"secret/data/{BOB_PATH}", "token-alice", ACL_DENIED),
        ("auth/token/renew-self", None, "permission denied"),
    ]
    assert entries[0]["policies"] == ["claude-user-alice"]
    assert entries[0]["raw"]["auth"]["metadata"] == {"user": "alice"}
    assert entries[0]["raw"]["auth"]["client_token"].startswith("hmac-sha256:")
    assert bao.requests_since(bao.audit_mark()) == []
