"""Review of ``t3-provision-users --migrate-to-host-paths`` against hostile per-user copies.

Real OpenBao, real OS accounts, the provisioner run as root runs it (tests/integration/
test_provisioning_hosts.provision: a UTS namespace per host). A user controls what their agent
wrote at their own per-user path; none of that may crash the run for the others, change the copy,
or put a secret into the output.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from claude_auth_sync.testing import oauth_object
from tests.integration.test_provisioning import (  # noqa: F401 - fixtures
    Sandbox, bao, make_users, sandbox,
)
from tests.integration.test_provisioning_hosts import PER_USER, kv_latest, kv_put, provision
from claude_auth_sync.admin.provision_migrate import MigrationPhase
from claude_auth_sync.admin.provision_report import UserReport, Work
from claude_auth_sync.admin.vault_admin import AdminVault
from claude_auth_sync.plugins.backend_vault.policy import locate
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

GOOD = oauth_object("sk-ant-oat01-REVIEW-good-access", "sk-ant-ort01-REVIEW-good-refresh")
HOSTILE = oauth_object("sk-ant-oat01-REVIEW-hostile-access", "sk-ant-ort01-REVIEW-hostile-refresh")
SECRETS = [t for o in (GOOD, HOSTILE) for t in (o["accessToken"], o["refreshToken"])]


def put_raw(bao: OpenBaoServer, path: str, oauth_json: str) -> None:
    """A KV v2 write of a JSON text Python itself could not encode (e.g. nested 3000 deep)."""
    answer = requests.post(f"{bao.addr}/v1/secret/data/{path}", headers={"X-Vault-Token": bao.root_token},
                           data='{"data": {"claudeAiOauth": ' + oauth_json + '}}', timeout=30)
    assert answer.status_code == 200, answer.text[:300]


def no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_a_deeply_nested_copy_never_stops_the_others_migration(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """Alice's agent wrote a claudeAiOauth nested deeper than Python's JSON reader recurses."""
    alice, bob = make_users("alice", "bob")
    deep = "[" * 3000 + "]" * 3000
    put_raw(bao, f"{PER_USER}/{alice}", json.dumps(HOSTILE)[:-1] + ', "x": ' + deep + "}")
    kv_put(bao, f"{PER_USER}/{bob}", GOOD)
    sandbox.write_roster([alice, bob])
    run = provision(sandbox, "ws-a", "--migrate-to-host-paths", "--apply-policies")
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.data, (run.rc, run.stdout[-2000:], run.stderr[-2000:])
    assert bob in run.data["migration"]["copied"]
    assert kv_latest(bao, f"workstation/claude-hosts/ws-a/{bob}") == (GOOD, 1)
    assert alice in run.data["migration"]["copied"] + run.data["migration"]["failed"]
    assert (run.rc == 0) == (alice in run.data["migration"]["copied"])
    no_secret(run.stdout, run.stderr)


def test_a_copy_with_other_number_spellings_is_copied_unchanged(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    """The README promises the latest version 'unchanged': numbers, unicode, extra keys as Vault keeps them."""
    (alice,) = make_users("alice")
    odd = {**GOOD, "expiresAt": 1764700000000, "big": 2**70, "f": 0.1, "u": "caf\u00e9 \u2603", "null": None,
           "list": [1, "2", {"3": [True, False]}], "scopes": ["user:inference"]}
    kv_put(bao, f"{PER_USER}/{alice}", odd)
    sandbox.write_roster([alice])
    run = provision(sandbox, "ws-a", "--migrate-to-host-paths", "--apply-policies")
    assert run.rc == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert kv_latest(bao, f"workstation/claude-hosts/ws-a/{alice}") == (odd, 1)
    no_secret(run.stdout, run.stderr)


def test_a_deleted_latest_version_is_never_replaced_by_an_older_one(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    alice, bob = make_users("alice", "bob")
    kv_put(bao, f"{PER_USER}/{alice}", GOOD)
    kv_put(bao, f"{PER_USER}/{alice}", HOSTILE)
    bao.client().secrets.kv.v2.delete_latest_version_of_secret(path=f"{PER_USER}/{alice}", mount_point="secret")
    kv_put(bao, f"{PER_USER}/{bob}", GOOD)
    kv_put(bao, f"{PER_USER}/{bob}", HOSTILE)
    bao.client().secrets.kv.v2.destroy_secret_versions(path=f"{PER_USER}/{bob}", versions=[2], mount_point="secret")
    sandbox.write_roster([alice, bob])
    run = provision(sandbox, "ws-a", "--migrate-to-host-paths")
    assert set(run.data["migration"]["nothing"]) == {alice, bob}
    assert kv_latest(bao, f"workstation/claude-hosts/ws-a/{alice}") is None
    assert kv_latest(bao, f"workstation/claude-hosts/ws-a/{bob}") is None
    no_secret(run.stdout, run.stderr)


class Harness(MigrationPhase):
    """The migration phase alone, with the admin token of a real OpenBao; ``after_copy`` runs
    right after the copy's write was answered (where an agent's write can land)."""

    def __init__(self, bao: OpenBaoServer, after_copy: Any, before_copy: Any = None) -> None:
        self.before_copy = before_copy
        self.vault = AdminVault(bao.addr, None, 10.0)
        self.token = bao.root_token
        self.after_copy = after_copy
        self.migration = {k: [] for k in ("copied", "would_copy", "kept", "nothing", "failed")}
        self.errors = []

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if method == "post" and "/claude-hosts/" in path and self.before_copy:
            self.before_copy()
        answer = self.vault.call("admin", self.token, method, path, body)
        if method == "post" and "/claude-hosts/" in path:
            self.after_copy()
        return answer


def test_an_agent_write_right_after_the_copy_is_no_failed_migration(bao: OpenBaoServer) -> None:
    """The copy (v1) is read back as v1: an agent's backup landing before the read-back (v2) made
    the run say 'does not read back equal', exit 78, for a copy that was made and kept."""
    user = "casrace"
    kv_put(bao, f"{PER_USER}/{user}", GOOD)
    hosted = VaultSettings(path_template="workstation/claude-hosts/{host}/{user}")
    source, target = locate(user, VaultSettings()), locate(user, hosted, "ws-race")
    harness = Harness(bao, lambda: kv_put(bao, target.relative, HOSTILE))
    harness.o = type("O", (), {"dry_run": False})()
    work = Work(report=UserReport(user=user))
    harness._migrate_user(work, source, target)
    assert kv_latest(bao, target.relative) == (HOSTILE, 2)  # the agent's write really landed after v1
    assert harness.migration["copied"] == [user] and harness.migration["failed"] == []
    assert work.report.severity == 0, work.report.notes
    no_secret(*work.report.notes, *work.report.actions, *work.report.changes)


def test_an_agent_write_between_the_check_and_the_copy_wins_and_is_kept(bao: OpenBaoServer) -> None:
    user = "casrace2"
    kv_put(bao, f"{PER_USER}/{user}", GOOD)
    hosted = VaultSettings(path_template="workstation/claude-hosts/{host}/{user}")
    source, target = locate(user, VaultSettings()), locate(user, hosted, "ws-race")
    harness = Harness(bao, lambda: None, before_copy=lambda: kv_put(bao, target.relative, HOSTILE))
    harness.o = type("O", (), {"dry_run": False})()
    work = Work(report=UserReport(user=user))
    harness._migrate_user(work, source, target)
    assert kv_latest(bao, target.relative) == (HOSTILE, 1)  # never overwritten by the copy
    assert harness.migration["kept"] == [user] and work.report.severity == 0
