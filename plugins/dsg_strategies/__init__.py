"""dsg plugin: the intervention strategies shipped with dsg.

``dynamic`` is the DSG guardrail (clamp only in sequences whose hit rate exceeds the calibrated
threshold); ``static`` is the paper's always-on clamping baseline; ``windowed`` gates on the
densest window of w tokens instead of the whole sequence, so benign text added to a prompt does
not dilute its decision. They differ only in their gate: the hits, rates and clamp are
:class:`dsg.guardrail.Guardrail`'s. torch is imported only when a
strategy is built, so listing plugins stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.api import Register, hookimpl

if TYPE_CHECKING:
    import torch

    from dsg.api import CalibrationData, Gate, Intervention


class DynamicStrategy:
    """Dynamic SAE Guardrail: a per-sequence gate on the fraction of hit tokens."""

    name = "dynamic"
    description = "clamp selected features only in sequences whose hit rate exceeds the threshold"
    uses_threshold = True

    def build(
        self, sae: Any, features: torch.Tensor, threshold: float, multiplier: float
    ) -> Intervention:
        from dsg.guardrail import DynamicClamp

        return DynamicClamp(sae, features, threshold, multiplier)

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {}

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        from dsg.errors import UserError
        from dsg.guardrail import ThresholdGate

        _no_params(self.name, params)
        if threshold is None:
            raise UserError("a dynamic bundle needs a threshold; export it again")
        return ThresholdGate(threshold)


class StaticStrategy:
    """Static clamping baseline: no gate, so ``threshold`` is ignored."""

    name = "static"
    description = "clamp selected features at every token where one fires (no gate)"
    uses_threshold = False

    def build(
        self, sae: Any, features: torch.Tensor, threshold: float, multiplier: float
    ) -> Intervention:
        from dsg.guardrail import StaticClamp

        return StaticClamp(sae, features, multiplier)

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {}

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        from dsg.guardrail import AnyHitGate

        _no_params(self.name, params)
        return AnyHitGate()


class WindowedStrategy:
    """The dynamic gate plus a densest-window gate for rows longer than the window: the window
    length w and its threshold tau_w are calibrated from the corpora
    (:mod:`dsg.window_calibration`); ``threshold`` is the dynamic alpha."""

    name = "windowed"
    description = (
        "dynamic, and rows longer than w tokens also fire when some w-token window's hit rate "
        "exceeds tau_w (w, tau_w calibrated on the corpora; resists dilution)"
    )
    uses_threshold = True
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
            raise _no_window()
        return WindowedClamp(
            sae, features, threshold, multiplier, window=window, window_threshold=window_threshold
        )

    def calibrate(self, data: CalibrationData) -> tuple[float, dict[str, Any], dict[str, Any]]:
        from dsg.window_calibration import calibrate_window

        return calibrate_window(
            data.retain_hits,
            data.forget_hits,
            percentile=data.percentile,
            window_lengths=tuple(data.options["window_lengths"]),
            stretch_tokens=int(data.options.get("window_calibration_tokens", 0)),
        )

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {}  # the window and its threshold are calibrated, added by the exporter

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        from dsg.errors import UserError
        from dsg.guardrail import WindowGate

        if threshold is None:
            raise UserError("a windowed bundle needs a threshold; export it again")
        if "window" not in params or "window_threshold" not in params:
            raise _no_window()
        _no_params(self.name, params, WINDOW_PARAMS)
        return WindowGate(params["window"], float(params["window_threshold"]), threshold)


WINDOW_PARAMS = ("window", "window_threshold")


def _no_window() -> Exception:
    from dsg.errors import UserError

    return UserError(
        "the windowed strategy needs a calibrated window length; run it through dsg "
        "(evaluate, muse-export), which calibrates one"
    )


def _no_params(strategy: str, params: dict[str, Any], known: tuple[str, ...] = ()) -> None:
    """A bundle whose strategy_params hold more than the strategy's gate reads was made for
    another gate."""
    from dsg.errors import UserError

    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = f"strategy_params {', '.join(known)}" if known else "no strategy_params"
        raise UserError(f"strategy {strategy!r} takes {takes}, got {sorted(params)}")


@hookimpl
def register_strategies(register: Register) -> None:
    register(DynamicStrategy())
    register(StaticStrategy())
    register(WindowedStrategy())
