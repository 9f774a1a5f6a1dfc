"""A strategy's gate parameters for one feature selection and size n.

``dynamic`` takes the selection's calibrated threshold and ``static`` none; a
:class:`dsg.api.interfaces.CalibratedStrategy` (``windowed``) calibrates its own threshold and
parameters on the sparsity stage's per-token hits. Its result is an artifact keyed by the
selection, the features, the strategy and the settings it reads, so evaluate, muse-export and
the lm-eval bundles share one calibration and a changed input never reuses a stale one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dsg.api.interfaces import CalibratedStrategy, CalibrationData, Strategy
from dsg.core import artifacts
from dsg.stages import sparsity

if TYPE_CHECKING:
    from dsg.engine.session import Session
    from dsg.stages.select import Selection

STAGE = "calibrate"
VERSION = 1


@dataclass(frozen=True)
class GateParameters:
    """The gate's threshold (None when the strategy uses none), its other parameters, and the
    settings the strategy calibrated them with (its ``calibration_settings``; none for a
    strategy that does not calibrate)."""

    threshold: float | None
    params: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """A setting's value as JSON holds it (a tuple as a list), so it reads back equal."""
    return list(value) if isinstance(value, tuple) else value


def gate_parameters(
    session: Session, selection: Selection, n: int, strategy: Strategy
) -> GateParameters:
    """The parameters of ``strategy``'s gate for the first ``n`` features of ``selection``."""
    if not isinstance(strategy, CalibratedStrategy):
        threshold = selection.thresholds[n] if strategy.uses_threshold else None
        return GateParameters(threshold)
    s = session.settings
    options = {name: _plain(getattr(s, name)) for name in strategy.calibration_settings}
    features = selection.top(n)
    inputs = {
        "selection": artifacts.read_json(selection.path).get("inputs", {}),
        "features": [int(j) for j in features.tolist()],
        "strategy": strategy.name,
        "percentile": s.calibration_percentile,
        "options": options,
    }
    key = artifacts.artifact_key(STAGE, VERSION, inputs)
    folder = session.run_dir.find(STAGE, VERSION, key, force=s.force)
    if folder is not None:
        meta = artifacts.read_json(folder / artifacts.META_FILE)
        return GateParameters(float(meta["threshold"]), dict(meta["params"]), options)
    stats = sparsity.ensure(session)
    data = CalibrationData(
        retain_hits=stats.token_hits(features, "retain"),
        forget_hits=stats.token_hits(features, "forget"),
        percentile=s.calibration_percentile,
        options=options,
    )
    threshold, params, details = strategy.calibrate(data)
    session.run_dir.commit(
        STAGE,
        VERSION,
        key,
        inputs,
        extra={"threshold": threshold, "params": params, "details": details},
    )
    return GateParameters(float(threshold), dict(params), options)
