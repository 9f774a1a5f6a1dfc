"""A local Hugging Face model directory as a TransformerLens model.

TransformerLens recognises models by their hub name, so a local directory (a fine-tuned
checkpoint, an offline copy, a converted GGUF) cannot go through ``from_pretrained``; Gemma-2 and
Llama directories are read here. This module builds the same
``HookedTransformerConfig`` TransformerLens uses for the architecture from the directory's
``config.json`` and converts the weights with TransformerLens's own converter, without any weight
processing (as ``from_pretrained_no_processing``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.api import (
    LoadedModel,
    UserError,
    no_progress_bars,
    one_line_reason,
    parse_json,
    refuse_custom_code,
    unreadable_file_errors,
)

if TYPE_CHECKING:
    import torch

WEIGHT_PATTERNS = ("*.safetensors",)


def is_model_dir(spec: str) -> bool:
    """True for an existing directory holding a ``config.json``."""
    return (Path(spec) / "config.json").is_file()


def _layer_types(hf: dict[str, Any]) -> list[str]:
    """``local``/``global`` per layer; HF makes even Gemma-2 layers sliding."""
    n = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)
    ]
    return ["local" if t == "sliding_attention" else "global" for t in layer_types]


def _rope_theta(hf: dict[str, Any]) -> float:
    if "rope_theta" in hf:
        return float(hf["rope_theta"])
    return float((hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))


def _head_dim(hf: dict[str, Any]) -> int:
    return int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])


def _shape(hf: dict[str, Any]) -> dict[str, Any]:
    """The ``cfg_dict`` entries every decoder shares: sizes, depth, context, norm epsilon."""
    return {
        "d_model": hf["hidden_size"],
        "d_head": _head_dim(hf),
        "n_heads": hf["num_attention_heads"],
        "d_mlp": hf["intermediate_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_ctx": hf["max_position_embeddings"],
        "eps": hf["rms_norm_eps"],
        "d_vocab": hf["vocab_size"],
    }


def gemma2_cfg_dict(hf: dict[str, Any]) -> dict[str, Any]:
    """TransformerLens's gemma-2 ``cfg_dict``, read from an HF ``Gemma2Config`` dict."""
    d_head = _head_dim(hf)
    return {
        **_shape(hf),
        "act_fn": hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh",
        "initializer_range": hf.get("initializer_range", 0.02),
        "normalization_type": "RMS",
        "rotary_base": _rope_theta(hf),
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": float(hf.get("query_pre_attn_scalar", d_head)) ** 0.5,
        "n_key_value_heads": hf["num_key_value_heads"],
        "window_size": hf["sliding_window"],
        "use_local_attn": True,
        "attn_types": _layer_types(hf),
        "attn_scores_soft_cap": hf.get("attn_logit_softcapping") or -1.0,
        "output_logits_soft_cap": hf.get("final_logit_softcapping") or -1.0,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM",
    }


def llama_cfg_dict(hf: dict[str, Any]) -> dict[str, Any]:
    """TransformerLens's Llama ``cfg_dict``, read from an HF ``LlamaConfig`` dict. Rotary
    scaling (Llama 3.1's) is refused rather than run unscaled; no attention bias, no softcap."""
    scaling = hf.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    kind = (hf.get("rope_parameters") or {}).get("rope_type", kind)
    if kind != "default" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise UserError(
            f"the local loader converts plain Llama models, not this variant (rope type {kind}, "
            f"attention bias {hf.get('attention_bias')}, mlp bias {hf.get('mlp_bias')}); "
            "pass a model TransformerLens knows by name"
        )
    n_kv = hf.get("num_key_value_heads") or hf["num_attention_heads"]
    return {
        **_shape(hf),
        "act_fn": hf.get("hidden_act", "silu"),
        "initializer_range": hf.get("initializer_range", 0.02),
        "n_key_value_heads": n_kv if n_kv != hf["num_attention_heads"] else None,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": _head_dim(hf),
        "rotary_base": _rope_theta(hf),
        "final_rms": True,
        "gated_mlp": True,
        "original_architecture": "LlamaForCausalLM",
    }


CONFIG_BUILDERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "Gemma2ForCausalLM": gemma2_cfg_dict,
    "LlamaForCausalLM": llama_cfg_dict,
}


def convert_weights(architecture: str, hf_model: Any, cfg: Any) -> dict[str, Any]:
    """TransformerLens's own converter for the architecture (no weight processing after it)."""
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    converters = {
        "Gemma2ForCausalLM": convert_gemma_weights,
        "LlamaForCausalLM": convert_llama_weights,
    }
    return converters[architecture](hf_model, cfg)


