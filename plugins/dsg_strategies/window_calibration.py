"""The ``windowed`` strategy's calibration: its window length w and window threshold tau_w,
chosen from the training corpora only (the forget and retain rows of the sparsity stage, never an
eval set). Its whole-sequence threshold is the dynamic alpha: the calibration percentile of the
retain rows' hit rates, computed from the same hits.

For every candidate length w (the ``window_lengths`` setting; lengths longer than a calibration
row are skipped, since no row could tell them from the whole-row rate):

1. ``tau_w`` is the calibration percentile of the retain rows' densest-window rates
   (:func:`dsg_runtime.guardrail.window_rates` over whole rows; position 0, the BOS, is never a
   hit).
   With ``stretch_tokens`` longer than a row, it is the percentile over stretches of that many
   tokens of the retain rows laid end to end (after their BOS), one starting every w tokens:
   a longer prompt has more windows to pass tau_w by chance, so a threshold meant for prompts
   of L tokens is calibrated on benign text of L tokens.
2. Synthetic dilution: a BOS, then ``b`` benign tokens, then a passage of ``p`` forget tokens
   (each forget row's first ``p`` tokens after its BOS), for every ``p`` in
   :data:`PASSAGE_TOKENS` that fits in a row (the whole row when none does) and ``b`` in
   :data:`BENIGN_TOKENS`. The benign tokens are read from the
   retain rows laid end to end, each forget row starting ``b`` tokens further on. Hits are taken
   as the sparsity stage recorded them in each row's own context.
3. The score of w is the fraction of these diluted passages on which the windowed gate
   (:class:`dsg.guardrail.WindowGate` with alpha and ``tau_w``) fires, averaged over the
   ``(p, b)`` pairs; the highest score wins, and ties go to the longer window (more tokens
   behind each decision, closer to the dynamic gate).

The retain rows' (or stretches') firing fraction under each candidate's gate is recorded beside its
score: the window adds its own false positives to the dynamic gate's, up to twice the calibrated
rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.api import UserError

if TYPE_CHECKING:
    import torch

PASSAGE_TOKENS = (32, 64)
"""Lengths of the forget passages that the synthetic dilution hides (about a question's)."""
BENIGN_TOKENS = (0, 64, 256)
"""Benign tokens put before each passage in the synthetic dilution."""


def densest_rates(hits: torch.Tensor, window: int) -> torch.Tensor:
    """Per row of unpadded hits ``[rows, T]``, its densest-window rate (float64)."""
    import torch

    from dsg_runtime.guardrail import window_rates

    return window_rates(hits, torch.ones_like(hits, dtype=torch.bool), window)


def stretches(retain: torch.Tensor, length: int, stride: int) -> torch.Tensor:
    """``[n, 1 + length]``: a BOS (never a hit), then ``length`` tokens of the retain rows after
    their BOS laid end to end, a stretch starting every ``stride`` tokens; the rows themselves
    when ``length`` is not longer than a row."""
    import torch

    if length <= retain.shape[1]:
        return retain
    stream = retain[:, 1:].reshape(-1)
    if stream.numel() < length:
        raise UserError(
            f"window_calibration_tokens {length} is more than the {stream.numel()} retain tokens; "
            "lower it or pass a longer retain corpus"
        )
    windows = stream.unfold(0, length, stride)
    return torch.cat([torch.zeros((windows.shape[0], 1), dtype=torch.bool), windows], dim=1)


def diluted(
    forget_hits: torch.Tensor, benign: torch.Tensor, passage: int, benign_tokens: int
) -> torch.Tensor:
    """``[forget rows, 1 + benign_tokens + passage]``: a BOS (never a hit), ``benign_tokens`` of
    the ``benign`` hit stream (row i starting at ``i * benign_tokens``, wrapping around), then
    the row's first ``passage`` tokens after its BOS."""
    import torch

    rows = forget_hits.shape[0]
    start = torch.arange(rows)[:, None] * benign_tokens
    index = (start + torch.arange(benign_tokens)[None, :]) % benign.numel()
    bos = torch.zeros((rows, 1), dtype=torch.bool)
    return torch.cat([bos, benign[index], forget_hits[:, 1 : 1 + passage].bool()], dim=1)


def calibrate_window(
    retain_hits: torch.Tensor,
    forget_hits: torch.Tensor,
    *,
    percentile: float,
    window_lengths: tuple[int, ...],
    stretch_tokens: int = 0,
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """``(alpha, {"window": w, "window_threshold": tau_w}, details)`` by the rule in this
    module's docstring; ``details`` records every candidate's threshold, retain firing fraction
    and dilution score."""
    import torch

    from dsg_runtime.guardrail import WindowGate, calibrate_threshold

    seq_len = int(retain_hits.shape[1])
    if retain_hits.shape[0] == 0 or forget_hits.shape[0] == 0 or seq_len < 2:
        raise UserError(
            "the windowed strategy needs forget and retain rows of at least 2 tokens to "
            "calibrate on"
        )
    candidates = sorted({int(w) for w in window_lengths if 0 < int(w) <= seq_len})
    if not candidates:
        raise UserError(
            f"no window length in {list(window_lengths)} fits the calibration rows of {seq_len} "
            "tokens; pass --window-lengths with values up to the seq_len"
        )
    retain = retain_hits.bool()
    alpha = calibrate_threshold(retain.sum(dim=1).to(torch.float64) / seq_len, percentile)
    rows_after_bos = int(forget_hits.shape[1]) - 1
    passages = [p for p in PASSAGE_TOKENS if p <= rows_after_bos] or [rows_after_bos]
    benign = retain[:, 1:].reshape(-1)
    probes = {(p, b): diluted(forget_hits, benign, p, b) for p in passages for b in BENIGN_TOKENS}
    table: list[dict[str, Any]] = []
    for w in candidates:
        benign_text = stretches(retain, stretch_tokens, w)
        tau = calibrate_threshold(densest_rates(benign_text, w), percentile)
        gate = WindowGate(w, tau, alpha)
        fired = {f"{p}+{b}": fired_fraction(gate, x) for (p, b), x in probes.items()}
        table.append(
            {
                "window": w,
                "window_threshold": tau,
                "retain_fired": fired_fraction(gate, benign_text),
                "diluted_forget_fired": fired,
                "score": sum(fired.values()) / len(fired),
            }
        )
    best = max(table, key=lambda row: (row["score"], row["window"]))
    details = {
        "rule": "max mean fired fraction over diluted forget passages; ties: longer window",
        "threshold": alpha,
        "passage_tokens": passages,
        "benign_tokens": list(BENIGN_TOKENS),
        "stretch_tokens": max(stretch_tokens, seq_len),
        "candidates": table,
    }
    params = {"window": int(best["window"]), "window_threshold": float(best["window_threshold"])}
    return alpha, params, details


def fired_fraction(gate: Any, hits: torch.Tensor) -> float:
    """The fraction of unpadded rows of ``hits`` on which ``gate`` fires."""
    import torch

    from dsg_runtime.guardrail import sequence_rates

    mask = torch.ones_like(hits, dtype=torch.bool)
    fired = gate.decide(sequence_rates(hits, mask), hits, mask)
    return float(fired.double().mean())
