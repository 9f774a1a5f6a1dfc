"""dsg plugin: the intervention strategies shipped with dsg.

``dynamic`` is the DSG guardrail (clamp only in sequences whose hit rate exceeds the calibrated
threshold); ``static`` is the paper's always-on clamping baseline; ``windowed`` gates on the
densest window of w tokens instead of the whole sequence, so benign text added to a prompt does
not dilute its decision. They differ only in their gate: the hits, rates and clamp are
:class:`dsg_runtime.guardrail.Guardrail`'s. How each travels in a bundle (its gate) is the
runtime's built-in strategy of the same name, so a bundle reader needs no plugin; this plugin
adds how dsg builds, describes and calibrates them. torch is imported only when a strategy is
built, so listing plugins stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.api import Register, UserError, hookimpl
from dsg_runtime.strategies import Dynamic, Static, Windowed

if TYPE_CHECKING:
    import torch

    from dsg.api import CalibrationData, Intervention


class DynamicStrategy(Dynamic):
    """Dynamic SAE Guardrail: a per-sequence gate on the fraction of hit tokens."""

    description = "clamp selected features only in sequences whose hit rate exceeds the threshold"

    def build(
        self, sae: Any, features: torch.Tensor, threshold: float, multiplier: float
    ) -> Intervention:
        from dsg.guardrail import DynamicClamp

        return DynamicClamp(sae, features, threshold, multiplier)


class StaticStrategy(Static):
    """Static clamping baseline: no gate, so ``threshold`` is ignored."""

    description = "clamp selected features at every token where one fires (no gate)"

    def build(
        self, sae: Any, features: torch.Tensor, threshold: float, multiplier: float
    ) -> Intervention:
        from dsg.guardrail import StaticClamp

        return StaticClamp(sae, features, multiplier)


class WindowedStrategy(Windowed):
    """The dynamic gate plus a densest-window gate for rows longer than the window: the window
    length w and its threshold tau_w are calibrated from the corpora
    (:mod:`dsg_strategies.window_calibration`); ``threshold`` is the dynamic alpha."""

    description = (
        "dynamic, and rows longer than w tokens also fire when some w-token window's hit rate "
        "exceeds tau_w (w, tau_w calibrated on the corpora; resists dilution)"
    )
    calibration_settings = ("window_lengths", "window_calibration_tokens")

    def build(
        self,
        sae: Any,
        features: torch.Tensor,
        threshold: float,
        multiplier: float,
        window: int | None = None,
        window_threshold: float | None = None,
    ) -> Intervention:
        from dsg.guardrail import WindowedClamp

        if window is None or window_threshold is None:
            raise UserError(
                "the windowed strategy needs a calibrated window length; run it through dsg "
                "(evaluate, muse-export), which calibrates one"
            )
        return WindowedClamp(
            sae, features, threshold, multiplier, window=window, window_threshold=window_threshold
        )

    def calibrate(self, data: CalibrationData) -> tuple[float, dict[str, Any], dict[str, Any]]:
        from dsg_strategies.window_calibration import calibrate_window

        return calibrate_window(
            data.retain_hits,
            data.forget_hits,
            percentile=data.percentile,
            window_lengths=tuple(data.options["window_lengths"]),
            stretch_tokens=int(data.options.get("window_calibration_tokens", 0)),
        )


@hookimpl
def register_strategies(register: Register) -> None:
    register(DynamicStrategy())
    register(StaticStrategy())
    register(WindowedStrategy())
