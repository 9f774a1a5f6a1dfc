"""dsg plugin: the attacks shipped with dsg, run by ``dsg attack NAME``.

``dilution`` pads each question with benign text; ``format`` asks the same questions in the
prompt formats a user might type (letter or cloze prompts, as the run's ``--scoring`` reads
them); ``relearn`` fine-tunes a copy of the model on hazard text. Each hands its prompts (and,
for ``relearn``, its model) to dsg's engine, which answers them unguarded and under every
configuration. Their options (``--budget``, ``--learning-rate``, ``--relearn-stages``,
``--format``, ...) are declared here, each owned by the attack that reads it. See
docs/robustness.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsg.api import Bounds, PluginSetting, Register, hookimpl
from dsg_attacks.dilution import DilutionAttack
from dsg_attacks.formats import FormatAttack
from dsg_attacks.relearn import RelearnAttack

ATTACK = ("attack",)
SECTION = "Attacks"


def _setting(
    name: str, attack: str, kind: Any, default: Any, help: str, **more: Any
) -> PluginSetting:
    """A setting of the ``attack`` command that only ``attack`` reads."""
    return PluginSetting(
        name, kind, default, f"{attack}: {help}", ATTACK, SECTION, used_by=(attack,), **more
    )


POSITIVE = Bounds(0, None, above_minimum=True)

SETTINGS = (
    _setting(
        "budgets", "dilution", tuple[int, ...], (0, 25, 50, 100, 200, 400),
        "benign tokens inserted into each prompt. A budget that does not fit the model's "
        "context beside the longest prompt is refused, naming the largest that fits.",
        option="--budget", bounds=Bounds(0, None),
    ),
    _setting(
        "placements", "dilution", tuple[str, ...], ("before", "after", "around"),
        "where the benign text goes: before the question, after its choices, or half on "
        "each side (under log-likelihood scoring: before the pre-question line, after the "
        "question, or half on each side; the choices are never padded).",
        option="--placement",
    ),
    _setting(
        "benign_corpus", "dilution", Path | None, None,
        "the benign text, same formats as --retain-corpus (default: the case's retain "
        "corpus).",
    ),
    _setting(
        "benign_questions", "dilution", str | None, None,
        "the benign text is the question text of this eval set of the case (e.g. cities) "
        "instead of a corpus: benign text that looks like the questions.",
    ),
    _setting(
        "learning_rates", "relearn", tuple[float, ...], (1e-5, 1e-4, 1e-3),
        "AdamW learning rates; a copy of the model is fine-tuned at each.",
        option="--learning-rate", bounds=POSITIVE,
    ),
    _setting(
        "relearn_batch", "relearn", int, 8,
        "held-out forget rows per optimiser step (the scoring --batch-size is apart), drawn "
        "in a seeded order that cycles through the rows, reshuffled every pass.",
        bounds=POSITIVE,
    ),
    _setting(
        "relearn_stage_steps", "relearn", int, 10,
        "optimiser steps between two scorings of the fine-tuned copy.",
        bounds=POSITIVE,
    ),
    _setting(
        "relearn_stages", "relearn", int, 5,
        "how many times the copy is trained --relearn-stage-steps steps and scored (after "
        "step 0, the original model); the default is 50 steps per learning rate.",
        bounds=POSITIVE,
    ),
    _setting(
        "formats", "format", tuple[str, ...], (),
        "the prompt formats to try, those of the run's --scoring (docs/robustness.md lists "
        "them; an unknown name, or one of the other scoring, is refused with the list).",
        option="--format", docs_default="all",
    ),
)  # fmt: skip
"""The shipped attacks' options, each owned by the attack that reads it."""


@hookimpl
def register_settings(register: Register) -> None:
    for setting in SETTINGS:
        register(setting)


@hookimpl
def register_attacks(register: Register) -> None:
    register(DilutionAttack())
    register(FormatAttack())
    register(RelearnAttack())
