"""The Vault (or OpenBao) KV v2 credential store, on hvac.

Guarantees:

* The token comes only from the token file and is passed to hvac explicitly, with the address and
  CA bundle: hvac never falls back to ``VAULT_TOKEN`` or ``~/.vault-token``.
* ``renew()`` is one ``renew-self`` request; its answer's policies must be exactly the expected set
  (no ``root``, no ``default``, nothing extra) or the token is refused as drifted.
* ``read_latest()`` reads only the latest version (one request). ``write()`` stores
  ``{"claudeAiOauth": ...}`` and nothing else, with check-and-set (``cas``) so a concurrent writer
  is never silently overwritten. A healthy, unchanged cycle is therefore two requests.
* Errors are classified, never dumped: unreachable, 5xx, sealed, 429 -> :class:`StoreUnavailable`
  (75); 403, an invalid/expired token, drift, TLS failure -> :class:`StoreRefused` (78). Messages
  carry the HTTP status and path only, never a token or a secret value.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from claude_auth_sync.errors import ConfigurationError, StoreConflict, StoreError, StoreRefused, StoreUnavailable
from claude_auth_sync.model import OAuth, StoreHealth, StoredCopy

from .policy import expected_policies, secret_paths
from .settings import VaultSettings
from .token_file import PROVISION, read_token_file

if TYPE_CHECKING:
    import hvac

__all__ = ["VaultStore", "check_address"]


def check_address(addr: str | None, allow_insecure_http: bool) -> str:
    """The Vault address, refusing a missing one and plain http to a non-loopback host."""
    if not addr:
        raise ConfigurationError(
            "no Vault address configured", reason="vault_addr_missing",
            remedy="set vault.addr in /etc/claude-auth-sync/config.toml (or CLAUDE_AUTH_SYNC_VAULT__ADDR / VAULT_ADDR)",
        )
    parsed = urlparse(addr)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigurationError(f"invalid Vault address {addr!r}", reason="vault_addr_invalid",
                                 remedy="use https://host:port")
    if parsed.scheme == "http" and not allow_insecure_http and not _is_loopback(parsed.hostname):
        raise ConfigurationError(
            f"refusing plain http to non-loopback Vault {parsed.hostname}: the token would cross the network unencrypted",
            reason="vault_insecure_http", remedy="use https (set VAULT_CACERT for a private CA), or set vault.allow_insecure_http = true",
        )
    return addr


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class VaultStore:
    """One user's secret ``<mount>/<path_prefix>/<user>`` in KV v2."""

    def __init__(self, settings: VaultSettings, user: str, uid: int, token_file: Path) -> None:
        self.settings = settings
        self.user = user
        self.uid = uid
        self.token_file = token_file
        self.relative_path, self.data_path, self.metadata_path = secret_paths(user, settings)
        self._client: hvac.Client | None = None

    # -- CredentialStore ---------------------------------------------------------------------

    def renew(self) -> StoreHealth:
        answer = self._call("renew-self", lambda c: c.auth.token.renew_self())
        auth = answer.get("auth") or {}
        policies = set(auth.get("token_policies") or auth.get("policies") or [])
        self._check_policies(policies)
        ttl = auth.get("lease_duration")
        return StoreHealth(ttl_s=int(ttl) if ttl is not None else None,
                           details={"policies": sorted(policies), "renewable": auth.get("renewable")})

    def read_latest(self) -> StoredCopy | None:
        import hvac.exceptions

        try:
            answer = self._call(
                "read", lambda c: c.secrets.kv.v2.read_secret_version(
                    path=self.relative_path, mount_point=self.settings.mount, raise_on_deleted_version=True),
                not_found_ok=True,
            )
        except hvac.exceptions.InvalidPath:
            return None
        if answer is None:
            return None
        data = (answer.get("data") or {}).get("data") or {}
        metadata = (answer.get("data") or {}).get("metadata") or {}
        oauth = data.get("claudeAiOauth")
        if not isinstance(oauth, dict):
            raise StoreRefused(f"the secret {self.data_path} has no claudeAiOauth object", reason="store_damaged",
                               remedy="the next healthy run writes a new version")
        return StoredCopy(oauth=oauth, version=metadata.get("version"), updated=metadata.get("created_time"))

    def write(self, oauth: OAuth, *, expected_version: int | None) -> int | None:
        payload = {"claudeAiOauth": dict(oauth)}
        answer = self._call(
            "write", lambda c: c.secrets.kv.v2.create_or_update_secret(
                path=self.relative_path, secret=payload, cas=expected_version or 0, mount_point=self.settings.mount),
        )
        return ((answer or {}).get("data") or {}).get("version")

    def describe(self) -> dict[str, Any]:
        """Token facts (lookup-self) and the secret's metadata, never a value."""
        facts: dict[str, Any] = {"addr": self.settings.addr, "path": f"{self.settings.mount}/{self.relative_path}"}
        token = self._call("lookup-self", lambda c: c.auth.token.lookup_self()).get("data") or {}
        policies = set(token.get("policies") or [])
        facts["token"] = {
            "ttl_s": token.get("ttl"), "period_s": token.get("period"), "policies": sorted(policies),
            "renewable": token.get("renewable"), "expire_time": token.get("expire_time"),
            "display_name": token.get("display_name"), "orphan": token.get("orphan"),
            "drifted": policies != set(expected_policies(self.user)),
        }
        try:
            meta = self._call("metadata", lambda c: c.secrets.kv.v2.read_secret_metadata(
                path=self.relative_path, mount_point=self.settings.mount), not_found_ok=True)
        except StoreError as err:
            facts["secret"] = {"error": err.message}
        else:
            data = (meta or {}).get("data") or {}
            facts["secret"] = {
                "exists": bool(data), "current_version": data.get("current_version"),
                "updated_time": data.get("updated_time"), "versions_kept": len(data.get("versions") or {}),
            } if data else {"exists": False}
        return facts

    # -- internals ---------------------------------------------------------------------------

    def _check_policies(self, policies: set[str]) -> None:
        expected = set(expected_policies(self.user))
        if "root" in policies:
            raise StoreRefused("the Vault token carries the root policy; the agent refuses to use it",
                               reason="vault_token_root", remedy=PROVISION)
        if policies != expected:
            raise StoreRefused(
                f"the Vault token's policies drifted: {sorted(policies)} instead of {sorted(expected)}",
                reason="vault_token_drift", remedy=PROVISION,
            )

    def client(self) -> hvac.Client:
        if self._client is None:
            import hvac

            addr = check_address(self.settings.addr, self.settings.allow_insecure_http)
            token = read_token_file(self.token_file, self.uid)
            verify: bool | str = str(self.settings.cacert) if self.settings.cacert else True
            self._client = hvac.Client(url=addr, token=token, verify=verify, timeout=self.settings.timeout,
                                       namespace=None, allow_redirects=True)
        return self._client

    def _call(self, what: str, request: Any, *, not_found_ok: bool = False) -> Any:
        """Run one hvac request, translating every failure into a classified StoreError."""
        import hvac.exceptions
        import requests

        client = self.client()
        where = f"Vault {what} ({self.metadata_path if what == 'metadata' else self.data_path})"
        try:
            return request(client)
        except hvac.exceptions.InvalidPath:
            if not_found_ok:
                return None
            raise StoreRefused(f"{where}: not found (404)", reason="vault_not_found", remedy=PROVISION) from None
        except hvac.exceptions.Forbidden:
            raise StoreRefused(f"{where}: permission denied (403): the token is invalid, expired or lacks the policy",
                               reason="vault_forbidden", remedy=PROVISION) from None
        except hvac.exceptions.Unauthorized:
            raise StoreRefused(f"{where}: unauthorized (401)", reason="vault_forbidden", remedy=PROVISION) from None
        except hvac.exceptions.InvalidRequest as err:
            if what == "write" and "check-and-set" in str(err):
                raise StoreConflict(f"{where}: another writer stored a new version first (check-and-set)",
                                    remedy="nothing: the next run compares again") from None
            raise StoreRefused(f"{where}: invalid request (400)", reason="vault_invalid_request", remedy=PROVISION) from None
        except (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway,
                hvac.exceptions.RateLimitExceeded) as err:
            status = getattr(err, "status_code", None) or type(err).__name__
            raise StoreUnavailable(f"{where}: Vault unavailable ({status}, sealed or overloaded)",
                                   remedy="nothing now: the next run retries; check Vault's health") from None
        except hvac.exceptions.VaultError as err:
            raise StoreUnavailable(f"{where}: unexpected Vault answer ({type(err).__name__})",
                                   remedy="check Vault's health; the next run retries") from None
        except requests.exceptions.SSLError:
            raise StoreRefused(f"{where}: TLS verification failed", reason="vault_tls",
                               remedy="set VAULT_CACERT (or vault.cacert) to the CA bundle that signed Vault's certificate") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            raise StoreUnavailable(f"{where}: cannot reach {self.settings.addr}", reason="vault_unreachable",
                                   remedy="nothing now: the next run retries; check the network and Vault") from None
