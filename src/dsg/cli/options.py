"""Command-line options derived from the settings declared in :mod:`dsg.config.settings`.

:func:`setting_options` gives a Typer command one option per setting it takes, plus
``--config``; the command receives what was given as one :class:`Given`.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from dsg.config.settings import (
    ATTACKS,
    DATA,
    EVALUATION,
    RUN,
    SAE_TRAINING,
    SCALE_OUT,
    SELECTION,
    Declared,
    for_command,
)
from dsg_runtime.checks import check_not_empty

CONFIG_OPTION = "config"

MODEL_AND_SAE, DATA_PANEL, OUTPUT = "Model and SAE", "Data", "Output"
PANEL_OF_GROUP = {
    RUN: MODEL_AND_SAE,
    DATA: DATA_PANEL,
    SELECTION: "Selection",
    EVALUATION: "Evaluation",
    ATTACKS: "Attack",
    SCALE_OUT: "Scale-out",
    SAE_TRAINING: "SAE training",
}
PANELS = (*PANEL_OF_GROUP.values(), OUTPUT)
"""The help panels in the order a run flows; a command's own options follow."""
PANEL_OF_SETTING = {"out": OUTPUT, "force": OUTPUT, "seed": DATA_PANEL}
FLAG = ""
"""The metavar of a flag: none, where Typer would show ``<bool>`` as if it took a value."""


@dataclass(frozen=True)
class Given:
    """The config file named on the command line and the settings given as options; an option
    left off is absent, so the config file or the case's default holds."""

    config: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _optional(kind: Any) -> Any:
    """``Optional[kind]`` as a typing.Union: Typer before 0.15 cannot read ``kind | None``
    built at run time (a types.UnionType)."""
    return typing.Optional[kind]  # noqa: UP045


def panel(setting: Declared) -> str:
    """The help panel a setting's option is listed in: its docs section, except that what a run
    writes has a panel of its own and the seed goes with the data it samples."""
    return PANEL_OF_SETTING.get(setting.name) or PANEL_OF_GROUP[setting.spec.group]


def _parameter(setting: Declared) -> inspect.Parameter:
    # A path arrives as text: Typer would turn "" into Path("."), the current directory.
    entered = str if setting.kind is Path else setting.kind
    kind: Any = list[entered] if setting.repeated else entered  # type: ignore[valid-type]
    help_text = setting.described + (" Repeatable." if setting.repeated else "")
    where = panel(setting)
    if setting.kind is bool:
        option = typer.Option(setting.option, help=help_text, rich_help_panel=where, metavar=FLAG)
        return inspect.Parameter(
            setting.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, option],
        )
    option = typer.Option(setting.option, help=help_text, rich_help_panel=where)
    return inspect.Parameter(
        setting.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[_optional(kind), option],
    )


def _config_parameter() -> inspect.Parameter:
    option = typer.Option("--config", help="TOML config file (see docs/config.md).")
    return inspect.Parameter(
        CONFIG_OPTION,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[_optional(str), option],
    )


def _entered(settings: list[Declared], kwargs: dict[str, Any]) -> Given:
    """The options given, each checked as it enters by the rules the config file's keys follow
    (:func:`dsg.config.values.convert`); an option left off (None, or a flag left False) is
    absent."""
    from dsg.config.values import convert

    given: dict[str, Any] = {}
    for setting in settings:
        value = kwargs.get(setting.name)
        if value is None or value is False or (isinstance(value, list | tuple) and not value):
            given[setting.name] = None
        else:
            given[setting.name] = convert(setting, value, setting.option)
    config = kwargs.get(CONFIG_OPTION)
    return Given(None if config is None else Path(check_not_empty("--config", config)), given)


def setting_options(
    command: str, plugin: Sequence[Declared] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command whose parameter ``given: Given`` receives the settings ``command``
    takes (see ``commands`` in :mod:`dsg.config.settings`), dsg's and those the ``plugin``
    declarations add; its other parameters stay as they are."""
    settings = for_command(command, plugin)
    names = {s.name for s in settings}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
            if p.name != "given"
        ]
        in_panels = sorted(settings, key=lambda s: PANELS.index(panel(s)))
        added = [_config_parameter()] + [_parameter(s) for s in in_panels]

        @functools.wraps(fn)
        def command_fn(**kwargs: Any) -> Any:
            rest = {k: v for k, v in kwargs.items() if k not in names and k != CONFIG_OPTION}
            return fn(given=_entered(settings, kwargs), **rest)

        params = added + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command_fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command_fn.__annotations__ = {p.name: p.annotation for p in params}
        return command_fn

    return decorate
