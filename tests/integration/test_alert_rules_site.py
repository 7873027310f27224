"""The alert rules' site values live in one place (issue 14 item 2), checked with the REAL promtool.

* Thresholds are recording rules in one group (``claude_auth_sync:site_*``); the alert expressions
  read them and hold no number of their own. Changing one constant in the rule file changes the
  outcome of the alert that reads it: each is shown here both ways (with the shipped value the
  alert does not fire on the series, with the changed value it does), and the committed promtool
  tests fail when a constant changes.
* The site's Vault address and admin token are never in the rules: the annotations point at
  ``/etc/claude-auth-sync/config.toml`` (the key the Vault settings read) and the README's
  administrator's guide, and the command they give really prints the address from such a file.

A missing promtool FAILS these tests; it never skips.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from tests.integration.test_alert_rules import ALERTS, PROM_DAY_TESTS, PROM_RULES, PROM_TESTS, promtool

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
SITE_GROUP = "claude-auth-sync-site"
# promtool evaluates rule groups in random order unless told: the constants first, as in a running
# Prometheus where the site group is evaluated every minute (interval: 1m) and so is never stale.
GROUP_ORDER = [SITE_GROUP, "claude-auth-sync"]
AWAITING = "WorkstationClaudeAuthAwaitingFirstLogin"
STUCK = "WorkstationClaudeAuthStuckInWarn"
VAULT_TTL = "WorkstationClaudeAuthVaultTokenExpiring"
MASS = "WorkstationClaudeAuthMassFailure"
NEW_ALERTS = (AWAITING, STUCK, VAULT_TTL, MASS)
CONFIG = "/etc/claude-auth-sync/config.toml"


def groups() -> dict[str, list[dict[str, Any]]]:
    return {g["name"]: g["rules"] for g in yaml.safe_load(PROM_RULES.read_text())["groups"]}


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for rules in groups().values() for r in rules if "alert" in r}


def with_constant(name: str, value: str, text: str | None = None) -> str:
    """The rule file with the site constant ``name`` set to ``vector(value)``."""
    text = text if text is not None else PROM_RULES.read_text()
    pattern = re.compile(rf"(- record: {re.escape(name)}\n\s+expr: )vector\([^)\n]*\)")
    changed, count = pattern.subn(rf"\g<1>vector({value})", text)
    assert count == 1, f"constant {name} not found exactly once"
    return changed


def fires(tmp_path: Path, rules_text: str, series: list[dict[str, str]], alertname: str, eval_time: str,
          interval: str = "5m") -> bool:
    """Does ``alertname`` fire at ``eval_time``? Asked of the real promtool as a test expecting no
    alert: it passes when none fires and fails, naming the alert, when one does."""
    return _ask(tmp_path, rules_text, series, alertname, eval_time, interval) is not None


def _ask(tmp_path: Path, rules_text: str, series: list[dict[str, str]], alertname: str, eval_time: str,
         interval: str) -> str | None:
    """promtool's report of the alerts that fired (None: none did)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text)
    tests = {"rule_files": [str(rules)], "evaluation_interval": interval, "group_eval_order": GROUP_ORDER, "tests": [{
        "interval": interval, "input_series": series,
        "alert_rule_test": [{"eval_time": eval_time, "alertname": alertname, "exp_alerts": []}],
    }]}
    path = tmp_path / "probe.test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    res = promtool("test", "rules", str(path), cwd=tmp_path)
    if res.returncode == 0:
        return None
    assert f"alertname: {alertname}" in res.stdout + res.stderr and "got:" in res.stdout + res.stderr, res.stdout + res.stderr
    return (res.stdout + res.stderr).split("got:", 1)[1]


