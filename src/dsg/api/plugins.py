"""Plugin discovery and the registries built from it.

Every plugin, first-party (under ``plugins/``) or third-party, is a module named by an entry point
in the ``dsg`` group. A plugin that fails to import is reported in one line and skipped, whatever
it raises (``SystemExit`` included: a plugin cannot end dsg); only the user's own Ctrl-C stops
the loading. dsg's own plugins come first: a third-party entry point with one of their names, or
a third-party object with the name of one of theirs, is refused, not loaded in their place. Two
third-party plugins registering one name in the same registry is a
:class:`~dsg.core.errors.PluginConflict`. What a plugin registers is checked against its Protocol in
:mod:`dsg.api.interfaces` as it registers. A plugin's settings are collected first, checked as
dsg's own are (:mod:`dsg.config.plugin_settings`); one whose name or option is taken refuses
the plugin, which then registers nothing.
"""

from __future__ import annotations

import importlib.metadata
import re
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pluggy

from dsg.api import hookspecs
from dsg.api.interfaces import (
    Attack,
    Case,
    ExpandingSAELoader,
    FolderModelLoader,
    ModelLoader,
    SAELoader,
    Strategy,
)
from dsg.config.plugin_settings import declare
from dsg.config.settings import Declared, declared
from dsg.config.values import CaseDefaults
from dsg.core.errors import PluginConflict, UserError, excerpt, one_line

ENTRY_POINT_GROUP = "dsg"
FIRST_PARTY = "dsg"
"""The distribution whose entry points are dsg's own plugins."""

COMMAND_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
"""What a plugin command may be called: lowercase words of letters and digits joined by ``-``."""


@dataclass(frozen=True)
class Kind:
    """One kind of registered object: the hook that fills its registry, how messages name it,
    and the Protocol in :mod:`dsg.api.interfaces` its objects satisfy (None: checked by hand)."""

    hook: str
    label: str
    protocol: type | None = None


