"""Plugin discovery and the registries built from it.

Every plugin, first-party (under ``plugins/``) or third-party, is a module named by an entry point
in the ``dsg`` group. A plugin that fails to import is reported in one line and skipped; two
plugins registering one name in the same registry is a :class:`~dsg.errors.PluginConflict`. What a
plugin registers is checked against its Protocol in :mod:`dsg.interfaces` as it registers.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from dsg import hookspecs
from dsg.errors import PluginConflict, UserError
from dsg.interfaces import Attack, Case, CaseDefaults, ModelLoader, SAELoader, Strategy

ENTRY_POINT_GROUP = "dsg"

# registry name -> hook that fills it
REGISTRIES = {
    "sae_loaders": "register_sae_loaders",
    "model_loaders": "register_model_loaders",
    "cases": "register_cases",
    "strategies": "register_strategies",
    "attacks": "register_attacks",
    "commands": "register_commands",
}

KIND_LABEL = {
    "sae_loaders": "SAE loader",
    "model_loaders": "model loader",
    "cases": "case",
    "strategies": "strategy",
    "attacks": "attack",
    "commands": "command",
}

PROTOCOLS: dict[str, type] = {
    "sae_loaders": SAELoader,
    "model_loaders": ModelLoader,
    "cases": Case,
    "strategies": Strategy,
    "attacks": Attack,
}


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``dsg plugins`` shows it."""

    name: str
    module: str
    distribution: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Registry:
    """All registered objects by kind and name, and where each came from."""

    plugins: list[PluginInfo]
    entries: dict[str, dict[str, Any]]
    owners: dict[str, dict[str, str]]

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name``, or a UserError listing the choices."""
        table = self.entries[kind]
        if name not in table:
            choices = ", ".join(sorted(table)) or "(none installed)"
            raise UserError(f"unknown {KIND_LABEL[kind]} {name!r}; choose one of: {choices}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def description(self, kind: str, name: str) -> str:
        """What ``dsg plugins`` says of a registered object: its ``description`` (a command's is
        the first line of its docstring)."""
        obj = self.entries[kind][name]
        text = obj.__doc__ if kind == "commands" else obj.description
        return (text or "").strip().split("\n")[0]

    def reject(self, kind: str, name: str, reason: str) -> None:
        """Withdraw a registered object the core cannot accept; its plugin shows as failed."""
        owner = self.owners[kind].pop(name)
        del self.entries[kind][name]
        for info in self.plugins:
            if info.name == owner:
                info.registered[kind].remove(name)
                info.error = reason

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error is not None]


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def build_registry(extra_plugins: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Load every entry point, call its register hooks and collect what they register.

    ``extra_plugins`` (name, module-or-object) pairs are registered after the entry points; tests
    and embedding applications use it to add plugins without installing a distribution.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    infos = _load_entry_points(pm)
    for name, plugin in extra_plugins:
        module = getattr(plugin, "__name__", name)
        infos[name] = PluginInfo(name, module, distribution="(in-process)", version="")
        pm.register(plugin, name=name)
    reg = Registry(
        plugins=list(infos.values()),
        entries={kind: {} for kind in REGISTRIES},
        owners={kind: {} for kind in REGISTRIES},
    )
    for kind, hook_name in REGISTRIES.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            _run_register_hook(reg, kind, impl, infos[impl.plugin_name])
    return reg


def _load_entry_points(pm: pluggy.PluginManager) -> dict[str, PluginInfo]:
    """Import and register each entry point's module; one that fails is recorded, not raised."""
    infos: dict[str, PluginInfo] = {}
    for ep in _entry_points():
        if ep.name in infos:  # the same distribution visible twice on sys.path
            continue
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
        )
        infos[ep.name] = info
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return infos


def _run_register_hook(reg: Registry, kind: str, impl: Any, info: PluginInfo) -> None:
    """Call one plugin's hook for ``kind``. What it registers is checked as it comes and kept
    only if the whole hook succeeds, so a plugin is never half registered."""
    pending: list[tuple[str, Any]] = []

    def register(obj: Any) -> None:
        pending.append((checked_name(kind, obj, info.name), obj))

    try:
        impl.function(register=register)
    except Exception as exc:
        info.error = f"{impl.function.__name__} failed: {type(exc).__name__}: {exc}".splitlines()[0]
        return
    for name, obj in pending:
        if name in reg.entries[kind]:
            raise PluginConflict(
                f"{KIND_LABEL[kind]} {name!r} is registered by both plugin "
                f"{reg.owners[kind][name]!r} and plugin {info.name!r}; uninstall one of them"
            )
        reg.entries[kind][name] = obj
        reg.owners[kind][name] = info.name
        info.registered.setdefault(kind, []).append(name)


def checked_name(kind: str, obj: Any, owner: str) -> str:
    """The name ``obj`` registers under, once it is known to be what ``kind`` holds: a command
    is a function (named by its ``__name__``, ``_`` as ``-``); the rest satisfy their Protocol
    in :mod:`dsg.interfaces`. Otherwise a UserError naming the plugin and what is missing."""
    label = KIND_LABEL[kind]
    if kind == "commands":
        if not callable(obj) or not getattr(obj, "__name__", ""):
            raise UserError(f"plugin {owner!r} registered a {label} that is not a function")
        return str(obj.__name__).replace("_", "-")
    missing = [m for m in protocol_members(PROTOCOLS[kind]) if not hasattr(obj, m)]
    if missing:
        raise UserError(
            f"plugin {owner!r} registered a {label} ({type(obj).__name__}) without "
            f"{', '.join(missing)}; see {PROTOCOLS[kind].__name__} in dsg.api"
        )
    name = obj.name
    if not isinstance(name, str) or not name:
        raise UserError(f"plugin {owner!r} registered a {label} without a name")
    if kind == "cases" and not isinstance(obj.defaults, CaseDefaults):
        raise UserError(
            f"plugin {owner!r} registered case {name!r} whose defaults are not a CaseDefaults"
        )
    return name


def protocol_members(protocol: type) -> list[str]:
    """The attributes and methods a Protocol declares, its bases' included."""
    members: dict[str, None] = {}
    for cls in reversed(protocol.__mro__):
        if cls.__module__ in ("typing", "builtins"):
            continue
        members.update(dict.fromkeys(getattr(cls, "__annotations__", {})))
        members.update(
            dict.fromkeys(k for k, v in vars(cls).items() if callable(v) and not k.startswith("_"))
        )
    return list(members)


@cache
def registry() -> Registry:
    """The process-wide registry, built once on first use."""
    return build_registry()
