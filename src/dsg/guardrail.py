"""The guardrail on a full sae_lens SAE: the k selected features cut out of it, and the
strategies' guardrails built on it.

The math itself (rates, gates, the clamp) is :mod:`dsg_runtime.guardrail`, which the bundles
run too; this module is what needs the SAE object (sae_lens types, its encoder and decoder).
"""

from __future__ import annotations

from typing import Any

import torch

from dsg.core.errors import UserError
from dsg_runtime.guardrail import (
    AnyHitGate,
    CastCache,
    FeatureColumns,
    Guardrail,
    ThresholdGate,
    TopKFeatures,
    WindowGate,
    feature_index,
)

__all__ = [
    "column_activation",
    "feature_columns",
    "exact_topk",
    "topk_features",
    "EncodedFeatures",
    "sae_features",
    "feature_activations",
    "DynamicClamp",
    "WindowedClamp",
    "StaticClamp",
    "GateStrategy",
]

# Runtime input normalisations whose decoder undoes a per-token scale stored by ``encode``;
# an additive edit of the activations has no fixed direction in the residual for them.
_STATEFUL_NORMALIZATIONS = frozenset({"constant_norm_rescale", "layer_norm"})


def column_activation(sae: Any) -> str | None:
    """``relu`` or ``jumprelu`` when ``encode`` is ``act((x - b_dec) @ W_enc + b_enc)`` with a
    per-feature ``act``, so the k selected columns alone give the exact activations; else None."""
    from sae_lens import JumpReLUSAE, StandardSAE

    kinds = {JumpReLUSAE: "jumprelu", StandardSAE: "relu"}
    cfg = sae.cfg
    exact = (
        type(sae) in kinds
        and isinstance(sae.activation_fn, torch.nn.ReLU)
        and cfg.normalize_activations == "none"
        and cfg.reshape_activations == "none"
    )
    return kinds[type(sae)] if exact else None


def exact_topk(sae: Any) -> bool:
    """True when ``sae`` is sae_lens's ``TopKSAE`` whose ``encode`` is
    ``topk(relu)((x - b_dec) @ W_enc + b_enc)`` with ``cfg.k`` kept, which
    :class:`~dsg_runtime.guardrail.TopKFeatures` reproduces from the whole encoder; not with
    input normalisation or ``rescale_acts_by_decoder_norm`` (the selection then depends on more
    than the encoder)."""
    from sae_lens import TopKSAE
    from sae_lens.saes.topk_sae import TopK

    cfg = sae.cfg
    return (
        type(sae) is TopKSAE
        and type(sae.activation_fn) is TopK
        and sae.activation_fn.k == cfg.k
        and not cfg.rescale_acts_by_decoder_norm
        and cfg.normalize_activations == "none"
        and cfg.reshape_activations == "none"
    )


def _has_plain_decoder(sae: Any) -> bool:
    """True when ``decode`` is ``a @ W_dec + b_dec``, so the decoder rows are the directions."""
    from sae_lens import JumpReLUSAE, StandardSAE, TopKSAE

    return type(sae) in (StandardSAE, JumpReLUSAE, TopKSAE) and not getattr(
        sae.cfg, "rescale_acts_by_decoder_norm", False
    )


@torch.no_grad()
def _decoder_directions(sae: Any, index: torch.Tensor) -> torch.Tensor:
    """The residual-space change per unit of each selected feature: ``[k, d_in]``.

    For decoders other than the plain linear one, probe ``decode`` (assumed affine in the
    activations) with one-hot vectors.
    """
    if sae.cfg.reshape_activations != "none":
        raise UserError(
            "SAEs on attention-head outputs (hook_z) are not supported by the guardrail"
        )
    if sae.cfg.normalize_activations in _STATEFUL_NORMALIZATIONS:
        raise UserError(
            f"SAEs with normalize_activations={sae.cfg.normalize_activations!r} are not "
            "supported by the guardrail: their decoder rescales per token"
        )
    w_dec = sae.W_dec.detach()
    if _has_plain_decoder(sae):
        return w_dec[index.to(w_dec.device)].clone()
    probe = torch.zeros(index.numel() + 1, sae.cfg.d_sae, dtype=w_dec.dtype, device=w_dec.device)
    probe[torch.arange(index.numel()), index.to(w_dec.device)] = 1.0
    decoded = sae.decode(probe)
    return decoded[:-1] - decoded[-1]


def feature_columns(sae: Any, index: torch.Tensor) -> FeatureColumns:
    """Cut the columns of ``index`` out of a ReLU or JumpReLU SAE (others: UserError)."""
    activation = column_activation(sae)
    if activation is None:
        raise UserError(
            f"a {type(sae).__name__} has no exact k-column form: that needs a ReLU or "
            "JumpReLU SAE without input normalisation"
        )
    idx = index.to(sae.W_enc.device)
    jump = sae.threshold.detach()[idx].clone() if activation == "jumprelu" else None
    return FeatureColumns(
        sae.W_enc.detach()[:, idx].clone(),
        sae.b_enc.detach()[idx].clone(),
        _decoder_directions(sae, index),
        sae.b_dec.detach().clone() if sae.cfg.apply_b_dec_to_input else None,
        jump,
    )


