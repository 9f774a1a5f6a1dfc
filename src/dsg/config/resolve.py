"""Settings: CLI options over a config file over the case's defaults over dsg's defaults.

The config file is found at ``--config``, ``$DSG_CONFIG``, ``./dsg.toml`` or ``[tool.dsg]`` in
``./pyproject.toml`` (first found wins). Unknown keys and wrongly typed values are errors. What
the keys are, their types and bounds, is declared in :mod:`dsg.config.settings`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.config.settings import Declared, Settings, declared, with_plugins
from dsg.config.values import check, convert
from dsg.core.errors import UserError, excerpt
from dsg.core.files import file_problem

if TYPE_CHECKING:
    from dsg.config.values import CaseDefaults

SAE_PATTERN_KEYS = ("sae_release_pattern", "sae_id_pattern")
ENV_VARIABLE = "DSG_CONFIG"


def find_config(
    explicit: Path | None, plugin: Sequence[Declared] = ()
) -> tuple[Path | None, dict[str, Any]]:
    """The config file in force and its checked table (empty when there is none); its keys are
    dsg's settings and those the ``plugin`` declarations add."""
    import tomli

    candidates: list[tuple[Path, bool]] = []
    if explicit is not None:
        problem = file_problem(explicit)
        if problem is not None:
            raise UserError(f"config file {explicit} {problem}; pass a TOML file")
        candidates.append((explicit, False))
    elif ENV_VARIABLE in os.environ:
        named = os.environ[ENV_VARIABLE]
        if not named.strip():
            raise UserError(
                f"${ENV_VARIABLE} is set but empty; point it at a TOML file or unset it"
            )
        env_path = Path(named)
        problem = file_problem(env_path)
        if problem is not None:
            raise UserError(
                f"${ENV_VARIABLE} points at {env_path}, which {problem}; point it at a TOML file"
            )
        candidates.append((env_path, False))
    else:
        candidates += [(Path("dsg.toml"), False), (Path("pyproject.toml"), True)]
    for path, is_pyproject in candidates:
        if not path.is_file():
            continue
        try:
            table = tomli.loads(path.read_text(encoding="utf-8-sig"))
        except tomli.TOMLDecodeError as exc:
            raise UserError(f"{path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text, so not a TOML config file") from None
        except OSError as exc:
            raise UserError(f"config file {path} cannot be read ({exc.strerror})") from None
        except RecursionError:
            raise UserError(f"{path} nests arrays or tables too deeply for a config file") from None
        except ValueError:  # (after its subclasses) an integer too long for Python to convert
            raise UserError(
                f"{path} holds an integer too long to read (more than "
                f"{sys.get_int_max_str_digits():,} digits); a setting takes at most a 64-bit "
                "integer"
            ) from None
        settings: Any = table
        if is_pyproject:
            tool = table.get("tool", {})
            settings = tool.get("dsg") if isinstance(tool, dict) else None
            if settings is None:
                continue
        if not isinstance(settings, dict):
            raise UserError(
                f"{path}: [tool.dsg] must be a table of settings, not {excerpt(settings)}"
            )
        return path, validate_config(settings, path, plugin)
    return None, {}


def validate_config(
    table: dict[str, Any], source: Path, plugin: Sequence[Declared] = ()
) -> dict[str, Any]:
    """Check keys, types and values; return values converted to what :class:`Settings` holds.
    Two spellings of one key (``n-features`` and ``n_features``) are refused, not merged. A
    plugin's key is checked whatever the run: one file may serve several commands and attacks."""
    known = with_plugins(plugin)
    clean: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UserError(
                f"{source}: unknown key {excerpt(key)}; known keys: {', '.join(sorted(known))}"
            )
        if name in spelled:
            raise UserError(
                f"{source}: {spelled[name]!r} and {key!r} are the same setting; keep one of them"
            )
        spelled[name] = key
        clean[name] = convert(known[name], value, f"{source}: {key}", prefix=f"{source}: ")
    return clean


def resolve(
    defaults: CaseDefaults,
    case: str,
    config: dict[str, Any],
    cli: dict[str, Any],
    plugin: Sequence[Declared] = (),
) -> Settings:
    """Merge case defaults, config and CLI values (None / empty means "not given"), dsg's
    settings and the ``plugin`` declarations' alike."""
    known = with_plugins(plugin)
    unknown = sorted(key for key in cli if key not in known)
    if unknown:
        raise UserError(
            f"unknown setting {excerpt(unknown[0])}; known settings: {', '.join(sorted(known))}"
        )
    merged: dict[str, Any] = {
        name: setting.default
        for name, setting in known.items()
        if setting.default is not dataclasses.MISSING
    }
    merged.update(defaults.values, case=case)
    config = _one_sae_choice(config, cli)
    for source in (config, cli):
        for key, value in source.items():
            if value is None or (isinstance(value, tuple | list) and not value):
                continue
            merged[key] = tuple(value) if isinstance(value, list) else value
    own = {name: value for name, value in merged.items() if name in declared()}
    settings = Settings(**own, plugin_values=tuple((s, merged[s.name]) for s in plugin))
    check(settings)
    return settings


def refuse_unselected(
    given: dict[str, Any], settings: Settings, kinds: Mapping[str, str], attack: str | None
) -> None:
    """Options given on the command line that only attacks or strategies the run leaves out
    read (``dsg attack format --learning-rate 0.5``) are refused rather than ignored, naming
    whose options they are (``kinds``: ``attack`` or ``strategy`` by name). A config file's
    keys are not: one file may serve other runs."""
    from dsg.config.settings import plugin_settings

    used = {*settings.strategies, *([attack] if attack else [])}
    owned = [s for s in plugin_settings(settings) if s.spec.used_by]
    stray = [s for s in owned if given.get(s.name) is not None and not used & set(s.spec.used_by)]
    if not stray:
        return
    owners = dict.fromkeys(f"{kinds.get(n, 'plugin')} {n!r}" for s in stray for n in s.spec.used_by)
    whose = f"{'it is an option' if len(stray) == 1 else 'they are options'} of {', '.join(owners)}"
    if attack is None:
        names = ", ".join(map(repr, settings.strategies))
        one = len(settings.strategies) == 1
        subject = f"strategy {names} does" if one else f"strategies {names} do"
        own = ""
    else:
        subject = f"attack {attack!r} does"
        mine = [s.option for s in owned if attack in s.spec.used_by]
        own = f" (its options: {', '.join(mine) or 'none'})"
    raise UserError(
        f"{subject} not read {', '.join(s.option for s in stray)}{own}: {whose}; leave it off"
    )


def _one_sae_choice(config: dict[str, Any], cli: dict[str, Any]) -> dict[str, Any]:
    """``sae`` names one SAE, the SAE patterns choose several: a source gives one or the other,
    and the CLI's choice replaces the config file's. Returns the config without the loser."""

    def given(source: dict[str, Any]) -> tuple[bool, bool]:
        return source.get("sae") is not None, any(
            source.get(k) is not None for k in SAE_PATTERN_KEYS
        )

    for where, source in (("options", cli), ("config file", config)):
        if all(given(source)):
            raise UserError(
                f"the {where} give both an SAE and SAE patterns; pass either --sae or "
                "--sae-release-pattern/--sae-id-pattern, not both"
            )
    cli_sae, cli_patterns = given(cli)
    dropped = SAE_PATTERN_KEYS if cli_sae else ("sae",) if cli_patterns else ()
    return {k: v for k, v in config.items() if k not in dropped}
