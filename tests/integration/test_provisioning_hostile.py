"""Issue 11, root side: hostile users, careless administrators and t3-provision-users.

Real OS accounts, real OpenBao, the provisioner run as root runs it (a subprocess). Each test
fails on the code before the fix (see the issue's items 11, 12, 14, 15 and 16).
"""

from __future__ import annotations

import os
import pwd
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_provisioning import (  # noqa: F401 - fixtures
    TOKEN_REL, Result, Sandbox, assert_private_token_file, assert_token_exact, bao, home, make_users, read_token,
    sandbox, uid,
)
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

CONTROL_BYTES = ("\x1b", "\x07", "\x9b", "\x90")


def write_token_file_as(user: str, data: bytes) -> None:
    """The user (not root) replaces their own token file with ``data`` (0600)."""
    path = home(user) / TOKEN_REL
    subprocess.run(["runuser", "-u", user, "--", "sh", "-c", f"umask 077; cat > '{path}'"], input=data, check=True)


def no_terminal_controls(text: str) -> bool:
    return not any(c in text for c in CONTROL_BYTES)


# ----------------------------------------------------------------------------------- item 11


def test_a_users_non_ascii_token_file_stops_nobody_else(sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    ff, utf, good = make_users("ff", "utf", "good")
    sandbox.write_roster([ff, utf, good])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    write_token_file_as(ff, b"hvs.\xff\xfe\n")
    write_token_file_as(utf, "s.\u2603token\n".encode())

    for args, admin in (((), False), (("--apply-policies",), True), (("--prune",), True)):
        result = sandbox.run(*args, admin=admin)
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.data, (result.rc, result.stderr[-2000:])  # a report, not a crash
        assert result.user(good)["token"] == "ok"
        if not admin:
            assert result.rc == 1
            for user in (ff, utf):
                entry = result.user(user)
                assert entry["token"] == "unsafe" and "needs admin run" in entry["actions"]
                assert any("characters no Vault token has" in n for n in entry["notes"])
            write_again = False
        else:
            assert result.rc == 0, result.stdout[-2000:]
            write_again = True
        if write_again:  # the admin run replaced them: break them again for the next round
            for user in (ff, utf):
                assert_token_exact(bao, user)
                assert_private_token_file(user)
            write_token_file_as(ff, b"hvs.\xff\xfe\n")
            write_token_file_as(utf, "s.\u2603token\n".encode())


# ----------------------------------------------------------------------------------- item 12


def test_token_metadata_is_shown_as_inert_text_in_roots_terminal(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    (mallory,) = make_users("mallory")
    sandbox.write_roster([mallory])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    hostile = "[/bold][link=http://evil.example]x[/link]\x1b]0;pwned\x07\x1b[2J\x1b]8;;http://evil.example\x1b\\:skull:"
    planted = bao.create_periodic_token([f"claude-auth-sync-{mallory}"], display_name=f"claude-auth-sync-{mallory}",
                                        meta={"os_user": hostile})
    write_token_file_as(mallory, planted.encode() + b"\n")
    table = sandbox.run(json_output=False)
    assert table.rc == 1, table.stdout[-2000:] + table.stderr[-2000:]
    assert "Traceback" not in table.stderr and mallory in table.stdout
    assert "minted for" in table.stdout and "[/bold]" in table.stdout  # shown, literally
    assert no_terminal_controls(table.stdout + table.stderr)
    assert "\U0001f480" not in table.stdout  # :skull: stays text


# ----------------------------------------------------------------------------------- item 14


@pytest.fixture
def odd_accounts() -> Iterator[Any]:
    """odd("alias", uid=N) / odd("high", uid=N, home=True): accounts useradd -o / -u; removed afterwards."""
    created: list[tuple[str, bool]] = []

    def make(role: str, *, uid_: int, create_home: bool) -> str:
        name = f"cas{role}{random.randrange(16**6):06x}"
        argv = ["useradd", "-o", "-u", str(uid_), "--shell", "/bin/sh"]
        argv += ["--create-home"] if create_home else ["-M", "-d", "/nonexistent-cas"]
        subprocess.run([*argv, name], check=True, capture_output=True)
        created.append((name, create_home))
        return name

    yield make
    for name, with_home in created:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", *(["--remove"] if with_home else []), name], capture_output=True)


def test_nobody_uids_outside_login_defs_and_shared_uids_are_refused(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, odd_accounts: Any) -> None:
    alice, good = make_users("alice", "good")
    alias = odd_accounts("alias", uid_=uid(alice), create_home=False)  # a second name for alice's uid
    used = {p.pw_uid for p in pwd.getpwall()}
    high_uid = next(u for u in range(61000 + random.randrange(3000), 65000) if u not in used)
    high = odd_accounts("high", uid_=high_uid, create_home=True)
    sandbox.write_roster([alice, alias, "nobody", high, good])

    result = sandbox.run("--apply-policies", admin=True)
    assert result.rc == 78, result.stdout[-2000:]
    for user, why in ((alice, f"also belongs to roster user {alias}"), (alias, f"also belongs to roster user {alice}"),
                      ("nobody", "overflow uid"), (high, "outside UID_MIN..UID_MAX")):
        entry = result.user(user)
        assert (entry["account"], entry["token"], entry["timer"]) == ("refused", "-", "-"), entry
        assert any(why in note for note in entry["notes"]), entry["notes"]
        assert not sandbox.timer_link(user).exists()
    assert not (home(alice) / TOKEN_REL).exists() and not (home(high) / TOKEN_REL).exists()
    assert result.user(good)["token"] == "minted"
    assert_token_exact(bao, good)


# ----------------------------------------------------------------------------------- item 15


class Trap(threading.Thread):
    """A TCP listener standing for an attacker's "Vault": counts connections, answers nothing."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> Trap:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()
        self.sock.close()


def test_a_config_toml_a_user_could_write_is_refused_before_any_token_is_sent(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any, tmp_path: Path) -> None:
    (eve,) = make_users("eve")
    sandbox.write_roster([eve])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    sandbox.config = etc / "config.toml"
    with Trap() as trap:
        sandbox.config.write_text(f'[vault]\naddr = "http://127.0.0.1:{trap.port}"\n')
        cases = [("owned by eve", lambda: os.chown(sandbox.config, uid(eve), uid(eve))),
                 ("world-writable", lambda: (os.chown(sandbox.config, 0, 0), sandbox.config.chmod(0o666))),
                 ("group-writable", lambda: sandbox.config.chmod(0o664)),
                 ("in a directory eve can write", lambda: (sandbox.config.chmod(0o644), etc.chmod(0o777)))]
        for what, tamper in cases:
            tamper()
            refused = sandbox.run(vault_addr=False, json_output=False)
            assert refused.rc == 78, (what, refused.stdout[-1000:], refused.stderr[-1000:])
            assert trap.connections == 0, f"{what}: the provisioner connected to the address in the file"
            assert len(refused.stderr.strip().splitlines()) == 1 and "refusing to trust it" in refused.stderr, what
            assert "chown root:root" in refused.stderr, what
        etc.chmod(0o755)  # control: a file only root can write is trusted (and the trap is reached)
        trusted = sandbox.run(vault_addr=False)
        assert trusted.rc == 75 and trap.connections > 0, trusted.stdout[-1000:]


# ----------------------------------------------------------------------------------- item 16


STOP_LOOP = "while :; do kill -STOP -1; done"  # kill(-1): every process of the caller's, but itself


class Stopper:
    """As ``user``: SIGSTOP every process of theirs, in a loop (how a user stalls a root-forked child).

    Pinned to the last CPU while the provisioner is pinned to the first (:func:`pinned_run`), so
    the loop runs while the short-lived child does; the tests retry when it still misses.
    """

    def __init__(self, user: str) -> None:
        self.user = user
        cpu = str(max(os.sched_getaffinity(0)))
        self.proc = subprocess.Popen(["taskset", "-c", cpu, "runuser", "-u", user, "--", "sh", "-c", STOP_LOOP],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")

    def end(self) -> None:
        subprocess.run(["pkill", "-KILL", "-u", self.user, "-f", STOP_LOOP], capture_output=True)
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["pkill", "-CONT", "-u", self.user], capture_output=True)


def pinned_run(sandbox: Sandbox, box: dict[str, Result], *args: str, admin: bool = False) -> threading.Thread:
    """Start ``sandbox.run`` in a thread pinned to the first CPU (its children inherit that)."""

    def target() -> None:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # this thread only
        box["r"] = sandbox.run(*args, admin=admin)

    runner = threading.Thread(target=target, daemon=True)
    runner.start()
    return runner


def _stopped_children(user_uid: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["Uid"].split()[0] == str(user_uid) and b"claude_auth_sync.admin.provision" in cmdline \
                and fields["State"].strip().startswith("T"):
            found.append(int(pid))
    return found


def _catch_stopped_child(sandbox: Sandbox, user: str, attempts: int = 25) -> tuple[int, dict[int, bytes], Any]:
    """Run the admin provisioner until ``user``'s child is caught stopped; its and its parent's environ.
    A race by nature (the child lives for milliseconds unless the stop loop hits it): a loaded
    machine once missed all of 8 runs, so up to 25 (a caught run ends the loop at once)."""
    for _ in range(attempts):
        box: dict[str, Result] = {}
        runner = pinned_run(sandbox, box, admin=True)
        while runner.is_alive():
            time.sleep(0.005)
            children = _stopped_children(uid(user))
            if children:
                child = children[0]
                status = Path(f"/proc/{child}/status").read_text()
                parent = int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])
                return child, {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in (child, parent)}, runner
        runner.join()
    pytest.fail(f"{user}'s child was never caught stopped in {attempts} runs")


def test_the_admin_token_is_in_no_environ_block_of_the_provisioner_or_its_children(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    (stall,) = make_users("stall")
    sandbox.write_roster([stall])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    stopper = Stopper(stall)
    try:
        _child, environs, runner = _catch_stopped_child(sandbox, stall)
    finally:
        stopper.end()
    runner.join(60)
    assert len(environs) == 2
    for pid, block in environs.items():
        assert b"VAULT_ADDR=" in block, "not the provisioner's environment"
        leaked = bao.root_token.encode() in block  # a boolean: pytest would print the operands
        assert not leaked, f"the admin token is in /proc/{pid}/environ"


def test_a_user_who_stalls_their_children_cannot_hold_the_run_past_its_deadline(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    stall, later = make_users("st", "later")
    sandbox.write_roster([stall, later])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    stopper = Stopper(stall)
    try:
        for _ in range(8):
            box: dict[str, Result] = {}
            began = time.monotonic()
            pinned_run(sandbox, box, "--deadline", "5").join(120)
            elapsed = time.monotonic() - began
            if box["r"].rc != 0:
                break  # caught: the child was stopped
    finally:
        stopper.end()
    result = box["r"]
    assert elapsed < 15, f"the run took {elapsed:.0f}s (30s per stalled child before the fix)"
    assert result.rc == 75, result.stdout[-2000:] + result.stderr[-2000:]
    # The child gets what is left of the 5 s deadline (less on a loaded machine, never more).
    assert re.search(r"did not finish in [1-5]s", " ".join(result.user(stall)["notes"])), result.user(stall)
    assert "deadline" in " ".join(result.user(later)["notes"]), result.user(later)


def test_a_users_own_token_as_vault_token_is_called_not_an_admin_token(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    (ursula,) = make_users("ursula")
    sandbox.write_roster([ursula])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    mistaken = sandbox.run(admin=read_token(ursula))
    assert mistaken.rc == 78
    assert any("not an admin token" in e for e in mistaken.data["errors"]), mistaken.data["errors"]
    assert "apply the Vault stack first" not in mistaken.stdout
    leaked = read_token(ursula) in mistaken.stdout + mistaken.stderr
    assert not leaked, "the user's token is in the output"


def test_a_temp_file_left_by_a_killed_write_child_is_removed_on_the_next_run(
        sandbox: Sandbox, bao: OpenBaoServer, make_users: Any) -> None:
    (kim,) = make_users("kim")
    sandbox.write_roster([kim])
    assert sandbox.run("--apply-policies", admin=True).rc == 0
    config_dir = home(kim) / TOKEN_REL.parent
    left = config_dir / ".vault-token.0123456789abcdef"  # the name job_write_token gives its temp file
    subprocess.run(["runuser", "-u", kim, "--", "sh", "-c", f"umask 077; echo partial > '{left}'"], check=True)
    subprocess.run(["runuser", "-u", kim, "--", "touch", str(config_dir / ".vault-token.keepme")], check=True)
    dry = sandbox.run("--dry-run")
    assert left.exists() and any("remove ~/.config/claude-auth-sync/.vault-token.0123456789abcdef" in a
                                 for a in dry.user(kim)["actions"]), dry.user(kim)
    result = sandbox.run(admin=True)
    assert not left.exists(), "the stale temp file is still there"
    assert any("left by an interrupted run" in c for c in result.user(kim)["changes"])
    assert (config_dir / ".vault-token.keepme").exists()  # only our own temp names are removed
    assert result.user(kim)["token"] == "ok"  # the token file itself was never touched
