"""The Vault (or OpenBao) KV v2 credential store, on hvac.

Guarantees:

* The token comes only from the token file and is passed to hvac explicitly, with the address and
  CA bundle: hvac never falls back to ``VAULT_TOKEN`` or ``~/.vault-token``.
* ``renew()`` is one ``renew-self`` request; its answer's policies (token and identity policies)
  must be exactly the expected set (no ``root``, no ``default``, nothing extra) or the token is
  refused as drifted. The renewed TTL is reported (:attr:`BackendHealth.ttl_s`).
* ``read_latest()`` reads only the latest version (one request); a 404 (nothing stored yet, or the
  latest version deleted by an administrator) is ``None``. ``write()`` stores
  ``{"claudeAiOauth": ...}`` and nothing else, with check-and-set (``cas``) so a concurrent writer
  is never silently overwritten. A healthy, unchanged cycle is therefore two requests.
* The address is judged as requests will connect (:mod:`.address`): an ambiguous one (a backslash,
  userinfo, control characters, anything urllib.parse and urllib3 read differently) is refused
  before any request, and no message, diagnose fact or status line quotes it.
* A redirect (a standby answering 307) is followed only to a target that passes the same checks
  and is not plain http off loopback, so the token never follows a redirect onto plain http to
  another host or to a host the parsers disagree on.
* Plain http to loopback never goes through a proxy from the environment (``HTTP_PROXY``), which
  would carry the token off the machine in clear text; https and the opted-in insecure http do.
* Reads are never older than the renew that started the cycle: the ``X-Vault-Index`` of every
  answer is sent back with ``X-Vault-Inconsistent: forward-active-node``, so a standby serving reads
  from a lagging replica (OpenBao 2.7+ integrated storage) forwards to the active node instead.
* Errors are classified, never dumped: unreachable, 5xx, sealed, 429 -> :class:`BackendUnavailable`
  (75); 403, an invalid/expired token, drift, TLS failure -> :class:`BackendRefused` (78). Messages
  carry the HTTP status and path only, never a token or a secret value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from claude_auth_sync.errors import ConfigurationError, BackendConflict, BackendError, BackendRefused, BackendUnavailable
from claude_auth_sync.model import OAuth, BackendHealth, StoredCopy

from .errors import RETRY_LATER, error_text, is_vault_failure, vault_error
from .tls_probe import tls_second_opinion
from .address import AddressRefused, Origin, display_address, parse_vault_addr, proxy_for, redirect_origin
from .policy import locate
from .settings import VaultSettings
from .token_file import PROVISION, read_token_file, token_file_facts
from .client_cert import client_cert_facts, client_cert_pair

if TYPE_CHECKING:
    import hvac
    import requests

__all__ = ["VaultBackend", "check_address", "is_plain_http_to_loopback"]

OAUTH_KEY = "claudeAiOauth"
MAX_REDIRECTS = 5


ADDRESS_REMEDY = ("set vault.addr (or CLAUDE_AUTH_SYNC_VAULT__ADDR / VAULT_ADDR) to https://host:port: no user:password@, "
                  "no backslash, query or fragment, no spaces")


def check_address(addr: str | None, allow_insecure_http: bool) -> str:
    """The Vault address, unchanged, once it is safe to connect to.

    Refuses (ConfigurationError, exit 78) a missing address (``vault_addr_missing``), one that is
    ambiguous or carries credentials (``vault_addr_invalid``, see :mod:`.address`: judged by both
    URL parsers requests uses), and plain http to a non-loopback host unless
    ``allow_insecure_http`` (``vault_insecure_http``). No message quotes a refused address.
    """
    if not addr:
        raise ConfigurationError(
            "no Vault address configured", reason="vault_addr_missing",
            remedy="set vault.addr in /etc/claude-auth-sync/config.toml (or CLAUDE_AUTH_SYNC_VAULT__ADDR / VAULT_ADDR)",
        )
    try:
        origin = parse_vault_addr(addr)
    except AddressRefused as err:
        raise ConfigurationError(f"invalid Vault address: {err}", reason="vault_addr_invalid", remedy=ADDRESS_REMEDY) from None
    if _insecure(origin, allow_insecure_http):
        raise ConfigurationError(
            f"refusing plain http to non-loopback Vault {origin.host}: the token would cross the network unencrypted",
            reason="vault_insecure_http", remedy="use https (set VAULT_CACERT for a private CA), or set vault.allow_insecure_http = true",
        )
    return addr


def _insecure(origin: Origin, allow_insecure_http: bool) -> bool:
    return origin.scheme == "http" and not allow_insecure_http and not origin.is_loopback


class _UnsafeRedirect(Exception):
    """A redirect the agent refuses to follow; raised before the token is sent there.

    ``host`` is set only for a well-formed plain-http target off loopback; ``problem`` describes an
    ambiguous target without quoting it."""

    def __init__(self, host: str | None, problem: str | None = None) -> None:
        super().__init__(host, problem)
        self.host = host
        self.problem = problem


def is_plain_http_to_loopback(url: str | bytes | None) -> bool:
    """True for a plain-http URL to a loopback host: sent directly, never through a proxy from the
    environment (plain http is allowed there only because the token stays on this machine)."""
    if not isinstance(url, str):
        return False
    parts = urlparse(url)
    return parts.scheme == "http" and Origin(parts.scheme, (parts.hostname or "").lower(), None).is_loopback


def _check_redirect(request_url: str, location: str, allow_insecure_http: bool) -> None:
    try:
        origin = redirect_origin(request_url, location)
    except AddressRefused as err:
        raise _UnsafeRedirect(None, str(err)) from None
    if _insecure(origin, allow_insecure_http):
        raise _UnsafeRedirect(origin.host)


def _no_netrc(request: Any) -> Any:
    """requests' auth hook that adds nothing (its presence disables the ``~/.netrc`` lookup)."""
    return request


