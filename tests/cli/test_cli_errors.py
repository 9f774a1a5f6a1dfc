"""``dsg sparsity`` and ``dsg select`` end to end, and one clean line for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from commands import one_error, run
from tiny import TinyWorld, UseWorld, build_sae


def test_sparsity_then_select(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    stats = run("sparsity", "--case", "tiny", "--out", "runs")
    assert stats.exit_code == 0, stats.output
    folder = Path(stats.stdout.strip())
    assert folder.parent == Path("runs") / "sparsity" and (folder / "meta.json").exists()
    selected = run(
        "select",
        "--case",
        "tiny",
        "--out",
        "runs",
        "--ratio-percentile",
        "50",
        "--ratio-percentile",
        "90",
        "--n-features",
        "2",
        "--n-features",
        "3",
    )
    assert selected.exit_code == 0, selected.output
    paths = [Path(line) for line in selected.stdout.split()]
    assert len(paths) == 2
    data = [json.loads(p.read_text()) for p in paths]
    assert [d["ratio_percentile"] for d in data] == [50.0, 90.0]
    assert all(set(d["thresholds"]) == {"2", "3"} for d in data)
    assert all(d["inputs"]["sparsity"] == folder.name for d in data)
    assert sorted(p.name for p in (Path("runs") / "sparsity").iterdir()) == [folder.name]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--case", "nope"], ["unknown case 'nope'", "tiny"]),
        (["--model", "nope-model"], ["no model loader accepts 'nope-model'", "tiny-model"]),
        (["--sae", "nope-sae"], ["no SAE loader accepts 'nope-sae'", "tiny-sae"]),
        (["--ratio-percentile", "150"], ["ratio percentile must be within [0, 100], got 150"]),
        (["--ratio-percentile", "-1"], ["ratio percentile must be within [0, 100]"]),
        (["--n-features", "1000"], ["n features 1000 exceeds the", "lower ratio percentile"]),
    ],
)
def test_bad_option(
    world: TinyWorld,
    use_world: UseWorld,
    args: list[str],
    fragments: list[str],
) -> None:
    use_world(world)
    one_error(run("select", "--case", "tiny", "--out", "runs", *args), *fragments)


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        ('strategies = ["nope"]', ["unknown strategy 'nope'", "dynamic"]),
        ("min_chars = 5000", ["forget corpus of case 'tiny' has no document longer than 5000"]),
        ("seq_len = 512", ["shorter than one row of 512 tokens"]),
        ("calibration_percentile = 101.0", ["calibration percentile must be within [0, 100]"]),
        ("bogus = 1", ["unknown key 'bogus'", "known keys:"]),
        ('seed = "zero"', ["seed must be a int"]),
    ],
)
def test_bad_config(
    world: TinyWorld,
    use_world: UseWorld,
    config: str,
    fragments: list[str],
) -> None:
    use_world(world)
    Path("dsg.toml").write_text(config + "\n")
    one_error(run("select", "--case", "tiny", "--out", "runs"), *fragments)


def test_sae_for_another_model(tmp_path: Path, use_world: UseWorld) -> None:
    other = TinyWorld(tmp_path / "w")
    other.sae = build_sae(24, 64, hook_name=other.hook_name)
    use_world(other)
    one_error(
        run("sparsity", "--case", "tiny"),
        "reads vectors of size 24 but model 'tiny-model' has d_model 32",
    )


def test_hook_beyond_the_model(tmp_path: Path, use_world: UseWorld) -> None:
    use_world(TinyWorld(tmp_path / "w", hook_layer=7))
    one_error(run("sparsity", "--case", "tiny"), "'blocks.7.hook_resid_post' is beyond model")


def test_output_directory_not_writable(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    Path("a-file").write_text("")
    one_error(run("sparsity", "--case", "tiny", "--out", "a-file/runs"), "is not writable")


def test_corrupted_and_foreign_artifacts(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    first = run("sparsity", "--case", "tiny", "--out", "runs")
    meta = Path(first.stdout.strip()) / "meta.json"
    original = meta.read_text()
    meta.write_text("{ half a json")
    one_error(run("sparsity", "--case", "tiny", "--out", "runs"), "corrupted", "delete it")
    meta.write_text(json.dumps({**json.loads(original), "key": "0123456789abcdef"}))
    one_error(run("select", "--case", "tiny", "--out", "runs"), "does not match its name")
    meta.write_text(original)
    (meta.parent / "calibration-00000.safetensors").write_bytes(b"\x00" * 20)
    one_error(run("select", "--case", "tiny", "--out", "runs"), "was edited, truncated or replaced")
