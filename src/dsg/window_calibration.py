"""The ``windowed`` strategy's calibration: its window length w and threshold tau_w, chosen from
the training corpora only (the forget and retain rows of the sparsity stage, never an eval set).

For every candidate length w (the ``window_lengths`` setting; lengths longer than a calibration
row are skipped, since no row could tell them from the whole-row rate):

1. ``tau_w`` is the calibration percentile of the retain rows' densest-window rates
   (:func:`dsg.guardrail.window_rates` over whole rows; position 0, the BOS, is never a hit), so
   retain text fires at the calibrated false-positive rate by construction, however long it is.
2. Synthetic dilution: a BOS, then ``b`` benign tokens, then a passage of ``p`` forget tokens
   (each forget row's first ``p`` tokens after its BOS), for every ``p`` in
   :data:`PASSAGE_TOKENS` and ``b`` in :data:`BENIGN_TOKENS`. The benign tokens are read from the
   retain rows laid end to end, each forget row starting ``b`` tokens further on. Hits are taken
   as the sparsity stage recorded them in each row's own context.
3. The score of w is the fraction of these diluted passages on which the gate fires, averaged
   over the ``(p, b)`` pairs; the highest score wins, and ties go to the longer window (more
   tokens behind each decision, closer to the dynamic gate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.errors import UserError

if TYPE_CHECKING:
    import torch

PASSAGE_TOKENS = (32, 64)
"""Lengths of the forget passages that the synthetic dilution hides (about a question's)."""
BENIGN_TOKENS = (0, 64, 256)
"""Benign tokens put before each passage in the synthetic dilution."""


def densest_rates(hits: torch.Tensor, window: int) -> torch.Tensor:
    """Per row of unpadded hits ``[rows, T]``, its densest-window rate (float64)."""
    import torch

    from dsg.guardrail import window_rates

    return window_rates(hits, torch.ones_like(hits, dtype=torch.bool), window)


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
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """``(tau_w, {"window": w}, details)`` by the rule in this module's docstring; ``details``
    records every candidate's threshold, retain firing rate and dilution score."""
    from dsg.guardrail import calibrate_threshold, rate_gate

    seq_len = int(retain_hits.shape[1])
    if retain_hits.shape[0] == 0 or forget_hits.shape[0] == 0:
        raise UserError("the windowed strategy needs forget and retain rows to calibrate on")
    candidates = sorted({int(w) for w in window_lengths if 0 < int(w) <= seq_len})
    if not candidates:
        raise UserError(
            f"no window length in {list(window_lengths)} fits the calibration rows of {seq_len} "
            "tokens; pass --window-lengths with values up to the seq_len"
        )
    passages = [p for p in PASSAGE_TOKENS if p < forget_hits.shape[1]]
    benign = retain_hits[:, 1:].bool().reshape(-1)
    probes = {(p, b): diluted(forget_hits, benign, p, b) for p in passages for b in BENIGN_TOKENS}
    table: list[dict[str, Any]] = []
    for w in candidates:
        retain_rates = densest_rates(retain_hits.bool(), w)
        tau = calibrate_threshold(retain_rates, percentile)
        retain_fired = rate_gate(retain_rates, tau).double().mean()
        fired = {
            f"{p}+{b}": float(rate_gate(densest_rates(x, w), tau).double().mean())
            for (p, b), x in probes.items()
        }
        score = sum(fired.values()) / len(fired)
        table.append(
            {
                "window": w,
                "threshold": tau,
                "retain_fired": float(retain_fired),
                "diluted_forget_fired": fired,
                "score": score,
            }
        )
    best = max(table, key=lambda row: (row["score"], row["window"]))
    details = {
        "rule": "max mean fired fraction over diluted forget passages; ties: longer window",
        "passage_tokens": passages,
        "benign_tokens": list(BENIGN_TOKENS),
        "candidates": table,
    }
    return float(best["threshold"]), {"window": int(best["window"])}, details
