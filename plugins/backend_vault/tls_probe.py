"""A second look at a TLS connection Vault closed mid-request, to find the server's alert.

A TLS 1.3 server checks the client certificate after the handshake, so a request with a body
(renew-self, create-orphan) usually sees only "EOF occurred in violation of protocol" instead of
the server's "certificate required" alert. :func:`tls_second_opinion` asks again, without a token,
so that :func:`.errors.vault_error` can name the real cause and its fix.

Guarantees: the probes carry no token, no body and no secret path (``GET sys/health``, then a bare
handshake that only listens); the bare handshake is made only when the address is reached
directly (a proxied address keeps the first error); at most one of each per failed request, and
only for such an EOF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import cert_alert, tls_closed

if TYPE_CHECKING:
    import ssl

__all__ = ["tls_second_opinion"]


def tls_second_opinion(err: BaseException, session: Any, base_url: str, timeout: float) -> BaseException:
    """``err``, or a clearer exception for the same TLS failure (see the module's guarantees).

    For an EOF: one ``GET sys/health`` on the same ``session`` (same CA, client certificate and
    proxies); if that too ends without an alert and the address is reached directly, one bare TLS
    handshake that only listens, which reads the alert. A client-certificate alert found so is
    returned (as a requests ``SSLError``), else ``err`` itself.
    """
    import requests

    if not isinstance(err, requests.exceptions.SSLError) or not tls_closed(err):
        return err
    url = base_url.rstrip("/")
    try:
        session.get(f"{url}/v1/sys/health", timeout=timeout, allow_redirects=False)
    except requests.exceptions.RequestException as probe:
        if cert_alert(probe):
            return probe
    if _proxied(session, url):
        return err
    alert = _handshake_alert(url, session.verify, session.cert, timeout)
    return requests.exceptions.SSLError(alert) if alert is not None and cert_alert(alert) else err


def _proxied(session: Any, url: str) -> bool:
    import requests.utils

    proxies = dict(session.proxies or {})
    if session.trust_env and not proxies:
        proxies = requests.utils.get_environ_proxies(url)
    return bool(requests.utils.select_proxy(url, proxies))


def _handshake_alert(url: str, verify: Any, cert: Any, timeout: float) -> ssl.SSLError | None:
    """The TLS error of a handshake to ``url`` followed by listening (sending nothing) for a few
    seconds, or None (no error, or not a TLS one)."""
    import os
    import socket
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    context = ssl.create_default_context()
    if isinstance(verify, str):
        context = ssl.create_default_context(**({"capath": verify} if os.path.isdir(verify) else {"cafile": verify}))
    elif verify is False:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        if isinstance(cert, tuple):
            context.load_cert_chain(*cert)
        elif cert:
            context.load_cert_chain(cert)
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
                tls.settimeout(min(timeout, 3.0))
                tls.recv(1)
    except ssl.SSLError as alert:
        return alert
    except OSError:
        return None
    return None
