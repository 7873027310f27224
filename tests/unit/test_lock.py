"""Unit tests of claude_auth_sync.plugins.restore_credentials_file.lock (the Python side of the proper-lockfile protocol)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from claude_auth_sync.plugins.restore_credentials_file import lock as lockmod
from claude_auth_sync.plugins.restore_credentials_file.lock import LockBusy, LockCompromised, LockError, claude_credentials_lock, lock_paths
from claude_auth_sync.signals import sigterm_raises_systemexit


def foreign_lock(path: Path, age_s: float) -> os.stat_result:
    """A lock directory held by somebody else, its mtime ``age_s`` seconds old."""
    path.mkdir()
    t = time.time() - age_s
    os.utime(path, (t, t))
    return os.stat(path)


def ident(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


# --- paths --------------------------------------------------------------------


def test_lock_paths_are_claude_codes_two_locks_in_order(config_dir: Path) -> None:
    oauth, legacy = lock_paths(config_dir)
    assert oauth == config_dir / ".oauth_refresh.lock"
    assert legacy == config_dir.parent / ".claude.lock"


def test_legacy_lock_is_named_from_the_real_path(tmp_path: Path, config_dir: Path) -> None:
    link = tmp_path / "link-to-claude"
    link.symlink_to(config_dir)
    oauth, legacy = lock_paths(link)
    assert oauth == link / ".oauth_refresh.lock"  # realpath: false, like Claude Code
    assert legacy == Path(str(config_dir) + ".lock")  # realpath: true


def test_relative_config_dir_gives_absolute_paths(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(config_dir.parent)
    oauth, legacy = lock_paths(Path(".claude"))
    assert oauth == config_dir / ".oauth_refresh.lock"
    assert legacy == config_dir.parent / ".claude.lock"


# --- acquire / release ----------------------------------------------------------


def test_acquire_makes_directories_and_release_removes_them(config_dir: Path) -> None:
    oauth, legacy = lock_paths(config_dir)
    with claude_credentials_lock(config_dir) as held:
        assert held.paths == (oauth, legacy)
        assert oauth.is_dir() and not oauth.is_symlink()
        assert legacy.is_dir() and not legacy.is_symlink()
        assert list(oauth.iterdir()) == [] and list(legacy.iterdir()) == []
        held.check()
        assert not held.compromised
    assert not oauth.exists() and not legacy.exists()
    assert not any(t.name == "claude-credentials-lock-refresh" for t in threading.enumerate())


def test_locks_are_taken_in_claude_codes_order(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real_mkdir = os.mkdir

    def recording_mkdir(path: os.PathLike[str] | str, *args: object, **kwargs: object) -> None:
        made.append(os.fspath(path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lockmod.os, "mkdir", recording_mkdir)
    with claude_credentials_lock(config_dir):
        pass
    assert made == [os.fspath(p) for p in lock_paths(config_dir)]


def test_release_on_exception(config_dir: Path) -> None:
    oauth, legacy = lock_paths(config_dir)
    with pytest.raises(RuntimeError, match="boom"):
        with claude_credentials_lock(config_dir):
            raise RuntimeError("boom")
    assert not oauth.exists() and not legacy.exists()


def test_release_on_systemexit(config_dir: Path) -> None:
    with pytest.raises(SystemExit):
        with claude_credentials_lock(config_dir):
            raise SystemExit(143)
    assert not any(p.exists() for p in lock_paths(config_dir))


def test_missing_config_dir_is_a_lock_error(tmp_path: Path) -> None:
    with pytest.raises(LockError, match="cannot create lock directory"):
        with claude_credentials_lock(tmp_path / "nope"):
            pass


@pytest.mark.parametrize(
    "kwargs",
    [{"stale_after_s": 10.0}, {"refresh_every_s": 6.0}, {"refresh_every_s": 0}, {"poll_s": 0}, {"wait_timeout_s": -1}],
)
def test_unsafe_parameters_are_refused(config_dir: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        with claude_credentials_lock(config_dir, **kwargs):
            pass
    assert not any(p.exists() for p in lock_paths(config_dir))


# --- live foreign holders ---------------------------------------------------------


def test_busy_lock_waits_with_a_bound(config_dir: Path) -> None:
    oauth, legacy = lock_paths(config_dir)
    before = foreign_lock(oauth, age_s=1)
    t0 = time.monotonic()
    with pytest.raises(LockBusy) as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=0.4, poll_s=0.05):
            pytest.fail("body must not run")
    elapsed = time.monotonic() - t0
    assert info.value.path == oauth
    assert 0.4 <= info.value.waited_s <= elapsed < 2.0
    assert 0.5 < info.value.holder_age_s < 10
    assert str(oauth) in str(info.value)
    after = os.stat(oauth)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not legacy.exists()


def test_wait_zero_tries_once(config_dir: Path) -> None:
    oauth, _ = lock_paths(config_dir)
    foreign_lock(oauth, age_s=0)
    with pytest.raises(LockBusy) as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=0):
            pass
    assert info.value.waited_s < 0.5


def test_busy_second_lock_releases_the_first(config_dir: Path) -> None:
    oauth, legacy = lock_paths(config_dir)
    foreign_lock(legacy, age_s=2)
    with pytest.raises(LockBusy) as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=0.2, poll_s=0.05):
            pass
    assert info.value.path == legacy
    assert not oauth.exists()
    assert legacy.is_dir()


def test_lock_released_by_holder_is_taken_while_waiting(config_dir: Path) -> None:
    oauth, _ = lock_paths(config_dir)
    foreign_lock(oauth, age_s=0)
    timer = threading.Timer(0.3, os.rmdir, args=(oauth,))
    timer.start()
    try:
        t0 = time.monotonic()
        with claude_credentials_lock(config_dir, wait_timeout_s=5, poll_s=0.02) as held:
            assert time.monotonic() - t0 >= 0.25
            held.check()
    finally:
        timer.join()
    assert not oauth.exists()


@pytest.mark.parametrize("age_s", [30.0, 59.0])
def test_never_breaks_a_lock_younger_than_60s(config_dir: Path, age_s: float) -> None:
    oauth, _ = lock_paths(config_dir)
    before = foreign_lock(oauth, age_s=age_s)
    with pytest.raises(LockBusy) as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=0.2, poll_s=0.05):
            pass
    assert info.value.holder_age_s == pytest.approx(age_s, abs=2)
    after = os.stat(oauth)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_future_mtime_counts_as_live(config_dir: Path) -> None:
    # proper-lockfile sets a fresh lock's mtime to the next whole second + 5 ms
    oauth, _ = lock_paths(config_dir)
    foreign_lock(oauth, age_s=-0.9)
    with pytest.raises(LockBusy):
        with claude_credentials_lock(config_dir, wait_timeout_s=0.1, poll_s=0.05):
            pass
    assert oauth.is_dir()


@pytest.mark.parametrize("which", [0, 1])
def test_stale_lock_older_than_60s_is_broken_and_taken(config_dir: Path, which: int) -> None:
    path = lock_paths(config_dir)[which]
    foreign_lock(path, age_s=61)
    with claude_credentials_lock(config_dir, wait_timeout_s=0) as held:
        assert path.is_dir()
        assert time.time() - os.stat(path).st_mtime < 5  # it is ours now, fresh
        held.check()
    assert not path.exists()


def test_larger_stale_time_is_honoured(config_dir: Path) -> None:
    oauth, _ = lock_paths(config_dir)
    foreign_lock(oauth, age_s=90)
    with pytest.raises(LockBusy):
        with claude_credentials_lock(config_dir, wait_timeout_s=0.1, poll_s=0.05, stale_after_s=120):
            pass


def test_stale_but_non_empty_directory_is_not_removed(config_dir: Path) -> None:
    oauth, _ = lock_paths(config_dir)
    oauth.mkdir()
    (oauth / "something").write_text("keep me")
    t = time.time() - 600
    os.utime(oauth, (t, t))
    with pytest.raises(LockError, match="not empty") as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=0):
            pass
    assert not isinstance(info.value, LockBusy)
    assert (oauth / "something").read_text() == "keep me"


# --- things at the lock path that are not lock directories -----------------------


@pytest.mark.parametrize("which", [0, 1])
def test_regular_file_at_lock_path_is_an_error_and_untouched(config_dir: Path, which: int) -> None:
    paths = lock_paths(config_dir)
    path = paths[which]
    path.write_text("not a lock")
    t = time.time() - 3600  # "stale" by age: still must not be deleted
    os.utime(path, (t, t))
    before = os.stat(path)
    with pytest.raises(LockError, match="not a directory") as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=1):
            pytest.fail("body must not run")
    assert type(info.value) is LockError
    assert info.value.path == path
    assert path.read_text() == "not a lock"
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not any(p.exists() for p in paths if p != path)


def test_symlink_at_lock_path_is_an_error_and_untouched(tmp_path: Path, config_dir: Path) -> None:
    oauth, _ = lock_paths(config_dir)
    target = tmp_path / "elsewhere"
    target.mkdir()
    t = time.time() - 3600
    os.utime(target, (t, t))
    oauth.symlink_to(target)
    with pytest.raises(LockError, match="not a directory"):
        with claude_credentials_lock(config_dir, wait_timeout_s=0):
            pass
    assert oauth.is_symlink() and target.is_dir()


# --- while held --------------------------------------------------------------------


def test_mtime_is_refreshed_while_held(config_dir: Path) -> None:
    with claude_credentials_lock(config_dir, refresh_every_s=0.05) as held:
        old = time.time() - 100
        for p in held.paths:
            os.utime(p, (old, old))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if all(time.time() - os.stat(p).st_mtime < 2 for p in held.paths):
                break
            time.sleep(0.02)
        ages = [time.time() - os.stat(p).st_mtime for p in held.paths]
        assert all(a < 2 for a in ages), ages
        held.check()  # refreshing our own lock is not a compromise


@pytest.mark.parametrize("which", [0, 1])
def test_removed_lock_is_compromised(config_dir: Path, which: int) -> None:
    path = lock_paths(config_dir)[which]
    with claude_credentials_lock(config_dir) as held:
        os.rmdir(path)
        assert held.compromised
        with pytest.raises(LockCompromised) as info:
            held.check()
        assert info.value.path == path
        assert "disappeared" in str(info.value)
    assert not any(p.exists() for p in lock_paths(config_dir))


def test_replaced_lock_is_compromised_and_only_our_inode_is_removed(config_dir: Path) -> None:
    oauth, legacy = lock_paths(config_dir)
    with claude_credentials_lock(config_dir) as held:
        ours = ident(oauth)
        os.rmdir(oauth)  # e.g. a peer judged us stale ...
        oauth.mkdir()  # ... and took the lock itself
        theirs = ident(oauth)
        assert theirs != ours  # our open fd pins the inode, so no reuse
        with pytest.raises(LockCompromised, match="replaced") as info:
            held.check()
        assert info.value.path == oauth
    assert oauth.is_dir() and ident(oauth) == theirs  # the peer's lock survives
    assert not legacy.exists()  # our other lock is released


def test_refresher_notices_compromise_and_never_touches_the_replacement(config_dir: Path) -> None:
    oauth, _ = lock_paths(config_dir)
    with claude_credentials_lock(config_dir, refresh_every_s=0.05) as held:
        os.rmdir(oauth)
        oauth.mkdir()
        t = time.time() - 30
        os.utime(oauth, (t, t))
        time.sleep(0.4)
        assert held.compromised
        assert time.time() - os.stat(oauth).st_mtime > 25  # not refreshed by us
        with pytest.raises(LockCompromised):
            held.check()
    assert oauth.is_dir()


def test_exceptions_carry_paths_not_contents(config_dir: Path) -> None:
    secret = "sk-ant-oat01-SECRET"
    (config_dir / ".credentials.json").write_text(f'{{"accessToken": "{secret}"}}')
    oauth, _ = lock_paths(config_dir)
    foreign_lock(oauth, age_s=0)
    with pytest.raises(LockBusy) as info:
        with claude_credentials_lock(config_dir, wait_timeout_s=0):
            pass
    assert secret not in str(info.value) and secret not in repr(info.value)


# --- SIGTERM -------------------------------------------------------------------------


def test_sigterm_helper_raises_systemexit_and_restores_handler(config_dir: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        with sigterm_raises_systemexit():
            with claude_credentials_lock(config_dir):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                pytest.fail("SIGTERM did not interrupt")
    assert info.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is previous
    assert not any(p.exists() for p in lock_paths(config_dir))


def test_sigterm_during_release_is_deferred_until_both_locks_are_gone(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rmdir = os.rmdir
    fired: list[bool] = []

    def rmdir_then_sigterm(path: os.PathLike[str] | str, *args: object, **kwargs: object) -> None:
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        real_rmdir(path, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(SystemExit):
        with sigterm_raises_systemexit():
            with claude_credentials_lock(config_dir):
                monkeypatch.setattr(lockmod.os, "rmdir", rmdir_then_sigterm)
    assert fired
    assert not any(p.exists() for p in lock_paths(config_dir))


def test_sigterm_helper_refuses_other_threads() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with sigterm_raises_systemexit():
                pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
