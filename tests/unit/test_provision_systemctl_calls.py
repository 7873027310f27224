"""Which ``systemctl`` calls the provisioner's unit phase makes, and in what order (unit tests: a
recording stand-in for ``systemctl``; the real systemd is exercised by
tests/integration/test_provision_reloads_real_systemd.py).

On a booted systemd the first run over many users links every unit (``enable --no-reload``), then
reloads systemd once, then starts every unit: one call each. A failing batch call is repeated per
user so each report names its own units' failure. Every later (hourly) run reads the state of
every linked unit in one ``systemctl show`` and starts those that are down (stopped, or failed:
``reset-failed`` first) in one ``systemctl start``. Unbooted (``--root``): links only, no other
call. A dry run: only the one ``show``, nothing changed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from claude_auth_sync.admin import timers as timers_mod
from claude_auth_sync.admin.as_user import Account
from claude_auth_sync.admin.provision import Options, Provisioner
from claude_auth_sync.admin.provision_report import UserReport, Work

#: The stand-in: records its argv, makes the links of ``enable`` under ``--root`` (all or nothing,
#: as one EnableUnitFiles call), fails for the units named in fail-enable / fail-start. Each unit's
#: (ActiveState, Result) is kept in states.json (``show`` reads it; a unit not in it is active, or
#: failed for resources when its user is in fail-start); ``start`` refuses a unit that hit its start
#: limit until ``reset-failed`` (as systemd does), and leaves a unit in fail-start failed.
FAKE = r'''
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps(args) + "\n")
root = next((a.split("=", 1)[1] for a in args if a.startswith("--root=")), "/nonexistent")
words = [a for a in args if not a.startswith("--")]
verb, units = words[0], words[1:]
state_file = os.path.join(here, "states.json")
states = json.load(open(state_file)) if os.path.exists(state_file) else {}
def save():
    with open(state_file, "w") as handle:
        json.dump(states, handle)
def failing(kind):
    with open(os.path.join(here, "fail-" + kind)) as handle:
        bad = handle.read().split()
    return [u for u in units if u.split("@", 1)[1].rsplit(".", 1)[0] in bad]
if verb == "enable":
    bad = failing("enable")
    if bad:
        sys.stderr.write(f"Failed to enable unit: Unit file {bad[0]} does not exist.\n")
        sys.exit(1)
    for unit in units:
        wants = "timers.target.wants" if unit.endswith(".timer") else "paths.target.wants"
        link = os.path.join(root, "etc/systemd/system", wants, unit)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/etc/systemd/system/" + unit.split("@")[0] + "@." + unit.rsplit(".", 1)[1], link)
elif verb == "start":
    bad = failing("start")
    limited = [u for u in units if states.get(u) == ["failed", "start-limit-hit"]]
    for unit in units:
        if unit not in bad and unit not in limited:
            states[unit] = ["active", "success"]
    for unit in bad:
        states[unit] = ["failed", "resources"]
    save()
    if limited:
        sys.stderr.write(f"Job for {limited[0]} failed: start request repeated too quickly.\n")
        sys.exit(1)
    if bad:
        sys.stderr.write(f"Job for {bad[0]} failed.\n")
        sys.exit(1)
elif verb == "reset-failed":
    for unit in units:
        if states.get(unit, [""])[0] == "failed":
            states[unit] = ["inactive", "success"]
    save()
elif verb == "show":
    bad = failing("start")
    def state(u):
        return states.get(u) or (["failed", "resources"] if u in bad else ["active", "success"])
    print("\n\n".join(f"Id={u}\nActiveState={state(u)[0]}\nResult={state(u)[1]}" for u in units))
'''


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    script = tmp_path / "bin" / "systemctl"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\n{FAKE}")
    script.chmod(0o755)
    for kind in ("enable", "start"):
        (script.parent / f"fail-{kind}").write_text("")
    return script


def calls(fake: Path) -> list[list[str]]:
    log = fake.parent / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def verbs(fake: Path) -> list[tuple[str, int]]:
    """Each call as (verb, number of units)."""
    out = []
    for argv in calls(fake):
        words = [a for a in argv if not a.startswith("--")]
        out.append((words[0], len(words) - 1))
    return out


def provisioner(tmp_path: Path, fake: Path, *, dry_run: bool = False) -> Provisioner:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    return Provisioner(Options(systemd_root=root, systemctl=str(fake), state_dir=tmp_path / "state",
                               dry_run=dry_run), admin_token=None)


def works(names: list[str]) -> list[Work]:
    return [Work(report=UserReport(user=n), account=Account(name=n, uid=1000 + i, gid=1000 + i,
                                                          home=f"/srv/homes/{n}", groups=()))
            for i, n in enumerate(names)]


@pytest.fixture
def booted(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a booted systemd (the unit directory still below the test root)."""
    monkeypatch.setattr(timers_mod.SystemdTimers, "_booted", lambda self: True)


