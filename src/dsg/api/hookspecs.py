"""Plugin hook specifications. Plugin authors read this page, not the core.

Every hook follows the register-callback pattern: dsg calls the hook with a ``register``
function and the plugin calls ``register(obj)`` once for each thing it adds. The object's
``name`` attribute is the name users type (``--case NAME``, ``--sae NAME``, ...). What each
object must provide is described by the Protocols in :mod:`dsg.api.interfaces`.

A plugin module implements any subset of these hooks with ``@dsg.hookimpl`` and is made
known to dsg through an entry point in the ``dsg`` group of its distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("dsg")
hookimpl = pluggy.HookimplMarker("dsg")

Register = Callable[[Any], None]


@hookspec
def register_settings(register: Register) -> None:
    """Register :class:`dsg.api.PluginSetting` objects: settings of the plugin's attacks,
    strategies or cases, each a config-file key and an option of the commands it names, checked
    like dsg's own. Its name (and option) may not be one of dsg's settings or another plugin's:
    the plugin is then refused. dsg collects every plugin's settings before anything else."""


@hookspec
def register_sae_loaders(register: Register) -> None:
    """Register :class:`dsg.api.interfaces.SAELoader` objects: they turn an ``--sae`` spec into a
    sae_lens SAE and its hook point."""


@hookspec
def register_model_loaders(register: Register) -> None:
    """Register :class:`dsg.api.interfaces.ModelLoader` objects: they turn a ``--model`` spec into a
    TransformerLens model and its tokenizer."""


@hookspec
def register_cases(register: Register) -> None:
    """Register :class:`dsg.api.interfaces.Case` objects: forget/retain corpora, evaluation sets
    (target first), prompt format and defaults."""


@hookspec
def register_strategies(register: Register) -> None:
    """Register :class:`dsg.api.interfaces.Strategy` objects: they turn a feature selection and its
    parameters into an intervention on the residual stream."""


@hookspec
def register_attacks(register: Register) -> None:
    """Register :class:`dsg.api.interfaces.Attack` objects: ways to get around a guardrail that
    ``dsg attack NAME`` measures on every configuration and on the unguarded model."""


@hookspec
def register_commands(register: Register) -> None:
    """Register functions that become ``dsg`` subcommands, as Typer reads them: the function's
    name (``_`` as ``-``) is the command, its docstring the help, its annotated parameters the
    arguments and options. A :class:`dsg.api.UserError` they raise is shown as one line with
    exit code 2. A command may not take the name of one of dsg's own."""
