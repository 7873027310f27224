"""The metrics sink's file, read by a REAL node_exporter (Debian ``prometheus-node-exporter``)
running as its own ``prometheus`` user on loopback, like on a workstation.

Proves the file is in a format the textfile collector accepts (``node_textfile_scrape_error 0``)
and that it must be world-readable: a 0600 file (what ``fileio.replace_private`` would write) is
a scrape error for node_exporter. A missing binary or user fails the test, never skips.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_auth_sync.model import Action, ExitCode, Status, StatusEvent
from claude_auth_sync.plugins.sink_metrics import MetricsSink
from tests.support.processes import stop_process

pytestmark = pytest.mark.real

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        text = response.read().decode()
    out = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            out.append((match.group(1), dict(LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return out


def value(series: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float | None:
    found = [v for n, lab, v in series if n == name and all(lab.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


@pytest.fixture
def textfile_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cas-textfile-"))  # not under pytest's 0700 tmp: prometheus must reach it
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node_exporter(textfile_dir: Path) -> Iterator[str]:
    assert os.access(NODE_EXPORTER, os.X_OK), f"{NODE_EXPORTER} missing: apt-get install prometheus-node-exporter"
    pwd.getpwnam("prometheus")  # created by the Debian package
    port = free_port()
    proc = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
         "--collector.textfile", f"--collector.textfile.directory={textfile_dir}"],
        user="prometheus", group="prometheus", extra_groups=[], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                scrape(url)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "node_exporter did not answer within 10 s"
                time.sleep(0.05)
        yield url
    finally:
        stop_process(proc, timeout=5)


def test_node_exporter_reads_the_sinks_file_and_not_a_private_one(textfile_dir: Path, node_exporter: str) -> None:
    sink = MetricsSink(textfile_dir)
    sink.emit(StatusEvent(timestamp="2026-11-28T20:10:45Z", status=Status.OK, exit_code=ExitCode.OK, user="alice",
                          action=Action.BACKUP, reason=None,
                          details={"store_ttl_s": 2764800, "access_expires_at_ms": 1795900000000}))
    sink.emit(StatusEvent(timestamp="2026-11-28T20:11:00Z", status=Status.FAIL, exit_code=ExitCode.FAIL, user="bob",
                          action=Action.ROLLBACK, reason="auth_failed_after_restore"))

    series = scrape(node_exporter)
    assert value(series, "node_textfile_scrape_error") == 0
    assert value(series, "claude_auth_sync_last_status", user="alice", status="OK") == 1
    assert value(series, "claude_auth_sync_last_status", user="alice", status="FAIL") == 0
    assert value(series, "claude_auth_sync_last_status", user="bob", status="FAIL") == 1
    assert value(series, "claude_auth_sync_last_run_timestamp_seconds", user="alice") == 1795896645
    assert value(series, "claude_auth_sync_last_success_timestamp_seconds", user="alice") == 1795896645
    assert value(series, "claude_auth_sync_last_success_timestamp_seconds", user="bob") is None
    assert value(series, "claude_auth_sync_last_exit_code", user="bob") == 1
    assert value(series, "claude_auth_sync_vault_token_ttl_seconds", user="alice") == 2764800
    assert value(series, "claude_auth_sync_access_token_expiry_seconds", user="alice") == 1795900000
    mtime = value(series, "node_textfile_mtime_seconds", file=str(textfile_dir / "claude_auth_sync_alice.prom"))
    assert mtime is not None and abs(mtime - time.time()) < 60
    # The temp files (".<name>.tmp-*") never ended in .prom, so only the two real files were read.
    assert sorted(lab["file"] for n, lab, _ in series if n == "node_textfile_mtime_seconds") == [
        str(textfile_dir / f"claude_auth_sync_{u}.prom") for u in ("alice", "bob")]

    # Why the sink writes 0644 itself: a 0600 file (replace_private's mode) is unreadable for node_exporter.
    private = textfile_dir / "claude_auth_sync_carol.prom"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (textfile_dir / "claude_auth_sync_alice.prom").read_bytes().replace(b"alice", b"carol"))
    os.close(fd)
    series = scrape(node_exporter)
    assert value(series, "node_textfile_scrape_error") == 1
    assert value(series, "claude_auth_sync_last_status", user="carol", status="OK") is None
    assert value(series, "claude_auth_sync_last_status", user="alice", status="OK") == 1  # others unaffected