NAMES = ["ann", "bob.b", "cy_d", "dee-2", "eve"]


def test_booted_first_run_links_all_reloads_once_then_starts_all(tmp_path: Path, fake: Path, booted: None) -> None:
    prov = provisioner(tmp_path, fake)
    local = works(NAMES)
    prov._timers(local)
    assert verbs(fake) == [("enable", 10), ("daemon-reload", 0), ("start", 10)]
    enable = calls(fake)[0]
    assert "--no-reload" in enable and "--now" not in enable  # the one reload is ours, after every link
    for work in local:
        user = work.report.user
        assert work.report.timer == "enabled" and work.report.severity == 0, work.report
        assert work.report.actions == ["enabled timer and path unit"]
        assert work.report.changes == [f"units of {user} point at /srv/homes/{user}",
                                       f"enabled claude-auth-sync@{user}.timer and claude-auth-sync@{user}.path"]
        assert prov._units_current(work)
    assert prov.errors == []

    os.unlink(fake.parent / "calls.jsonl")
    again = works(NAMES)
    prov._timers(again)  # the hourly run, nothing left to do: one read of every unit's state, nothing else
    assert verbs(fake) == [("show", 10)]
    assert "--property=Id,ActiveState,Result" in calls(fake)[0]
    assert all(w.report.actions == [] and w.report.changes == [] and w.report.severity == 0 for w in again)


def test_a_failing_enable_is_retried_per_user_and_reported_for_that_user_only(
        tmp_path: Path, fake: Path, booted: None) -> None:
    (fake.parent / "fail-enable").write_text("cy_d\n")
    local = works(NAMES)
    provisioner(tmp_path, fake)._timers(local)
    assert verbs(fake) == [("enable", 10), *[("enable", 2)] * 5, ("daemon-reload", 0), ("start", 8)]
    by_user = {w.report.user: w.report for w in local}
    bad = by_user.pop("cy_d")
    assert bad.timer == "disabled" and bad.severity == 78
    assert bad.notes == ["systemctl enable claude-auth-sync@cy_d.timer claude-auth-sync@cy_d.path failed "
                         "(exit non-zero): Failed to enable unit: Unit file claude-auth-sync@cy_d.timer does not exist."]
    for report in by_user.values():
        assert report.timer == "enabled" and report.severity == 0 and report.notes == [], report


def test_a_failing_start_is_retried_per_user_and_reported_for_that_user_only(
        tmp_path: Path, fake: Path, booted: None) -> None:
    (fake.parent / "fail-start").write_text("eve\n")
    local = works(NAMES)
    provisioner(tmp_path, fake)._timers(local)
    assert verbs(fake) == [("enable", 10), ("daemon-reload", 0), ("start", 10), *[("start", 2)] * 5, ("show", 2)]
    by_user = {w.report.user: w.report for w in local}
    bad = by_user.pop("eve")
    assert bad.timer == "enabled" and bad.severity == 78  # linked, but not running: said so, and why
    assert bad.notes == ["systemctl start claude-auth-sync@eve.timer claude-auth-sync@eve.path failed: "
                         "Job for claude-auth-sync@eve.timer failed.; "
                         "claude-auth-sync@eve.timer failed (Result: resources); "
                         "claude-auth-sync@eve.path failed (Result: resources): most likely "
                         "fs.inotify.max_user_instances (128 by default) is used up, one per path unit"]
    assert bad.next_steps == [INOTIFY_FIX]
    for report in by_user.values():
        assert report.severity == 0 and report.notes == [], report