def _make_session(verify: bool | str, allow_insecure_http: bool, cert: tuple[str, str] | None = None) -> requests.Session:
    """A requests session that follows a standby's redirect only to an acceptable address."""
    import requests

    class _VaultSession(requests.Session):
        def get_redirect_target(self, resp: requests.Response) -> str | None:
            try:
                target = super().get_redirect_target(resp)
            except UnicodeError:  # a Location header that is not UTF-8
                raise _UnsafeRedirect(None, "a redirect target that is not UTF-8") from None
            if target:
                _check_redirect(resp.url, target, allow_insecure_http)
            return target

        def merge_environment_settings(self, url: str | bytes | None, proxies: Any, *args: Any) -> dict[str, Any]:
            settings: dict[str, Any] = super().merge_environment_settings(url, proxies, *args)
            if is_plain_http_to_loopback(url):
                settings["proxies"] = {}
            return settings

        def rebuild_proxies(self, prepared_request: requests.PreparedRequest, proxies: Any) -> dict[str, str]:
            rebuilt: dict[str, str] = super().rebuild_proxies(prepared_request, proxies)
            if is_plain_http_to_loopback(prepared_request.url):
                prepared_request.headers.pop("Proxy-Authorization", None)
                return {}
            return rebuilt

    session = _VaultSession()
    # hvac prefers a given session's own ``verify`` over its ``verify`` argument: set it here.
    session.verify = verify
    session.cert = cert  # the client certificate (mTLS), also for a probe outside hvac (tls_probe)
    # An explicit (no-op) auth keeps requests from adding ~/.netrc credentials for the Vault host:
    # the token header is the only credential that goes to Vault.
    session.auth = _no_netrc
    session.max_redirects = MAX_REDIRECTS

    def remember_index(resp: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        # Standbys that serve reads from their own replica (OpenBao 2.7+ integrated storage) can
        # lag the active node. Every later request carries the newest storage index seen (the
        # renew-self answer has one) and asks a standby that has not reached it to forward the
        # request to the active node, so "the latest version" really is the latest.
        index = resp.headers.get("X-Vault-Index")
        if index and len(index) <= 4096 and index.isascii() and index.isprintable():
            session.headers["X-Vault-Index"] = index
            session.headers["X-Vault-Inconsistent"] = "forward-active-node"
        return resp

    session.hooks["response"].append(remember_index)
    return session


class VaultBackend:
    """One user's secret ``<mount>/<path_template>`` in KV v2 (:func:`.policy.locate`: per user, or per
    host and user when the template carries ``{host}``)."""

    def __init__(self, settings: VaultSettings, user: str, uid: int, token_file: Path) -> None:
        self.settings = settings
        self.user = user
        self.uid = uid
        self.token_file = token_file
        self.location = locate(user, settings)
        self.relative_path, self.data_path, self.metadata_path = (
            self.location.relative, self.location.data, self.location.metadata)
        self._client: hvac.Client | None = None
        # The version number of a latest version that exists but was deleted/destroyed (read_latest
        # saw a 404 carrying metadata): a new version must name it as its check-and-set value.
        self._absent_version: int | None = None

    # -- Backend ---------------------------------------------------------------------

    def renew(self) -> BackendHealth:
        answer = self._call("renew-self", lambda c: c.auth.token.renew_self())
        auth = answer.get("auth") or {}
        policies = {
            *(auth.get("token_policies") or []), *(auth.get("identity_policies") or []), *(auth.get("policies") or []),
        }
        self._check_policies(policies)
        ttl = auth.get("lease_duration")
        return BackendHealth(ttl_s=int(ttl) if ttl is not None else None,
                           details={"policies": sorted(policies), "renewable": auth.get("renewable")})

    def read_latest(self) -> StoredCopy | None:
        answer = self._call("read", self._read_request)
        if answer.get("_absent"):
            version = answer.get("version")
            self._absent_version = version if isinstance(version, int) and version > 0 else None
            return None
        self._absent_version = None
        data = (answer.get("data") or {}).get("data") or {}
        metadata = (answer.get("data") or {}).get("metadata") or {}
        oauth = data.get(OAUTH_KEY) if isinstance(data, dict) else None
        version = metadata.get("version")
        if not isinstance(oauth, dict):
            # A damaged secret: an empty object never equals the local one (so the next healthy
            # cycle writes a new version over it) and is never restored (it has no tokens).
            oauth = {}
        return StoredCopy(oauth=oauth, version=version, updated=metadata.get("created_time"))

    def write(self, oauth: OAuth, *, expected_version: int | None) -> int | None:
        _check_payload(oauth)
        payload = {OAUTH_KEY: dict(oauth)}
        cas = expected_version if expected_version is not None else (self._absent_version or 0)
        answer = self._call(
            "write", lambda c: c.secrets.kv.v2.create_or_update_secret(
                path=self.relative_path, secret=payload, cas=cas, mount_point=self.settings.mount),
        )
        self._absent_version = None
        version = (answer.get("data") or {}).get("version")
        return version if isinstance(version, int) else None

    def describe(self) -> dict[str, Any]:
        """Token facts (lookup-self) and the secret's metadata, never a value. Never raises a BackendError."""
        facts: dict[str, Any] = {
            "addr": display_address(self.settings.addr),
            "path": f"{self.settings.mount}/{self.relative_path}",
            "token_file": {"path": str(self.token_file), **token_file_facts(self.token_file)},
            "namespace": self.settings.namespace,
            "proxy": proxy_for(self.settings.addr),
            "client_cert": client_cert_facts(self.settings.client_cert, self.settings.client_key, uid=self.uid),
        }
        try:
            token = self._call("lookup-self", lambda c: c.auth.token.lookup_self()).get("data") or {}
        except (BackendError, ConfigurationError) as err:
            facts["token"] = {"error": err.message, "reason": err.reason, "remedy": err.remedy}
            return facts
        policies = set(token.get("policies") or []) | set(token.get("identity_policies") or [])
        facts["token"] = {
            "ttl_s": token.get("ttl"), "period_s": token.get("period"), "policies": sorted(policies),
            "renewable": token.get("renewable"), "expire_time": token.get("expire_time"),
            "display_name": token.get("display_name"), "orphan": token.get("orphan"),
            "drifted": policies != set(self.location.policies),
        }
        try:
            meta = self._call("metadata", lambda c: _absent_on_404(lambda: c.secrets.kv.v2.read_secret_metadata(
                path=self.relative_path, mount_point=self.settings.mount)))
        except BackendError as err:
            facts["secret"] = {"error": err.message, "reason": err.reason}
        else:
            data = {} if meta.get("_absent") else (meta.get("data") or {})
            facts["secret"] = {
                "exists": True, "current_version": data.get("current_version"),
                "oldest_version": data.get("oldest_version"), "created_time": data.get("created_time"),
                "updated_time": data.get("updated_time"), "versions_kept": len(data.get("versions") or {}),
                "max_versions": data.get("max_versions"),
            } if data else {"exists": False}
        return facts

    # -- internals ---------------------------------------------------------------------------

    def _read_request(self, c: hvac.Client) -> Any:
        return _absent_on_404(lambda: c.secrets.kv.v2.read_secret_version(
            path=self.relative_path, mount_point=self.settings.mount, raise_on_deleted_version=True))

    def _check_policies(self, policies: set[str]) -> None:
        expected = set(self.location.policies)
        if "root" in policies:
            raise BackendRefused("the Vault token carries the root policy; the agent refuses to use it",
                               reason="vault_token_root", remedy=PROVISION)
        if policies != expected:
            raise BackendRefused(
                f"the Vault token's policies drifted: {sorted(policies)} instead of {sorted(expected)}",
                reason="vault_token_drift", remedy=PROVISION,
            )

    def client(self) -> hvac.Client:
        if self._client is None:
            import hvac

            addr = check_address(self.settings.addr, self.settings.allow_insecure_http)
            verify: bool | str = True
            if self.settings.cacert is not None:
                if not self.settings.cacert.exists():
                    raise ConfigurationError(
                        f"the Vault CA bundle {self.settings.cacert} does not exist", reason="vault_cacert_missing",
                        remedy="point VAULT_CACERT (or vault.cacert) at the CA bundle that signed Vault's certificate",
                    )
                verify = str(self.settings.cacert)
            # The client certificate (mTLS) is checked like the token file (:mod:`.client_cert`).
            cert = client_cert_pair(self.settings.client_cert, self.settings.client_key, uid=self.uid, role="agent")
            token = read_token_file(self.token_file, self.uid)
            # token, url, verify, cert and namespace are explicit, so hvac reads neither VAULT_TOKEN nor
            # ~/.vault-token nor VAULT_ADDR/VAULT_CACERT/VAULT_CLIENT_CERT itself (an empty cert is none).
            self._client = hvac.Client(url=addr, token=token, verify=verify, timeout=self.settings.timeout,
                                       cert=cert or (), namespace=self.settings.namespace, allow_redirects=True,
                                       session=_make_session(verify, self.settings.allow_insecure_http, cert))
        return self._client

    def _where(self, what: str) -> str:
        path = {
            "renew-self": "auth/token/renew-self", "lookup-self": "auth/token/lookup-self", "metadata": self.metadata_path,
        }.get(what, self.data_path)
        return f"Vault {what} ({path})"

    def _target(self, err: Exception) -> str:
        """The address that could not be reached, naming a standby's redirect to a leader that is gone."""
        configured = self.settings.addr or ""
        url = getattr(getattr(err, "request", None), "url", None) or ""
        parsed, mine = urlparse(url), urlparse(configured)
        if parsed.netloc and parsed.netloc != mine.netloc:
            return (f"{parsed.scheme}://{parsed.netloc} (where {configured} redirected us: a standby naming an "
                    "active node that is gone; normal during a leader election)")
        return configured

    def _call(self, what: str, request: Any) -> dict[str, Any]:
        """Run one hvac request, translating every failure into a classified BackendError
        (:func:`.errors.vault_error`, shared with the provisioner's admin client)."""
        client = self.client()
        where = self._where(what)
        try:
            answer = request(client)
        except _UnsafeRedirect as err:
            raise BackendRefused(_redirect_refusal(where, err), reason="vault_insecure_redirect",
                               remedy="set the Vault cluster's api_addr to an https address") from None
        except Exception as err:
            if not is_vault_failure(err):
                raise
            if what == "write" and _is_cas_conflict(err):
                raise BackendConflict(f"{where}: another writer stored a new version first (check-and-set)",
                                    reason="vault_cas_conflict", remedy="nothing: the next run compares again") from None
            err = tls_second_opinion(err, client.adapter.session, client.adapter.base_uri, self.settings.timeout)
            raise vault_error(err, where, target=self._target(err),
                              client_cert=self.settings.client_cert is not None) from None
        if not isinstance(answer, dict):
            # hvac hands back the raw response for anything but a JSON 200 (a 204, a 3xx without
            # Location, a proxy's HTML page): never a Vault answer we can use.
            status = getattr(answer, "status_code", "?")
            raise BackendUnavailable(f"{where}: unexpected answer (HTTP {status}, not Vault JSON)",
                                   reason="vault_unavailable", remedy=RETRY_LATER)
        return answer


def _is_cas_conflict(err: Exception) -> bool:
    """A 400 whose error names the check-and-set: another writer stored a version first."""
    import hvac.exceptions

    return isinstance(err, hvac.exceptions.InvalidRequest) and "check-and-set" in error_text(err)


def _redirect_refusal(where: str, err: _UnsafeRedirect) -> str:
    if err.problem:
        return f"{where}: Vault redirected to an address the agent refuses ({err.problem}); the token was not sent there"
    return f"{where}: Vault redirected to plain http on {err.host}; the token would cross the network unencrypted"


def _absent_on_404(request: Any) -> Any:
    """Run ``request``; a 404 becomes ``{"_absent": True, "version": <latest version or None>}``."""
    import hvac.exceptions

    try:
        return request()
    except hvac.exceptions.InvalidPath as err:
        body = err.json if isinstance(err.json, dict) else {}
        metadata = ((body.get("data") or {}) if isinstance(body.get("data"), dict) else {}).get("metadata") or {}
        return {"_absent": True, "version": metadata.get("version") if isinstance(metadata, dict) else None}


def _check_payload(oauth: OAuth) -> None:
    """Only a complete claudeAiOauth object is ever stored (never a whole credentials document)."""
    if not isinstance(oauth, Mapping):
        raise BackendRefused("refusing to store a non-object as claudeAiOauth", reason="vault_payload_refused")
    if OAUTH_KEY in oauth or "mcpOAuth" in oauth:
        raise BackendRefused("refusing to store a whole credentials document: only claudeAiOauth goes to Vault",
                           reason="vault_payload_refused")
    for key in ("accessToken", "refreshToken"):
        value = oauth.get(key)
        if not isinstance(value, str) or not value:
            raise BackendRefused(f"refusing to store an OAuth object without {key}", reason="vault_payload_refused")
