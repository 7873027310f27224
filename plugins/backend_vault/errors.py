"""One translation of hvac and requests failures into classified errors, for every Vault client.

Used by the agent's store (:mod:`.store`) and by the root provisioner's admin client
(:mod:`claude_auth_sync.admin.vault_admin`), so both classify the same failure the same way.

Guarantees of :func:`vault_error`:

* unreachable (connection refused, DNS, timeout), sealed or unavailable (503), rate limited (429),
  any other 5xx or unexpected Vault answer, any other HTTP-level failure (too many redirects, a
  broken answer) -> :class:`BackendUnavailable` (exit 75): nothing a person must fix now;
* 404 (reason ``vault_not_found``), 401/403 (``vault_forbidden``), 400 (``vault_invalid_request``),
  TLS verification failure (``vault_tls``) -> :class:`BackendRefused` (exit 78);
* messages carry the caller's ``where`` (an operation and path), an HTTP status and an address,
  never a token, a request body or Vault's own error text.
"""

from __future__ import annotations

from claude_auth_sync.errors import BackendError, BackendRefused, BackendUnavailable

from .token_file import PROVISION

__all__ = ["RETRY_LATER", "error_text", "is_vault_failure", "vault_error"]

RETRY_LATER = "nothing now: the next run retries; check Vault's health"


def is_vault_failure(err: BaseException) -> bool:
    """True for the exceptions :func:`vault_error` classifies (hvac's VaultError, requests' errors, and
    the RecursionError of decoding an answer nested thousands deep)."""
    import hvac.exceptions
    import requests

    return isinstance(err, (hvac.exceptions.VaultError, requests.exceptions.RequestException, RecursionError))


def vault_error(err: BaseException, where: str, *, target: str, remedy: str | None = PROVISION) -> BackendError:
    """The classified error for ``err``, an hvac or requests exception a request to ``where`` raised.

    ``target`` names the address that could not be reached; ``remedy`` is the next step for a
    refused request (404/401/403/400; the agent's default: have an administrator rerun the
    provisioner). Anything :func:`is_vault_failure` rejects is a programming error: TypeError.
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
        return BackendRefused(f"{where}: TLS verification failed", reason="vault_tls",
                              remedy="set VAULT_CACERT (or vault.cacert) to the CA bundle that signed Vault's certificate")
    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return BackendUnavailable(f"{where}: cannot reach {target}", reason="vault_unreachable",
                                  remedy="nothing now: the next run retries; check the network and Vault")
    if isinstance(err, requests.exceptions.RequestException):
        return BackendUnavailable(f"{where}: HTTP error talking to Vault ({type(err).__name__})",
                                  reason="vault_unavailable", remedy=RETRY_LATER)
    raise TypeError(f"not a Vault or HTTP error: {type(err).__name__}")


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

