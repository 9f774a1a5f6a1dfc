"""The guardrail's per-forward path: no host synchronisation, weights cast once per (device,
dtype), capturable by ``torch.compile(fullgraph=True)``, and unclamped positions bit for bit."""

from __future__ import annotations

import pytest
import torch
from bundles import batch, loaded
from host_sync import host_sync_forbidden
from saes import random_sae

from dsg.bundle import from_sae
from dsg.guardrail import DynamicClamp, StaticClamp, WindowedClamp
from dsg_runtime.guardrail import Guardrail, apply_clamp

torch.set_num_threads(1)

FEATURES = [7, 3, 30, 12, 0]


def guardrails() -> dict[str, Guardrail]:
    sae = random_sae("jumprelu", d_sae=48, apply_b_dec_to_input=True)
    topk = random_sae("topk", d_sae=48, k=6, apply_b_dec_to_input=True)
    return {
        "dynamic": DynamicClamp(sae, FEATURES, 0.3, 50.0),
        "static": StaticClamp(sae, FEATURES, 50.0),
        "bundle": from_sae(loaded(sae), FEATURES, threshold=0.3, multiplier=50.0).guardrail(),
        "topk bundle": from_sae(loaded(topk), FEATURES, threshold=0.3, multiplier=50.0).guardrail(),
    }


def test_the_check_catches_a_sync() -> None:
    x = torch.ones(3)
    with host_sync_forbidden():
        with pytest.raises(AssertionError, match="__bool__"):
            bool(x.any())
        with pytest.raises(AssertionError, match="boolean-mask"):
            x[x > 0]


