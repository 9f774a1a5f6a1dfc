"""Sweeps on Ray: a local Ray instance (2 CPUs, started once for the module) runs tiny SAEs as
it would a release on a GPU cluster. Results must equal the local executor's report for report,
the shared model-level work must run once, a failed job must not stop the others, and a worker
killed mid-job must leave nothing a rerun trusts."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import sweep_world
from commands import one_error
from paths import TESTS
from sweep_world import ARMED, BROKEN, GOOD, KILLER, registry_for, shared_commits
from typer.testing import CliRunner

import dsg.engine.session
from dsg.cli.app import app
from dsg.core.artifacts import RunDir
from dsg.runs.executors import run_jobs
from dsg.runs.jobs import JOB_FILE, JobResult
from dsg.runs.sae_sweep import folder_name, plan
from dsg.runs.sweep_summary import SUMMARY_FILE, SUMMARY_PLOT, summarise

LAYER_SAES = [*GOOD, KILLER]  # matched by the id pattern layer_.*
# What legitimately differs between two runs of the same sweep.
RUN_SPECIFIC = ("timings",)
RUN_SETTINGS = ("out", "executor", "ray_address")


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sweep-world")


@pytest.fixture(scope="module")
def ray_instance() -> Any:
    """One local Ray for the module; its workers import this folder's test modules."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), saved) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def comparable(report_path: Path) -> dict[str, Any]:
    report = json.loads(report_path.read_text())
    for key in RUN_SPECIFIC:
        report.pop(key)
    for key in RUN_SETTINGS:
        report["settings"].pop(key)
    return report


def cli_options(out: Path, questions: str, id_pattern: str, force: bool) -> dict[str, Any]:
    return {
        "force": force,
        "case": "tiny",
        "out": out,
        "questions": questions,
        "sae_release_pattern": "sweep",
        "sae_id_pattern": id_pattern,
        "executor": "ray",
    }


def ray_sweep(
    world_dir: Path,
    out: Path,
    *,
    questions: str,
    id_pattern: str,
    retries: int,
    force: bool = False,
) -> list[JobResult]:
    """What ``dsg evaluate --executor ray`` runs, with the workers given the tiny plugins."""
    factory = functools.partial(sweep_world.worker_registry, str(world_dir))
    with pytest.MonkeyPatch.context() as mp:  # the driver keeps its own RunDir.commit
        mp.setattr(RunDir, "commit", RunDir.commit)
        swept = plan("evaluate", cli_options(out, questions, id_pattern, force), registry=factory)
    results = run_jobs(swept, ray_retries=retries)
    summarise("evaluate", results, out, swept.session.console)
    return results


