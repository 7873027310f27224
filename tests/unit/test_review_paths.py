"""Review of {host}: the kernel's host name is folded to a short name only when it is ASCII.

``str.lower`` folds some non-ASCII letters into ASCII ones (U+212A KELVIN SIGN -> ``k``,
...): a host whose kernel name is ``\u212aws`` took the path and the policy of host
``kws``, although its name is no RFC 1123 label (the guarantee of paths.short_host_name).
"""

from __future__ import annotations

import pytest

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.plugins.backend_vault import paths
from claude_auth_sync.plugins.backend_vault.policy import locate
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings

HOSTED = "workstation/claude-hosts/{host}/{user}"


@pytest.mark.parametrize("raw", ["\u212aws", "\u212aWS.example", "ws\u212a", "\uff57s"])
def test_a_non_ascii_kernel_host_name_never_folds_into_an_ascii_one(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        paths.short_host_name(raw)
    assert err.value.reason == "invalid_host_name"
    monkeypatch.setattr(paths.socket, "gethostname", lambda: raw)
    with pytest.raises(ConfigurationError):
        locate("alice", VaultSettings(path_template=HOSTED))


@pytest.mark.parametrize(("raw", "short"), [("WS-A", "ws-a"), ("ws-a.", "ws-a"), ("Ws-A.Example.COM", "ws-a"),
                                            ("xn--caf-dma.example", "xn--caf-dma"), ("1234", "1234"),
                                            ("a" * 63 + ".x", "a" * 63)])
def test_ascii_host_names_still_fold_to_their_short_lower_case_label(raw: str, short: str) -> None:
    assert paths.short_host_name(raw) == short


@pytest.mark.parametrize("raw", ["", ".", ".ws-a", "a" * 64, "ws_a", "ws-a\n"])
def test_odd_ascii_host_names_are_refused(raw: str) -> None:
    with pytest.raises(ConfigurationError):
        paths.short_host_name(raw)
