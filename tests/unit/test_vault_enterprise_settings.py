"""Units of issue 14 item 5 (enterprise Vaults): the namespace setting, the client certificate's
file checks (real PEM files made by the real ``openssl``), and how TLS failures are classified.

The listener that really requires client certificates, namespaces and the proxy are in
``tests/integration/test_vault_enterprise_*.py``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import requests

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.model import UserIdentity
from claude_auth_sync.plugins import backend_vault
from claude_auth_sync.plugins.backend_vault.client_cert import (
    client_cert_facts,
    client_cert_pair,
    key_file_problem,
    resolve_path,
    with_resolved_paths,
)
from claude_auth_sync.plugins.backend_vault.errors import client_cert_refusal, vault_error
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings
from claude_auth_sync.settings import load_settings
from tests.support.vault_tls import Pki, make_pki

UID = os.getuid()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- namespace -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "kept"), [
    ("team-a", "team-a"), ("team-a/", "team-a"), ("/org/team_b", "org/team_b"), ("a.b/c-d", "a.b/c-d"),
    ("", None), ("/", None), (None, None),
])
def test_namespace_forms(given: str | None, kept: str | None) -> None:
    assert VaultSettings(namespace=given).namespace == kept


@pytest.mark.parametrize("hostile", [
    "team a", "team\na", "../admin", "team/../root", "a//b", "team?x", "team#x", "t\u00e9am", "\x1b[31mred",
    "a/" * 20 + "b", "x" * 200,
])
def test_hostile_namespaces_are_refused_without_echoing_them(hostile: str) -> None:
    with pytest.raises(ValueError) as caught:
        VaultSettings(namespace=hostile)
    assert "separated by '/'" in str(caught.value)


def test_standard_variables_fill_the_section_and_ours_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("CLAUDE_AUTH_SYNC_")]:
        monkeypatch.delenv(name)
    user = UserIdentity(name="alice", uid=UID, gid=os.getgid(), home=tmp_path)
    environ = {"VAULT_NAMESPACE": "team-a", "VAULT_CLIENT_CERT": "/etc/pki/c.pem", "VAULT_CLIENT_KEY": "/etc/pki/k.pem"}
    vault = load_settings(backend_vault.cas_settings_sections(), user, system_file=tmp_path / "none.toml",
                          environ=environ).section("vault")
    assert (vault.namespace, vault.client_cert, vault.client_key) == ("team-a", Path("/etc/pki/c.pem"), Path("/etc/pki/k.pem"))
    monkeypatch.setenv("CLAUDE_AUTH_SYNC_VAULT__NAMESPACE", "team-b")
    vault = load_settings(backend_vault.cas_settings_sections(), user, system_file=tmp_path / "none.toml",
                          environ=environ).section("vault")
    assert vault.namespace == "team-b"


# -- client certificate files ----------------------------------------------------------------------


def test_relative_paths_are_under_the_config_dir(tmp_path: Path) -> None:
    assert resolve_path(Path("c.pem"), tmp_path) == tmp_path / "c.pem"
    assert resolve_path(Path("/abs/c.pem"), tmp_path) == Path("/abs/c.pem")
    assert resolve_path(None, tmp_path) is None
    settings = with_resolved_paths(VaultSettings(client_cert=Path("c.pem"), client_key=Path("k.pem")), tmp_path)
    assert (settings.client_cert, settings.client_key) == (tmp_path / "c.pem", tmp_path / "k.pem")


@pytest.mark.parametrize(("role", "owner", "mode", "problem"), [
    ("agent", "me", 0o600, None), ("agent", "me", 0o400, None), ("agent", "me", 0o640, "mode"),
    ("agent", "me", 0o604, "mode"), ("agent", "other", 0o600, "owner"),
    ("provisioner", "root", 0o600, None), ("provisioner", "root", 0o640, None), ("provisioner", "root", 0o644, "mode"),
    ("provisioner", "other", 0o600, "owner"),
])
def test_key_file_rules(role: str, owner: str, mode: int, problem: str | None) -> None:
    uid = {"me": 4242, "root": 0, "other": 5151}[owner]
    st = os.stat_result((0o100000 | mode, 0, 0, 1, uid, 0, 10, 0, 0, 0))
    assert key_file_problem(st, 4242, role) == problem  # type: ignore[arg-type]


def copy_pair(pki: Pki, tmp_path: Path, cert: Path | None = None, key: Path | None = None, mode: int = 0o600) -> tuple[Path, Path]:
    c, k = tmp_path / "c.pem", tmp_path / "k.pem"
    c.write_bytes((cert or pki.client_crt).read_bytes())
    k.write_bytes((key or pki.client_key).read_bytes())
    k.chmod(mode)
    return c, k


def test_a_good_pair_is_handed_over_as_paths(pki: Pki, tmp_path: Path) -> None:
    c, k = copy_pair(pki, tmp_path)
    assert client_cert_pair(c, k, uid=UID, role="agent") == (str(c), str(k))
    assert client_cert_pair(None, None, uid=UID, role="agent") is None
    assert client_cert_facts(c, k, uid=UID) == {"configured": True, "cert": str(c), "key": str(k)}
    assert client_cert_facts(None, None, uid=UID) == {"configured": False}


def refusal(cert: Path | None, key: Path | None, role: str = "agent") -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        client_cert_pair(cert, key, uid=UID, role=role)  # type: ignore[arg-type]
    assert caught.value.exit_code == 78
    return caught.value


def test_each_bad_file_gets_its_own_reason_and_fix(pki: Pki, tmp_path: Path) -> None:
    c, k = copy_pair(pki, tmp_path)
    assert refusal(c, None).reason == "vault_client_cert_incomplete"
    assert "VAULT_CLIENT_KEY" in str(refusal(c, None))
    assert refusal(tmp_path / "absent.pem", k).reason == "vault_client_cert_missing"
    assert refusal(c, tmp_path / "absent.key").reason == "vault_client_cert_missing"
    assert refusal(tmp_path, k).reason == "vault_client_cert_invalid"  # a directory
    k.chmod(0o644)
    err = refusal(c, k)
    assert (err.reason, err.remedy) == ("vault_client_key_unsafe", f"chmod 600 {k}")
    k.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(k)
    assert refusal(c, link).reason == "vault_client_key_unsafe"
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    assert refusal(c, fifo).reason == "vault_client_key_unsafe"  # opened non-blocking, never read


def test_a_mismatched_or_broken_pair_never_quotes_the_files(pki: Pki, tmp_path: Path) -> None:
    c, k = copy_pair(pki, tmp_path, key=pki.stranger_key)
    err = refusal(c, k)
    assert err.reason == "vault_client_cert_invalid" and "KEY_VALUES_MISMATCH" in err.message
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\n\x1b[31mnot base64\n-----END CERTIFICATE-----\n")
    err = refusal(tmp_path / "garbage.pem", k)
    assert err.reason == "vault_client_cert_invalid" and "\x1b" not in str(err) and "BEGIN" not in str(err)


def test_an_encrypted_key_is_refused_instead_of_prompting(pki: Pki, tmp_path: Path) -> None:
    import subprocess

    c, _ = copy_pair(pki, tmp_path)
    encrypted = tmp_path / "enc.key"
    subprocess.run(["openssl", "pkey", "-in", str(pki.client_key), "-aes256", "-passout", "pass:unit-pass",
                    "-out", str(encrypted)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    encrypted.chmod(0o600)
    err = refusal(c, encrypted)
    assert err.reason == "vault_client_cert_invalid" and "encrypted" in err.message and "unit-pass" not in str(err)


def test_the_provisioner_accepts_a_root_key_readable_by_its_group(pki: Pki, tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.fail("the tests run as root (the provisioner's rules are about root-owned keys)")
    c, k = copy_pair(pki, tmp_path, mode=0o640)
    assert client_cert_pair(c, k, uid=0, role="provisioner") == (str(c), str(k))
    assert refusal(c, k, role="agent").reason == "vault_client_key_unsafe"
    k.chmod(0o644)
    assert refusal(c, k, role="provisioner").remedy == f"chmod 640 {k}"


# -- TLS failures ----------------------------------------------------------------------------------


def handshake_error(pki: Pki, client_cert: tuple[Path, Path] | None) -> ssl.SSLError:
    """A real TLS 1.3 handshake in memory against a server that requires client certificates; the
    client-side SSLError it ends with (the server's alert)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_crt, pki.server_key)
    server_ctx.load_verify_locations(pki.ca_crt)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(pki.ca_crt)
    if client_cert:
        client_ctx.load_cert_chain(*client_cert)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(20):
        for side in (client, server):
            try:
                if side is client and client.version():
                    client.read(1)  # the client's handshake is done: listen for the server's verdict
                else:
                    side.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as err:
                if side is client:
                    return err
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    raise AssertionError("the handshake ended without an error")


def as_requests_error(err: BaseException) -> requests.exceptions.SSLError:
    """Wrapped as requests wraps urllib3 wraps ssl."""
    try:
        try:
            raise err
        except ssl.SSLError as inner:
            raise requests.exceptions.SSLError(inner) from inner
    except requests.exceptions.SSLError as outer:
        return outer


def test_the_servers_alert_decides_the_reason(pki: Pki) -> None:
    missing = as_requests_error(handshake_error(pki, None))
    assert vault_error(missing, "Vault renew-self", target="x").reason == "vault_client_cert_required"
    stranger = as_requests_error(handshake_error(pki, (pki.stranger_crt, pki.stranger_key)))
    refused = vault_error(stranger, "Vault renew-self", target="x", client_cert=True)
    assert refused.reason == "vault_client_cert_refused" and refused.exit_code == 78


def test_free_text_never_triggers_the_client_certificate_advice() -> None:
    """A URL or message that merely contains an alert's name (a user called bad_certificate) is not an alert."""
    lookalike = as_requests_error(ssl.SSLError(1, "GET /v1/secret/data/bad_certificate CERTIFICATE_REQUIRED"))
    assert client_cert_refusal(lookalike, "x", False) is None
    assert vault_error(lookalike, "x", target="y").reason == "vault_tls"


def test_a_connection_closed_mid_request_names_both_suspects() -> None:
    closed = as_requests_error(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    without = vault_error(closed, "Vault renew-self", target="x")
    assert without.reason == "vault_tls_closed" and "vault.client_cert" in str(without) and "proxy" in str(without)
    assert vault_error(closed, "Vault renew-self", target="x", client_cert=True).reason == "vault_client_cert_refused"


# -- the shipped /etc/default/claude-auth-sync example ---------------------------------------------


def test_every_variable_of_the_shipped_environment_file_is_one_the_code_reads() -> None:
    """deploy/default/claude-auth-sync documents only variables that do something, in systemd's syntax."""
    import re

    from claude_auth_sync.plugins.probe_inference.probe import is_passed_to_probe

    example = Path(__file__).resolve().parents[2] / "deploy" / "default" / "claude-auth-sync"
    text = example.read_text(encoding="ascii")
    assignments = re.findall(r"^#?([A-Z][A-Z0-9_]*)=(\S*)$", text, re.MULTILINE)
    names = {name for name, _value in assignments}
    (section,) = backend_vault.cas_settings_sections()
    vault_variables = set(section.standard_env.values())
    assert names >= {"HTTPS_PROXY", "NO_PROXY", "VAULT_NAMESPACE", "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY"}
    for name in names:
        assert name in vault_variables or is_passed_to_probe(name), name
        assert "TOKEN" not in name
    for line in text.splitlines():  # systemd's syntax: comments on their own line, no "export"
        assert not line.strip() or line.startswith("#") or re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line), line


# -- the proxy diagnose names ------------------------------------------------------------------------


@pytest.mark.parametrize(("addr", "proxies", "shown"), [
    ("https://vault.example:8200", {"https": "http://proxy.example:3128"}, "http://proxy.example:3128"),
    ("https://vault.example:8200", {"all": "socks5://proxy.example:1080"}, "socks5://proxy.example:1080"),
    ("https://vault.example:8200", {"https": "http://user:S3cret-pw@proxy.example:3128"}, "http://proxy.example:3128"),
    ("https://vault.example:8200", {"https": "http://[fd00::1]:3128"}, "http://[fd00::1]:3128"),
    ("https://vault.example:8200", {"http": "http://proxy.example:3128"}, None),  # not for https
    ("https://vault.example:8200", {}, None),
    ("http://127.0.0.1:8200", {"http": "http://proxy.example:3128", "all": "http://p:1"}, None),  # loopback http: never
    ("https://user:pw@vault.example", {"https": "http://proxy.example:3128"}, None),  # refused address: no lookup
    ("https://vault.example:8200", {"https": "http://\x1b[31mevil:3128"}, "(a proxy whose address cannot be read)"),
])
def test_the_proxy_is_named_without_credentials(addr: str, proxies: dict[str, str], shown: str | None) -> None:
    from claude_auth_sync.plugins.backend_vault.address import proxy_for

    assert proxy_for(addr, proxies) == shown


# -- the second opinion after a TLS EOF --------------------------------------------------------------


class _RecordingSession:
    """Stands in for the client's requests session: records what the probe sends, fails like a
    listener that requires a certificate (the alert is read this time)."""

    def __init__(self, answer: BaseException | None, proxies: dict[str, str]) -> None:
        self.answer, self.proxies, self.trust_env = answer, proxies, False
        self.verify, self.cert = True, None
        self.calls: list[tuple[str, dict[str, object]]] = []

    def get(self, url: str, **kwargs: object) -> None:
        self.calls.append((url, kwargs))
        if self.answer is not None:
            raise self.answer


def test_the_second_opinion_is_one_tokenless_health_read_and_only_after_an_eof(pki: Pki) -> None:
    from claude_auth_sync.plugins.backend_vault.tls_probe import tls_second_opinion

    alert = as_requests_error(handshake_error(pki, None))
    eof = as_requests_error(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    proxied = {"https": "http://proxy.example:3128"}  # no bare handshake to a proxied address
    session = _RecordingSession(alert, proxied)
    assert tls_second_opinion(eof, session, "https://vault.example:8200/", 5.0) is alert
    assert session.calls == [("https://vault.example:8200/v1/sys/health", {"timeout": 5.0, "allow_redirects": False})]
    quiet = _RecordingSession(None, proxied)
    assert tls_second_opinion(eof, quiet, "https://vault.example:8200", 5.0) is eof  # nothing better: the first error
    untouched = _RecordingSession(alert, proxied)
    verify_failed = as_requests_error(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    assert tls_second_opinion(verify_failed, untouched, "https://vault.example:8200", 5.0) is verify_failed
    assert untouched.calls == []