@pytest.fixture(scope="module")
def local_reports(
    world_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """The local executor's reports, run through the CLI, with the killer disarmed."""
    out = tmp_path_factory.mktemp("local") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dsg.engine.session, "registry", lambda: registry_for(str(world_dir)))
        mp.setattr(RunDir, "commit", sweep_world.counting(RunDir.commit))
        result = CliRunner().invoke(
            app,
            ["evaluate", "--case", "tiny", "--out", str(out), "--questions", "all",
             "--sae-release-pattern", "sweep", "--sae-id-pattern", "layer_.*"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == LAYER_SAES
    summary = json.loads((out / SUMMARY_FILE).read_text())
    printed = [pytest.approx(float(r[1]), abs=5e-5) for r in rows]  # printed with 4 decimals
    assert [e["unlearning_score"] for e in summary["saes"]] == printed
    # the local executor also computes the shared work once: one baseline per eval set
    assert sorted(shared_commits(out)) == ["baseline", "baseline"]
    return {spec: comparable(Path(path)) for spec, _, path in rows}


def test_ray_shares_model_work_and_reports_a_failed_job(
    ray_instance: Any, world_dir: Path, tmp_path: Path, local_reports: dict[str, Any]
) -> None:
    (world_dir / ARMED).touch()  # the killer dies once; Ray's retry then finishes it
    out = tmp_path / "runs"
    # --force: the shared work is still done once (by the task before the jobs)
    results = ray_sweep(world_dir, out, questions="correct", id_pattern=".*", retries=1, force=True)
    by_name = {r.name: r for r in results}
    assert [r.name for r in results] == [*LAYER_SAES, BROKEN]
    assert not (world_dir / ARMED).exists()
    broken = by_name.pop(BROKEN)
    assert not broken.ok and broken.error == "RuntimeError: the SAE weights are corrupt"
    assert all(r.ok for r in by_name.values()), results
    # question subsets and baselines: computed once for all SAEs (one per eval set), in shared/
    assert sorted(shared_commits(out)) == ["baseline"] * 2 + ["subsets"] * 2
    assert sorted(p.name for p in (out / "shared").iterdir()) == ["baseline", "subsets"]
    for name in by_name:
        assert not {"baseline", "subsets"} & {p.name for p in (out / folder_name(name)).iterdir()}
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert (summary["jobs"], summary["done"], summary["failed"]) == (5, 4, 1)
    entries = {e["sae"]: e for e in summary["saes"]}
    assert entries[BROKEN]["status"] == "failed" and entries[BROKEN]["error"] == broken.error
    for name, (layer, d_sae, _) in GOOD.items():
        assert (entries[name]["layer"], entries[name]["d_sae"]) == (layer, d_sae)
        assert entries[name]["l0"] == float(name.rsplit("_", 1)[1])  # from average_l0_N
        report = json.loads(by_name[name].paths[0].read_text())
        assert entries[name]["unlearning_score"] == report["unlearning_score"]
        # the tiny world's model answers no target question right, so the `correct` subset
        # leaves nothing to score: no number, and no plot of numbers that do not exist
        assert report["unlearning_score"] is None
    assert entries[KILLER]["l0"] is None
    assert not (out / SUMMARY_PLOT).exists()


def test_a_worker_killed_mid_job_is_finished_by_a_rerun(
    ray_instance: Any, world_dir: Path, tmp_path: Path, local_reports: dict[str, Any]
) -> None:
    out = tmp_path / "runs"
    (world_dir / ARMED).touch()
    first = ray_sweep(world_dir, out, questions="all", id_pattern="layer_.*", retries=0)
    for result in first:  # the Ray executor's results equal the local one's, report for report
        if result.ok:
            assert comparable(result.paths[0]) == local_reports[result.name]
    killed = next(r for r in first if r.name == KILLER)
    assert not killed.ok and "WorkerCrashedError: The worker died" in killed.error
    assert not (out / folder_name(KILLER) / JOB_FILE).exists()
    assert all(r.ok for r in first if r.name != KILLER)

    second = ray_sweep(world_dir, out, questions="all", id_pattern="layer_.*", retries=0)
    assert [r.ok for r in second] == [True] * len(LAYER_SAES)
    assert [r.skipped for r in second] == [name != KILLER for name in LAYER_SAES]
    for result in second:
        assert comparable(result.paths[0]) == local_reports[result.name]
    # the rerun recomputed no shared work: the first run's is reused
    assert sorted(shared_commits(out)) == ["baseline", "baseline"]


def test_ray_missing_is_one_error(
    world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setattr(dsg.engine.session, "registry", lambda: registry_for(str(world_dir)))
    result = CliRunner().invoke(
        app,
        ["evaluate", "--case", "tiny", "--out", str(tmp_path), "--executor", "ray",
         "--sae-release-pattern", "sweep"],
    )  # fmt: skip
    one_error(result, "--executor ray", "pip install 'dsg[ray]'")
    assert not any(tmp_path.iterdir())


def test_local_failed_job_does_not_stop_the_others(
    world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dsg.engine.session, "registry", lambda: registry_for(str(world_dir)))
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        ["select", "--case", "tiny", "--out", str(out), "--sae-release-pattern", "sweep",
         "--sae-id-pattern", "broken|layer_0/width_64/.*"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    good = "sweep/layer_0/width_64/average_l0_5"
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [good]
    assert f"failed: {BROKEN}: RuntimeError: the SAE weights are corrupt" in result.stderr
    assert "second line" not in result.output
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert [(e["sae"], e["status"]) for e in summary["saes"]] == [
        (good, "done"),
        (BROKEN, "failed"),
    ]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--executor", "slurm"], ["unknown executor 'slurm'", "local, ray"]),
        (["--executor", "ray", "--device", "cuda:1"], ["--device cuda", "its own GPU"]),
    ],
)
def test_executor_user_errors(
    world_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    fragments: list[str],
) -> None:
    monkeypatch.setattr(dsg.engine.session, "registry", lambda: registry_for(str(world_dir)))
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        ["select", "--case", "tiny", "--out", str(out), "--sae-release-pattern", "sweep", *args],
    )
    one_error(result, *fragments)
    assert not out.exists()
