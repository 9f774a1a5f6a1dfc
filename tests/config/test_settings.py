"""The one declaration of each setting and what is derived from it: CLI options, config checks,
case defaults and the tables of docs/config.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from paths import REPO
from typer.testing import CliRunner

from dsg.api.plugins import registry
from dsg.cli.options import Given, setting_options
from dsg.config.docs import tables, with_tables
from dsg.config.resolve import validate_config
from dsg.config.settings import WITH_TRAINING, declared, for_command
from dsg.config.values import CaseDefaults
from dsg.core.errors import UserError

DOCS = REPO / "docs" / "config.md"


def capture(command: str, *args: str) -> tuple[int, Given | None, str]:
    """Run a throwaway command that takes ``command``'s settings; return what it was given."""
    seen: list[Given] = []
    app = typer.Typer()

    @app.command()
    @setting_options(command)
    def probe(given: Given, label: str = "x") -> None:
        seen.append(given)

    @app.command()
    def other() -> None:  # two commands, so the probe is invoked by name
        """Unused."""

    result = CliRunner().invoke(app, ["probe", *args])
    return result.exit_code, seen[0] if seen else None, result.output


def test_docs_tables_match_the_declarations() -> None:
    text = DOCS.read_text()
    plugin = registry().settings
    assert with_tables(text, plugin) == text, "run `python -m dsg.cli.config_docs docs/config.md`"
    for name in [*declared(), *(s.name for s in plugin)]:
        assert f"| `{name}` |" in tables(plugin)


def test_options_reach_the_command_under_their_setting_names() -> None:
    code, given, output = capture(
        "evaluate",
        "--seq-len", "7",
        "--min-chars", "3",
        "--dataset-size", "11",
        "--ratio-percentile", "90",
        "--ratio-percentile", "95",
        "--force",
        "--config", "c.toml",
    )  # fmt: skip
    assert code == 0, output
    assert given is not None and given.config == Path("c.toml")
    assert given.settings["seq_len"] == 7 and given.settings["min_chars"] == 3
    assert given.settings["dataset_size"] == 11
    assert given.settings["ratio_percentiles"] == (90.0, 95.0)  # as Settings holds it
    assert given.settings["force"] is True
    left_off = {k for k, v in given.settings.items() if v is None}
    assert left_off == {s.name for s in for_command("evaluate")} - {
        "seq_len", "min_chars", "dataset_size", "ratio_percentiles", "force"
    }  # fmt: skip


def test_a_command_takes_only_its_settings() -> None:
    code, given, _ = capture("select", "--questions", "all")
    assert code == 2 and given is None
    code, given, _ = capture("generate", "--force")
    assert code == 2 and given is None
    code, given, _ = capture("select", "--forget-percentile", "3")
    assert code == 0 and given is not None and given.settings["forget_percentile"] == 3.0
    code, given, _ = capture("train-sae", "--ratio-percentile", "90")
    assert code == 2 and given is None
    code, given, _ = capture("train-sae", "--sae-width", "64", "--seq-len", "32")
    assert code == 0 and given is not None and given.settings["sae_width"] == 64
    assert set(WITH_TRAINING) == {c for s in declared().values() for c in s.spec.commands}


def test_every_key_round_trips_through_the_config_check() -> None:
    samples: dict[type, Any] = {str: "a", int: 3, float: 2, bool: True, Path: "p"}
    table = {
        name: s.spec.choices[0] if s.spec.choices else samples[s.kind]
        for name, s in declared().items()
    }  # values checked as they enter: a valid choice
    clean = validate_config(table, Path("c.toml"))
    for name, setting in declared().items():
        value = clean[name]
        one = value[0] if setting.repeated else value
        assert isinstance(value, tuple) == setting.repeated
        assert isinstance(one, setting.kind) and not (setting.kind is int and one is True)
    assert clean["dataset_fraction"] == 2.0  # an int where a float is expected
    with pytest.raises(UserError, match="c.toml: seq-len must be a int, not 'x'"):
        validate_config({"seq-len": "x"}, Path("c.toml"))


def test_case_defaults_accept_what_a_case_may_set() -> None:
    defaults = CaseDefaults(model="m", sae="s", ratio_percentiles=(90,), seq_len=32)
    assert defaults.ratio_percentiles == (90.0,) and defaults.seq_len == 32
    assert defaults.n_features == declared()["n_features"].default  # dsg's default
    assert defaults.values == {
        "model": "m",
        "sae": "s",
        "ratio_percentiles": (90.0,),
        "seq_len": 32,
    }
    with pytest.raises(TypeError, match="a case may not set 'out'"):
        CaseDefaults(model="m", sae="s", out=Path("x"))
    with pytest.raises(UserError, match="case default seq_len must be a int"):
        CaseDefaults(model="m", sae="s", seq_len="long")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"dataset_fraction": 0}, r"dataset fraction must be within \(0, 100\], got 0"),
        ({"batch_size": 0}, "batch size must be positive, got 0"),
        ({"n_features": [5, 0]}, "n features must be positive, got 0"),
        ({"forget_percentile": -0.5}, r"forget percentile must be within \[0, 100\]"),
        ({"dtype": "int8"}, "unknown dtype 'int8'; choose one of: float32"),
        ({"sae_id_pattern": "("}, r"bad SAE pattern '\(' \(sae_id_pattern\)"),
    ],
)
def test_bounds_come_from_the_declarations(table: dict[str, Any], message: str) -> None:
    from dsg.config.resolve import resolve

    defaults = CaseDefaults(model="m", sae="s")
    with pytest.raises(UserError, match=message):
        resolve(defaults, "c", validate_config(table, Path("c.toml")), {})


def test_edges_of_the_bounds_are_accepted() -> None:
    from dsg.config.resolve import resolve

    table = {"dataset_fraction": 100, "forget_percentile": 0, "calibration_percentile": 100}
    s = resolve(CaseDefaults(model="m", sae="s"), "c", validate_config(table, Path("c")), {})
    assert (s.dataset_fraction, s.forget_percentile, s.calibration_percentile) == (100, 0, 100)
