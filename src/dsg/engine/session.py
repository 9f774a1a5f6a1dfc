"""A run's shared state: resolved settings, the chosen case, and lazily loaded model and SAE.

Stages take a Session so that each loads only what it needs and nothing is loaded twice.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from dsg.api.data import DataSource
from dsg.api.interfaces import Case, LoadedModel, LoadedSAE, Strategy
from dsg.api.plugins import Registry, registry
from dsg.config.resolve import find_config, refuse_unselected, resolve
from dsg.config.settings import Settings, plugin_settings, values_of, with_plugins
from dsg.core.artifacts import RunDir
from dsg.core.devices import check_device
from dsg.core.errors import UserError, excerpt

if TYPE_CHECKING:
    import torch

    from dsg.engine.backends import ModelBackend

stderr = Console(stderr=True)


def default_case(reg: Registry, model: str | None = None) -> str:
    """The case to run when none is named: the one case made for ``model`` (whose default model
    it is), else the one case that declares itself the default (``default = True``)."""
    if model is not None:
        made_for = [n for n, c in reg.entries["cases"].items() if c.defaults.model == model]
        if len(made_for) == 1:
            return made_for[0]
    defaults = [n for n, c in reg.entries["cases"].items() if getattr(c, "default", False)]
    if len(defaults) == 1:
        return defaults[0]
    raise UserError(f"pass --case; installed cases: {', '.join(reg.names('cases')) or '(none)'}")


@dataclass
class Session:
    settings: Settings
    registry: Registry
    case: Case
    config_path: Path | None = None
    console: Console = field(default_factory=lambda: stderr)
    shared_out: Path | None = None
    """Where SAE-independent artifacts go (a sweep's ``{out}/shared``); None: the run dir."""
    shared_ready: bool = False
    """The shared artifacts were (re)computed for this run already: ``force`` spares them."""
    _models: dict[int | None, LoadedModel] = field(default_factory=dict)
    _sae: LoadedSAE | None = None
    _backends: dict[int | None, ModelBackend] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        cli: dict[str, Any],
        config_file: Path | None = None,
        reg: Registry | None = None,
    ) -> Session:
        """Resolve settings (CLI over config over case defaults, the plugins' settings with
        dsg's; a ``cli`` key that names no setting is refused) and pick the case."""
        reg = reg or registry()
        for failed in reg.failures:
            stderr.print(
                f"[yellow]warning:[/] plugin {failed.name!r} skipped: {escape(failed.error or '')}"
            )
        config_path, config = find_config(config_file, reg.settings)
        model = cli.get("model") or config.get("model")
        case_name = cli.get("case") or config.get("case") or default_case(reg, model)
        case = reg.get("cases", case_name)
        settings = resolve(case.defaults, case_name, config, cli, reg.settings)
        check_device(settings.device, here=settings.executor == "local")
        session = cls(settings=settings, registry=reg, case=case, config_path=config_path)
        _ = session.strategies  # an unknown strategy is refused before any stage runs
        return session

    @functools.cached_property
    def strategies(self) -> dict[str, Strategy]:
        """The run's strategies (``settings.strategies``) by name, each resolved once."""
        return {name: self.registry.get("strategies", name) for name in self.settings.strategies}

    def refuse_unread_options(self, cli: dict[str, Any], attack: str | None = None) -> None:
        """A UserError for the options given (``cli``) that only attacks or strategies this run
        leaves out read; ``attack`` is the attack the run measures, if any."""
        reg = self.registry
        if attack is not None:
            reg.get("attacks", attack)
        kinds = {n: "attack" for n in reg.names("attacks")}
        kinds.update((n, "strategy") for n in reg.names("strategies"))
        refuse_unselected(cli, self.settings, kinds, attack)

    def for_sae(
        self, sae: str, out: Path, shared_out: Path | None = None, shared_ready: bool = False
    ) -> Session:
        """This session with another SAE and run directory; a model already loaded is shared."""
        settings = dataclasses.replace(
            self.settings, sae=sae, out=out, sae_release_pattern=None, sae_id_pattern=None
        )
        return dataclasses.replace(
            self, settings=settings, shared_out=shared_out, shared_ready=shared_ready, _sae=None
        )

    @property
    def force_shared(self) -> bool:
        """Whether to recompute the shared artifacts: ``--force``, unless already done."""
        return self.settings.force and not self.shared_ready

    @property
    def data(self) -> DataSource:
        s = self.settings
        return DataSource(s.data_dir, s.forget_corpus, s.retain_corpus)

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.settings.out)

    @property
    def shared_run_dir(self) -> RunDir:
        """The run directory of the artifacts every SAE of a sweep shares."""
        return RunDir(self.shared_out or self.settings.out)

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.settings.dtype)

    def _resolve_loader(self, kind: str, spec: str) -> tuple[Any, str]:
        """The loader and the spec it gets: ``loader:rest`` names a loader outright (which then
        gets ``rest``); otherwise the first loader that accepts the whole spec."""
        head, sep, rest = spec.partition(":")
        if sep and head in self.registry.entries[kind]:
            return self.registry.entries[kind][head], rest
        unreadable = ""
        for name in self.registry.names(kind):
            loader = self.registry.entries[kind][name]
            try:
                accepted = loader.can_load(spec)
            except OSError as exc:  # a name too long for a path: no directory holds it
                unreadable = f" (as a path: {exc.strerror or type(exc).__name__})"
                continue
            if accepted:
                return loader, spec
        label = "SAE" if kind == "sae_loaders" else "model"
        raise UserError(
            f"no {label} loader accepts {excerpt(spec)}{unreadable}; installed loaders: "
            f"{', '.join(self.registry.names(kind)) or '(none)'} (see `dsg plugins`)"
        )

    def sae(self) -> LoadedSAE:
        if self._sae is None:
            spec = self.settings.sae
            loader, spec = self._resolve_loader("sae_loaders", spec)
            self._sae = loader.load(spec, device=self.device, dtype=self.torch_dtype)
        return self._sae

    def model(self, n_layers: int | None = None) -> LoadedModel:
        """The model; with ``n_layers``, only its first blocks (enough to reach the hook)."""
        if None in self._models:
            return self._models[None]
        if n_layers not in self._models:
            spec = self.settings.model
            loader, spec = self._resolve_loader("model_loaders", spec)
            loaded = loader.load(
                spec, device=self.device, dtype=self.torch_dtype, n_layers=n_layers
            )
            self._models[n_layers] = loaded
        return self._models[n_layers]

    @property
    def backend_name(self) -> str:
        """The model backend in force (``auto`` resolved for the device)."""
        from dsg.engine.backends import resolve_backend

        return resolve_backend(self.settings.backend, self.device)

    def backend(self, n_layers: int | None = None) -> ModelBackend:
        """The model under the chosen backend (:data:`dsg.engine.backends.KINDS`). One that loads
        the whole checkpoint (transformers) is opened once and shared between stages."""
        from dsg.engine.backends import KINDS

        kind = KINDS[self.backend_name]
        key = None if kind.whole_checkpoint else n_layers
        if key not in self._backends:
            self._backends[key] = kind.open(self.model(n_layers), self.device, self.torch_dtype)
        return self._backends[key]

    def checked_pair(self, n_layers: int | None = None) -> tuple[LoadedModel, LoadedSAE]:
        """Model and SAE, with the checks that make them usable together."""
        sae = self.sae()
        model = self.model(n_layers)
        cfg = model.model.cfg
        d_in = sae.sae.cfg.d_in
        if d_in != cfg.d_model:
            raise UserError(
                f"SAE {sae.spec!r} reads vectors of size {d_in} but model {model.spec!r} has "
                f"d_model {cfg.d_model}; choose an SAE trained on this model"
            )
        values = values_of(self.settings)
        for setting in with_plugins(plugin_settings(self.settings)).values():
            tokens = values[setting.name]
            if setting.spec.within_context and tokens > cfg.n_ctx:
                raise UserError(
                    f"{setting.name} {tokens} is longer than the context of model "
                    f"{model.spec!r} ({cfg.n_ctx} tokens); pass {setting.option} {cfg.n_ctx} "
                    "or less"
                )
        if sae.hook_layer >= cfg.n_layers and n_layers is None:
            raise UserError(
                f"SAE hook {sae.hook_name!r} is beyond model {model.spec!r}, which has "
                f"{cfg.n_layers} layers"
            )
        # An exact name match: a substring test would take gemma-2-2b (Gemma Scope "pt") for
        # gemma-2-2b-it, the very mismatch of the paper's setup that users should be told about.
        model_names = {self.settings.model, model.spec, Path(model.spec).name}
        if sae.model_name and sae.model_name not in model_names:
            self.console.print(
                f"[yellow]warning:[/] SAE {escape(repr(sae.spec))} was trained on "
                f"{escape(repr(sae.model_name))}, applied here to {escape(repr(model.spec))}"
            )
        return model, sae
