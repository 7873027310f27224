"""The journald sink end to end: the installed ``claude-auth-sync run`` against a REAL journald.

Each test gets a private ``systemd-journald`` in its own journal namespace
(``tests/support/journald.py``); the CLI runs as a subprocess (the installed console script) with
the file backend, the stub ``claude`` CLI and ``CLAUDE_AUTH_SYNC_JOURNALD__SOCKET`` pointing at
the namespace's socket. Entries are read back with
``journalctl --namespace=<ns> -t claude-auth-sync -o json``. A missing journald, journalctl or
console script makes the tests fail, never skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from claude_auth_sync.model import Action, ExitCode, Status, StatusEvent, UserIdentity
from claude_auth_sync.plugins.sink_journald import IDENTIFIER, JournaldSink, journal_fields
from claude_auth_sync.plugins.sink_journald.journal_protocol import send_entry
from tests.support.home import child_env
from tests.support.journald import JournaldNamespace

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
STUB = REPO / "tests" / "support" / "stub_claude.py"
ME = UserIdentity.current().name
STATUS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (OK|WARN|FAIL) user=\S+ action=\S+")


def fp(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def console_script() -> str:
    """The installed ``claude-auth-sync`` console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "claude-auth-sync"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("claude-auth-sync")
    assert found, "the claude-auth-sync console script is not installed (pip install -e .)"
    return found


