"""dsg-runtime: the Dynamic SAE Guardrail at inference, on a plain transformers causal LM.

``Bundle.load(path)`` reads a guardrail bundle (written by ``dsg muse-export``) and
``attach(model, bundle)`` hooks it into the model; see docs/hf.md. The names below are imported
lazily, so importing the package does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Bundle": "dsg_runtime.bundle",
    "attach": "dsg_runtime.hf",
    "GuardrailHandle": "dsg_runtime.hf",
    "GuardrailStateError": "dsg_runtime.hf",
    "Guardrail": "dsg_runtime.guardrail",
    "UserError": "dsg_runtime.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dsg_runtime' has no attribute {name!r}")
