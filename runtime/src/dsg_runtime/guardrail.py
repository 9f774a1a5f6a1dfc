"""The guardrail math: feature selection, per-sequence rates, calibration, gates and the clamp.

Everything here is pure tensor arithmetic on the k selected features of an SAE; no model,
dataset or file is touched, so dsg's evaluation engine, the bundles and third-party strategies
share one definition of "hit", "rate" and "clamp". Cutting the features out of a full sae_lens
SAE is dsg's part (:mod:`dsg.guardrail`); a bundle carries them as plain tensors.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from dsg_runtime.checks import INT64_MAX, check_bounds, check_multiplier, check_percentile
from dsg_runtime.errors import UserError
from dsg_runtime.protocols import Gate

__all__ = [
    "select_features",
    "sequence_rates",
    "window_rates",
    "calibrate_threshold",
    "token_hits",
    "countable_positions",
    "encode_columns",
    "encode_topk",
    "rate_gate",
    "rate_threshold",
    "apply_clamp",
    "feature_index",
    "Features",
    "FeatureColumns",
    "TopKFeatures",
    "Gate",
    "ThresholdGate",
    "WindowGate",
    "AnyHitGate",
    "keeps_decision",
    "carries_by_position",
    "Guardrail",
]

RATIO_EPSILON = 1e-21
"""Added to the squared retain mean before dividing, as the reference does."""

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
    ratio_percentile = check_percentile("ratio_percentile", ratio_percentile)
    forget_percentile = check_percentile("forget_percentile", forget_percentile)
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


def countable_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """The positions whose hits count: attended ones other than each row's BOS (bool ``[B, T]``)."""
    mask = attention_mask.bool()
    return mask & ~_first_attended(mask)


