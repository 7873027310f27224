"""Running the installed ``claude-auth-sync`` console script in a private sandbox of paths."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.home import child_env

STUB_CLAUDE = Path(__file__).with_name("stub_claude.py")


def console_script(name: str = "claude-auth-sync") -> str:
    """The console script installed beside the running interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is not installed: pip install -e '.[test]'")
    return str(path)


def fp(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass
class Sandbox:
    """A home-like tree: Claude config dir, XDG state/config, and the env to run the CLI in it."""

    root: Path

    @property
    def claude_dir(self) -> Path:
        return self.root / "claude"

    @property
    def credentials(self) -> Path:
        return self.claude_dir / ".credentials.json"

    @property
    def log_file(self) -> Path:
        return self.root / "state" / "claude-auth-sync" / "sync.log"

    @property
    def backup_file(self) -> Path:
        return self.root / "state" / "claude-auth-sync" / "backup" / f"{current_user()}.json"

    def write_credentials(self, document: dict[str, Any]) -> bytes:
        self.claude_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(document).encode()
        self.credentials.write_bytes(data)
        os.chmod(self.credentials, 0o600)
        return data

    @property
    def home(self) -> Path:
        """``HOME`` of the processes run in the sandbox (never the tester's own)."""
        return self.root / "home"

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment in the sandbox: private ``HOME`` and XDG directories, the
        Claude config dir, the file backend and sink, the stub CLI; no ``VAULT_*``, ``BAO_*``,
        ``STUB_CLAUDE*`` or tool settings of the caller. ``extra`` is applied last."""
        env = {k: v for k, v in child_env(self.home).items() if not k.startswith("STUB_CLAUDE")}
        env.update(
            CLAUDE_CONFIG_DIR=str(self.claude_dir),
            XDG_STATE_HOME=str(self.root / "state"),
            XDG_CONFIG_HOME=str(self.root / "config"),
            CLAUDE_AUTH_SYNC_BACKEND="file",
            CLAUDE_AUTH_SYNC_SINKS='["file"]',
            CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN=str(STUB_CLAUDE),
        )
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([console_script(), *args], env=self.env(**extra), capture_output=True, text=True,
                              timeout=timeout, check=False)


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
