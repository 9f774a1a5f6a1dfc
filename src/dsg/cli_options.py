"""Command-line options derived from the settings declared in :mod:`dsg.settings`.

:func:`setting_options` gives a Typer command one option per setting it takes, plus
``--config``; the command receives what was given as one :class:`Given`.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from dsg.settings import Declared, for_command

CONFIG_OPTION = "config"


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


def _parameter(setting: Declared) -> inspect.Parameter:
    kind: Any = list[setting.kind] if setting.repeated else setting.kind  # type: ignore[name-defined]
    help_text = setting.described + (" Repeatable." if setting.repeated else "")
    if setting.kind is bool:
        option = typer.Option(setting.option, help=help_text)
        return inspect.Parameter(
            setting.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, option],
        )
    return inspect.Parameter(
        setting.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[_optional(kind), typer.Option(setting.option, help=help_text)],
    )


def _config_parameter() -> inspect.Parameter:
    option = typer.Option("--config", help="TOML config file (see docs/config.md).")
    return inspect.Parameter(
        CONFIG_OPTION,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[_optional(Path), option],
    )


def setting_options(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command whose parameter ``given: Given`` receives the settings ``command``
    takes (see ``commands`` in :mod:`dsg.settings`); its other parameters stay as they are."""
    settings = for_command(command)
    names = {s.name for s in settings}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
            if p.name != "given"
        ]
        added = [_parameter(s) for s in settings] + [_config_parameter()]

        @functools.wraps(fn)
        def command_fn(**kwargs: Any) -> Any:
            given = {
                name: None if value is False else value
                for name, value in kwargs.items()
                if name in names
            }
            config = kwargs.get(CONFIG_OPTION)
            rest = {k: v for k, v in kwargs.items() if k not in names and k != CONFIG_OPTION}
            return fn(given=Given(config, given), **rest)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        command_fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command_fn.__annotations__ = {p.name: p.annotation for p in params}
        return command_fn

    return decorate
