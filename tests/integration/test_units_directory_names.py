"""Issue 14 item 3 under a real systemd (a throw-away nspawn container, tests/support/nspawn.py):
directory-style user names are their own instance names, unescaped.

* A dotted user (``cas.d<hex>``) whose home is under /srv, provisioned by the real
  ``t3-provision-users``: ``User=%i`` resolves to the dotted account, and the service, the timer
  (made to fire by a test drop-in) and the path unit all run the agent as that user: OK, backed up
  at the dotted user's own Vault path.
* The polkit rule with the real polkitd: a dotted user and a dashed user each start their own
  instance (typed as ``claude-auth-sync@$(id -un).service``) without a password; neither may start
  the other's, and systemd-escape's spelling of a dashed name (``\\x2d``) is a different unit the
  rule does not match.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_units_real_systemd import (  # noqa: F401 - fixtures
    GOOD,
    GOOD_REFRESH,
    POLKIT_RULE,
    POLKIT_RULES_DIR,
    ROSTER,
    UnitUser,
    container,
    oauth,
    refused,
    rewrite_as_user,
    run_provisioner,
    systemctl_as,
    wait_runs,
)
from tests.support.nspawn import Container
from tests.support.openbao import OpenBaoServer


@pytest.fixture
def dotted_srv_user(container: Container, bao: OpenBaoServer) -> Iterator[UnitUser]:  # noqa: F811
    """``cas.d<hex>`` with its home at /srv/cas-dir/<name> (useradd -d), no token yet."""
    name = f"cas.d{secrets.token_hex(3)}"
    user = UnitUser(container, bao, name, home=f"/srv/cas-dir/{name}")
    try:
        container.useradd(user.name, home=user.home)
        yield user
    finally:
        container.run(["rm", "-rf", f"/etc/systemd/system/{user.timer}.d"], check=False)
        user.remove()
        container.run(["rm", "-f", ROSTER], check=False)


def runs(user: UnitUser) -> list[tuple[str, str]]:
    return [(e["CAS_STATUS"], e["CAS_ACTION"]) for e in user.status_entries(at_least=0, timeout=0)]


def test_a_dotted_user_with_a_home_under_srv_runs_through_service_timer_and_path_unit(
        dotted_srv_user: UnitUser) -> None:
    user = dotted_srv_user
    box = user.box
    uid = box.run(["id", "-u", user.name]).stdout.strip()
    user.use_stub_cli(GOOD)
    user.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})  # before the path unit watches: no run

    report = run_provisioner(box, user.bao, [user.name])

    assert report["rc"] == 0, json.dumps(report, indent=1)[-3000:]
    assert box.unit_property(user.service, "User") == user.name  # User=%i: the dotted name, unchanged
    assert box.unit_property(user.service, "BindPaths").split() == [f"{user.home}:{user.home}:rbind"]
    for unit in (user.timer, user.path_unit):
        assert box.systemctl("is-enabled", unit, check=False).stdout.strip() == "enabled", user.explain()
        assert box.unit_property(unit, "ActiveState") == "active", user.explain()
    assert box.unit_property(user.timer, "Triggers") == user.service
    assert box.unit_property(user.path_unit, "Paths") == f"{user.home}/.claude/.credentials.json (PathChanged)"
    assert runs(user) == []

    rc, _ = user.start()  # 1: the service itself
    assert rc == 0, user.explain()
    assert runs(user) == [("OK", "backup")]
    first = user.status_entries()[0]
    assert first["_UID"] == uid and first["CAS_USER"] == user.name, first
    assert user.vault_copy()["data"] == {"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)}
    assert user.secret_path.endswith(f"/{user.name}")
    assert " OK " in box.read(user.sync_log).decode().splitlines()[-1]  # the log in the /srv home

    rewrite_as_user(user, {"claudeAiOauth": oauth(GOOD, GOOD_REFRESH), "mcpOAuth": {}})  # 2: the path unit
    assert len(wait_runs(user, 2, timeout=30)) == 2, user.explain()

    box.write(f"/etc/systemd/system/{user.timer}.d/test.conf", "[Timer]\nOnActiveSec=1s\nRandomizedDelaySec=0\nAccuracySec=1s\n")  # 3: the timer
    box.systemctl("daemon-reload")
    box.systemctl("restart", user.timer)
    assert len(wait_runs(user, 3, timeout=30)) == 3, user.explain()
    assert [status for status, _ in runs(user)] == ["OK", "OK", "OK"], runs(user)
    assert box.unit_property(user.service, "Result") == "success"
    assert box.unit_property(user.timer, "ActiveState") == "active"  # still waiting for its calendar slot


@pytest.fixture
def directory_users(container: Container, bao: OpenBaoServer) -> Iterator[tuple[UnitUser, UnitUser]]:  # noqa: F811
    dotted = UnitUser(container, bao, f"cas.p{secrets.token_hex(3)}")
    dashed = UnitUser(container, bao, f"cas-q{secrets.token_hex(3)}")
    try:
        for user in (dotted, dashed):
            user.provision()
            user.use_stub_cli(GOOD)
            user.login({"claudeAiOauth": oauth(GOOD, GOOD_REFRESH)})
        yield dotted, dashed
    finally:
        dotted.remove()
        dashed.remove()


def own_instance(user: UnitUser) -> Any:
    """What the runbook tells a person to type, as that person (their shell expands $(id -un))."""
    return user.box.run(["sh", "-c", 'exec systemctl --no-ask-password start "claude-auth-sync@$(id -un).service"'],
                        user=user.name, check=False, timeout=120)


def test_the_polkit_rule_lets_dotted_and_dashed_users_start_only_their_own_instance(
        directory_users: tuple[UnitUser, UnitUser], container: Container) -> None:  # noqa: F811
    for needed in ("/usr/lib/polkit-1/polkitd", "/usr/bin/dbus-daemon"):
        if container.run(["test", "-x", needed], check=False).returncode != 0:
            pytest.fail(f"{needed} is missing: scripts/dev/test.sh installs polkitd and dbus")
    dotted, dashed = directory_users
    rule = f"{POLKIT_RULES_DIR}/{POLKIT_RULE.name}"
    try:
        container.write(rule, POLKIT_RULE.read_text(), mode=0o644)
        container.systemctl("restart", "polkit.service")
        assert container.unit_property("polkit.service", "ActiveState") == "active"

        for user in (dotted, dashed):
            result = own_instance(user)
            assert result.returncode == 0, (user.name, result.stdout, result.stderr, user.explain())
            assert runs(user) == [("OK", "backup")], (user.name, runs(user))
            assert user.vault_copy()["data"]["claudeAiOauth"]["accessToken"] == GOOD

        escaped = "claude-auth-sync@" + dashed.name.replace("-", "\\x2d") + ".service"  # systemd-escape's spelling
        for user, unit in ((dotted, dashed.service), (dashed, dotted.service), (dashed, escaped),
                           (dotted, dotted.timer), (dotted, dotted.path_unit)):
            result = systemctl_as(user, "start", unit)
            assert refused(result), (user.name, unit, result.returncode, result.stdout, result.stderr)
        assert runs(dotted) == [("OK", "backup")] and runs(dashed) == [("OK", "backup")]
        assert container.unit_property(escaped, "InvocationID") == ""  # never ran
    finally:
        container.run(["rm", "-f", rule], check=False)
        container.systemctl("try-restart", "polkit.service", check=False)


def test_systemd_keeps_a_dotted_instance_verbatim_and_escaped_spellings_apart(dotted_srv_user: UnitUser) -> None:
    """What systemd 252 does with the names (the reasons for User=%i and for refusing name@domain):
    %i is the instance as typed, %I undoes systemd-escape ('-' becomes '/', \\x40 becomes '@')."""
    box = dotted_srv_user.box
    box.write("/etc/systemd/system/cas-names@.service",
              "[Service]\nType=oneshot\nExecStart=/bin/echo i=%i I=%I\nSyslogIdentifier=cas-names\n")
    box.systemctl("daemon-reload")
    try:
        seen = {}
        for instance in (dotted_srv_user.name, "j_doe-2", "john.doe@corp.example", "john.doe\\x40corp.example"):
            unit = f"cas-names@{instance}.service"
            box.systemctl("start", unit)
            deadline = time.monotonic() + 10
            while not (lines := box.journal("cas-names", unit=unit)):
                assert time.monotonic() < deadline, unit
                time.sleep(0.2)
            seen[instance] = lines[-1]["MESSAGE"]
        assert seen[dotted_srv_user.name] == f"i={dotted_srv_user.name} I={dotted_srv_user.name}"
        assert seen["j_doe-2"] == "i=j_doe-2 I=j_doe/2"
        assert seen["john.doe@corp.example"] == "i=john.doe@corp.example I=john.doe@corp.example"
        assert seen["john.doe\\x40corp.example"] == "i=john.doe\\x40corp.example I=john.doe@corp.example"
    finally:
        box.run(["rm", "-f", "/etc/systemd/system/cas-names@.service"], check=False)
        box.systemctl("daemon-reload", check=False)
