"""Issue 14 item 5: a Vault namespace, end to end, against a real OpenBao (namespaces are built in).

``bao namespace create`` makes a namespace with its own KV v2 mount at ``secret/``; the root
provisioner (``VAULT_NAMESPACE`` set, as in ``/etc/default/claude-auth-sync``) applies the user's
policy and mints the user's token *in the namespace*; the installed agent, run as that real OS user
with the same variable, backs the login up and restores it inside the namespace. The same path in
the root namespace holds a sentinel secret that nothing may touch, and the agent without the
namespace setting is refused rather than writing there.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hvac
import pytest

from claude_auth_sync.testing import oauth_object
from tests.integration.test_provisioning import (  # noqa: F401 - fixtures
    Sandbox,
    bao,
    make_users,
    read_token,
    require_tool,
    sandbox,
    user_venv,
)
from tests.support.cli import STUB_CLAUDE, fp
from tests.support.diagnose_rows import rows_named
from tests.support.openbao import OpenBaoServer, find_bao_binary

pytestmark = pytest.mark.real

GOOD = oauth_object("sk-ant-oat01-ns-good-access", "sk-ant-ort01-ns-good-refresh")
BAD = oauth_object("sk-ant-oat01-ns-bad-access", "sk-ant-ort01-ns-bad-refresh")
SENTINEL = {"claudeAiOauth": {"accessToken": "root-namespace-sentinel", "refreshToken": "untouched"}}
KV = "workstation/claude-users"


def bao_cli(server: OpenBaoServer, *args: str) -> None:
    """The real ``bao`` CLI with the root token in its environment (never on the command line)."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(server.workdir / "home"),
           "BAO_ADDR": server.addr, "BAO_TOKEN": server.root_token}
    subprocess.run([find_bao_binary(), *args], env=env, check=True, capture_output=True, timeout=30)


def make_namespace(server: OpenBaoServer) -> str:
    name = f"team-{secrets.token_hex(3)}"
    bao_cli(server, "namespace", "create", name)
    bao_cli(server, "secrets", "enable", f"-namespace={name}", "-path=secret", "kv-v2")
    return name


