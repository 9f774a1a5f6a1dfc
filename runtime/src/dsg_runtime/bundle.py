"""The guardrail bundle: a self-describing directory that carries one guardrail to other harnesses.

For a ReLU or JumpReLU SAE only the k selected features travel: their encoder columns, biases
and JumpReLU thresholds (to compute the gate) and their decoder rows (to clamp), beside ``b_dec``
when the SAE subtracts it from its input. A TopK SAE's latent is active when it is among the
token's ``top_k`` largest, which depends on every latent, so since format 6 its bundle carries
the whole encoder beside the selected decoder rows and ``top_k``. ``bundle.json`` says where
the guardrail hooks, which strategy gates it (a built-in one, or a plugin's passed in by the
caller, see :mod:`dsg_runtime.strategies`), which rules it follows, what it was made from and,
since format 5, the model it is bound to (its ``binding``: the residual at the hook for a fixed
probe, see :mod:`dsg_runtime.binding`, checked wherever the bundle meets a model). Applying a
bundle is :class:`dsg_runtime.guardrail.Guardrail`, the same code dsg's engine runs.
``bundle.json`` carries a sha256 of its own content, which includes the tensor file's sha256, so
the description (hook, features, threshold, ...) is covered as well as the weights. Loading
checks the format version, both hashes and every shape, so a foreign, edited or half-written
bundle is refused rather than silently misapplied. The digest is integrity, not validation: every
field is then checked by the same rules as the options that make it (a multiplier as
``--multiplier``), its JSON type strictly, and fields that are unknown or contradict each other
are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg_runtime.atomic import (
    file_sha256,
    json_sha256,
    read_json,
    read_tensors,
    write_json,
    write_tensors,
)
from dsg_runtime.binding import PROBE_TENSOR, ModelBinding
from dsg_runtime.checks import check_bounds, check_int64, check_multiplier
from dsg_runtime.errors import UserError
from dsg_runtime.hook_names import resid_hook
from dsg_runtime.strategies import bundle_strategy

if TYPE_CHECKING:
    import torch

    from dsg_runtime.guardrail import FeatureColumns, Guardrail, TopKFeatures
    from dsg_runtime.protocols import BundleStrategy, Gate

FORMAT = "dsg-guardrail-bundle"
FORMAT_VERSION = 6
READABLE_VERSIONS = (4, 5, 6)
"""Version 5 is version 6 without ``top_k`` (so without TopK bundles); version 4 is version 5
without ``binding``: such a bundle loads unbound, and a model accepts it only with the binding
check overridden."""
DIGEST_FIELD = "sha256"
CONFIG_FILE = "bundle.json"
TENSORS_FILE = "guardrail.safetensors"
JUMP_THRESHOLD = "jump_threshold"
ACTIVATIONS = ("relu", "jumprelu", "topk")

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

FIELDS = (
    "format", "format_version", "hook", "features", "threshold", "multiplier", "strategy",
    "strategy_params", "rules", "activation", "top_k", "apply_b_dec_to_input", "d_model", "d_sae",
    "dtype", "sae", "base_model", "provenance", "binding", "tensors", DIGEST_FIELD,
)  # fmt: skip
"""Every field of ``bundle.json``; one more or one less is refused."""
FIELDS_BY_VERSION = {
    6: FIELDS,
    5: tuple(name for name in FIELDS if name != "top_k"),
    4: tuple(name for name in FIELDS if name not in ("top_k", "binding")),
}
DESCRIPTIVE_FIELDS = {
    "sae": ("spec", "fingerprint", "architecture", "model_name"),
    "base_model": ("spec", "fingerprint", "hf"),
}
"""The keys the descriptive objects may hold, each a string or null."""


def parse_hook(hook_name: str) -> tuple[int, str]:
    """``blocks.3.hook_resid_post`` -> ``(3, "hook_resid_post")``; other hooks are refused."""
    parsed = resid_hook(hook_name)
    if parsed is None:
        raise UserError(
            f"hook {hook_name!r} cannot be exported: a bundle hooks blocks.N.hook_resid_pre "
            "or blocks.N.hook_resid_post"
        )
    return parsed


@dataclass(frozen=True)
class Bundle:
    """One guardrail: hook, ordered features, threshold, multiplier, strategy and weights.

    ``tensors`` holds ``W_enc [D, k]``, ``b_enc [k]``, ``W_dec [k, D]``, ``b_dec [D]`` and, for
    JumpReLU SAEs, ``jump_threshold [k]``; for a TopK SAE (``activation`` ``topk``, ``top_k``
    the latents it keeps per token) the whole encoder, ``W_enc [D, d_sae]`` and
    ``b_enc [d_sae]``. ``threshold`` is the gate's alpha (None when the strategy uses none) and
    ``strategy_params`` whatever else the strategy's gate needs.
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
    strategies: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """Plugin strategies by name, among which ``strategy`` resolves beside the built-in ones."""
    binding: ModelBinding | None = field(default=None, compare=False, repr=False)
    """The model the bundle was calibrated on (None: unbound, see :mod:`dsg_runtime.binding`)."""
    top_k: int | None = None
    """The latents a TopK SAE keeps per token; None for the other activations."""
    gate_strategy: BundleStrategy = field(init=False, compare=False, repr=False)
    """``strategy`` resolved, once, when the bundle is made or loaded."""
    gate: Gate = field(init=False, compare=False, repr=False)
    """The strategy's gate for ``threshold`` and ``strategy_params``, built once: a gate holds
    no state between calls, so every guardrail of the bundle shares it."""

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
        """Every field and shape consistent with the others, or a UserError naming the fault.
        The values pass the checks of the settings that make them (the multiplier those of
        ``--multiplier``, the number of features those of ``--n-features``) and the guardrail's
        own (the threshold a rate in [0, 1], the features distinct indices of the SAE)."""
        import torch

        from dsg_runtime.guardrail import feature_index

        parse_hook(self.hook_name)
        strategy = bundle_strategy(self.strategy, self.strategies)
        if strategy.uses_threshold and self.threshold is None:
            raise UserError(f"a {self.strategy} bundle needs a threshold")
        if not strategy.uses_threshold and self.threshold is not None:
            raise UserError(
                f"threshold {self.threshold} contradicts strategy {self.strategy!r}, which uses "
                "none; a static bundle's threshold is null"
            )
        # the gate checks the threshold's range and refuses bad parameters
        gate = strategy.bundle_gate(self.threshold, self.strategy_params)
        object.__setattr__(self, "gate_strategy", strategy)
        object.__setattr__(self, "gate", gate)
        check_multiplier(self.multiplier)
        if self.activation not in ACTIVATIONS:
            raise UserError(
                f"bundle activation {self.activation!r} is none of {', '.join(ACTIVATIONS)}"
            )
        check_bounds("n features", self.k, 0, above_minimum=True)
        check_int64("d_sae", self.d_sae)
        self._check_top_k()
        feature_index(self.features, self.d_sae)  # in [0, d_sae) and distinct
        for field_name, keys in DESCRIPTIVE_FIELDS.items():
            for key, value in getattr(self, field_name).items():
                if key not in keys:
                    raise UserError(f"{field_name} has unknown field {key!r}; it may hold {keys}")
                if value is not None and not isinstance(value, str):
                    raise UserError(f"{field_name}.{key} must be a string or null, not {value!r}")
        names = {"W_enc", "b_enc", "W_dec", "b_dec"} | (
            {JUMP_THRESHOLD} if self.activation == "jumprelu" else set()
        )
        if set(self.tensors) != names:
            raise UserError(f"bundle tensors are {sorted(self.tensors)}; expected {sorted(names)}")
        d, k = self.d_model, self.k
        width = self.d_sae if self.activation == "topk" else k
        expected = {
            "W_enc": (d, width),
            "b_enc": (width,),
            "W_dec": (k, d),
            "b_dec": (d,),
            JUMP_THRESHOLD: (k,),
        }
        for name, tensor in self.tensors.items():
            if tuple(tensor.shape) != expected[name]:
                raise UserError(
                    f"bundle tensor {name} has shape {tuple(tensor.shape)}, expected "
                    f"{expected[name]} for {k} {self.activation} features of width {d}"
                )
            if tensor.dtype != torch.float32:
                raise UserError(
                    f"bundle tensor {name} is {str(tensor.dtype).removeprefix('torch.')}; a "
                    "bundle's tensors are float32"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise UserError(f"bundle tensor {name} holds NaN or infinite values")
        if self.binding is not None:
            self.binding.validate(d)

    def _check_top_k(self) -> None:
        """``top_k`` an integer in [1, d_sae] for a TopK bundle, None for any other."""
        if self.activation != "topk":
            if self.top_k is not None:
                raise UserError(
                    f"top_k {self.top_k!r} contradicts activation {self.activation!r}; only a "
                    "topk bundle has one"
                )
            return
        if self.top_k is None:
            raise UserError("a topk bundle needs top_k, the latents its SAE keeps per token")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise UserError(f"top_k must be an integer, not {self.top_k!r}")
        check_bounds("top_k", self.top_k, 1, self.d_sae)

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
            "top_k": self.top_k,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "d_model": self.d_model,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "sae": self.sae,
            "base_model": self.base_model,
            "provenance": self.provenance,
            "binding": None if self.binding is None else self.binding.config(),
            "tensors": {"file": TENSORS_FILE, "sha256": tensors_sha256},
        }

    def save(self, directory: Path) -> Path:
        """Write the tensors, then ``bundle.json`` (with their hash), each atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = dict(self.tensors)
        if self.binding is not None:
            tensors[PROBE_TENSOR] = self.binding.activations
        write_tensors(directory / TENSORS_FILE, tensors, metadata={"format": FORMAT})
        config = self.config(file_sha256(directory / TENSORS_FILE))
        write_json(directory / CONFIG_FILE, {**config, DIGEST_FIELD: json_sha256(config)})
        return directory

    @classmethod
    def load(cls, directory: str | Path, strategies: Mapping[str, Any] | None = None) -> Bundle:
        """Read and check a bundle; anything foreign, corrupted or inconsistent is a UserError.
        ``strategies``: plugin strategies by name, for a bundle whose strategy is not built in."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise UserError(f"{directory} is not a dsg guardrail bundle (no {CONFIG_FILE})")
        config = read_json(config_path)
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise UserError(f"{config_path} is not a dsg guardrail bundle")
        if config.get("format_version") not in READABLE_VERSIONS:
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
        if not isinstance(config.get("tensors"), dict):
            raise UserError(f"{config_path}: tensors must be an object; export the bundle again")
        tensors_path = directory / TENSORS_FILE
        if not tensors_path.is_file():
            raise UserError(f"{directory} has no {TENSORS_FILE}; export the bundle again")
        if file_sha256(tensors_path) != config["tensors"].get("sha256"):
            raise UserError(
                f"{tensors_path} does not match {CONFIG_FILE} (edited or half-written); "
                "export the bundle again"
            )
        try:
            described_fields = _described(config)
            tensors = read_tensors(tensors_path)
            binding = _binding(config, tensors.pop(PROBE_TENSOR, None))
            bundle = cls(
                tensors=tensors, strategies=strategies, binding=binding, **described_fields
            )
            _check_agreement(bundle, config)
        except UserError as exc:
            raise UserError(f"{config_path}: {exc}; export the bundle again") from None
        return bundle

    def guardrail(self) -> Guardrail:
        """The bundle's guardrail: the strategy's gate on
        :class:`dsg_runtime.guardrail.Guardrail`."""
        from dsg_runtime.guardrail import Guardrail

        return Guardrail(self.selected(), self.gate, self.multiplier)

    def selected(self) -> FeatureColumns | TopKFeatures:
        """The selected features as the guardrail reads them: the k columns (ReLU, JumpReLU)
        or the whole encoder and the selected decoder rows (TopK)."""
        import torch

        from dsg_runtime.guardrail import FeatureColumns, TopKFeatures

        t = self.tensors
        b_dec_in = t["b_dec"] if self.apply_b_dec_to_input else None
        if self.top_k is not None:  # validated: exactly the topk bundles
            index = torch.tensor(self.features, dtype=torch.long)
            return TopKFeatures(t["W_enc"], t["b_enc"], t["W_dec"], index, self.top_k, b_dec_in)
        return FeatureColumns(t["W_enc"], t["b_enc"], t["W_dec"], b_dec_in, t.get(JUMP_THRESHOLD))


