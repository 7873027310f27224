"""The ``vault`` credential store: HashiCorp Vault / OpenBao KV v2 through hvac.

See :mod:`.store` for the guarantees, :mod:`.policy` for the per-user policy and
:mod:`.token_file` for how the token file is checked. Section ``vault`` of the settings.
"""

from __future__ import annotations

import argparse
import sys

from claude_auth_sync.hookspecs import BackendSpec, CommandSpec, PluginContext, SettingsSection, hookimpl
from claude_auth_sync.model import DiagnosticRow

from .settings import VaultSettings

__all__ = ["VaultSettings", "cas_settings_sections", "cas_backends", "cas_commands", "cas_diagnose"]


@hookimpl
def cas_settings_sections() -> list[SettingsSection]:
    return [SettingsSection("vault", VaultSettings, {
        "addr": "VAULT_ADDR", "cacert": "VAULT_CACERT", "namespace": "VAULT_NAMESPACE",
        "client_cert": "VAULT_CLIENT_CERT", "client_key": "VAULT_CLIENT_KEY",
    })]


@hookimpl
def cas_backends() -> list[BackendSpec]:
    def build(ctx: PluginContext):  # type: ignore[no-untyped-def]
        from .client_cert import with_resolved_paths
        from .store import VaultBackend

        assert ctx.settings.config_dir is not None
        section: VaultSettings = with_resolved_paths(ctx.settings.section("vault"), ctx.settings.config_dir)
        token_file = section.token_file or ctx.settings.config_dir / "vault-token"
        return VaultBackend(section, ctx.user.name, ctx.user.uid, token_file)

    return [BackendSpec("vault", build, "HashiCorp Vault / OpenBao KV v2 (hvac)")]


def _run_policy(args: argparse.Namespace) -> int:
    from claude_auth_sync.runner import build_runtime

    from .policy import render_policy

    runtime = build_runtime()
    section: VaultSettings = runtime.settings.section("vault")
    if section.namespace:  # the paths are relative to the namespace: say where the policy belongs
        sys.stdout.write(f"# Vault namespace {section.namespace}: apply it there "
                         f"(VAULT_NAMESPACE={section.namespace} vault policy write NAME -)\n")
    sys.stdout.write(render_policy(args.user, section, args.host))
    return 0


def _policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER")
    parser.add_argument("--host", metavar="HOST", default=None,
                        help="with a vault.path_template carrying {host}: the policy of USER on HOST "
                             "(default: this host's short name)")


@hookimpl
def cas_commands() -> list[CommandSpec]:
    return [CommandSpec("policy", "the Vault policy (HCL) USER's token must carry",
                        _policy_arguments, _run_policy)]


@hookimpl
def cas_diagnose(ctx: PluginContext, component: object) -> list[DiagnosticRow]:
    from .diagnose import vault_rows
    from .store import VaultBackend

    if not isinstance(component, VaultBackend):
        return []
    return vault_rows(component.describe(), ctx.user)