def read_secret(client: hvac.Client, user: str) -> tuple[int, dict[str, Any]] | None:
    try:
        answer = client.secrets.kv.v2.read_secret_version(path=f"{KV}/{user}", mount_point="secret",
                                                          raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        return None
    return answer["data"]["metadata"]["version"], answer["data"]["data"]


def in_namespace(server: OpenBaoServer, namespace: str) -> hvac.Client:
    client = server.client()
    client.adapter.namespace = namespace
    return client


def run_agent(venv: Path, user: str, addr: str, accept: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``claude-auth-sync run --json`` as ``user`` (runuser), with the stub CLI and the file sink."""
    home = Path(pwd.getpwnam(user).pw_dir)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "CLAUDE_CONFIG_DIR": str(home / ".claude"),
           "CLAUDE_AUTH_SYNC_BACKEND": "vault", "CLAUDE_AUTH_SYNC_SINKS": '["file"]',
           "CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": str(STUB_CLAUDE), "VAULT_ADDR": addr, "STUB_CLAUDE_ACCEPT": accept,
           **extra}
    return subprocess.run([require_tool("runuser", "util-linux"), "-u", user, "--", str(venv / "bin/claude-auth-sync"),
                           "run", "--json"], env=env, capture_output=True, text=True, timeout=120, cwd="/")


def write_credentials(user: str, oauth: dict[str, Any]) -> Path:
    entry = pwd.getpwnam(user)
    directory = Path(entry.pw_dir) / ".claude"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / ".credentials.json"
    path.write_text(json.dumps({"claudeAiOauth": oauth}))
    path.chmod(0o600)
    for item in (directory, path):
        os.chown(item, entry.pw_uid, entry.pw_gid)
    return path


def test_the_provisioner_mints_in_the_namespace_and_the_agent_backs_up_and_restores_there(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, user_venv: Path  # noqa: F811
) -> None:
    namespace = make_namespace(bao)
    (user,) = make_users("nsu")
    root_ns = bao.client()
    root_ns.secrets.kv.v2.create_or_update_secret(path=f"{KV}/{user}", secret=SENTINEL, mount_point="secret")
    sandbox.write_roster([user])

    provisioned = sandbox.run("--apply-policies", admin=True, extra_env={"VAULT_NAMESPACE": namespace})
    assert provisioned.rc == 0, provisioned.stdout + provisioned.stderr
    assert provisioned.user(user)["token"] == "minted"
    ns_client = in_namespace(bao, namespace)
    policy = f"claude-auth-sync-{user}"
    assert policy in ns_client.sys.list_policies()["data"]["policies"]
    assert policy not in root_ns.sys.list_policies()["data"]["policies"]
    token = read_token(user)
    looked_up = bao.client(token).auth.token.lookup_self()["data"]
    assert looked_up["namespace_path"] == f"{namespace}/" and looked_up["policies"] == [policy]

    accept = fp(GOOD["accessToken"])
    credentials = write_credentials(user, GOOD)
    first = run_agent(user_venv, user, bao.addr, accept, VAULT_NAMESPACE=namespace)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["status"] == "OK"
    stored = read_secret(ns_client, user)
    assert stored is not None and stored[1]["claudeAiOauth"]["accessToken"] == GOOD["accessToken"]

    write_credentials(user, BAD)
    second = run_agent(user_venv, user, bao.addr, accept, VAULT_NAMESPACE=namespace)
    event = json.loads(second.stdout)
    assert (second.returncode, event["status"], event["action"]) == (0, "OK", "restore"), second.stdout + second.stderr
    assert json.loads(credentials.read_text())["claudeAiOauth"]["accessToken"] == GOOD["accessToken"]

    assert read_secret(root_ns, user) == (1, SENTINEL)  # the same path outside the namespace: untouched
    for text in (provisioned.stdout, provisioned.stderr, first.stdout, first.stderr, second.stdout, second.stderr):
        assert GOOD["refreshToken"] not in text and BAD["refreshToken"] not in text
        assert token not in text


def test_without_the_namespace_the_agent_is_refused_and_writes_nothing_outside_it(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, user_venv: Path  # noqa: F811
) -> None:
    namespace = make_namespace(bao)
    (user,) = make_users("nsv")
    root_ns = bao.client()
    root_ns.secrets.kv.v2.create_or_update_secret(path=f"{KV}/{user}", secret=SENTINEL, mount_point="secret")
    sandbox.write_roster([user])
    assert sandbox.run("--apply-policies", admin=True, extra_env={"VAULT_NAMESPACE": namespace}).rc == 0
    write_credentials(user, GOOD)
    result = run_agent(user_venv, user, bao.addr, fp(GOOD["accessToken"]))
    event = json.loads(result.stdout)
    assert result.returncode == 78 and event["status"] == "FAIL", result.stdout + result.stderr
    assert read_secret(root_ns, user) == (1, SENTINEL)
    assert read_secret(in_namespace(bao, namespace), user) is None


def test_diagnose_names_the_namespace(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, user_venv: Path  # noqa: F811
) -> None:
    namespace = make_namespace(bao)
    (user,) = make_users("nsw")
    sandbox.write_roster([user])
    assert sandbox.run("--apply-policies", admin=True, extra_env={"VAULT_NAMESPACE": namespace}).rc == 0
    write_credentials(user, GOOD)
    home = Path(pwd.getpwnam(user).pw_dir)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "CLAUDE_CONFIG_DIR": str(home / ".claude"),
           "CLAUDE_AUTH_SYNC_BACKEND": "vault", "CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": str(STUB_CLAUDE),
           "VAULT_ADDR": bao.addr, "VAULT_NAMESPACE": namespace}
    diagnose = subprocess.run([shutil.which("runuser") or "runuser", "-u", user, "--",
                               str(user_venv / "bin/claude-auth-sync"), "diagnose", "--json"],
                              env=env, capture_output=True, text=True, timeout=120, cwd="/")
    rows = rows_named(json.loads(diagnose.stdout), "namespace")
    assert [(r["group"], r["state"], r["detail"]) for r in rows] == [("backend", "info", namespace)], diagnose.stdout[-3000:]


def test_the_least_privilege_admin_token_of_the_namespace_is_enough(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any  # noqa: F811
) -> None:
    """deploy/vault/t3-provisioner-admin.hcl applied in the namespace, its token minted there."""
    namespace = make_namespace(bao)
    (user,) = make_users("nsa")
    ns_client = in_namespace(bao, namespace)
    hcl = (Path(__file__).resolve().parents[2] / "deploy/vault/t3-provisioner-admin.hcl").read_text()
    ns_client.sys.create_or_update_policy(name="t3-provisioner-admin", policy=hcl)
    admin = ns_client.auth.token.create_orphan(policies=["t3-provisioner-admin"], period="1h",
                                               no_default_policy=True)["auth"]["client_token"]
    sandbox.write_roster([user])
    result = sandbox.run("--apply-policies", admin=admin, extra_env={"VAULT_NAMESPACE": namespace})
    assert result.rc == 0, result.stdout + result.stderr
    assert result.user(user)["token"] == "minted" and result.user(user)["policy"] == "applied"
    assert bao.client(read_token(user)).auth.token.lookup_self()["data"]["namespace_path"] == f"{namespace}/"
    assert admin not in result.stdout + result.stderr


def test_offboarding_in_the_namespace_revokes_there_and_destroys_only_its_secret(
    sandbox: Sandbox, bao: OpenBaoServer, make_users: Any  # noqa: F811
) -> None:
    namespace = make_namespace(bao)
    (user,) = make_users("nso")
    root_ns, ns_client = bao.client(), in_namespace(bao, namespace)
    root_ns.secrets.kv.v2.create_or_update_secret(path=f"{KV}/{user}", secret=SENTINEL, mount_point="secret")
    sandbox.write_roster([user])
    ns = {"VAULT_NAMESPACE": namespace}
    assert sandbox.run("--apply-policies", admin=True, extra_env=ns).rc == 0
    token = read_token(user)
    ns_client.secrets.kv.v2.create_or_update_secret(path=f"{KV}/{user}", secret={"claudeAiOauth": {"a": 1}},
                                                    mount_point="secret")
    sandbox.roster.write_text("users: []\n")
    done = sandbox.run("--offboard", user, "--destroy-secret", admin=True, extra_env=ns)
    assert done.rc == 0, done.stdout + done.stderr
    with pytest.raises(hvac.exceptions.Forbidden):
        bao.client(token).auth.token.lookup_self()
    assert read_secret(ns_client, user) is None
    assert read_secret(root_ns, user) == (1, SENTINEL)  # the same path outside the namespace: untouched


def test_the_policy_printed_for_a_namespace_says_where_it_belongs_and_applies_there(
    bao: OpenBaoServer, tmp_path: Path  # noqa: F811
) -> None:
    """``claude-auth-sync policy USER`` with VAULT_NAMESPACE: a first comment line naming the
    namespace, then the same HCL, which the real ``bao policy write`` accepts in that namespace."""
    from tests.support.cli import Sandbox as CliSandbox

    namespace = make_namespace(bao)
    box = CliSandbox(tmp_path)
    plain = box.run("policy", "alice")
    scoped = box.run("policy", "alice", VAULT_NAMESPACE=namespace)
    assert plain.returncode == 0 and scoped.returncode == 0, scoped.stderr
    first, _, rest = scoped.stdout.partition("\n")
    assert first.startswith(f"# Vault namespace {namespace}:") and rest == plain.stdout
    policy_file = tmp_path / "policy.hcl"
    policy_file.write_text(scoped.stdout)
    bao_cli(bao, "policy", "write", f"-namespace={namespace}", "claude-auth-sync-alice", str(policy_file))
    assert "claude-auth-sync-alice" in in_namespace(bao, namespace).sys.list_policies()["data"]["policies"]
