"""The selection stage: which features to clamp, and the per-n dynamic thresholds.

The reference round-trips its statistics through ``%f`` text files before selecting, which
rounds them to 6 decimals and turns rare retain features into exact zeros; ``stat_decimals``
reproduces that (reference algorithm: The statistic). For each ratio percentile the selected
features are ordered by descending forget mean, and each ``n`` gets the calibration percentile of
the retain rows' hit rates for the first ``n`` features (reference algorithm: Calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.core import artifacts
from dsg.core.errors import UserError
from dsg.stages import sparsity

if TYPE_CHECKING:
    import torch

    from dsg.engine.session import Session

STAGE = "select"
VERSION = 1
SELECTION_FILE = "selection.json"


@dataclass(frozen=True)
class Selection:
    """The features selected at one ratio percentile, in clamp order, and their thresholds."""

    path: Path
    ratio_percentile: float
    features: torch.Tensor
    thresholds: dict[int, float]

    def top(self, n: int) -> torch.Tensor:
        """The first ``n`` features; asking for more than were selected is an error."""
        if not 0 < n <= self.features.numel():
            raise UserError(
                f"n = {n} features requested but {self.features.numel()} were selected at "
                f"ratio percentile {self.ratio_percentile:g}"
            )
        return self.features[:n]


def round_stats(values: torch.Tensor, decimals: int) -> torch.Tensor:
    """float64 values as ``"%.{decimals}f"`` text would store them (negative: unchanged)."""
    import torch

    values = values.to(torch.float64)
    if decimals < 0:
        return values
    rounded = [float(f"{x:.{decimals}f}") for x in values.tolist()]
    return torch.tensor(rounded, dtype=torch.float64)


def check_counts(n_features: tuple[int, ...], n_selected: int, ratio_percentile: float) -> None:
    """Every requested n must fit in the selection; it is never silently shortened."""
    too_many = [n for n in n_features if n > n_selected]
    if too_many:
        raise UserError(
            f"n features {', '.join(map(str, too_many))} exceeds the {n_selected} features "
            f"selected at ratio percentile {ratio_percentile:g}; use n <= {n_selected} or a "
            "lower ratio percentile"
        )


def calibrate(
    stats: sparsity.SparsityStats,
    features: torch.Tensor,
    n_features: tuple[int, ...],
    percentile: float,
) -> dict[int, float]:
    """The ``percentile`` of the retain rows' hit rates for each prefix length n."""
    from dsg_runtime.guardrail import calibrate_threshold

    ns = sorted(set(n_features))
    rates = stats.retain_rates(features, ns)
    return {n: calibrate_threshold(rates[n], percentile) for n in ns}


def ensure(session: Session) -> list[Selection]:
    """One selection per ratio percentile: loaded if already made for these inputs, else made."""
    from dsg_runtime.guardrail import select_features

    s = session.settings
    stats = sparsity.ensure(session)
    forget = round_stats(stats.forget_mean, s.stat_decimals)
    retain = round_stats(stats.retain_mean, s.stat_decimals)
    selections = []
    for p in s.ratio_percentiles:
        inputs = {
            "sparsity": stats.key,
            "ratio_percentile": p,
            "forget_percentile": s.forget_percentile,
            "calibration_percentile": s.calibration_percentile,
            "stat_decimals": s.stat_decimals,
            "n_features": sorted(set(s.n_features)),
        }
        key = artifacts.artifact_key(STAGE, VERSION, inputs)
        folder = session.run_dir.find(STAGE, VERSION, key, force=s.force)
        if folder is not None:
            selections.append(load(folder / SELECTION_FILE))
            continue
        features = select_features(
            forget, retain, ratio_percentile=p, forget_percentile=s.forget_percentile
        )
        check_counts(s.n_features, features.numel(), p)
        thresholds = calibrate(stats, features, s.n_features, s.calibration_percentile)
        with session.run_dir.building(STAGE, key) as folder:
            path = folder / SELECTION_FILE
            artifacts.write_json(
                path,
                {
                    "ratio_percentile": p,
                    "features": features.tolist(),
                    "thresholds": {str(n): t for n, t in thresholds.items()},
                    "inputs": inputs,
                },
            )
            session.run_dir.commit(STAGE, VERSION, key, inputs)
        selections.append(Selection(path, p, features, thresholds))
    return selections


def load(path: Path) -> Selection:
    """A selection written by :func:`ensure`; a malformed file is a UserError."""
    import torch

    data: Any = artifacts.read_json(path)
    try:
        return Selection(
            path=path,
            ratio_percentile=float(data["ratio_percentile"]),
            features=torch.tensor([int(j) for j in data["features"]], dtype=torch.long),
            thresholds={int(n): float(t) for n, t in data["thresholds"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path} is corrupted; delete its folder and run again") from None


def check_unchanged(selection: Selection) -> None:
    """``selection``'s file and its artifact are still there, intact, holding the features and
    thresholds the run used; else a UserError that says what happened."""
    folder = selection.path.parent
    meta_path = folder / artifacts.META_FILE
    if not selection.path.is_file() or not meta_path.is_file():
        raise UserError(
            f"{selection.path} was removed while this run went on (another run with --force, or "
            "by hand), so the report would name a file that is not there; run again"
        )
    artifacts.check_intact(folder, artifacts.read_json(meta_path))
    now = load(selection.path)
    if not (
        now.features.tolist() == selection.features.tolist()
        and now.thresholds == selection.thresholds
    ):
        raise UserError(
            f"{selection.path} changed while this run went on, so the report would name a "
            "selection it did not use; run again"
        )
