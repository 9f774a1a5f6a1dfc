"""The SAE shipped for SmolLM2-135M-Instruct: listed, loaded by name, and reading the model's
residual stream at its hook (not another layer's), as its recorded metrics say."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from dsg_smollm2 import SAE_DIR, SAE_NAME, shipped_hook
from typer.testing import CliRunner

from dsg.cli.app import app

TEXT = [
    "The heart pumps blood through arteries and veins to every organ of the body.",
    "A river delta forms where a river meets the sea and drops the sand it carries.",
    "Seeds sprout when water softens their coat and the young root pushes into the soil.",
    "The committee met on Tuesday to vote on the new budget for the city library.",
    "Honey bees carry pollen between flowers, and the flowers make fruit and seeds.",
    "She tuned the violin, opened the score and played the first movement from memory.",
]


def test_dsg_saes_lists_the_shipped_sae() -> None:
    runner = CliRunner()
    listing = runner.invoke(app, ["saes"])
    assert listing.exit_code == 0 and f"smollm2:{SAE_NAME}" in listing.stdout.splitlines()
    hook = shipped_hook()
    pattern = ["saes", "--sae-release-pattern", "smollm2.*", "--sae-id-pattern", hook]
    assert runner.invoke(app, pattern).stdout.splitlines() == [f"smollm2:{SAE_NAME}"]
    other = ["saes", "--sae-release-pattern", "smollm2.*", "--sae-id-pattern", "blocks.0.*"]
    assert runner.invoke(app, other).exit_code == 2  # nothing matches: one line, exit code 2


def test_the_recorded_metrics_meet_the_shipped_sae_targets() -> None:
    """The shipped folder's own record: what docs/real-model.md reports is what was trained."""
    metrics = json.loads((SAE_DIR / "metrics.json").read_text())
    info = json.loads((SAE_DIR / "build-info.json").read_text())
    assert metrics["hook"] == shipped_hook() == info["options"]["sae_hook"]
    assert metrics["width"] >= 4096 and metrics["distinct_training_tokens"] >= 2_000_000
    assert metrics["held_out"]["fvu"] <= 0.2 and metrics["held_out"]["dead_fraction"] < 0.05


@pytest.fixture(scope="module")
def shipped(smollm2_folder: Path) -> dict[str, Any]:
    from dsg.api.plugins import registry
    from dsg.engine.loader import load_causal_lm

    sae = registry().get("sae_loaders", "smollm2").load(SAE_NAME, device="cpu", dtype=torch.float32)
    hf = load_causal_lm(str(smollm2_folder), device="cpu", dtype=torch.float32)
    from transformers import AutoTokenizer

    return {"sae": sae, "hf": hf, "tokenizer": AutoTokenizer.from_pretrained(smollm2_folder)}


def resid_after(shipped: dict[str, Any], layer: int) -> torch.Tensor:
    """The residual after decoder layer ``layer`` at every position but the BOS, stacked."""
    out = []
    with torch.no_grad():
        for text in TEXT:
            ids = [shipped["tokenizer"].bos_token_id, *shipped["tokenizer"](text)["input_ids"]]
            hidden = shipped["hf"](torch.tensor([ids]), output_hidden_states=True).hidden_states
            out.append(hidden[layer + 1][0, 1:])
    return torch.cat(out)


def fvu(sae: Any, x: torch.Tensor) -> float:
    with torch.no_grad():
        error = (sae.decode(sae.encode(x)) - x).pow(2).sum()
    return float(error / (x - x.mean(0)).pow(2).sum())


def test_the_shipped_sae_reconstructs_smollm2_at_its_hook(shipped: dict[str, Any]) -> None:
    loaded = shipped["sae"]
    weights = (SAE_DIR / "sae_weights.safetensors").read_bytes()
    assert loaded.fingerprint == hashlib.sha256(weights).hexdigest()
    assert loaded.model_name == "smollm2-135m-instruct" and loaded.hook_name == shipped_hook()
    assert loaded.hook_name.endswith("hook_resid_post")
    layer = loaded.hook_layer
    x = resid_after(shipped, layer)
    codes = loaded.sae.encode(x)
    metrics = json.loads((SAE_DIR / "metrics.json").read_text())
    assert ((codes > 0).sum(-1) <= metrics["k"]).all()  # TopK: at most k latents per token
    recorded = metrics["held_out"]["fvu"]
    # Prose rather than the glosses it was trained on, so some slack; another layer's residual
    # (same model, same text) is far off, so the bound tells the hook apart.
    assert fvu(loaded.sae, x) <= recorded + 0.15
    assert fvu(loaded.sae, resid_after(shipped, layer + 8)) > 0.6
