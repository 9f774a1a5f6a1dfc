"""``report.json`` and the terminal table: every number of a run and everything that made it.

The schema is documented in ``docs/report-schema.md``; bump ``REPORT_VERSION`` when it changes.
Each run writes its report and plot into its own folder, ``reports/<key>/``, keyed by its
settings and inputs, so two runs with different settings on one run directory never overwrite
each other's; ``report.json`` and ``tradeoff.png`` at the top are copies of the last to finish.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.api.interfaces import DescribedParams
from dsg.core.artifacts import check_kind, keyed_folder, publish
from dsg.stages.evaluate.heldout import PARTS
from dsg.stages.evaluate.plot import PLOT_FILE, tradeoff
from dsg.stages.evaluate.score import Count, point, pooled, unlearning_score

if TYPE_CHECKING:
    from rich.console import Console

    from dsg.config.settings import Settings
    from dsg.engine.session import Session
    from dsg.stages.evaluate.results import ConfigResult

REPORT_FILE = "report.json"
REPORTS_DIR = "reports"
REPORT_VERSION = 3
LIBRARIES = ("dsg", "torch", "transformer-lens", "sae-lens", "transformers", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers (None if absent)."""
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _accuracies(counts: Mapping[str, Count]) -> dict[str, float | None]:
    return {name: c.accuracy for name, c in counts.items()}


def config_entry(
    result: ConfigResult, baseline: Mapping[str, Count], set_names: list[str]
) -> dict[str, Any]:
    """One configuration as the report shows it."""
    p = point(result.counts, baseline, set_names)
    return {
        **result.config.describe(),
        "target_accuracy": p.target.accuracy,
        "side_effect_accuracy": p.side_effects.accuracy,
        "passes_gate": p.passes_gate,
        "per_set": _accuracies(result.counts),
        "fired": {
            name: (result.fired[name] / c.total if c.total else None)
            for name, c in result.counts.items()
        },
        "counts": {
            name: {"correct": c.correct, "total": c.total} for name, c in result.counts.items()
        },
        **({"per_set_acc_norm": _accuracies(result.norm_counts)} if result.norm_counts else {}),
    }


def build(
    *,
    session: Session,
    set_names: list[str],
    question_totals: dict[str, int],
    subjects: dict[str, str],
    baseline: dict[str, Count],
    results: list[ConfigResult],
    heldout: dict[str, Any],
    inputs: dict[str, Any],
    warnings: list[str],
    lm_eval: tuple[dict[str, Any], list[dict[str, float | None] | None]] | None = None,
    baseline_norm: dict[str, Count] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (timings are added by the caller). ``lm_eval``: the
    lm-eval section and each configuration's full-benchmark accuracies, when run; ``heldout``:
    the held-out section (:func:`dsg.stages.evaluate.heldout.section`); ``baseline_norm``: the
    unguarded model's right answers by ``acc_norm`` (log-likelihood scoring only, which also
    gives each configuration its ``per_set_acc_norm``)."""
    s = session.settings
    points = [point(r.counts, baseline, set_names) for r in results]
    side_baseline = pooled(baseline[name] for name in set_names[1:])
    configs = [config_entry(r, baseline, set_names) for r in results]
    extra: dict[str, Any] = {}
    if baseline_norm is not None:
        extra["baseline_acc_norm"] = _accuracies(baseline_norm)
    if lm_eval is not None:
        extra["lm_eval"], per_config = lm_eval
        for entry, accuracy in zip(configs, per_config, strict=True):
            entry["lm_eval"] = accuracy
    return {
        "report_version": REPORT_VERSION,
        "unlearning_score": unlearning_score(points),
        "heldout_score": heldout["score"],
        "heldout": {k: v for k, v in heldout.items() if k != "score"},
        "target": set_names[0],
        "side_effects": set_names[1:],
        "question_subset": s.questions,
        "sets": {
            name: {
                "role": "target" if i == 0 else "side_effect",
                "subject": subjects[name],
                "questions": question_totals[name],
                "evaluated": baseline[name].total,
            }
            for i, name in enumerate(set_names)
        },
        "baseline": _accuracies(baseline),
        "baseline_side_effect_accuracy": side_baseline.accuracy,
        "configs": configs,
        "settings": plain_settings(s),
        "inputs": inputs,
        "environment": environment(s),
        "warnings": warnings,
        **extra,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def plain_settings(settings: Settings) -> dict[str, Any]:
    """Every setting of a run as JSON values (paths as strings, tuples as lists)."""
    from dsg.config.settings import values_of

    return {name: _plain(value) for name, value in values_of(settings).items()}


def environment(settings: Settings) -> dict[str, Any]:
    """Where a run ran: library versions, Python, platform, device, dtype and seed."""
    return {
        "versions": versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": settings.device,
        "dtype": settings.dtype,
        "seed": settings.seed,
    }


def run_folder(root: Path, report: dict[str, Any]) -> Path:
    """``{root}/reports/{key}``: one evaluate run's report and plot."""
    from dsg.config.settings import NOT_KEYED

    return keyed_folder(root / REPORTS_DIR, "report", REPORT_VERSION, report, NOT_KEYED)


