"""The guardrail math against the spec's toy numbers, hand computations and an independent
re-implementation of the reference hook."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from sae_lens import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
)
from saes import random_sae

import dsg
from dsg.core.errors import UserError
from dsg.guardrail import DynamicClamp, StaticClamp, WindowedClamp, feature_activations
from dsg_runtime.guardrail import (
    ThresholdGate,
    WindowGate,
    calibrate_threshold,
    countable_positions,
    encode_columns,
    encode_topk,
    feature_index,
    rate_gate,
    select_features,
    sequence_rates,
    token_hits,
    window_rates,
)

torch.set_num_threads(1)

# --------------------------------------------------------------------------- helpers


@torch.no_grad()
def reference_hook(sae: Any, x: torch.Tensor, features: list[int], m: float, alpha: float):
    """The reference hook (reference algorithm: The intervention), written independently:
    encode, zero position 0, hit, rate over the full length, clamp all selected features, decode
    plus the error term."""
    a = sae.encode(x)
    a[:, 0, :] = 0
    err = x - sae.decode(a)
    hit = (a[:, :, features] > 0).any(dim=-1)
    rate = hit.sum(dim=1) / x.shape[1]
    fire = rate > alpha
    a_mod = a.clone()
    where = fire[:, None] & hit
    for b, t in where.nonzero().tolist():
        a_mod[b, t, features] = -m
    return sae.decode(a_mod) + err, fire, rate


def assert_close_to_reference(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor) -> None:
    """Equal up to float32 rounding relative to the size of the edit."""
    scale = max(1.0, float((want - x).abs().max()))
    torch.testing.assert_close(got, want, atol=2e-6 * scale, rtol=1e-5)


def rates_of(sae: Any, x: torch.Tensor, features: list[int]) -> torch.Tensor:
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    return sequence_rates(token_hits(feature_activations(sae, x, features), mask), mask)


# --------------------------------------------------------------------------- selection

TOY_F = [0.5, 0.4, 0.3, 0.0, 0.2, 0.1, 0.0, 0.05]
TOY_R = [0.0, 0.0, 0.1, 0.2, 0.0, 0.3, 0.0, 0.0]


@pytest.mark.parametrize(("p", "expected"), [(50.0, [0, 1, 4, 7]), (95.0, [0])])
def test_select_features_toy_vector(p: float, expected: list[int]) -> None:
    got = select_features(np.array(TOY_F), np.array(TOY_R), ratio_percentile=p)
    assert got.dtype == torch.int64
    assert got.tolist() == expected


def test_select_features_accepts_torch_and_numpy_alike() -> None:
    a = select_features(torch.tensor(TOY_F), torch.tensor(TOY_R), ratio_percentile=50.0)
    b = select_features(TOY_F, TOY_R, ratio_percentile=50.0)
    assert a.tolist() == b.tolist() == [0, 1, 4, 7]


@pytest.mark.parametrize(
    ("d_sae", "p"), [(16384, 95.0), (16384, 90.0), (1000, 50.0), (1000, 99.0), (777, 37.3)]
)
def test_select_features_count_formula(d_sae: int, p: float) -> None:
    rng = np.random.default_rng(d_sae)
    f = rng.random(d_sae) + 0.01
    f[rng.permutation(d_sae)[: d_sae // 10]] = 0.0  # as in real data: many dead features
    r = rng.random(d_sae)
    expected = d_sae - math.ceil(p / 100 * (d_sae - 1))
    if (d_sae, p) == (16384, 95.0):
        assert expected == 820
    if (d_sae, p) == (16384, 90.0):
        assert expected == 1639
    assert len(select_features(f, r, ratio_percentile=p)) == expected


def linear_percentile(values: list[float], p: float) -> float:
    """numpy's default percentile, written out."""
    s = sorted(values)
    pos = p / 100 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def python_select(f: list[float], r: list[float], p_ratio: float, p_forget: float) -> list[int]:
    big_f = [v * v for v in f]
    ratio = [bf / (rv * rv + 1e-21) for bf, rv in zip(big_f, r, strict=True)]
    t_f = linear_percentile(big_f, p_forget)
    t_q = linear_percentile(ratio, p_ratio)
    keep = [j for j in range(len(f)) if big_f[j] >= t_f and ratio[j] >= t_q]
    return sorted(keep, key=lambda j: (-big_f[j], j))


