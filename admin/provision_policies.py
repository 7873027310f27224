"""The provisioner's Vault-side phases: the admin token and the per-user policies.

:class:`PolicyPhases` is part of :class:`claude_auth_sync.admin.provision.Provisioner` (which sets
the attributes declared below). Guarantees:

* an admin token is accepted only when Vault describes it and it carries a policy that is not a
  user's ``claude-auth-sync-*`` policy (a user's token in ``VAULT_TOKEN`` is refused, exit 78);
* a policy counts as ``ok`` only when Vault's text equals :func:`render_policy`'s (whitespace at
  the ends aside); without ``--apply-policies`` a missing or drifted one is flagged (78) with the
  command that applies it, never written;
* ``--apply-policies`` first checks that the mount is a KV version 2 engine, then writes only the
  policies that differ (nothing in a dry run), and records in the state file each policy it
  *created* (it was missing), with the Vault it was created at;
* with ``--prune`` it deletes only policies this host's state file records creating at this Vault
  (address and namespace) whose user is no longer in the roster: never a policy another host (or a
  person) created, never one of a user still listed (after a move to a ``{host}`` template the old
  per-user policy may still serve hosts not yet moved), never one at another Vault.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from claude_auth_sync.model import PROVISION_COMMAND, ExitCode
from claude_auth_sync.plugins.backend_vault.policy import (
    POLICY_PREFIX,
    SecretLocation,
    render_location,
)

from .provision_report import UserReport, Work
from .state import StateFile, VaultId
from .roster import Roster
from .vault_admin import AdminVault, VaultFailure

__all__ = ["PolicyPhases"]

APPLY_POLICIES = f"apply the Vault stack first: {PROVISION_COMMAND} --apply-policies"


class PolicyPhases:
    o: Any
    vault: AdminVault | None
    admin_token: str | None
    settings: Any
    roster: Roster | None
    work: dict[str, Work]
    errors: list[tuple[int, str]]
    policies_applied: list[str]
    policies_pruned: list[str]
    state: StateFile
    vault_id: VaultId
    _removed_report: Callable[[str], UserReport]  # from TokenPhases
    _location: Callable[[str], SecretLocation]  # from the Provisioner: THE path and policy name of a user

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request with the admin token."""
        assert self.vault and self.admin_token
        return self.vault.call("admin", self.admin_token, method, path, body)

    def _check_admin(self) -> bool:
        """True when ``VAULT_TOKEN`` is an admin token; otherwise the reason is in :attr:`errors`."""
        try:
            data = self._admin("get", "auth/token/lookup-self").get("data") or {}
        except VaultFailure as err:
            self.errors.append((err.exit_code, f"the admin token in VAULT_TOKEN was refused: {err}"
                                if err.kind == "forbidden" else f"cannot check the admin token: {err}"))
            return False
        if not data:
            self.errors.append((ExitCode.CONFIG, "the admin token in VAULT_TOKEN could not describe itself"))
            return False
        policies = {*(data.get("policies") or []), *(data.get("identity_policies") or [])} - {"default"}
        if "root" not in policies and (not policies or all(p.startswith(POLICY_PREFIX) for p in policies)):
            self.errors.append((ExitCode.CONFIG, "VAULT_TOKEN is not an admin token (it carries only "
                                f"{', '.join(sorted(policies)) or 'no'} polic{'y' if len(policies) == 1 else 'ies'}: "
                                "a user's claude-auth-sync token?); export the admin token "
                                "(deploy/vault/t3-provisioner-admin.hcl) and rerun"))
            return False
        return True

    def _read_policy(self, user: str) -> str | None:
        try:
            answer = self._admin("get", f"sys/policies/acl/{self._location(user).policy}")
        except VaultFailure as err:
            if err.kind == "not_found":
                return None
            raise
        return str((answer.get("data") or {}).get("policy") or "")

    def _policy_state(self, user: str) -> str:
        """``ok``, ``missing`` or ``drifted`` (VaultFailure when it cannot be read)."""
        current = self._read_policy(user)
        if current is None:
            return "missing"
        return "ok" if current.strip() == render_location(self._location(user)).strip() else "drifted"

    def _check_policies(self, local: list[Work]) -> None:
        for work in local:
            try:
                work.report.policy = self._policy_state(work.report.user)
                if work.report.policy != "ok":
                    work.report.flag(ExitCode.CONFIG, f"policy {self._location(work.report.user).policy} is {work.report.policy}",
                                     APPLY_POLICIES)
            except VaultFailure as err:
                work.report.policy = "unknown"
                work.report.flag(err.exit_code, str(err))

    def _kv_mount_problem(self) -> tuple[int, str] | None:
        """Why policies must not be applied yet: the mount is missing or not KV version 2."""
        mount = self.settings.mount
        try:
            answer = self._admin("get", f"sys/mounts/{mount}")
        except VaultFailure as err:
            if err.kind == "not_found":
                return ExitCode.CONFIG, f"no secrets engine at {mount}/: vault secrets enable -path={mount} kv-v2"
            return err.exit_code, str(err)
        data = answer.get("data") or answer
        if data.get("type") != "kv" or str((data.get("options") or {}).get("version")) != "2":
            return ExitCode.CONFIG, (f"the mount {mount}/ is not a KV version 2 engine: "
                                     f"enable it first (vault secrets enable -path={mount} kv-v2)")
        return None

    def _apply_policies(self) -> None:
        assert self.roster
        problem = self._kv_mount_problem()
        if problem:
            self.errors.append(problem)
            return
        for entry in self.roster:
            report = self.work[entry.os_user].report
            try:
                self._apply_policy(entry.os_user, report)
            except VaultFailure as err:
                report.policy = "unknown"
                report.flag(err.exit_code, str(err))
        if self.o.prune:
            self._prune_policies()

    def _apply_policy(self, user: str, report: UserReport) -> None:
        """Write ``user``'s policy if it is missing or drifted (only say so in a dry run)."""
        state = self._policy_state(user)
        if state == "ok":
            report.policy = "ok"
            return
        if self.o.dry_run:
            report.policy = f"{state} (would apply)"
            report.actions.append("apply policy")
            return
        location = self._location(user)
        name = location.policy
        self._admin("put", f"sys/policies/acl/{name}", {"policy": render_location(location)})
        if state == "missing":  # created here: the one kind of policy this host may prune later
            from .provision_tokens import now_utc

            self.state.record_policy(name, user, location.host, self.vault_id, now_utc())
        report.policy = "applied"
        report.actions.append(f"applied policy ({state})")
        report.changes.append(f"policy {name} written (was {state})")
        self.policies_applied.append(name)

    def _prune_policies(self) -> None:
        """Delete the policies this host created at this Vault for users gone from the roster."""
        assert self.roster
        listed = set(self.roster.names())
        for name, record in sorted(self.state.policies.items()):
            user = str(record.get("user") or "")
            if user in listed or not name.startswith(POLICY_PREFIX) or not self.state.created_here(name, self.vault_id):
                continue
            self._prune_policy(name, self._removed_report(user or name))

    def _prune_policy(self, name: str, report: UserReport) -> None:
        if self.o.dry_run:
            report.actions.append("delete policy")
            report.policy = "would delete"
            return
        try:
            self._admin("delete", f"sys/policies/acl/{name}")
        except VaultFailure as err:
            report.flag(err.exit_code, str(err))
            return
        del self.state.policies[name]
        report.policy = "deleted"
        report.actions.append("deleted policy")
        report.changes.append(f"policy {name} deleted")
        self.policies_pruned.append(name)
