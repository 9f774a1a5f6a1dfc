"""`dsg attack dilution --benign-questions SET`: the benign text is the question text of one of
the case's eval sets, all its questions whatever the run's subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from commands import nothing_written, one_error, run
from tiny import TinyCase, TinyPlugin, TinyWorld, UseWorld, open_session

from dsg.api.plugins import build_registry
from dsg.stages.attack import attack

pytestmark = pytest.mark.usefixtures("no_config_file")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("benign"))


def target(session: Any) -> attack.Target:
    none: Any = None
    return attack.Target(session.settings, none, 0, none, [], none, session, session.run_dir)


def test_the_benign_text_is_the_sets_questions(world: TinyWorld, tmp_path: Path) -> None:
    registry = build_registry(extra_plugins=[("tiny", TinyPlugin(world))])
    session = open_session(registry, tmp_path / "run", benign_questions="tiny-side")
    (side,) = [e for e in TinyCase().eval_sets(None) if e.name == "tiny-side"]
    texts = target(session).benign_texts()
    assert texts == [q.question for q in side.questions] and len(texts) == 6
    retain = target(open_session(registry, tmp_path / "run")).benign_texts()
    assert retain != texts and retain == TinyCase().retain_texts(None)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--benign-questions", "nope"], ["unknown eval set 'nope'", "tiny-side"]),
        (
            ["--benign-questions", "tiny-side", "--benign-corpus", "b.txt"],
            ["--benign-corpus or --benign-questions, not both"],
        ),
    ],
)
def test_bad_benign_questions(
    world: TinyWorld, use_world: UseWorld, args: list[str], fragments: list[str]
) -> None:
    use_world(world)
    Path("b.txt").write_text("some benign text\n")
    one_error(run("attack", "dilution", *args, "--case", "tiny", "--out", "runs"), *fragments)
    nothing_written()