KINDS = {
    # settings first: a plugin refused for its settings registers nothing else
    "settings": Kind("register_settings", "setting"),
    "sae_loaders": Kind("register_sae_loaders", "SAE loader", SAELoader),
    "model_loaders": Kind("register_model_loaders", "model loader", ModelLoader),
    "cases": Kind("register_cases", "case", Case),
    "strategies": Kind("register_strategies", "strategy", Strategy),
    "attacks": Kind("register_attacks", "attack", Attack),
    "commands": Kind("register_commands", "command"),
}
"""Every registry, by name, in the order plugins are read."""


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``dsg plugins`` shows it."""

    name: str
    module: str
    distribution: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    first_party: bool = False


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
            skipped = ", ".join(repr(p.name) for p in self.failures)
            hint = f" (skipped plugins, see `dsg plugins`: {skipped})" if skipped else ""
            raise UserError(
                f"unknown {KINDS[kind].label} {excerpt(name)}; choose one of: {choices}{hint}"
            )
        return table[name]

    def transformers_reference(self, reference: str) -> str:
        """What transformers loads for a ``--model`` reference: the folder of a model loader
        that makes its own folders (:class:`FolderModelLoader`, a packaged GGUF model) when one
        accepts the name; an existing path or any other name (a hub id) unchanged."""
        if Path(reference).exists():
            return reference
        loaders = self.entries["model_loaders"]
        head, sep, rest = reference.partition(":")
        if sep and isinstance(loaders.get(head), FolderModelLoader):
            return loaders[head].transformers_folder(rest)
        for name in sorted(loaders):
            loader = loaders[name]
            if isinstance(loader, FolderModelLoader) and loader.can_load(reference):
                return loader.transformers_folder(reference)
        return reference

    def expand_saes(self, release_pattern: str, id_pattern: str) -> list[str]:
        """The SAE specs the patterns (full match) select, as ``LOADER:spec``, from every loader
        that can list its SAEs (:class:`ExpandingSAELoader`), in loader-name order and each
        loader's own order; a UserError when none can list or nothing matches. ``dsg saes`` and
        the SAE sweeps both list SAEs this way."""
        loaders = self.entries["sae_loaders"]
        expanders = [n for n in sorted(loaders) if isinstance(loaders[n], ExpandingSAELoader)]
        if not expanders:
            raise UserError(
                "no installed SAE loader can list its SAEs, so SAE patterns cannot be used; "
                "pass --sae (see `dsg plugins`)"
            )
        specs = [
            f"{n}:{spec}"
            for n in expanders
            for spec in loaders[n].expand(release_pattern, id_pattern)
        ]
        if not specs:
            raise UserError(
                f"no SAE matches release pattern {release_pattern!r} and id pattern "
                f"{id_pattern!r} (full match); list the choices with `dsg saes` and "
                "`dsg saes RELEASE`"
            )
        return list(dict.fromkeys(specs))

    @property
    def settings(self) -> list[Declared]:
        """The settings plugins declared, in the order they registered them."""
        return list(self.entries["settings"].values())

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def description(self, kind: str, name: str) -> str:
        """What ``dsg plugins`` says of a registered object: its ``description`` (a command's is
        the first line of its docstring, a setting's of its help)."""
        obj = self.entries[kind][name]
        if kind == "commands":
            text = obj.__doc__
        else:
            text = obj.spec.help if kind == "settings" else obj.description
        return (text or "").strip().split("\n")[0]

    def reject(self, kind: str, name: str, reason: str) -> None:
        """Withdraw a registered object the core cannot accept; its plugin shows as failed."""
        owner = self.owners[kind].pop(name)
        del self.entries[kind][name]
        for info in self.plugins:
            if info.name == owner and name in info.registered.get(kind, []):
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
    with _user_interrupts() as user_pressed_ctrl_c:
        infos, refused = _load_entry_points(pm, user_pressed_ctrl_c)
        for name, plugin in extra_plugins:
            module = getattr(plugin, "__name__", name)
            infos[name] = PluginInfo(name, module, distribution="(in-process)", version="")
            pm.register(plugin, name=name)
        reg = Registry(
            plugins=[*infos.values(), *refused],
            entries={kind: {} for kind in KINDS},
            owners={kind: {} for kind in KINDS},
        )
        refused_settings: set[str] = set()
        for kind, spec in KINDS.items():
            impls = getattr(pm.hook, spec.hook).get_hookimpls()
            # dsg's own first, whatever order pluggy (or a plugin's tryfirst) gives
            for impl in sorted(impls, key=lambda i: not infos[i.plugin_name].first_party):
                info = infos[impl.plugin_name]
                if info.name in refused_settings:
                    continue
                _run_register_hook(reg, kind, impl, info, user_pressed_ctrl_c)
                if kind == "settings" and info.error is not None:
                    refused_settings.add(info.name)
    return reg


@contextmanager
def _user_interrupts() -> Iterator[Callable[[], bool]]:
    """Whether the user pressed Ctrl-C meanwhile. A ``KeyboardInterrupt`` that a plugin raises
    itself is a broken plugin; one from a real Ctrl-C still stops dsg. Where no handler can be
    set (off the main thread, or a SIGINT handler not set from Python) every
    ``KeyboardInterrupt`` counts as the user's."""
    pressed = False
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal pressed
        if previous == signal.SIG_IGN:
            return
        pressed = True
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    installed = False
    if previous is not None:
        try:
            signal.signal(signal.SIGINT, on_sigint)
            installed = True
        except ValueError:  # not the main thread
            pass
    try:
        yield (lambda: pressed) if installed else (lambda: True)
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


def _failure(exc: BaseException, user_pressed_ctrl_c: Callable[[], bool]) -> str:
    """A plugin's exception as its one-line failure; the user's Ctrl-C is raised on."""
    if isinstance(exc, KeyboardInterrupt) and user_pressed_ctrl_c():
        raise exc
    return one_line(exc)


def _is_first_party(ep: importlib.metadata.EntryPoint) -> bool:
    dist = ep.dist
    return dist is not None and re.sub(r"[-_.]+", "-", dist.name).lower() == FIRST_PARTY


def _load_entry_points(
    pm: pluggy.PluginManager, user_pressed_ctrl_c: Callable[[], bool]
) -> tuple[dict[str, PluginInfo], list[PluginInfo]]:
    """Import and register each entry point's module, dsg's own first; one that fails is
    recorded, not raised. Also returns the entry points refused because another distribution
    already took their name (dsg's own always keep theirs)."""
    infos: dict[str, PluginInfo] = {}
    refused: list[PluginInfo] = []
    for ep in sorted(_entry_points(), key=lambda ep: not _is_first_party(ep)):
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
            first_party=_is_first_party(ep),
        )
        taken = infos.get(ep.name)
        if taken is not None:
            if taken.distribution != info.distribution:
                owner = "dsg's own" if taken.first_party else f"{taken.distribution!r}'s"
                info.error = (
                    f"refused: its entry point {ep.name!r} has the name of {owner} plugin and "
                    f"would replace it; rename the entry point in {info.distribution!r}"
                )
                refused.append(info)
            continue  # else the same distribution visible twice on sys.path
        infos[ep.name] = info
        try:
            pm.register(ep.load(), name=ep.name)
        except BaseException as exc:  # a broken plugin must not take the others, or dsg, down
            info.error = _failure(exc, user_pressed_ctrl_c)
    return infos, refused


