"""Model and SAE loaders: a local Gemma-2 directory must reproduce Hugging Face's residual stream,
and SAEs must load with their hook point, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_gemma import SLIDING_WINDOW, write_tiny_gemma

from dsg.api.plugins import build_registry
from dsg.core.errors import UserError

ATOL = 1e-4


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma") / "tiny-gemma-2")


@pytest.fixture(scope="module")
def hf_model(gemma_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tl_model(gemma_dir: Path):
    from dsg_transformer_lens.local_dir import load_local_model

    return load_local_model(gemma_dir, device="cpu", dtype=torch.float32)


def batch_tokens(tokenizer) -> torch.Tensor:
    """Two prompts of equal length, three sliding windows long, so no padding is involved."""
    texts = ["The quick brown fox jumps over it.", "Answer: (A) or (B), not C or D!!"]
    rows = [tokenizer(t)["input_ids"][:25] for t in texts]
    assert all(len(r) == 25 for r in rows) and 25 > 3 * SLIDING_WINDOW
    return torch.tensor(rows)


def test_local_gemma_matches_hf_residual_stream_and_logits(hf_model, tl_model) -> None:
    model = tl_model.model
    tokens = batch_tokens(tl_model.tokenizer)
    with torch.no_grad():
        hf_out = hf_model(tokens, output_hidden_states=True)
        logits, cache = model.run_with_cache(tokens)
    hidden = hf_out.hidden_states
    n_layers = model.cfg.n_layers
    assert len(hidden) == n_layers + 1
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], hidden[0], atol=ATOL, rtol=0)
    for layer in range(n_layers - 1):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], atol=ATOL, rtol=0
        )
    # transformers applies the final norm to the last hidden state it returns
    last = cache[f"blocks.{n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(model.ln_final(last), hidden[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, hf_out.logits, atol=ATOL, rtol=0)


def test_local_gemma_config_mirrors_transformer_lens(tl_model) -> None:
    cfg = tl_model.model.cfg
    assert cfg.original_architecture == "Gemma2ForCausalLM"
    assert cfg.attn_types == ["local", "global", "local"]
    assert cfg.window_size == SLIDING_WINDOW and cfg.use_local_attn
    assert cfg.use_normalization_before_and_after and cfg.gated_mlp and cfg.final_rms
    assert cfg.attn_scores_soft_cap == 50.0 and cfg.output_logits_soft_cap == 30.0
    assert cfg.n_key_value_heads == 2 and cfg.act_fn == "gelu_pytorch_tanh"
    assert tl_model.tokenizer.bos_token_id == 2 and tl_model.tokenizer.pad_token_id == 0
    assert tl_model.fingerprint


# config.json of google/gemma-2-2b-it, the fields that shape the network
GEMMA_2_2B_IT = {
    "architectures": ["Gemma2ForCausalLM"],
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2304,
    "initializer_range": 0.02,
    "intermediate_size": 9216,
    "max_position_embeddings": 8192,
    "num_attention_heads": 8,
    "num_hidden_layers": 26,
    "num_key_value_heads": 4,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "vocab_size": 256000,
}


def test_gemma_2_2b_config_equals_transformer_lens_own() -> None:
    from dsg_transformer_lens.local_dir import gemma2_cfg_dict
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    theirs = HookedTransformerConfig.from_dict(convert_hf_model_config("google/gemma-2-2b-it"))
    ours = HookedTransformerConfig.from_dict(gemma2_cfg_dict(GEMMA_2_2B_IT))
    differ = {
        key for key, value in theirs.to_dict().items() if str(value) != str(ours.to_dict()[key])
    }
    assert differ == {"tokenizer_name"}  # set from the directory when loading


def test_local_gemma_first_layers_only(gemma_dir: Path, tl_model) -> None:
    from dsg_transformer_lens.local_dir import load_local_model

    short = load_local_model(gemma_dir, device="cpu", dtype=torch.float32, n_layers=2)
    assert short.model.cfg.n_layers == 2 and len(short.model.blocks) == 2
    tokens = batch_tokens(short.tokenizer)
    hook = "blocks.1.hook_resid_post"
    with torch.no_grad():
        _, full_cache = tl_model.model.run_with_cache(tokens, names_filter=hook)
        _, short_cache = short.model.run_with_cache(tokens, names_filter=hook)
    torch.testing.assert_close(short_cache[hook], full_cache[hook])
    assert short.fingerprint == tl_model.fingerprint


def test_model_loaders_registered_and_chosen_by_spec(gemma_dir: Path, tmp_path: Path) -> None:
    loaders = build_registry().entries["model_loaders"]
    assert loaders["local"].can_load(str(gemma_dir))
    assert not loaders["local"].can_load(str(tmp_path))
    assert loaders["transformer-lens"].can_load("gemma-2-2b-it")
    assert not loaders["transformer-lens"].can_load(str(gemma_dir))


def test_unsupported_local_architecture_is_a_user_error(tmp_path: Path) -> None:
    from dsg_transformer_lens.local_dir import load_local_model

    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    with pytest.raises(UserError, match="BertModel"):
        load_local_model(tmp_path, device="cpu", dtype=torch.float32)


def test_named_model_not_cached_offline_is_one_user_error() -> None:
    from dsg_transformer_lens.named import load_named_model

    with pytest.raises(UserError, match="hf auth login"):
        load_named_model("gemma-2-2b-it", device="cpu", dtype=torch.float32, n_layers=1)


def write_tiny_sae(path: Path, hook_name: str | None = "blocks.1.hook_resid_post") -> Path:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(model_name="tiny-gemma-2")
    if hook_name is not None:
        metadata.hook_name = hook_name
    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=32, d_sae=64, metadata=metadata))
    sae.save_model(path)
    return path


def test_local_sae_round_trip(tmp_path: Path) -> None:
    loader = build_registry().entries["sae_loaders"]["local-sae"]
    path = write_tiny_sae(tmp_path / "sae")
    assert loader.can_load(str(path)) and not loader.can_load(str(tmp_path))
    loaded = loader.load(str(path), device="cpu", dtype=torch.float64)
    assert loaded.hook_name == "blocks.1.hook_resid_post" and loaded.hook_layer == 1
    assert loaded.model_name == "tiny-gemma-2"
    assert loaded.sae.W_enc.dtype == torch.float64 and loaded.sae.cfg.d_sae == 64
    again = loader.load(f"local-sae:{path}", device="cpu", dtype=torch.float32)  # explicit
    assert again.fingerprint == loaded.fingerprint
    write_tiny_sae(path, hook_name="blocks.0.hook_resid_post")
    changed = loader.load(str(path), device="cpu", dtype=torch.float32)
    assert changed.fingerprint != again.fingerprint


def test_local_sae_without_hook_is_a_user_error(tmp_path: Path) -> None:
    from dsg_sae_lens.local_dir import load_sae_dir

    path = write_tiny_sae(tmp_path / "sae", hook_name=None)
    with pytest.raises(UserError, match="hook_name"):
        load_sae_dir(str(path), device="cpu", dtype=torch.float32)


GEMMA_SCOPE = "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142"


def test_pretrained_spec_lookup_is_offline() -> None:
    from dsg_sae_lens.pretrained import entries, split_spec

    assert split_spec(GEMMA_SCOPE) == ("gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_142")
    assert split_spec("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_1") is None
    assert split_spec("no-such-release/layer_3") is None
    loader = build_registry().entries["sae_loaders"]["sae-lens"]
    assert loader.can_load(GEMMA_SCOPE) and not loader.can_load("layer_3")
    (entry,) = entries("gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_142")
    assert entry.model == "gemma-2-2b" and entry.hook_name == "blocks.3.hook_resid_post"
    assert entries("gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_1") == []


def test_pretrained_sae_not_cached_offline_is_one_user_error() -> None:
    loader = build_registry().entries["sae_loaders"]["sae-lens"]
    with pytest.raises(UserError, match="gemma-scope-2b-pt-res.*SAE.save_model"):
        loader.load(GEMMA_SCOPE, device="cpu", dtype=torch.float32)


def test_saes_command_lists_releases_and_ids() -> None:
    from typer.testing import CliRunner

    from dsg.cli.app import app

    runner = CliRunner()
    listing = runner.invoke(app, ["saes"])
    assert listing.exit_code == 0 and "gemma-scope-2b-pt-res\tgemma-2-2b\t" in listing.stdout
    ids = runner.invoke(app, ["saes", "gemma-scope-2b-pt-res"])
    assert f"{GEMMA_SCOPE}\tgemma-2-2b\tblocks.3.hook_resid_post" in ids.stdout.splitlines()
    matched = runner.invoke(
        app,
        [
            "saes",
            "--sae-release-pattern",
            "gemma-scope-2b-pt-res",
            "--sae-id-pattern",
            r"layer_3/width_16k/average_l0_\d+",
        ],
    )
    assert matched.exit_code == 0 and len(matched.stdout.splitlines()) == 5
    assert runner.invoke(app, ["saes", "no-such-release"]).exit_code == 2
    assert runner.invoke(app, ["saes", "--sae-id-pattern", "("]).exit_code == 2


def test_named_model_fingerprint_names_the_cached_commit(tmp_path: Path, monkeypatch) -> None:
    from dsg_transformer_lens.named import hub_fingerprint
    from huggingface_hub import constants

    repo = tmp_path / "models--google--gemma-2-2b-it"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub_fingerprint("google/gemma-2-2b-it") == "hub:google/gemma-2-2b-it@abc123"
    assert hub_fingerprint("google/gemma-2-9b-it") == "hub:google/gemma-2-9b-it@unknown"


def test_session_resolves_local_model_and_sae(gemma_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from dsg.engine.session import Session

    monkeypatch.chdir(tmp_path)
    sae_dir = write_tiny_sae(tmp_path / "sae")
    session = Session.open(
        {"case": "cyber", "model": str(gemma_dir), "sae": f"local-sae:{sae_dir}"},
        reg=build_registry(),
    )
    model, sae = session.checked_pair(n_layers=2)
    assert model.model.cfg.n_layers == 2 and sae.hook_layer == 1
    assert sae.sae.cfg.d_in == model.model.cfg.d_model
