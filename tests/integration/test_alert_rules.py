"""The alert rules in deploy/alerts/.

* Prometheus: the REAL ``promtool check rules`` and ``promtool test rules`` (Debian package
  ``prometheus``), the committed unit tests plus mutations that must make them fail, and the rules
  evaluated by promtool on series taken from the metrics sink's own output.
* Loki: no Loki binary is packaged for Debian, so the LogQL file gets a YAML/shape check: alert
  names, labels, annotations with the runbook's fix commands, LogQL expressions present, their line
  filters matched against the journald sink's real MESSAGE, and the stream labels they use produced
  by the shipped Promtail/Alloy relabelling (simulated with Prometheus relabel semantics).

A missing promtool FAILS these tests; it never skips them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from claude_auth_sync.model import RELOGIN_COMMAND as RELOGIN
from claude_auth_sync.model import Action, ExitCode, Status, StatusEvent
from claude_auth_sync.plugins.sink_journald import journal_fields
from claude_auth_sync.plugins.sink_metrics import MetricsSink

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "alerts"
PROM_RULES = ALERTS / "prometheus-rules.yaml"
PROM_TESTS = ALERTS / "prometheus-rules.test.yaml"
PROM_DAY_TESTS = ALERTS / "prometheus-rules.days.test.yaml"  # the alerts whose thresholds are days
LOKI_RULES = ALERTS / "loki-rules.yaml"
PROMTAIL = ALERTS / "promtail-journal.yaml"
ALLOY = ALERTS / "alloy-journal.alloy"

INVALID = "WorkstationClaudeAuthInvalid"
SILENT = "WorkstationClaudeAuthAgentSilent"
START_UNIT = "systemctl start claude-auth-sync@{{ $labels.user }}.service"


def promtool(*args: str, cwd: Path = ALERTS) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: apt-get install prometheus (these tests never skip)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def rules_by_alert(path: Path) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]
    by_name = {rule["alert"]: rule for rule in rules}
    assert len(by_name) == len(rules), f"duplicate alert names in {path.name}"
    return by_name


# -- Prometheus: the real promtool --------------------------------------------------------------------

def test_promtool_is_installed() -> None:
    res = promtool("--version")
    assert res.returncode == 0, res.stderr


def test_promtool_check_rules() -> None:
    res = promtool("check", "rules", PROM_RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 11 rules found" in res.stdout  # 5 site constants, 6 alerts


def test_promtool_test_rules() -> None:
    res = promtool("test", "rules", PROM_TESTS.name, PROM_DAY_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == 2


def _run_mutated(tmp_path: Path, tests: dict[str, Any], rules_text: str | None = None) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text if rules_text is not None else PROM_RULES.read_text())
    tests = {**tests, "rule_files": [str(rules)]}
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return promtool("test", "rules", str(path), cwd=tmp_path)


def test_the_committed_promtool_tests_have_teeth(tmp_path: Path) -> None:
    committed = yaml.safe_load(PROM_TESTS.read_text())
    assert _run_mutated(tmp_path, committed).returncode == 0  # unchanged: passes from another directory too

    # The rule says 12 h; a 24 h threshold must break the committed silent-agent test ...
    lax = PROM_RULES.read_text().replace("> 12 * 3600", "> 24 * 3600")
    assert lax != PROM_RULES.read_text()
    res = _run_mutated(tmp_path, committed, lax)
    assert res.returncode != 0 and SILENT in res.stdout + res.stderr

    # ... and so must a rule that also fires on WARN (bob is WARN throughout).
    noisy = PROM_RULES.read_text().replace('{status="FAIL"} == 1', '{status=~"FAIL|WARN"} == 1')
    assert noisy != PROM_RULES.read_text()
    res = _run_mutated(tmp_path, committed, noisy)
    assert res.returncode != 0 and INVALID in res.stdout + res.stderr


def _humanize_duration(seconds: float) -> str:
    # Prometheus' humanizeDuration for 1 min <= value < 1 day, whole seconds.
    s = int(seconds)
    return f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"


def _render(template: str, labels: dict[str, str], value: float) -> str:
    out = template.replace("{{ $labels.user }}", labels["user"]).replace("{{ $labels.host }}", labels["host"])
    out = out.replace("{{ $value | humanizeDuration }}", _humanize_duration(value))
    assert "{{" not in out, f"unexpected template in {template!r}"
    return out


def test_prometheus_rules_fire_on_the_metrics_sinks_own_output(tmp_path: Path) -> None:
    """Series taken verbatim from textfiles the sink wrote, so metric and label names must agree."""
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    sink = MetricsSink(textfiles)

    def emit(user: str, status: Status, code: ExitCode, at: str) -> None:
        sink.emit(StatusEvent(timestamp=f"1970-01-01T{at}Z", status=status, exit_code=code, user=user,
                              action=Action.NONE, reason=None if status == Status.OK else "r"))

    emit("alice", Status.OK, ExitCode.OK, "12:30:00")  # healthy, recent
    emit("bob", Status.OK, ExitCode.OK, "06:30:00")
    emit("bob", Status.FAIL, ExitCode.FAIL, "12:30:00")  # must log in again
    emit("carol", Status.WARN, ExitCode.TEMPFAIL, "00:30:00")  # silent for 12.5 h
    emit("dave", Status.FAIL, ExitCode.CONFIG, "00:00:00")  # FAIL and silent for 13 h

    extra = 'instance="ws1:9100",job="node"'
    series = []
    for path in sorted(textfiles.glob("*.prom")):
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                continue
            name_labels, value = line.rsplit(" ", 1)
            name, labels = name_labels[:-1].split("{", 1)
            series.append({"series": f"{name}{{{labels},{extra}}}", "values": f"{value}x900"})

    eval_s = 13 * 3600
    prom = rules_by_alert(PROM_RULES)
    expected: dict[str, list[dict[str, Any]]] = {}
    for alert, firing in ((INVALID, {"bob": 0, "dave": 0}), (SILENT, {"carol": 45000, "dave": 46800})):
        rule = prom[alert]
        expected[alert] = []
        for user, age in firing.items():
            labels = {"instance": "ws1:9100", "job": "node", "host": "ws1", "user": user, **rule["labels"]}
            if alert == INVALID:
                labels["status"] = "FAIL"
            annotations = {k: _render(v, labels, age) for k, v in rule["annotations"].items()}
            expected[alert].append({"exp_labels": labels, "exp_annotations": annotations})
    tests = {
        "evaluation_interval": "1m",
        "tests": [{
            "name": "rules on the sink's output",
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": f"{eval_s}s", "alertname": a, "exp_alerts": e} for a, e in expected.items()],
        }],
    }
    res = _run_mutated(tmp_path, tests)
    assert res.returncode == 0, res.stdout + res.stderr


# -- Loki: the rule file's shape ----------------------------------------------------------------------

def _line_filters(expr: str) -> list[re.Pattern[str]]:
    found = re.findall(r'\|~\s*"((?:[^"\\]|\\.)*)"', expr)
    assert found, f"no line filter in {expr!r}"
    return [re.compile(pattern.encode().decode("unicode_escape")) for pattern in found]


def _duration_s(text: str) -> int:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


def test_loki_rules_have_both_alerts_with_logql_expressions() -> None:
    loki = rules_by_alert(LOKI_RULES)
    # The other Prometheus alerts need how long a state lasted (the metrics sink's timestamps): no LogQL twin.
    assert set(loki) == {INVALID, SILENT} < set(rules_by_alert(PROM_RULES))
    groups = yaml.safe_load(LOKI_RULES.read_text())["groups"]
    assert all(group["name"] and _duration_s(group.get("interval", "1m")) <= 300 for group in groups)

    for name, rule in loki.items():
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}") and expr.count("[") == expr.count("]")
        assert '{identifier="claude-auth-sync"}' in expr  # a LogQL stream selector ...
        assert "count_over_time(" in expr  # ... in a LogQL metric query
        assert "sum by (host, user)" in expr  # the alert carries user and host
        assert "$labels" not in expr and "__journal" not in expr
    ranges = {name: [_duration_s(r) for r in re.findall(r"\[(\w+)\]", rule["expr"])] for name, rule in loki.items()}
    # FAIL stays firing across one 6-hour timer period; silence means no report for 12 h = 2 periods.
    assert ranges[INVALID] and min(ranges[INVALID]) >= 6 * 3600
    assert 12 * 3600 in ranges[SILENT] and max(ranges[SILENT]) > 12 * 3600
    assert re.search(r"\)\s+unless\s+sum by", loki[SILENT]["expr"])  # known in 7 d, but not in the last 12 h


def test_loki_and_prometheus_rules_carry_the_same_labels_and_fix_commands() -> None:
    loki, prom = rules_by_alert(LOKI_RULES), rules_by_alert(PROM_RULES)
    for name in (INVALID, SILENT):
        assert loki[name]["labels"] == prom[name]["labels"]
        assert loki[name]["labels"]["severity"] in {"critical", "warning"}
        assert set(loki[name]["annotations"]) == set(prom[name]["annotations"]) >= {"summary", "description", "fix", "runbook"}
        for rules in (loki, prom):
            annotations = rules[name]["annotations"]
            assert "{{ $labels.user }}" in annotations["summary"] and "{{ $labels.host }}" in annotations["summary"]
            assert START_UNIT in annotations["fix"]
            templates = set(re.findall(r"\{\{.*?\}\}", " ".join(annotations.values())))
            assert templates <= {"{{ $labels.user }}", "{{ $labels.host }}", "{{ $value | humanizeDuration }}"}
    for rules in (loki, prom):
        # The runbook's fix for a FAIL: log in again as the user, then rerun the service ...
        assert RELOGIN == "claude auth login --claudeai --sso --email <enterprise-email>"
        assert RELOGIN in rules[INVALID]["annotations"]["fix"]
        # ... or, for an expired/drifted Vault token, the root provisioner with an admin token.
        assert "sudo --preserve-env=VAULT_ADDR,VAULT_TOKEN,VAULT_CACERT /usr/local/bin/t3-provision-users" in rules[INVALID]["annotations"]["fix_config"]
        # Silent agent: the runbook's verification commands.
        fix = rules[SILENT]["annotations"]["fix"]
        assert "systemctl list-timers 'claude-auth-sync@*'" in fix
        assert "systemctl status claude-auth-sync@{{ $labels.user }}.service" in fix
        assert "journalctl -t claude-auth-sync --since today" in fix


def _event(status: Status, code: ExitCode) -> StatusEvent:
    return StatusEvent(timestamp="2026-11-28T20:10:45Z", status=status, exit_code=code, user="alice",
                       action=Action.NONE, reason=None if status == Status.OK else "some_reason",
                       timings_ms={"probe": 800}, fingerprints={"access": "0123abcd"})


def test_loki_line_filters_match_the_journald_sinks_messages() -> None:
    loki = rules_by_alert(LOKI_RULES)
    (fail,) = _line_filters(loki[INVALID]["expr"])
    reported = _line_filters(loki[SILENT]["expr"])
    messages = {
        status: journal_fields(_event(status, code))["MESSAGE"]
        for status, code in ((Status.OK, ExitCode.OK), (Status.WARN, ExitCode.TEMPFAIL), (Status.FAIL, ExitCode.FAIL))
    }
    assert [s for s, m in messages.items() if fail.search(m)] == [Status.FAIL]
    for pattern in reported:
        assert all(pattern.search(m) for m in messages.values())
    # The CLI's stderr when it cannot load its settings (shipped via the unit's SyslogIdentifier) is a FAIL too;
    # its advice line and other stderr lines are not status lines.
    assert fail.search("FAIL user=alice action=none reason=invalid_settings: invalid settings: sinks")
    for other in ("claude-auth-sync: FAIL reason=http_401 (log in again: ...)", "claude-auth-sync: sink 'journald' failed: x",
                  "FAILED something", "OKAY"):
        assert not fail.search(other) and not any(p.search(other) for p in reported), other


# -- shipping: the stream labels the Loki rules rely on -------------------------------------------------

def _promtail_rules() -> list[dict[str, Any]]:
    (scrape,) = yaml.safe_load(PROMTAIL.read_text())["scrape_configs"]
    assert "journal" in scrape
    return [{"source_labels": r["source_labels"], "regex": r.get("regex", "(.*)"), "target_label": r["target_label"]}
            for r in scrape["relabel_configs"]]


def _alloy_rules() -> list[dict[str, Any]]:
    text = ALLOY.read_text()
    assert 'loki.source.journal "' in text and "relabel_rules = loki.relabel.journal.rules" in text
    out = []
    for body in re.findall(r"rule\s*\{(.*?)\}", text, re.S):
        fields = dict(re.findall(r'(\w+)\s*=\s*(\[[^\]]*\]|"(?:[^"\\]|\\.)*")', body))
        out.append({
            "source_labels": re.findall(r'"([^"]*)"', fields["source_labels"]),
            "regex": fields["regex"][1:-1].encode().decode("unicode_escape") if "regex" in fields else "(.*)",
            "target_label": fields["target_label"][1:-1],
        })
    return out


def _relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str]:
    """Prometheus ``replace`` relabelling (what Promtail and Alloy run), then internal labels dropped."""
    labels = dict(labels)
    for rule in rules:
        value = ";".join(labels.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule["regex"], value)
        if match is None:
            continue
        result = match.expand(r"\1") if match.re.groups else ""
        if result:
            labels[rule["target_label"]] = result
        else:
            labels.pop(rule["target_label"], None)
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def _journal_labels(fields: dict[str, str]) -> dict[str, str]:
    # Promtail/Alloy: every journal field becomes __journal_<lowercased name>, plus the priority keyword.
    out = {f"__journal_{k.lower()}": v for k, v in fields.items()}
    if "PRIORITY" in fields:
        out["__journal_priority_keyword"] = {"3": "error", "4": "warning", "6": "info"}[fields["PRIORITY"]]
    return out | {"job": "systemd-journal"}


def test_promtail_and_alloy_configs_relabel_the_same_way() -> None:
    assert _promtail_rules() == _alloy_rules()
    sources = {tuple(r["source_labels"]) for r in _promtail_rules()}
    assert {("__journal_syslog_identifier",), ("__journal_cas_user",), ("__journal__hostname",)} <= sources


@pytest.mark.parametrize("rules", [_promtail_rules, _alloy_rules], ids=["promtail", "alloy"])
def test_shipping_gives_the_labels_the_loki_rules_use(rules: Any) -> None:
    trusted = {"_HOSTNAME": "devvm1", "_SYSTEMD_UNIT": "claude-auth-sync@alice.service", "_TRANSPORT": "journal"}
    sink_entry = journal_fields(_event(Status.FAIL, ExitCode.FAIL)) | trusted
    labels = _relabel(_journal_labels(sink_entry), rules())
    assert labels == {"job": "systemd-journal", "host": "devvm1", "identifier": "claude-auth-sync",
                      "unit": "claude-auth-sync@alice.service", "user": "alice", "level": "error"}

    # CAS_USER wins over the unit's instance name (it is what the agent itself reported) ...
    other_unit = sink_entry | {"_SYSTEMD_UNIT": "cron.service"}
    assert _relabel(_journal_labels(other_unit), rules())["user"] == "alice"
    # ... and the CLI's stderr lines (no CAS_USER) still get the user from the unit.
    stderr_line = {"SYSLOG_IDENTIFIER": "claude-auth-sync", "PRIORITY": "6", "_TRANSPORT": "stdout",
                   "MESSAGE": "FAIL user=bob action=none reason=invalid_settings: ..."} | trusted | {
                   "_SYSTEMD_UNIT": "claude-auth-sync@bob.service"}
    assert _relabel(_journal_labels(stderr_line), rules())["user"] == "bob"
    # Other services' entries get no user label at all.
    sshd = {"SYSLOG_IDENTIFIER": "sshd", "PRIORITY": "6", "MESSAGE": "Accepted publickey", "_HOSTNAME": "devvm1",
            "_SYSTEMD_UNIT": "ssh.service"}
    assert "user" not in _relabel(_journal_labels(sshd), rules())

    # Every label a Loki rule selects or groups on is produced.
    for rule in rules_by_alert(LOKI_RULES).values():
        used = set(re.findall(r"(\w+)=~?\"", rule["expr"].split("|")[0]))
        for grouping in re.findall(r"by \(([^)]*)\)", rule["expr"]):
            used |= {label.strip() for label in grouping.split(",")}
        assert used and used <= set(labels), (used, labels)
        assert f'identifier="{labels["identifier"]}"' in rule["expr"]


def test_shipper_max_age_covers_a_timer_period() -> None:
    # max_age bounds what a restarted shipper back-fills; it must cover at least one timer period.
    (scrape,) = yaml.safe_load(PROMTAIL.read_text())["scrape_configs"]
    assert _duration_s(scrape["journal"]["max_age"]) >= 6 * 3600
    assert re.search(r'max_age\s*=\s*"(\w+)"', ALLOY.read_text()).group(1) == scrape["journal"]["max_age"]  # type: ignore[union-attr]
