"""The ``vault`` credential store: HashiCorp Vault / OpenBao KV v2 through hvac.

See :mod:`.store` for the guarantees, :mod:`.policy` for the per-user policy and
:mod:`.token_file` for how the token file is checked. Section ``vault`` of the settings.
"""

from __future__ import annotations

from claude_auth_sync.hookspecs import PluginContext, SettingsSection, StoreSpec, hookimpl

from .settings import VaultSettings

__all__ = ["VaultSettings", "cas_settings_sections", "cas_credential_stores"]


@hookimpl
def cas_settings_sections() -> list[SettingsSection]:
    return [SettingsSection("vault", VaultSettings, {"addr": "VAULT_ADDR", "cacert": "VAULT_CACERT"})]


@hookimpl
def cas_credential_stores() -> list[StoreSpec]:
    def build(ctx: PluginContext):  # type: ignore[no-untyped-def]
        from .store import VaultStore

        section: VaultSettings = ctx.settings.section("vault")
        assert ctx.settings.config_dir is not None
        token_file = section.token_file or ctx.settings.config_dir / "vault-token"
        return VaultStore(section, ctx.user.name, ctx.user.uid, token_file)

    return [StoreSpec("vault", build, "HashiCorp Vault / OpenBao KV v2 (hvac)")]
