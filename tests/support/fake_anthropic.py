"""A loopback stand-in for the Anthropic Messages API, for driving the real ``claude`` CLI.

Point the CLI at it with ``ANTHROPIC_BASE_URL=<FakeMessagesAPI.url>``.  Only the standard
library is used (``http.server`` + ``threading``); the server binds ``127.0.0.1`` on a free
port and never talks to anything else.

What Claude Code 2.1.332 was seen to do against it (print mode, OAuth credentials file):

* ``POST /v1/messages?beta=true`` with ``Authorization: Bearer <oauth token>``,
  ``anthropic-beta: oauth-2025-04-20,...``, ``anthropic-version: 2023-06-01`` and a JSON body
  with ``"stream": true`` -- i.e. it expects Server-Sent Events.  With an API key it sends
  ``x-api-key`` instead of ``Authorization``.
* ``HEAD /api/hello`` (a reachability check), only when non-essential traffic is *not*
  disabled.  Answered ``200`` here.
* Nothing else goes through the base URL; the CLI's other calls (OAuth refresh at
  ``platform.claude.com``, profile/telemetry at ``api.anthropic.com``) bypass it.

Token values are never stored or logged: each request records only
:func:`token_fingerprint` of the presented credential.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Iterable

__all__ = ["MODES", "FakeMessagesAPI", "RecordedRequest", "token_fingerprint"]

#: Every value :attr:`FakeMessagesAPI.mode` accepts.
MODES: frozenset[str] = frozenset({"ok", "401", "403", "429", "500", "529", "drop", "slow"})

#: Anthropic error ``type`` and message for each forced status (the shape the real API uses).
_FORCED_ERRORS: dict[int, tuple[str, str]] = {
    401: ("authentication_error", "Invalid bearer token"),
    403: ("permission_error", "Request not allowed"),
    429: ("rate_limit_error", "Rate limited"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def token_fingerprint(token: str) -> str:
    """First 8 hex digits of the SHA-256 of *token* (the bare token, without ``Bearer``)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received.  Holds no secret.

    ``auth_scheme`` is ``"bearer"`` (``Authorization: Bearer``), ``"x-api-key"`` or ``None``;
    ``token_fingerprint`` is :func:`token_fingerprint` of that credential, or ``None``.
    ``model`` and ``stream`` come from a JSON request body (``None`` when absent).
    ``anthropic_beta`` is the raw ``anthropic-beta`` header (it carries no secret).
    """

    method: str
    path: str
    token_fingerprint: str | None
    model: str | None
    stream: bool | None
    auth_scheme: str | None = None
    anthropic_beta: str | None = None

    @property
    def is_messages(self) -> bool:
        """True for ``POST /v1/messages`` (any query string), the inference call."""
        return self.method == "POST" and self.path.split("?", 1)[0] == "/v1/messages"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeMessagesAPI"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # -- plumbing -----------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        """Silence the default stderr access log (it would be noise in test output)."""

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            raw = b"".join(chunks)
        else:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""
        encoding = self.headers.get("content-encoding", "").lower()
        try:
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            elif encoding == "deflate":
                raw = zlib.decompress(raw)
        except (OSError, zlib.error):
            pass
        return raw

    def _credential(self) -> tuple[str | None, str | None]:
        """Return (scheme, token) from the request headers, without keeping them anywhere."""
        auth = self.headers.get("authorization")
        if auth and auth[:7].lower() == "bearer ":
            return "bearer", auth[7:].strip()
        api_key = self.headers.get("x-api-key")
        if api_key:
            return "x-api-key", api_key.strip()
        return None, None

    def _send_json(self, status: int, payload: dict[str, Any], extra_headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_fake_" + uuid.uuid4().hex[:20])
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error_body(self, status: int, err_type: str, message: str, extra_headers: dict[str, str] | None = None) -> None:
        payload = {
            "type": "error",
            "error": {"type": err_type, "message": message},
            "request_id": "req_fake_" + uuid.uuid4().hex[:20],
        }
        self._send_json(status, payload, extra_headers)

    def _drop(self) -> None:
        """Close the connection abruptly, without any response (client sees a reset)."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            # SO_LINGER 0: close() sends RST instead of FIN, so the client gets ECONNRESET.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    # -- dispatch -----------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        request_json: dict[str, Any] = {}
        if body:
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict):
                    request_json = parsed
            except ValueError:
                pass
        scheme, token = self._credential()
        model = request_json.get("model")
        stream = request_json.get("stream")
        fake._record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                token_fingerprint=token_fingerprint(token) if token else None,
                model=model if isinstance(model, str) else None,
                stream=stream if isinstance(stream, bool) else None,
                auth_scheme=scheme,
                anthropic_beta=self.headers.get("anthropic-beta"),
            )
        )
        try:
            self._respond(fake, request_json, token)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            # The client (e.g. a CLI killed on timeout) went away first.
            self.close_connection = True

    def _respond(self, fake: "FakeMessagesAPI", request_json: dict[str, Any], token: str | None) -> None:
        route = self.path.split("?", 1)[0].rstrip("/")
        if route == "/api/hello":
            self._send_json(200, {"message": "hello"})
            return
        if self.command != "POST" or route not in ("/v1/messages", "/v1/messages/count_tokens"):
            self._send_error_body(404, "not_found_error", f"Not found: {self.command} {route}")
            return

        mode = fake.mode
        if mode == "drop":
            self._drop()
            return
        if mode == "slow":
            # Interruptible by stop(); then answer as "ok" would.
            if fake._stopping.wait(max(0.0, float(fake.slow_seconds))):
                self._drop()
                return
            mode = "ok"
        if mode != "ok":
            status = int(mode)
            err_type, message = _FORCED_ERRORS[status]
            headers: dict[str, str] = {}
            if status == 429:
                headers["retry-after"] = str(fake.retry_after_seconds)
            if status in (500, 529):
                headers["x-should-retry"] = "true"
            self._send_error_body(status, err_type, message, headers)
            return

        if token is None or token not in fake.accepted_tokens:
            self._send_error_body(401, "authentication_error", "Invalid bearer token")
            return
        if route == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": 1})
            return
        model = request_json.get("model") if isinstance(request_json.get("model"), str) else "claude-haiku"
        if request_json.get("stream") is True:
            self._send_stream(fake, model)
        else:
            self._send_json(200, _message(model, fake.reply_text))

    def _send_stream(self, fake: "FakeMessagesAPI", model: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", "req_fake_" + uuid.uuid4().hex[:20])
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        full = _message(model, fake.reply_text)
        start = dict(full, content=[], stop_reason=None, usage={"input_tokens": 5, "output_tokens": 0})
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": fake.reply_text}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 1},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        for name, data in events:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode("utf-8"))
        self.wfile.flush()


def _message(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "msg_fake_" + uuid.uuid4().hex[:20],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }


class FakeMessagesAPI:
    """Threaded loopback HTTP server imitating the Anthropic Messages API.

    Attributes (all may be changed at any time, also while the server runs):

    ``mode``
        ``"ok"`` -- answer ``POST /v1/messages`` normally when the presented token is in
        ``accepted_tokens``, else ``401 authentication_error``;
        ``"401"``/``"403"``/``"429"``/``"500"``/``"529"`` -- force that status with Anthropic's
        error body (429 carries ``retry-after``);
        ``"drop"`` -- read the request, then reset the connection without any response;
        ``"slow"`` -- wait ``slow_seconds``, then answer as ``"ok"``.
        Modes apply to ``/v1/messages`` and ``/v1/messages/count_tokens``; ``/api/hello`` is
        always ``200`` and any other path ``404 not_found_error``.
    ``slow_seconds``
        Delay used by ``"slow"`` mode.
    ``accepted_tokens``
        Set of tokens (bearer or x-api-key values) accepted in ``"ok"`` mode.
    ``reply_text``
        Text of the assistant reply (default ``"ok"``).
    ``retry_after_seconds``
        Value of the ``retry-after`` header sent with 429.
    ``requests``
        :class:`RecordedRequest` for every request received, in order (no token values).
    """

    def __init__(self, accepted_tokens: Iterable[str] = ()) -> None:
        self.accepted_tokens: set[str] = set(accepted_tokens)
        self.slow_seconds: float = 30.0
        self.reply_text: str = "ok"
        self.retry_after_seconds: int = 1
        self.requests: list[RecordedRequest] = []
        self.url: str = ""
        self._mode: str = "ok"
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; expected one of {sorted(MODES)}")
        self._mode = value

    @property
    def messages_requests(self) -> list[RecordedRequest]:
        """The recorded ``POST /v1/messages`` requests only."""
        with self._lock:
            return [r for r in self.requests if r.is_messages]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> "FakeMessagesAPI":
        """Bind 127.0.0.1 on a free port, serve in a daemon thread, set :attr:`url`."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; pending "slow" answers are cut short."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeMessagesAPI":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least *count* requests were recorded; True if they were."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return True
            time.sleep(0.02)
        with self._lock:
            return len(self.requests) >= count