@pytest.mark.parametrize("seed", range(6))
def test_select_features_matches_independent_implementation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    # 2-decimal rounding and many zeros create the ties the reference's rounding creates
    f = np.round(rng.random(n) * (rng.random(n) < 0.7), 2)
    r = np.round(rng.random(n) * (rng.random(n) < 0.5) * 0.3, 2)
    for p_ratio, p_forget in [(95.0, 5.0), (80.0, 5.0), (50.0, 30.0), (0.0, 0.0)]:
        got = select_features(f, r, ratio_percentile=p_ratio, forget_percentile=p_forget)
        assert got.tolist() == python_select(f.tolist(), r.tolist(), p_ratio, p_forget)


def test_select_features_tie_order_is_stable() -> None:
    f = [0.1, 0.3, 0.3, 0.3, 0.1, 0.3]
    got = select_features(f, [0.0] * 6, ratio_percentile=0.0, forget_percentile=0.0)
    assert got.tolist() == [1, 2, 3, 5, 0, 4]


@pytest.mark.parametrize(
    "kwargs", [{"ratio_percentile": -1.0}, {"ratio_percentile": 100.5}, {"forget_percentile": 101}]
)
def test_select_features_rejects_bad_percentiles(kwargs: dict[str, float]) -> None:
    with pytest.raises(UserError, match=r"must be within \[0, 100\]"):
        select_features(TOY_F, TOY_R, **kwargs)


def test_select_features_rejects_mismatched_or_bad_statistics() -> None:
    with pytest.raises(UserError, match="shape"):
        select_features(TOY_F, TOY_R[:-1])
    with pytest.raises(UserError, match="NaN"):
        select_features([0.1, float("nan")], [0.0, 0.0])
    for empty_or_not_a_vector in ([], [[0.1, 0.2]]):
        with pytest.raises(UserError, match=r"forget_mean must be a non-empty 1-D vector"):
            select_features(empty_or_not_a_vector, [0.0, 0.0])
    assert select_features([0.3], [0.1]).tolist() == [0]  # one feature is a vector
    assert select_features(torch.tensor([0.3, 0.0]), [0.1, 0.1]).tolist() == [0]


def test_select_features_defaults_are_the_paper_s() -> None:
    rng = np.random.default_rng(7)
    f = rng.random(1000)
    r = f * rng.random(1000)  # the ratio ignores f: the forget cut matters
    default = select_features(f, r).tolist()
    assert default == python_select(f.tolist(), r.tolist(), 95.0, 5.0)
    assert default != python_select(f.tolist(), r.tolist(), 96.0, 5.0)
    assert default != python_select(f.tolist(), r.tolist(), 95.0, 6.0)


