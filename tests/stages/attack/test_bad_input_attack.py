"""`dsg attack` with bad input: one error line, exit code 2, no run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from commands import nothing_written, one_error, run
from tiny import TinyWorld, UseWorld


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
        (
            ["format", "--scoring", "loglikelihood", "--format", "lm-eval"],
            ["format 'lm-eval' is a letter format", "--scoring loglikelihood", "cloze-qa"],
        ),
        (
            ["format", "--format", "cloze-qa"],
            ["format 'cloze-qa' is a log-likelihood format", "--scoring letter", "lm-eval"],
        ),
        (
            ["format", "--scoring", "loglikelihood", "--format", "cloze-system"],
            ["format 'cloze-system' cannot be rendered", "System role not supported"],
        ),
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

    args = attack("format", "--format", "as-evaluated") if command == "attack" else [
        "evaluate", "--case", "tiny", "--out", "runs"
    ]  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(evaluate, "expand", expand_then_remove)
        one_error(run(*args), "selection.json was removed while this run went on", "run again")
    assert not list(Path("runs").rglob("attack.json"))
    assert not list(Path("runs").rglob("report.json"))
    done = run(*args)
    assert done.exit_code == 0, done.output
    report = json.loads(Path(done.stdout.strip()).read_text())
    for named in report["inputs"]["selections"].values():
        assert (Path("runs") / named).is_file()


def test_dev_null_as_benign_corpus_is_not_a_regular_file(
    world: TinyWorld, use_world: UseWorld
) -> None:
    use_world(world)
    one_error(
        run(*attack("dilution", "--benign-corpus", "/dev/null")),
        "corpus file /dev/null is not a regular file",
    )
    nothing_written()


def test_the_target_set_is_not_benign_questions(world: TinyWorld, use_world: UseWorld) -> None:
    """The hazard questions themselves are refused as the benign text; a side-effect set runs."""
    use_world(world)
    one_error(
        run(*attack("dilution", "--benign-questions", "tiny-target", "--budget", "5")),
        "--benign-questions 'tiny-target' is the target set",
        "choose a side-effect set: tiny-side",
    )
    nothing_written()
    ok = run(
        *attack("dilution", "--benign-questions", "tiny-side", "--budget", "5"),
        "--placement", "before", "--questions", "all",
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output


def test_holding_out_every_forget_document_names_the_hold_out(
    world: TinyWorld, use_world: UseWorld
) -> None:
    use_world(world)
    line = one_error(
        run(*attack("relearn", "--relearn-holdout", "100")),
        "relearn_holdout 100% holds out all 12 forget documents",
        "pass a smaller --relearn-holdout",
    )
    assert "min_chars" not in line
    nothing_written()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["format", "--learning-rate", "0.5"], "attack 'format' does not read --learning-rate"),
        (["format", "--budget", "5", "--relearn-stages", "3"], "read --budget, --relearn-stages"),
        (["relearn", "--format", "lm-eval"], "attack 'relearn' does not read --format"),
        (["dilution", "--format", "lm-eval"], "(its options: --budget, --placement, --benign"),
        (["dilution", "--relearn-batch", "2"], "'dilution' does not read --relearn-batch"),
    ],
)
def test_options_of_other_attacks_are_refused(
    world: TinyWorld, use_world: UseWorld, args: list[str], fragment: str
) -> None:
    """An option no part of the chosen attack reads is refused, not silently ignored."""
    use_world(world)
    one_error(run(*attack(*args)), fragment, "leave it off")
    nothing_written()


@pytest.mark.parametrize(
    "args",
    [["dilution", "--placement", "middle"], ["format", "--format", "haiku"]],
)
def test_unknown_placements_and_formats_are_refused_before_the_model_loads(
    world: TinyWorld, use_world: UseWorld, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    from dsg.engine.session import Session

    def no_loading(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(Session, "model", no_loading)
    monkeypatch.setattr(Session, "sae", no_loading)
    use_world(world)
    one_error(run(*attack(*args)), "unknown")
    nothing_written()