def token_hits(acts: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions where any selected feature is active, ignoring padding and each row's BOS.

    ``acts`` is ``[B, T, k]`` (:meth:`Features.activations`); the result is bool ``[B, T]``.
    """
    return (acts > 0).any(dim=-1) & countable_positions(attention_mask)


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


def window_rates(hits: torch.Tensor, attention_mask: torch.Tensor, window: int) -> torch.Tensor:
    """Per row, the largest hit rate over any ``window`` consecutive attended positions (padding
    skipped, wherever it lies); a row of at most ``window`` attended positions gets its
    :func:`sequence_rates` rate, so the statistic is the dynamic one whenever the window covers
    the row. Same dtypes as :func:`sequence_rates`.

    Cumulative sums over the attended positions: ``H[t]`` hits and ``c[t]`` attended positions
    up to ``t``; ``G[k]`` is the hit count after the first ``k`` attended positions (scattered
    from every ``t``: positions with equal ``c`` carry equal ``H``), so the window ending at an
    attended ``t`` holds ``H[t] - G[c[t] - window]`` hits. Dense and branch-free: no host sync.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    whole = sequence_rates(hits, attention_mask)
    mask = attention_mask.bool()
    counted = (hits.bool() & mask).to(torch.long).cumsum(dim=1)
    position = mask.to(torch.long).cumsum(dim=1)
    after = torch.zeros(
        (mask.shape[0], mask.shape[1] + 1), dtype=torch.long, device=mask.device
    ).scatter(1, position, counted)
    start = after.gather(1, (position - window).clamp(min=0))
    full = mask & (position >= window)
    densest = torch.where(full, counted - start, torch.zeros_like(counted)).amax(dim=1)
    return torch.where(position[:, -1] > window, densest.to(whole.dtype) / window, whole)


def calibrate_threshold(rates: Any, percentile: float = 95.0) -> float:
    """The ``percentile`` of the retain rates (linear interpolation, float64), i.e. the rate
    that only ``100 - percentile`` % of retain sequences exceed."""
    percentile = check_percentile("percentile", percentile)
    return float(np.percentile(_as_float64(rates, "rates"), percentile))


# --------------------------------------------------------------------------- features


def feature_index(features: Any, d_sae: int) -> torch.Tensor:
    """Selected feature indices as a CPU int64 vector; out of range or repeated: UserError."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu()
    outside = UserError(
        f"feature indices must lie in [0, {d_sae}); the selection is for another SAE"
    )
    try:
        index = torch.as_tensor(np.asarray(features, dtype=np.int64).reshape(-1))
    except OverflowError:
        raise outside from None
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= d_sae):
        raise outside
    if index.unique().numel() != index.numel():
        raise UserError("feature indices contain duplicates")
    return index


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


def encode_topk(
    resid: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    index: torch.Tensor,
    top_k: int,
    b_dec_in: torch.Tensor | None = None,
) -> torch.Tensor:
    """The features ``index`` of a TopK SAE, from its whole encoder ``w_enc [d_in, d_sae]``, in
    the residual's dtype: the ``top_k`` largest pre-activations of each token, ReLU'd, the rest
    zero. The same operations in the same order as sae_lens's ``TopKSAE.encode`` (``torch.topk``
    unsorted, so ties go to the same latents), hence the same values bit for bit on the same
    device and dtype. Dense: no host synchronisation."""

    def like(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=resid.device, dtype=resid.dtype)

    sae_in = resid if b_dec_in is None else resid - like(b_dec_in)
    hidden = sae_in @ like(w_enc) + like(b_enc)
    values, latents = torch.topk(hidden, k=top_k, dim=-1, sorted=False)
    acts = torch.zeros_like(hidden).scatter_(-1, latents, values.relu())
    return acts.index_select(-1, index.to(resid.device))


def _float32(value: float) -> float:
    """``value`` rounded to float32, kept as a Python float: comparing a float32 tensor with it
    is the float32 comparison, and it needs no tensor (no host-to-device copy per call)."""
    return float(np.float32(value))


def rate_gate(rates: torch.Tensor, threshold: float) -> torch.Tensor:
    """The dynamic gate: ``float32(rate) > float32(threshold)``, strict as in the reference."""
    return rates.to(torch.float32) > _float32(threshold)


def apply_clamp(
    resid: torch.Tensor,
    acts: torch.Tensor,
    where: torch.Tensor,
    directions: torch.Tensor,
    multiplier: float,
) -> torch.Tensor:
    """``x + Σ_j (-m - a_j) · d_j`` at ``where`` (bool ``[B, T]``); ``resid``'s values elsewhere.

    Dense and branch-free (``torch.where``, no boolean indexing), so it never waits for the
    device and CUDA graphs or ``torch.compile`` can capture it.
    """
    delta = (-multiplier - acts) @ directions.to(device=resid.device, dtype=resid.dtype)
    return torch.where(where[..., None], resid + delta, resid)


class CastCache:
    """Named tensors cast once per (device, dtype) they are used in, not on every forward pass;
    integer tensors (indices) only move to the device."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self.source = tensors
        self.cast: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    def like(self, resid: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (resid.device, resid.dtype)
        if key not in self.cast:
            self.cast[key] = {
                name: t.to(
                    device=resid.device,
                    dtype=resid.dtype if t.is_floating_point() else t.dtype,
                )
                for name, t in self.source.items()
            }
        return self.cast[key]


@runtime_checkable
class Features(Protocol):
    """The k selected features of an SAE, as the guardrail reads them."""

    def activations(self, resid: torch.Tensor) -> torch.Tensor:
        """``[B, T, k]`` activations of the selected features, in the residual's dtype."""
        ...

    def directions(self, resid: torch.Tensor) -> torch.Tensor:
        """The residual-space change per unit of each feature, ``[k, D]``, on the residual's
        device and in its dtype."""
        ...


class FeatureColumns:
    """The k selected features of a ReLU or JumpReLU SAE as plain tensors: encoder columns
    ``w_enc [D, k]``, biases ``b_enc [k]``, decoder rows ``w_dec [k, D]``, the decoder bias
    ``b_dec_in [D]`` when the SAE subtracts it from its input, and JumpReLU thresholds
    ``jump [k]``. This is all a guardrail needs, so a bundle carries exactly these."""

    def __init__(
        self,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        w_dec: torch.Tensor,
        b_dec_in: torch.Tensor | None = None,
        jump: torch.Tensor | None = None,
    ) -> None:
        self.w_enc, self.b_enc, self.w_dec = w_enc, b_enc, w_dec
        self.b_dec_in, self.jump = b_dec_in, jump
        optional = {"b_dec_in": b_dec_in, "jump": jump}
        self._cast = CastCache(
            w_enc=w_enc,
            b_enc=b_enc,
            w_dec=w_dec,
            **{name: t for name, t in optional.items() if t is not None},
        )

    @property
    def activation(self) -> str:
        return "relu" if self.jump is None else "jumprelu"

    def activations(self, resid: torch.Tensor) -> torch.Tensor:
        """``[B, T, k]`` activations of the selected features, in the residual's dtype."""
        t = self._cast.like(resid)
        return encode_columns(resid, t["w_enc"], t["b_enc"], t.get("b_dec_in"), t.get("jump"))

    def directions(self, resid: torch.Tensor) -> torch.Tensor:
        """The decoder rows ``[k, D]`` on the residual's device and in its dtype."""
        return self._cast.like(resid)["w_dec"]


class TopKFeatures:
    """The k selected features of a TopK SAE as plain tensors. A latent is active when it is
    among a token's ``top_k`` largest pre-activations, which depends on every latent, so this
    holds the whole encoder (``w_enc [D, d_sae]``, ``b_enc [d_sae]``) beside the selected
    ``index [k]`` and their decoder rows ``w_dec [k, D]``; ``b_dec_in [D]`` when the SAE
    subtracts its decoder bias from its input."""

    activation = "topk"

    def __init__(
        self,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        w_dec: torch.Tensor,
        index: torch.Tensor,
        top_k: int,
        b_dec_in: torch.Tensor | None = None,
    ) -> None:
        self.w_enc, self.b_enc, self.w_dec, self.b_dec_in = w_enc, b_enc, w_dec, b_dec_in
        self.index, self.top_k = index, top_k
        optional = {} if b_dec_in is None else {"b_dec_in": b_dec_in}
        self._cast = CastCache(w_enc=w_enc, b_enc=b_enc, w_dec=w_dec, index=index, **optional)

    def activations(self, resid: torch.Tensor) -> torch.Tensor:
        """``[B, T, k]`` activations of the selected features, in the residual's dtype."""
        t = self._cast.like(resid)
        return encode_topk(resid, t["w_enc"], t["b_enc"], t["index"], self.top_k, t.get("b_dec_in"))

    def directions(self, resid: torch.Tensor) -> torch.Tensor:
        """The decoder rows ``[k, D]`` on the residual's device and in its dtype."""
        return self._cast.like(resid)["w_dec"]


# --------------------------------------------------------------------------- gates


def rate_threshold(name: str, value: float) -> float:
    """A threshold on hit rates, checked: a rate lies in [0, 1], so a threshold above 1 never
    fires and one below 0 always does, and NaN decides nothing."""
    value = float(value)
    if math.isnan(value):
        raise UserError(f"the guardrail {name} is NaN; recalibrate it")
    check_bounds(name, value, 0.0, 1.0)
    return value


class ThresholdGate:
    """The DSG gate: a row fires when ``float32(rate) > float32(threshold)`` (strict); decode
    steps keep the prompt's decision."""

    keeps_decision = True

    def __init__(self, threshold: float) -> None:
        self.threshold = rate_threshold("threshold", threshold)

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return rate_gate(rates, self.threshold)

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return fired


class WindowGate:
    """The windowed gate: the dynamic gate, plus one that benign text cannot dilute.

    A row fires when ``float32(rate) > float32(threshold)`` (its whole-sequence hit rate, as
    :class:`ThresholdGate`), or when it is longer than ``window`` attended positions and its
    densest window (:func:`window_rates`) has ``float32(r) > float32(window_threshold)``. A row of
    at most ``window`` positions is therefore decided exactly as ``dynamic`` decides it, and
    text added around a dense passage cannot lower its densest window. Decode steps keep the
    prompt's decision. The densest window needs the attention mask, so the guardrail calls
    :meth:`decide`; calling the gate without a mask is refused."""

    keeps_decision = True

    def __init__(self, window: int, window_threshold: float, threshold: float) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise UserError(f"the guardrail window must be a positive integer, got {window!r}")
        if window > INT64_MAX:  # the window sums are int64 tensors
            raise UserError(
                f"the guardrail window must be at most {INT64_MAX:,} tokens, got a "
                f"{window.bit_length()}-bit number; recalibrate the window"
            )
        self.window = window
        self.window_threshold = rate_threshold("window_threshold", window_threshold)
        self.threshold = rate_threshold("threshold", threshold)

    def decide(
        self, rates: torch.Tensor, hits: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        longer = attention_mask.bool().sum(dim=1) > self.window
        dense = rate_gate(window_rates(hits, attention_mask, self.window), self.window_threshold)
        return rate_gate(rates, self.threshold) | (longer & dense)

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        raise TypeError("the windowed gate needs the attention mask; call decide()")

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return fired


def keeps_decision(gate: Any) -> bool:
    """Whether ``gate``'s ``carry`` returns the prompt's decision unchanged, as the gate says
    with ``keeps_decision = True`` (anything else, or nothing, is read as no)."""
    return getattr(gate, "keeps_decision", False) is True


class AnyHitGate:
    """No gate (static clamping): every row with a hit is clamped, on the prompt and after."""

    keeps_decision = False

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return hits.any(dim=1)

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return hits.any(dim=1)


def carries_by_position(gate: Any) -> bool:
    """Whether ``gate`` carries a prompt's decision to each later position by a rule the runtime
    knows, from the decision and that position's own hit alone: it keeps the decision
    (:func:`keeps_decision`) or it is the static clamp's, which clamps every hit. The vLLM worker
    and packed log-likelihood rows can follow no other."""
    return keeps_decision(gate) or isinstance(gate, AnyHitGate)


# --------------------------------------------------------------------------- the guardrail


class Guardrail:
    """The one guardrail: hits -> rates -> gate -> clamp, for a full SAE or a bundle alike.

    Each selected feature is set to ``-multiplier`` at the hit positions of the rows the gate
    lets through, with the closed form ``x + Σ_j (-m - a_j(x)) · d_j`` (``d_j`` the decoder
    direction of feature j); every other position is returned bit for bit. The per-call path
    never synchronises with the host. After a call ``fired`` (bool ``[B]``) and ``rates``
    (``[B]``, see :func:`sequence_rates`) describe the last batch, as tensors on the residual's
    device.
    """

    def __init__(self, features: Features, gate: Gate, multiplier: float) -> None:
        self.selected = features
        self.gate = gate
        self.multiplier = check_multiplier(multiplier)
        self.fired: torch.Tensor | None = None
        self.rates: torch.Tensor | None = None

    def activations(self, resid: torch.Tensor) -> torch.Tensor:
        """``[B, T, k]`` activations of the selected features, in the residual's dtype."""
        return self.selected.activations(resid)

    def decide(self, hits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's rate and the gate's decision: ``gate.decide(rates, hits, mask)`` when the
        gate defines it (one that needs the mask, :class:`WindowGate`), else ``gate(rates,
        hits)``."""
        rates = sequence_rates(hits, mask)
        decide = getattr(self.gate, "decide", None)
        fired = self.gate(rates, hits) if decide is None else decide(rates, hits, mask)
        return rates, fired

    def clamp(self, resid: torch.Tensor, acts: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """The closed-form edit at ``where`` (bool ``[B, T]``); ``resid``'s values elsewhere."""
        return apply_clamp(resid, acts, where, self.selected.directions(resid), self.multiplier)

    def __call__(self, resid: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """A whole sequence: decide each row on its attended tokens, then clamp its hits."""
        if resid.dim() != 3 or attention_mask.shape != resid.shape[:2]:
            raise ValueError(
                f"expected resid [B, T, D] and attention_mask [B, T], got "
                f"{tuple(resid.shape)} and {tuple(attention_mask.shape)}"
            )
        mask = attention_mask.to(resid.device).bool()
        acts = self.activations(resid)
        hits = token_hits(acts, mask)
        self.rates, self.fired = self.decide(hits, mask)
        return self.clamp(resid, acts, hits & self.fired[:, None])

    def continue_rows(
        self, resid: torch.Tensor, attention_mask: torch.Tensor | None, fired: torch.Tensor
    ) -> torch.Tensor:
        """New positions of rows already decided (decode steps): clamp the hits of the rows the
        gate carries on from the prompt's decision ``fired``. ``attention_mask`` None: every new
        position counts (it reads no mask, so a decode step never waits for the device)."""
        acts = self.activations(resid)
        hits = (acts > 0).any(dim=-1)
        if attention_mask is not None:
            hits = hits & attention_mask.to(resid.device).bool()
        rows = self.gate.carry(fired.to(resid.device), hits)
        return self.clamp(resid, acts, hits & rows[:, None])

    def decide_prompt(self, resid: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Decide each row on a whole prompt without editing it: sets ``fired`` and ``rates``
        (a prompt processed in pieces is decided on all of it first)."""
        mask = attention_mask.to(resid.device).bool()
        hits = token_hits(self.activations(resid), mask)
        self.rates, self.fired = self.decide(hits, mask)

    def apply_decision(
        self,
        resid: torch.Tensor,
        decided: torch.Tensor,
        later: torch.Tensor,
        fired: torch.Tensor,
    ) -> torch.Tensor:
        """Positions of rows decided elsewhere: at ``decided`` (prompt positions whose hits
        counted for ``fired``) clamp the hits of the rows that fired, as the prompt's own pass
        does; at ``later`` (generated positions; ``[B, T]``, or ``[T]`` alike for every row)
        clamp as :meth:`continue_rows`."""
        acts = self.activations(resid)
        active = (acts > 0).any(dim=-1)
        return self._clamp_decided(
            resid, acts, active & decided.to(resid.device), active & later.to(resid.device), fired
        )

    def decide_on_prefix(
        self, resid: torch.Tensor, decide_mask: torch.Tensor, apply_mask: torch.Tensor
    ) -> torch.Tensor:
        """A prompt and its continuation in one pass (log-likelihood scoring): decide each row
        on ``decide_mask`` (its prompt), then clamp the rest of ``apply_mask`` as decode steps
        under that decision would be, i.e. exactly a prefill followed by :meth:`continue_rows`.
        ``decide_mask`` lies inside ``apply_mask``."""
        decide = decide_mask.to(resid.device).bool()
        later = apply_mask.to(resid.device).bool() & ~decide
        acts = self.activations(resid)
        hits = token_hits(acts, decide)
        self.rates, self.fired = self.decide(hits, decide)
        later_hits = (acts > 0).any(dim=-1) & later
        return self._clamp_decided(resid, acts, hits, later_hits, self.fired)

    def _clamp_decided(
        self,
        resid: torch.Tensor,
        acts: torch.Tensor,
        hits: torch.Tensor,
        later_hits: torch.Tensor,
        fired: torch.Tensor,
    ) -> torch.Tensor:
        fired = fired.to(resid.device)
        rows = self.gate.carry(fired, later_hits)
        return self.clamp(resid, acts, (hits & fired[:, None]) | (later_hits & rows[:, None]))
