"""Interop of claude_auth_sync.plugins.restore_credentials_file.lock with the real npm proper-lockfile (as Claude Code uses it).

The Node side is tests/node/lockhelper.js, pinned by tests/node/package.json.
Node is required: a missing node fails these tests, it never skips them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.plugins.restore_credentials_file.lock import LockBusy, claude_credentials_lock, lock_paths
from tests.support.home import child_env

pytestmark = pytest.mark.real

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
HELPER = NODE_DIR / "lockhelper.js"
CLAUDE_STALE_MS = 60_000


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is required for the proper-lockfile interop tests (install Node.js 20)")
    installed = NODE_DIR / "node_modules" / "proper-lockfile" / "package.json"
    if not installed.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is required to install tests/node (proper-lockfile)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["proper-lockfile"]
    assert json.loads(installed.read_text())["version"] == pinned
    return exe


@pytest.fixture()
def creds(config_dir: Path) -> Path:
    path = config_dir / ".credentials.json"
    path.write_text('{"claudeAiOauth": {"accessToken": "old"}}')
    return path


def home_env(config_dir: Path) -> dict[str, str]:
    """The helpers run as Claude Code would: ``HOME`` is the directory holding ``config_dir``
    (``<tmp>/home/.claude``), never the tester's."""
    return child_env(config_dir.parent)


def node_try(node: str, which: str, config_dir: Path, stale_ms: int = CLAUDE_STALE_MS) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [node, str(HELPER), "try", which, str(config_dir), "--stale", str(stale_ms)],
        env=home_env(config_dir),
        capture_output=True,
        text=True,
        timeout=20,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return proc.returncode, json.loads(lines[-1])


class Proc:
    """A helper process whose stdout lines are read in the background."""

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, text: str, timeout: float = 10.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {text!r} from {self.proc.args}") from None
        assert text in line, line
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture()
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def node_hold(procs: list[Proc], node: str, which: str, config_dir: Path, *extra: str) -> Proc:
    p = Proc([node, str(HELPER), "hold", which, str(config_dir), *extra], env=home_env(config_dir))
    procs.append(p)
    locked = json.loads(p.expect('"locked"'))
    oauth, legacy = lock_paths(config_dir)
    expected = {"oauth": [oauth], "legacy": [legacy], "both": [oauth, legacy]}[which]
    assert [Path(f) for f in locked["lockfiles"]] == expected  # Node and we name the same directories
    return p


AGENT = """
import sys, time
from pathlib import Path
from claude_auth_sync.plugins.restore_credentials_file.lock import claude_credentials_lock
from claude_auth_sync.signals import sigterm_raises_systemexit
with sigterm_raises_systemexit():
    with claude_credentials_lock(Path(sys.argv[1]), refresh_every_s=float(sys.argv[2])):
        print("HELD", flush=True)
        time.sleep(60)
"""


def agent_hold(procs: list[Proc], config_dir: Path, refresh_every_s: float = 0.5) -> Proc:
    p = Proc([sys.executable, "-c", AGENT, str(config_dir), str(refresh_every_s)], env=home_env(config_dir))
    procs.append(p)
    p.expect("HELD")
    return p


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def ident(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


# --- Node holds, our agent waits ------------------------------------------------------


@pytest.mark.parametrize("which", ["oauth", "legacy"])
def test_node_holder_makes_agent_time_out_with_lockbusy(
    node: str, procs: list[Proc], config_dir: Path, creds: Path, which: str
) -> None:
    target = lock_paths(config_dir)[0 if which == "oauth" else 1]
    holder = node_hold(procs, node, which, config_dir)
    before = ident(target)
    creds_before = (creds.read_bytes(), os.stat(creds).st_mtime_ns)

    t0 = time.monotonic()
    with pytest.raises(LockBusy) as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=1.0, poll_s=0.05):
            creds.write_text("{}")
    assert info.value.path == target
    assert 1.0 <= info.value.waited_s <= time.monotonic() - t0 < 3
    assert (creds.read_bytes(), os.stat(creds).st_mtime_ns) == creds_before
    assert ident(target) == before  # Node's lock untouched
    assert not any(p.exists() for p in lock_paths(config_dir) if p != target)  # ours released

    holder.send("release")
    holder.expect('"released"')
    assert holder.wait() == 0  # Node never saw its lock compromised
    with claude_credentials_lock(config_dir, wait_timeout_s=0):
        pass


def test_agent_waits_for_node_holder_to_release(node: str, procs: list[Proc], config_dir: Path) -> None:
    holder = node_hold(procs, node, "both", config_dir)
    timer = threading.Timer(0.8, holder.send, args=("release",))
    timer.start()
    t0 = time.monotonic()
    try:
        with claude_credentials_lock(config_dir, wait_timeout_s=10, poll_s=0.05) as held:
            assert time.monotonic() - t0 >= 0.7
            held.check()
    finally:
        timer.join()
    assert holder.wait() == 0


def test_agent_never_breaks_a_live_node_lock_30s_old(node: str, procs: list[Proc], config_dir: Path) -> None:
    oauth, _ = lock_paths(config_dir)
    # update 30000 (the most proper-lockfile allows for stale 60000), so Node does
    # not refresh during the test and notice that we aged its mtime.
    holder = node_hold(procs, node, "oauth", config_dir, "--update", "30000")
    age(oauth, 30)
    before = os.stat(oauth)
    with pytest.raises(LockBusy) as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=1.5, poll_s=0.1):
            pass
    assert info.value.holder_age_s == pytest.approx(30, abs=3)
    after = os.stat(oauth)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    holder.send("release")
    holder.expect('"released"')
    assert holder.wait() == 0