def topk_features(sae: Any, index: torch.Tensor) -> TopKFeatures:
    """The features ``index`` of a TopK SAE with its whole encoder (others: UserError)."""
    if not exact_topk(sae):
        raise UserError(
            f"a {type(sae).__name__} has no exact TopK form: that needs a TopKSAE without input "
            "normalisation or rescale_acts_by_decoder_norm"
        )
    return TopKFeatures(
        sae.W_enc.detach().clone(),
        sae.b_enc.detach().clone(),
        _decoder_directions(sae, index),
        index.clone(),
        int(sae.cfg.k),
        sae.b_dec.detach().clone() if sae.cfg.apply_b_dec_to_input else None,
    )


class EncodedFeatures:
    """The k selected features of an SAE whose activation depends on all features (TopK, ...):
    the SAE's own ``encode`` runs and the k columns are kept. Not free of host synchronisation
    (that is up to the SAE); ReLU and JumpReLU SAEs use :class:`FeatureColumns` instead, and a
    TopK SAE's bundle :class:`~dsg_runtime.guardrail.TopKFeatures`."""

    def __init__(self, sae: Any, index: torch.Tensor) -> None:
        self.sae = sae
        self.index = index
        self._cast = CastCache(directions=_decoder_directions(sae, index))

    def activations(self, resid: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            acts = self.sae.encode(resid)
        return acts[..., self.index.to(acts.device)].to(resid.dtype)

    def directions(self, resid: torch.Tensor) -> torch.Tensor:
        return self._cast.like(resid)["directions"]


def sae_features(sae: Any, features: Any) -> FeatureColumns | EncodedFeatures:
    """The selected ``features`` of a sae_lens SAE, in the cheapest exact form."""
    index = feature_index(features, sae.cfg.d_sae)
    if column_activation(sae) is not None:
        return feature_columns(sae, index)
    return EncodedFeatures(sae, index)


def feature_activations(sae: Any, resid: torch.Tensor, features: Any) -> torch.Tensor:
    """Activations ``[B, T, k]`` of the selected ``features`` (in their given order).

    For ReLU and JumpReLU SAEs only the k encoder columns are used (O(k·d_in) per token);
    other architectures, such as TopK, whose activation depends on all features, run the
    SAE's own ``encode`` and keep the k columns.
    """
    return sae_features(sae, features).activations(resid)


class DynamicClamp(Guardrail):
    """The DSG guardrail on a full SAE: clamp only in sequences whose hit rate exceeds
    ``threshold`` (``float32(rate) > float32(threshold)``, strict, as the reference)."""

    def __init__(self, sae: Any, features: Any, threshold: float, multiplier: float) -> None:
        gate = ThresholdGate(threshold)
        super().__init__(sae_features(sae, features), gate, multiplier)
        self.threshold = gate.threshold


class WindowedClamp(Guardrail):
    """The windowed guardrail on a full SAE: the dynamic gate at ``threshold``, and rows longer
    than ``window`` also fire when some ``window`` consecutive attended tokens have a hit rate
    above ``window_threshold`` (see :class:`WindowGate`)."""

    def __init__(
        self,
        sae: Any,
        features: Any,
        threshold: float,
        multiplier: float,
        *,
        window: int,
        window_threshold: float,
    ) -> None:
        gate = WindowGate(window, window_threshold, threshold)
        super().__init__(sae_features(sae, features), gate, multiplier)
        self.threshold, self.window, self.window_threshold = (
            gate.threshold,
            gate.window,
            gate.window_threshold,
        )


class StaticClamp(Guardrail):
    """The always-on baseline (Farrell et al.) on a full SAE: clamp at every hit position of
    every row. BOS is excluded like in :class:`DynamicClamp`; ``fired`` is True for rows with at
    least one hit."""

    def __init__(self, sae: Any, features: Any, multiplier: float) -> None:
        super().__init__(sae_features(sae, features), AnyHitGate(), multiplier)


class GateStrategy:
    """A strategy that is just a gate: a subclass sets ``name``, ``description`` and
    ``uses_threshold`` and defines ``gate(threshold, params)``; evaluating it (``build``) and
    carrying it in bundles (``bundle_gate``) are derived, so the gate is written once.

    ``params`` are what ``bundle_params(threshold)`` returns (nothing unless overridden), as a
    bundle stores them; ``threshold`` is None when ``uses_threshold`` is False.
    """

    name: str
    description: str
    uses_threshold: bool = True

    def gate(self, threshold: float | None, params: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define gate(threshold, params)")

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {}

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Any:
        return self.gate(threshold if self.uses_threshold else None, params)

    def build(self, sae: Any, features: Any, threshold: float, multiplier: float) -> Guardrail:
        stored = threshold if self.uses_threshold else None
        gate = self.bundle_gate(stored, self.bundle_params(stored))
        return Guardrail(sae_features(sae, features), gate, multiplier)