def refusal(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_selection_and_calibration_refusals_name_the_value() -> None:
    assert refusal(select_features, TOY_F, TOY_R, ratio_percentile=101.0) == (
        "ratio_percentile must be within [0, 100], got 101.0"
    )
    assert refusal(select_features, TOY_F, TOY_R, forget_percentile=-1.0) == (
        "forget_percentile must be within [0, 100], got -1.0"
    )
    assert refusal(select_features, TOY_F, [0.1, float("inf")]) == (
        "retain_mean contains NaN or infinite values"
    )
    assert refusal(select_features, TOY_F, TOY_R[:-1]) == (
        "forget and retain statistics differ in shape: (8,) vs (7,); they must come from the "
        "same SAE"
    )
    assert refusal(calibrate_threshold, [0.1], 100.5) == (
        "percentile must be within [0, 100], got 100.5"
    )
    assert refusal(calibrate_threshold, [], 95.0) == (
        "rates must be a non-empty 1-D vector, got shape (0,)"
    )


def test_calibration_is_in_float64_whatever_the_rates_dtype() -> None:
    """float32 rates (a float32 array or tensor) are widened before the percentile: the
    threshold is the float64 interpolation of their values, not a float32 one."""
    rates32 = np.random.default_rng(3).random(101).astype(np.float32)
    as64 = [float(x) for x in rates32]
    for p in (37.3, 95.0, 99.0):
        want = linear_percentile(as64, p)
        assert calibrate_threshold(rates32, p) == pytest.approx(want, rel=1e-15, abs=0)
        assert calibrate_threshold(torch.from_numpy(rates32), p) == pytest.approx(
            want, rel=1e-15, abs=0
        )
    assert calibrate_threshold(rates32, 37.3) != float(np.percentile(rates32, 37.3))


def test_feature_index_range() -> None:
    assert feature_index([63, 0], 64).tolist() == [63, 0]
    assert feature_index(torch.tensor([5]), 64).dtype == torch.int64
    assert feature_index([], 64).numel() == 0
    assert feature_index([[4, 2], [9, 1]], 64).tolist() == [4, 2, 9, 1]  # always a vector
    assert refusal(feature_index, [3, 5, 3], 64) == "feature indices contain duplicates"
    for outside in ([64], [-1], [3, -2], [10**30]):
        with pytest.raises(UserError, match=r"feature indices must lie in \[0, 64\)"):
            feature_index(outside, 64)


# --------------------------------------------------------------------------- rates


def test_sequence_rates_by_hand() -> None:
    hits = torch.tensor([[0, 1, 1, 0, 1], [0, 1, 0, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    rates = sequence_rates(hits, mask)
    assert rates.dtype == torch.float64
    assert rates.tolist() == [2 / 4, 2 / 3, 0.0]


def test_a_row_of_one_attended_token() -> None:
    # sequence_rates counts whatever hits it is given: one hit in one attended position is 1
    hits = torch.tensor([[False, True], [True, False]])
    mask = torch.tensor([[False, True], [True, False]])
    assert sequence_rates(hits, mask).tolist() == [1.0, 1.0]


def test_rates_refuse_hits_and_masks_of_other_shapes() -> None:
    for hits, mask in [
        (torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)),
        (torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)),
    ]:
        with pytest.raises(ValueError, match=r"must both be \[B, T\]"):
            sequence_rates(hits, mask)
    with pytest.raises(ValueError, match="window must be at least 1, got 0"):
        window_rates(torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool), 0)


def test_gate_thresholds_are_rates() -> None:
    assert ThresholdGate(0.0).threshold == 0.0 and ThresholdGate(1).threshold == 1.0
    for bad in (1.0000001, -1e-9):
        with pytest.raises(UserError, match=r"threshold must be within \[0, 1\]"):
            ThresholdGate(bad)
    with pytest.raises(UserError, match="the guardrail threshold is NaN; recalibrate it"):
        ThresholdGate(float("nan"))
    for make in (ThresholdGate, lambda t: WindowGate(4, 0.5, t)):
        with pytest.raises(UserError) as caught:
            make(1.5)
        assert str(caught.value) == "threshold must be within [0, 1], got 1.5"
    with pytest.raises(UserError) as caught:
        WindowGate(4, 1.5, 0.5)
    assert str(caught.value) == "window_threshold must be within [0, 1], got 1.5"
    gate = WindowGate(1, 0.0, 1.0)  # a window of one token: any hit after a longer row's BOS
    hits = torch.tensor([[False, False, True], [False, False, False]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert gate.decide(sequence_rates(hits, mask), hits, mask).tolist() == [True, False]
    for bad in (0, -3, True, 2.0, "3"):
        with pytest.raises(UserError, match="the guardrail window must be a positive integer"):
            WindowGate(bad, 0.5, 0.5)  # type: ignore[arg-type]


def test_calibration_in_float64_decides_a_prompt_between_the_float32_steps() -> None:
    """Rows of 7 tokens with 6, 0 and 7 hits: the 95th percentile is 6/7 + 0.9 * (1 - 6/7) =
    6.9/7 in float64 (the reference's arithmetic). Percentiles of float32-rounded rates land one
    float32 step higher, so a prompt whose rate rounds to that step fires under the reference's
    threshold and would not under the float32 one."""
    hits = torch.zeros(3, 7, dtype=torch.bool)
    hits[0, :6] = True
    hits[2, :] = True
    alpha = calibrate_threshold(sequence_rates(hits, torch.ones(3, 7, dtype=torch.bool)), 95.0)
    assert alpha == pytest.approx(6 / 7 + 0.9 * (1 - 6 / 7), rel=1e-15, abs=0)
    rates32 = np.array([6, 0, 7], dtype=np.float32) / np.float32(7)
    alpha32 = float(np.percentile(rates32.astype(np.float64), 95.0))
    assert np.float32(alpha32) > np.float32(alpha)  # the two calibrations straddle a step
    # a prompt whose float32 rate is the upper step: it exceeds the reference's alpha only
    rate = torch.tensor([np.float32(alpha32)], dtype=torch.float32)
    assert rate_gate(rate, alpha).tolist() == [True]
    assert rate_gate(rate, alpha32).tolist() == [False]


def test_token_hits_excludes_padding_and_first_attended_token() -> None:
    acts = torch.tensor([[[1.0], [0.0], [2.0], [3.0]], [[5.0], [5.0], [0.0], [4.0]]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    hits = token_hits(acts, mask)
    assert hits.tolist() == [[False, False, True, False], [False, False, False, True]]


def test_calibrate_threshold_toy_and_numpy() -> None:
    rates = [0.2, 0.1, 0.4, 0.1, 0.2, 0.1]
    assert calibrate_threshold(rates) == pytest.approx(0.35, abs=1e-15)
    assert calibrate_threshold(torch.tensor(rates, dtype=torch.float64)) == pytest.approx(0.35)
    rng = np.random.default_rng(0)
    values = rng.random(37)
    for p in (0.0, 12.5, 95.0, 99.0, 100.0):
        got = calibrate_threshold(torch.from_numpy(values), p)
        assert isinstance(got, float)
        assert got == linear_percentile(values.tolist(), p) or got == pytest.approx(
            linear_percentile(values.tolist(), p), rel=1e-15
        )
    with pytest.raises(UserError):
        calibrate_threshold(rates, 120.0)


# --------------------------------------------------------------------------- activations


@pytest.mark.parametrize(
    ("kind", "cfg"),
    [("jumprelu", {}), ("jumprelu", {"apply_b_dec_to_input": False}), ("standard", {})],
)
def test_feature_activations_closed_form_equals_full_encode(kind: str, cfg: dict) -> None:
    sae = random_sae(kind, **cfg)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))
    features = [5, 0, 63, 17, 2]
    got = feature_activations(sae, x, features)
    full = sae.encode(x)[..., features]
    assert got.shape == (3, 7, 5)
    assert (full > 0).any() and (full == 0).any()
    torch.testing.assert_close(got, full, rtol=1e-6, atol=1e-6)
    assert torch.equal(got > 0, full > 0)


def test_feature_activations_topk_uses_the_full_encode() -> None:
    sae = random_sae("topk", k=3)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    features = list(range(0, 64, 3))
    full = sae.encode(x)
    assert torch.equal(feature_activations(sae, x, features), full[..., features])
    # an elementwise shortcut would be wrong here: each token has at most k active features
    assert ((feature_activations(sae, x, list(range(64))) > 0).sum(-1) <= 3).all()


# --------------------------------------------------------------------------- clamps by hand


def hand_sae() -> Any:
    """d_in 2, d_sae 3; encoder picks coordinates, JumpReLU threshold 0.5 on every feature."""
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=2, d_sae=3, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 1.0]]))
        sae.b_dec.copy_(torch.tensor([0.25, -0.5]))
        sae.threshold.fill_(0.5)
    return sae


