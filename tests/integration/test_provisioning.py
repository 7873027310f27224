"""t3-provision-users, setup-devvm.sh and the systemd units, against real components.

Real OpenBao (``tests/support/openbao.py``), real OS accounts (``useradd``, removed with
``userdel -r``), real ``systemctl --root`` for the timer symlinks, ``systemd-analyze`` and
``shellcheck``. The provisioner runs as a subprocess, exactly as root runs it. A missing tool is
a failure, never a skip.

Tokens are never put into an assertion's operands (pytest prints them on failure): comparisons use
fingerprints or booleans.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest

from claude_auth_sync.plugins.backend_vault.policy import render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
PERIOD_S = 768 * 3600
TOKEN_REL = Path(".config/claude-auth-sync/vault-token")
KV = "workstation/claude-users"


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is missing: apt-get install {package} (scripts/dev/test.sh does)")
    return path


def passthrough_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus the test runner's PYTHONPATH, if any (to run these tests against another tree)."""
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def fp(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    with OpenBaoServer(tmp_path_factory.mktemp("bao")) as server:
        yield server


@pytest.fixture(scope="session")
def user_venv() -> Path:
    """A venv other OS users can run (/root is 0700): CAS_TEST_VENV, built here if missing."""
    venv = Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv"))
    if not (venv / "bin/python").exists():
        if not Path("/usr/bin/python3").exists():
            pytest.fail("/usr/bin/python3 (Debian's python3 with python3-venv) is missing")
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(REPO)], check=True, capture_output=True)
        subprocess.run(["chmod", "-R", "a+rX", str(venv.parent)], check=True)
    return venv


@pytest.fixture
def make_users() -> Iterator[Any]:
    """make_users("alice", "bob") -> real OS accounts named cas<role><hex>; userdel -r afterwards."""
    require_tool("useradd", "passwd")
    require_tool("userdel", "passwd")
    created: list[str] = []

    def make(*roles: str) -> list[str]:
        names = []
        for role in roles:
            name = f"cas{role}{secrets.token_hex(3)}"
            assert len(name) <= 32 and re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", name)
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True,
                           capture_output=True)
            created.append(name)
            names.append(name)
        return names

    yield make
    for name in created:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    data: dict[str, Any] = field(default_factory=dict)

    def user(self, name: str) -> dict[str, Any]:
        for entry in self.data.get("users", []) + self.data.get("removed", []):
            if entry["user"] == name:
                return entry
        raise AssertionError(f"{name} not in the report: {self.stdout[-2000:]}")


class ProcSampler(threading.Thread):
    """Samples every process's argv (``ps`` and /proc/*/cmdline) and environment while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.cmdlines: set[bytes] = set()
        self.environs: set[bytes] = set()
        self.ps_outputs: list[bytes] = []
        self.rounds = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for name, bucket in (("cmdline", self.cmdlines), ("environ", self.environs)):
                    try:
                        bucket.add(Path(f"/proc/{pid}/{name}").read_bytes())
                    except OSError:
                        pass
            if self.rounds % 3 == 0:
                self.ps_outputs.append(subprocess.run(["ps", "-eww", "-o", "pid=,user=,args="],
                                                      capture_output=True).stdout)
            self.rounds += 1

    def seen(self, secret: str) -> bool:
        needle = secret.encode()
        return any(needle in blob for blob in (*self.cmdlines, *self.environs, *self.ps_outputs))


@dataclass
class Sandbox:
    """One test's roster, systemd root (units installed) and state dir; runs the provisioner."""

    path: Path
    bao: OpenBaoServer

    def __post_init__(self) -> None:
        self.sysroot = self.path / "sysroot"
        unit_dir = self.sysroot / "etc/systemd/system"
        unit_dir.mkdir(parents=True)
        for unit in UNITS.iterdir():
            shutil.copy(unit, unit_dir / unit.name)
        self.state = self.path / "state"
        self.roster = self.path / "roster.yaml"
        self.config = self.path / "no-config.toml"

    def write_roster(self, users: list[str], extra: str = "") -> None:
        body = "".join(f"  - os_user: {u}\n    email: {u}@example.com\n" for u in users)
        self.roster.write_text("users:\n" + body + extra)

    def timer_link(self, user: str) -> Path:
        return self.sysroot / "etc/systemd/system/timers.target.wants" / f"claude-auth-sync@{user}.timer"

    def run(self, *args: str, admin: bool | str = False, json_output: bool = True,
            sampler: ProcSampler | None = None, vault_addr: bool = True, extra_env: dict[str, str] | None = None) -> Result:
        argv = [sys.executable, "-m", "claude_auth_sync.admin.provision", "--roster", str(self.roster),
                "--systemd-root", str(self.sysroot), "--state-dir", str(self.state), "--config", str(self.config)]
        if json_output:
            argv.append("--json")
        argv.extend(args)
        env = passthrough_env({"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"})
        if vault_addr:
            env["VAULT_ADDR"] = self.bao.addr
        if admin:
            env["VAULT_TOKEN"] = admin if isinstance(admin, str) else self.bao.root_token
        env.update(extra_env or {})
        if sampler is not None:
            sampler.start()
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd="/")
        finally:
            if sampler is not None:
                sampler.stop_event.set()
                sampler.join()
        for secret in [self.bao.root_token]:
            assert secret not in proc.stdout and secret not in proc.stderr, "the admin token leaked into output"
        data = json.loads(proc.stdout) if json_output and proc.stdout.strip() else {}
        return Result(proc.returncode, proc.stdout, proc.stderr, data)


