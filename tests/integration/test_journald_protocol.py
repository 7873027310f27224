"""Our Native Journal Protocol sender against a REAL systemd-journald.

Each test gets its own journald instance in a fresh journal namespace (see
``tests/support/journald.py``) and reads the entries back with
``journalctl --namespace=<ns> -t claude-auth-sync -o json``. A missing
journald binary makes the fixture raise, so the tests error out: never skip.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import time

import pytest

from claude_auth_sync.plugins.sink_journald import journal_protocol
from claude_auth_sync.plugins.sink_journald.journal_protocol import (
    JournalUnavailable,
    encode_entry,
    send_entry,
)
from tests.support.journald import JOURNALD_BIN, JournaldNamespace

pytestmark = pytest.mark.real

IDENT = "claude-auth-sync"


def test_journald_binary_is_installed() -> None:
    # Explicit, so a machine without Debian's "systemd" package fails loudly.
    assert os.access(JOURNALD_BIN, os.X_OK), f"{JOURNALD_BIN} missing: apt-get install systemd"


def test_status_fields_round_trip(journald: JournaldNamespace) -> None:
    sent = [
        {"PRIORITY": "6", "CAS_STATUS": "OK", "CAS_USER": "alice", "CAS_ACTION": "probe",
         "CAS_REASON": "inference probe succeeded", "MESSAGE": "OK alice: inference probe succeeded"},
        {"PRIORITY": "4", "CAS_STATUS": "RESTORED", "CAS_USER": "bob", "CAS_ACTION": "restore",
         "CAS_REASON": "credentials restored from vault", "MESSAGE": "RESTORED bob: credentials restored from vault"},
        {"PRIORITY": "3", "CAS_STATUS": "FAILED", "CAS_USER": "carol", "CAS_ACTION": "backup",
         "CAS_REASON": "vault sealed", "MESSAGE": "FAILED carol: vault sealed"},
    ]
    for fields in sent:
        send_entry({"SYSLOG_IDENTIFIER": IDENT, **fields}, socket_path=journald.socket_path)

    got = journald.read(IDENT, min_entries=3)

    assert len(got) == 3
    for want, entry in zip(sent, got):
        assert {k: entry.get(k) for k in want} == want
        assert entry["SYSLOG_IDENTIFIER"] == IDENT
        assert entry["MESSAGE"].startswith(entry["CAS_STATUS"] + " ")
        # Trusted fields added by journald prove it came over the native socket from us.
        assert entry["_TRANSPORT"] == "journal"
        assert entry["_NAMESPACE"] == journald.namespace
        assert entry["_PID"] == str(os.getpid())
    # Other identifiers are not mixed in.
    assert journald.read("someone-else", min_entries=0) == []


def test_multiline_values_round_trip_exactly(journald: JournaldNamespace) -> None:
    message = "FAILED dave: probe failed\nTraceback (most recent call last):\n  line 2\n\n"
    reason = "ünïcode ✓\r\nwith CRLF and a\ttab\n"
    fields = {"SYSLOG_IDENTIFIER": IDENT, "PRIORITY": "3", "MESSAGE": message,
              "CAS_STATUS": "FAILED", "CAS_REASON": reason, "CAS_ONLY_NEWLINE": "\n"}
    assert b"MESSAGE\n" in encode_entry(fields)  # really the binary form

    send_entry(fields, socket_path=journald.socket_path)

    (entry,) = journald.read(IDENT, min_entries=1)
    assert entry["MESSAGE"] == message
    assert entry["CAS_REASON"] == reason
    assert entry["CAS_ONLY_NEWLINE"] == "\n"


def test_large_entry_goes_through_sealed_memfd(journald: JournaldNamespace,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    big = secrets.token_hex(150_000)  # 300 KB, not compressible to a pattern
    fields = {"SYSLOG_IDENTIFIER": IDENT, "PRIORITY": "6", "MESSAGE": "OK erin: big entry",
              "CAS_STATUS": "OK", "CAS_BLOB": big, "CAS_MULTI": "a\n" * 1000}
    payload = encode_entry(fields)
    assert len(payload) > 300_000
    # Precondition: this really is over the datagram limit for a plain sendto.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe, pytest.raises(OSError) as info:
        probe.sendto(payload, journald.socket_path)
    assert info.value.errno in (errno.EMSGSIZE, errno.ENOBUFS)

    memfd_calls = []
    real = journal_protocol._send_via_memfd
    monkeypatch.setattr(journal_protocol, "_send_via_memfd",
                        lambda *a: (memfd_calls.append(len(a[1])), real(*a))[1])

    send_entry(fields, socket_path=journald.socket_path)

    assert memfd_calls == [len(payload)]
    (entry,) = journald.read(IDENT, min_entries=1)
    assert entry["CAS_BLOB"] == big
    assert entry["CAS_MULTI"] == "a\n" * 1000
    assert entry["MESSAGE"] == "OK erin: big entry"


def test_missing_socket_raises_quickly() -> None:
    path = f"/run/systemd/journal.cas-absent-{secrets.token_hex(6)}/socket"
    start = time.monotonic()
    with pytest.raises(JournalUnavailable) as info:
        send_entry({"SYSLOG_IDENTIFIER": IDENT, "MESSAGE": "OK x"}, socket_path=path)
    assert time.monotonic() - start < 1.0
    assert info.value.socket_path == path


def test_stopped_journald_raises_journal_unavailable(journald: JournaldNamespace) -> None:
    # journald leaves its socket file behind when it exits: that is ECONNREFUSED.
    send_entry({"SYSLOG_IDENTIFIER": IDENT, "MESSAGE": "OK before stop"}, socket_path=journald.socket_path)
    assert journald.read(IDENT, min_entries=1)[0]["MESSAGE"] == "OK before stop"
    assert journald.pid is not None
    os.kill(journald.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while journald.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not journald.is_running()

    start = time.monotonic()
    with pytest.raises(JournalUnavailable) as info:
        send_entry({"SYSLOG_IDENTIFIER": IDENT, "MESSAGE": "OK after stop"}, socket_path=journald.socket_path)
    assert time.monotonic() - start < 1.0
    assert info.value.socket_path == journald.socket_path
