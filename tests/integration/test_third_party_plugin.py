"""The worked example plugin (examples/cas-sink-jsonl) installed the public way and run for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_auth_sync.testing import oauth_object
from tests.support.cli import Sandbox, fp

pytestmark = pytest.mark.real
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cas-sink-jsonl"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """pip-install the example into a private directory (no deps: claude-auth-sync is installed)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    "--cache-dir", str(build), str(EXAMPLE)], check=True, capture_output=True, timeout=300)
    assert list(target.glob("cas_sink_jsonl-*.dist-info"))
    return target


def test_example_sink_is_discovered_listed_and_receives_the_event(tmp_path, plugin_site) -> None:
    box = Sandbox(tmp_path)
    access = "sk-ant-oat01-example-plugin-secret"
    box.write_credentials({"claudeAiOauth": oauth_object(access, "sk-ant-ort01-example-plugin-secret")})
    extra = {"PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")]),
             "CLAUDE_AUTH_SYNC_SINKS": '["file","jsonl"]', "CLAUDE_AUTH_SYNC_JSONL__PATH": str(tmp_path / "events.jsonl")}
    listed = box.run("plugins", "--json", **extra)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert {"kind": "sink", "name": "jsonl", "active": True,
            "description": "each status event as one JSON line (example plugin)"} in data["provides"]
    assert data["plugins"]["sink_jsonl"] == ["cas_settings_sections", "cas_sinks"]

    result = box.run("run", STUB_CLAUDE_ACCEPT=fp(access), **extra)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["status"], e["action"]) for e in events] == [("OK", "backup")]
    assert access not in (tmp_path / "events.jsonl").read_text()
    assert box.log_file.exists()  # the built-in file sink ran beside it
