#!/usr/bin/env python3
"""Benchmark: the wall time and peak RSS of one `claude-auth-sync run` (file backend, stub claude).

The stub `claude` is a shell script that answers instantly, so what is measured is the framework:
interpreter start, imports, settings, plugin loading, the cycle and the sinks. The floor is
`python -c "import pluggy, pydantic_settings"`. Targets (issue 2): median <= 1.5x the floor, peak
RSS < 60 MB. Prints the numbers; exits 1 when a target is missed.

Usage: python bench/cycle.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCESS = "sk-ant-oat01-bench-access"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(seconds, peak RSS in KiB, exit code) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cli = str(Path(sys.executable).parent / "claude-auth-sync")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        claude_dir = root / "claude"
        claude_dir.mkdir(mode=0o700)
        oauth = {"accessToken": ACCESS, "refreshToken": "sk-ant-ort01-bench", "expiresAt": 4102444800000}
        (claude_dir / ".credentials.json").write_text(json.dumps({"claudeAiOauth": oauth}))
        os.chmod(claude_dir / ".credentials.json", 0o600)
        stub = root / "claude-stub"
        stub.write_text('#!/bin/sh\necho \'{"type":"result","subtype":"success","is_error":false,"result":"ok"}\'\n')
        stub.chmod(0o755)
        # A private HOME too: the agent falls back to ~/.local/state when $XDG_STATE_HOME/claude-auth-sync
        # does not exist yet and HOME is the account's own (core/settings.py), which would be the bencher's.
        (root / "home").mkdir(mode=0o700)
        env = {**os.environ, "HOME": str(root / "home"), "CLAUDE_CONFIG_DIR": str(claude_dir),
               "XDG_STATE_HOME": str(root / "state"),
               "XDG_CONFIG_HOME": str(root / "config"), "CLAUDE_AUTH_SYNC_BACKEND": "file",
               "CLAUDE_AUTH_SYNC_SINKS": '["file"]', "CLAUDE_AUTH_SYNC_INFERENCE__CLAUDE_BIN": str(stub)}
        floor_argv = [sys.executable, "-c", "import pluggy, pydantic_settings"]
        timed(floor_argv, env)
        timed([cli, "run"], env)  # warm caches, first backup
        floors, cycles, rss = [], [], []
        for _ in range(args.runs):
            floors.append(timed(floor_argv, env)[0])
            seconds, peak, code = timed([cli, "run"], env)
            if code != 0:
                print(f"run exited {code}", file=sys.stderr)
                return 2
            cycles.append(seconds)
            rss.append(peak)
        log_lines = (root / "state" / "claude-auth-sync" / "sync.log").read_text().splitlines()
    floor, cycle = statistics.median(floors), statistics.median(cycles)
    ratio = cycle / floor
    peak_mb = max(rss) / 1024
    print(f"runs: {args.runs} (healthy, unchanged cycles; {len(log_lines)} log lines written)")
    print(f"floor  (python -c 'import pluggy, pydantic_settings'): median {floor * 1000:.0f} ms")
    print(f"cycle  (claude-auth-sync run, file backend, stub claude): median {cycle * 1000:.0f} ms, "
          f"p90 {sorted(cycles)[int(len(cycles) * 0.9) - 1] * 1000:.0f} ms")
    print(f"ratio  cycle/floor: {ratio:.2f}x (target <= 1.50x)")
    print(f"peak RSS of run: {peak_mb:.1f} MB (target < 60 MB)")
    return 0 if ratio <= 1.5 and peak_mb < 60 else 1


if __name__ == "__main__":
    sys.exit(main())
