"""Bad input for the windowed strategy: one error line, exit code 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_errors import one_error, run
from tiny import TinyWorld, UseWorld

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import CONFIG_FILE, DIGEST_FIELD, from_sae
from dsg.core.artifacts import json_sha256


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("world"))


def test_no_candidate_window_fits_the_rows(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    args = ["evaluate", "--case", "tiny", "--out", "runs", "--strategy", "windowed"]
    line = one_error(run(*args, "--window-lengths", "100000"), "no window length in [100000]")
    assert "--window-lengths" in line


def test_a_window_length_must_be_positive(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    one_error(run("evaluate", "--case", "tiny", "--out", "runs", "--window-lengths", "0"))
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
