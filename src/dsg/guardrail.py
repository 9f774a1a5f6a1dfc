"""The guardrail math: feature selection, per-sequence rates, calibration and the clamps.

Everything here is pure tensor arithmetic on a sae_lens SAE; no model, dataset or file is
touched, so the evaluation engine, the exporters and third-party strategies share one
definition of "hit", "rate" and "clamp".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dsg.errors import UserError

__all__ = [
    "select_features",
    "sequence_rates",
    "calibrate_threshold",
    "token_hits",
    "feature_activations",
    "encode_columns",
    "rate_gate",
    "apply_clamp",
    "DynamicClamp",
    "StaticClamp",
]

RATIO_EPSILON = 1e-21
"""Added to the squared retain mean before dividing, as the reference does."""

# Runtime input normalisations whose decoder undoes a per-token scale stored by ``encode``;
# an additive edit of the activations has no fixed direction in the residual for them.
_STATEFUL_NORMALIZATIONS = frozenset({"constant_norm_rescale", "layer_norm"})


# --------------------------------------------------------------------------- selection


def _as_float64(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise UserError(f"{name} must be a non-empty 1-D vector, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise UserError(f"{name} contains NaN or infinite values")
    return array


def _check_percentile(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 100.0:
        raise UserError(f"{name} must be between 0 and 100, got {value}")
    return value


def select_features(
    forget_mean: Any,
    retain_mean: Any,
    *,
    ratio_percentile: float = 95.0,
    forget_percentile: float = 5.0,
) -> torch.Tensor:
    """Features that fire on the forget corpus far more than on the retain corpus.

    Keeps ``j`` with ``F_j >= P_forget(F)`` and ``ratio_j >= P_ratio(ratio)``, where
    ``F = f**2``, ``ratio = f**2 / (r**2 + 1e-21)`` (float64, numpy's linear percentiles), and
    returns them by descending ``F``; ties keep the lower index first so the order is the same
    on every machine.
    """
    ratio_percentile = _check_percentile(ratio_percentile, "ratio_percentile")
    forget_percentile = _check_percentile(forget_percentile, "forget_percentile")
    f = _as_float64(forget_mean, "forget_mean")
    r = _as_float64(retain_mean, "retain_mean")
    if f.shape != r.shape:
        raise UserError(
            f"forget and retain statistics differ in shape: {f.shape} vs {r.shape}; "
            "they must come from the same SAE"
        )
    forget_score = f * f
    ratio = forget_score / (r * r + RATIO_EPSILON)
    keep = (forget_score >= np.percentile(forget_score, forget_percentile)) & (
        ratio >= np.percentile(ratio, ratio_percentile)
    )
    selected = np.flatnonzero(keep)
    order = np.argsort(-forget_score[selected], kind="stable")
    return torch.from_numpy(selected[order].astype(np.int64))


# --------------------------------------------------------------------------- rates


def _first_attended(attention_mask: torch.Tensor) -> torch.Tensor:
    """The BOS position of each row: the first attended one (works under left padding)."""
    return attention_mask & (attention_mask.cumsum(dim=1) == 1)


def token_hits(acts: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions where any selected feature is active, ignoring padding and each row's BOS.

    ``acts`` is ``[B, T, k]`` (see :func:`feature_activations`); the result is bool ``[B, T]``.
    """
    mask = attention_mask.bool()
    return (acts > 0).any(dim=-1) & mask & ~_first_attended(mask)


def sequence_rates(hits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the fraction of attended positions that are hits (0 for an empty row).

    The denominator counts real tokens only, so a row's rate does not depend on how much
    padding its batch needed. The division is in float64, as the reference computes the retain
    rates it calibrates on (float32 rates shift the percentile by a float32 step); the gate
    rounds to float32 itself. MPS has no float64 and gets float32.
    """
    mask = attention_mask.bool()
    if hits.shape != mask.shape or hits.dim() != 2:
        raise ValueError(
            f"hits {tuple(hits.shape)} and attention_mask {tuple(mask.shape)} must both be [B, T]"
        )
    dtype = torch.float32 if mask.device.type == "mps" else torch.float64
    count = (hits.bool() & mask).sum(dim=1).to(dtype)
    attended = mask.sum(dim=1).clamp(min=1).to(dtype)
    return count / attended


def calibrate_threshold(rates: Any, percentile: float = 95.0) -> float:
    """The ``percentile`` of the retain rates (linear interpolation, float64), i.e. the rate
    that only ``100 - percentile`` % of retain sequences exceed."""
    percentile = _check_percentile(percentile, "percentile")
    return float(np.percentile(_as_float64(rates, "rates"), percentile))


# --------------------------------------------------------------------------- SAE access


def _as_feature_index(features: Any, d_sae: int) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu()
    index = torch.as_tensor(np.asarray(features, dtype=np.int64).reshape(-1))
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= d_sae):
        raise UserError(
            f"feature indices must lie in [0, {d_sae}); the selection is for another SAE"
        )
    if index.unique().numel() != index.numel():
        raise UserError("feature indices contain duplicates")
    return index


def _is_elementwise(sae: Any) -> bool:
    """True when ``encode`` is ``act((x - b_dec) @ W_enc + b_enc)`` with a per-feature ``act``,
    so the k selected columns alone give the exact activations."""
    from sae_lens import JumpReLUSAE, StandardSAE

    cfg = sae.cfg
    return (
        type(sae) in (StandardSAE, JumpReLUSAE)
        and isinstance(sae.activation_fn, torch.nn.ReLU)
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


def encode_columns(
    resid: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec_in: torch.Tensor | None = None,
    jump: torch.Tensor | None = None,
) -> torch.Tensor:
    """ReLU (or JumpReLU, with ``jump`` thresholds) activations from k encoder columns
    ``w_enc [d_in, k]``, computed in the residual's dtype; ``b_dec_in`` is subtracted first
    when the SAE applies its decoder bias to the input."""

    def like(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=resid.device, dtype=resid.dtype)

    sae_in = resid if b_dec_in is None else resid - like(b_dec_in)
    hidden = sae_in @ like(w_enc) + like(b_enc)
    acts = torch.relu(hidden)
    if jump is not None:
        acts = acts * (hidden > like(jump)).to(resid.dtype)
    return acts


def rate_gate(rates: torch.Tensor, threshold: float) -> torch.Tensor:
    """The dynamic gate: ``float32(rate) > float32(threshold)``, strict as in the reference."""
    return rates.to(torch.float32) > torch.tensor(
        threshold, dtype=torch.float32, device=rates.device
    )


def apply_clamp(
    resid: torch.Tensor,
    acts: torch.Tensor,
    where: torch.Tensor,
    directions: torch.Tensor,
    multiplier: float,
) -> torch.Tensor:
    """``x + Σ_j (-m - a_j) · d_j`` at ``where`` (bool ``[B, T]``); ``resid`` itself elsewhere."""
    if not bool(where.any()):
        return resid
    coeff = -multiplier - acts[where]
    out = resid.clone()
    out[where] = resid[where] + coeff @ directions.to(device=resid.device, dtype=resid.dtype)
    return out


class _SelectedFeatures:
    """The k selected features of one SAE: their activations and their decoder directions."""

    def __init__(self, sae: Any, features: Any) -> None:
        self.sae = sae
        self.index = _as_feature_index(features, sae.cfg.d_sae)
        self.elementwise = _is_elementwise(sae)
        if self.elementwise:
            idx = self.index.to(sae.W_enc.device)
            self.w_enc = sae.W_enc.detach()[:, idx].clone()
            self.b_enc = sae.b_enc.detach()[idx].clone()
            self.b_dec_in = sae.b_dec.detach().clone() if sae.cfg.apply_b_dec_to_input else None
            jump = getattr(sae, "threshold", None)
            self.jump = jump.detach()[idx].clone() if isinstance(jump, torch.Tensor) else None

    def activations(self, resid: torch.Tensor) -> torch.Tensor:
        """``[B, T, k]`` activations of the selected features, in the residual's dtype."""
        if self.index.numel() == 0:
            return resid.new_zeros(*resid.shape[:-1], 0)
        if not self.elementwise:
            with torch.no_grad():
                acts = self.sae.encode(resid)
            return acts[..., self.index.to(acts.device)].to(resid.dtype)

        return encode_columns(resid, self.w_enc, self.b_enc, self.b_dec_in, self.jump)


def feature_activations(sae: Any, resid: torch.Tensor, features: Any) -> torch.Tensor:
    """Activations ``[B, T, k]`` of the selected ``features`` (in their given order).

    For ReLU and JumpReLU SAEs only the k encoder columns are used (O(k·d_in) per token);
    other architectures, such as TopK, whose activation depends on all features, run the
    SAE's own ``encode`` and keep the k columns.
    """
    return _SelectedFeatures(sae, features).activations(resid)


# --------------------------------------------------------------------------- clamps


class _Clamp:
    """Sets every selected feature to ``-multiplier`` at the positions a subclass chooses.

    The edit is the closed form ``x + Σ_j (-m - a_j(x)) · d_j`` (``d_j`` the decoder
    direction of feature j); every other position is returned bit for bit.
    """

    def __init__(self, sae: Any, features: Any, multiplier: float) -> None:
        self.selected = _SelectedFeatures(sae, features)
        self.multiplier = float(multiplier)
        self.directions = _decoder_directions(sae, self.selected.index)
        self.fired: torch.Tensor | None = None
        self.rates: torch.Tensor | None = None

    @property
    def features(self) -> torch.Tensor:
        return self.selected.index

    def _gate(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, resid: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if resid.dim() != 3 or attention_mask.shape != resid.shape[:2]:
            raise ValueError(
                f"expected resid [B, T, D] and attention_mask [B, T], got "
                f"{tuple(resid.shape)} and {tuple(attention_mask.shape)}"
            )
        mask = attention_mask.to(resid.device).bool()
        acts = self.selected.activations(resid)
        hits = token_hits(acts, mask)
        self.rates = sequence_rates(hits, mask)
        self.fired = self._gate(self.rates, hits)
        return apply_clamp(
            resid, acts, hits & self.fired[:, None], self.directions, self.multiplier
        )


class DynamicClamp(_Clamp):
    """The DSG guardrail: clamp only in sequences whose hit rate exceeds ``threshold``.

    A row fires when ``float32(rate) > float32(threshold)`` (strict, as the reference); in a
    firing row every hit position is clamped. After a call ``fired`` (bool ``[B]``) and
    ``rates`` (float ``[B]``) describe the last batch.
    """

    def __init__(self, sae: Any, features: Any, threshold: float, multiplier: float) -> None:
        super().__init__(sae, features, multiplier)
        self.threshold = float(threshold)
        if math.isnan(self.threshold):
            raise UserError("the guardrail threshold is NaN; recalibrate it")

    def _gate(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return rate_gate(rates, self.threshold)


class StaticClamp(_Clamp):
    """The always-on baseline (Farrell et al.): clamp at every hit position of every row.

    BOS is excluded like in :class:`DynamicClamp`. ``fired`` is True for rows with at least
    one hit.
    """

    def _gate(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return hits.any(dim=1)
