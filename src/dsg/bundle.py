"""The guardrail bundle: a self-describing directory that carries one guardrail to other harnesses.

Only the k selected features travel: their encoder columns, biases and JumpReLU thresholds (to
compute the gate) and their decoder rows (to clamp), beside ``b_dec`` when the SAE subtracts it
from its input. ``bundle.json`` says where the guardrail hooks, which strategy gates it (any
installed strategy that says how it is exported), which rules it follows and what it was made
from. Applying a bundle is :class:`dsg.guardrail.Guardrail`, the same code the engine runs.
``bundle.json`` carries a sha256 of its own content, which includes the tensor file's sha256, so
the description (hook, features, threshold, ...) is covered as well as the weights. Loading
checks the format version, both hashes and every shape, so a foreign, edited or half-written
bundle is refused rather than silently misapplied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.artifacts import (
    file_sha256,
    json_sha256,
    read_json,
    read_tensors,
    write_json,
    write_tensors,
)
from dsg.errors import UserError
from dsg.hook_names import resid_hook

if TYPE_CHECKING:
    import torch

    from dsg.guardrail import Guardrail
    from dsg.interfaces import ExportableStrategy, LoadedSAE

FORMAT = "dsg-guardrail-bundle"
FORMAT_VERSION = 4
DIGEST_FIELD = "sha256"
CONFIG_FILE = "bundle.json"
TENSORS_FILE = "guardrail.safetensors"
JUMP_THRESHOLD = "jump_threshold"

RULES: dict[str, str] = {
    "bos": "first attended token of each row; never a hit, never clamped",
    "hit": "any selected feature's activation > 0",
    "rate": "hits / attended tokens of the row (padding excluded, BOS in the denominator)",
    "fire": "float32(rate) > float32(threshold), strict",
    "window": (
        "with strategy_params window = w and window_threshold = t, a row longer than w "
        "attended tokens also fires when float32(hits in some w consecutive attended tokens "
        "/ w) > float32(t)"
    ),
    "clamp": "every selected feature set to -multiplier at each hit position of a firing row",
    "generation": "decided on the prompt, carried through KV-cache decode steps",
}
"""The semantics a bundle's consumer must implement; a bundle with other rules is refused."""


def parse_hook(hook_name: str) -> tuple[int, str]:
    """``blocks.3.hook_resid_post`` -> ``(3, "hook_resid_post")``; other hooks are refused."""
    parsed = resid_hook(hook_name)
    if parsed is None:
        raise UserError(
            f"hook {hook_name!r} cannot be exported: a bundle hooks blocks.N.hook_resid_pre "
            "or blocks.N.hook_resid_post"
        )
    return parsed


def exportable_strategy(name: str) -> ExportableStrategy:
    """The installed strategy ``name``, if its plugin says how it travels in a bundle."""
    from dsg.interfaces import ExportableStrategy
    from dsg.plugins import registry

    installed = registry().entries["strategies"]
    if name not in installed:
        choices = ", ".join(sorted(installed)) or "none"
        raise UserError(
            f"strategy {name!r} is not installed (installed: {choices}); install the plugin "
            "that provides it"
        )
    strategy = installed[name]
    if not isinstance(strategy, ExportableStrategy):
        raise UserError(
            f"strategy {name!r} cannot be exported to a bundle: its plugin defines no "
            "bundle_params/bundle_gate (see docs/plugins.md)"
        )
    return strategy


