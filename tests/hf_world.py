"""The tiny Gemma-2 and an SAE whose first features read a made-up forget topic: the world the
tests of the guardrail on transformers models share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from direction_sae import direction_sae
from sae_lens import JumpReLUSAE
from tiny_gemma import write_tiny_gemma

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import from_sae
from dsg.guardrail import DynamicClamp
from dsg_runtime.binding import record_binding

LAYER = 1


HOOK = f"blocks.{LAYER}.hook_resid_post"


FORGET_PROMPTS = [
    "vex zyx quazz pox vexx zyq",
    "the zyx vex quazz spores",
    "pox quazz vexx zyx",
]


RETAIN_PROMPTS = [
    "the old town on the river sells bread and wool",
    "a dear friend reads in the garden",
    "she is at home near the sea",
]


MIXED_PROMPTS = ["vex zyx quazz pox", "the old town and its river mill", "zyq vexx", "a tree"]


def load_hf(directory: Path) -> Any:
    """The tiny Gemma-2 with eager attention on every transformers release (5.9 would pick sdpa
    for it, later releases eager), so the mask tests read the same masks everywhere."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return model, AutoTokenizer.from_pretrained(directory)


def layer_resid(model: Any, tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The unguarded residual after decoder layer LAYER, left-padded, and its attention mask."""
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[LAYER + 1]
    return hidden, enc["attention_mask"].bool()


def topic_sae(model: Any, tokenizer: Any, d_sae: int = 24, k: int = 3) -> JumpReLUSAE:
    """A JumpReLU SAE whose first k features point from retain-like to forget-like residuals, so
    they fire far more often on the forget-like prompts; the other features are random."""
    f_resid, f_mask = layer_resid(model, tokenizer, FORGET_PROMPTS)
    r_resid, r_mask = layer_resid(model, tokenizer, RETAIN_PROMPTS)
    f_mean, r_mean = f_resid[f_mask].mean(0), r_resid[r_mask].mean(0)
    return direction_sae(f_mean, r_mean, d_sae, k, noise=0.2, other_bias=0.0)


def separating_threshold(sae: Any, features: list[int], model: Any, tokenizer: Any) -> float:
    """Alpha halfway between the highest retain-like and the lowest forget-like prompt rate."""

    def rates(texts: list[str]) -> list[float]:
        resid, mask = layer_resid(model, tokenizer, texts)
        probe = DynamicClamp(sae, features, 0.0, 1.0)
        probe(resid, mask)
        return probe.rates.tolist()

    forget, retain = rates(FORGET_PROMPTS), rates(RETAIN_PROMPTS)
    assert max(retain) < min(forget), (retain, forget)
    return (max(retain) + min(forget)) / 2


def write_bundle(
    directory: Path,
    sae: Any,
    features: list[int],
    alpha: float,
    multiplier: float = 30.0,
    hook: str = HOOK,
    model: Any = None,
) -> Path:
    """The bundle, bound to ``model`` (the transformers model it is calibrated on) if given."""
    loaded = LoadedSAE(sae, "topic-sae", hook, int(hook.split(".")[1]), fingerprint="t")
    bundle = from_sae(
        loaded,
        features,
        threshold=alpha,
        multiplier=multiplier,
        base_model={"hf": str(directory.parent / "model")},
        binding=None if model is None else record_binding(model, hook),
    )
    return bundle.save(directory)


def topic_world(root: Path) -> dict[str, Any]:
    """The tiny Gemma under ``root/model``, an SAE whose features 0-2 read the forget topic, the
    threshold that separates the prompts, and their dynamic bundle under ``root/bundle``."""
    model_dir = write_tiny_gemma(root / "model")
    model, tokenizer = load_hf(model_dir)
    sae = topic_sae(model, tokenizer)
    features = [0, 1, 2]
    alpha = separating_threshold(sae, features, model, tokenizer)
    bundle_dir = write_bundle(root / "bundle", sae, features, alpha, model=model)
    return {
        "root": root,
        "model_dir": model_dir,
        "model": model,
        "tokenizer": tokenizer,
        "sae": sae,
        "features": features,
        "alpha": alpha,
        "bundle_dir": bundle_dir,
    }
