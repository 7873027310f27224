"""Test support: the running user provisioned against a real OpenBao as the provisioner would, and a
loopback "other host" that records what reaches it."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from claude_auth_sync.plugins.backend_vault.policy import policy_name, render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from tests.support.cli import Sandbox, current_user
from tests.support.openbao import OpenBaoServer


def provision_token_file(bao: OpenBaoServer, box: Sandbox) -> Path:
    """The current user's policy applied and a periodic orphan token minted (as t3-provision-users
    does), written to the sandbox's ``vault-token`` (0600, directory 0700). Returns its path."""
    user = current_user()
    bao.write_policy(policy_name(user), render_policy(user, VaultSettings()))
    token = bao.create_periodic_token([policy_name(user)], period="768h", display_name=f"claude-auth-sync-{user}",
                                      no_default_policy=True)
    token_file = box.root / "config" / "claude-auth-sync" / "vault-token"
    token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    return token_file


def vault_box(bao: OpenBaoServer, tmp_path: Path) -> tuple[Sandbox, dict[str, str]]:
    """A sandbox with a provisioned token file, and the environment that selects that Vault."""
    box = Sandbox(tmp_path)
    provision_token_file(bao, box)
    return box, {"CLAUDE_AUTH_SYNC_BACKEND": "vault", "CLAUDE_AUTH_SYNC_VAULT__ADDR": bao.addr}


class LoopbackTrap(http.server.ThreadingHTTPServer):
    """A listener on 127.0.0.2 standing in for "another host" (or a proxy): records every request
    (method, whether it carried a Vault token) and answers ``status`` with no body."""

    daemon_threads = True

    def __init__(self, status: int = 503) -> None:
        self.hits: list[tuple[str, bool]] = []
        self.authorization: list[str] = []  # Authorization headers seen (e.g. from ~/.netrc)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.hits.append((self.command, bool(self.headers.get("X-Vault-Token"))))
                if self.headers.get("Authorization"):
                    outer.authorization.append(self.headers["Authorization"])
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_LIST = do_DELETE = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.2", 0), Handler)
        self.port = int(self.server_address[1])
        self.url = f"http://127.0.0.2:{self.port}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@contextmanager
def loopback_trap(status: int = 503) -> Iterator[LoopbackTrap]:
    server = LoopbackTrap(status)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
