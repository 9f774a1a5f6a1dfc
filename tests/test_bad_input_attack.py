"""`dsg attack` with bad input: one error line, exit code 2, no run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bad_input import nothing_written
from test_cli_errors import one_error, run
from tiny import TinyWorld, UseWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("world"))


def attack(*args: str) -> list[str]:
    return ["attack", *args, "--case", "tiny", "--out", "runs"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["nope"], ["unknown attack 'nope'; choose one of:", "dilution", "format"]),
        (["dilution", "--budget", "-5"], ["budget must be at least 0, got -5"]),
        (
            ["dilution", "--budget", "25", "--budget", "600"],
            ["budget 600 does not fit", "the model's context 512", "--budget values up to"],
        ),
        (["dilution", "--placement", "middle"], ["unknown placement 'middle'", "around"]),
        (["format", "--format", "haiku"], ["unknown format 'haiku'", "lm-eval", "few-shot"]),
    ],
)
def test_bad_attack_options(
    world: TinyWorld, use_world: UseWorld, args: list[str], fragments: list[str]
) -> None:
    use_world(world)
    one_error(run(*attack(*args)), *fragments)
    nothing_written()


def test_budget_limit_is_the_largest_that_fits(world: TinyWorld, use_world: UseWorld) -> None:
    """The limit the message names is accepted; one more token is not."""
    use_world(world)
    line = one_error(run(*attack("dilution", "--budget", "100000")))
    limit = int(line.rsplit(" ", 1)[1])
    one_error(run(*attack("dilution", "--budget", str(limit + 1))), f"budget {limit + 1}")
    nothing_written()
    ok = run(
        *attack("dilution", "--budget", str(limit), "--placement", "before", "--questions", "all")
    )
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_empty_benign_corpus(world: TinyWorld, use_world: UseWorld, content: str) -> None:
    use_world(world)
    Path("benign.txt").write_text(content)
    one_error(
        run(*attack("dilution", "--benign-corpus", "benign.txt")),
        "benign corpus benign.txt has no text",
    )
    nothing_written()


def test_missing_benign_corpus(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    one_error(run(*attack("dilution", "--benign-corpus", "nope.txt")), "nope.txt does not exist")
    nothing_written()


@pytest.mark.parametrize("command", ["attack", "evaluate"])
def test_a_selection_removed_during_the_run_is_not_named_in_the_report(
    world: TinyWorld, use_world: UseWorld, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Another run's --force (or a hand) removes the selection this run read, after it read it:
    the report would name a file that is not there, so none is written; the run says so."""
    import shutil

    from dsg.stages.evaluate import evaluate

    use_world(world)
    expand = evaluate.expand

    def expand_then_remove(selections: list, session: object) -> list:
        configs = expand(selections, session)
        for selection in selections:
            shutil.rmtree(selection.path.parent)
        return configs

    monkeypatch.setattr(evaluate, "expand", expand_then_remove)
    args = attack("format", "--format", "as-evaluated") if command == "attack" else [
        "evaluate", "--case", "tiny", "--out", "runs"
    ]  # fmt: skip
    one_error(run(*args), "selection.json was removed while this run went on", "run again")
    assert not list(Path("runs").rglob("attack.json")) and not list(
        Path("runs").rglob("report.json")
    )
    monkeypatch.undo()
    use_world(world)
    done = run(*args)
    assert done.exit_code == 0, done.output
    report = json.loads(Path(done.stdout.strip()).read_text())
    for named in report["inputs"]["selections"].values():
        assert (Path("runs") / named).is_file()
