"""Range checks shared by dsg's settings, the bundles and the guardrail math, so each range reads
one way and a value is judged the same wherever it enters."""

from __future__ import annotations

import math

import numpy as np

from dsg_runtime.errors import UserError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
_LARGEST = {"float16": float(np.finfo(np.float16).max)}
"""The largest finite value of the model dtypes narrower than float32 in range."""
MAX_MULTIPLIER = 1e6
"""The largest clamp strength m. The clamp adds about m times each selected decoder direction to
the residual; the next normalisation squares it in float32, which overflows past m ~ 1e19 (the
layer then zeroes the residual or turns it NaN), and m = 1e39 is no float32 at all. Residual
norms stay below ~1e4, so a clamp of 1e6 already swamps them and a larger m changes nothing but
that risk."""


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


def check_int64(name: str, value: int) -> int:
    """``value`` if it fits in a signed 64-bit integer, which torch and numpy hold it in."""
    if INT64_MIN <= value <= INT64_MAX:
        return value
    raise UserError(f"{name} {value} does not fit in a 64-bit integer (at most {INT64_MAX:,})")


def check_float32(name: str, value: float) -> float:
    """``value`` if it is a finite number that stays finite cast to float32, the dtype the
    guardrail computes in (1e39 is a finite float64 but an infinite float32)."""
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    if abs(value) > FLOAT32_MAX:
        raise UserError(f"{name} {value:g} does not fit in float32 (at most {FLOAT32_MAX:.4g})")
    return value


def check_not_empty(name: str, value: str) -> str:
    """``value`` unless it is empty: an empty pattern matches everything, an empty name picks a
    default and an empty path is the current directory, none of which the user meant."""
    if value == "":
        raise UserError(f"{name} must not be empty")
    return value


def check_clamp_dtype(multiplier: float, dtype: str) -> float:
    """``multiplier`` if the clamp value -m is finite in ``dtype``, the dtype the residual and
    hence the clamp are computed in (float16 ends at 65504; bfloat16 has float32's range)."""
    largest = _LARGEST.get(dtype)
    if largest is not None and multiplier > largest:
        raise UserError(
            f"multiplier {multiplier:g} overflows {dtype}, whose largest value is {largest:g}; "
            f"pass a smaller --multiplier or another --dtype"
        )
    return multiplier


def check_multiplier(value: float) -> float:
    """``value`` if it is a clamp strength, as ``--multiplier`` takes it: a finite float32 within
    [0, :data:`MAX_MULTIPLIER`]."""
    value = float(value)
    if not math.isfinite(value):
        raise UserError(f"multiplier must be a finite number, got {value}")
    check_bounds("multiplier", value, 0.0, MAX_MULTIPLIER)
    return check_float32("multiplier", value)
