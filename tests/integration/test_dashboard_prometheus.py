"""The fleet dashboard (``deploy/grafana/claude-auth-sync-fleet.json``) against a REAL Prometheus.

Two "hosts" (``ws-a.lab``, ``ws-b.lab``; the dot exercises Grafana's regex escaping): two textfile
directories, each served by a real ``prometheus-node-exporter`` (textfile collector only), both
scraped every second by a real ``prometheus`` (``instance`` ``ws-a.lab:9100``, node_exporter's
default form, and ``ws-b.lab``, a relabelled form; the dashboard's ``host`` drops the port). The
textfiles are written by real ``claude-auth-sync run`` processes of real OS users (random-suffix
names, removed afterwards) against a real OpenBao, with the stub ``claude`` deciding which login
is accepted:

========  ========  ================================================  ===========================
user      host      runs                                              last state
========  ========  ================================================  ===========================
alice     ws-a.lab  OK (backup), OK (none)                            OK
alice     ws-b.lab  OK (none): the same person on a second host       OK
bob       ws-a.lab  OK (backup); login goes bad; OK (restore)         OK, one restore
carol     ws-a.lab  OK (backup); login goes bad, nothing accepted     FAIL rollback
dave      ws-b.lab  OK (backup); the API answers 529                  WARN http_529
erin      both      never logged in (no credentials file)             WARN awaiting_first_login
========  ========  ================================================  ===========================

Then EVERY target of EVERY panel in the JSON (and the ``host`` variable's query) is run through
Prometheus' HTTP API with the template variables substituted, for "All", each host and both;
an error or an empty result fails. A panel added later is covered without touching this file. A
few panels' numbers are also checked against the runs above, so a query that returns the wrong
thing fails too. The JSON's structure (ids, data sources, grid) is checked without servers.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from claude_auth_sync.plugins.backend_vault.policy import policy_name, render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.plugins.sink_metrics import metric_names
from claude_auth_sync.testing import oauth_object

from tests.support.cli import STUB_CLAUDE, fp
from tests.support.openbao import OpenBaoServer
from tests.support.prometheus import NodeExporter, Prometheus, public_tempdir

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "claude-auth-sync-fleet.json"
HOSTS = ("ws-a.lab", "ws-b.lab")
#: The scrape's ``instance`` per host: with node_exporter's port (the default) and without (relabelled).
INSTANCE = {"ws-a.lab": "ws-a.lab:9100", "ws-b.lab": "ws-b.lab"}
HOST_MATCHER = 'instance=~"$host(:[0-9]+)?"'
DAY_S = 86400
#: Grafana's built-in variables, as Grafana would fill them for a short time range and a 1 s scrape.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000", "__range": "5m",
            "__range_s": "300", "__range_ms": "300000"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


# -- the dashboard JSON -----------------------------------------------------------------------------

def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return [p for p in out if p.get("type") != "row"]


def all_targets(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(panel title, refId, expr)`` of every query in the dashboard."""
    return [(p["title"], t["refId"], t["expr"]) for p in all_panels(dashboard) for t in p["targets"]]


def range_targets(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The targets Grafana sends as range queries (``range`` true, the default)."""
    return [(p["title"], t["refId"], t["expr"]) for p in all_panels(dashboard) for t in p["targets"]
            if t.get("range", True)]


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"template variable {name!r}: {len(found)} found"
    return found[0]


def substitute(expr: str, host_regex: str) -> str:
    """``expr`` with ``$host`` and Grafana's built-ins replaced; an unknown variable fails the test
    (add it to BUILTINS with a realistic value)."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name == "host":
            return host_regex
        assert name in BUILTINS, f"unknown template variable ${name} in {expr!r}"
        return BUILTINS[name]

    return VARIABLE.sub(one, expr)


def grafana_regex_escape(value: str) -> str:
    """What Grafana's Prometheus data source puts in a query for one selected value (its
    ``prometheusRegularEscape``: a PromQL-string-escaped regex escape)."""
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value.replace("\\", "\\\\\\\\"))


