"""Reading the per-user Vault token file safely.

The token file (``~/.config/claude-auth-sync/vault-token``) must be a regular file (not a
symlink), owned by the running user, with no group or world permission bits, and hold exactly one
word of printable ASCII (surrounding whitespace, such as a final newline, is ignored).
Anything else is refused with :class:`BackendRefused` (exit 78) and a message that names the fix.
The token itself never appears in a message.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from claude_auth_sync.errors import BackendRefused
from claude_auth_sync.model import PROVISION_COMMAND

__all__ = ["PROVISION", "MalformedToken", "read_token_file", "token_file_facts", "token_file_problem", "token_from_bytes"]

MAX_TOKEN_BYTES = 4096

PROVISION = f"ask an administrator to rerun the root provisioner: {PROVISION_COMMAND}"


class MalformedToken(ValueError):
    """The bytes of a token file hold no usable token; ``kind`` is empty, too_large, words or characters.

    The message names the problem, never the content.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def token_from_bytes(data: bytes) -> str:
    """The token in a token file's bytes: one word of printable ASCII (33..126), surrounding
    whitespace ignored, at most :data:`MAX_TOKEN_BYTES` bytes. Anything else (including bytes that
    are not ASCII, which would break the HTTP header) raises :class:`MalformedToken`. Shared by the
    agent and the root provisioner, so both accept exactly the same files.
    """
    if len(data) > MAX_TOKEN_BYTES:
        raise MalformedToken("is too large to hold a token", "too_large")
    token = data.decode("utf-8", errors="replace").strip()
    if not token:
        raise MalformedToken("is empty", "empty")
    if any(c.isspace() for c in token):
        raise MalformedToken("holds more than one word", "words")
    if not all(33 <= ord(c) < 127 for c in token):
        raise MalformedToken("holds characters no Vault token has", "characters")
    return token


def token_file_problem(st: os.stat_result, uid: int) -> str | None:
    """What makes an opened token file unusable, from its ``fstat``: ``not_regular``, ``owner``
    (not ``uid``'s) or ``mode`` (any group or world bit), in that order; None when it may be read.
    Shared by the agent and the root provisioner, so both refuse exactly the same files."""
    if not stat.S_ISREG(st.st_mode):
        return "not_regular"
    if st.st_uid != uid:
        return "owner"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return "mode"
    return None


def read_token_file(path: Path, uid: int) -> str:
    """The token, after every check; raises BackendRefused naming the problem and the fix."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BackendRefused(f"the Vault token file {path} does not exist", reason="vault_token_missing", remedy=PROVISION) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise BackendRefused(f"the Vault token file {path} is a symlink; refusing it", reason="vault_token_unsafe",
                               remedy=f"remove {path}, then {PROVISION}") from None
        raise BackendRefused(f"cannot read the Vault token file {path}: {os.strerror(err.errno or 0)}",
                           reason="vault_token_unreadable", remedy=f"check {path}, then {PROVISION}") from None
    try:
        st = os.fstat(fd)
        problem = token_file_problem(st, uid)
        if problem == "not_regular":
            raise BackendRefused(f"{path} is not a regular file", reason="vault_token_unsafe", remedy=f"remove {path}, then {PROVISION}")
        if problem == "owner":
            raise BackendRefused(f"the Vault token file {path} is owned by uid {st.st_uid}, not by you (uid {uid})",
                               reason="vault_token_unsafe", remedy=PROVISION)
        if problem == "mode":
            raise BackendRefused(
                f"the Vault token file {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 (not group/world accessible)",
                reason="vault_token_mode", remedy=f"chmod 600 {path}",
            )
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return token_from_bytes(data)
    except MalformedToken as err:
        # An empty file is a missing token; anything else cannot be read as one.
        reason = "vault_token_missing" if err.kind == "empty" else "vault_token_unreadable"
        raise BackendRefused(f"the Vault token file {path} {err}", reason=reason, remedy=PROVISION) from None


def token_file_facts(path: Path) -> dict[str, object]:
    """Mode, owner and size of the token file for diagnose (never its content)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    return {
        "exists": True,
        "symlink": stat.S_ISLNK(st.st_mode),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "size": st.st_size,
    }
