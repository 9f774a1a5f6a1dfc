"""The muse-export stage: one guardrail bundle per (ratio percentile, n, multiplier, strategy).

The reference's MUSE path only printed its features and thresholds; here each configuration
becomes a bundle that a transformers-based harness (open-unlearning's MUSE evaluation) loads with
the base model. Selection runs first if its artifacts are missing, as in every other stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dsg.api.interfaces import hf_reference
from dsg.bundle import CONFIG_FILE, Bundle, bundle_strategy, from_sae, model_binding
from dsg.core.artifacts import (
    check_kind,
    complete_or_absent,
    json_sha256,
    read_json,
    write_failed,
)
from dsg.stages.gate_parameters import gate_parameters

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dsg.api.interfaces import Strategy
    from dsg.engine.session import Session
    from dsg.stages.select import Selection

BUNDLES_DIR = "bundles"


@dataclass(frozen=True)
class Exported:
    """Where one bundle was written, and the configuration it holds."""

    path: Path
    ratio_percentile: float
    n: int
    multiplier: float
    strategy: str
    threshold: float | None


def bundle_name(case: str, selection: Selection, bundle: Bundle) -> str:
    """Readable, and keyed by everything that shapes the guardrail:
    ``news-p90-n10-m500-dynamic-<digest>``, where the digest (8 hex digits) hashes the bundle's
    whole description but its tensors' hash: the features, threshold, multiplier, strategy and
    every strategy parameter, the SAE and the base model, and the provenance, which holds the
    selection's inputs and the settings the strategy was calibrated with. The tensors are
    the SAE's columns of those features, so they follow. Another calibration (another
    ``--window-calibration-tokens`` or ``--window-lengths``) gives another name, never the same
    folder."""
    digest = json_sha256(bundle.config(tensors_sha256=""))[:8]
    return (
        f"{case}-p{selection.ratio_percentile:g}-n{bundle.k}-m{bundle.multiplier:g}-"
        f"{bundle.strategy}-{digest}"
    )


def save_bundle(bundle: Bundle, folder: Path) -> Path:
    """Write ``bundle`` into ``folder``: a failure (a full disk, a file in the way) is one line
    and leaves no half-written bundle; ``bundle.json``, written last, marks it complete."""
    with complete_or_absent(folder, CONFIG_FILE):
        try:
            return bundle.save(folder)
        except OSError as exc:  # making the folder; the files' own writes report themselves
            raise write_failed(folder, exc) from None


def bundles_for(
    session: Session, selection: Selection, strategies: Sequence[Strategy]
) -> list[Bundle]:
    """Every bundle of one selection, in (n, multiplier, strategy) order, of ``strategies``
    (resolved, exportable ones)."""
    s = session.settings
    sae = session.sae()
    model = session.model(n_layers=sae.hook_layer + 1)
    base_model = {"spec": model.spec, "fingerprint": model.fingerprint, "hf": hf_reference(model)}
    binding = model_binding(model, sae.hook_name)
    selection_inputs = read_json(selection.path).get("inputs", {})
    bundles = []
    for n in sorted(selection.thresholds):
        gates = [gate_parameters(session, selection, n, strategy) for strategy in strategies]
        for multiplier in s.multipliers:
            for strategy, gate in zip(strategies, gates, strict=True):
                bundles.append(
                    from_sae(
                        sae,
                        selection.top(n),
                        threshold=gate.threshold,
                        params=gate.params,
                        multiplier=multiplier,
                        strategy=strategy.name,
                        base_model=base_model,
                        provenance={
                            "case": s.case,
                            "ratio_percentile": selection.ratio_percentile,
                            "n_features": n,
                            "calibration_percentile": s.calibration_percentile,
                            "strategy_settings": gate.settings,
                            "selection": selection_inputs,
                        },
                        strategies=session.registry.entries["strategies"],
                        binding=binding,
                    )
                )
    return bundles


def export(session: Session) -> list[Exported]:
    """Select if needed, then write every bundle of the run's strategies under
    ``{run dir}/bundles/``."""
    from dsg.stages import select

    for name in session.strategies:  # refuse before any stage runs
        bundle_strategy(name, session.strategies)
    root = session.run_dir.root / BUNDLES_DIR
    session.run_dir.ensure_writable()
    check_kind(root, folder=True)
    exported = []
    for selection in select.ensure(session):
        for bundle in bundles_for(session, selection, list(session.strategies.values())):
            n = bundle.k
            path = save_bundle(bundle, root / bundle_name(session.settings.case, selection, bundle))
            exported.append(
                Exported(
                    path,
                    selection.ratio_percentile,
                    n,
                    bundle.multiplier,
                    bundle.strategy,
                    bundle.threshold,
                )
            )
    return exported