def variable_regex(var: dict[str, Any]) -> re.Pattern[str]:
    """The variable's ``/regex/`` (JavaScript syntax, as Grafana applies it) in Python syntax."""
    match = re.fullmatch(r"/(.*)/", var["regex"])
    assert match, var["regex"]
    return re.compile(match.group(1).replace("(?<", "(?P<"))


def host_values(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, regex)`` for "All" (the variable's allValue), each host alone and both selected."""
    host = variable(dashboard, "host")
    escaped = [grafana_regex_escape(h) for h in HOSTS]
    return [("All", host["allValue"]), *zip(HOSTS, escaped), ("+".join(HOSTS), f"({'|'.join(escaped)})")]


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None  # import creates it
    source = variable(dashboard, "datasource")
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    host = variable(dashboard, "host")
    assert host["type"] == "query" and host["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert re.fullmatch(r"label_values\(claude_auth_sync_\w+, instance\)", host["query"]["query"])
    assert host["definition"] == host["query"]["query"] and host["multi"] and host["includeAll"]
    assert [variable_regex(host).fullmatch(i).group("value") for i in ("h1", "h1:9100", "a.b:1")] == ["h1", "h1", "a.b"]

    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title") and panel.get("description"), where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip(), where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, where
        assert grid["x"] + grid["w"] <= 24, f"{where} is wider than Grafana's 24 columns"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{where} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]


def test_queries_use_only_the_metrics_sinks_series_filtered_by_host() -> None:
    known = set(metric_names())
    for title, ref, expr in all_targets(load_dashboard()):
        used = set(re.findall(r"\bclaude_auth_sync_\w+", expr))
        assert used and used <= known, f"{title}/{ref}: {sorted(used - known)} not written by the metrics sink"
        selectors = re.findall(r"claude_auth_sync_\w+(\{[^}]*\})?", expr)
        assert all(HOST_MATCHER in s for s in selectors), f"{title}/{ref} ignores the host variable"


def test_ttl_panels_colour_at_seven_days() -> None:
    ttl_panels = [p for p in all_panels(load_dashboard()) if "TTL" in p["title"]]
    assert len(ttl_panels) >= 2
    for panel in ttl_panels:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0]["color"] == "red" and {"color": "green", "value": 7 * DAY_S} in steps, panel["title"]


# -- the fleet: real users, real runs, real node_exporters and Prometheus ------------------------------

@dataclass
class Person:
    """One real OS user and the two logins the test gives them (distinct per user)."""

    name: str
    good: dict[str, Any] = field(default_factory=dict)
    bad: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.name).pw_dir)

    def secrets(self) -> list[str]:
        return [self.good["accessToken"], self.good["refreshToken"], self.bad["accessToken"], self.bad["refreshToken"]]


def write_owned(path: Path, text: str, owner: str) -> None:
    """``path`` with ``text``, mode 0600, owned by ``owner``; missing parents 0700 and theirs too."""
    account = pwd.getpwnam(owner)
    missing = [p for p in reversed(path.parents) if not p.exists()]
    for directory in missing:
        directory.mkdir(mode=0o700)
        os.chown(directory, account.pw_uid, account.pw_gid)
    path.write_text(text)
    path.chmod(0o600)
    os.chown(path, account.pw_uid, account.pw_gid)