def _described(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments ``bundle.json`` describes, each of its JSON type (a number is
    not a string or a bool, an index not a float); any field missing or unknown is refused."""
    fields = FIELDS_BY_VERSION[config["format_version"]]
    unknown = sorted(set(config) - set(fields))
    missing = [name for name in fields if name not in config]
    if unknown or missing:
        what = f"unknown field {unknown[0]!r}" if unknown else f"no field {missing[0]!r}"
        raise UserError(f"{what} (a bundle has exactly: {', '.join(fields)})")
    hook = _typed(config, "hook", dict)
    if set(hook) != {"name", "layer", "point"}:
        raise UserError(f"hook must have exactly name, layer and point, not {sorted(hook)}")
    features = _typed(config, "features", list)
    if not all(isinstance(j, int) and not isinstance(j, bool) for j in features):
        wrong = next(j for j in features if not isinstance(j, int) or isinstance(j, bool))
        raise UserError(f"features must be integer indices, got {wrong!r}")
    threshold = config["threshold"]
    top_k = config.get("top_k")  # absent before version 6
    return {
        "hook_name": _typed(hook, "name", str, "hook.name"),
        "features": tuple(features),
        "threshold": None if threshold is None else _typed(config, "threshold", float),
        "multiplier": _typed(config, "multiplier", float),
        "strategy": _typed(config, "strategy", str),
        "strategy_params": _typed(config, "strategy_params", dict),
        "activation": _typed(config, "activation", str),
        "top_k": None if top_k is None else _typed(config, "top_k", int),
        "apply_b_dec_to_input": _typed(config, "apply_b_dec_to_input", bool),
        "d_sae": _typed(config, "d_sae", int),
        "sae": _typed(config, "sae", dict),
        "base_model": _typed(config, "base_model", dict),
        "provenance": _typed(config, "provenance", dict),
    }


def _binding(config: dict[str, Any], probe: torch.Tensor | None) -> ModelBinding | None:
    """The binding record: ``binding`` in ``bundle.json`` and its probe in the tensor file,
    both or neither (version 4 has neither)."""
    described = config.get("binding")
    if described is None:
        if probe is not None:
            raise UserError(f"the tensor file holds {PROBE_TENSOR} but binding is null")
        return None
    binding = _typed(config, "binding", dict)
    if set(binding) != {"token_ids", "tolerance"}:
        raise UserError(f"binding must have exactly token_ids and tolerance, not {sorted(binding)}")
    if probe is None:
        raise UserError(f"binding is recorded but the tensor file holds no {PROBE_TENSOR}")
    ids = _typed(binding, "token_ids", list, "binding.token_ids")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UserError("binding.token_ids must be integers")
    return ModelBinding(tuple(ids), probe, _typed(binding, "tolerance", float, "binding.tolerance"))


def _typed(table: dict[str, Any], key: str, kind: type, name: str | None = None) -> Any:
    """``table[key]`` if it has JSON type ``kind``: an int counts as a float, a bool as neither."""
    value = table[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        label = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}
        expected = label.get(kind, "a number" if kind is float else "an integer")
        raise UserError(f"{name or key} must be {expected}, not {value!r}")
    return value


def _check_agreement(bundle: Bundle, config: dict[str, Any]) -> None:
    """The fields ``bundle.json`` repeats for its readers agree with the ones they follow from."""
    layer, point = parse_hook(bundle.hook_name)
    hook = f"hook.name {bundle.hook_name!r}"
    stated = {
        "hook.layer": (config["hook"]["layer"], layer, hook),
        "hook.point": (config["hook"]["point"], point, hook),
        "d_model": (config["d_model"], bundle.d_model, "the tensors' width"),
        "dtype": (config["dtype"], "float32", "the format, whose tensors are float32"),
        "tensors.file": (config["tensors"].get("file"), TENSORS_FILE, "the format"),
    }
    for name, (said, actual, source) in stated.items():
        if said != actual or isinstance(said, bool):
            raise UserError(f"{name} {said!r} contradicts {source} ({actual!r})")
    if sorted(config["tensors"]) != ["file", "sha256"]:
        raise UserError("tensors must have exactly file and sha256")