@pytest.fixture
def sandbox(tmp_path: Path, bao: OpenBaoServer) -> Sandbox:
    return Sandbox(tmp_path, bao)


@pytest.fixture
def scratch_etc() -> Iterator[Path]:
    """A root-owned, world-traversable stand-in for /etc on the same file system as /home."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="cas-scratch-etc-", dir="/tmp"))
    path.chmod(0o755)
    (path / "shadow").write_text("root:secret-hash:19000::::::\n")
    (path / "shadow").chmod(0o640)
    (path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (path / "passwd").chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------ helpers


def home(user: str) -> Path:
    import pwd

    return Path(pwd.getpwnam(user).pw_dir)


def uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def read_token(user: str) -> str:
    return (home(user) / TOKEN_REL).read_text().strip()


def lookup(bao: OpenBaoServer, token: str) -> dict[str, Any]:
    return bao.client(token).auth.token.lookup_self()["data"]


def token_is_valid(bao: OpenBaoServer, token: str) -> bool:
    try:
        lookup(bao, token)
    except hvac.exceptions.Forbidden:
        return False
    return True


def as_user(user: str, *command: str) -> None:
    subprocess.run(["runuser", "-u", user, "--", *command], check=True, capture_output=True)


def snapshot(*roots: Path, links: bool = True) -> dict[str, tuple[Any, ...]]:
    """Everything below ``roots`` (no symlink followed): type, mode, owner, times, content hash.

    ``links=False`` leaves out the link count and ctime (which change when a hard link to the file
    is removed elsewhere) and keeps what matters for "was this file touched": content, mode, owner,
    mtime.
    """
    out: dict[str, tuple[Any, ...]] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        entries = [root]
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            entries += [Path(dirpath) / n for n in dirnames + filenames]
        for entry in entries:
            st = os.lstat(entry)
            digest: str | None = None
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(entry.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(entry)
            out[str(entry)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, digest)
            if links:
                out[str(entry)] += (st.st_nlink, st.st_ctime_ns)
    return out


def assert_private_token_file(user: str) -> None:
    token_file = home(user) / TOKEN_REL
    st = os.lstat(token_file)
    assert stat.S_ISREG(st.st_mode), f"{token_file} is not a regular file"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (uid(user), os.lstat(home(user)).st_gid, 0o600, 1)
    for rel in (".config/claude-auth-sync", ".local/state/claude-auth-sync"):
        dst = os.lstat(home(user) / rel)
        assert stat.S_ISDIR(dst.st_mode) and dst.st_uid == uid(user) and stat.S_IMODE(dst.st_mode) == 0o700, rel


def assert_token_exact(bao: OpenBaoServer, user: str) -> dict[str, Any]:
    data = lookup(bao, read_token(user))
    assert set(data["policies"]) == {f"claude-auth-sync-{user}"}
    assert data["period"] == PERIOD_S and data["orphan"] is True and data["renewable"] is True
    assert data["display_name"] == f"token-claude-auth-sync-{user}"
    assert data["meta"]["os_user"] == user and data["meta"]["host"]
    assert data["ttl"] > PERIOD_S - 600
    return data


def no_root_files(user: str) -> list[str]:
    found = subprocess.run(["find", str(home(user)), "-uid", "0"], capture_output=True, text=True, check=True)
    return found.stdout.split()


# ------------------------------------------------------------------------------------ tests


def test_admin_run_provisions_isolated_tokens_and_hourly_run_changes_nothing(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    alice, bob = make_users("alice", "bob")
    sandbox.write_roster([alice, bob])

    mark = bao.audit_mark()
    result = sandbox.run("--apply-policies", admin=True)
    requests = bao.requests_since(mark)
    assert result.rc == 0, result.stdout + result.stderr
    for user in (alice, bob):
        entry = result.user(user)
        assert entry["token"] == "minted" and entry["timer"] == "enabled" and entry["policy"] == "applied"
        assert_private_token_file(user)
        assert_token_exact(bao, user)
        assert entry["fingerprint"] == fp(read_token(user))
        assert sandbox.timer_link(user).is_symlink()
        assert os.readlink(sandbox.timer_link(user)) == "/etc/systemd/system/claude-auth-sync@.timer"
        assert no_root_files(user) == []
    # Admin requests: 1 admin-token check + 1 mount check + per user (policy read, policy write, mint).
    assert len(requests) == result.data["vault_requests"]["admin"] == 2 + 3 * 2, [r["path"] for r in requests]
    minting = [r for r in requests if r["path"] == "auth/token/create-orphan"]
    assert len(minting) == 2
    state_dir = sandbox.state
    assert stat.S_IMODE(os.lstat(state_dir).st_mode) == 0o700
    state = json.loads((state_dir / "tokens.json").read_text())
    assert set(state["users"]) == {alice, bob}
    assert stat.S_IMODE(os.lstat(state_dir / "tokens.json").st_mode) == 0o600

    # Isolation: alice's token works on her path only.
    alice_client = bao.client(read_token(alice))
    alice_client.secrets.kv.v2.create_or_update_secret(path=f"{KV}/{alice}", secret={"claudeAiOauth": {"x": 1}},
                                                       mount_point="secret")
    with pytest.raises(hvac.exceptions.Forbidden):
        alice_client.secrets.kv.v2.read_secret_version(path=f"{KV}/{bob}", mount_point="secret",
                                                       raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        alice_client.secrets.kv.v2.create_or_update_secret(path=f"{KV}/{bob}", secret={"claudeAiOauth": {}},
                                                           mount_point="secret")
    with pytest.raises(hvac.exceptions.Forbidden):
        alice_client.secrets.kv.v2.list_secrets(path=KV, mount_point="secret")

    # The hourly run (no admin token): nothing to do, nothing changed, no admin request.
    before = snapshot(home(alice), home(bob), sandbox.sysroot, sandbox.state)
    mark = bao.audit_mark()
    hourly = sandbox.run()
    assert hourly.rc == 0, hourly.stdout + hourly.stderr
    assert snapshot(home(alice), home(bob), sandbox.sysroot, sandbox.state) == before
    requests = bao.requests_since(mark)
    assert [(r["path"], r["display_name"]) for r in requests] == [
        ("auth/token/lookup-self", f"token-claude-auth-sync-{alice}"),
        ("auth/token/lookup-self", f"token-claude-auth-sync-{bob}"),
    ]
    assert all(r["error"] is None for r in requests)
    assert hourly.data["vault_requests"] == {"user": 2, "admin": 0}
    for user in (alice, bob):
        entry = hourly.user(user)
        assert (entry["token"], entry["timer"], entry["actions"], entry["changes"]) == ("ok", "enabled", [], [])
        assert entry["ttl_s"] > PERIOD_S - 600

    # The human-readable table names every user and the state of their token.
    table = sandbox.run(json_output=False)
    assert table.rc == 0 and alice in table.stdout and bob in table.stdout and "enabled" in table.stdout


def test_hourly_run_never_mints_and_reports_who_needs_an_admin_run(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    (carol,) = make_users("carol")
    sandbox.write_roster([carol, "casnoaccount"])
    mark = bao.audit_mark()
    dry = sandbox.run("--dry-run")
    assert dry.rc == 1
    assert not (home(carol) / ".config").exists() and not sandbox.timer_link(carol).exists()
    assert "would enable timer and path unit" in dry.user(carol)["actions"]
    result = sandbox.run()
    assert result.rc == 1, result.stdout
    entry = result.user(carol)
    assert entry["token"] == "missing" and "needs admin run" in entry["actions"]
    assert any("t3-provision-users" in step for step in result.data["next_steps"])
    assert result.user("casnoaccount")["account"] == "missing"
    assert not (home(carol) / TOKEN_REL).exists()
    assert sandbox.timer_link(carol).is_symlink()  # timers need no admin token
    assert bao.requests_since(mark) == []  # no token anywhere: not a single Vault request
    # Admin run without the Vault stack: refused, "apply the Vault stack first".
    refused = sandbox.run(admin=True)
    assert refused.rc == 78
    assert "apply the Vault stack first" in " ".join(refused.user(carol)["actions"] + refused.data["next_steps"])
    assert not (home(carol) / TOKEN_REL).exists()


def test_drift_is_detected_and_repaired_by_an_admin_run(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    dave, erin = make_users("dave", "erin")
    sandbox.write_roster([dave, erin])
    assert sandbox.run("--apply-policies", admin=True).rc == 0

    # 1. A token with an extra policy, planted in dave's token file.
    bao.write_policy("casextra", 'path "secret/data/*" {\n  capabilities = ["read"]\n}\n')
    drifted = bao.create_periodic_token([f"claude-auth-sync-{dave}", "casextra"],
                                        display_name=f"claude-auth-sync-{dave}", meta={"os_user": dave})
    token_file = home(dave) / TOKEN_REL
    replaced = read_token(dave)
    token_file.write_text(drifted + "\n")
    os.chown(token_file, uid(dave), os.lstat(home(dave)).st_gid)
    token_file.chmod(0o600)
    before = snapshot(home(dave), sandbox.state)
    hourly = sandbox.run()
    assert hourly.rc == 1 and hourly.user(dave)["token"] == "drifted"
    assert "casextra" in " ".join(hourly.user(dave)["notes"])
    assert snapshot(home(dave), sandbox.state) == before  # reported, never repaired without admin
    repaired = sandbox.run(admin=True)
    assert repaired.rc == 0, repaired.stdout
    assert repaired.user(dave)["token"] == "minted"
    assert_token_exact(bao, dave)
    assert_private_token_file(dave)
    assert not token_is_valid(bao, drifted)  # the drifted token was revoked ...
    assert not token_is_valid(bao, replaced)  # ... and so was the one recorded in the state file
    assert repaired.user(erin)["token"] == "ok" and repaired.user(erin)["changes"] == []

    # 2. A policy edited in Vault: an admin run refuses, --apply-policies repairs it.
    name = f"claude-auth-sync-{erin}"
    bao.write_policy(name, render_policy(erin, VaultSettings()) + 'path "secret/data/*" {\n  capabilities = ["read"]\n}\n')
    refused = sandbox.run(admin=True)
    assert refused.rc == 78 and refused.user(erin)["policy"] == "drifted"
    fixed = sandbox.run("--apply-policies", admin=True)
    assert fixed.rc == 0 and fixed.user(erin)["policy"] == "applied"
    stored = bao.client().sys.read_policy(name)["data"]["rules"]
    assert stored == render_policy(erin, VaultSettings())
    assert sandbox.run("--apply-policies", admin=True).user(erin)["policy"] == "ok"  # idempotent

    # 3. An expired/revoked token is reissued; a token file with a loose mode is replaced.
    bao.client().auth.token.revoke(read_token(erin))
    os.chmod(home(dave) / TOKEN_REL, 0o644)
    hourly = sandbox.run()
    assert hourly.rc == 1
    assert (hourly.user(erin)["token"], hourly.user(dave)["token"]) == ("expired", "unsafe")
    again = sandbox.run(admin=True)
    assert again.rc == 0
    for user in (dave, erin):
        assert_token_exact(bao, user)
        assert_private_token_file(user)

    # 4. A valid token put in place by hand is adopted; the one it replaced is revoked by the next
    #    admin run (the hourly run cannot, and says so).
    previous = read_token(erin)
    by_hand = bao.create_periodic_token([f"claude-auth-sync-{erin}"], display_name=f"claude-auth-sync-{erin}",
                                        meta={"os_user": erin})
    token_file = home(erin) / TOKEN_REL
    token_file.write_text(by_hand + "\n")
    os.chown(token_file, uid(erin), os.lstat(home(erin)).st_gid)
    token_file.chmod(0o600)
    adopted = sandbox.run()
    assert adopted.rc == 1 and adopted.user(erin)["token"] == "ok"
    assert "replaced token(s) may still be valid" in " ".join(adopted.user(erin)["notes"])
    assert token_is_valid(bao, previous)
    cleaned = sandbox.run(admin=True)
    assert cleaned.rc == 0 and "revoked 1 replaced token(s)" in cleaned.user(erin)["actions"]
    assert not token_is_valid(bao, previous) and token_is_valid(bao, by_hand)
    assert sandbox.run().rc == 0


def test_attacks_planted_in_a_home_never_make_root_touch_anything_outside(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, scratch_etc: Path) -> None:
    require_tool("runuser", "util-linux")
    require_tool("ps", "procps")
    sym, hard, conf = make_users("sym", "hard", "conf")
    sandbox.write_roster([sym, hard, conf])
    scratch = scratch_etc
    # 1. vault-token -> scratch/shadow, planted by the user.
    as_user(sym, "mkdir", "-p", f"{home(sym)}/.config/claude-auth-sync")
    as_user(sym, "ln", "-s", str(scratch / "shadow"), f"{home(sym)}/{TOKEN_REL}")
    # 2. vault-token is a hard link to a root-owned file (protected_hardlinks stops users; root
    #    plants it to stand for any way it could get there).
    as_user(hard, "mkdir", "-p", f"{home(hard)}/.config/claude-auth-sync")
    os.link(scratch / "passwd", home(hard) / TOKEN_REL)
    # 3. ~/.config -> scratch (an attempt to make root create claude-auth-sync/ inside /etc).
    as_user(conf, "ln", "-s", str(scratch), f"{home(conf)}/.config")
    outside = snapshot(scratch, links=False)

    sampler = ProcSampler()
    result = sandbox.run("--apply-policies", admin=True, sampler=sampler)
    assert sampler.rounds > 3 and any(b"claude_auth_sync.admin.provision" in c for c in sampler.cmdlines), \
        "the sampler did not see the provisioner running"

    assert snapshot(scratch, links=False) == outside, "something outside the homes changed"
    assert not (scratch / "claude-auth-sync").exists()
    assert os.lstat(scratch / "passwd").st_nlink == 1  # the hard link was replaced, not written through
    for user in (sym, hard, conf):
        assert no_root_files(user) == [], user
    # The planted files were replaced by the user's own token file.
    for user in (sym, hard):
        assert result.user(user)["token"] == "minted", result.stdout
        assert_private_token_file(user)
        assert_token_exact(bao, user)
    # ~/.config as a symlink is refused (never followed), and said so.
    entry = result.user(conf)
    assert entry["severity"] == 78 and "symlink" in " ".join(entry["notes"])
    assert os.path.islink(home(conf) / ".config")
    assert result.rc == 78
    # No token in any process's argv or environment, in ps output, in the output or the state file.
    tokens = [read_token(sym), read_token(hard)]
    for token in tokens:
        assert not sampler.seen(token), "a minted token was visible in a process's argv or environment"
        assert token not in result.stdout and token not in result.stderr
        assert token not in (sandbox.state / "tokens.json").read_text()
    assert not any(bao.root_token.encode() in c for c in sampler.cmdlines), "the admin token was in an argv"
    assert not any(bao.root_token.encode() in p for p in sampler.ps_outputs)


def test_removed_user_timer_disabled_then_token_revoked_with_prune(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    frank, gina = make_users("frank", "gina")
    sandbox.write_roster([frank, gina])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    gina_token = read_token(gina)
    bao.client().secrets.kv.v2.create_or_update_secret(path=f"{KV}/{gina}", secret={"claudeAiOauth": {"a": 1}},
                                                       mount_point="secret")
    sandbox.write_roster([frank])

    hourly = sandbox.run()
    assert hourly.rc == 1
    removed = hourly.user(gina)
    assert removed["in_roster"] is False and removed["timer"] == "disabled" and removed["token"] == "revoke pending"
    assert not sandbox.timer_link(gina).exists() and sandbox.timer_link(frank).is_symlink()
    assert token_is_valid(bao, gina_token)  # no admin token: nothing revoked

    pruned = sandbox.run("--apply-policies", "--prune", admin=True)
    assert pruned.rc == 0, pruned.stdout
    assert pruned.user(gina)["token"] == "revoked" and pruned.user(gina)["policy"] == "deleted"
    assert not token_is_valid(bao, gina_token)
    assert f"claude-auth-sync-{gina}" not in bao.client().sys.list_policies()["data"]["policies"]
    kept = bao.client().secrets.kv.v2.read_secret_version(path=f"{KV}/{gina}", mount_point="secret",
                                                          raise_on_deleted_version=True)
    assert kept["data"]["data"] == {"claudeAiOauth": {"a": 1}}  # the secret is kept
    assert gina not in json.loads((sandbox.state / "tokens.json").read_text())["users"]
    assert_token_exact(bao, frank)
    final = sandbox.run()
    assert final.rc == 0 and final.data["removed"] == []


AGENT_CHECK = '''
import json, os, pwd, sys
from pathlib import Path
from claude_auth_sync.errors import BackendRefused
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.plugins.backend_vault.store import VaultBackend
me = pwd.getpwuid(os.getuid())
settings = VaultSettings(addr=sys.argv[1])
token_file = Path(me.pw_dir) / ".config/claude-auth-sync/vault-token"
mine = VaultBackend(settings, me.pw_name, me.pw_uid, token_file)
out = {"ttl": mine.renew().ttl_s}
out["version"] = mine.write({"accessToken": "a", "refreshToken": "r"}, expected_version=None)
out["read_back"] = mine.read_latest().oauth == {"accessToken": "a", "refreshToken": "r"}
other = VaultBackend(settings, sys.argv[2], me.pw_uid, token_file)
try:
    other.read_latest()
    out["other"] = "readable"
except BackendRefused as err:
    out["other"] = err.reason
print(json.dumps(out))
'''


def test_the_agent_running_as_the_user_accepts_the_provisioned_token(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, user_venv: Path) -> None:
    runuser = require_tool("runuser", "util-linux")
    jack, kate = make_users("jack", "kate")
    sandbox.write_roster([jack, kate])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    proc = subprocess.run([runuser, "-u", jack, "--", str(user_venv / "bin/python"), "-c", AGENT_CHECK,
                           bao.addr, kate], capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["ttl"] > PERIOD_S - 600 and result["version"] == 1 and result["read_back"] is True
    assert result["other"] == "vault_forbidden"


def test_the_documented_least_privilege_admin_token_is_enough(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    hana, ivan = make_users("hana", "ivan")
    bao.write_policy("t3-provisioner-admin", (REPO / "deploy/vault/t3-provisioner-admin.hcl").read_text())
    admin = bao.create_periodic_token(["t3-provisioner-admin"], period="1h", display_name="t3-admin")
    sandbox.write_roster([hana, ivan])
    first = sandbox.run("--apply-policies", admin=admin)
    assert first.rc == 0, first.stdout + first.stderr
    for user in (hana, ivan):
        assert_token_exact(bao, user)
    sandbox.write_roster([hana])
    ivan_token = read_token(ivan)
    pruned = sandbox.run("--apply-policies", "--prune", admin=admin)
    assert pruned.rc == 0, pruned.stdout
    assert not token_is_valid(bao, ivan_token)
    assert f"claude-auth-sync-{ivan}" not in bao.client().sys.list_policies()["data"]["policies"]
    assert "t3-provisioner-admin" in bao.client().sys.list_policies()["data"]["policies"]  # not ours to prune


def test_shipped_units_verify_and_keep_their_promises(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    # verify insists that ExecStart= binaries exist: a copy of the units pointing at stand-ins.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("claude-auth-sync", "t3-provision-users"):
        (bindir / name).write_text("#!/bin/sh\nexit 0\n")
        (bindir / name).chmod(0o755)
    copies = tmp_path / "units"
    copies.mkdir()
    for unit in UNITS.iterdir():
        (copies / unit.name).write_text(unit.read_text().replace("/usr/local/bin/", f"{bindir}/"))
    names = ["claude-auth-sync@casverify.service", "claude-auth-sync@casverify.timer",
             "t3-provision-users.service", "t3-provision-users.timer"]
    verify = subprocess.run([analyze, "verify", "--man=no", *[str(copies / n) for n in names]],
                            capture_output=True, text=True, cwd=copies)
    assert verify.returncode == 0 and verify.stderr.strip() == "" and verify.stdout.strip() == "", verify.stderr

    service = (UNITS / "claude-auth-sync@.service").read_text()
    directives = [line.strip() for line in service.splitlines() if line.strip() and not line.startswith("#")]
    assert "ExecStart=/usr/local/bin/claude-auth-sync run" in directives
    for needed in ("Type=oneshot", "User=%i", "SyslogIdentifier=claude-auth-sync", "NoNewPrivileges=yes",
                   "ProtectSystem=strict", "PrivateTmp=yes", "LimitCORE=0"):
        assert needed in directives, needed
    assert any(d.startswith("TimeoutStartSec=") for d in directives)
    success = [d.split("=", 1)[1].split() for d in directives if d.startswith("SuccessExitStatus=")]
    assert all("1" not in s and "78" not in s for s in success)  # FAIL is never success
    assert not any("%h" in d for d in directives)  # %h is root's home in a system unit
    assert "MemoryDenyWriteExecute=yes" not in directives  # the CLI's JIT needs W+X pages
    assert (UNITS / "t3-provision-users.service").read_text().count("ExecStart=/usr/local/bin/t3-provision-users") == 1

    timer = (UNITS / "claude-auth-sync@.timer").read_text()
    assert "Persistent=true" in timer and re.search(r"^RandomizedDelaySec=\S+", timer, re.M)
    calendar = re.search(r"^OnCalendar=(.+)$", timer, re.M)
    assert calendar
    nexts = subprocess.run([analyze, "calendar", "--iterations=5", calendar.group(1)],
                           capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"}).stdout
    hours = [int(h) for h in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ \d{4}-\d\d-\d\d (\d\d):00:00", nexts)]
    assert len(hours) == 5 and all((b - a) % 24 == 6 for a, b in zip(hours, hours[1:])), nexts
    hourly = (UNITS / "t3-provision-users.timer").read_text()
    assert "OnCalendar=hourly" in hourly and "Persistent=true" in hourly

    exposures = {}
    for unit in ("claude-auth-sync@.service", "t3-provision-users.service"):
        out = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(copies / unit)],
                             capture_output=True, text=True, cwd=copies)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
        assert match, out.stdout + out.stderr
        exposures[unit] = float(match.group(1))
    assert exposures["claude-auth-sync@.service"] <= 1.5, exposures
    assert exposures["t3-provision-users.service"] <= 3.0, exposures


def test_scripts_pass_shellcheck() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    scripts = sorted(str(p) for p in (REPO / "scripts").rglob("*.sh")) + [str(REPO / ".ci/run")]
    assert str(REPO / "scripts/workstation/setup-devvm.sh") in scripts
    result = subprocess.run([shellcheck, "--severity=style", "-x", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    setup = (REPO / "scripts/workstation/setup-devvm.sh").read_text()
    assert "set -euo pipefail" in setup


def test_setup_devvm_installs_everything_and_is_idempotent(tmp_path: Path, bao: OpenBaoServer) -> None:
    require_tool("systemctl", "systemd")
    if not Path("/usr/bin/python3").is_file():
        pytest.fail("/usr/bin/python3 (Debian's python3) is missing")
    root = tmp_path / "root"
    root.mkdir()
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "CAS_ROOT": str(root),
           "VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "HOME": str(tmp_path)}
    script = REPO / "scripts/workstation/setup-devvm.sh"
    first = subprocess.run(["bash", str(script), "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert report["admin"] is True and {u["user"] for u in report["users"]} >= {"wizard", "alice"}

    roster = root / "etc/claude-auth-sync/roster.yaml"
    assert roster.read_bytes() == (REPO / "scripts/workstation/roster.yaml").read_bytes()
    st = os.lstat(roster)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
    for unit in UNITS.iterdir():
        installed = root / "etc/systemd/system" / unit.name
        assert installed.read_bytes() == unit.read_bytes() and stat.S_IMODE(installed.stat().st_mode) == 0o644
    assert os.readlink(root / "etc/systemd/system/timers.target.wants/t3-provision-users.timer") == \
        "/etc/systemd/system/t3-provision-users.timer"
    for command in ("t3-provision-users", "claude-auth-sync"):
        assert os.readlink(root / "usr/local/bin" / command) == f"/opt/claude-auth-sync/venv/bin/{command}"
        assert os.access(root / "opt/claude-auth-sync/venv/bin" / command, os.X_OK)
    venv = root / "opt/claude-auth-sync/venv"
    assert Path(os.readlink(venv / "bin/python")).name.startswith("python3")
    assert all(os.stat(p).st_mode & 0o005 == 0o005 for p in (venv, venv / "bin", venv / "bin/claude-auth-sync"))
    for user in ("wizard", "alice"):
        assert bao.client().sys.read_policy(f"claude-auth-sync-{user}")["data"]["rules"] == \
            render_policy(user, VaultSettings())

    config = root / "etc/claude-auth-sync/config.toml"
    assert config.read_text().splitlines()[-2:] == ["[vault]", f'addr = "{bao.addr}"']
    assert stat.S_IMODE(config.stat().st_mode) == 0o644 and config.stat().st_uid == 0
    # The hourly provisioner, as its unit runs it (no VAULT_* variables), finds Vault through it.
    hourly = subprocess.run([str(root / "opt/claude-auth-sync/venv/bin/t3-provision-users"), "--json",
                             "--config", str(config), "--roster", str(roster), "--systemd-root", str(root),
                             "--state-dir", str(root / "var/lib/claude-auth-sync")],
                            env={"PATH": env["PATH"]}, capture_output=True, text=True)
    assert hourly.returncode == 0, hourly.stdout + hourly.stderr

    # Issue 11, item 15: a config.toml a user could write is refused by the provisioner (one line,
    # exit 78), and setup-devvm.sh repairs it (the second run below).
    os.chown(config, 65534, 65534)
    config.chmod(0o666)
    refused = subprocess.run(hourly.args, env={"PATH": env["PATH"]}, capture_output=True, text=True)
    assert refused.returncode == 78, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "refusing to trust it" in refused.stderr

    watched = [roster, config, *(root / "etc/systemd/system").iterdir()]
    before = {str(p): os.lstat(p).st_mtime_ns for p in watched}
    # The repair makes the file safe but does not trust it in the same run: whoever could write it
    # chose where the admin token would go (a hostile tester's finding). A person reads it, reruns.
    repaired = subprocess.run(["bash", str(script), "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert repaired.returncode == 78, repaired.stderr[-3000:]
    assert "repaired" in repaired.stderr and str(config) in repaired.stderr and "not trusted" in repaired.stderr
    assert (config.stat().st_uid, config.stat().st_gid, stat.S_IMODE(config.stat().st_mode)) == (0, 0, 0o644)
    assert repaired.stdout == ""  # the provisioner never ran
    second = subprocess.run(["bash", str(script), "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {str(p): os.lstat(p).st_mtime_ns for p in watched} == before
    assert json.loads(second.stdout)["policies"]["applied"] == []

    # Refuses to run without the admin token.
    no_token = subprocess.run(["bash", str(script)], env={k: v for k, v in env.items() if k != "VAULT_TOKEN"},
                              capture_output=True, text=True)
    assert no_token.returncode != 0 and "VAULT_TOKEN" in no_token.stderr
