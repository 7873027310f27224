"""setup-devvm.sh for real, under a booted systemd (issue 14, item 4): install, dry runs,
roster edits, upgrade without an admin token, offboarding, uninstall, purge (also one that cannot
finish: it keeps the package and the settings and says how to finish; and one that meets unit
names planted to be split or globbed).

One throw-away container for the module (``tests/support/nspawn.py``: an overlay of this machine's
root under its own systemd; the real ``sudo``, ``systemctl``, ``pip``, OpenBao on loopback). A
copy of the checkout goes to ``/srv/cas-checkout`` inside, as a clone would be, and every step
runs the README's administrator's-guide commands *verbatim* from there (:data:`README_COMMANDS`
checks that the README still shows them). The admin token reaches the shell on stdin, never in
an argument. Users are created inside the container (uids no host user has; ``UID_MAX`` raised
inside only, so the provisioner accepts them).

The tests run in file order and build on each other (one installation's life).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest

from tests.support.nspawn import Container
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = "/srv/cas-checkout"
CACERT = "/etc/ssl/certs/ca-certificates.crt"
KV = "workstation/claude-users"
DOC = "/usr/share/doc/claude-auth-sync/runbook.md"
ENV_FILE = "/etc/default/claude-auth-sync"

# The README's commands, as the tests run them (after `export VAULT_ADDR=... VAULT_TOKEN=...`).
SUDO = "sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN,VAULT_CACERT"
INSTALL = f"{SUDO} scripts/workstation/setup-devvm.sh"
UPGRADE = "sudo scripts/workstation/setup-devvm.sh --upgrade"
OFFBOARD = f"{SUDO} /usr/local/bin/t3-provision-users --offboard"
UNINSTALL = "sudo scripts/workstation/setup-devvm.sh --uninstall"
PURGE = f"{SUDO} scripts/workstation/setup-devvm.sh --uninstall --purge"
README_COMMANDS = (INSTALL, f"{INSTALL} --dry-run", UPGRADE, f"{OFFBOARD} <user> --dry-run", f"{OFFBOARD} <user>\n",
                   UNINSTALL, PURGE)

#: What a dry run must leave exactly as it was (file trees; plus the test users' homes and the
#: units' states). Not all of /etc and /home: the overlay's lower layer is the live host, where
#: concurrent tests add users (/etc/passwd, /home/cas*) while this runs.
WATCHED = ("/etc/claude-auth-sync", "/etc/systemd/system", "/etc/polkit-1", "/etc/default", "/etc/sudoers.d",
           "/opt/claude-auth-sync", "/usr/local/bin", "/usr/share/doc/claude-auth-sync", "/var/lib/claude-auth-sync")
_SNAPSHOT = r"""
import hashlib, json, os, stat, sys
out = {}
for root in sys.argv[1:]:
    if not os.path.lexists(root):
        continue
    for dirpath, dirs, files in os.walk(root):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirs + files]:
            st = os.lstat(name)
            if stat.S_ISREG(st.st_mode):
                with open(name, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(name)
            else:
                what = None
            out[name] = [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, what]
print(json.dumps(out, sort_keys=True))
"""


@dataclass
class Site:
    box: Container
    bao: OpenBaoServer
    users: list[str]

    def sh(self, script: str, *, admin: bool = False, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``script`` in bash in the checkout, as root; ``admin``: VAULT_TOKEN read from stdin first."""
        prelude = "IFS= read -r VAULT_TOKEN; export VAULT_TOKEN; " if admin else ""
        return self.box.run(["bash", "-c", f"{prelude}cd {CHECKOUT} && {script}"], check=check, timeout=timeout,
                            input=(self.bao.root_token + "\n") if admin else "",
                            env={"VAULT_ADDR": self.bao.addr, "VAULT_CACERT": CACERT})

    def write_roster(self, users: list[str]) -> None:
        body = "".join(f"  - os_user: {u}\n    email: {u}@example.com\n" for u in users)
        self.box.write(f"{CHECKOUT}/scripts/workstation/roster.yaml", "users:\n" + body)

    def snapshot(self) -> dict[str, Any]:
        homes = [f"/home/{u}" for u in self.users]
        files = json.loads(self.box.run(["python3", "-c", _SNAPSHOT, *WATCHED, *homes]).stdout)
        units = self.box.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                              "claude-auth-sync*", "t3-provision-users*"]).stdout
        unit_files = self.box.run(["systemctl", "list-unit-files", "--plain", "--no-legend",
                                   "claude-auth-sync*", "t3-provision-users*"], check=False).stdout
        return {"files": files, "units": sorted(units.splitlines()), "unit_files": sorted(unit_files.splitlines())}

    def prop(self, unit: str, name: str) -> str:
        return self.box.unit_property(unit, name)

    def exists(self, path: str) -> bool:
        return self.box.run(["test", "-e", path], check=False).returncode == 0

    def token_valid(self, user: str) -> bool:
        token = self.box.read(f"/home/{user}/.config/claude-auth-sync/vault-token").decode().strip()
        try:
            self.bao.client(token).auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            return False
        return True


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two :meth:`Site.snapshot` results (paths, unit lines)."""
    files = sorted(k for k in before["files"].keys() | after["files"].keys()
                   if before["files"].get(k) != after["files"].get(k))
    units = sorted(set(before["units"]) ^ set(after["units"])) + sorted(set(before["unit_files"]) ^ set(after["unit_files"]))
    return files + units


def copy_checkout(box: Container) -> None:
    """The checkout's files (tracked and new, as a clone plus this work would have) into the box."""
    names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout
    box.run(["install", "-d", "-m", "0755", CHECKOUT])
    packer = subprocess.Popen(["tar", "-C", str(REPO), "--null", "--ignore-failed-read", "-T", "-", "-cf", "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert packer.stdin and packer.stdout
    packer.stdin.write(names)
    packer.stdin.close()
    unpack = subprocess.run(["nsenter", "-t", str(box.init_pid), "-a", "tar", "-C", CHECKOUT, "-xf", "-"],
                            stdin=packer.stdout, capture_output=True, timeout=120)
    packer.wait(timeout=60)
    assert unpack.returncode == 0, unpack.stderr


@pytest.fixture(scope="module")
def site(bao: OpenBaoServer) -> Iterator[Site]:
    with Container() as box:
        box.run(["sed", "-i", "s/^UID_MAX.*/UID_MAX 299999/", "/etc/login.defs"])
        copy_checkout(box)
        users = [f"casset{secrets.token_hex(3)}", f"casoff{secrets.token_hex(3)}"]
        for user in users:
            box.useradd(user)
        yield Site(box, bao, users)


def test_readme_shows_the_commands_these_tests_run() -> None:
    readme = (REPO / "README.md").read_text()
    for command in README_COMMANDS:
        assert command in readme, command


def test_dry_run_of_a_first_install_changes_nothing(site: Site) -> None:
    site.write_roster(site.users)
    before = site.snapshot()
    plan = site.sh(f"{INSTALL} --dry-run", admin=True)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "would create /opt/claude-auth-sync/venv" in plan.stderr and "would install /etc/claude-auth-sync/roster.yaml" in plan.stderr
    assert f"would install {ENV_FILE}" in plan.stderr
    assert changes(before, site.snapshot()) == []
    assert site.bao.root_token not in plan.stdout + plan.stderr


def test_install_with_the_readme_command(site: Site) -> None:
    done = site.sh(INSTALL, admin=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert site.bao.root_token not in done.stdout + done.stderr
    config = site.box.read("/etc/claude-auth-sync/config.toml").decode()
    # VAULT_CACERT came through sudo (--preserve-env names it) into the written config.
    assert f'cacert = "{CACERT}"' in config and f'addr = "{site.bao.addr}"' in config
    assert site.box.read(DOC) == (REPO / "docs/runbook.md").read_bytes()
    # The documented example of the units' EnvironmentFile= (all comments: it changes nothing).
    assert site.box.read(ENV_FILE) == (REPO / "deploy/default/claude-auth-sync").read_bytes()
    assert site.box.run(["stat", "-c", "%U:%G %a", ENV_FILE]).stdout.strip() == "root:root 644"
    for unit in ("claude-auth-sync@.service", "t3-provision-users.service"):
        assert site.prop(unit.replace("@.", f"@{site.users[0]}."), "Documentation") == f"file://{DOC}"
        assert "/etc/default/claude-auth-sync" in site.prop(unit.replace("@.", f"@{site.users[0]}."), "EnvironmentFiles")
    assert site.prop("t3-provision-users.timer", "ActiveState") == "active"
    for user in site.users:
        assert site.prop(f"claude-auth-sync@{user}.timer", "ActiveState") == "active"
        assert site.prop(f"claude-auth-sync@{user}.path", "ActiveState") == "active"
        assert site.token_valid(user)
    # The hourly unit, under its own sandbox and with the example EnvironmentFile, finds nothing to do.
    site.box.systemctl("start", "t3-provision-users.service")
    assert site.prop("t3-provision-users.service", "Result") == "success"


def hourly_run(site: Site) -> tuple[str, str]:
    """Start t3-provision-users.service once: (its Result, what it printed to the journal)."""
    site.box.systemctl("start", "t3-provision-users.service", check=False)
    invocation = site.prop("t3-provision-users.service", "InvocationID")
    lines = site.box.journal("t3-provision-users", matches={"_SYSTEMD_INVOCATION_ID": invocation})
    return site.prop("t3-provision-users.service", "Result"), "\n".join(str(e.get("MESSAGE")) for e in lines)


def test_the_services_read_etc_default_but_never_an_admin_token_from_it(site: Site) -> None:
    env_file = ENV_FILE
    # Read: VAULT_ADDR there overrides config.toml (a dead port: Vault unreachable, 75).
    site.box.write(env_file, "VAULT_ADDR=http://127.0.0.1:9\n")
    result, _ = hourly_run(site)
    assert result == "exit-code" and site.prop("t3-provision-users.service", "ExecMainStatus") == "75"
    # An admin token put there is still unset for the hourly run (UnsetEnvironment= comes last).
    site.box.write(env_file, f"VAULT_TOKEN={site.bao.root_token}\n", mode=0o600)
    result, printed = hourly_run(site)
    assert result == "success" and "(no admin token)" in printed and "with admin token" not in printed, printed
    assert site.bao.root_token not in printed
    site.box.run(["rm", "-f", env_file])  # the next install puts the example back (it is absent)


def test_dry_runs_of_every_mode_change_nothing(site: Site) -> None:
    before = site.snapshot()
    for command, admin in ((f"{INSTALL} --dry-run", True), (f"{UPGRADE} --dry-run", False),
                           (f"{UNINSTALL} --dry-run", False), (f"{PURGE} --dry-run", True)):
        plan = site.sh(command, admin=admin)
        assert plan.returncode == 0, command + plan.stdout + plan.stderr
        assert changes(before, site.snapshot()) == [], command
    uninstall_plan = site.sh(f"{UNINSTALL} --dry-run")
    assert "would remove /opt/claude-auth-sync" in uninstall_plan.stderr


def test_roster_changes_from_the_checkout_are_taken_and_hand_edits_kept(site: Site) -> None:
    roster = "/etc/claude-auth-sync/roster.yaml"
    # Runbook step 1: the roster is edited in the checkout; the installed one was not touched by
    # hand, so the rerun takes it (the previous one kept as .old, the diff shown).
    extra = f"casnew{secrets.token_hex(3)}"
    site.write_roster([*site.users, extra])
    taken = site.sh(INSTALL, admin=True)
    assert taken.returncode == 0, taken.stdout[-2000:] + taken.stderr[-2000:]
    assert extra in site.box.read(roster).decode() and f"+    email: {extra}@example.com" in taken.stderr
    assert site.exists(f"{roster}.old")
    # A hand edit of the installed roster is never overwritten: kept, the checkout's beside it.
    edited = site.box.read(roster).decode() + "# edited by hand\n"
    site.box.write(roster, edited)
    site.write_roster(site.users)
    kept = site.sh(INSTALL, admin=True)
    assert kept.returncode == 0, kept.stdout[-2000:] + kept.stderr[-2000:]
    assert site.box.read(roster).decode() == edited
    assert "edited by hand" in kept.stderr and f"{roster}.dist" in kept.stderr
    assert site.box.read(f"{roster}.dist") == site.box.read(f"{CHECKOUT}/scripts/workstation/roster.yaml")
    # Taking the checkout's, as the message says, brings the install back to plain reruns.
    site.box.run(["install", "-m", "0644", f"{roster}.dist", roster])
    again = site.sh(INSTALL, admin=True)
    assert again.returncode == 0 and "diff" not in again.stderr.lower(), again.stderr[-2000:]


def test_upgrade_needs_no_admin_token_and_restarts_nothing(site: Site) -> None:
    units = ["t3-provision-users.timer", *(f"claude-auth-sync@{u}.{k}" for u in site.users for k in ("timer", "path"))]
    started = {u: site.prop(u, "ActiveEnterTimestampMonotonic") for u in units}
    tokens = {u: site.box.read(f"/home/{u}/.config/claude-auth-sync/vault-token") for u in site.users}
    # A new version of the checkout: the runbook and a unit changed.
    site.box.run(["sh", "-c", f"echo '<!-- upgraded -->' >> {CHECKOUT}/docs/runbook.md; "
                              f"echo '# upgraded' >> {CHECKOUT}/deploy/systemd/claude-auth-sync@.timer"])
    upgraded = site.sh(UPGRADE)  # no VAULT_TOKEN at all
    assert upgraded.returncode == 0, upgraded.stdout[-2000:] + upgraded.stderr[-2000:]
    assert site.box.read(DOC).endswith(b"<!-- upgraded -->\n")
    assert site.box.read("/etc/systemd/system/claude-auth-sync@.timer").endswith(b"# upgraded\n")
    for unit in units:
        assert site.prop(unit, "NeedDaemonReload") == "no", unit  # reloaded ...
        assert site.prop(unit, "ActiveEnterTimestampMonotonic") == started[unit], unit  # ... not restarted
    assert {u: site.box.read(f"/home/{u}/.config/claude-auth-sync/vault-token") for u in site.users} == tokens


def test_offboarding_with_the_readme_commands(site: Site) -> None:
    stays, leaves = site.users
    site.box.run(["install", "-d", "-o", leaves, "-m", "0700", f"/home/{leaves}/.claude"])
    site.box.write(f"/home/{leaves}/.claude/.credentials.json", '{"claudeAiOauth": {}}\n', mode=0o600, owner=leaves)
    site.bao.client().secrets.kv.v2.create_or_update_secret(path=f"{KV}/{leaves}", secret={"claudeAiOauth": {}},
                                                           mount_point="secret")
    token = site.box.read(f"/home/{leaves}/.config/claude-auth-sync/vault-token").decode().strip()
    refused = site.sh(f"{OFFBOARD} {leaves}", admin=True)
    assert refused.returncode == 78 and "still in the roster" in refused.stderr
    # 1. out of the roster (checkout, then the install command); 2. offboard.
    site.write_roster([stays])
    out = site.sh(INSTALL, admin=True)
    # 1: "removed from the roster; their token is not revoked yet" (the offboarding revokes it).
    assert out.returncode == 1 and "not revoked yet" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert site.prop(f"claude-auth-sync@{leaves}.timer", "ActiveState") == "inactive"
    before = site.snapshot()
    plan = site.sh(f"{OFFBOARD} {leaves} --dry-run", admin=True)
    assert plan.returncode == 0 and "would" in plan.stdout, plan.stdout + plan.stderr
    assert changes(before, site.snapshot()) == []
    done = site.sh(f"{OFFBOARD} {leaves} --destroy-secret", admin=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for kind in ("timer", "path"):
        assert site.prop(f"claude-auth-sync@{leaves}.{kind}", "ActiveState") == "inactive"
        assert site.prop(f"claude-auth-sync@{leaves}.{kind}", "UnitFileState") != "enabled"
    assert not site.exists(f"/home/{leaves}/.config/claude-auth-sync")
    assert not site.exists(f"/home/{leaves}/.local/state/claude-auth-sync")
    assert site.exists(f"/home/{leaves}/.claude/.credentials.json")
    try:
        site.bao.client(token).auth.token.lookup_self()
        revoked = False
    except hvac.exceptions.Forbidden:
        revoked = True
    assert revoked
    with pytest.raises(hvac.exceptions.InvalidPath):
        site.bao.client().secrets.kv.v2.read_secret_metadata(path=f"{KV}/{leaves}", mount_point="secret")
    again = site.sh(f"{OFFBOARD} {leaves} --destroy-secret", admin=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert site.token_valid(stays) and site.prop(f"claude-auth-sync@{stays}.timer", "ActiveState") == "active"


def test_uninstall_keeps_settings_and_users_files_then_purge_removes_them(site: Site) -> None:
    stays = site.users[0]
    done = site.sh(UNINSTALL)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = site.box.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "claude-auth-sync*",
                           "t3-provision-users*"]).stdout
    assert not re.search(r"\b(active|activating)\b", listed), listed
    for gone in ("/etc/systemd/system/claude-auth-sync@.service", "/etc/systemd/system/t3-provision-users.timer",
                 f"/etc/systemd/system/claude-auth-sync@{stays}.path.d/home.conf",
                 "/etc/polkit-1/rules.d/50-claude-auth-sync.rules", DOC, "/usr/local/bin/t3-provision-users",
                 "/usr/local/bin/claude-auth-sync", "/opt/claude-auth-sync"):
        assert not site.exists(gone), gone
    for kept in ("/etc/claude-auth-sync/roster.yaml", "/etc/claude-auth-sync/config.toml",
                 "/var/lib/claude-auth-sync/tokens.json", f"/home/{stays}/.config/claude-auth-sync/vault-token",
                 ENV_FILE):
        assert site.exists(kept), kept
    assert "offboard users before uninstalling" in done.stderr
    assert site.sh(UNINSTALL).returncode == 0  # idempotent
    refused = site.sh(PURGE, admin=True)
    assert refused.returncode != 0 and "install it again" in refused.stderr

    # Installed again for the purge tests below.
    assert site.sh(INSTALL, admin=True).returncode == 0
    assert site.token_valid(stays)


def test_a_purge_that_cannot_revoke_keeps_the_package_and_settings_and_says_how_to_finish(site: Site) -> None:
    stays = site.users[0]
    token = site.box.read(f"/home/{stays}/.config/claude-auth-sync/vault-token").decode().strip()
    # No admin token: the user's token cannot be revoked. Everything that runs stops, but the tool
    # (the venv), its settings (config.toml: the Vault address; the roster) and the state file
    # (the accessors) stay, so the same command with the admin token finishes the purge.
    failed = site.sh(PURGE)
    assert failed.returncode != 0, failed.stdout[-3000:] + failed.stderr[-3000:]
    listed = site.box.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "claude-auth-sync*",
                           "t3-provision-users*"]).stdout
    assert not re.search(r"\b(active|activating)\b", listed), listed
    for gone in ("/etc/systemd/system/claude-auth-sync@.timer", "/etc/systemd/system/t3-provision-users.timer",
                 "/etc/polkit-1/rules.d/50-claude-auth-sync.rules", DOC):
        assert not site.exists(gone), gone
    # The package and its commands stay: the offboarding's own "next:" line names t3-provision-users.
    for kept in ("/opt/claude-auth-sync/venv/bin/t3-provision-users", "/usr/local/bin/t3-provision-users",
                 "/etc/claude-auth-sync/config.toml",
                 "/etc/claude-auth-sync/roster.yaml", "/var/lib/claude-auth-sync/tokens.json", ENV_FILE,
                 f"/home/{stays}/.config/claude-auth-sync/vault-token"):
        assert site.exists(kept), kept
    assert site.token_valid(stays)
    said = failed.stderr
    for path in ("/opt/claude-auth-sync", "/etc/claude-auth-sync", "/var/lib/claude-auth-sync"):
        assert f"kept {path}" in said, said[-3000:]
    assert f"{SUDO} {CHECKOUT}/scripts/workstation/setup-devvm.sh --uninstall --purge" in said, said[-3000:]
    assert "VAULT_TOKEN" in said

    # Unit names planted to be split or globbed by the shell (one names a bystander after a space):
    # skipped and reported, never offboarded; the bystander's agent files are not touched.
    bystander = f"casby{secrets.token_hex(3)}"
    site.box.useradd(bystander)
    marker = f"/home/{bystander}/.local/state/claude-auth-sync/marker"
    site.box.write(marker, "mine\n", owner=bystander, dir_mode=0o700)
    wants = "/etc/systemd/system/timers.target.wants"
    planted = [f"{wants}/claude-auth-sync@*.timer", f"{wants}/claude-auth-sync@x {bystander}.timer",
               f"{wants}/claude-auth-sync@[a-z]*.path"]
    for name in planted:
        site.box.write(name, "")

    # Rerun as the message says, with the admin token: the purge completes.
    purged = site.sh(PURGE, admin=True)
    assert purged.returncode == 0, purged.stdout[-3000:] + purged.stderr[-3000:]
    with pytest.raises(hvac.exceptions.Forbidden):
        site.bao.client(token).auth.token.lookup_self()
    for gone in ("/etc/claude-auth-sync", "/var/lib/claude-auth-sync", "/opt/claude-auth-sync", ENV_FILE,
                 "/usr/local/bin/t3-provision-users", "/usr/local/bin/claude-auth-sync",
                 f"/home/{stays}/.config/claude-auth-sync", f"/home/{stays}/.local/state/claude-auth-sync"):
        assert not site.exists(gone), gone
    assert site.box.read(marker) == b"mine\n"
    assert "skipped" in purged.stderr and f"x {bystander}" in purged.stderr, purged.stderr[-3000:]
    assert "README.md" not in purged.stdout + purged.stderr  # no pathname expansion in the checkout
    site.box.run(["rm", "-f", *planted])