# BOS would fire feature 0; t1 fires feature 0 (a=1); t2 fires feature 1 (a=0.8);
# t3 has feature 0 at 0.4, below its JumpReLU threshold, so it is no hit.
HAND_X = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 0.8], [0.4, 0.0]]])
ALL = torch.ones(1, 4, dtype=torch.bool)


def test_encode_columns_computes_in_the_residual_s_dtype() -> None:
    """Weights of another dtype (a bundle's float64, a bfloat16 SAE) are cast to the residual's
    dtype first: the activations equal those of weights cast by hand."""
    gen = torch.Generator().manual_seed(9)
    resid = torch.randn(2, 3, 16, generator=gen)
    w_enc, b_enc = torch.randn(16, 4, generator=gen), torch.randn(4, generator=gen)
    b_dec, jump = torch.randn(16, generator=gen), torch.rand(4, generator=gen)
    for dtype in (torch.float64, torch.bfloat16):
        cast = [t.to(dtype).float() for t in (w_enc, b_enc, b_dec, jump)]
        got = encode_columns(resid, *(t.to(dtype) for t in (w_enc, b_enc, b_dec, jump)))
        assert got.dtype == torch.float32
        assert torch.equal(got, encode_columns(resid, *cast))
        assert (got > 0).any() and (got == 0).any()


