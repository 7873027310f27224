"""``diagnose``, ``check`` and ``run`` of a user whose shell moves the XDG directories, next to the
real unit under a real systemd (issue 14 items 3 and 6).

The machine's root booted as a throw-away container (``tests/support/nspawn.py``), the agent
installed as setup-devvm.sh does (``install_agent`` of ``test_units_real_systemd``), a user created
inside with a provisioned Vault token (real OpenBao on the host's loopback). The shipped service
runs once (``systemctl start``), the timer is enabled; then the user's own commands run in a
session whose ``XDG_CONFIG_HOME``/``XDG_STATE_HOME`` point into ``~/dotfiles``: they use the unit's
token and log, and ``diagnose --json`` reports the timer's next run as numbers read from systemd.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.integration.test_units_real_systemd import GOOD, GOOD_REFRESH, STUB_IN_CONTAINER, UnitUser, install_agent, oauth
from tests.support.cli import fp
from tests.support.nspawn import Container
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.real

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "diagnose.schema.json").read_text())


@pytest.fixture(scope="module")
def container(bao: OpenBaoServer) -> Iterator[Container]:
    with Container() as box:
        install_agent(box, bao)
        yield box


@pytest.fixture
def user(container: Container, bao: OpenBaoServer) -> Iterator[UnitUser]:
    person = UnitUser(container, bao, f"casdx{secrets.token_hex(3)}")
    try:
        person.provision()
        person.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
        person.use_stub_cli(GOOD)
        person.box.systemctl("enable", "--now", person.timer)
        code, _ = person.start()
        assert code == 0, person.explain()
        yield person
    finally:
        person.remove()


def shell(user: UnitUser, *args: str, **extra: str):  # type: ignore[no-untyped-def]
    """The installed CLI as ``user`` in a session whose profile moved the XDG base directories."""
    env = {"XDG_CONFIG_HOME": f"{user.home}/dotfiles/config", "XDG_STATE_HOME": f"{user.home}/dotfiles/state",
           "CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": STUB_IN_CONTAINER, "STUB_CLAUDE_ACCEPT": fp(GOOD), **extra}
    return user.box.run(["/usr/local/bin/claude-auth-sync", *args], user=user.name, env=env, check=False, timeout=120)


def test_a_shell_with_its_own_xdg_dirs_agrees_with_the_unit(user: UnitUser) -> None:
    check = shell(user, "check")
    assert check.returncode == 0 and check.stdout.startswith("CLAUDE-AUTH-SYNC OK"), check.stdout + check.stderr
    run = shell(user, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    log = user.box.read(user.sync_log).decode()
    assert log.count(" OK ") == 2, log  # the unit's run and the shell's, in one log
    assert user.box.run(["test", "-e", f"{user.home}/dotfiles/state/claude-auth-sync"], check=False).returncode == 1

    answer = shell(user, "diagnose", "--json")
    data = json.loads(answer.stdout)
    jsonschema.validate(data, SCHEMA)
    rows = {(r["group"], r["name"]): r for r in data["checks"]}
    for variable in ("XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        assert rows[("paths", variable)]["values"]["rule"] == "fallback"
    assert rows[("timer", "enabled")]["state"] == "ok"
    schedule = rows[("timer", "schedule")]["values"]
    assert isinstance(schedule["next_run_in_s"], int), rows[("timer", "schedule")]
    assert 0 < schedule["next_run_in_s"] <= 6.5 * 3600, schedule
    assert schedule["next_run_at_epoch"] - data["generated_at_epoch"] - schedule["next_run_in_s"] in range(-30, 31)
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(schedule["next_run_at_epoch"])) == schedule["next_run_at"]
    assert rows[("private log", "last run")]["values"]["status"] == "OK"

    table = shell(user, "diagnose", COLUMNS="100")
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and len(lines) <= 30, table.stdout
    assert "next run in " in table.stdout and "XDG_STATE_HOME" in table.stdout, table.stdout