@pytest.fixture(scope="module")
def people(bao: OpenBaoServer) -> Iterator[dict[str, Person]]:
    """alice, bob, carol, dave, erin: real accounts ``cas<role><hex>``, each with a per-user policy and a
    periodic token in ``~/.config/claude-auth-sync/vault-token`` (as t3-provision-users mints)."""
    assert shutil.which("useradd") and shutil.which("userdel"), "useradd/userdel missing: apt-get install passwd"
    created: dict[str, Person] = {}
    try:
        for role in ("alice", "bob", "carol", "dave", "erin"):
            name = f"cas{role}{secrets.token_hex(3)}"
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
            person = created[role] = Person(name)
            ms = int(time.time() * 1000)
            tag = secrets.token_hex(4)
            person.good = oauth_object(f"sk-ant-oat01-DASH-good-{tag}", f"sk-ant-ort01-DASH-good-{tag}",
                                       expires_at_ms=ms + 8 * 3600_000, refreshTokenExpiresAt=ms + 20 * DAY_S * 1000)
            person.bad = oauth_object(f"sk-ant-oat01-DASH-bad-{tag}", f"sk-ant-ort01-DASH-bad-{tag}",
                                      expires_at_ms=ms + 8 * 3600_000, refreshTokenExpiresAt=ms + 3 * DAY_S * 1000)
            bao.write_policy(policy_name(name), render_policy(name, VaultSettings()))
            token = bao.create_periodic_token([policy_name(name)], period="768h",
                                              display_name=f"claude-auth-sync-{name}", no_default_policy=True)
            write_owned(person.home / ".config/claude-auth-sync/vault-token", token + "\n", name)
        yield created
    finally:
        for person in created.values():
            subprocess.run(["pkill", "-KILL", "-u", person.name], capture_output=True, check=False)
            subprocess.run(["userdel", "--remove", person.name], capture_output=True, check=False)


@dataclass
class Fleet:
    prometheus: Prometheus
    textfile_dirs: dict[str, Path]
    people: dict[str, Person]
    runs: list[tuple[str, str, int, str]]  # (role, host, exit code, status word)


def run_as(person: Person, host_dir: Path, bao: OpenBaoServer, **stub: str) -> tuple[int, str]:
    """One real ``claude-auth-sync run --json`` as ``person`` (the venv other users can reach)."""
    cli = Path(os.environ.get("CAS_TEST_VENV", "/opt/claude-auth-sync-test/venv")) / "bin/claude-auth-sync"
    env = {"HOME": str(person.home), "USER": person.name, "LOGNAME": person.name, "LANG": "C.UTF-8",
           "PATH": "/usr/local/bin:/usr/bin:/bin", "CLAUDE_AUTH_SYNC_BACKEND": "vault",
           "CLAUDE_AUTH_SYNC_VAULT__ADDR": bao.addr, "CLAUDE_AUTH_SYNC_SINKS": '["file","metrics"]',
           "CLAUDE_AUTH_SYNC_METRICS__DIRECTORY": str(host_dir),
           "CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": str(STUB_CLAUDE), **stub}
    proc = subprocess.run([str(cli), "run", "--json"], env=env, user=person.name, group=person.name,
                          extra_groups=[], cwd=person.home, capture_output=True, text=True, timeout=60, check=False)
    for secret in person.secrets():
        assert secret not in proc.stdout + proc.stderr
    status = json.loads(proc.stdout)["status"] if proc.stdout.strip().startswith("{") else "?"
    return proc.returncode, status if status else proc.stderr[-500:]