def fingerprint_dir(path: Path) -> str:
    """A sha256 over config.json and every weight file, so a changed checkpoint is a new input."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for pattern in WEIGHT_PATTERNS:
        for weights in sorted(path.glob(pattern)):
            digest.update(weights.name.encode())
            with weights.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def read_hf_config(path: Path) -> tuple[str, dict[str, Any]]:
    """The architecture name and the raw config dict, or a UserError if unsupported."""
    hf = parse_json((path / "config.json").read_text(encoding="utf-8"))
    architecture = (hf.get("architectures") or ["?"])[0]
    if architecture not in CONFIG_BUILDERS:
        raise UserError(
            f"model directory {path} holds a {architecture}; the local loader supports "
            f"{', '.join(sorted(CONFIG_BUILDERS))}. Pass a TransformerLens model name instead"
        )
    return architecture, hf


def load_local_model(
    path: str | Path, *, device: str, dtype: torch.dtype, n_layers: int | None = None
) -> LoadedModel:
    """A transformers model directory as a HookedTransformer (only ``n_layers`` blocks if set)."""
    from transformer_lens import HookedTransformer

    path = Path(path)
    if not is_model_dir(str(path)):
        raise UserError(f"{path} is not a model directory (no config.json)")
    refuse_custom_code(path)
    architecture, total_layers, hf_config, cfg = _tl_config(path, device, dtype, n_layers)
    # Only the blocks the TL model has are read from disk: transformers skips the others.
    if cfg.n_layers < total_layers:
        hf_config.num_hidden_layers = cfg.n_layers
        if getattr(hf_config, "layer_types", None):
            hf_config.layer_types = hf_config.layer_types[: cfg.n_layers]
    hf_model, tokenizer = _read_weights(path, hf_config, dtype)
    state_dict = convert_weights(architecture, hf_model, cfg)
    del hf_model

    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=model.tokenizer,
        spec=str(path),
        fingerprint=fingerprint_dir(path),
        extra={
            "architecture": architecture,
            "n_layers_total": total_layers,
            "hf_model": str(path.resolve()),
        },  # what transformers loads (muse-export, generate)
    )


def _tl_config(
    path: Path, device: str, dtype: torch.dtype, n_layers: int | None
) -> tuple[str, int, Any, Any]:
    """The architecture, its number of blocks, transformers' config (checked field by field) and
    the TransformerLens config of the first ``n_layers`` blocks; a bad config.json is one line."""
    from transformer_lens import HookedTransformerConfig
    from transformers import AutoConfig

    # TypeError: a value of a wrong type
    bad_config: tuple[type[Exception], ...] = (*unreadable_file_errors(), TypeError)
    try:
        architecture, hf = read_hf_config(path)
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        cfg_dict = CONFIG_BUILDERS[architecture](hf)
        total_layers = cfg_dict["n_layers"]
        if n_layers is not None:
            cfg_dict["n_layers"] = min(n_layers, total_layers)
            if "attn_types" in cfg_dict:
                cfg_dict["attn_types"] = cfg_dict["attn_types"][: cfg_dict["n_layers"]]
        cfg = HookedTransformerConfig.from_dict(
            {
                **cfg_dict,
                "model_name": path.name,
                "tokenizer_name": str(path),
                "dtype": dtype,
                "device": device,
                "init_weights": False,
                "default_prepend_bos": True,
            }
        )
    except bad_config as exc:
        raise UserError(
            f"{path / 'config.json'} is not a valid model config "
            f"({type(exc).__name__}: {one_line_reason(exc)})"
        ) from None
    return architecture, total_layers, hf_config, cfg


def _read_weights(path: Path, hf_config: Any, dtype: torch.dtype) -> tuple[Any, Any]:
    """The transformers model (as ``hf_config`` says) and tokenizer in ``path``; weights that do
    not fit or unreadable files are one line that says to copy them again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with no_progress_bars():
            hf_model = AutoModelForCausalLM.from_pretrained(
                path, config=hf_config, dtype=dtype, trust_remote_code=False
            )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except RuntimeError as exc:  # transformers: weights whose shapes differ from config.json
        raise UserError(
            f"the weights in model directory {path} do not fit its config.json (another "
            f"model's weights or config?): {type(exc).__name__}; copy the matching files again"
        ) from None
    except unreadable_file_errors() as exc:
        reason = one_line_reason(exc)
        raise UserError(
            f"could not read model directory {path} ({reason}); its files are corrupted or "
            "incomplete: copy or download them again"
        ) from None
    return hf_model, tokenizer
