"""The settings a plugin declares: the same kinds of values, checks, options and config keys as
dsg's own (:mod:`dsg.config.settings`), owned by the plugin and by the attacks or strategies
that read them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsg.config.settings import GROUPS, WITH_TRAINING, Bounds, Declared, Setting, split_type
from dsg.config.values import convert
from dsg.core.errors import UserError, excerpt

NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
"""What a setting may be called: lowercase words joined by ``_`` (its option joins them by -)."""
KINDS = (str, int, float, bool, Path)


@dataclass(frozen=True)
class PluginSetting:
    """One setting a plugin declares through ``register_settings``.

    ``type`` is ``str``, ``int``, ``float``, ``bool`` or ``Path``, a list of one of them as
    ``tuple[int, ...]`` (a list key, a repeatable option), or one of them ``| None``.
    ``commands`` are the dsg commands that take it as an option (``"attack"``, ``"evaluate"``,
    ...); ``section`` is its docs/config.md section (``"Attacks"``, ``"Selection and
    threshold"``, ...). ``used_by`` names the attacks or strategies that read it: an option of
    one the run does not use is refused. ``check(settings)`` checks the value against the
    run's other settings before any model loads (a UserError)."""

    name: str
    type: Any
    default: Any
    help: str
    commands: tuple[str, ...]
    section: str
    used_by: tuple[str, ...] = ()
    option: str | None = None
    bounds: Bounds | None = None
    choices: tuple[str, ...] = ()
    docs_default: str | None = None
    within_context: bool = False
    after: str | None = None
    check: Callable[[Any], None] | None = None

    @property
    def description(self) -> str:
        return self.help


def declare(obj: Any, owner: str, taken: Mapping[str, Declared]) -> Declared:
    """``obj`` as a declared setting of plugin ``owner``, or a UserError naming what is wrong:
    not a :class:`PluginSetting`, a type, command or section dsg does not know, a default its
    own rules refuse, or a name or option ``taken`` already holds (dsg's or another plugin's)."""
    if not isinstance(obj, PluginSetting):
        raise UserError(
            f"plugin {owner!r} registered a setting that is not a PluginSetting "
            f"({type(obj).__name__})"
        )
    name = obj.name
    where = f"setting {excerpt(name)} of plugin {owner!r}"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"{where}: a setting is named in lowercase words joined by _")
    try:
        kind, repeated, optional = split_type(obj.type)
    except (TypeError, ValueError):
        kind, repeated, optional = None, False, False
    if kind not in KINDS or (repeated and optional):
        raise UserError(
            f"{where} has type {obj.type!r}; use str, int, float, bool or Path, a tuple of one "
            "(tuple[int, ...]) or one | None"
        )
    unknown = [c for c in obj.commands if c not in WITH_TRAINING]
    if not obj.commands or unknown:
        raise UserError(
            f"{where} names commands {list(obj.commands)}; choose from {', '.join(WITH_TRAINING)}"
        )
    if obj.section not in GROUPS:
        raise UserError(f"{where} is in section {obj.section!r}; choose one of {', '.join(GROUPS)}")
    spec = Setting(
        obj.help, obj.section, tuple(obj.commands), option=obj.option, bounds=obj.bounds,
        choices=tuple(obj.choices), docs_default=obj.docs_default,
        within_context=obj.within_context, plugin=owner, used_by=tuple(obj.used_by),
        after=obj.after, check=obj.check,
    )  # fmt: skip
    declared = Declared(name, kind, repeated, optional, obj.default, spec)
    _refuse_taken(declared, where, taken)
    after = taken.get(obj.after or "")
    if obj.after is not None and (after is None or after.spec.group != obj.section):
        raise UserError(f"{where} is listed after {obj.after!r}, not a setting of its section")
    if obj.default is not None:
        listed = list(obj.default) if isinstance(obj.default, tuple) else obj.default
        convert(declared, listed, f"{where}'s default", prefix=f"{where}'s default: ")
    return declared


def _refuse_taken(setting: Declared, where: str, taken: Mapping[str, Declared]) -> None:
    for other in taken.values():
        if setting.name == other.name or setting.option == other.option:
            plugin = other.spec.plugin
            whose = f"plugin {plugin!r}'s setting" if plugin else "dsg's own setting"
            clash = "name" if setting.name == other.name else f"option {setting.option}"
            raise UserError(
                f"refused: {where} takes the {clash} of {whose} {other.name!r}; rename it"
            )