def parallel(jobs: list[Callable[[], None]]) -> None:
    errors: list[Exception] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as err:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def fleet(bao: OpenBaoServer, people: dict[str, Person]) -> Iterator[Fleet]:
    dirs = {host: public_tempdir(f"cas-textfile-{host}-", 0o1777) for host in HOSTS}  # every user writes its file
    runs: list[tuple[str, str, int, str]] = []
    lock = threading.Lock()

    def run(role: str, host: str, **stub: str) -> None:
        code, status = run_as(people[role], dirs[host], bao, **stub)
        with lock:
            runs.append((role, host, code, status))

    def login(role: str, which: str) -> None:
        person = people[role]
        write_owned(person.home / ".claude/.credentials.json",
                    json.dumps({"claudeAiOauth": getattr(person, which)}), person.name)

    def accept(role: str) -> str:
        return fp(people[role].good["accessToken"])

    try:
        with NodeExporter(dirs["ws-a.lab"]) as node_a, NodeExporter(dirs["ws-b.lab"]) as node_b, \
                Prometheus({INSTANCE["ws-a.lab"]: node_a.address, INSTANCE["ws-b.lab"]: node_b.address}) as prom:
            for role in ("alice", "bob", "carol", "dave"):  # erin never logs in
                login(role, "good")
            # Wave 1: everybody's first run backs up; Prometheus scrapes it before wave 2 changes
            # anything, so the counters' increments of wave 2 are visible to increase().
            parallel([lambda r=role, h=host: run(r, h, STUB_CLAUDE_ACCEPT=accept(r))
                      for role, host in (("alice", "ws-a.lab"), ("bob", "ws-a.lab"), ("carol", "ws-a.lab"),
                                         ("dave", "ws-b.lab"), ("erin", "ws-a.lab"), ("erin", "ws-b.lab"))])
            prom.wait_for("count(claude_auth_sync_last_run_info)", lambda r: r and float(r[0]["value"][1]) == 6)
            login("bob", "bad")
            login("carol", "bad")

            def alice_twice() -> None:
                run("alice", "ws-a.lab", STUB_CLAUDE_ACCEPT=accept("alice"))
                run("alice", "ws-b.lab", STUB_CLAUDE_ACCEPT=accept("alice"))

            parallel([alice_twice,
                      lambda: run("bob", "ws-a.lab", STUB_CLAUDE_ACCEPT=accept("bob")),
                      lambda: run("carol", "ws-a.lab", STUB_CLAUDE_ACCEPT=""),
                      lambda: run("dave", "ws-b.lab", STUB_CLAUDE_MODE="529")])
            prom.wait_for("sum(claude_auth_sync_runs_total)", lambda r: r and float(r[0]["value"][1]) == 11)
            time.sleep(2.5)  # a few more scrapes of the final state
            yield Fleet(prom, dirs, people, runs)
    finally:
        for directory in dirs.values():
            shutil.rmtree(directory, ignore_errors=True)


def test_the_runs_ended_as_planned_and_the_textfiles_hold_no_secret(fleet: Fleet) -> None:
    got = sorted((role, host, code) for role, host, code, _ in fleet.runs)
    assert got == sorted([("alice", "ws-a.lab", 0), ("alice", "ws-a.lab", 0), ("alice", "ws-b.lab", 0), ("bob", "ws-a.lab", 0),
                          ("bob", "ws-a.lab", 0), ("carol", "ws-a.lab", 0), ("carol", "ws-a.lab", 1), ("dave", "ws-b.lab", 0),
                          ("dave", "ws-b.lab", 75), ("erin", "ws-a.lab", 75), ("erin", "ws-b.lab", 75)]), fleet.runs
    texts = "".join(p.read_text() for d in fleet.textfile_dirs.values() for p in d.glob("*.prom"))
    for person in fleet.people.values():
        for secret in person.secrets():
            assert secret not in texts


def test_host_variable_lists_every_host(fleet: Fleet) -> None:
    host = variable(load_dashboard(), "host")
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", host["query"]["query"]).groups()  # type: ignore[union-attr]
    values = fleet.prometheus.label_values(label, metric)
    assert sorted(values) == sorted(INSTANCE.values())
    assert sorted(variable_regex(host).fullmatch(v).group("value") for v in values) == sorted(HOSTS)  # type: ignore[union-attr]


def test_every_panel_query_returns_data_for_all_hosts_and_each_host(fleet: Fleet) -> None:
    dashboard = load_dashboard()
    targets = all_targets(dashboard)
    empty: list[str] = []
    checked = 0
    for title, ref, expr in targets:
        for label, regex in host_values(dashboard):
            result = fleet.prometheus.query(substitute(expr, regex))  # an error raises PrometheusError
            checked += 1
            if not result:
                empty.append(f"{title} / {ref} / host={label}: {substitute(expr, regex)}")
    for title, ref, expr in range_targets(dashboard):  # as Grafana asks for a graph: over a time range
        for label, regex in host_values(dashboard):
            checked += 1
            if not fleet.prometheus.query_range(substitute(expr, regex), seconds=60):
                empty.append(f"{title} / {ref} / host={label} (range): {substitute(expr, regex)}")
    assert not empty, "queries with an empty result:\n  " + "\n  ".join(empty)
    assert checked == (len(targets) + len(range_targets(dashboard))) * (len(HOSTS) + 2) and len(targets) >= 10
    assert range_targets(dashboard), "no time-series panel left"


