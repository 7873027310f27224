#!/usr/bin/env python3
"""Benchmark: one real `claude` probe against the loopback fake Messages API, bare and in a cycle.

Prints the median wall time of (a) the bare CLI call the probe makes and (b) a whole
`claude-auth-sync run` (file backend, healthy, unchanged) using that same CLI, and the difference:
what the framework adds around the probe. Run from the repository root: python bench/probe.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from claude_auth_sync.plugins.probe_inference import InferenceSettings  # noqa: E402
from claude_auth_sync.plugins.probe_inference.probe import InferenceProbe  # noqa: E402
from tests.support.claude_cli import cli_env, write_credentials  # noqa: E402
from tests.support.fake_anthropic import FakeMessagesAPI  # noqa: E402

TOKEN = "sk-ant-oat01-bench-probe"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    cli = str(Path(sys.executable).parent / "claude-auth-sync")
    with tempfile.TemporaryDirectory() as tmp, FakeMessagesAPI(accepted_tokens=[TOKEN]) as api:
        root = Path(tmp)
        config = root / "claude"
        write_credentials(config, TOKEN, "sk-ant-ort01-bench")
        env = cli_env(config, api.url)
        probe = InferenceProbe(InferenceSettings(), config, env)
        argv = probe.argv(probe.binary() or "claude")
        run_env = {**env, "XDG_STATE_HOME": str(root / "state"), "XDG_CONFIG_HOME": str(root / "config"),
                   "CLAUDE_AUTH_SYNC_BACKEND": "file", "CLAUDE_AUTH_SYNC_SINKS": '["file"]',
                   "PATH": os.environ["PATH"]}
        subprocess.run([cli, "run"], env=run_env, capture_output=True, check=True)  # warm up + first backup
        bare, cycle = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run(argv, env=probe.environ | {"CLAUDE_CONFIG_DIR": str(config)}, capture_output=True)
            bare.append(time.perf_counter() - started)
            assert done.returncode == 0, done.stdout
            started = time.perf_counter()
            subprocess.run([cli, "run"], env=run_env, capture_output=True, check=True)
            cycle.append(time.perf_counter() - started)
    b, c = statistics.median(bare), statistics.median(cycle)
    print(f"runs: {args.runs}, claude CLI {probe.describe()['version']}, loopback fake Messages API")
    print(f"bare probe (claude -p ... --output-format json ok): median {b * 1000:.0f} ms (min {min(bare) * 1000:.0f}, max {max(bare) * 1000:.0f})")
    print(f"whole cycle (claude-auth-sync run, file backend):    median {c * 1000:.0f} ms")
    print(f"framework overhead around the probe: {(c - b) * 1000:.0f} ms ({(c / b - 1) * 100:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