def test_encode_topk_computes_in_the_residual_s_dtype() -> None:
    """As encode_columns: a TopK SAE's weights of another dtype are cast to the residual's
    dtype first, the index only moved."""
    gen = torch.Generator().manual_seed(10)
    resid = torch.randn(2, 3, 16, generator=gen)
    w_enc, b_enc = torch.randn(16, 12, generator=gen), torch.randn(12, generator=gen)
    b_dec, index = torch.randn(16, generator=gen), torch.tensor([5, 0, 11, 3])
    for dtype in (torch.float64, torch.bfloat16):
        cast = [t.to(dtype).float() for t in (w_enc, b_enc, b_dec)]
        weights = [t.to(dtype) for t in (w_enc, b_enc)]
        got = encode_topk(resid, *weights, index, 4, b_dec.to(dtype))
        assert got.dtype == torch.float32
        assert torch.equal(got, encode_topk(resid, *cast[:2], index, 4, cast[2]))
        assert (got > 0).any() and (got == 0).any()


def test_jumprelu_threshold_is_strict() -> None:
    """A pre-activation exactly at the JumpReLU threshold is off, as in sae_lens's encode."""
    sae = hand_sae()
    x = torch.tensor([[[0.5, 0.0], [0.0, 0.5], [0.0, 0.5001]]])
    acts = feature_activations(sae, x, [0, 1])
    assert acts[0].tolist() == [[0.0, 0.0], [0.0, 0.0], [0.0, pytest.approx(0.5001)]]
    assert torch.equal(acts, sae.encode(x)[..., [0, 1]])


def test_dynamic_clamp_by_hand() -> None:
    clamp = DynamicClamp(hand_sae(), [0, 1], threshold=0.49, multiplier=3.0)
    out = clamp(HAND_X, ALL)
    assert clamp.rates.tolist() == [0.5]
    assert clamp.fired.tolist() == [True]
    # t1: a=(1, 0): x + (-3-1)*[2,1] + (-3-0)*[0,1] = [1-8, -4-3]
    # t2: a=(0, .8): x + (-3)*[2,1] + (-3.8)*[0,1] = [-6, 0.8-3-3.8]
    expected = torch.tensor([[[2.0, 0.0], [-7.0, -7.0], [-6.0, -6.0], [0.4, 0.0]]])
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[0, [0, 3]], HAND_X[0, [0, 3]])


