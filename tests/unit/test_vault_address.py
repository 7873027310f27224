"""Hostile Vault addresses and redirect targets (issue 11, item 1), without a server.

The address is judged by the parsers that will connect (urllib3's ``parse_url`` builds the request
URL, ``urllib.parse`` picks the connection's host); anything they disagree on, and anything with
userinfo, a backslash, whitespace or control characters, is refused before any connection, and no
error text quotes the refused address. Connections are blocked at the transport (the requests
adapter and ``socket.create_connection``), so no test here can reach 10.x or any other host.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from claude_auth_sync.errors import ConfigurationError, BackendRefused
from claude_auth_sync.model import ExitCode, UserIdentity
from claude_auth_sync.plugins import backend_vault
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.plugins.backend_vault.store import VaultBackend, _make_session, check_address
from claude_auth_sync.settings import load_settings

SECRET = "Pa55-SECRET-word"

# (address, why it is hostile); each is refused whatever allow_insecure_http says.
HOSTILE = [
    ("http://10.1.2.3\\@127.0.0.1:18300", "backslash: urllib3 connects to 10.1.2.3, urllib sees 127.0.0.1"),
    ("http://127.0.0.1:18300\\@10.1.2.3", "backslash the other way round"),
    ("http://127.0.0.1/\\@10.0.0.1", "backslash in the path"),
    ("https://vault.example.com\\.evil.example", "backslash in the host"),
    (f"http://u:{SECRET}@127.0.0.1:18300", "userinfo with a password"),
    (f"https://{SECRET}@vault.example.com", "userinfo, user only"),
    ("http://127.0.0.1@10.0.0.1", "userinfo that looks like loopback"),
    ("http://1.2.3.4;@127.0.0.1", "userinfo with a semicolon"),
    ("http://127.0.0.1:18300#@10.0.0.1", "fragment hiding an @"),
    ("http://127.0.0.1:18300?@10.0.0.1", "query hiding an @"),
    ("http://127.0.0.1:18300/@10.0.0.1", "@ in the path"),
    ("https://vault.example.com/v1?x=1", "a query"),
    ("https://vault.example.com/#frag", "a fragment"),
    ("https://%31%30.0.0.1", "percent-encoded host: urllib3 decodes it to 10.0.0.1"),
    ("http://127.0.0.1%2540x", "percent-encoded @ in the host"),
    ("http://127.0.0.1:%38%32", "percent-encoded port"),
    ("http://[::1%25eth0]:8200", "IPv6 zone identifier"),
    ("http://::1:8200", "IPv6 without brackets"),
    ("http://[::1]x:8200", "junk after the IPv6 brackets"),
    ("http://[127.0.0.1]:8200", "IPv4 in brackets"),
    ("http://127.0.0.1\t:8200", "tab: urllib strips it, urllib3 refuses"),
    ("http://127.0.0.1:8200\n", "trailing newline"),
    ("http://127.0.0.1:8200\r\nX-Injected: 1", "CRLF"),
    (" http://127.0.0.1:8200", "leading space"),
    ("http://127.0.0.1:8200 ", "trailing space"),
    ("http://127.0.0.1:8200/\x00", "NUL"),
    ("http://127.0.0.1:8200/\x1b]8;;x\x07", "terminal escape"),
    ("http://bücher.example", "IDNA host not in xn-- form"),
    ("http://127.0.0.1\u3002evil.example", "ideographic full stop"),
    ("https://vault\u2024example.com", "one-dot leader"),
    ("http:/127.0.0.1:8200", "one slash"),
    ("http:127.0.0.1:8200", "no slashes"),
    ("http://127.0.0.1:0", "port 0"),
    ("http://127.0.0.1:", "empty port"),
    ("http://127.0.0.1:+80", "signed port"),
    ("http://", "no host"),
]


def _refusal(addr: str, allow_insecure_http: bool = True) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as err:
        check_address(addr, allow_insecure_http=allow_insecure_http)
    return err.value


def _quotes(text: str, addr: str) -> bool:
    """True when text holds the address, its userinfo or the password."""
    userinfo = addr.split("//", 1)[-1].split("@", 1)[0] if "@" in addr else None
    return addr.strip() in text or SECRET in text or (userinfo is not None and userinfo in text)


@pytest.mark.parametrize(("addr", "why"), HOSTILE, ids=[why for _, why in HOSTILE])
def test_hostile_vault_addresses_are_refused_without_quoting_them(addr: str, why: str) -> None:
    for allow in (True, False):
        refused = _refusal(addr, allow)
        assert (refused.reason, refused.exit_code) == ("vault_addr_invalid", ExitCode.CONFIG), why
        assert refused.remedy
        assert not _quotes(f"{refused} {refused.args!r} {refused.remedy}", addr)


@pytest.mark.parametrize(("addr", "why"), HOSTILE, ids=[why for _, why in HOSTILE])
def test_hostile_addresses_never_enter_the_settings(
    addr: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused when the settings load, so no status line, JSON or diagnose can ever show them."""
    with pytest.raises(ValueError):
        VaultSettings(addr=addr)
    for name in [k for k in os.environ if k.startswith("CLAUDE_AUTH_SYNC_")]:
        monkeypatch.delenv(name)
    user = UserIdentity(name="alice", uid=os.getuid(), gid=os.getgid(), home=tmp_path)

    def load(environ: dict[str, str]) -> ConfigurationError:
        with pytest.raises(ConfigurationError) as err:
            load_settings(backend_vault.cas_settings_sections(), user, system_file=tmp_path / "none.toml",
                          user_file=tmp_path / "none-either.toml", environ=environ)
        return err.value

    refusals = [load({"VAULT_ADDR": addr})]
    if "\x00" not in addr:  # the environment cannot hold a NUL
        monkeypatch.setenv("CLAUDE_AUTH_SYNC_VAULT__ADDR", addr)
        refusals.append(load({}))
    for refused in refusals:
        assert refused.exit_code == ExitCode.CONFIG
        assert not _quotes(f"{refused} {refused.args!r}", addr), why


