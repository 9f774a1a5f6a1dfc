"""`dsg attack` with bad input: one error line, exit code 2, no run directory."""

from __future__ import annotations

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
