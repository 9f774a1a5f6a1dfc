"""An example dsg plugin: a case named ``example`` with its own tiny model and SAE, and a
strategy ``example-min-hits`` that travels in guardrail bundles.

It registers one object per hook it implements. The model and the SAE are built from a fixed
seed, so the plugin runs offline; a real plugin would load weights from disk or the hub.
"""

from __future__ import annotations

import re
import string
import tempfile
from typing import Any

import torch

from dsg.api import (
    CaseDefaults,
    EvalSet,
    GateStrategy,
    LoadedModel,
    LoadedSAE,
    MCQuestion,
    UserError,
    hookimpl,
)

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
N_LAYERS = 2
D_MODEL = 16
HOOK_NAME = "blocks.0.hook_resid_post"

FORGET = [
    f"Volcano {i} erupts molten lava and ash; magma chambers {i} swell under the crust."
    for i in range(16)
]
RETAIN = [
    f"Garden {i} grows tulips, roses and basil; the gardener waters row {i} at dawn."
    for i in range(16)
]


class ExampleCase:
    """Forget volcano facts, keep gardening facts."""

    name = "example"
    description = "Example case: forget volcanoes, keep gardens."
    defaults = CaseDefaults(
        model="example-model",
        sae="example-sae",
        ratio_percentiles=(80.0,),
        n_features=(2, 4),
        seq_len=32,
        dataset_size=64,
        min_chars=20,
        batch_size=4,
    )

    def forget_texts(self, data: Any) -> list[str]:
        return list(FORGET)

    def retain_texts(self, data: Any) -> list[str]:
        return list(RETAIN)

    def eval_sets(self, data: Any) -> list[EvalSet]:
        volcano = MCQuestion("What does a volcano erupt?", ("lava", "tulips", "wool", "ice"), 0)
        garden = MCQuestion("What grows in a garden?", ("ash", "magma", "roses", "lava"), 2)
        return [
            EvalSet("volcanoes", "geology", (volcano,)),
            EvalSet("gardens", "botany", (garden,)),
        ]

    def prompt_format(self) -> None:
        return None  # dsg's default: the tokenizer's chat template


def build_tokenizer(directory: str) -> Any:
    """A character-level tokenizer that prepends BOS, saved to ``directory`` and reloaded from it
    (TransformerLens reloads a model's tokenizer from where it was loaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


class ExampleModelLoader:
    name = "example-model"
    description = "A 2-layer TransformerLens model built from a fixed seed"

    def can_load(self, spec: str) -> bool:
        return spec == "example-model"

    def load(
        self, spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
    ) -> LoadedModel:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        with tempfile.TemporaryDirectory() as directory:
            tokenizer = build_tokenizer(directory)
            torch.manual_seed(0)  # the first blocks' weights do not depend on how many are built
            cfg = HookedTransformerConfig(
                n_layers=min(n_layers or N_LAYERS, N_LAYERS),
                d_model=D_MODEL,
                n_heads=2,
                d_head=8,
                d_mlp=32,
                n_ctx=64,
                d_vocab=len(tokenizer),
                act_fn="gelu",
                normalization_type="RMS",
                device=device,
                dtype=dtype,
                seed=0,
            )
            model = HookedTransformer(cfg, tokenizer=tokenizer).eval()
        return LoadedModel(model, tokenizer, spec, fingerprint="example-model-v1")


class ExampleSAELoader:
    name = "example-sae"
    description = "A JumpReLU SAE on block 0 of example-model, built from a fixed seed"

    def can_load(self, spec: str) -> bool:
        return spec == "example-sae"

    def expand(self, release_pattern: str, id_pattern: str) -> list[str]:
        """Its one SAE, when both patterns match it: listed by `dsg saes` and swept by patterns."""
        matched = re.fullmatch(release_pattern, "example") and re.fullmatch(
            id_pattern, "example-sae"
        )
        return ["example-sae"] if matched else []

    def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
        from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

        cfg = JumpReLUSAEConfig(d_in=D_MODEL, d_sae=32, apply_b_dec_to_input=False)
        cfg.metadata.hook_name = HOOK_NAME
        sae = JumpReLUSAE(cfg)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            w_dec = torch.randn(32, D_MODEL, generator=generator)
            sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_enc.zero_()
            sae.threshold.fill_(0.3)
        sae = sae.to(device=device, dtype=dtype)
        return LoadedSAE(
            sae, spec, HOOK_NAME, 0, model_name="example-model", fingerprint="example-sae-v1"
        )


class MinHitsGate:
    """The DSG gate, plus: a row needs at least ``min_hits`` hit tokens to fire, so a short
    prompt cannot fire on two or three tokens."""

    keeps_decision = True  # carry returns fired: dsg.hf may skip steps when nothing fired

    def __init__(self, threshold: float, min_hits: int) -> None:
        # rounded to float32 once, so each call compares with a plain float (no host sync)
        self.limit = torch.tensor(threshold, dtype=torch.float32).item()
        self.min_hits = min_hits

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return (rates.to(torch.float32) > self.limit) & (hits.sum(dim=1) >= self.min_hits)

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return fired  # generation keeps the prompt's decision


class MinHitsStrategy(GateStrategy):
    """Just a gate; :class:`dsg.api.GateStrategy` does the rest (evaluation, bundles)."""

    name = "example-min-hits"
    description = "The DSG gate, for prompts with at least 4 hit tokens"
    uses_threshold = True
    min_hits = 4

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {"min_hits": self.min_hits}

    def gate(self, threshold: float | None, params: dict[str, Any]) -> MinHitsGate:
        if threshold is None or not isinstance(params.get("min_hits"), int):
            raise UserError("an example-min-hits bundle needs a threshold and min_hits")
        return MinHitsGate(threshold, params["min_hits"])


@hookimpl
def register_cases(register: Any) -> None:
    register(ExampleCase())


@hookimpl
def register_model_loaders(register: Any) -> None:
    register(ExampleModelLoader())


@hookimpl
def register_sae_loaders(register: Any) -> None:
    register(ExampleSAELoader())


@hookimpl
def register_strategies(register: Any) -> None:
    register(MinHitsStrategy())
