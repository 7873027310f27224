"""Settings section ``vault`` (``CLAUDE_AUTH_SYNC_VAULT__*``; ``VAULT_ADDR``/``VAULT_CACERT``/``VAULT_NAMESPACE``/
``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY`` honoured)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .address import parse_vault_addr
from .paths import DEFAULT_TEMPLATE, check_template

__all__ = ["NAMESPACE_PATTERN", "VaultSettings"]

NAMESPACE_PATTERN = re.compile(r"/?[A-Za-z0-9_.-]{1,128}(/[A-Za-z0-9_.-]{1,128}){0,15}/?")


class VaultSettings(BaseModel):
    """The ``vault`` section. An ``addr`` that is ambiguous or carries credentials never loads (see
    :mod:`.address`); the error names the problem, never the address."""

    model_config = ConfigDict(extra="forbid")

    addr: str | None = Field(None, description="Vault address; default $VAULT_ADDR")
    cacert: Path | None = Field(None, description="CA bundle for TLS; default $VAULT_CACERT")
    mount: str = Field("secret", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="KV v2 mount")
    path_prefix: str = Field(
        "workstation/claude-users", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
        description="deprecated: the same as path_template = '<path_prefix>/{user}'"
    )
    path_template: str = Field(DEFAULT_TEMPLATE, description="path under the mount; {user} and optionally {host}")
    token_file: Path | None = Field(None, description="default $XDG_CONFIG_HOME/claude-auth-sync/vault-token")
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per Vault request")
    allow_insecure_http: bool = Field(False, description="allow plain http to a non-loopback address")
    namespace: str | None = Field(None, description="Vault Enterprise / OpenBao namespace; default $VAULT_NAMESPACE")
    client_cert: Path | None = Field(None, description="PEM client certificate (mTLS); default $VAULT_CLIENT_CERT; "
                                                       "relative: under the user's config dir")
    client_key: Path | None = Field(None, description="its PEM key, owner-only; default $VAULT_CLIENT_KEY")

    @field_validator("namespace")
    @classmethod
    def _plain_namespace(cls, value: str | None) -> str | None:
        """Empty (or ``/``) is the root namespace (None); else ``a/b/c`` of plain segments, no slash around."""
        if value is None or not value.strip("/"):
            return None
        if not NAMESPACE_PATTERN.fullmatch(value) or any(part in (".", "..") for part in value.strip("/").split("/")):
            raise ValueError("namespace must be names of letters, digits, '_', '-' or '.' separated by '/'")
        return value.strip("/")

    @field_validator("addr")
    @classmethod
    def _unambiguous_addr(cls, value: str | None) -> str | None:
        if value:
            parse_vault_addr(value)  # AddressRefused is a ValueError whose text never quotes the address
        return value

    @field_validator("path_prefix")
    @classmethod
    def _no_dot_segments(cls, value: str) -> str:
        if any(part in (".", "..") for part in value.split("/")):
            raise ValueError("path_prefix must not contain '.' or '..' segments")
        return value

    @field_validator("path_template")
    @classmethod
    def _safe_template(cls, value: str) -> str:
        return check_template(value)

    @model_validator(mode="after")
    def _prefix_is_an_alias(self) -> VaultSettings:
        """A ``path_prefix`` set alone means ``path_template = "<path_prefix>/{user}"``; set together
        with a ``path_template`` that says something else, neither is guessed at."""
        if "path_prefix" not in self.model_fields_set:
            return self
        from_prefix = f"{self.path_prefix}/{{user}}"
        if "path_template" not in self.model_fields_set:
            self.path_template = check_template(from_prefix)
        elif self.path_template != from_prefix:
            raise ValueError("vault.path_prefix (deprecated) and vault.path_template disagree: remove path_prefix")
        return self
