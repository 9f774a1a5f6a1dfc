"""Dynamic SAE Guardrails.

The guardrail math is the public API (see docs/api.md). It is imported lazily so that importing
``dsg`` (and running ``dsg --help``) does not pay for torch.
"""

from __future__ import annotations

from typing import Any

from dsg.api.hookspecs import hookimpl

__version__ = "0.1.0"

_GUARDRAIL_API = (
    "select_features",
    "sequence_rates",
    "window_rates",
    "calibrate_threshold",
    "DynamicClamp",
    "WindowedClamp",
    "StaticClamp",
    "GateStrategy",
    "Guardrail",
    "ThresholdGate",
    "WindowGate",
    "AnyHitGate",
    "FeatureColumns",
    "TopKFeatures",
    "sae_features",
    "feature_activations",
    "token_hits",
)

__all__ = ["hookimpl", "__version__", *_GUARDRAIL_API]


def __getattr__(name: str) -> Any:
    if name in _GUARDRAIL_API:
        import dsg_runtime.guardrail as math
        from dsg import guardrail

        return getattr(guardrail if name in guardrail.__all__ else math, name)
    raise AttributeError(f"module 'dsg' has no attribute {name!r}")
