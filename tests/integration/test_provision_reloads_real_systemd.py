"""t3-provision-users under a real systemd (a booted nspawn container, tests/support/nspawn.py):
systemd reloads once per run, not once per user.

A reload costs time in proportion to the units systemd has loaded, so one per user made the first
run over 500 users take 111-204 s (bench/provision_systemd.py measures it). Reloads are counted
from the container's own journal (PID 1's "Reloading" lines), so the reload ``systemctl enable``
or ``disable`` asks for on its own counts too, whoever asked.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_units_real_systemd import (
    PROVISION_STATE,
    PROVISIONER,
    ROSTER,
    install_agent,
    provisioner_report,
    run_provisioner,
)
from tests.support.nspawn import Container
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

USERS = 12


@pytest.fixture(scope="module")
def box(bao: OpenBaoServer) -> Iterator[Container]:
    with Container() as container:
        install_agent(container, bao)
        yield container


def reloads(box: Container) -> int:
    """How many times the container's systemd has reloaded since it booted."""
    out = box.run(["journalctl", "--no-pager", "-o", "json", "_PID=1"], check=False, timeout=120).stdout
    messages = [json.loads(line).get("MESSAGE") for line in out.splitlines() if line.strip()]
    return sum(1 for m in messages if isinstance(m, str) and m.startswith("Reloading")
               and not m.startswith("Reloading finished"))


def unit_states(box: Container, users: list[str]) -> dict[str, tuple[str, str]]:
    """(UnitFileState, ActiveState) of every user's timer and path unit (one systemctl call)."""
    units = [f"claude-auth-sync@{u}.{kind}" for u in users for kind in ("timer", "path")]
    out = box.systemctl("show", "--property=Id,UnitFileState,ActiveState", *units).stdout
    states: dict[str, tuple[str, str]] = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[props["Id"]] = (props.get("UnitFileState", ""), props.get("ActiveState", ""))
    assert sorted(states) == sorted(units), out
    return states


def counted_run(box: Container, bao: OpenBaoServer, users: list[str]) -> tuple[dict[str, Any], int]:
    before = reloads(box)
    report = run_provisioner(box, bao, users)
    return report, reloads(box) - before


def test_one_reload_per_run_and_every_unit_enabled_and_active(box: Container, bao: OpenBaoServer) -> None:
    names = [f"casr{secrets.token_hex(2)}{i:02d}" for i in range(USERS)]
    for name in names:
        box.useradd(name)

    first, reloaded = counted_run(box, bao, names)

    assert first["rc"] == 0, json.dumps(first, indent=1)[-3000:]
    assert reloaded == 1, f"{reloaded} reloads of systemd for {USERS} users: expected one per run"
    assert set(unit_states(box, names).values()) == {("enabled", "active")}, unit_states(box, names)
    by_user = {u["user"]: u for u in first["users"]}
    for name in names:
        report = by_user[name]
        assert report["timer"] == "enabled" and report["severity"] == 0 and report["notes"] == [], report
        assert "enabled timer and path unit" in report["actions"], report
        assert f"enabled claude-auth-sync@{name}.timer and claude-auth-sync@{name}.path" in report["changes"]
        home = f"/home/{name}"
        assert box.read(f"/etc/systemd/system/claude-auth-sync@{name}.path.d/home.conf").decode().endswith(
            f"PathChanged={home}/.claude/.credentials.json\n")
        assert box.unit_property(f"claude-auth-sync@{name}.service", "BindPaths").split() == [f"{home}:{home}:rbind"]
    assert box.systemctl("show", "-P", "NeedDaemonReload", *(f"claude-auth-sync@{n}.path" for n in names)
                         ).stdout.split() == ["no"] * USERS  # the one reload came after every drop-in

    again, reloaded = counted_run(box, bao, names)  # the hourly run's case: nothing to do
    assert again["rc"] == 0, json.dumps(again, indent=1)[-3000:]
    assert reloaded == 0
    assert all(not u["changes"] for u in again["users"]), again["users"]

    kept, dropped = names[:2], names[2:]
    third, reloaded = counted_run(box, bao, kept)  # ten users leave the roster: timers disabled
    assert third["rc"] in (0, 1), json.dumps(third, indent=1)[-3000:]  # 1: their tokens wait for --prune
    removed = {r["user"]: r for r in third["removed"]}
    for name in dropped:
        assert removed[name]["timer"] == "disabled" and "disabled timer" in removed[name]["actions"], removed[name]
    # systemctl disable's own reload and one for all the drop-ins removed (not one per user)
    assert reloaded <= 2, f"{reloaded} reloads of systemd for {len(dropped)} users leaving"
    states = unit_states(box, names)
    assert {states[f"claude-auth-sync@{u}.{k}"] for u in dropped for k in ("timer", "path")} == {("disabled", "inactive")}
    assert {states[f"claude-auth-sync@{u}.{k}"] for u in kept for k in ("timer", "path")} == {("enabled", "active")}
    listed = box.run(["ls", "/etc/systemd/system"]).stdout.split()
    assert sorted(d for d in listed if d.startswith("claude-auth-sync@") and d.endswith(".d")) == sorted(
        f"claude-auth-sync@{u}.{k}.d" for u in kept for k in ("path", "service")), "drop-ins left behind"
    box.run(["rm", "-f", ROSTER], check=False)


