"""Range checks shared by the settings and the guardrail math, so each range reads one way."""

from __future__ import annotations

from dsg.errors import UserError


def check_bounds(
    name: str,
    value: float,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above_minimum: bool = False,
) -> float:
    """``value`` if it lies within the bounds (``above_minimum`` excludes the minimum itself)."""
    low_ok = minimum is None or (value > minimum if above_minimum else value >= minimum)
    if low_ok and (maximum is None or value <= maximum):
        return value
    if maximum is None and minimum == 0 and above_minimum:
        raise UserError(f"{name} must be positive, got {value}")
    if maximum is None:
        raise UserError(
            f"{name} must be {'above' if above_minimum else 'at least'} {minimum:g}, got {value}"
        )
    low = "-inf" if minimum is None else f"{minimum:g}"
    raise UserError(
        f"{name} must be within {'(' if above_minimum else '['}{low}, {maximum:g}], got {value}"
    )


def check_percentile(name: str, value: float) -> float:
    """``value`` as a float if it is a percentile, within [0, 100]."""
    return check_bounds(name, float(value), 0.0, 100.0)
