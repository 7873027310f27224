"""The Vault backend's rows in ``claude-auth-sync diagnose`` (hook ``cas_diagnose``).

Built from :meth:`VaultBackend.describe` (metadata only: token file mode and owner, token TTL,
period and policies, the secret's version metadata); never a token or a secret value. Every
problem row carries its fix: the provisioner for a token problem, the service for a stale backup.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from claude_auth_sync.diagnose_output import epoch_of_iso, time_values
from claude_auth_sync.model import PROVISION_COMMAND, STORE_TTL_WARN_S, DiagnosticRow, DiagnosticState, UserIdentity

__all__ = ["vault_rows"]

GROUP = "backend"


def vault_rows(facts: Mapping[str, Any], user: UserIdentity) -> list[DiagnosticRow]:
    """The rows for one :meth:`VaultBackend.describe` answer."""
    rows = _token_file_rows(facts.get("token_file"), user) + _enterprise_rows(facts)
    token = facts.get("token")
    if isinstance(token, Mapping) and "error" in token:
        rows.append(DiagnosticRow(GROUP, "address", "info", str(facts.get("addr"))))
        if token.get("reason") in ("vault_unreachable", "store_unavailable"):
            rows.append(DiagnosticRow(GROUP, "reachable", "warn", str(token["error"]),
                                      "nothing now: the next run retries; check the network and Vault"))
        else:
            client_side = str(token.get("reason") or "").startswith("vault_client_")  # mTLS: its own fix
            rows.append(DiagnosticRow(GROUP, "token", "fail", str(token["error"]),
                                      str(token.get("remedy")) if client_side else PROVISION_COMMAND))
        return rows
    if isinstance(token, Mapping):
        rows.append(DiagnosticRow(GROUP, "address", "ok", str(facts.get("addr"))))
        rows.extend(_token_rows(token, user))
    rows.extend(_secret_rows(facts.get("secret"), user))
    return rows


def _enterprise_rows(facts: Mapping[str, Any]) -> list[DiagnosticRow]:
    """The namespace (when one is set), the proxy (when one is used) and the client certificate
    (when one is configured)."""
    rows: list[DiagnosticRow] = []
    if facts.get("namespace"):
        rows.append(DiagnosticRow(GROUP, "namespace", "info", str(facts["namespace"])))
    if facts.get("proxy"):
        rows.append(DiagnosticRow(GROUP, "proxy", "info", f"via {facts['proxy']} (from HTTPS_PROXY/ALL_PROXY; NO_PROXY bypasses)"))
    cert = facts.get("client_cert")
    if isinstance(cert, Mapping) and cert.get("configured"):
        if "error" in cert:
            rows.append(DiagnosticRow(GROUP, "client cert", "fail", str(cert["error"]), cert.get("remedy")))
        else:
            rows.append(DiagnosticRow(GROUP, "client cert", "ok", f"{cert.get('cert')} (key {cert.get('key')})"))
    return rows


def _token_file_rows(token_file: Any, user: UserIdentity) -> list[DiagnosticRow]:
    if not isinstance(token_file, Mapping):
        return []
    path = token_file.get("path")
    if not token_file.get("exists"):
        return [DiagnosticRow(GROUP, "token file", "fail", f"{path} missing", PROVISION_COMMAND)]
    if token_file.get("symlink") or token_file.get("mode") != "0600" or token_file.get("uid") != user.uid:
        return [DiagnosticRow(GROUP, "token file", "fail", f"{path}: mode {token_file.get('mode')}, uid {token_file.get('uid')}",
                              f"chmod 600 {path} (and make sure {user.name} owns it)")]
    return [DiagnosticRow(GROUP, "token file", "ok", f"{path} (0600)")]


def _token_rows(token: Mapping[str, Any], user: UserIdentity) -> list[DiagnosticRow]:
    ttl = token.get("ttl_s")
    ttl_state: DiagnosticState = "ok" if isinstance(ttl, int) and ttl > STORE_TTL_WARN_S else "warn"
    drift = token.get("drifted")
    now = time.time()
    ttl_values = {"ttl_s": ttl, **time_values("expires", now + ttl, now)} if isinstance(ttl, int) else {"ttl_s": None}
    return [
        DiagnosticRow(GROUP, "token TTL", ttl_state, "" if isinstance(ttl, int) else "unknown",
                      None if ttl_state == "ok" else f"run the service (it renews): systemctl start claude-auth-sync@{user.name}.service",
                      values=ttl_values),
        DiagnosticRow(GROUP, "token period", "info", f"{token.get('period_s')}s, renewable={token.get('renewable')}",
                      values={"period_s": token.get("period_s"), "renewable": token.get("renewable")}),
        DiagnosticRow(GROUP, "token policies", "fail" if drift else "ok", ", ".join(token.get("policies") or []),
                      PROVISION_COMMAND if drift else None),
    ]


def _secret_rows(secret: Any, user: UserIdentity) -> list[DiagnosticRow]:
    if not isinstance(secret, Mapping) or not secret:
        return []
    if secret.get("exists") is False:
        return []  # the kernel's own "backup" row says "no backup yet"
    if "error" in secret:
        return [DiagnosticRow(GROUP, "backup", "fail", str(secret["error"]), PROVISION_COMMAND)]
    updated = epoch_of_iso(secret.get("updated_time"))
    return [DiagnosticRow(GROUP, "backup", "ok", f"version {secret.get('current_version')}, {secret.get('versions_kept')} versions kept",
                          values={"version": secret.get("current_version"), "versions_kept": secret.get("versions_kept"),
                                  **time_values("updated", updated, time.time())})]
