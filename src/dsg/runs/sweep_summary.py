"""The picture across a sweep's SAEs: ``summary.json``, a table, and (after evaluate)
``summary.png``, the unlearning score by layer and by L0 and width.

The schema is documented in ``docs/scale-out.md``; bump ``SUMMARY_VERSION`` when it changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.core.artifacts import atomic_write, read_json, write_json

if TYPE_CHECKING:
    from rich.console import Console

    from dsg.runs.jobs import JobResult

SUMMARY_FILE = "summary.json"
SUMMARY_PLOT = "summary.png"
SUMMARY_VERSION = 2


def entry(stage: str, result: JobResult) -> dict[str, Any]:
    """One SAE of the sweep; ``unlearning_score`` (the paper's, chosen and reported on the same
    questions) and ``heldout_score`` (chosen on one part, reported on the other) are read from
    its report after evaluate."""
    facts = result.facts
    report: dict[str, Any] = {}
    if result.ok and stage == "evaluate":
        report = read_json(result.paths[0])
    return {
        "sae": result.name,
        "folder": str(result.out),
        "status": "done" if result.ok else "failed",
        "error": result.error or None,
        "hook": facts.get("hook"),
        "layer": facts.get("layer"),
        "d_sae": facts.get("d_sae"),
        "l0": facts.get("l0"),
        "unlearning_score": report.get("unlearning_score"),
        "heldout_score": report.get("heldout_score"),
        "outputs": [str(p) for p in result.paths],
    }


def build(stage: str, results: list[JobResult]) -> dict[str, Any]:
    entries = [entry(stage, r) for r in results]
    return {
        "summary_version": SUMMARY_VERSION,
        "stage": stage,
        "jobs": len(entries),
        "done": sum(e["status"] == "done" for e in entries),
        "failed": sum(e["status"] == "failed" for e in entries),
        "saes": entries,
    }


def write(summary: dict[str, Any], out: Path) -> Path:
    path = out / SUMMARY_FILE
    write_json(path, summary)
    return path


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def print_table(summary: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"dsg {summary['stage']}: {summary['jobs']} SAEs")
    table.add_column("SAE", overflow="fold")
    for column in ("layer", "width", "L0", "score", "held-out score"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("status", overflow="fold")
    for e in summary["saes"]:
        table.add_row(
            e["sae"],
            _cell(e["layer"]),
            _cell(e["d_sae"]),
            _cell(e["l0"], "{:g}"),
            _cell(e["unlearning_score"], "{:.4f}"),
            _cell(e["heldout_score"], "{:.4f}"),
            e["status"] if e["status"] == "done" else f"failed: {e['error']}",
        )
    console.print(table)


def plot(summary: dict[str, Any], path: Path) -> Path | None:
    """Score by layer, and by L0 (or by width when no SAE has a known L0), one colour per
    width; None when no SAE has a score."""
    scored = [e for e in summary["saes"] if e["unlearning_score"] is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({e["d_sae"] for e in scored if e["d_sae"] is not None})
    colours = {
        w: plt.get_cmap("viridis")(i / max(1, len(widths) - 1)) for i, w in enumerate(widths)
    }
    fig, (by_layer, by_l0) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    with_l0 = [e for e in scored if e["l0"] is not None]
    second_key, second_label = ("l0", "L0 (mean active features per token)")
    if not with_l0:
        second_key, second_label = ("d_sae", "width (d_sae)")
    for width in widths:
        rows = [e for e in scored if e["d_sae"] == width]
        for ax, key in ((by_layer, "layer"), (by_l0, second_key)):
            points = [(e[key], e["unlearning_score"]) for e in rows if e[key] is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, color=colours[width], label=f"width {width}", alpha=0.85)
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    by_layer.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_layer.set_ylim(-0.02, 1.02)
    by_layer.set_xlabel("layer (from the hook name)")
    by_layer.set_ylabel("unlearning score")
    by_l0.set_xlabel(second_label)
    if second_key == "l0":
        by_l0.set_xscale("log")
        by_l0.xaxis.set_major_formatter(ScalarFormatter())
        by_l0.xaxis.set_minor_formatter(ScalarFormatter())
        missing = len(scored) - len(with_l0)
        if missing:
            by_l0.set_title(f"{missing} SAE(s) without a known L0 left out", fontsize=9)
    else:
        by_l0.set_title("no SAE has a known L0: score by width instead", fontsize=9)
    by_layer.legend(loc="best", fontsize=8)
    fig.suptitle(f"unlearning score across {len(scored)} SAEs")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
    return path


def summarise(stage: str, results: list[JobResult], out: Path, console: Console) -> Path:
    """Write ``summary.json`` (and ``summary.png`` after evaluate) and print the table."""
    summary = build(stage, results)
    path = write(summary, out)
    plot(summary, out / SUMMARY_PLOT)
    print_table(summary, console)
    return path
