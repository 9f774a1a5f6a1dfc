"""Bad input around loading a model and `dsg generate`: a model that ships code of its own (never
run, even with `yes` on stdin), the bundle's base model as a hint, a completion longer than the
model's context, and options a bundle would silently ignore."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from commands import one_error
from tiny import build_sae
from tiny_gemma import tiny_gemma_config, write_tiny_gemma
from typer.testing import CliRunner, Result

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import from_sae
from dsg.cli.app import app
from dsg.core.errors import UserError

YES = "y\n" * 100  # what `yes | dsg ...` answers to "Do you wish to run the custom code? [y/N]"
HOOK = "blocks.0.hook_resid_post"


def run(*args: str) -> Result:
    """The command, with `yes` on its stdin."""
    return CliRunner().invoke(app, list(args), input=YES)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gensec")


@pytest.fixture(scope="module")
def gemma_dir(root: Path) -> Path:
    return write_tiny_gemma(root / "tiny-gemma-2", n_layers=1)


@pytest.fixture(scope="module")
def sae_dir(root: Path) -> Path:
    path = root / "sae"
    build_sae(32, 16, hook_name=HOOK).save_model(str(path))
    return path


def write_bundle(
    root: Path, name: str, base_model: dict[str, Any], bound_to: Path | None = None
) -> Path:
    """A bundle, bound to the transformers model in ``bound_to`` if given."""
    from transformers import AutoModelForCausalLM

    from dsg_runtime.binding import record_binding

    binding = None
    if bound_to is not None:
        model = AutoModelForCausalLM.from_pretrained(bound_to, dtype=torch.float32)
        binding = record_binding(model, HOOK)
    loaded = LoadedSAE(build_sae(32, 16, hook_name=HOOK), "tiny-sae", HOOK, 0)
    bundle = from_sae(
        loaded, [3, 1, 2], threshold=0.2, multiplier=5.0, base_model=base_model, binding=binding
    )
    return bundle.save(root / name)


@pytest.fixture(scope="module")
def bundle(root: Path, gemma_dir: Path) -> Path:
    """A bundle whose base model is the tiny Gemma."""
    return write_bundle(root, "bundle", {"hf": str(gemma_dir)}, gemma_dir)


# --- a model that ships code of its own --------------------------------------------------------


def add_code(folder: Path, where: str) -> Path:
    """Give a model folder an auto_map naming ``evil.py``, which writes ``MARKER`` when imported.
    In config.json the model type is one transformers does not know, so that transformers (not
    told ``trust_remote_code``) asks on stdin whether to run the folder's code."""
    marker = folder / "MARKER"
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    if where == "config":
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "dsg-test-custom"
        config["auto_map"] = {
            "AutoConfig": "evil.CustomConfig",
            "AutoModelForCausalLM": "evil.CustomModel",
        }
        (folder / "config.json").write_text(json.dumps(config))
    else:
        tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer["auto_map"] = {"AutoTokenizer": ["evil.CustomTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


@pytest.fixture(params=["config", "tokenizer"])
def custom(request: pytest.FixtureRequest, gemma_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny Gemma with an auto_map in its config.json or tokenizer_config.json."""
    folder = shutil.copytree(gemma_dir, tmp_path / f"custom-{request.param}")
    return add_code(folder, request.param)


@pytest.fixture
def yes_on_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(YES))


def refused(custom: Path, message: str) -> None:
    """The refusal names the model and the file with the auto_map; no code ran."""
    where = "config.json" if custom.name == "custom-config" else "tokenizer_config.json"
    assert "ships Python code of its own" in message and f"auto_map in its {where}" in message
    assert str(custom) in message
    assert not (custom / "MARKER").exists()


def test_generate_refuses_a_model_with_code(
    custom: Path, bundle: Path, use_world: Any, yes_on_stdin: None
) -> None:
    args = ["--bundle", str(bundle), "--model", str(custom), "--raw", "hi"]
    refused(custom, one_error(run("generate", *args)))


def test_generate_refuses_a_bundle_whose_base_model_has_code(
    custom: Path, root: Path, use_world: Any, yes_on_stdin: None
) -> None:
    """The probe's case: the bundle, not the user, names the model."""
    hinted = write_bundle(custom.parent, "hinting-bundle", {"hf": str(custom)})
    result = run("generate", "--bundle", str(hinted), "--raw", "hi")
    refused(custom, one_error(result))
    assert f"[dsg] model: {custom} (the bundle's base_model.hf" in result.stderr


def test_sparsity_refuses_a_model_with_code(
    custom: Path, sae_dir: Path, use_world: Any, yes_on_stdin: None
) -> None:
    """Through the TransformerLens local-folder loader; nothing is written."""
    args = ["--case", "organism", "--model", str(custom), "--sae", str(sae_dir), "--out", "runs"]
    refused(custom, one_error(run("sparsity", *args)))
    assert not Path("runs").exists()


def test_transformers_backend_refuses_a_model_with_code(custom: Path, yes_on_stdin: None) -> None:
    from dsg.engine.loader import load_causal_lm

    with pytest.raises(UserError) as raised:
        load_causal_lm(str(custom), device="cpu", dtype=torch.float32)
    refused(custom, str(raised.value))


def test_open_unlearning_refuses_a_model_with_code(
    custom: Path, bundle: Path, yes_on_stdin: None
) -> None:
    from dsg.open_unlearning import GuardedModel

    with pytest.raises(UserError) as raised:
        GuardedModel.from_pretrained(str(custom), dsg_bundle=str(bundle))
    refused(custom, str(raised.value))


def test_lm_eval_model_refuses_a_model_with_code(
    custom: Path, bundle: Path, yes_on_stdin: None
) -> None:
    pytest.importorskip("lm_eval")
    from dsg.lm_eval_model import GuardedLM

    with pytest.raises(UserError) as raised:
        GuardedLM(pretrained=str(custom), bundle=str(bundle))
    refused(custom, str(raised.value))


def test_guarded_model_types_refuse_trust_remote_code(gemma_dir: Path, bundle: Path) -> None:
    """A harness's model arguments cannot switch the model's own code on (not even for a
    model that has none)."""
    pytest.importorskip("lm_eval")
    from dsg.lm_eval_model import GuardedLM
    from dsg.open_unlearning import GuardedModel

    with pytest.raises(UserError, match="never runs the model's own code"):
        GuardedModel.from_pretrained(str(gemma_dir), dsg_bundle=str(bundle), trust_remote_code=True)
    with pytest.raises(UserError, match="never runs the model's own code"):
        GuardedLM(pretrained=str(gemma_dir), bundle=str(bundle), trust_remote_code=True)


def test_a_cached_hub_model_with_code_is_refused(
    custom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yes_on_stdin: None
) -> None:
    """A hub id is checked in the local hub cache, where an offline load would read it from."""
    from huggingface_hub import constants

    from dsg.stages.generate import load_model

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--custom-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(custom, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError) as raised:
        load_model("someone/custom-model", device="cpu", dtype="float32")
    assert "'someone/custom-model' ships Python code of its own" in str(raised.value)
    assert not (repo / "snapshots" / commit / "MARKER").exists()


def test_transformer_lens_names_that_need_their_repositorys_code_are_refused() -> None:
    """TransformerLens turns trust_remote_code on by itself for these; refused before any
    download."""
    from dsg_transformer_lens.named import load_named_model

    with pytest.raises(UserError, match="with the code of its hub repository"):
        load_named_model("Qwen/Qwen-1_8B", device="cpu", dtype=torch.float32)


# --- the bundle's base model is a hint ---------------------------------------------------------


def generate_ok(*args: str) -> Result:
    result = run("generate", *args, "--raw", "--max-new-tokens", "2", "hi")
    assert result.exit_code == 0, result.output
    return result


def test_without_model_the_bundle_base_model_is_used_and_named(
    bundle: Path, gemma_dir: Path, use_world: Any
) -> None:
    result = generate_ok("--bundle", str(bundle))
    line = f"[dsg] model: {gemma_dir} (the bundle's base_model.hf; pass --model to run another)"
    assert line in result.stderr.splitlines()


def test_model_given_wins_over_the_bundle_hint_and_the_difference_is_named(
    root: Path, gemma_dir: Path, use_world: Any
) -> None:
    """The bundle names a folder that does not exist: the run works only if it is not loaded."""
    elsewhere = root / "not-a-model"
    hinted = write_bundle(root, "bundle-elsewhere", {"hf": str(elsewhere)}, gemma_dir)
    result = generate_ok("--bundle", str(hinted), "--model", str(gemma_dir))
    line = f"[dsg] model: {gemma_dir} (--model; the bundle's base_model.hf is {elsewhere})"
    assert line in result.stderr.splitlines()


def test_model_given_equal_to_the_hint_is_not_called_different(
    bundle: Path, gemma_dir: Path, use_world: Any
) -> None:
    result = generate_ok("--bundle", str(bundle), "--model", str(gemma_dir) + "/")
    assert f"[dsg] model: {gemma_dir}/ (--model)" in result.stderr.splitlines()


def test_a_missing_hint_is_named_before_the_error(root: Path, use_world: Any) -> None:
    elsewhere = root / "gone"
    hinted = write_bundle(root, "bundle-gone", {"hf": str(elsewhere)})
    result = run("generate", "--bundle", str(hinted), "hi")
    one_error(result, str(elsewhere))
    assert f"[dsg] model: {elsewhere} (the bundle's base_model.hf" in result.stderr


# --- a completion longer than the model's context ----------------------------------------------


@pytest.mark.parametrize(
    ("prompt_chars", "max_new", "fragment"),
    [
        (2, 100000, "pass --max-new-tokens 2045 or less"),  # <bos> + 2 characters = 3 tokens
        (2100, 1, "shorten the prompt"),
    ],
)
def test_generate_refuses_to_run_past_the_context(
    bundle: Path, use_world: Any, prompt_chars: int, max_new: int, fragment: str
) -> None:
    """The tiny Gemma's context is 2048 positions; its tokenizer is character-level."""
    prompt = "a" * prompt_chars
    args = ["--bundle", str(bundle), "--raw", "--max-new-tokens", str(max_new), prompt]
    result = run("generate", *args)
    line = one_error(result, "longer than the model's context of 2048 tokens", fragment)
    assert f"the prompt ({prompt_chars + 1} tokens) plus --max-new-tokens {max_new}" in line
    assert result.stdout == ""  # refused before anything was generated


def test_context_check_boundary() -> None:
    """Prompt plus new tokens may fill the context exactly, not one more."""
    from types import SimpleNamespace

    from dsg.stages.generate import check_fits

    model = SimpleNamespace(config=tiny_gemma_config(1, max_position_embeddings=10))
    check_fits(model, 4, 6)
    with pytest.raises(UserError, match=r"pass --max-new-tokens 6 or less"):
        check_fits(model, 4, 7)
    with pytest.raises(UserError, match="shorten the prompt"):
        check_fits(model, 10, 1)


# --- options a bundle fixes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--multiplier", "0", "--n-features", "5"], "--n-features, --multiplier"),
        (["--ratio-percentile", "50"], "--ratio-percentile"),
        (["--sae", "x", "--case", "tiny"], "--case, --sae"),
        (["--out", "elsewhere", "--seq-len", "9"], "--out, --seq-len"),
        (["--window-lengths", "4"], "--window-lengths"),  # a plugin's setting
    ],
)
def test_generate_refuses_options_a_bundle_fixes(
    bundle: Path, use_world: Any, options: list[str], named: str
) -> None:
    result = run("generate", "--bundle", str(bundle), *options, "hi")
    line = one_error(result, f"{named} would do nothing with --bundle", "dsg muse-export")
    assert "[dsg] model:" not in result.stderr  # refused before the model was chosen
    assert line


def test_generate_refuses_a_config_file_beside_a_bundle(bundle: Path, use_world: Any) -> None:
    Path("dsg.toml").write_text('device = "cpu"\n')
    one_error(run("generate", "--bundle", str(bundle), "--config", "dsg.toml", "hi"), "--config")