@pytest.mark.parametrize("name", ["dynamic", "static", "bundle", "topk bundle"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_host_sync_on_the_forward_or_decode_path(name: str, dtype: torch.dtype) -> None:
    guard = guardrails()[name]
    resid, mask = batch()
    resid = resid.to(dtype)
    expected = guard(resid, mask)  # outside the check: the casts happen here, once
    expected_step = guard.continue_rows(resid[:, -1:], mask[:, -1:], guard.fired)
    with host_sync_forbidden():
        got = guard(resid, mask)
        step = guard.continue_rows(resid[:, -1:], mask[:, -1:], guard.fired)
    assert torch.equal(got, expected) and torch.equal(step, expected_step)
    assert guard.fired is not None and guard.fired.dtype == torch.bool
    assert guard.rates is not None and guard.rates.dtype == torch.float64


def test_apply_clamp_takes_directions_of_any_dtype() -> None:
    """The closed form by hand, with float64 directions on a float32 residual: the edit is
    computed in the residual's dtype, where the mask is set, and nowhere else."""
    resid = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    acts = torch.tensor([[[0.5, 0.0], [1.0, 2.0]]])
    directions = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    where = torch.tensor([[False, True]])
    out = apply_clamp(resid, acts, where, directions, 3.0)
    # t1: x + (-3 - 1) * [1, 0] + (-3 - 2) * [1, 1] = [3 - 4 - 5, 4 - 5]
    assert out.dtype == torch.float32
    assert out.tolist() == [[[1.0, 2.0], [-6.0, -1.0]]]


def test_a_guardrail_describes_no_batch_before_its_first() -> None:
    guard = guardrails()["dynamic"]
    assert guard.fired is None and guard.rates is None


def test_weights_are_cast_once_per_device_and_dtype() -> None:
    guard = guardrails()["bundle"]
    resid, _ = batch()
    half = resid.to(torch.bfloat16)
    first = guard.selected.directions(half)
    assert first.dtype == torch.bfloat16
    assert guard.selected.directions(half) is first
    assert guard.selected.directions(resid) is not first  # float32 has its own copy
    assert guard.selected.directions(resid).dtype == torch.float32


@pytest.mark.parametrize("name", ["dynamic", "static", "windowed", "topk bundle"])
def test_masks_and_decisions_follow_the_residual_to_its_device(name: str) -> None:
    """A harness hands the masks and decisions on the host while the residual sits on the
    accelerator: every entry point moves them to the residual's device. Checked with the meta
    device, which refuses any operation that mixes it with the CPU as an accelerator would."""
    sae = random_sae("jumprelu", d_sae=48, apply_b_dec_to_input=True)
    guard = {**guardrails(), "windowed": WindowedClamp(sae, FEATURES, 0.3, 50.0, window=2,
                                                       window_threshold=0.5)}[name]  # fmt: skip
    resid, mask = batch()
    resid = resid.to("meta")
    prompt = mask & (torch.arange(mask.shape[1]) < mask.shape[1] - 2)
    fired = torch.tensor([True, False] * (mask.shape[0] // 2))
    outputs = [
        guard(resid, mask),
        guard.continue_rows(resid[:, -1:], mask[:, -1:], fired),
        guard.apply_decision(resid, prompt, mask & ~prompt, fired),
        guard.decide_on_prefix(resid, prompt, mask),
    ]
    assert all(out.device.type == "meta" and out.shape == resid[:, : out.shape[1]].shape
               for out in outputs)  # fmt: skip
    guard.fired = guard.rates = None
    guard.decide_prompt(resid, prompt)
    assert guard.fired is not None and guard.fired.device.type == "meta"
    assert guard.selected.directions(resid).device.type == "meta"  # cached where it is used
    acts = guard.activations(resid)
    assert acts.device.type == "meta"
    cpu_directions = torch.randn(acts.shape[-1], resid.shape[-1], dtype=torch.float64)
    edited = apply_clamp(resid, acts, mask.to("meta"), cpu_directions, 5.0)
    assert edited.device.type == "meta" and edited.dtype == resid.dtype
    with pytest.raises(RuntimeError):  # what the moves avoid
        torch.ones(2, device="meta") & torch.ones(2).bool()


def test_unclamped_positions_are_returned_bit_for_bit() -> None:
    guard = guardrails()["dynamic"]
    resid, mask = batch()
    resid[0, 3, 0] = -0.0  # x + 0 would turn it into +0.0
    out = guard(resid, mask)
    acts = guard.activations(resid)
    clamped = (acts > 0).any(-1) & mask & guard.fired[:, None]
    clamped &= ~(mask & (mask.cumsum(1) == 1))  # never the BOS
    assert 0 < int(clamped.sum()) < int(mask.sum())
    untouched = ~clamped
    assert torch.equal(out[untouched].view(torch.int32), resid[untouched].view(torch.int32))
    assert not torch.equal(out[clamped], resid[clamped])


@pytest.mark.parametrize("name", ["bundle", "topk bundle"])
def test_the_call_path_compiles_as_one_graph(name: str) -> None:
    guard = guardrails()[name]  # the same Guardrail class as DynamicClamp
    resid, mask = batch()
    expected = guard(resid, mask)
    fired, rates = guard.fired, guard.rates

    def call(resid: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = guard(resid, mask)
        return out, guard.fired, guard.rates  # type: ignore[return-value]

    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    out, got_fired, got_rates = compiled(resid, mask)
    assert torch.equal(out, expected)
    assert torch.equal(got_fired, fired) and torch.equal(got_rates, rates)


def test_the_guardrail_pieces_are_public() -> None:
    import dsg
    from dsg import guardrail

    for name in ("Guardrail", "ThresholdGate", "AnyHitGate", "FeatureColumns", "sae_features",
                 "TopKFeatures"):  # fmt: skip
        assert getattr(dsg, name) is getattr(guardrail, name)


@pytest.mark.parametrize("name", ["dynamic", "static", "bundle", "topk bundle"])
def test_a_step_given_no_mask_counts_every_position(name: str) -> None:
    """``continue_rows(resid, None, fired)`` (generate's decode steps) is the step under an
    all-ones mask, with no host read; under a mask, a masked-out position is left alone."""
    guard = guardrails()[name]
    resid, mask = batch()
    guard(resid, mask)
    assert guard.fired is not None
    fired = guard.fired
    steps = resid[:, -3:]
    ones = torch.ones(steps.shape[:2], dtype=torch.bool)
    with host_sync_forbidden():
        unmasked = guard.continue_rows(steps, None, fired)
    assert torch.equal(unmasked, guard.continue_rows(steps, ones, fired))
    holes = ones.clone()
    holes[:, 1] = False
    masked = guard.continue_rows(steps, holes, fired)
    assert torch.equal(masked[:, 1], steps[:, 1])
    assert not torch.equal(unmasked[:, 1], steps[:, 1])  # a row that clamps hits position 1
