"""Config discovery (--config, $DSG_CONFIG, ./dsg.toml, [tool.dsg]) and precedence
(CLI over config over case defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import TinyWorld, tiny_registry

from dsg.api.plugins import Registry
from dsg.config.resolve import find_config
from dsg.core.errors import UserError
from dsg.engine.session import Session


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return tiny_registry(TinyWorld(tmp_path_factory.mktemp("world")))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)
    return tmp_path


def write_all(workdir: Path) -> tuple[Path, Path]:
    """One config at every discovery place, each with its own seed."""
    explicit = workdir / "explicit.toml"
    explicit.write_text("seed = 1\n")
    env = workdir / "env.toml"
    env.write_text("seed = 2\n")
    (workdir / "dsg.toml").write_text("seed = 3\n")
    (workdir / "pyproject.toml").write_text("[project]\nname = 'x'\n\n[tool.dsg]\nseed = 4\n")
    return explicit, env


def test_discovery_order(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = write_all(workdir)
    monkeypatch.setenv("DSG_CONFIG", str(env))
    assert find_config(explicit) == (explicit, {"seed": 1})
    assert find_config(None) == (env, {"seed": 2})
    monkeypatch.delenv("DSG_CONFIG")
    assert find_config(None) == (Path("dsg.toml"), {"seed": 3})
    (workdir / "dsg.toml").unlink()
    assert find_config(None) == (Path("pyproject.toml"), {"seed": 4})
    (workdir / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert find_config(None) == (None, {})


def test_missing_config_files_are_errors(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="config file nowhere.toml does not exist"):
        find_config(Path("nowhere.toml"))
    monkeypatch.setenv("DSG_CONFIG", "gone.toml")
    with pytest.raises(UserError, match=r"\$DSG_CONFIG points at gone.toml"):
        find_config(None)


@pytest.mark.parametrize(
    ("named", "fragment"),
    [
        ("", r"\$DSG_CONFIG is set but empty; point it at a TOML file or unset it"),
        ("  ", r"\$DSG_CONFIG is set but empty"),
        ("folder", r"\$DSG_CONFIG points at folder, which is a directory, not a regular file"),
        ("/dev/null", r"points at /dev/null, which is not a regular file \(a device"),
    ],
)
def test_dsg_config_that_names_no_file_is_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, named: str, fragment: str
) -> None:
    """$DSG_CONFIG set to nothing, a directory or a device says so, rather than falling back to
    ./dsg.toml in silence or calling it missing."""
    write_all(workdir)
    (workdir / "folder").mkdir()
    monkeypatch.setenv("DSG_CONFIG", named)
    with pytest.raises(UserError, match=fragment):
        find_config(None)
    with pytest.raises(UserError, match="config file /dev/null is not a regular file"):
        find_config(Path("/dev/null"))


def test_keys_types_and_dashes(workdir: Path) -> None:
    (workdir / "dsg.toml").write_text(
        'n-features = [3, 5]\nratio_percentiles = 90\nout = "elsewhere"\n'
    )
    _, table = find_config(None)
    assert table == {"n_features": (3, 5), "ratio_percentiles": (90.0,), "out": Path("elsewhere")}
    (workdir / "dsg.toml").write_text("batch_size = 2.5\n")
    with pytest.raises(UserError, match="batch_size must be a int"):
        find_config(None)
    (workdir / "dsg.toml").write_text("batch_size = \n")
    with pytest.raises(UserError, match="is not valid TOML"):
        find_config(None)


def test_cli_over_config_over_case_defaults(workdir: Path, registry: Registry) -> None:
    (workdir / "dsg.toml").write_text("batch_size = 2\nseq_len = 32\nn_features = [1]\n")
    session = Session.open({"case": "tiny", "batch_size": 3, "n_features": []}, reg=registry)
    s = session.settings
    assert session.config_path == Path("dsg.toml")
    assert s.batch_size == 3  # CLI
    assert s.seq_len == 32  # config
    assert s.n_features == (1,)  # an empty CLI list means "not given"
    assert s.dataset_size == 64 and s.min_chars == 10  # the tiny case's defaults
    assert s.stat_decimals == 6 and s.calibration_percentile == 95.0  # dsg's defaults


def test_a_setting_passed_in_code_under_an_unknown_name_is_refused(
    workdir: Path, registry: Registry
) -> None:
    """Settings given to ``Session.open`` from code (a sweep, a notebook) are checked by name as
    a config file's are: a misspelt one would otherwise leave its default in force unseen."""
    with pytest.raises(
        UserError, match="unknown setting 'n_featurs'; known settings: .*n_features"
    ):
        Session.open({"case": "tiny", "n_featurs": [5]}, reg=registry)


def test_case_can_come_from_the_config(workdir: Path, registry: Registry) -> None:
    (workdir / "dsg.toml").write_text('case = "tiny"\nmodel = "other-model"\n')
    session = Session.open({}, reg=registry)
    assert session.case.name == "tiny"
    assert session.settings.model == "other-model"
    assert session.settings.sae == "tiny-sae"
