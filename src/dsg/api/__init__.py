"""What a plugin may import from dsg: everything here is kept stable and documented in
docs/plugins.md. The rest of ``dsg.*`` is internal and may change between versions.

Importing this module is cheap (no torch): the clamps a strategy builds (``DynamicClamp``,
``StaticClamp``, ``WindowedClamp``, ``GateStrategy``) are imported on first use. The rest of
the guardrail math (docs/api.md) is public from the package root.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.api.data import DataSource, read_text_corpus
from dsg.api.hookspecs import Register, hookimpl
from dsg.api.interfaces import (
    Attack,
    AttackPrompt,
    AttackRow,
    AttackTarget,
    CalibratedStrategy,
    CalibrationData,
    Case,
    ClozeCase,
    ClozeFormat,
    DescribedParams,
    EvalSet,
    ExpandingSAELoader,
    ExportableStrategy,
    FolderModelLoader,
    Intervention,
    LoadedModel,
    LoadedSAE,
    MCQuestion,
    ModelLoader,
    MuseCase,
    MuseData,
    PrefixDecidingIntervention,
    PromptFormat,
    SAELoader,
    SetScores,
    Strategy,
)
from dsg.api.mirror import HubDataset
from dsg.config.plugin_settings import PluginSetting
from dsg.config.settings import Bounds
from dsg.config.values import CaseDefaults
from dsg.core.errors import UserError, one_line_reason, unreadable_file_errors
from dsg.core.loading import hub_lookups, no_progress_bars, refuse_custom_code
from dsg_runtime.hook_names import hook_layer_of, parse_hook_name
from dsg_runtime.protocols import Gate
from dsg_runtime.safe_json import loads as parse_json

if TYPE_CHECKING:
    from dsg.guardrail import DynamicClamp, GateStrategy, StaticClamp, WindowedClamp

_CLAMPS = ("DynamicClamp", "StaticClamp", "WindowedClamp", "GateStrategy")

__all__ = [
    "DynamicClamp",
    "GateStrategy",
    "StaticClamp",
    "WindowedClamp",
    "Attack",
    "AttackPrompt",
    "AttackRow",
    "AttackTarget",
    "Bounds",
    "CalibratedStrategy",
    "CalibrationData",
    "Case",
    "CaseDefaults",
    "ClozeCase",
    "ClozeFormat",
    "DataSource",
    "DescribedParams",
    "EvalSet",
    "ExpandingSAELoader",
    "ExportableStrategy",
    "FolderModelLoader",
    "Gate",
    "HubDataset",
    "Intervention",
    "LoadedModel",
    "LoadedSAE",
    "MCQuestion",
    "ModelLoader",
    "MuseCase",
    "MuseData",
    "PluginSetting",
    "PrefixDecidingIntervention",
    "PromptFormat",
    "Register",
    "SAELoader",
    "SetScores",
    "Strategy",
    "UserError",
    "hook_layer_of",
    "hookimpl",
    "hub_lookups",
    "no_progress_bars",
    "one_line_reason",
    "parse_hook_name",
    "parse_json",
    "read_text_corpus",
    "refuse_custom_code",
    "registered",
    "sae_specs",
    "unreadable_file_errors",
]


def registered(kind: str, name: str) -> Any:
    """The object another plugin registered (``registered("sae_loaders", "local-sae")``), so a
    plugin builds on another's loader instead of importing that plugin's modules. ``kind`` is
    one of ``sae_loaders``, ``model_loaders``, ``cases``, ``strategies``, ``attacks``; an unknown
    name is a :class:`UserError` listing the choices. Call it when loading, not while
    registering."""
    from dsg.api.plugins import registry

    return registry().get(kind, name)


def sae_specs(release_pattern: str = ".*", id_pattern: str = ".*") -> list[str]:
    """Every SAE the installed loaders that can list their SAEs select by the two regexes (full
    match), as ``LOADER:spec``: what ``--sae-release-pattern`` and ``--sae-id-pattern`` run. A
    :class:`UserError` when nothing matches."""
    from dsg.api.plugins import registry

    return registry().expand_saes(release_pattern, id_pattern)


def __getattr__(name: str) -> Any:
    if name in _CLAMPS:
        from dsg import guardrail

        return getattr(guardrail, name)
    raise AttributeError(f"module 'dsg.api' has no attribute {name!r}")