def test_dead_node_lock_is_broken_only_after_60s(node: str, procs: list[Proc], config_dir: Path) -> None:
    oauth, legacy = lock_paths(config_dir)
    holder = node_hold(procs, node, "both", config_dir)
    holder.kill()  # SIGKILL: proper-lockfile's exit hook cannot run
    assert oauth.is_dir() and legacy.is_dir()
    with pytest.raises(LockBusy):
        with claude_credentials_lock(config_dir, wait_timeout_s=0.3, poll_s=0.05):
            pass
    age(oauth, 61)
    age(legacy, 61)
    with claude_credentials_lock(config_dir, wait_timeout_s=0) as held:
        held.check()
    assert not oauth.exists() and not legacy.exists()


# --- our agent holds, Node is refused -----------------------------------------------


def test_our_lock_makes_node_get_elocked(node: str, tmp_path: Path, config_dir: Path) -> None:
    # reach the config dir through a symlink: the legacy lock must be named from the real path
    link = tmp_path / "link-claude"
    link.symlink_to(config_dir)
    with claude_credentials_lock(link) as held:
        assert held.paths[1] == Path(str(config_dir) + ".lock")
        for which in ("oauth", "legacy", "both"):
            rc, out = node_try(node, which, link)
            assert (rc, out["event"], out["code"]) == (2, "busy", "ELOCKED"), out
        held.check()
    for which in ("oauth", "legacy", "both"):
        rc, out = node_try(node, which, link)
        assert (rc, out["event"]) == (0, "locked"), out
    assert not any(p.exists() for p in lock_paths(link))


def test_our_refresh_keeps_even_a_2s_stale_node_out(node: str, config_dir: Path) -> None:
    with claude_credentials_lock(config_dir, refresh_every_s=0.5) as held:
        time.sleep(2.6)  # older than proper-lockfile's minimum stale time (2 s)
        rc, out = node_try(node, "both", config_dir, stale_ms=2000)
        assert (rc, out["code"]) == (2, "ELOCKED"), out
        held.check()


def test_sigkilled_agent_lock_is_reclaimed_by_node_after_its_stale_time(
    node: str, procs: list[Proc], config_dir: Path
) -> None:
    oauth, legacy = lock_paths(config_dir)
    agent = agent_hold(procs, config_dir, refresh_every_s=0.5)
    agent.kill()
    assert agent.proc.returncode == -signal.SIGKILL
    assert oauth.is_dir() and legacy.is_dir()  # nothing could clean up

    rc, out = node_try(node, "both", config_dir)
    assert (rc, out["code"]) == (2, "ELOCKED"), out  # still fresh for Claude's 60 s

    age(legacy, 61)  # Claude's stale time, faked
    rc, out = node_try(node, "legacy", config_dir)
    assert (rc, out["event"]) == (0, "locked"), out

    time.sleep(2.3)  # real time: proper-lockfile's minimum stale time is 2 s
    rc, out = node_try(node, "oauth", config_dir, stale_ms=2000)
    assert (rc, out["event"]) == (0, "locked"), out
    assert not oauth.exists() and not legacy.exists()


# --- release on every path --------------------------------------------------------------


def test_locks_gone_after_success_and_after_exception(node: str, config_dir: Path, creds: Path) -> None:
    with claude_credentials_lock(config_dir) as held:
        tmp = creds.with_name(".credentials.json.tmp")
        tmp.write_text('{"claudeAiOauth": {"accessToken": "new"}}')
        held.check()
        os.replace(tmp, creds)
    assert not any(p.exists() for p in lock_paths(config_dir))
    assert (node_try(node, "both", config_dir)[0]) == 0

    with pytest.raises(ValueError):
        with claude_credentials_lock(config_dir):
            raise ValueError("merge failed")
    assert not any(p.exists() for p in lock_paths(config_dir))
    assert (node_try(node, "both", config_dir)[0]) == 0
    assert "new" in creds.read_text()


def test_sigterm_of_agent_releases_its_locks(node: str, procs: list[Proc], config_dir: Path) -> None:
    agent = agent_hold(procs, config_dir)
    assert all(p.is_dir() for p in lock_paths(config_dir))
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait() == 143
    assert not any(p.exists() for p in lock_paths(config_dir))
    rc, out = node_try(node, "both", config_dir)
    assert (rc, out["event"]) == (0, "locked"), out


# --- mutual exclusion under contention ----------------------------------------------------


def test_node_and_agent_writers_never_lose_an_update(node: str, procs: list[Proc], config_dir: Path) -> None:
    counter = config_dir / "counter.json"
    counter.write_text(json.dumps({"value": 0}))
    n_node, n_agent, writers = 15, 15, 2
    nodes = []
    for _ in range(writers):
        p = Proc([node, str(HELPER), "count", "both", str(config_dir), "--n", str(n_node), "--counter", str(counter)],
                 env=home_env(config_dir))
        procs.append(p)
        nodes.append(p)
    tmp = counter.with_name("counter.json.py.tmp")
    for _ in range(n_agent):
        with claude_credentials_lock(config_dir, wait_timeout_s=20, poll_s=0.005) as held:
            value = json.loads(counter.read_text())["value"]
            time.sleep(0.003)
            tmp.write_text(json.dumps({"value": value + 1}))
            held.check()
            os.replace(tmp, counter)
    for p in nodes:
        p.expect('"done"', timeout=30)
        assert p.wait() == 0
    assert json.loads(counter.read_text())["value"] == writers * n_node + n_agent
    assert not any(p.exists() for p in lock_paths(config_dir))
