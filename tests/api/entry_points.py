"""Plugins served through fake entry points, and dsg run in a site of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from dsg.api import plugins


def use_entry_points(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    points = [EntryPoint(name=n, value=v, group="dsg") for n, v in targets.items()]
    monkeypatch.setattr(plugins, "_entry_points", lambda: points)


def run_dsg(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dsg ARGS`` in a fresh process that sees the distributions in ``site``, with Ctrl-C
    delivered as from a terminal even when the test run was started with SIGINT ignored (as a
    shell's background job is)."""
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "dsg.cli.app", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