@pytest.mark.parametrize(
    "addr",
    ["HTTP://LOCALHOST:8200", "Http://127.0.0.1:8200", "http://[0:0::1]:8200", "https://Vault.Example.com:8200",
     "https://vault.example.com/vault", "https://vault.example.com/", "https://xn--bcher-kva.example",
     "https://vault_1.corp.example:8200", "https://[2001:DB8::1]:8200"],
)
def test_unusual_but_unambiguous_addresses_are_accepted(addr: str) -> None:
    assert check_address(addr, allow_insecure_http=False) == addr
    assert VaultSettings(addr=addr).addr == addr


@pytest.mark.parametrize("addr", ["HTTP://10.0.0.5:8200", "http://[::ffff:10.0.0.5]", "http://127.1:8200",
                                  "http://0x7f.0.0.1", "http://2130706433"])
def test_uppercase_scheme_and_odd_ip_spellings_are_not_taken_for_loopback(addr: str) -> None:
    refused = _refusal(addr, allow_insecure_http=False)
    assert refused.reason == "vault_insecure_http"


@given(st.text(alphabet="\\@#?%:;/[] \t\n.0123456789abcdefhtp", max_size=40))
def test_any_accepted_address_is_read_alike_by_both_parsers(tail: str) -> None:
    from urllib.parse import urlsplit

    from urllib3.util import parse_url

    for addr in ("http://" + tail, "https://127.0.0.1" + tail):
        try:
            check_address(addr, allow_insecure_http=True)
        except ConfigurationError as err:
            assert "@" not in str(err) or "user:password@" in str(err)
            continue
        mine, theirs = urlsplit(addr), parse_url(addr)
        assert theirs.auth is None and "\\" not in addr and "@" not in addr
        assert (mine.hostname, mine.port) == ((theirs.host or "").strip("[]").lower(), theirs.port)


