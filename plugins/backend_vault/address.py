"""Vault addresses, judged by the parser that will connect and refused when anything is ambiguous.

requests builds every URL with urllib3's ``parse_url`` and opens the connection to the host that
``urllib.parse`` reads back from the result (redirects skip the first step). An address the two
parsers read differently, e.g. ``http://10.1.2.3\\@127.0.0.1:8200`` (urllib.parse: host 127.0.0.1;
urllib3: host 10.1.2.3), would pass a check made with one and connect with the other. So:

Guarantees:

* :func:`parse_vault_addr` accepts only ``http(s)://host[:port][/path]``: printable ASCII without
  whitespace, control characters or a backslash; no userinfo (``user:password@``), no
  percent-encoding in the authority, no query, no fragment, a path of plain segments; a host that
  is a DNS name (IDNA already in ``xn--`` form), an IPv4 address or a bracketed IPv6 address
  without a zone; a port in 1..65535. urllib.parse and urllib3 must agree on scheme, host and port.
* :func:`parse_redirect_target` applies the same rules to the authority of an absolute redirect
  target (a query is allowed there; the path may be percent-encoded).
* :class:`AddressRefused` messages never contain the address or any part of it: they name the
  problem only, so a password in a refused address reaches no log, journal, JSON or diagnose.
* :func:`display_address` returns the address itself only when it is acceptable, else a
  redacted placeholder.
* :func:`proxy_for` names the proxy requests would take from the environment for an address as
  ``scheme://host:port`` only: a proxy's user name and password never reach a message.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

__all__ = ["AddressRefused", "Origin", "display_address", "parse_redirect_target", "parse_vault_addr", "proxy_for",
           "redirect_origin"]

REFUSED_PLACEHOLDER = "(refused Vault address, not shown)"
_SCHEMES = ("http", "https")
_DNS_NAME = re.compile(r"\A(?=.{1,253}\Z)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\Z")
_PLAIN_PATH = re.compile(r"\A(/[A-Za-z0-9._~-]+)*/?\Z")
_PORT = re.compile(r"\A[0-9]{1,5}\Z")


class AddressRefused(ValueError):
    """An address that is refused; the message names the problem and never quotes the address."""


@dataclass(frozen=True)
class Origin:
    """Where a connection would go: lower-case scheme, host without brackets, explicit port or None."""

    scheme: str
    host: str
    port: int | None

    @property
    def is_loopback(self) -> bool:
        """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); never for other names."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_vault_addr(addr: str) -> Origin:
    """The origin of a configured ``vault.addr``; raises :class:`AddressRefused` (see module guarantees)."""
    _check_characters(addr)
    parts = _split(addr)
    if parts.query or parts.fragment or "?" in addr or "#" in addr:
        raise AddressRefused("a Vault address takes no query (?) or fragment (#)")
    if not _PLAIN_PATH.match(parts.path):
        raise AddressRefused("the path of a Vault address may hold only letters, digits and . _ ~ - between slashes")
    return _origin(addr, parts)


def parse_redirect_target(url: str) -> Origin:
    """The origin of an absolute redirect target; raises :class:`AddressRefused` on any doubt."""
    _check_characters(url)
    parts = _split(url)
    if parts.fragment or "#" in url:
        raise AddressRefused("a redirect target with a fragment (#)")
    return _origin(url, parts)


def redirect_origin(request_url: str, location: str) -> Origin:
    """The origin a redirect from ``request_url`` to ``location`` would connect to, as requests
    resolves it (scheme-relative and relative targets joined to the request URL); raises
    :class:`AddressRefused` on any doubt about the raw ``location`` or the joined URL."""
    _check_characters(location)
    if location.startswith("//"):
        location = f"{urlsplit(request_url).scheme}:{location}"
    return parse_redirect_target(urljoin(request_url, location))


def display_address(addr: str | None) -> str | None:
    """``addr`` when :func:`parse_vault_addr` accepts it, else a placeholder that holds none of it."""
    if addr is None:
        return None
    try:
        parse_vault_addr(addr)
    except AddressRefused:
        return REFUSED_PLACEHOLDER
    return addr


def _check_characters(url: str) -> None:
    if not url.isascii():
        raise AddressRefused("the address holds non-ASCII characters (write an IDNA host in its xn-- form)")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise AddressRefused("the address holds whitespace or control characters")
    if "\\" in url:
        raise AddressRefused("the address holds a backslash")


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced brackets
        raise AddressRefused("the address's bracketed host is not a plain IPv6 address") from None
    if parts.scheme not in _SCHEMES or not url.lower().startswith(f"{parts.scheme}://"):
        raise AddressRefused("the address must start with https:// (or http:// for loopback)")
    if "@" in parts.netloc:
        raise AddressRefused("the address carries user information (user:password@): credentials never go in it")
    if "%" in parts.netloc:
        raise AddressRefused("the host or port of the address is percent-encoded")
    return parts


def _origin(url: str, parts: SplitResult) -> Origin:
    """The origin per urllib.parse, checked field by field against urllib3's reading."""
    host, port_text = _host_and_port(parts.netloc)
    port = _port(port_text)
    mine = Origin(parts.scheme, host.lower(), port)
    if mine != _urllib3_origin(url):
        raise AddressRefused("the address is read differently by the URL parsers involved (scheme, host or port)")
    return mine


def _host_and_port(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = (netloc[1:end], netloc[end + 1:]) if end > 0 else ("", "")
        if not _is_ipv6(host) or (rest and not rest.startswith(":")):
            raise AddressRefused("the address's bracketed host is not a plain IPv6 address")
        return host, rest[1:] if rest else None
    host, colon, port_text = netloc.partition(":")
    if not _DNS_NAME.match(host):
        raise AddressRefused("the address's host is not a DNS name, IPv4 address or bracketed IPv6 address")
    return host, port_text if colon else None


def _port(port_text: str | None) -> int | None:
    if port_text is None:
        return None
    if not _PORT.match(port_text) or not 0 < int(port_text) <= 65535:
        raise AddressRefused("the address's port is not a number from 1 to 65535")
    return int(port_text)


def _is_ipv6(host: str) -> bool:
    if "%" in host:
        return False
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _urllib3_origin(url: str) -> Origin | None:
    """The origin urllib3 (the parser requests uses to build a request URL) reads, or None."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    try:
        parsed = parse_url(url)
    except (LocationParseError, ValueError):
        return None
    if parsed.scheme is None or parsed.host is None:
        return None
    host = parsed.host[1:-1] if parsed.host.startswith("[") and parsed.host.endswith("]") else parsed.host
    return Origin(parsed.scheme.lower(), host.lower(), parsed.port)


def proxy_for(addr: str | None, environ_proxies: dict[str, str] | None = None) -> str | None:
    """The proxy requests picks for ``addr`` from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` (and
    ``NO_PROXY``), as ``scheme://host:port`` without credentials, or None when ``addr`` is reached
    directly: no proxy set, bypassed by ``NO_PROXY``, or plain http to loopback (never proxied)."""
    import requests.utils

    if not addr:
        return None
    try:
        origin = parse_vault_addr(addr)
    except AddressRefused:
        return None
    if origin.scheme == "http" and origin.is_loopback:
        return None
    proxies = requests.utils.get_environ_proxies(addr) if environ_proxies is None else environ_proxies
    proxy = requests.utils.select_proxy(addr, proxies)
    if not proxy:
        return None
    try:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(a proxy whose address cannot be read)"
    if not host or not host.isascii() or not host.isprintable():
        return "(a proxy whose address cannot be read)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")
