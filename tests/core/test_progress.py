"""Progress outside a terminal: plain lines per stage, with counts, rates and wall times."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from tiny import TinyWorld, tiny_registry

from dsg.core.progress import Tracker
from dsg.engine.session import Session
from dsg.stages.evaluate import evaluate


def log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_counting_stage_writes_start_rate_and_end_lines() -> None:
    console, buffer = log_console()
    tracker = Tracker(console, interval=0.0)  # a progress line after every batch
    with tracker.counting("score", total=7, unit="prompts") as advance:
        advance(3)
        advance(4)
    with tracker.timed("report"):
        pass
    tracker.summary()
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "[dsg] score: started (7 prompts)"
    assert re.fullmatch(r"\[dsg\] score: 3 of 7 prompts, [\d.]+ prompts/s", lines[1])
    assert re.fullmatch(r"\[dsg\] score: 7 of 7 prompts, [\d.]+ prompts/s", lines[2])
    assert re.fullmatch(
        r"\[dsg\] score: done in [\d.]+ s \(7 prompts, [\d.]+ prompts/s\)", lines[3]
    )
    assert lines[4:6] == ["[dsg] report: started", lines[5]] and "report: done in" in lines[5]
    assert re.fullmatch(r"\[dsg\] wall time: score [\d.]+ s, report [\d.]+ s", lines[6])
    assert set(tracker.seconds) == {"score", "report"}


def test_stage_time_is_kept_when_it_fails() -> None:
    console, _ = log_console()
    tracker = Tracker(console)
    with pytest.raises(KeyboardInterrupt), tracker.counting("score") as advance:
        advance(1)
        raise KeyboardInterrupt
    assert "score" in tracker.seconds


def test_evaluate_in_a_log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole `evaluate` with stderr going to a file: every stage starts and ends in plain
    lines, sparsity counts its rows, and the wall times close the log."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)
    registry = tiny_registry(TinyWorld(tmp_path / "world", threshold=0.3))
    options = {"case": "tiny", "out": tmp_path / "run", "questions": "all", "multipliers": (20.0,)}
    console, buffer = log_console()
    session = dataclasses.replace(Session.open(options, reg=registry), console=console)
    evaluate.run(session)
    log = buffer.getvalue()
    for stage in ("load", "select", "subsets", "baseline", "sweep", "report"):
        assert f"[dsg] {stage}: started" in log
        assert re.search(rf"\[dsg\] {stage}: done in [\d.]+ s", log)
    assert re.search(r"\[dsg\] sparsity retain: done in [\d.]+ s \(\d+ rows, [\d.]+ rows/s\)", log)
    last = [line for line in log.splitlines() if line.startswith("[dsg]")][-1]
    assert last.startswith("[dsg] wall time: load ")
    assert "\x1b[" not in log  # no terminal control codes in a file