@dataclass(frozen=True)
class Bundle:
    """One guardrail: hook, ordered features, threshold, multiplier, strategy and k-column weights.

    ``tensors`` holds ``W_enc [D, k]``, ``b_enc [k]``, ``W_dec [k, D]``, ``b_dec [D]`` and, for
    JumpReLU SAEs, ``jump_threshold [k]``; ``threshold`` is the gate's alpha (None when the
    strategy uses none) and ``strategy_params`` whatever else the strategy's gate needs.
    """

    hook_name: str
    features: tuple[int, ...]
    threshold: float | None
    multiplier: float
    strategy: str
    activation: str
    apply_b_dec_to_input: bool
    d_sae: int
    tensors: dict[str, torch.Tensor]
    strategy_params: dict[str, Any] = field(default_factory=dict)
    sae: dict[str, Any] = field(default_factory=dict)
    base_model: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def hook_layer(self) -> int:
        return parse_hook(self.hook_name)[0]

    @property
    def hook_point(self) -> str:
        return parse_hook(self.hook_name)[1]

    @property
    def d_model(self) -> int:
        return int(self.tensors["b_dec"].shape[0])

    @property
    def k(self) -> int:
        return len(self.features)

    def validate(self) -> None:
        """Every field and shape consistent with the others, or a UserError naming the fault."""
        parse_hook(self.hook_name)
        strategy = exportable_strategy(self.strategy)
        if strategy.uses_threshold and self.threshold is None:
            raise UserError(f"a {self.strategy} bundle needs a threshold")
        strategy.bundle_gate(self.threshold, self.strategy_params)  # refuses bad parameters
        if self.activation not in ("relu", "jumprelu"):
            raise UserError(f"bundle activation {self.activation!r} is neither relu nor jumprelu")
        if len(set(self.features)) != self.k or any(not 0 <= j < self.d_sae for j in self.features):
            raise UserError(f"bundle features must be distinct indices in [0, {self.d_sae})")
        names = {"W_enc", "b_enc", "W_dec", "b_dec"} | (
            {JUMP_THRESHOLD} if self.activation == "jumprelu" else set()
        )
        if set(self.tensors) != names:
            raise UserError(f"bundle tensors are {sorted(self.tensors)}; expected {sorted(names)}")
        d, k = self.d_model, self.k
        expected = {
            "W_enc": (d, k),
            "b_enc": (k,),
            "W_dec": (k, d),
            "b_dec": (d,),
            JUMP_THRESHOLD: (k,),
        }
        for name, tensor in self.tensors.items():
            if tuple(tensor.shape) != expected[name]:
                raise UserError(
                    f"bundle tensor {name} has shape {tuple(tensor.shape)}, expected "
                    f"{expected[name]} for {k} features of width {d}"
                )

    def config(self, tensors_sha256: str) -> dict[str, Any]:
        """The JSON half of the bundle."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "hook": {"name": self.hook_name, "layer": self.hook_layer, "point": self.hook_point},
            "features": list(self.features),
            "threshold": self.threshold,
            "multiplier": self.multiplier,
            "strategy": self.strategy,
            "strategy_params": self.strategy_params,
            "rules": RULES,
            "activation": self.activation,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "d_model": self.d_model,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "sae": self.sae,
            "base_model": self.base_model,
            "provenance": self.provenance,
            "tensors": {"file": TENSORS_FILE, "sha256": tensors_sha256},
        }

    def save(self, directory: Path) -> Path:
        """Write the tensors, then ``bundle.json`` (with their hash), each atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        write_tensors(directory / TENSORS_FILE, self.tensors, metadata={"format": FORMAT})
        config = self.config(file_sha256(directory / TENSORS_FILE))
        write_json(directory / CONFIG_FILE, {**config, DIGEST_FIELD: json_sha256(config)})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Bundle:
        """Read and check a bundle; anything foreign, corrupted or inconsistent is a UserError."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise UserError(f"{directory} is not a dsg guardrail bundle (no {CONFIG_FILE})")
        config = read_json(config_path)
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise UserError(f"{config_path} is not a dsg guardrail bundle")
        if config.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{directory} is bundle format version {config.get('format_version')!r}; this "
                f"dsg reads version {FORMAT_VERSION}. Export the bundle again"
            )
        described = {k: v for k, v in config.items() if k != DIGEST_FIELD}
        if config.get(DIGEST_FIELD) != json_sha256(described):
            raise UserError(
                f"{config_path} was edited after export (its sha256 does not match its content); "
                "export the bundle again"
            )
        if config.get("rules") != RULES:
            raise UserError(f"{directory} asks for guardrail rules this dsg does not implement")
        tensors_path = directory / TENSORS_FILE
        if not tensors_path.is_file():
            raise UserError(f"{directory} has no {TENSORS_FILE}; export the bundle again")
        if file_sha256(tensors_path) != (config.get("tensors") or {}).get("sha256"):
            raise UserError(
                f"{tensors_path} does not match {CONFIG_FILE} (edited or half-written); "
                "export the bundle again"
            )
        tensors = {name: t.float() for name, t in read_tensors(tensors_path).items()}
        try:
            threshold = config["threshold"]
            return cls(
                hook_name=str(config["hook"]["name"]),
                features=tuple(int(j) for j in config["features"]),
                threshold=None if threshold is None else float(threshold),
                multiplier=float(config["multiplier"]),
                strategy=str(config["strategy"]),
                strategy_params=dict(config["strategy_params"]),
                activation=str(config["activation"]),
                apply_b_dec_to_input=bool(config["apply_b_dec_to_input"]),
                d_sae=int(config["d_sae"]),
                tensors=tensors,
                sae=dict(config.get("sae") or {}),
                base_model=dict(config.get("base_model") or {}),
                provenance=dict(config.get("provenance") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{config_path} is corrupted ({exc!r}); export the bundle again"
            ) from None

    def guardrail(self) -> Guardrail:
        """The bundle's guardrail: the strategy's gate on :class:`dsg.guardrail.Guardrail`."""
        from dsg.guardrail import FeatureColumns, Guardrail

        t = self.tensors
        columns = FeatureColumns(
            t["W_enc"],
            t["b_enc"],
            t["W_dec"],
            t["b_dec"] if self.apply_b_dec_to_input else None,
            t.get(JUMP_THRESHOLD),
        )
        gate = exportable_strategy(self.strategy).bundle_gate(self.threshold, self.strategy_params)
        return Guardrail(columns, gate, self.multiplier)


def from_sae(
    loaded: LoadedSAE,
    features: Any,
    *,
    threshold: float | None,
    multiplier: float,
    strategy: str = "dynamic",
    params: dict[str, Any] | None = None,
    base_model: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Bundle:
    """Cut the bundle of ``features`` (in clamp order) out of a full sae_lens SAE. ``params``:
    the gate's calibrated parameters beyond the threshold (``windowed``: ``{"window": w}``),
    stored in ``strategy_params`` beside what the strategy's ``bundle_params`` adds."""
    from dsg.guardrail import FeatureColumns, column_activation, feature_index

    sae = loaded.sae
    if column_activation(sae) is None:
        raise UserError(
            f"a {type(sae).__name__} cannot be exported: a bundle carries k encoder columns, "
            "which is exact only for ReLU and JumpReLU SAEs without input normalisation"
        )
    gate_strategy = exportable_strategy(strategy)
    threshold = float(threshold) if gate_strategy.uses_threshold and threshold is not None else None
    index = feature_index(features, int(sae.cfg.d_sae))
    columns = FeatureColumns.from_sae(sae, index)

    def plain(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().float().contiguous()

    tensors = {
        "W_enc": plain(columns.w_enc),
        "b_enc": plain(columns.b_enc),
        "W_dec": plain(columns.w_dec),
        "b_dec": plain(sae.b_dec),
    }
    if columns.jump is not None:
        tensors[JUMP_THRESHOLD] = plain(columns.jump)
    return Bundle(
        hook_name=loaded.hook_name,
        features=tuple(int(j) for j in index.tolist()),
        threshold=threshold,
        multiplier=float(multiplier),
        strategy=strategy,
        strategy_params={**gate_strategy.bundle_params(threshold), **(params or {})},
        activation=columns.activation,
        apply_b_dec_to_input=bool(sae.cfg.apply_b_dec_to_input),
        d_sae=int(sae.cfg.d_sae),
        tensors=tensors,
        sae={
            "spec": loaded.spec,
            "fingerprint": loaded.fingerprint,
            "architecture": type(sae).__name__,
            "model_name": loaded.model_name,
        },
        base_model=base_model or {},
        provenance=provenance or {},
    )
