"""deploy/alerts/alertmanager-inhibit.yaml (issue 15 item 4) with the REAL Alertmanager (Debian
package ``prometheus-alertmanager``: ``amtool`` and ``prometheus-alertmanager``).

* ``amtool check-config`` accepts the snippet merged into a minimal alertmanager.yml.
* A real Alertmanager on loopback, given that configuration, receives exactly the alerts the rules
  produce in the committed promtool test (labels read from prometheus-rules.test.yaml at 50 min:
  the mass alert and five per-user ``WorkstationClaudeAuthInvalid``). Its API then reports every
  per-user alert inhibited by the mass alert, while an unrelated claude-auth-sync alert and a
  per-user alert alone (before the mass alert, after it resolved) stay active.

A missing binary FAILS these tests; it never skips.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_alert_rules import ALERTS, INVALID, PROM_TESTS
from tests.support.processes import stop_process

pytestmark = pytest.mark.real

INHIBIT = ALERTS / "alertmanager-inhibit.yaml"
MASS = "WorkstationClaudeAuthMassFailure"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def config_text(receiver_url: str = "http://127.0.0.1:9/") -> str:
    """A minimal alertmanager.yml with the shipped snippet merged in, as an administrator would."""
    snippet = yaml.safe_load(INHIBIT.read_text())
    assert set(snippet) == {"inhibit_rules"}, "the snippet carries only inhibit_rules to merge"
    config = {
        "route": {"receiver": "pager", "group_by": ["alertname", "host", "user"], "group_wait": "30s"},
        "receivers": [{"name": "pager", "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}],
        **snippet,
    }
    return yaml.safe_dump(config, sort_keys=False)


def test_amtool_check_config_accepts_the_snippet_merged_into_a_config(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool missing: apt-get install prometheus-alertmanager (these tests never skip)"
    path = tmp_path / "alertmanager.yml"
    path.write_text(config_text())
    res = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0 and "SUCCESS" in res.stdout and "1 inhibit rules" in res.stdout, res.stdout + res.stderr

    broken = tmp_path / "broken.yml"  # amtool really validates: a bad matcher is refused
    broken.write_text(config_text().replace("alertname = WorkstationClaudeAuthMassFailure", "alertname =~ (Mass"))
    res = subprocess.run([amtool, "check-config", str(broken)], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def alertmanager(tmp_path: Path) -> Iterator[str]:
    assert Path(ALERTMANAGER).exists(), f"{ALERTMANAGER} missing: apt-get install prometheus-alertmanager"
    config = tmp_path / "alertmanager.yml"
    config.write_text(config_text())
    port = _free_port()
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "alertmanager.log", "wb"),  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            assert time.monotonic() < deadline, "alertmanager did not become ready within 20 s"
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)


def _rule_alerts(alertname: str, eval_time: str) -> list[dict[str, str]]:
    """The labels the committed promtool test expects from the rules for ``alertname`` at ``eval_time``."""
    for test in yaml.safe_load(PROM_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            if case["alertname"] == alertname and case["eval_time"] == eval_time and case["exp_alerts"] and \
                    test["name"].startswith("five users FAIL within an hour"):
                return [{"alertname": alertname, **alert["exp_labels"]} for alert in case["exp_alerts"]]
    raise AssertionError(f"no committed expectation for {alertname} at {eval_time}")


def _post(url: str, labels: list[dict[str, str]], *, resolved: bool = False) -> None:
    now = datetime.now(UTC)
    ends = now - timedelta(seconds=1) if resolved else now + timedelta(hours=1)
    body = [{"labels": one, "annotations": {"summary": "test"}, "startsAt": (now - timedelta(minutes=1)).isoformat(),
             "endsAt": ends.isoformat()} for one in labels]
    request = urllib.request.Request(f"{url}/api/v2/alerts", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _states(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``(alertname, user) -> status`` of the alerts Alertmanager holds, resolved ones excluded."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts?active=true&inhibited=true&silenced=true&unprocessed=true",
                                timeout=10) as response:
        alerts = json.load(response)
    return {(a["labels"]["alertname"], a["labels"].get("user", "")): a["status"] for a in alerts}


def _wait_for(url: str, check: Any, what: str) -> dict[tuple[str, str], dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        states = _states(url)
        if check(states):
            return states
        assert time.monotonic() < deadline, f"{what}: {states}"
        time.sleep(0.2)


def test_a_real_alertmanager_inhibits_per_user_pages_while_the_mass_alert_fires(alertmanager: str) -> None:
    per_user = _rule_alerts(INVALID, "50m")
    (mass,) = _rule_alerts(MASS, "50m")
    assert len(per_user) == 5 and {a["user"] for a in per_user} == {f"u{i}" for i in range(1, 6)}
    other = {"alertname": "WorkstationClaudeAuthAgentSilent", "severity": "warning", "service": "claude-auth-sync",
             "instance": "ws9:9100", "job": "node", "host": "ws9", "user": "u9"}
    unrelated = {"alertname": INVALID, "severity": "critical", "service": "another-service", "user": "u7"}

    # Before the mass alert: a per-user alert pages (active, not inhibited).
    _post(alertmanager, per_user[:1] + [other, unrelated])
    states = _wait_for(alertmanager, lambda s: (INVALID, "u1") in s, "the first per-user alert never arrived")
    assert states[(INVALID, "u1")]["state"] == "active" and states[(INVALID, "u1")]["inhibitedBy"] == []

    # The mass alert arrives with the other four: all five per-user alerts are inhibited by it.
    _post(alertmanager, [mass, *per_user[1:]])
    states = _wait_for(alertmanager, lambda s: all(s.get((INVALID, a["user"]), {}).get("state") == "suppressed"
                                                   for a in per_user), "per-user alerts not inhibited")
    assert states[(MASS, "")]["state"] == "active" and states[(MASS, "")]["inhibitedBy"] == []
    for alert in per_user:
        assert len(states[(INVALID, alert["user"])]["inhibitedBy"]) == 1
    # Only claude-auth-sync's per-user FAIL alerts: the silent-agent alert and another service's page stay active.
    assert states[("WorkstationClaudeAuthAgentSilent", "u9")]["state"] == "active"
    assert states[(INVALID, "u7")]["state"] == "active"

    # The mass alert resolves (fewer than the threshold still FAIL): the remaining per-user alerts page again.
    _post(alertmanager, [mass], resolved=True)
    states = _wait_for(alertmanager, lambda s: all(s.get((INVALID, a["user"]), {}).get("state") == "active"
                                                   for a in per_user), "per-user alerts still inhibited")
    assert all(states[(INVALID, a["user"])]["inhibitedBy"] == [] for a in per_user)
