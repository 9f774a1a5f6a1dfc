"""Statistics folders written by hand, with chosen firings per row."""

from __future__ import annotations

from pathlib import Path

import torch

from dsg.core import artifacts
from dsg.stages import sparsity

SEQ_LEN = 10


def write_stats(
    folder: Path, forget: list[float], retain: list[float], rows: list[list[tuple[int, int]]]
) -> sparsity.SparsityStats:
    """Statistics whose calibration chunk holds the given (position, feature) firings per row."""
    d_sae = len(forget)
    flat = [t * d_sae + j for row in rows for t, j in row]
    row_ptr = [0]
    for row in rows:
        row_ptr.append(row_ptr[-1] + len(row))
    artifacts.write_tensors(
        folder / "calibration-00000.safetensors",
        {"flat": torch.tensor(flat, dtype=torch.int32), "row_ptr": torch.tensor(row_ptr)},
    )
    return sparsity.SparsityStats(
        folder=folder,
        key="toystats",
        forget_mean=torch.tensor(forget, dtype=torch.float64),
        retain_mean=torch.tensor(retain, dtype=torch.float64),
        n_rows=len(rows),
        seq_len=SEQ_LEN,
        chunks=("calibration-00000.safetensors",),
    )
