"""Unit tests of the Native Journal Protocol encoder (no journald needed)."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_auth_sync.plugins.sink_journald.journal_protocol import (
    JournalUnavailable,
    encode_entry,
    send_entry,
)


def decode_entry(data: bytes) -> list[tuple[str, bytes]]:
    """Reference parser written from the protocol description, for round-trips."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = nl + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + size]
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            pos = nl + 10 + size
        fields.append((key.decode("ascii"), value))
    return fields


def test_simple_fields_are_key_equals_value_lines_in_order() -> None:
    data = encode_entry({"SYSLOG_IDENTIFIER": "claude-auth-sync", "PRIORITY": "6", "MESSAGE": "OK alice"})
    assert data == b"SYSLOG_IDENTIFIER=claude-auth-sync\nPRIORITY=6\nMESSAGE=OK alice\n"


def test_value_with_newline_uses_binary_form_with_le64_length() -> None:
    data = encode_entry({"MESSAGE": "a\nb"})
    assert data == b"MESSAGE\n" + (3).to_bytes(8, "little") + b"a\nb" + b"\n"


def test_binary_length_counts_utf8_bytes_not_characters() -> None:
    value = "ü\n✓"  # 2 + 1 + 3 bytes
    data = encode_entry({"CAS_REASON": value})
    assert data[len(b"CAS_REASON\n") :][:8] == (6).to_bytes(8, "little")
    assert decode_entry(data) == [("CAS_REASON", value.encode())]


def test_empty_value_and_equals_sign_in_value_stay_simple_form() -> None:
    assert encode_entry({"CAS_REASON": "", "CAS_X": "a=b"}) == b"CAS_REASON=\nCAS_X=a=b\n"


def test_bytes_values_are_passed_through() -> None:
    assert encode_entry({"CAS_RAW": b"\x00\xff"}) == b"CAS_RAW=\x00\xff\n"


@pytest.mark.parametrize(
    "name",
    ["", "message", "Message", "_PRIVATE", "__CURSOR", "1ABC", "9", "A-B", "A B", "A=B", "A\nB", "É", "A" * 65],
)
def test_invalid_field_names_raise_value_error(name: str) -> None:
    with pytest.raises(ValueError):
        encode_entry({name: "x"})


@pytest.mark.parametrize("name", ["A", "MESSAGE", "CAS_STATUS", "A1_2", "X" * 64])
def test_valid_field_names(name: str) -> None:
    assert encode_entry({name: "x"}) == name.encode() + b"=x\n"


def test_empty_entry_is_rejected() -> None:
    with pytest.raises(ValueError):
        encode_entry({})


def test_non_string_value_is_rejected() -> None:
    with pytest.raises(TypeError):
        encode_entry({"PRIORITY": 6})  # type: ignore[dict-item]


_names = st.from_regex(r"\A[A-Z][A-Z0-9_]{0,20}\Z")


@given(st.dictionaries(_names, st.text(), min_size=1, max_size=8))
def test_round_trip_through_reference_parser(fields: dict[str, str]) -> None:
    assert decode_entry(encode_entry(fields)) == [(k, v.encode()) for k, v in fields.items()]


def test_missing_socket_raises_journal_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "no-such-dir" / "socket")
    start = time.monotonic()
    with pytest.raises(JournalUnavailable) as info:
        send_entry({"MESSAGE": "x"}, socket_path=path)
    assert info.value.socket_path == path
    assert time.monotonic() - start < 1.0


def test_stale_socket_file_raises_journal_unavailable(tmp_path: Path) -> None:
    # A socket file nobody listens on any more -> ECONNREFUSED.
    path = str(tmp_path / "socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
    with pytest.raises(JournalUnavailable) as info:
        send_entry({"MESSAGE": "x"}, socket_path=path)
    assert info.value.socket_path == path
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_send_reaches_a_datagram_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        send_entry({"MESSAGE": "OK hi", "CAS_STATUS": "OK"}, socket_path=path)
        listener.settimeout(2)
        assert listener.recv(65536) == b"MESSAGE=OK hi\nCAS_STATUS=OK\n"
