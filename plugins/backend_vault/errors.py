"""One translation of hvac and requests failures into classified errors, for every Vault client.

Used by the agent's store (:mod:`.store`) and by the root provisioner's admin client
(:mod:`claude_auth_sync.admin.vault_admin`), so both classify the same failure the same way.

Guarantees of :func:`vault_error`:

* unreachable (connection refused, DNS, timeout), sealed or unavailable (503), rate limited (429),
  any other 5xx or unexpected Vault answer, any other HTTP-level failure (too many redirects, a
  broken answer) -> :class:`BackendUnavailable` (exit 75): nothing a person must fix now;
* 404 (reason ``vault_not_found``), 401/403 (``vault_forbidden``), 400 (``vault_invalid_request``),
  TLS verification failure (``vault_tls``), a listener that requires a client certificate when
  none is configured (``vault_client_cert_required``) or refuses the one presented
  (``vault_client_cert_refused``) -> :class:`BackendRefused` (exit 78);
* messages carry the caller's ``where`` (an operation and path), an HTTP status and an address,
  never a token, a request body or Vault's own error text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from claude_auth_sync.errors import BackendError, BackendRefused, BackendUnavailable

from .token_file import PROVISION

if TYPE_CHECKING:
    import ssl

__all__ = ["RETRY_LATER", "cert_alert", "client_cert_refusal", "error_text", "is_vault_failure", "tls_closed", "vault_error"]

RETRY_LATER = "nothing now: the next run retries; check Vault's health"


def is_vault_failure(err: BaseException) -> bool:
    """True for the exceptions :func:`vault_error` classifies (hvac's VaultError, requests' errors, and
    the RecursionError of decoding an answer nested thousands deep)."""
    import hvac.exceptions
    import requests

    return isinstance(err, (hvac.exceptions.VaultError, requests.exceptions.RequestException, RecursionError))


def vault_error(err: BaseException, where: str, *, target: str, remedy: str | None = PROVISION,
                client_cert: bool = False) -> BackendError:
    """The classified error for ``err``, an hvac or requests exception a request to ``where`` raised.

    ``target`` names the address that could not be reached; ``remedy`` is the next step for a
    refused request (404/401/403/400; the agent's default: have an administrator rerun the
    provisioner); ``client_cert`` tells whether a client certificate was presented, which decides
    the next step when the TLS handshake fails on it (:func:`client_cert_refusal`).
    Anything :func:`is_vault_failure` rejects is a programming error: TypeError.
    """
    import hvac.exceptions
    import requests

    if isinstance(err, hvac.exceptions.VaultError):
        return _hvac_error(err, where, remedy)
    if isinstance(err, RecursionError):  # JSON nested thousands deep: a damaged or hostile secret
        return BackendRefused(f"{where}: Vault's answer is nested too deeply to read (a damaged secret)",
                              reason="vault_answer_unreadable",
                              remedy="an administrator writes a sane latest version (vault kv put) or deletes it")
    if isinstance(err, requests.exceptions.SSLError):
        refusal = client_cert_refusal(err, where, client_cert)
        if refusal is not None:
            return refusal
        return BackendRefused(f"{where}: TLS verification failed", reason="vault_tls",
                              remedy="set VAULT_CACERT (or vault.cacert) to the CA bundle that signed Vault's certificate")
    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return BackendUnavailable(f"{where}: cannot reach {target}", reason="vault_unreachable",
                                  remedy="nothing now: the next run retries; check the network and Vault")
    if isinstance(err, requests.exceptions.RequestException):
        return BackendUnavailable(f"{where}: HTTP error talking to Vault ({type(err).__name__})",
                                  reason="vault_unavailable", remedy=RETRY_LATER)
    raise TypeError(f"not a Vault or HTTP error: {type(err).__name__}")


# OpenSSL's names for a server's alert about the client certificate. Go's TLS server (Vault,
# OpenBao) sends "certificate required" (TLS 1.3) or "bad certificate" (TLS 1.2) when none came.
_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED",
                "CERTIFICATE_UNKNOWN", "UNSUPPORTED_CERTIFICATE")


def client_cert_refusal(err: BaseException, where: str, client_cert: bool) -> BackendRefused | None:
    """A TLS failure caused (or most likely caused) by the client certificate, as its own 78 with
    the next step, else None.

    A client-certificate alert from the server: without a configured certificate
    ``vault_client_cert_required`` (set one), with one ``vault_client_cert_refused`` (renew it). A
    connection closed mid-request (EOF: Go's TLS 1.3 server often closes before the client reads
    its alert, even after :func:`.tls_probe.tls_second_opinion`) is ``vault_client_cert_refused`` when a
    certificate was presented, else ``vault_tls_closed`` whose fix names both suspects. Only the
    OpenSSL reason code of the ``ssl.SSLError`` behind ``err`` is looked at (never a URL or a
    server's text), and nothing of it is repeated.
    """
    alert, closed = cert_alert(err), tls_closed(err)
    if not alert and not closed:
        return None
    if client_cert:
        why = "refused the TLS client certificate" if alert else \
            "closed the TLS connection without an answer (most often: it refused the client certificate)"
        return BackendRefused(f"{where}: Vault {why}", reason="vault_client_cert_refused",
                              remedy="renew vault.client_cert (VAULT_CLIENT_CERT): signed by a CA the Vault listener "
                                     "trusts (tls_client_ca_file), valid now, with the key vault.client_key")
    set_cert = ("set vault.client_cert and vault.client_key (or VAULT_CLIENT_CERT / VAULT_CLIENT_KEY, e.g. in "
                "/etc/default/claude-auth-sync) to a certificate and key the Vault listener accepts")
    if alert:
        return BackendRefused(f"{where}: Vault requires a TLS client certificate and none is configured",
                              reason="vault_client_cert_required", remedy=set_cert)
    return BackendRefused(f"{where}: Vault (or a proxy in between) closed the TLS connection without an answer",
                          reason="vault_tls_closed",
                          remedy=f"if the Vault listener requires client certificates, {set_cert}; else check the proxy")


def _ssl_cause(err: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind ``err`` (requests wraps urllib3 wraps ssl), found by walking causes,
    contexts, urllib3's ``reason`` and exception arguments; None when there is none."""
    import ssl

    seen: list[BaseException] = []
    stack: list[object] = [err]
    while stack and len(seen) < 32:
        current = stack.pop()
        if not isinstance(current, BaseException) or any(current is s for s in seen):
            continue
        if isinstance(current, ssl.SSLError):
            return current
        seen.append(current)
        stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return None


def cert_alert(err: BaseException) -> bool:
    """The server sent an alert about the client certificate (OpenSSL's reason code, not free text)."""
    cause = _ssl_cause(err)
    reason = getattr(cause, "reason", None)
    return isinstance(reason, str) and any(reason.endswith(name) for name in _CERT_ALERTS)


def tls_closed(err: BaseException) -> bool:
    """The TLS connection ended without a TLS close (EOF in violation of the protocol)."""
    import ssl

    cause = _ssl_cause(err)
    return isinstance(cause, ssl.SSLEOFError) or getattr(cause, "reason", None) == "UNEXPECTED_EOF_WHILE_READING"


def _hvac_error(err: BaseException, where: str, remedy: str | None) -> BackendError:
    import hvac.exceptions

    if isinstance(err, hvac.exceptions.InvalidPath):
        return BackendRefused(f"{where}: not found (404)", reason="vault_not_found", remedy=remedy)
    if isinstance(err, hvac.exceptions.Forbidden):
        return BackendRefused(f"{where}: permission denied (403): the token is invalid, expired or lacks the policy",
                              reason="vault_forbidden", remedy=remedy)
    if isinstance(err, hvac.exceptions.Unauthorized):
        return BackendRefused(f"{where}: unauthorized (401)", reason="vault_forbidden", remedy=remedy)
    if isinstance(err, hvac.exceptions.InvalidRequest):
        return BackendRefused(f"{where}: invalid request (400)", reason="vault_invalid_request", remedy=remedy)
    if isinstance(err, hvac.exceptions.VaultDown):
        sealed = "sealed" in error_text(err).lower()
        return BackendUnavailable(f"{where}: Vault {'is sealed' if sealed else 'unavailable'} (503)",
                                  reason="vault_sealed" if sealed else "vault_unavailable", remedy=RETRY_LATER)
    if isinstance(err, hvac.exceptions.RateLimitExceeded):
        return BackendUnavailable(f"{where}: rate limited (429)", reason="vault_rate_limited", remedy=RETRY_LATER)
    # 5xx and anything else unexpected
    return BackendUnavailable(f"{where}: Vault answered {_status(err)}", reason="vault_unavailable", remedy=RETRY_LATER)


def error_text(err: BaseException) -> str:
    """The error strings of an hvac error, for matching only (hvac errors have no ``message`` attribute)."""
    errors = getattr(err, "errors", None)
    if isinstance(errors, list) and errors:
        return ", ".join(str(e) for e in errors)
    return str(err.args[0]) if err.args and err.args[0] else ""


def _status(err: BaseException) -> str:
    import hvac.exceptions

    codes = {
        hvac.exceptions.InternalServerError: "500", hvac.exceptions.VaultNotInitialized: "501",
        hvac.exceptions.BadGateway: "502", hvac.exceptions.PreconditionFailed: "412",
        hvac.exceptions.UnsupportedOperation: "405",
    }
    for cls, code in codes.items():
        if isinstance(err, cls):
            return f"HTTP {code}"
    return type(err).__name__

