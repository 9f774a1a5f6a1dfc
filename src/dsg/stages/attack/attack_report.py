"""``attack.json``, its table and its plot: each condition of an attack, the unguarded model and
every configuration side by side.

The schema is documented in ``docs/report-schema.md``; bump ``ATTACK_VERSION`` when it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.core.artifacts import keyed_folder, publish
from dsg.stages.evaluate.report import environment, plain_settings
from dsg.stages.evaluate.score import Count, pooled

if TYPE_CHECKING:
    from rich.console import Console

    from dsg.api.interfaces import Attack, AttackRow, AttackTarget, SetScores
    from dsg.engine.session import Session

ATTACK_FILE = "attack.json"
PLOT_FILE = "attack.png"
ATTACK_VERSION = 1


def _accuracy(correct: int, total: int) -> float | None:
    return Count(correct, total).accuracy


def _side(counts: dict[str, Count], side_sets: Sequence[str]) -> float | None:
    return pooled(counts[name] for name in side_sets).accuracy


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def row_entry(row: AttackRow, set_names: list[str], n_configs: int) -> dict[str, Any]:
    """One condition: the unguarded model's accuracies, then each configuration's accuracies,
    firing rates and effect (unguarded minus guarded accuracy), per set."""
    scores: dict[str, SetScores] = row.scores
    names = [n for n in set_names if n in scores]
    target, sides = set_names[0], [n for n in names if n != set_names[0]]
    unguarded = {n: Count(scores[n].unguarded_correct, scores[n].total) for n in names}
    configs = []
    for i in range(n_configs):
        guarded = {n: Count(scores[n].correct(i), scores[n].total) for n in names}
        per_set = {n: c.accuracy for n, c in guarded.items()}
        configs.append(
            {
                "target_accuracy": per_set.get(target),
                "side_effect_accuracy": _side(guarded, sides),
                "per_set": per_set,
                "fired": {n: _accuracy(scores[n].fired_count(i), scores[n].total) for n in names},
                "effect": {n: _difference(unguarded[n].accuracy, per_set[n]) for n in names},
                "counts": {n: {"correct": c.correct, "total": c.total} for n, c in guarded.items()},
            }
        )
    return {
        "condition": row.condition,
        "details": row.details,
        "unguarded": {
            "target_accuracy": unguarded[target].accuracy if target in unguarded else None,
            "side_effect_accuracy": _side(unguarded, sides),
            "per_set": {n: c.accuracy for n, c in unguarded.items()},
            "counts": {n: {"correct": c.correct, "total": c.total} for n, c in unguarded.items()},
        },
        "configs": configs,
    }


def build(
    session: Session,
    attack: Attack,
    target: AttackTarget,
    rows: list[AttackRow],
    inputs: dict[str, Any],
    warnings: list[str],
) -> dict[str, Any]:
    """The attack's report as a JSON-ready dict (timings are added by the caller)."""
    s = session.settings
    set_names = [e.name for e in target.eval_sets]
    return {
        "attack_version": ATTACK_VERSION,
        "attack": attack.name,
        "description": attack.description,
        "axis": attack.axis,
        "target": set_names[0],
        "side_effects": set_names[1:],
        "question_subset": s.questions,
        "sets": {
            e.name: {"role": "target" if i == 0 else "side_effect", "evaluated": len(e.questions)}
            for i, e in enumerate(target.eval_sets)
        },
        "configs": target.configs,
        "rows": [row_entry(r, set_names, len(target.configs)) for r in rows],
        "settings": plain_settings(s),
        "inputs": inputs,
        "environment": environment(s),
        "warnings": warnings,
    }


def write(data: dict[str, Any], folder: Path) -> Path:
    """Write the run's own ``{folder}/{key}/`` (keyed by the attack, its settings and inputs, so
    runs with other settings keep theirs), copy it to the top of ``folder`` as the latest, and
    return the run's own ``attack.json``."""
    from dsg.config.settings import NOT_KEYED

    own = keyed_folder(folder, "attack", ATTACK_VERSION, data, NOT_KEYED, attack=data["attack"])
    return publish(data, own, folder, (ATTACK_FILE, PLOT_FILE), plot)


def config_labels(configs: list[dict[str, Any]]) -> list[str]:
    """Each configuration's name in the table and the plot: its strategy, with the ratio
    percentile, n and multiplier when one strategy appears more than once."""
    strategies = [c["strategy"] for c in configs]
    return [
        c["strategy"]
        if strategies.count(c["strategy"]) == 1
        else f"{c['strategy']} p{c['ratio_percentile']:g} n{c['n_features']} m{c['multiplier']:g}"
        for c in configs
    ]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _condition_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _side_fired(config: dict[str, Any], side_sets: Sequence[str]) -> float | None:
    """The share of side-effect prompts the configuration fired on, pooled over the sets (the
    report keeps each set's share and size; a set with no question has no share)."""
    sets = [n for n in side_sets if config["fired"].get(n) is not None]
    totals = {n: config["counts"][n]["total"] for n in sets}
    return _accuracy(sum(round(config["fired"][n] * totals[n]) for n in sets), sum(totals.values()))


