"""The provisioner's state file, version 2: the Vault of each accessor, the policies this host
created, and version-1 files (no addresses) read without guessing (pure units, no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_auth_sync.admin.state import StateFile, vault_identity, vault_label
from claude_auth_sync.errors import ConfigurationError


@pytest.mark.parametrize("spelling", ["https://Vault.Example:443", "https://vault.example/", "HTTPS://vault.example"])
def test_one_vault_spelt_three_ways_is_one_identity(spelling: str) -> None:
    assert vault_identity(spelling) == {"addr": "https://vault.example:443", "namespace": ""}


def test_address_port_path_and_namespace_tell_vaults_apart() -> None:
    base = vault_identity("https://vault.example:8200")
    for other in (vault_identity("https://vault.example:8201"), vault_identity("https://vault.example:8200/proxy"),
                  vault_identity("http://vault.example:8200"), vault_identity("https://vault.example:8200", "team"),
                  vault_identity("https://vault2.example:8200")):
        assert other != base
    assert vault_identity("https://v:8200", "/team/a/") == {"addr": "https://v:8200", "namespace": "team/a"}


def test_a_version_1_file_has_accessors_of_no_vault(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text(json.dumps({"version": 1, "users": {"alice": {
        "accessor": "acc1", "superseded": ["acc0"]}}}))
    state = StateFile(tmp_path)
    state.load()
    here = vault_identity("https://vault.example:8200")
    assert state.vault_of("acc1") is None and not state.minted_here("acc1", here) and not state.minted_here("acc0", here)
    state.stamp("acc1", here)
    assert state.minted_here("acc1", here) and not state.minted_here("acc1", vault_identity("https://other:8200"))
    state.save()
    saved = json.loads((tmp_path / "tokens.json").read_text())
    assert saved["version"] == 2 and saved["accessor_vaults"] == {"acc1": here}


def test_policies_are_recorded_per_vault_and_stale_stamps_forgotten(tmp_path: Path) -> None:
    state = StateFile(tmp_path)
    here, there = vault_identity("https://a:8200"), vault_identity("https://b:8200")
    state.record_policy("claude-auth-sync-alice@ws-a", "alice", "ws-a", here, "2026-01-01T00:00:00Z")
    assert state.created_here("claude-auth-sync-alice@ws-a", here)
    assert not state.created_here("claude-auth-sync-alice@ws-a", there) and not state.created_here("x", here)
    state.stamp("gone", here)
    state.users["bob"] = {"accessor": "kept"}
    state.stamp("kept", here)
    state.save()
    assert set(json.loads((tmp_path / "tokens.json").read_text())["accessor_vaults"]) == {"kept"}


@pytest.mark.parametrize("body", ['{"users": {}, "accessor_vaults": []}', '{"users": {}, "policies": "x"}',
                                  '{"users": []}', "[]", "\xff",
                                  # review finding: an entry of the wrong shape was dropped (or its
                                  # "superseded" string read as one accessor per character) and the
                                  # file rewritten without it on the next save: accessors forgotten
                                  '{"users": {"alice": ["acc1"]}}', '{"users": {"alice": {"accessor": 7}}}',
                                  '{"users": {"alice": {"accessor": "a", "superseded": "acc0"}}}',
                                  '{"users": {"alice": {"accessor": "a", "superseded": [null]}}}',
                                  '{"users": {}, "accessor_vaults": {"a": "https://v:8200"}}'])
def test_a_damaged_file_is_refused_never_repaired(tmp_path: Path, body: str) -> None:
    (tmp_path / "tokens.json").write_text(body, errors="surrogateescape")
    with pytest.raises(ConfigurationError):
        StateFile(tmp_path).load()
    assert (tmp_path / "tokens.json").read_text(errors="surrogateescape") == body


def test_two_nodes_of_one_cluster_are_one_vault_and_old_records_keep_the_address_rule(tmp_path: Path) -> None:
    node1 = vault_identity("https://node1.example:8200", "team", "c-1")
    node2 = vault_identity("https://node2.example:8200", "team", "c-1")
    state = StateFile(tmp_path)
    state.stamp("acc1", node1)
    state.record_policy("p", "alice", "ws-a", node1, "2026-01-01T00:00:00Z")
    assert state.minted_here("acc1", node2) and state.created_here("p", node2)  # same cluster, same namespace
    assert not state.minted_here("acc1", vault_identity("https://node2.example:8200", "other", "c-1"))
    assert not state.minted_here("acc1", vault_identity("https://node1.example:8200", "team", "c-2"))  # rebuilt
    # A record without a cluster_id (or a Vault that did not tell it) matches by address only.
    state.stamp("acc0", vault_identity("https://node1.example:8200", "team"))
    assert state.minted_here("acc0", node1) and not state.minted_here("acc0", node2)
    assert not state.minted_here("acc1", vault_identity("https://node2.example:8200", "team"))
    state.users = {"alice": {"accessor": "acc1", "superseded": ["acc0"]}}
    state.save()
    reloaded = StateFile(tmp_path)
    reloaded.load()
    assert reloaded.vault_of("acc1") == node1 and "cluster_id" not in (reloaded.vault_of("acc0") or {})
    assert reloaded.minted_here("acc1", node2) and reloaded.created_here("p", node2)
    label = vault_label({"addr": "https://n\x1b]0;x\x07:8200", "namespace": "team\x1b[31m"})
    assert "\x1b" not in label and "\x07" not in label and label.startswith("https://n")


def test_placement_is_one_rule_here_elsewhere_unknown_or_unconfirmed(tmp_path: Path) -> None:
    here = vault_identity("https://node1.example:8200", "", "c-1")
    state = StateFile(tmp_path)
    state.stamp("mine", vault_identity("https://node2.example:8200", "", "c-1"))
    state.stamp("theirs", vault_identity("https://node1.example:8200", "", "c-2"))
    asked: list[str] = []

    def known(accessor: str) -> bool | None:
        asked.append(accessor)
        return {"old-known": True, "old-unknown": False}.get(accessor)  # None: Vault could not tell

    names = ("mine", "theirs", "old-known", "old-unknown", "old-unasked")
    places = {a: state.placement(a, here, known) for a in names}
    assert places == {"mine": "here", "theirs": "elsewhere", "old-known": "here", "old-unknown": "unknown",
                      "old-unasked": "unconfirmed"}
    assert asked == ["old-known", "old-unknown", "old-unasked"]  # only records of no Vault are looked up
    assert state.vault_of("old-known") == here  # confirmed: stamped
    assert state.vault_of("old-unknown") is None and state.vault_of("old-unasked") is None


@pytest.mark.parametrize("body, expected", [
    (b'{"cluster_id": "5e15a9e5-e032-5341-5777-4ea653acc8a3"}', "5e15a9e5-e032-5341-5777-4ea653acc8a3"),
    (b'{"cluster_id": "evil\\u001b[2J"}', ""), (b'{"cluster_id": "' + b"x" * 5000 + b'"}', ""),
    (b'{"cluster_id": 7}', ""), (b"[1, 2]", ""), (b"not json", ""), (b"{}", ""),
])
def test_cluster_id_is_taken_only_when_sane(body: bytes, expected: str) -> None:
    """A loopback stand-in for sys/health: odd answers leave the cluster unknown (address rule)."""
    import http.server
    import threading

    from claude_auth_sync.admin.vault_admin import AdminVault

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            assert self.path.startswith("/v1/sys/health?") and "X-Vault-Token" not in self.headers
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert AdminVault(f"http://127.0.0.1:{server.server_port}", None, 5).cluster_id() == expected
    finally:
        server.shutdown()
        server.server_close()
    assert AdminVault(f"http://127.0.0.1:{server.server_port}", None, 1).cluster_id() == ""  # nobody answers


def test_a_record_naming_its_cluster_is_not_placed_here_by_address_alone(tmp_path: Path) -> None:
    """Review finding: a run whose sys/health failed (timeout, a load balancer that does not pass it)
    knows no cluster_id, so a record naming its cluster matched by address alone and was "here"
    without asking. When another cluster now answers at that address (the cluster was rebuilt
    or moved), revoke-accessor there answers 200 ("No token found with this accessor"), the run
    said "revoked" and forgot a token still valid at its own cluster. Now such a match is confirmed
    with lookup-accessor first: revoked only when this Vault knows it, kept otherwise."""
    address_only = vault_identity("https://vault.example:8200")  # sys/health told no cluster this run
    state = StateFile(tmp_path)
    for accessor in ("known", "not-known", "unasked"):
        state.stamp(accessor, vault_identity("https://vault.example:8200", "", "cluster-a"))
    for accessor in ("no-cluster-known", "no-cluster-gone", "no-cluster-unasked"):
        state.stamp(accessor, address_only)  # recorded without a cluster: matched by address, asked too
    asked: list[str] = []

    def known(accessor: str) -> bool | None:
        asked.append(accessor)
        return {"known": True, "not-known": False, "no-cluster-known": True, "no-cluster-gone": False}.get(accessor)

    names = ("known", "not-known", "unasked", "no-cluster-known", "no-cluster-gone", "no-cluster-unasked")
    places = {a: state.placement(a, address_only, known) for a in names}
    assert places == {"known": "here", "not-known": "unconfirmed", "unasked": "unconfirmed",
                      "no-cluster-known": "here", "no-cluster-gone": "unknown", "no-cluster-unasked": "unconfirmed"}
    assert asked == list(names)
    assert state.vault_of("known") == vault_identity("https://vault.example:8200", "", "cluster-a")  # not re-stamped

    # A record naming no cluster, matched by address while this Vault tells its cluster: asked too;
    # once confirmed it is stamped with the cluster (matched by cluster from then on).
    with_cluster = vault_identity("https://vault.example:8200", "", "cluster-b")
    asked.clear()
    assert state.placement("no-cluster-known", with_cluster, known) == "here"
    assert state.placement("no-cluster-gone", with_cluster, known) == "unknown"
    assert asked == ["no-cluster-known", "no-cluster-gone"]
    assert state.vault_of("no-cluster-known") == with_cluster and state.vault_of("no-cluster-gone") == address_only


@pytest.mark.parametrize("status, body, expected", [
    (400, b'{"errors": ["1 error occurred:\\n\\t* invalid accessor\\n\\n"]}', False),  # OpenBao's own answer
    (400, b'{"errors": ["request body too large"]}', None),  # a 400 about something else
    (400, b"<html>400 Bad Request</html>", None),  # a proxy or firewall in front, not Vault
    (200, b'{"data": {"accessor": "a"}}', True),
])
def test_knows_accessor_says_no_only_on_vaults_invalid_accessor(status: int, body: bytes, expected: bool | None) -> None:
    """Review finding: any 400 (a proxy's, a web firewall's) counted as "this Vault does not know
    the accessor", and the old record was forgotten while its token may still be valid. Only
    Vault's own "invalid accessor" says no; any other answer cannot tell (the record is kept)."""
    import http.server
    import threading

    from claude_auth_sync.admin.vault_admin import AdminVault

    class LookupAccessor(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            assert self.path == "/v1/auth/token/lookup-accessor"
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if body.startswith(b"{") else "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), LookupAccessor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vault = AdminVault(f"http://127.0.0.1:{server.server_port}", None, 5)
        assert vault.knows_accessor("admin-token-for-a-unit-test", "an-accessor") is expected
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_200_that_is_not_json_is_not_vaults_success() -> None:
    """Review finding: anything answering 200 with a page (a captive portal, a misrouted load
    balancer) made lookup-accessor "this Vault knows it" and revoke-accessor "revoked": the record
    was then forgotten, its token valid at the real Vault. Vault answers 200 with JSON, 204 empty."""
    import http.server
    import threading

    from claude_auth_sync.admin.vault_admin import AdminVault, VaultFailure

    class Portal(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html>Welcome to the guest network</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Portal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vault = AdminVault(f"http://127.0.0.1:{server.server_port}", None, 5)
        assert vault.knows_accessor("admin-token-for-a-unit-test", "an-accessor") is None
        with pytest.raises(VaultFailure) as failed:
            vault.call("admin", "admin-token-for-a-unit-test", "post", "auth/token/revoke-accessor", {"accessor": "a"})
        assert failed.value.kind == "unavailable" and "admin-token-for-a-unit-test" not in str(failed.value)
    finally:
        server.shutdown()
        server.server_close()
