"""Several SAEs in one run: ``--sae-release-pattern`` / ``--sae-id-pattern`` on the stage commands,
expanded by the SAE loaders that offer ``expand``, each SAE with its own results folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from commands import one_error, run
from tiny import TinyPlugin, TinyWorld
from typer.testing import Result

import dsg.engine.session
from dsg.api.hookspecs import hookimpl
from dsg.api.interfaces import ExpandingSAELoader, LoadedSAE
from dsg.api.plugins import build_registry
from dsg.runs.sae_sweep import folder_name

FAKE_SAES = {"fake-release": ["tiny-l0-a", "tiny-l0-b", "tiny-l1-a"], "other": ["tiny-l0-c"]}


class FakeSAELoader:
    """Serves the tiny world's SAE under a few fake ``release/id`` specs, and lists them."""

    name = "fake-sae"
    description = "fake pretrained SAEs for tests"

    def __init__(self, world: TinyWorld) -> None:
        self.world = world

    def can_load(self, spec: str) -> bool:
        release, _, sae_id = spec.partition("/")
        return sae_id in FAKE_SAES.get(release, [])

    def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
        assert self.can_load(spec), spec
        w = self.world
        return LoadedSAE(w.sae, spec, w.hook_name, w.hook_layer, "tiny", fingerprint=spec)

    def expand(self, release_pattern: str, id_pattern: str) -> list[str]:
        return [
            f"{release}/{sae_id}"
            for release, ids in FAKE_SAES.items()
            if re.fullmatch(release_pattern, release)
            for sae_id in ids
            if re.fullmatch(id_pattern, sae_id)
        ]


class FakePlugin:
    def __init__(self, world: TinyWorld) -> None:
        self.world = world

    @hookimpl
    def register_sae_loaders(self, register: Any) -> None:
        register(FakeSAELoader(self.world))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("patterns"), threshold=0.3)


@pytest.fixture(autouse=True)
def _use_world(world: TinyWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)
    reg = build_registry(extra_plugins=[("tiny", TinyPlugin(world)), ("fake", FakePlugin(world))])
    # only the fake loader lists SAEs here: keeps these tests off sae_lens's real directory
    reg.entries["sae_loaders"].pop("sae-lens", None)
    monkeypatch.setattr(dsg.engine.session, "registry", lambda: reg)


def summary(result: Result) -> list[list[str]]:
    assert result.exit_code == 0, result.output
    return [line.split("\t") for line in result.stdout.splitlines()]


def test_fake_loader_is_an_expanding_loader(world: TinyWorld) -> None:
    assert isinstance(FakeSAELoader(world), ExpandingSAELoader)


def test_select_runs_each_matching_sae_in_its_own_folder() -> None:
    result = run("select", "--case", "tiny", "--out", "runs", "--sae-id-pattern", "tiny-l0-.")
    rows = summary(result)
    # full match, directory order, across releases; tiny-l1-a is left out
    assert [r[0] for r in rows] == [
        "fake-release/tiny-l0-a",
        "fake-release/tiny-l0-b",
        "other/tiny-l0-c",
    ]
    for spec, path in rows:
        sub = Path("runs") / folder_name(spec)
        assert Path(path).is_relative_to(sub) and Path(path).is_file()
        assert (sub / "sparsity").is_dir()
    assert folder_name("fake-release/tiny-l0-a") == "fake-release__tiny-l0-a"


def test_evaluate_two_saes_with_a_release_pattern_from_the_config() -> None:
    Path("dsg.toml").write_text('sae-release-pattern = "fake-release"\n')
    result = run(
        "evaluate", "--case", "tiny", "--out", "runs", "--questions", "all",
        "--sae-id-pattern", "tiny-l0-[ab]",
    )  # fmt: skip
    rows = summary(result)
    assert [r[0] for r in rows] == ["fake-release/tiny-l0-a", "fake-release/tiny-l0-b"]
    for spec, score, path in rows:
        report = json.loads(Path(path).read_text())
        assert Path(path).parent.parent == Path("runs") / folder_name(spec) / "reports"
        assert float(score) == pytest.approx(report["unlearning_score"], abs=1e-4)
        assert report["settings"]["sae"] == f"fake-sae:{spec}"
        assert report["inputs"]["sae_fingerprint"] == spec
        assert (Path(path).parent / "tradeoff.png").is_file()


def test_cli_sae_replaces_the_config_patterns() -> None:
    Path("dsg.toml").write_text('sae-id-pattern = "tiny-l0-.*"\n')
    result = run("sparsity", "--case", "tiny", "--out", "runs", "--sae", "tiny-sae")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert Path(line).parent == Path("runs") / "sparsity"


@pytest.mark.parametrize("command", ["sparsity", "select", "evaluate", "muse-export"])
def test_no_match_is_one_error(command: str) -> None:
    result = run(command, "--case", "tiny", "--sae-id-pattern", "nothing-.*")
    one_error(result, "no SAE matches", "'nothing-.*'", "dsg saes")


@pytest.mark.parametrize(
    "args", [["--sae-id-pattern", "("], ["--sae-release-pattern", "[", "--sae-id-pattern", "x"]]
)
def test_bad_regex_is_one_error(args: list[str]) -> None:
    one_error(run("select", "--case", "tiny", *args), "bad SAE pattern")


def test_sae_and_pattern_together_is_one_error() -> None:
    result = run("select", "--case", "tiny", "--sae", "tiny-sae", "--sae-release-pattern", "x")
    one_error(result, "--sae", "not both")
    Path("dsg.toml").write_text('sae = "tiny-sae"\nsae_id_pattern = "tiny-l0-a"\n')
    one_error(run("select", "--case", "tiny"), "config file", "not both")


def test_real_sae_lens_loader_expands_by_full_match() -> None:
    from dsg_sae_lens import PretrainedSAELoader

    loader = PretrainedSAELoader()
    assert isinstance(loader, ExpandingSAELoader)
    found = loader.expand("gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_14")
    assert found == ["gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_14"]
    assert loader.can_load(found[0])


def test_generate_refuses_patterns_from_the_config() -> None:
    Path("dsg.toml").write_text('sae-id-pattern = "tiny-l0-.*"\n')
    one_error(run("generate", "--case", "tiny", "hello"), "one guardrail", "--sae or --bundle")


def test_a_sweep_refuses_an_edited_job_or_report_until_forced() -> None:
    """A finished job is skipped on a rerun, its facts and report feeding the summary: an edited
    job.json or report.json must stop the rerun, not pass as finished."""
    from commands import one_error

    args = ["evaluate", "--case", "tiny", "--out", "runs", "--questions", "all"]
    args += ["--sae-id-pattern", "tiny-l0-a"]
    (row,) = summary(run(*args))
    report_path = Path(row[2])
    job = report_path.parents[2] / "job.json"  # SAE folder / reports / key / report.json
    done = json.loads(job.read_text())
    job.write_text(json.dumps({**done, "facts": {**done["facts"], "layer": 7}}))
    one_error(run(*args), "job.json was edited", "--force")
    job.write_text(json.dumps(done))
    report = json.loads(report_path.read_text())
    report_path.write_text(json.dumps({**report, "unlearning_score": 1.0}))
    one_error(run(*args), "an output it lists was edited or replaced")
    (forced,) = summary(run(*args, "--force"))
    assert json.loads(report_path.read_text())["unlearning_score"] == report["unlearning_score"]
    assert float(forced[1]) == pytest.approx(report["unlearning_score"], abs=1e-4)
    (again,) = summary(run(*args))
    assert again == forced