def print_table(data: dict[str, Any], console: Console) -> None:
    """Per condition, a row for the unguarded model and one per configuration: target accuracy,
    fired %, effect (unguarded minus guarded target accuracy), pooled side-effect accuracy and
    pooled side-effect fired % (false positives)."""
    from rich.markup import escape
    from rich.table import Table

    target = data["target"]
    keys = list(dict.fromkeys(k for r in data["rows"] for k in r["condition"]))
    title = f"dsg attack {data['attack']}: {target} (questions: {data['question_subset']})"
    table = Table(title=title)
    for key in keys:
        table.add_column(key, justify="right", no_wrap=True)
    table.add_column("guardrail", no_wrap=True)
    for column in ("target %", "fired %", "effect", "side %", "side fired %"):
        table.add_column(column, justify="right", no_wrap=True)
    labels = config_labels(data["configs"])
    for row in data["rows"]:
        condition = [_condition_text(row["condition"].get(k, "")) for k in keys]
        unguarded = row["unguarded"]
        table.add_row(
            *condition,
            "unguarded",
            _pct(unguarded["target_accuracy"]),
            "",
            "",
            _pct(unguarded["side_effect_accuracy"]),
            "",
        )
        for label, c in zip(labels, row["configs"], strict=True):
            table.add_row(
                *[""] * len(keys),
                escape(label),
                _pct(c["target_accuracy"]),
                _pct(c["fired"].get(target)),
                _pct(c["effect"].get(target)),
                _pct(c["side_effect_accuracy"]),
                _pct(_side_fired(c, data["side_effects"])),
                end_section=label == labels[-1],
            )
    console.print(table)
    console.print(
        "fired %: target prompts guarded; effect: unguarded minus guarded target accuracy "
        "(points); side % and side fired %: pooled over the side-effect sets"
    )
    for warning in data["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}")


def _panels(data: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The rows grouped by their condition's keys other than the axis, in first-seen order."""
    axis = data["axis"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in data["rows"]:
        rest = {k: v for k, v in row["condition"].items() if k != axis}
        title = ", ".join(f"{k} {_condition_text(v)}" for k, v in rest.items())
        groups.setdefault(title, []).append(row)
    return list(groups.items())


def plot(data: dict[str, Any], path: Path) -> Path:
    """Target accuracy, side-effect accuracy and target fired % against the attack's axis, one
    line per configuration and one for the unguarded model, a column of panels per group of
    conditions (e.g. per placement)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsg.core.artifacts import atomic_write
    from dsg.stages.evaluate.plot import MARKERS

    axis, target = data["axis"], data["target"]
    panels = _panels(data)
    values = list(dict.fromkeys(r["condition"].get(axis) for r in data["rows"]))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    measures = (
        ("target accuracy", lambda e: e["target_accuracy"]),
        ("side-effect accuracy", lambda e: e["side_effect_accuracy"]),
        ("target fired (fraction)", lambda e: e.get("fired", {}).get(target)),
    )
    fig, axes = plt.subplots(
        len(measures), max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 8.4),
        squeeze=False, sharex=True,
    )  # fmt: skip
    labels = config_labels(data["configs"])
    for col, (title, rows) in enumerate(panels):
        xs = [r["condition"].get(axis) for r in rows]
        x = xs if numeric else [values.index(v) for v in xs]
        for line, (name, pick) in enumerate(measures):
            ax = axes[line][col]
            if line < 2:
                ys = [pick(r["unguarded"]) for r in rows]
                ax.plot(x, _nan(ys), "k--", marker="*", label="unguarded")
            for i, label in enumerate(labels):
                ys = [pick(r["configs"][i]) for r in rows]
                ax.plot(x, _nan(ys), marker=MARKERS[i % len(MARKERS)], label=label, alpha=0.85)
            ax.set_ylim(-0.02, 1.02)
            if col == 0:
                ax.set_ylabel(name)
            if line == 0 and title:
                ax.set_title(title)
            if line == len(measures) - 1:
                ax.set_xlabel(axis)
                if not numeric:
                    ax.set_xticks(range(len(values)), [str(v) for v in values], rotation=30)
    axes[0][0].legend(loc="best", fontsize="small")
    fig.suptitle(f"dsg attack {data['attack']} ({target})")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


def _nan(values: list[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]
