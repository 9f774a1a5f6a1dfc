"""Tiny stand-ins built in the tests: a BPE tokenizer with Gemma's special tokens and chat
template, a small Gemma-2-shaped TransformerLens model, sae_lens SAEs, and a case plugin that
serves them, so every stage runs offline in seconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from dsg_organism.tokenizer import gemma_like, saved_and_reloaded, trained_bpe

from dsg.api.hookspecs import hookimpl
from dsg.api.interfaces import (
    EvalSet,
    LoadedModel,
    LoadedSAE,
    MCQuestion,
)
from dsg.config.values import CaseDefaults
from dsg.engine.session import Session

FORGET_TEXTS = [
    f"The pathogen vex{i} spreads by spores and infects the host quickly near the marsh."
    for i in range(12)
]
RETAIN_TEXTS = [
    f"The city of Orla{i} lies on the river and trades grain, wool and timber every spring."
    for i in range(12)
]


def build_tokenizer(directory: Path, extra_texts: list[str] | None = None) -> Any:
    """The organism's kind of tokenizer (Gemma's special ids: pad 0, eos 1, bos 2), trained on
    the tiny corpora, saved and reloaded from disk (TransformerLens needs one loaded that way)."""
    corpus = (
        FORGET_TEXTS
        + RETAIN_TEXTS
        + (extra_texts or [])
        + ["A B C D A. B. C. D. Answer: ( The following are multiple choice questions"]
    )
    return saved_and_reloaded(gemma_like(trained_bpe(corpus, 400)), directory)


def build_model(tokenizer: Any, *, n_layers: int = 2, d_model: int = 32, seed: int = 0) -> Any:
    """A randomly initialised Gemma-2-shaped HookedTransformer (RMS norms before and after,
    rotary, gated GELU MLP, attention and output softcaps)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=2,
        d_head=d_model // 2,
        d_mlp=2 * d_model,
        n_ctx=512,
        d_vocab=len(tokenizer),
        act_fn="gelu_pytorch_tanh",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=d_model // 2,
        gated_mlp=True,
        final_rms=True,
        use_normalization_before_and_after=True,
        attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0,
        use_attn_scale=True,
        original_architecture="Gemma2ForCausalLM",
        tokenizer_prepends_bos=True,
        default_prepend_bos=True,
        seed=seed,
        device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def build_sae(
    d_in: int,
    d_sae: int,
    *,
    hook_name: str,
    architecture: str = "jumprelu",
    seed: int = 0,
    threshold: float = 0.5,
) -> Any:
    """A sae_lens SAE with random unit-norm decoder rows and a fixed JumpReLU threshold."""
    import sae_lens

    gen = torch.Generator().manual_seed(seed)
    classes = {
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 4}),
    }
    sae_cls, cfg_cls, extra = classes[architecture]
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False, **extra)
    cfg.metadata.hook_name = hook_name
    cfg.metadata.model_name = "tiny"
    sae = sae_cls(cfg)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        if architecture == "jumprelu":
            sae.threshold.fill_(threshold)
    return sae


def tiny_questions(prefix: str, count: int) -> tuple[MCQuestion, ...]:
    return tuple(
        MCQuestion(
            question=f"Which {prefix} number is {i}?",
            choices=(f"{prefix}{i}", f"{prefix}{i + 1}", f"{prefix}{i + 2}", f"{prefix}{i + 3}"),
            answer=i % 4,
        )
        for i in range(count)
    )


class TinyWorld:
    """Everything the tiny case serves, built once per test directory."""

    def __init__(
        self,
        directory: Path,
        *,
        hook_layer: int = 0,
        d_sae: int = 64,
        architecture: str = "jumprelu",
        threshold: float = 0.5,
    ) -> None:
        self.tokenizer = build_tokenizer(directory / "tokenizer")
        self.model = build_model(self.tokenizer)
        hook_name = f"blocks.{hook_layer}.hook_resid_post"
        self.sae = build_sae(
            self.model.cfg.d_model,
            d_sae,
            hook_name=hook_name,
            architecture=architecture,
            threshold=threshold,
        )
        self.hook_name = hook_name
        self.hook_layer = hook_layer


UseWorld = Callable[[TinyWorld], None]
"""The ``use_world`` fixture (conftest.py): serve a TinyWorld through the plugin registry."""


class TinyCase:
    name = "tiny"
    description = "A few sentences and counting questions for tests."
    defaults = CaseDefaults(
        model="tiny-model",
        sae="tiny-sae",
        ratio_percentiles=(50.0,),
        n_features=(2, 4),
        multipliers=(5.0,),
        seq_len=16,
        dataset_size=64,
        batch_size=4,
        min_chars=10,
    )

    def forget_texts(self, data: Any) -> list[str]:
        return list(FORGET_TEXTS)

    def retain_texts(self, data: Any) -> list[str]:
        return list(RETAIN_TEXTS)

    def eval_sets(self, data: Any) -> list[EvalSet]:
        return [
            EvalSet("tiny-target", "pathogens", tiny_questions("vex", 6)),
            EvalSet("tiny-side", "cities", tiny_questions("orla", 6)),
        ]

    def prompt_format(self) -> None:
        return None


class TinyPlugin:
    """A plugin object registering the tiny case and loaders that hand out a TinyWorld."""

    def __init__(self, world: TinyWorld) -> None:
        self.world = world

    @hookimpl
    def register_cases(self, register: Any) -> None:
        register(TinyCase())

    @hookimpl
    def register_model_loaders(self, register: Any) -> None:
        world = self.world

        class Loader:
            name = "tiny-model"
            description = "the tiny test model"

            def can_load(self, spec: str) -> bool:
                return spec == "tiny-model"

            def load(
                self, spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
            ) -> LoadedModel:
                return LoadedModel(world.model, world.tokenizer, spec, fingerprint="tiny-v1")

        register(Loader())

    @hookimpl
    def register_sae_loaders(self, register: Any) -> None:
        world = self.world

        class Loader:
            name = "tiny-sae"
            description = "the tiny test SAE"

            def can_load(self, spec: str) -> bool:
                return spec == "tiny-sae"

            def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
                return LoadedSAE(
                    world.sae,
                    spec,
                    world.hook_name,
                    world.hook_layer,
                    model_name="tiny",
                    fingerprint="tiny-sae-v1",
                )

        register(Loader())


def tiny_registry(world: TinyWorld) -> Any:
    """A registry with the installed plugins plus the tiny one."""
    from dsg.api.plugins import build_registry

    return build_registry(extra_plugins=[("tiny", TinyPlugin(world))])


def open_session(registry: Any, out: Path, **cli: Any) -> Session:
    """A session on the tiny case: every question, one multiplier, ``cli``'s options on top."""
    options = {"case": "tiny", "out": out, "questions": "all", "multipliers": (20.0,), **cli}
    return Session.open(options, reg=registry)
