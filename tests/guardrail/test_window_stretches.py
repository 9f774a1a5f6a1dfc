"""The windowed strategy's tau_w calibrated on retain stretches longer than a row: the stretches
are the rows after their BOS laid end to end, and a dense run that crosses a row boundary (which
no single row shows) raises the threshold."""

from __future__ import annotations

import pytest
import torch
from dsg_strategies.window_calibration import calibrate_window, stretches

from dsg.core.errors import UserError


def rows(*bits: str) -> torch.Tensor:
    """Bool rows from strings of 0/1; position 0 (the BOS) must be 0."""
    return torch.tensor([[c == "1" for c in b] for b in bits])


def test_stretches_lay_the_rows_end_to_end() -> None:
    retain = rows("01100", "00011", "01000")
    out = stretches(retain, 6, 2)
    stream = [1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]  # each row without its BOS
    assert out.tolist() == [[False] + [bool(b) for b in stream[s : s + 6]] for s in (0, 2, 4, 6)]
    assert torch.equal(stretches(retain, 5, 2), retain)  # not longer than a row: the rows
    assert torch.equal(stretches(retain, 0, 2), retain)
    with pytest.raises(UserError, match="more than the 12 retain tokens"):
        stretches(retain, 13, 2)


def test_a_run_across_rows_raises_the_window_threshold() -> None:
    # Each row (BOS + 7 tokens) has at most 2 hits in any 4 consecutive tokens, but row i ends
    # with two hits and row i+1 starts with two, so the stream has 4 in 4 at every boundary.
    retain = rows(*["01000011", "01100011", "01100011", "01100000"] * 5)
    forget = rows(*["01111111"] * 4)
    _, by_row, _ = calibrate_window(retain, forget, percentile=50.0, window_lengths=(4,))
    _, by_stretch, details = calibrate_window(
        retain, forget, percentile=50.0, window_lengths=(4,), stretch_tokens=14
    )
    assert by_row == {"window": 4, "window_threshold": 0.5}
    assert by_stretch == {"window": 4, "window_threshold": 1.0}
    assert details["stretch_tokens"] == 14
