"""The shipped alerting chain end to end, every component real: the metrics sink's textfiles, a
REAL node_exporter, a REAL Prometheus evaluating deploy/alerts/prometheus-rules.yaml exactly as
shipped (site constants included), and a REAL Alertmanager configured with
deploy/alerts/alertmanager-inhibit.yaml.

One fleet, written by the sink as real runs would leave it (times relative to now):

=======  ==================================================  ======================================
user     state                                               expected
=======  ==================================================  ======================================
f1..f5   FAIL, turned FAIL a few minutes ago                 one MassFailure; five Invalid, inhibited
dave     never logged in, waiting for 8 days                 AwaitingFirstLogin (info)
erin     never logged in, waiting for 1 day                  nothing (within the grace period)
frank    WARN for 4 days                                     StuckInWarn
gina     WARN since 1 day                                    nothing
henry    OK, Vault token expires in 3 days                   VaultTokenExpiring
ivan     OK, Vault token expires in 30 days                  nothing
=======  ==================================================  ======================================
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from claude_auth_sync.model import Action, ExitCode, Status, StatusEvent
from claude_auth_sync.plugins.sink_metrics import MetricsSink
from tests.integration.test_alert_rules import INVALID, PROM_RULES
from tests.integration.test_alertmanager_inhibit import alertmanager  # noqa: F401
from tests.support.prometheus import NodeExporter, Prometheus, public_tempdir

pytestmark = pytest.mark.real

DAY = 86400
CODES = {Status.OK: ExitCode.OK, Status.WARN: ExitCode.TEMPFAIL, Status.FAIL: ExitCode.FAIL}


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit(sink: MetricsSink, user: str, status: Status, at: float, reason: str | None = None, **details: Any) -> None:
    sink.emit(StatusEvent(timestamp=stamp(at), status=status, exit_code=CODES[status], user=user, action=Action.NONE,
                          reason=reason if status != Status.OK else None, details=details))


def write_fleet(directory: Path, now: float) -> None:
    sink = MetricsSink(directory)
    for i in range(1, 6):
        emit(sink, f"f{i}", Status.OK, now - 6 * 3600, store_ttl_s=30 * DAY)
        emit(sink, f"f{i}", Status.FAIL, now - 60 * i, "auth_failed_after_restore", store_ttl_s=30 * DAY)
    emit(sink, "dave", Status.WARN, now, "awaiting_first_login", awaiting_first_login_since=int(now - 8 * DAY),
         store_ttl_s=30 * DAY)
    emit(sink, "erin", Status.WARN, now, "awaiting_first_login", awaiting_first_login_since=int(now - DAY),
         store_ttl_s=30 * DAY)
    emit(sink, "frank", Status.WARN, now - 4 * DAY, "vault_unreachable")
    emit(sink, "frank", Status.WARN, now, "vault_unreachable")  # the streak started 4 days ago
    emit(sink, "gina", Status.OK, now - 2 * DAY, store_ttl_s=30 * DAY)
    emit(sink, "gina", Status.WARN, now - DAY, "http_529", store_ttl_s=30 * DAY)
    emit(sink, "gina", Status.WARN, now, "http_529", store_ttl_s=30 * DAY)
    emit(sink, "henry", Status.OK, now, store_ttl_s=3 * DAY)
    emit(sink, "ivan", Status.OK, now, store_ttl_s=30 * DAY)


class RulingPrometheus(Prometheus):
    """The support Prometheus, plus the shipped rule file and an Alertmanager to send to."""

    def __init__(self, targets: dict[str, str], rules: Path, alertmanager_address: str) -> None:
        super().__init__(targets)
        self.rules = rules
        self.alertmanager = alertmanager_address

    def config(self) -> str:
        config = json.loads(super().config())
        config["rule_files"] = [str(self.rules)]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]}
        return json.dumps(config, indent=2)


@pytest.fixture()
def rules_copy() -> Iterator[Path]:
    directory = public_tempdir("cas-rules-")
    path = directory / PROM_RULES.name
    path.write_text(PROM_RULES.read_text())
    path.chmod(0o644)
    try:
        yield path
    finally:
        path.unlink()
        directory.rmdir()


def _wait(check: Any, what: str, seconds: float = 45) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def _am_alerts(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=10) as response:
        return list(json.load(response))


def test_shipped_rules_in_a_real_prometheus_page_once_through_a_real_alertmanager(
        rules_copy: Path, alertmanager: str) -> None:  # noqa: F811
    textfiles = public_tempdir("cas-textfile-")
    try:
        write_fleet(textfiles, time.time())
        with NodeExporter(textfiles) as exporter, \
                RulingPrometheus({"ws1:9100": exporter.address}, rules_copy, alertmanager.removeprefix("http://")) as prom:
            def firing() -> dict[str, set[str]]:
                out: dict[str, set[str]] = {}
                for alert in prom.api("alerts")["alerts"]:
                    if alert["state"] == "firing":
                        out.setdefault(alert["labels"]["alertname"], set()).add(alert["labels"].get("user", ""))
                return out

            expected = {
                INVALID: {f"f{i}" for i in range(1, 6)},
                "WorkstationClaudeAuthMassFailure": {""},
                "WorkstationClaudeAuthAwaitingFirstLogin": {"dave"},
                "WorkstationClaudeAuthStuckInWarn": {"frank"},
                "WorkstationClaudeAuthVaultTokenExpiring": {"henry"},
            }
            # The site group runs every minute (interval: 1m, as shipped) at an offset Prometheus picks:
            # the constants, and so the alerts reading them, may take up to a minute after start.
            _wait(lambda: firing() == expected, f"Prometheus never fired exactly {expected}", seconds=100)
            time.sleep(3)  # a few more evaluations: still exactly these (none flaps, nobody else joins)
            assert firing() == expected
            assert prom.query("claude_auth_sync:site_mass_failure_users")[0]["value"][1] == "5"

            def received() -> list[dict[str, Any]] | None:
                alerts = _am_alerts(alertmanager)
                names = {a["labels"]["alertname"] for a in alerts}
                return alerts if names >= set(expected) and len(alerts) == 9 else None

            alerts = _wait(received, "Alertmanager did not receive the nine alerts")
            for alert in alerts:
                name, state = alert["labels"]["alertname"], alert["status"]
                if name == INVALID:
                    assert state["state"] == "suppressed" and len(state["inhibitedBy"]) == 1, alert["labels"]
                else:
                    assert state["state"] == "active" and state["inhibitedBy"] == [], alert["labels"]
    finally:
        for path in textfiles.iterdir():
            path.unlink()
        textfiles.rmdir()
