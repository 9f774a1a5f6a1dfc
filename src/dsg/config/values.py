"""One value's way in: its conversion and checks, and the case defaults built from them.

A value from a config file, an option or a case default passes the same rules, declared once in
:mod:`dsg.config.settings`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from dsg.config.settings import Declared, Settings, declared, plugin_settings, values_of
from dsg.core.errors import UserError, excerpt
from dsg_runtime.checks import (
    INT64_MAX,
    INT64_MIN,
    check_bounds,
    check_clamp_dtype,
    check_float32,
    check_not_empty,
)


class CaseDefaults:
    """A case's defaults: its model and SAE, and values for any setting declared with
    ``case_may_set`` in :mod:`dsg.config.settings`; a config file or a CLI option overrides each.

    ``CaseDefaults(model=..., sae=..., n_features=(10, 20))``. A setting a case may not set, or a
    value of the wrong type, is an error when the case is defined. Read a value as an attribute
    (``defaults.n_features``); one the case leaves alone reads as dsg's default.
    """

    def __init__(self, model: str, sae: str, **settings: Any) -> None:
        known = declared()
        allowed = [name for name, s in known.items() if s.spec.case_may_set]
        values: dict[str, Any] = {}
        for name, value in {"model": model, "sae": sae, **settings}.items():
            if name not in allowed:
                raise TypeError(f"a case may not set {name!r}; it may set: {', '.join(allowed)}")
            listed = list(value) if isinstance(value, tuple) else value
            values[name] = convert(
                known[name], listed, f"case default {name}", prefix="case default: "
            )
        self.values: dict[str, Any] = values

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        setting = declared().get(name)
        if setting is None or not setting.spec.case_may_set:
            raise AttributeError(name)
        return setting.default

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CaseDefaults) and self.values == other.values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.values.items())))

    def __repr__(self) -> str:
        return f"CaseDefaults({', '.join(f'{k}={v!r}' for k, v in self.values.items())})"


def convert(setting: Declared, value: Any, where: str, *, prefix: str = "") -> Any:
    """A value as it enters (TOML, an option, a case default), checked and as :class:`Settings`
    holds it: an int where a float is expected is widened, a string becomes a path, and a single
    value where a list is expected is a list of one. Each item then passes :func:`check_value`,
    whose messages start with ``prefix``."""
    items = value if setting.repeated and isinstance(value, list) else [value]
    converted = [_convert_one(setting.kind, v, where) for v in items]
    try:
        for item in converted:
            check_value(setting, item)
    except UserError as exc:
        raise UserError(f"{prefix}{exc}") from None
    return tuple(converted) if setting.repeated else converted[0]


def _convert_one(kind: type, value: Any, where: str) -> Any:
    expected = str if kind is Path else kind
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{where} must be a {expected.__name__}, not {excerpt(value)}")
    if kind is Path:  # checked before the conversion: Path("") is the current directory
        return Path(check_not_empty(where, str(value)))
    return value


def check(s: Settings) -> None:
    """Reject values no run could use, before any model is loaded: dsg's rules, then the
    plugins' own checks of their settings."""
    values = values_of(s)
    for setting in [*declared().values(), *plugin_settings(s)]:
        value = values[setting.name]
        for item in value if setting.repeated else (value,):
            if item is not None:
                check_value(setting, item)
    for multiplier in s.multipliers:
        check_clamp_dtype(multiplier, s.dtype)
    for setting in plugin_settings(s):
        if setting.spec.check is not None:
            setting.spec.check(s)
    for item in s.lm_eval_tasks:
        if not any(name.strip() for name in item.split(",")):
            raise UserError(
                f"lm-eval tasks {excerpt(item)} names no task; pass task names such as "
                "wmdp_bio,mmlu, or leave --lm-eval-tasks off"
            )


def check_value(setting: Declared, value: Any) -> None:
    """The declared rules of one value (one item of a list setting), in the terms it is used in:
    integers fit in int64, numbers are finite and within their bounds and float32, strings and
    paths are not empty, choices and patterns are valid."""
    spec, label = setting.spec, setting.label
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:  # the runtime's check_int64, quoting an excerpt
            raise UserError(
                f"{label} {excerpt(value)} does not fit in a 64-bit integer (at most {INT64_MAX:,})"
            )
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{label} must be a finite number, got {value}")
    if spec.bounds is not None:
        low, high, above = spec.bounds.minimum, spec.bounds.maximum, spec.bounds.above_minimum
        check_bounds(label, value, low, high, above_minimum=above)
    if isinstance(value, float):
        check_float32(label, value)
    if isinstance(value, str):
        check_not_empty(label, value)
    if spec.choices and value not in spec.choices:
        raise UserError(
            f"unknown {label} {excerpt(value)}; choose one of: {', '.join(spec.choices)}"
        )
    if spec.regex:
        try:
            re.compile(value)
        except re.error as exc:
            raise UserError(f"bad SAE pattern {excerpt(value)} ({setting.name}): {exc}") from None
