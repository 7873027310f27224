"""The ``vault`` backend (``plugins/backend_vault``) against a real OpenBao dev server.

No hvac mock anywhere: every test talks HTTP to ``bao server -dev`` on loopback (see
``tests/support/openbao.py``), counts the plugin's requests with the server's audit log, and reads
what really landed in KV v2 with the root client. Whole-cycle tests use the real
:class:`~claude_auth_sync.plugins.restore_credentials_file.credentials_file.CredentialsFile` on a temporary config dir and a
:class:`~claude_auth_sync.testing.FakeProbe` whose answer depends on the file's access token.

The few 5xx/429/redirect answers the real server cannot be made to give on demand come from a tiny
HTTP server on loopback (a stand-in for a load balancer or a standby node), still spoken to by hvac.
HA behaviour (standby reads, a leader change) is shown on a real three-node integrated-storage cluster.

Vault tokens never appear as assertion operands (pytest prints those on failure): every check that
involves one is computed into a bool first.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from claude_auth_sync.plugins.restore_credentials_file.credentials_file import CredentialsFile
from claude_auth_sync.login import merge_oauth
from claude_auth_sync.cycle import HealthCycle
from claude_auth_sync.errors import CasError, ConfigurationError, BackendConflict, BackendRefused, BackendUnavailable
from claude_auth_sync.hookspecs import PluginContext
from claude_auth_sync.model import Action, ExitCode, LocalLogin, Status, StatusEvent, UserIdentity
from claude_auth_sync.plugins import backend_vault
from claude_auth_sync.plugins.backend_vault.policy import policy_name, render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.plugins.backend_vault.store import VaultBackend
from claude_auth_sync.settings import load_settings
from claude_auth_sync.testing import FakeProbe, oauth_object
from tests.support.processes import stop_process
from tests.support.openbao import OpenBaoServer, _die_with_parent, find_bao_binary, free_loopback_port

pytestmark = pytest.mark.real

PERIOD_S = 768 * 3600
PREFIX = "workstation/claude-users"
MCP = {"github": {"accessToken": "mcp-secret-access-0f9e", "refreshToken": "mcp-secret-refresh-77aa"}}
MCP_SECRETS = ("mcp-secret-access-0f9e", "mcp-secret-refresh-77aa")
_names = itertools.count()


# ----------------------------------------------------------------------------- fixtures/helpers


@pytest.fixture
def fresh_bao(tmp_path: Path) -> Iterator[Callable[[], OpenBaoServer]]:
    """Factory of throw-away servers, for tests that seal or stop theirs (0.2 s each)."""
    started: list[OpenBaoServer] = []

    def make() -> OpenBaoServer:
        server = OpenBaoServer(tmp_path / f"bao-{len(started)}").start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def new_user(prefix: str = "u") -> str:
    return f"{prefix}{next(_names)}"


def provision(server: OpenBaoServer, user: str, *, policies: list[str] | None = None,
              no_default_policy: bool = True) -> str:
    """What the root provisioner does: apply render_policy, mint the orphan periodic token."""
    server.write_policy(policy_name(user), render_policy(user, VaultSettings()))
    return server.create_periodic_token(
        policies if policies is not None else [policy_name(user)], period="768h",
        display_name=f"claude-auth-sync-{user}", no_default_policy=no_default_policy,
    )


def write_token_file(directory: Path, token: str, mode: int = 0o600) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "vault-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, mode)
    return path


def make_store(addr: str, user: str, token_file: Path, **settings: Any) -> VaultBackend:
    return VaultBackend(VaultSettings(addr=addr, **settings), user, os.getuid(), token_file)


def setup_user(server: OpenBaoServer, tmp_path: Path, user: str | None = None) -> tuple[str, str, VaultBackend]:
    user = user or new_user()
    token = provision(server, user)
    store = make_store(server.addr, user, write_token_file(tmp_path / "cfg" / user, token))
    return user, token, store


def contains_any(obj: Any, *secrets: str) -> bool:
    text = json.dumps(obj, default=str)
    return any(secret in text for secret in secrets)


def vault_requests(server: OpenBaoServer, mark: int) -> list[tuple[str, str]]:
    return [(r["operation"], r["path"]) for r in server.requests_since(mark)]


def root_read(server: OpenBaoServer, user: str, version: int | None = None) -> dict[str, Any]:
    answer = server.client().secrets.kv.v2.read_secret_version(
        path=f"{PREFIX}/{user}", version=version, raise_on_deleted_version=True)
    data: dict[str, Any] = answer["data"]["data"]
    return data


def root_metadata(server: OpenBaoServer, user: str) -> dict[str, Any]:
    meta: dict[str, Any] = server.client().secrets.kv.v2.read_secret_metadata(path=f"{PREFIX}/{user}")["data"]
    return meta


class Login:
    """A real credentials file in a temporary Claude config dir, plus a probe that accepts only
    access tokens starting with ``live-`` (so a restore of a good copy really fixes the login)."""

    def __init__(self, root: Path, oauth: dict[str, Any]) -> None:
        self.dir = root / "claude"
        self.dir.mkdir(mode=0o700)
        self.path = self.dir / ".credentials.json"
        self.set(oauth)
        self.file = CredentialsFile(self.dir, uid=os.getuid(), lock_wait_timeout_s=5)

    def set(self, oauth: dict[str, Any]) -> None:
        document = {"claudeAiOauth": oauth, "mcpOAuth": MCP}
        self.path.write_text(json.dumps(document, indent=2))
        os.chmod(self.path, 0o600)

    def raw(self) -> bytes:
        return self.path.read_bytes()

    def refresh_to(self, oauth: dict[str, Any]) -> None:
        """What the CLI does when it refreshes: rewrite claudeAiOauth, keep everything else."""
        self.path.write_bytes(merge_oauth(self.raw(), oauth))

    def probe(self, on_run: Callable[[int], None] | None = None) -> FakeProbe:
        def accept(login: LocalLogin) -> bool:
            return login.oauth is not None and str(login.oauth.get("accessToken", "")).startswith("live-")

        return FakeProbe(accept=accept, restorer=self.file, on_run=on_run)


def cycle(user: str, store: VaultBackend, login: Login, probe: FakeProbe | None = None) -> StatusEvent:
    return HealthCycle(user=user, backend=store, probe=probe or login.probe(), restorer=login.file).run()


# ----------------------------------------------------------------------------- the whole cycle


def test_whole_cycle_backup_unchanged_restore_rollback(bao: OpenBaoServer, tmp_path: Path) -> None:
    user, _token, store = setup_user(bao, tmp_path, "alice")
    first = oauth_object("live-access-1", "refresh-1")
    login = Login(tmp_path, first)
    counts: dict[str, int] = {}

    # 1. First backup: 404 on read is normal; created with cas=0 -> version 1.
    before = login.raw()
    mark = bao.audit_mark()
    event = cycle(user, store, login)
    calls = vault_requests(bao, mark)
    counts["backup"] = len(calls)
    assert (event.status, event.exit_code, event.action) == (Status.OK, ExitCode.OK, Action.BACKUP), event.details
    assert event.details["backup_version"] == 1
    assert event.details["store_ttl_s"] == PERIOD_S
    assert calls == [("update", "auth/token/renew-self"), ("read", f"secret/data/{PREFIX}/alice"),
                     ("create", f"secret/data/{PREFIX}/alice")]
    assert login.raw() == before  # a backup never touches the file
    assert root_read(bao, user) == {"claudeAiOauth": first}
    assert root_metadata(bao, user)["current_version"] == 1

    # 2. Healthy and unchanged: renew-self + read, and no new version.
    mark = bao.audit_mark()
    event = cycle(user, store, login)
    calls = vault_requests(bao, mark)
    counts["unchanged"] = len(calls)
    assert (event.status, event.action) == (Status.OK, Action.NONE)
    assert calls == [("update", "auth/token/renew-self"), ("read", f"secret/data/{PREFIX}/alice")]
    assert len(calls) <= 2
    meta = root_metadata(bao, user)
    assert meta["current_version"] == 1 and len(meta["versions"]) == 1

    # 3. The local login dies (revoked access token): restore the latest copy, retry, and the
    #    object the CLI refreshed during the retry is stored as the new version.
    dead = oauth_object("dead-access", "dead-refresh")
    login.set(dead)
    dead_raw = login.raw()
    refreshed = oauth_object("live-access-2", "refresh-2", expires_at_ms=4_102_444_900_000)

    def cli_refreshes(index: int) -> None:
        if index == 1:  # the retry, after the restore: the CLI uses the restored refresh token
            assert json.loads(login.raw())["claudeAiOauth"] == first
            login.refresh_to(refreshed)

    mark = bao.audit_mark()
    event = cycle(user, store, login, login.probe(cli_refreshes))
    calls = vault_requests(bao, mark)
    counts["restore"] = len(calls)
    assert (event.status, event.exit_code, event.action) == (Status.OK, ExitCode.OK, Action.RESTORE), event.details
    assert calls == [("update", "auth/token/renew-self"), ("read", f"secret/data/{PREFIX}/alice"),
                     ("update", f"secret/data/{PREFIX}/alice")]
    assert login.raw() == merge_oauth(merge_oauth(dead_raw, first), refreshed)
    assert json.loads(login.raw())["mcpOAuth"] == MCP
    assert (login.dir / ".credentials.json.pre-restore").read_bytes() == dead_raw
    assert root_read(bao, user) == {"claudeAiOauth": refreshed}
    assert root_metadata(bao, user)["current_version"] == 2
    assert isinstance(root_read(bao, user)["claudeAiOauth"]["expiresAt"], int)

    # 4. Both the local and the latest stored copy fail: the file is put back exactly, FAIL (1).
    login.set(oauth_object("dead-again", "dead-refresh-2"))
    before = login.raw()

    def revoked_everywhere(login_state: LocalLogin) -> bool:
        return False

    mark = bao.audit_mark()
    event = cycle(user, store, login, FakeProbe(accept=revoked_everywhere, restorer=login.file))
    calls = vault_requests(bao, mark)
    counts["rollback"] = len(calls)
    assert (event.status, event.exit_code, event.action) == (Status.FAIL, ExitCode.FAIL, Action.ROLLBACK)
    assert login.raw() == before
    assert root_metadata(bao, user)["current_version"] == 2

    # No key but claudeAiOauth ever reached Vault, in any version or any audited write.
    for version in (1, 2):
        data = root_read(bao, user, version)
        assert set(data) == {"claudeAiOauth"}
        assert not contains_any(data, *MCP_SECRETS)
    writes = [r for r in bao.requests_since(0) if r["path"] == f"secret/data/{PREFIX}/alice" and r["operation"] in ("create", "update")]
    assert len(writes) == 2
    for entry in writes:
        assert set(entry["raw"]["request"]["data"]["data"]) == {"claudeAiOauth"}

    print(f"\nVault requests per cycle (audit log): {counts}")
    assert counts == {"backup": 3, "unchanged": 2, "restore": 3, "rollback": 2}


def test_damaged_and_deleted_latest_versions_are_healed(bao: OpenBaoServer, tmp_path: Path) -> None:
    user, _token, store = setup_user(bao, tmp_path)
    root = bao.client()
    path = f"{PREFIX}/{user}"
    login = Login(tmp_path, oauth_object("live-a", "r"))

    # Someone stored something that is not ours: never restored, overwritten by the next backup.
    root.secrets.kv.v2.create_or_update_secret(path=path, secret={"note": "not an oauth object"}, cas=0)
    copy = store.read_latest()
    assert copy is not None and dict(copy.oauth) == {} and copy.version == 1
    event = cycle(user, store, login)
    assert (event.status, event.action, event.details["backup_version"]) == (Status.OK, Action.BACKUP, 2)
    assert root_read(bao, user) == {"claudeAiOauth": oauth_object("live-a", "r")}

    # An administrator soft-deleted the latest version: a 404 for the reader, and the next
    # backup must name the deleted version in check-and-set (cas=0 would conflict forever).
    root.secrets.kv.v2.delete_latest_version_of_secret(path=path)
    assert store.read_latest() is None
    event = cycle(user, store, login)
    assert (event.status, event.action, event.details["backup_version"]) == (Status.OK, Action.BACKUP, 3)
    assert cycle(user, store, login).action == Action.NONE


def test_check_and_set_never_overwrites_a_concurrent_writer(bao: OpenBaoServer, tmp_path: Path) -> None:
    user, _token, store = setup_user(bao, tmp_path)
    assert store.read_latest() is None
    assert store.write(oauth_object("live-1", "r1"), expected_version=None) == 1
    seen = store.read_latest()
    assert seen is not None and seen.version == 1
    # another agent (or an admin) writes version 2 in between
    bao.client().secrets.kv.v2.create_or_update_secret(
        path=f"{PREFIX}/{user}", secret={"claudeAiOauth": oauth_object("live-2", "r2")}, cas=1)
    with pytest.raises(BackendConflict) as conflict:
        store.write(oauth_object("live-3", "r3"), expected_version=seen.version)
    assert conflict.value.exit_code == ExitCode.TEMPFAIL
    with pytest.raises(BackendConflict):
        store.write(oauth_object("live-3", "r3"), expected_version=None)  # "must not exist yet"
    assert root_read(bao, user) == {"claudeAiOauth": oauth_object("live-2", "r2")}
    # Never a whole document, never a blanked object.
    for bad in ({"claudeAiOauth": oauth_object("a", "b"), "mcpOAuth": MCP}, oauth_object("", "r"), oauth_object("a", "")):
        with pytest.raises(BackendRefused):
            store.write(bad, expected_version=2)
    assert root_metadata(bao, user)["current_version"] == 2


# ----------------------------------------------------------------------------- the token


def test_vault_token_env_and_home_vault_token_are_ignored(
    bao: OpenBaoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_user("alice")
    token = provision(bao, user)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / ".vault-token").write_text(bao.root_token)
    os.chmod(home / ".vault-token", 0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    token_file = write_token_file(tmp_path / "cfg", token)
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_VAULT__TOKEN_FILE", str(token_file))

    # Built the way the runner builds it: settings loader (VAULT_ADDR -> vault.addr) + the plugin's factory.
    identity = UserIdentity(name=user, uid=os.getuid(), gid=os.getgid(), home=home)
    settings = load_settings(backend_vault.cas_settings_sections(), identity, system_file=tmp_path / "none.toml")
    assert settings.section("vault").addr == bao.addr
    store = backend_vault.cas_backends()[0].factory(PluginContext(settings=settings, user=identity))

    mark = bao.audit_mark()
    health = store.renew()  # the root token would have been refused (vault_token_root)
    assert health.ttl_s == PERIOD_S
    assert store.read_latest() is None
    seen = bao.requests_since(mark)
    assert [r["display_name"] for r in seen] == [f"token-claude-auth-sync-{user}"] * 2
    assert all(r["policies"] == [policy_name(user)] for r in seen)
    uses_file_token = store.client().token == token
    assert uses_file_token

    # No token file: refused (78), no fallback to VAULT_TOKEN or ~/.vault-token, no request made.
    token_file.unlink()
    fresh = backend_vault.cas_backends()[0].factory(PluginContext(settings=settings, user=identity))
    mark = bao.audit_mark()
    with pytest.raises(BackendRefused) as refused:
        fresh.renew()
    assert (refused.value.reason, refused.value.exit_code) == ("vault_token_missing", ExitCode.CONFIG)
    assert "rerun the root provisioner" in (refused.value.remedy or "")
    assert bao.requests_since(mark) == []


def test_token_file_too_open_is_refused_before_any_request(bao: OpenBaoServer, tmp_path: Path) -> None:
    user = new_user()
    token = provision(bao, user)
    store = make_store(bao.addr, user, write_token_file(tmp_path / "cfg", token, mode=0o644))
    login = Login(tmp_path, oauth_object("live-a", "r"))
    before = login.raw()
    mark = bao.audit_mark()
    event = cycle(user, store, login)
    assert (event.status, event.exit_code, event.reason) == (Status.FAIL, ExitCode.CONFIG, "vault_token_mode")
    assert "0644" in str(event.details["error"])
    assert bao.requests_since(mark) == []
    assert login.raw() == before
    with pytest.raises(BackendRefused) as refused:
        store.renew()
    assert refused.value.remedy and "chmod 600" in refused.value.remedy


def test_renew_self_restores_the_period_and_reports_ttl(bao: OpenBaoServer, tmp_path: Path) -> None:
    user, token, store = setup_user(bao, tmp_path)
    time.sleep(1.1)
    aged = bao.client().auth.token.lookup(token)["data"]["ttl"]
    assert aged < PERIOD_S
    mark = bao.audit_mark()
    health = store.renew()
    assert vault_requests(bao, mark) == [("update", "auth/token/renew-self")]
    assert health.ttl_s == PERIOD_S
    assert health.details["policies"] == [policy_name(user)] and health.details["renewable"] is True
    assert bao.client().auth.token.lookup(token)["data"]["ttl"] >= PERIOD_S - 1


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("extra_policy", "vault_token_drift"), ("default_policy", "vault_token_drift"), ("root", "vault_token_root")],
)
def test_drifted_or_root_token_is_refused(bao: OpenBaoServer, tmp_path: Path, kind: str, reason: str) -> None:
    user = new_user()
    bao.write_policy("some-other-policy", 'path "secret/data/*" { capabilities = ["read"] }')
    provision(bao, user)
    if kind == "extra_policy":
        token = bao.create_periodic_token([policy_name(user), "some-other-policy"], display_name=user)
    elif kind == "default_policy":
        token = bao.create_periodic_token([policy_name(user)], display_name=user, no_default_policy=False)
    else:
        token = bao.create_periodic_token(["root"], display_name=user)
    store = make_store(bao.addr, user, write_token_file(tmp_path / "cfg", token))
    login = Login(tmp_path, oauth_object("live-a", "r"))
    before = login.raw()
    probe = login.probe()
    mark = bao.audit_mark()
    event = cycle(user, store, login, probe)
    assert (event.status, event.exit_code, event.reason) == (Status.FAIL, ExitCode.CONFIG, reason)
    assert vault_requests(bao, mark) == [("update", "auth/token/renew-self")]  # nothing read, nothing written
    assert probe.runs == 0 and login.raw() == before
    facts = store.describe()
    assert facts["token"]["drifted"] is True
    leaked = contains_any(facts, token, bao.root_token)
    assert not leaked


def test_isolation_alice_cannot_touch_bob(bao: OpenBaoServer, tmp_path: Path) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    alice_token, _bob_token = provision(bao, alice), provision(bao, bob)
    root = bao.client()
    root.secrets.kv.v2.create_or_update_secret(path=f"{PREFIX}/{bob}", secret={"claudeAiOauth": oauth_object("bob-a", "bob-r")})
    alice_file = write_token_file(tmp_path / "cfg", alice_token)

    # The plugin configured for bob's path but holding alice's token.
    store = make_store(bao.addr, bob, alice_file)
    mark = bao.audit_mark()
    for attempt in (store.read_latest, lambda: store.write(oauth_object("x", "y"), expected_version=1)):
        with pytest.raises(BackendRefused) as refused:
            attempt()
        assert (refused.value.reason, refused.value.exit_code) == ("vault_forbidden", ExitCode.CONFIG)
        assert "(403)" in refused.value.message
        assert "rerun the root provisioner" in (refused.value.remedy or "")
    with pytest.raises(BackendRefused) as drift:
        store.renew()  # alice's token is not what bob's agent must carry
    assert drift.value.reason == "vault_token_drift"
    denied = bao.requests_since(mark)
    assert [(r["display_name"], r["error"] is not None and "permission denied" in r["error"]) for r in denied[:2]] == [
        (f"token-claude-auth-sync-{alice}", True)] * 2
    assert root_read(bao, bob) == {"claudeAiOauth": oauth_object("bob-a", "bob-r")}

    # The rendered policy itself: alice's own path works; nothing else does, not even alice2.
    own = bao.client(alice_token)
    kv = own.secrets.kv.v2
    kv.create_or_update_secret(path=f"{PREFIX}/{alice}", secret={"claudeAiOauth": oauth_object("a", "b")}, cas=0)
    kv.create_or_update_secret(path=f"{PREFIX}/{alice}", secret={"claudeAiOauth": oauth_object("a", "c")}, cas=1)
    assert kv.read_secret_version(path=f"{PREFIX}/{alice}", raise_on_deleted_version=True)["data"]["metadata"]["version"] == 2
    assert kv.read_secret_metadata(path=f"{PREFIX}/{alice}")["data"]["current_version"] == 2
    import hvac.exceptions

    forbidden: list[tuple[str, Callable[[], Any]]] = [
        ("read bob", lambda: kv.read_secret_version(path=f"{PREFIX}/{bob}", raise_on_deleted_version=True)),
        ("write bob", lambda: kv.create_or_update_secret(path=f"{PREFIX}/{bob}", secret={"x": 1})),
        ("bob metadata", lambda: kv.read_secret_metadata(path=f"{PREFIX}/{bob}")),
        ("glob neighbour", lambda: kv.create_or_update_secret(path=f"{PREFIX}/{alice}2", secret={"x": 1})),
        ("delete own", lambda: kv.delete_latest_version_of_secret(path=f"{PREFIX}/{alice}")),
        ("destroy own", lambda: kv.destroy_secret_versions(path=f"{PREFIX}/{alice}", versions=[1])),
        ("metadata write", lambda: kv.update_metadata(path=f"{PREFIX}/{alice}", max_versions=1)),
        ("metadata delete", lambda: kv.delete_metadata_and_all_versions(path=f"{PREFIX}/{alice}")),
        ("list users", lambda: kv.list_secrets(path=PREFIX)),
        ("policy read", lambda: own.sys.read_policy(name=policy_name(alice))),
        ("create token", lambda: own.auth.token.create(policies=[policy_name(alice)])),
    ]
    allowed = []
    for label, call in forbidden:
        try:
            call()
        except hvac.exceptions.Forbidden:
            continue
        allowed.append(label)
    assert allowed == []


def test_revoked_token_is_refused_with_the_provisioner_remedy(bao: OpenBaoServer, tmp_path: Path) -> None:
    user, token, store = setup_user(bao, tmp_path)
    bao.client().auth.token.revoke(token)
    login = Login(tmp_path, oauth_object("live-a", "r"))
    event = cycle(user, store, login)
    assert (event.status, event.exit_code, event.reason) == (Status.FAIL, ExitCode.CONFIG, "vault_forbidden")
    with pytest.raises(BackendRefused) as refused:
        store.renew()
    assert "rerun the root provisioner" in (refused.value.remedy or "")
    assert "403" in refused.value.message


# ----------------------------------------------------------------------------- describe()


def test_describe_reports_facts_never_values(bao: OpenBaoServer, tmp_path: Path) -> None:
    user, token, store = setup_user(bao, tmp_path)
    facts = store.describe()
    assert facts["secret"] == {"exists": False}
    login = Login(tmp_path, oauth_object("live-access-desc", "refresh-desc"))
    cycle(user, store, login)
    login.refresh_to(oauth_object("live-access-desc2", "refresh-desc2"))
    cycle(user, store, login)

    mark = bao.audit_mark()
    facts = store.describe()
    assert vault_requests(bao, mark) == [("read", "auth/token/lookup-self"), ("read", f"secret/metadata/{PREFIX}/{user}")]
    tok = facts["token"]
    assert tok["period_s"] == PERIOD_S and 0 < tok["ttl_s"] <= PERIOD_S
    assert tok["policies"] == [policy_name(user)] and tok["renewable"] is True and tok["drifted"] is False
    assert tok["orphan"] is True and tok["display_name"] == f"token-claude-auth-sync-{user}"
    secret = facts["secret"]
    assert secret["exists"] is True and secret["current_version"] == 2 and secret["versions_kept"] == 2
    assert secret["updated_time"]
    assert facts["token_file"]["mode"] == "0600" and facts["path"] == f"secret/{PREFIX}/{user}"
    dumped = json.dumps(facts)
    leaked = [s for s in ("live-access-desc", "refresh-desc", *MCP_SECRETS) if s in dumped]
    assert leaked == []
    has_vault_token = token in dumped or bao.root_token in dumped
    assert not has_vault_token


# ----------------------------------------------------------------------------- failures


def test_sealed_vault_is_a_warning_and_touches_nothing(fresh_bao: Callable[[], OpenBaoServer], tmp_path: Path) -> None:
    server = fresh_bao()
    user, _token, store = setup_user(server, tmp_path)
    login = Login(tmp_path, oauth_object("live-a", "r"))
    assert cycle(user, store, login).action == Action.BACKUP
    login.set(oauth_object("dead", "dead"))
    before = login.raw()
    server.seal()
    with pytest.raises(BackendUnavailable) as unavailable:
        store.renew()
    assert (unavailable.value.reason, unavailable.value.exit_code) == ("vault_sealed", ExitCode.TEMPFAIL)
    probe = login.probe()
    event = cycle(user, store, login, probe)
    assert (event.status, event.exit_code, event.reason) == (Status.WARN, ExitCode.TEMPFAIL, "vault_sealed")
    # Issue 13 item 7: still probed, so the status says the login fails; nothing is touched.
    assert login.raw() == before and probe.runs == 1 and event.details["probe_outcome"] == "auth_failed"
    server.unseal()
    deadline = time.monotonic() + 10
    while True:
        try:
            store.renew()
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert cycle(user, store, login).action == Action.RESTORE


def test_vault_stopped_mid_cycle_loses_nothing(fresh_bao: Callable[[], OpenBaoServer], tmp_path: Path) -> None:
    # (a) healthy login; Vault goes away after the probe, before the backup comparison.
    server = fresh_bao()
    user, _token, store = setup_user(server, tmp_path / "a")
    login = Login(tmp_path / "a", oauth_object("live-a", "r"))
    assert cycle(user, store, login).action == Action.BACKUP
    login.refresh_to(oauth_object("live-b", "r2"))  # something to back up
    before = login.raw()
    event = cycle(user, store, login, login.probe(lambda index: server.stop()))
    assert (event.status, event.exit_code, event.reason) == (Status.WARN, ExitCode.TEMPFAIL, "vault_unreachable")
    assert login.raw() == before

    # (b) Vault goes away before the cycle: the login is probed (the status says it works),
    # nothing is touched.
    probe = login.probe()
    event = cycle(user, store, login, probe)
    assert (event.status, event.exit_code, event.reason) == (Status.WARN, ExitCode.TEMPFAIL, "vault_unreachable")
    assert login.raw() == before and probe.runs == 1 and event.details["probe_outcome"] == "authenticated"

    # (c) dead login restored from Vault; Vault goes away during the retry, before the refreshed
    #     object is stored: WARN, and the working (restored, then refreshed) login stays in place.
    server = fresh_bao()
    user, _token, store = setup_user(server, tmp_path / "c")
    good = oauth_object("live-good", "r-good")
    login = Login(tmp_path / "c", good)
    assert cycle(user, store, login).action == Action.BACKUP
    login.set(oauth_object("dead", "dead"))
    dead_raw = login.raw()
    refreshed = oauth_object("live-refreshed", "r-refreshed")

    def stop_then_refresh(index: int) -> None:
        if index == 1:
            server.stop()
            login.refresh_to(refreshed)

    event = cycle(user, store, login, login.probe(stop_then_refresh))
    assert (event.status, event.exit_code, event.reason) == (Status.WARN, ExitCode.TEMPFAIL, "vault_unreachable")
    assert event.details["retry_outcome"] == "authenticated"
    assert login.raw() == merge_oauth(merge_oauth(dead_raw, good), refreshed)
    assert (login.dir / ".credentials.json.pre-restore").read_bytes() == dead_raw


class _FakeVault(http.server.ThreadingHTTPServer):
    """Loopback HTTP server answering every request with ``respond(handler)``."""

    daemon_threads = True

    def __init__(self, respond: Callable[[http.server.BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]) -> None:
        self.respond = respond
        self.hits: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.hits.append((self.command, self.path))
                status, headers, body = outer.respond(self)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_LIST = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.addr = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def __enter__(self) -> _FakeVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def _json(status: int, body: Any) -> Callable[[Any], tuple[int, dict[str, str], bytes]]:
    return lambda handler: (status, {"Content-Type": "application/json"}, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("respond", "reason"),
    [
        (_json(500, {"errors": ["internal error"]}), "vault_unavailable"),
        (_json(502, {"errors": ["bad gateway"]}), "vault_unavailable"),
        # what a standby answers during a leader election
        (_json(503, {"errors": ["local node not active but active cluster node not found"]}), "vault_unavailable"),
        (_json(503, {"errors": ["Vault is sealed"]}), "vault_sealed"),
        (_json(504, {"errors": ["gateway timeout"]}), "vault_unavailable"),
        (_json(429, {"errors": ["request path rate limited"]}), "vault_rate_limited"),
        (lambda h: (200, {"Content-Type": "text/html"}, b"<html>captive portal</html>"), "vault_unavailable"),
        (lambda h: (307, {}, b""), "vault_unavailable"),  # redirect without a Location
        (lambda h: (503, {}, b""), "vault_unavailable"),  # a proxy or load balancer with no backend
    ],
    ids=["500", "502", "503-election", "503-sealed", "504", "429", "200-html", "307-no-location", "503-empty"],
)
def test_5xx_and_odd_answers_are_warnings(tmp_path: Path, respond: Any, reason: str) -> None:
    with _FakeVault(respond) as fake:
        store = make_store(fake.addr, "carol", write_token_file(tmp_path, "s.not-a-real-token-000"))
        for call in (store.renew, store.read_latest):
            with pytest.raises(BackendUnavailable) as err:
                call()
            assert (err.value.reason, err.value.exit_code) == (reason, ExitCode.TEMPFAIL)
            assert "not-a-real-token" not in str(err.value)


def test_unreachable_vault_is_a_warning(tmp_path: Path) -> None:
    store = make_store(f"http://127.0.0.1:{free_loopback_port()}", "carol", write_token_file(tmp_path, "s.x"), timeout=2)
    with pytest.raises(BackendUnavailable) as err:
        store.renew()
    assert (err.value.reason, err.value.exit_code) == ("vault_unreachable", ExitCode.TEMPFAIL)


def test_standby_redirect_is_followed_only_to_a_safe_address(bao: OpenBaoServer, tmp_path: Path) -> None:
    """A standby that cannot forward answers 307 to the active node's api_addr; hvac follows it
    (allow_redirects=True) with the token header, method and body intact."""
    user, _token, _ = setup_user(bao, tmp_path)
    token_file = tmp_path / "cfg" / user / "vault-token"

    def to_active(handler: Any) -> tuple[int, dict[str, str], bytes]:
        return 307, {"Location": bao.addr + handler.path}, b""

    with _FakeVault(to_active) as standby:
        store = make_store(standby.addr, user, token_file)
        login = Login(tmp_path, oauth_object("live-ha", "r-ha"))
        mark = bao.audit_mark()
        first = cycle(user, store, login)
        second = cycle(user, store, login)
        assert (first.action, second.action) == (Action.BACKUP, Action.NONE)
        assert [m for m, _ in standby.hits] == ["POST", "GET", "POST", "POST", "GET"]
        assert len(vault_requests(bao, mark)) == 5
        assert root_read(bao, user) == {"claudeAiOauth": oauth_object("live-ha", "r-ha")}

    # A redirect that would carry the token over plain http to another host is refused before it is followed.
    with _FakeVault(lambda h: (307, {"Location": "http://203.0.113.7:8200" + h.path}, b"")) as rogue:
        store = make_store(rogue.addr, user, token_file, timeout=2)
        with pytest.raises(BackendRefused) as refused:
            store.renew()
        assert (refused.value.reason, refused.value.exit_code) == ("vault_insecure_redirect", ExitCode.CONFIG)

    # Targets that name the real server to one URL parser and something else to the other, or carry
    # a password: refused before the token is sent anywhere, and the message quotes none of them.
    password = "Redirect-PASSWORD-51d0"
    real = bao.addr.split("//", 1)[1]
    for target in (f"http://127.0.0.2:{free_loopback_port()}\\@{real}", f"http://agent:{password}@{real}",
                   f"http://{real}\\@127.0.0.2:{free_loopback_port()}", f"//agent:{password}@{real}"):
        with _FakeVault(lambda h, target=target: (307, {"Location": target + h.path}, b"")) as rogue:
            store = make_store(rogue.addr, user, token_file, timeout=2)
            mark = bao.audit_mark()
            with pytest.raises(BackendRefused) as refused:
                store.renew()
            assert (refused.value.reason, refused.value.exit_code) == ("vault_insecure_redirect", ExitCode.CONFIG)
            assert password not in str(refused.value) and "agent:" not in str(refused.value)
            assert len(rogue.hits) == 1 and vault_requests(bao, mark) == []


# ----------------------------------------------------------------------------- HA (integrated storage)


class RaftCluster:
    """Three ``bao server`` nodes with integrated storage (raft) on loopback: HA, standbys that
    serve reads from their own replica (OpenBao 2.7+), a leader that can be killed.

    The root token and unseal key come back from ``sys/init`` into this process only; servers
    get an allow-listed environment, their logs hold neither.
    """

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = workdir
        self.size = size
        self.nodes: list[dict[str, Any]] = []
        self.root_token = ""
        self._key = ""

    def __enter__(self) -> RaftCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        audit = self.workdir / "audit.log"  # one path for every node: audit config must be identical
        for i in range(self.size):
            node_dir = self.workdir / f"n{i}"
            (node_dir / "raft").mkdir(parents=True)
            api, cluster = free_loopback_port(), free_loopback_port()
            (node_dir / "config.hcl").write_text(
                f'storage "raft" {{\n  path = "{node_dir / "raft"}"\n  node_id = "n{i}"\n  performance_multiplier = 1\n}}\n'
                f'listener "tcp" {{\n  address = "127.0.0.1:{api}"\n  cluster_address = "127.0.0.1:{cluster}"\n  tls_disable = true\n}}\n'
                f'api_addr = "http://127.0.0.1:{api}"\ncluster_addr = "https://127.0.0.1:{cluster}"\ndisable_mlock = true\n'
                f'audit "file" "test-file" {{\n  options {{\n    file_path = "{audit}"\n  }}\n}}\n'
            )
            log = open(node_dir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
            proc = subprocess.Popen(
                [find_bao_binary(), "server", f"-config={node_dir / 'config.hcl'}"],
                env={"PATH": os.environ.get("PATH", os.defpath), "HOME": str(node_dir)},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=node_dir,
                preexec_fn=_die_with_parent,  # a killed pytest leaves no server behind
            )
            self.nodes.append({"addr": f"http://127.0.0.1:{api}", "proc": proc, "log": log})
        self._wait(lambda: all(self.health(i) is not None for i in range(self.size)), "nodes answering")
        init = self.client(0, token=None, timeout=60).sys.initialize(secret_shares=1, secret_threshold=1)
        self.root_token, self._key = init["root_token"], init["keys"][0]
        self.client(0, token=None).sys.submit_unseal_key(self._key)
        self._wait(lambda: self.health(0) == 200, "node 0 active")
        root = self.client(0)
        # promote joined nodes to voters quickly (default stabilization is 10 s)
        root.adapter.post("/v1/sys/storage/raft/autopilot/configuration", json={"server_stabilization_time": "1s"})
        root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        for i in range(1, self.size):
            self.client(i, token=None).sys.join_raft_cluster(leader_api_addr=self.nodes[0]["addr"])
            self.client(i, token=None).sys.submit_unseal_key(self._key)
        self._wait(lambda: all(self.health(i) == 429 for i in range(1, self.size)), "standbys")

    def wait_for_voters(self) -> None:
        def voters() -> int:
            servers = self.client(self.leader()).sys.read_raft_config()["data"]["config"]["servers"]
            return sum(1 for server in servers if server.get("voter"))

        self._wait(lambda: voters() == self.size, "all nodes voters", timeout=60)

    def health(self, i: int) -> int | None:
        try:
            return requests.get(self.nodes[i]["addr"] + "/v1/sys/health", timeout=2).status_code
        except requests.RequestException:
            return None

    def leader(self) -> int:
        return next(i for i in range(self.size) if self.health(i) == 200)

    def client(self, i: int, token: str | None | bool = True, timeout: int = 10) -> Any:
        """``token=True``: the root token; ``None``: no token at all (hvac is given ``""``, because
        with ``None`` it falls back to ``VAULT_TOKEN`` or the tester's ``~/.vault-token`` and sends that)."""
        import hvac

        session = requests.Session()
        session.trust_env = False
        return hvac.Client(url=self.nodes[i]["addr"], token=self.root_token if token is True else (token or ""),
                           session=session, timeout=timeout)

    def kill(self, i: int) -> None:
        proc = self.nodes[i]["proc"]
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for node in self.nodes:
            stop_process(node["proc"])
            node["log"].close()

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except Exception:
                pass
            assert time.monotonic() < deadline, f"raft cluster: timed out waiting for {what}"
            time.sleep(0.05)


def test_ha_standby_reads_are_current_and_a_leader_change_is_a_warning(tmp_path: Path) -> None:
    with RaftCluster(tmp_path / "raft") as cluster:
        leader = cluster.leader()
        standby = next(i for i in range(cluster.size) if i != leader)
        root = cluster.client(leader)
        user = "alice"
        root.sys.create_or_update_policy(name=policy_name(user), policy=render_policy(user, VaultSettings()))
        token = root.auth.token.create_orphan(policies=[policy_name(user)], period="768h", no_default_policy=True,
                                              display_name=f"claude-auth-sync-{user}")["auth"]["client_token"]
        token_file = write_token_file(tmp_path / "cfg", token)
        standby_addr = cluster.nodes[standby]["addr"]

        # Through a standby: writes are forwarded, and reads are never older than our last answer
        # (a standby's own replica lags; without X-Vault-Index it answers 404 / an old version).
        store = make_store(standby_addr, user, token_file)
        assert store.renew().ttl_s == PERIOD_S
        stale = []
        expected: int | None = None
        for n in range(1, 11):
            expected = store.write(oauth_object(f"live-{n}", f"r-{n}"), expected_version=expected)
            latest = store.read_latest()
            if latest is None or latest.version != n:
                stale.append(n)
        assert stale == []
        # Written by someone else through the leader, read by a fresh agent through the standby.
        for n in range(11, 16):
            root.secrets.kv.v2.create_or_update_secret(
                path=f"{PREFIX}/{user}", secret={"claudeAiOauth": oauth_object(f"live-{n}", f"r-{n}")}, cas=n - 1)
            fresh = make_store(standby_addr, user, token_file)
            fresh.renew()
            latest = fresh.read_latest()
            if latest is None or latest.version != n:
                stale.append(n)
        assert stale == []

        # The leader dies: the standby redirects to it (307) until a new leader is elected; the
        # agent reports WARN (75) with the redirect target named, then works again. Nothing lost.
        cluster.wait_for_voters()
        leader = cluster.leader()
        survivor = next(i for i in range(cluster.size) if i != leader)
        store_addr = cluster.nodes[survivor]["addr"]
        cluster.kill(leader)
        login = Login(tmp_path, oauth_object("live-15", "r-15"))
        warnings: list[str] = []
        errors: list[str] = []
        began = time.monotonic()
        while True:
            event = cycle(user, make_store(store_addr, user, token_file, timeout=3), login)
            if event.status == Status.OK:
                break
            assert (event.status, event.exit_code) == (Status.WARN, ExitCode.TEMPFAIL), event.details
            warnings.append(str(event.reason))
            errors.append(str(event.details.get("error")))
            assert time.monotonic() - began < 60, f"no new leader after 60 s: {warnings}"
            time.sleep(0.5)
        elapsed = time.monotonic() - began
        print(f"\nleader change: {len(warnings)} WARN cycles ({sorted(set(warnings))}), OK after {elapsed:.1f}s")
        assert set(warnings) <= {"vault_unreachable", "vault_unavailable"}
        assert any("redirected us" in error for error in errors), errors
        assert event.action == Action.NONE  # the latest version (15) survived the election
        final = make_store(store_addr, user, token_file)
        final.renew()
        latest = final.read_latest()
        assert latest is not None and latest.version == 15


# ----------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_bao(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """``bao server -dev -dev-tls``: https on loopback with a generated CA. Yields (addr, root token, CA)."""
    import secrets

    import hvac

    certs = tmp_path / "tls"
    certs.mkdir()
    root_token = secrets.token_hex(16)
    port = free_loopback_port()
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path), "BAO_DEV_ROOT_TOKEN_ID": root_token}
    proc = subprocess.Popen(
        [find_bao_binary(), "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={certs}", "-dev-no-store-token",
         f"-dev-listen-address=127.0.0.1:{port}"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # stdout has the root token
        preexec_fn=_die_with_parent,
    )
    addr = f"https://127.0.0.1:{port}"
    ca = certs / "vault-ca.pem"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "bao -dev-tls exited"
            try:
                if ca.exists() and hvac.Client(url=addr, token=root_token, verify=str(ca)).sys.is_initialized():
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "bao -dev-tls not ready"
            time.sleep(0.05)
        yield addr, root_token, ca
    finally:
        stop_process(proc)


def test_tls_uses_vault_cacert(tls_bao: tuple[str, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hvac

    addr, root_token, ca = tls_bao
    user = new_user()
    root = hvac.Client(url=addr, token=root_token, verify=str(ca))
    root.sys.create_or_update_policy(name=policy_name(user), policy=render_policy(user, VaultSettings()))
    token = root.auth.token.create_orphan(policies=[policy_name(user)], period="768h", no_default_policy=True,
                                          display_name=f"claude-auth-sync-{user}")["auth"]["client_token"]
    token_file = write_token_file(tmp_path / "cfg", token)
    for name in [k for k in os.environ if k.startswith(("VAULT_", "REQUESTS_CA", "CURL_CA", "CLAUDE_AUTH_SYNC_"))]:
        monkeypatch.delenv(name)
    identity = UserIdentity(name=user, uid=os.getuid(), gid=os.getgid(), home=tmp_path)

    # Without the CA: TLS verification fails -> refused (78), not a silent retry.
    settings = load_settings(backend_vault.cas_settings_sections(), identity, system_file=tmp_path / "none.toml",
                             environ={"VAULT_ADDR": addr})
    store = VaultBackend(settings.section("vault"), user, os.getuid(), token_file)
    with pytest.raises(BackendRefused) as refused:
        store.renew()
    assert (refused.value.reason, refused.value.exit_code) == ("vault_tls", ExitCode.CONFIG)

    # VAULT_CACERT (mapped by the settings loader onto vault.cacert) makes it work.
    settings = load_settings(backend_vault.cas_settings_sections(), identity, system_file=tmp_path / "none.toml",
                             environ={"VAULT_ADDR": addr, "VAULT_CACERT": str(ca)})
    assert settings.section("vault").cacert == ca
    store = VaultBackend(settings.section("vault"), user, os.getuid(), token_file)
    assert store.renew().ttl_s == PERIOD_S
    login = Login(tmp_path, oauth_object("live-tls", "r-tls"))
    assert cycle(user, store, login).action == Action.BACKUP

    # A CA bundle that does not exist is a configuration error, not an internal one.
    missing = VaultBackend(VaultSettings(addr=addr, cacert=tmp_path / "nope.pem"), user, os.getuid(), token_file)
    with pytest.raises(ConfigurationError) as bad:
        missing.renew()
    assert bad.value.reason == "vault_cacert_missing"


# ----------------------------------------------------------------------------- the CLI


def _console_script() -> str:
    beside = Path(sys.executable).parent / "claude-auth-sync"
    found = str(beside) if beside.exists() else shutil.which("claude-auth-sync")
    assert found, "the claude-auth-sync console script is not installed: pip install '.[test]'"
    return found


@pytest.mark.parametrize("mount", [None, "kv"])
def test_policy_command_prints_render_policy(tmp_path: Path, bao: OpenBaoServer, mount: str | None) -> None:
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    if mount:
        env["CLAUDE_AUTH_SYNC_VAULT__MOUNT"] = mount
    done = subprocess.run([_console_script(), "policy", "alice"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = render_policy("alice", VaultSettings(mount=mount) if mount else VaultSettings())
    assert done.stdout == expected
    if mount is None:
        bao.write_policy("cli-rendered-alice", done.stdout)  # the server accepts it as HCL
        assert bao.client().sys.read_policy(name="cli-rendered-alice")["data"]["rules"] == expected

    bad = subprocess.run([_console_script(), "policy", "alice*"], env=env, capture_output=True, text=True, timeout=60)
    assert (bad.returncode, bad.stdout) == (78, "")
    assert "invalid_user_name" in bad.stderr or "not a valid user name" in bad.stderr


def test_errors_are_cas_errors_with_remedies(tmp_path: Path) -> None:
    """Every refusal the store raises names a next step (the status line needs one)."""
    store = make_store("http://198.51.100.1:8200", "carol", tmp_path / "missing")
    with pytest.raises(CasError) as err:
        store.renew()
    assert err.value.reason == "vault_insecure_http" and err.value.remedy
