"""Which ``systemctl`` calls the provisioner's unit phase makes, and in what order (unit tests: a
recording stand-in for ``systemctl``; the real systemd is exercised by
tests/integration/test_provision_reloads_real_systemd.py).

On a booted systemd the first run over many users links every unit (``enable --no-reload``), then
reloads systemd once, then starts every unit: one call each. A failing batch call is repeated per
user so each report names its own units' failure. Unbooted (``--root``): links only. A dry run:
no call at all.
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
#: as one EnableUnitFiles call), fails for the units named in fail-enable / fail-start.
FAKE = r'''
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps(args) + "\n")
root = next((a.split("=", 1)[1] for a in args if a.startswith("--root=")), "/nonexistent")
words = [a for a in args if not a.startswith("--")]
verb, units = words[0], words[1:]
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
    if bad:
        sys.stderr.write(f"Job for {bad[0]} failed.\n")
        sys.exit(1)
elif verb == "show":
    bad = failing("start")
    print("\n\n".join(f"Id={u}\nActiveState={'failed' if u in bad else 'active'}\n"
                      f"Result={'resources' if u in bad else 'success'}" for u in units))
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
    prov._timers(works(NAMES))  # nothing left to do: no call at all
    assert calls(fake) == []


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
                         "fs.inotify.max_user_instances (128 by default) is used up, one per path unit: "
                         "raise it (sysctl) and rerun"]
    for report in by_user.values():
        assert report.severity == 0 and report.notes == [], report


def test_unbooted_below_a_root_only_links(tmp_path: Path, fake: Path) -> None:
    local = works(NAMES)
    provisioner(tmp_path, fake)._timers(local)
    assert verbs(fake) == [("enable", 10)]
    argv = calls(fake)[0]
    assert f"--root={tmp_path / 'root'}" in argv and "--no-reload" not in argv and "--now" not in argv
    assert all(w.report.timer == "enabled" for w in local)


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
