"""Fuzz (hypothesis) of the credentials file and the stored copy, asserting issue 11's invariants:

* the local file is always valid JSON that Claude Code can parse (strict: no NaN/Infinity, UTF-8);
* every key other than ``claudeAiOauth`` keeps its meaning (numbers exactly, strings exactly,
  lone surrogates included, key order too);
* the agent never restores an object its own classifier rejects;
* a login written by someone else after the agent's own write is never lost, and only objects a
  successful probe ran against are ever stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claude_auth_sync.login import classify, merge_oauth
from claude_auth_sync.cycle import HealthCycle
from claude_auth_sync.model import LocalLogin, LoginState, ProbeOutcome, ProbeResult
from claude_auth_sync.testing import MemoryRestorer, MemoryBackend, oauth_object

GOOD = oauth_object("sk-ant-oat01-fuzz-good", "sk-ant-ort01-fuzz-good")
BAD = oauth_object("sk-ant-oat01-fuzz-bad", "sk-ant-ort01-fuzz-bad")
FRESH = oauth_object("sk-ant-oat01-fuzz-fresh", "sk-ant-ort01-fuzz-fresh")

NUMBER_LITERALS = ["0", "-0", "1", "-17", "1e400", "-1E+400", "1e-400", "0.1000000000000000055511151231257827",
                   "123456789012345678901234567890", "9" * 1200, "2.5", "1E5", "-0.0"]


def strict_parse(data: bytes) -> Any:
    """How ``JSON.parse`` sees it, with exact numbers: fails on NaN/Infinity and invalid UTF-8."""
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(data.decode("utf-8"), parse_float=Decimal, parse_int=Decimal, parse_constant=reject)


json_text = st.recursive(
    st.one_of(
        st.sampled_from(["null", "true", "false"]),
        st.sampled_from(NUMBER_LITERALS),
        st.text().map(lambda s: json.dumps(s, ensure_ascii=False)),
        st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"\\u001b]0;x\\u0007"', '"\\"[/bold]"']),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(st.text(max_size=8), inner), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(others=st.lists(st.tuples(st.text(min_size=1, max_size=6).filter(lambda k: k != "claudeAiOauth"), json_text),
                       max_size=4, unique_by=lambda pair: pair[0]),
       oauth_first=st.booleans())
def test_merge_keeps_every_other_key_and_writes_strict_json(others: list[tuple[str, str]], oauth_first: bool) -> None:
    members = [f"{json.dumps(k)}: {v}" for k, v in others]
    oauth_member = f'"claudeAiOauth": {json.dumps(BAD)}'
    members.insert(0 if oauth_first else len(members), oauth_member)
    raw = ("{" + ", ".join(members) + "}").encode("utf-8", errors="surrogatepass")
    original = strict_parse(raw)

    merged_bytes = merge_oauth(raw, GOOD)
    merged = strict_parse(merged_bytes)  # valid, strict JSON in UTF-8
    assert merged["claudeAiOauth"] == strict_parse(json.dumps(GOOD).encode())
    assert [k for k in merged if k != "claudeAiOauth"] == [k for k in original if k != "claudeAiOauth"]
    for key in original:
        if key != "claudeAiOauth":
            assert merged[key] == original[key]
    assert classify(Path("x"), merged_bytes).state == LoginState.HEALTHY


stored_values = st.one_of(
    st.none(), st.integers(), st.text(max_size=10), st.lists(st.text(max_size=5), max_size=2),
    st.floats(allow_nan=True, allow_infinity=True),
    st.fixed_dictionaries(
        {},
        optional={
            "accessToken": st.one_of(st.just("sk-ant-oat01-fuzz-stored"), st.text(max_size=20), st.integers(), st.none()),
            "refreshToken": st.one_of(st.just("sk-ant-ort01-fuzz-stored"), st.text(max_size=20), st.none()),
            "expiresAt": st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.booleans()),
            "scopes": st.one_of(st.lists(st.text(max_size=10), max_size=3), st.text(max_size=10), st.integers()),
            "subscriptionType": st.one_of(st.text(max_size=10), st.integers(), st.none()),
            "extra": st.one_of(st.floats(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(stored=stored_values, retry_ok=st.booleans())
def test_no_stored_object_the_classifier_rejects_is_ever_restored(stored: Any, retry_ok: bool) -> None:
    local = MemoryRestorer.with_document({"claudeAiOauth": BAD, "mcpOAuth": {"k": [1, 2.5, None]}})
    before = local.raw
    store = MemoryBackend(versions=[stored])
    outcomes = [ProbeOutcome.AUTH_FAILED, ProbeOutcome.AUTHENTICATED if retry_ok else ProbeOutcome.AUTH_FAILED]
    probe = _ScriptProbe(outcomes)
    HealthCycle(user="alice", backend=store, probe=probe, restorer=local).run()
    assert local.raw is not None
    document = strict_parse(local.raw)
    assert document["mcpOAuth"] == strict_parse(before)["mcpOAuth"]
    if local.raw != before:
        assert classify(Path("x"), local.raw).state in (LoginState.HEALTHY, LoginState.EXPIRED)


@dataclass
class _ScriptProbe:
    outcomes: list[ProbeOutcome]
    runs: int = 0

    def run(self) -> ProbeResult:
        outcome = self.outcomes[min(self.runs, len(self.outcomes) - 1)]
        self.runs += 1
        return ProbeResult(outcome, "fuzz")

    def describe(self) -> dict[str, Any]:
        return {}


@dataclass
class _RacingProbe:
    """Accepts GOOD and FRESH; at probe number ``write_at`` another process writes FRESH, either
    before the CLI reads the file or after it answered."""

    restorer: MemoryRestorer
    write_at: int
    before_read: bool
    runs: int = 0
    accepted_objects: list[dict[str, Any]] = field(default_factory=list)
    wrote: bool = False

    def run(self) -> ProbeResult:
        index, self.runs = self.runs, self.runs + 1
        if index == self.write_at and self.before_read:
            self._write_fresh()
        login: LocalLogin = self.restorer.read()
        ok = login.oauth is not None and login.oauth.get("accessToken") in (GOOD["accessToken"], FRESH["accessToken"])
        if ok:
            self.accepted_objects.append(dict(login.oauth))
        if index == self.write_at and not self.before_read:
            self._write_fresh()
        return ProbeResult(ProbeOutcome.AUTHENTICATED if ok else ProbeOutcome.AUTH_FAILED, "fuzz")

    def _write_fresh(self) -> None:
        document = json.loads(self.restorer.raw or b"{}")
        document["claudeAiOauth"] = FRESH
        self.restorer.raw = json.dumps(document).encode()
        self.wrote = True

    def describe(self) -> dict[str, Any]:
        return {}


@settings(max_examples=300, deadline=None)
@given(start=st.sampled_from([GOOD, BAD]), stored=st.sampled_from([None, GOOD, BAD]),
       write_at=st.integers(min_value=0, max_value=4), before_read=st.booleans())
def test_a_newer_login_is_never_lost_and_only_probed_objects_are_stored(
    start: dict[str, Any], stored: dict[str, Any] | None, write_at: int, before_read: bool
) -> None:
    local = MemoryRestorer.with_document({"claudeAiOauth": start, "mcpOAuth": {"x": 1}})
    store = MemoryBackend(versions=[stored] if stored else [])
    initial_versions = len(store.versions)
    probe = _RacingProbe(local, write_at, before_read)
    HealthCycle(user="alice", backend=store, probe=probe, restorer=local).run()
    document = json.loads(local.raw or b"{}")
    if probe.wrote:
        assert document["claudeAiOauth"] == FRESH  # the newer login survived whatever the agent did
    assert document["mcpOAuth"] == {"x": 1}
    for version in store.versions[initial_versions:]:
        assert version in probe.accepted_objects  # stored only after a passing probe of exactly it
