"""The guardrail bundle: a self-describing directory that carries one guardrail to other harnesses.

Only the k selected features travel: their encoder columns, biases and JumpReLU thresholds (to
compute the gate) and their decoder rows (to clamp), beside ``b_dec`` when the SAE subtracts it
from its input. ``bundle.json`` says where the guardrail hooks, which rules it follows and what it
was made from. Loading checks the format version, the tensor file's hash and every shape, so a
foreign, edited or half-written bundle is refused rather than silently misapplied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.artifacts import read_json, read_tensors, write_json, write_tensors
from dsg.errors import UserError
from dsg.hook_names import resid_hook

if TYPE_CHECKING:
    import torch

    from dsg.interfaces import LoadedSAE

FORMAT = "dsg-guardrail-bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "bundle.json"
TENSORS_FILE = "guardrail.safetensors"
STRATEGIES = ("dynamic", "static")

RULES: dict[str, str] = {
    "bos": "first attended token of each row; never a hit, never clamped",
    "hit": "any selected feature's activation > 0",
    "rate": "hits / attended tokens of the row (padding excluded, BOS in the denominator)",
    "fire": "float32(rate) > float32(threshold), strict",
    "clamp": "every selected feature set to -multiplier at each hit position of a firing row",
    "generation": "decided on the prompt, carried through KV-cache decode steps",
}
"""The semantics a bundle's consumer must implement; a bundle with other rules is refused."""


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
    """One guardrail: hook, ordered features, threshold, multiplier, strategy and k-column weights.

    ``tensors`` holds ``W_enc [D, k]``, ``b_enc [k]``, ``W_dec [k, D]``, ``b_dec [D]`` and, for
    JumpReLU SAEs, ``threshold [k]`` (the per-feature JumpReLU threshold, not alpha).
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
        if self.strategy not in STRATEGIES:
            raise UserError(
                f"bundle strategy {self.strategy!r} is unknown; expected one of {STRATEGIES}"
            )
        if self.strategy == "dynamic" and self.threshold is None:
            raise UserError("a dynamic bundle needs a threshold")
        if self.activation not in ("relu", "jumprelu"):
            raise UserError(f"bundle activation {self.activation!r} is neither relu nor jumprelu")
        if len(set(self.features)) != self.k or any(not 0 <= j < self.d_sae for j in self.features):
            raise UserError(f"bundle features must be distinct indices in [0, {self.d_sae})")
        names = {"W_enc", "b_enc", "W_dec", "b_dec"} | (
            {"threshold"} if self.activation == "jumprelu" else set()
        )
        if set(self.tensors) != names:
            raise UserError(f"bundle tensors are {sorted(self.tensors)}; expected {sorted(names)}")
        d, k = self.d_model, self.k
        expected = {
            "W_enc": (d, k),
            "b_enc": (k,),
            "W_dec": (k, d),
            "b_dec": (d,),
            "threshold": (k,),
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
        write_json(directory / CONFIG_FILE, self.config(_sha256(directory / TENSORS_FILE)))
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
        if config.get("rules") != RULES:
            raise UserError(f"{directory} asks for guardrail rules this dsg does not implement")
        tensors_path = directory / TENSORS_FILE
        if not tensors_path.is_file():
            raise UserError(f"{directory} has no {TENSORS_FILE}; export the bundle again")
        if _sha256(tensors_path) != (config.get("tensors") or {}).get("sha256"):
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

    def guardrail(self) -> BundleGuardrail:
        return BundleGuardrail(self)


def _sae_activation(sae: Any) -> str:
    """``relu`` or ``jumprelu`` when the k selected columns alone give the exact activations."""
    import torch
    from sae_lens import JumpReLUSAE, StandardSAE

    kinds = {JumpReLUSAE: "jumprelu", StandardSAE: "relu"}
    cfg = sae.cfg
    exact = (
        type(sae) in kinds
        and isinstance(sae.activation_fn, torch.nn.ReLU)
        and cfg.normalize_activations == "none"
        and cfg.reshape_activations == "none"
    )
    if not exact:
        raise UserError(
            f"a {type(sae).__name__} cannot be exported: a bundle carries k encoder columns, "
            "which is exact only for ReLU and JumpReLU SAEs without input normalisation"
        )
    return kinds[type(sae)]


def from_sae(
    loaded: LoadedSAE,
    features: Any,
    *,
    threshold: float | None,
    multiplier: float,
    strategy: str = "dynamic",
    base_model: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Bundle:
    """Cut the bundle of ``features`` (in clamp order) out of a full sae_lens SAE."""
    import torch

    sae = loaded.sae
    activation = _sae_activation(sae)
    index = torch.as_tensor(features, dtype=torch.long).reshape(-1).cpu()
    d_sae = int(sae.cfg.d_sae)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= d_sae):
        raise UserError(
            f"feature indices must lie in [0, {d_sae}); the selection is for another SAE"
        )

    def cols(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().float()

    tensors = {
        "W_enc": cols(sae.W_enc)[:, index].clone(),
        "b_enc": cols(sae.b_enc)[index].clone(),
        "W_dec": cols(sae.W_dec)[index].clone(),
        "b_dec": cols(sae.b_dec).clone(),
    }
    if activation == "jumprelu":
        tensors["threshold"] = cols(sae.threshold)[index].clone()
    return Bundle(
        hook_name=loaded.hook_name,
        features=tuple(int(j) for j in index.tolist()),
        threshold=None if strategy == "static" or threshold is None else float(threshold),
        multiplier=float(multiplier),
        strategy=strategy,
        activation=activation,
        apply_b_dec_to_input=bool(sae.cfg.apply_b_dec_to_input),
        d_sae=d_sae,
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


class BundleGuardrail:
    """The guardrail computed from a bundle alone: the same hits, rates, gate and closed-form clamp
    as :class:`dsg.guardrail.DynamicClamp` (or ``StaticClamp``) on the full SAE.

    Works in the residual's dtype and device; callers wanting float32 gates upcast first.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        t = bundle.tensors
        self.w_enc, self.b_enc, self.w_dec = t["W_enc"], t["b_enc"], t["W_dec"]
        self.b_dec_in = t["b_dec"] if bundle.apply_b_dec_to_input else None
        self.jump = t.get("threshold")
        self.fired: torch.Tensor | None = None
        self.rates: torch.Tensor | None = None

    def activations(self, resid: torch.Tensor) -> torch.Tensor:
        """``[B, T, k]`` activations of the bundle's features."""
        from dsg.guardrail import encode_columns

        return encode_columns(resid, self.w_enc, self.b_enc, self.b_dec_in, self.jump)

    def gate(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        """Which rows clamp: rate above alpha (dynamic) or any hit at all (static)."""
        from dsg.guardrail import rate_gate

        threshold = self.bundle.threshold
        if self.bundle.strategy == "static" or threshold is None:  # validated: not dynamic
            return hits.any(dim=1)
        return rate_gate(rates, threshold)

    def clamp(self, resid: torch.Tensor, acts: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """``x + Σ_j (-m - a_j) · W_dec[j]`` at ``where`` (bool ``[B, T]``); ``resid`` elsewhere."""
        from dsg.guardrail import apply_clamp

        return apply_clamp(resid, acts, where, self.w_dec, self.bundle.multiplier)

    def __call__(self, resid: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """A whole sequence: decide each row on its attended tokens, then clamp its hits."""
        from dsg.guardrail import sequence_rates, token_hits

        mask = attention_mask.to(resid.device).bool()
        acts = self.activations(resid)
        hits = token_hits(acts, mask)
        self.rates = sequence_rates(hits, mask)
        self.fired = self.gate(self.rates, hits)
        return self.clamp(resid, acts, hits & self.fired[:, None])

    def continue_rows(
        self, resid: torch.Tensor, attention_mask: torch.Tensor, fired: torch.Tensor
    ) -> torch.Tensor:
        """New positions of rows already decided (decode steps): clamp hits where ``fired``.

        A static bundle clamps every hit, as on the prompt.
        """
        mask = attention_mask.to(resid.device).bool()
        acts = self.activations(resid)
        hits = (acts > 0).any(dim=-1) & mask
        if self.bundle.strategy == "static":
            return self.clamp(resid, acts, hits)
        return self.clamp(resid, acts, hits & fired.to(resid.device)[:, None])
