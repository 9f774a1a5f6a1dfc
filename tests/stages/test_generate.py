"""`dsg generate` and `dsg muse-export` through the command line, on a tiny Gemma-2 model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hf_world import FORGET_PROMPTS, RETAIN_PROMPTS, topic_world
from tiny import TinyWorld, tiny_registry
from typer.testing import CliRunner

from dsg.bundle import Bundle
from dsg.cli.app import app

torch.set_num_threads(1)

runner = CliRunner()


def on_tiny(setup: dict[str, Any], out: Path) -> list[str]:
    """The options that run a command on the tiny case, its model and the run directory."""
    return ["--case", "tiny", "--model", str(setup["model_dir"]), "--out", str(out)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    world = topic_world(tmp_path_factory.mktemp("generate"))
    return {**world, "bundle": world["bundle_dir"]}


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_generate_fires_on_a_forget_like_prompt(setup: dict[str, Any]) -> None:
    result = invoke(
        "generate",
        "--bundle",
        str(setup["bundle"]),
        "--raw",
        "--max-new-tokens",
        "4",
        FORGET_PROMPTS[0],
    )
    assert result.exit_code == 0, result.output
    assert "guardrail fired: prompt hit rate" in result.stdout


def test_generate_compare_on_a_retain_like_prompt(setup: dict[str, Any]) -> None:
    args = (
        "generate",
        "--bundle",
        str(setup["bundle"]),
        "--model",
        str(setup["model_dir"]),
        "--raw",
        "--max-new-tokens",
        "4",
        "--compare",
        RETAIN_PROMPTS[0],
    )
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "--- guarded ---" and "--- unguarded ---" in lines
    assert lines[-1].startswith("guardrail did not fire")
    guarded = "\n".join(lines[1 : lines.index("--- unguarded ---")])
    plain = "\n".join(lines[lines.index("--- unguarded ---") + 1 : -1])
    assert guarded == plain  # the guardrail did not fire, so the texts are the same
    assert invoke(*args).stdout == result.stdout  # greedy guarded generation is deterministic


def test_generate_with_the_chat_template(setup: dict[str, Any]) -> None:
    result = invoke("generate", "--bundle", str(setup["bundle"]), "--max-new-tokens", "3", "hi")
    assert result.exit_code == 0, result.output
    assert "guardrail" in result.stdout.splitlines()[-1]


def test_generate_missing_bundle_is_one_line_error(tmp_path: Path) -> None:
    result = invoke("generate", "--bundle", str(tmp_path / "nope"), "hello")
    assert result.exit_code == 2
    assert "not a dsg guardrail bundle" in result.stderr


@pytest.fixture()
def tiny_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: dict[str, Any]) -> Path:
    """The tiny test case, with its model read from the tiny Gemma-2 directory."""
    import dsg.engine.session

    world = TinyWorld(tmp_path / "world")
    monkeypatch.setattr(dsg.engine.session, "registry", lambda: tiny_registry(world))
    return tmp_path / "run"


def test_muse_export_writes_one_bundle_per_ratio_and_n(
    tiny_case: Path, setup: dict[str, Any]
) -> None:
    result = invoke("muse-export", *on_tiny(setup, tiny_case), "--strategy", "dynamic")
    assert result.exit_code == 0, result.output
    *paths, configs = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    assert configs == tiny_case / "open-unlearning"
    bundles = [Bundle.load(p) for p in paths]
    assert [b.k for b in bundles] == [2, 4]
    assert all(p.parent == tiny_case / "bundles" for p in paths)
    assert paths[0].name.startswith("tiny-p50-n2-m5-dynamic-")
    assert bundles[1].features[:2] == bundles[0].features
    assert bundles[0].base_model["hf"] == str(setup["model_dir"].resolve())
    assert bundles[0].provenance["selection"]["ratio_percentile"] == 50.0

    result = invoke(
        "generate",
        *on_tiny(setup, tiny_case),
        "--raw",
        "--max-new-tokens",
        "3",
        "The pathogen",
    )
    assert result.exit_code == 0, result.output
    assert "guardrail" in result.stdout.splitlines()[-1]


def test_muse_export_exports_the_strategies_of_the_config_file(
    tiny_case: Path, setup: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "dsg.toml"
    config.write_text('strategies = ["static"]\n', encoding="utf-8")
    result = invoke("muse-export", *on_tiny(setup, tiny_case), "--config", str(config))
    assert result.exit_code == 0, result.output
    *paths, _ = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    bundles = [Bundle.load(p) for p in paths]
    assert [(b.k, b.strategy, b.threshold) for b in bundles] == [
        (2, "static", None),
        (4, "static", None),
    ]


def test_muse_export_refuses_an_unknown_strategy(tiny_case: Path, setup: dict[str, Any]) -> None:
    result = invoke(
        "muse-export",
        *on_tiny(setup, tiny_case),
        "--strategy",
        "sometimes",
    )
    assert result.exit_code == 2
    assert "unknown strategy 'sometimes'" in result.stderr


def test_hf_reference_of_loaded_models(setup: dict[str, Any]) -> None:
    from dsg.api.interfaces import LoadedModel, hf_reference

    model_dir = str(setup["model_dir"].resolve())
    named = LoadedModel(
        None, None, "gemma-2-2b-it", extra={"official_name": "google/gemma-2-2b-it"}
    )
    assert hf_reference(named) == "google/gemma-2-2b-it"
    packaged = LoadedModel(None, None, "organism", extra={"hf_model": model_dir})
    assert hf_reference(packaged) == model_dir
    assert hf_reference(LoadedModel(None, None, model_dir)) == model_dir
    assert hf_reference(LoadedModel(None, None, "unknown")) is None