def panel_query(title: str, ref: str = "A", host: str = ".+") -> str:
    for panel_title, panel_ref, expr in all_targets(load_dashboard()):
        if (panel_title, panel_ref) == (title, ref):
            return substitute(expr, host)
    raise AssertionError(f"no panel {title!r} / {ref} in the dashboard")


def values(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result}


def test_panels_show_what_the_runs_did(fleet: Fleet) -> None:
    prom, users = fleet.prometheus, {p.name: role for role, p in fleet.people.items()}
    assert values(prom.query(panel_query("Users by status")), "status") == {("OK",): 3, ("WARN",): 3, ("FAIL",): 1}
    assert values(prom.query(panel_query("Users by status per host")), "instance", "status") == {
        (INSTANCE["ws-a.lab"], "OK"): 2, (INSTANCE["ws-a.lab"], "WARN"): 1, (INSTANCE["ws-a.lab"], "FAIL"): 1,
        (INSTANCE["ws-b.lab"], "OK"): 1, (INSTANCE["ws-b.lab"], "WARN"): 2, (INSTANCE["ws-b.lab"], "FAIL"): 0}
    assert values(prom.query(panel_query("Hosts reporting"))) == {(): 2}
    why = prom.query(panel_query("FAIL and WARN: who and why"))
    assert sorted((users[r["metric"]["user"]], r["metric"]["instance"], r["metric"]["status"], r["metric"]["action"],
                   r["metric"]["reason"]) for r in why) == [
        ("carol", INSTANCE["ws-a.lab"], "FAIL", "rollback", "auth_failed_after_restore"),
        ("dave", INSTANCE["ws-b.lab"], "WARN", "none", "http_529"),
        ("erin", INSTANCE["ws-a.lab"], "WARN", "none", "awaiting_first_login"),
        ("erin", INSTANCE["ws-b.lab"], "WARN", "none", "awaiting_first_login")]

    last_ok = values(prom.query(panel_query("Age of the last OK run per user")), "instance", "user")
    assert len(last_ok) == 5 and all(0 <= age < 120 for age in last_ok.values())  # carol and dave keep wave 1's OK
    vault = values(prom.query(panel_query("Vault-token TTL per user")), "user")
    assert len(vault) == 5 and all(767 * 3600 < ttl <= 768 * 3600 for ttl in vault.values())  # the 768 h period
    refresh = {users[u]: ttl / DAY_S for (u,), ttl in values(prom.query(panel_query("Refresh-token TTL per user")),
                                                             "user").items()}
    assert 19.9 < refresh["alice"] < 20.1 and 19.9 < refresh["bob"] < 20.1  # bob's restored login is the good one
    assert 2.9 < refresh["carol"] < 3.1  # rolled back to the bad local login, which expires in 3 days

    runs = values(prom.query(panel_query("Runs by status")), "status")
    assert runs[("OK",)] > 0 and runs[("FAIL",)] > 0 and runs[("WARN",)] > 0
    awaiting = values(prom.query(panel_query("Awaiting first login")), "instance", "user")
    assert {(i, users[u]) for i, u in awaiting} == {(INSTANCE[h], "erin") for h in HOSTS}
    assert all(0 <= age < 120 for age in awaiting.values())
    restores = values(prom.query(panel_query("Restores and rollbacks per user")), "user", "action")
    assert {(users[u], a) for (u, a), v in restores.items() if v > 0} == {("bob", "restore"), ("carol", "rollback")}
