"""dsg plugin: the intervention strategies shipped with dsg.

``dynamic`` is the DSG guardrail (clamp only in sequences whose hit rate exceeds the calibrated
threshold); ``static`` is the paper's always-on clamping baseline; ``windowed`` gates on the
densest window of w tokens instead of the whole sequence, so benign text added to a prompt does
not dilute its decision. They differ only in their gate: the hits, rates and clamp are
:class:`dsg_runtime.guardrail.Guardrail`'s. How each travels in a bundle (its gate) is the
runtime's built-in strategy of the same name, so a bundle reader needs no plugin; this plugin
adds how dsg builds, describes and calibrates them. torch is imported only when a strategy is
built, so listing plugins stays cheap. The windowed strategy's settings (its candidate window
lengths and the length of its calibration stretches) are declared here, through
``register_settings``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.api import Bounds, PluginSetting, Register, UserError, hookimpl
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
        from dsg.api import DynamicClamp

        return DynamicClamp(sae, features, threshold, multiplier)


class StaticStrategy(Static):
    """Static clamping baseline: no gate, so ``threshold`` is ignored."""

    description = "clamp selected features at every token where one fires (no gate)"

    def build(
        self, sae: Any, features: torch.Tensor, threshold: float, multiplier: float
    ) -> Intervention:
        from dsg.api import StaticClamp

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
        from dsg.api import WindowedClamp

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

    def describe_params(self, params: dict[str, Any]) -> str:
        return f" w{params['window']}>{params['window_threshold']:.3g}"


# The commands that build guardrails, and the docs section the window settings are listed in.
CLAMPING = ("evaluate", "muse-export", "generate", "attack")
SELECTION = "Selection and threshold"


def check_calibration_tokens(settings: Any) -> None:
    """A stretch shorter than the rows would silently mean the rows themselves."""
    tokens, seq_len = settings.window_calibration_tokens, settings.seq_len
    if 0 < tokens < seq_len:
        raise UserError(
            f"window_calibration_tokens {tokens} is shorter than the rows of seq_len {seq_len} "
            "tokens that tau_w is calibrated on at the least; pass 0 (the rows themselves) or "
            "the length of the longest prompt the gate will judge, at least seq_len"
        )


@hookimpl
def register_settings(register: Register) -> None:
    register(
        PluginSetting(
            "window_lengths", tuple[int, ...], (8, 16, 24, 32, 48, 64, 96, 128),
            "Candidate window lengths (tokens) of the windowed strategy; the one whose gate "
            "keeps firing on forget text diluted with retain text is chosen "
            "(docs/evaluate.md#the-windowed-strategy).",
            CLAMPING, SELECTION, used_by=("windowed",), bounds=Bounds(0, None, above_minimum=True),
            after="calibration_percentile",
        )
    )  # fmt: skip
    register(
        PluginSetting(
            "window_calibration_tokens", int, 0,
            "Length (tokens) of the retain stretches the windowed strategy's tau_w is "
            "calibrated on: the retain rows laid end to end, a stretch starting every window "
            "length. A longer prompt has more windows, so set it to the longest prompt the gate "
            "will judge; 0: the rows themselves (seq_len). A value from 1 to below seq_len, or "
            "beyond the model's context, is refused.",
            CLAMPING, SELECTION, used_by=("windowed",), bounds=Bounds(0, None),
            within_context=True, after="window_lengths", check=check_calibration_tokens,
        )
    )  # fmt: skip


@hookimpl
def register_strategies(register: Register) -> None:
    register(DynamicStrategy())
    register(StaticStrategy())
    register(WindowedStrategy())
