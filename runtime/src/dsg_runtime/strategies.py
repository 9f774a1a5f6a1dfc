"""How a bundle's strategy becomes its gate, without any plugin registry.

The built-in strategies (``dynamic``, ``static``, ``windowed``) resolve here, so attaching one of
their bundles loads nothing else. A plugin's strategy resolves through the strategies its caller
passes in (dsg passes its session's registry); a bundle whose strategy is neither is refused,
never run with another gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsg_runtime.errors import UserError
from dsg_runtime.protocols import BundleStrategy, Gate

WINDOW_PARAMS = ("window", "window_threshold")


class _Stateless:
    """A built-in strategy whose gate stores nothing beyond the threshold."""

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {}


class Dynamic(_Stateless):
    """The DSG gate: a row fires when its hit rate exceeds the threshold."""

    name = "dynamic"
    uses_threshold = True

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        from dsg_runtime.guardrail import ThresholdGate

        no_params(self.name, params)
        return ThresholdGate(_threshold(self.name, threshold))

    def describe_decision(
        self, fired: bool, rate: float, threshold: float | None, params: dict[str, Any]
    ) -> str:
        threshold = threshold or 0.0
        if fired:
            return f"guardrail fired: prompt hit rate {rate:.4f} > threshold {threshold:.4f}"
        return f"guardrail did not fire: prompt hit rate {rate:.4f} <= threshold {threshold:.4f}"


class Static(_Stateless):
    """No gate: every row with a hit is clamped."""

    name = "static"
    uses_threshold = False

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        from dsg_runtime.guardrail import AnyHitGate

        no_params(self.name, params)
        return AnyHitGate()

    def describe_decision(
        self, fired: bool, rate: float, threshold: float | None, params: dict[str, Any]
    ) -> str:
        return f"guardrail {_verdict(fired)} (static; prompt hit rate {rate:.4f})"


class Windowed:
    """The dynamic gate, plus the densest window of ``window`` tokens against
    ``window_threshold`` for rows longer than the window."""

    name = "windowed"
    uses_threshold = True

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {}  # the window and its threshold are calibrated, added by the exporter

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        from dsg_runtime.guardrail import WindowGate

        threshold = _threshold(self.name, threshold)
        if any(name not in params for name in WINDOW_PARAMS):
            raise UserError(
                "a windowed bundle needs a calibrated window: strategy_params window and "
                "window_threshold"
            )
        no_params(self.name, params, WINDOW_PARAMS)
        window_threshold = params["window_threshold"]
        if isinstance(window_threshold, bool) or not isinstance(window_threshold, int | float):
            raise UserError(
                f"strategy_params window_threshold must be a number, not "
                f"{type(window_threshold).__name__} {str(window_threshold)[:40]!r}; export the "
                "bundle again"
            )
        return WindowGate(params["window"], float(window_threshold), threshold)

    def describe_decision(
        self, fired: bool, rate: float, threshold: float | None, params: dict[str, Any]
    ) -> str:
        tau = float(params["window_threshold"])
        return (
            f"guardrail {_verdict(fired)} (windowed: prompt hit rate {rate:.4f} against threshold "
            f"{threshold or 0.0:.4f}, or a {params['window']}-token window's rate against "
            f"{tau:.4f})"
        )


BUILT_IN: dict[str, BundleStrategy] = {s.name: s for s in (Dynamic(), Static(), Windowed())}
"""The strategies every bundle reader knows."""

DEFAULT_STRATEGY = Dynamic.name
"""The strategy of a bundle made without one being named (``muse-export``, ``generate``)."""


def _verdict(fired: bool) -> str:
    return "fired" if fired else "did not fire"


def _threshold(strategy: str, threshold: float | None) -> float:
    if threshold is None:
        raise UserError(f"a {strategy} bundle needs a threshold; export it again")
    return threshold


def no_params(strategy: str, params: dict[str, Any], known: tuple[str, ...] = ()) -> None:
    """A bundle whose strategy_params hold more than the strategy's gate reads was made for
    another gate."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = f"strategy_params {', '.join(known)}" if known else "no strategy_params"
        raise UserError(f"strategy {strategy!r} takes {takes}, got {sorted(params)}")


def bundle_strategy(name: str, strategies: Mapping[str, Any] | None = None) -> BundleStrategy:
    """The strategy ``name``: one of ``strategies`` (a plugin registry's, by name) or else a
    built-in one, if it says how it travels in a bundle."""
    known = {**BUILT_IN, **(strategies or {})}
    if name not in known:
        plugins = sorted(set(strategies or {}) - set(BUILT_IN))
        raise UserError(
            f"strategy {name!r} is not installed (built in: {', '.join(sorted(BUILT_IN))}; "
            f"from plugins: {', '.join(plugins) or 'none passed in'}); install the plugin that "
            "provides it and pass its strategies"
        )
    strategy = known[name]
    if not isinstance(strategy, BundleStrategy):
        raise UserError(
            f"strategy {name!r} cannot be exported to a bundle: its plugin defines no "
            "bundle_params/bundle_gate (see docs/plugins.md)"
        )
    return strategy
