"""Plugin discovery: entry points, broken plugins, name conflicts, ``dsg plugins``, and a real
third-party distribution installed from ``tests/example_plugin``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dsg import hookimpl, plugins
from dsg.cli import app
from dsg.errors import PluginConflict
from dsg.interfaces import CaseDefaults

EXAMPLE = Path(__file__).parent / "example_plugin"


class Named:
    """Whatever any registry holds: every member of every Protocol a plugin object satisfies."""

    description = "a stand-in"
    defaults = CaseDefaults(model="m", sae="s")
    uses_threshold = True

    def __init__(self, name: str) -> None:
        self.name = name

    def can_load(self, spec: str) -> bool:
        return False

    def load(self, spec: str, **options: Any) -> Any: ...

    def build(self, *args: Any) -> Any: ...

    def forget_texts(self, data: Any) -> list[str]:
        return []

    retain_texts = forget_texts

    def eval_sets(self, data: Any) -> list[Any]:
        return []

    def prompt_format(self) -> None:
        return None


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **hooks: list[str]) -> None:
    """A plugin module whose ``register_<kind>`` hooks register objects with the given names."""
    module = types.ModuleType(name)
    for hook, names in hooks.items():

        def impl(register: Any, _names: list[str] = names) -> None:
            for n in _names:
                register(Named(n))

        impl.__name__ = hook
        setattr(module, hook, hookimpl(impl))
    monkeypatch.setitem(sys.modules, name, module)


def use_entry_points(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    points = [EntryPoint(name=n, value=v, group="dsg") for n, v in targets.items()]
    monkeypatch.setattr(plugins, "_entry_points", lambda: points)


def test_registry_is_built_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "fake_cases", register_cases=["alpha", "beta"])
    fake_module(monkeypatch, "fake_saes", register_sae_loaders=["my-sae"])
    use_entry_points(monkeypatch, cases="fake_cases", saes="fake_saes")
    reg = plugins.build_registry()
    assert reg.names("cases") == ["alpha", "beta"]
    assert reg.names("sae_loaders") == ["my-sae"]
    assert reg.owners["cases"]["beta"] == "cases"
    assert reg.get("cases", "alpha").name == "alpha"
    assert reg.failures == []


def test_broken_plugin_is_reported_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "fake_cases", register_cases=["alpha"])
    use_entry_points(monkeypatch, broken="dsg_no_such_module_xyz", cases="fake_cases")
    reg = plugins.build_registry()
    (failed,) = reg.failures
    assert failed.name == "broken"
    assert "ModuleNotFoundError" in failed.error and "\n" not in failed.error
    assert reg.names("cases") == ["alpha"]


def test_two_plugins_registering_one_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "fake_one", register_strategies=["clamp"])
    fake_module(monkeypatch, "fake_two", register_strategies=["clamp"])
    use_entry_points(monkeypatch, one="fake_one", two="fake_two")
    with pytest.raises(
        PluginConflict, match="strategy 'clamp' is registered by both plugin 'one' and plugin 'two'"
    ):
        plugins.build_registry()


def test_unknown_name_lists_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "fake_cases", register_cases=["alpha", "beta"])
    use_entry_points(monkeypatch, cases="fake_cases")
    with pytest.raises(plugins.UserError, match="unknown case 'gamma'; choose one of: alpha, beta"):
        plugins.build_registry().get("cases", "gamma")


def test_plugins_command_lists_plugins_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "fake_cases", register_cases=["alpha"])
    use_entry_points(monkeypatch, broken="dsg_no_such_module_xyz", cases="fake_cases")
    reg = plugins.build_registry()
    monkeypatch.setattr(plugins, "registry", lambda: reg)
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "case: alpha" in result.output
    assert "skipped: ModuleNotFoundError" in result.output
    assert "a stand-in" in result.output  # each object's description


class Loader:
    name = "half-loader"
    description = "loads nothing"

    def load(self, spec: str, **options: Any) -> None: ...


def test_an_object_unlike_its_protocol_skips_its_plugin_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = types.ModuleType("fake_bad")

    @hookimpl
    def register_sae_loaders(register: Any) -> None:
        register(Named("fine-loader"))
        register(Loader())

    module.register_sae_loaders = register_sae_loaders  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_bad", module)
    fake_module(monkeypatch, "fake_good", register_sae_loaders=["good-loader"])
    use_entry_points(monkeypatch, bad="fake_bad", good="fake_good")
    reg = plugins.build_registry()
    (failed,) = reg.failures
    assert failed.name == "bad" and "\n" not in (failed.error or "")
    assert "plugin 'bad' registered a SAE loader (Loader) without can_load" in (failed.error or "")
    assert reg.names("sae_loaders") == ["good-loader"]  # nothing of the bad plugin is kept


def test_a_case_needs_case_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch)
    case = Named("plain")
    case.defaults = {"model": "m"}  # type: ignore[assignment]
    plugin = types.SimpleNamespace(register_cases=hookimpl(lambda register: register(case)))
    reg = plugins.build_registry([("dicts", plugin)])
    assert "case 'plain' whose defaults are not a CaseDefaults" in (reg.failures[0].error or "")
    assert reg.names("cases") == []


def hello(name: str = "world") -> None:
    """Say hello."""
    if name == "nobody":
        raise plugins.UserError("nobody to greet; pass --name")
    print(f"hello {name}")


def test_plugin_commands_join_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import dsg.cli

    use_entry_points(monkeypatch)
    plugin = types.SimpleNamespace(register_commands=hookimpl(lambda register: register(hello)))
    plugin_two = types.SimpleNamespace(
        register_commands=hookimpl(lambda register: register(dsg.cli.select))
    )
    reg = plugins.build_registry([("greet", plugin), ("clash", plugin_two)])
    assert reg.names("commands") == ["hello", "select"]
    monkeypatch.setattr(plugins, "registry", lambda: reg)
    cli = typer.Typer()
    monkeypatch.setattr(dsg.cli, "app", cli)
    cli.command("select")(dsg.cli.select)  # one of dsg's own, the clashing one's name
    dsg.cli._add_plugin_commands()
    assert reg.names("commands") == ["hello"]
    (clash,) = reg.failures
    assert clash.name == "clash" and "'select' is one of dsg's own" in (clash.error or "")
    result = CliRunner().invoke(cli, ["hello", "--name", "dsg"])
    assert result.exit_code == 0 and result.output == "hello dsg\n"
    result = CliRunner().invoke(cli, ["hello", "--name", "nobody"])
    assert result.exit_code == 2 and "error: nobody to greet; pass --name" in result.output


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example distribution, built from a copy (a build writes into its source tree)."""
    source = tmp_path_factory.mktemp("example") / "example_plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        cwd=source,
        capture_output=True,
    )
    return target


def run_dsg(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "dsg.cli", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def test_example_plugin_distribution_works(example_installed: Path, tmp_path: Path) -> None:
    listed = run_dsg(example_installed, tmp_path, "plugins")
    assert listed.returncode == 0, listed.stderr
    assert "dsg-example" in listed.stdout and "case: example" in listed.stdout
    selected = run_dsg(
        example_installed, tmp_path, "select", "--case", "example", "--out", str(tmp_path / "run")
    )
    assert selected.returncode == 0, selected.stderr
    path = Path(selected.stdout.strip())
    data = json.loads(path.read_text())
    assert data["ratio_percentile"] == 80.0 and len(data["features"]) >= 4
    assert set(data["thresholds"]) == {"2", "4"}
    assert data["thresholds"]["2"] <= data["thresholds"]["4"]


def test_plugin_guide_shows_the_example_verbatim() -> None:
    guide = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    for part in ("pyproject.toml", "src/dsg_example/__init__.py"):
        assert (EXAMPLE / part).read_text().rstrip() in guide, part
