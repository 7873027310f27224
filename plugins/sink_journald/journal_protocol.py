"""Minimal sender for systemd's Native Journal Protocol.

Why our own ~60 lines instead of systemd-python / cysystemd: those need the
libsystemd headers and a C toolchain at install time (or a binary wheel that
may not exist for the target), while the wire format is small, stable and
documented (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): one AF_UNIX
SOCK_DGRAM datagram per entry, ``KEY=value\\n`` per field, or
``KEY\\n<le64 length><value>\\n`` when the value holds a newline; an entry too
big for one datagram is written to a sealed memfd whose descriptor is sent
alone via SCM_RIGHTS.  Stdlib only.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Mapping

DEFAULT_SOCKET = "/run/systemd/journal/socket"
_FIELD_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")  # journald's limit is 64 chars
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class JournalUnavailable(Exception):
    """The journal socket is missing or refuses datagrams (journald not running)."""

    def __init__(self, socket_path: str, cause: OSError | None = None) -> None:
        super().__init__(f"journald socket unavailable at {socket_path}: {cause}")
        self.socket_path = socket_path


def encode_entry(fields: Mapping[str, str]) -> bytes:
    """Serialize one journal entry; ValueError on an invalid field name or no fields."""
    if not fields:
        raise ValueError("a journal entry needs at least one field")
    out = bytearray()
    for name, value in fields.items():
        if not isinstance(name, str) or not _FIELD_RE.fullmatch(name):
            raise ValueError(f"invalid journal field name: {name!r}")
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"field {name}: value must be str or bytes, not {type(value).__name__}")
        data = value.encode("utf-8") if isinstance(value, str) else value
        key = name.encode("ascii")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


def send_entry(fields: Mapping[str, str], socket_path: str = DEFAULT_SOCKET) -> None:
    """Send one entry to journald; raises JournalUnavailable if nobody listens."""
    payload = encode_entry(fields)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            try:
                sock.sendto(payload, socket_path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                _send_via_memfd(sock, payload, socket_path)
        except (FileNotFoundError, NotADirectoryError, ConnectionRefusedError) as exc:
            raise JournalUnavailable(socket_path, exc) from exc


def _send_via_memfd(sock: socket.socket, payload: bytes, socket_path: str) -> None:
    # Protocol: write the entry to a memfd, seal it, send the fd with an empty payload.
    fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, socket_path)
    finally:
        os.close(fd)