# ----------------------------------------------------------------------------- nothing is sent


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) every attempt to send or connect, at the transport level."""
    attempts: list[Any] = []

    def refuse_send(self: Any, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> None:
        attempts.append(request.url)
        raise AssertionError("a request was sent")

    def refuse_connect(address: Any, *args: Any, **kwargs: Any) -> None:
        attempts.append(address)
        raise AssertionError("a connection was opened")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", refuse_send)
    monkeypatch.setattr(socket, "create_connection", refuse_connect)
    return attempts


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault-token"
    path.write_text("s.address-test-token\n")
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize(("addr", "why"), HOSTILE[:12], ids=[why for _, why in HOSTILE[:12]])
def test_the_store_refuses_before_sending_anything(addr: str, why: str, tmp_path: Path, no_network: list[Any]) -> None:
    # model_construct skips the settings' own check: the store must not rely on it alone.
    settings = VaultSettings.model_construct(**{**VaultSettings().model_dump(), "addr": addr})
    store = VaultBackend(settings, "alice", os.getuid(), _token_file(tmp_path))
    for call in (store.renew, store.read_latest):
        with pytest.raises(ConfigurationError) as err:
            call()
        assert err.value.reason == "vault_addr_invalid" and not _quotes(str(err.value), addr)
    facts = store.describe()
    assert facts["token"]["reason"] == "vault_addr_invalid"
    assert not _quotes(repr(facts), addr)
    assert no_network == []


# ----------------------------------------------------------------------------- redirects


def _redirect(location: str, allow_insecure_http: bool = False, origin: str = "http://127.0.0.1:8200") -> str | None:
    session = _make_session(True, allow_insecure_http)
    response = requests.Response()
    response.status_code = 307
    response.headers["Location"] = location
    response.url = origin + "/v1/auth/token/renew-self"
    return session.get_redirect_target(response)


REFUSED_REDIRECTS = [
    "http://10.1.2.3\\@127.0.0.1:8200/v1/auth/token/renew-self",
    "http://127.0.0.1:8200\\@10.1.2.3/v1/x",
    f"http://u:{SECRET}@127.0.0.1:8200/v1/x",
    "http://127.0.0.1@10.0.0.1/v1/x",
    "https://%31%30.0.0.1/v1/x",
    "http://[::1%25eth0]:8200/v1/x",
    "//10.0.0.1:8200/v1/x",
    "http://10.0.0.1:8200/v1/x",
    "HTTP://203.0.113.7/v1/x",
    "http://127.0.0.1:8200/v1/x#@10.0.0.1",
    "/v1/x\\@10.0.0.1",
    "http://127.0.0.1:8200/v1/x\r\nX-Injected: 1",
    # http.client hands header bytes over as Latin-1: UTF-8 IDNA (re-decoded by requests) and non-UTF-8 bytes
    "http://bücher.example/v1/x".encode().decode("latin-1"),
    "http://b\xfccher.example/v1/x",
]


@pytest.mark.parametrize("location", REFUSED_REDIRECTS)
def test_hostile_redirect_targets_are_refused(location: str) -> None:
    from claude_auth_sync.plugins.backend_vault.store import _UnsafeRedirect

    with pytest.raises(_UnsafeRedirect) as err:
        _redirect(location)
    assert SECRET not in repr(err.value.args) and SECRET not in str(err.value.host)


@pytest.mark.parametrize(
    "location",
    ["/v1/auth/token/renew-self", "/v1/secret/data/x?version=3", "http://127.0.0.2:8201/v1/x",
     "https://vault-2.example:8200/v1/x", "https://[2001:db8::2]:8200/v1/x?a=%20b"],
)
def test_ordinary_redirect_targets_are_followed(location: str) -> None:
    assert _redirect(location) == location


def test_a_plain_http_redirect_off_loopback_needs_the_opt_in() -> None:
    assert _redirect("http://10.0.0.7:8200/v1/x", allow_insecure_http=True) == "http://10.0.0.7:8200/v1/x"
    from claude_auth_sync.plugins.backend_vault.store import _UnsafeRedirect

    with pytest.raises(_UnsafeRedirect):
        _redirect("http://u:p@10.0.0.7:8200/v1/x", allow_insecure_http=True)


def test_store_refused_for_a_hostile_redirect_names_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole request path: the first answer (from a patched adapter) redirects to a hostile
    target; the store raises BackendRefused and the adapter saw exactly one request."""
    sent: list[str] = []

    def answer(self: Any, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        sent.append(request.url or "")
        response = requests.Response()
        response.status_code, response.url, response.request = 307, request.url, request
        response.headers["Location"] = f"http://u:{SECRET}@10.1.2.3:8200/v1/auth/token/renew-self"
        response._content = b""
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", answer)
    store = VaultBackend(VaultSettings(addr="http://127.0.0.1:8200"), "alice", os.getuid(), _token_file(tmp_path))
    with pytest.raises(BackendRefused) as err:
        store.renew()
    assert err.value.reason == "vault_insecure_redirect" and err.value.exit_code == ExitCode.CONFIG
    assert SECRET not in str(err.value) and "10.1.2.3" not in str(err.value)
    assert sent == ["http://127.0.0.1:8200/v1/auth/token/renew-self"]