def series(metric: str, user: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in {"instance": "ws1:9100", "job": "node", "user": user, **labels}.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def failing(user: str, since_s: int, samples: int) -> list[dict[str, str]]:
    """A user whose status turned FAIL at ``since_s`` (1-minute samples from 0)."""
    before = since_s // 60
    return [
        series("claude_auth_sync_last_status", user, f"0x{before - 1} 1x{samples - before}", status="FAIL"),
        series("claude_auth_sync_last_status_change_timestamp_seconds", user, f"0x{before - 1} {since_s}x{samples - before}"),
    ]


DAY = 86400
# (constant, changed value, series, alert, eval time, promtool interval): with the shipped value the
# alert does not fire at that time; with the changed one it does.
CASES = [
    ("claude_auth_sync:site_first_login_grace_seconds", "2 * 86400",
     [series("claude_auth_sync_awaiting_first_login_since_timestamp_seconds", "dave", "0x1000")], AWAITING, "3d", "5m"),
    ("claude_auth_sync:site_warn_max_seconds", "1 * 86400",
     [series("claude_auth_sync_last_status", "frank", "1x1000", status="WARN"),
      series("claude_auth_sync_last_status_change_timestamp_seconds", "frank", "0x1000")], STUCK, "2d", "5m"),
    ("claude_auth_sync:site_vault_token_ttl_min_seconds", "10 * 86400",
     [series("claude_auth_sync_vault_token_expiry_timestamp_seconds", "henry", f"{8 * DAY}x100")], VAULT_TTL, "1h", "5m"),
    ("claude_auth_sync:site_mass_failure_users", "3",
     [s for i in range(3) for s in failing(f"u{i}", 600 * (i + 1), 120)], MASS, "40m", "1m"),
    ("claude_auth_sync:site_mass_failure_window_seconds", "7200",
     [s for i in range(5) for s in failing(f"u{i}", 600 + 1200 * i, 180)], MASS, "95m", "1m"),
]


@pytest.mark.parametrize(("constant", "value", "input_series", "alertname", "eval_time", "interval"), CASES,
                         ids=[case[0].split(":site_")[1] for case in CASES])
def test_changing_one_site_constant_changes_the_outcome(tmp_path: Path, constant: str, value: str,
                                                        input_series: list[dict[str, str]], alertname: str,
                                                        eval_time: str, interval: str) -> None:
    shipped = PROM_RULES.read_text()
    assert not fires(tmp_path, shipped, input_series, alertname, eval_time, interval)
    assert fires(tmp_path, with_constant(constant, value, shipped), input_series, alertname, eval_time, interval)


@pytest.mark.parametrize(("constant", "value", "test_file", "alertname"), [
    ("claude_auth_sync:site_first_login_grace_seconds", "8 * 86400", PROM_DAY_TESTS, AWAITING),
    ("claude_auth_sync:site_warn_max_seconds", "2 * 86400", PROM_DAY_TESTS, STUCK),
    ("claude_auth_sync:site_vault_token_ttl_min_seconds", "6 * 86400", PROM_DAY_TESTS, VAULT_TTL),
    ("claude_auth_sync:site_mass_failure_users", "6", PROM_TESTS, MASS),
    ("claude_auth_sync:site_mass_failure_window_seconds", "2 * 3600", PROM_TESTS, MASS),
], ids=["grace", "warn", "vault_ttl", "mass_users", "mass_window"])
def test_the_committed_promtool_tests_pin_each_constant(tmp_path: Path, constant: str, value: str, test_file: Path,
                                                        alertname: str) -> None:
    (tmp_path / PROM_RULES.name).write_text(with_constant(constant, value))
    (tmp_path / test_file.name).write_text(test_file.read_text())
    res = promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert res.returncode != 0 and f"alertname: {alertname}" in res.stdout + res.stderr, res.stdout + res.stderr


def test_the_site_group_is_evaluated_every_minute_and_first_in_the_committed_tests() -> None:
    document = yaml.safe_load(PROM_RULES.read_text())
    assert [g["name"] for g in document["groups"]] == GROUP_ORDER
    assert document["groups"][0]["interval"] == "1m"
    for test_file in (PROM_TESTS, PROM_DAY_TESTS):
        assert yaml.safe_load(test_file.read_text())["group_eval_order"] == GROUP_ORDER


def test_thresholds_are_only_in_the_site_group() -> None:
    site = groups()[SITE_GROUP]
    assert all(set(rule) == {"record", "expr"} and rule["record"].startswith("claude_auth_sync:site_") for rule in site)
    assert all(re.fullmatch(r"vector\([0-9 *]+\)", rule["expr"]) for rule in site)
    used = {rule["record"] for rule in site}
    exprs = {name: alerts()[name]["expr"] for name in NEW_ALERTS}
    for name, expr in exprs.items():
        assert "claude_auth_sync:site_" in expr, name
        without_regex = expr.replace('"([^:]+)(:[0-9]+)?"', "").replace('"$1"', "").replace("== 1", "")  # regex, flag
        assert not re.search(r"\d", without_regex.replace("claude_auth_sync", "")), f"a literal number in {name}"
    read = {ref for expr in exprs.values() for ref in re.findall(r"claude_auth_sync:site_\w+", expr)}
    assert read == used  # every constant is read, and nothing reads a constant that does not exist


def test_no_site_address_or_home_in_any_shipped_alert_file() -> None:
    for path in sorted(ALERTS.iterdir()):
        text = path.read_text()
        assert "viktorbarzin" not in text and "/home/" not in text and ".vault-token" not in text, path.name
        if path.name.endswith(".yaml"):
            assert not re.search(r"https?://(?!loki\.example\.internal)", text), path.name


def _vault_addr_commands() -> list[str]:
    docs = [*alerts().values(), *[r for g in yaml.safe_load((ALERTS / "loki-rules.yaml").read_text())["groups"]
                                   for r in g["rules"]]]
    found = []
    for rule in docs:
        for text in rule["annotations"].values():
            found += re.findall(r"export VAULT_ADDR=\"\$\(python3 -c '[^']*'\)\"", text)
    return found


def test_the_annotations_vault_address_command_reads_the_installed_config(tmp_path: Path) -> None:
    commands = _vault_addr_commands()
    assert len(commands) >= 4 and len(set(commands)) == 1  # one command, everywhere
    assert "addr" in VaultSettings.model_fields  # the key the agent's own settings read
    config = tmp_path / "config.toml"
    config.write_text('[vault]\naddr = "https://vault.site.test:8200"\ncacert = "/etc/ssl/certs/ca.pem"\n')
    command = commands[0].replace(CONFIG, str(config))
    assert command != commands[0]
    res = subprocess.run(["/bin/bash", "-c", f'{command}; printf %s "$VAULT_ADDR"'], capture_output=True, text=True,
                         timeout=30, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert (res.returncode, res.stdout) == (0, "https://vault.site.test:8200"), res.stderr


def test_the_annotations_point_at_a_readme_section_that_exists() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Administrator's guide" in readme and "**2. Install and provision, as root, with the admin token**" in readme
    for rule in alerts().values():
        text = " ".join(rule["annotations"].values())
        if "t3-provision-users" in text:
            assert "README, Administrator's guide, step 2" in text and CONFIG in text, rule["alert"]


def _sink_series(tmp_path: Path, user: str, *events: tuple[str, str, dict[str, Any]]) -> list[dict[str, str]]:
    """The series the REAL metrics sink writes for ``events`` ((time, status, details)), as promtool
    input (constant over the test, as node_exporter keeps exporting the last file)."""
    from claude_auth_sync.model import Action, ExitCode, Status, StatusEvent
    from claude_auth_sync.plugins.sink_metrics import MetricsSink

    codes = {"OK": ExitCode.OK, "WARN": ExitCode.TEMPFAIL, "FAIL": ExitCode.FAIL}
    directory = tmp_path / f"textfile-{user}"
    directory.mkdir()
    sink = MetricsSink(directory)
    for at, status, details in events:
        sink.emit(StatusEvent(timestamp=f"1970-01-01T{at}Z", status=Status(status), exit_code=codes[status], user=user,
                              action=Action.NONE, reason=None if status == "OK" else "r", details=details))
    out = []
    for line in (directory / f"claude_auth_sync_{user}.prom").read_text().splitlines():
        if not line.startswith("#"):
            name_labels, number = line.rsplit(" ", 1)
            name, labels = name_labels[:-1].split("{", 1)
            out.append({"series": f'{name}{{{labels},instance="ws1:9100",job="node"}}', "values": f"{number}x800"})
    return out


def firing_users(tmp_path: Path, rules_text: str, input_series: list[dict[str, str]], alertname: str,
                 eval_time: str) -> set[str]:
    """The ``user`` labels of ``alertname``'s alerts at ``eval_time``, from the real promtool's
    report of a test that expected none."""
    got = _ask(tmp_path, rules_text, input_series, alertname, eval_time, "15m")
    if got is None:
        return set()
    return set(re.findall(r'Labels:\{alertname="' + alertname + r'"[^}]*\buser="([^"]+)"', got))


def test_the_new_alerts_read_the_metrics_sinks_own_series(tmp_path: Path) -> None:
    rules = PROM_RULES.read_text()
    series_ = [
        *_sink_series(tmp_path, "dave", ("00:00:00", "WARN", {"awaiting_first_login_since": 0, "store_ttl_s": 60 * DAY})),
        *_sink_series(tmp_path, "frank", ("00:00:00", "WARN", {"store_ttl_s": 60 * DAY}),
                      ("06:00:00", "WARN", {})),  # a run that did not renew: the expiry is carried over
        *_sink_series(tmp_path, "henry", ("00:00:00", "OK", {"store_ttl_s": 10 * DAY})),
    ]
    for alertname in (AWAITING, STUCK, VAULT_TTL):
        assert firing_users(tmp_path, rules, series_, alertname, "2d") == set(), alertname
    assert firing_users(tmp_path, rules, series_, AWAITING, "7d15m") == {"dave"}
    assert firing_users(tmp_path, rules, series_, STUCK, "7d15m") == {"frank"}  # dave has his own alert
    assert firing_users(tmp_path, rules, series_, VAULT_TTL, "7d15m") == {"henry"}
