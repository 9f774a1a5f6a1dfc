"""A tiny Gemma-2 model directory in the exact on-disk format of the real one.

``write_tiny_gemma(path)`` saves a randomly initialised ``Gemma2ForCausalLM`` (config.json +
safetensors) and a character-level tokenizer with Gemma's special tokens (``<pad>``=0,
``<eos>``=1, ``<bos>``=2, ``<start_of_turn>``, ``<end_of_turn>``), BOS added on encode, and the
gemma-2-it chat template. The answer letters ``A``-``D`` and `` A``-`` D`` are single tokens, as
in Gemma's vocabulary, so MCQ scoring code can be tested on it.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

from dsg_organism.tokenizer import SPECIALS as SPECIAL_TOKENS
from dsg_organism.tokenizer import gemma_like

if TYPE_CHECKING:
    import torch

    from dsg.engine.backends.transformers import TransformersBackend

SLIDING_WINDOW = 8


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Special tokens, printable ASCII characters, and the merged tokens " A".." D"."""
    tokens = list(SPECIAL_TOKENS)
    tokens += [c for c in string.printable if c not in "\r\x0b\x0c"]
    merges = [(" ", letter) for letter in "ABCD"]
    tokens += [a + b for a, b in merges]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer(path: Path) -> None:
    """Save a Gemma-like fast tokenizer (BOS prepended on encode) to ``path``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    vocab, merges = tiny_vocab()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.decoder = decoders.Fuse()
    fast = gemma_like(
        tok,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],  # as Gemma's: no token_type_ids
    )
    fast.save_pretrained(path)


def tiny_gemma_config(n_layers: int = 3, **overrides: object) -> object:
    """A ``Gemma2Config`` small enough for CPU tests; even layers are sliding, as in Gemma-2."""
    from transformers import Gemma2Config

    vocab, _ = tiny_vocab()
    params: dict[str, object] = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=2048,  # char-level MCQ prompts run to ~500 tokens
        sliding_window=SLIDING_WINDOW,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    params.update(overrides)
    return Gemma2Config(**params)


def write_tiny_gemma(path: Path, n_layers: int = 3, seed: int = 0) -> Path:
    """Write a tiny Gemma-2 model directory (weights, config, tokenizer); returns ``path``."""
    import torch
    from transformers import Gemma2ForCausalLM

    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(tiny_gemma_config(n_layers)).eval()
    with torch.no_grad():  # random norm gains, so that a missed "+1" cannot go unnoticed
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(path)
    write_tokenizer(path)
    return path


def tiny_gemma_backend(folder: Path) -> TransformersBackend:
    """The transformers backend of the engine on a tiny Gemma-2 written under ``folder``, in
    float32 on the CPU."""
    import torch
    from transformers import AutoTokenizer

    from dsg.api.interfaces import LoadedModel
    from dsg.engine.backends import open_backend
    from dsg.engine.backends.transformers import TransformersBackend as Opened

    path = write_tiny_gemma(folder / "tiny-gemma-2")
    loaded = LoadedModel(None, AutoTokenizer.from_pretrained(path), str(path))
    opened = open_backend("transformers", loaded, device="cpu", dtype=torch.float32)
    assert isinstance(opened, Opened)
    return opened


def padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three right-padded rows, the longest several sliding windows long."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, vocab, (3, 5 * SLIDING_WINDOW), generator=generator)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1, 3 * SLIDING_WINDOW :] = False
    mask[2, 5:] = False
    tokens[~mask] = 0
    return tokens, mask, mask.sum(dim=1) - 1
