"""``claude-auth-sync check --all`` and ``check -t`` over real OS users (a dotted SSSD-style name
among them), their real files, and a home whose file system really hangs (a FUSE mount that never
answers: the kernel waits killably, so only a deadline the plugin keeps itself can end it)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_auth_sync.testing import oauth_object
from tests.integration.test_fleet import stamp, write_as
from tests.integration.test_provisioning import make_users  # noqa: F401 - fixture
from tests.support.home import child_env

pytestmark = pytest.mark.real

LOG = ".local/state/claude-auth-sync/sync.log"
CREDS = ".claude/.credentials.json"
SECRETS = ["sk-ant-oat01-CHECKALL-access", "sk-ant-ort01-CHECKALL-refresh"]
STARTUP_S = 3.0  # the interpreter and the plugins load before the plugin's clock starts (2 busy cores)
HOSTILE_REASON = '"a|b=1;2;3 \x1b]0;pwned\x07\x1b[2J [red]x[/red] \u202e z|w=5s;;"'


def cli() -> str:
    return str(Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv")) / "bin/claude-auth-sync")


def check_all(tmp_path: Path, roster: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    began = time.monotonic()
    result = subprocess.run([cli(), "check", "--all", "--roster", str(roster), *args], env=env,
                            capture_output=True, text=True, timeout=120, cwd="/")
    return result, time.monotonic() - began


def write_roster(tmp_path: Path, users: list[str]) -> Path:
    roster = tmp_path / "roster.yaml"
    roster.write_text("users:\n" + "".join(f"  - os_user: {u}\n    email: {u.replace('.', '-')}@example.com\n"
                                           for u in users))
    return roster


@pytest.fixture
def dotted_user() -> Iterator[str]:
    """A real account named like an SSSD/AD login (``cas.d<hex>``); removed afterwards."""
    name = f"cas.d{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
    yield name
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", "--remove", name], capture_output=True)


def home(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def logged_in(user: str, *log_lines: str) -> None:
    oauth = oauth_object(*SECRETS, expires_at_ms=int((time.time() + 7200) * 1000))
    write_as(user, home(user) / CREDS, json.dumps({"claudeAiOauth": oauth}))
    write_as(user, home(user) / LOG, "".join(f"{x}\n" for x in log_lines))


def perf_labels(stdout: str) -> dict[str, str]:
    items = stdout.split("|", 1)[1].split()
    return {m[1]: m[2] for m in (re.fullmatch(r"'?([^'=]+)'?=(-?\d+s(?:;.*)?)", i) for i in items) if m}


def test_check_all_worst_state_wins_users_named_per_state_perfdata_per_user(
        tmp_path, make_users, dotted_user) -> None:  # noqa: F811
    ok, warn, fail = make_users("ok", "warn", "fail")
    logged_in(ok, f"{stamp(600)} OK user={ok} action=none store_ttl_s=2764800")
    logged_in(dotted_user, f"{stamp(300)} OK user={dotted_user} action=none")
    # A roster user who never logged in: the agent's WARN reason, a WARNING here (never CRITICAL).
    write_as(warn, home(warn) / LOG, f"{stamp(60)} WARN user={warn} action=none reason=awaiting_first_login\n")
    logged_in(fail, f"{stamp(7200)} OK user={fail} action=none",
              f"{stamp(60)} FAIL user={fail} action=rollback reason=auth_failed_after_restore")
    roster = write_roster(tmp_path, [ok, warn, fail, dotted_user, "casghost"])

    result, _ = check_all(tmp_path, roster)
    assert result.returncode == 2, result.stdout + result.stderr
    status, perf = result.stdout.rstrip("\n").split(" | ")
    assert "\n" not in result.stdout.rstrip("\n")
    assert status.startswith("CLAUDE-AUTH-SYNC CRITICAL - critical: ")
    assert f"critical: {fail} (last run FAIL (auth_failed_after_restore))" in status
    assert "unknown: casghost (no OS account on this host)" in status
    assert f"warning: {warn} (" in status and "awaiting_first_login" in status
    assert status.endswith(f"ok: {ok}, {dotted_user}")
    labels = perf_labels(result.stdout)
    assert labels[f"{ok}_last_ok_age"].startswith(("600s", "601s", "602s")) and f"{ok}_vault_ttl" in labels
    assert f"'{dotted_user}_last_ok_age'=" in perf, "a label that is not a plain word is quoted"
    assert labels[f"{dotted_user}_last_ok_age"].endswith(";43200;86400")
    assert f"{fail}_last_ok_age" in labels and not any(k.startswith("casghost") for k in labels)
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr

    # The same thresholds for every user: a tighter one turns the healthy ones CRITICAL too.
    strict, _ = check_all(tmp_path, write_roster(tmp_path, [ok, dotted_user]), "-c", "last_ok_age=200", "-v")
    lines = strict.stdout.splitlines()
    assert strict.returncode == 2 and lines[0] == f"CLAUDE-AUTH-SYNC CRITICAL - critical: {ok} (no OK for 10m), {dotted_user} (no OK for 5m)"
    assert f"CRITICAL {dotted_user}: no OK for 5m" in lines and lines[-1].startswith("| ")
    healthy, _ = check_all(tmp_path, write_roster(tmp_path, [ok, dotted_user]))
    assert healthy.returncode == 0 and healthy.stdout.startswith(f"CLAUDE-AUTH-SYNC OK - ok: {ok}, {dotted_user} | ")


def test_check_all_never_follows_a_users_symlink_and_keeps_hostile_text_inert(tmp_path, make_users) -> None:  # noqa: F811
    linked, marked = make_users("link", "mark")
    # A log only root can read, saying OK: root following the user's symlink would report it.
    decoy = tmp_path / "root-only.log"
    decoy.write_text(f"{stamp(10)} OK user={linked} action=none\n")
    decoy.chmod(0o600)
    logged_in(linked)
    (home(linked) / LOG).unlink()
    subprocess.run(["runuser", "-u", linked, "--", "ln", "-s", str(decoy), str(home(linked) / LOG)], check=True)
    logged_in(marked, f"{stamp(120)} OK user={marked} action=none",
              f"{stamp(60)} WARN user={marked} action=none reason={HOSTILE_REASON} store_ttl_s=\u00b9 x=|y=1s")
    roster = write_roster(tmp_path, [linked, marked])

    for args in ([], ["-v"]):
        result, _ = check_all(tmp_path, roster, *args)
        out = result.stdout
        assert result.returncode == 3, out + result.stderr  # UNKNOWN (the symlink) beats WARNING
        assert f"unknown: {linked} (" in out and "not a regular file" in out
        assert f"warning: {marked} (last run WARN (a/b=1;2;3 " in out
        assert out.count("|") == 1 and not any(c in out for c in ("\x1b", "\x07", "\u202e")), out
        assert set(perf_labels(out)) == {f"{marked}_access_ttl", f"{marked}_last_ok_age", f"{marked}_last_run_age"}


@contextlib.contextmanager
def hung_file_system(mount_point: Path) -> Iterator[None]:
    """A FUSE file system at ``mount_point`` that never answers (not even FUSE_INIT): every lookup
    below it waits in the kernel (killably: SIGALRM does not end it), like a dead NFS server's.
    Closing the device aborts the connection (waiters get ENOTCONN); then it is detached."""
    libc = ctypes.CDLL(None, use_errno=True)
    device = os.open("/dev/fuse", os.O_RDWR)  # not inheritable: no child keeps it open
    options = f"fd={device},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"cas-hung", str(mount_point).encode(), b"fuse", 0, options) != 0:
        os.close(device)
        errno = ctypes.get_errno()
        raise OSError(errno, f"mounting FUSE at {mount_point}: {os.strerror(errno)}")
    try:
        yield
    finally:
        os.close(device)
        libc.umount2(str(mount_point).encode(), 2)  # MNT_DETACH


def test_check_all_timeout_a_hung_home_is_unknown_for_that_user_and_the_plugin_ends_in_time(
        tmp_path, make_users) -> None:  # noqa: F811
    ok, hung, hung2 = make_users("ok", "hang", "hangb")
    for user in (ok, hung, hung2):
        logged_in(user, f"{stamp(60)} OK user={user} action=none")
    with hung_file_system(home(hung) / Path(LOG).parent), hung_file_system(home(hung2) / Path(LOG).parent):
        one, elapsed = check_all(tmp_path, write_roster(tmp_path, [hung, ok]), "-t", "4")
        assert one.returncode == 3, one.stdout + one.stderr
        assert one.stdout.startswith(f"CLAUDE-AUTH-SYNC UNKNOWN - unknown: {hung} (state not read within 2s "), one.stdout
        assert f"ok: {ok} | {ok}_access_ttl=" in one.stdout and f"{ok}_last_ok_age=" in one.stdout  # still judged
        assert 1.9 < elapsed < 4 + STARTUP_S, elapsed

        both, elapsed = check_all(tmp_path, write_roster(tmp_path, [hung, hung2, ok]), "--timeout", "2")
        assert both.returncode == 3, both.stdout + both.stderr
        assert both.stdout.startswith(f"CLAUDE-AUTH-SYNC UNKNOWN - timeout: check --all aborted after 2s (still "
                                      f"reading {hung2}'s state"), both.stdout
        assert len(both.stdout.splitlines()) == 1 and 1.9 < elapsed < 2 + STARTUP_S, elapsed

        # The user's own check: the same hang ends at -t, UNKNOWN, with a message.
        env = child_env(home(hung))
        began = time.monotonic()
        own = subprocess.run(["runuser", "-u", hung, "--", cli(), "check", "-t", "2"], env=env, capture_output=True,
                             text=True, timeout=60, cwd="/")
        elapsed = time.monotonic() - began
        assert own.returncode == 3 and 1.9 < elapsed < 2 + STARTUP_S, (own.stdout, own.stderr, elapsed)
        assert own.stdout.startswith("CLAUDE-AUTH-SYNC UNKNOWN - timeout: check aborted after 2s (reading the login "
                                     "and the log did not finish"), own.stdout
    after, _ = check_all(tmp_path, write_roster(tmp_path, [hung, ok]), "-t", "4")
    assert after.returncode == 0, after.stdout  # the mount is gone: both read again


def test_check_all_refuses_a_non_root_caller_and_a_bad_roster_as_unknown(tmp_path, make_users) -> None:  # noqa: F811
    (user,) = make_users("nr")
    result = subprocess.run(["runuser", "-u", user, "--", cli(), "check", "--all"], env=child_env(home(user)),
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 3 and result.stdout.startswith("CLAUDE-AUTH-SYNC UNKNOWN - check --all reads"), result
    assert "sudo claude-auth-sync check --all" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("users:\n  - os_user: ../etc\n    email: x@example.com\n")
    broken, _ = check_all(tmp_path, bad)
    assert broken.returncode == 3 and broken.stdout.startswith("CLAUDE-AUTH-SYNC UNKNOWN - invalid roster")
    assert len(broken.stdout.splitlines()) == 1, broken.stdout
    missing, _ = check_all(tmp_path, tmp_path / "absent.yaml")
    assert missing.returncode == 3 and missing.stdout.startswith("CLAUDE-AUTH-SYNC UNKNOWN - "), missing.stdout
    usage, _ = check_all(tmp_path, bad, "-w", "nope=1")
    assert usage.returncode == 3 and "-w 'nope=1'" in usage.stdout
    for args in (["-t", "0"], ["-t"], ["--bogus"]):
        direct = subprocess.run([cli(), "check-all", "--roster", str(bad), *args], capture_output=True, text=True,
                                timeout=60, cwd="/", env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
        assert direct.returncode == 3 and direct.stdout.startswith("CLAUDE-AUTH-SYNC UNKNOWN - "), (args, direct)


def test_check_all_reads_each_users_own_paths_whatever_roots_environment_says(tmp_path, make_users) -> None:  # noqa: F811
    """Root's per-user variables (here CLAUDE_AUTH_SYNC_STATE_DIR and XDG_STATE_HOME naming root's
    own directories) never reach a user's child: the settings read CLAUDE_AUTH_SYNC_* from the
    child's process environment, so the child replaces it with the unit's. Each user's own log is
    read: OK, never 'no run recorded'."""
    (ok,) = make_users("envok")
    logged_in(ok, f"{stamp(600)} OK user={ok} action=none store_ttl_s=2764800")
    elsewhere = tmp_path / "roots-state"
    elsewhere.mkdir(mode=0o700)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CLAUDE_AUTH_SYNC_STATE_DIR": str(elsewhere),
           "XDG_STATE_HOME": str(elsewhere)}
    result = subprocess.run([cli(), "check", "--all", "--roster", str(write_roster(tmp_path, [ok]))], env=env,
                            capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"CLAUDE-AUTH-SYNC OK - ok: {ok} | "), result.stdout
    assert str(elsewhere) not in result.stdout + result.stderr
