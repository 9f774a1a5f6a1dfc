"""A third-party plugin's own settings: its option in ``--help``, its config-file key, the same
checks as dsg's settings, and a plugin refused when its setting's name or option is taken."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dsg.api import (
    AttackPrompt,
    AttackRow,
    AttackTarget,
    Bounds,
    PluginSetting,
    UserError,
    hookimpl,
)
from dsg.api.plugins import Registry, build_registry
from dsg.cli.options import Given, setting_options
from dsg.config.resolve import find_config, refuse_unselected, resolve
from dsg.config.settings import replaced
from dsg.config.values import CaseDefaults


class RepeatAttack:
    """Ask each question several times in one prompt (the docs/plugins.md example)."""

    name = "repeat"
    description = "each question asked several times in one prompt"
    axis = "repeats"

    def check(self, target: AttackTarget) -> None: ...

    def run(self, target: AttackTarget) -> Iterator[AttackRow]:
        render = target.prompt_format.render
        for copies in target.settings.repeats:  # the plugin's own setting
            prompts = {}
            for s in target.eval_sets:
                texts = [
                    render(target.tokenizer, s, " ".join([q.question] * copies), q.choices)
                    for q in s.questions
                ]
                prompts[s.name] = [
                    AttackPrompt(tuple(ids), q.answer)
                    for q, ids in zip(s.questions, target.encode(texts), strict=True)
                ]
            yield AttackRow({"repeats": copies}, target.score(prompts))


class RepeatPlugin:
    """Declares ``repeats`` (``--repeat``), read by its attack ``repeat`` only."""

    def __init__(self, **more: Any) -> None:
        self.more = more

    @hookimpl
    def register_settings(self, register: Any) -> None:
        register(
            PluginSetting(
                "repeats", tuple[int, ...], (1, 2, 4), "repeat: copies of each question.",
                ("attack",), "Attacks", used_by=("repeat",), option="--repeat",
                bounds=Bounds(0, 16, above_minimum=True), **self.more,
            )
        )  # fmt: skip

    @hookimpl
    def register_attacks(self, register: Any) -> None:
        register(RepeatAttack())


@pytest.fixture(scope="module")
def reg() -> Registry:
    return build_registry(extra_plugins=[("repeat", RepeatPlugin())])


def probe(reg: Registry, *args: str) -> tuple[Any, Given | None]:
    """``attack`` options as the command line builds them from the registry's settings."""
    seen: list[Given] = []
    app = typer.Typer()

    @app.command()
    @setting_options("attack", reg.settings)
    def attack(given: Given) -> None:
        seen.append(given)

    @app.command()
    def other() -> None:
        """Unused: two commands, so the probe is called by name."""

    result = CliRunner().invoke(app, ["attack", *args], env={"COLUMNS": "200"})
    return result, seen[0] if seen else None


def test_the_option_is_listed_and_checked_like_dsgs_own(reg: Registry) -> None:
    assert reg.failures == [] and "repeat" in reg.names("attacks")
    shown, _ = probe(reg, "--help")
    assert shown.exit_code == 0 and "--repeat" in shown.output
    assert "repeat: copies of each question." in shown.output
    _, given = probe(reg, "--repeat", "3", "--repeat", "5")
    assert given is not None and given.settings["repeats"] == (3, 5)
    refused, given = probe(reg, "--repeat", "17")
    assert given is None and str(refused.exception) == "repeat must be within (0, 16], got 17"


def test_the_config_file_key_is_read_and_validated(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DSG_CONFIG", raising=False)
    config = tmp_path / "dsg.toml"
    config.write_text("repeats = [3, 8]\nbudgets = [5]\n")
    _, table = find_config(config, reg.settings)
    settings = resolve(CaseDefaults(model="m", sae="s"), "c", table, {}, reg.settings)
    assert settings.repeats == (3, 8) and settings.budgets == (5,)
    assert replaced(settings, repeats=(2,)).repeats == (2,)
    config.write_text("repeats = [0]\n")
    with pytest.raises(UserError, match=r"dsg.toml: repeat must be within \(0, 16\], got 0"):
        find_config(config, reg.settings)
    config.write_text('repeats = "many"\n')
    with pytest.raises(UserError, match="dsg.toml: repeats must be a int, not 'many'"):
        find_config(config, reg.settings)
    with pytest.raises(UserError, match="unknown key 'repeats'"):
        find_config(config, [s for s in reg.settings if s.name != "repeats"])


def test_an_option_of_an_attack_not_run_is_refused_but_a_config_key_is_not(reg: Registry) -> None:
    settings = resolve(CaseDefaults(model="m", sae="s"), "c", {}, {}, reg.settings)
    kinds = {"repeat": "attack", "format": "attack"}
    with pytest.raises(UserError) as refused:
        refuse_unselected({"repeats": (2,)}, settings, kinds, "format")
    assert str(refused.value) == (
        "attack 'format' does not read --repeat (its options: --format): it is an option of "
        "attack 'repeat'; leave it off"
    )
    refuse_unselected({"repeats": (2,)}, settings, kinds, "repeat")
    from_file = resolve(CaseDefaults(model="m", sae="s"), "c", {"repeats": (2,)}, {}, reg.settings)
    refuse_unselected({}, from_file, kinds, "format")  # the file may serve the repeat attack too


@pytest.mark.parametrize(
    ("more", "reason"),
    [
        ({"name": "seq_len"}, "takes the name of dsg's own setting 'seq_len'; rename it"),
        ({"name": "budgets"}, "takes the name of plugin 'attacks''s setting 'budgets'"),
        ({"option": "--budget"}, "takes the option --budget of plugin 'attacks''s setting"),
        ({"type": list}, "has type <class 'list'>"),
        ({"commands": ("nonsense",)}, "names commands ['nonsense']"),
        ({"default": (0,)}, "'s default: repeat must be within (0, 16], got 0"),
    ],
)
def test_a_setting_that_cannot_be_taken_refuses_its_plugin(more: dict, reason: str) -> None:
    plugin = RepeatPlugin()
    plugin.more = {}

    @hookimpl
    def register_settings(register: Any) -> None:
        fields = {"name": "repeats", "type": tuple[int, ...], "default": (1,), "help": "h"}
        fields |= {"commands": ("attack",), "section": "Attacks", "option": "--repeat"}
        fields |= {"bounds": Bounds(0, 16, above_minimum=True)}
        register(PluginSetting(**(fields | more)))

    plugin.register_settings = register_settings  # type: ignore[method-assign]
    reg = build_registry(extra_plugins=[("repeat", plugin)])
    (failed,) = reg.failures
    assert failed.name == "repeat" and reason in (failed.error or "")
    assert "\n" not in (failed.error or "")
    assert "repeat" not in reg.names("attacks")  # a refused plugin registers nothing
    assert "repeats" not in [s.name for s in reg.settings]