def _run_register_hook(
    reg: Registry, kind: str, impl: Any, info: PluginInfo, user_pressed_ctrl_c: Callable[[], bool]
) -> None:
    """Call one plugin's hook for ``kind``. What it registers is checked as it comes and kept
    only if the whole hook succeeds, so a plugin is never half registered."""
    pending: list[tuple[str, Any]] = []
    taken = {**declared(), **reg.entries["settings"]}

    def register(obj: Any) -> None:
        if kind == "settings":
            setting = declare(obj, info.name, taken)
            taken[setting.name] = setting
            pending.append((setting.name, setting))
            return
        pending.append((checked_name(kind, obj, info.name), obj))

    try:
        impl.function(register=register)
    except BaseException as exc:
        reason = _failure(exc, user_pressed_ctrl_c)
        # a setting whose name is taken refuses the whole plugin, as a taken name does below
        taken_name = kind == "settings" and reason.startswith("refused: ")
        info.error = reason if taken_name else f"{impl.function.__name__} failed: {reason}"
        return
    label = KINDS[kind].label
    ours = [n for n, _ in pending if _owned_by_dsg(reg, kind, n)]
    if ours and not info.first_party:
        info.error = f"refused: its {label} {ours[0]!r} is one of dsg's own; rename it"
        return
    for name, obj in pending:
        if name in reg.entries[kind]:
            raise PluginConflict(
                f"{KINDS[kind].label} {name!r} is registered by both plugin "
                f"{reg.owners[kind][name]!r} and plugin {info.name!r}; uninstall one of them"
            )
        reg.entries[kind][name] = obj
        reg.owners[kind][name] = info.name
        info.registered.setdefault(kind, []).append(name)


def _owned_by_dsg(reg: Registry, kind: str, name: str) -> bool:
    return any(p.first_party and name in p.registered.get(kind, []) for p in reg.plugins)


def checked_name(kind: str, obj: Any, owner: str) -> str:
    """The name ``obj`` registers under, once it is known to be what ``kind`` holds: a command
    is a function (named by its ``__name__``, ``_`` as ``-``); the rest satisfy their Protocol
    in :mod:`dsg.api.interfaces`. Otherwise a UserError naming the plugin and what is missing."""
    label, protocol = KINDS[kind].label, KINDS[kind].protocol
    if protocol is None:  # a command: settings are checked where they are declared
        if not callable(obj) or not getattr(obj, "__name__", ""):
            raise UserError(f"plugin {owner!r} registered a {label} that is not a function")
        name = str(obj.__name__).replace("_", "-")
        if not COMMAND_NAME.fullmatch(name):
            raise UserError(
                f"plugin {owner!r} registered a {label} named {name!r}; a command is named by "
                "its function (_ as -): lowercase letters and digits, words joined by -"
            )
        return name
    missing = [m for m in protocol_members(protocol) if not hasattr(obj, m)]
    if missing:
        raise UserError(
            f"plugin {owner!r} registered a {label} ({type(obj).__name__}) without "
            f"{', '.join(missing)}; see {protocol.__name__} in dsg.api"
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