def test_dynamic_clamp_gate_is_strict() -> None:
    clamp = DynamicClamp(hand_sae(), [0, 1], threshold=0.5, multiplier=3.0)
    out = clamp(HAND_X, ALL)
    assert clamp.fired.tolist() == [False]
    assert out is HAND_X or torch.equal(out, HAND_X)


def test_dynamic_clamp_compares_in_float32() -> None:
    x = HAND_X[:, :3]  # rate = 1 hit / 3 attended with feature 0 only
    rate32 = float(np.float32(1 / 3))
    assert 1 / 3 < rate32  # a float64 comparison would fire
    clamp = DynamicClamp(hand_sae(), [0], threshold=1 / 3, multiplier=3.0)
    clamp(x, torch.ones(1, 3, dtype=torch.bool))
    assert clamp.rates.tolist() == [1 / 3]
    assert clamp.fired.tolist() == [False]
    clamp = DynamicClamp(hand_sae(), [0], threshold=float(np.float32(0.333)), multiplier=3.0)
    clamp(x, torch.ones(1, 3, dtype=torch.bool))
    assert clamp.fired.tolist() == [True]


def test_static_clamp_by_hand_ignores_rate_and_bos() -> None:
    clamp = StaticClamp(hand_sae(), [0], multiplier=3.0)
    x = torch.cat([HAND_X, HAND_X[:, [0, 2, 3, 3]]])  # row 1: only BOS fires feature 0
    out = clamp(x, torch.ones(2, 4, dtype=torch.bool))
    assert clamp.fired.tolist() == [True, False]
    assert clamp.rates.tolist() == [0.25, 0.0]
    expected = x.clone()
    expected[0, 1] = torch.tensor([1.0 - 8.0, -4.0])
    assert torch.equal(out, expected)


def test_multiplier_zero_is_not_the_identity() -> None:
    clamp = StaticClamp(hand_sae(), [0, 1], multiplier=0.0)
    out = clamp(HAND_X, ALL)
    # t1: x - 1*[2,1] = [-1, -1]; t2: x - 0.8*[0,1] = [0, 0]
    torch.testing.assert_close(out[0, 1:3], torch.tensor([[-1.0, -1.0], [0.0, 0.0]]))


def test_empty_selection_is_the_identity() -> None:
    sae = random_sae("jumprelu")
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    for clamp in (DynamicClamp(sae, [], 0.0, 500.0), StaticClamp(sae, torch.tensor([]), 500.0)):
        assert torch.equal(clamp(x, mask), x)
        assert clamp.fired.tolist() == [False, False]


# --------------------------------------------------------------------------- vs the reference


