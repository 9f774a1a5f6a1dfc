"""Plugin discovery: entry points, broken plugins, name conflicts, ``dsg plugins``, and a real
third-party distribution installed from ``tests/example_plugin``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import typer
from entry_points import run_dsg, use_entry_points
from paths import REPO, TESTS
from typer.testing import CliRunner

from dsg import hookimpl
from dsg.api import plugins
from dsg.cli.app import app
from dsg.config.values import CaseDefaults
from dsg.core.errors import PluginConflict

EXAMPLE = TESTS / "example_plugin"


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
    import dsg.cli.app

    use_entry_points(monkeypatch)
    plugin = types.SimpleNamespace(register_commands=hookimpl(lambda register: register(hello)))
    plugin_two = types.SimpleNamespace(
        register_commands=hookimpl(lambda register: register(dsg.cli.app.select))
    )
    reg = plugins.build_registry([("greet", plugin), ("clash", plugin_two)])
    assert reg.names("commands") == ["hello", "select"]
    monkeypatch.setattr(plugins, "registry", lambda: reg)
    cli = typer.Typer()
    monkeypatch.setattr(dsg.cli.app, "app", cli)
    cli.command("select")(dsg.cli.app.select)  # one of dsg's own, the clashing one's name
    dsg.cli.app._add_plugin_commands()
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
    guide = (REPO / "docs" / "plugins.md").read_text()
    for part in ("pyproject.toml", "src/dsg_example/__init__.py"):
        assert (EXAMPLE / part).read_text().rstrip() in guide, part


HF_CHECK = """
import json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from dsg.bundle import Bundle
from dsg.hf import attach
from dsg.api.plugins import registry

bundle = Bundle.load(sys.argv[1], registry().entries["strategies"])  # the plugin's strategy
torch.manual_seed(0)
config = LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
model = LlamaForCausalLM(config).eval()
layer = model.model.layers[bundle.hook_layer]
w = bundle.tensors["W_enc"][:, 0]
with torch.no_grad():  # layer 0 passes its input through; token 1 hits feature 0, 0 hits nothing
    layer.self_attn.o_proj.weight.zero_()
    layer.mlp.down_proj.weight.zero_()
    model.model.embed_tokens.weight.zero_()
    model.model.embed_tokens.weight[1] = w * (2.0 - bundle.tensors["b_enc"][0]) / (w @ w)
ids = torch.tensor([[1] * 12, [0] * 12, [0] * 8 + [1] * 4, [0] * 4 + [1] * 8])
mask = torch.ones(4, 12, dtype=torch.long)
mask[2, :8] = 0
mask[3, :4] = 0
with torch.no_grad():
    plain = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    with attach(model, bundle, allow_mismatch=True) as handle:  # a model built to fit it
        guarded = model(input_ids=ids, attention_mask=mask).logits
print(json.dumps({
    "hidden": plain.hidden_states[bundle.hook_layer + 1].tolist(),
    "mask": mask.tolist(),
    "fired": handle.fired.tolist(),
    "rates": handle.rates.tolist(),
    "changed": (guarded != plain.logits).any(dim=-1).any(dim=-1).tolist(),
}))
"""


def test_example_strategy_exports_to_a_bundle_and_runs_on_transformers(
    example_installed: Path, tmp_path: Path
) -> None:
    exported = run_dsg(
        example_installed,
        tmp_path,
        "muse-export",
        "--case",
        "example",
        "--strategy",
        "example-min-hits",
        "--out",
        str(tmp_path / "run"),
    )
    assert exported.returncode == 0, exported.stderr
    printed = [Path(line) for line in exported.stdout.split()]
    directory = [path for path in printed if path.parent.name == "bundles"][-1]
    config = json.loads((directory / "bundle.json").read_text())
    assert config["strategy"] == "example-min-hits"
    assert config["strategy_params"] == {"min_hits": 4}
    script = tmp_path / "check.py"
    script.write_text(HF_CHECK)
    env = {**os.environ, "PYTHONPATH": str(example_installed), "OMP_NUM_THREADS": "1"}
    ran = subprocess.run(
        [sys.executable, str(script), str(directory)], env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)

    # the gate, computed by hand from the bundle's own tensors and the unguarded residual
    import torch
    from safetensors.torch import load_file

    t = load_file(directory / "guardrail.safetensors")
    hidden, mask = torch.tensor(seen["hidden"]), torch.tensor(seen["mask"]).bool()
    pre = hidden @ t["W_enc"] + t["b_enc"]
    acts = torch.relu(pre) * (pre > t["jump_threshold"])
    bos = mask & (mask.cumsum(1) == 1)
    hits = (acts > 0).any(-1) & mask & ~bos
    rates = hits.sum(1).double() / mask.sum(1).double()
    torch.testing.assert_close(torch.tensor(seen["rates"], dtype=torch.float64), rates)
    gated = rates.float() > torch.tensor(config["threshold"], dtype=torch.float32)
    fired = gated & (hits.sum(1) >= 4)
    assert seen["fired"] == fired.tolist() == [True, False, False, True]
    assert bool(gated[2])  # the dynamic gate alone would fire the short row
    assert seen["changed"] == [
        f and bool(h.any()) for f, h in zip(seen["fired"], hits, strict=True)
    ]


def test_saes_lists_a_third_party_loaders_saes_as_sweeps_expand_them(
    example_installed: Path, tmp_path: Path
) -> None:
    listed = run_dsg(example_installed, tmp_path, "saes", "--sae-release-pattern", "exam.*")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["example-sae:example-sae"]
    missed = run_dsg(example_installed, tmp_path, "saes", "--sae-id-pattern", "nothing")
    assert missed.returncode == 2 and "no SAE matches" in missed.stderr
