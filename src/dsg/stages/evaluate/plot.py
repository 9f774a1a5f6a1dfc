"""``tradeoff.png``: target accuracy against pooled side-effect accuracy, one point per
configuration, so the configurations that pass the side-effect gate (0.99 of the baseline's
side-effect accuracy) stand out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsg.stages.evaluate.score import SIDE_EFFECT_GATE

PLOT_FILE = "tradeoff.png"
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def tradeoff(report: dict[str, Any], path: Path) -> Path:
    """Draw the report's configurations (and the baseline) and save the figure at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsg.core.artifacts import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    strategies = sorted({c["strategy"] for c in report["configs"]})
    for i, strategy in enumerate(strategies):
        points = [
            (c["side_effect_accuracy"], c["target_accuracy"])
            for c in report["configs"]
            if c["strategy"] == strategy
            and c["side_effect_accuracy"] is not None
            and c["target_accuracy"] is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, marker=MARKERS[i % len(MARKERS)], label=strategy, alpha=0.8)
    side, target = report["baseline_side_effect_accuracy"], report["baseline"][report["target"]]
    if side is not None and target is not None:
        ax.scatter([side], [target], marker="*", s=160, color="black", label="baseline")
    if side is not None:
        gate = float(SIDE_EFFECT_GATE) * side
        ax.axvline(gate, color="grey", linestyle="--", label="side-effect gate: 0.99 x baseline")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("side-effect accuracy (pooled over " + ", ".join(report["side_effects"]) + ")")
    ax.set_ylabel(f"target accuracy ({report['target']})")
    scores = (
        "none" if v is None else f"{v:.3f}"
        for v in (report["unlearning_score"], report["heldout_score"])
    )
    ax.set_title("unlearning score {} (held-out {})".format(*scores))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
    return path
