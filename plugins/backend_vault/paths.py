"""Where a user's secret lives: the ``vault.path_template`` and the short host name.

Guarantees:

* :func:`check_template` accepts only templates whose every ``/``-separated segment is either
  exactly ``{user}``, exactly ``{host}`` or a plain name (``[A-Za-z0-9_.-]``, never ``.`` or
  ``..``); ``{user}`` exactly once, ``{host}`` at most once. So no format field other than the two,
  no conversion or format spec (``{user!r}``, ``{user:>999}``, ``{user.__class__}``, ``{0}``), no
  glob (``*``, ``+``), no empty segment, no leading or trailing ``/``, and, because each field is a
  whole segment, two different (host, user) pairs never render to one path.
* Templates are never passed to :meth:`str.format`: :func:`render_template` replaces whole
  segments only, after the values were checked by their own strict patterns.
* :func:`short_host_name` is the kernel's host name (:func:`socket.gethostname`) up to its first
  dot, lower-cased (ASCII only: a non-ASCII name never folds into an ASCII one), and refused
  (exit 78) unless it is one RFC 1123 label (``[a-z0-9-]``, no
  leading or trailing ``-``, at most 63 characters). The message shows it through :func:`repr`.
"""

from __future__ import annotations

import re
import socket

from claude_auth_sync.errors import ConfigurationError

__all__ = ["DEFAULT_TEMPLATE", "HOST_PATTERN", "check_host", "check_template", "render_template",
           "short_host_name", "template_has_host"]

DEFAULT_TEMPLATE = "workstation/claude-users/{user}"
USER_FIELD = "{user}"
HOST_FIELD = "{host}"
HOST_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
PLAIN_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_TEMPLATE = 512


def check_template(template: str) -> str:
    """``template`` unchanged if it is safe (see the module's guarantees), else ValueError."""
    if not isinstance(template, str) or not template or len(template) > MAX_TEMPLATE:
        raise ValueError(f"path_template must be 1 to {MAX_TEMPLATE} characters")
    segments = template.split("/")
    for segment in segments:
        if segment in (USER_FIELD, HOST_FIELD):
            continue
        if not PLAIN_SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ValueError(
                "path_template: every '/'-separated part must be {user}, {host} or a plain name of letters, digits, "
                f"'_', '.', '-' (not '.' or '..'); refused part {segment[:60]!r}")
    if segments.count(USER_FIELD) != 1:
        raise ValueError("path_template must contain {user} exactly once, as a whole path segment")
    if segments.count(HOST_FIELD) > 1:
        raise ValueError("path_template may contain {host} at most once, as a whole path segment")
    return template


def template_has_host(template: str) -> bool:
    """True when the template's paths (and so the policies) are per host."""
    return HOST_FIELD in template.split("/")


def check_host(host: str) -> str:
    """``host`` if it is one lower-case RFC 1123 label, else ConfigurationError (78)."""
    if not isinstance(host, str) or not HOST_PATTERN.fullmatch(host):
        raise ConfigurationError(
            f"the host name {str(host)[:80]!r} cannot go into a Vault path (allowed: {HOST_PATTERN.pattern})",
            reason="invalid_host_name",
            remedy="give this host a plain name (hostnamectl set-hostname NAME), or use a vault.path_template "
                   "without {host}",
        )
    return host


def short_host_name(raw: str | None = None) -> str:
    """The short host name ({host}): ``raw`` (default :func:`socket.gethostname`) up to its first
    dot, lower-cased, checked by :func:`check_host`."""
    name = socket.gethostname() if raw is None else raw
    label = name.split(".", 1)[0]
    # lower() only on ASCII: it folds some other letters into ASCII ones (U+212A KELVIN SIGN -> 'k'),
    # which gave a name that is no RFC 1123 label the path and policy of another host.
    return check_host(label.lower() if label.isascii() else label)


def render_template(template: str, user: str, host: str | None) -> str:
    """The path under the mount: ``template``'s ``{user}`` (and ``{host}``) segments replaced.

    ``user`` and ``host`` must already be checked (by the caller's strict patterns); a template
    with ``{host}`` and no host is a ValueError."""
    out = []
    for segment in check_template(template).split("/"):
        if segment == USER_FIELD:
            out.append(user)
        elif segment == HOST_FIELD:
            if host is None:
                raise ValueError("this path_template needs a host name")
            out.append(check_host(host))
        else:
            out.append(segment)
    return "/".join(out)
