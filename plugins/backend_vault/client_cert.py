"""The TLS client certificate (mTLS) a Vault client presents, checked before any request.

Settings ``vault.client_cert`` / ``vault.client_key`` (``VAULT_CLIENT_CERT`` / ``VAULT_CLIENT_KEY``).
A relative path is under the running account's config directory
(``$XDG_CONFIG_HOME/claude-auth-sync/`` of each user for the agent), so one system-wide setting
names every user's own files.

Guarantees of :func:`client_cert_pair`:

* both files or neither: one without the other is refused (``vault_client_cert_incomplete``);
* the key is opened without following a symlink and must be a regular file. For the agent
  (``role="agent"``) it must be owned by the running user and carry no group or world bit, exactly
  like the token file; for the root provisioner (``role="provisioner"``) owned by root and not
  world-readable (``root:ssl-cert 0640`` is fine). Anything else is ``vault_client_key_unsafe``
  with the ``chmod``/``chown`` that fixes it;
* the certificate must be a readable regular file (a symlink into ``/etc/ssl`` is fine: it is public);
* the pair must load into a TLS context (certificate and key match, PEM readable, key not
  encrypted: an encrypted key would make OpenSSL prompt on a terminal) or it is
  ``vault_client_cert_invalid``;
* messages name the files and the problem, never their content. All refusals are
  :class:`~claude_auth_sync.errors.ConfigurationError` (exit 78).

The files are checked, then handed to requests by path (requests takes nothing else): an attacker
able to swap the key in between already owns the account.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from claude_auth_sync.errors import ConfigurationError

if TYPE_CHECKING:
    from .settings import VaultSettings

__all__ = ["CERT_SETTINGS", "Role", "client_cert_facts", "client_cert_pair", "key_file_problem", "resolve_path", "with_resolved_paths"]

Role = Literal["agent", "provisioner"]

CERT_SETTINGS = ("set vault.client_cert and vault.client_key (or VAULT_CLIENT_CERT / VAULT_CLIENT_KEY) to the PEM "
                 "certificate and key the Vault listener accepts")


def resolve_path(path: Path | None, config_dir: Path | None) -> Path | None:
    """``path`` itself when absolute (or None); a relative one under ``config_dir``."""
    if path is None or path.is_absolute() or config_dir is None:
        return path
    return config_dir / path


def with_resolved_paths(settings: VaultSettings, config_dir: Path | None) -> VaultSettings:
    """``settings`` with a relative ``client_cert``/``client_key`` made absolute under ``config_dir``."""
    cert, key = resolve_path(settings.client_cert, config_dir), resolve_path(settings.client_key, config_dir)
    if (cert, key) == (settings.client_cert, settings.client_key):
        return settings
    return settings.model_copy(update={"client_cert": cert, "client_key": key})


def client_cert_pair(cert: Path | None, key: Path | None, *, uid: int, role: Role) -> tuple[str, str] | None:
    """``(cert, key)`` as strings for requests once both pass every check, or None when neither is set."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "vault.client_cert (VAULT_CLIENT_CERT)" if cert is None else "vault.client_key (VAULT_CLIENT_KEY)"
        raise ConfigurationError(f"a Vault client certificate needs both files: {missing} is not set",
                                 reason="vault_client_cert_incomplete", remedy=CERT_SETTINGS)
    _check_cert(cert)
    _check_key(key, uid, role)
    _check_loads(cert, key)
    return str(cert), str(key)


def key_file_problem(st: os.stat_result, uid: int, role: Role) -> str | None:
    """``not_regular``, ``owner`` or ``mode`` for an opened key file's ``fstat``; None when usable."""
    if not stat.S_ISREG(st.st_mode):
        return "not_regular"
    owner = uid if role == "agent" else 0
    if st.st_uid != owner:
        return "owner"
    forbidden = 0o077 if role == "agent" else 0o007
    if stat.S_IMODE(st.st_mode) & forbidden:
        return "mode"
    return None


def _check_cert(cert: Path) -> None:
    try:
        st = os.stat(cert)
    except OSError as err:
        raise ConfigurationError(f"the Vault client certificate {cert} cannot be read: {os.strerror(err.errno or 0)}",
                                 reason="vault_client_cert_missing", remedy=CERT_SETTINGS) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigurationError(f"the Vault client certificate {cert} is not a regular file",
                                 reason="vault_client_cert_invalid", remedy=CERT_SETTINGS)


def _check_key(key: Path, uid: int, role: Role) -> None:
    try:
        fd = os.open(key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigurationError(f"the Vault client key {key} is a symlink; refusing it",
                                     reason="vault_client_key_unsafe", remedy=f"put the key itself at {key}") from None
        raise ConfigurationError(f"the Vault client key {key} cannot be read: {os.strerror(err.errno or 0)}",
                                 reason="vault_client_cert_missing", remedy=CERT_SETTINGS) from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    problem = key_file_problem(st, uid, role)
    if problem is None:
        return
    owner = "you" if role == "agent" else "root"
    mode = "600" if role == "agent" else "640"
    messages = {
        "not_regular": f"the Vault client key {key} is not a regular file",
        "owner": f"the Vault client key {key} is owned by uid {st.st_uid}, not by {owner}",
        "mode": f"the Vault client key {key} has mode {stat.S_IMODE(st.st_mode):04o}; "
                + ("it must not be group or world accessible" if role == "agent" else "it must not be world accessible"),
    }
    remedy = f"chmod {mode} {key}" if problem == "mode" else f"make {owner} the owner of a regular file {key} (mode {mode})"
    raise ConfigurationError(messages[problem], reason="vault_client_key_unsafe", remedy=remedy)


def _refuse_password() -> bytes:
    raise _EncryptedKey


class _EncryptedKey(Exception):
    """The key asked for a passphrase."""


def _check_loads(cert: Path, key: Path) -> None:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert), str(key), password=_refuse_password)
    except _EncryptedKey:
        raise ConfigurationError(f"the Vault client key {key} is encrypted (it asks for a passphrase)",
                                 reason="vault_client_cert_invalid",
                                 remedy=f"store the key unencrypted (openssl pkey -in ENCRYPTED.key -out {key}; chmod 600 {key})") from None
    except (ssl.SSLError, OSError) as err:
        raise ConfigurationError(
            f"the Vault client certificate {cert} and key {key} do not load as a pair ({_ssl_reason(err)})",
            reason="vault_client_cert_invalid", remedy="use the PEM certificate and the PEM key that belongs to it",
        ) from None


def _ssl_reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return str(reason) if isinstance(reason, str) and reason.isprintable() else type(err).__name__


def client_cert_facts(cert: Path | None, key: Path | None, *, uid: int) -> dict[str, Any]:
    """For diagnose: whether a client certificate is configured and whether it passes the agent's checks."""
    if cert is None and key is None:
        return {"configured": False}
    facts: dict[str, Any] = {"configured": True, "cert": str(cert) if cert else None, "key": str(key) if key else None}
    try:
        client_cert_pair(cert, key, uid=uid, role="agent")
    except ConfigurationError as err:
        facts.update(error=err.message, reason=err.reason, remedy=err.remedy)
    return facts