def check_slots(root: Path) -> None:
    """Before any work: nothing of the wrong kind where the report and plot will go."""
    check_kind(root / REPORTS_DIR, folder=True)
    for name in (REPORT_FILE, PLOT_FILE):
        check_kind(root / name, folder=False)


def write(report: dict[str, Any], root: Path) -> Path:
    """Write the run's own ``reports/<key>/`` (its plot, then ``report.json``, which marks it
    complete), then copy both to ``report.json`` and ``tradeoff.png`` at the top; return the
    path of the run's own report."""
    return publish(report, run_folder(root, report), root, (REPORT_FILE, PLOT_FILE), tradeoff)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _lm_eval_cells(accuracy: dict[str, float | None] | None, tasks: list[str]) -> list[str]:
    return [_pct(None if accuracy is None else accuracy.get(task)) for task in tasks]


def print_table(report: dict[str, Any], console: Console, strategies: Mapping[str, Any]) -> None:
    """The sweep as a table on stderr, then the score and any warnings; a calibrated gate's
    parameters read as its strategy (of ``strategies``, by name) describes them."""
    from rich.table import Table

    target = report["target"]
    table = Table(title=f"dsg evaluate: {target} (questions: {report['question_subset']})")
    tasks = report["lm_eval"]["tasks"] if "lm_eval" in report else []
    for column in ("strategy", "p_ratio", "n", "m", "alpha", "target %", "side %", "fired %"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("gate", no_wrap=True)
    for task in tasks:
        table.add_column(f"{task} %", justify="right", no_wrap=True)
    table.add_row(
        "baseline",
        "",
        "",
        "",
        "",
        _pct(report["baseline"][target]),
        _pct(report["baseline_side_effect_accuracy"]),
        "",
        "",
        *_lm_eval_cells(report["lm_eval"]["baseline"] if tasks else None, tasks),
    )
    for c in report["configs"]:
        threshold = "-" if c["threshold"] is None else f"{c['threshold']:.4g}"
        strategy = strategies.get(c["strategy"])
        if c.get("params") and isinstance(strategy, DescribedParams):
            threshold += strategy.describe_params(c["params"])
        table.add_row(
            c["strategy"],
            f"{c['ratio_percentile']:g}",
            str(c["n_features"]),
            f"{c['multiplier']:g}",
            threshold,
            _pct(c["target_accuracy"]),
            _pct(c["side_effect_accuracy"]),
            _pct(c["fired"][target]),
            "pass" if c["passes_gate"] else "fail",
            *_lm_eval_cells(c.get("lm_eval"), tasks),
        )
    console.print(table)
    console.print("side %: pooled over the side-effect sets; fired %: target prompts guarded")
    if tasks:
        console.print("task %: lm-eval accuracy on the whole task, in the task's own prompt format")
    for line in score_lines(report):
        console.print(line)
    from rich.markup import escape

    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}")


def score_lines(report: dict[str, Any]) -> list[str]:
    """The two scores, each saying how its configuration was chosen."""
    h = report["heldout"]
    total = sum(s["evaluated"] for s in report["sets"].values())
    selection, held = (sum(q[part] for q in h["questions"].values()) for part in PARTS)
    target = report["target"]
    paper = report["unlearning_score"]
    if paper is None:
        subset = report["question_subset"]
        paper_line = (
            f"unlearning score: none (the target set {target!r} has no question in subset "
            f"{subset!r}, so there is nothing to measure unlearning on)"
        )
    else:
        paper_line = (
            f"unlearning score: {paper:.4f} "
            f"(paper: chosen and measured on the same {total} questions)"
        )
    lines = [paper_line]
    if report["heldout_score"] is None:
        lines.append(f"held-out score:   none ({h['no_score']})")
        return lines
    lines.append(
        f"held-out score:   {report['heldout_score']:.4f} "
        f"(chosen on {selection} questions, measured on {held} others)"
    )
    if h["chosen"] is None:
        lines.append("  held-out choice: none passes the side-effect gate on its questions")
    else:
        c = report["configs"][h["chosen"]]
        fails = "" if h["report"]["passes_gate"] else "; fails the gate on the others"
        lines.append(
            f"  held-out choice: {c['strategy']} p_ratio {c['ratio_percentile']:g} "
            f"n {c['n_features']} m {c['multiplier']:g}{fails}"
        )
    return lines
