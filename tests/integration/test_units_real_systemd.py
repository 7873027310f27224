"""The shipped units, started by a real systemd under their own hardening (issue 13).

systemd is not PID 1 on the test machines, so this module boots the machine's own root as a
throw-away overlay container (``tests/support/nspawn.py``, one per module) and installs the agent
there the way ``scripts/workstation/setup-devvm.sh`` does: the units of ``deploy/systemd/`` in
``/etc/systemd/system/``, ``/usr/local/bin/claude-auth-sync`` a symlink to the venv's console
script (the test venv, visible through the overlay), ``/etc/claude-auth-sync/config.toml``
root:root 0644 with the Vault address. Each test creates its own OS user *inside* the container
(``useradd --create-home`` with a uid no host user has; the host's account database is never
touched) with a correctly
provisioned Vault token (policy ``claude-auth-sync-<user>``, periodic, no default policy) and a
login, then drives the units with ``systemctl`` and checks what a person would see: OpenBao's
copy (read with the root token), the container's journal, ``sync.log``.

The network namespace is the host's: OpenBao and the fake Messages API listen on 127.0.0.1 and
units inside reach them. Per-user settings for a test (the API base URL, the stub CLI's knobs)
go into a drop-in ``claude-auth-sync@<user>.service.d/test.conf``, never into the shipped units.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from claude_auth_sync.plugins.backend_vault.policy import policy_name, render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings

from tests.support.cli import fp
from tests.support.fake_anthropic import FakeMessagesAPI
from tests.support.nspawn import Container
from tests.support.openbao import OpenBaoServer

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
STUB_CLAUDE = REPO / "tests" / "support" / "stub_claude.py"
# The service runs with PrivateTmp=yes: a checkout under /tmp (CI clones there) is invisible to it.
STUB_IN_CONTAINER = "/usr/local/libexec/cas-stub-claude"
VENV = Path("/opt/claude-auth-sync-test/venv")

GOOD = "sk-ant-oat01-nspawn-good"
GOOD_REFRESH = "sk-ant-ort01-nspawn-good"
BAD = "sk-ant-oat01-nspawn-revoked"
BAD_REFRESH = "sk-ant-ort01-nspawn-revoked"
MCP = {"github": {"accessToken": "mcp-nspawn-secret", "expiresAt": 4102444800000}}

#: What ``systemd-analyze security`` said for claude-auth-sync@<user>.service inside the container
#: (systemd 252) when this test was written; the test fails if a change makes it worse.
EXPOSURE_MEASURED = 1.1

#: The CLI's off-switches and one attempt per request (as tests/support/claude_cli.QUIET_ENV).
QUIET = ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 "
         "DISABLE_AUTOUPDATER=1 CLAUDE_CODE_MAX_RETRIES=0")


def oauth(access: str, refresh: str) -> dict[str, Any]:
    return {"accessToken": access, "refreshToken": refresh, "expiresAt": 4102444800000,
            "scopes": ["user:inference"], "subscriptionType": "max"}


# -------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def messages_api() -> Iterator[FakeMessagesAPI]:
    """The loopback Messages API stand-in for the real ``claude`` inside the container."""
    with FakeMessagesAPI(accepted_tokens={GOOD}) as fake:
        yield fake


@pytest.fixture(scope="module")
def container(bao: OpenBaoServer) -> Iterator[Container]:
    """One booted container for the module, with the agent installed as setup-devvm.sh does."""
    with Container() as box:
        install_agent(box, bao)
        yield box


def install_agent(box: Container, bao: OpenBaoServer) -> None:
    """Install the agent in ``box`` as setup-devvm.sh does (also used by bench/path_unit.py)."""
    assert (VENV / "bin" / "claude-auth-sync").exists(), f"{VENV} is missing (scripts/dev/test.sh builds it)"
    for unit in sorted(UNITS.glob("claude-auth-sync@.*")):
        box.write(f"/etc/systemd/system/{unit.name}", unit.read_text())
    box.run(["ln", "-sfn", "--", str(VENV / "bin" / "claude-auth-sync"), "/usr/local/bin/claude-auth-sync"])
    box.write(STUB_IN_CONTAINER, STUB_CLAUDE.read_text(), mode=0o755)
    box.write("/etc/claude-auth-sync/config.toml",
              f'backend = "vault"\n\n[vault]\naddr = "{bao.addr}"\n', mode=0o644)
    box.systemctl("daemon-reload")


class UnitUser:
    """An OS user inside the container, provisioned for the agent (Vault token, login)."""

    def __init__(self, box: Container, bao: OpenBaoServer, name: str, home: str | None = None) -> None:
        self.box, self.bao, self.name = box, bao, name
        self.home = home or f"/home/{name}"
        self.service = f"claude-auth-sync@{name}.service"
        self.timer = f"claude-auth-sync@{name}.timer"
        self.path_unit = f"claude-auth-sync@{name}.path"
        self.credentials = f"{self.home}/.claude/.credentials.json"
        self.sync_log = f"{self.home}/.local/state/claude-auth-sync/sync.log"
        self.secret_path = f"workstation/claude-users/{name}"

    def provision(self) -> None:
        self.box.useradd(self.name, home=self.home)
        self.bao.write_policy(policy_name(self.name), render_policy(self.name, VaultSettings()))
        token = self.bao.create_periodic_token([policy_name(self.name)], period="768h",
                                               display_name=f"claude-auth-sync-{self.name}", no_default_policy=True)
        self.box.write(f"{self.home}/.config/claude-auth-sync/vault-token", token + "\n", mode=0o600,
                       owner=self.name, dir_mode=0o700)

    def remove(self) -> None:
        for unit in (self.path_unit, self.timer, self.service):
            self.box.systemctl("disable", "--now", unit, check=False)
            self.box.systemctl("reset-failed", unit, check=False)
        self.box.run(["rm", "-rf", f"/etc/systemd/system/{self.service}.d", f"/etc/systemd/system/{self.path_unit}.d"],
                     check=False)
        self.box.run(["pkill", "-KILL", "-u", self.name], check=False)
        self.box.run(["userdel", "--remove", self.name], check=False)
        self.box.systemctl("daemon-reload", check=False)

    def login(self, document: dict[str, Any]) -> None:
        """Write the credentials file as Claude Code does (user, 0600, in a 0700 ~/.claude)."""
        self.box.write(self.credentials, json.dumps(document), mode=0o600, owner=self.name, dir_mode=0o700)

    def service_dropin(self, text: str) -> None:
        self.box.write(f"/etc/systemd/system/{self.service}.d/test.conf", "[Service]\n" + text)
        self.box.systemctl("daemon-reload")

    def use_real_cli(self, api: FakeMessagesAPI) -> None:
        self.service_dropin(f"Environment=ANTHROPIC_BASE_URL={api.url} {QUIET}\n")

    def use_stub_cli(self, *accepted: str) -> None:
        knobs = ",".join(fp(token) for token in accepted)
        self.service_dropin(f"Environment=CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN={STUB_IN_CONTAINER} "
                            f"STUB_CLAUDE_ACCEPT={knobs}\n")

    def start(self) -> tuple[int, float]:
        """``systemctl start`` the user's service (waits for the oneshot); its exit code and seconds."""
        began = time.monotonic()
        result = self.box.systemctl("start", self.service, check=False, timeout=300)
        return result.returncode, time.monotonic() - began

    def vault_copy(self) -> dict[str, Any]:
        answer = self.bao.client().secrets.kv.v2.read_secret_version(
            path=self.secret_path, mount_point="secret", raise_on_deleted_version=True)
        return answer["data"]

    def status_entries(self, *, at_least: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The journald sink's entries (the ones carrying CAS_* fields) of the user's service, in
        order, once there are ``at_least`` of them (journald stores them asynchronously: the unit
        may be finished before its last entry is readable). Each test has a user of its own."""
        deadline = time.monotonic() + timeout
        while True:
            entries = [e for e in self.box.journal("claude-auth-sync", unit=self.service) if "CAS_STATUS" in e]
            if len(entries) >= at_least or time.monotonic() > deadline:
                return entries
            time.sleep(0.2)

    def read_credentials(self) -> dict[str, Any]:
        return json.loads(self.box.read(self.credentials))

    def explain(self) -> str:
        """What systemd and the journal say about the user's units (for assertion messages)."""
        status = self.box.systemctl("status", "--no-pager", "-l", "--lines=30", self.service, self.timer,
                                    self.path_unit, check=False).stdout
        return status[-4000:]


@pytest.fixture
def unit_user(container: Container, bao: OpenBaoServer) -> Iterator[UnitUser]:
    user = UnitUser(container, bao, f"casu{secrets.token_hex(3)}")
    try:
        user.provision()
        yield user
    finally:
        user.remove()


# -------------------------------------------------------------------------------------- the service


def test_the_service_backs_up_under_its_own_hardening(unit_user: UnitUser, messages_api: FakeMessagesAPI) -> None:
    """``systemctl start``: the real CLI against the loopback API, OK, the copy in OpenBao, the
    status line in the container's journal (journald sink, CAS_* fields) and in sync.log."""
    user = unit_user
    user.use_real_cli(messages_api)
    user.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH), "mcpOAuth": MCP})
    before = len(messages_api.messages_requests)

    rc, _ = user.start()

    assert rc == 0, user.explain()
    assert user.box.unit_property(user.service, "Result") == "success"
    assert user.box.unit_property(user.service, "ExecMainStatus") == "0"
    assert len(messages_api.messages_requests) > before, "the real CLI never reached the API stand-in"
    stored = user.vault_copy()
    assert stored["data"] == {"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)}
    assert stored["metadata"]["version"] == 1
    entries = user.status_entries()
    assert len(entries) == 1, entries
    entry = entries[0]
    assert (entry["CAS_STATUS"], entry["CAS_ACTION"], entry["PRIORITY"]) == ("OK", "backup", "6")
    assert (entry["_SYSTEMD_UNIT"], entry["CAS_USER"]) == (user.service, user.name)
    uid = user.box.run(["id", "-u", user.name]).stdout.strip()
    assert entry["_UID"] == uid
    log = user.box.run(["stat", "-c", "%U %a", user.sync_log]).stdout.split()
    assert log == [user.name, "600"]
    line = user.box.read(user.sync_log).decode().splitlines()[-1]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ OK ", line), line
    assert f"user={user.name}" in line and "action=backup" in line
    everything = json.dumps(user.box.journal()) + user.box.read(user.sync_log).decode()
    assert GOOD not in everything and GOOD_REFRESH not in everything and "mcp-nspawn-secret" not in everything


def test_a_restore_under_the_same_sandbox(unit_user: UnitUser) -> None:
    """A revoked local login: the service restores the Vault copy (OK action=restore), keeping
    ``mcpOAuth``; the stub CLI reads its knobs from the agent's environ under ProtectProc=."""
    user = unit_user
    user.use_stub_cli(GOOD)
    user.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
    assert user.start()[0] == 0, user.explain()
    assert user.vault_copy()["data"]["claudeAiOauth"]["accessToken"] == GOOD

    user.login({"claudeAiOauth": oauth(BAD, BAD_REFRESH), "mcpOAuth": MCP})
    rc, _ = user.start()

    assert rc == 0, user.explain()
    entries = user.status_entries(at_least=2)
    assert [(e["CAS_STATUS"], e["CAS_ACTION"]) for e in entries] == [("OK", "backup"), ("OK", "restore")], entries
    assert len({e["_SYSTEMD_INVOCATION_ID"] for e in entries}) == 2
    document = user.read_credentials()
    assert document == {"claudeAiOauth": oauth(GOOD, GOOD_REFRESH), "mcpOAuth": MCP}
    mode = user.box.run(["stat", "-c", "%U %a", user.credentials]).stdout.split()
    assert mode == [user.name, "600"]
    assert "action=restore" in user.box.read(user.sync_log).decode().splitlines()[-1]


SANDBOX_REPORT = r"""#!/bin/sh
# Runs as ExecStartPre= of the user's service: under the very same sandbox as ExecStart=.
out="$HOME/sandbox-report"
{
    grep -E '^(Uid|NoNewPrivs|Seccomp|CapEff|CapBnd|CapAmb):' /proc/self/status
    echo "uid_map: $(cat /proc/self/uid_map | tr -s ' ' | tr '\n' ';')"
    echo "homes: $(ls -A /home | tr '\n' ' ')"
    echo "tmp: $(ls -A /tmp | tr '\n' ' ')"
    echo "dev_vda: $(test -e /dev/vda && echo present || echo absent)"
    echo "processes: $(ls /proc | grep -c '^[0-9]')"
    touch /usr/cas-probe 2>/dev/null && echo "usr: writable" || echo "usr: read-only"
    touch /etc/cas-probe 2>/dev/null && echo "etc: writable" || echo "etc: read-only"
    touch "$HOME/cas-probe" 2>/dev/null && echo "home: writable" || echo "home: read-only"
} > "$out"
"""


def test_the_sandbox_is_in_force_inside_the_container(unit_user: UnitUser, container: Container) -> None:
    """The hardening is applied, not silently dropped: a script run as ExecStartPre= (same
    sandbox as the agent) sees no capabilities, seccomp on, no other home, a private /tmp, no
    block devices, a read-only /usr and /etc, its own home writable, a private user namespace."""
    user = unit_user
    other = UnitUser(container, user.bao, f"casv{secrets.token_hex(3)}")
    container.useradd(other.name)
    try:
        container.write("/usr/local/libexec/cas-sandbox-report", SANDBOX_REPORT, mode=0o755)
        container.write("/tmp/host-tmp-marker", "x")
        user.use_stub_cli(GOOD)
        user.service_dropin(f"Environment=CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN={STUB_IN_CONTAINER} "
                            f"STUB_CLAUDE_ACCEPT={fp(GOOD)}\nExecStartPre=/usr/local/libexec/cas-sandbox-report\n")
        user.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
        assert user.start()[0] == 0, user.explain()
        report = dict(line.split(":", 1) for line in
                      container.read(f"{user.home}/sandbox-report").decode().splitlines())
        report = {k: v.strip() for k, v in report.items()}
    finally:
        container.run(["userdel", "--remove", other.name], check=False)
        container.run(["rm", "-f", "/tmp/host-tmp-marker"], check=False)
    assert report["NoNewPrivs"] == "1"
    assert report["Seccomp"] == "2"
    assert int(report["CapEff"], 16) == 0 and int(report["CapBnd"], 16) == 0 and int(report["CapAmb"], 16) == 0
    # PrivateUsers=yes: a user namespace mapping only root and the user, not the identity 0..2^32-1.
    assert "4294967295" not in report["uid_map"], report["uid_map"]
    assert report["homes"].split() == [user.name], report["homes"]  # ProtectHome=tmpfs + BindPaths
    assert report["tmp"] == "", report["tmp"]  # PrivateTmp=yes
    assert report["dev_vda"] == "absent"  # PrivateDevices=yes
    assert (report["usr"], report["etc"], report["home"]) == ("read-only", "read-only", "writable")


# -------------------------------------------------------------------------------------- the timer


def test_the_timer_is_scheduled_every_six_hours(unit_user: UnitUser) -> None:
    """``systemctl enable --now`` the timer: active (waiting), wanted by timers.target, next
    elapse on the next 00/06/12/18:00 slot plus the fixed per-user delay (at most 30 min)."""
    user = unit_user
    user.box.systemctl("enable", "--now", user.timer)
    assert user.box.unit_property(user.timer, "ActiveState") == "active"
    assert user.box.unit_property(user.timer, "SubState") == "waiting"
    assert user.box.unit_property(user.timer, "Triggers") == user.service
    link = user.box.run(["readlink", f"/etc/systemd/system/timers.target.wants/{user.timer}"]).stdout.strip()
    assert link == "/etc/systemd/system/claude-auth-sync@.timer"

    listed = user.box.run(["systemctl", "list-timers", "--all", "--no-pager", "--output=json"]).stdout
    timers = {t["unit"]: t for t in json.loads(listed)}
    assert user.timer in timers, listed
    entry = timers[user.timer]
    assert entry["activates"] == user.service
    now = time.time()
    next_s = entry["next"] / 1e6
    assert 0 < next_s - now <= 6.5 * 3600, (now, next_s)
    # The calendar slot it belongs to, in the container's (the host's) local time.
    local = datetime.fromtimestamp(next_s)
    slot = local.replace(hour=local.hour - local.hour % 6, minute=0, second=0, microsecond=0)
    if (local - slot).total_seconds() > 30 * 60:  # can only happen when the delay wraps past a slot
        pytest.fail(f"next elapse {local} is not within 30 min after a 00/06/12/18:00 slot")
    human = user.box.run(["systemctl", "list-timers", "--no-pager", user.timer]).stdout
    assert user.service in human


# -------------------------------------------------------------------------------------- the exposure


def test_systemd_analyze_security_exposure_does_not_regress(unit_user: UnitUser) -> None:
    user = unit_user
    result = user.box.run(["systemd-analyze", "security", "--no-pager", user.service], check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    exposure = float(match.group(1))
    assert exposure <= EXPOSURE_MEASURED, (
        f"exposure {exposure} > {EXPOSURE_MEASURED} (measured when written):\n"
        + "\n".join(line for line in result.stdout.splitlines() if line.startswith("✗")))


# -------------------------------------------------------------------------------------- the path unit

REWRITE = r"""
import json, os, sys, time
path, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
document = sys.argv[4]
for i in range(count):
    # Like Claude Code: a temporary file beside it, renamed over it (0600).
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, document.encode())
    os.close(fd)
    os.rename(tmp, path)
    if i + 1 < count:
        time.sleep(seconds / count)
"""


def path_dropin(user: UnitUser) -> None:
    """What the provisioner writes: the file to watch, from the user's home in the password database."""
    home = user.box.run(["getent", "passwd", user.name]).stdout.split(":")[5]
    user.box.write(f"/etc/systemd/system/{user.path_unit}.d/home.conf",
                   f"[Path]\nPathChanged={home}/.claude/.credentials.json\n")
    user.box.systemctl("daemon-reload")


def rewrite_as_user(user: UnitUser, document: dict[str, Any], count: int = 1, seconds: float = 0.0) -> float:
    """``count`` rewrites of the credentials file by the user (in a unit of their own) over
    ``seconds``; returns the wall time they took."""
    began = time.monotonic()
    user.box.run(["/usr/bin/python3", "-c", REWRITE, user.credentials, str(count), str(seconds), json.dumps(document)],
                 user=user.name, timeout=seconds + 60)
    return time.monotonic() - began


def wait_runs(user: UnitUser, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until the service has logged ``count`` status entries in all and is idle again."""
    deadline = time.monotonic() + timeout
    while True:
        entries = user.status_entries(at_least=0, timeout=0)
        idle = user.box.unit_property(user.service, "ActiveState") in ("inactive", "failed")
        if (len(entries) >= count and idle) or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def test_the_path_unit_needs_the_home_from_a_dropin(unit_user: UnitUser) -> None:
    """No drop-in, no watch: the unit refuses to load rather than guessing /home/%i."""
    user = unit_user
    started = user.box.systemctl("start", user.path_unit, check=False)
    assert started.returncode != 0
    assert user.box.unit_property(user.path_unit, "LoadState") == "bad-setting"


def test_a_change_of_the_credentials_file_starts_the_service_and_a_burst_never_fails_the_path(
        unit_user: UnitUser) -> None:
    """Enabled path unit: a rewrite starts the service (OK, backed up); 100 rewrites in 10 s
    leave the path unit active and the service not failed, with far fewer runs than writes;
    afterwards a new login is still picked up (backed up within seconds)."""
    user = unit_user
    second = "sk-ant-oat01-nspawn-rotated"
    user.use_stub_cli(GOOD, second)
    path_dropin(user)
    user.box.run(["install", "-d", "-o", user.name, "-g", user.name, "-m", "0700", f"{user.home}/.claude"])
    user.box.systemctl("enable", "--now", user.path_unit)
    assert user.box.unit_property(user.path_unit, "ActiveState") == "active"
    link = user.box.run(["readlink", f"/etc/systemd/system/paths.target.wants/{user.path_unit}"]).stdout.strip()
    assert link == "/etc/systemd/system/claude-auth-sync@.path"

    began = time.monotonic()
    rewrite_as_user(user, {"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
    entries = wait_runs(user, 1)
    first_s = time.monotonic() - began
    assert [(e["CAS_STATUS"], e["CAS_ACTION"]) for e in entries] == [("OK", "backup")], user.explain()
    assert user.vault_copy()["data"]["claudeAiOauth"]["accessToken"] == GOOD

    burst_s = rewrite_as_user(user, {"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)}, count=100, seconds=10)
    after_burst = wait_runs(user, 2)
    burst_runs = len(after_burst) - len(entries)
    assert 9 <= burst_s <= 20
    assert user.box.unit_property(user.path_unit, "ActiveState") == "active", user.explain()
    assert user.box.unit_property(user.path_unit, "Result") == "success", user.explain()
    assert user.box.unit_property(user.service, "Result") == "success", user.explain()
    assert 1 <= burst_runs < 100, burst_runs
    assert all(e["CAS_STATUS"] == "OK" for e in after_burst)
    assert user.vault_copy()["metadata"]["version"] == 1  # an unchanged login writes no new version
    # Issue 13 item 2: an unchanged login is answered without an inference.
    burst_inferences = sum(1 for e in after_burst[len(entries):] if e.get("CAS_PROBE_OUTCOME"))
    assert burst_inferences <= 2, burst_inferences

    began = time.monotonic()
    rewrite_as_user(user, {"claudeAiOauth": oauth(second, GOOD_REFRESH)})
    deadline = time.monotonic() + 20
    while user.vault_copy()["data"]["claudeAiOauth"]["accessToken"] != second:
        assert time.monotonic() < deadline, user.explain()
        time.sleep(0.2)
    rotated_s = time.monotonic() - began
    print(f"\npath unit: first change backed up after {first_s:.1f} s; 100 rewrites in {burst_s:.1f} s "
          f"started {burst_runs} runs ({burst_inferences} inferences); a rotation after the burst reached OpenBao in {rotated_s:.1f} s")
    assert user.box.unit_property(user.path_unit, "ActiveState") == "active"


# -------------------------------------------------------------------------------------- the race

T1 = "sk-ant-oat01-nspawn-t1"
T2 = "sk-ant-oat01-nspawn-t2"
BLANKED = {"accessToken": "", "refreshToken": "", "expiresAt": 0, "scopes": ["user:inference"],
           "subscriptionType": "max"}


def race(user: UnitUser) -> None:
    """T1 is the Vault copy (an earlier backup); a Claude Code process rotates the login to T2
    (from now on the API accepts only T2); two seconds later another one, still holding the
    consumed refresh token, blanks the file."""
    user.bao.client().secrets.kv.v2.create_or_update_secret(
        mount_point="secret", path=user.secret_path, secret={"claudeAiOauth": oauth(T1, "sk-ant-ort01-t1")})
    user.use_stub_cli(T2)
    user.box.run(["install", "-d", "-o", user.name, "-g", user.name, "-m", "0700", f"{user.home}/.claude"])
    rewrite_as_user(user, {"claudeAiOauth": oauth(T2, "sk-ant-ort01-t2"), "mcpOAuth": MCP})
    time.sleep(2)
    rewrite_as_user(user, {"claudeAiOauth": BLANKED, "mcpOAuth": MCP})


@pytest.mark.parametrize("watched", [True, False], ids=["path-unit", "timer-only"])
def test_the_rotation_race_recovers_only_with_the_path_unit(unit_user: UnitUser, watched: bool) -> None:
    """Issue 13's race: with the path unit the file holds T2 again within 30 s, OpenBao's latest
    version is T2, status OK, nobody involved. Without it, the next (timer) run can only restore
    the stale T1, which the API refuses: FAIL, the file left blanked."""
    user = unit_user
    if watched:
        path_dropin(user)
        user.box.systemctl("enable", "--now", user.path_unit)
    began = time.monotonic()
    race(user)
    if watched:
        deadline = began + 30
        while True:
            local = user.read_credentials()["claudeAiOauth"]["accessToken"]
            idle = user.box.unit_property(user.service, "ActiveState") in ("inactive", "failed")
            if local == T2 and idle:
                break
            assert time.monotonic() < deadline, user.explain()
            time.sleep(0.2)
        recovered_s = time.monotonic() - began
        assert user.vault_copy()["data"]["claudeAiOauth"]["accessToken"] == T2
        entries = user.status_entries(at_least=2)
        assert entries[-1]["CAS_STATUS"] == "OK", [(e["CAS_STATUS"], e["CAS_ACTION"], e["CAS_REASON"]) for e in entries]
        assert "restore" in [e["CAS_ACTION"] for e in entries]
        assert user.read_credentials()["mcpOAuth"] == MCP
        print(f"\nrace with the path unit: T2 back in the file {recovered_s:.1f} s after the rotation "
              f"({recovered_s - 2:.1f} s after the blanking); runs: "
              f"{[(e['CAS_STATUS'], e['CAS_ACTION']) for e in entries]}")
    else:
        assert user.status_entries(at_least=0, timeout=0) == []  # nothing ran on its own
        rc, _ = user.start()  # what the timer would do, up to 6.5 h later
        assert rc != 0
        entries = user.status_entries()
        assert (entries[-1]["CAS_STATUS"], entries[-1]["PRIORITY"]) == ("FAIL", "3"), entries[-1]
        assert user.vault_copy()["data"]["claudeAiOauth"]["accessToken"] == T1
        assert user.read_credentials()["claudeAiOauth"]["accessToken"] == ""


# -------------------------------------------------------------------------------------- the provisioner

PROVISIONER = VENV / "bin" / "t3-provision-users"
ROSTER = "/etc/claude-auth-sync/roster.yaml"
PROVISION_STATE = "/var/lib/claude-auth-sync"


def run_provisioner(box: Container, bao: OpenBaoServer, users: list[str]) -> dict[str, Any]:
    """``t3-provision-users --apply-policies`` as root inside the container, the roster naming
    ``users``, the admin token (OpenBao's root token) in ``VAULT_TOKEN`` handed over on stdin (never
    in an argv, which ``ps`` shows on the host). Its JSON report (``rc`` added)."""
    # The container's users get uids above the host's UID_MAX (see Container.useradd); the
    # provisioner refuses accounts outside UID_MIN..UID_MAX, so the container's login.defs (an
    # overlay copy, never the host's file) admits them.
    box.run(["sed", "-i", "-E", r"s/^UID_MAX[[:space:]].*/UID_MAX\t\t\t299999/", "/etc/login.defs"])
    box.write(ROSTER, "users:\n" + "".join(f"  - os_user: {u}\n    email: {u}@example.com\n" for u in users))
    script = 'IFS= read -r VAULT_TOKEN; export VAULT_TOKEN; exec "$@"'
    result = box.run(["sh", "-c", script, "t3-provision-users", str(PROVISIONER), "--json", "--apply-policies",
                      "--roster", ROSTER, "--config", "/etc/claude-auth-sync/config.toml",
                      "--state-dir", PROVISION_STATE],
                     input=bao.root_token + "\n", check=False, timeout=300)
    assert bao.root_token not in result.stdout + result.stderr
    report = provisioner_report(result)
    report["stderr"] = result.stderr
    return report


def provisioner_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON report of a ``t3-provision-users --json`` run (``rc`` added); a run that printed
    none fails the test with its output."""
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"t3-provision-users exited {result.returncode} without a JSON report:\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    report["rc"] = result.returncode
    return report


@pytest.fixture
def srv_user(container: Container, bao: OpenBaoServer) -> Iterator[UnitUser]:
    """A user whose home is not under /home (``useradd -d /srv/cas-homes/<user>``); no token yet."""
    name = f"cass{secrets.token_hex(3)}"
    user = UnitUser(container, bao, name, home=f"/srv/cas-homes/{name}")
    try:
        container.useradd(user.name, home=user.home)
        yield user
    finally:
        user.remove()
        container.run(["rm", "-f", ROSTER], check=False)


def test_the_provisioner_enables_the_path_unit_for_a_home_outside_home(srv_user: UnitUser) -> None:
    """The real ``t3-provision-users --apply-policies`` run as root in the container, for a user
    whose home is /srv/cas-homes/<user>: the timer and the path unit are enabled and active, the
    drop-ins name the real home, and the user's next rewrite of the credentials file starts the
    service under its sandbox (the home bound in, not /home/<user>): OK, backed up in OpenBao."""
    user = srv_user
    user.box.run(["install", "-d", "-o", user.name, "-g", user.name, "-m", "0700", f"{user.home}/.claude"])

    report = run_provisioner(user.box, user.bao, [user.name])

    assert report["rc"] == 0, json.dumps(report, indent=1)[-3000:]
    for unit in (user.timer, user.path_unit):
        assert user.box.systemctl("is-enabled", unit, check=False).stdout.strip() == "enabled", user.explain()
        assert user.box.unit_property(unit, "ActiveState") == "active", user.explain()
    assert user.box.unit_property(user.path_unit, "SubState") == "waiting"
    watched = user.box.unit_property(user.path_unit, "Paths")
    assert f"{user.home}/.claude/.credentials.json" in watched, watched
    dropins = {
        f"/etc/systemd/system/{user.path_unit}.d/home.conf":
            f"[Path]\nPathChanged={user.home}/.claude/.credentials.json\n",
        f"/etc/systemd/system/{user.service}.d/home.conf": f"[Service]\nBindPaths=\nBindPaths={user.home}\n",
    }
    for path, body in dropins.items():
        text = user.box.read(path).decode()
        assert text.endswith(body), text
        assert user.box.run(["stat", "-c", "%U %a", path]).stdout.split() == ["root", "644"]
    binds = user.box.unit_property(user.service, "BindPaths")
    assert binds.split() == [f"{user.home}:{user.home}:rbind"], binds  # the shipped /home/%i is reset
    token_file = f"{user.home}/.config/claude-auth-sync/vault-token"
    assert user.box.run(["stat", "-c", "%U %a", token_file]).stdout.split() == [user.name, "600"]

    user.use_stub_cli(GOOD)  # the test's drop-in beside the provisioner's (test.conf after home.conf)
    assert user.status_entries(at_least=0, timeout=0) == []  # enabling started nothing
    began = time.monotonic()
    rewrite_as_user(user, {"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
    entries = wait_runs(user, 1, timeout=30)
    took = time.monotonic() - began
    assert [(e["CAS_STATUS"], e["CAS_ACTION"]) for e in entries] == [("OK", "backup")], user.explain()
    assert user.vault_copy()["data"] == {"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)}
    assert user.box.unit_property(user.service, "Result") == "success"
    line = user.box.read(user.sync_log).decode().splitlines()[-1]
    assert " OK " in f" {line} " and "action=backup" in line, line
    print(f"\nprovisioned path unit ({user.home}): rewrite backed up in {took:.1f} s")


# -------------------------------------------------------------------------------------- a login after FAIL

T3 = "sk-ant-oat01-nspawn-t3"


def test_a_login_after_fail_is_picked_up_without_a_command(unit_user: UnitUser) -> None:
    """Issue 13 item 5: the login is dead (the local copy and the Vault copy both refused by the
    API: FAIL); the person logs in again (Claude Code writes a new login T3 into the file, as the
    user). Within 30 s, with no ``systemctl`` typed: the status is OK and OpenBao's latest version
    holds T3, so the alert resolves on its own."""
    user = unit_user
    user.bao.client().secrets.kv.v2.create_or_update_secret(
        mount_point="secret", path=user.secret_path, secret={"claudeAiOauth": oauth(T1, "sk-ant-ort01-t1")})
    user.use_stub_cli(T3)  # the API accepts only the login still to come
    path_dropin(user)
    user.box.run(["install", "-d", "-o", user.name, "-g", user.name, "-m", "0700", f"{user.home}/.claude"])
    user.box.systemctl("enable", "--now", user.path_unit)

    rewrite_as_user(user, {"claudeAiOauth": oauth(BAD, BAD_REFRESH), "mcpOAuth": MCP})
    entries = wait_runs(user, 1, timeout=30)
    assert entries and entries[-1]["CAS_STATUS"] == "FAIL", [(e["CAS_STATUS"], e["CAS_ACTION"]) for e in entries]
    assert user.box.unit_property(user.service, "Result") == "exit-code"
    assert user.box.unit_property(user.path_unit, "ActiveState") == "active", user.explain()
    assert " FAIL " in user.box.read(user.sync_log).decode().splitlines()[-1]
    failed_runs = len(entries)

    began = time.monotonic()
    rewrite_as_user(user, {"claudeAiOauth": oauth(T3, "sk-ant-ort01-t3"), "mcpOAuth": MCP})  # claude auth login
    deadline = began + 30
    while True:
        entries = user.status_entries(at_least=0, timeout=0)
        stored = user.vault_copy()
        if (len(entries) > failed_runs and entries[-1]["CAS_STATUS"] == "OK"
                and stored["data"]["claudeAiOauth"]["accessToken"] == T3):
            break
        assert time.monotonic() < deadline, (user.explain(), [(e["CAS_STATUS"], e["CAS_ACTION"]) for e in entries])
        time.sleep(0.2)
    took = time.monotonic() - began
    assert stored["data"] == {"claudeAiOauth": oauth(T3, "sk-ant-ort01-t3")}
    assert stored["metadata"]["version"] == 2  # T1, then T3: the failed run stored nothing
    assert entries[-1]["CAS_ACTION"] == "backup", entries[-1]
    assert " OK " in user.box.read(user.sync_log).decode().splitlines()[-1]
    assert user.read_credentials() == {"claudeAiOauth": oauth(T3, "sk-ant-ort01-t3"), "mcpOAuth": MCP}
    print(f"\nlogin after FAIL: OK and T3 in OpenBao {took:.1f} s after the login was written")


# -------------------------------------------------------------------------------------- the polkit rule

POLKIT_RULE = REPO / "deploy" / "polkit" / "50-claude-auth-sync.rules"
POLKIT_RULES_DIR = "/etc/polkit-1/rules.d"


def systemctl_as(user: UnitUser, *args: str) -> Any:
    """``systemctl --no-ask-password <args>`` run by ``user`` (a process of theirs, in a unit of
    its own): what a person types, without a password prompt. The completed process."""
    return user.box.run(["systemctl", "--no-ask-password", *args], user=user.name, check=False, timeout=120)


def refused(result: Any) -> bool:
    text = result.stdout + result.stderr
    return result.returncode != 0 and ("Interactive authentication required" in text or "Access denied" in text)


def test_the_polkit_rule_lets_a_person_start_only_their_own_instance(unit_user: UnitUser, container: Container,
                                                                      bao: OpenBaoServer) -> None:
    """Issue 13 item 6, with the real polkitd and system bus of the container (both D-Bus
    activated, as on a host): without the rule the user's own ``systemctl start`` is refused;
    with deploy/polkit's rule in /etc/polkit-1/rules.d the user starts and restarts their own
    ``claude-auth-sync@<user>.service`` without a password (it runs: OK, backed up), and is
    still refused another user's instance, a ``stop`` of their own, and their own timer."""
    for needed in ("/usr/lib/polkit-1/polkitd", "/usr/bin/dbus-daemon"):
        if container.run(["test", "-x", needed], check=False).returncode != 0:
            pytest.fail(f"{needed} is missing: scripts/dev/test.sh installs polkitd and dbus")
    a = unit_user
    b = UnitUser(container, bao, f"casb{secrets.token_hex(3)}")
    rule = f"{POLKIT_RULES_DIR}/{POLKIT_RULE.name}"
    try:
        b.provision()
        a.use_stub_cli(GOOD)
        a.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
        b.use_stub_cli(GOOD)
        b.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
        container.run(["rm", "-f", rule])
        container.systemctl("try-restart", "polkit.service")

        before = systemctl_as(a, "start", a.service)
        assert refused(before), (before.returncode, before.stdout, before.stderr)  # systemd's default: admins only
        assert a.status_entries(at_least=0, timeout=0) == []

        container.write(rule, POLKIT_RULE.read_text(), mode=0o644)
        container.systemctl("restart", "polkit.service")  # polkitd also reloads on its own; no waiting on that
        assert container.unit_property("polkit.service", "ActiveState") == "active"
        assert container.unit_property("dbus.service", "ActiveState") == "active"

        own = systemctl_as(a, "start", a.service)
        assert own.returncode == 0, (own.stdout, own.stderr, a.explain())
        entries = a.status_entries()
        assert [(e["CAS_STATUS"], e["CAS_ACTION"]) for e in entries] == [("OK", "backup")], entries
        assert a.vault_copy()["data"]["claudeAiOauth"]["accessToken"] == GOOD
        again = systemctl_as(a, "restart", a.service)
        assert again.returncode == 0, (again.stdout, again.stderr)
        assert len(a.status_entries(at_least=2)) == 2

        other = systemctl_as(a, "start", b.service)
        assert refused(other), (other.returncode, other.stdout, other.stderr)
        assert container.unit_property(b.service, "InvocationID") == ""  # never ran
        assert b.status_entries(at_least=0, timeout=0) == []
        for verb, unit in (("restart", b.service), ("stop", a.service), ("start", a.timer),
                           ("start", a.path_unit), ("enable", a.service)):
            result = systemctl_as(a, verb, unit)  # enable: polkit's manage-unit-files, not the rule's action
            assert refused(result), (verb, unit, result.returncode, result.stdout, result.stderr)
        assert container.unit_property(a.timer, "ActiveState") == "inactive"
        # polkit said so in the container's journal too (the rule's answer is not a bypass)
        assert any("polkitd" in str(e.get("SYSLOG_IDENTIFIER")) for e in container.journal("polkitd"))
    finally:
        container.run(["rm", "-f", rule], check=False)
        container.systemctl("try-restart", "polkit.service", check=False)
        b.remove()
