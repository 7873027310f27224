"""Test support for enterprise Vault set-ups: a private CA with server and client certificates made
by the real ``openssl`` CLI, an OpenBao dev server with an extra TLS listener (optionally requiring
client certificates), and a loopback HTTP proxy that records what crosses it.

* :func:`make_pki` writes ``ca.crt``, ``server.crt``/``server.key`` (SAN ``127.0.0.1``, ``localhost``),
  ``client.crt``/``client.key`` (clientAuth) and ``stranger.crt``/``stranger.key`` (a client
  certificate from another CA) into a directory; keys 0600.
* :func:`tls_openbao` starts :class:`~tests.support.openbao.OpenBaoServer` with a second listener
  ``https://127.0.0.1:<port>`` declared in its config file (``tls_require_and_verify_client_cert``
  when ``require_client_cert``); the dev listener stays plain http for the test's root client.
* :func:`pki` and :func:`mtls` are module-scoped pytest fixtures (a test module imports them by
  name): the private CA, and an OpenBao whose TLS listener requires client certificates.
* :class:`RecordingProxy` is a real forward proxy on 127.0.0.1: ``CONNECT host:port`` tunnels
  bytes both ways, any other method is answered 502. It records every request line and header
  block it receives, so a test can show what a proxy operator would see.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.openbao import OpenBaoServer, free_loopback_port

__all__ = ["Pki", "RecordingProxy", "make_pki", "mtls", "pki", "recording_proxy", "tls_openbao"]


@dataclass(frozen=True)
class Pki:
    """Paths of the files :func:`make_pki` wrote."""

    root: Path

    @property
    def ca_crt(self) -> Path:
        return self.root / "ca.crt"

    @property
    def server_crt(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def client_crt(self) -> Path:
        return self.root / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    @property
    def stranger_crt(self) -> Path:
        """A client certificate signed by a CA the listener does not trust."""
        return self.root / "stranger.crt"

    @property
    def stranger_key(self) -> Path:
        return self.root / "stranger.key"


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is missing: apt-get install openssl (scripts/dev/test.sh does)")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


def _ca(cwd: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name} test CA", cwd=cwd)


def _leaf(cwd: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={subject}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)


def make_pki(root: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a client
    certificate from an unrelated CA; every key 0600."""
    root.mkdir(parents=True, exist_ok=True)
    _ca(root, "ca")
    _ca(root, "other-ca")
    _leaf(root, "server", "ca", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _leaf(root, "client", "ca", "claude-auth-sync client", "extendedKeyUsage=clientAuth\n")
    _leaf(root, "stranger", "other-ca", "stranger", "extendedKeyUsage=clientAuth\n")
    for key in root.glob("*.key"):
        key.chmod(0o600)
    return Pki(root)


def tls_listener(pki: Pki, port: int, cluster_port: int, *, require_client_cert: bool) -> str:
    """The HCL of a TLS listener on 127.0.0.1:``port``."""
    lines = [
        'listener "tcp" {',
        f'  address = "127.0.0.1:{port}"',
        f'  cluster_address = "127.0.0.1:{cluster_port}"',
        f'  tls_cert_file = "{pki.server_crt}"',
        f'  tls_key_file = "{pki.server_key}"',
    ]
    if require_client_cert:
        lines += [f'  tls_client_ca_file = "{pki.ca_crt}"', "  tls_require_and_verify_client_cert = true"]
    return "\n".join([*lines, "}", ""])


@contextlib.contextmanager
def tls_openbao(workdir: Path, pki: Pki, *, require_client_cert: bool) -> Iterator[tuple[OpenBaoServer, str]]:
    """An OpenBao dev server (plain http dev listener for the test's root client) and the https
    address of its extra TLS listener."""
    port, cluster_port = free_loopback_port(), free_loopback_port()
    extra = tls_listener(pki, port, cluster_port, require_client_cert=require_client_cert)
    with OpenBaoServer(workdir, extra_config=extra) as server:
        yield server, f"https://127.0.0.1:{port}"


class RecordingProxy(socketserver.ThreadingTCPServer):
    """A forward proxy on 127.0.0.1 that tunnels CONNECT and records every request head it reads.

    ``heads`` holds each request line plus headers (bytes, as received); ``tunnels`` the
    ``host:port`` of each CONNECT it opened.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.tunnels: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.port = int(self.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: RecordingProxy

    def handle(self) -> None:
        head = _read_head(self.request)
        with self.server.lock:
            self.server.heads.append(head)
        method, _, rest = head.partition(b" ")
        if method != b"CONNECT":
            self.request.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        target = rest.split(b" ", 1)[0].decode("ascii", "replace")
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except (OSError, ValueError):
            self.request.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with self.server.lock:
            self.server.tunnels.append(target)
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        _relay(self.request, upstream)


def _read_head(sock: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    with upstream:
        sockets = [client, upstream]
        while True:
            readable, _, _ = select.select(sockets, [], [], 30)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)


@contextlib.contextmanager
def recording_proxy() -> Iterator[RecordingProxy]:
    proxy = RecordingProxy()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The private CA and its certificates, in root's private temporary directory (0700)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[OpenBaoServer, str]]:
    """An OpenBao whose TLS listener requires client certificates: (server, https address)."""
    with tls_openbao(tmp_path_factory.mktemp("bao-mtls"), pki, require_client_cert=True) as pair:
        yield pair
