"""Crash safety of the credentials write path, with real fault injection by ``strace``.

Each case runs a restore in a child process under ``strace -e inject=...`` (SIGKILL at a rename
or a write, EIO from fsync, ENOSPC from rename, ...). Afterwards the file must parse and be
entirely the old or entirely the new content, ``mcpOAuth`` intact, mode 0600; any temp file left
behind is private (0600) and removed by the next run, which then succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from claude_auth_sync.plugins.restore_credentials_file.lock import lock_paths
from claude_auth_sync.testing import oauth_object
from tests.support.home import child_env

pytestmark = pytest.mark.real

OLD = oauth_object("sk-ant-oat01-old", "sk-ant-ort01-old")
NEW = oauth_object("sk-ant-oat01-new", "sk-ant-ort01-new")
MCP = {"github": {"accessToken": "mcp-secret", "nested": {"k": [1, 2, 3]}}}

CHILD = """
import json, sys
from pathlib import Path
from claude_auth_sync.plugins.restore_credentials_file.credentials_file import CredentialsFile
cf = CredentialsFile(Path(sys.argv[1]), lock_wait_timeout_s=2)
expected = json.loads(sys.argv[2])
new = json.loads(sys.argv[3])
try:
    cf.restore(new, expected=expected)
except Exception as err:
    print(type(err).__name__, err, file=sys.stderr)
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def strace() -> str:
    path = shutil.which("strace")
    assert path, "strace is required (Debian package strace); scripts/dev/test.sh installs it"
    return path


def setup_dir(tmp_path: Path) -> tuple[Path, bytes]:
    config = tmp_path / ".claude"
    config.mkdir(mode=0o700)
    data = json.dumps({"claudeAiOauth": OLD, "mcpOAuth": MCP}).encode()
    (config / ".credentials.json").write_bytes(data)
    os.chmod(config / ".credentials.json", 0o600)
    return config, data


def run_child(strace: str, config: Path, inject: list[str], expected=OLD) -> subprocess.CompletedProcess[str]:
    argv = [strace, "-f", "-qq", "-o", "/dev/null", *inject, sys.executable, "-c", CHILD,
            str(config), json.dumps(expected), json.dumps(NEW)]
    env = child_env(config.parent / "home", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def assert_whole(config: Path, old_bytes: bytes) -> str:
    path = config / ".credentials.json"
    document = json.loads(path.read_bytes())
    assert document["mcpOAuth"] == MCP
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for leftover in config.iterdir():
        assert stat.S_IMODE(leftover.stat().st_mode) in (0o600, 0o700, 0o755), leftover
        if leftover.is_file():
            assert stat.S_IMODE(leftover.stat().st_mode) == 0o600, leftover
    if path.read_bytes() == old_bytes:
        return "old"
    assert document == {"claudeAiOauth": NEW, "mcpOAuth": MCP}
    return "new"


def age_leftover_locks(config: Path) -> None:
    """A SIGKILLed holder leaves its lock directories; pretend 2 minutes passed (stale after 60 s)."""
    old = time.time() - 120
    for lock in lock_paths(config):
        if lock.exists():
            os.utime(lock, (old, old))


CASES = [
    (["-e", "inject=rename,renameat,renameat2:signal=SIGKILL:when=1"], "old"),  # killed publishing the pre-restore copy
    (["-e", "inject=rename,renameat,renameat2:signal=SIGKILL:when=2"], "old"),  # killed at the rename of the new file
    (["-e", "inject=fsync:signal=SIGKILL:when=3"], "old"),  # killed while syncing the new temp file
    (["-e", "inject=write:signal=SIGKILL:when=2"], "old"),  # killed mid-write
    (["-e", "inject=fsync:error=EIO"], "old"),
    (["-e", "inject=rename,renameat,renameat2:error=ENOSPC"], "old"),
    (["-e", "inject=rename,renameat,renameat2:error=ENOSPC:when=2"], "old"),
    (["-e", "inject=openat:error=EMFILE:when=20+"], "old"),
]


@pytest.mark.parametrize(("inject", "expect"), CASES, ids=[c[0][1] for c in CASES])
def test_fault_leaves_old_or_new_file_and_next_run_recovers(tmp_path, strace, inject, expect) -> None:
    config, old_bytes = setup_dir(tmp_path)
    result = run_child(strace, config, inject)
    assert result.returncode != 0, "the fault must have hit the restore"
    assert assert_whole(config, old_bytes) == expect
    assert "sk-ant-" not in result.stderr  # no token in any error text

    age_leftover_locks(config)
    again = run_child(strace, config, ["-e", "trace=none"])
    assert again.returncode == 0, again.stderr
    assert assert_whole(config, old_bytes) == "new"
    assert not [p for p in config.iterdir() if ".tmp-" in p.name], "temp files are cleaned by the next run"
    assert not any(p.exists() for p in lock_paths(config))


def test_a_clean_run_under_strace_writes_the_new_file(tmp_path, strace) -> None:
    config, old_bytes = setup_dir(tmp_path)
    result = run_child(strace, config, ["-e", "trace=none"])
    assert result.returncode == 0, result.stderr
    assert assert_whole(config, old_bytes) == "new"


FINISH = """
import sys
from pathlib import Path
from claude_auth_sync.plugins.restore_credentials_file.credentials_file import CredentialsFile
restorer = CredentialsFile(Path(sys.argv[1]), lock_wait_timeout_s=2)
snapshot = restorer.pending_restore()
if snapshot is not None:  # the next run's probe of the interrupted restore failed: roll it back
    restorer.rollback(snapshot)
print(snapshot is not None)
"""

KILL_POINTS = [f"inject=rename,renameat,renameat2:signal=SIGKILL:when={n}" for n in (1, 2, 3)] + [
    f"inject=fsync:signal=SIGKILL:when={n}" for n in range(1, 7)]  # 3 files x (file, directory)


@pytest.mark.parametrize("inject", KILL_POINTS)
def test_a_kill_at_any_step_of_a_restore_is_undone_by_the_next_run(tmp_path, strace, inject) -> None:
    """Killed anywhere in restore (copy, journal, new file, directory syncs): the file is whole,
    and when the next run's probe of an interrupted restore fails, its rollback leaves exactly the
    pre-restore bytes, no journal."""
    config, old_bytes = setup_dir(tmp_path)
    killed = run_child(strace, config, ["-e", inject])
    assert killed.returncode != 0, "the kill must have hit the restore"
    assert_whole(config, old_bytes) in ("old", "new")
    age_leftover_locks(config)
    finish = subprocess.run([sys.executable, "-c", FINISH, str(config)], capture_output=True, text=True, timeout=60,
                            env=child_env(config.parent / "home"), check=False)
    assert finish.returncode == 0, finish.stderr
    assert (config / ".credentials.json").read_bytes() == old_bytes
    assert not (config / ".credentials.json.restore-journal").exists()
