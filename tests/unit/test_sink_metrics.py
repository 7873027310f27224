"""The ``metrics`` sink: node_exporter textfile content, carry-over of the last success, atomic
world-readable writes, settings and registration. ``promtool check metrics`` (Debian package
``prometheus``) lints the output; a missing promtool fails that test, it never skips."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from claude_auth_sync.model import Action, ExitCode, Status, StatusEvent, UserIdentity
from claude_auth_sync.plugin_manager import get_plugin_manager
from claude_auth_sync.plugins import sink_metrics
from claude_auth_sync.plugins.sink_metrics import (
    DEFAULT_DIRECTORY,
    MetricsSink,
    MetricsUnavailable,
    metric_names,
    metrics_path,
    previous_success,
    render_metrics,
    write_public,
)
from claude_auth_sync.plugins.sink_metrics.counters import previous_counts
from claude_auth_sync.settings import load_settings

T0 = "2026-11-28T20:10:45Z"
T0_S = 1795896645  # date -d 2026-11-28T20:10:45Z +%s
CODES = {Status.OK: ExitCode.OK, Status.WARN: ExitCode.TEMPFAIL, Status.FAIL: ExitCode.FAIL}
SAMPLE = re.compile(r"^([a-z_]+)\{([^}]*)\} (\S+)$")


def event(status: Status = Status.OK, *, timestamp: str = T0, user: str = "alice", code: ExitCode | None = None,
          details: dict | None = None) -> StatusEvent:
    return StatusEvent(
        timestamp=timestamp, status=status, exit_code=code if code is not None else CODES[status], user=user,
        action=Action.NONE, reason=None if status == Status.OK else "http_529", details=details or {},
    )


def samples(text: str) -> dict[tuple[str, str], float]:
    """``{(metric, labels): value}`` of a textfile; also checks every family has HELP and TYPE first."""
    out: dict[tuple[str, str], float] = {}
    declared: list[str] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            declared.append(line.split()[2])
        elif line.startswith("# TYPE "):
            kind = "counter" if declared[-1].endswith("_total") else "gauge"
            assert line.split()[2:] == [declared[-1], kind], line
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            assert match.group(1) == declared[-1], f"{line!r} outside its family"
            out[(match.group(1), match.group(2))] = float(match.group(3))
    assert len(declared) == len(set(declared)), "a family is declared twice"
    return out


def at(minutes: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0_S + 60 * minutes))


# -- content ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", list(Status))
def test_every_status_sets_exactly_one_status_sample(status: Status) -> None:
    got = samples(render_metrics(event(status)))
    for word in Status:
        assert got[("claude_auth_sync_last_status", f'user="alice",status="{word}"')] == (1 if word == status else 0)
    assert got[("claude_auth_sync_last_run_timestamp_seconds", 'user="alice"')] == T0_S
    assert got[("claude_auth_sync_last_exit_code", 'user="alice"')] == int(CODES[status])


def test_ok_run_is_the_last_success_and_has_help_and_type() -> None:
    text = render_metrics(event(Status.OK))
    assert samples(text)[("claude_auth_sync_last_success_timestamp_seconds", 'user="alice"')] == T0_S
    for name in ("claude_auth_sync_last_run_timestamp_seconds", "claude_auth_sync_last_status",
                 "claude_auth_sync_last_success_timestamp_seconds"):
        assert f"# HELP {name} " in text and f"# TYPE {name} gauge\n" in text
    assert text.endswith("\n") and "\n\n" not in text


def test_non_ok_run_without_previous_success_has_no_success_sample() -> None:
    text = render_metrics(event(Status.FAIL))
    assert "last_success" not in text


def test_token_expiry_and_vault_ttl_come_from_event_details() -> None:
    got = samples(render_metrics(event(details={"access_expires_at_ms": 1_795_900_000_500, "store_ttl_s": 2_764_800})))
    assert got[("claude_auth_sync_access_token_expiry_seconds", 'user="alice"')] == 1_795_900_000.5
    assert got[("claude_auth_sync_vault_token_ttl_seconds", 'user="alice"')] == 2_764_800


@pytest.mark.parametrize("details", [{}, {"access_expires_at_ms": None, "store_ttl_s": None},
                                     {"access_expires_at_ms": "soon", "store_ttl_s": "nan"}, {"store_ttl_s": True}])
def test_missing_or_unusable_details_leave_the_metric_out(details: dict) -> None:
    text = render_metrics(event(details=details))
    assert "access_token_expiry" not in text and "vault_token_ttl" not in text


def test_label_values_are_escaped() -> None:
    text = render_metrics(event(user='a"b\\c\nd'))
    assert 'user="a\\"b\\\\c\\nd"' in text
    assert len(text.splitlines()) == len(render_metrics(event()).splitlines())


def test_every_metric_name_is_rendered_somewhere() -> None:
    text = render_metrics(event(details={"access_expires_at_ms": 1, "store_ttl_s": 1, "refresh_expires_at_ms": 1,
                                         "awaiting_first_login_since": 1}))
    assert sorted({key[0] for key in samples(text)}) == sorted(metric_names())


def test_previous_success_parsing() -> None:
    assert previous_success(render_metrics(event(Status.OK))) == T0_S
    assert previous_success(None) is None
    assert previous_success("garbage\n") is None
    # One rule for every carried-over value: a sample is one line (labels never span lines), and
    # only a finite number above 0 counts.
    assert previous_success('claude_auth_sync_last_success_timestamp_seconds{user="a\n"} 5\n') is None
    assert previous_success("claude_auth_sync_last_success_timestamp_seconds NaN\n") is None
    assert previous_success("claude_auth_sync_last_success_timestamp_seconds\t7.5e9\n") == 7.5e9
    assert previous_success('claude_auth_sync_last_success_timestamp_seconds{user="alice"} NaN\n') is None
    assert previous_success("claude_auth_sync_last_success_timestamp_seconds 1.5e9\n") == 1.5e9


def test_output_passes_promtool_check_metrics() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    for status in Status:
        text = render_metrics(event(status, details={"access_expires_at_ms": 1_795_900_000_000, "store_ttl_s": 3600,
                                                     "refresh_expires_at_ms": 1_796_000_000_000}),
                              previous_success_s=T0_S - 3600, previous_counts={("runs_total", "OK"): 7})
        res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (res.stdout, res.stderr)


# -- the sink over several runs ---------------------------------------------------------------------

def test_last_success_is_kept_across_warn_and_fail_then_replaced_by_ok(tmp_path: Path) -> None:
    sink = MetricsSink(tmp_path)
    path = tmp_path / "claude_auth_sync_alice.prom"
    success = ("claude_auth_sync_last_success_timestamp_seconds", 'user="alice"')
    last_run = ("claude_auth_sync_last_run_timestamp_seconds", 'user="alice"')

    sink.emit(event(Status.OK, timestamp=at(0)))
    sink.emit(event(Status.WARN, timestamp=at(360)))
    got = samples(path.read_text())
    assert (got[success], got[last_run]) == (T0_S, T0_S + 360 * 60)
    sink.emit(event(Status.FAIL, timestamp=at(720), code=ExitCode.CONFIG))
    got = samples(path.read_text())
    assert (got[success], got[last_run]) == (T0_S, T0_S + 720 * 60)
    assert got[("claude_auth_sync_last_status", 'user="alice",status="FAIL"')] == 1
    assert got[("claude_auth_sync_last_exit_code", 'user="alice"')] == 78
    sink.emit(event(Status.OK, timestamp=at(1080)))
    assert samples(path.read_text())[success] == T0_S + 1080 * 60


def test_users_get_separate_files(tmp_path: Path) -> None:
    sink = MetricsSink(tmp_path)
    sink.emit(event(Status.OK, user="alice"))
    sink.emit(event(Status.FAIL, user="bob"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claude_auth_sync_alice.prom", "claude_auth_sync_bob.prom"]
    assert 'status="OK"} 1' in (tmp_path / "claude_auth_sync_alice.prom").read_text()
    assert 'user="bob",status="FAIL"} 1' in (tmp_path / "claude_auth_sync_bob.prom").read_text()


@pytest.mark.parametrize("user", ["../etc/passwd", "a/b", "", ".hidden", "x" * 65])
def test_user_names_unfit_for_a_file_name_are_refused(tmp_path: Path, user: str) -> None:
    with pytest.raises(ValueError):
        MetricsSink(tmp_path).emit(event(user=user))
    assert list(tmp_path.iterdir()) == []


def test_metrics_path() -> None:
    assert metrics_path(Path("/d"), "alice") == Path("/d/claude_auth_sync_alice.prom")


# -- the atomic, world-readable write -----------------------------------------------------------------

def test_file_is_0644_whatever_the_umask_and_the_directory_mode_is_untouched(tmp_path: Path) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    directory.chmod(0o1777)
    old = os.umask(0o077)
    try:
        MetricsSink(directory).emit(event())
    finally:
        os.umask(old)
    st = os.stat(directory / "claude_auth_sync_alice.prom")
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o1777
    assert [p.name for p in directory.iterdir()] == ["claude_auth_sync_alice.prom"]  # no temp left


def test_missing_directory_is_reported_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(MetricsUnavailable, match="does not exist.*CLAUDE_AUTH_SYNC_METRICS__DIRECTORY"):
        MetricsSink(missing).emit(event())
    assert not missing.exists()


@pytest.mark.parametrize(("err", "hint"), [
    (PermissionError(13, "Permission denied"), "not writable by uid"),
    (OSError(30, "Read-only file system"), "ReadWritePaths=-"),
])
def test_unwritable_directory_says_what_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: OSError, hint: str) -> None:
    real_open = os.open

    def refusing_open(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if flags & os.O_CREAT:  # the temp file: what a read-only or foreign directory refuses
            raise err
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(sink_metrics.os, "open", refusing_open)
    with pytest.raises(MetricsUnavailable, match=re.escape(hint)):
        MetricsSink(tmp_path).emit(event())


def test_a_failed_write_leaves_the_old_file_complete_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = MetricsSink(tmp_path)
    sink.emit(event(Status.OK))
    before = (tmp_path / "claude_auth_sync_alice.prom").read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sink_metrics.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        sink.emit(event(Status.FAIL))
    assert (tmp_path / "claude_auth_sync_alice.prom").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["claude_auth_sync_alice.prom"]


def test_temp_file_is_never_a_prom_file_and_is_renamed_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_rename = os.rename

    def spy(src: str, dst: str, **kw: int) -> None:
        seen.append(src)
        assert (tmp_path / src).exists() and not src.endswith(".prom")  # the collector only reads *.prom
        real_rename(src, dst, **kw)

    monkeypatch.setattr(sink_metrics.os, "rename", spy)
    MetricsSink(tmp_path).emit(event())
    assert len(seen) == 1 and seen[0].startswith(".claude_auth_sync_alice.prom.tmp-")


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text('claude_auth_sync_last_success_timestamp_seconds{user="alice"} 42\n')
    (tmp_path / "textfile").mkdir()
    link = tmp_path / "textfile" / "claude_auth_sync_alice.prom"
    link.symlink_to(victim)

    MetricsSink(tmp_path / "textfile").emit(event(Status.WARN))

    assert victim.read_text() == 'claude_auth_sync_last_success_timestamp_seconds{user="alice"} 42\n'
    assert not link.is_symlink()
    assert "last_success" not in link.read_text()  # the symlink's target was not read either


def test_stale_temp_files_of_ours_are_removed_fresh_ones_kept(tmp_path: Path) -> None:
    stale = tmp_path / ".claude_auth_sync_alice.prom.tmp-1-dead"
    fresh = tmp_path / ".claude_auth_sync_alice.prom.tmp-2-busy"
    other = tmp_path / ".claude_auth_sync_bob.prom.tmp-3-dead"
    for path in (stale, fresh, other):
        path.write_text("partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))

    write_public(tmp_path / "claude_auth_sync_alice.prom", b"x 1\n")

    assert not stale.exists() and fresh.exists() and other.exists()


# -- registration and settings ----------------------------------------------------------------------

def test_registered_as_sink_metrics_with_a_metrics_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = get_plugin_manager()
    assert "metrics" in plugins.sinks()
    sections = {s.name: s for s in plugins.settings_sections()}
    assert sections["metrics"].model().directory == DEFAULT_DIRECTORY == Path("/var/lib/prometheus/node-exporter")

    for name in [k for k in os.environ if k.startswith("CLAUDE_AUTH_SYNC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_METRICS__DIRECTORY", str(tmp_path))
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_SINKS", '["metrics"]')
    user = UserIdentity(name="alice", uid=os.getuid(), gid=os.getgid(), home=tmp_path)
    settings = load_settings(plugins.settings_sections(), user, system_file=tmp_path / "none.toml",
                             user_file=tmp_path / "none.toml", environ={})
    assert settings.section("metrics").directory == tmp_path
    from claude_auth_sync.hookspecs import PluginContext

    sink = plugins.sinks()["metrics"].factory(PluginContext(settings=settings, user=user))
    sink.emit(event(user="alice"))
    assert (tmp_path / "claude_auth_sync_alice.prom").is_file()


# -- refresh-token expiry, last-run info and the carried-over counters (the fleet dashboard's series) --

def test_refresh_token_expiry_comes_from_event_details() -> None:
    got = samples(render_metrics(event(details={"refresh_expires_at_ms": 1_796_000_000_250})))
    assert got[("claude_auth_sync_refresh_token_expiry_seconds", 'user="alice"')] == 1_796_000_000.25
    assert "refresh_token_expiry" not in render_metrics(event(details={"refresh_expires_at_ms": "later"}))


def test_last_run_info_carries_status_action_and_reason() -> None:
    got = samples(render_metrics(event(Status.WARN)))
    assert got[("claude_auth_sync_last_run_info", 'user="alice",status="WARN",action="none",reason="http_529"')] == 1
    assert ("claude_auth_sync_last_run_info", 'user="alice",status="OK",action="none",reason=""') in samples(
        render_metrics(event(Status.OK)))


def test_a_hostile_reason_is_escaped_and_truncated() -> None:
    hostile = StatusEvent(timestamp=T0, status=Status.FAIL, exit_code=ExitCode.FAIL, user="alice", action=Action.NONE,
                          reason='x"}\n\\\x1b[31m' + "y" * 500)
    text = render_metrics(hostile)
    line = next(line for line in text.splitlines() if line.startswith("claude_auth_sync_last_run_info"))
    assert '\\"}\\n\\\\\x1b[31m' in line and len(line) < 250 and line.endswith("} 1")
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, (res.stdout, res.stderr)


def test_counters_start_at_zero_for_every_word_and_count_this_run() -> None:
    got = samples(render_metrics(event(Status.WARN)))
    assert [got[("claude_auth_sync_runs_total", f'user="alice",status="{s}"')] for s in Status] == [0, 1, 0]
    assert [got[("claude_auth_sync_actions_total", f'user="alice",action="{a}"')] for a in Action] == [1, 0, 0, 0]


def test_counters_carry_over_across_runs_of_the_sink(tmp_path: Path) -> None:
    sink = MetricsSink(tmp_path)
    path = tmp_path / "claude_auth_sync_alice.prom"
    for minutes, status, action in [(0, Status.OK, Action.BACKUP), (5, Status.OK, Action.NONE),
                                    (10, Status.OK, Action.RESTORE), (15, Status.FAIL, Action.ROLLBACK),
                                    (20, Status.WARN, Action.NONE)]:
        sink.emit(StatusEvent(timestamp=at(minutes), status=status, exit_code=CODES[status], user="alice",
                              action=action, reason=None))
    got = samples(path.read_text())
    assert [got[("claude_auth_sync_runs_total", f'user="alice",status="{s}"')] for s in Status] == [3, 1, 1]
    assert [got[("claude_auth_sync_actions_total", f'user="alice",action="{a}"')] for a in Action] == [2, 1, 1, 1]


@pytest.mark.parametrize("previous", [
    'claude_auth_sync_runs_total{user="alice",status="OK"} NaN\n',
    'claude_auth_sync_runs_total{user="alice",status="OK"} -4\n',
    'claude_auth_sync_runs_total{user="alice",status="OK"} 1.5\n',
    'claude_auth_sync_runs_total{user="alice",status="OK"} 1e300\n',
    'claude_auth_sync_runs_total{user="alice",status="MAYBE"} 9\n',
    'claude_auth_sync_actions_total{user="alice",status="OK"} 9\n',
    "\xff\xfe garbage \x00\n" * 100,
])
def test_unusable_previous_counters_restart_at_zero(previous: str) -> None:
    counts = previous_counts(previous)
    assert counts == {}
    got = samples(render_metrics(event(Status.OK), previous_counts=counts))
    assert got[("claude_auth_sync_runs_total", 'user="alice",status="OK"')] == 1


def test_previous_counters_are_read_back_from_a_rendered_file() -> None:
    text = render_metrics(event(Status.FAIL), previous_counts={("runs_total", "FAIL"): 41, ("actions_total", "none"): 2})
    assert previous_counts(text) == {("runs_total", "OK"): 0, ("runs_total", "WARN"): 0, ("runs_total", "FAIL"): 42,
                                     ("actions_total", "none"): 3, ("actions_total", "backup"): 0,
                                     ("actions_total", "restore"): 0, ("actions_total", "rollback"): 0}


def test_counters_are_never_carried_over_from_a_symlinked_previous_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text('claude_auth_sync_runs_total{user="alice",status="OK"} 1000\n')
    (tmp_path / "textfile").mkdir()
    (tmp_path / "textfile" / "claude_auth_sync_alice.prom").symlink_to(victim)
    MetricsSink(tmp_path / "textfile").emit(event(Status.OK))
    got = samples((tmp_path / "textfile" / "claude_auth_sync_alice.prom").read_text())
    assert got[("claude_auth_sync_runs_total", 'user="alice",status="OK"')] == 1


def test_counters_are_never_carried_over_from_a_file_another_user_planted(tmp_path: Path) -> None:
    """The textfile directory is shared: a file another uid created under this user's name (before
    the user's first run) is not this user's history."""
    (tmp_path / "textfile").mkdir()
    planted = tmp_path / "textfile" / "claude_auth_sync_alice.prom"
    planted.write_text('claude_auth_sync_runs_total{user="alice",status="OK"} 1000\n')
    os.chown(planted, 65534, 65534)
    MetricsSink(tmp_path / "textfile").emit(event(Status.OK))
    got = samples(planted.read_text())
    assert got[("claude_auth_sync_runs_total", 'user="alice",status="OK"')] == 1
    assert planted.stat().st_uid == os.getuid()
