"""The provisioner's token phases: check, mint, revoke, deprovision.

:class:`TokenPhases` is part of :class:`claude_auth_sync.admin.provision.Provisioner` (which sets
the attributes declared below). Guarantees:

* a user's token is looked up with that token only (``lookup-self``); it is re-minted when it is
  invalid or expired, drifted (policies not exactly the user's location's policy set, the root policy,
  another period, not an orphan, minted for someone else) or has less than
  :data:`claude_auth_sync.model.STORE_TTL_WARN_S` left;
* a token is minted only with the admin token and only when the user's policy is ``ok`` (or was
  just applied): periodic :data:`PERIOD`, orphan, no ``default`` policy; it reaches the user's file
  only through a privilege-dropped child (:func:`.user_home.job_write_token`), and a token whose
  file could not be written is revoked at once; its accessor is in the state file, saved, before
  the token leaves the provisioner (a killed run, or a revocation that fails, leaves it recorded);
* the accessor of every token minted or adopted is recorded in the state file before any older one
  is revoked, so an accessor whose revocation fails stays in the books (``superseded``) for the
  next admin run; without an admin token nothing is minted or revoked, the need is flagged (1);
* a user removed from the roster (or without an account) gets their timer disabled every run, and
  their token revoked by accessor only with an admin token and ``--prune``; their secret is kept;
* an accessor is revoked only at the Vault the state file records it was minted at
  (:meth:`.state.StateFile.minted_here`): a run against another Vault (address or namespace)
  leaves it, and says so. One recorded before addresses were kept is first proved to exist at this
  Vault (the user's own ``lookup-self``, or ``lookup-accessor`` with the admin token) and then
  stamped with it; one that cannot be proved is never revoked (a revoke-accessor of an accessor
  Vault does not know answers 200, so "revoked" would be a lie and the real token would live on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from claude_auth_sync.model import STORE_TTL_WARN_S
from claude_auth_sync.fingerprint import fingerprint
from claude_auth_sync.model import PROVISION_COMMAND, ExitCode
from claude_auth_sync.plugins.backend_vault.policy import SecretLocation
from claude_auth_sync.terminal_text import safe_text

from .as_user import Account, ChildFailed
from .provision_report import NEEDS_ADMIN, UserReport, Work, duration
from .roster import Roster
from .state import StateFile, VaultId, vault_label
from .timers import SystemdTimers, path_unit, timer_unit
from .user_home import job_write_token
from .vault_admin import AdminVault, VaultFailure

__all__ = ["PERIOD", "PERIOD_S", "TokenPhases", "drift"]

PERIOD = "768h"
PERIOD_S = 768 * 3600
ADMIN_RUN_STEP = f"admin run: {PROVISION_COMMAND}"
APPLY_POLICIES = f"apply the Vault stack first: {PROVISION_COMMAND} --apply-policies"


def now_utc() -> str:
    """Now, ISO-8601 UTC to the second (``2024-05-01T12:00:00Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def drift(user: str, data: dict[str, Any], expected: frozenset[str]) -> list[str]:
    """How a user's token (its lookup-self data) differs from what the provisioner mints
    (``expected``: the policy set of the user's :class:`SecretLocation`).

    Values that came from Vault are passed through :func:`safe_text` (they end up in root's terminal).
    """
    policies = {*(data.get("policies") or []), *(data.get("identity_policies") or [])}
    expected = set(expected)
    meta = data.get("meta") or {}
    found = []
    if "root" in policies:
        found.append("carries the root policy")
    if policies != expected:
        found.append(safe_text(f"policies {sorted(map(str, policies))} instead of {sorted(expected)}", 300))
    if data.get("period") != PERIOD_S:
        found.append(safe_text(f"period {data.get('period')}s instead of {PERIOD_S}s", 100))
    if not data.get("orphan"):
        found.append("not an orphan token")
    if isinstance(meta, dict) and meta.get("os_user") not in (None, user):
        found.append(f"minted for {safe_text(repr(meta.get('os_user')), 80)}")
    return found


class TokenPhases:
    o: Any
    host: str
    vault_id: VaultId  # the Vault (address, namespace) this run talks to
    vault: AdminVault | None
    admin_token: str | None
    roster: Roster | None
    state: StateFile
    timers: SystemdTimers
    work: dict[str, Work]
    removed: dict[str, UserReport]
    # provided by the Provisioner and PolicyPhases
    _as_user: Callable[..., dict[str, Any]]
    _each: Callable[[Iterable[Work], Callable[[Work], None]], None]
    _policy_state: Callable[[str], str]
    _location: Callable[[str], SecretLocation]

    # checking

    def _lookup_tokens(self, local: list[Work]) -> None:
        self._each([w for w in local if w.token is not None], self._lookup_token)

    def _lookup_token(self, work: Work) -> None:
        """Check one user's token with that token (lookup-self); decide whether it needs a re-mint."""
        assert self.vault and work.token is not None
        report = work.report
        try:
            data = self.vault.call("user", work.token, "get", "auth/token/lookup-self").get("data") or {}
        except VaultFailure as err:
            if err.kind == "forbidden":
                report.token = "expired"
                work.needs_mint = "invalid or expired"
            else:
                report.token = "unknown"
                report.flag(err.exit_code, str(err))
            return
        work.accessor = data.get("accessor") or None
        ttl = data.get("ttl")
        report.ttl_s = int(ttl) if isinstance(ttl, int) else None
        found = drift(report.user, data, self._location(report.user).policies)
        if found:
            report.token = "drifted"
            report.notes.append("; ".join(found))
            work.needs_mint = "drifted (" + "; ".join(found) + ")"
        elif report.ttl_s is not None and report.ttl_s < STORE_TTL_WARN_S:
            report.token = "expiring"
            work.needs_mint = f"expiring (TTL {duration(report.ttl_s)}: is the agent's timer running?)"
        else:
            report.token = "ok"
            self._adopt(work)

    def _adopt(self, work: Work) -> None:
        """Adopt a valid token minted elsewhere (by hand, by another host sharing the home, or before
        the state file existed); the one recorded before is kept as superseded, and revoked by the
        next admin run."""
        report = work.report
        known = self.state.users.get(report.user) or {}
        if work.accessor:  # its own lookup-self at this Vault proved it exists here
            self.state.stamp(work.accessor, self.vault_id)
        if work.accessor and known.get("accessor") != work.accessor and not self.o.dry_run:
            assert work.account is not None
            self.state.users[report.user] = self._entry(
                work.accessor, report.fingerprint, work.account, minted_at=None,
                superseded=[a for a in [*known.get("superseded", []), known.get("accessor")] if a and a != work.accessor],
            )

    # minting

    def _needs_admin(self, local: list[Work]) -> None:
        """Without an admin token: flag every user whose token needs minting."""
        for work in local:
            if work.needs_mint:
                work.report.actions.append("needs admin run")
                work.report.flag(NEEDS_ADMIN, f"token {work.needs_mint}", ADMIN_RUN_STEP)

    def _policy_allows_mint(self, work: Work) -> bool:
        """True when the user's policy is ok or applied; otherwise says why not (flagged when needed)."""
        report = work.report
        if report.policy in ("ok", "applied"):
            return True
        if report.policy == "-":
            try:
                report.policy = self._policy_state(report.user)
            except VaultFailure as err:
                report.flag(err.exit_code, str(err))
                return False
            if report.policy in ("ok", "applied"):
                return True
        if self.o.dry_run and report.policy.endswith("(would apply)"):
            report.actions.append(f"would mint token ({work.needs_mint})")
        elif report.policy == "unknown":  # the policy could not be read: flagged with the reason
            report.actions.append("refused to mint: the admin token could not read the policy")
        else:
            report.actions.append("refused to mint: apply the Vault stack first")
            report.flag(ExitCode.CONFIG, f"policy {self._location(report.user).policy} is {report.policy}",
                        APPLY_POLICIES)
        return False

    def _create_token(self, report: UserReport) -> tuple[str, str, dict[str, Any]] | None:
        """A new periodic orphan token for ``report.user``: (token, accessor, auth), or None (flagged)."""
        assert self.vault and self.admin_token
        name = self._location(report.user).policy
        body = {
            "policies": [name],
            "period": PERIOD,
            "display_name": name,
            "no_default_policy": True,
            "renewable": True,
            "meta": {"os_user": report.user, "host": self.host, "provisioner": "t3-provision-users"},
        }
        try:
            auth = self.vault.call("admin", self.admin_token, "post", "auth/token/create-orphan", body).get("auth") or {}
        except VaultFailure as err:
            report.flag(err.exit_code, f"cannot mint: {err}")
            return None
        token, accessor = auth.get("client_token"), auth.get("accessor")
        if not token or not accessor:
            report.flag(ExitCode.CONFIG, "Vault returned no token")
            return None
        return str(token), str(accessor), auth

    def _mint(self, work: Work) -> None:
        assert work.account
        report = work.report
        if not self._policy_allows_mint(work):
            return
        if self.o.dry_run:
            report.actions.append(f"would mint token ({work.needs_mint})")
            return
        created = self._create_token(report)
        if created is None:
            return
        token, accessor, auth = created
        self.state.stamp(accessor, self.vault_id)
        if work.accessor:  # the token it replaces was looked up at this Vault
            self.state.stamp(work.accessor, self.vault_id)
        previous = self.state.users.get(report.user)
        old = [work.accessor, *([previous.get("accessor"), *previous.get("superseded", [])] if previous else [])]
        # Recorded, and saved, before the token leaves this process and before anything is revoked:
        # a run killed now, a write that fails and a revocation that fails all leave the new
        # accessor (and the old ones) in the books for the next admin run and --offboard.
        entry = self._entry(accessor, fingerprint(token), work.account, minted_at=now_utc(),
                            superseded=sorted({a for a in old if a and a != accessor}))
        self.state.users[report.user] = entry
        self.state.save()
        try:
            result = self._as_user(work.account, job_write_token, token.encode("ascii"))
        except ChildFailed as err:
            report.flag(err.exit_code, f"cannot write the token file: {err}")
            if self._revoke(accessor, report, "the unusable new token"):
                if previous is None:
                    del self.state.users[report.user]
                else:
                    self.state.users[report.user] = previous
            elif previous is not None:  # still valid, held by nobody: revoked by the next admin run
                self.state.users[report.user] = {**previous, "superseded": sorted({*previous.get("superseded", []),
                                                                                    accessor})}
            else:
                self.state.users[report.user] = self._entry(accessor, None, work.account, minted_at=now_utc(),
                                                            superseded=[])
            return
        report.changes.extend(str(c) for c in result.get("changes") or [])
        revoked = self._revoke_superseded(entry, report, "the replaced token")
        report.fingerprint = fingerprint(token)
        report.token = "minted"
        report.ttl_s = int(auth.get("lease_duration") or PERIOD_S)
        report.actions.append(f"minted token ({work.needs_mint})" + (f", revoked {revoked} old" if revoked else ""))

    def _entry(self, accessor: str, fp: str | None, account: Account, *, minted_at: str | None,
               superseded: list[str]) -> dict[str, Any]:
        entry: dict[str, Any] = {"accessor": accessor, "fingerprint": fp, "uid": account.uid, "host": self.host,
                                 "minted_at": minted_at, "recorded_at": now_utc()}
        if superseded:
            entry["superseded"] = sorted(set(superseded))
        return entry

    # revoking

    def _revoke_superseded(self, entry: dict[str, Any], report: UserReport, what: str) -> int:
        """Revoke every superseded accessor of ``entry`` minted at this Vault; those that fail, and
        those of another (or an unproved) Vault, stay recorded."""
        superseded = list(entry.get("superseded", []))
        here = [a for a in superseded if self._is_here(a, report)]
        left = [a for a in superseded if a not in here] + [a for a in here if not self._revoke(a, report, what)]
        revoked = len(superseded) - len(left)
        if left:
            entry["superseded"] = left
        else:
            entry.pop("superseded", None)
        return revoked

    def _superseded(self, local: list[Work]) -> None:
        """Tokens this host minted earlier and no longer uses: revoke them (admin), or say so."""
        for work in local:
            entry = self.state.users.get(work.report.user)
            if not entry or not self._pending_here(entry) or work.needs_mint:
                continue
            if not self.admin_token:
                work.report.actions.append("needs admin run")
                work.report.flag(NEEDS_ADMIN, f"{len(self._pending_here(entry))} replaced token(s) may still be valid",
                                 ADMIN_RUN_STEP)
            elif self.o.dry_run:
                work.report.actions.append("would revoke replaced token(s)")
            else:
                revoked = self._revoke_superseded(entry, work.report, "a replaced token")
                work.report.actions.append(f"revoked {revoked} replaced token(s)")

    def _pending_here(self, entry: dict[str, Any]) -> list[str]:
        """Superseded accessors this Vault may revoke: minted here, or of unknown Vault (old records)."""
        return [a for a in entry.get("superseded", []) if self._maybe_here(a)]

    def _maybe_here(self, accessor: str) -> bool:
        """Recorded at this Vault, or at no Vault yet (an old record: :meth:`_is_here` decides)."""
        return self.state.vault_of(accessor) is None or self.state.minted_here(accessor, self.vault_id)

    def _is_here(self, accessor: str, report: UserReport) -> bool:
        """True when ``accessor`` may be revoked at this Vault (see the module's guarantees); a record
        of another Vault, or an old one this Vault does not know, is noted on ``report``."""
        place = self.state.placement(accessor, self.vault_id, self._known_here)
        if place == "here":
            return True
        if place == "unconfirmed":  # a token that may be valid is left: never an exit 0
            report.flag(ExitCode.TEMPFAIL, "could not tell whether this Vault knows a recorded token (lookup-accessor "
                                           "failed, or this Vault did not tell its cluster_id and does not know it): "
                                           "not revoked, kept; the next admin run asks again")
        elif place == "unknown":
            report.notes.append("a recorded token is unknown to this Vault (already gone, or minted at another "
                                "Vault that answered at this address): not revoked here, kept in the state file")
        else:  # "elsewhere": recorded at another Vault
            vault = self.state.vault_of(accessor)
            assert vault is not None  # placement says "elsewhere" only for a recorded Vault
            report.flag(NEEDS_ADMIN, f"a token minted at another Vault ({vault_label(vault)}) is not revoked here",
                        f"revoke it there: VAULT_ADDR={vault['addr']} {PROVISION_COMMAND} --prune")
        return False

    def _known_here(self, accessor: str) -> bool | None:
        """Does this Vault know ``accessor``? (``lookup-accessor`` with the admin token; None when
        it cannot tell, e.g. the admin token may not look accessors up)."""
        assert self.vault
        return self.vault.knows_accessor(self.admin_token, accessor)

    def _revoke(self, accessor: str, report: UserReport, what: str) -> bool:
        assert self.vault and self.admin_token
        try:
            self.vault.call("admin", self.admin_token, "post", "auth/token/revoke-accessor", {"accessor": accessor})
        except VaultFailure as err:
            report.flag(err.exit_code, f"cannot revoke {what}: {err}")
            return False
        report.changes.append(f"revoked {what}")
        return True

    # deprovisioning

    def _removed_report(self, user: str) -> UserReport:
        if user not in self.removed:
            self.removed[user] = UserReport(user=user, in_roster=False, account="-", token="-", timer="-")
        return self.removed[user]

    def _report_for(self, user: str) -> UserReport:
        work = self.work.get(user)
        return work.report if work is not None else self._removed_report(user)

    def _deprovision(self) -> None:
        """Disable the timers of users gone from the roster (or without an account); revoke the
        tokens of users gone from the roster (admin token and ``--prune``)."""
        assert self.roster is not None
        in_roster = set(self.roster.names())
        no_account = {u for u, w in self.work.items() if w.report.account == "missing"}
        timers = self.timers.enabled_users()
        gone = (timers | set(self.state.users)) - in_roster
        for user in sorted(gone):
            self._removed_report(user).notes.append("not in the roster")
        self._disable_timers(sorted((timers - in_roster) | (timers & no_account)))
        for user in sorted(gone):
            self._revoke_removed(user, self._removed_report(user))

    def _disable_timers(self, users: list[str]) -> None:
        if not users:
            return
        if self.o.dry_run:
            for user in users:
                self._report_for(user).actions.append("would disable timer")
            return
        _, text = self.timers.systemctl("disable", [unit for u in users for unit in (timer_unit(u), path_unit(u))])
        for user in users:
            if not self.timers.path_enabled(user):
                self.timers.remove_dropins(user)
        for user in users:
            report = self._report_for(user)
            if self.timers.enabled(user):
                report.timer = "enabled"
                report.flag(ExitCode.CONFIG, f"systemctl disable {timer_unit(user)} failed: {text}")
            else:
                report.timer = "disabled"
                report.actions.append("disabled timer")
                report.changes.append(f"disabled {timer_unit(user)}")

    def _revoke_removed(self, user: str, report: UserReport) -> None:
        """Revoke a removed user's recorded token (admin + ``--prune``), or flag that it is pending."""
        if report.timer == "-":
            report.timer = "disabled"
        entry = self.state.users.get(user)
        if not entry or not entry.get("accessor"):
            return
        recorded = [entry["accessor"], *entry.get("superseded", [])]
        if not [a for a in recorded if self._maybe_here(a)]:
            report.token = "kept (minted at another Vault)"
            for vault in {vault_label(v): v for a in recorded if (v := self.state.vault_of(a))}.values():
                report.flag(NEEDS_ADMIN, f"their token was minted at another Vault ({vault_label(vault)}): not revoked here",
                            f"revoke it there: VAULT_ADDR={vault['addr']} {PROVISION_COMMAND} --prune")
            return
        if not (self.admin_token and self.o.prune):
            report.token = "revoke pending"
            report.actions.append("needs admin run with --prune")
            report.flag(NEEDS_ADMIN, "removed from the roster; their token is not revoked yet",
                        f"revoke removed users' tokens: {PROVISION_COMMAND} --prune")
            return
        if self.o.dry_run:
            report.token = "would revoke"
            report.actions.append("would revoke token")
            return
        entry.setdefault("superseded", [])
        entry["superseded"] = sorted({*entry["superseded"], str(entry["accessor"])})
        self._revoke_superseded(entry, report, "the removed user's token")
        if entry.get("superseded"):
            report.token = "revoke pending"
            return  # a revocation failed or a record could not be placed (flagged); the next admin --prune run retries
        report.token = "revoked"
        report.actions.append("revoked token (secret kept)")
        del self.state.users[user]
