"""The range checks every value passes through (dsg's settings, bundles, the guardrail math): each
bound on both sides of its edge, and the one line a refused value gets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dsg_runtime.checks import (
    FLOAT32_MAX,
    INT64_MAX,
    INT64_MIN,
    MAX_MULTIPLIER,
    check_bounds,
    check_clamp_dtype,
    check_float32,
    check_int64,
    check_multiplier,
    check_not_empty,
    check_percentile,
)
from dsg_runtime.errors import UserError


def refused(check: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the UserError ``check`` raises."""
    with pytest.raises(UserError) as caught:
        check(*args, **kwargs)
    return str(caught.value)


def test_bounds_are_inclusive_unless_the_minimum_is_excluded() -> None:
    assert check_bounds("x", 0.0, 0.0, 1.0) == 0.0
    assert check_bounds("x", 1.0, 0.0, 1.0) == 1.0
    assert check_bounds("x", 1e-300, 0.0, 1.0, above_minimum=True) == 1e-300
    assert check_bounds("x", -5.0) == -5.0  # no bound: anything
    assert check_bounds("x", -1e300, None, 1.0) == -1e300
    assert check_bounds("x", 1e300, 2.0) == 1e300
    assert refused(check_bounds, "x", 0.0, 0.0, 1.0, above_minimum=True) == (
        "x must be within (0, 1], got 0.0"
    )
    assert refused(check_bounds, "x", -0.5, 0.0, 1.0) == "x must be within [0, 1], got -0.5"
    assert refused(check_bounds, "x", 1.5, 0.0, 1.0) == "x must be within [0, 1], got 1.5"
    assert refused(check_bounds, "x", 2.5, None, 2.0) == "x must be within [-inf, 2], got 2.5"
    assert refused(check_bounds, "x", 2.5, None, 2.0, above_minimum=True) == (
        "x must be within (-inf, 2], got 2.5"
    )


def test_bounds_without_a_maximum_say_what_the_minimum_is() -> None:
    assert refused(check_bounds, "n", 0, 0, above_minimum=True) == "n must be positive, got 0"
    assert refused(check_bounds, "n", 1, 1, above_minimum=True) == "n must be above 1, got 1"
    assert refused(check_bounds, "n", -1, 0) == "n must be at least 0, got -1"
    assert refused(check_bounds, "n", 0.5, 1) == "n must be at least 1, got 0.5"


def test_percentiles_lie_within_0_and_100() -> None:
    assert check_percentile("p", 0) == 0.0 and isinstance(check_percentile("p", 0), float)
    assert check_percentile("p", 100) == 100.0
    assert refused(check_percentile, "p", 100.001) == "p must be within [0, 100], got 100.001"
    assert refused(check_percentile, "p", -1e-9) == "p must be within [0, 100], got -1e-09"


def test_int64_edges() -> None:
    assert (INT64_MIN, INT64_MAX) == (-(2**63), 2**63 - 1)
    assert check_int64("seed", INT64_MAX) == INT64_MAX
    assert check_int64("seed", INT64_MIN) == INT64_MIN
    assert refused(check_int64, "seed", 2**63) == (
        f"seed {2**63} does not fit in a 64-bit integer (at most {INT64_MAX:,})"
    )
    assert "does not fit" in refused(check_int64, "seed", -(2**63) - 1)


def test_float32_edges() -> None:
    assert FLOAT32_MAX == float(np.finfo(np.float32).max)
    assert check_float32("m", FLOAT32_MAX) == FLOAT32_MAX
    assert check_float32("m", -FLOAT32_MAX) == -FLOAT32_MAX
    assert (
        refused(check_float32, "m", 1e39) == "m 1e+39 does not fit in float32 (at most 3.403e+38)"
    )
    assert "does not fit in float32" in refused(check_float32, "m", -1e39)
    assert refused(check_float32, "m", float("inf")) == "m must be a finite number, got inf"
    assert refused(check_float32, "m", float("nan")) == "m must be a finite number, got nan"


def test_empty_strings_are_refused() -> None:
    assert check_not_empty("pattern", "a") == "a"
    assert check_not_empty("pattern", " ") == " "
    assert refused(check_not_empty, "pattern", "") == "pattern must not be empty"


def test_the_clamp_value_must_be_finite_in_the_run_dtype() -> None:
    assert float(np.finfo(np.float16).max) == 65504.0
    assert check_clamp_dtype(65504.0, "float16") == 65504.0
    assert refused(check_clamp_dtype, 65505.0, "float16") == (
        "multiplier 65505 overflows float16, whose largest value is 65504; "
        "pass a smaller --multiplier or another --dtype"
    )
    for dtype in ("bfloat16", "float32", "float64"):
        assert check_clamp_dtype(1e6, dtype) == 1e6


def test_multiplier_range() -> None:
    assert MAX_MULTIPLIER == 1e6
    assert check_multiplier(0) == 0.0 and isinstance(check_multiplier(0), float)
    assert check_multiplier(MAX_MULTIPLIER) == MAX_MULTIPLIER
    assert refused(check_multiplier, 1000000.5) == (
        "multiplier must be within [0, 1e+06], got 1000000.5"
    )
    assert refused(check_multiplier, -0.5) == "multiplier must be within [0, 1e+06], got -0.5"
    assert refused(check_multiplier, float("inf")) == "multiplier must be a finite number, got inf"
    assert refused(check_multiplier, float("nan")) == "multiplier must be a finite number, got nan"
