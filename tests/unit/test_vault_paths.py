"""``vault.path_template``: validation, the deprecated ``path_prefix`` alias, the host name, and
:func:`locate` as the one place that names a user's path and policy (pure units, no server)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_auth_sync.errors import ConfigurationError
from claude_auth_sync.model import ExitCode
from claude_auth_sync.plugins.backend_vault import paths
from claude_auth_sync.plugins.backend_vault.policy import locate, policy_name, render_policy
from claude_auth_sync.plugins.backend_vault.settings import VaultSettings

HOSTED = "workstation/claude-hosts/{host}/{user}"


def test_default_template_is_the_runbooks_path_and_policy() -> None:
    where = locate("alice", VaultSettings())
    assert (where.relative, where.data, where.metadata, where.policy, where.host) == (
        "workstation/claude-users/alice", "secret/data/workstation/claude-users/alice",
        "secret/metadata/workstation/claude-users/alice", "claude-auth-sync-alice", None)


def test_default_template_never_looks_at_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths.socket, "gethostname", lambda: "bad_host name\x1b[31m")
    assert locate("alice", VaultSettings()).relative == "workstation/claude-users/alice"


def test_host_template_names_a_path_and_a_policy_per_host() -> None:
    settings = VaultSettings(path_template=HOSTED)
    one, two = locate("alice", settings, "web1"), locate("alice", settings, "web2")
    assert one.relative == "workstation/claude-hosts/web1/alice" and one.policy == "claude-auth-sync-alice@web1"
    assert two.relative != one.relative and two.policy != one.policy
    hcl = render_policy("alice", settings, "web1")
    assert 'path "secret/data/workstation/claude-hosts/web1/alice" {' in hcl
    assert "web2" not in hcl and "*" not in hcl and "claude-users" not in hcl


def test_the_kernels_short_name_is_the_default_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths.socket, "gethostname", lambda: "Web-7.lab.example.org")
    assert locate("bob", VaultSettings(path_template=HOSTED)).relative == "workstation/claude-hosts/web-7/bob"


def test_path_prefix_is_a_deprecated_alias() -> None:
    assert VaultSettings(path_prefix="team/agents").path_template == "team/agents/{user}"
    assert locate("bob", VaultSettings(mount="kv", path_prefix="team/agents")).data == "kv/data/team/agents/bob"
    assert VaultSettings(path_prefix="a/b", path_template="a/b/{user}").path_template == "a/b/{user}"
    with pytest.raises(ValueError, match="path_prefix"):
        VaultSettings(path_prefix="a/b", path_template="c/{host}/{user}")


@pytest.mark.parametrize("template", [
    "a/../{user}", "../{user}", "./{user}", "{user}/..", "a/*/{user}", "a/{user}*", "a/{user}+", "{0}", "a/{0}",
    "a/{user.__class__}", "a/{user!r}", "a/{user:>999}", "a/{user!s:^99}", "a/{user[0]}", "a/{host.__init__}/{user}",
    "a/{user}{host}", "a/{user}-{host}", "/{user}", "{user}/", "a//{user}", "a/b", "{user}/{user}", "{{user}}",
    "a/{host}/{host}/{user}", "a/{USER}", "a/{ user }", "a b/{user}", "a/\x1b[31m/{user}", "a/é/{user}",
    "a\n/{user}", "a/%2e%2e/{user}", "a\\b/{user}", "", "x" * 600 + "/{user}",
])
def test_hostile_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError):
        VaultSettings(path_template=template)
    with pytest.raises(ValueError):
        paths.render_template(template, "alice", "web1")


@pytest.mark.parametrize("host", ["web_1", "web 1", "-web", "web-", "", "a" * 64, "wéb", "web\x1b[31m", "web/../x",
                                  "web*", "web@x", "{user}", "WEB\n", "..", "web%2f"])
def test_odd_host_names_never_reach_a_path(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        locate("alice", VaultSettings(path_template=HOSTED), host)
    assert err.value.reason == "invalid_host_name" and err.value.exit_code == ExitCode.CONFIG
    assert "\x1b" not in err.value.message and "\n" not in err.value.message
    monkeypatch.setattr(paths.socket, "gethostname", lambda: host)
    with pytest.raises(ConfigurationError):
        locate("alice", VaultSettings(path_template=HOSTED))
    with pytest.raises(ConfigurationError):
        policy_name("alice", host)


hosts = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z", fullmatch=True)
users = st.from_regex(r"\A[a-z_][a-z0-9_-]{0,12}\Z", fullmatch=True)


@given(users, hosts, users, hosts)
def test_two_pairs_never_share_a_path_or_a_policy(u1: str, h1: str, u2: str, h2: str) -> None:
    settings = VaultSettings(path_template=HOSTED)
    a, b = locate(u1, settings, h1), locate(u2, settings, h2)
    if (u1, h1) != (u2, h2):
        assert a.relative != b.relative and a.policy != b.policy
    assert a.policy != policy_name(u2)  # never the per-user policy of anyone either
    body = "\n".join(line for line in render_policy(u1, settings, h1).splitlines() if not line.startswith("#"))
    assert re.findall(r'path "([^"]+)"', body) == [a.data, a.metadata, "auth/token/renew-self", "auth/token/lookup-self"]