def reference_cases() -> list[tuple[str, dict]]:
    return [
        ("jumprelu", {}),
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("topk", {"k": 8}),
        ("topk", {"k": 8, "rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {"normalize_activations": "expected_average_only_in"}),
    ]


@pytest.mark.parametrize(("kind", "cfg"), reference_cases())
def test_batch_of_one_matches_reference_hook(kind: str, cfg: dict) -> None:
    sae = random_sae(kind, **cfg)
    features = [3, 11, 40, 7, 25, 60]
    m = 50.0
    gen = torch.Generator().manual_seed(3)
    fired_seen = set()
    for _ in range(6):
        x = torch.randn(1, 12, 16, generator=gen) * 1.5
        mask = torch.ones(1, 12, dtype=torch.bool)
        rate = rates_of(sae, x, features).item()
        assert 0 < rate < 1
        for alpha in (rate - 0.05, rate, rate + 0.05):
            want, fire, ref_rate = reference_hook(sae, x, features, m, alpha)
            clamp = DynamicClamp(sae, torch.tensor(features), alpha, m)
            got = clamp(x, mask)
            assert clamp.rates.float().tolist() == ref_rate.tolist()  # the hook rounds to f32
            assert clamp.fired.tolist() == fire.tolist()
            fired_seen.add(bool(fire))
            assert_close_to_reference(got, want, x)
            if not fire:
                assert torch.equal(got, x)  # bit-exact, unlike the reference
    assert fired_seen == {True, False}


@pytest.mark.parametrize("kind", ["jumprelu", "standard", "topk"])
def test_static_clamp_matches_full_decode(kind: str) -> None:
    sae = random_sae(kind, **({"k": 8} if kind == "topk" else {}))
    features = [3, 11, 40, 7, 25, 60]
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(4))
    want, _, _ = reference_hook(sae, x, features, 20.0, -1.0)  # alpha < 0: always on
    got = StaticClamp(sae, features, 20.0)(x, torch.ones(2, 9, dtype=torch.bool))
    assert not torch.equal(got, x)
    assert_close_to_reference(got, want, x)


def pad_batch(rows: list[torch.Tensor], side: str, junk: torch.Tensor):
    """Stack rows of different lengths, filling the gaps with ``junk`` residuals."""
    t_max = max(r.shape[0] for r in rows)
    x = junk[: len(rows), :t_max].clone()
    mask = torch.zeros(len(rows), t_max, dtype=torch.bool)
    spans = []
    for b, row in enumerate(rows):
        start = 0 if side == "right" else t_max - row.shape[0]
        x[b, start : start + row.shape[0]] = row
        mask[b, start : start + row.shape[0]] = True
        spans.append(slice(start, start + row.shape[0]))
    return x, mask, spans


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("cls", [DynamicClamp, StaticClamp])
def test_padded_batch_gives_each_row_its_batch_of_one_result(side: str, cls: type) -> None:
    sae = random_sae("jumprelu")
    features = [3, 11, 40, 7, 25, 60]
    gen = torch.Generator().manual_seed(5)
    rows = [torch.randn(n, 16, generator=gen) * 1.5 for n in (9, 4, 13, 6)]
    junk = torch.randn(4, 13, 16, generator=gen) * 3  # fires features if it were counted
    rates = [rates_of(sae, r[None], features).item() for r in rows]
    threshold = float(np.median(rates))
    args = (threshold, 50.0) if cls is DynamicClamp else (50.0,)
    clamp = cls(sae, features, *args)
    singles = []
    for row in rows:
        out = clamp(row[None], torch.ones(1, row.shape[0], dtype=torch.bool))
        singles.append((out[0], bool(clamp.fired), float(clamp.rates)))
    x, mask, spans = pad_batch(rows, side, junk)
    out = clamp(x, mask)
    assert len(set(clamp.fired.tolist())) == (2 if cls is DynamicClamp else 1)
    for b, (single, fired, rate) in enumerate(singles):
        assert bool(clamp.fired[b]) == fired
        assert float(clamp.rates[b]) == rate
        torch.testing.assert_close(out[b, spans[b]], single, atol=1e-6, rtol=1e-6)
    assert torch.equal(out[~mask], x[~mask])  # padding is never edited


def test_bad_inputs_are_refused() -> None:
    sae = random_sae("jumprelu")
    with pytest.raises(UserError, match="feature indices"):
        DynamicClamp(sae, [0, 64], 0.1, 5.0)
    with pytest.raises(UserError, match="duplicates"):
        StaticClamp(sae, [1, 1], 5.0)
    with pytest.raises(ValueError, match="attention_mask"):
        StaticClamp(sae, [1], 5.0)(torch.zeros(1, 3, 16), torch.ones(1, 4, dtype=torch.bool))
    norm_sae = random_sae("jumprelu", normalize_activations="layer_norm")
    with pytest.raises(UserError, match="layer_norm"):
        DynamicClamp(norm_sae, [1], 0.1, 5.0)
    head_sae = random_sae("jumprelu", reshape_activations="hook_z")
    with pytest.raises(UserError, match="hook_z"):
        StaticClamp(head_sae, [1], 5.0)


def test_public_names_are_exported_from_dsg() -> None:
    assert dsg.DynamicClamp is DynamicClamp
    assert dsg.StaticClamp is StaticClamp
    assert dsg.select_features is select_features
    assert dsg.sequence_rates is sequence_rates
    assert dsg.calibrate_threshold is calibrate_threshold


def test_clamp_works_in_the_residual_dtype() -> None:
    sae = random_sae("jumprelu")
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    clamp = StaticClamp(sae, [3, 11, 40], 5.0)
    out = clamp(x, torch.ones(2, 8, dtype=torch.bool))
    assert out.dtype == torch.bfloat16
    clamped = token_hits(feature_activations(sae, x, [3, 11, 40]), torch.ones(2, 8).bool())
    assert clamped.any() and not clamped.all()
    assert torch.equal(out[~clamped], x[~clamped])
    assert not torch.equal(out[clamped], x[clamped])


# --------------------------------------------------------------------------- decided elsewhere


def prompt_and_continuation(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four left-padded prompts of 5 to 8 tokens in 8 positions, then 4 generated positions."""
    gen = torch.Generator().manual_seed(seed)
    resid = torch.randn(4, 12, 16, generator=gen) * 1.5
    prompt = torch.arange(12)[None, :] >= (8 - torch.tensor([8, 5, 7, 6]))[:, None]
    prompt[:, 8:] = False
    full = prompt.clone()
    full[:, 8:] = True
    return resid, prompt, full


def guards(sae: Any, threshold: float) -> list[Any]:
    features = [3, 11, 40, 7, 25, 60]
    return [
        DynamicClamp(sae, features, threshold, 40.0),
        StaticClamp(sae, features, 40.0),
        WindowedClamp(sae, features, 1.0, 40.0, window=3, window_threshold=threshold),
    ]


@pytest.mark.parametrize("seed", range(3))
def test_deciding_on_the_prefix_is_a_prefill_then_decode_steps(seed: int) -> None:
    """decide_on_prefix (a prompt and its continuation in one pass) equals the prompt's own pass
    followed by continue_rows on the generated positions; apply_decision with that decision
    edits the same positions; decide_prompt decides as the prompt's pass and edits nothing."""
    sae = random_sae("jumprelu")
    resid, prompt, full = prompt_and_continuation(seed)
    threshold = float(np.median(rates_of_rows(sae, resid[:, :8], prompt[:, :8])))
    for guard in guards(sae, threshold):
        name = type(guard).__name__
        head = guard(resid[:, :8], prompt[:, :8])
        fired, row_rates = guard.fired.clone(), guard.rates.clone()
        if name == "DynamicClamp":
            assert 0 < int(fired.sum()) < 4
        tail = guard.continue_rows(resid[:, 8:], full[:, 8:], fired)
        both = guard.decide_on_prefix(resid, prompt, full)
        assert torch.equal(guard.fired, fired) and torch.equal(guard.rates, row_rates), name
        assert torch.equal(both, torch.cat([head, tail], dim=1)), name
        later = full & ~prompt
        assert torch.equal(
            guard.apply_decision(resid, countable_positions(prompt), later, fired), both
        )
        guard.fired = guard.rates = None
        assert guard.decide_prompt(resid[:, :8], prompt[:, :8]) is None
        assert torch.equal(guard.fired, fired) and torch.equal(guard.rates, row_rates), name


def rates_of_rows(sae: Any, x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    acts = feature_activations(sae, x, [3, 11, 40, 7, 25, 60])
    return sequence_rates(token_hits(acts, mask), mask).tolist()


def test_the_windowed_gate_alone_is_refused() -> None:
    gate = WindowGate(3, 0.5, 0.5)
    with pytest.raises(TypeError) as caught:
        gate(torch.zeros(1), torch.zeros(1, 4, dtype=torch.bool))
    assert str(caught.value) == "the windowed gate needs the attention mask; call decide()"
