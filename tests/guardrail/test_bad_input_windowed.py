"""Bad input for the windowed strategy: one error line, exit code 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from commands import one_error, run
from tiny import TinyWorld, UseWorld

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import CONFIG_FILE, DIGEST_FIELD, Bundle, from_sae
from dsg.core.artifacts import json_sha256


def test_no_candidate_window_fits_the_rows(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    args = ["evaluate", "--case", "tiny", "--out", "runs", "--strategy", "windowed"]
    line = one_error(run(*args, "--window-lengths", "100000"), "no window length in [100000]")
    assert "--window-lengths" in line


def test_a_window_length_must_be_positive(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    one_error(run("evaluate", "--case", "tiny", "--out", "runs", "--window-lengths", "0"))
    assert not Path("runs").exists()


def test_a_window_option_without_the_windowed_strategy_is_refused(
    world: TinyWorld, use_world: UseWorld
) -> None:
    """The option would change nothing the run computes; in a config file the key is kept for
    the runs that use the windowed strategy."""
    use_world(world)
    args = ["evaluate", "--case", "tiny", "--out", "runs", "--strategy", "dynamic"]
    one_error(
        run(*args, "--window-lengths", "4"),
        "strategy 'dynamic' does not read --window-lengths: it is an option of strategy "
        "'windowed'; leave it off",
    )
    assert not Path("runs").exists()


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"window": 4}, "calibrated window"),
        ({"window": 4, "window_threshold": 0.5, "stride": 2}, "takes strategy_params window"),
        ({"window": 4, "window_threshold": 1.5}, "window_threshold"),
        ({"window": 4, "window_threshold": float("nan")}, "window_threshold is NaN"),
        ({"window": 0, "window_threshold": 0.5}, "positive integer"),
        ({"window": 4.0, "window_threshold": 0.5}, "positive integer"),
        ({"window": True, "window_threshold": 0.5}, "positive integer"),
        ({"window": 10**30, "window_threshold": 0.5}, "at most 9,223,372,036,854,775,807"),
    ],
)
def test_generate_refuses_a_windowed_bundle_with_bad_window_parameters(
    world: TinyWorld, use_world: UseWorld, tmp_path: Path, params: dict, fragment: str
) -> None:
    """Even with its digest recomputed, a windowed bundle whose window parameters are missing,
    unknown or out of range is refused."""
    loaded = LoadedSAE(world.sae, "tiny-sae", world.hook_name, world.hook_layer)
    good = {"window": 4, "window_threshold": 0.5}
    path = from_sae(
        loaded, [3, 1, 2], threshold=0.2, multiplier=5.0, strategy="windowed", params=good
    ).save(tmp_path / "bundle")
    config = json.loads((path / CONFIG_FILE).read_text())
    del config[DIGEST_FIELD]
    config["strategy_params"] = params
    config[DIGEST_FIELD] = json_sha256(config)
    (path / CONFIG_FILE).write_text(json.dumps(config))
    one_error(run("generate", "--bundle", str(path), "hello"), fragment)


def test_a_window_threshold_that_is_a_string_is_refused(
    world: TinyWorld, use_world: UseWorld, tmp_path: Path
) -> None:
    """``"0.25"`` is not read as the number 0.25: a bundle's parameters are numbers or it is
    not dsg's."""
    loaded = LoadedSAE(world.sae, "tiny-sae", world.hook_name, world.hook_layer)
    path = from_sae(
        loaded, [3, 1, 2], threshold=0.2, multiplier=5.0, strategy="windowed",
        params={"window": 4, "window_threshold": 0.25},
    ).save(tmp_path / "bundle")  # fmt: skip
    config = json.loads((path / CONFIG_FILE).read_text())
    del config[DIGEST_FIELD]
    config["strategy_params"] = {"window": 4, "window_threshold": "0.25"}
    config[DIGEST_FIELD] = json_sha256(config)
    (path / CONFIG_FILE).write_text(json.dumps(config))
    one_error(
        run("generate", "--bundle", str(path), "hello"),
        "strategy_params window_threshold must be a number, not str '0.25'",
    )


def test_bundles_of_other_calibrations_never_share_a_folder(
    world: TinyWorld, use_world: UseWorld
) -> None:
    """Each window calibration writes its own bundle folder, whose name a path printed earlier
    keeps: a second export with other settings never overwrites the first; the same settings
    again give the same folder."""
    use_world(world)
    export = ["muse-export", "--case", "tiny", "--out", "runs", "--strategy", "windowed"]
    export += ["--n-features", "2"]
    runs = {
        "rows": ["--window-calibration-tokens", "0"],
        "stretches": ["--window-calibration-tokens", "64"],
        "w1": ["--window-lengths", "1"],
        "w2": ["--window-lengths", "2"],
    }
    paths, digests = {}, {}
    for name, options in runs.items():
        result = run(*export, *options)
        assert result.exit_code == 0, result.output
        (line,) = result.stdout.split()
        paths[name] = Path(line)
        digests[name] = json.loads((paths[name] / CONFIG_FILE).read_text())[DIGEST_FIELD]
    assert len(set(paths.values())) == len(runs)
    for name, path in paths.items():  # every folder still holds what its own export wrote
        assert json.loads((path / CONFIG_FILE).read_text())[DIGEST_FIELD] == digests[name]
        assert path.name.startswith("tiny-p50-n2-m5-windowed-")
    settings = {n: Bundle.load(p).provenance["strategy_settings"] for n, p in paths.items()}
    assert settings["rows"]["window_calibration_tokens"] == 0
    assert settings["stretches"]["window_calibration_tokens"] == 64
    assert settings["w1"]["window_lengths"] == [1]
    assert settings["w2"]["window_lengths"] == [2]
    assert Bundle.load(paths["w1"]).strategy_params["window"] == 1
    assert Bundle.load(paths["w2"]).strategy_params["window"] == 2
    again = run(*export, *runs["w1"])
    assert again.exit_code == 0, again.output
    assert Path(again.stdout.strip()) == paths["w1"]


@pytest.mark.parametrize(
    ("tokens", "fragments"),
    [
        ("1", ["window_calibration_tokens 1 is shorter than the rows of seq_len 16", "pass 0"]),
        ("15", ["window_calibration_tokens 15 is shorter than the rows of seq_len 16"]),
        (
            "600",
            [
                "window_calibration_tokens 600 is longer than the context of model 'tiny-model' "
                "(512 tokens)",
                "--window-calibration-tokens 512 or less",
            ],
        ),
    ],
)
def test_window_calibration_tokens_that_would_mean_something_else_are_refused(
    world: TinyWorld, use_world: UseWorld, tokens: str, fragments: list[str]
) -> None:
    """Below seq_len it would silently mean seq_len; beyond the context no prompt is that long."""
    use_world(world)
    args = ["muse-export", "--case", "tiny", "--out", "runs", "--strategy", "windowed"]
    one_error(run(*args, "--window-calibration-tokens", tokens), *fragments)
    assert not Path("runs", "bundles").exists()
    for edge in ("16", "200"):  # seq_len itself, and a stretch the tiny corpus holds
        done = run(*args, "--n-features", "2", "--window-calibration-tokens", edge)
        assert done.exit_code == 0, done.output
