"""The run commands' help lists options in panels in the order a run flows, flags as flags."""

import re

from typer.testing import CliRunner

from dsg.cli.app import app
from dsg.cli.options import PANELS


def panels(command: str) -> list[str]:
    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    flags_with_a_value = [line for line in shown.splitlines() if "<bool>" in line]
    assert all("--help" in line for line in flags_with_a_value)  # Typer's own option, not ours
    return re.findall(r"╭─ (.+?) ─", shown)


def test_evaluate_help_panels() -> None:
    assert panels("evaluate") == [
        "Options",
        "Model and SAE",
        "Data",
        "Selection",
        "Evaluation",
        "Scale-out",
        "Output",
    ]


def test_every_run_command_lists_its_panels_in_run_order() -> None:
    for command in ("sparsity", "select", "evaluate", "muse-export", "attack", "generate"):
        shown = [p for p in panels(command) if p in PANELS]
        assert shown == sorted(shown, key=PANELS.index), command
        assert shown[0] == "Model and SAE", command
