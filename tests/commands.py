"""Running dsg's command line in a test and checking how a run failed."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from dsg.cli.app import app


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def one_error(result: Result, *fragments: str) -> str:
    """The run failed with exit code 2 and exactly one error line containing the fragments
    (besides warnings and the progress lines of the stages that ran before it)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [
        ln for ln in result.stderr.splitlines() if ln and not ln.startswith(("warning:", "[dsg] "))
    ]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def nothing_written() -> None:
    """No run directory (not even an empty one) and no stray file in the working directory."""
    assert not Path("runs").exists()
