"""``t3-provision-users --migrate-to-host-paths``: each user's per-user secret becomes the first
version of their per-host secret.

:class:`MigrationPhase` is part of :class:`claude_auth_sync.admin.provision.Provisioner`. For every
roster user with an account on this host, with the admin token:

* the source is the latest version at ``--migrate-from`` (default the runbook's per-user template
  ``workstation/claude-users/{user}``), the destination the configured ``vault.path_template``,
  which must carry ``{host}`` (:func:`claude_auth_sync.plugins.backend_vault.policy.locate`);
* a destination that already has any version (even a deleted one) is never written: the copy is
  made with check-and-set 0, so Vault itself refuses it if another writer (an agent, a second
  migration) got there first; a rerun therefore changes nothing (idempotent);
* only a well-formed ``claudeAiOauth`` object is copied, unchanged, as the only key; the copy is
  read back (version 1 itself, whatever an agent wrote since) and compared; nothing of it is
  printed (a version number at most);
* a user with no per-user copy (never backed up, or its latest version deleted) is reported and
  skipped; ``--dry-run`` reads and reports, writes nothing.

Order that loses no login: set ``vault.path_template`` first (agents then stop writing the per-user
path: their tokens no longer match, exit 78, until re-minted), then run this with
``--apply-policies`` (same run: copy, write the host policies, re-mint the tokens).
"""

from __future__ import annotations

from typing import Any

from claude_auth_sync.model import ExitCode
from claude_auth_sync.plugins.backend_vault.paths import check_template, template_has_host
from claude_auth_sync.plugins.backend_vault.policy import SecretLocation, locate

from .provision_report import Work
from .vault_admin import VaultFailure

__all__ = ["MigrationPhase", "OAUTH_KEY"]

OAUTH_KEY = "claudeAiOauth"


class MigrationPhase:
    o: Any
    settings: Any
    errors: list[tuple[int, str]]
    migration: dict[str, list[str]]
    _admin: Any  # from PolicyPhases
    _location: Any  # from the Provisioner

    def _migration_problem(self) -> str | None:
        """Why the migration cannot run at all (checked before any request), or None."""
        if not template_has_host(self.settings.path_template):
            return ("--migrate-to-host-paths needs a vault.path_template with {host} in the system settings "
                    "(e.g. workstation/claude-hosts/{host}/{user}); set it first, then rerun")
        try:
            check_template(self.o.migrate_from)
        except ValueError as err:
            return f"--migrate-from: {err}"
        if template_has_host(self.o.migrate_from):
            return "--migrate-from names the per-user template the secrets come from; it must not carry {host}"
        return None

    def _migrate(self, local: list[Work]) -> None:
        """Copy each local user's per-user latest version to their empty host path."""
        problem = self._migration_problem()
        if problem:
            self.errors.append((ExitCode.CONFIG, problem))
            return
        source_settings = self.settings.model_copy(update={"path_template": self.o.migrate_from})
        for work in local:
            user = work.report.user
            try:
                self._migrate_user(work, locate(user, source_settings), self._location(user))
            except VaultFailure as err:
                work.report.flag(err.exit_code, f"migration: {err}")
                self.migration["failed"].append(user)

    def _migrate_user(self, work: Work, source: SecretLocation, target: SecretLocation) -> None:
        report, user = work.report, work.report.user
        if self._exists(target):
            report.actions.append("migration: the host path has a secret already (kept, never overwritten)")
            self.migration["kept"].append(user)
            return
        oauth, version = self._read_latest(source)
        if oauth is None:
            report.notes.append(f"migration: no usable per-user copy at {source.mount}/{source.relative} (none, its latest "
                                "version deleted, or not a whole claudeAiOauth object): nothing copied")
            self.migration["nothing"].append(user)
            return
        if self.o.dry_run:
            report.actions.append(f"would copy version {version} of {source.relative} to {target.relative} (v1)")
            self.migration["would_copy"].append(user)
            return
        try:
            self._admin("post", target.data, {"options": {"cas": 0}, "data": {OAUTH_KEY: oauth}})
        except VaultFailure as err:
            if err.kind == "invalid" and self._exists(target):  # check-and-set: another writer was first
                report.actions.append("migration: the host path got a secret meanwhile (kept)")
                self.migration["kept"].append(user)
                return
            raise
        copied, _ = self._read_latest(target, version=1)  # v1 itself: an agent may have written v2 already
        if copied != oauth:
            report.flag(ExitCode.CONFIG, f"migration: the copy at {target.relative} does not read back equal")
            self.migration["failed"].append(user)
            return
        report.actions.append(f"migrated: version {version} of {source.relative} is version 1 of {target.relative}")
        report.changes.append(f"copied {source.mount}/{source.relative} v{version} to {target.mount}/{target.relative}")
        self.migration["copied"].append(user)

    def _exists(self, location: SecretLocation) -> bool:
        """True when the path has any version at all (metadata present), deleted ones included."""
        try:
            answer = self._admin("get", location.metadata)
        except VaultFailure as err:
            if err.kind == "not_found":
                return False
            raise
        return bool((answer.get("data") or {}).get("current_version"))

    def _read_latest(self, location: SecretLocation,
                     version: int | None = None) -> tuple[dict[str, Any] | None, int | None]:
        """The latest version's (or ``version``'s) claudeAiOauth object and version; (None, None)
        when there is none (or it is not a well-formed object with both tokens: a damaged copy is
        never spread)."""
        try:
            answer = self._admin("get", location.data if version is None else f"{location.data}?version={int(version)}")
        except VaultFailure as err:
            if err.kind == "not_found":
                return None, None
            raise
        data = (answer.get("data") or {})
        oauth = (data.get("data") or {}).get(OAUTH_KEY)
        version = (data.get("metadata") or {}).get("version")
        if not isinstance(oauth, dict) or not all(isinstance(oauth.get(k), str) and oauth.get(k)
                                                  for k in ("accessToken", "refreshToken")):
            return None, None
        return oauth, version if isinstance(version, int) else None