INOTIFY_FIX = ("raise the inotify instance limit (one per path unit): echo fs.inotify.max_user_instances=1024 "
               "> /etc/sysctl.d/60-claude-auth-sync.conf && sysctl --system; then rerun t3-provision-users")


def set_states(fake: Path, states: dict[str, tuple[str, str]]) -> None:
    """Put units into the stand-in's (ActiveState, Result), as a stop, a crash or a start limit would."""
    path = fake.parent / "states.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update({unit: list(state) for unit, state in states.items()})
    path.write_text(json.dumps(known))


DOWN = {"claude-auth-sync@ann.path": ("inactive", "success"),          # systemctl stop
        "claude-auth-sync@bob.b.timer": ("inactive", "success"),
        "claude-auth-sync@eve.path": ("failed", "start-limit-hit")}    # blocked until reset-failed


def linked(tmp_path: Path, fake: Path) -> Provisioner:
    """A provisioner whose users' units were all linked and started by a first run (calls log cleared)."""
    prov = provisioner(tmp_path, fake)
    prov._timers(works(NAMES))
    os.unlink(fake.parent / "calls.jsonl")
    return prov


def test_the_hourly_run_starts_enabled_units_that_are_down_in_one_call(
        tmp_path: Path, fake: Path, booted: None) -> None:
    prov = linked(tmp_path, fake)
    set_states(fake, DOWN)
    local = works(NAMES)
    prov._timers(local)
    # one read of all ten units, one reset-failed for the failed one, one start for the three down
    assert verbs(fake) == [("show", 10), ("reset-failed", 1), ("start", 3)]
    assert [a for a in calls(fake)[1] if not a.startswith("--")] == ["reset-failed", "claude-auth-sync@eve.path"]
    assert [a for a in calls(fake)[2] if not a.startswith("--")] == [
        "start", "claude-auth-sync@ann.path", "claude-auth-sync@bob.b.timer", "claude-auth-sync@eve.path"]
    by_user = {w.report.user: w.report for w in local}
    assert by_user["ann"].actions == ["started claude-auth-sync@ann.path (was inactive)"]
    assert by_user["bob.b"].actions == ["started claude-auth-sync@bob.b.timer (was inactive)"]
    assert by_user["eve"].actions == ["started claude-auth-sync@eve.path (was failed, Result: start-limit-hit)"]
    assert by_user["eve"].changes == ["started claude-auth-sync@eve.path"]
    for user in ("cy_d", "dee-2"):
        assert by_user[user].actions == [] and by_user[user].changes == [], by_user[user]
    for report in by_user.values():
        assert report.timer == "enabled" and report.severity == 0 and report.notes == [], report
    assert prov.errors == []
    states = json.loads((fake.parent / "states.json").read_text())
    assert {states[u][0] for u in DOWN} == {"active"}

    os.unlink(fake.parent / "calls.jsonl")
    prov._timers(works(NAMES))  # all up again: the next hour only reads
    assert verbs(fake) == [("show", 10)]


