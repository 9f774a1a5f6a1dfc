"""Guardrail bundles (:mod:`dsg_runtime.bundle`), and cutting one out of a full sae_lens SAE,
which only dsg can do: reading a bundle needs the runtime alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dsg.core.errors import UserError
from dsg_runtime.bundle import (
    CONFIG_FILE,
    DIGEST_FIELD,
    FORMAT,
    FORMAT_VERSION,
    JUMP_THRESHOLD,
    RULES,
    TENSORS_FILE,
    Bundle,
    parse_hook,
)
from dsg_runtime.strategies import DEFAULT_STRATEGY, bundle_strategy

if TYPE_CHECKING:
    import torch

    from dsg.api.interfaces import LoadedModel, LoadedSAE
    from dsg_runtime.binding import ModelBinding
    from dsg_runtime.guardrail import FeatureColumns, TopKFeatures

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "JUMP_THRESHOLD",
    "RULES",
    "TENSORS_FILE",
    "DIGEST_FIELD",
    "Bundle",
    "bundle_strategy",
    "from_sae",
    "model_binding",
    "parse_hook",
]


def from_sae(
    loaded: LoadedSAE,
    features: Any,
    *,
    threshold: float | None,
    multiplier: float,
    strategy: str = DEFAULT_STRATEGY,
    params: dict[str, Any] | None = None,
    base_model: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    strategies: Mapping[str, Any] | None = None,
    binding: ModelBinding | None = None,
) -> Bundle:
    """Cut the bundle of ``features`` (in clamp order) out of a full sae_lens SAE. ``params``:
    the gate's calibrated parameters beyond the threshold (``windowed``: ``{"window": w}``),
    stored in ``strategy_params`` beside what the strategy's ``bundle_params`` adds;
    ``strategies``: the plugin strategies (a registry's, by name) ``strategy`` may be among;
    ``binding``: the record of the model it is calibrated on (:func:`model_binding`)."""
    from dsg.guardrail import column_activation, exact_topk, feature_columns, topk_features
    from dsg_runtime.guardrail import TopKFeatures, feature_index

    sae = loaded.sae
    topk = exact_topk(sae)
    if column_activation(sae) is None and not topk:
        raise UserError(
            f"a {type(sae).__name__} cannot be exported: a bundle reproduces ReLU, JumpReLU and "
            "TopK SAEs exactly, without input normalisation (and TopK without "
            "rescale_acts_by_decoder_norm); dsg evaluate and dsg attack run any SAE whole"
        )
    gate_strategy = bundle_strategy(strategy, strategies)
    threshold = float(threshold) if gate_strategy.uses_threshold and threshold is not None else None
    index = feature_index(features, int(sae.cfg.d_sae))
    selected = topk_features(sae, index) if topk else feature_columns(sae, index)
    return Bundle(
        hook_name=loaded.hook_name,
        features=tuple(int(j) for j in index.tolist()),
        threshold=threshold,
        multiplier=float(multiplier),
        strategy=strategy,
        strategy_params={**gate_strategy.bundle_params(threshold), **(params or {})},
        activation=selected.activation,
        top_k=selected.top_k if isinstance(selected, TopKFeatures) else None,
        apply_b_dec_to_input=bool(sae.cfg.apply_b_dec_to_input),
        d_sae=int(sae.cfg.d_sae),
        tensors=_tensors(selected, sae.b_dec),
        sae={
            "spec": loaded.spec,
            "fingerprint": loaded.fingerprint,
            "architecture": type(sae).__name__,
            "model_name": loaded.model_name,
        },
        base_model=base_model or {},
        provenance=provenance or {},
        strategies=strategies,
        binding=binding,
    )


def model_binding(model: LoadedModel, hook_name: str) -> ModelBinding:
    """The binding record of a TransformerLens model: its residual at ``hook_name`` for the
    runtime's probe, which a transformers copy of the same weights reproduces within the
    tolerance (:mod:`dsg_runtime.binding`)."""
    import torch

    from dsg_runtime.binding import binding_from_activations, probe_ids

    tl = model.model
    layer, _ = parse_hook(hook_name)
    ids = probe_ids(int(tl.cfg.d_vocab))
    tokens = torch.tensor([list(ids)], device=tl.cfg.device)
    with torch.no_grad():
        _, cache = tl.run_with_cache(tokens, names_filter=hook_name, stop_at_layer=layer + 1)
    return binding_from_activations(ids, cache[hook_name][0])


def _tensors(
    selected: FeatureColumns | TopKFeatures, b_dec: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The features' encoder (k columns, or a TopK SAE's whole encoder), their decoder rows and
    the whole decoder bias, as a bundle holds them: float32 on the CPU."""
    from dsg_runtime.guardrail import FeatureColumns

    def plain(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().float().contiguous()

    tensors = {
        "W_enc": plain(selected.w_enc),
        "b_enc": plain(selected.b_enc),
        "W_dec": plain(selected.w_dec),
        "b_dec": plain(b_dec),
    }
    if isinstance(selected, FeatureColumns) and selected.jump is not None:
        tensors[JUMP_THRESHOLD] = plain(selected.jump)
    return tensors
