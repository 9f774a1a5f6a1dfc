"""dsg plugin: model loaders for TransformerLens.

``local`` reads a transformers model directory (a Gemma-2 or Llama checkpoint: fine-tuned,
offline or converted);
``transformer-lens`` loads any model TransformerLens knows by name (``gemma-2-2b-it``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsg.api import LoadedModel, Register, hookimpl
from dsg_transformer_lens.local_dir import is_model_dir, load_local_model
from dsg_transformer_lens.named import load_named_model, official_name

if TYPE_CHECKING:
    import torch


class LocalDirLoader:
    name = "local"
    description = "A transformers model directory (config.json + safetensors + tokenizer)"

    def can_load(self, spec: str) -> bool:
        spec = spec.removeprefix(f"{self.name}:")
        return is_model_dir(spec)

    def load(
        self, spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
    ) -> LoadedModel:
        spec = spec.removeprefix(f"{self.name}:")  # an explicit LOADER: prefix
        return load_local_model(spec, device=device, dtype=dtype, n_layers=n_layers)


class NamedModelLoader:
    name = "transformer-lens"
    description = "A model TransformerLens knows by name, from the Hugging Face hub or its cache"

    def can_load(self, spec: str) -> bool:
        spec = spec.removeprefix(f"{self.name}:")
        return official_name(spec) is not None

    def load(
        self, spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
    ) -> LoadedModel:
        spec = spec.removeprefix(f"{self.name}:")  # an explicit LOADER: prefix
        return load_named_model(spec, device=device, dtype=dtype, n_layers=n_layers)


@hookimpl
def register_model_loaders(register: Register) -> None:
    register(LocalDirLoader())
    register(NamedModelLoader())
