"""Review of admin/unit_environ.unit_environ: every variable the agent's Vault client reads from
its environment is the unit's, never root's shell.

requests (the agent's session trusts its environment) takes a proxy from any variable whose name
ends in ``_proxy`` in any case (``Https_Proxy``: urllib's getproxies_environment lower-cases the
name) and a CA bundle from ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` when ``vault.cacert`` is unset.
Only the exact spellings of the proxy variables (HTTPS_PROXY, https_proxy, ...) were handled, so root's ``Https_Proxy`` or
``REQUESTS_CA_BUNDLE=/root/ca.pem`` reached every user's fleet child (a proxy or an unreadable
bundle the unit never has), and the file's ``Https_Proxy`` (which the unit gets) was not applied.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from claude_auth_sync.admin.unit_environ import unit_environ
from claude_auth_sync.plugin_manager import get_plugin_manager


def sections():  # type: ignore[no-untyped-def]
    return get_plugin_manager().settings_sections()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_requests_really_reads_a_mixed_case_proxy_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("Https_Proxy", "http://127.0.0.1:9")
    assert requests.utils.get_environ_proxies("https://vault.example") == {"https": "http://127.0.0.1:9"}


@pytest.mark.parametrize("name", ["Https_Proxy", "HTTPS_Proxy", "All_Proxy", "No_Proxy", "SOCKS_PROXY",
                                  "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_roots_transport_variables_never_reach_the_child(tmp_path: Path, name: str) -> None:
    unit = unit_environ(sections(), {"PATH": "/usr/bin", name: "/root/only"}, tmp_path / "absent")
    assert unit.environ == {"PATH": "/usr/bin"}
    assert unit.dropped == [name]


@pytest.mark.parametrize("name", ["Https_Proxy", "no_Proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_files_transport_variables_reach_the_child_as_they_reach_the_unit(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "default", f"{name}=http://unit-proxy.example:3128\n")
    unit = unit_environ(sections(), {"PATH": "/usr/bin"}, path)
    assert unit.environ == {"PATH": "/usr/bin", name: "http://unit-proxy.example:3128"}
    assert unit.problems == []