def test_a_unit_that_stays_down_is_flagged_with_its_reason_and_the_fix(
        tmp_path: Path, fake: Path, booted: None) -> None:
    prov = linked(tmp_path, fake)
    set_states(fake, {"claude-auth-sync@ann.timer": ("inactive", "success"),
                      "claude-auth-sync@eve.path": ("failed", "resources")})
    (fake.parent / "fail-start").write_text("eve\n")  # PID 1 still has no inotify instance left
    local = works(NAMES)
    prov.work = {w.report.user: w for w in local}
    prov._timers(local)
    # the batch fails, so one start per user (each report gets its own units' outcome), then why
    assert verbs(fake) == [("show", 10), ("reset-failed", 1), ("start", 2), ("start", 1), ("start", 1), ("show", 1)]
    by_user = {w.report.user: w.report for w in local}
    bad = by_user.pop("eve")
    assert bad.severity == 78 and bad.timer == "enabled"
    assert bad.notes == ["systemctl start claude-auth-sync@eve.path failed: Job for claude-auth-sync@eve.path "
                         "failed.; claude-auth-sync@eve.path failed (Result: resources): most likely "
                         "fs.inotify.max_user_instances (128 by default) is used up, one per path unit"]
    assert bad.next_steps == [INOTIFY_FIX]
    assert bad.actions == [] and bad.changes == []
    assert by_user["ann"].actions == ["started claude-auth-sync@ann.timer (was inactive)"]
    for report in by_user.values():
        assert report.severity == 0 and report.notes == [], report
    assert prov.exit_code() == 78  # the run's exit status: a person must act


def test_a_dry_run_says_what_it_would_start_and_starts_nothing(tmp_path: Path, fake: Path, booted: None) -> None:
    linked(tmp_path, fake)
    set_states(fake, DOWN)
    local = works(NAMES)
    provisioner(tmp_path, fake, dry_run=True)._timers(local)
    assert verbs(fake) == [("show", 10)]  # read only: no reset-failed, no start
    by_user = {w.report.user: w.report for w in local}
    assert by_user["ann"].actions == ["would start claude-auth-sync@ann.path (was inactive)"]
    assert by_user["eve"].actions == ["would start claude-auth-sync@eve.path (was failed, Result: start-limit-hit)"]
    assert all(r.changes == [] and r.severity == 0 for r in by_user.values())
    states = json.loads((fake.parent / "states.json").read_text())
    assert {u: tuple(states[u]) for u in DOWN} == DOWN


def test_unbooted_below_a_root_only_links(tmp_path: Path, fake: Path) -> None:
    local = works(NAMES)
    provisioner(tmp_path, fake)._timers(local)
    assert verbs(fake) == [("enable", 10)]
    argv = calls(fake)[0]
    assert f"--root={tmp_path / 'root'}" in argv and "--no-reload" not in argv and "--now" not in argv
    assert all(w.report.timer == "enabled" for w in local)
    os.unlink(fake.parent / "calls.jsonl")
    provisioner(tmp_path, fake)._timers(works(NAMES))  # the next run below a root: no call at all
    assert calls(fake) == []


def test_a_dry_run_calls_nothing_and_writes_nothing(tmp_path: Path, fake: Path, booted: None) -> None:
    local = works(NAMES)
    provisioner(tmp_path, fake, dry_run=True)._timers(local)
    assert calls(fake) == []
    assert list((tmp_path / "root/etc/systemd/system").iterdir()) == []
    assert all(w.report.actions == ["would enable timer and path unit"] for w in local)


def test_deferred_reload_merges_the_reloads_of_a_block_into_one(tmp_path: Path, fake: Path, booted: None) -> None:
    units = timers_mod.SystemdTimers(tmp_path / "root", str(fake))
    for name in NAMES[:3]:
        units.write_dropins(name, f"/home/{name}")
    assert verbs(fake) == [("daemon-reload", 0)] * 3  # outside a block: one per change, as before
    os.unlink(fake.parent / "calls.jsonl")
    with pytest.raises(RuntimeError), units.deferred_reload() as outcome:
        for name in NAMES[:3]:
            units.remove_dropins(name)
        with units.deferred_reload():  # nested: merged into the outer block
            units.reload()
        assert calls(fake) == []
        raise RuntimeError("a failure mid-block still gets its reload")
    assert verbs(fake) == [("daemon-reload", 0)] and outcome == [(True, "")]
    with units.deferred_reload() as outcome:
        pass
    assert verbs(fake) == [("daemon-reload", 0)] and outcome == []  # nothing asked for: no reload
