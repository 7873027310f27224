"""The provisioner's Vault client: raw API calls with the admin token or a user's token.

Guarantees:

* the token is passed per call and never stored; each call counts as ``user`` or ``admin``
  (:attr:`AdminVault.requests`), and the admin token is only ever sent with admin requests;
* no environment but the proxies is trusted (no netrc, no ``REQUESTS_CA_BUNDLE``); the CA bundle
  is the configured one; a redirect is never followed;
* the namespace (``vault.namespace``) and the client certificate (``vault.client_cert``/``client_key``)
  of the settings go with every request, admin and user alike, so tokens and policies are minted
  in the namespace the agents use;
* every hvac or requests failure is classified by the Vault plugin's own translation
  (:func:`claude_auth_sync.plugins.backend_vault.errors.vault_error`) and raised as
  :class:`VaultFailure`, whose ``kind`` the provisioner acts on; messages carry the method, path,
  HTTP status and address, never a token or Vault's error text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_auth_sync.errors import BackendError
from claude_auth_sync.model import ExitCode
from claude_auth_sync.plugins.backend_vault.client_cert import client_cert_pair, resolve_path
from claude_auth_sync.plugins.backend_vault.errors import is_vault_failure, vault_error
from claude_auth_sync.plugins.backend_vault.tls_probe import tls_second_opinion
from claude_auth_sync.plugins.backend_vault.store import is_plain_http_to_loopback

if TYPE_CHECKING:
    from claude_auth_sync.plugins.backend_vault.settings import VaultSettings

__all__ = ["AdminVault", "VaultFailure"]


class VaultFailure(Exception):
    """``kind``: unavailable (75), forbidden (invalid/expired token), not_found, invalid;
    ``reason``: the backend's classification (``vault_invalid_request`` for a 400), "" when none."""

    def __init__(self, message: str, kind: str, reason: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        # Vault's own error strings (from its JSON answer), for decisions only: never in the message.
        self.vault_errors: tuple[str, ...] = ()

    @classmethod
    def from_backend_error(cls, err: BackendError) -> VaultFailure:
        """The failure for a classified error: its message (and next step) and the kind it implies."""
        if err.exit_code == ExitCode.TEMPFAIL:
            kind = "unavailable"
        else:
            kind = {"vault_not_found": "not_found", "vault_forbidden": "forbidden"}.get(err.reason, "invalid")
        return cls(str(err), kind, err.reason)

    @property
    def exit_code(self) -> ExitCode:
        """75 when Vault could not be reached (the next run retries), 78 otherwise."""
        return ExitCode.TEMPFAIL if self.kind == "unavailable" else ExitCode.CONFIG


class AdminVault:
    """Raw Vault API calls on one keep-alive session; the token is passed per call, never stored."""

    def __init__(self, addr: str, cacert: Path | None, timeout: float, *, namespace: str | None = None,
                 cert: tuple[str, str] | None = None) -> None:
        import requests

        self.addr = addr.rstrip("/")
        self.verify: bool | str = str(cacert) if cacert else True
        self.timeout = timeout
        self.namespace = namespace  # every request (admin and user) goes to this namespace
        self.cert = cert
        self.session = requests.Session()
        self.session.trust_env = False  # no netrc, no REQUESTS_CA_BUNDLE; proxies are taken explicitly
        # Plain http is accepted for loopback only because the token then stays on this machine:
        # never through a proxy from the environment (the agent's Vault session does the same).
        # get_environ_proxies reads HTTPS_PROXY/HTTP_PROXY/ALL_PROXY and honours NO_PROXY, as requests does.
        self.proxies = {} if is_plain_http_to_loopback(self.addr) else requests.utils.get_environ_proxies(self.addr)
        # hvac's adapter prefers the session's verify/cert/proxies over its own arguments: set them here.
        self.session.verify = self.verify
        self.session.cert = cert
        self.session.proxies = self.proxies
        self.requests = {"user": 0, "admin": 0}

    @classmethod
    def from_settings(cls, addr: str, settings: VaultSettings) -> AdminVault:
        """The client for a checked ``addr`` and the ``vault`` settings: CA bundle, timeout, namespace
        and client certificate (checked for root: owned by root, not world-readable; a relative path
        is under root's config dir). Raises ConfigurationError (78) for an unusable certificate."""
        from claude_auth_sync.model import UserIdentity

        config_dir = UserIdentity.current().home / ".config" / "claude-auth-sync"
        cert = client_cert_pair(resolve_path(settings.client_cert, config_dir), resolve_path(settings.client_key, config_dir),
                                uid=os.getuid(), role="provisioner")
        return cls(addr, settings.cacert, settings.timeout, namespace=settings.namespace, cert=cert)

    def call(self, who: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """``method`` on ``/v1/<path>`` with ``token``: Vault's JSON answer, ``{}`` for an empty
        200/204; a redirect, a 200 that is not JSON or any other answer raises :class:`VaultFailure`."""
        import hvac.adapters

        adapter = hvac.adapters.JSONAdapter(
            base_uri=self.addr, token=token, verify=self.verify, timeout=self.timeout, proxies=self.proxies,
            allow_redirects=False, session=self.session, namespace=self.namespace, cert=self.cert or (),
        )
        self.requests[who] += 1
        where = f"{method.upper()} {path}"
        try:
            answer = adapter.request(method, f"/v1/{path}", json=body)
        except Exception as err:
            if is_vault_failure(err):
                errors = getattr(err, "errors", None)
                err = tls_second_opinion(err, self.session, self.addr, self.timeout)
                failure = VaultFailure.from_backend_error(vault_error(err, where, target=self.addr, remedy=None,
                                                                     client_cert=self.cert is not None))
                if isinstance(errors, list):
                    failure.vault_errors = tuple(str(e)[:500] for e in errors[:10])
                raise failure from None
            if isinstance(err, (UnicodeError, ValueError)):  # a token no HTTP header can carry: never sent
                raise VaultFailure(f"{where}: the token cannot be sent ({type(err).__name__})", "invalid") from None
            raise
        if isinstance(answer, dict):
            return answer
        status = getattr(answer, "status_code", 0)
        if status == 204 or (status == 200 and not getattr(answer, "content", b"").strip()):
            return {}
        if status == 200:  # Vault answers 200 with JSON: a page (a portal, a misrouted proxy) is no success
            raise VaultFailure(f"{where}: an answer that is not Vault's (HTTP 200 without JSON) from {self.addr}",
                               "unavailable")
        if 300 <= status < 400:
            raise VaultFailure(f"{where}: refusing to follow a redirect ({status})", "invalid")
        raise VaultFailure(f"{where}: unexpected HTTP {status}", "unavailable")

    def knows_accessor(self, admin_token: str | None, accessor: str) -> bool | None:
        """Does this Vault know ``accessor``? (``lookup-accessor`` with the admin token.) True when
        it describes it; False only when Vault answers 400 with its own "invalid accessor"; None
        when it cannot tell: no admin token, one that may not look accessors up, a Vault not
        answering, any other 400 (a proxy's or a web firewall's)."""
        if not admin_token:
            return None
        try:
            self.call("admin", admin_token, "post", "auth/token/lookup-accessor", {"accessor": accessor})
        except VaultFailure as err:
            said_invalid = any("invalid accessor" in e for e in err.vault_errors)
            return False if err.reason == "vault_invalid_request" and said_invalid else None
        return True

    def cluster_id(self) -> str:
        """The cluster's ``cluster_id`` from the unauthenticated ``GET /v1/sys/health`` (standbys
        answer too; no token and no namespace are sent), so that every node of one cluster names one
        Vault; "" when Vault does not tell it (then records are matched by address: conservative)."""
        url = f"{self.addr}/v1/sys/health?standbyok=true&perfstandbyok=true&sealedcode=299&uninitcode=299"
        try:
            answer = self.session.get(url, timeout=self.timeout, allow_redirects=False)
            value = answer.json().get("cluster_id") if answer.status_code in (200, 299, 429, 473) else None
        except Exception:  # unreachable, not JSON, not an object: the address alone names the Vault
            return ""
        return value if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable() else ""