@dataclass
class Secrets:
    access: str
    refresh: str
    mcp_access: str
    mcp_refresh: str

    @classmethod
    def fresh(cls) -> Secrets:
        return cls(
            access=f"sk-ant-oat01-{secrets.token_urlsafe(48)}",
            refresh=f"sk-ant-ort01-{secrets.token_urlsafe(48)}",
            mcp_access=f"mcp-gho-{secrets.token_urlsafe(32)}",
            mcp_refresh=f"mcp-ghr-{secrets.token_urlsafe(32)}",
        )

    def needles(self) -> list[str]:
        """Every secret, plus a 16-character middle piece of each (catches truncated leaks)."""
        whole = [self.access, self.refresh, self.mcp_access, self.mcp_refresh]
        return whole + [s[len(s) // 2 - 8 : len(s) // 2 + 8] for s in whole]


@dataclass
class Workstation:
    """One user's files in a temp dir, and a way to run the real CLI against them."""

    root: Path
    secrets: Secrets
    socket: str

    @property
    def log_file(self) -> Path:
        return self.root / "state" / "claude-auth-sync" / "sync.log"

    def write_credentials(self) -> None:
        config = self.root / "claude"
        config.mkdir(mode=0o700, exist_ok=True)
        document = {
            "claudeAiOauth": {
                "accessToken": self.secrets.access, "refreshToken": self.secrets.refresh,
                "expiresAt": 4_102_444_800_000, "scopes": ["user:inference", "user:profile"],
                "subscriptionType": "enterprise",
            },
            "mcpOAuth": {"github|1a2b": {"serverName": "github", "accessToken": self.secrets.mcp_access,
                                          "refreshToken": self.secrets.mcp_refresh, "expiresAt": 1}},
        }
        path = config / ".credentials.json"
        path.write_text(json.dumps(document))
        path.chmod(0o600)

    def env(self, *, accept: bool = True, mode: str = "auto", sinks: list[str] | None = None,
            claude_bin: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        scrubbed = ("CLAUDE_CODE_", "ANTHROPIC_", "STUB_CLAUDE_")
        env = {k: v for k, v in child_env(self.root / "home").items() if not k.startswith(scrubbed)}
        env.update(
            CLAUDE_CONFIG_DIR=str(self.root / "claude"),
            XDG_STATE_HOME=str(self.root / "state"),
            XDG_CONFIG_HOME=str(self.root / "config"),
            CLAUDE_AUTH_SYNC_BACKEND="file",
            CLAUDE_AUTH_SYNC_SINKS=json.dumps(sinks or ["file", "journald"]),
            CLAUDE_AUTH_SYNC_JOURNALD__SOCKET=self.socket,
            CLAUDE_AUTH_SYNC_METRICS__DIRECTORY=str(self.root / "metrics"),
            CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN=claude_bin or str(STUB),
            CLAUDE_AUTH_SYNC_INFERENCE__TIMEOUT="20",
            STUB_CLAUDE_ACCEPT=fp(self.secrets.access) if accept else "",
            STUB_CLAUDE_MODE=mode,
        )
        env.update(extra or {})
        return env

    def run(self, *args: str, **env_kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [console_script(), "run", *args], env=self.env(**env_kwargs), capture_output=True, text=True,  # type: ignore[arg-type]
            timeout=60, check=False, cwd=self.root,
        )

    def log_lines(self) -> list[str]:
        return self.log_file.read_text().splitlines() if self.log_file.exists() else []


@pytest.fixture
def station(tmp_path: Path, journald: JournaldNamespace) -> Workstation:
    ws = Workstation(root=tmp_path, secrets=Secrets.fresh(), socket=journald.socket_path)
    (tmp_path / "metrics").mkdir()
    ws.write_credentials()
    return ws


def assert_no_secret(where: str, blob: str | bytes, s: Secrets) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    for needle in s.needles():
        assert needle not in text, f"a secret (fingerprint {fp(needle)}) leaked into {where}"


def raw_journal(ns: JournaldNamespace, *args: str) -> str:
    ns.sync()
    res = ns.journalctl(*args, "--all", "--quiet", "--no-pager")
    assert res.returncode == 0, res.stderr
    return res.stdout


# -- OK / WARN / FAIL through the real CLI ------------------------------------------------------

def test_cli_run_writes_one_entry_per_cycle_with_contract_fields(station: Workstation, journald: JournaldNamespace) -> None:
    s = station.secrets
    runs = [
        # (expected exit, status, action, reason, priority, how)
        (ExitCode.OK, "OK", "backup", "", "6", dict()),  # first healthy run backs the login up
        (ExitCode.TEMPFAIL, "WARN", "none", "http_529", "4", dict(mode="529")),  # API overloaded
        (ExitCode.FAIL, "FAIL", "none", "auth_failed_backup_is_local_copy", "3", dict(accept=False)),  # 401
        (ExitCode.CONFIG, "FAIL", "none", "cli_missing", "3",
         dict(claude_bin=str(station.root / "no-such-claude"))),  # configuration a person must fix
    ]
    outputs = []
    for index, (code, *_rest, how) in enumerate(runs):
        args = ("--json",) if index % 2 else ()  # both output modes are checked for secrets
        res = station.run(*args, **how)
        outputs.append(res)
        assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
        assert "journald" not in res.stderr, res.stderr  # the journal accepted every entry

    entries = journald.read(IDENTIFIER, min_entries=len(runs))
    assert len(entries) == len(runs)
    for entry, (code, status, action, reason, priority, _how) in zip(entries, runs):
        assert entry["SYSLOG_IDENTIFIER"] == "claude-auth-sync"
        assert entry["PRIORITY"] == priority
        assert entry["CAS_STATUS"] == status
        assert entry["CAS_USER"] == ME
        assert entry["CAS_ACTION"] == action
        assert entry.get("CAS_REASON", "") == reason
        assert entry["CAS_EXIT_CODE"] == str(int(code))
        assert entry["MESSAGE"].startswith(f"{status} user={ME} action={action}")
        assert (f"reason={reason}" in entry["MESSAGE"]) == bool(reason)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["CAS_TIMESTAMP"])
        assert entry["CAS_TOTAL_MS"].isdigit()
        assert entry["_TRANSPORT"] == "journal"  # the native protocol, not stdout
        assert entry["_NAMESPACE"] == journald.namespace
    # Fingerprints (allowed) identify the token; the token itself never appears (checked below).
    assert entries[0]["CAS_ACCESS_FP"] == fp(s.access)
    assert entries[0]["CAS_REFRESH_FP"] == fp(s.refresh)
    assert entries[0]["CAS_BACKUP_VERSION"] == "1"
    assert entries[1]["CAS_PROBE_HTTP"] == "529"

    # journalctl's own priority filter agrees with the mapping: err = FAIL only, warning = WARN + FAIL.
    for level, want in (("err", ["FAIL", "FAIL"]), ("warning", ["WARN", "FAIL", "FAIL"]), ("info", ["OK", "WARN", "FAIL", "FAIL"])):
        lines = raw_journal(journald, "-t", IDENTIFIER, "-p", level, "-o", "json").splitlines()
        assert [json.loads(line)["CAS_STATUS"] for line in lines] == want, level

    # The private log got the same statuses, in order (the file sink ran beside journald).
    assert [STATUS_LINE.match(line).group(1) for line in station.log_lines()] == [r[1] for r in runs]  # type: ignore[union-attr]

    # No secret anywhere: every entry of the namespace (not only ours) as JSON and in export
    # format (binary-safe), the decoded values, stdout/stderr of every run, the private log.
    assert_no_secret("journalctl -o json", raw_journal(journald, "-o", "json"), s)
    assert_no_secret("journalctl -o json -t", raw_journal(journald, "-t", IDENTIFIER, "-o", "json"), s)
    assert_no_secret("journalctl -o export", raw_journal(journald, "-o", "export"), s)
    assert_no_secret("decoded entries", json.dumps(entries, default=repr), s)
    for index, res in enumerate(outputs):
        assert_no_secret(f"stdout of run {index}", res.stdout, s)
        assert_no_secret(f"stderr of run {index}", res.stderr, s)
    assert_no_secret("sync.log", station.log_file.read_bytes(), s)
    # ... while the MCP credentials are still in the user's file, untouched.
    document = json.loads((station.root / "claude" / ".credentials.json").read_text())
    assert document["mcpOAuth"]["github|1a2b"]["accessToken"] == s.mcp_access

    # Positive control: the search does see a multi-line value journald stored, in both formats.
    canary = f"canary-{secrets.token_hex(8)}"
    send_entry({"SYSLOG_IDENTIFIER": "cas-canary", "MESSAGE": "x", "CAS_CANARY": f"a\n{canary}\n"}, journald.socket_path)
    journald.read("cas-canary", min_entries=1)
    assert canary in raw_journal(journald, "-o", "json")
    assert canary in raw_journal(journald, "-o", "export")


# -- multi-line values ----------------------------------------------------------------------------

def test_multiline_values_round_trip_through_the_sink(journald: JournaldNamespace) -> None:
    error = "vault said:\n  permission denied\r\n\tcode=403\n"
    event = StatusEvent(
        timestamp="2026-11-28T20:10:45Z", status=Status.FAIL, exit_code=ExitCode.CONFIG, user="alice",
        action=Action.NONE, reason="store_refused", timings_ms={"renew": 12},
        fingerprints={"access": "0123abcd", "refresh": None},
        details={"error": error, "cli_version": "2.1.332", "a_detail_key_much_longer_than_journald_allows" * 2: "kept"},
    )
    JournaldSink(journald.socket_path).emit(event)

    (entry,) = journald.read(IDENTIFIER, min_entries=1)
    sent = journal_fields(event)
    assert "\n" in sent["MESSAGE"]  # really the binary (length-prefixed) form on the wire
    assert entry["CAS_ERROR"] == error
    assert entry["MESSAGE"] == sent["MESSAGE"]
    assert entry["MESSAGE"].startswith("FAIL user=alice action=none reason=store_refused")
    assert (entry["PRIORITY"], entry["CAS_STATUS"], entry["CAS_USER"]) == ("3", "FAIL", "alice")
    assert entry["CAS_RENEW_MS"] == "12" and entry["CAS_ACCESS_FP"] == "0123abcd"
    assert "CAS_REFRESH_FP" not in entry  # empty values are dropped
    assert {k: entry[k] for k in sent} == sent  # every field exactly as sent
    long_names = [k for k in entry if k.startswith("CAS_A_DETAIL_KEY")]
    assert [len(k) for k in long_names] == [64] and entry[long_names[0]] == "kept"  # truncated, not lost


# -- a sink that fails never changes the outcome --------------------------------------------------

@pytest.mark.parametrize(
    ("how", "code", "status"),
    [(dict(), ExitCode.OK, "OK"), (dict(mode="529"), ExitCode.TEMPFAIL, "WARN"), (dict(accept=False), ExitCode.FAIL, "FAIL")],
    ids=["OK", "WARN", "FAIL"],
)
def test_missing_journal_socket_keeps_exit_code_and_other_sinks(tmp_path: Path, how: dict, code: ExitCode, status: str) -> None:
    absent = f"/run/systemd/journal.cas-absent-{secrets.token_hex(6)}/socket"
    ws = Workstation(root=tmp_path, secrets=Secrets.fresh(), socket=absent)
    (tmp_path / "metrics").mkdir()
    ws.write_credentials()
    if status == "FAIL":  # give the store a copy first, so FAIL comes from the probe, not a missing backup
        assert ws.run(sinks=["file"]).returncode == 0
    # journald first: its failure must not stop the sinks after it.
    res = ws.run("--json", sinks=["journald", "file", "metrics"], **how)

    assert res.returncode == code, (res.stdout, res.stderr)
    payload = json.loads(res.stdout)
    assert (payload["status"], payload["exit_code"], payload["sink_failures"]) == (status, int(code), ["journald"])
    journald_lines = [line for line in res.stderr.splitlines() if "journald" in line]
    assert len(journald_lines) == 1, res.stderr
    assert "sink 'journald'" in journald_lines[0] and absent in journald_lines[0]
    assert STATUS_LINE.match(ws.log_lines()[-1]).group(1) == status  # type: ignore[union-attr]
    prom = (tmp_path / "metrics" / f"claude_auth_sync_{ME}.prom").read_text()
    assert f'claude_auth_sync_last_status{{user="{ME}",status="{status}"}} 1' in prom
    assert_no_secret("stderr", res.stderr, ws.secrets)


def test_failing_metrics_sink_does_not_stop_journald_or_file(station: Workstation, journald: JournaldNamespace) -> None:
    missing = station.root / "no-such-metrics-dir"
    res = station.run(sinks=["metrics", "journald", "file"],
                      extra={"CLAUDE_AUTH_SYNC_METRICS__DIRECTORY": str(missing)})

    assert res.returncode == 0, res.stderr
    assert [line for line in res.stderr.splitlines() if "sink" in line] == [
        f"claude-auth-sync: sink 'metrics' failed: MetricsUnavailable: metrics directory {missing} does not exist "
        "(install prometheus-node-exporter or set CLAUDE_AUTH_SYNC_METRICS__DIRECTORY)"
    ]
    assert not missing.exists()  # never created behind the operator's back
    (entry,) = journald.read(IDENTIFIER, min_entries=1)
    assert (entry["CAS_STATUS"], entry["PRIORITY"]) == ("OK", "6")
    assert len(station.log_lines()) == 1