def hourly_run(box: Container, *, dry_run: bool = False) -> dict[str, Any]:
    """``t3-provision-users --json`` as the hourly timer runs it: no admin token at all (the roster
    left by the last :func:`run_provisioner`). Its JSON report (``rc`` added)."""
    result = box.run(["env", "-u", "VAULT_TOKEN", str(PROVISIONER), "--json", *(["--dry-run"] if dry_run else []),
                      "--roster", ROSTER, "--config", "/etc/claude-auth-sync/config.toml",
                      "--state-dir", PROVISION_STATE], check=False, timeout=300)
    return provisioner_report(result)


def active_state(box: Container, units: list[str]) -> dict[str, tuple[str, str]]:
    """(ActiveState, Result) of ``units`` (one systemctl call)."""
    out = box.systemctl("show", "--property=Id,ActiveState,Result", *units).stdout
    found: dict[str, tuple[str, str]] = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        found[props["Id"]] = (props.get("ActiveState", ""), props.get("Result", ""))
    return found


def test_the_hourly_run_starts_enabled_units_that_are_down(box: Container, bao: OpenBaoServer) -> None:
    """A unit enabled but not running (stopped by hand, or failed: here its start limit was hit, so
    only ``reset-failed`` lets it start again) is started by the hourly run, without an admin token;
    --dry-run only says so."""
    names = [f"casi{secrets.token_hex(2)}{i:02d}" for i in range(3)]
    for name in names:
        box.useradd(name)
    first = run_provisioner(box, bao, names)
    # 1 at most: the users an earlier test of this module left behind wait for --prune
    assert first["rc"] in (0, 1), json.dumps(first, indent=1)[-3000:]
    assert all(u["severity"] == 0 for u in first["users"]), first["users"]
    stopped_path, stopped_timer, limited = (f"claude-auth-sync@{names[0]}.path", f"claude-auth-sync@{names[1]}.timer",
                                            f"claude-auth-sync@{names[2]}.path")
    box.systemctl("stop", stopped_path, stopped_timer)
    # A start limit of one start an hour for this path unit: the restarts below make it fail with
    # Result=start-limit-hit, and a plain start is refused until reset-failed.
    box.write(f"/etc/systemd/system/{limited}.d/limit.conf",
              "[Unit]\nStartLimitIntervalSec=3600\nStartLimitBurst=1\n", mode=0o644)
    box.systemctl("daemon-reload")
    for _ in range(3):
        box.run(["systemctl", "restart", limited], check=False)
    down = {stopped_path: ("inactive", "success"), stopped_timer: ("inactive", "success"),
            limited: ("failed", "start-limit-hit")}
    assert active_state(box, list(down)) == down
    assert box.run(["systemctl", "start", limited], check=False).returncode != 0  # blocked without reset-failed

    dry = hourly_run(box, dry_run=True)
    assert dry["rc"] in (0, 1), json.dumps(dry, indent=1)[-3000:]
    by_user = {u["user"]: u for u in dry["users"]}
    assert by_user[names[0]]["actions"] == [f"would start {stopped_path} (was inactive)"], by_user[names[0]]
    assert by_user[names[1]]["actions"] == [f"would start {stopped_timer} (was inactive)"], by_user[names[1]]
    assert by_user[names[2]]["actions"] == [f"would start {limited} (was failed, Result: start-limit-hit)"]
    assert all(not u["changes"] for u in dry["users"]), dry["users"]
    assert active_state(box, list(down)) == down  # the dry run changed nothing

    hourly = hourly_run(box)
    assert hourly["rc"] in (0, 1) and not hourly["admin"], json.dumps(hourly, indent=1)[-3000:]
    by_user = {u["user"]: u for u in hourly["users"]}
    for name, unit in zip(names, down, strict=True):
        report = by_user[name]
        assert report["severity"] == 0 and report["notes"] == [] and report["timer"] == "enabled", report
        assert report["changes"] == [f"started {unit}"], report
        assert report["actions"][0].startswith(f"started {unit} (was "), report
    units = [f"claude-auth-sync@{n}.{k}" for n in names for k in ("timer", "path")]
    assert {state for state, _ in active_state(box, units).values()} == {"active"}, active_state(box, units)

    again = hourly_run(box)  # everything up: nothing to do, nothing said
    assert again["rc"] in (0, 1) and all(not u["changes"] and not u["actions"] for u in again["users"]), again["users"]
    box.run(["rm", "-f", ROSTER, f"/etc/systemd/system/{limited}.d/limit.conf"], check=False)
