"""The summary across a sweep's SAEs, and where the L0 it plots comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from dsg.core.artifacts import write_json
from dsg.runs.jobs import JobResult, one_line
from dsg.runs.sweep_summary import SUMMARY_FILE, SUMMARY_PLOT, summarise


def done(
    tmp_path: Path, name: str, score: float, facts: dict[str, object], heldout: float = 0.125
) -> JobResult:
    report = tmp_path / name / "report.json"
    write_json(report, {"unlearning_score": score, "heldout_score": heldout})
    return JobResult(name, report.parent, True, [report], facts=facts)


def test_summary_counts_scores_and_failures(tmp_path: Path) -> None:
    results = [
        done(tmp_path, "a", 0.25, {"hook": "blocks.3.x", "layer": 3, "d_sae": 16, "l0": None}),
        JobResult("b", tmp_path / "b", False, error="RuntimeError: out of memory"),
        done(tmp_path, "c", 0.5, {"hook": "blocks.7.x", "layer": 7, "d_sae": 32, "l0": None}),
    ]
    console = Console(record=True, width=200)
    path = summarise("evaluate", results, tmp_path, console)
    summary = json.loads(path.read_text())
    assert path == tmp_path / SUMMARY_FILE
    assert (summary["jobs"], summary["done"], summary["failed"]) == (3, 2, 1)
    assert [e["unlearning_score"] for e in summary["saes"]] == [0.25, None, 0.5]
    assert summary["saes"][1]["error"] == "RuntimeError: out of memory"
    assert summary["saes"][2]["layer"] == 7 and summary["saes"][2]["d_sae"] == 32
    # no SAE has an L0: the plot falls back to width, and the table still shows every SAE
    assert (tmp_path / SUMMARY_PLOT).stat().st_size > 0
    text = console.export_text()
    assert "0.2500" in text and "failed: RuntimeError: out of memory" in text


def test_no_plot_without_scores(tmp_path: Path) -> None:
    results = [JobResult("a", tmp_path / "a", True, [tmp_path / "a" / "sel.json"])]
    summary = json.loads(summarise("select", results, tmp_path, Console(quiet=True)).read_text())
    assert summary["saes"][0]["unlearning_score"] is None
    assert not (tmp_path / SUMMARY_PLOT).exists()


def test_one_line_errors() -> None:
    from dsg.core.errors import UserError

    assert one_line(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert one_line(UserError("pass --sae")) == "pass --sae"
    assert one_line(KeyError()) == "KeyError"


@pytest.mark.parametrize(
    ("sae_id", "l0"),
    [("layer_3/width_16k/average_l0_14", 14.0), ("embedding/width_4k/average_l0_6", None)],
)
def test_pretrained_l0_from_the_directory(sae_id: str, l0: float | None) -> None:
    from dsg_sae_lens.pretrained import expected_l0

    # the directory lists 0 for the embedding SAEs: not measured, so unknown
    assert expected_l0("gemma-scope-2b-pt-res", sae_id) == l0


def test_summary_carries_both_scores_of_each_report(tmp_path: Path) -> None:
    """The held-out score is read from the same report as the paper's, never mixed up with it."""
    facts: dict[str, object] = {"hook": "blocks.1.x", "layer": 1, "d_sae": 8, "l0": None}
    results = [
        done(tmp_path, "a", 0.75, facts, heldout=0.5),
        done(tmp_path, "b", 0.25, facts, heldout=0.0),
        JobResult("c", tmp_path / "c", False, error="ValueError: bad"),
    ]
    console = Console(record=True, width=200)
    summary = json.loads(summarise("evaluate", results, tmp_path, console).read_text())
    assert [(e["unlearning_score"], e["heldout_score"]) for e in summary["saes"]] == [
        (0.75, 0.5),
        (0.25, 0.0),
        (None, None),
    ]
    text = console.export_text()
    assert "held-out score" in text and "0.5000" in text
