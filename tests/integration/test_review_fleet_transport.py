"""Review: root's mixed-case proxy variable never reaches a user's fleet row (real mTLS OpenBao,
real users, the real fleet view).

requests takes a proxy from ``Https_Proxy`` as from ``HTTPS_PROXY`` (urllib lower-cases the
name); the unit never has root's shell, so the fleet child must not either. Before the fix only
the exact spellings were removed: root's ``Https_Proxy`` (here a closed port) reached the child
and alice's row showed a proxy failure her unit never has.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_auth_sync.admin import fleet, unit_environ
from claude_auth_sync.plugin_manager import get_plugin_manager
from tests.integration.test_fleet_unit_environ import (  # noqa: F401 - fixtures
    give_client_pair, mtls, pki, provisioned, public_ca, unit_environment_file,
)
from tests.integration.test_provisioning import bao, make_users  # noqa: F401 - fixtures
from tests.support.openbao import OpenBaoServer, free_loopback_port
from tests.support.vault_tls import Pki

pytestmark = pytest.mark.real
#: The exact spellings the filter knew before the review (the "old-filter" case puts it back).
OLD_PROXY_VARIABLES = frozenset({"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                                 "NO_PROXY", "no_proxy"})


@pytest.mark.parametrize("old_filter", [False, True], ids=["fixed", "old-filter"])
def test_roots_mixed_case_proxy_never_reaches_a_users_row(
    tmp_path: Path, mtls: tuple[OpenBaoServer, str], pki: Pki, public_ca: Path, make_users,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, old_filter: bool,
) -> None:
    server, https_addr = mtls
    (alice,) = make_users("proxya")
    prov = provisioned(tmp_path, server, [alice])
    give_client_pair(alice, pki)
    for name in ("VAULT_CACERT", "VAULT_TOKEN", "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_ADDR", https_addr)
    monkeypatch.setenv("Https_Proxy", f"http://127.0.0.1:{free_loopback_port()}")  # nothing listens there
    monkeypatch.setattr(fleet, "ENVIRONMENT_FILE", unit_environment_file(tmp_path / "default", public_ca),
                        raising=False)
    if old_filter:  # the filter before the fix: exact spellings only (proves the test can fail)
        monkeypatch.setattr(unit_environ, "is_transport", lambda name: name in OLD_PROXY_VARIABLES)

    (row,) = fleet.fleet_rows(prov.roster, get_plugin_manager(), prov.sysroot)
    reached = row["vault_ttl_s"] is not None and row["vault_ttl_s"] > 3600
    assert reached != old_filter, row
    if old_filter:
        assert "cannot reach" in str(row.get("vault_error")), row  # the dead proxy, not the listener
