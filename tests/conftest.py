"""Shared fixtures: the real servers (OpenBao, journald, the fake Messages API) and the home guard.

Real servers
    ``bao``       one ``bao server -dev`` per test module (module scope); tests in a module use
                  distinct user names / secret paths, so sharing it is safe. A test that seals or
                  stops its server starts its own (``OpenBaoServer`` directly, or ``fresh_bao``);
                  ``test_openbao_support.py`` overrides it with one server per test on purpose
                  (it pins behaviour from a clean state), and ``test_provisioning.py`` still has
                  its own module-scoped copy (``test_provisioning_hostile.py`` imports it from there).
    ``journald``  a private systemd-journald in a fresh journal namespace, per test; afterwards its
                  runtime directory and journal files are gone.
    ``api``       the loopback fake Messages API, per test, accepting the tokens the test module
                  lists in ``API_ACCEPTED_TOKENS``.
    ``config_dir``  an empty Claude config directory ``<tmp>/home/.claude``, per test.
    ``box``       a :class:`~tests.support.cli.Sandbox` in the test's ``tmp_path``.

The tester's home
    No test may depend on, read or change the home of whoever runs the suite (``~/.vault-token``
    from ``vault login``, ``~/.claude/`` from Claude Code). Every process a test starts gets
    ``HOME`` and the XDG directories in a temporary directory (``tests/support/home.py``:
    ``Sandbox.env``, ``cli_env`` and the other helpers build child environments with
    ``child_env``/``private_home_env``), and this session also points its own ``HOME`` at a
    temporary directory and unsets the XDG base directories (``_private_home``), so in-process
    code and inherited environments never see the real home either.

    ``_tester_home_untouched`` (session scope, autouse) snapshots ``~/.vault-token`` and
    ``~/.claude`` (login and settings files by lstat, never opened; top-level entries by name) of the real
    home before the first test and fails the run when they differ after the last one.

    How to check by hand that the suite is independent of the home (as root; put anything there,
    e.g.)::

        printf 'hvs.FAKE-root-home-token' > /root/.vault-token
        mkdir -p /root/.claude
        printf '{"claudeAiOauth": {"accessToken": "sk-ant-oat01-FAKE", "refreshToken": "sk-ant-ort01-FAKE",
                 "expiresAt": 4102444800000, "scopes": ["user:inference"]}}' > /root/.claude/.credentials.json
        printf '{"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}}' > /root/.claude/settings.json
        python -m pytest -q -p no:cacheprovider       # must pass, and the guard must stay quiet
        rm /root/.vault-token /root/.claude/.credentials.json /root/.claude/settings.json

    To see which process *reads* them, watch the files during the run (e.g. fanotify or
    ``strace -f -e trace=openat``); nothing of the suite should open them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Sandbox
from tests.support.fake_anthropic import FakeMessagesAPI
from tests.support.home import (
    XDG_BASE_DIRS,
    HomeSnapshot,
    is_tester_state,
    real_homes,
)
from tests.support.journald import JournaldNamespace
from tests.support.openbao import OpenBaoServer

# -- the tester's home ------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _tester_home_untouched() -> Iterator[list[Path]]:
    """Fail the run when a test changed ``~/.vault-token`` or ``~/.claude`` of the real home."""
    homes = real_homes()
    before = HomeSnapshot.take(homes)
    yield homes
    changes = HomeSnapshot.take(homes).changes_since(before)
    if changes:
        pytest.fail("the tests changed the tester's own home (they must use a temporary one):\n  "
                    + "\n  ".join(changes), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _private_home(_tester_home_untouched: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This process (and what it starts with ``os.environ``) runs in a temporary ``HOME``, without the
    tester's ``VAULT_*``/``BAO_*``/``CLAUDE_CONFIG_DIR``/``CLAUDE_AUTH_SYNC_*`` settings.

    The XDG base directories are unset rather than pointed into it: they then follow ``HOME`` here,
    and a process started as another user (``runuser`` keeps the environment but resets ``HOME``)
    gets its own defaults instead of paths in root's private temporary directory."""
    home = tmp_path_factory.mktemp("tester-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if is_tester_state(k)]:
            mp.delenv(name)
        for name in XDG_BASE_DIRS:
            mp.delenv(name, raising=False)
        mp.setenv("HOME", str(home))
        yield home


# -- real servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    """One real OpenBao dev server for the module; tests use distinct user names so they never share a path."""
    with OpenBaoServer(tmp_path_factory.mktemp("bao")) as server:
        yield server


@pytest.fixture
def journald(request: pytest.FixtureRequest) -> Iterator[JournaldNamespace]:
    """A private systemd-journald in a fresh namespace, left without a trace afterwards."""
    prefix = "cas-" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    with JournaldNamespace(prefix) as ns:
        yield ns
    assert not ns.runtime_dir.exists()
    assert not any(d.exists() for d in ns.journal_dirs)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[FakeMessagesAPI]:
    """The loopback fake Messages API accepting the module's ``API_ACCEPTED_TOKENS``."""
    tokens = getattr(request.module, "API_ACCEPTED_TOKENS", None)
    if tokens is None:
        pytest.fail(f"{request.module.__name__} uses the api fixture but defines no API_ACCEPTED_TOKENS")
    with FakeMessagesAPI(accepted_tokens=tokens) as fake:
        yield fake


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """An empty Claude config directory, ``<tmp>/home/.claude``."""
    directory = tmp_path / "home" / ".claude"
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    """A sandbox of paths (Claude config, XDG state/config, home) to run the installed CLI in."""
    return Sandbox(tmp_path)
